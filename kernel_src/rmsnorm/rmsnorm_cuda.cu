// RMSNorm and fused residual-add + RMSNorm for CUDA.
//
// Math (GPT-OSS, exact): y = (float(x) * rsqrt(mean(float(x)^2) + eps)) * float(w), cast to
// x's dtype. The fused op first forms s = dtype(float(x) + float(residual)) -- rounded as an
// unfused `x + residual` would be -- writes it as the new residual and normalises it.
//
// Layout, fast path: one block (32..256 threads, ~2 16-byte vectors per thread) per row at a
// time, in a persistent grid (as many blocks as are resident at once). Thread t holds vectors
// v = t + blockDim * j (j < VPL) of the row in registers, and its slice of the weight as fp32
// for every row it handles, so each element is read once and written once (the fused op
// also writes the new residual). The next row's loads are issued before this row's
// reduction (warp shuffles, then one barrier over double-buffered partials). VPL is a
// template upper bound; threads guard v < hidden / N. The fallback (rows not 16-byte
// aligned, or longer than 256 * 32 vectors): one warp per row, reading the row twice, scalar.
// rms_norm on 8192+ rows uses a warp-per-row register kernel instead (see below).
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
constexpr int kMaxThreads = 256;      // fast path: one block of up to 256 threads per row
constexpr int kRowsPerBlock = 4;      // warp-per-row kernels (many rows; fallback): rows per block
constexpr int kWarpRowThreads = kWarp * kRowsPerBlock;
constexpr int64_t kWarpRowsFrom = 8192;  // rms_norm (no residual) switches to warp-per-row here

template <typename T, typename W, int VPL, bool ADD>
__global__ void __launch_bounds__(kMaxThreads)
rms_norm_vec_kernel(T* __restrict__ out, T* __restrict__ residual_out, const T* __restrict__ x,
                    const T* __restrict__ residual, const W* __restrict__ weight, int64_t rows, int hidden,
                    float eps) {
  constexpr int N = Vec16<T>::N;
  __shared__ float partial[2][kMaxThreads / kWarp];  // double-buffered: one barrier per row
  const int nvec = hidden / N;
  const int tid = threadIdx.x;
  const int nwarps = blockDim.x / kWarp;
  const int64_t stride = gridDim.x;
  int64_t row = blockIdx.x;

  Vec16<T> cur[VPL], nxt[VPL];
  Vec16<T> cur_r[ADD ? VPL : 1], nxt_r[ADD ? VPL : 1];
  auto load_row = [&](int64_t r, Vec16<T>(&xs)[VPL], Vec16<T>(&rs)[ADD ? VPL : 1]) {
    if (r >= rows) return;
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = tid + j * blockDim.x;
      if (v < nvec) {
        xs[j].raw = __ldcs(reinterpret_cast<const uint4*>(x + r * hidden) + v);
        if constexpr (ADD) rs[j].raw = __ldcs(reinterpret_cast<const uint4*>(residual + r * hidden) + v);
      }
    }
  };
  load_row(row, cur, cur_r);
  // This thread's slice of the weight, as fp32, kept in registers for every row it handles.
  float w[VPL][N];
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int v = tid + j * blockDim.x;
    if (v < nvec) gok::load_float<W, N>(weight + v * N, w[j]);
  }

  // Persistent blocks: rows blockIdx.x, + gridDim.x, ...; the next row's loads are issued
  // before this row's reduction, so two rows per block are in flight.
  for (int parity = 0; row < rows; row += stride, parity ^= 1) {
    load_row(row + stride, nxt, nxt_r);
    const int64_t base = row * hidden;
    if constexpr (ADD) {
#pragma unroll
      for (int j = 0; j < VPL; ++j) {
        const int v = tid + j * blockDim.x;
        if (v < nvec) {
#pragma unroll
          for (int i = 0; i < N; ++i) cur[j].v[i] = from_float<T>(to_float(cur[j].v[i]) + to_float(cur_r[j].v[i]));
          reinterpret_cast<uint4*>(residual_out + base)[v] = cur[j].raw;
        }
      }
    }
    float sum_sq = 0.f;
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      if (tid + j * blockDim.x < nvec) {
#pragma unroll
        for (int i = 0; i < N; ++i) {
          const float f = to_float(cur[j].v[i]);
          sum_sq = fmaf(f, f, sum_sq);
        }
      }
    }
    sum_sq = gok::warp_sum(sum_sq);
    if (tid % kWarp == 0) partial[parity][tid / kWarp] = sum_sq;
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < nwarps; ++i) total += partial[parity][i];
    const float inv = rsqrtf(total / hidden + eps);
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = tid + j * blockDim.x;
      if (v < nvec) {
        Vec16<T> o;
#pragma unroll
        for (int i = 0; i < N; ++i) o.v[i] = from_float<T>((to_float(cur[j].v[i]) * inv) * w[j][i]);
        reinterpret_cast<uint4*>(out + base)[v] = o.raw;
      }
    }
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      cur[j] = nxt[j];
      if constexpr (ADD) cur_r[j] = nxt_r[j];
    }
  }
}

