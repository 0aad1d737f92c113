// Per-token FP8 (e4m3) activations on CUDA: pad_quant_fp8 and the fused rms_norm_quant_fp8 (one kernel template).
//
// Math, bit for bit the quantization of the CPU ops (fp8_cpu.cpp; quant/fp8.py "Activations"):
//   scale = max(amax / 448, 2^-126) in fp32; NaN when the row holds a NaN or an Inf (a NaN counts as +Inf in amax);
//   q = e4m3_rne(clamp(v * (1 / scale), -448, 448)) for columns < H, 0 for H..h_pad-1.
// rms_norm_quant_fp8 quantizes the normed rows as rounded to x's dtype (what rms_norm returns), so q and scale are
// pad_quant_fp8 of the normed rows it returns, whether it writes them or not; with a residual it first forms
// s = dtype(float(x) + float(residual)), writes it as the new residual and normalises it (as fused_add_rms_norm).
// The norm itself is rmsnorm_cuda.cu's (rsqrtf), not bit-exact with rms_norm.
//
// Rounding under the build's --use_fast_math: both divisions are __fdiv_rn (IEEE), the product is mul.rn.f32
// without .ftz (a subnormal element of a row with a tiny amax scales up as in IEEE; flushing elsewhere cannot
// change a result: an amax below 448 * 2^-126 gives the minimum scale either way). The clamp is the conversion's
// .satfinite (finite values past +-448 saturate; NaN stays NaN: 0x7F). A NaN scale makes every q < H NaN.
//
// Layout, fast path (rmsnorm_cuda.cu's; the row loads, residual add and warp partials are common/rows.cuh): one block
// of 32..384 threads per row (two rows per block for short rows from kTwoRowsFrom rows without a residual), thread t
// holding vectors v = t + blockDim * j (j < VPL) of 16 bytes (N elements) in registers, so x (and the residual) are
// read once. Two block reductions (sum of
// squares, then amax), each warp shuffles + its own shared array (no barrier between reusing one), one barrier each.
// Each vector of N inputs becomes N e4m3 bytes in one store (8 or 4 bytes); vectors nvec..h_pad/N-1 are the zero
// padding. Fallback (H or h_pad not a multiple of N, unaligned rows, or rows over 384 * 8 vectors): one warp per
// row, scalar, reading the row up to three times.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <ATen/ATen.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <type_traits>

#include "common/rows.cuh"
#include "common/vec.cuh"
#include "torch-ext/torch_binding.h"

namespace {

using gok::from_float;
using gok::to_float;
using gok::Vec16;

constexpr int kWarp = 32;
constexpr int kMaxThreads = 384;
constexpr int kSlots = kMaxThreads / kWarp;
constexpr int kRowsPerBlock = 4;  // scalar fallback: one warp per row
constexpr int kWarpRowThreads = kWarp * kRowsPerBlock;
constexpr int64_t kTwoRowsFrom = 2048;  // rmsnorm_cuda.cu's threshold (measured there, not for this kernel)
constexpr float kFp8Max = 448.f;
constexpr float kMinScale = 1.17549435e-38f;  // 2^-126

template <typename T, typename W>
struct Params {
  uint8_t* q;         // (rows, h_pad) e4m3
  float* scale;       // (rows,)
  T* normed;          // (rows, hidden) or nullptr: not written
  T* residual_out;    // (rows, hidden), ADD only
  const T* x;         // (rows, hidden)
  const T* residual;  // (rows, hidden), ADD only
  const W* weight;    // (hidden,), NORM only
  int64_t rows;
  int hidden, h_pad;
  float inv_hidden, eps;
};

__device__ __forceinline__ float mul_ieee(float a, float b) {
  float r;
  asm("mul.rn.f32 %0, %1, %2;" : "=f"(r) : "f"(a), "f"(b));
  return r;
}

__device__ __forceinline__ float abs_nan_inf(float v) { return isnan(v) ? __int_as_float(0x7f800000) : fabsf(v); }

__device__ __forceinline__ float row_scale(float amax) {
  return amax == __int_as_float(0x7f800000) ? __int_as_float(0x7fc00000) : fmaxf(__fdiv_rn(amax, kFp8Max), kMinScale);
}

__device__ __forceinline__ uint32_t e4m3x4(float a, float b, float c, float d) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}

