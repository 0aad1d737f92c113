"""Triton kernels for attention with sinks, sliding window and GQA (CUDA only; imported lazily).

Three kernels, one online-softmax convention (base 2, fp32 accumulators; the sink joins the
denominator only, once, at the end):

- `_attn_fwd`, the general kernel (every layout; prefill, chunked append, decode with several query
  positions). A program owns BLOCK_M rows of one (sequence, KV head): the rows are the G query heads
  that share that KV head times the query positions (row r -> position r // G, head kvh * G + r % G),
  so each K/V tile is loaded once for all G heads. The key range a tile needs is cut into three
  parts: masked blocks at the window's left edge, unmasked blocks in the middle (no mask arithmetic,
  no bounds checks), masked blocks at the causal diagonal / sequence end. With SPLIT the key axis is
  also cut into splits (flash-decoding); each writes an unnormalised partial and `_combine` merges
  them and adds the sink (launched with programmatic dependent launch, so it is resident and waiting
  while the attention kernel runs; or, opt-in, the last split program merges: FUSED). Narrow
  windows the next kernel does not take have their own autotuned configurations (`_WINDOW_CONFIGS`);
  everything else `_PREFILL_CONFIGS`.
- `_window_fwd`, causal sliding windows of at most WINDOW_KEYS_MAX keys back on packed or batched
  K/V (GPT-OSS's 128-token layers): the whole window of keys is loaded once per (position tile, KV
  head) and reused by all G heads, one-pass softmax per head. Windows of at most 127 keys back go to
  the native CUDA kernel instead where it is built (WINDOW_CUDA, kernel_src/attention/attn_window_cuda.cu).
- `_decode`, one query position per sequence against a batched or paged cache (SQ1_DECODE), split
  along the keys and merged by `_combine`. Large batches of that step go to the native CUDA kernel
  instead (SQ1_CUDA, kernel_src/attention/attn_decode_cuda.cu).

KV layouts (KV_MODE): 0 packed varlen (Tk, Hkv, D) + cu_seqlens_k; 1 batched cache
(B, S, Hkv, D) + seqlens_k; 2 paged cache (blocks, PAGE, Hkv, D) + block_table + seqlens_k.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

try:  # programmatic dependent launch (sm_90+); absent from older Triton
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # pragma: no cover
    gdc_launch_dependents = gdc_wait = None

LOG2E = 1.4426950408889634
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
_INTERPRET_SPLIT = True  # interpreter checks: force the split path where it applies
_INTERPRET_SPLITS = 0  # interpreter checks: this many splits instead of 2 (0: 2)


@triton.jit
def _inner(
    acc, m_i, l_i, q,
    K, V, k_base, v_base, BT,
    stride_kb, stride_kt, stride_vb, stride_vt,
    start, end, qpos, seqlen_k, window_left, window_right, qk_scale,
    offs_n, offs_d,
    MASK: tl.constexpr, HAS_WL: tl.constexpr, HAS_WR: tl.constexpr,
    KV_MODE: tl.constexpr, PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
):
    # (addresses recomputed per step from int64 row offsets: loop-carried pointer tiles or hoisted
    # offset tiles cost more registers and spilled in the sm_90 resource report, docs/decisions-attention.md v2)
    for s in tl.range(start, end, BLOCK_N):
        kpos = s + offs_n
        if KV_MODE == 2:
            if MASK:
                blk = tl.load(BT + kpos // PAGE, mask=kpos < seqlen_k, other=0).to(tl.int64)
            else:
                blk = tl.load(BT + kpos // PAGE).to(tl.int64)
            k_ptrs = K + k_base + (blk * stride_kb + (kpos % PAGE) * stride_kt)[:, None] + offs_d[None, :]
            v_ptrs = V + v_base + (blk * stride_vb + (kpos % PAGE) * stride_vt)[:, None] + offs_d[None, :]
        else:
            koff = kpos.to(tl.int64) * stride_kt
            voff = kpos.to(tl.int64) * stride_vt
            k_ptrs = K + k_base + koff[:, None] + offs_d[None, :]
            v_ptrs = V + v_base + voff[:, None] + offs_d[None, :]
        if MASK:
            kin = kpos < seqlen_k
            k = tl.load(k_ptrs, mask=kin[:, None], other=0.0)
        else:
            k = tl.load(k_ptrs)
        qk = tl.dot(q, tl.trans(k)) * qk_scale
        if MASK:
            valid = kin[None, :]
            if HAS_WR:
                valid = valid & (kpos[None, :] <= qpos[:, None] + window_right)
            if HAS_WL:
                valid = valid & (kpos[None, :] >= qpos[:, None] - window_left)
            qk = tl.where(valid, qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        else:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            m_use = m_new
        p = tl.math.exp2(qk - m_use[:, None])
        alpha = tl.math.exp2(m_i - m_use)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        if MASK:
            v = tl.load(v_ptrs, mask=kin[:, None], other=0.0)
        else:
            v = tl.load(v_ptrs)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _merge(OPart, MPart, LPart, Sinks, Out, out_row, head, row_ok, total_rows, n_splits,
           HEAD_DIM: tl.constexpr, HAS_SINK: tl.constexpr, BLOCK_M: tl.constexpr,
           BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr):
    # Merge n_splits partials of BLOCK_M rows (rows of the (T, Hq, D) output: out_row); the
    # partials come from other SMs: loaded through L2 (.cg), never a stale L1 line.
    offs_d = tl.arange(0, HEAD_DIM)
    offs_s = tl.arange(0, BLOCK_S)
    s_ok = offs_s < n_splits
    part = offs_s.to(tl.int64)[:, None] * total_rows + out_row[None, :]  # [BLOCK_S, BLOCK_M]
    ok2 = s_ok[:, None] & row_ok[None, :]
    m_s = tl.load(MPart + part, mask=ok2, other=float("-inf"), cache_modifier=".cg")
    l_s = tl.load(LPart + part, mask=ok2, other=0.0, cache_modifier=".cg")
    m_all = tl.max(m_s, 0)
    if HAS_SINK:
        sink = tl.load(Sinks + head).to(tl.float32) * 1.4426950408889634
        m_all = tl.maximum(m_all, sink)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
    l_all = tl.sum(l_s * tl.math.exp2(m_s - m_all[None, :]), 0)
    if HAS_SINK:
        l_all += tl.math.exp2(sink - m_all)
    l_all = tl.where(l_all == 0.0, 1.0, l_all)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    offs_c = tl.arange(0, CHUNK_S)
    for s0 in range(0, n_splits, CHUNK_S):
        sc = s0 + offs_c
        c_ok = (sc < n_splits)[:, None] & row_ok[None, :]
        pc = sc.to(tl.int64)[:, None] * total_rows + out_row[None, :]  # [CHUNK_S, BLOCK_M]
        m_c = tl.load(MPart + pc, mask=c_ok, other=float("-inf"), cache_modifier=".cg")
        w = tl.math.exp2(m_c - m_all[None, :])
        o = tl.load(OPart + pc[:, :, None] * HEAD_DIM + offs_d[None, None, :], mask=c_ok[:, :, None],
                    other=0.0, cache_modifier=".cg")
        acc += tl.sum(o * w[:, :, None], 0)
    out = acc / l_all[:, None]
    tl.store(Out + out_row[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _normalize(acc, m_i, l_i, Sinks, head, row_ok, HAS_SINK: tl.constexpr):
    # The output rows of an online softmax (base 2): the sink of each row's head joins the
    # denominator only, once, at the end; a row that saw no key (and no sink) gives 0, not NaN.
    if HAS_SINK:
        sink = tl.load(Sinks + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
        m_fin = tl.maximum(m_i, sink)
        m_fin = tl.where(m_fin == float("-inf"), 0.0, m_fin)
        alpha = tl.math.exp2(m_i - m_fin)
        l_i = l_i * alpha + tl.math.exp2(sink - m_fin)
        acc = acc * alpha[:, None]
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    return acc / l_safe[:, None]


@triton.jit
def _tile(
    q, row0, Q, K, V, Out, OPart, MPart, LPart, Sinks, BT, Counter,
    q_start, seqlen_q, seqlen_k, k_base, v_base, kvh, pid_m, pid_bh, pid_s,
    qk_scale, total_rows, stride_kb, stride_kt, stride_vb, stride_vt,
    keys_per_split, window_left, window_right,
    HQ: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr, KV_MODE: tl.constexpr, PAGE: tl.constexpr,
    HAS_WL: tl.constexpr, HAS_WR: tl.constexpr, HAS_SINK: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_N_R: tl.constexpr, ALIGN: tl.constexpr,
    ONE_LOOP: tl.constexpr, FUSED: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK_S: tl.constexpr,
):
    # One row tile (BLOCK_M rows from row0) of one (sequence, KV head): q already loaded.
    rows_total = seqlen_q * G
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    qi = offs_m // G
    head = kvh * G + offs_m % G
    row_ok = offs_m < rows_total

    delta = seqlen_k - seqlen_q
    qpos = qi + delta
    qpos_min = row0 // G + delta
    qpos_max = (tl.minimum(row0 + BLOCK_M, rows_total) - 1) // G + delta
    lo = seqlen_k * 0  # (tensors, not Python ints, in every specialisation)
    full_lo = seqlen_k * 0
    if HAS_WL:
        lo = tl.maximum(qpos_min - window_left, 0)
        full_lo = tl.maximum(qpos_max - window_left, 0)
    hi = seqlen_k
    full_hi = seqlen_k
    if HAS_WR:
        hi = tl.minimum(hi, qpos_max + window_right + 1)
        full_hi = tl.minimum(full_hi, qpos_min + window_right + 1)
    full_hi = tl.maximum(full_hi, 0)
    if SPLIT or ALIGN:  # split bounds are multiples of BLOCK_N: align the blocks to them
        lo = (lo // BLOCK_N) * BLOCK_N
    # blocks start at lo + j * BLOCK_N (unaligned for a window: fewest blocks over its span)
    mid_lo = tl.minimum(lo + tl.cdiv(tl.maximum(full_lo - lo, 0), BLOCK_N) * BLOCK_N, tl.maximum(hi, lo))
    mid_hi = tl.maximum(mid_lo, tl.minimum(mid_lo + (tl.maximum(full_hi - mid_lo, 0) // BLOCK_N) * BLOCK_N, hi))
    if SPLIT:
        s_lo = pid_s * keys_per_split
        s_hi = s_lo + keys_per_split
    else:
        s_lo = 0
        s_hi = hi

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if ONE_LOOP:  # every block masked, one pipelined loop over the whole key range
        acc, m_i, l_i = _inner(
            acc, m_i, l_i, q, K, V, k_base, v_base, BT, stride_kb, stride_kt, stride_vb, stride_vt,
            tl.maximum(lo, s_lo), tl.minimum(hi, s_hi), qpos, seqlen_k, window_left, window_right, qk_scale,
            offs_n, offs_d, True, HAS_WL, HAS_WR, KV_MODE, PAGE, BLOCK_N,
        )
    else:
        acc, m_i, l_i = _inner(
            acc, m_i, l_i, q, K, V, k_base, v_base, BT, stride_kb, stride_kt, stride_vb, stride_vt,
            tl.maximum(lo, s_lo), tl.minimum(mid_lo, s_hi), qpos, seqlen_k, window_left, window_right, qk_scale,
            offs_n, offs_d, True, HAS_WL, HAS_WR, KV_MODE, PAGE, BLOCK_N,
        )
        acc, m_i, l_i = _inner(
            acc, m_i, l_i, q, K, V, k_base, v_base, BT, stride_kb, stride_kt, stride_vb, stride_vt,
            tl.maximum(mid_lo, s_lo), tl.minimum(mid_hi, s_hi), qpos, seqlen_k, window_left, window_right, qk_scale,
            offs_n, offs_d, False, HAS_WL, HAS_WR, KV_MODE, PAGE, BLOCK_N,
        )
        # the diagonal / window's right edge: P - 1 keys past the unmasked part, in narrower blocks
        BN_R: tl.constexpr = BLOCK_N if BLOCK_N_R == 0 else BLOCK_N_R
        acc, m_i, l_i = _inner(
            acc, m_i, l_i, q, K, V, k_base, v_base, BT, stride_kb, stride_kt, stride_vb, stride_vt,
            tl.maximum(mid_hi, s_lo), tl.minimum(hi, s_hi), qpos, seqlen_k, window_left, window_right, qk_scale,
            tl.arange(0, BN_R), offs_d, True, HAS_WL, HAS_WR, KV_MODE, PAGE, BN_R,
        )

    out_row = (q_start + qi).to(tl.int64) * HQ + head  # row of the (T, Hq, D) output
    if SPLIT:
        part = pid_s.to(tl.int64) * total_rows + out_row
        tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
        tl.store(MPart + part, m_i, mask=row_ok)
        tl.store(LPart + part, l_i, mask=row_ok)
        if FUSED:
            # The last split program of this (row tile, sequence, KV head) to arrive merges all the
            # partials (no second launch). Every thread's stores are ordered before the counter's
            # release by the barrier; the counter goes back to 0 for the next launch (graph-safe).
            tl.debug_barrier()
            cnt = Counter + pid_bh * tl.num_programs(0) + pid_m
            n_splits = tl.num_programs(2)
            old = tl.atomic_add(cnt, 1, sem="acq_rel", scope="gpu")
            if old == n_splits - 1:
                tl.atomic_xchg(cnt, 0, sem="relaxed", scope="gpu")
                _merge(OPart, MPart, LPart, Sinks, Out, out_row, head, row_ok, total_rows, n_splits,
                       HEAD_DIM, HAS_SINK, BLOCK_M, BLOCK_S, CHUNK_S)
    else:
        out = _normalize(acc, m_i, l_i, Sinks, head, row_ok, HAS_SINK)
        tl.store(Out + out_row[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty), mask=row_ok[:, None])



@triton.jit
def _sequence(b, kvh, CuQ, CuK, SeqK, seq_q_fixed, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
              VARLEN_Q: tl.constexpr, KV_MODE: tl.constexpr):
    # Sequence b: its first query row and query count (packed by CuQ, or seq_q_fixed each), its key
    # count, and where KV head kvh's keys / values start (KV_MODE 0 packed by CuK, 1 batched cache,
    # 2 paged: the page offset is added per key).
    if VARLEN_Q:
        q_start = tl.load(CuQ + b)
        seqlen_q = tl.load(CuQ + b + 1) - q_start
    else:
        q_start = b * seq_q_fixed
        seqlen_q = seq_q_fixed
    if KV_MODE == 0:
        k_start = tl.load(CuK + b)
        seqlen_k = tl.load(CuK + b + 1) - k_start
        k_base = k_start.to(tl.int64) * stride_kt + kvh * stride_kh
        v_base = k_start.to(tl.int64) * stride_vt + kvh * stride_vh
    elif KV_MODE == 1:
        seqlen_k = tl.load(SeqK + b)
        k_base = b.to(tl.int64) * stride_kb + kvh * stride_kh
        v_base = b.to(tl.int64) * stride_vb + kvh * stride_vh
    else:
        seqlen_k = tl.load(SeqK + b)
        k_base = (kvh * stride_kh).to(tl.int64)
        v_base = (kvh * stride_vh).to(tl.int64)
    return q_start, seqlen_q, seqlen_k, k_base, v_base


@triton.jit
def _attn_fwd(
    Q, K, V, Out, OPart, MPart, LPart, Sinks,
    CuQ, CuK, SeqK, BlockTable, Counter,
    qk_scale, seq_q_fixed, total_rows,
    stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    stride_btb,
    keys_per_split, window_left, window_right,
    HQ: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr,
    VARLEN_Q: tl.constexpr, KV_MODE: tl.constexpr, PAGE: tl.constexpr,
    HAS_WL: tl.constexpr, HAS_WR: tl.constexpr, HAS_SINK: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, LONG: tl.constexpr = False,
    BLOCK_N_R: tl.constexpr = 0, ALIGN: tl.constexpr = False, ONE_LOOP: tl.constexpr = False,
    FUSED: tl.constexpr = False, BLOCK_S: tl.constexpr = 2, CHUNK_S: tl.constexpr = 1,
    TILES: tl.constexpr = 1, PDL: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    pid_s = tl.program_id(2)
    HKV: tl.constexpr = HQ // G
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    m_tile = (tl.num_programs(0) - 1 - pid_m) * TILES  # the longest causal tiles start first
    if PDL:  # programmatic dependent launch: inputs of earlier kernels are visible after the wait
        gdc_wait()
        gdc_launch_dependents()

    q_start, seqlen_q, seqlen_k, k_base, v_base = _sequence(
        b, kvh, CuQ, CuK, SeqK, seq_q_fixed, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
        VARLEN_Q, KV_MODE)
    BT = BlockTable + b.to(tl.int64) * stride_btb

    rows_total = seqlen_q * G
    row0 = m_tile * BLOCK_M
    if row0 >= rows_total:
        return
    offs_d = tl.arange(0, HEAD_DIM)
    offs_r = tl.arange(0, BLOCK_M)
    q_row = Q + kvh.to(tl.int64) * G * stride_qh + offs_d[None, :]

    q0 = row0 + offs_r
    q = tl.load(q_row + (q_start + q0 // G).to(tl.int64)[:, None] * stride_qt + (q0 % G)[:, None] * stride_qh,
                mask=(q0 < rows_total)[:, None], other=0.0)
    for j in tl.static_range(TILES):
        # TILES > 1: consecutive row tiles in one program, the next tile's q loaded before this
        # tile's key loop (its latency hidden behind the loop)
        row_j = row0 + j * BLOCK_M
        if j + 1 < TILES:
            rn = row_j + BLOCK_M + offs_r
            q_next = tl.load(q_row + (q_start + rn // G).to(tl.int64)[:, None] * stride_qt + (rn % G)[:, None] * stride_qh,
                             mask=(rn < rows_total)[:, None], other=0.0)
        if j == 0:
            _tile(
                q, row_j, Q, K, V, Out, OPart, MPart, LPart, Sinks, BT, Counter,
                q_start, seqlen_q, seqlen_k, k_base, v_base, kvh, pid_m, pid_bh, pid_s,
                qk_scale, total_rows, stride_kb, stride_kt, stride_vb, stride_vt,
                keys_per_split, window_left, window_right,
                HQ, G, HEAD_DIM, KV_MODE, PAGE, HAS_WL, HAS_WR, HAS_SINK, SPLIT,
                BLOCK_M, BLOCK_N, BLOCK_N_R, ALIGN, ONE_LOOP, FUSED, BLOCK_S, CHUNK_S,
            )
        else:
            if row_j < rows_total:
                _tile(
                    q, row_j, Q, K, V, Out, OPart, MPart, LPart, Sinks, BT, Counter,
                    q_start, seqlen_q, seqlen_k, k_base, v_base, kvh, pid_m, pid_bh, pid_s,
                    qk_scale, total_rows, stride_kb, stride_kt, stride_vb, stride_vt,
                    keys_per_split, window_left, window_right,
                    HQ, G, HEAD_DIM, KV_MODE, PAGE, HAS_WL, HAS_WR, HAS_SINK, SPLIT,
                    BLOCK_M, BLOCK_N, BLOCK_N_R, ALIGN, ONE_LOOP, FUSED, BLOCK_S, CHUNK_S,
                )
        if j + 1 < TILES:
            q = q_next

@triton.jit
def _combine(
    OPart, MPart, LPart, Sinks, Out, total_rows, num_splits,
    HQ: tl.constexpr, HEAD_DIM: tl.constexpr, HAS_SINK: tl.constexpr, BLOCK_S: tl.constexpr,
    PDL: tl.constexpr = False,
):
    # One output row per program; every split's partial is loaded in one go (no dependent loop).
    if PDL:  # launched while the attention kernel runs; its partials are visible after the wait
        gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    offs_s = tl.arange(0, BLOCK_S)
    offs_d = tl.arange(0, HEAD_DIM)
    ok = offs_s < num_splits
    part = offs_s.to(tl.int64) * total_rows + row
    m_s = tl.load(MPart + part, mask=ok, other=float("-inf"))
    l_s = tl.load(LPart + part, mask=ok, other=0.0)
    o_s = tl.load(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], mask=ok[:, None], other=0.0)
    m_all = tl.max(m_s, 0)
    if HAS_SINK:
        sink = tl.load(Sinks + row % HQ).to(tl.float32) * 1.4426950408889634
        m_all = tl.maximum(m_all, sink)
    m_all = tl.where(m_all == float("-inf"), 0.0, m_all)
    w = tl.math.exp2(m_s - m_all)
    l_all = tl.sum(l_s * w, 0)
    if HAS_SINK:
        l_all += tl.math.exp2(sink - m_all)
    l_all = tl.where(l_all == 0.0, 1.0, l_all)
    out = tl.sum(o_s * w[:, None], 0) / l_all
    tl.store(Out + row * HEAD_DIM + offs_d, out.to(Out.dtype.element_ty))


@triton.jit
def _softmax_step(acc, m_i, l_i, q, kt, v, valid, qk_scale):
    # Online softmax (base 2) over one block of keys: `kt` (D, N) keys transposed, `valid`
    # broadcastable to (M, N); masked scores are -inf, a row with none so far keeps m = -inf.
    # The scale is applied inside the exponent (one FMA per score): max(s) * scale == max(s * scale).
    s = tl.where(valid, tl.dot(q, kt), float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
    m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(s * qk_scale - m_use[:, None])
    alpha = tl.math.exp2(m_i - m_use)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
    return acc, m_new, l_i


# --- decode: one query position per sequence (flash_attn_with_kvcache, Sq = 1) --------------------
@triton.jit
def _decode(
    Q, K, V, Out, OPart, MPart, LPart, Sinks, SeqK, BlockTable,
    qk_scale, total_rows, stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh, stride_btb,
    keys_per_split, window_left,
    HQ: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr, KV_MODE: tl.constexpr,
    PAGE: tl.constexpr, HAS_WL: tl.constexpr, HAS_SINK: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PDL: tl.constexpr,
):
    # Program (split, sequence x KV head): the G query heads of one KV head at the sequence's one
    # query position (rows padded to BLOCK_M >= 16 for the dot) against keys
    # [split * keys_per_split, + keys_per_split) of the cache (KV_MODE 1 batched, 2 paged), causal
    # (all cached keys visible), optionally a left window. Partials in `_attn_fwd`'s layout, merged
    # by `_combine`. Against the general kernel's decode: splits on the fastest grid axis, one
    # masked loop without the three-part key range, split bounds not rounded to BLOCK_N.
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    HKV: tl.constexpr = HQ // G
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    if PDL:  # inputs of earlier kernels (the cache append, q) are visible after the wait
        gdc_wait()
        gdc_launch_dependents()
    offs_r = tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_r < G
    head = kvh * G + offs_r
    out_row = b.to(tl.int64) * HQ + head
    s_lo = pid_s * keys_per_split
    s_end = s_lo + keys_per_split
    if KV_MODE == 1:
        k_base = b.to(tl.int64) * stride_kb + kvh * stride_kh
        v_base = b.to(tl.int64) * stride_vb + kvh * stride_vh
    else:
        k_base = (kvh * stride_kh).to(tl.int64)
        v_base = (kvh * stride_vh).to(tl.int64)
    BT = BlockTable + b.to(tl.int64) * stride_btb
    q = tl.load(Q + b.to(tl.int64) * stride_qt + head[:, None] * stride_qh + offs_d[None, :], mask=row_ok[:, None],
                other=0.0)
    seqlen = tl.load(SeqK + b)
    hi = tl.minimum(s_end, seqlen)
    start = s_lo
    if HAS_WL:
        start = tl.maximum(start, seqlen - 1 - window_left)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    for s in tl.range(start, hi, BLOCK_N):
        kpos = s + offs_n
        kin = kpos < hi
        if KV_MODE == 2:
            blk = tl.load(BT + kpos // PAGE, mask=kin, other=0).to(tl.int64)
            koff = blk * stride_kb + (kpos % PAGE) * stride_kt
            voff = blk * stride_vb + (kpos % PAGE) * stride_vt
        else:
            koff = kpos.to(tl.int64) * stride_kt
            voff = kpos.to(tl.int64) * stride_vt
        k = tl.load(K + k_base + koff[:, None] + offs_d[None, :], mask=kin[:, None], other=0.0)
        v = tl.load(V + v_base + voff[:, None] + offs_d[None, :], mask=kin[:, None], other=0.0)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, tl.trans(k), v, kin[None, :], qk_scale)
    if SPLIT:
        part = pid_s.to(tl.int64) * total_rows + out_row
        tl.store(OPart + part[:, None] * HEAD_DIM + offs_d[None, :], acc, mask=row_ok[:, None])
        tl.store(MPart + part, m_i, mask=row_ok)
        tl.store(LPart + part, l_i, mask=row_ok)
    else:
        out = _normalize(acc, m_i, l_i, Sinks, head, row_ok, HAS_SINK)
        tl.store(Out + out_row[:, None] * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty),
                 mask=row_ok[:, None])


@triton.jit
def _window_fwd(
    Q, K, V, Out, Sinks, CuQ, CuK, SeqK,
    qk_scale, seq_q_fixed, window_left,
    stride_qt, stride_qh,
    stride_kb, stride_kt, stride_kh,
    stride_vb, stride_vt, stride_vh,
    HQ: tl.constexpr, G: tl.constexpr, HEAD_DIM: tl.constexpr,
    VARLEN_Q: tl.constexpr, KV_MODE: tl.constexpr, HAS_SINK: tl.constexpr,
    KEYS_LEFT: tl.constexpr, BLOCK_P: tl.constexpr, HEADS_PER_STEP: tl.constexpr = 1,
):
    # Causal sliding-window prefill (window_left <= KEYS_LEFT keys back, window_right = 0).
    # A program owns BLOCK_P query positions of one (sequence, KV head) and every one of the G
    # query heads that share it. Its whole key range is two blocks, loaded once before the head
    # loop and reused by all G heads: the KEYS_LEFT keys before the tile's first position and the
    # BLOCK_P keys of the tile itself (the diagonal). Each step takes HEADS_PER_STEP heads stacked
    # as rows (row r: position r % BLOCK_P, head h + r // BLOCK_P): one q load, two dots for the
    # scores, a one-pass softmax (all keys are at hand: no online rescale), two dots for the
    # output. The loop pipelines the next steps' q loads behind this step's math.
    pid_p = tl.program_id(0)
    pid_bh = tl.program_id(1)
    HKV: tl.constexpr = HQ // G
    ROWS: tl.constexpr = BLOCK_P * HEADS_PER_STEP
    b = pid_bh // HKV
    kvh = pid_bh % HKV
    q_start, seqlen_q, seqlen_k, k_base, v_base = _sequence(
        b, kvh, CuQ, CuK, SeqK, seq_q_fixed, stride_kb, stride_kt, stride_kh, stride_vb, stride_vt, stride_vh,
        VARLEN_Q, KV_MODE)
    p0 = pid_p * BLOCK_P
    if p0 >= seqlen_q:
        return

    offs_d = tl.arange(0, HEAD_DIM)
    k0 = p0 + seqlen_k - seqlen_q  # key of the tile's first query (bottom-right aligned)
    kpos_l = k0 - KEYS_LEFT + tl.arange(0, KEYS_LEFT)
    kpos_d = k0 + tl.arange(0, BLOCK_P)
    in_l = kpos_l >= 0  # (every left key precedes the tile's first query, so < seqlen_k)
    in_d = (kpos_d >= 0) & (kpos_d < seqlen_k)
    k_l = tl.load(K + k_base + kpos_l.to(tl.int64)[:, None] * stride_kt + offs_d[None, :], mask=in_l[:, None], other=0.0)
    v_l = tl.load(V + v_base + kpos_l.to(tl.int64)[:, None] * stride_vt + offs_d[None, :], mask=in_l[:, None], other=0.0)
    k_d = tl.load(K + k_base + kpos_d.to(tl.int64)[:, None] * stride_kt + offs_d[None, :], mask=in_d[:, None], other=0.0)
    v_d = tl.load(V + v_base + kpos_d.to(tl.int64)[:, None] * stride_vt + offs_d[None, :], mask=in_d[:, None], other=0.0)
    kt_l = tl.trans(k_l)
    kt_d = tl.trans(k_d)

    offs_r = tl.arange(0, ROWS)
    qi = p0 + offs_r % BLOCK_P
    row_ok = qi < seqlen_q
    qpos = k0 + offs_r % BLOCK_P
    q_ptrs = Q + (q_start + qi).to(tl.int64)[:, None] * stride_qt + (kvh * G + offs_r // BLOCK_P)[:, None] * stride_qh
    o_ptrs = Out + ((q_start + qi).to(tl.int64) * HQ + kvh * G + offs_r // BLOCK_P)[:, None] * HEAD_DIM
    wl = window_left
    for h in tl.range(0, G, HEADS_PER_STEP):
        q = tl.load(q_ptrs + h * stride_qh + offs_d[None, :], mask=row_ok[:, None], other=0.0)
        # Query row r sees keys lo_r..hi_r (the window, keys >= 0, causal; hi_r < seqlen_k for
        # every stored row). The masks are the same at every step; computing them from the
        # loop-carried `wl` (always window_left) keeps them inside the loop instead of hoisted
        # 2-D boolean tiles. At the shipped tiles the sm_90a resource report shows the same
        # register count either way (168 / 206 / ~250); this is the form the H100 numbers were
        # measured with (docs/decisions-attention.md "v4"), the plain form was not timed.
        lo = tl.maximum(qpos - wl, 0)
        hi = qpos + (wl - window_left)
        ok_l = kpos_l[None, :] >= lo[:, None]
        ok_d = (kpos_d[None, :] >= lo[:, None]) & (kpos_d[None, :] <= hi[:, None])
        # raw scores; the scale goes inside the exponent (one FMA each): max(s) * scale == max(s * scale)
        s_l = tl.where(ok_l, tl.dot(q, kt_l), float("-inf"))
        s_d = tl.where(ok_d, tl.dot(q, kt_d), float("-inf"))
        m = tl.maximum(tl.max(s_l, 1), tl.max(s_d, 1)) * qk_scale
        if HAS_SINK:
            sink = tl.load(Sinks + kvh * G + h + offs_r // BLOCK_P).to(tl.float32) * 1.4426950408889634
            m = tl.maximum(m, sink)
        m = tl.where(m == float("-inf"), 0.0, m)
        p_l = tl.math.exp2(s_l * qk_scale - m[:, None])
        p_d = tl.math.exp2(s_d * qk_scale - m[:, None])
        l = tl.sum(p_l, 1) + tl.sum(p_d, 1)
        if HAS_SINK:
            l += tl.math.exp2(sink - m)
        acc = tl.dot(p_l.to(v_l.dtype), v_l)
        acc = tl.dot(p_d.to(v_d.dtype), v_d, acc)
        l = tl.where(l == 0.0, 1.0, l)
        out = acc / l[:, None]
        tl.store(o_ptrs + h * HEAD_DIM + offs_d[None, :], out.to(Out.dtype.element_ty), mask=row_ok[:, None])
        wl = tl.maximum(wl, window_left)


# Prefill configurations (rows per program, keys per step, warps, pipeline stages).
_PREFILL_CONFIGS = [
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 256, "BLOCK_N": 64}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=4),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=4),
]
_attn_fwd_tuned = triton.autotune(
    configs=_PREFILL_CONFIGS,
    key=["HQ", "G", "HEAD_DIM", "KV_MODE", "HAS_WL", "HAS_WR", "HAS_SINK", "LONG"],
)(_attn_fwd) if not INTERPRET else None

# Narrow sliding windows (left edge <= WINDOW_NARROW keys back): a 64-row tile is 8 positions, its
# keys span window + 7; blocks start at the window's first key, 32 keys a step, and the 7 keys past
# the unmasked part go in one 16-key block (BLOCK_N_R) instead of a 32-key one. Few loop steps per
# program, so 2 pipeline stages, and at most 80 registers (6 programs per SM instead of 5).
# Measured on H100 (docs/decisions-attention.md, v3 probes): 105.8 / 108.6 / 110.2 / 121.7 / 122.1 µs
# in the order below, against 118.6 µs for v2's pick (64x32, 3 stages, 32-key diagonal block).
WINDOW_NARROW = 512
_WINDOW_CONFIGS = [
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_N_R": 16}, num_warps=4, num_stages=2, maxnreg=80),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_N_R": 16}, num_warps=4, num_stages=2),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 32, "BLOCK_N_R": 16}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_N_R": 16}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_N_R": 16}, num_warps=8, num_stages=2),
]
_attn_fwd_window = triton.autotune(
    configs=_WINDOW_CONFIGS,
    key=["HQ", "G", "HEAD_DIM", "KV_MODE", "HAS_WR", "HAS_SINK", "window_left"],
)(_attn_fwd) if not INTERPRET else None

# Causal sliding windows of at most WINDOW_KEYS_MAX keys back (GPT-OSS: 127), packed or batched K/V:
# `_window_fwd` (all G heads of a KV head per program, K/V loaded once). Other narrow windows (paged
# K/V, a right edge > 0, wider windows) take `_attn_fwd_window`.
WINDOW_KEYS_MAX = 256
# H100 probes w3 / w4 (docs/decisions-attention.md "v4"), µs at S=8192, window 128: 89.7-90.4 / 94.1-94.9 / 95.1
_WINDOW_FWD_CONFIGS = [
    triton.Config({"BLOCK_P": 16, "HEADS_PER_STEP": 4}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 32, "HEADS_PER_STEP": 2}, num_warps=4, num_stages=3),
    triton.Config({"BLOCK_P": 64}, num_warps=4, num_stages=3),
]
_window_fwd_tuned = triton.autotune(
    configs=_WINDOW_FWD_CONFIGS,
    key=["HQ", "G", "HEAD_DIM", "KV_MODE", "HAS_SINK", "KEYS_LEFT"],
)(_window_fwd) if not INTERPRET else None
# Explicit `_window_fwd` configuration (dict of BLOCK_P, num_warps, num_stages, maxnreg) instead of the
# autotuner: for sweeps and the interpreter checks (which also take this path for short sequences).
WINDOW_OVERRIDE: dict | None = None
# Causal windows of at most 127 keys back on packed or batched K/V (GPT-OSS's sliding layers), head_dim
# 64, 8 query heads per KV head, sm_90: the CUDA kernel of the package's native ops instead of
# `_window_fwd` (kernel_src/attention/attn_window_cuda.cu: wgmma over only the band of keys each tile of
# 8 positions sees, K/V loaded once per CTA).
# WINDOW_CUDA_POSITIONS: query positions per CTA, 32 / 64 / 128 (0: the op's choice).
WINDOW_CUDA = True
WINDOW_CUDA_POSITIONS = 0


# Decode: the key axis is split (flash-decoding) until there are ~CTAS_PER_SM programs per SM,
# each split keeping at least MIN_KEYS_PER_SPLIT keys. FUSED_COMBINE: the last split program to
# finish merges the partials (one launch); otherwise the `_combine` kernel does (two launches).
MIN_KEYS_PER_SPLIT = 256
CTAS_PER_SM = 4
DECODE_BLOCK_N = 64
DECODE_WARPS = 4
DECODE_STAGES = 3
# Fused merge: opt-in. Measured (H100, v3 probes): at B=1 (32 splits) 24.0 µs against 12.5 for the
# two launches (the merging program is serial after the last split, ~3 µs per 8 splits); at B=32
# (3 splits) 193.6 µs, but two launches with programmatic dependent launch give 196.3, the same
# within noise, without the counters. The counters are one buffer per device: two fused decode
# launches running at once on two streams of one device would share them (wrong results).
FUSED_COMBINE = False
FUSED_MAX_SPLITS = 4  # the merging program reads splits x rows partials alone: only for few splits
# Programmatic dependent launch for the decode kernels (sm_90+): `_combine` is resident while the
# attention kernel runs and waits on the grid dependency (B=1: 12.59 -> 11.72 µs).
DECODE_PDL = True
DECODE_SPLITS = 0  # sweeps: this many splits where the key axis is split (0: from the shapes)
# One query position per sequence against a batched or paged cache (the flash_attn_with_kvcache
# decode step) goes to `_decode` (grid (splits, B x Hkv)) + `_combine`, both with PDL.
# Measured (H100, 2026-11-22 10:43 UTC, docs/decisions-attention.md "decode v4"), general kernel ->
# `_decode`: B=1 11.74 -> 10.79 µs, B=1 paged 13.96 -> 12.75, B=32 196.7 -> 197.4, B=32 paged
# 228.8 -> 197.6. A last-program merge in one wide load was slower at B=1 (13.9 µs), and so was
# loading the first block before the sequence length (12.0): both removed.
SQ1_DECODE = True
SQ1_BLOCK_N = 64
SQ1_WARPS = 4
SQ1_STAGES = 3
SQ1_SPLITS = 0  # 0: from the shapes, as above
# Sq = 1 decode on sm_90+ with head_dim 64 and G <= 16, for many sequences (B x Hkv >= SQ1_CUDA_MIN_BH) or a
# narrow left window (< 1024 keys) and B >= SQ1_CUDA_WINDOW_MIN_B: the CUDA kernel of the package's native ops
# (kernel_src/attention/attn_decode_cuda.cu: one CTA per (sequence, KV head), no key split, so one launch and
# no partials); `_decode` + `_combine` elsewhere, and where the native op is not built. H100, 8192-key caches,
# GPT-OSS heads (docs/decisions-attention.md "session 5"), Triton pair -> native, µs: B=4 31.0 -> 58.3, B=8
# 55.7 -> 59.1, B=16 100.3 -> 92.6, B=24 148.9 -> 150.0, B=32 195.5 -> 183.3 (paged 196.7 -> 194.3); with a
# 128-token window B=1 5.1 -> 4.4-6.7 (two repeats), B=2 6.5 -> 4.6, B=4 7.9 -> 5.5, B=8 10.5-11.4 -> 10.4,
# B=16 9.4 -> 8.3, B=32 10.3 -> 7.5.
SQ1_CUDA = True
SQ1_CUDA_MIN_BH = 128
SQ1_CUDA_WINDOW_MIN_B = 2
SQ1_CUDA_STAGES = 0  # ring stages of 16 keys per warp: 2 or 4 (0: the op's choice)
# Explicit prefill configuration (dict of BLOCK_M, BLOCK_N, ..., num_warps, num_stages) instead of
# the autotuner: for sweeps.
PREFILL_OVERRIDE: dict | None = None

_NUM_SMS: dict[int, int] = {}
_COUNTERS: dict[int, object] = {}


def _num_sms(device) -> int:
    import torch

    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


_PDL: dict[int, bool] = {}


def _pdl_ok(device) -> bool:
    """Programmatic dependent launch: Hopper or newer, a Triton that has it, not the interpreter."""
    if INTERPRET or not DECODE_PDL or gdc_wait is None or device.type != "cuda":
        return False
    import torch

    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _PDL:
        _PDL[idx] = torch.cuda.get_device_capability(idx)[0] >= 9
    return _PDL[idx]


def _counter(device, n: int):
    """Per-device arrival counters of the fused combine, zero between launches (each combining
    program resets its own). None where a new buffer would have to be made inside a graph capture
    (its zero-fill would not run before the first replay): the caller then uses `_combine`."""
    import torch

    if device.type != "cuda":  # (the interpreter checks run on CPU tensors)
        idx = -1
    else:
        idx = device.index if device.index is not None else torch.cuda.current_device()
    buf = _COUNTERS.get(idx)
    if buf is None or buf.numel() < n:
        if idx >= 0 and torch.cuda.is_current_stream_capturing():
            return None
        buf = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[idx] = buf
    return buf


def _split_count(q, base: int, cap: int, block_n: int, override: int) -> int:
    """Splits of the key axis for `base` programs over up to `cap` keys: until there are ~CTAS_PER_SM
    programs per SM, each split keeping at least MIN_KEYS_PER_SPLIT keys (`override`: sweeps)."""
    n_sm = _num_sms(q.device) if q.is_cuda else 132
    splits = 1
    if base < CTAS_PER_SM * n_sm and cap > 512:
        splits = min(triton.cdiv(CTAS_PER_SM * n_sm, base), triton.cdiv(cap, MIN_KEYS_PER_SPLIT), 64)
    if override and cap > 512:
        splits = override
    if INTERPRET and cap > 2 * block_n and _INTERPRET_SPLIT:
        splits = 2 if not _INTERPRET_SPLITS else _INTERPRET_SPLITS
    return splits


def attn_fwd(
    q, k, v, out, *, cu_q, cu_k, seqlens_k, block_table, sinks, batch, seq_q_fixed, max_seqlen_q, max_seqlen_k,
    scale, window_left, window_right,
):
    """Launches the kernel(s) and returns the output. q (Tq, Hq, D) contiguous rows; k/v as KV_MODE says.
    `out`: the (Tq, Hq, D) tensor the Triton kernels write, or None to allocate it here; the native ops
    return their own output (so none is allocated for them)."""
    import torch

    tq, hq, d = q.shape
    hkv = k.shape[-2]
    g = hq // hkv
    if cu_k is not None:
        kv_mode, page = 0, 1
    elif block_table is not None:
        kv_mode, page = 2, k.shape[1]
    else:
        kv_mode, page = 1, 1
    rows = max_seqlen_q * g
    sq1 = SQ1_DECODE and max_seqlen_q == 1 and seq_q_fixed == 1 and cu_q is None and kv_mode != 0
    if rows > 256:
        native = _native_window(q, k, v, cu_q, cu_k, seqlens_k, sinks, batch, kv_mode, scale, window_left,
                                window_right)
        if native is not None:
            return native(q, k, v, cu_q, cu_k, seqlens_k if kv_mode == 1 else None, sinks, scale, batch,
                          seq_q_fixed, max_seqlen_q, window_left, WINDOW_CUDA_POSITIONS)
    elif sq1:
        native = _native_decode(q, k, v, seqlens_k, sinks, batch, window_left)
        if native is not None:
            return native(q, k, v, seqlens_k, block_table, sinks, scale, window_left, SQ1_CUDA_STAGES)
    if out is None:
        out = torch.empty(q.shape[:-1] + (v.shape[-1],), dtype=q.dtype, device=q.device)
    if kv_mode == 0:
        skb, svb = 0, 0
        skt, skh = k.stride(0), k.stride(1)
        svt, svh = v.stride(0), v.stride(1)
    else:
        skb, skt, skh = k.stride(0), k.stride(1), k.stride(2)
        svb, svt, svh = v.stride(0), v.stride(1), v.stride(2)
    stride_btb = block_table.stride(0) if block_table is not None else 0
    dummy = out
    has_wl = window_left >= 0
    has_wr = window_right >= 0
    total_rows = tq * hq
    common = dict(
        HQ=hq, G=g, HEAD_DIM=d, VARLEN_Q=cu_q is not None, KV_MODE=kv_mode, PAGE=page,
        HAS_WL=has_wl, HAS_WR=has_wr, HAS_SINK=sinks is not None,
    )
    args = [
        q, k, v, out, None, None, None, sinks if sinks is not None else dummy,
        cu_q if cu_q is not None else dummy, cu_k if cu_k is not None else dummy,
        seqlens_k if seqlens_k is not None else dummy, block_table if block_table is not None else dummy,
        dummy, scale * LOG2E, seq_q_fixed, total_rows,
        q.stride(0), q.stride(1), skb, skt, skh, svb, svt, svh, stride_btb,
    ]

    keys_left = max(16, triton.next_power_of_2(window_left)) if window_left > 0 else 16
    if (((rows > 256 and not INTERPRET) or WINDOW_OVERRIDE is not None) and kv_mode != 2 and window_right == 0
            and 0 <= window_left <= WINDOW_KEYS_MAX and PREFILL_OVERRIDE is None):
        wargs = [q, k, v, out, sinks if sinks is not None else dummy, args[8], args[9], args[10],
                 scale * LOG2E, seq_q_fixed, window_left, q.stride(0), q.stride(1), skb, skt, skh, svb, svt, svh]
        wconst = dict(HQ=hq, G=g, HEAD_DIM=d, VARLEN_Q=cu_q is not None, KV_MODE=kv_mode,
                      HAS_SINK=sinks is not None, KEYS_LEFT=keys_left)
        if WINDOW_OVERRIDE is not None:
            cfg = dict(WINDOW_OVERRIDE)
            launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in cfg}
            _window_fwd[(triton.cdiv(max_seqlen_q, cfg["BLOCK_P"]), batch * hkv)](*wargs, **cfg, **launch, **wconst)
        else:
            _window_fwd_tuned[lambda meta: (triton.cdiv(max_seqlen_q, meta["BLOCK_P"]), batch * hkv)](*wargs, **wconst)
        return out

    if (rows > 256 and not INTERPRET) or (PREFILL_OVERRIDE is not None and rows > 16):
        # Prefill: many row tiles, no split, autotuned tile shape.
        args[4:7] = [dummy, dummy, dummy]
        cfg = PREFILL_OVERRIDE
        if cfg is not None:
            cfg = dict(cfg)
            launch = {k: cfg.pop(k) for k in ("num_warps", "num_stages", "maxnreg") if k in cfg}
            grid = (triton.cdiv(triton.cdiv(rows, cfg["BLOCK_M"]), cfg.get("TILES", 1)), batch * hkv, 1)
            _attn_fwd[grid](*args, 0, window_left, window_right, SPLIT=False, **launch, **cfg, **common)
            return out

        def grid(meta):
            return (triton.cdiv(triton.cdiv(rows, meta["BLOCK_M"]), meta.get("TILES", 1)), batch * hkv, 1)

        if 0 <= window_left <= WINDOW_NARROW:
            _attn_fwd_window[grid](*args, 0, window_left, window_right, SPLIT=False, **common)
        else:
            _attn_fwd_tuned[grid](*args, 0, window_left, window_right, SPLIT=False, LONG=max_seqlen_k >= 4096,
                                  **common)
        return out

    if sq1:
        return _decode_fwd(q, k, v, out, seqlens_k, block_table, sinks, batch, kv_mode, page, scale, window_left)

    block_m = 16 if rows <= 16 else 32 if rows <= 32 else 64
    if INTERPRET:
        block_m = max(16, min(64, triton.next_power_of_2(rows)))
    block_n = DECODE_BLOCK_N if page % DECODE_BLOCK_N == 0 or kv_mode != 2 else 16
    block_n = 16 if INTERPRET else block_n
    tiles_m = triton.cdiv(rows, block_m)
    base = tiles_m * batch * hkv
    cap = max_seqlen_k
    splits = _split_count(q, base, cap, block_n, DECODE_SPLITS)
    if splits > 1:
        per = triton.cdiv(triton.cdiv(cap, splits), block_n) * block_n
        splits = triton.cdiv(cap, per)
    else:
        per = 0
    grid = (tiles_m, batch * hkv, splits)
    counter = None
    if splits > 1:
        parts = _partials(splits, total_rows, d, q.device)
        args[4:7] = list(parts)
        if FUSED_COMBINE and splits <= FUSED_MAX_SPLITS:
            counter = _counter(q.device, tiles_m * batch * hkv)
    else:
        args[4:7] = [dummy, dummy, dummy]
    args[12] = counter if counter is not None else dummy
    fused = counter is not None
    block_s = max(2, triton.next_power_of_2(splits))
    pdl = _pdl_ok(q.device)
    _attn_fwd[grid](
        *args, per, window_left, window_right, SPLIT=splits > 1,
        BLOCK_M=block_m, BLOCK_N=block_n, num_warps=DECODE_WARPS, num_stages=DECODE_STAGES,
        FUSED=fused, BLOCK_S=block_s, CHUNK_S=max(1, min(block_s, 8192 // (block_m * d))), PDL=pdl,
        launch_pdl=pdl, **common,
    )
    if splits > 1 and not fused:
        _combine_splits(parts, sinks, out, total_rows, splits, hq, d, pdl)
    return out


def _partials(splits, total_rows, d, device):
    """(O, m, l) fp32 partials of `splits` key splits, in `_combine`'s layout."""
    import torch

    return (torch.empty((splits, total_rows, d), device=device, dtype=torch.float32),
            torch.empty((splits, total_rows), device=device, dtype=torch.float32),
            torch.empty((splits, total_rows), device=device, dtype=torch.float32))


