"""Attention with sinks, sliding window and GQA, under flash-attn's entry-point names.

transformers' hub-kernel loader (``attn_implementation="<repo id>"``) calls these three functions
with the keyword arguments it finds in their signatures: ``causal``, ``softmax_scale``,
``window_size`` (``(sliding_window - 1, sliding_window - 1)``), ``s_aux`` (the sinks),
``block_table`` / ``cache_seqlens`` (paged decode), ``max_seqlen_q/k``, ``dropout_p``,
``deterministic``. Everything runs through one custom op, ``attn_fwd`` (functional, with a fake
implementation), so the functions work under ``torch.compile(fullgraph=True)`` and CUDA graphs:
no host synchronisation, ``max_seqlen_*`` are host ints from the caller. Eager CUDA calls skip the op's
Python dispatch and call its implementation (``_attn_fwd``).

CUDA: Triton (``_triton_attn.py``, imported only on CUDA). CPU: vectorised torch (``_cpu.py``).
"""

from __future__ import annotations

from typing import Optional

import torch

from .. import _checks
from .._ops import add_op_namespace_prefix, ops

_IN_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_INDEX_DTYPES = (torch.int32, torch.int64)


# --- the custom op ------------------------------------------------------------------------


def _attn_fwd_impl(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: Optional[torch.Tensor],
    cu_seqlens_k: Optional[torch.Tensor],
    seqlens_k: Optional[torch.Tensor],
    block_table: Optional[torch.Tensor],
    s_aux: Optional[torch.Tensor],
    batch: int,
    seq_q: int,
    max_seqlen_q: int,
    max_seqlen_k: int,
    scale: float,
    window_left: int,
    window_right: int,
) -> torch.Tensor:
    if q.numel() == 0 or batch == 0:
        return q.new_zeros(q.shape[:-1] + (v.shape[-1],))
    kw = dict(
        cu_q=cu_seqlens_q, cu_k=cu_seqlens_k, seqlens_k=seqlens_k, block_table=block_table, sinks=s_aux,
        batch=batch, seq_q_fixed=seq_q, max_seqlen_q=max_seqlen_q, max_seqlen_k=max_seqlen_k, scale=scale,
        window_left=window_left, window_right=window_right,
    )
    if q.is_cuda:
        from . import _triton_attn

        return _triton_attn.attn_fwd(q, k, v, None, **kw)  # allocates only where a Triton kernel writes
    from . import _cpu

    out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    return _cpu.attn_fwd(q, k, v, out, **kw)


def _define_op():
    name = add_op_namespace_prefix("attn_fwd")
    ns, op = name.split("::")
    try:  # the package may be imported twice (two loaders of the same build): define once
        getattr(getattr(torch.ops, ns), op)
        return
    except AttributeError:
        pass
    fn = torch.library.custom_op(name, mutates_args=())(_attn_fwd_impl)

    @fn.register_fake
    def _fake(q, k, v, cu_seqlens_q, cu_seqlens_k, seqlens_k, block_table, s_aux, batch, seq_q,
              max_seqlen_q, max_seqlen_k, scale, window_left, window_right):
        return q.new_empty(q.shape[:-1] + (v.shape[-1],))


_define_op()


def _attn_fwd(q, *args):
    """``ops.attn_fwd``; in eager CUDA code (not traced, no dispatch mode) its implementation directly.

    The custom op's Python dispatch (autograd wrapper, alias checks) cost about a third of the host time of a
    batch-1 decode call (cProfile, docs/decisions-attention.md "session 8"), and batch-1 decode is host-bound.
    torch.compile and dispatch modes (FakeTensor, the tests' op recorder) still see the op; CUDA-graph capture
    records the same kernels either way. The MoE block does the same (moe/experts.py ``_fast_path_ok``)."""
    if q.is_cuda and not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0:
        return _attn_fwd_impl(q, *args)
    return ops.attn_fwd(q, *args)


# --- validation -----------------------------------------------------------------------------


def _host_int(name: str, value: object) -> int:
    if isinstance(value, torch.SymInt):
        return value  # type: ignore[return-value]
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a host int (a tensor would need a device sync), got a tensor")
    return _checks.integer(name, value, minimum=0)


def _window(window_size, causal: bool) -> tuple[int, int]:
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise TypeError(f"window_size must be a pair (left, right), got {window_size!r}")
    left = _checks.integer("window_size[0]", window_size[0], minimum=-1)
    right = _checks.integer("window_size[1]", window_size[1], minimum=-1)
    if causal:
        right = 0
    return left, right


