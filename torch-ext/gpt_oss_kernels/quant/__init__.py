"""Weight formats of GPT-OSS checkpoints (MXFP4: ``quant.mxfp4``)."""

from .mxfp4 import dequantize_mxfp4, quantize_experts_mxfp4, quantize_mxfp4

__all__ = ["dequantize_mxfp4", "quantize_experts_mxfp4", "quantize_mxfp4"]
