"""Layers for `kernels.kernelize`, under transformers' GPT-OSS hub names.

Kernelize binds each ``forward`` to the ORIGINAL module, so ``self`` is transformers' module
(``self.weight`` is GptOssRMSNorm's). The kernels layer rules apply: no ``__init__``, no
methods but ``forward``, only the ``can_torch_compile`` / ``has_backward`` attributes.
"""

from __future__ import annotations

import torch
from torch import nn

from .moe.experts import moe_with_scores
from .norm import rms_norm


class RMSNorm(nn.Module):
    """Replaces ``GptOssRMSNorm.forward`` (hub name ``"RMSNorm"``)."""

    weight: torch.Tensor
    variance_epsilon: float

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)


# --- attention / rotary ----------------------------------------------------------------------
from .attention.rotary import rotary_pos_emb as _rotary_pos_emb  # noqa: E402


class RotaryPosEmb(nn.Module):
    """Replaces transformers' ``apply_rotary_pos_emb`` (hub function name ``"rotary_pos_emb"``,
    attached to ``GptOssAttention`` through ``use_kernelized_func``)."""

    can_torch_compile = True
    has_backward = False

    def forward(self, q, k, cos, sin, unsqueeze_dim=1):
        return _rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)


# The layer name transformers' default mapping uses for "rotary_pos_emb" (kernels-community/rotary).
apply_rotary_transformers = RotaryPosEmb


class MoeMLP(nn.Module):
    """Replaces ``GptOssMLP.forward`` (hub name ``"MegaBlocksMoeMLP"``): router + experts.

    Returns ``(out (B, S, H), router_scores (B*S, k))`` like transformers' GptOssMLP: the softmax
    of the top-k logits, in the activations' dtype.
    """

    router: nn.Module
    experts: nn.Module

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, h = hidden_states.shape
        router, experts = self.router, self.experts
        out, scores = moe_with_scores(
            hidden_states.reshape(-1, h), router.weight, router.bias, router.top_k,
            experts.gate_up_proj, experts.gate_up_proj_bias, experts.down_proj, experts.down_proj_bias,
            experts.alpha, experts.limit,
        )
        return out.reshape(b, s, h), scores