// NORM: rms_norm_quant_fp8 (ADD: with a residual); else pad_quant_fp8. ROWS rows per block, all loaded up front.
template <typename T, typename W, int VPL, int ROWS, bool NORM, bool ADD>
__global__ void __launch_bounds__(kMaxThreads) quant_vec_kernel(const Params<T, W> p) {
  constexpr int N = Vec16<T>::N;
  using QVec = std::conditional_t<N == 8, uint2, uint32_t>;
  __shared__ float amax_part[ROWS][kSlots];
  const int nvec = p.hidden / N;
  const int tid = threadIdx.x;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * ROWS;
  const int nrows = static_cast<int>(p.rows - row0 < ROWS ? p.rows - row0 : ROWS);

  Vec16<T> cur[ROWS][VPL];
  gok::load_rows<T, VPL, ROWS>(cur, p.x, row0, nrows, p.hidden, nvec);
  if constexpr (ADD) gok::add_residual_rows<T, VPL, ROWS>(cur, p.residual, p.residual_out, row0, nrows, p.hidden, nvec);
  if constexpr (NORM) {
    __shared__ float sq_part[ROWS][kSlots];
    float w[VPL][N];  // L2-resident: every block reads the same bytes
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = tid + j * blockDim.x;
      if (v < nvec) gok::load_float<W, N>(p.weight + v * N, w[j]);
    }
#pragma unroll
    for (int r = 0; r < ROWS; ++r)
      gok::store_warp_partial(sq_part[r], gok::warp_sum(gok::thread_sum_sq<T, VPL>(cur[r], nvec)));
    __syncthreads();
    // cur becomes the normed rows, rounded to T: what is written and what is quantized.
#pragma unroll
    for (int r = 0; r < ROWS; ++r) {
      float total = 0.f;
#pragma unroll
      for (int i = 0; i < kSlots; ++i) total += sq_part[r][i];
      const float inv_rms = rsqrtf(total * p.inv_hidden + p.eps);
#pragma unroll
      for (int j = 0; j < VPL; ++j) {
        const int v = tid + j * blockDim.x;
        if (r < nrows && v < nvec) {
#pragma unroll
          for (int i = 0; i < N; ++i) cur[r][j].v[i] = from_float<T>((to_float(cur[r][j].v[i]) * inv_rms) * w[j][i]);
          if (p.normed != nullptr) reinterpret_cast<uint4*>(p.normed + (row0 + r) * p.hidden)[v] = cur[r][j].raw;
        }
      }
    }
  }

#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    float amax = 0.f;
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      if (tid + j * blockDim.x < nvec) {
#pragma unroll
        for (int i = 0; i < N; ++i) amax = fmaxf(amax, abs_nan_inf(to_float(cur[r][j].v[i])));
      }
    }
    gok::store_warp_partial(amax_part[r], gok::warp_max(amax));
  }
  __syncthreads();
  const int nqvec = p.h_pad / N;
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
    if (r >= nrows) break;
    float amax = 0.f;
#pragma unroll
    for (int i = 0; i < kSlots; ++i) amax = fmaxf(amax, amax_part[r][i]);
    const float scale = row_scale(amax);
    const float inv = __fdiv_rn(1.f, scale);
    QVec* q = reinterpret_cast<QVec*>(p.q + (row0 + r) * p.h_pad);
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = tid + j * blockDim.x;
      if (v < nvec) {
        float s[N];
#pragma unroll
        for (int i = 0; i < N; ++i) s[i] = mul_ieee(to_float(cur[r][j].v[i]), inv);
        if constexpr (N == 8) {
          q[v] = make_uint2(e4m3x4(s[0], s[1], s[2], s[3]), e4m3x4(s[4], s[5], s[6], s[7]));
        } else {
          q[v] = e4m3x4(s[0], s[1], s[2], s[3]);
        }
      }
    }
    for (int v = nvec + tid; v < nqvec; v += blockDim.x) q[v] = QVec{};
    if (tid == 0) p.scale[row0 + r] = scale;
  }
}