// Many rows, no residual: one warp per row, the whole row in the lane's registers (VPL
// vectors each), the weight read after the reduction (L1-resident at this size), one row per
// warp and no persistence: fewer threads per row leave more registers for rows in flight.
// Measured faster than the block-per-row kernel from 16384 rows on (docs/NOTES-rmsnorm.md).
template <typename T, typename W, int VPL, bool ADD>
__global__ void __launch_bounds__(kWarpRowThreads)
rms_norm_warp_kernel(T* __restrict__ out, T* __restrict__ residual_out, const T* __restrict__ x,
                    const T* __restrict__ residual, const W* __restrict__ weight, int64_t rows, int hidden,
                    float eps) {
  constexpr int N = Vec16<T>::N;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= rows) return;  // whole warp leaves together
  const int lane = threadIdx.x % kWarp;
  const int nvec = hidden / N;
  const int64_t base = row * hidden;

  Vec16<T> buf[VPL];
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int v = lane + j * kWarp;
    if (v < nvec) buf[j].raw = __ldcs(reinterpret_cast<const uint4*>(x + base) + v);
  }
  if constexpr (ADD) {
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = lane + j * kWarp;
      if (v < nvec) {
        Vec16<T> r;
        r.raw = __ldcs(reinterpret_cast<const uint4*>(residual + base) + v);
#pragma unroll
        for (int i = 0; i < N; ++i) buf[j].v[i] = from_float<T>(to_float(buf[j].v[i]) + to_float(r.v[i]));
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
      float w[N];
      gok::load_float<W, N>(weight + v * N, w);
      Vec16<T> o;
#pragma unroll
      for (int i = 0; i < N; ++i) o.v[i] = from_float<T>((to_float(buf[j].v[i]) * inv) * w[i]);
      reinterpret_cast<uint4*>(out + base)[v] = o.raw;
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

// Blocks of `Kernel` with `threads` threads that fit on the whole device at once (cached per
// kernel, device and block size).
template <auto Kernel>
int64_t resident_blocks(int threads) {
  static int cached[16][kMaxThreads / kWarp + 1] = {};
  int device = 0;
  C10_CUDA_CHECK(cudaGetDevice(&device));
  int& slot = cached[device % 16][threads / kWarp];
  if (slot == 0) {
    int sms = 0, per_sm = 0;
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, Kernel, threads, 0));
    slot = std::max(1, sms * per_sm);
  }
  return slot;
}

template <typename T, typename W, bool ADD>
void launch(T* out, T* residual_out, const T* x, const T* residual, const W* weight, int64_t rows, int hidden,
            float eps, cudaStream_t stream) {
  constexpr int N = Vec16<T>::N;
  const bool aligned = hidden % N == 0 && gok::is_aligned16(out) && gok::is_aligned16(x) &&
                       gok::is_aligned16(weight) &&
                       (!ADD || (gok::is_aligned16(residual) && gok::is_aligned16(residual_out)));
  // Block size: about two 16-byte vectors per thread, a multiple of the warp, at most 256.
  const int nvec = hidden / N;
  const int threads = std::min(kMaxThreads, std::max(kWarp, ((nvec + 1) / 2 + kWarp - 1) / kWarp * kWarp));
  const int vpl = (nvec + threads - 1) / threads;
  if (!aligned || vpl > 32) {
    const dim3 grid(static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
    rms_norm_scalar_kernel<T, W, ADD><<<grid, kWarpRowThreads, 0, stream>>>(out, residual_out, x, residual, weight,
                                                                             rows, hidden, eps);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  if constexpr (!ADD) {
    const int warp_vpl = (nvec + kWarp - 1) / kWarp;
    if (rows >= kWarpRowsFrom && warp_vpl <= 16) {
      const dim3 grid(static_cast<unsigned>((rows + kRowsPerBlock - 1) / kRowsPerBlock));
#define GOK_RMS_WARP(V) \
  rms_norm_warp_kernel<T, W, V, false><<<grid, kWarpRowThreads, 0, stream>>>(out, nullptr, x, nullptr, weight, rows, hidden, eps)
      if (warp_vpl <= 4) GOK_RMS_WARP(4);
      else if (warp_vpl <= 8) GOK_RMS_WARP(8);
      else if (warp_vpl <= 12) GOK_RMS_WARP(12);
      else GOK_RMS_WARP(16);
#undef GOK_RMS_WARP
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      return;
    }
  }
#define GOK_RMS_VEC(V)                                                                                       \
  do {                                                                                                       \
    constexpr auto kernel = rms_norm_vec_kernel<T, W, V, ADD>;                                               \
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>(rows, resident_blocks<kernel>(threads))));       \
    kernel<<<grid, threads, 0, stream>>>(out, residual_out, x, residual, weight, rows, hidden, eps);         \
  } while (0)
  if (vpl <= 1) GOK_RMS_VEC(1);
  else if (vpl <= 2) GOK_RMS_VEC(2);
  else if (vpl <= 4) GOK_RMS_VEC(4);
  else if (vpl <= 8) GOK_RMS_VEC(8);
  else if (vpl <= 16) GOK_RMS_VEC(16);
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
