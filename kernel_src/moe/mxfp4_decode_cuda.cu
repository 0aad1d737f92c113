// MXFP4 expert GEMMs at decode sizes (row blocks of at most 16 routed rows): the weights are the A operand
// of mma.m16n8k16 (16 weight rows), the block's rows the B operand (8 columns, two MMAs for 9-16 rows), so
// every weight value is dequantized once per block and the tensor cores do all products. Called by
// gpt_oss_kernels/moe/grouped_gemm.py in place of the Triton kernel when the dispatch's blocks are 16 rows.
//
// Layout. A CTA owns 16 weight rows (n0 .. n0 + 15) of one row block's expert; its WK warps split K in spans
// of 128 values (span j: MX blocks 4j .. 4j + 3; warp w takes spans w, w + WK, ...) and add their sums in
// shared memory in warp order (deterministic). In a warp, lane (g = lane / 4, c = lane % 4) loads MX block
// 4j + c of weight rows n0 + 2g (MMA row g) and n0 + 2g + 1 (MMA row g + 8): 16 bytes each, so four lanes read
// 64 contiguous bytes of a row. GEMM 1 pairs gate row 2i with up row 2i + 1 (interleaved in the checkpoint):
// one thread ends with both halves of its SwiGLU.
//
// The K order inside an MMA is free as long as A and B agree. Word q of a lane's block holds k = 8q .. 8q + 7
// (nibble p = k 8q + p); nibbles p and p + 4 dequantize into one bf16x2 register with the same shifts
// (pair P_p), so MMA 2q + h takes a[0] = P_2h, a[2] = P_2h+1 of row g's word q (a[1], a[3]: row g + 8), and
// B the x values at the same k: b0 = (x 8q+2h, x 8q+2h+4), b1 = (x 8q+2h+1, x 8q+2h+5), two PRMTs from
// the 16 bytes of x at 8q.
//
// Dequantization (exact, as quant.dequantize_mxfp4 and the Triton kernel's "mxfp4_asm"): the nibble's three
// magnitude bits go to bf16 bits 6..8 and its sign to 15 (v * 2^-126, 0.5 on the subnormal 2^-127), then one
// fma.rn.bf16x2 by 2^(s - 1) when the scale byte s <= 128 (one rounding of the exact product), else by 2^127
// (exact: 2v) and by 2^(s - 128) (one rounding; overflow to inf). A warp takes the two-step path for a whole
// span when any of its lanes needs it (scales above 2^1 never occur in real checkpoints).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cuda_bf16.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "common/device.cuh"
#include "common/mma.cuh"
#include "torch-ext/torch_binding.h"