template <typename T, typename W, bool NORM, bool ADD>
__global__ void __launch_bounds__(kWarpRowThreads) quant_scalar_kernel(const Params<T, W> p) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  if (row >= p.rows) return;
  const int lane = threadIdx.x % kWarp;
  const int64_t base = row * p.hidden;
  float inv_rms = 1.f;
  if constexpr (NORM) {
    float sum_sq = 0.f;
    for (int c = lane; c < p.hidden; c += kWarp) {
      float f = to_float(p.x[base + c]);
      if constexpr (ADD) {
        const T s = from_float<T>(f + to_float(p.residual[base + c]));
        p.residual_out[base + c] = s;
        f = to_float(s);
      }
      sum_sq = fmaf(f, f, sum_sq);
    }
    inv_rms = rsqrtf(gok::warp_sum(sum_sq) * p.inv_hidden + p.eps);
  }
  // Later passes read what this same lane read (or wrote) above; the normed value is recomputed identically.
  const T* src = ADD ? p.residual_out : p.x;
  auto value = [&](int c) {
    const float f = to_float(src[base + c]);
    if constexpr (NORM) return to_float(from_float<T>((f * inv_rms) * to_float(p.weight[c])));
    return f;
  };
  float amax = 0.f;
  for (int c = lane; c < p.hidden; c += kWarp) amax = fmaxf(amax, abs_nan_inf(value(c)));
  const float scale = row_scale(gok::warp_max(amax));
  const float inv = __fdiv_rn(1.f, scale);
  uint8_t* q = p.q + row * p.h_pad;
  for (int c = lane; c < p.h_pad; c += kWarp) {
    uint8_t b = 0;
    if (c < p.hidden) {
      const float f = value(c);
      if (NORM && p.normed != nullptr) p.normed[base + c] = from_float<T>(f);
      b = __nv_cvt_float_to_fp8(mul_ieee(f, inv), __NV_SATFINITE, __NV_E4M3);
    }
    q[c] = b;
  }
  if (lane == 0) p.scale[row] = scale;
}

template <typename T, typename W, bool NORM, bool ADD>
void launch(const Params<T, W>& p, cudaStream_t stream) {
  constexpr int N = Vec16<T>::N;
  const bool aligned = p.hidden % N == 0 && p.h_pad % N == 0 && gok::is_aligned16(p.x) &&
                       (!NORM || gok::is_aligned16(p.weight)) && gok::is_aligned16(p.normed) &&
                       (!ADD || (gok::is_aligned16(p.residual) && gok::is_aligned16(p.residual_out)));
  const int nvec = p.hidden / N;
  const int threads = std::min(kMaxThreads, std::max(kWarp, (nvec + kWarp - 1) / kWarp * kWarp));
  const int vpl = (nvec + threads - 1) / threads;
  if (!aligned || vpl > 8) {
    const dim3 grid(static_cast<unsigned>((p.rows + kRowsPerBlock - 1) / kRowsPerBlock));
    quant_scalar_kernel<T, W, NORM, ADD><<<grid, kWarpRowThreads, 0, stream>>>(p);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  const bool two_rows = !ADD && p.rows >= kTwoRowsFrom && vpl <= 2;
#define GOK_FP8_VEC(V)                                                                                            \
  do {                                                                                                            \
    if constexpr (!ADD && V <= 2) {                                                                               \
      if (two_rows) {                                                                                             \
        quant_vec_kernel<T, W, V, 2, NORM, ADD><<<static_cast<unsigned>((p.rows + 1) / 2), threads, 0, stream>>>(p); \
        break;                                                                                                    \
      }                                                                                                           \
    }                                                                                                             \
    quant_vec_kernel<T, W, V, 1, NORM, ADD><<<static_cast<unsigned>(p.rows), threads, 0, stream>>>(p);            \
  } while (0)
  if (vpl <= 1) GOK_FP8_VEC(1);
  else if (vpl <= 2) GOK_FP8_VEC(2);
  else if (vpl <= 4) GOK_FP8_VEC(4);
  else GOK_FP8_VEC(8);
#undef GOK_FP8_VEC
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
struct CudaType { using type = T; };
template <> struct CudaType<at::Half> { using type = __half; };
template <> struct CudaType<at::BFloat16> { using type = __nv_bfloat16; };

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() && t.numel() ? reinterpret_cast<T*>(t.data_ptr()) : nullptr;
}

// Weight in fp32 or in x's dtype (any other float weight is converted to fp32 first); pad_quant_fp8 has none.
template <bool NORM, bool ADD>
void dispatch(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& normed, const at::Tensor& residual_out,
              const at::Tensor& x, const at::Tensor& residual, const at::Tensor& weight_in, double eps) {
  const int64_t rows = x.size(0), hidden = x.size(1), h_pad = q.size(1);
  if (rows == 0) return;
  TORCH_CHECK(h_pad <= INT32_MAX && rows <= INT32_MAX, "fp8 activations: h_pad or row count too large");
  at::Tensor weight;
  if constexpr (NORM) {
    weight = (weight_in.scalar_type() == at::kFloat || weight_in.scalar_type() == x.scalar_type())
                 ? weight_in.contiguous()
                 : weight_in.to(at::kFloat).contiguous();
  }
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fp8_act_cuda", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      using T = typename CudaType<scalar_t>::type;
      auto run = [&](auto* w) {
        using W = std::remove_const_t<std::remove_pointer_t<decltype(w)>>;
        const Params<T, W> p{reinterpret_cast<uint8_t*>(q.data_ptr()), scale.data_ptr<float>(), ptr<T>(normed),
                             ptr<T>(residual_out), ptr<T>(x), ptr<T>(residual), w, rows,
                             static_cast<int>(hidden), static_cast<int>(h_pad),
                             hidden ? 1.f / static_cast<float>(hidden) : 0.f, static_cast<float>(eps)};
        launch<T, W, NORM, ADD>(p, stream);
      };
      if constexpr (!NORM) run(static_cast<const T*>(nullptr));
      else if (weight.scalar_type() == at::kFloat) run(static_cast<const float*>(ptr<float>(weight)));
      else run(static_cast<const T*>(ptr<T>(weight)));
    } else {
      TORCH_CHECK(false, "fp8 activations (CUDA): float64 is not supported");
    }
  });
}

