// The expert GEMMs at decode sizes (row blocks of at most 16 routed rows) for quantized weights: MXFP4 (bf16
// activations) and FP8 (e4m3 activations, as the FP8 path's prefill GEMMs). The weights are the A operand of
// mma.sync (16 weight rows), the block's rows the B operand (8 columns; a second MMA for rows 9-16), so every weight
// byte is read and converted once per block and the tensor cores do all products. Called by
// gpt_oss_kernels/moe/grouped_gemm.py in place of the Triton kernel when the dispatch's blocks are 16 rows.
//
// Layout. A CTA owns 16 weight rows (n0 .. n0 + 15) of one row block's expert; its WK warps split K in spans (4
// weight chunks of 16 bytes per row; warp w takes spans w, w + WK, ...) and add their sums in shared memory in warp
// order (deterministic). In a warp, lane (g = lane / 4, c = lane % 4) loads chunk 4j + c of weight rows n0 + 2g (MMA
// row g) and n0 + 2g + 1 (MMA row g + 8), so four lanes read 64 contiguous bytes of a row. GEMM 1 pairs gate row 2i
// with up row 2i + 1 (interleaved in the checkpoint): one thread ends with both halves of its SwiGLU.
//
// The K order inside an MMA is free as long as A and B agree: each lane feeds the MMA from its own chunk and loads
// the x values at the same k.
//   MXFP4 (m16n8k16 bf16; a chunk is one MX block: 32 values, one scale byte). Word q of the chunk holds k = 8q ..
//   8q + 7 (nibble p = k 8q + p); nibbles p and p + 4 dequantize into one bf16x2 register with the same shifts (pair
//   P_p), so MMA 2q + h takes a[0] = P_2h, a[2] = P_2h+1 of row g's word q (a[1], a[3]: row g + 8), and B the x
//   values at the same k: b0 = (x 8q+2h, x 8q+2h+4), b1 = (x 8q+2h+1, x 8q+2h+5), two PRMTs from the 16 bytes of x
//   at 8q. Kernel words (quant.mxfp4_kernel_words, uint32; Fmt::kMxfp4Words): the same values with their bits
//   permuted inside each word so that the pair of values 2P, 2P + 1 is one rotate and one mask (pair 0: three
//   operations) and lies at consecutive k: MMA 2q + h takes pairs 2h (a[0], a[1]) and 2h + 1 (a[2], a[3]), and B
//   the x words as they lie in memory (no PRMT): one-step span 185 -> 121 sm_90a instructions, block T = 1
//   44.6-46.9 -> 42.5-42.7 us on the H100 (2026-12-06). Dequantization is exact, as quant.dequantize_mxfp4 and
//   the Triton kernel's "mxfp4_asm": the value's three magnitude bits go to bf16 bits 6..8 and its sign to 15
//   (v * 2^-126, 0.5 on the subnormal 2^-127), then one
//   fma.rn.bf16x2 by 2^(s - 1) when the scale byte s <= 128 (one rounding of the exact product), else by 2^127
//   (exact: 2v) and by 2^(s - 128) (one rounding; overflow to inf). A warp takes the two-step path for a whole span
//   when any of its lanes needs it (scale bytes above 128, a block scale of 2^2 or more).
//   FP8 (m16n8k32 e4m3; a chunk is 16 e4m3 values). MMA p takes words 2p (a[0], b0) and 2p + 1 (a[2], b1) of the
//   row's chunk and of the x chunk at the same k: no conversion at all. Each span's two MMAs start from zero and are
//   added to the fp32 sums (promotion every 64 k), times the span's 128x128 block scale ("block"); the token scale
//   and the channel scale ("channel") are applied in the epilogue, before the bias, as in the Triton GEMMs.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>

#include <cstdint>

#include "common/device.cuh"
#include "common/mma.cuh"
#include "moe/block_gemm_checks.h"
#include "moe/mxfp4.cuh"
#include "torch-ext/torch_binding.h"

