"""Checkpoint conversion: a GPT-OSS checkpoint folder with bf16 or MXFP4 experts -> the same folder with FP8 or MXFP4
experts, tensor by tensor (never the whole model in memory, never a full bf16 copy of MXFP4 experts).

``convert_checkpoint("gpt-oss-20b", "gpt-oss-20b-fp8", experts="fp8")`` reads openai's shards as they ship (MXFP4
``*_blocks`` / ``*_scales``; a projection's blocks and scales may sit in different shards), dequantizes one expert at
a time exactly (``dequantize_mxfp4``, float32) and writes ``*_fp8`` / ``*_scale`` (``quantize_fp8``); the folder
loads with ``gpt_oss_kernels.from_pretrained`` into our FP8 experts layout. From a bf16 checkpoint (e.g. a model's
``save_pretrained``) it writes FP8 or MXFP4 (``quantize_mxfp4``, openai's on-disk format). Every other tensor is
copied unchanged, each output shard keeps its input shard's name (the index is rewritten), ``config.json`` gets the
new ``quantization_config``, and the other files at the folder's top level (tokenizer, chat template, generation
config) are copied; sub-folders (openai's ``original/``, ``metal/``) are not.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from . import fp8, mxfp4

EXPERT_FORMATS = ("fp8", "mxfp4")
_PROJ = re.compile(r"^(?P<name>.*\.mlp\.experts\.(?:gate_up_proj|down_proj))(?P<part>|_blocks|_scales|_fp8|_scale)$")
_INDEX = "model.safetensors.index.json"


def convert_checkpoint(src: str | Path, dst: str | Path, experts: str, granularity: str = "channel",
                       device: str | torch.device = "cpu") -> Path:
    """Writes ``src``'s checkpoint to ``dst`` with its experts in ``experts`` ("fp8": e4m3 with ``granularity``
    "channel" or "block" scales; "mxfp4": openai's format). ``src``: a folder with ``config.json`` and
    ``*.safetensors`` holding bf16 (any float) experts ``...mlp.experts.gate_up_proj`` / ``down_proj`` or MXFP4 ones
    (``*_blocks`` / ``*_scales``). ``device``: where each expert is converted ("cuda" is faster; the result is the
    same). Returns ``dst``."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    if experts not in EXPERT_FORMATS:
        raise ValueError(f"experts must be one of {EXPERT_FORMATS}, got {experts!r}")
    if experts == "fp8":
        granularity = fp8._check_granularity(granularity)
    src, dst = Path(src), Path(dst)
    if not (src / "config.json").is_file():
        raise ValueError(f"src must be a checkpoint folder with a config.json, got {str(src)!r}")
    shards = sorted(src.glob("*.safetensors"))
    if not shards:
        raise ValueError(f"src holds no *.safetensors files: {str(src)!r}")
    if dst.resolve() == src.resolve():
        raise ValueError(f"dst must differ from src, got {str(dst)!r} for both")
    where: dict[str, Path] = {}
    for shard in shards:
        with safe_open(str(shard), "pt") as f:
            where.update((n, shard) for n in f.keys())

    def tensor(name: str) -> torch.Tensor:
        with safe_open(str(where[name]), "pt") as f:
            return f.get_tensor(name)

    dst.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0
    for shard in shards:
        out: dict[str, torch.Tensor] = {}
        with safe_open(str(shard), "pt") as f:
            for name in f.keys():
                m = _PROJ.match(name)
                if m is None:
                    out[name] = f.get_tensor(name)
                    continue
                base, part = m["name"], m["part"]
                if part in ("_fp8", "_scale"):
                    raise ValueError(f"src already holds FP8 experts ({name}): convert from its bf16 or MXFP4 "
                                     "checkpoint")
                if part == "_scales":  # written with its blocks
                    if experts == "mxfp4":
                        out[name] = f.get_tensor(name)
                    continue
                if part == "_blocks":
                    if base + "_scales" not in where:
                        raise ValueError(f"src has {name} but no {base}_scales")
                    if experts == "mxfp4":
                        out[name] = f.get_tensor(name)
                        continue
                    blocks, scales = f.get_tensor(name), tensor(base + "_scales")
                    out.update(_per_expert(base, experts, blocks.shape[0], lambda e: fp8.quantize_fp8(
                        mxfp4.dequantize_mxfp4(blocks[e:e + 1].to(device), scales[e:e + 1].to(device),
                                               torch.float32), granularity)))
                    continue
                w = f.get_tensor(name)
                if not w.is_floating_point() or w.dim() != 3:
                    raise ValueError(f"{name} must be (E, K, N) float expert weights, got {w.dtype} "
                                     f"{tuple(w.shape)}")
                quantize = (lambda x: fp8.quantize_fp8(x, granularity)) if experts == "fp8" else mxfp4.quantize_mxfp4
                out.update(_per_expert(base, experts, w.shape[0], lambda e: quantize(w[e:e + 1].to(device))))
        save_file(out, str(dst / shard.name), metadata={"format": "pt"})
        weight_map.update((n, shard.name) for n in out)
        total += sum(t.numel() * t.element_size() for t in out.values())

    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = (fp8.fp8_quantization_config(granularity) if experts == "fp8"
                                     else mxfp4.mxfp4_quantization_config())
    (dst / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    if (src / _INDEX).is_file():
        index = json.loads((src / _INDEX).read_text())
        index["metadata"] = dict(index.get("metadata") or {}, total_size=total)
        index["weight_map"] = dict(sorted(weight_map.items()))
        (dst / _INDEX).write_text(json.dumps(index, indent=2) + "\n")
    for p in src.iterdir():
        if p.is_file() and p.suffix != ".safetensors" and p.name not in ("config.json", _INDEX):
            shutil.copy2(p, dst / p.name)
    return dst


def _per_expert(base, experts, n, convert) -> dict:
    """``convert(e)`` -> the (values, scales) pair of expert ``e`` (one expert at a time: the scales of every format
    are per expert), concatenated over the ``n`` experts under the format's names."""
    values, scales = zip(*((a.cpu(), b.cpu()) for a, b in map(convert, range(n))))
    names = ("_fp8", "_scale") if experts == "fp8" else ("_blocks", "_scales")
    return {base + names[0]: torch.cat(values), base + names[1]: torch.cat(scales)}
