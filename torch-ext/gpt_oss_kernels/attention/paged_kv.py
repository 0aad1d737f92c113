"""The keys and values a sliding-window layer attends to under transformers' continuous batching, in one pass.

transformers' paged cache (``PagedAttentionCache``, 5.22-5.25) keeps a sliding layer's K/V in a ring and, per step,
lists in ``read_index`` the cache rows each sequence reads, segment by segment (``cu_seqlens_k``), with a sentinel
row id standing in for the step's new tokens: they are the last ``q_len`` entries of their sequence's segment,
in order (``SlidingAttentionCacheAllocator.get_read_indices``). Its own update reads those rows with
``index_select`` and then puts the new rows in with ``masked_scatter_``, whose mask is expanded to every element
and scanned: on an H200 (2026-12-07) that scan, the scatter and the mask took 1.07 s of the 4.63 s of kernel time
of a 64-request run (docs/transformers.md "Continuous batching"). Here the new row of read position ``r`` in
sequence ``b`` is ``r - cu_seqlens_k[b + 1] + cu_seqlens_q[b + 1]`` (the segment's last ``q_len`` positions map to
its ``q_len`` new tokens), so one kernel writes K and V rows in read order with no scan and no host sync.

Rows of ``read_index`` past the last segment (padding for CUDA graphs) are read from the cache like the others
(transformers points them at a trash row). A read index outside the cache, or a sentinel with no new token behind it,
gives NaN rows, never a stray read.
"""

from __future__ import annotations

import torch

from .. import _checks

_INDEX_DTYPES = (torch.int32, torch.int64)


def _check(k_cache, v_cache, k_new, v_new, read_index, cu_seqlens_k, cu_seqlens_q):
    for name, t in (("k_cache", k_cache), ("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
        _checks.tensor(name, t, ndim=3)
    for name, t in (("v_cache", v_cache), ("k_new", k_new), ("v_new", v_new)):
        if t.dtype != k_cache.dtype:
            raise TypeError(f"{name} must have k_cache's dtype {k_cache.dtype}, got {t.dtype}")
        if t.device != k_cache.device:
            raise ValueError(f"{name} must be on k_cache's device {k_cache.device}, got {t.device}")
        if t.shape[1:] != k_cache.shape[1:]:
            raise ValueError(f"{name} must have k_cache's (heads, head_dim) {tuple(k_cache.shape[1:])}, "
                             f"got shape {tuple(t.shape)}")
    if v_new.shape[0] != k_new.shape[0]:
        raise ValueError(f"v_new must have k_new's {k_new.shape[0]} rows, got {v_new.shape[0]}")
    for name, t in (("read_index", read_index), ("cu_seqlens_k", cu_seqlens_k), ("cu_seqlens_q", cu_seqlens_q)):
        _checks.tensor(name, t, ndim=1)
        if t.dtype not in _INDEX_DTYPES:
            raise TypeError(f"{name} must be int32 or int64, got {t.dtype}")
        if t.device != k_cache.device:
            raise ValueError(f"{name} must be on k_cache's device {k_cache.device}, got {t.device}")
    if cu_seqlens_k.numel() != cu_seqlens_q.numel() or cu_seqlens_k.numel() < 1:
        raise ValueError(f"cu_seqlens_k and cu_seqlens_q must have one entry per sequence plus one, got "
                         f"{cu_seqlens_k.numel()} and {cu_seqlens_q.numel()}")


def _torch(k_cache, v_cache, k_new, v_new, read_index, cu_seqlens_k, cu_seqlens_q, sentinel):
    """The same rows in torch (the CPU path, and CUDA tensors whose head_dim is not contiguous)."""
    n_seg = cu_seqlens_k.numel() - 1
    idx = read_index.long()
    r = torch.arange(idx.numel(), device=idx.device)
    ends_k, ends_q = cu_seqlens_k[1:].long(), cu_seqlens_q[1:].long()
    seg = torch.searchsorted(ends_k, r, right=True)  # ends at or before r: r's sequence
    in_seg = seg < n_seg
    segc = seg.clamp(max=max(n_seg - 1, 0))
    new_row = r - ends_k[segc] + ends_q[segc] if n_seg else torch.zeros_like(r)
    sent = idx == sentinel
    is_new = sent & in_seg & (new_row >= 0) & (new_row < k_new.shape[0])
    n_cache = min(k_cache.shape[0], v_cache.shape[0])  # transformers' K and V views of a layer differ in length
    ok = is_new | (~sent & (idx >= 0) & (idx < n_cache))
    outs = []
    for cache, new in ((k_cache, k_new), (v_cache, v_new)):
        rows = cache.index_select(0, torch.where(ok & ~is_new, idx, 0).clamp(0, max(n_cache - 1, 0)))
        if new.shape[0]:
            rows = torch.where(is_new[:, None, None], new.index_select(0, torch.where(is_new, new_row, 0)), rows)
        outs.append(torch.where(ok[:, None, None], rows, torch.full_like(rows, float("nan"))))
    return outs[0], outs[1]


def paged_window_kv(k_cache: torch.Tensor, v_cache: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
                    read_index: torch.Tensor, cu_seqlens_k: torch.Tensor, cu_seqlens_q: torch.Tensor,
                    sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """K and V rows (read_index.numel(), heads, head_dim) in read order: cache row ``read_index[r]``, or for a
    ``sentinel`` entry the new token it stands for (see the module docstring). k_cache / v_cache (rows, heads,
    head_dim; a row id is valid below both lengths), k_new / v_new (tokens, heads, head_dim); cu_seqlens_k /
    cu_seqlens_q the read and query segments (sequences + 1 entries)."""
    _check(k_cache, v_cache, k_new, v_new, read_index, cu_seqlens_k, cu_seqlens_q)
    if k_cache.device.type != "cuda" or any(t.stride(2) != 1 for t in (k_cache, v_cache, k_new, v_new)):
        return _torch(k_cache, v_cache, k_new, v_new, read_index, cu_seqlens_k, cu_seqlens_q, sentinel)
    from ._triton_paged_kv import paged_window_kv_cuda

    return paged_window_kv_cuda(k_cache, v_cache, k_new, v_new, read_index, cu_seqlens_k, cu_seqlens_q, sentinel)