namespace {

enum class Fmt { kMxfp4, kMxfp4Words, kFp8Channel, kFp8Block };  // kMxfp4: the checkpoint's words

template <Fmt F> constexpr bool kIsFp8 = F == Fmt::kFp8Channel || F == Fmt::kFp8Block;

constexpr int kTileN = 16;   // weight rows per CTA (the MMA's M)
constexpr int kBlockM = 16;  // routed rows per block (the dispatch's block_m)

template <Fmt F> constexpr int kChunkK = kIsFp8<F> ? 16 : 32;  // k values per 16-byte weight chunk
template <Fmt F> constexpr int kXVecs = kIsFp8<F> ? 1 : 4;     // 16-byte x vectors at a chunk's k

struct DecodeParams {
  const char* a;           // GEMM 1: hidden rows (T, >= K); GEMM 2: act (nb * 16, >= K); bf16 (MXFP4) or e4m3 (FP8)
  int64_t stride_a;        // bytes
  const float* a_scale;    // FP8: per-row scale of a (GEMM 1: per token; GEMM 2: per act row)
  const uint4* w;          // MXFP4: (E, N, K / 32) MX blocks; FP8: (E, N, K) e4m3 as 16-byte chunks
  const uint8_t* s;        // MXFP4: (E, N, K / 32) e8m0 scale bytes
  const float* w_scale;    // FP8: (E, N) per channel, or (E, ceil(N / 128), ceil(K / 128)) per 128x128 block
  const __nv_bfloat16* bias;  // (E, N) or null
  __nv_bfloat16* out;      // GEMM 1: act (nb * 16, N / 2); GEMM 2: y (T * k, >= N)
  int64_t stride_out;
  const int32_t* sorted_pos;
  const int32_t* block_expert;
  const float* topk_w;
  int n, k, num_experts, top_k, ws_nbn, ws_nbk;
  float alpha, limit;
};

__device__ __forceinline__ uint4 ld_stream16(const uint4* p) {  // read once: keep it out of L1
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t r;
  asm("prmt.b32 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(sel));
  return r;
}

// d += a (16x32, row) * b (32x8, col), e4m3 inputs, fp32 accumulate (sm_89+).
__device__ __forceinline__ void mma16832_e4m3(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // the host never launches FP8 below sm_89
#endif
}

template <int P, bool TWO_STEP, bool KW>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, uint32_t f) {
  return gok::scale_pair<TWO_STEP>(KW ? gok::e2m1_pair_kw<P>(w) : gok::e2m1_pair<P>(w), f);
}

// MXFP4: one span (128 k) of this lane: weights (w0: row g, w1: row g + 8; zeros outside K or N), scale bytes,
// x of columns g and g + 8 at the same 32 k (zeros for padding rows / outside K).
// MMA 2q + H of a span takes a[0] / a[2] from row g's word q (a[1] / a[3]: row g + 8) and B (b0, b1; b80, b81 for
// columns 8-15, when two) the x values at the same k:
//   checkpoint's words: pairs (2H, 2H + 4) and (2H + 1, 2H + 5); B from the x words holding x 8q+2H, 8q+2H+1 and
//     8q+2H+4, 8q+2H+5 by two PRMTs;
//   kernel words: pairs 2H and 2H + 1, i.e. k = 8q + 4H .. 8q + 4H + 3; B the x words at those k as they lie.
template <int H, bool TWO_STEP, bool KW>
__device__ __forceinline__ void mma_half(float (&acc)[2][4], uint32_t w0, uint32_t w1, uint32_t f0, uint32_t f1,
                                         uint32_t b0, uint32_t b1, uint32_t b80, uint32_t b81, bool two) {
  const uint32_t a[4] = {dequant_pair<2 * H, TWO_STEP, KW>(w0, f0), dequant_pair<2 * H, TWO_STEP, KW>(w1, f1),
                         dequant_pair<2 * H + 1, TWO_STEP, KW>(w0, f0), dequant_pair<2 * H + 1, TWO_STEP, KW>(w1, f1)};
  gok::mma16816<__nv_bfloat16>(acc[0], a, b0, b1);
  if (two) gok::mma16816<__nv_bfloat16>(acc[1], a, b80, b81);
}

template <bool TWO_STEP, bool KW>
__device__ __forceinline__ void span_mxfp4(float (&acc)[2][4], const uint4& w0, const uint4& w1, uint32_t s0,
                                           uint32_t s1, const uint4 (&x)[4], const uint4 (&x8)[4], bool two) {
  const uint32_t f0 = gok::scale_factor<TWO_STEP>(s0), f1 = gok::scale_factor<TWO_STEP>(s1);
  const uint32_t q0[4] = {w0.x, w0.y, w0.z, w0.w};
  const uint32_t q1[4] = {w1.x, w1.y, w1.z, w1.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    if constexpr (KW) {
      mma_half<0, TWO_STEP, true>(acc, q0[q], q1[q], f0, f1, x[q].x, x[q].y, x8[q].x, x8[q].y, two);
      mma_half<1, TWO_STEP, true>(acc, q0[q], q1[q], f0, f1, x[q].z, x[q].w, x8[q].z, x8[q].w, two);
    } else {
      const uint4 &v = x[q], &v8 = x8[q];
      mma_half<0, TWO_STEP, false>(acc, q0[q], q1[q], f0, f1, prmt(v.x, v.z, 0x5410), prmt(v.x, v.z, 0x7632),
                                   two ? prmt(v8.x, v8.z, 0x5410) : 0u, two ? prmt(v8.x, v8.z, 0x7632) : 0u, two);
      mma_half<1, TWO_STEP, false>(acc, q0[q], q1[q], f0, f1, prmt(v.y, v.w, 0x5410), prmt(v.y, v.w, 0x7632),
                                   two ? prmt(v8.y, v8.w, 0x5410) : 0u, two ? prmt(v8.y, v8.w, 0x7632) : 0u, two);
    }
  }
}

// FP8: one span (64 k): two MMAs into zeroed sums, promoted into acc times the span's block scale sc.
__device__ __forceinline__ void span_fp8(float (&acc)[2][4], const uint4& w0, const uint4& w1, const uint4& x,
                                         const uint4& x8, bool two, float sc) {
  float part[2][4] = {};
  const uint32_t a0[4] = {w0.x, w1.x, w0.y, w1.y};
  const uint32_t a1[4] = {w0.z, w1.z, w0.w, w1.w};
  mma16832_e4m3(part[0], a0, x.x, x.y);
  mma16832_e4m3(part[0], a1, x.z, x.w);
  if (two) {
    mma16832_e4m3(part[1], a0, x8.x, x8.y);
    mma16832_e4m3(part[1], a1, x8.z, x8.w);
  }
#pragma unroll
  for (int t = 0; t < 2; ++t) {
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[t][i] = fmaf(part[t][i], sc, acc[t][i]);
  }
}

template <int N>
__device__ __forceinline__ void load_x(uint4 (&x)[N], const char* row, int chunk, bool ok) {
  const uint4* p = reinterpret_cast<const uint4*>(row) + static_cast<int64_t>(chunk) * N;
#pragma unroll
  for (int q = 0; q < N; ++q) x[q] = ok ? __ldg(p + q) : make_uint4(0, 0, 0, 0);
}

__device__ __forceinline__ float sigmoid_f(float v) { return 1.f / (1.f + __expf(-v)); }

// One warp's share of the CTA's K (spans wk, wk + WK, ...; up to D spans per round, all weight loads of a round
// issued before its MMAs) into acc. TWO: the block has more than 8 rows (B columns 8-15 exist); a compile-time
// branch taken once per CTA, so blocks of 8 rows or fewer (every block at T <= 8) issue no dead MMAs or x loads.
template <Fmt F, bool TWO, int WK, int D>
__device__ __forceinline__ void k_loop(float (&acc)[2][4], const DecodeParams& p, int wk, int g, int c, int nrows,
                                       int64_t base0, int64_t base1, bool ok0, bool ok1, const char* xg,
                                       const char* xg8, const float* bscale) {
  constexpr bool kFp8 = kIsFp8<F>;
  const int nchunks = p.k / kChunkK<F>;  // 16-byte chunks per weight row
  const int nspans = (nchunks + 3) / 4;
  for (int first_span = wk; first_span < nspans; first_span += WK * D) {
    uint4 w0[D], w1[D];
    uint32_t sc[D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int b = (first_span + d * WK) * 4 + c;
      const bool in = first_span + d * WK < nspans && b < nchunks;
      w0[d] = in && ok0 ? ld_stream16(p.w + base0 + b) : make_uint4(0, 0, 0, 0);
      w1[d] = in && ok1 ? ld_stream16(p.w + base1 + b) : make_uint4(0, 0, 0, 0);
      if constexpr (!kFp8) {
        sc[d] = (in && ok0 ? static_cast<uint32_t>(__ldg(p.s + base0 + b)) : 0u) |
                (in && ok1 ? static_cast<uint32_t>(__ldg(p.s + base1 + b)) << 8 : 0u);
      }
    }
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int span = first_span + d * WK;
      if (span >= nspans) break;  // uniform over the warp
      const int b = span * 4 + c;
      uint4 x[kXVecs<F>], x8[kXVecs<F>] = {};
      load_x(x, xg, b, b < nchunks && g < nrows);
      if constexpr (TWO) load_x(x8, xg8, b, b < nchunks && g + 8 < nrows);
      if constexpr (kFp8) {
        span_fp8(acc, w0[d], w1[d], x[0], x8[0], TWO, F == Fmt::kFp8Block ? __ldg(bscale + span / 2) : 1.f);
      } else {
        const uint32_t s0 = sc[d] & 0xFFu, s1 = sc[d] >> 8;
        if (__any_sync(0xffffffffu, s0 > 128 || s1 > 128))
          span_mxfp4<true, F == Fmt::kMxfp4Words>(acc, w0[d], w1[d], s0, s1, x, x8, TWO);
        else
          span_mxfp4<false, F == Fmt::kMxfp4Words>(acc, w0[d], w1[d], s0, s1, x, x8, TWO);
      }
    }
  }
}