namespace {

constexpr int kTileN = 16;   // weight rows per CTA (the MMA's M)
constexpr int kBlockM = 16;  // routed rows per block (the dispatch's block_m)

struct DecodeParams {
  const __nv_bfloat16* a;  // GEMM 1: hidden (T, K); GEMM 2: act (nb * 16, K)
  int64_t stride_a;
  const uint4* w;          // (E, N, K / 32) MX blocks of 16 bytes
  const uint8_t* s;        // (E, N, K / 32) e8m0 scales
  const __nv_bfloat16* bias;  // (E, N) or null
  __nv_bfloat16* out;      // GEMM 1: act (nb * 16, N / 2); GEMM 2: y (T * k, >= N)
  int64_t stride_out;
  const int32_t* sorted_pos;
  const int32_t* block_expert;
  const float* topk_w;
  int n, k, num_experts, top_k;
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

__device__ __forceinline__ uint32_t fma_bf16x2(uint32_t a, uint32_t b) {  // a * b + (-0): RN, -0 kept
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
}

// Pair P of word w (nibbles P and P + 4) as bf16x2 bits of v * 2^-126.
template <int P>
__device__ __forceinline__ uint32_t e2m1_pair(uint32_t w) {
  const uint32_t m = (P <= 1 ? (w << (6 - 4 * P)) : (w >> (4 * P - 6))) & 0x01C001C0u;
  const uint32_t sg = (w << (12 - 4 * P)) & 0x80008000u;
  return m | sg;
}

template <int P, bool TWO_STEP>
__device__ __forceinline__ uint32_t dequant_pair(uint32_t w, uint32_t f) {
  const uint32_t r = e2m1_pair<P>(w);
  return TWO_STEP ? fma_bf16x2(fma_bf16x2(r, 0x7F007F00u), f) : fma_bf16x2(r, f);
}

// bf16x2 bits of the factor for scale byte s: 2^(s - 1) (one step, s <= 128) or 2^(s - 128) (two steps:
// after the exact 2^127, s > 128 so it is normal).
template <bool TWO_STEP>
__device__ __forceinline__ uint32_t scale_factor(uint32_t s) {
  const uint32_t b = TWO_STEP ? (s > 1 ? (s - 1) << 7 : 0x20u << s) : (s + 126) << 7;
  return b | (b << 16);
}

// One 128-value span of K for this lane: weights (w0: row g, w1: row g + 8; zeros outside K or N), scale
// bytes, x of columns g and g + 8 at the same 32 k (zeros for padding rows / outside K).
template <bool TWO_STEP>
__device__ __forceinline__ void span_mma(float (&acc)[2][4], const uint4& w0, const uint4& w1, uint32_t s0,
                                         uint32_t s1, const uint4 (&x)[4], const uint4 (&x8)[4], bool two) {
  const uint32_t f0 = scale_factor<TWO_STEP>(s0), f1 = scale_factor<TWO_STEP>(s1);
  const uint32_t q0[4] = {w0.x, w0.y, w0.z, w0.w};
  const uint32_t q1[4] = {w1.x, w1.y, w1.z, w1.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    uint32_t a[4];
    // h = 0: nibbles (0, 4) and (1, 5)
    a[0] = dequant_pair<0, TWO_STEP>(q0[q], f0);
    a[1] = dequant_pair<0, TWO_STEP>(q1[q], f1);
    a[2] = dequant_pair<1, TWO_STEP>(q0[q], f0);
    a[3] = dequant_pair<1, TWO_STEP>(q1[q], f1);
    gok::mma16816<__nv_bfloat16>(acc[0], a, prmt(x[q].x, x[q].z, 0x5410), prmt(x[q].x, x[q].z, 0x7632));
    if (two) gok::mma16816<__nv_bfloat16>(acc[1], a, prmt(x8[q].x, x8[q].z, 0x5410), prmt(x8[q].x, x8[q].z, 0x7632));
    // h = 1: nibbles (2, 6) and (3, 7)
    a[0] = dequant_pair<2, TWO_STEP>(q0[q], f0);
    a[1] = dequant_pair<2, TWO_STEP>(q1[q], f1);
    a[2] = dequant_pair<3, TWO_STEP>(q0[q], f0);
    a[3] = dequant_pair<3, TWO_STEP>(q1[q], f1);
    gok::mma16816<__nv_bfloat16>(acc[0], a, prmt(x[q].y, x[q].w, 0x5410), prmt(x[q].y, x[q].w, 0x7632));
    if (two) gok::mma16816<__nv_bfloat16>(acc[1], a, prmt(x8[q].y, x8[q].w, 0x5410), prmt(x8[q].y, x8[q].w, 0x7632));
  }
}

__device__ __forceinline__ void load_x(uint4 (&x)[4], const __nv_bfloat16* row, int blk, bool ok) {
  const uint4* p = reinterpret_cast<const uint4*>(row + static_cast<int64_t>(blk) * 32);
#pragma unroll
  for (int q = 0; q < 4; ++q) x[q] = ok ? __ldg(p + q) : make_uint4(0, 0, 0, 0);
}

__device__ __forceinline__ float sigmoid_f(float v) { return 1.f / (1.f + __expf(-v)); }

// WK warps split K; each takes up to D spans per round, all loads of a round issued before its MMAs.
template <bool FIRST, int WK, int D>
__global__ void __launch_bounds__(32 * WK) mxfp4_decode_gemm_kernel(const DecodeParams p) {
  gok::pdl_wait_and_release();
  const int blk_row = blockIdx.x;
  const int e = p.block_expert[blk_row];
  if (e < 0 || e >= p.num_experts) return;
  const int lane = threadIdx.x & 31, wk = threadIdx.x >> 5;
  const int g = lane >> 2, c = lane & 3;
  const int n0 = blockIdx.y * kTileN;
  const int64_t row0 = static_cast<int64_t>(blk_row) * kBlockM;

  // The block's rows: real ones first (sorted_pos >= 0), then padding.
  const int pos_l = lane < kBlockM ? p.sorted_pos[row0 + lane] : -1;
  const int nrows = __popc(__ballot_sync(0xffffffffu, pos_l >= 0));
  const bool two = nrows > 8;  // uniform over the CTA
  const int pos_g = __shfl_sync(0xffffffffu, pos_l, g);
  const int pos_g8 = __shfl_sync(0xffffffffu, pos_l, g + 8);
  const __nv_bfloat16* xg = p.a + (FIRST ? static_cast<int64_t>(max(pos_g, 0) / p.top_k) : row0 + g) * p.stride_a;
  const __nv_bfloat16* xg8 =
      p.a + (FIRST ? static_cast<int64_t>(max(pos_g8, 0) / p.top_k) : row0 + g + 8) * p.stride_a;

  const int kb = p.k / 32;            // MX blocks per weight row
  const int nspans = (kb + 3) / 4;
  const int r0 = n0 + 2 * g, r1 = r0 + 1;
  const bool ok0 = r0 < p.n, ok1 = r1 < p.n;
  const int64_t base0 = (static_cast<int64_t>(e) * p.n + (ok0 ? r0 : 0)) * kb;
  const int64_t base1 = (static_cast<int64_t>(e) * p.n + (ok1 ? r1 : 0)) * kb;

  float acc[2][4] = {};
  for (int first_span = wk; first_span < nspans; first_span += WK * D) {
    uint4 w0[D], w1[D];
    uint32_t sc[D];
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int b = (first_span + d * WK) * 4 + c;
      const bool in = first_span + d * WK < nspans && b < kb;
      w0[d] = in && ok0 ? ld_stream16(p.w + base0 + b) : make_uint4(0, 0, 0, 0);
      w1[d] = in && ok1 ? ld_stream16(p.w + base1 + b) : make_uint4(0, 0, 0, 0);
      sc[d] = (in && ok0 ? static_cast<uint32_t>(__ldg(p.s + base0 + b)) : 0u) |
              (in && ok1 ? static_cast<uint32_t>(__ldg(p.s + base1 + b)) << 8 : 0u);
    }
#pragma unroll
    for (int d = 0; d < D; ++d) {
      const int span = first_span + d * WK;
      if (span >= nspans) break;  // uniform over the warp
      const int b = span * 4 + c;
      uint4 x[4], x8[4] = {};
      load_x(x, xg, b, b < kb && g < nrows);
      if (two) load_x(x8, xg8, b, b < kb && g + 8 < nrows);
      const uint32_t s0 = sc[d] & 0xFFu, s1 = sc[d] >> 8;
      if (__any_sync(0xffffffffu, s0 > 128 || s1 > 128))
        span_mma<true>(acc, w0[d], w1[d], s0, s1, x, x8, two);
      else
        span_mma<false>(acc, w0[d], w1[d], s0, s1, x, x8, two);
    }
  }

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
  const float b0 = p.bias != nullptr && ok0 ? __bfloat162float(p.bias[static_cast<int64_t>(e) * p.n + r0]) : 0.f;
  const float b1 = p.bias != nullptr && ok1 ? __bfloat162float(p.bias[static_cast<int64_t>(e) * p.n + r1]) : 0.f;
#pragma unroll
  for (int t = 0; t < 2; ++t) {
#pragma unroll
    for (int cc = 0; cc < 2; ++cc) {
      const int col = 8 * t + 2 * c + cc;
      const int pos = __shfl_sync(0xffffffffu, pos_l, col);
      if (col >= nrows) continue;
      if constexpr (FIRST) {
        if (!ok1) continue;  // N = 2I is even: r0 < N implies r1 < N
        float gate = acc[t][cc] + b0, up = acc[t][2 + cc] + b1;
        gate = isnan(gate) ? gate : fminf(gate, p.limit);
        up = isnan(up) ? up : fminf(fmaxf(up, -p.limit), p.limit);
        const float v = (up + 1.f) * gate * sigmoid_f(p.alpha * gate);
        p.out[(row0 + col) * p.stride_out + r0 / 2] = __float2bfloat16_rn(v);
      } else {
        const float wt = p.topk_w[pos];
        __nv_bfloat16* o = p.out + static_cast<int64_t>(pos) * p.stride_out;
        if (ok0) o[r0] = __float2bfloat16_rn((acc[t][cc] + b0) * wt);
        if (ok1) o[r1] = __float2bfloat16_rn((acc[t][2 + cc] + b1) * wt);
      }
    }
  }
}

template <bool FIRST, int WK, int D>
void launch(const DecodeParams& p, int nb, cudaStream_t stream) {
  const dim3 grid(nb, (p.n + kTileN - 1) / kTileN, 1);
  gok::launch_pdl(mxfp4_decode_gemm_kernel<FIRST, WK, D>, grid, dim3(32 * WK, 1, 1), 0, stream, p);
}

// (warps over K, spans per round): GOK_MXFP4_DECODE_CFG="wk,d" picks one of the compiled pairs (the probe's
// sweep); by default 4 warps and enough spans per round for K = 2880 in one round.
template <bool FIRST>
void launch_cfg(const DecodeParams& p, int nb, cudaStream_t stream) {
  const char* env = std::getenv("GOK_MXFP4_DECODE_CFG");  // read per launch: the probe sweeps it in one process
  const int nspans = (p.k / 32 + 3) / 4;
  int wk = 4, d = nspans <= 8 ? 2 : 6;
  if (env != nullptr && std::sscanf(env, "%d,%d", &wk, &d) != 2) wk = 4, d = 6;
  if (wk == 2 && d == 6) return launch<FIRST, 2, 6>(p, nb, stream);
  if (wk == 4 && d == 2) return launch<FIRST, 4, 2>(p, nb, stream);
  if (wk == 4 && d == 3) return launch<FIRST, 4, 3>(p, nb, stream);
  if (wk == 8 && d == 3) return launch<FIRST, 8, 3>(p, nb, stream);
  return launch<FIRST, 4, 6>(p, nb, stream);
}

}  // namespace

