"""GPT-OSS MoE block: routing (moe_route), experts (moe_experts) and both (moe).

Data path (docs/moe.md): router GEMM (cuBLAS) -> moe_route (fused top-k + softmax) ->
moe_dispatch (counts, padded offsets, permutation, on the GPU) -> grouped GEMM 1 (gather,
gate_up, bias, clamped SwiGLU) -> grouped GEMM 2 (down, bias, routing weight) -> moe_finalize
(k rows per token summed in fp32, token order). ``moe_mxfp4`` / ``moe_experts_mxfp4``: the same with the
checkpoint's MXFP4 expert weights (moe/mxfp4.py). ``moe_fp8`` / ``moe_experts_fp8``: FP8 (e4m3) weights and
per-token FP8 activations, ``finalize_slice`` the weighted top-k reduction cropped to H (moe/fp8.py).
"""

from .experts import moe, moe_experts
from .fp8 import finalize_slice, moe_experts_fp8, moe_fp8
from .mxfp4 import moe_experts_mxfp4, moe_mxfp4
from .routing import moe_route

__all__ = ["finalize_slice", "moe", "moe_experts", "moe_experts_fp8", "moe_experts_mxfp4", "moe_fp8", "moe_mxfp4",
           "moe_route"]
