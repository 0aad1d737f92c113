// RMSNorm and fused residual-add + RMSNorm for CUDA.
//
// Math (GPT-OSS, exact): y = (float(x) * rsqrt(mean(float(x)^2) + eps)) * float(w), cast to
// x's dtype. The fused op first forms s = dtype(float(x) + float(residual)) -- rounded as an
// unfused `x + residual` would be -- writes it as the new residual and normalises it.
//
// Layout, fast path: one block (32..384 threads, ~1 16-byte vector per thread) per row, no
// persistent grid (v7: a persistent grid with the next row prefetched measured slower -- the
// hardware block scheduler balances rows better than a static row-to-block assignment, see
// docs/decisions-rmsnorm.md). Thread t holds vectors v = t + blockDim * j (j < VPL) of the row in
// registers and its slice of the weight as fp32, so each element is read once and written once
// (the fused op also writes the new residual). VPL is a template upper bound; threads guard
// v < hidden / N. rms_norm on 2048+ rows (short rows) takes two rows per block. The fallback
// (rows not 16-byte aligned, or longer than 384 * 8 vectors: more would spill): one warp per row, reading the row
// twice, scalar.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>

#include <algorithm>

#include "common/rows.cuh"
#include "common/vec.cuh"
#include "torch-ext/torch_binding.h"

namespace {

using gok::from_float;
using gok::to_float;
using gok::Vec16;

constexpr int kWarp = 32;
constexpr int kMaxThreads = 384;      // fast path: one block of up to 384 threads per row
constexpr int kRowsPerBlock = 4;      // scalar fallback: one warp per row, rows per block
constexpr int kWarpRowThreads = kWarp * kRowsPerBlock;
constexpr int64_t kTwoRowsFrom = 2048;   // rms_norm (no residual): two rows per block from here

template <typename T, typename W, int VPL, bool ADD, int ROWS>
__global__ void __launch_bounds__(kMaxThreads)
rms_norm_vec_kernel(T* __restrict__ out, T* __restrict__ residual_out, const T* __restrict__ x,
                    const T* __restrict__ residual, const W* __restrict__ weight, int64_t rows, int hidden,
                    float inv_hidden, float eps) {
  constexpr int N = Vec16<T>::N;
  constexpr int kSlots = kMaxThreads / kWarp;
  __shared__ __align__(16) float partial[ROWS][kSlots];
  const int nvec = hidden / N;
  const int tid = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * ROWS;
  const int nrows = static_cast<int>(rows - row0 < ROWS ? rows - row0 : ROWS);

  // All of this block's rows are loaded before any reduction (ROWS rows in flight per block).
  Vec16<T> cur[ROWS][VPL];
  gok::load_rows<T, VPL, ROWS>(cur, x, row0, nrows, hidden, nvec);
  if constexpr (ADD) gok::add_residual_rows<T, VPL, ROWS>(cur, residual, residual_out, row0, nrows, hidden, nvec);
  // This thread's slice of the weight, as fp32 (L2-resident: every block reads the same bytes).
  float w[VPL][N];
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int v = tid + j * blockDim.x;
    if (v < nvec) gok::load_float<W, N>(weight + v * N, w[j]);
  }

  // Per-row sums of squares: warp shuffles, then a fixed-length read of kSlots partials per row
  // (lanes of warp 0 zero the slots of warps this block does not have), one barrier for all rows.
#pragma unroll
  for (int r = 0; r < ROWS; ++r)
    gok::store_warp_partial(partial[r], gok::warp_sum(gok::thread_sum_sq<T, VPL>(cur[r], nvec)));
  __syncthreads();
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (r >= nrows) break;
    float total = 0.f;
#pragma unroll
    for (int i = 0; i < kSlots; ++i) total += partial[r][i];
    const float inv = rsqrtf(total * inv_hidden + eps);
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = tid + j * blockDim.x;
      if (v < nvec) {
        Vec16<T> o;
#pragma unroll
        for (int i = 0; i < N; ++i) o.v[i] = from_float<T>((to_float(cur[r][j].v[i]) * inv) * w[j][i]);
        reinterpret_cast<uint4*>(out + (row0 + r) * hidden)[v] = o.raw;
      }
    }
  }
}

template <typename T, typename W, bool ADD>
__global__ void __launch_bounds__(kWarpRowThreads)
rms_norm_scalar_kernel(T* __restrict__ out, T* __restrict__ residual_out, const T* __restrict__ x,
                       const T* __restrict__ residual, const W* __restrict__ weight, int64_t rows, int hidden,
                       float eps) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t base = row * hidden;
  float sum_sq = 0.f;
  for (int i = lane; i < hidden; i += kWarp) {
    float f = to_float(x[base + i]);
    if constexpr (ADD) {
      const T s = from_float<T>(f + to_float(residual[base + i]));
      residual_out[base + i] = s;
      f = to_float(s);
    }
    sum_sq += f * f;
  }
  const float inv = rsqrtf(gok::warp_sum(sum_sq) / hidden + eps);
  // Second pass reads what this same lane read (or wrote) above.
  const T* src = ADD ? residual_out : x;
  for (int i = lane; i < hidden; i += kWarp)
    out[base + i] = from_float<T>((to_float(src[base + i]) * inv) * to_float(weight[i]));
}

