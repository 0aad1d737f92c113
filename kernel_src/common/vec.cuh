// Shared device helpers: scalar conversions to/from fp32, 16-byte vector access, warp sums and maxima.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cstdint>

namespace gok {

template <typename T> __device__ __forceinline__ float to_float(T v);
template <> __device__ __forceinline__ float to_float<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_float<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// N = 16 / sizeof(T) elements of T in one 16-byte register group.
template <typename T>
union Vec16 {
  static constexpr int N = 16 / sizeof(T);
  uint4 raw;
  T v[N];
};

// Reads N consecutive elements of W (16-byte aligned; N * sizeof(W) a multiple of 16) as fp32.
template <typename W, int N>
__device__ __forceinline__ void load_float(const W* __restrict__ p, float (&out)[N]) {
  static_assert((N * sizeof(W)) % 16 == 0, "whole 16-byte vectors only");
  constexpr int kLoads = N * sizeof(W) / 16;
#pragma unroll
  for (int l = 0; l < kLoads; ++l) {
    Vec16<W> w;
    w.raw = __ldg(reinterpret_cast<const uint4*>(p) + l);
#pragma unroll
    for (int i = 0; i < Vec16<W>::N; ++i) out[l * Vec16<W>::N + i] = to_float(w.v[i]);
  }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

__host__ __device__ __forceinline__ bool is_aligned16(const void* p) {
  return (reinterpret_cast<std::uintptr_t>(p) & 15u) == 0;
}

}  // namespace gok
