// GPT-OSS MoE block on the CPU, same op schemas as the CUDA variant (torch-ext/torch_binding.cpp).
//
//   moe_route    top-k of the router logits (at::topk: torch.topk's choice among equal logits), softmax
//                over the k values, fp32.
//   moe_dispatch per-expert padded row blocks: sorted_pos[nb * block_m] holds flat slot indices
//                p = token * k + j (-1 for padding), block_expert[nb] the expert of each block
//                (-1 unused); nb = (M + min(E, M) * (block_m - 1)) / block_m, M = T * k: a bound
//                that depends on T alone, so no output shape depends on the routing.
//   moe_finalize out[t] = sum_j y[t * k + j] in fp32, in slot order (deterministic); a slot whose id
//                is outside [0, E) contributes NaN (the CUDA path's clamp-and-flag), or nothing with
//                skip_foreign (its y row is ignored).
//   moe_experts  the expert math of GptOssExperts, grouped by expert through at::mm (the CPU has
//                the ids on the host, so ids outside [0, E) raise here), unless skip_foreign: then
//                such a slot (expert parallelism: another rank's expert, transformers' sentinel id
//                E_local) is computed by no expert and contributes zero, as on CUDA.
//   moe_experts_mxfp4  the same with MXFP4 blocks (the checkpoint's, or kernel words)/scales, each hit expert dequantized
//                (exactly, to float) just before its two matmuls: no copy of all experts.
//   moe_experts_fp8  the same with FP8 (e4m3) weights (E, N, K) and per-channel or 128x128 block scales, FP8 emulated:
//                the tokens and the SwiGLU activations (rounded to the input dtype) quantized per row to e4m3
//                (kernel_src/fp8/fp8_cpu.cpp) and dequantized, each hit expert's weights dequantized to float.
//   finalize_slice  out[t, :h] = sum_j w[t, j] * y[t * k + j, :h] in fp32 (w = 1 without weights), ids outside
//                [0, E) as moe_finalize.
// Intermediates follow the GPU path: matmuls in fp32, the SwiGLU activations rounded to the
// input dtype, each weighted expert output rounded to the input dtype, the k outputs summed in fp32.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "torch-ext/torch_binding.h"

namespace {

int64_t num_blocks_bound(int64_t m, int64_t e, int64_t block_m) {
  if (m == 0) return 0;
  return (m + std::min(e, m) * (block_m - 1)) / block_m;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> moe_route(const at::Tensor& router_logits, int64_t top_k) {
  TORCH_CHECK(router_logits.dim() == 2, "moe_route: router_logits must be (T, E), got ", router_logits.sizes());
  TORCH_CHECK(top_k >= 1 && top_k <= router_logits.size(1), "moe_route: top_k must be in [1, E=",
              router_logits.size(1), "], got ", top_k);
  // at::topk itself, so that the CPU variant picks exactly the experts transformers' router picks
  // (equal logits included: torch.topk on the CPU does not put the lower index first).
  auto [vals, ids] = at::topk(router_logits.to(at::kFloat), top_k, /*dim=*/1, /*largest=*/true, /*sorted=*/true);
  return {at::softmax(vals, 1), ids.to(at::kInt)};
}

std::tuple<at::Tensor, at::Tensor> moe_dispatch(const at::Tensor& topk_ids, int64_t num_experts, int64_t block_m) {
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.scalar_type() == at::kInt, "moe_dispatch: topk_ids must be int32 (T, k)");
  TORCH_CHECK(block_m >= 1 && num_experts >= 1, "moe_dispatch: bad block_m / num_experts");
  const auto ids = topk_ids.contiguous();
  const int64_t m = ids.numel();
  const int64_t nb = num_blocks_bound(m, num_experts, block_m);
  auto sorted_pos = at::full({nb * block_m}, -1, ids.options());
  auto block_expert = at::full({nb}, -1, ids.options());
  const int32_t* id = ids.data_ptr<int32_t>();
  std::vector<int64_t> count(num_experts, 0);
  for (int64_t p = 0; p < m; ++p)
    if (id[p] >= 0 && id[p] < num_experts) ++count[id[p]];
  std::vector<int64_t> cursor(num_experts, 0);
  int64_t row = 0;
  int32_t* be = block_expert.data_ptr<int32_t>();
  for (int64_t e = 0; e < num_experts; ++e) {
    cursor[e] = row;
    const int64_t blocks = (count[e] + block_m - 1) / block_m;
    for (int64_t b = 0; b < blocks; ++b) be[row / block_m + b] = static_cast<int32_t>(e);
    row += blocks * block_m;
  }
  TORCH_CHECK(row <= nb * block_m, "moe_dispatch: internal bound violated");
  int32_t* sp = sorted_pos.data_ptr<int32_t>();
  for (int64_t p = 0; p < m; ++p)
    if (id[p] >= 0 && id[p] < num_experts) sp[cursor[id[p]]++] = static_cast<int32_t>(p);
  return {sorted_pos, block_expert};
}

at::Tensor moe_finalize(const at::Tensor& y, const at::Tensor& topk_ids, int64_t num_experts, bool skip_foreign) {
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.scalar_type() == at::kInt, "moe_finalize: topk_ids must be int32 (T, k)");
  TORCH_CHECK(y.dim() == 2 && y.size(0) == topk_ids.numel(), "moe_finalize: y must be (T * k, H)");
  const int64_t t = topk_ids.size(0), k = topk_ids.size(1), h = y.size(1);
  auto yf = y.contiguous().to(at::kFloat).view({t, k, h});
  auto bad = ((topk_ids < 0) | (topk_ids >= num_experts)).unsqueeze(-1);
  const float fill = skip_foreign ? 0.f : std::numeric_limits<float>::quiet_NaN();
  yf = at::where(bad, at::full({}, fill, yf.options()), yf);
  return yf.sum(1).to(y.scalar_type());
}

