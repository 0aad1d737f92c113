// RMSNorm on the CPU, same math and op schema as the CUDA kernels:
//   y = (float(x) * rsqrt(mean(float(x)^2) + eps)) * float(w), cast to x's dtype.
// The fused variant first forms s = dtype(float(x) + float(residual)) (rounded exactly as
// an unfused `x + residual` in x's dtype) and normalises s. Rows run in parallel through
// at::parallel_for (torch's OpenMP pool).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "torch-ext/torch_binding.h"

namespace {

template <typename T, bool ADD>
void rms_norm_rows(T* out, T* residual_out, const T* x, const T* residual, const float* w, int64_t rows,
                   int64_t hidden, float eps) {
  at::parallel_for(0, rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> row(hidden);
    for (int64_t r = begin; r < end; ++r) {
      const int64_t base = r * hidden;
      double sum_sq = 0.0;
      for (int64_t i = 0; i < hidden; ++i) {
        float v = static_cast<float>(x[base + i]);
        if constexpr (ADD) {
          const T s = static_cast<T>(v + static_cast<float>(residual[base + i]));
          residual_out[base + i] = s;
          v = static_cast<float>(s);
        }
        row[i] = v;
        sum_sq += static_cast<double>(v) * v;
      }
      const float inv = 1.0f / std::sqrt(static_cast<float>(sum_sq / hidden) + eps);
      for (int64_t i = 0; i < hidden; ++i) out[base + i] = static_cast<T>((row[i] * inv) * w[i]);
    }
  });
}

void check(const at::Tensor& x, const at::Tensor& weight) {
  TORCH_CHECK(x.device().is_cpu() && weight.device().is_cpu(), "rms_norm (CPU build): tensors must be on the CPU");
  TORCH_CHECK(x.is_contiguous(), "rms_norm: x must be contiguous");
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "rms_norm: weight must have shape (hidden,)");
}

}  // namespace

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  check(x, weight);
  auto out = at::empty_like(x);
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  auto w = weight.to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "rms_norm_cpu", [&] {
    rms_norm_rows<scalar_t, false>(out.data_ptr<scalar_t>(), nullptr, x.data_ptr<scalar_t>(), nullptr,
                                   w.data_ptr<float>(), rows, hidden, static_cast<float>(eps));
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                      const at::Tensor& weight, double eps) {
  check(x, weight);
  TORCH_CHECK(residual.sizes() == x.sizes() && residual.scalar_type() == x.scalar_type() && residual.is_contiguous(),
              "fused_add_rms_norm: residual must match x");
  auto out = at::empty_like(x);
  auto residual_out = at::empty_like(x);
  const int64_t hidden = x.size(-1);
  const int64_t rows = hidden == 0 ? 0 : x.numel() / hidden;
  auto w = weight.to(at::kFloat).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "fused_add_rms_norm_cpu", [&] {
    rms_norm_rows<scalar_t, true>(out.data_ptr<scalar_t>(), residual_out.data_ptr<scalar_t>(),
                                  x.data_ptr<scalar_t>(), residual.data_ptr<scalar_t>(), w.data_ptr<float>(),
                                  rows, hidden, static_cast<float>(eps));
  });
  return {out, residual_out};
}
