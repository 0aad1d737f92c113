// The attention projections at decode sizes: out[:, cols of W_i] = x W_i^T + b_i for up to three weights W_i
// (N_i, K) applied to the same x (M <= 16 rows), written side by side into one (M, sum N_i) output: q, k and v in
// one launch, o_proj alone. fp32 accumulation, bias added in fp32, one rounding to x's dtype.
//
// Why a hand kernel: at batch-1 decode cuBLAS runs GPT-OSS's q, k and v as three split-K GEMVs, each followed by
// its reduction: 25.6 us per layer for 29.5 MB of weights on an H100 (docs/transformers.md, "Where a decode step
// goes"), where the bytes take 9.8 us. Here one launch streams the three weights once, with nothing to reduce
// across CTAs.
//
// Layout: one CTA per 8 rows of one weight. The tokens are the m16 side of mma.m16n8k16 (up to 16 of them, zero
// rows past M) and the weight rows its n8 side, so a weight's rows tile by 8: GPT-OSS's q/k/v make 640 CTAs, o_proj
// 360 (with 16-row tiles o_proj's 180 CTAs left some SMs two tiles and others one: 14.9 against 11.7 us at M = 1 on
// an H100, 2026-12-06). The CTA's kWarps warps split K into 32-wide chunks (chunk c to warp c % kWarps) and reduce
// their partial sums through shared memory at the end. Measured (docs/attention.md "Projections"): q/k/v at 65% of
// the byte floor, o_proj at 67%; taking 4 warps so that all 640 q/k/v CTAs are resident at once did not help.
// Lane (g = lane / 4, t = lane % 4) loads 16 bytes of weight row g and of x rows (tokens) g and g + 8 at
// k = 32 c + 8 t. A dot product does not depend on the order of k, so these 8 values serve as the fragments' k
// {2t, 2t+1, 2t+8, 2t+9} of two k16 steps (values 0-3, then 4-7), for A (x) and B (weights) alike: both come
// straight from global memory in 16-byte loads, with no shared-memory staging and no shuffles.
//
// PDL: the weights do not depend on the previous kernel, so each warp issues its first chunks' weight loads before
// griddepcontrol.wait; x is read, and the output written, only after it. Inputs the 16-byte loads cannot take
// (K or x's row stride not a multiple of 8 elements, unaligned pointers) go through ATen's linear instead.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "common/device.cuh"
#include "common/mma.cuh"
#include "common/vec.cuh"
#include "torch-ext/torch_binding.h"

namespace {

constexpr int kWarps = 8;
constexpr int kUnroll = 8;  // chunks per warp per loop step (16 bytes of weights per lane each)
constexpr int kRows = 8;    // weight rows per CTA (mma n8)
constexpr int kMaxWeights = 3;

struct Weight {
  const void* w;  // (n, k) contiguous
  const void* b;  // (n,) or nullptr
  int n;
  int out_col;     // first output column
  int first_tile;  // first CTA (kRows rows each) of this weight
};

struct Params {
  const void* x;  // (m, k), row stride x_stride
  void* out;      // (m, out_stride)
  Weight w[kMaxWeights];
  int nw, m, k;
  int64_t x_stride, out_stride;
};

// Streaming 16-byte load (the weights are read once per step: keep them out of L1).
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}

// Weight row g of chunks c0, c0 + kWarps, ... (kUnroll of them); zeros past K or past the weight's rows.
template <typename T>
__device__ __forceinline__ void load_weights(const T* w, bool ok, int c0, int chunks, int k, int t,
                                             uint4 (&a)[kUnroll]) {
#pragma unroll
  for (int u = 0; u < kUnroll; ++u) {
    const int c = c0 + u * kWarps;
    const int kk = c * 32 + 8 * t;
    a[u] = ok && c < chunks && kk < k ? load_stream(w + kk) : make_uint4(0, 0, 0, 0);
  }
}

// TWO: more than 8 tokens (x rows g + 8 are read too).
template <typename T, bool TWO>
__global__ void __launch_bounds__(32 * kWarps) multi_linear_kernel(const Params p) {
  __shared__ float partial[kWarps][4][32];

  // This CTA's weight: the last one whose first tile is at or before blockIdx.x (selects, not an indexed
  // parameter array, which would go through local memory).
  const int tile = blockIdx.x;
  const bool in1 = p.nw > 1 && tile >= p.w[1].first_tile;
  const bool in2 = p.nw > 2 && tile >= p.w[2].first_tile;
  const Weight& sel = in2 ? p.w[2] : (in1 ? p.w[1] : p.w[0]);
  const T* bias = static_cast<const T*>(sel.b);
  const int n = sel.n, out_col = sel.out_col, row0 = (tile - sel.first_tile) * kRows;

  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int g = lane >> 2, t = lane & 3;
  const bool ok = row0 + g < n;
  const T* w = static_cast<const T*>(sel.w) + static_cast<int64_t>(ok ? row0 + g : 0) * p.k;
  const int chunks = (p.k + 31) / 32;
  constexpr int kStep = kWarps * kUnroll;

  uint4 a[kUnroll];
  load_weights(w, ok, warp, chunks, p.k, t, a);
  gok::pdl_wait_and_release();

  const T* x0 = static_cast<const T*>(p.x) + g * p.x_stride;
  const T* x1 = x0 + 8 * p.x_stride;
  const bool ok_x0 = g < p.m, ok_x1 = TWO && g + 8 < p.m;
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  for (int c0 = warp; c0 < chunks; c0 += kStep) {
    uint4 next[kUnroll];
    load_weights(w, ok, c0 + kStep, chunks, p.k, t, next);
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int c = c0 + u * kWarps;
      const int kk = c * 32 + 8 * t;
      const bool in = c < chunks && kk < p.k;
      const uint4 xa = in && ok_x0 ? __ldg(reinterpret_cast<const uint4*>(x0 + kk)) : make_uint4(0, 0, 0, 0);
      uint4 xb = make_uint4(0, 0, 0, 0);
      if constexpr (TWO) {
        if (in && ok_x1) xb = __ldg(reinterpret_cast<const uint4*>(x1 + kk));
      }
      const uint32_t s0[4] = {xa.x, xb.x, xa.y, xb.y};
      const uint32_t s1[4] = {xa.z, xb.z, xa.w, xb.w};
      gok::mma16816<T>(acc, s0, a[u].x, a[u].y);
      gok::mma16816<T>(acc, s1, a[u].z, a[u].w);
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) a[u] = next[u];
  }

