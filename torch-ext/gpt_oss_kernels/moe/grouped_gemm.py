"""Triton grouped GEMMs of the MoE block (imported only on the CUDA path: needs triton).

One kernel, two epilogues, selected by the constexpr ``FIRST``:

* GEMM 1 (``FIRST=True``): rows of ``hidden`` gathered through the dispatch permutation
  (``token = sorted_pos // top_k``), times ``gate_up_proj[e]`` (H, 2I), plus bias, then the
  clamped SwiGLU on the interleaved gate/up columns of the fp32 accumulator; writes only the
  I activations, in padded sorted order.
* GEMM 2 (``FIRST=False``): the activation rows (already sorted) times ``down_proj[e]`` (I, H),
  plus bias, times the routing weight of the row's slot; stored at row ``slot`` of ``y`` (T*k, H),
  i.e. back in token order, so ``moe_finalize`` sums k consecutive rows.

Each program takes one ``BLOCK_M`` row block (all rows of one expert, padding rows masked; the
block's expert comes from ``block_expert``; -1 ends the program at once) and one ``BLOCK_N``
column tile. Programs are ordered in groups of row blocks, row block fastest, so the blocks of one
expert run together and share the expert's weight tiles through L2: for 128-row blocks a group is
the blocks of one expert (``block_groups``; at most GROUP_CAP), otherwise ``GROUP_M`` blocks. With
``narrow_last`` the narrow last column tiles come after all of these, so the grid ends on short tiles.

Weight formats: ``W_FORMAT`` is a constexpr naming how a (BLOCK_K, BLOCK_N) weight tile is read:
``"bf16"`` (the tensor's own dtype, bf16/fp16/fp32), ``"mxfp4"`` (the checkpoint's e2m1 blocks + e8m0 scales,
dequantized exactly in registers with Triton ops) and ``"mxfp4_asm"`` (the same for bf16 activations, packed
bf16x2 PTX; GPU only, ``GOK_MXFP4_ASM=0`` turns it off). A format is a branch in ``_load_w_tile`` plus its scale
pointer arguments (``ws_ptr``, ``stride_se``, ``stride_sn``); the rest of the kernel is shared. ``"fp8"`` /
``"fp8_block"``: e4m3 weights (E, N, K) (K contiguous, read like bf16 tiles, through TMA as K-major tiles) times
e4m3 activations (the ``pad_quant_fp8`` buffer, gathered as bf16 rows are), FP8 tensor cores, fp32 accumulators;
the activations' per-row scales (``as_ptr``) and per-channel weight scales applied after the K loop (the tensor
cores accumulate over the whole K unless ``FP8_PROMOTE``), 128x128 block scales at every K step (each BLOCK_K <=
128 lies in one block; each step promoted into the fp32 accumulator).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl
from triton import knobs as _knobs

from .._ops import ops

_raw_stream = torch._C._cuda_getCurrentRawStream if hasattr(torch._C, "_cuda_getCurrentRawStream") else None
_get_device = torch._C._cuda_getDevice if hasattr(torch._C, "_cuda_getDevice") else None


@triton.jit
def _e2m1(w, SH: tl.constexpr):
    # The e2m1 nibble at bits SH..SH+3 of the int32 words ``w`` as float32 bits: sign to bit 31, the 3
    # magnitude bits (exponent 2, mantissa 1) to bits 22..24, so the float is value * 2^-126 exactly
    # (0.5 lands on the subnormal 2^-127; zero stays +-0).
    if SH <= 22:
        m = (w << (22 - SH)) & 0x01C00000
    else:
        m = (w >> (SH - 22)) & 0x01C00000
    if SH <= 28:
        sg = (w << (28 - SH)) & -2147483648
    else:
        sg = (w >> (SH - 28)) & -2147483648
    return (m | sg).to(tl.float32, bitcast=True)


@triton.jit
def _move(w, SRC: tl.constexpr, DST: tl.constexpr):
    # w shifted so that bit SRC lands on bit DST (callers mask; a right shift's sign copies stay above the mask)
    if DST >= SRC:
        return w << (DST - SRC)
    else:
        return w >> (SRC - DST)


@triton.jit
def _e2m1_kw(w, M: tl.constexpr, E1: tl.constexpr, S: tl.constexpr):
    # _e2m1 for a value of kernel words (quant.mxfp4.KERNEL_WORD_BITS): magnitude bits M, M + 1 and E1 (M + 2 for
    # values 2-7), sign bit S.
    if E1 == M + 2:
        m = _move(w, M, 22) & 0x01C00000
    else:
        m = (_move(w, M, 22) & 0x00C00000) | (_move(w, E1, 24) & 0x01000000)
    return (m | (_move(w, S, 31) & -2147483648)).to(tl.float32, bitcast=True)


@triton.jit
def _mxfp4_tile(q_ptrs, s_ptrs, q_mask, s_mask, DTYPE: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # (BLOCK_N, BLOCK_K / 8) words (8 e2m1 values each, k = 8j .. 8j + 7): int32, the checkpoint's blocks (nibble i
    # of a word is k = 8j + i, low nibble first), or uint32 kernel words; (BLOCK_N, BLOCK_K / 32) e8m0 scale bytes ->
    # the
    # (BLOCK_K, BLOCK_N) tile in DTYPE, each value RN_DTYPE(e2m1 * 2^(s - 127)) computed exactly:
    # (v * 2^-126) * 2^127 = 2v (exact, normal) times 2^(s - 128) (representable for every byte: 2^-128 is
    # a float32 subnormal, 2^127 normal), one rounding (to inf past the range: scale byte 255 gives 0, 2^127
    # or +-inf, as torch.ldexp). No flush to zero anywhere (Triton emits no .ftz for these).
    q = tl.load(q_ptrs, mask=q_mask, other=0)
    s = tl.load(s_ptrs, mask=s_mask, other=0).to(tl.int32)
    sf = tl.where(s >= 2, (s - 1) << 23, 0x00200000 << s).to(tl.float32, bitcast=True)  # 2^(s - 128)
    if q.dtype == tl.uint32:  # kernel words (quant.mxfp4.KERNEL_WORD_BITS)
        q = q.to(tl.int32, bitcast=True)
        v0, v1, v2, v3 = _e2m1_kw(q, 6, 0, 15), _e2m1_kw(q, 22, 16, 31), _e2m1_kw(q, 8, 10, 17), _e2m1_kw(q, 24, 26, 1)
        v4, v5, v6, v7 = _e2m1_kw(q, 18, 20, 27), _e2m1_kw(q, 2, 4, 11), _e2m1_kw(q, 12, 14, 21), _e2m1_kw(q, 28, 30, 5)
    else:  # the checkpoint's words: value p in nibble p
        v0, v1, v2, v3 = _e2m1(q, 0), _e2m1(q, 4), _e2m1(q, 8), _e2m1(q, 12)
        v4, v5, v6, v7 = _e2m1(q, 16), _e2m1(q, 20), _e2m1(q, 24), _e2m1(q, 28)
    # tl.join appends its new dimension last, so the outermost join gives the lowest bit of the value index:
    # (BLOCK_N, BLOCK_K / 8, x2, x1, x0) holds value 4 x2 + 2 x1 + x0, i.e. k order after the reshape.
    v = tl.join(tl.join(tl.join(v0, v4), tl.join(v2, v6)), tl.join(tl.join(v1, v5), tl.join(v3, v7)))
    v = tl.reshape(v, (BLOCK_N, BLOCK_K))
    sf = tl.reshape(tl.broadcast_to(sf[:, :, None], (BLOCK_N, BLOCK_K // 32, 32)), (BLOCK_N, BLOCK_K))
    w = (v * 1.7014118346046923e38) * sf  # 2v * 2^(s - 128)
    return tl.trans(w.to(DTYPE))


# One int32 word (8 e2m1 values, nibble i = k 8j + i) and its scale 2^(s - 128) as bf16x2 -> the 8 values as bf16,
# two per 32-bit op: nibbles p and p + 4 share a register (lanes 0 / 1). Per pair: magnitude bits to 6..8 and sign
# to 15 of each lane (two shifts, two LOP3), giving v * 2^-126 (0.5 lands on the bf16 subnormal 2^-127); then
# fma.rn.bf16x2 by 2^127 (exact: 2v) and by 2^(s - 128) with -0 added: RN_bf16(v * 2^(s - 127)), the same bits as
# _mxfp4_tile's float32 path (bf16 arithmetic keeps subnormals; overflow rounds to inf). ~3 instructions per value
# instead of ~9. GPU only (the interpreter cannot run PTX): W_FORMAT "mxfp4_asm".
_E2M1X8_BF16_ASM = tl.constexpr("""
{
.reg .b32 t, m, r, c, z;
mov.b32 c, 0x7F007F00;
mov.b32 z, 0x80008000;
shl.b32 m, $8, 6;
and.b32 m, m, 0x01C001C0;
shl.b32 t, $8, 12;
and.b32 t, t, 0x80008000;
or.b32 r, m, t;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$0, $4}, r;
shl.b32 m, $8, 2;
and.b32 m, m, 0x01C001C0;
shl.b32 t, $8, 8;
and.b32 t, t, 0x80008000;
or.b32 r, m, t;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$1, $5}, r;
shr.b32 m, $8, 2;
and.b32 m, m, 0x01C001C0;
shl.b32 t, $8, 4;
and.b32 t, t, 0x80008000;
or.b32 r, m, t;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$2, $6}, r;
shr.b32 m, $8, 6;
and.b32 m, m, 0x01C001C0;
and.b32 t, $8, 0x80008000;
or.b32 r, m, t;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$3, $7}, r;
}
""")


# _E2M1X8_BF16_ASM for kernel words (quant.mxfp4.KERNEL_WORD_BITS): the register of values 2P, 2P + 1 is one rotate
# and one mask (P = 0: two masks, a rotate and an OR), then the same two fma; $i is value i.
_E2M1X8_BF16_KW_ASM = tl.constexpr("""
{
.reg .b32 t, r, c, z;
mov.b32 c, 0x7F007F00;
mov.b32 z, 0x80008000;
and.b32 r, $8, 0x80C080C0;
shf.r.wrap.b32 t, $8, $8, 24;
and.b32 t, t, 0x01000100;
or.b32 r, r, t;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$0, $1}, r;
shf.r.wrap.b32 r, $8, $8, 2;
and.b32 r, r, 0x81C081C0;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$2, $3}, r;
shf.r.wrap.b32 r, $8, $8, 12;
and.b32 r, r, 0x81C081C0;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$4, $5}, r;
shf.r.wrap.b32 r, $8, $8, 6;
and.b32 r, r, 0x81C081C0;
fma.rn.bf16x2 r, r, c, z;
fma.rn.bf16x2 r, r, $9, z;
mov.b32 {$6, $7}, r;
}
""")


@triton.jit
def _mxfp4_tile_asm(q_ptrs, s_ptrs, q_mask, s_mask, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # _mxfp4_tile for bf16 activations, the dequantization in packed bf16x2 PTX (_E2M1X8_BF16_ASM, or
    # _E2M1X8_BF16_KW_ASM for uint32 kernel words).
    q = tl.load(q_ptrs, mask=q_mask, other=0)
    s = tl.load(s_ptrs, mask=s_mask, other=0).to(tl.int32)
    f = tl.where(s >= 2, (s - 1) << 7, 0x20 << s)  # bf16 bits of 2^(s - 128) (2^-128, 2^-127: subnormals)
    f = f | (f << 16)
    f = tl.reshape(tl.broadcast_to(f[:, :, None], (BLOCK_N, BLOCK_K // 32, 4)), (BLOCK_N, BLOCK_K // 8))
    if q.dtype == tl.uint32:
        o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
            _E2M1X8_BF16_KW_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [q.to(tl.int32, bitcast=True), f],
            dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
    else:
        o0, o1, o2, o3, o4, o5, o6, o7 = tl.inline_asm_elementwise(
            _E2M1X8_BF16_ASM, "=h,=h,=h,=h,=h,=h,=h,=h,r,r", [q, f], dtype=(tl.bfloat16,) * 8, is_pure=True, pack=1)
    v = tl.join(tl.join(tl.join(o0, o4), tl.join(o2, o6)), tl.join(tl.join(o1, o5), tl.join(o3, o7)))
    # (BLOCK_N, BLOCK_K / 8, 2, 2, 2) -> (BLOCK_K / 8, 2, 2, 2, BLOCK_N) -> (BLOCK_K, BLOCK_N)
    return tl.reshape(tl.permute(v, (1, 2, 3, 4, 0)), (BLOCK_K, BLOCK_N))


@triton.jit
def _load_w_tile(w_ptrs, s_ptrs, mask, s_mask, W_FORMAT: tl.constexpr, DTYPE: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # Every weight format dequantizes to the activation dtype here; "bf16" is a plain load of a
    # (BLOCK_K, BLOCK_N) tile (so are "fp8" / "fp8_block": e4m3 tiles, K contiguous, scaled outside the dot), "mxfp4" reads the checkpoint's (N, K) blocks and scales (see _mxfp4_tile),
    # "mxfp4_asm" the same for bf16 activations with the packed PTX dequantization (GPU only).
    if W_FORMAT == "bf16" or W_FORMAT == "fp8" or W_FORMAT == "fp8_block":
        return tl.load(w_ptrs, mask=mask, other=0.0)
    elif W_FORMAT == "mxfp4":
        return _mxfp4_tile(w_ptrs, s_ptrs, mask, s_mask, DTYPE, BLOCK_N, BLOCK_K)
    elif W_FORMAT == "mxfp4_asm":
        tl.static_assert(DTYPE == tl.bfloat16, "mxfp4_asm: bf16 activations only")
        return _mxfp4_tile_asm(w_ptrs, s_ptrs, mask, s_mask, BLOCK_N, BLOCK_K)
    else:
        tl.static_assert(False, "unknown weight format")


@triton.jit
def _moe_tile(
    a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, e32, row0, n0, k_iter0, k_iter1,
    N, K, top_k, alpha, limit,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn, stride_be, stride_bn, stride_om, stride_on,
    FIRST: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, W_FORMAT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FP8_PROMOTE: tl.constexpr, W_TMA: tl.constexpr, A_TMA: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # One (BLOCK_M, BLOCK_N) output tile of expert e32 at rows row0.. and columns n0..: the main loop
    # and the epilogue. The kernel calls it with up to four tile shapes (full, half-height last block
    # of an expert, narrow last column tile); W_TMA / A_TMA descriptors come with a matching block.
    # The K loop runs over the tiles [k_iter0, k_iter1) of BLOCK_K; PARTIAL (split K): the fp32 sum of that
    # range is stored at row offs_m of out (a workspace) and _splitk_epilogue_kernel finishes the tile.
    e = e32.to(tl.int64)
    offs_m = row0 + tl.arange(0, BLOCK_M)
    pos = tl.load(sorted_pos_ptr + offs_m)
    row_ok = pos >= 0
    if FIRST:
        a_rows = tl.where(row_ok, pos // top_k, 0).to(tl.int64)
    else:
        a_rows = offs_m.to(tl.int64)
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    offs_k = tl.arange(0, BLOCK_K)
    if not A_TMA:
        a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak
    if W_FORMAT == "mxfp4" or W_FORMAT == "mxfp4_asm":
        # MXFP4 ("mxfp4", "mxfp4_asm"): w_ptr: the words (E, N, K / 8) (mxfp4_words), K contiguous;
        # ws_ptr: the scales (E, N, K / 32)
        offs_q = tl.arange(0, BLOCK_K // 8)
        offs_g = tl.arange(0, BLOCK_K // 32)
        w_ptrs = w_ptr + e * stride_we + offs_n[:, None] * stride_wn + offs_q[None, :] * stride_wk
        s_ptrs = ws_ptr + e * stride_se + offs_n[:, None] * stride_sn + offs_g[None, :]
    elif not W_TMA:
        w_ptrs = w_ptr + e * stride_we + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
        s_ptrs = w_ptrs
    if W_FORMAT == "fp8_block":
        # 128x128 block scales (E, ceil(N / 128), ceil(K / 128)), K blocks contiguous; BLOCK_K divides 128
        sb_ptrs = ws_ptr + e * stride_se + (offs_n // 128) * stride_sn

    if not A_TMA:
        a_ptrs += k_iter0 * BLOCK_K * stride_ak
    if W_FORMAT == "mxfp4" or W_FORMAT == "mxfp4_asm":
        w_ptrs += k_iter0 * (BLOCK_K // 8) * stride_wk
        s_ptrs += k_iter0 * (BLOCK_K // 32)
    elif not W_TMA:
        w_ptrs += k_iter0 * BLOCK_K * stride_wk

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for kk in range(k_iter0, k_iter1):
        if A_TMA:
            a = a_ptr.load([row0, kk * BLOCK_K])
        elif EVEN_K:
            a = tl.load(a_ptrs, mask=row_ok[:, None], other=0.0)
        else:
            k_ok = offs_k < K - kk * BLOCK_K
            a = tl.load(a_ptrs, mask=row_ok[:, None] & k_ok[None, :], other=0.0)
        if W_FORMAT == "mxfp4" or W_FORMAT == "mxfp4_asm":  # K a multiple of 32: the K tail masks whole words
            if EVEN_K:
                w = _load_w_tile(w_ptrs, s_ptrs, n_ok[:, None], n_ok[:, None], W_FORMAT, a.dtype, BLOCK_N, BLOCK_K)
            else:
                k_left = K - kk * BLOCK_K
                w = _load_w_tile(w_ptrs, s_ptrs, n_ok[:, None] & (offs_q[None, :] < k_left // 8),
                                 n_ok[:, None] & (offs_g[None, :] < k_left // 32), W_FORMAT, a.dtype, BLOCK_N,
                                 BLOCK_K)
            w_ptrs += (BLOCK_K // 8) * stride_wk
            s_ptrs += BLOCK_K // 32
        elif W_TMA and (W_FORMAT == "fp8" or W_FORMAT == "fp8_block"):  # (E, N, K) e4m3: a K-major tile
            w = tl.trans(w_ptr.load([e32, n0, kk * BLOCK_K]).reshape(BLOCK_N, BLOCK_K))
        elif W_TMA:
            w = w_ptr.load([e32, kk * BLOCK_K, n0]).reshape(BLOCK_K, BLOCK_N)
        elif EVEN_K:
            w = _load_w_tile(w_ptrs, s_ptrs, n_ok[None, :], None, W_FORMAT, a.dtype, BLOCK_N, BLOCK_K)
        else:
            k_ok = offs_k < K - kk * BLOCK_K
            w = _load_w_tile(w_ptrs, s_ptrs, k_ok[:, None] & n_ok[None, :], None, W_FORMAT, a.dtype, BLOCK_N,
                             BLOCK_K)
        # FP8 on sm_90: wgmma accumulates e4m3 products in reduced precision. Channel scales (default): that
        # accumulation runs over the whole K ("fast accumulation"); FP8_PROMOTE and block scales: each K step is
        # promoted into the fp32 accumulator (DeepSeek-V3's scheme, every <= 128 K; a second accumulator).
        if W_FORMAT == "fp8_block":  # this K step's scale of each column's block, applied in fp32
            sb = tl.load(sb_ptrs + (kk * BLOCK_K) // 128, mask=n_ok, other=0.0)
            acc += tl.dot(a, w, max_num_imprecise_acc=BLOCK_K) * sb[None, :]
        elif W_FORMAT == "fp8" and FP8_PROMOTE:
            acc = tl.dot(a, w, acc, max_num_imprecise_acc=BLOCK_K)
        elif W_FORMAT == "fp8":
            acc = tl.dot(a, w, acc)
        else:
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        if not A_TMA:
            a_ptrs += BLOCK_K * stride_ak
        if not W_TMA and (W_FORMAT == "bf16" or W_FORMAT == "fp8" or W_FORMAT == "fp8_block"):
            w_ptrs += BLOCK_K * stride_wk

    if W_FORMAT == "fp8" or W_FORMAT == "fp8_block":
        # e4m3 activations: the row's token scale (GEMM 1: the gathered token's; GEMM 2: the act row's), and per
        # channel the column's weight scale, in fp32 (before the bias; linear, so split-K partials take them too)
        acc = acc * tl.load(as_ptr + a_rows, mask=row_ok, other=0.0)[:, None]
        if W_FORMAT == "fp8":
            acc = acc * tl.load(ws_ptr + e * stride_se + offs_n * stride_sn, mask=n_ok, other=0.0)[None, :]

    if PARTIAL:
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, acc, mask=row_ok[:, None] & n_ok[None, :])
    else:
        _epilogue(acc, e, offs_m, pos, row_ok, offs_n, n_ok, n0, bias_ptr, out_ptr, topk_w_ptr, N, alpha, limit,
                  stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit
def _epilogue(acc, e, offs_m, pos, row_ok, offs_n, n_ok, n0, bias_ptr, out_ptr, topk_w_ptr, N, alpha, limit,
              stride_be, stride_bn, stride_om, stride_on, FIRST: tl.constexpr, HAS_BIAS: tl.constexpr,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # The fp32 (BLOCK_M, BLOCK_N) sum of a tile -> bias, then GEMM 1: the clamped SwiGLU of the interleaved
    # gate/up columns, stored at row offs_m of act; GEMM 2: times the row's routing weight, stored at row pos of y.
    if HAS_BIAS:
        b = tl.load(bias_ptr + e * stride_be + offs_n * stride_bn, mask=n_ok, other=0.0)
        acc += b.to(tl.float32)[None, :]

    if FIRST:
        gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))
        gate = tl.minimum(gate, limit, propagate_nan=tl.PropagateNan.ALL)
        up = tl.clamp(up, -limit, limit, propagate_nan=tl.PropagateNan.ALL)
        act = (up + 1.0) * gate * tl.sigmoid(alpha * gate)
        offs_i = n0 // 2 + tl.arange(0, BLOCK_N // 2)
        out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_i[None, :] * stride_on
        tl.store(out_ptrs, act.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (offs_i[None, :] < N // 2))
    else:
        wt = tl.load(topk_w_ptr + pos, mask=row_ok, other=0.0)
        acc = acc * wt[:, None]
        out_ptrs = out_ptr + pos.to(tl.int64)[:, None] * stride_om + offs_n[None, :] * stride_on
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & n_ok[None, :])


@triton.jit(do_not_specialize=["nb"])
def _splitk_epilogue_kernel(part_ptr, bias_ptr, out_ptr, sorted_pos_ptr, block_expert_ptr, topk_w_ptr, N, nb,
                            alpha, limit, stride_ps, stride_pm, stride_be, stride_bn, stride_om, stride_on,
                            FIRST: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Split K: the SPLIT_K partial sums of one tile (workspace (SPLIT_K, nb * BLOCK_M, N) fp32, real rows only),
    # added in split order (deterministic), then the GEMM's own epilogue.
    pid_m = tl.program_id(0)
    n0 = tl.program_id(1) * BLOCK_N
    e32 = tl.load(block_expert_ptr + pid_m)
    if e32 < 0:
        return
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    pos = tl.load(sorted_pos_ptr + offs_m)
    row_ok = pos >= 0
    offs_n = n0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    ptrs = part_ptr + offs_m.to(tl.int64)[:, None] * stride_pm + offs_n[None, :]
    mask = row_ok[:, None] & n_ok[None, :]
    acc = tl.load(ptrs, mask=mask, other=0.0)
    for s in tl.static_range(1, SPLIT_K):
        acc += tl.load(ptrs + s * stride_ps, mask=mask, other=0.0)
    _epilogue(acc, e32.to(tl.int64), offs_m, pos, row_ok, offs_n, n_ok, n0, bias_ptr, out_ptr, topk_w_ptr, N, alpha,
              limit, stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, BLOCK_M, BLOCK_N)


@triton.jit
def _max_i32(a, b):
    return tl.maximum(a, b)


@triton.jit
def _min_i32(a, b):
    return tl.minimum(a, b)


@triton.jit(do_not_specialize=["nb"])
def _block_groups_kernel(block_expert_ptr, groups_ptr, nb, CAP: tl.constexpr, NB_P2: tl.constexpr):
    # groups[b] = first block of b's group, groups[nb + b] = its number of blocks: a group is a run of
    # at most CAP consecutive blocks of one expert (unused blocks: groups of one).
    b = tl.arange(0, NB_P2)
    ok = b < nb
    e = tl.load(block_expert_ptr + b, mask=ok, other=-1)
    e_prev = tl.load(block_expert_ptr + b - 1, mask=ok & (b > 0), other=-2)
    e_next = tl.load(block_expert_ptr + b + 1, mask=b + 1 < nb, other=-2)
    first = tl.associative_scan(tl.where(e != e_prev, b, 0), 0, _max_i32)
    end = tl.associative_scan(tl.where(e != e_next, b + 1, NB_P2), 0, _min_i32, reverse=True)
    first = first + ((b - first) // CAP) * CAP
    cnt = tl.minimum(end - first, CAP)
    used = e >= 0
    tl.store(groups_ptr + b, tl.where(used, first, b), mask=ok)
    tl.store(groups_ptr + nb + b, tl.where(used, cnt, 1), mask=ok)


@triton.jit(do_not_specialize=["nb", "top_k", "M_BUCKET"])
def _moe_gemm_kernel(
    a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, block_expert_ptr, groups_ptr, topk_w_ptr, a_half_ptr, w_tail_ptr,
    N, K, nb, top_k, alpha, limit, M_BUCKET,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn, stride_be, stride_bn, stride_om, stride_on,
    FIRST: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, W_FORMAT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FP8_PROMOTE: tl.constexpr, W_TMA: tl.constexpr, A_TMA: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    SPLIT_M: tl.constexpr, BN_TAIL: tl.constexpr, NARROW_LAST: tl.constexpr, SPLIT_K: tl.constexpr,
):
    # W_TMA: ``w_ptr`` is a host tensor descriptor of the (E, K, N) weights, block (1, BLOCK_K, BLOCK_N);
    # A_TMA (GEMM 2 only: its rows are contiguous): ``a_ptr`` is a descriptor of act, block (BLOCK_M, BLOCK_K).
    # SPLIT_M: a row block whose second half is all padding (the last block of an expert with at most
    # BLOCK_M / 2 rows in it) runs a BLOCK_M / 2 tile (``a_half_ptr``: act's descriptor with that block
    # height when A_TMA). BN_TAIL > 0: the last column tile is BN_TAIL wide (``w_tail_ptr``: the weights'
    # descriptor with that block when W_TMA). Both remove MMA work on padding only.
    # NARROW_LAST (with BN_TAIL > 0): the narrow last column tiles of all blocks take the last nb program
    # ids, block order, after every full-width tile. Programs start in id order as SMs free up, so the
    # grid's last wave is made of short tiles and the SMs finish closer together (a greedy-schedule model
    # of T=4096 put the idle tail at 2.1% of GEMM 1 and 3.8% of GEMM 2 with these tiles in place, ~1% last).
    # SPLIT_K > 1 (decode tiles): SPLIT_K consecutive programs share one output tile, each a K range of it, and
    # store fp32 partial sums into out (then a (SPLIT_K, nb * BLOCK_M, N) workspace; _splitk_epilogue_kernel adds
    # them): SPLIT_K times the CTAs in flight when few experts are routed.
    pid = tl.program_id(0)
    k_tiles = tl.cdiv(K, BLOCK_K)
    if SPLIT_K > 1:
        per_split = tl.cdiv(k_tiles, SPLIT_K)
        k_iter0 = (pid % SPLIT_K) * per_split
        k_iter1 = tl.minimum(k_iter0 + per_split, k_tiles)
        out_base = out_ptr + (pid % SPLIT_K).to(tl.int64) * nb * BLOCK_M * stride_om
        pid = pid // SPLIT_K
    else:
        k_iter0 = 0
        k_iter1 = k_tiles
        out_base = out_ptr
    num_n = tl.cdiv(N, BLOCK_N)
    if NARROW_LAST and BN_TAIL > 0:
        num_n = num_n - 1
    if NARROW_LAST and BN_TAIL > 0 and pid >= nb * num_n:
        pid_m = pid - nb * num_n
        pid_n = num_n
    elif GROUP_M == 0:
        # expert groups (``block_groups``): the tiles of a group of blocks [first, first + cnt) are
        # [first * num_n, (first + cnt) * num_n), row block fastest; no group straddles two experts, so
        # each weight tile is read from DRAM once (GROUP_M groups split ~half the experts at T=4096).
        b = pid // num_n
        first_m = tl.load(groups_ptr + b)
        group_m = tl.load(groups_ptr + nb + b)
        local = pid - first_m * num_n
        pid_m = first_m + local % group_m
        pid_n = local // group_m
    else:
        per_group = GROUP_M * num_n
        group = pid // per_group
        first_m = group * GROUP_M
        group_m = tl.minimum(nb - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % group_m
        pid_n = (pid % per_group) // group_m

    e32 = tl.load(block_expert_ptr + pid_m)
    if e32 < 0:
        return
    row0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    # SPLIT_M: row BLOCK_M / 2 of the block is padding, so is every row after it (real rows come first).
    last_n = pid_n == tl.cdiv(N, BLOCK_N) - 1
    if SPLIT_M:
        if tl.load(sorted_pos_ptr + row0 + BLOCK_M // 2) < 0:
            _moe_tile_at(a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_base, sorted_pos_ptr, topk_w_ptr, a_half_ptr, w_tail_ptr, e32,
                         row0, n0, last_n, k_iter0, k_iter1, N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we,
                         stride_wk, stride_wn, stride_se, stride_sn, stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K,
                         W_FORMAT, DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, SPLIT_K > 1, True, BLOCK_M, BLOCK_N, BLOCK_K, BN_TAIL)
        else:
            _moe_tile_at(a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_base, sorted_pos_ptr, topk_w_ptr, a_half_ptr, w_tail_ptr, e32,
                         row0, n0, last_n, k_iter0, k_iter1, N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we,
                         stride_wk, stride_wn, stride_se, stride_sn, stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K,
                         W_FORMAT, DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, SPLIT_K > 1, False, BLOCK_M, BLOCK_N, BLOCK_K, BN_TAIL)
    else:
        _moe_tile_at(a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_base, sorted_pos_ptr, topk_w_ptr, a_half_ptr, w_tail_ptr, e32,
                     row0, n0, last_n, k_iter0, k_iter1, N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we,
                     stride_wk, stride_wn, stride_se, stride_sn, stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K,
                     W_FORMAT, DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, SPLIT_K > 1, False, BLOCK_M, BLOCK_N, BLOCK_K, BN_TAIL)


@triton.jit
def _moe_tile_at(
    a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, a_half_ptr, w_tail_ptr, e32, row0, n0, last_n,
    k_iter0, k_iter1, N, K, top_k, alpha, limit,
    stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn, stride_be, stride_bn, stride_om, stride_on,
    FIRST: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, W_FORMAT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FP8_PROMOTE: tl.constexpr, W_TMA: tl.constexpr, A_TMA: tl.constexpr, PARTIAL: tl.constexpr,
    HALF: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BN_TAIL: tl.constexpr,
):
    # Static tile shape choice (HALF; BN_TAIL > 0 and last_n: the narrow last column tile): each call of
    # _moe_tile below is one instantiation of the main loop (HALF is False when SPLIT_M is off, so the
    # half-height calls are never instantiated then).
    if HALF:
        if BN_TAIL > 0:
            if last_n:
                _moe_tile(a_half_ptr, w_tail_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, e32, row0, n0, k_iter0, k_iter1,
                          N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn,
                          stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K, W_FORMAT,
                          DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, PARTIAL, BLOCK_M // 2, BN_TAIL, BLOCK_K)
            else:
                _moe_tile(a_half_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, e32, row0, n0, k_iter0, k_iter1,
                          N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn,
                          stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K, W_FORMAT,
                          DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, PARTIAL, BLOCK_M // 2, BLOCK_N, BLOCK_K)
        else:
            _moe_tile(a_half_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, e32, row0, n0, k_iter0, k_iter1,
                      N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn,
                      stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K, W_FORMAT,
                      DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, PARTIAL, BLOCK_M // 2, BLOCK_N, BLOCK_K)
    else:
        if BN_TAIL > 0:
            if last_n:
                _moe_tile(a_ptr, w_tail_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, e32, row0, n0, k_iter0, k_iter1,
                          N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn,
                          stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K, W_FORMAT,
                          DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, PARTIAL, BLOCK_M, BN_TAIL, BLOCK_K)
            else:
                _moe_tile(a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, e32, row0, n0, k_iter0, k_iter1,
                          N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn,
                          stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K, W_FORMAT,
                          DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, PARTIAL, BLOCK_M, BLOCK_N, BLOCK_K)
        else:
            _moe_tile(a_ptr, w_ptr, ws_ptr, as_ptr, bias_ptr, out_ptr, sorted_pos_ptr, topk_w_ptr, e32, row0, n0, k_iter0, k_iter1,
                      N, K, top_k, alpha, limit, stride_am, stride_ak, stride_we, stride_wk, stride_wn, stride_se, stride_sn,
                      stride_be, stride_bn, stride_om, stride_on, FIRST, HAS_BIAS, EVEN_K, W_FORMAT,
                      DOT_PRECISION, FP8_PROMOTE, W_TMA, A_TMA, PARTIAL, BLOCK_M, BLOCK_N, BLOCK_K)


# --- tile choice ------------------------------------------------------------------------------
#
# BLOCK_M is fixed by the row count M = T * k (the dispatch pads each expert to it). The rest of
# the tile (a ``Cfg``) comes from a per-BLOCK_M candidate list: the first entry is the default; on
# H100-class (sm_90) GPUs the large shapes time every candidate once per (shape, M bucket) on
# their first eager call and keep the fastest (GOK_MOE_AUTOTUNE=0: always the first).


class Cfg(NamedTuple):
    bn: int
    bk: int
    warps: int
    stages: int
    group_m: int
    w_tma: bool = False  # weights through a TMA tensor descriptor (sm_90+)
    a_tma: bool = False  # GEMM 2's activation rows through a TMA descriptor (sm_90+)
    split_m: bool = False  # an expert's last block with <= BLOCK_M / 2 rows runs a half-height tile
    split_n: bool = False  # a last column tile at most half full runs a narrower tile
    narrow_last: bool = False  # the narrow last column tiles run after every full-width tile
    split_k: int = 1  # decode tiles: programs per output tile, each a K range (partial sums, then an epilogue)


def bn_tail(n: int, cfg: Cfg) -> int:
    """Width of the narrow last column tile (0: none): the remainder rounded up to a power of two."""
    rem = n - (triton.cdiv(n, cfg.bn) - 1) * cfg.bn
    if not cfg.split_n or rem > cfg.bn // 2:
        return 0
    return max(16, triton.next_power_of_2(rem))


def block_m_for(m: int, num_experts: int) -> int:
    """Rows per block for M = T*k slots over E experts (decode: 16, prefill: up to 128)."""
    per_expert = m / max(num_experts, 1)
    if per_expert <= 24:
        return 16
    if per_expert <= 48:
        return 32
    if per_expert <= 96:
        return 64
    return 128


def candidates(block_m: int, first: bool, tma: bool, fmt: str = "bf16", promote: bool = True) -> list[Cfg]:
    """Tile candidates, best first (H100 sweep of 2026-11-22, docs/decisions-moe.md "v3"). ``tma``: the
    BLOCK_M >= 64 tiles read the weights (and GEMM 2 its activation rows) through TMA descriptors.
    ``fmt="mxfp4"``: the same tiles (the weights then never go through TMA: see _pick); not tuned on a GPU
    yet (docs/moe.md, MXFP4)."""
    if fmt == "fp8":
        # bf16's tiles (the same shared memory per stage holds twice the K in e4m3), with BLOCK_K 128 tried first
        # from 64-row blocks on; the autotuner times both on sm_90. ``promote`` (block scales, FP8_PROMOTE): the
        # fp32 promotion every K step keeps a second (BLOCK_M, BLOCK_N) fp32 partial in registers, so the
        # 128 x 256 tiles over 8 warps spill (sm_90a report: 255 registers, 152-320 bytes of stack, LDL/STL in the
        # K loop) and only 128-wide tiles are offered.
        base = candidates(block_m, first, tma)
        if block_m < 64:
            return base
        if not promote:
            return list(dict.fromkeys([c._replace(bk=128, stages=min(c.stages, 3)) for c in base] + base))
        narrow = [c._replace(bn=min(c.bn, 128)) for c in base]
        return list(dict.fromkeys([c._replace(bk=128, stages=min(c.stages, 4)) for c in narrow] + narrow))
    if block_m <= 32 and fmt == "mxfp4":
        # MXFP4 decode is issue-bound (dequantization: ~6.5 instructions per weight value in the sm_90a SASS), so
        # the grid should spread evenly over the SMs: GEMM 1 in 64-column tiles (90 CTAs per routed expert; T=1:
        # 360 CTAs, at most 3 per SM against an average of 2.7, where 128 columns give 180: 2 on some SMs, 1 on
        # others); GEMM 2 keeps 64 (32 columns cost ~25% more instructions per value). A prediction from the
        # SASS counts (scripts/moe_mxfp4_sm90_report.py), not measured yet (docs/moe.md, MXFP4).
        return [Cfg(64, 64, 4, 4, 64), Cfg(128 if first else 32, 64, 4, 6, 64)]
    if block_m <= 32:  # decode: stream the routed experts' weights, many CTAs along N
        # Fixed (not tuned): in CUDA graphs the first is the fastest (or within 2%) at T = 1 / 4 / 64 for
        # both GEMMs (probe of 2026-11-22 ~12:42 UTC, docs/decisions-moe.md "v6"), and the do_bench tuner did not
        # always pick it. The rest serve sweeps.
        return [Cfg(128 if first else 64, 64, 4, 6, 64), Cfg(64 if first else 32, 128, 4, 4, 64),
                Cfg(64, 128, 4, 5, 64), Cfg(32, 256, 4, 3, 64)]
    if block_m == 64:
        return [Cfg(128, 64, 4, 4, 8), Cfg(128, 64, 4, 4, 256)]
    # BLOCK_M 128: split tiles (half-height last block of an expert, narrow last column tile; "v4").
    # narrow_last: the narrow last column tiles run after all full-width ones (see _moe_gemm_kernel).
    if not tma:  # the first one also serves fp32 (2 stages)
        split = dict(split_m=True, split_n=True, narrow_last=True)
        return [Cfg(128, 64, 8, 4, 8, **split), Cfg(256, 64, 8, 3, 8, **split), Cfg(256, 64, 8, 4, 16, **split)]
    # 128 x 256 tiles, 2 warpgroups. v3 (no split): 990 + 531 us (T=4096), 3801 + 1838 (T=16384), 426 + 247
    # (T=1024). v4 probe, back to back in a CUDA graph: T=4096 1521-1534, T=16384 5340 (3 stages: 5716).
    # GROUP_M 4 was slower than 8 at every size (v4-2 probe) and is gone; a persistent grid (v5) was
    # slower still (docs/decisions-moe.md "v5").
    # group_m 0: expert groups (block_groups), the first choice wherever the caller passes them.
    return [Cfg(256, 64, 8, 4, 0, True, True, True, True, True), Cfg(256, 64, 8, 4, 8, True, True, True, True, True)]


def _tma_ok(device: torch.device) -> bool:
    return _tma_ok_cached(device.type, device.index, os.environ.get("GOK_MOE_TMA", "1"),
                          os.environ.get("TRITON_INTERPRET", "0"))


@functools.lru_cache(maxsize=None)
def _tma_ok_cached(dev_type, dev_index, env, interpret) -> bool:
    if env == "0" or interpret == "1" or dev_type != "cuda":
        return False
    return torch.cuda.get_device_capability(dev_index)[0] >= 9


def _tma_able(t: torch.Tensor) -> bool:
    """TMA needs a 16-byte aligned base, a contiguous last dimension and 16-byte aligned strides."""
    es = t.element_size()
    return (t.stride(-1) == 1 and t.data_ptr() % 16 == 0
            and all((st * es) % 16 == 0 for st in t.stride()[:-1]))


def _use_autotune(device: torch.device, n: int, k: int) -> bool:
    return _use_autotune_cached(device.type, device.index, n >= 1024 and k >= 1024,
                                os.environ.get("GOK_MOE_AUTOTUNE", "1"), os.environ.get("TRITON_INTERPRET", "0"))


@functools.lru_cache(maxsize=None)
def _use_autotune_cached(dev_type: str, dev_index, large: bool, env: str, interpret: str) -> bool:
    """Autotune only the large shapes on H100-class (sm_90) GPUs; GOK_MOE_AUTOTUNE=0 turns it off."""
    if env == "0" or interpret == "1" or dev_type != "cuda" or not large:
        return False
    return torch.cuda.get_device_capability(dev_index) == (9, 0)


# --- launch -----------------------------------------------------------------------------------
#
# The first call of a key goes through Triton's JIT (compile, or its cache) and keeps the
# compiled kernel; later calls launch it directly (the launcher Triton itself calls), which skips
# Triton's per-call argument binding. The key holds everything the compiled kernel was
# specialized on: shapes, strides, dtypes, 16-byte alignment of the pointers (nb, top_k and
# M_BUCKET are not specialized).

_FAST: dict = {}
_CHOSEN: dict = {}  # (block_m, first, n, k, m_bucket, dtype, tma) -> Cfg
FORCE: dict = {}  # (block_m, first) -> Cfg: benchmarks/harness_moe.py pins a tile (experiment rows)


def _split_m(cfg, block_m):
    return cfg.split_m and block_m >= 128


def _descs(first, cfg, a, w, block_m, tail):
    """(a, a for half-height tiles, w, w for the narrow last column tile): descriptors or the tensors. FP8 weights
    are (E, N, K): their blocks are (1, BLOCK_N, BLOCK_K)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    wd = wt = w
    if cfg.w_tma:
        nk = w.dtype == FP8
        block = (lambda bn: [1, bn, cfg.bk]) if nk else (lambda bn: [1, cfg.bk, bn])
        wd = TensorDescriptor(w, list(w.shape), list(w.stride()), block(cfg.bn))
        wt = TensorDescriptor(w, list(w.shape), list(w.stride()), block(tail)) if tail else wd
    ad = ah = a
    if cfg.a_tma and not first:
        ad = TensorDescriptor(a, list(a.shape), list(a.stride()), [block_m, cfg.bk])
        ah = TensorDescriptor(a, list(a.shape), list(a.stride()), [block_m // 2, cfg.bk]) if _split_m(cfg, block_m) else ad
    return ad, ah, wd, wt


_N_ARGS = 30  # run-time arguments before the constexprs (the raw-pointer launch below rebuilds them)


FP8 = torch.float8_e4m3fn
# FP8 channel-scale tiles accumulate with the tensor cores' own accumulation over the whole K (Triton's sm_90
# default, cuBLAS's "fast accumulation"): no second fp32 accumulator, so the 128 x 256 tiles fit in registers.
# H100, 2026-12-06, same call: FP8 block at T = 4096 1,378 -> 1,043 us, tests/test_fp8.py's float64-derived bounds
# hold (docs/decisions-moe.md). GOK_FP8_PROMOTE=1 promotes into fp32 every K step (DeepSeek-V3's scheme; 128-wide
# tiles). Block scales always promote: each K step carries its own scale.
FP8_PROMOTE = os.environ.get("GOK_FP8_PROMOTE", "0") == "1"


def _w_format(a: torch.Tensor, w: torch.Tensor, ws) -> str:
    """W_FORMAT of a weight operand: "bf16", "fp8" (per-channel scales (E, N)), "fp8_block" (128x128 block scales)
    or MXFP4's ("mxfp4" / "mxfp4_asm")."""
    if ws is None:
        return "bf16"
    if w.dtype == FP8:
        return "fp8" if ws.dim() == 2 else "fp8_block"
    return _mxfp4_format(a)


def _w_strides(w, ws):
    """(stride_we, stride_wk, stride_wn, stride_se, stride_sn): w (E, K, N) for bf16; for MXFP4, w is the
    words (E, N, K / 8) (mxfp4_words) and ws the scales (E, N, K / 32), both K-contiguous; for FP8, w is
    (E, N, K) e4m3 and ws (E, N) or (E, N / 128, K / 128), the last K-contiguous."""
    if ws is None:
        return w.stride(0), w.stride(1), w.stride(2), 0, 0
    return w.stride(0), w.stride(2), w.stride(1), ws.stride(0), ws.stride(1)


def _mxfp4_format(a: torch.Tensor) -> str:
    """"mxfp4_asm" (packed PTX dequantization) for bf16 activations on CUDA, unless GOK_MXFP4_ASM=0 or under
    TRITON_INTERPRET; "mxfp4" (Triton ops, float32 math) otherwise."""
    return _mxfp4_format_cached(a.dtype, a.device.type, os.environ.get("GOK_MXFP4_ASM", "1"),
                                os.environ.get("TRITON_INTERPRET", "0"))


@functools.lru_cache(maxsize=None)
def _mxfp4_format_cached(dtype, dev_type, env, interpret) -> str:
    ok = dtype == torch.bfloat16 and dev_type == "cuda" and env != "0" and interpret != "1"
    return "mxfp4_asm" if ok else "mxfp4"


def _args(first, cfg, a, w, bias, out, sorted_pos, block_expert, groups, topk_w, n, k, nb, top_k, alpha, limit,
          m_bucket, block_m, ws=None, a_s=None):
    tail = bn_tail(n, cfg)
    ad, ah, wd, wt = _descs(first, cfg, a, w, block_m, tail)
    has_bias = bias is not None
    return (
        ad, wd, w if ws is None else ws, w if a_s is None else a_s, bias if has_bias else w, out, sorted_pos, block_expert, groups, topk_w, ah,
        wt, n, k, nb, top_k, alpha, limit, m_bucket,
        a.stride(0), a.stride(1), *_w_strides(w, ws),
        bias.stride(0) if has_bias else 0, bias.stride(1) if has_bias else 0,
        out.stride(-2), out.stride(-1),
        first, has_bias, k % cfg.bk == 0, _w_format(a, w, ws),
        "ieee" if a.dtype == torch.float32 else "tf32", FP8_PROMOTE,
        cfg.w_tma, cfg.a_tma and not first, block_m, cfg.bn, cfg.bk, cfg.group_m, _split_m(cfg, block_m), tail,
        cfg.narrow_last, cfg.split_k,
    )


def _compile(args, cfg, fp32):
    stages = cfg.stages if not fp32 else 2  # fp32 tiles take twice the shared memory
    kern = _moe_gemm_kernel.warmup(*args, grid=(1,), num_warps=cfg.warps, num_stages=stages)
    if hasattr(kern, "result"):
        kern = kern.result()
    return kern


def _run(kern, grid0, args):
    stream = _raw_stream(_get_device())
    enter = _knobs.runtime.launch_enter_hook
    md = None if enter is None else kern.launch_metadata((grid0, 1, 1), stream, *args)
    kern.run(grid0, 1, 1, stream, kern.function, kern.packed_metadata, md, enter, _knobs.runtime.launch_exit_hook,
             *args)


def tiles(block_m: int, first: bool, tma: bool, wf: str) -> list[Cfg]:
    """The tiles a weight format (a W_FORMAT: _w_format) can run, best first: the family's candidates without TMA
    where there is none (``tma``) or where the format never uses it (MXFP4: packed bytes + scales), and for FP8
    block scales only K steps that lie in one 128-wide scale block."""
    fmt = "bf16" if wf == "bf16" else ("fp8" if wf.startswith("fp8") else "mxfp4")
    cands = candidates(block_m, first, tma, fmt, promote=FP8_PROMOTE or wf == "fp8_block")
    if not tma:
        cands = [c._replace(w_tma=False, a_tma=False) for c in cands]
    if fmt == "mxfp4":
        cands = list(dict.fromkeys(c._replace(w_tma=False) for c in cands))
    if wf == "fp8_block":
        cands = [c for c in cands if 128 % c.bk == 0] or [Cfg(64, 128, 4, 4, 64)]
    return cands


def _pick(first, a, w, bias, out, sorted_pos, block_expert, groups, topk_w, n, k, nb, top_k, alpha, limit, block_m,
          m_bucket, tma, ws=None, a_s=None):
    """The tile for this key: forced, default, or timed once (autotune, eager calls only)."""
    wf = _w_format(a, w, ws)
    fmt = "bf16" if wf == "bf16" else ("fp8" if wf.startswith("fp8") else "mxfp4")
    mx = fmt == "mxfp4"
    forced = FORCE.get((block_m, first, fmt)) or (FORCE.get((block_m, first)) if ws is None else None)
    if forced is not None:
        forced = forced._replace(w_tma=False) if mx else forced
        return forced if forced.group_m or groups is not None else forced._replace(group_m=8)
    cands = tiles(block_m, first, tma, wf)
    if groups is None:  # expert groups need the caller's block_groups table
        cands = list(dict.fromkeys(c._replace(group_m=c.group_m or 8) for c in cands))
    fp32 = a.dtype == torch.float32
    if (fp32 or len(cands) == 1 or block_m <= 32 or not _use_autotune(a.device, n, k)
            or torch.cuda.is_current_stream_capturing()):
        return cands[0]
    ckey = (block_m, first, n, k, m_bucket, a.dtype, tma, wf)
    cfg = _CHOSEN.get(ckey)
    if cfg is None:
        import triton.testing

        runs = {}
        for c in cands:
            args = _args(first, c, a, w, bias, out, sorted_pos, block_expert, groups, topk_w, n, k, nb, top_k, alpha,
                         limit, m_bucket, block_m, ws, a_s)
            try:
                runs[c] = (_compile(args, c, fp32), nb * triton.cdiv(n, c.bn), args)
            except Exception:  # e.g. out of shared memory on a smaller part
                continue
        # Candidates timed in interleaved rounds, best round each: clocks drift over a tuning pass (v4 probe:
        # one tile measured 919 and 1086 us a second apart), which would favour whichever ran first.
        times = {c: float("inf") for c in runs}
        for r in range(3):
            for c, (kern, g, args) in runs.items():
                try:
                    t = triton.testing.do_bench(lambda: _run(kern, g, args), warmup=5 if r == 0 else 1, rep=10)
                except Exception:  # a tile over the shared-memory limit fails at its first launch, not at compile
                    t = float("inf")
                times[c] = min(times[c], t)
        cfg = min(times, key=times.get) if times else cands[0]
        _CHOSEN[ckey] = cfg
    return cfg


def _decode_ok(a, w, ws, bias, out, block_m) -> bool:
    """16-row blocks of quantized experts (MXFP4 with bf16 activations, or e4m3 weights and activations on sm_90+):
    the CUDA decode GEMM (kernel_src/moe/decode_gemm_cuda.cu: weights as the MMA's A operand, read and converted
    once per block) instead of the Triton tile (MXFP4 block on the H100, 2026-12-05: 2.0x at T = 1; docs/moe.md).
    GOK_DECODE_GEMM=0 keeps the Triton kernel."""
    if ws is None or block_m != 16 or not a.is_cuda or out.dtype != torch.bfloat16 or out.stride(1) != 1:
        return False
    if w.dtype in (torch.int32, torch.uint32):  # MXFP4 words (checkpoint order / kernel words)
        fmt_ok = a.dtype == torch.bfloat16 and w.shape[2] % 4 == 0
    else:
        fmt_ok = a.dtype == FP8 and w.shape[2] % 16 == 0 and _sm90(a.device.index)
    return (fmt_ok and _decode_enabled(os.environ.get("GOK_DECODE_GEMM", "1"), os.environ.get("TRITON_INTERPRET", "0"))
            and w.is_contiguous() and ws.is_contiguous() and w.data_ptr() % 16 == 0
            and a.stride(1) == 1 and (a.stride(0) * a.element_size()) % 16 == 0 and a.data_ptr() % 16 == 0
            and (bias is None or (bias.dtype == torch.bfloat16 and bias.is_contiguous())))


# The CUDA prefill GEMM of MXFP4 kernel words (kernel_src/moe/prefill_gemm_cuda.cu): wgmma with the weights
# dequantized in registers, for 64- and 128-row blocks on sm_90 (Hopper), the default there since 2026-12-07
# (GOK_PREFILL_GEMM=0 turns it off). Elsewhere the Triton kernel (and, from DEQUANT_MIN_ROWS routed rows on,
# moe/mxfp4.py's one-pass dequantization).
PREFILL_BLOCK_M = (64, 128)


def prefill_gemm_ok(words: torch.Tensor, dtype: torch.dtype, block_m: int) -> bool:
    """Whether the CUDA prefill GEMM takes these MXFP4 words (E, N, K/8) with activations of ``dtype`` in blocks of
    ``block_m`` rows (the shapes and the device; the per-call strides are _prefill_ok's)."""
    return (block_m in PREFILL_BLOCK_M and words.dtype == torch.uint32 and dtype == torch.bfloat16 and words.is_cuda
            and words.dim() == 3
            and _prefill_enabled(words.device.index, os.environ.get("GOK_PREFILL_GEMM", "1"),
                                 os.environ.get("TRITON_INTERPRET", "0")))


@functools.lru_cache(maxsize=None)
def _prefill_enabled(index, env: str, interpret: str) -> bool:
    return (env != "0" and interpret != "1" and hasattr(ops, "moe_gemm_prefill_mxfp4")
            and torch.cuda.get_device_capability(index)[0] == 9)


def _prefill_ok(a, w, ws, bias, out, block_m) -> bool:
    if ws is None or not prefill_gemm_ok(w, a.dtype, block_m) or out.dtype != torch.bfloat16 or out.stride(1) != 1:
        return False
    return (w.is_contiguous() and ws.is_contiguous() and w.data_ptr() % 16 == 0 and a.stride(1) == 1
            and (a.stride(0) * a.element_size()) % 16 == 0 and a.data_ptr() % 16 == 0
            and a.shape[0] * a.stride(0) * a.element_size() < 1 << 32
            and (bias is None or (bias.dtype == torch.bfloat16 and bias.is_contiguous())))


@functools.lru_cache(maxsize=None)
def _sm90(index) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


@functools.lru_cache(maxsize=None)
def _decode_enabled(env: str, interpret: str) -> bool:
    return env != "0" and interpret != "1" and hasattr(ops, "moe_gemm_decode")


def _launch(first, a, w, bias, out, sorted_pos, block_expert, groups, topk_w, n, k, nb, top_k, alpha, limit, block_m,
            m_bucket, ws=None, a_s=None):
    # ws: None (w is the (E, K, N) weights), the MXFP4 scales (E, N, K / 32) (w: the words, mxfp4_words) or the
    # FP8 weight scales (w: (E, N, K) e4m3; then a is e4m3 and a_s its per-row scales)
    if _prefill_ok(a, w, ws, bias, out, block_m):
        ops.moe_gemm_prefill_mxfp4(a, w, ws, bias, sorted_pos, block_expert, topk_w, top_k, alpha, limit, first, out)
        return
    if _decode_ok(a, w, ws, bias, out, block_m):
        ops.moe_gemm_decode(a, a_s, w, ws, bias, sorted_pos, block_expert, topk_w, top_k, alpha, limit, first, out)
        return
    a_st, o_st = a.stride(), out.stride()
    w_st = _w_strides(w, ws)
    has_bias = bias is not None
    b_st = bias.stride() if has_bias else (0, 0)
    ap, wp, tp = a.data_ptr(), w.data_ptr(), topk_w.data_ptr()
    sp = ws.data_ptr() if ws is not None else wp
    asp = a_s.data_ptr() if a_s is not None else wp
    bp = bias.data_ptr() if has_bias else wp
    key = (first, block_m, m_bucket, n, k, top_k, a.dtype, w.dtype, a_st, w_st, o_st, b_st, has_bias,
           ap % 16, wp % 16, bp % 16, tp % 16, sp % 16, asp % 16, a.get_device(), groups is not None,
           _w_format(a, w, ws))
    gp = groups if groups is not None else block_expert  # a placeholder pointer when there are no groups
    hit = _FAST.get(key)
    if hit is not None and not FORCE:
        kern, cfg, tail, tma = hit
        dst = _splitk_workspace(cfg, out, nb, block_m, n)
        if tma:  # descriptors (large T only: the host is not the bottleneck there)
            args = _args(first, cfg, a, w, bias, dst, sorted_pos, block_expert, gp, topk_w, n, k, nb, top_k, alpha,
                         limit, m_bucket, block_m, ws, a_s)
        else:  # raw pointers: the launcher skips its per-pointer driver query
            args = (ap, wp, sp, asp, bp, dst.data_ptr(), sorted_pos.data_ptr(), block_expert.data_ptr(), gp.data_ptr(), tp,
                    ap, wp,
                    n, k, nb, top_k, alpha, limit, m_bucket, *a_st, *w_st, *b_st, dst.stride(-2), dst.stride(-1)) + tail
        _run(kern, nb * ((n + cfg.bn - 1) // cfg.bn) * cfg.split_k, args)
        _splitk_finish(cfg, first, dst, bias, out, sorted_pos, block_expert, topk_w, n, nb, alpha, limit, block_m)
        return
    mx = ws is not None and w.dtype != FP8
    tma = (block_m >= 64 and a.dtype != torch.float32 and _tma_ok(a.device) and (mx or _tma_able(w))
           and (first or _tma_able(a)))
    cfg = _pick(first, a, w, bias, out, sorted_pos, block_expert, groups, topk_w, n, k, nb, top_k, alpha, limit,
                block_m, m_bucket, tma, ws, a_s)
    dst = _splitk_workspace(cfg, out, nb, block_m, n)
    args = _args(first, cfg, a, w, bias, dst, sorted_pos, block_expert, gp, topk_w, n, k, nb, top_k, alpha, limit,
                 m_bucket, block_m, ws, a_s)
    kern = _compile(args, cfg, a.dtype == torch.float32)
    _run(kern, nb * triton.cdiv(n, cfg.bn) * cfg.split_k, args)
    _splitk_finish(cfg, first, dst, bias, out, sorted_pos, block_expert, topk_w, n, nb, alpha, limit, block_m)
    if not FORCE:
        _FAST[key] = (kern, cfg, args[_N_ARGS:], cfg.w_tma or (cfg.a_tma and not first))


def _splitk_workspace(cfg, out, nb, block_m, n):
    """Where the GEMM kernel writes: ``out``, or with split K an fp32 (split_k, nb * block_m, n) workspace of partial
    sums (only the real rows are written and read)."""
    if cfg.split_k == 1:
        return out
    return torch.empty((cfg.split_k, nb * block_m, n), dtype=torch.float32, device=out.device)


_SPLITK_BN = 128


def _splitk_finish(cfg, first, part, bias, out, sorted_pos, block_expert, topk_w, n, nb, alpha, limit, block_m):
    """Split K: the partial sums added in split order, then the GEMM's epilogue (one launch)."""
    if cfg.split_k == 1:
        return
    has_bias = bias is not None
    _splitk_epilogue_kernel[(nb, triton.cdiv(n, _SPLITK_BN))](
        part, bias if has_bias else part, out, sorted_pos, block_expert, topk_w, n, nb, alpha, limit,
        part.stride(0), part.stride(1), bias.stride(0) if has_bias else 0, bias.stride(1) if has_bias else 0,
        out.stride(0), out.stride(1), FIRST=first, HAS_BIAS=has_bias, SPLIT_K=cfg.split_k, BLOCK_M=block_m,
        BLOCK_N=_SPLITK_BN, num_warps=4)


# Expert groups: the row blocks of one expert (at most GROUP_CAP of them) form one group of the
# tile order. Only the 128-row blocks use them (several blocks per expert); other sizes keep GROUP_M.
GROUP_CAP = 32
_GROUPS_MAX_BLOCKS = 8192


def block_groups(block_expert: torch.Tensor, block_m: int) -> torch.Tensor | None:
    """(2 * nb,) int32 on the device: first block and block count of each block's group (one launch,
    no host sync), or None where the GEMMs keep GROUP_M order."""
    nb = block_expert.shape[0]
    if block_m < 128 or nb == 0 or nb > _GROUPS_MAX_BLOCKS or os.environ.get("GOK_MOE_EXPERT_GROUPS", "1") == "0":
        return None
    groups = torch.empty(2 * nb, dtype=torch.int32, device=block_expert.device)
    _block_groups_kernel[(1,)](block_expert, groups, nb, CAP=GROUP_CAP, NB_P2=max(16, triton.next_power_of_2(nb)),
                               num_warps=4)
    return groups


def _nk(w, scales):
    """(N, K) of a weight operand: (E, K, N) bf16 weights, (E, N, K) e4m3 weights, or MXFP4 words (E, N, K / 8)
    with their scales."""
    if scales is None:
        return w.shape[2], w.shape[1]
    if w.dtype == FP8:
        return w.shape[1], w.shape[2]
    return w.shape[1], w.shape[2] * 8


def mxfp4_words(blocks: torch.Tensor) -> torch.Tensor:
    """MXFP4 weights as the kernels read them, (E, N, K/8) words: the checkpoint's (E, N, K/32, 16) uint8 blocks as
    int32 words (a view of the same bytes, a copy only if they are not contiguous or not 4-byte aligned; word j of a
    row holds k = 8j..8j+7, nibble i (bits 4i..4i+3) = k 8j + i: little-endian bytes, low nibble first), or uint32
    kernel words (quant.mxfp4_kernel_words) as they are. The dtype tells the kernels which."""
    if blocks.dtype == torch.uint32:
        return blocks.contiguous()
    e, n, g, _ = blocks.shape
    if not blocks.is_contiguous() or blocks.storage_offset() % 4:
        blocks = blocks.clone(memory_format=torch.contiguous_format)
    return blocks.view(torch.int32).view(e, n, g * 4)


@triton.jit
def _dequant_mxfp4_kernel(q_ptr, s_ptr, out_ptr, N, K, W_FORMAT: tl.constexpr, DTYPE: tl.constexpr,
                          BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # One (BLOCK_K, BLOCK_N) tile of expert program_id(0)'s weights, dequantized by the GEMMs' own _load_w_tile
    # (the same bits as the GEMM path and as dequantize_mxfp4), stored in the (E, K, N) layout of bf16 experts.
    e = tl.program_id(0).to(tl.int64)
    n0 = tl.program_id(1) * BLOCK_N
    k0 = tl.program_id(2) * BLOCK_K
    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_w = k0 // 8 + tl.arange(0, BLOCK_K // 8)
    offs_s = k0 // 32 + tl.arange(0, BLOCK_K // 32)
    n_ok = offs_n < N
    q_ptrs = q_ptr + e * N * (K // 8) + offs_n[:, None] * (K // 8) + offs_w[None, :]
    s_ptrs = s_ptr + e * N * (K // 32) + offs_n[:, None] * (K // 32) + offs_s[None, :]
    w = _load_w_tile(q_ptrs, s_ptrs, n_ok[:, None] & (offs_w[None, :] < K // 8),
                     n_ok[:, None] & (offs_s[None, :] < K // 32), W_FORMAT, DTYPE, BLOCK_N, BLOCK_K)
    offs_k = k0 + tl.arange(0, BLOCK_K)
    out_ptrs = out_ptr + e * K * N + offs_k[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, w, mask=(offs_k[:, None] < K) & n_ok[None, :])


def dequantize_mxfp4_experts(words: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """MXFP4 experts (``mxfp4_words`` of the blocks, and the scales) -> (E, K, N) in ``dtype`` on the GPU, one
    launch, exactly ``quant.dequantize_mxfp4``'s values (the GEMMs' tile dequantization)."""
    e, n, kw = words.shape
    k = kw * 8
    out = torch.empty((e, k, n), dtype=dtype, device=words.device)
    if out.numel() == 0:
        return out
    tl_dtype = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}[dtype]
    fmt = _mxfp4_format_cached(dtype, words.device.type, os.environ.get("GOK_MXFP4_ASM", "1"),
                               os.environ.get("TRITON_INTERPRET", "0"))
    bn, bk = 64, 128
    _dequant_mxfp4_kernel[(e, triton.cdiv(n, bn), triton.cdiv(k, bk))](words, scales, out, n, k, W_FORMAT=fmt,
                                                                       DTYPE=tl_dtype, BLOCK_N=bn, BLOCK_K=bk,
                                                                       num_warps=4)
    return out


def gemm1_swiglu(hidden, gate_up_proj, gate_up_proj_bias, act, sorted_pos, block_expert, top_k, alpha, limit,
                 block_m, m_bucket, groups=None, scales=None, *, a_scales=None):
    """act[row] = swiglu(hidden[sorted_pos[row] // top_k] @ W1[e] + b1[e]) for every real row. With
    ``scales``, ``gate_up_proj`` is the MXFP4 blocks as words (``mxfp4_words``), or the (E, 2I, H) e4m3 weights:
    then ``hidden`` is the (T, H_pad) e4m3 token buffer and ``a_scales`` its (T,) scales (``pad_quant_fp8``)."""
    n, k = _nk(gate_up_proj, scales)
    _launch(True, hidden, gate_up_proj, gate_up_proj_bias, act, sorted_pos, block_expert, groups, sorted_pos,
            n, k, block_expert.shape[0], top_k, float(alpha), float(limit), block_m, m_bucket, scales, a_scales)


def gemm2_weighted(act, down_proj, down_proj_bias, topk_w, y, sorted_pos, block_expert, block_m, m_bucket,
                   groups=None, scales=None, *, a_scales=None):
    """y[slot] = w[slot] * (act[row] @ W2[e] + b2[e]) with slot = sorted_pos[row]. With ``scales``,
    ``down_proj`` is the MXFP4 blocks as words (``mxfp4_words``), or the (E, H, I) e4m3 weights: then ``act`` is
    e4m3 with per-row ``a_scales``. y may be wider than H (a padded row length): columns >= H are not written."""
    n, k = _nk(down_proj, scales)
    _launch(False, act, down_proj, down_proj_bias, y, sorted_pos, block_expert, groups, topk_w,
            n, k, block_expert.shape[0], 1, 0.0, 0.0, block_m, m_bucket, scales, a_scales)


def expert_gemms(a, gate_up, gate_up_bias, down, down_bias, act, y, topk_w, sorted_pos, block_expert, top_k, alpha,
                 limit, block_m, m, *, a_scales=None, quant_act=None):
    """The two grouped GEMMs of every expert format, on dispatched buffers: GEMM 1 (rows of ``a`` gathered ->
    ``act``), ``quant_act(act) -> (act', act_scales)`` where GEMM 2 reads e4m3 (FP8), GEMM 2 (-> ``y`` rows in slot
    order). ``gate_up`` / ``down``: ``(weights, scales)`` as gemm1_swiglu / gemm2_weighted take them, or callables
    giving that pair when called: MXFP4 at prefill sizes dequantizes one projection at a time, so at most one
    full-size copy exists at any moment."""
    m_bucket = m.bit_length()
    groups = block_groups(block_expert, block_m)
    w1, s1 = gate_up() if callable(gate_up) else gate_up
    gemm1_swiglu(a, w1, gate_up_bias, act, sorted_pos, block_expert, top_k, alpha, limit, block_m, m_bucket, groups,
                 s1, a_scales=a_scales)
    del w1
    a2, a2_scales = quant_act(act) if quant_act is not None else (act, None)
    w2, s2 = down() if callable(down) else down
    gemm2_weighted(a2, w2, down_bias, topk_w, y, sorted_pos, block_expert, block_m, m_bucket, groups, s2,
                   a_scales=a2_scales)


def experts_to_slots(a, topk_ids, topk_weights, num_experts, i, y_cols, dtype, gate_up, gate_up_bias, down,
                     down_bias, alpha, limit, *, a_scales=None, quant_act=None):
    """The experts op's CUDA body up to the finalize: ``moe_dispatch``, the act (padded sorted rows, I wide) and
    y (T * k rows, ``y_cols`` wide) buffers in ``dtype``, ``expert_gemms``. Returns ``(y, ids int32)``; the
    caller sums y's k rows per token (``moe_finalize`` / ``finalize_slice``). T * k > 0."""
    from .dispatch import moe_dispatch

    k = topk_ids.shape[1]
    m = topk_ids.shape[0] * k
    ids = topk_ids.to(torch.int32).contiguous()
    w = topk_weights.to(torch.float32).contiguous()
    block_m = block_m_for(m, num_experts)
    sorted_pos, block_expert = moe_dispatch(ids, num_experts, block_m)
    act = torch.empty((block_expert.shape[0] * block_m, i), dtype=dtype, device=a.device)
    y = torch.empty((m, y_cols), dtype=dtype, device=a.device)
    expert_gemms(a, gate_up, gate_up_bias, down, down_bias, act, y, w, sorted_pos, block_expert, k, alpha, limit,
                 block_m, m, a_scales=a_scales, quant_act=quant_act)
    return y, ids