void check_x(const char* op, const at::Tensor& x, int64_t h_pad) {
  TORCH_CHECK(x.is_cuda(), op, ": x must be a CUDA tensor");
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous(), op, ": x must be a contiguous (T, H) tensor, got ", x.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16 || dt == at::kFloat, op, ": x must be fp16, bf16 or fp32");
  TORCH_CHECK(x.size(1) <= INT32_MAX && h_pad >= x.size(1), op, ": h_pad must be >= H = ", x.size(1), ", got ",
              h_pad);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> pad_quant_fp8(const at::Tensor& x, int64_t h_pad) {
  check_x("pad_quant_fp8", x, h_pad);
  const c10::cuda::CUDAGuard guard(x.device());
  auto q = at::empty({x.size(0), h_pad}, x.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty({x.size(0)}, x.options().dtype(at::kFloat));
  dispatch<false, false>(q, scale, at::Tensor(), at::Tensor(), x, at::Tensor(), at::Tensor(), 0.0);
  return {q, scale};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rms_norm_quant_fp8(
    const at::Tensor& x, const at::Tensor& weight, double eps, int64_t h_pad,
    const std::optional<at::Tensor>& residual, bool write_normed) {
  check_x("rms_norm_quant_fp8", x, h_pad);
  const int64_t t = x.size(0), h = x.size(1);
  TORCH_CHECK(weight.device() == x.device() && weight.dim() == 1 && weight.size(0) == h &&
                  at::isFloatingType(weight.scalar_type()),
              "rms_norm_quant_fp8: weight must be a floating (H,) tensor on x's device");
  const bool add = residual.has_value();
  if (add) {
    TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type() &&
                    residual->device() == x.device() && residual->is_contiguous(),
                "rms_norm_quant_fp8: residual must match x");
  }
  const c10::cuda::CUDAGuard guard(x.device());
  auto q = at::empty({t, h_pad}, x.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty({t}, x.options().dtype(at::kFloat));
  auto normed = at::empty({write_normed ? t : 0, h}, x.options());
  auto residual_out = at::empty({add ? t : 0, h}, x.options());
  if (add) dispatch<true, true>(q, scale, normed, residual_out, x, *residual, weight, eps);
  else dispatch<true, false>(q, scale, normed, residual_out, x, at::Tensor(), weight, eps);
  return {q, scale, normed, residual_out};
}