template <typename T, typename W, bool ADD>
void launch(T* out, T* residual_out, const T* x, const T* residual, const W* weight, int64_t rows, int hidden,
            float eps, cudaStream_t stream) {
  constexpr int N = Vec16<T>::N;
  const bool aligned = hidden % N == 0 && gok::is_aligned16(out) && gok::is_aligned16(x) &&
                       gok::is_aligned16(weight) &&
                       (!ADD || (gok::is_aligned16(residual) && gok::is_aligned16(residual_out)));
  // Block size: about one 16-byte vector per thread, a multiple of the warp, at most kMaxThreads
  // (384 threads measured best at 1..256 rows and for the fused op; docs/decisions-rmsnorm.md).
  const int nvec = hidden / N;
  const int threads = std::min(kMaxThreads, (nvec + kWarp - 1) / kWarp * kWarp);
  const int vpl = (nvec + threads - 1) / threads;
  if (!aligned || vpl > 8) {
    const dim3 grid(static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
    rms_norm_scalar_kernel<T, W, ADD><<<grid, kWarpRowThreads, 0, stream>>>(out, residual_out, x, residual, weight,
                                                                             rows, hidden, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // rms_norm from kTwoRowsFrom rows (short rows only): two rows per block (one weight load for
  // both, twice the bytes in flight per block), measured 2% faster there and slower below.
  const bool two_rows = !ADD && rows >= kTwoRowsFrom && vpl <= 2;
  const float inv_hidden = 1.f / hidden;
#define GOK_RMS_VEC(V)                                                                                     \
  do {                                                                                                     \
    if constexpr (!ADD && V <= 2) {                                                                        \
      if (two_rows) {                                                                                      \
        rms_norm_vec_kernel<T, W, V, ADD, 2><<<static_cast<unsigned>((rows + 1) / 2), threads, 0, stream>>>( \
            out, residual_out, x, residual, weight, rows, hidden, inv_hidden, eps);                        \
        break;                                                                                             \
      }                                                                                                    \
    }                                                                                                      \
    rms_norm_vec_kernel<T, W, V, ADD, 1><<<static_cast<unsigned>(rows), threads, 0, stream>>>(            \
        out, residual_out, x, residual, weight, rows, hidden, inv_hidden, eps);                            \
  } while (0)
  if (vpl <= 1) GOK_RMS_VEC(1);
  else if (vpl <= 2) GOK_RMS_VEC(2);
  else if (vpl <= 4) GOK_RMS_VEC(4);
  else GOK_RMS_VEC(8);
#undef GOK_RMS_VEC
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

// Weight in fp32 or in x's dtype; any other weight dtype is converted to fp32 first.
template <bool ADD>
void dispatch(at::Tensor& out, at::Tensor* residual_out, const at::Tensor& x, const at::Tensor* residual,
              const at::Tensor& weight_in, double eps) {
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  if (rows == 0) return;
  TORCH_CHECK(hidden <= INT32_MAX && rows <= INT32_MAX, "rms_norm: hidden size or row count too large");
  const at::Tensor weight =
      (weight_in.scalar_type() == at::kFloat || weight_in.scalar_type() == x.scalar_type())
          ? weight_in.contiguous()
          : weight_in.to(at::kFloat).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = typename CudaType<scalar_t>::type;
      T* o = reinterpret_cast<T*>(out.data_ptr<scalar_t>());
      T* ro = ADD ? reinterpret_cast<T*>(residual_out->data_ptr<scalar_t>()) : nullptr;
      const T* xp = reinterpret_cast<const T*>(x.data_ptr<scalar_t>());
      const T* rp = ADD ? reinterpret_cast<const T*>(residual->data_ptr<scalar_t>()) : nullptr;
      if (weight.scalar_type() == at::kFloat) {
        launch<T, float, ADD>(o, ro, xp, rp, weight.data_ptr<float>(), rows, static_cast<int>(hidden),
                              static_cast<float>(eps), stream);
      } else {
        launch<T, T, ADD>(o, ro, xp, rp, reinterpret_cast<const T*>(weight.data_ptr<scalar_t>()), rows,
                          static_cast<int>(hidden), static_cast<float>(eps), stream);
      }
    } else {
      TORCH_CHECK(false, "rms_norm (CUDA): float64 is not supported");
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.is_cuda() && weight.device() == x.device(), "rms_norm: x and weight must be on the same CUDA device");
  TORCH_CHECK(x.is_contiguous(), "rms_norm: x must be contiguous");
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "rms_norm: weight must have shape (hidden,)");
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check(x, weight);
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  dispatch<false>(out, nullptr, x, nullptr, weight, eps);
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                      const at::Tensor& weight, double eps) {
  check(x, weight);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() &&
                  residual.device() == x.device() && residual.is_contiguous(),
              "fused_add_rms_norm: residual must match x");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty_like(x);
  auto residual_out = at::empty_like(x);
  dispatch<true>(out, &residual_out, x, &residual, weight, eps);
  return {out, residual_out};
}
