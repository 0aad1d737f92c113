// Row-per-block building blocks shared by rmsnorm_cuda.cu and fp8_act_cuda.cu: a block holds ROWS rows as 16-byte
// vectors in registers, thread t taking vectors t + blockDim.x * j (j < VPL, v < nvec), so each element is read once.
#pragma once

#include "common/vec.cuh"

namespace gok {

// Streaming loads (read once) of the block's rows row0 .. row0 + nrows - 1 of x (rows of `hidden` elements).
template <typename T, int VPL, int ROWS>
__device__ __forceinline__ void load_rows(Vec16<T> (&cur)[ROWS][VPL], const T* x, int64_t row0, int nrows,
                                          int hidden, int nvec) {
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = threadIdx.x + j * blockDim.x;
      if (r < nrows && v < nvec) cur[r][j].raw = __ldcs(reinterpret_cast<const uint4*>(x + (row0 + r) * hidden) + v);
    }
  }
}

// cur = T(float(cur) + float(residual)), rounded as an unfused x + residual, also written to residual_out.
template <typename T, int VPL, int ROWS>
__device__ __forceinline__ void add_residual_rows(Vec16<T> (&cur)[ROWS][VPL], const T* residual, T* residual_out,
                                                  int64_t row0, int nrows, int hidden, int nvec) {
  constexpr int N = Vec16<T>::N;
  Vec16<T> res[ROWS][VPL];
  load_rows<T, VPL, ROWS>(res, residual, row0, nrows, hidden, nvec);
#pragma unroll
  for (int r = 0; r < ROWS; ++r) {
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int v = threadIdx.x + j * blockDim.x;
      if (r < nrows && v < nvec) {
#pragma unroll
        for (int i = 0; i < N; ++i) cur[r][j].v[i] = from_float<T>(to_float(cur[r][j].v[i]) + to_float(res[r][j].v[i]));
        reinterpret_cast<uint4*>(residual_out + (row0 + r) * hidden)[v] = cur[r][j].raw;
      }
    }
  }
}

// This thread's sum of squares of one row's vectors.
template <typename T, int VPL>
__device__ __forceinline__ float thread_sum_sq(const Vec16<T> (&row)[VPL], int nvec) {
  float sum_sq = 0.f;
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    if (threadIdx.x + j * blockDim.x < nvec) {
#pragma unroll
      for (int i = 0; i < Vec16<T>::N; ++i) {
        const float f = to_float(row[j].v[i]);
        sum_sq = fmaf(f, f, sum_sq);
      }
    }
  }
  return sum_sq;
}

// A warp-reduced value into its warp's slot of part (lane 0), the slots of warps the block does not have zeroed,
// so that after a barrier every thread can reduce all SLOTS entries (a fixed-length loop).
template <int SLOTS>
__device__ __forceinline__ void store_warp_partial(float (&part)[SLOTS], float v) {
  const int tid = threadIdx.x, nwarps = blockDim.x / 32;
  if (tid % 32 == 0) part[tid / 32] = v;
  if (tid >= nwarps && tid < SLOTS) part[tid] = 0.f;
}

}  // namespace gok
