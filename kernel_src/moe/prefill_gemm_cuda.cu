// The expert GEMMs at prefill sizes (row blocks of 64 or 128 routed rows) for MXFP4 weights as kernel words with bf16
// activations, on sm_90a: the weights are dequantized in registers straight into the A operand of wgmma (never
// through shared memory as bf16), the block's activation rows are its B operand. The alternative it replaces, one
// exact dequantization pass to bf16 and the bf16 GEMMs, writes and re-reads 1.6 GB at gpt-oss-20b shapes (~790 us
// of the block at T = 4096 on the H100, 2026-12-06). Called by gpt_oss_kernels/moe/grouped_gemm.py.
//
// Layout. A CTA (two warpgroups) owns 128 weight rows n0 .. n0 + 127 of one row block's expert and all its BM token
// rows: out^T (128 x BM) = W (128 x K) x a^T (K x BM), warpgroup j rows 64j .. 64j + 63 (m64nBMk16). Per pipeline
// stage (64 k): the BM activation rows (128 bytes each, 128-byte swizzled: wgmma's K-major B) and the 128 weight
// rows' 32 bytes (two MX blocks) go to shared memory by cp.async (zero-filled outside K, past N and for padding
// rows); each thread reads its two rows' scale bytes from global memory one stage ahead. Prefetch distance: stages
// - 2 (a stage's buffer is refilled once both warpgroups have waited for the wgmma that read it).
//
// A operand. Lane (g, c) of warp q holds tile rows g and g + 8 of its 16: we load weight rows 2g and 2g + 1 there
// (as the decode GEMM), so each thread ends with the gate and up rows of one SwiGLU output (GEMM 1) or two
// adjacent output columns (GEMM 2). wgmma wants, per k16 step, the values at k 2c, 2c + 1 (a0 / a1) and 2c + 8,
// 2c + 9 (a2 / a3): that is pair c (values 2c, 2c + 1) of the step's two kernel words, so a lane always takes the
// same pair of every word (gok::e2m1_pair_kw with per-lane constants) and the activations stay in k order. The
// dequantization is the decode GEMM's (moe/mxfp4.cuh: exact), a whole stage (four k16 steps) at a time (below).
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

constexpr int kThreads = 256;                // two warpgroups
constexpr int kTileW = 128;                  // weight rows per CTA
constexpr int kStepK = 64;                   // k per stage: one 128-byte row of bf16 activations
constexpr int kWRowBytes = kStepK / 2;       // a weight row's bytes per stage (two MX blocks)
constexpr int kWStageBytes = kTileW * kWRowBytes;

// BM token rows per block, S pipeline stages (prefetch distance S - 2), two CTAs (four warpgroups) per SM: one
// warpgroup's dequantization overlaps the others' wgmma. (Double-buffering a whole stage of A registers needs ~150
// registers, i.e. one CTA per SM: 1.6x slower at T = 4096 on the H100, 2026-12-07. Not issue-bound: ncu shows each
// scheduler issuing in about half the cycles, with 4 warps resident: latency is what to hide, docs/moe.md.)
template <int BM, int S>
struct Shape {
  static constexpr int kBBytes = BM * 128;  // a multiple of 1024: every stage starts on a swizzle atom
  static constexpr int kChunks = BM * 8 / kThreads;  // 16-byte activation chunks per thread and stage
  static constexpr int kSmemBytes = S * (kBBytes + kWStageBytes) + BM * 8;  // + the block's slots and top-k weights
  static_assert(2 * (kSmemBytes + 1024) <= 228 * 1024, "two CTAs per SM");
};

struct PrefillParams {
  const __nv_bfloat16* a;  // GEMM 1: hidden rows (T, >= K); GEMM 2: act rows (nb * BM, >= K)
  int64_t stride_a;        // elements
  const uint32_t* w;       // kernel words (E, N, K / 8)
  const uint8_t* s;        // e8m0 scale bytes (E, N, K / 32)
  const __nv_bfloat16* bias;  // (E, N) or null
  __nv_bfloat16* out;      // GEMM 1: act (nb * BM, N / 2); GEMM 2: y (T * k, >= N)
  int64_t stride_out;
  const int32_t* sorted_pos;
  const int32_t* block_expert;
  const float* topk_w;
  int n, k, num_experts, top_k;
  bool pair_stores;        // GEMM 2: out rows 4-byte aligned (bf16x2 stores of two adjacent columns)
  float alpha, limit;
};