#pragma unroll
  for (int j = 0; j < 4; ++j) partial[warp][j][lane] = acc[j];
  __syncthreads();
  // Accumulator element j of lane (g, t): token g (j < 2) or g + 8, weight row 2t + (j & 1).
  T* out = static_cast<T*>(p.out);
  for (int i = threadIdx.x; i < 4 * 32; i += 32 * kWarps) {
    const int j = i / 32, l = i % 32;
    const int token = (l >> 2) + (j >= 2 ? 8 : 0);
    const int row = row0 + 2 * (l & 3) + (j & 1);
    if (row >= n || token >= p.m) continue;
    float s = 0.f;
#pragma unroll
    for (int v = 0; v < kWarps; ++v) s += partial[v][j][l];
    if (bias != nullptr) s += gok::to_float(bias[row]);
    out[token * p.out_stride + out_col + row] = gok::from_float<T>(s);
  }
}

template <typename T>
void launch(const Params& p, int tiles, cudaStream_t stream) {
  if (p.m > 8) {
    gok::launch_pdl(multi_linear_kernel<T, true>, dim3(tiles, 1, 1), dim3(32 * kWarps, 1, 1), 0, stream, p);
  } else {
    gok::launch_pdl(multi_linear_kernel<T, false>, dim3(tiles, 1, 1), dim3(32 * kWarps, 1, 1), 0, stream, p);
  }
}

bool aligned16(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; }

}  // namespace

// The Python entry point (attention/projection.py) validates shapes, dtypes and devices with detailed errors;
// these checks only keep bad input away from memory.
at::Tensor multi_linear(const at::Tensor& x, at::TensorList weights, at::TensorList biases) {
  TORCH_CHECK(x.is_cuda() && x.dim() == 2 && x.stride(1) == 1, "multi_linear: x must be a CUDA (M, K) tensor with unit column stride");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kHalf, "multi_linear: x must be bfloat16 or float16");
  TORCH_CHECK(x.size(0) <= 16, "multi_linear: at most 16 rows of x");
  TORCH_CHECK(!weights.empty() && weights.size() <= kMaxWeights, "multi_linear: one to three weights");
  TORCH_CHECK(biases.empty() || biases.size() == weights.size(), "multi_linear: no bias, or one per weight");
  const at::cuda::CUDAGuard guard(x.device());
  Params p{};
  p.x = x.data_ptr();
  p.nw = static_cast<int>(weights.size());
  p.m = static_cast<int>(x.size(0));
  p.k = static_cast<int>(x.size(1));
  p.x_stride = x.stride(0);
  int cols = 0, tiles = 0;
  for (size_t i = 0; i < weights.size(); ++i) {
    const at::Tensor& w = weights[i];
    TORCH_CHECK(w.device() == x.device() && w.scalar_type() == x.scalar_type() && w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1), "multi_linear: each weight must be a contiguous (N, K) tensor of x's dtype and device");
    TORCH_CHECK(w.size(0) > 0 && w.size(0) < (1 << 24), "multi_linear: a weight's N must be in [1, 2^24)");
    p.w[i].w = w.data_ptr();
    p.w[i].n = static_cast<int>(w.size(0));
    p.w[i].out_col = cols;
    p.w[i].first_tile = tiles;
    if (!biases.empty()) {
      const at::Tensor& b = biases[i];
      TORCH_CHECK(b.device() == x.device() && b.scalar_type() == x.scalar_type() && b.dim() == 1 && b.is_contiguous() && b.size(0) == w.size(0), "multi_linear: each bias must be a contiguous (N,) tensor of x's dtype and device");
      p.w[i].b = b.data_ptr();
    }
    cols += p.w[i].n;
    tiles += (p.w[i].n + kRows - 1) / kRows;
  }
  at::Tensor out = at::empty({x.size(0), cols}, x.options());
  if (x.size(0) == 0) return out;
  bool vector_ok = x.size(1) % 8 == 0 && x.stride(0) % 8 == 0 && aligned16(x);
  for (const at::Tensor& w : weights) vector_ok = vector_ok && aligned16(w);
  if (!vector_ok) {  // what the 16-byte loads cannot read: ATen's linear, one weight at a time
    for (size_t i = 0; i < weights.size(); ++i) {
      at::Tensor y = biases.empty() ? at::linear(x, weights[i]) : at::linear(x, weights[i], biases[i]);
      out.narrow(1, p.w[i].out_col, p.w[i].n).copy_(y);
    }
    return out;
  }
  p.out = out.data_ptr();
  p.out_stride = cols;
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (x.scalar_type() == at::kBFloat16) {
    launch<__nv_bfloat16>(p, tiles, stream);
  } else {
    launch<__half>(p, tiles, stream);
  }
  return out;
}
