"""Dispatch: per-expert padded row blocks on the device (native op: kernel_src/moe/).

``moe_dispatch(topk_ids int32 (T, k), E, block_m) -> (sorted_pos (nb * block_m,), block_expert (nb,))``.
Every buffer is sized from M = T * k alone: each expert that is hit gets ceil(count / block_m)
blocks, so at most ``nb = (M + min(E, M) * (block_m - 1)) // block_m`` blocks are used, whatever
the routing (all tokens on one expert included). Unused blocks carry expert -1; padding rows
carry slot -1. No count ever travels to the host. Ids outside [0, E) are routed nowhere (no row);
``moe_finalize(y, ids, E, skip_foreign)`` then flags their token's row NaN, or with ``skip_foreign``
(expert parallelism: another rank's expert) leaves them out of the sum.
"""

from __future__ import annotations

import torch

from .._ops import add_op_namespace_prefix, ops


def num_blocks_bound(m, num_experts: int, block_m: int):
    """Works on ints and on torch.SymInts (no data-dependent shape)."""
    return (m + torch.sym_min(num_experts, m) * (block_m - 1)) // block_m


def moe_dispatch(topk_ids: torch.Tensor, num_experts: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    return ops.moe_dispatch(topk_ids, num_experts, block_m)


@torch.library.register_fake(add_op_namespace_prefix("moe_dispatch"))
def _moe_dispatch_fake(topk_ids, num_experts, block_m):
    nb = num_blocks_bound(topk_ids.numel(), num_experts, block_m)
    return topk_ids.new_empty((nb * block_m,), dtype=torch.int32), topk_ids.new_empty((nb,), dtype=torch.int32)


@torch.library.register_fake(add_op_namespace_prefix("moe_finalize"))
def _moe_finalize_fake(y, topk_ids, num_experts, skip_foreign=False):
    return y.new_empty((topk_ids.shape[0], y.shape[1]))
