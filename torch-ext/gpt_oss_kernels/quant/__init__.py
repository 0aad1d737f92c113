"""Weight formats of GPT-OSS experts (MXFP4: ``quant.mxfp4``; FP8: ``quant.fp8``), per-token FP8 activations
(``quant.fp8_act``) and checkpoint conversion between them (``quant.checkpoint``)."""

from .checkpoint import convert_checkpoint
from .fp8 import dequantize_fp8, quantize_experts_fp8, quantize_fp8
from .fp8_act import pad_quant_fp8, rms_norm_quant_fp8
from .mxfp4 import dequantize_mxfp4, mxfp4_checkpoint_blocks, mxfp4_kernel_words, quantize_experts_mxfp4, quantize_mxfp4

__all__ = ["convert_checkpoint", "dequantize_fp8", "dequantize_mxfp4", "mxfp4_checkpoint_blocks", "mxfp4_kernel_words",
           "pad_quant_fp8", "quantize_experts_fp8", "quantize_experts_mxfp4", "quantize_fp8", "quantize_mxfp4",
           "rms_norm_quant_fp8"]