// d (64 x N, fp32: this thread's N / 2 values) += A (64 x 16, registers) * B (16 x N, shared, K-major).
__device__ __forceinline__ void wgmma_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
#endif
}
__device__ __forceinline__ void wgmma_rs(float (&d)[64], const uint32_t (&a)[4], uint64_t db) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, {%64, %65, %66, %67}, %68, p, 1, 1, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
#endif
}

__device__ __forceinline__ float sigmoid_f(float v) { return 1.f / (1.f + __expf(-v)); }

// One output pair of the epilogue: weight rows n (even, < N) and n + 1 (n1: n + 1 < N) for slot row t of the
// block (pos: its slot) with the bias added. GEMM 1: the clamped SwiGLU of gate v0 / up v1 into act row row0 + t;
// GEMM 2: both columns times the slot's top-k weight wt into y row pos.
template <bool FIRST>
__device__ __forceinline__ void store_pair(const PrefillParams& p, int64_t row0, int t, int pos, float wt, int n, bool n1,
                                           float v0, float v1) {
  if constexpr (FIRST) {
    const float gate = isnan(v0) ? v0 : fminf(v0, p.limit);
    const float up = isnan(v1) ? v1 : fminf(fmaxf(v1, -p.limit), p.limit);
    p.out[(row0 + t) * p.stride_out + n / 2] = __float2bfloat16_rn((up + 1.f) * gate * sigmoid_f(p.alpha * gate));
  } else {
    __nv_bfloat16* o = p.out + static_cast<int64_t>(pos) * p.stride_out;
    if (p.pair_stores && n1) {  // one 4-byte store
      *reinterpret_cast<__nv_bfloat162*>(o + n) = __floats2bfloat162_rn(v0 * wt, v1 * wt);
    } else {
      o[n] = __float2bfloat16_rn(v0 * wt);
      if (n1) o[n + 1] = __float2bfloat16_rn(v1 * wt);
    }
  }
}

// The scale factors of a stage: f[0 / 1]: row 2g, MX block 0 / 1; f[2 / 3]: row 2g + 1 (s*: low byte block 0).
template <bool TWO_STEP>
__device__ __forceinline__ void stage_factors(uint32_t (&f)[4], uint32_t s0, uint32_t s1) {
  f[0] = gok::scale_factor<TWO_STEP>(s0 & 0xFFu);
  f[1] = gok::scale_factor<TWO_STEP>(s0 >> 8);
  f[2] = gok::scale_factor<TWO_STEP>(s1 & 0xFFu);
  f[3] = gok::scale_factor<TWO_STEP>(s1 >> 8);
}

// The A registers of a stage: a[4j .. 4j + 3] for k16 step j (MX block j / 2, words 2 (j % 2) and 2 (j % 2) + 1 of
// it): pair c of the words of the lane's weight rows (w0*: row 2g, w1*: row 2g + 1; w*0 / w*1: MX block 0 / 1) times
// the rows' scale factors (stage_factors<TWO_STEP> of their scale bytes s0, s1). a[4j] / a[4j + 2]: k 2c, 2c + 1 /
// 2c + 8, 2c + 9 of row 2g.
template <bool TWO_STEP>
__device__ __forceinline__ void dequant_stage(uint32_t (&a)[16], const uint4& w00, const uint4& w01, const uint4& w10,
                                              const uint4& w11, uint32_t s0, uint32_t s1, const gok::KwPair& kp) {
  uint32_t f[4];
  stage_factors<TWO_STEP>(f, s0, s1);
  const uint32_t r0[8] = {w00.x, w00.y, w00.z, w00.w, w01.x, w01.y, w01.z, w01.w};
  const uint32_t r1[8] = {w10.x, w10.y, w10.z, w10.w, w11.x, w11.y, w11.z, w11.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const uint32_t f0 = f[j / 2], f1 = f[2 + j / 2];
    a[4 * j + 0] = gok::scale_pair<TWO_STEP>(gok::e2m1_pair_kw(r0[2 * j], kp), f0);
    a[4 * j + 1] = gok::scale_pair<TWO_STEP>(gok::e2m1_pair_kw(r1[2 * j], kp), f1);
    a[4 * j + 2] = gok::scale_pair<TWO_STEP>(gok::e2m1_pair_kw(r0[2 * j + 1], kp), f0);
    a[4 * j + 3] = gok::scale_pair<TWO_STEP>(gok::e2m1_pair_kw(r1[2 * j + 1], kp), f1);
  }
}