namespace {

at::Tensor fp8_roundtrip(const at::Tensor& x) {
  auto [q, s] = quantize_rows_fp8_cpu(x, x.size(1));
  return dequantize_rows_fp8_cpu(q, s, x.size(1));
}

// The expert math of GptOssExperts for the slots routed to each expert, one pair of at::mm per expert that is
// hit. w1(e) gives expert e's (H, 2I) and w2(e) its (I, H) weights as float tensors (views are fine).
template <typename W1, typename W2>
at::Tensor experts_grouped(const char* op, const at::Tensor& hidden, const at::Tensor& topk_ids,
                           const at::Tensor& topk_weights, int64_t e_num, int64_t i2, W1 w1,
                           const std::optional<at::Tensor>& b1, W2 w2, const std::optional<at::Tensor>& b2,
                           double alpha, double limit, bool skip_foreign, bool fp8_act = false) {
  const int64_t t = hidden.size(0), h = hidden.size(1), k = topk_ids.size(1);
  const auto dtype = hidden.scalar_type();
  auto ids = topk_ids.to(at::kLong).contiguous();
  if (ids.numel() > 0 && !skip_foreign) {
    const int64_t lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
    TORCH_CHECK(lo >= 0 && hi < e_num, op, ": topk_ids must be in [0, ", e_num, "), got values in [", lo, ", ", hi,
                "]");
  }
  if (ids.numel() == 0) return at::zeros({t, h}, hidden.options());
  // fp8_act: the tokens as the FP8 GEMMs see them (per-row e4m3, dequantized).
  const auto x = fp8_act ? fp8_roundtrip(hidden) : hidden.to(at::kFloat);
  const auto w = topk_weights.to(at::kFloat).reshape({-1});
  auto flat = ids.reshape({-1});
  // skip_foreign: every id outside [0, E) sorts last (key E) and no expert reads it; its y row stays zero.
  if (skip_foreign) flat = at::where((flat >= 0) & (flat < e_num), flat, at::full({}, e_num, flat.options()));
  const auto token_of = at::arange(t * k, ids.options()).floor_divide(k);
  // Group the (token, slot) pairs by expert on the host: sort once, then one matmul per expert.
  auto [sorted, order] = at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  auto counts = at::bincount(flat, {}, e_num + 1).cpu();
  const int64_t* cnt = counts.data_ptr<int64_t>();
  const float lim = static_cast<float>(limit), alp = static_cast<float>(alpha);
  int64_t start = 0;
  auto y = skip_foreign ? at::zeros({t * k, h}, x.options()) : at::empty({t * k, h}, x.options());
  for (int64_t e = 0; e < e_num; ++e) {
    const int64_t c = cnt[e];
    if (c == 0) continue;
    auto slots = order.narrow(0, start, c);
    start += c;
    auto xe = x.index_select(0, token_of.index_select(0, slots));
    auto gu = at::mm(xe, w1(e));
    if (b1.has_value()) gu = gu + (*b1)[e].to(at::kFloat);
    auto gate = gu.slice(1, 0, i2, 2).clamp_max(lim);
    auto up = gu.slice(1, 1, i2, 2).clamp(-lim, lim);
    auto act = ((up + 1) * gate * at::sigmoid(gate * alp)).to(dtype).to(at::kFloat);
    if (fp8_act) act = fp8_roundtrip(act);
    auto o = at::mm(act, w2(e));
    if (b2.has_value()) o = o + (*b2)[e].to(at::kFloat);
    o = (o * w.index_select(0, slots).unsqueeze(1)).to(dtype).to(at::kFloat);
    y.index_copy_(0, slots, o);
  }
  return y.view({t, k, h}).sum(1).to(dtype);
}

// 2 * e2m1 value of each nibble (sign bit 3): exact small integers, so 2v * 2^(s - 128) is exact in float for
// every scale byte (2^-128 is a float subnormal, 2^127 normal) or overflows to inf, as torch.ldexp does.
constexpr float kTwoE2m1[16] = {0.f, 1.f, 2.f, 3.f, 4.f, 6.f, 8.f, 12.f, -0.f, -1.f, -2.f, -3.f, -4.f, -6.f, -8.f, -12.f};

// Kernel words (quant/mxfp4.py, KERNEL_WORD_BITS): bit kKernelWordBits[p][b] of a word holds bit b of value p.
constexpr int kKernelWordBits[8][4] = {{6, 7, 0, 15},    {22, 23, 16, 31}, {8, 9, 10, 17},  {24, 25, 26, 1},
                                       {18, 19, 20, 27}, {2, 3, 4, 11},    {12, 13, 14, 21}, {28, 29, 30, 5}};

// A kernel word -> the checkpoint's word (value p in nibble p).
uint32_t checkpoint_word(uint32_t w) {
  uint32_t out = 0;
  for (int p = 0; p < 8; ++p)
    for (int b = 0; b < 4; ++b) out |= ((w >> kKernelWordBits[p][b]) & 1u) << (4 * p + b);
  return out;
}

// Expert e of an MXFP4 projection -> its (N, K) weights as float, each value RN_dtype(e2m1 * 2^(s - 127)) (the
// values quant/mxfp4.dequantize_mxfp4 gives for `dtype`; only float16 rounds). blocks: the checkpoint's (E, N,
// K/32, 16) uint8, or kernel words (E, N, K/8) uint32; scales (E, N, K/32) uint8; both contiguous.
at::Tensor dequant_expert(const at::Tensor& blocks, const at::Tensor& scales, int64_t e, at::ScalarType dtype) {
  const bool words = blocks.scalar_type() == at::kUInt32;
  const int64_t n = blocks.size(1), g = scales.size(2), kk = g * 32;
  auto out = at::empty({n, kk}, blocks.options().dtype(at::kFloat));
  const uint8_t* bp = static_cast<const uint8_t*>(blocks.data_ptr()) + e * n * g * 16;
  const uint8_t* sp = scales.data_ptr<uint8_t>() + e * n * g;
  float* op = out.data_ptr<float>();
  const bool half = dtype == at::kHalf;
  at::parallel_for(0, n, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t b = 0; b < g; ++b) {
        const float f = std::ldexp(1.0f, static_cast<int>(sp[r * g + b]) - 128);
        const uint8_t* q = bp + (r * g + b) * 16;
        uint32_t ck[4];  // the block's 16 bytes in the checkpoint's order
        if (words) {
          for (int j = 0; j < 4; ++j) {
            uint32_t w;
            std::memcpy(&w, q + 4 * j, 4);
            ck[j] = checkpoint_word(w);
          }
          q = reinterpret_cast<const uint8_t*>(ck);  // little-endian, as the checkpoint's bytes
        }
        float* o = op + r * kk + b * 32;
        for (int j = 0; j < 16; ++j) {
          float lo = kTwoE2m1[q[j] & 0x0F] * f, hi = kTwoE2m1[q[j] >> 4] * f;
          if (half) {
            lo = static_cast<float>(static_cast<c10::Half>(lo));
            hi = static_cast<float>(static_cast<c10::Half>(hi));
          }
          o[2 * j] = lo;
          o[2 * j + 1] = hi;
        }
      }
    }
  });
  return out;
}