void moe_gemm_mxfp4_decode(const at::Tensor& a, const at::Tensor& words, const at::Tensor& scales,
                           const std::optional<at::Tensor>& bias, const at::Tensor& sorted_pos,
                           const at::Tensor& block_expert, const at::Tensor& topk_w, int64_t top_k, double alpha,
                           double limit, bool first, at::Tensor& out) {
  // Arguments were validated in Python (grouped_gemm.py); these checks are the ones memory safety needs.
  TORCH_CHECK(a.is_cuda() && a.dim() == 2 && a.scalar_type() == at::kBFloat16 && a.stride(1) == 1,
              "moe_gemm_mxfp4_decode: a must be a bf16 CUDA (rows, K) tensor with unit column stride");
  TORCH_CHECK(words.dim() == 3 && words.size(2) % 4 == 0 && words.scalar_type() == at::kInt && words.is_contiguous(),
              "moe_gemm_mxfp4_decode: words must be the blocks as contiguous int32 (E, N, K/8)");
  TORCH_CHECK(scales.dim() == 3 && scales.scalar_type() == at::kByte && scales.is_contiguous() &&
                  scales.size(0) == words.size(0) && scales.size(1) == words.size(1) &&
                  scales.size(2) * 4 == words.size(2),
              "moe_gemm_mxfp4_decode: scales must be contiguous uint8 (E, N, K/32)");
  const int64_t e = words.size(0), n = words.size(1), k = words.size(2) * 8;
  TORCH_CHECK(a.size(1) == k && a.stride(0) % 8 == 0 && reinterpret_cast<uintptr_t>(a.data_ptr()) % 16 == 0 &&
                  reinterpret_cast<uintptr_t>(words.data_ptr()) % 16 == 0,
              "moe_gemm_mxfp4_decode: a must be K wide, rows 16-byte aligned; words 16-byte aligned");
  TORCH_CHECK(sorted_pos.scalar_type() == at::kInt && block_expert.scalar_type() == at::kInt &&
                  sorted_pos.is_contiguous() && block_expert.is_contiguous() &&
                  sorted_pos.numel() == block_expert.numel() * kBlockM,
              "moe_gemm_mxfp4_decode: sorted_pos / block_expert must be int32 with 16 rows per block");
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.stride(1) == 1,
              "moe_gemm_mxfp4_decode: out must be bf16 (rows, cols) with unit column stride");
  if (first) {
    TORCH_CHECK(n % 2 == 0 && out.size(0) >= sorted_pos.numel() && out.size(1) >= n / 2 && top_k >= 1,
                "moe_gemm_mxfp4_decode: GEMM 1 needs an even N, out (nb * 16, >= N / 2) and top_k >= 1");
  } else {
    TORCH_CHECK(out.size(1) >= n && topk_w.scalar_type() == at::kFloat && topk_w.is_contiguous() &&
                    topk_w.numel() == out.size(0),
                "moe_gemm_mxfp4_decode: GEMM 2 needs out (T * k, >= N) and float32 topk_w (T * k)");
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() && bias->numel() == e * n,
                "moe_gemm_mxfp4_decode: bias must be contiguous bf16 (E, N)");
  }
  TORCH_CHECK(e * n * (k / 32) < (int64_t{1} << 40) && n < (int64_t{1} << 20) && k < (int64_t{1} << 24),
              "moe_gemm_mxfp4_decode: sizes out of range");
  const int64_t nb = block_expert.numel();
  if (nb == 0 || n == 0 || k == 0) return;
  TORCH_CHECK(nb < (int64_t{1} << 31) && (n + kTileN - 1) / kTileN < 65536, "moe_gemm_mxfp4_decode: grid too large");
  const c10::cuda::CUDAGuard guard(a.device());
  DecodeParams p;
  p.a = reinterpret_cast<const __nv_bfloat16*>(a.data_ptr());
  p.stride_a = a.stride(0);
  p.w = reinterpret_cast<const uint4*>(words.data_ptr());
  p.s = scales.data_ptr<uint8_t>();
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
  p.alpha = static_cast<float>(alpha);
  p.limit = static_cast<float>(limit);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (first)
    launch_cfg<true>(p, static_cast<int>(nb), stream);
  else
    launch_cfg<false>(p, static_cast<int>(nb), stream);
}