def _combine_splits(parts, sinks, out, total_rows, splits, hq, d, pdl):
    """`_combine`: one program per output row merges the splits' partials and adds the sink."""
    _combine[(total_rows,)](
        *parts, sinks if sinks is not None else out, out, total_rows, splits,
        HQ=hq, HEAD_DIM=d, HAS_SINK=sinks is not None, BLOCK_S=max(2, triton.next_power_of_2(splits)), PDL=pdl,
        num_warps=2 if splits <= 16 else 4, launch_pdl=pdl,
    )


_NATIVE: dict = {}  # (op name, device index) -> the native op, or None


def _native_op(name: str, q, hopper_only: bool = False):
    """The package's native CUDA op `name` for q's device (sm_90+; exactly sm_90 with `hopper_only`), or
    None (not built, other GPU, loaded outside the package)."""
    import torch

    idx = q.device.index if q.device.index is not None else torch.cuda.current_device()
    key = (name, idx)
    if key not in _NATIVE:
        try:
            from .._ops import ops
        except ImportError:  # loaded outside the package (probes): no native ops
            ops = None
        op = getattr(ops, name, None) if ops is not None else None
        major = torch.cuda.get_device_capability(idx)[0]
        _NATIVE[key] = op if (major == 9 if hopper_only else major >= 9) else None
    return _NATIVE[key]