// blocks (E, N, K/32, 16) uint8 or kernel words (E, N, K/8) uint32, against scales (E, N, K/32).
bool packed_ok(const at::Tensor& blocks, const at::Tensor& scales) {
  const auto s = scales.sizes();
  if (blocks.scalar_type() == at::kByte)
    return blocks.dim() == 4 && blocks.size(3) == 16 && blocks.sizes().slice(0, 3) == s;
  return blocks.scalar_type() == at::kUInt32 && blocks.dim() == 3 && blocks.size(0) == s[0] &&
         blocks.size(1) == s[1] && blocks.size(2) == s[2] * 4;
}

}  // namespace

at::Tensor moe_experts(const at::Tensor& hidden, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                       const at::Tensor& gate_up_proj, const std::optional<at::Tensor>& gate_up_proj_bias,
                       const at::Tensor& down_proj, const std::optional<at::Tensor>& down_proj_bias, double alpha,
                       double limit, bool skip_foreign) {
  TORCH_CHECK(hidden.dim() == 2 && topk_ids.dim() == 2 && topk_weights.sizes() == topk_ids.sizes(),
              "moe_experts: hidden (T, H), topk_ids and topk_weights (T, k)");
  const int64_t h = hidden.size(1);
  const int64_t e_num = gate_up_proj.size(0), i2 = gate_up_proj.size(2);
  TORCH_CHECK(gate_up_proj.dim() == 3 && gate_up_proj.size(1) == h && i2 % 2 == 0, "moe_experts: gate_up_proj (E, H, 2I)");
  TORCH_CHECK(down_proj.dim() == 3 && down_proj.size(0) == e_num && down_proj.size(1) == i2 / 2 && down_proj.size(2) == h,
              "moe_experts: down_proj (E, I, H)");
  return experts_grouped(
      "moe_experts", hidden, topk_ids, topk_weights, e_num, i2,
      [&](int64_t e) { return gate_up_proj[e].to(at::kFloat); }, gate_up_proj_bias,
      [&](int64_t e) { return down_proj[e].to(at::kFloat); }, down_proj_bias, alpha, limit, skip_foreign);
}