// CTAs of 4 warps per SM, through the register cap of __launch_bounds__: 6 (80 registers, a few bytes of spills)
// for the kernel words and FP8 with channel scales: at T = 1 GEMM 2's 720 CTAs then fit one wave of 792 (H100,
// 2026-12-06 23:40 UTC, same call: whole block at T = 1 / 4 / 16 / 64 -9.5 / -2.7 / -4.1 / -1.2% for MXFP4,
// -6.3 / 0 / 0 / -2.1% for FP8; 7 and 8 CTAs spill more and lose; docs/results/2026-12-06-decode-gemm-variants.md).
// 5 (96 registers) for the forms not measured that way (the checkpoint's bytes, FP8 block scales).
template <Fmt F> constexpr int kCtasPerSm = F == Fmt::kMxfp4Words || F == Fmt::kFp8Channel ? 6 : 5;

// WK warps per CTA split K.
template <Fmt F, bool FIRST, int WK, int D>
__global__ void __launch_bounds__(32 * WK, kCtasPerSm<F> * 4 / WK) decode_gemm_kernel(const DecodeParams p) {
  constexpr bool kFp8 = kIsFp8<F>;
  gok::pdl_wait_and_release();
  const int blk_row = blockIdx.x;
  const int e = p.block_expert[blk_row];
  if (e < 0 || e >= p.num_experts) return;
  const int lane = threadIdx.x & 31, wk = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int n0 = blockIdx.y * kTileN;
  const int64_t row0 = static_cast<int64_t>(blk_row) * kBlockM;

  // The block's rows: real ones first (sorted_pos >= 0), then padding. a_row(col): the row of a that B column col
  // reads (GEMM 1: the slot's token; GEMM 2: the act row).
  const int pos_l = lane < kBlockM ? p.sorted_pos[row0 + lane] : -1;
  const int nrows = __popc(__ballot_sync(0xffffffffu, pos_l >= 0));
  auto a_row = [&](int col, int pos) -> int64_t {
    return FIRST ? static_cast<int64_t>(max(pos, 0) / p.top_k) : row0 + col;
  };
  const char* xg = p.a + a_row(g, __shfl_sync(0xffffffffu, pos_l, g)) * p.stride_a;
  const char* xg8 = p.a + a_row(g + 8, __shfl_sync(0xffffffffu, pos_l, g + 8)) * p.stride_a;

  const int nchunks = p.k / kChunkK<F>;
  const int r0 = n0 + 2 * g, r1 = r0 + 1;
  const bool ok0 = r0 < p.n, ok1 = r1 < p.n;
  const int64_t base0 = (static_cast<int64_t>(e) * p.n + (ok0 ? r0 : 0)) * nchunks;
  const int64_t base1 = (static_cast<int64_t>(e) * p.n + (ok1 ? r1 : 0)) * nchunks;
  // FP8 block scales: the tile's 16 rows lie in one 128-row block; a span (64 k, 64-aligned) in one 128-k block.
  const float* bscale = F == Fmt::kFp8Block
                            ? p.w_scale + (static_cast<int64_t>(e) * p.ws_nbn + n0 / 128) * p.ws_nbk : nullptr;

  float acc[2][4] = {};
  if (nrows > 8)  // uniform over the CTA
    k_loop<F, true, WK, D>(acc, p, wk, g, c, nrows, base0, base1, ok0, ok1, xg, xg8, bscale);
  else
    k_loop<F, false, WK, D>(acc, p, wk, g, c, nrows, base0, base1, ok0, ok1, xg, xg8, bscale);

  if constexpr (WK > 1) {  // warp partial sums -> warp 0, added in warp order
    __shared__ float red[WK - 1][8][32];
    if (wk > 0) {
#pragma unroll
      for (int i = 0; i < 8; ++i) red[wk - 1][i][lane] = acc[i / 4][i % 4];
    }
    __syncthreads();
    if (wk > 0) return;
#pragma unroll
    for (int w = 0; w < WK - 1; ++w) {
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[i / 4][i % 4] += red[w][i][lane];
    }
  }

  // Epilogue. acc[t][0..1]: weight row r0, block rows 8t + 2c + {0, 1}; acc[t][2..3]: row r1, same rows.
  const int64_t eb = static_cast<int64_t>(e) * p.n;
  const float b0 = p.bias != nullptr && ok0 ? __bfloat162float(p.bias[eb + r0]) : 0.f;
  const float b1 = p.bias != nullptr && ok1 ? __bfloat162float(p.bias[eb + r1]) : 0.f;
  const float cs0 = F == Fmt::kFp8Channel && ok0 ? p.w_scale[eb + r0] : 1.f;
  const float cs1 = F == Fmt::kFp8Channel && ok1 ? p.w_scale[eb + r1] : 1.f;
#pragma unroll
  for (int t = 0; t < 2; ++t) {
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int col = 8 * t + 2 * c + cc;
      const int pos = __shfl_sync(0xffffffffu, pos_l, col);
      if (col >= nrows) continue;
      const float as = kFp8 ? p.a_scale[a_row(col, pos)] : 1.f;
      const float v0 = acc[t][cc] * as * cs0 + b0, v1 = acc[t][2 + cc] * as * cs1 + b1;
      if constexpr (FIRST) {
        if (!ok1) continue;  // N = 2I is even: r0 < N implies r1 < N
        float gate = v0, up = v1;
        gate = isnan(gate) ? gate : fminf(gate, p.limit);
        up = isnan(up) ? up : fminf(fmaxf(up, -p.limit), p.limit);
        const float v = (up + 1.f) * gate * sigmoid_f(p.alpha * gate);
        p.out[(row0 + col) * p.stride_out + r0 / 2] = __float2bfloat16_rn(v);
      } else {
        const float wt = p.topk_w[pos];
        __nv_bfloat16* o = p.out + static_cast<int64_t>(pos) * p.stride_out;
        if (ok0) o[r0] = __float2bfloat16_rn(v0 * wt);
        if (ok1) o[r1] = __float2bfloat16_rn(v1 * wt);
      }
    }
  }
}

