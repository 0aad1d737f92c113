"""A tiny GPT-OSS built in code (no download): the same modules and math as gpt-oss-20b,
small enough for a CPU. Used by the demo and the tests.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import GptOssConfig, GptOssForCausalLM

BUILD_DIR = Path(__file__).resolve().parents[1] / "build"


def tiny_config(**overrides) -> GptOssConfig:
    cfg = dict(
        vocab_size=256,
        hidden_size=128,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        num_local_experts=8,
        num_experts_per_tok=2,
        sliding_window=16,
        max_position_embeddings=4096,
        pad_token_id=0,
        eos_token_id=None,
        bos_token_id=None,
    )
    cfg.update(overrides)
    return GptOssConfig(**cfg)


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, device: str = "cpu", **overrides) -> GptOssForCausalLM:
    """Random weights, scaled so that every part of the block matters: norm weights around 1,
    non-zero biases and sinks, and logits spread enough for greedy decoding to be stable."""
    cfg = tiny_config(**overrides)
    gen = torch.Generator().manual_seed(seed)
    model = GptOssForCausalLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=gen))
            elif "sinks" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("lm_head.weight") or "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            else:
                fan_in = p.shape[-2] if "experts" in name and p.dim() == 3 else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 if p.dim() == 1 else fan_in**-0.5))
    return model.to(device=device, dtype=dtype).eval()


REPO_ID = "kernels-community/gpt-oss-kernels"


def load_kernel():
    """This checkout's local build, loaded through ``kernels`` as users load it."""
    import kernels

    # backend="cpu" where no GPU is visible: with torch built for CUDA (PyPI's default wheel) kernels would look for
    # a CUDA variant, and a machine without a GPU builds the CPU one.
    return kernels.get_local_kernel(BUILD_DIR, backend=None if torch.cuda.is_available() else "cpu")


def with_our_kernels(model: GptOssForCausalLM, *, fused: bool = True, attention: bool = True,
                     dtype: torch.dtype | None = None) -> GptOssForCausalLM:
    """A copy of ``model`` (in ``dtype``, default the model's) with every layer of ours, through the package's
    public ``from_pretrained`` (the weights come from the model's state dict instead of a checkpoint on disk)."""
    return load_kernel().from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                         device=str(model.device), dtype=dtype or model.dtype, fused=fused,
                                         attention=attention)
