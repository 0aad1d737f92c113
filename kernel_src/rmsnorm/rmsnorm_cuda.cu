// RMSNorm and fused residual-add + RMSNorm for CUDA.
//
// Math (GPT-OSS, exact): y = (float(x) * rsqrt(mean(float(x)^2) + eps)) * float(w), cast to
// x's dtype. The fused op first forms s = dtype(float(x) + float(residual)) -- rounded as an
// unfused `x + residual` would be -- writes it as the new residual and normalises it.
//
// Layout: one warp per row. Fast path: a persistent grid (as many blocks as are resident at
// once); each block stages the weight as fp32 in shared memory while its warps load their
// first rows; each lane keeps its VPL 16-byte vectors of a row in registers (vector
// v = lane + 32 * j), so every element is read once and written once (the fused op also
// writes the new residual), and a warp issues its next row's loads right after its stores.
// VPL is a template upper bound chosen at launch; lanes guard v < hidden / N. The fallback
// path (rows not 16-byte aligned, or longer than 32 * 32 vectors) reads the row twice, scalar.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>

#include <algorithm>

#include "common/vec.cuh"
#include "torch-ext/torch_binding.h"

namespace {

using gok::from_float;
using gok::to_float;
using gok::Vec16;

constexpr int kWarp = 32;
constexpr int kRowsPerBlock = 4;
constexpr int kThreads = kWarp * kRowsPerBlock;

template <typename T, typename W, int VPL, bool ADD>
__global__ void __launch_bounds__(kThreads)
rms_norm_vec_kernel(T* __restrict__ out, T* __restrict__ residual_out, const T* __restrict__ x,
                    const T* __restrict__ residual, const W* __restrict__ weight, int64_t rows, int hidden,
                    float eps) {
  constexpr int N = Vec16<T>::N;
  // The weight, as fp32, staged once per block in shared memory: its loads overlap the first
  // row's loads instead of following the reduction (one memory round trip per row, not two).
  extern __shared__ float4 weight_smem[];
  float* w_s = reinterpret_cast<float*>(weight_smem);
  const int nvec = hidden / N;
  const int lane = threadIdx.x % kWarp;
  const int64_t row_stride = static_cast<int64_t>(gridDim.x) * kRowsPerBlock;
  int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;

  Vec16<T> buf[VPL];
  Vec16<T> res[ADD ? VPL : 1];
  auto load_row = [&](int64_t r) {
    if (r >= rows) return;
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = lane + j * kWarp;
      if (v < nvec) {
        buf[j].raw = __ldcs(reinterpret_cast<const uint4*>(x + r * hidden) + v);
        if constexpr (ADD) res[j].raw = __ldcs(reinterpret_cast<const uint4*>(residual + r * hidden) + v);
      }
    }
  };
  load_row(row);
  for (int v = threadIdx.x; v < nvec; v += kThreads) {
    float w[N];
    gok::load_float<W, N>(weight + v * N, w);
#pragma unroll
    for (int i = 0; i < N; i += 4) weight_smem[(v * N + i) / 4] = make_float4(w[i], w[i + 1], w[i + 2], w[i + 3]);
  }
  __syncthreads();

  // Persistent warps: a warp takes rows row, row + row_stride, ...
  for (; row < rows; row += row_stride) {
    const int64_t base = row * hidden;
    if constexpr (ADD) {
#pragma unroll
      for (int j = 0; j < VPL; ++j) {
        const int v = lane + j * kWarp;
        if (v < nvec) {
#pragma unroll
          for (int i = 0; i < N; ++i) buf[j].v[i] = from_float<T>(to_float(buf[j].v[i]) + to_float(res[j].v[i]));
          reinterpret_cast<uint4*>(residual_out + base)[v] = buf[j].raw;
        }
      }
    }
    float sum_sq = 0.f;
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      if (lane + j * kWarp < nvec) {
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const float f = to_float(buf[j].v[i]);
          sum_sq += f * f;
        }
      }
    }
    const float inv = rsqrtf(gok::warp_sum(sum_sq) / hidden + eps);
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = lane + j * kWarp;
      if (v < nvec) {
        Vec16<T> o;
#pragma unroll
        for (int i = 0; i < N; i += 4) {
          const float4 w = weight_smem[(v * N + i) / 4];
          o.v[i] = from_float<T>((to_float(buf[j].v[i]) * inv) * w.x);
          if constexpr (N > 1) o.v[i + 1] = from_float<T>((to_float(buf[j].v[i + 1]) * inv) * w.y);
          if constexpr (N > 2) o.v[i + 2] = from_float<T>((to_float(buf[j].v[i + 2]) * inv) * w.z);
          if constexpr (N > 3) o.v[i + 3] = from_float<T>((to_float(buf[j].v[i + 3]) * inv) * w.w);
        }
        reinterpret_cast<uint4*>(out + base)[v] = o.raw;
      }
    }
    load_row(row + row_stride);
  }
}

template <typename T, typename W, bool ADD>
__global__ void __launch_bounds__(kThreads)
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

// Blocks of `kernel` that fit on the whole device at once (cached per kernel and device).
template <auto Kernel>
int64_t resident_blocks(size_t smem) {
  static int cached[64] = {0};  // one table per kernel instantiation
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int& slot = cached[device % 64];
  if (slot == 0) {
    int sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, kThreads, smem));
    slot = std::max(1, sms * per_sm);
  }
  return slot;
}

template <typename T, typename W, bool ADD>
void launch(T* out, T* residual_out, const T* x, const T* residual, const W* weight, int64_t rows, int hidden,
            float eps, cudaStream_t stream) {
  constexpr int N = Vec16<T>::N;
  const int64_t row_blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  const dim3 grid(static_cast<unsigned>(row_blocks));
  const bool aligned = hidden % N == 0 && gok::is_aligned16(out) && gok::is_aligned16(x) &&
                       gok::is_aligned16(weight) &&
                       (!ADD || (gok::is_aligned16(residual) && gok::is_aligned16(residual_out)));
  const int vpl = (hidden / N + kWarp - 1) / kWarp;
  // Persistent grid: as many blocks as fit on the device at once (no more than there are rows).
  const size_t smem = static_cast<size_t>(hidden) * sizeof(float);
#define GOK_RMS_VEC(V)                                                                                         \
  do {                                                                                                         \
    constexpr auto kernel = rms_norm_vec_kernel<T, W, V, ADD>;                                                 \
    const dim3 persistent(static_cast<unsigned>(std::min<int64_t>(row_blocks, resident_blocks<kernel>(smem))));  \
    kernel<<<persistent, kThreads, smem, stream>>>(out, residual_out, x, residual, weight, rows, hidden, eps);  \
  } while (0)
  if (!aligned || vpl > 32)
    rms_norm_scalar_kernel<T, W, ADD><<<grid, kThreads, 0, stream>>>(out, residual_out, x, residual, weight, rows,
                                                                     hidden, eps);
  else if (vpl <= 2) GOK_RMS_VEC(2);
  else if (vpl <= 4) GOK_RMS_VEC(4);
  else if (vpl <= 8) GOK_RMS_VEC(8);
  else if (vpl <= 12) GOK_RMS_VEC(12);
  else if (vpl <= 16) GOK_RMS_VEC(16);
  else if (vpl <= 24) GOK_RMS_VEC(24);
  else GOK_RMS_VEC(32);
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
  TORCH_CHECK(hidden <= INT32_MAX, "rms_norm: hidden size too large");
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
