// The per-head sinks (s_aux) of the CUDA attention ops: absent, fp32, or in q's dtype.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <optional>

#include "common/vec.cuh"

namespace gok {

constexpr float kLog2e = 1.4426950408889634f;  // the kernels' softmax runs in base 2

// 0: no sinks, 1: fp32 sinks, 2: sinks in q's dtype; checks s_aux against q (Tq or B, Hq, D).
inline int sink_mode(const std::optional<at::Tensor>& s_aux, const at::Tensor& q) {
  if (!s_aux.has_value()) return 0;
  TORCH_CHECK(s_aux->is_cuda() && s_aux->dim() == 1 && s_aux->size(0) == q.size(1) && s_aux->is_contiguous(),
              "attention: s_aux must be a contiguous (Hq,) CUDA tensor");
  if (s_aux->scalar_type() == at::kFloat) return 1;
  TORCH_CHECK(s_aux->scalar_type() == q.scalar_type(), "attention: s_aux must be float32 or q's dtype");
  return 2;
}

// Sink of query head `head` in base 2 (times log2 e); -inf when there are none.
template <typename T>
__device__ __forceinline__ float sink_log2(const void* sinks, int mode, int head) {
  if (mode == 0) return -INFINITY;
  const float s = mode == 1 ? static_cast<const float*>(sinks)[head] : to_float<T>(static_cast<const T*>(sinks)[head]);
  return s * kLog2e;
}

}  // namespace gok
