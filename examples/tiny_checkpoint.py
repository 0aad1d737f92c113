"""Write a GPT-OSS checkpoint in openai/gpt-oss's on-disk MXFP4 format (safetensors + config.json with
``quantization_config``), e.g. from the tiny model of ``tiny_gpt_oss.tiny_model()``: nothing is downloaded,
and transformers loads it as it loads gpt-oss-20b.

    python examples/tiny_checkpoint.py /tmp/tiny-mxfp4        # writes the tiny model's checkpoint there

``write_fp8_checkpoint``: the same with FP8 experts (``quant.fp8.quantize_experts_fp8``, per channel or 128x128
block scales), loadable by ``gpt_oss_kernels.from_pretrained`` into our FP8 experts layout.
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


def _quant_module(name: str):
    """gpt_oss_kernels.quant.<name>, or straight from this checkout without a build (it imports only torch)."""
    try:
        import importlib

        return importlib.import_module(f"gpt_oss_kernels.quant.{name}")
    except ImportError:
        import importlib.util

        path = ROOT / "torch-ext" / "gpt_oss_kernels" / "quant" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_gok_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


def _quantize_experts_mxfp4():
    return _quant_module("mxfp4").quantize_experts_mxfp4


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


def write_fp8_checkpoint(model: torch.nn.Module, path: str | Path, granularity: str = "channel",
                         dtype: torch.dtype = torch.bfloat16) -> Path:
    """Writes ``model`` (a ``GptOssForCausalLM``) to ``path`` with FP8 experts: ``model.safetensors`` holding
    ``...mlp.experts.gate_up_proj_fp8`` (E, 2I, H) float8_e4m3fn and ``..._scale`` float32 (per channel, or 128x128
    blocks), the same for ``down_proj``, every other floating tensor in ``dtype``; ``config.json`` with
    ``quantization_config = quant.fp8.fp8_quantization_config(granularity)``. Returns the folder."""
    from safetensors.torch import save_file

    fp8 = _quant_module("fp8")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = fp8.quantize_experts_fp8(model, granularity, bias_dtype=dtype)
    keep = (torch.float8_e4m3fn, torch.float32)
    sd = {n: (t.detach().to(dtype) if t.is_floating_point() and not (n.endswith(("_fp8", "_scale")) and t.dtype in keep)
              else t.detach()).contiguous().cpu() for n, t in sd.items()}
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = fp8.fp8_quantization_config(granularity)
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
