// Per-token FP8 (e4m3) activations on the CPU, emulated with c10::Float8_e4m3fn (round to nearest even), the same
// op schemas and math as the CUDA variant's kernels (fp8_act_cuda.cu; Python API: gpt_oss_kernels/quant/fp8_act.py):
//
//   scale[t] = max(amax_t / 448, 2^-126) in fp32 (1 / scale stays finite, an all-zero row quantizes to zeros);
//   q[t, c]  = e4m3(clamp(x[t, c] * (1 / scale[t]), -448, 448)) for c < H, 0 for H <= c < h_pad.
//   A row holding a NaN or an Inf: scale NaN and q NaN (its token's output is NaN downstream, no other's).
//
//   pad_quant_fp8       the above on x (T, H).
//   rms_norm_quant_fp8  RMSNorm (optionally of x + residual, rounded to x's dtype as fused_add_rms_norm does),
//                       rounded to x's dtype exactly as rms_norm returns it, then the above: bit for bit
//                       rms_norm followed by pad_quant_fp8. Returns the normed rows / the new residual when asked.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "torch-ext/torch_binding.h"

namespace {

constexpr float kFp8Max = 448.0f;
constexpr float kMinScale = 1.17549435e-38f;  // 2^-126

// One row of H floats -> h_pad e4m3 values and the row's scale.
void quant_row(const float* v, int64_t h, int64_t h_pad, c10::Float8_e4m3fn* q, float* scale) {
  float amax = 0.f;
  bool finite = true;
  for (int64_t i = 0; i < h; ++i) {
    if (!std::isfinite(v[i])) finite = false;
    amax = std::max(amax, std::fabs(v[i]));
  }
  const float s = finite ? std::max(amax / kFp8Max, kMinScale) : std::numeric_limits<float>::quiet_NaN();
  const float inv = 1.0f / s;
  for (int64_t i = 0; i < h; ++i) {
    const float p = v[i] * inv;
    q[i] = c10::Float8_e4m3fn(std::isnan(p) ? p : std::min(std::max(p, -kFp8Max), kFp8Max));
  }
  for (int64_t i = h; i < h_pad; ++i) q[i] = c10::Float8_e4m3fn(0.f);
  *scale = s;
}

void check_h_pad(const char* op, const at::Tensor& x, int64_t h_pad) {
  TORCH_CHECK(x.dim() == 2, op, ": x must be (T, H), got ", x.sizes());
  TORCH_CHECK(h_pad >= x.size(1), op, ": h_pad must be >= H = ", x.size(1), ", got ", h_pad);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> quantize_rows_fp8_cpu(const at::Tensor& x, int64_t h_pad) {
  const int64_t t = x.size(0), h = x.size(1);
  auto xf = x.to(at::kFloat).contiguous();
  auto q = at::empty({t, h_pad}, x.options().dtype(at::kFloat8_e4m3fn));
  auto scale = at::empty({t}, x.options().dtype(at::kFloat));
  const float* xp = xf.data_ptr<float>();
  auto* qp = q.data_ptr<c10::Float8_e4m3fn>();
  float* sp = scale.data_ptr<float>();
  at::parallel_for(0, t, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) quant_row(xp + r * h, h, h_pad, qp + r * h_pad, sp + r);
  });
  return {q, scale};
}

at::Tensor dequantize_rows_fp8_cpu(const at::Tensor& q, const at::Tensor& scale, int64_t h) {
  return q.narrow(1, 0, h).to(at::kFloat) * scale.unsqueeze(1);
}

std::tuple<at::Tensor, at::Tensor> pad_quant_fp8(const at::Tensor& x, int64_t h_pad) {
  check_h_pad("pad_quant_fp8", x, h_pad);
  return quantize_rows_fp8_cpu(x, h_pad);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rms_norm_quant_fp8(
    const at::Tensor& x, const at::Tensor& weight, double eps, int64_t h_pad,
    const std::optional<at::Tensor>& residual, bool write_normed) {
  check_h_pad("rms_norm_quant_fp8", x, h_pad);
  at::Tensor normed, residual_out;
  if (residual.has_value()) {
    std::tie(normed, residual_out) = fused_add_rms_norm(x.contiguous(), residual->contiguous(), weight, eps);
  } else {
    normed = rms_norm(x.contiguous(), weight, eps);
    residual_out = at::empty({0, x.size(1)}, x.options());
  }
  auto [q, scale] = quantize_rows_fp8_cpu(normed, h_pad);
  if (!write_normed) normed = at::empty({0, x.size(1)}, x.options());
  return {q, scale, normed, residual_out};
}
