"""GPT-OSS in transformers with our RMSNorm and MoE layers (the package's ``from_pretrained``, attention left
to transformers' eager code), against the unkernelized model."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import dispatched, record_ops, rel_err
from tiny_gpt_oss import with_our_kernels


def _model(device, dtype, *, layers, hidden, inter, heads, kv_heads, experts, top_k, vocab, seed=0, std=None):
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(seed)
    config = GptOssConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=64 if hidden >= 1024 else 16,
        num_local_experts=experts, num_experts_per_tok=top_k, sliding_window=128,
        max_position_embeddings=4096, layer_types=["sliding_attention", "full_attention"][:layers] * (layers // 2 or 1),
    )
    config._attn_implementation = "eager"
    config._experts_implementation = "eager"
    with torch.device(device):
        model = GptOssForCausalLM(config)
    if std is not None:  # random weights everywhere (the default init leaves the router at zero)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" not in name:
                    p.normal_(0.0, std)
    return model.to(dtype).eval()


def _kernelize(model, device):
    return with_our_kernels(model, attention=False)


def _logits(model, ids, names=None):
    with torch.inference_mode():
        return model(ids).logits.float()


def _stats(got, expected):
    return rel_err(got, expected), (got.argmax(-1) == expected.argmax(-1)).float().mean().item()


def _compare(kernel, model32, device, seq=512):
    """The issue's criterion on the fp32 model (ours vs unkernelized: logits within 2e-2, argmax >= 99%);
    then in bf16, where the unkernelized model itself drifts from the fp32 one by rounding (routing
    near-ties flip), ours must stay as close to the fp32 model as transformers' bf16 model is."""
    ids = torch.randint(1, model32.config.vocab_size, (1, seq), device=device)
    expected = _logits(model32, ids)
    ours32 = _kernelize(model32, device)
    with record_ops() as names:
        got = _logits(ours32, ids)
    assert dispatched(names, kernel, "moe_experts"), "our MoE layer did not run"
    assert dispatched(names, kernel, "rms_norm"), "our RMSNorm layer did not run"
    err, agree = _stats(got, expected)
    print(f"fp32: logits rel err {err:.2e}, argmax agreement {agree:.4f}")
    assert err <= 2e-2, err
    assert agree >= 0.99, agree
    del ours32
    if device != "cuda":
        return
    model16 = copy.deepcopy(model32).to(torch.bfloat16)
    eager16 = _logits(model16, ids)
    ours16 = _logits(_kernelize(model16, device), ids)
    e_err, e_agree = _stats(eager16, expected)
    o_err, o_agree = _stats(ours16, expected)
    x_err, x_agree = _stats(ours16, eager16)
    print(f"bf16 vs fp32 model: transformers {e_err:.2e} / {e_agree:.4f}, ours {o_err:.2e} / {o_agree:.4f}; "
          f"ours vs transformers bf16 {x_err:.2e} / {x_agree:.4f}")
    assert o_err <= 1.5 * e_err + 1e-2
    assert o_agree >= e_agree - 0.01


@pytest.mark.kernels_ci
def test_tiny_gpt_oss_kernelized(kernel, device):
    model = _model(device, torch.float32, layers=2, hidden=64, inter=48, heads=4, kv_heads=2, experts=8, top_k=4,
                   vocab=256, std=0.1)
    _compare(kernel, model, device)


@pytest.mark.gpu
def test_two_layer_gpt_oss_20b_shapes_kernelized(kernel):
    model = _model("cuda", torch.float32, layers=2, hidden=2880, inter=2880, heads=64, kv_heads=8, experts=32,
                   top_k=4, vocab=201088, std=0.02)
    _compare(kernel, model, "cuda")