template <int BM, bool FIRST, int S>
__global__ void __launch_bounds__(kThreads, 2) prefill_gemm_kernel(const PrefillParams p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using Sh = Shape<BM, S>;
  // The dynamic shared memory starts on a 1024-byte boundary (as in attn_window_cuda.cu): every B stage does.
  extern __shared__ __align__(1024) uint8_t smem[];
  uint8_t* w_smem = smem + S * Sh::kBBytes;                                // S stages of 128 x 32 bytes
  int32_t* pos_s = reinterpret_cast<int32_t*>(w_smem + S * kWStageBytes);  // the block's slots
  float* wt_s = reinterpret_cast<float*>(pos_s + BM);                      // GEMM 2: their top-k weights

  gok::pdl_wait_and_release();
  const int blk = blockIdx.y;
  const int e = p.block_expert[blk];
  if (e < 0 || e >= p.num_experts) return;  // uniform over the CTA
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int n0 = blockIdx.x * kTileW;
  const int64_t row0 = static_cast<int64_t>(blk) * BM;
  const int kb = p.k / 32;
  const int nk = (p.k + kStepK - 1) / kStepK;

  // GEMM 2's epilogue reads each slot's top-k weight: loaded here, where the latency hides behind the prologue (in the
  // epilogue each load waited for the stores before it: 37% of GEMM 2's stall cycles, ncu, H100, 2026-12-07).
  for (int i = tid; i < BM; i += kThreads) {
    const int pos = p.sorted_pos[row0 + i];
    pos_s[i] = pos;
    if constexpr (!FIRST) wt_s[i] = pos >= 0 ? p.topk_w[pos] : 0.f;
  }
  __syncthreads();

  // This thread's cp.async work per stage: activation chunk tid % 8 of rows tid / 8 + 32 i (byte offsets from a,
  // < 2^32: checked on the host), and MX block tid % 2 of weight row tid / 2.
  // Per-stage work is kept to few instructions (per SM the kernel issues about one instruction per tensor-core cycle of
  // work, and at the 128-register cap ptxas recomputes whatever does not fit): running pointers, counters and stage
  // indices instead of products and modulos, weights read from shared memory per MX block (8 registers live, not 16).
  const int c8 = tid & 7;
  const char* a_next = reinterpret_cast<const char*>(p.a);  // + 128 bytes (64 k) per stage loaded
  uint32_t a_off[Sh::kChunks];
  uint32_t a_ok = 0;
#pragma unroll
  for (int i = 0; i < Sh::kChunks; ++i) {
    const int r = (tid >> 3) + 32 * i;
    const int pos = pos_s[r];
    const int64_t arow = FIRST ? pos / p.top_k : row0 + r;
    a_off[i] = pos >= 0 ? static_cast<uint32_t>(arow * p.stride_a * 2 + c8 * 16) : 0u;
    a_ok |= (pos >= 0 ? 1u : 0u) << i;
  }
  const uint32_t b_dst = gok::smem_addr(smem) + (tid >> 3) * 128 + ((c8 ^ ((tid >> 3) & 7)) << 4);
  const int wrow = tid >> 1, wblk = tid & 1;
  const bool w_ok = n0 + wrow < p.n;
  const char* w_next = reinterpret_cast<const char*>(  // + 32 bytes (two MX blocks) per stage loaded
      p.w + (static_cast<int64_t>(e) * p.n + (w_ok ? n0 + wrow : 0)) * (p.k / 8) + wblk * 4);
  const uint32_t w_dst = gok::smem_addr(w_smem) + wrow * kWRowBytes + wblk * 16;
  int k_left = p.k - c8 * 8;     // k of this thread's activation chunk still ahead of the next stage loaded
  int w_left = kb - wblk;        // MX blocks of this thread's weight chunk still ahead
  int st_load = 0;               // the shared-memory stage the next load_stage fills

  auto load_stage = [&]() {
#pragma unroll
    for (int i = 0; i < Sh::kChunks; ++i)
      gok::cp_async16(b_dst + st_load * Sh::kBBytes + i * 32 * 128, a_next + a_off[i],
                      k_left > 0 && (a_ok >> i & 1u));
    gok::cp_async16(w_dst + st_load * kWStageBytes, w_next, w_ok && w_left > 0);
    a_next += 128;
    w_next += 32;
    k_left -= kStepK;
    w_left -= 2;
    st_load = st_load == S - 1 ? 0 : st_load + 1;
  };

  // The lane's weight rows wr, wr + 1 (tile rows g and g + 8 of its warp).
  const int wr = 64 * (warp >> 2) + 16 * (warp & 3) + 2 * g;
  // Their scale bytes, read from global memory one stage ahead (byte loads: K / 32 may be odd). Rows past N read
  // rows 0 and 1 instead (N is even: wr < N implies wr + 1 < N), and a half stage's missing block reads nothing: both
  // multiply weights that were zero-filled in shared memory, and every factor is finite (0 x factor = 0 exactly).
  const uint8_t* sc0 = p.s + (static_cast<int64_t>(e) * p.n + (n0 + wr < p.n ? n0 + wr : 0)) * kb;  // + 2 per stage
  int s_left = kb;  // MX blocks from sc0 on (row wr + 1: sc0 + kb)
  auto load_scales = [&](uint32_t& s0, uint32_t& s1) {  // low byte: the stage's MX block 0, high byte: block 1
    const bool in1 = s_left > 1;
    const uint32_t lo0 = __ldg(sc0), lo1 = __ldg(sc0 + kb);
    const uint32_t hi0 = in1 ? uint32_t{__ldg(sc0 + 1)} : 0u, hi1 = in1 ? uint32_t{__ldg(sc0 + kb + 1)} : 0u;
    s0 = lo0 | hi0 << 8;
    s1 = lo1 | hi1 << 8;
    sc0 += 2;
    s_left -= 2;
  };
  const uint8_t* w_lane = w_smem + wr * kWRowBytes;
  const gok::KwPair kp = gok::kw_pair_consts(c);
  float acc[BM / 2];
#pragma unroll
  for (int i = 0; i < BM / 2; ++i) acc[i] = 0.f;

  uint32_t s0, s1;
  // The A registers of a whole stage (four k16 steps), dequantized once the previous stage's wgmmas are done
  // (wgmma_wait<0>): the other CTA on the SM keeps the tensor cores busy meanwhile. Measured (H100, 2026-12-07,
  // T = 4096): groups of one or two steps double-buffered 9-11% slower, and a CTA on two blocks at once (one CTA per
  // SM, two wgmmas per fragment) 15-21% slower (docs/moe.md "Prefill GEMM").
  uint32_t a[16];
  load_scales(s0, s1);
#pragma unroll
  for (int i = 0; i < S - 2; ++i) {
    if (i < nk) load_stage();
    gok::cp_async_commit();
  }
  int st = 0;  // the stage consumed
  for (int kt = 0; kt < nk; ++kt) {
    gok::cp_async_wait<S - 3>();
    gok::fence_proxy_async_smem();
    // Stage kt is in; every wgmma of stage kt - 2 is done (each thread waited for it while working on kt - 1).
    __syncthreads();
    if (kt + S - 2 < nk) load_stage();
    gok::cp_async_commit();
    const uint32_t t0 = s0, t1 = s1;
    if (kt + 1 < nk) load_scales(s0, s1);
    const bool big = (t0 & 0xFFu) > 128 || (t0 >> 8) > 128 || (t1 & 0xFFu) > 128 || (t1 >> 8) > 128;
    const bool two = __any_sync(0xffffffffu, big);  // uniform over the warp (branches never hold a wgmma)
    const uint8_t* w_st = w_lane + st * kWStageBytes;
    const uint64_t desc = gok::wgmma_desc_sw128(gok::smem_addr(smem + st * Sh::kBBytes));
    // The stage's weight bytes (rows wr / wr + 1, MX blocks 0 / 1), read before the wait: their latency hides behind
    // the wgmmas still running. One branch per stage, so the 16 pairs interleave (against per-MX-block reads after
    // the wait and a branch per k16 step: GEMM 1 / 2 alone 1,258 / 668 against 1,291 / 701 us at T = 4096, H100,
    // 2026-12-07 12:30 UTC; the whole block within +-2.5%).
    const uint4 w00 = *reinterpret_cast<const uint4*>(w_st), w01 = *reinterpret_cast<const uint4*>(w_st + 16);
    const uint4 w10 = *reinterpret_cast<const uint4*>(w_st + kWRowBytes);
    const uint4 w11 = *reinterpret_cast<const uint4*>(w_st + kWRowBytes + 16);
    gok::wgmma_wait<0>();  // the wgmmas that read `a` are done
    if (two)
      dequant_stage<true>(a, w00, w01, w10, w11, t0, t1, kp);
    else
      dequant_stage<false>(a, w00, w01, w10, w11, t0, t1, kp);
    gok::wgmma_fence();
#pragma unroll
    for (int j = 0; j < 4; ++j)
      wgmma_rs(acc, *reinterpret_cast<const uint32_t(*)[4]>(a + 4 * j), desc + 2 * j);  // 32 bytes per k16 step
    gok::wgmma_commit();
    st = st == S - 1 ? 0 : st + 1;
  }
  gok::wgmma_wait<0>();

  // Epilogue. acc[4j + cc]: weight row wr, token column 8j + 2c + cc; acc[4j + 2 + cc]: row wr + 1, same column.
  const int r0 = n0 + wr, r1 = r0 + 1;
  const int64_t eb = static_cast<int64_t>(e) * p.n;
  const float b0 = p.bias != nullptr && r0 < p.n ? __bfloat162float(p.bias[eb + r0]) : 0.f;
  const float b1 = p.bias != nullptr && r1 < p.n ? __bfloat162float(p.bias[eb + r1]) : 0.f;
#pragma unroll
  for (int j = 0; j < BM / 8; ++j) {
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int t = 8 * j + 2 * c + cc;
      const int pos = pos_s[t];
      if (pos < 0 || r0 >= p.n) continue;  // r0 is even (and 2I too: r0 < N implies r1 < N in GEMM 1)
      store_pair<FIRST>(p, row0, t, pos, FIRST ? 0.f : wt_s[t], r0, r1 < p.n, acc[4 * j + cc] + b0,
                        acc[4 * j + 2 + cc] + b1);
    }
  }