template <Fmt F, bool FIRST, int WK, int D>
void launch(const DecodeParams& p, int nb, cudaStream_t stream) {
  const dim3 grid(nb, (p.n + kTileN - 1) / kTileN, 1);
  gok::launch_pdl(decode_gemm_kernel<F, FIRST, WK, D>, grid, dim3(32 * WK, 1, 1), 0, stream, p);
}

// 4 warps over K, 3 spans per round: the fastest measured (H100, 2026-12-05: T = 1 block 47.9 us against 52.3-55.2
// for (4, 6), (8, 3), (2, 6); 2026-12-06: the CTA's tile staged in shared memory by cp.async (56.1 us) or by the
// bulk-copy engine (49.6 against 45.0), 1 or 2 warps per CTA (the whole grid in one wave at T = 1), and GEMM 2
// prefetching its tile into L2 before its PDL wait, none faster; H200, 2026-12-06 23:30 UTC: kernel words (4, 2),
// (4, 4), (8, 2) 1-43% slower at T = 1-64, FP8 (4, 6), (8, 3), (8, 6), (16, 3) 4-80% slower; docs/moe.md).
template <Fmt F>
void launch_fmt(const DecodeParams& p, int nb, bool first, cudaStream_t stream) {
  if (first)
    launch<F, true, 4, 3>(p, nb, stream);
  else
    launch<F, false, 4, 3>(p, nb, stream);
}

}  // namespace

