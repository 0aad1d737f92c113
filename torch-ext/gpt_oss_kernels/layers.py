"""Layers for `kernels.kernelize`, under transformers' GPT-OSS hub names.

Kernelize binds each ``forward`` to the ORIGINAL module, so ``self`` is transformers' module
(``self.weight`` is GptOssRMSNorm's). The kernels layer rules apply: no ``__init__``, no
methods but ``forward``, only the ``can_torch_compile`` / ``has_backward`` attributes.
"""

from __future__ import annotations

import torch
from torch import nn

from .norm import rms_norm


class RMSNorm(nn.Module):
    """Replaces ``GptOssRMSNorm.forward`` (hub name ``"RMSNorm"``)."""

    weight: torch.Tensor
    variance_epsilon: float

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)