#endif
}

template <int BM, bool FIRST, int S>
void launch(const PrefillParams& p, int nb, int device, cudaStream_t stream) {
  constexpr int smem = Shape<BM, S>::kSmemBytes;
  gok::allow_dynamic_smem(prefill_gemm_kernel<BM, FIRST, S>, smem, device);
  const dim3 grid((p.n + kTileW - 1) / kTileW, nb, 1);
  gok::launch_pdl(prefill_gemm_kernel<BM, FIRST, S>, grid, dim3(kThreads, 1, 1), smem, stream, p);
}

template <int BM, int S>
void launch_bm(const PrefillParams& p, int nb, bool first, int device, cudaStream_t stream) {
  first ? launch<BM, true, S>(p, nb, device, stream) : launch<BM, false, S>(p, nb, device, stream);
}

}  // namespace

void moe_gemm_prefill_mxfp4(const at::Tensor& a, const at::Tensor& w, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias, const at::Tensor& sorted_pos,
                            const at::Tensor& block_expert, const at::Tensor& topk_w, int64_t top_k, double alpha,
                            double limit, bool first, at::Tensor& out) {
  // Arguments were validated in Python (grouped_gemm.py); these checks are the ones memory safety needs.
  TORCH_CHECK(w.scalar_type() == at::kUInt32 && w.dim() == 3 && w.is_contiguous() &&
                  reinterpret_cast<uintptr_t>(w.data_ptr()) % 16 == 0,
              "moe_gemm_prefill_mxfp4: w must be contiguous, 16-byte aligned kernel words (uint32 (E, N, K/8))");
  const int64_t e = w.size(0), n = w.size(1), k = w.size(2) * 8;
  TORCH_CHECK(k % 32 == 0, "moe_gemm_prefill_mxfp4: K must be a multiple of 32");
  TORCH_CHECK(a.is_cuda() && a.dim() == 2 && a.stride(1) == 1 && a.size(1) >= k && a.scalar_type() == at::kBFloat16 &&
                  (a.stride(0) * 2) % 16 == 0 && reinterpret_cast<uintptr_t>(a.data_ptr()) % 16 == 0,
              "moe_gemm_prefill_mxfp4: a must be bf16 rows of >= K, 16-byte aligned");
  TORCH_CHECK(w_scale.dim() == 3 && w_scale.scalar_type() == at::kByte && w_scale.is_contiguous() &&
                  w_scale.size(0) == e && w_scale.size(1) == n && w_scale.size(2) * 32 == k,
              "moe_gemm_prefill_mxfp4: scales must be contiguous uint8 (E, N, K/32)");
  TORCH_CHECK(sorted_pos.scalar_type() == at::kInt && block_expert.scalar_type() == at::kInt &&
                  sorted_pos.is_contiguous() && block_expert.is_contiguous(),
              "moe_gemm_prefill_mxfp4: sorted_pos / block_expert must be contiguous int32");
  const int64_t nb = block_expert.numel();
  const int64_t bm = nb > 0 ? sorted_pos.numel() / nb : 0;
  TORCH_CHECK(nb == 0 || ((bm == 64 || bm == 128) && sorted_pos.numel() == nb * bm),
              "moe_gemm_prefill_mxfp4: blocks must be 64 or 128 rows");
  gok::check_block_gemm_io(a, bias, out, topk_w, sorted_pos, e, n, top_k, first);
  TORCH_CHECK(n < (int64_t{1} << 24), "moe_gemm_prefill_mxfp4: N out of range");
  TORCH_CHECK(a.size(0) * a.stride(0) * 2 < (int64_t{1} << 32), "moe_gemm_prefill_mxfp4: a larger than 4 GB");
  if (nb == 0 || n == 0 || k == 0) return;
  TORCH_CHECK(nb < 65536, "moe_gemm_prefill_mxfp4: too many row blocks");
  const c10::cuda::CUDAGuard guard(a.device());
  TORCH_CHECK(gok::device_info(a.get_device()).first == 9, "moe_gemm_prefill_mxfp4: needs sm_90 (wgmma)");
  PrefillParams p;
  p.a = reinterpret_cast<const __nv_bfloat16*>(a.data_ptr());
  p.stride_a = a.stride(0);
  p.w = reinterpret_cast<const uint32_t*>(w.data_ptr());
  p.s = w_scale.data_ptr<uint8_t>();
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
  p.pair_stores = out.stride(0) % 2 == 0 && reinterpret_cast<uintptr_t>(out.data_ptr()) % 4 == 0;
  p.alpha = static_cast<float>(alpha);
  p.limit = static_cast<float>(limit);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int dev = a.get_device(), nbi = static_cast<int>(nb);
  if (bm == 128)
    launch_bm<128, 4>(p, nbi, first, dev, stream);
  else
    launch_bm<64, 6>(p, nbi, first, dev, stream);
}