void moe_gemm_decode(const at::Tensor& a, const std::optional<at::Tensor>& a_scale, const at::Tensor& w,
                     const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, const at::Tensor& sorted_pos,
                     const at::Tensor& block_expert, const at::Tensor& topk_w, int64_t top_k, double alpha,
                     double limit, bool first, at::Tensor& out) {
  // Arguments were validated in Python (grouped_gemm.py); these checks are the ones memory safety needs.
  const bool kw = w.scalar_type() == at::kUInt32;
  const bool mx = kw || w.scalar_type() == at::kInt;
  TORCH_CHECK(mx || w.scalar_type() == at::kFloat8_e4m3fn,
              "moe_gemm_decode: w must be MXFP4 words (int32: the checkpoint's, uint32: kernel words) or e4m3 weights");
  TORCH_CHECK(w.dim() == 3 && w.is_contiguous() && reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0,
              "moe_gemm_decode: w must be a contiguous, 16-byte aligned (E, N, K/8) or (E, N, K) tensor");
  const int64_t e = w.size(0), n = w.size(1), k = mx ? w.size(2) * 8 : w.size(2);
  TORCH_CHECK(k % (mx ? 32 : 16) == 0, "moe_gemm_decode: K must be a multiple of 32 (MXFP4) or 16 (FP8)");
  TORCH_CHECK(a.is_cuda() && a.dim() == 2 && a.stride(1) == 1 && a.size(1) >= k &&
                  a.scalar_type() == (mx ? at::kBFloat16 : at::kFloat8_e4m3fn) &&
                  (a.stride(0) * a.element_size()) % 16 == 0 && reinterpret_cast<uintptr_t>(a.data_ptr()) % 16 == 0,
              "moe_gemm_decode: a must be bf16 (MXFP4) / e4m3 (FP8) rows of >= K, 16-byte aligned");
  int ws_nbn = 0, ws_nbk = 0;
  Fmt fmt = kw ? Fmt::kMxfp4Words : Fmt::kMxfp4;
  if (mx) {
    TORCH_CHECK(w_scale.dim() == 3 && w_scale.scalar_type() == at::kByte && w_scale.is_contiguous() &&
                    w_scale.size(0) == e && w_scale.size(1) == n && w_scale.size(2) * 32 == k,
                "moe_gemm_decode: MXFP4 scales must be contiguous uint8 (E, N, K/32)");
  } else {
    TORCH_CHECK(a_scale.has_value() && a_scale->scalar_type() == at::kFloat && a_scale->is_contiguous() &&
                    a_scale->numel() >= a.size(0),
                "moe_gemm_decode: FP8 needs float32 a_scale, one per row of a");
    TORCH_CHECK(w_scale.scalar_type() == at::kFloat && w_scale.is_contiguous(),
                "moe_gemm_decode: FP8 w_scale must be contiguous float32");
    if (w_scale.dim() == 2) {
      TORCH_CHECK(w_scale.size(0) == e && w_scale.size(1) == n, "moe_gemm_decode: channel scales must be (E, N)");
      fmt = Fmt::kFp8Channel;
    } else {
      ws_nbn = static_cast<int>((n + 127) / 128);
      ws_nbk = static_cast<int>((k + 127) / 128);
      TORCH_CHECK(w_scale.dim() == 3 && w_scale.size(0) == e && w_scale.size(1) == ws_nbn &&
                      w_scale.size(2) == ws_nbk,
                  "moe_gemm_decode: block scales must be (E, ceil(N/128), ceil(K/128))");
      fmt = Fmt::kFp8Block;
    }
  }
  TORCH_CHECK(sorted_pos.scalar_type() == at::kInt && block_expert.scalar_type() == at::kInt &&
                  sorted_pos.is_contiguous() && block_expert.is_contiguous() &&
                  sorted_pos.numel() == block_expert.numel() * kBlockM,
              "moe_gemm_decode: sorted_pos / block_expert must be int32 with 16 rows per block");
  gok::check_block_gemm_io(a, bias, out, topk_w, sorted_pos, e, n, top_k, first);
  TORCH_CHECK(n < (int64_t{1} << 24) && k < (int64_t{1} << 24), "moe_gemm_decode: sizes out of range");
  const int64_t nb = block_expert.numel();
  if (nb == 0 || n == 0 || k == 0) return;
  TORCH_CHECK(nb < (int64_t{1} << 31) && (n + kTileN - 1) / kTileN < 65536, "moe_gemm_decode: grid too large");
  const c10::cuda::CUDAGuard guard(a.device());
  if (!mx) {
    TORCH_CHECK(gok::device_info(a.get_device()).first >= 9, "moe_gemm_decode: FP8 needs sm_90");
  }
  DecodeParams p;
  p.a = reinterpret_cast<const char*>(a.data_ptr());
  p.stride_a = a.stride(0) * a.element_size();
  p.a_scale = mx ? nullptr : a_scale->data_ptr<float>();
  p.w = reinterpret_cast<const uint4*>(w.data_ptr());
  p.s = mx ? w_scale.data_ptr<uint8_t>() : nullptr;
  p.w_scale = mx ? nullptr : w_scale.data_ptr<float>();
  p.bias = bias.has_value() ? reinterpret_cast<const __nv_bfloat16*>(bias->data_ptr()) : nullptr;
  p.out = reinterpret_cast<__nv_bfloat16*>(out.data_ptr());
  p.stride_out = out.stride(0);
  p.sorted_pos = sorted_pos.data_ptr<int32_t>();
  p.block_expert = block_expert.data_ptr<int32_t>();
  p.topk_w = first ? nullptr : topk_w.data_ptr<float>();
  p.n = static_cast<int>(n);
  p.k = static_cast<int>(k);
  p.num_experts = static_cast<int>(e);
  p.top_k = static_cast<int>(top_k);
  p.ws_nbn = ws_nbn;
  p.ws_nbk = ws_nbk;
  p.alpha = static_cast<float>(alpha);
  p.limit = static_cast<float>(limit);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int nbi = static_cast<int>(nb);
  switch (fmt) {
    case Fmt::kMxfp4: launch_fmt<Fmt::kMxfp4>(p, nbi, first, stream); break;
    case Fmt::kMxfp4Words: launch_fmt<Fmt::kMxfp4Words>(p, nbi, first, stream); break;
    case Fmt::kFp8Channel: launch_fmt<Fmt::kFp8Channel>(p, nbi, first, stream); break;
    case Fmt::kFp8Block: launch_fmt<Fmt::kFp8Block>(p, nbi, first, stream); break;
  }
}
