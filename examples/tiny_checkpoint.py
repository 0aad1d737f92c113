"""Write a GPT-OSS checkpoint in openai/gpt-oss's on-disk MXFP4 format (safetensors + config.json with
``quantization_config``), e.g. from the tiny model of ``tiny_gpt_oss.tiny_model()``: nothing is downloaded,
and transformers loads it as it loads gpt-oss-20b.

    python examples/tiny_checkpoint.py /tmp/tiny-mxfp4        # writes the tiny model's checkpoint there
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# openai/gpt-oss-20b's config.json: "quantization_config"
MODULES_TO_NOT_CONVERT = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]
QUANTIZATION_CONFIG = {"quant_method": "mxfp4", "modules_to_not_convert": MODULES_TO_NOT_CONVERT}


def _quantize_experts_mxfp4():
    try:
        from gpt_oss_kernels.quant.mxfp4 import quantize_experts_mxfp4
    except ImportError:  # straight from this checkout, without a build
        import importlib.util

        path = ROOT / "torch-ext" / "gpt_oss_kernels" / "quant" / "mxfp4.py"
        spec = importlib.util.spec_from_file_location("_gok_mxfp4", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        quantize_experts_mxfp4 = mod.quantize_experts_mxfp4
    return quantize_experts_mxfp4


def mxfp4_state_dict(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The model's state dict as the official checkpoints hold it: experts as ``*_blocks`` / ``*_scales``
    (uint8), every other floating tensor (expert biases included) in ``dtype`` (bf16 in openai's files)."""
    sd = _quantize_experts_mxfp4()(model, bias_dtype=dtype)
    return {n: (t.detach().to(dtype) if t.is_floating_point() else t.detach()).contiguous().cpu()
            for n, t in sd.items()}


def write_mxfp4_checkpoint(model: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Writes ``model`` (a ``GptOssForCausalLM``) to ``path`` in the official MXFP4 format: ``model.safetensors``
    with the names of openai/gpt-oss-20b (``model.layers.{i}.mlp.experts.gate_up_proj_blocks``, ``..._scales``,
    ``..._bias``, ``down_proj_blocks``, ...) and ``config.json`` with ``quantization_config = {"quant_method":
    "mxfp4", "modules_to_not_convert": [...]}`` as in the 20b config. Returns the folder."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = mxfp4_state_dict(model, dtype)
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)  # shared with the embedding (safetensors refuses shared storage)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = dict(QUANTIZATION_CONFIG)
    config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tiny_gpt_oss import tiny_model

    out = write_mxfp4_checkpoint(tiny_model(), sys.argv[1] if len(sys.argv) > 1 else "tiny-gpt-oss-mxfp4")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
