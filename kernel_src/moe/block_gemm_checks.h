// Host checks shared by the CUDA expert GEMMs on dispatched row blocks (decode_gemm_cuda.cu, prefill_gemm_cuda.cu):
// the output, the routing weights and the bias, i.e. what memory safety needs of GEMM 1 (gathered rows -> SwiGLU act,
// out (rows, >= N / 2)) and GEMM 2 (act rows -> weighted y rows, out (T * k, >= N)). The Python callers validate
// first and give the detailed errors; the messages here are single literals (common/device.cuh says why).
#pragma once

#include <ATen/ATen.h>

#include <optional>

namespace gok {

inline void check_block_gemm_io(const at::Tensor& a, const std::optional<at::Tensor>& bias, const at::Tensor& out,
                                const at::Tensor& topk_w, const at::Tensor& sorted_pos, int64_t e, int64_t n,
                                int64_t top_k, bool first) {
  TORCH_CHECK(out.scalar_type() == at::kBFloat16 && out.dim() == 2 && out.stride(1) == 1,
              "moe block GEMM: out must be bf16 (rows, cols) with unit column stride");
  if (first) {
    TORCH_CHECK(n % 2 == 0 && out.size(0) >= sorted_pos.numel() && out.size(1) >= n / 2 && top_k >= 1,
                "moe block GEMM: GEMM 1 needs an even N, out (blocks x rows, >= N / 2) and top_k >= 1");
  } else {
    TORCH_CHECK(out.size(1) >= n && topk_w.scalar_type() == at::kFloat && topk_w.is_contiguous() &&
                    topk_w.numel() == out.size(0) && a.size(0) >= sorted_pos.numel(),
                "moe block GEMM: GEMM 2 needs a (blocks x rows), out (T * k, >= N) and float32 topk_w (T * k)");
  }
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == at::kBFloat16 && bias->is_contiguous() && bias->numel() == e * n,
                "moe block GEMM: bias must be contiguous bf16 (E, N)");
  }
}

}  // namespace gok
