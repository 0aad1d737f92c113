"""The MoE block as the layers run it: expert weights read from a module, whatever their format.

A GPT-OSS experts module stores its weights in one of these formats (the layer picks the path from
what is stored, never from a flag):

* bf16 (or fp16 / fp32): ``gate_up_proj`` (E, H, 2I), ``down_proj`` (E, I, H), as transformers'
  ``GptOssExperts``;
* MXFP4, as the checkpoint ships: ``gate_up_proj_blocks`` (E, 2I, H/32, 16) uint8 with
  ``gate_up_proj_scales`` (E, 2I, H/32) uint8, and the same for ``down_proj``;
* FP8 (quant/fp8.py): ``gate_up_proj_fp8`` (E, 2I, H) float8_e4m3fn with ``gate_up_proj_scale`` float32 (E, 2I)
  per channel or (E, 2I/128, H/128) per block, and the same for ``down_proj``.

Biases (``*_bias``), ``alpha`` and ``limit`` are the same in every format.

Under transformers' expert parallelism (docs/transformers.md, "Expert parallelism") the experts module's
forward is hooked (``_is_hooked``): the hook maps the router's global ids to this rank's experts and sums
the ranks' outputs, so the block calls the module instead of reading the weights itself. The module then
holds only its rank's experts (``_is_expert_parallel``, set by transformers when it splits them) and is
called with ids outside [0, E_local) for the other ranks' experts (transformers' sentinel E_local): those
slots contribute zero (the ops' ``skip_foreign``), with no host sync.
"""

from __future__ import annotations

import torch

from . import experts as _experts
from . import fp8 as _fp8
from . import mxfp4 as _mxfp4


def expert_format(experts: torch.nn.Module) -> str:
    """``"mxfp4"``, ``"fp8"`` or ``"bf16"`` (any plain float dtype), from the tensors the module holds."""
    if getattr(experts, "gate_up_proj_blocks", None) is not None:
        return "mxfp4"
    if getattr(experts, "gate_up_proj_fp8", None) is not None:
        return "fp8"
    if isinstance(getattr(experts, "gate_up_proj", None), torch.Tensor):
        return "bf16"
    raise TypeError(
        f"{type(experts).__name__} holds no GPT-OSS expert weights (gate_up_proj, or gate_up_proj_blocks / "
        "gate_up_proj_scales for MXFP4)"
    )


def experts_forward(experts: torch.nn.Module, hidden: torch.Tensor, topk_ids: torch.Tensor,
                    topk_weights: torch.Tensor) -> torch.Tensor:
    """The experts alone (T, H) -> (T, H): transformers' experts interface.

    Ids outside [0, E): bad input (the ops' default: CPU raises, CUDA flags the token NaN), except on a
    module whose experts transformers split over expert-parallel ranks (``_is_expert_parallel``), where
    they are the other ranks' experts and contribute zero (``skip_foreign``)."""
    skip = {"skip_foreign": True} if getattr(experts, "_is_expert_parallel", False) else {}
    if skip:
        _check_local_params(experts)
    fmt = expert_format(experts)
    if fmt == "fp8":
        return _fp8.moe_experts_fp8(
            hidden, topk_ids, topk_weights, experts.gate_up_proj_fp8, experts.gate_up_proj_scale,
            experts.gate_up_proj_bias, experts.down_proj_fp8, experts.down_proj_scale, experts.down_proj_bias,
            experts.alpha, experts.limit, **skip)
    if fmt == "mxfp4":
        return _mxfp4.moe_experts_mxfp4(
            hidden, topk_ids, topk_weights, experts.gate_up_proj_blocks, experts.gate_up_proj_scales,
            experts.gate_up_proj_bias, experts.down_proj_blocks, experts.down_proj_scales, experts.down_proj_bias,
            experts.alpha, experts.limit, **skip)
    return _experts.moe_experts(hidden, topk_ids, topk_weights, experts.gate_up_proj, experts.gate_up_proj_bias,
                                experts.down_proj, experts.down_proj_bias, experts.alpha, experts.limit, **skip)


def _check_local_params(experts: torch.nn.Module) -> None:
    """Under transformers' expert parallelism the experts' parameters are DTensors, swapped for their local
    shards only while transformers' hook runs the forward. A DTensor here means the hook is gone (kernels'
    kernelize replaces ``forward`` on the instance, and transformers' ``use_kernels`` route kernelizes after
    the hook is installed): the call would see global ids against local experts."""
    from torch.distributed.tensor import DTensor  # a module split by transformers implies torch.distributed

    w = getattr(experts, "gate_up_proj", None)
    if w is None:
        w = getattr(experts, "gate_up_proj_blocks", None)
    if isinstance(w, DTensor):
        raise RuntimeError(
            f"{type(experts).__name__}: the experts are split over expert-parallel ranks, but transformers' "
            "expert-parallel hook no longer runs this forward (kernelize replaced it). Load the model with "
            "gpt_oss_kernels' from_pretrained(..., distributed_config=...), which keeps the hook.")


def moe_block(hidden: torch.Tensor, router: torch.nn.Module, experts: torch.nn.Module, hidden_fp8=None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Router + experts on ``hidden`` (T, H): ``(out (T, H), router scores (T, k) in hidden's dtype)``.
    ``hidden_fp8``: ``(q, scale)`` of hidden from ``rms_norm_quant_fp8`` (FP8 experts only: not quantized again)."""
    if getattr(experts, "_is_hooked", False):
        # Expert parallelism: the hooked experts forward takes the routes (transformers' own MXFP4 block does
        # the same). The router's scores are in its own dtype, as transformers' GptOssMLP returns them.
        _, scores, ids = router(hidden)
        return experts(hidden, ids, scores), scores
    fmt = expert_format(experts)
    if fmt == "fp8":
        return _fp8.moe_with_scores_fp8(
            hidden, router.weight, router.bias, router.top_k, experts.gate_up_proj_fp8, experts.gate_up_proj_scale,
            experts.gate_up_proj_bias, experts.down_proj_fp8, experts.down_proj_scale, experts.down_proj_bias,
            experts.alpha, experts.limit, hidden_fp8=hidden_fp8)
    if fmt == "mxfp4":
        return _mxfp4.moe_with_scores_mxfp4(
            hidden, router.weight, router.bias, router.top_k, experts.gate_up_proj_blocks,
            experts.gate_up_proj_scales, experts.gate_up_proj_bias, experts.down_proj_blocks,
            experts.down_proj_scales, experts.down_proj_bias, experts.alpha, experts.limit)
    return _experts.moe_with_scores(hidden, router.weight, router.bias, router.top_k, experts.gate_up_proj,
                                    experts.gate_up_proj_bias, experts.down_proj, experts.down_proj_bias,
                                    experts.alpha, experts.limit)
