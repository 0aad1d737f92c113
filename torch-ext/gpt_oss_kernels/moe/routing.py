"""moe_route: the GPT-OSS router after its GEMM (native op: kernel_src/moe/)."""

from __future__ import annotations

import torch

from .. import _checks
from .._ops import add_op_namespace_prefix, ops


def check_top_k(top_k: object, num_experts: int) -> int:
    return _checks.integer("top_k", top_k, minimum=1, maximum=min(num_experts, 32))


def moe_route(router_logits: torch.Tensor, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the router logits, then a softmax over those k values (GPT-OSS's router).

    ``router_logits``: (T, E), fp16/bf16/fp32. Returns ``(topk_weights fp32 (T, k), topk_ids int32
    (T, k))``, ids in descending logit order; NaN ranks highest. Among equal logits the CPU variant
    picks as torch.topk does (it calls it); the CUDA kernel picks the lower index (torch.topk on CUDA
    promises no order among equal values). ``1 <= top_k <= min(E, 32)``.
    """
    _checks.tensor("router_logits", router_logits, dtypes=_checks.FLOAT_DTYPES, ndim=2)
    top_k = check_top_k(top_k, router_logits.shape[1])
    return ops.moe_route(router_logits.contiguous(), top_k)


@torch.library.register_fake(add_op_namespace_prefix("moe_route"))
def _moe_route_fake(router_logits, top_k):
    t = router_logits.shape[0]
    return (router_logits.new_empty((t, top_k), dtype=torch.float32),
            router_logits.new_empty((t, top_k), dtype=torch.int32))
