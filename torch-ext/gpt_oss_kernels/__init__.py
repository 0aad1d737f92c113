"""gpt-oss-kernels: fused kernels for GPT-OSS-style mixture-of-experts models.

The public API is exactly ``__all__``; ``layers`` holds the kernelize layers (and their ``*Layout``
parameter classes), ``reference`` the plain-torch math every test compares against, and
``kernel_config`` / ``from_pretrained`` put every layer into a transformers GPT-OSS model, and
``DecodeRunner`` decodes with N steps per CUDA-graph launch.
"""

from . import layers, quant, reference
from .moe import moe, moe_experts, moe_experts_mxfp4, moe_mxfp4, moe_route
from .moe import finalize_slice, moe_experts_fp8, moe_fp8  # fp8
from .quant import dequantize_mxfp4, mxfp4_checkpoint_blocks, mxfp4_kernel_words, quantize_experts_mxfp4  # mxfp4
from .quant import quantize_mxfp4  # mxfp4
from .quant import convert_checkpoint
from .quant import dequantize_fp8, pad_quant_fp8, quantize_experts_fp8, quantize_fp8, rms_norm_quant_fp8  # fp8
from .attention import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache, rotary_pos_emb  # attention
from .attention import multi_linear  # attention
from .norm import fused_add_rms_norm, rms_norm
from .integrations import DecodeRunner, checkpoint_config, from_pretrained, kernel_config

__all__ = [
    "DecodeRunner",
    "checkpoint_config",
    "convert_checkpoint",
    "flash_attn_func",  # attention
    "flash_attn_varlen_func",  # attention
    "flash_attn_with_kvcache",  # attention
    "rotary_pos_emb",  # attention
    "multi_linear",  # attention
    "from_pretrained",
    "fused_add_rms_norm",
    "kernel_config",
    "layers",
    "moe",
    "moe_experts",
    "moe_experts_mxfp4",  # mxfp4
    "moe_mxfp4",  # mxfp4
    "dequantize_mxfp4",  # mxfp4
    "mxfp4_checkpoint_blocks",  # mxfp4
    "mxfp4_kernel_words",  # mxfp4
    "quantize_mxfp4",  # mxfp4
    "quantize_experts_mxfp4",  # mxfp4
    "quant",  # mxfp4
    "dequantize_fp8",  # fp8
    "finalize_slice",  # fp8
    "moe_experts_fp8",  # fp8
    "moe_fp8",  # fp8
    "pad_quant_fp8",  # fp8
    "quantize_experts_fp8",  # fp8
    "quantize_fp8",  # fp8
    "rms_norm_quant_fp8",  # fp8
    "moe_route",
    "reference",
    "rms_norm",
]
