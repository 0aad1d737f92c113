// GPT-OSS rotary on the CPU, same math and op schema as the CUDA kernel (rotary_cuda.cu): on halves of
// head_dim, [x1 cos - x2 sin, x2 cos + x1 sin] in fp32, one rounding to x's dtype; cos / sin (1 or B, S,
// D/2) broadcast over the heads at unsqueeze_dim. rotary_kv_cache: the rotated k and v copied into the caches at
// the given positions (index_copy_: positions outside [0, L) raise, where CUDA skips them).
#include <ATen/ATen.h>

#include <tuple>

#include "torch-ext/torch_binding.h"

namespace {

at::Tensor rotate(const at::Tensor& x, const at::Tensor& c, const at::Tensor& s) {
  auto out = at::empty_like(x);
  if (x.numel() == 0) return out;
  const auto halves = x.to(at::kFloat).chunk(2, -1);
  out.copy_(at::cat({halves[0] * c - halves[1] * s, halves[1] * c + halves[0] * s}, -1));
  return out;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rotary_pos_emb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                  const at::Tensor& sin, int64_t unsqueeze_dim) {
  TORCH_CHECK(q.device().is_cpu() && k.device().is_cpu() && cos.device().is_cpu() && sin.device().is_cpu(),
              "rotary_pos_emb (CPU build): tensors must be on the CPU");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && cos.dim() == 3 && sin.dim() == 3,
              "rotary_pos_emb: q and k must be 4-D, cos and sin 3-D");
  const auto c = cos.to(at::kFloat).unsqueeze(unsqueeze_dim);
  const auto s = sin.to(at::kFloat).unsqueeze(unsqueeze_dim);
  return {rotate(q, c, s), rotate(k, c, s)};
}

at::Tensor rotary_kv_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                           const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& index,
                           int64_t unsqueeze_dim) {
  const auto [q_out, k_out] = rotary_pos_emb(q, k, cos, sin, unsqueeze_dim);
  TORCH_CHECK(v.device().is_cpu() && k_cache.device().is_cpu() && v_cache.device().is_cpu() && index.device().is_cpu(),
              "rotary_kv_cache (CPU build): tensors must be on the CPU");
  const int64_t hd = unsqueeze_dim < 0 ? unsqueeze_dim + 4 : unsqueeze_dim;
  // (B, S, Hkv, D) rows into the (B, L, Hkv, D) caches
  const auto bshd = [hd](const at::Tensor& t) { return hd == 1 ? t.transpose(1, 2) : t; };
  k_cache.index_copy_(1, index, bshd(k_out));
  v_cache.index_copy_(1, index, bshd(v));
  return q_out;
}
