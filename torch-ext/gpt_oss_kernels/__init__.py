"""gpt-oss-kernels: fused kernels for GPT-OSS-style mixture-of-experts models.

The public API is exactly ``__all__``; ``layers`` holds the kernelize layers and
``reference`` the plain-torch math every test compares against.
"""

from . import layers, reference
from .norm import fused_add_rms_norm, rms_norm

__all__ = [
    "fused_add_rms_norm",
    "layers",
    "reference",
    "rms_norm",
]