def _native_layout_ok(q, k, v, sinks, g_ok) -> bool:
    """The native kernels' shared requirements: head_dim 64, bf16 / fp16, G accepted by `g_ok`, sinks
    fp32 or q's dtype, rows contiguous and 16-byte aligned (q 4-byte aligned for the decode op)."""
    import torch

    hq, d = q.shape[1], q.shape[2]
    hkv = k.shape[-2]
    if d != 64 or hq % hkv or not g_ok(hq // hkv) or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return False
    if sinks is not None and (sinks.dtype not in (torch.float32, q.dtype) or not sinks.is_contiguous()):
        return False
    if q.stride(2) != 1 or q.stride(1) % 2 or q.stride(0) % 2 or q.data_ptr() % 4:
        return False
    for c in (k, v):
        if c.stride(-1) != 1 or any(st % 8 for st in c.stride()[:-1]) or c.data_ptr() % 16:
            return False
    return True


def _native_decode(q, k, v, seqlens_k, sinks, batch, window_left):
    """The native CUDA decode op where it applies (see SQ1_CUDA), else None."""
    if not SQ1_CUDA or INTERPRET or not q.is_cuda:
        return None
    narrow = 0 <= window_left < 1024 and batch >= SQ1_CUDA_WINDOW_MIN_B
    if batch * k.shape[-2] < SQ1_CUDA_MIN_BH and not narrow:
        return None
    import torch

    if seqlens_k is None or seqlens_k.dtype != torch.int32 or not seqlens_k.is_contiguous():
        return None
    if not _native_layout_ok(q, k, v, sinks, lambda g: g <= 16):
        return None
    return _native_op("attn_decode", q)


def _native_window(q, k, v, cu_q, cu_k, seqlens_k, sinks, batch, kv_mode, scale, window_left, window_right):
    """The native CUDA sliding-window prefill op where it applies (see WINDOW_CUDA), else None."""
    if not WINDOW_CUDA or INTERPRET or not q.is_cuda or WINDOW_OVERRIDE is not None or PREFILL_OVERRIDE is not None:
        return None
    if kv_mode == 2 or window_right != 0 or not 0 <= window_left <= 127 or scale <= 0:
        return None
    if batch * k.shape[-2] > 65535:
        return None
    import torch

    for t in (cu_q, cu_k) if kv_mode == 0 else (cu_q, seqlens_k):
        if t is not None and (t.dtype != torch.int32 or not t.is_contiguous()):
            return None
    if kv_mode == 1 and seqlens_k is None:
        return None
    if q.stride(1) % 8 or q.stride(0) % 8 or q.data_ptr() % 16:
        return None
    if not _native_layout_ok(q, k, v, sinks, lambda g: g == 8):
        return None
    return _native_op("attn_window", q, hopper_only=True)


def _decode_fwd(q, k, v, out, seqlens_k, block_table, sinks, batch, kv_mode, page, scale, window_left):
    """Sq = 1 decode through `_decode` + `_combine` (see SQ1_DECODE; the native CUDA kernel, SQ1_CUDA, is
    routed in `attn_fwd`)."""
    tq, hq, d = q.shape
    hkv = k.shape[-2]
    g = hq // hkv
    cap = k.shape[1] if kv_mode == 1 else block_table.shape[1] * page  # keys the cache can hold
    block_n = SQ1_BLOCK_N if kv_mode != 2 or page % SQ1_BLOCK_N == 0 else 16
    block_n = 16 if INTERPRET else block_n
    base = batch * hkv
    splits = _split_count(q, base, cap, block_n, SQ1_SPLITS)
    per = triton.cdiv(cap, splits)
    splits = triton.cdiv(cap, per)
    total_rows = tq * hq
    dummy = out
    parts = _partials(splits, total_rows, d, q.device) if splits > 1 else (dummy, dummy, dummy)
    pdl = _pdl_ok(q.device)
    _decode[(splits, batch * hkv)](
        q, k, v, out, *parts, sinks if sinks is not None else dummy, seqlens_k,
        block_table if block_table is not None else dummy,
        scale * LOG2E, total_rows, q.stride(0), q.stride(1),
        k.stride(0), k.stride(1), k.stride(2), v.stride(0), v.stride(1), v.stride(2),
        block_table.stride(0) if block_table is not None else 0,
        per, window_left,
        HQ=hq, G=g, HEAD_DIM=d, KV_MODE=kv_mode, PAGE=page,
        HAS_WL=window_left >= 0, HAS_SINK=sinks is not None, BLOCK_M=max(16, triton.next_power_of_2(g)),
        BLOCK_N=block_n, SPLIT=splits > 1, PDL=pdl,
        num_warps=SQ1_WARPS, num_stages=SQ1_STAGES, launch_pdl=pdl,
    )
    if splits > 1:
        _combine_splits(parts, sinks, out, total_rows, splits, hq, d, pdl)
    return out
