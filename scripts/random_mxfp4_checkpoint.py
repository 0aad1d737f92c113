#!/usr/bin/env python3
"""Writes a GPT-OSS checkpoint with random weights in openai/gpt-oss's on-disk MXFP4 format, shaped like
openai/gpt-oss-20b (its config.json values: 24 layers, hidden 2880, 32 experts top-4, ...) or like the tiny test
model, with the tiny tokenizer of examples/tiny_checkpoint.py. The real weights cannot be downloaded on the GPU
machine; this is what scripts/gpu_notebook.sh runs the notebook against.

    python scripts/random_mxfp4_checkpoint.py DIR [--shape 20b|tiny] [--device cuda|cpu] [--seed 0]

Sharded safetensors (model-XXXXX-of-YYYYY.safetensors + model.safetensors.index.json, names as in
openai/gpt-oss-20b's files), one shard per decoder layer and one for the embedding, final norm and LM head: the
weights are drawn on ``--device`` and written one shard at a time, so host memory holds one shard (the 20b
shape's largest, the embedding + LM head, is 2.3 GB; ~13 GB in all). The expert weights are drawn in float and
quantized with the package's ``quantize_mxfp4`` (as ``examples/tiny_checkpoint.py`` does), so blocks and scales
are those of a real quantized matrix. Prints the time per shard and in all.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from tiny_checkpoint import (  # noqa: E402
    QUANTIZATION_CONFIG, _quantize_experts_mxfp4, tiny_tokenizer, token_ids, write_tokenizer_files)

# openai/gpt-oss-20b's config.json (the token ids are replaced by the tiny tokenizer's).
GPT_OSS_20B_CONFIG = {
    "architectures": ["GptOssForCausalLM"],
    "attention_bias": True,
    "attention_dropout": 0.0,
    "eos_token_id": 200002,
    "experts_per_token": 4,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 2880,
    "initial_context_length": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 2880,
    "layer_types": ["sliding_attention", "full_attention"] * 12,
    "max_position_embeddings": 131072,
    "model_type": "gpt_oss",
    "num_attention_heads": 64,
    "num_experts_per_tok": 4,
    "num_hidden_layers": 24,
    "num_key_value_heads": 8,
    "num_local_experts": 32,
    "output_router_logits": False,
    "pad_token_id": 199999,
    "quantization_config": QUANTIZATION_CONFIG,
    "rms_norm_eps": 1e-05,
    "rope_scaling": {"beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0, "original_max_position_embeddings": 4096,
                     "rope_type": "yarn", "truncate": False},
    "rope_theta": 150000,
    "router_aux_loss_coef": 0.9,
    "sliding_window": 128,
    "swiglu_limit": 7.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "vocab_size": 201088,
}

_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def checkpoint_config(shape: str) -> dict:
    """config.json for ``shape`` ("20b" or "tiny": ``tiny_gpt_oss.tiny_config()``), with the MXFP4
    ``quantization_config`` and the tiny tokenizer's token ids."""
    if shape == "20b":
        config = json.loads(json.dumps(GPT_OSS_20B_CONFIG))
    elif shape == "tiny":
        from tiny_gpt_oss import tiny_config

        config = tiny_config().to_dict()
        config["quantization_config"] = dict(QUANTIZATION_CONFIG)
        config["torch_dtype"] = config["dtype"] = "bfloat16"
    else:
        raise ValueError(f"shape must be '20b' or 'tiny', got {shape!r}")
    config.update(token_ids(tiny_tokenizer()))
    return config


def parameter_groups(config: dict) -> dict[int, dict[str, torch.Size]]:
    """The model's parameter names and (unquantized) shapes, from transformers' own module tree on the meta device
    (no memory), per shard: decoder layer i -> its parameters, in order, then -1 -> the embedding, final norm and
    LM head."""
    from transformers import GptOssConfig, GptOssForCausalLM

    with torch.device("meta"):
        meta = GptOssForCausalLM(GptOssConfig(**{k: v for k, v in config.items() if k != "quantization_config"}))
    groups: dict[int, dict[str, torch.Size]] = {}
    for name, t in meta.state_dict().items():
        m = _LAYER.match(name)
        groups.setdefault(int(m.group(1)) if m else -1, {})[name] = t.shape
    return {g: groups[g] for g in sorted(groups, key=lambda g: (g < 0, g))}


def _random(name: str, shape: torch.Size, gen: torch.Generator, device: str) -> torch.Tensor:
    """tiny_gpt_oss.tiny_model's initialisation, by parameter name: norms around 1, sinks N(0, 1), embedding and
    LM head N(0, 0.25), vectors (biases) N(0, 0.25), matrices N(0, 1/fan_in) (the experts' fan-in is dim 1)."""
    x = torch.randn(shape, generator=gen, device=device)
    if "norm" in name:
        return x.mul_(0.1).add_(1)
    if "sinks" in name:
        return x
    if name.endswith("lm_head.weight") or "embed_tokens" in name or x.dim() == 1:
        return x.mul_(0.5)
    fan_in = shape[-2] if "experts" in name and x.dim() == 3 else shape[-1]
    return x.mul_(fan_in**-0.5)


def write_random_mxfp4_checkpoint(path: str | Path, shape: str = "20b", device: str = "cpu", seed: int = 0,
                                  log=print) -> Path:
    """Writes the checkpoint folder (weights, config.json, tokenizer, generation_config.json) to ``path`` and
    returns it; see the module docstring."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = checkpoint_config(shape)
    groups = parameter_groups(config)
    quantize = _quantize_experts_mxfp4()
    n = len(groups)
    weight_map, total_bytes, start = {}, 0, time.perf_counter()
    for i, (group, shapes) in enumerate(groups.items()):
        t0 = time.perf_counter()
        gen = torch.Generator(device=device).manual_seed(seed * 1000 + i)
        shard = {name: _random(name, s, gen, device) for name, s in shapes.items()}
        shard = quantize(shard, bias_dtype=torch.bfloat16)
        shard = {name: (t.to(torch.bfloat16) if t.is_floating_point() else t).contiguous().cpu()
                 for name, t in shard.items()}
        file = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        nbytes = sum(t.numel() * t.element_size() for t in shard.values())
        total_bytes += nbytes
        weight_map.update(dict.fromkeys(shard, file))
        what = f"layer {group}" if group >= 0 else "embedding, final norm, LM head"
        log(f"{file}: {what}, {len(shard)} tensors, {nbytes / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")
        del shard
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    write_tokenizer_files(path, tiny_tokenizer())
    log(f"wrote {path}: {shape}-shaped MXFP4 checkpoint, {n} shards, {total_bytes / 1e9:.2f} GB in "
        f"{time.perf_counter() - start:.1f} s (random weights drawn on {device})")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path)
    parser.add_argument("--shape", choices=["20b", "tiny"], default="20b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the random weights are drawn and quantized (default cuda when there is one)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    write_random_mxfp4_checkpoint(args.path, args.shape, args.device, args.seed, log=lambda s: print(s, flush=True))


if __name__ == "__main__":
    main()