def _common(q, k, v, s_aux, softmax_scale, dropout_p, softcap, alibi_slopes, qdim: int, kdim: int):
    _checks.tensor("q", q, dtypes=_IN_DTYPES, ndim=qdim)
    _checks.tensor("k", k, dtypes=_IN_DTYPES, ndim=kdim)
    _checks.tensor("v", v, dtypes=_IN_DTYPES, ndim=kdim)
    _checks.same_dtype("q", q, k=k, v=v)
    _checks.same_device("q", q, k=k, v=v, s_aux=s_aux)
    hq, d = q.shape[-2], q.shape[-1]
    hkv = k.shape[-2]
    if k.shape[-1] != d or v.shape[-1] != d or v.shape[:-1] != k.shape[:-1]:
        raise ValueError(f"k and v must have shape (..., Hkv, {d}) like q's head_dim, got k {tuple(k.shape)}, v {tuple(v.shape)}")
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"q's heads ({hq}) must be a multiple of k's heads ({hkv})")
    if q.is_cuda:
        if q.dtype == torch.float32:
            raise TypeError("q must be float16 or bfloat16 on CUDA, got torch.float32")
        if d not in (16, 32, 64, 128, 256):
            raise ValueError(f"head_dim must be 16, 32, 64, 128 or 256 on CUDA, got {d}")
    _checks.optional("s_aux", s_aux, (hq,), dtypes=_IN_DTYPES)
    if dropout_p:
        raise ValueError(f"dropout_p must be 0 (forward-only inference kernel), got {dropout_p}")
    if softcap:
        raise ValueError(f"softcap is not supported, got {softcap}")
    if alibi_slopes is not None:
        raise ValueError("alibi_slopes is not supported")
    if softmax_scale is None:
        return d ** -0.5
    return _checks.number("softmax_scale", softmax_scale)