at::Tensor moe_experts_mxfp4(const at::Tensor& hidden, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                             const at::Tensor& gate_up_blocks, const at::Tensor& gate_up_scales,
                             const std::optional<at::Tensor>& gate_up_bias, const at::Tensor& down_blocks,
                             const at::Tensor& down_scales, const std::optional<at::Tensor>& down_bias, double alpha,
                             double limit, bool skip_foreign) {
  TORCH_CHECK(hidden.dim() == 2 && topk_ids.dim() == 2 && topk_weights.sizes() == topk_ids.sizes(),
              "moe_experts_mxfp4: hidden (T, H), topk_ids and topk_weights (T, k)");
  const int64_t h = hidden.size(1);
  TORCH_CHECK(gate_up_scales.scalar_type() == at::kByte && down_scales.scalar_type() == at::kByte,
              "moe_experts_mxfp4: scales must be uint8");
  TORCH_CHECK(gate_up_scales.dim() == 3 && gate_up_scales.size(2) * 32 == h &&
                  packed_ok(gate_up_blocks, gate_up_scales),
              "moe_experts_mxfp4: gate_up blocks (E, 2I, H/32, 16) uint8 or (E, 2I, H/8) uint32 words, scales "
              "(E, 2I, H/32)");
  const int64_t e_num = gate_up_scales.size(0), i2 = gate_up_scales.size(1);
  TORCH_CHECK(i2 % 2 == 0 && down_scales.dim() == 3 && down_scales.size(0) == e_num && down_scales.size(1) == h &&
                  down_scales.size(2) * 32 == i2 / 2 && packed_ok(down_blocks, down_scales),
              "moe_experts_mxfp4: down blocks (E, H, I/32, 16) uint8 or (E, H, I/8) uint32 words, scales (E, H, I/32)");
  const auto dtype = hidden.scalar_type();
  const auto b1 = gate_up_blocks.contiguous(), s1 = gate_up_scales.contiguous();
  const auto b2 = down_blocks.contiguous(), s2 = down_scales.contiguous();
  // One expert dequantized at a time (only the experts that are hit): (N, K) float, used transposed.
  return experts_grouped(
      "moe_experts_mxfp4", hidden, topk_ids, topk_weights, e_num, i2,
      [&](int64_t e) { return dequant_expert(b1, s1, e, dtype).t(); }, gate_up_bias,
      [&](int64_t e) { return dequant_expert(b2, s2, e, dtype).t(); }, down_bias, alpha, limit, skip_foreign);
}