def _rows(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _index(name, t, device, ndim):
    _checks.tensor(name, t, dtypes=_INDEX_DTYPES, ndim=ndim)
    if t.device != device:
        raise ValueError(f"{name} must be on q's device ({device}), got {t.device}")
    return t.to(torch.int32).contiguous()


# --- public entry points ----------------------------------------------------------------------


def flash_attn_varlen_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    cu_seqlens_k: torch.Tensor,
    max_seqlen_q: int,
    max_seqlen_k: int,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    deterministic: bool = False,
    block_table: Optional[torch.Tensor] = None,
    s_aux: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Packed variable-length attention. ``q (Tq, Hq, D)``, ``k``/``v`` ``(Tk, Hkv, D)`` (or, with
    ``block_table (B, pages)``, paged caches ``(blocks, page, Hkv, D)`` holding each sequence's
    ``cu_seqlens_k[b+1] - cu_seqlens_k[b]`` keys). ``cu_seqlens_* (B+1,)`` int32. Causal masking is
    bottom-right aligned; ``window_size = (left, right)`` inclusive, -1 unbounded; ``s_aux (Hq,)``
    one sink logit per head, joining the softmax denominator only. Returns ``(Tq, Hq, D)``."""
    scale = _common(q, k, v, s_aux, softmax_scale, dropout_p, softcap, alibi_slopes, 3, 4 if block_table is not None else 3)
    cu_q = _index("cu_seqlens_q", cu_seqlens_q, q.device, 1)
    cu_k = _index("cu_seqlens_k", cu_seqlens_k, q.device, 1)
    if cu_q.shape != cu_k.shape or cu_q.shape[0] < 1:
        raise ValueError(f"cu_seqlens_q and cu_seqlens_k must both have shape (B+1,), got {tuple(cu_q.shape)}, {tuple(cu_k.shape)}")
    mq = _host_int("max_seqlen_q", max_seqlen_q)
    mk = _host_int("max_seqlen_k", max_seqlen_k)
    left, right = _window(window_size, causal)
    batch = cu_q.shape[0] - 1
    seqlens_k = None
    if block_table is not None:
        bt = _index("block_table", block_table, q.device, 2)
        if bt.shape[0] != batch:
            raise ValueError(f"block_table must have {batch} rows (one per sequence), got {tuple(bt.shape)}")
        seqlens_k = (cu_k[1:] - cu_k[:-1]).contiguous()
        mk = bt.shape[1] * k.shape[1]
        cu_k_arg = None
    else:
        bt = None
        cu_k_arg = cu_k
    return _attn_fwd(_rows(q), _rows(k), _rows(v), cu_q, cu_k_arg, seqlens_k, bt,
                        s_aux.contiguous() if s_aux is not None else None,
                        batch, 0, mq, mk, scale, left, right)


def flash_attn_func(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float = 0.0,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    alibi_slopes: Optional[torch.Tensor] = None,
    deterministic: bool = False,
    s_aux: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Batched attention: ``q (B, Sq, Hq, D)``, ``k``/``v`` ``(B, Sk, Hkv, D)`` -> ``(B, Sq, Hq, D)``."""
    scale = _common(q, k, v, s_aux, softmax_scale, dropout_p, softcap, alibi_slopes, 4, 4)
    if k.shape[0] != q.shape[0]:
        raise ValueError(f"k must have q's batch size {q.shape[0]}, got {tuple(k.shape)}")
    left, right = _window(window_size, causal)
    b, sq, hq, d = q.shape
    sk = k.shape[1]
    seqlens = torch.full((b,), sk, dtype=torch.int32, device=q.device)
    out = _attn_fwd(_rows(q).reshape(b * sq, hq, d), _rows(k), _rows(v), None, None, seqlens, None,
                       s_aux.contiguous() if s_aux is not None else None, b, sq, sq, sk, scale, left, right)
    return out.view(b, sq, hq, d)


def _append_kv(k_cache, v_cache, k, v, cache_seqlens, block_table):
    b, sq = k.shape[:2]
    pos = cache_seqlens.long()[:, None] + torch.arange(sq, device=k.device)[None, :]  # (B, Sq)
    if block_table is None:
        rows = torch.arange(b, device=k.device)[:, None].expand(b, sq)
        k_cache.index_put_((rows, pos), k)
        v_cache.index_put_((rows, pos), v)
    else:
        page = k_cache.shape[1]
        blk = block_table.long().gather(1, pos // page)
        k_cache.index_put_((blk, pos % page), k)
        v_cache.index_put_((blk, pos % page), v)


def flash_attn_with_kvcache(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    k: Optional[torch.Tensor] = None,
    v: Optional[torch.Tensor] = None,
    rotary_cos: Optional[torch.Tensor] = None,
    rotary_sin: Optional[torch.Tensor] = None,
    cache_seqlens=None,
    cache_batch_idx: Optional[torch.Tensor] = None,
    cache_leftpad: Optional[torch.Tensor] = None,
    block_table: Optional[torch.Tensor] = None,
    softmax_scale: Optional[float] = None,
    causal: bool = False,
    window_size: tuple[int, int] = (-1, -1),
    softcap: float = 0.0,
    rotary_interleaved: bool = True,
    alibi_slopes: Optional[torch.Tensor] = None,
    num_splits: int = 0,
    return_softmax_lse: bool = False,
    s_aux: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Decode / chunked append against a KV cache. ``q (B, Sq, Hq, D)``; ``k_cache``/``v_cache``
    ``(B, S_max, Hkv, D)``, or paged ``(blocks, page, Hkv, D)`` with ``block_table (B, pages)``;
    ``cache_seqlens (B,)`` (or an int): tokens already in the cache. When ``k``/``v``
    ``(B, Sq, Hkv, D)`` are given they are written into the cache IN PLACE at
    ``cache_seqlens[b] ...`` first (as flash-attn does), then ``q`` attends to
    ``cache_seqlens + Sq`` keys with bottom-right causal alignment. Returns ``(B, Sq, Hq, D)``.
    ``num_splits`` is ignored (chosen from the shapes)."""
    scale = _common(q, k_cache, v_cache, s_aux, softmax_scale, 0.0, softcap, alibi_slopes, 4, 4)
    for name, val in (("rotary_cos", rotary_cos), ("rotary_sin", rotary_sin), ("cache_batch_idx", cache_batch_idx),
                      ("cache_leftpad", cache_leftpad)):
        if val is not None:
            raise ValueError(f"{name} is not supported")
    if return_softmax_lse:
        raise ValueError("return_softmax_lse is not supported")
    b, sq, hq, d = q.shape
    hkv = k_cache.shape[2]
    if (k is None) != (v is None):
        raise ValueError("k and v must be given together")
    if block_table is not None:
        bt = _index("block_table", block_table, q.device, 2)
        if bt.shape[0] != b:
            raise ValueError(f"block_table must have {b} rows (q's batch), got {tuple(bt.shape)}")
        capacity = bt.shape[1] * k_cache.shape[1]
    else:
        bt = None
        if k_cache.shape[0] < b:
            raise ValueError(f"k_cache must hold at least q's batch ({b}) rows, got {tuple(k_cache.shape)}")
        capacity = k_cache.shape[1]
    if cache_seqlens is None:
        if block_table is not None:
            raise ValueError("cache_seqlens is required with block_table")
        seqlens = torch.full((b,), capacity - (sq if k is not None else 0), dtype=torch.int32, device=q.device)
    elif isinstance(cache_seqlens, int):
        seqlens = torch.full((b,), cache_seqlens, dtype=torch.int32, device=q.device)
    else:
        seqlens = _index("cache_seqlens", cache_seqlens, q.device, 1)
        _checks.shape("cache_seqlens", seqlens, (b,))
    if k is not None:
        _checks.tensor("k", k, dtypes=(q.dtype,), ndim=4)
        _checks.tensor("v", v, dtypes=(q.dtype,), ndim=4)
        _checks.shape("k", k, (b, sq, hkv, d))
        _checks.shape("v", v, (b, sq, hkv, d))
        _checks.same_device("q", q, k=k, v=v)
        _append_kv(k_cache, v_cache, k, v, seqlens, bt)
        seqlens = seqlens + sq
    left, right = _window(window_size, causal)
    out = _attn_fwd(_rows(q).reshape(b * sq, hq, d), _rows(k_cache), _rows(v_cache), None, None, seqlens, bt,
                       s_aux.contiguous() if s_aux is not None else None, b, sq, sq, capacity, scale, left, right)
    return out.view(b, sq, hq, d)