namespace {

// Expert e of an FP8 projection, q (E, N, K) e4m3 with scale (E, N) or (E, ceil(N/128), ceil(K/128)), as (N, K) float.
at::Tensor dequant_expert_fp8(const at::Tensor& q, const at::Tensor& scale, int64_t e) {
  const int64_t n = q.size(1), kk = q.size(2);
  auto w = q[e].to(at::kFloat);
  if (scale.dim() == 2) return w * scale[e].unsqueeze(1);
  auto full = scale[e].repeat_interleave(128, 0).repeat_interleave(128, 1).narrow(0, 0, n).narrow(1, 0, kk);
  return w * full;
}

void check_fp8_weights(const char* name, const at::Tensor& q, const at::Tensor& s, int64_t e, int64_t n, int64_t kk) {
  TORCH_CHECK(q.scalar_type() == at::kFloat8_e4m3fn && q.dim() == 3 && (e < 0 || q.size(0) == e) && q.size(1) == n &&
                  q.size(2) == kk,
              "moe_experts_fp8: ", name, " must be float8_e4m3fn (E, ", n, ", ", kk, "), got ", q.sizes());
  const bool channel = s.dim() == 2 && s.size(0) == q.size(0) && s.size(1) == n;
  const bool block = s.dim() == 3 && s.size(0) == q.size(0) && s.size(1) == (n + 127) / 128 && s.size(2) == (kk + 127) / 128;
  TORCH_CHECK(s.scalar_type() == at::kFloat && (channel || block), "moe_experts_fp8: ", name,
              " scale must be float32 (E, N) or (E, ceil(N/128), ceil(K/128)), got ", s.sizes());
}

}  // namespace

at::Tensor moe_experts_fp8(const at::Tensor& hidden, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                           const at::Tensor& gate_up_fp8, const at::Tensor& gate_up_scale,
                           const std::optional<at::Tensor>& gate_up_bias, const at::Tensor& down_fp8,
                           const at::Tensor& down_scale, const std::optional<at::Tensor>& down_bias, double alpha,
                           double limit, bool skip_foreign) {
  TORCH_CHECK(hidden.dim() == 2 && topk_ids.dim() == 2 && topk_weights.sizes() == topk_ids.sizes(),
              "moe_experts_fp8: hidden (T, H), topk_ids and topk_weights (T, k)");
  const int64_t h = hidden.size(1);
  TORCH_CHECK(gate_up_fp8.dim() == 3, "moe_experts_fp8: gate_up_fp8 must be (E, 2I, H)");
  const int64_t e_num = gate_up_fp8.size(0), i2 = gate_up_fp8.size(1);
  TORCH_CHECK(i2 % 2 == 0, "moe_experts_fp8: gate_up_fp8 must be (E, 2I, H)");
  check_fp8_weights("gate_up_fp8", gate_up_fp8, gate_up_scale, -1, i2, h);
  check_fp8_weights("down_fp8", down_fp8, down_scale, e_num, h, i2 / 2);
  const auto q1 = gate_up_fp8.contiguous(), q2 = down_fp8.contiguous();
  const auto s1 = gate_up_scale.contiguous(), s2 = down_scale.contiguous();
  return experts_grouped(
      "moe_experts_fp8", hidden, topk_ids, topk_weights, e_num, i2,
      [&](int64_t e) { return dequant_expert_fp8(q1, s1, e).t(); }, gate_up_bias,
      [&](int64_t e) { return dequant_expert_fp8(q2, s2, e).t(); }, down_bias, alpha, limit, skip_foreign,
      /*fp8_act=*/true);
}

at::Tensor finalize_slice(const at::Tensor& y, const at::Tensor& topk_ids, const std::optional<at::Tensor>& topk_weights,
                          int64_t num_experts, int64_t h, bool skip_foreign) {
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.scalar_type() == at::kInt, "finalize_slice: topk_ids must be int32 (T, k)");
  TORCH_CHECK(y.dim() == 2 && y.size(0) == topk_ids.numel() && h >= 0 && h <= y.size(1),
              "finalize_slice: y must be (T * k, H_pad >= h)");
  const int64_t t = topk_ids.size(0), k = topk_ids.size(1);
  auto yf = y.narrow(1, 0, h).to(at::kFloat).reshape({t, k, h});
  if (topk_weights.has_value()) yf = yf * topk_weights->to(at::kFloat).reshape({t, k, 1});
  auto bad = ((topk_ids < 0) | (topk_ids >= num_experts)).unsqueeze(-1);
  const float fill = skip_foreign ? 0.f : std::numeric_limits<float>::quiet_NaN();
  yf = at::where(bad, at::full({}, fill, yf.options()), yf);
  return yf.sum(1).to(y.scalar_type());
}
