// GPT-OSS MoE block, the memory-bound CUDA stages (the grouped GEMMs are Triton:
// torch-ext/gpt_oss_kernels/moe/grouped_gemm.py). Semantics are those of moe_cpu.cpp.
//
//   moe_route    one warp per token: k rounds of a warp arg-max over the E logits held in
//                registers (NaN ranks highest, ties go to the lower index, as torch.topk), then a
//                softmax over the k winners in fp32. Writes fp32 weights and int32 ids.
//   moe_dispatch one block: per-expert counts in shared memory (warp-aggregated atomics through
//                __match_any_sync), padded offsets, block -> expert table, and the permutation
//                (flat slot index per padded row, -1 for padding). Buffers are sized from T * k only:
//                nb = (M + min(E, M) * (block_m - 1)) / block_m blocks of block_m rows. Ids outside
//                [0, E) are routed nowhere (clamp-and-flag: moe_finalize turns them into NaN).
//   moe_finalize out[t] = sum_j y[t * k + j] in fp32, slot order (deterministic); 16-byte vectors.
//                A slot whose id is outside [0, E) (its y row was never written) makes the token's row
//                NaN, or with skip_foreign (expert parallelism: another rank's expert) is not read:
//                it contributes zero.
//   moe_prepare  the eager/graph fast path: router GEMM, route, dispatch in one host call; at
//                decode sizes on sm_90 one cluster launch does all three (moe_small_prepare_kernel).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <cooperative_groups.h>

#include <climits>
#include <cstdlib>

#include "common/device.cuh"
#include "common/vec.cuh"
#include "torch-ext/torch_binding.h"

namespace {

using gok::from_float;
using gok::to_float;
using gok::Vec16;
namespace cg = cooperative_groups;

constexpr int kWarp = 32;

// --- route --------------------------------------------------------------------------------

__device__ __forceinline__ bool route_better(float a, int ai, float b, int bi) {
  if (bi == INT_MAX) return ai != INT_MAX;
  if (ai == INT_MAX) return false;
  const bool an = isnan(a), bn = isnan(b);
  if (an != bn) return an;
  if (!an && a != b) return a > b;
  return ai < bi;
}

constexpr int kRouteWarps = 8;

// One warp routes one token: v[j] is the logit of expert lane + 32 j. k rounds of a warp arg-max, then
// the softmax over the k winners; lane r < k writes slot r of the token's weights and ids.
template <typename T, int VPL>
__device__ __forceinline__ void route_warp(const float (&v)[VPL], int64_t row, int lane, int num_experts, int top_k,
                                           float* __restrict__ weights, int32_t* __restrict__ ids,
                                           T* __restrict__ weights_lo) {
  unsigned taken = 0;
  float my_val = 0.f;
  int my_id = 0;
  for (int r = 0; r < top_k; ++r) {
    float bv = 0.f;
    int bi = INT_MAX;
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int e = lane + j * kWarp;
      if (e < num_experts && !((taken >> j) & 1u) && route_better(v[j], e, bv, bi)) {
        bv = v[j];
        bi = e;
      }
    }
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, off);
      if (route_better(ov, oi, bv, bi)) {
        bv = ov;
        bi = oi;
      }
    }
    if ((bi & (kWarp - 1)) == lane) taken |= 1u << (bi / kWarp);
    if (lane == r) {
      my_val = bv;
      my_id = bi;
    }
  }
  const float mx = __shfl_sync(0xffffffffu, my_val, 0);
  const float ex = lane < top_k ? expf(my_val - mx) : 0.f;
  const float sum = gok::warp_sum(ex);
  if (lane < top_k) {
    weights[row * top_k + lane] = ex / sum;
    ids[row * top_k + lane] = my_id;
    if (weights_lo != nullptr) weights_lo[row * top_k + lane] = from_float<T>(ex / sum);
  }
}

template <typename T, int VPL>
__global__ void __launch_bounds__(kRouteWarps * kWarp)
moe_route_kernel(const T* __restrict__ logits, int64_t rows, int num_experts, int top_k,
                 float* __restrict__ weights, int32_t* __restrict__ ids, T* __restrict__ weights_lo) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRouteWarps + threadIdx.x / kWarp;
  if (row >= rows) return;
  const int lane = threadIdx.x % kWarp;
  const T* src = logits + row * num_experts;
  float v[VPL];
#pragma unroll
  for (int j = 0; j < VPL; ++j) {
    const int e = lane + j * kWarp;
    v[j] = e < num_experts ? to_float(src[e]) : 0.f;
  }
  route_warp<T, VPL>(v, row, lane, num_experts, top_k, weights, ids, weights_lo);
}

template <typename T>
void launch_route(const at::Tensor& logits, int top_k, at::Tensor& w, at::Tensor& ids, cudaStream_t stream,
                  at::Tensor* w_lo = nullptr) {
  const int64_t rows = logits.size(0);
  const int e = static_cast<int>(logits.size(1));
  const dim3 grid(static_cast<unsigned>((rows + kRouteWarps - 1) / kRouteWarps));
  const dim3 block(kRouteWarps * kWarp);
  const T* src = reinterpret_cast<const T*>(logits.data_ptr());
  float* wp = w.data_ptr<float>();
  int32_t* ip = ids.data_ptr<int32_t>();
  T* lp = w_lo != nullptr ? reinterpret_cast<T*>(w_lo->data_ptr()) : nullptr;
#define GOK_ROUTE(VPL) moe_route_kernel<T, VPL><<<grid, block, 0, stream>>>(src, rows, e, top_k, wp, ip, lp)
  if (e <= 32) GOK_ROUTE(1);
  else if (e <= 64) GOK_ROUTE(2);
  else if (e <= 128) GOK_ROUTE(4);
  else if (e <= 256) GOK_ROUTE(8);
  else if (e <= 512) GOK_ROUTE(16);
  else GOK_ROUTE(32);
#undef GOK_ROUTE
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// --- dispatch -----------------------------------------------------------------------------

constexpr int kDispatchThreads = 1024;
constexpr int kUnroll = 8;

__global__ void __launch_bounds__(kDispatchThreads)
moe_dispatch_kernel(const int32_t* __restrict__ ids, int m, int num_experts, int block_m, int nb,
                    int32_t* __restrict__ sorted_pos, int32_t* __restrict__ block_expert) {
  extern __shared__ int smem[];
  int* count = smem;
  int* cursor = smem + num_experts;
  const int tid = threadIdx.x;
  const int lane = tid % kWarp;
  for (int e = tid; e < num_experts; e += blockDim.x) count[e] = 0;
  for (int i = tid; i < nb * block_m; i += blockDim.x) sorted_pos[i] = -1;
  for (int i = tid; i < nb; i += blockDim.x) block_expert[i] = -1;
  __syncthreads();
  // Whole warps iterate together so that __match_any_sync sees all 32 lanes. kUnroll ids per
  // thread are loaded before the first is used: one block walks all T * k ids twice, so the
  // loop is bound by load latency, not by the atomics.
  const int stride = blockDim.x * kUnroll;
  const int m_round = (m + stride - 1) / stride * stride;
  for (int base = tid; base < m_round; base += stride) {
    int ev[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = base + u * blockDim.x;
      ev[u] = p < m ? __ldg(ids + p) : -1;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int e = ev[u];
      const bool ok = e >= 0 && e < num_experts;
      const unsigned peers = __match_any_sync(0xffffffffu, ok ? e : -1);
      if (ok && lane == __ffs(peers) - 1) atomicAdd(&count[e], __popc(peers));
    }
  }
  __syncthreads();
  if (tid == 0) {
    int row = 0;
    for (int e = 0; e < num_experts; ++e) {
      cursor[e] = row;
      row += (count[e] + block_m - 1) / block_m * block_m;
    }
  }
  __syncthreads();
  for (int e = tid; e < num_experts; e += blockDim.x) {
    const int first = cursor[e] / block_m;
    const int blocks = (count[e] + block_m - 1) / block_m;
    for (int b = 0; b < blocks; ++b) block_expert[first + b] = e;
  }
  __syncthreads();
  const unsigned lt_mask = (1u << lane) - 1u;
  for (int base = tid; base < m_round; base += stride) {
    int ev[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = base + u * blockDim.x;
      ev[u] = p < m ? __ldg(ids + p) : -1;
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int p = base + u * blockDim.x;
      const int e = ev[u];
      const bool ok = e >= 0 && e < num_experts;
      const unsigned peers = __match_any_sync(0xffffffffu, ok ? e : -1);
      const int leader = __ffs(peers) - 1;
      int slot = 0;
      if (ok && lane == leader) slot = atomicAdd(&cursor[e], __popc(peers));
      slot = __shfl_sync(0xffffffffu, slot, leader);
      if (ok) sorted_pos[slot + __popc(peers & lt_mask)] = p;
    }
  }
}

// Large M: two kernels over kChunk-id chunks instead of one block walking all ids twice.
// count: per-chunk expert histogram to blk[g * E + e]; the last chunk to finish (atomic ticket)
// turns the histograms into each chunk's first slot per expert (expert starts padded to block_m),
// writes block_expert and every padding / unused row. scatter: each chunk places its ids from
// its own offsets. Row order inside an expert depends on atomics; every row's result does not.
constexpr int kMBThreads = 256;
constexpr int kMBPer = 8;
constexpr int kChunk = kMBThreads * kMBPer;

__global__ void __launch_bounds__(kMBThreads)
moe_dispatch_count_kernel(const int32_t* __restrict__ ids, int m, int num_experts, int block_m, int nb,
                          int* __restrict__ blk, unsigned* __restrict__ ticket, int32_t* __restrict__ sorted_pos,
                          int32_t* __restrict__ block_expert) {
  extern __shared__ int smem[];
  int* cnt = smem;                    // E
  int* start = smem + num_experts;    // E
  __shared__ bool last;
  __shared__ int used_rows;
  const int tid = threadIdx.x;
  const int g = blockIdx.x;
  const int G = gridDim.x;
  for (int e = tid; e < num_experts; e += kMBThreads) cnt[e] = 0;
  __syncthreads();
  int ev[kMBPer];
#pragma unroll
  for (int u = 0; u < kMBPer; ++u) {
    const int p = g * kChunk + u * kMBThreads + tid;
    ev[u] = p < m ? ids[p] : -1;
  }
#pragma unroll
  for (int u = 0; u < kMBPer; ++u)
    if (ev[u] >= 0 && ev[u] < num_experts) atomicAdd(&cnt[ev[u]], 1);
  __syncthreads();
  for (int e = tid; e < num_experts; e += kMBThreads) blk[static_cast<int64_t>(g) * num_experts + e] = cnt[e];
  __threadfence();
  __syncthreads();
  if (tid == 0) last = atomicAdd(ticket, 1u) == static_cast<unsigned>(G - 1);
  __syncthreads();
  if (!last) return;
  __threadfence();
  for (int e = tid; e < num_experts; e += kMBThreads) {
    int tot = 0;
    for (int b = 0; b < G; ++b) tot += __ldcg(blk + static_cast<int64_t>(b) * num_experts + e);
    cnt[e] = tot;
  }
  __syncthreads();
  if (tid == 0) {
    int row = 0;
    for (int e = 0; e < num_experts; ++e) {
      start[e] = row;
      row += (cnt[e] + block_m - 1) / block_m * block_m;
    }
    used_rows = row;
  }
  __syncthreads();
  for (int e = tid; e < num_experts; e += kMBThreads) {
    int run = start[e];
    for (int b = 0; b < G; ++b) {
      int* c = blk + static_cast<int64_t>(b) * num_experts + e;
      const int v = __ldcg(c);
      *c = run;
      run += v;
    }
    const int padded = (cnt[e] + block_m - 1) / block_m * block_m;
    for (int r = start[e] + cnt[e]; r < start[e] + padded; ++r) sorted_pos[r] = -1;
    for (int b = 0; b < padded / block_m; ++b) block_expert[start[e] / block_m + b] = e;
  }
  for (int r = used_rows + tid; r < nb * block_m; r += kMBThreads) sorted_pos[r] = -1;
  for (int b = used_rows / block_m + tid; b < nb; b += kMBThreads) block_expert[b] = -1;
}

__global__ void __launch_bounds__(kMBThreads)
moe_dispatch_scatter_kernel(const int32_t* __restrict__ ids, int m, int num_experts, const int* __restrict__ blk,
                            int32_t* __restrict__ sorted_pos) {
  extern __shared__ int cur[];
  const int tid = threadIdx.x;
  const int g = blockIdx.x;
  for (int e = tid; e < num_experts; e += kMBThreads) cur[e] = blk[static_cast<int64_t>(g) * num_experts + e];
  __syncthreads();
  int ev[kMBPer];
#pragma unroll
  for (int u = 0; u < kMBPer; ++u) {
    const int p = g * kChunk + u * kMBThreads + tid;
    ev[u] = p < m ? __ldg(ids + p) : -1;
  }
#pragma unroll
  for (int u = 0; u < kMBPer; ++u) {
    const int p = g * kChunk + u * kMBThreads + tid;
    if (ev[u] >= 0 && ev[u] < num_experts) sorted_pos[atomicAdd(&cur[ev[u]], 1)] = p;
  }
}

// --- finalize -----------------------------------------------------------------------------

constexpr int kFinThreads = 128;

template <typename T>
__global__ void __launch_bounds__(kFinThreads)
moe_finalize_vec_kernel(const T* __restrict__ y, const int32_t* __restrict__ ids, T* __restrict__ out, int top_k,
                        int hidden, int num_experts, bool skip_foreign) {
  constexpr int N = Vec16<T>::N;
  const int64_t t = blockIdx.x;
  const int v = blockIdx.y * kFinThreads + threadIdx.x;
  if (v * N >= hidden) return;
  float acc[N];
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i] = 0.f;
  bool bad = false;
  for (int j = 0; j < top_k; ++j) {
    const int e = ids[t * top_k + j];
    if (e < 0 || e >= num_experts) {
      bad |= !skip_foreign;
      continue;
    }
    Vec16<T> r;
    r.raw = __ldcs(reinterpret_cast<const uint4*>(y + (t * top_k + j) * hidden) + v);
#pragma unroll
    for (int i = 0; i < N; ++i) acc[i] += to_float(r.v[i]);
  }
  Vec16<T> o;
#pragma unroll
  for (int i = 0; i < N; ++i) o.v[i] = from_float<T>(bad ? __int_as_float(0x7fc00000) : acc[i]);
  reinterpret_cast<uint4*>(out + t * hidden)[v] = o.raw;
}

template <typename T>
__global__ void __launch_bounds__(kFinThreads)
moe_finalize_scalar_kernel(const T* __restrict__ y, const int32_t* __restrict__ ids, T* __restrict__ out, int top_k,
                           int hidden, int num_experts, bool skip_foreign) {
  const int64_t t = blockIdx.x;
  for (int c = blockIdx.y * kFinThreads + threadIdx.x; c < hidden; c += gridDim.y * kFinThreads) {
    float acc = 0.f;
    bool bad = false;
    for (int j = 0; j < top_k; ++j) {
      const int e = ids[t * top_k + j];
      if (e < 0 || e >= num_experts) {
        bad |= !skip_foreign;
        continue;
      }
      acc += to_float(y[(t * top_k + j) * hidden + c]);
    }
    out[t * hidden + c] = from_float<T>(bad ? __int_as_float(0x7fc00000) : acc);
  }
}

template <typename T>
void launch_finalize(const at::Tensor& y, const at::Tensor& ids, at::Tensor& out, int num_experts, bool skip_foreign,
                     cudaStream_t stream) {
  const int64_t t = ids.size(0);
  const int k = static_cast<int>(ids.size(1));
  const int h = static_cast<int>(y.size(1));
  constexpr int N = Vec16<T>::N;
  const T* yp = reinterpret_cast<const T*>(y.data_ptr());
  T* op = reinterpret_cast<T*>(out.data_ptr());
  const int32_t* ip = ids.data_ptr<int32_t>();
  if (h % N == 0 && gok::is_aligned16(yp) && gok::is_aligned16(op)) {
    const dim3 grid(static_cast<unsigned>(t), static_cast<unsigned>((h / N + kFinThreads - 1) / kFinThreads));
    moe_finalize_vec_kernel<T><<<grid, kFinThreads, 0, stream>>>(yp, ip, op, k, h, num_experts, skip_foreign);
  } else {
    const dim3 grid(static_cast<unsigned>(t), static_cast<unsigned>((h + kFinThreads - 1) / kFinThreads));
    moe_finalize_scalar_kernel<T><<<grid, kFinThreads, 0, stream>>>(yp, ip, op, k, h, num_experts, skip_foreign);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

int64_t num_blocks_bound(int64_t m, int64_t e, int64_t block_m) {
  if (m == 0) return 0;
  return (m + std::min(e, m) * (block_m - 1)) / block_m;
}

void launch_dispatch(const at::Tensor& ids, int64_t num_experts, int64_t block_m, int64_t nb, at::Tensor& sorted_pos,
                     at::Tensor& block_expert, cudaStream_t stream) {
  const int64_t m = ids.numel();
  const size_t smem = 2 * num_experts * sizeof(int);
  if (m > 4 * kChunk) {
    const int64_t G = (m + kChunk - 1) / kChunk;
    auto ws = at::empty({G * num_experts + 1}, ids.options());
    unsigned* ticket = reinterpret_cast<unsigned*>(ws.data_ptr<int32_t>() + G * num_experts);
    C10_CUDA_CHECK(cudaMemsetAsync(ticket, 0, sizeof(unsigned), stream));
    moe_dispatch_count_kernel<<<static_cast<unsigned>(G), kMBThreads, smem, stream>>>(
        ids.data_ptr<int32_t>(), static_cast<int>(m), static_cast<int>(num_experts), static_cast<int>(block_m),
        static_cast<int>(nb), ws.data_ptr<int32_t>(), ticket, sorted_pos.data_ptr<int32_t>(),
        block_expert.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    moe_dispatch_scatter_kernel<<<static_cast<unsigned>(G), kMBThreads, num_experts * sizeof(int), stream>>>(
        ids.data_ptr<int32_t>(), static_cast<int>(m), static_cast<int>(num_experts), ws.data_ptr<int32_t>(),
        sorted_pos.data_ptr<int32_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  moe_dispatch_kernel<<<1, kDispatchThreads, smem, stream>>>(
      ids.data_ptr<int32_t>(), static_cast<int>(ids.numel()), static_cast<int>(num_experts),
      static_cast<int>(block_m), static_cast<int>(nb), sorted_pos.data_ptr<int32_t>(), block_expert.data_ptr<int32_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// --- decode-sized batches: router GEMM + route + dispatch in one cluster launch ------------
// At T * k <= 64 the router GEMM (cuBLAS split-K: two kernels), route and dispatch are four launches
// of latency-bound work (ncu at T=1: 6.5 + 3.8 + 4.2 + 7.7 us). Here one cluster of 8 CTAs does all of
// it: CTA r computes the logits of experts [r * ceil(E/8), ...) for every token (reading 1/8 of the
// router weight: in the decode probes one SM read only ~20-25 GB/s, so one CTA alone would spend
// ~8 us on its 184 KB) and writes them into CTA 0's shared memory (DSMEM); after the cluster
// barrier CTA 0 routes each token (one warp per token, route_warp,
// logits rounded to the activation dtype first, as the cuBLAS path's output is) and dispatches: the
// slots of each expert in slot order, padded to block_m rows, layout as moe_dispatch_kernel.
// E <= 128 (gpt-oss-120b: 16 router rows per CTA, 92 KB staged), above E = 64 only up to 64 pairs per CTA (below).
// Threads per CTA: 256 while every (token, expert) pair of a CTA has its own warp (T * ceil(E / 8) <= 8), 1024 above,
// where 8 warps each walked several pairs in turn (H100, 2026-12-07, CUDA graph, op alone: T = 16 18.03 -> 13.29 us,
// T = 4 9.08 -> 8.41; T = 1 7.32 against 7.58 with 1024; unrolling the logit loop changed nothing;
// docs/decisions-moe.md).
constexpr int kSmallCluster = 8;
constexpr int kSmallThreadsFew = 256, kSmallThreadsMany = 1024;
constexpr int kSmallMaxT = 16;
constexpr int kSmallMaxM = 64;  // T * k
constexpr int kSmallMaxE = 128;
// Staged router rows + hidden rows, bytes (at H = 2880: 138 KB at E = 64, T = 16; 115 KB at E = 128, T = 4).
constexpr int kSmallStageMax = 160 * 1024;

struct SmallShared {
  float logits[kSmallMaxT * kSmallMaxE];
  int ids[kSmallMaxM];
  int count[kSmallMaxE];
  int start[kSmallMaxE];
};
static_assert(sizeof(SmallShared) + kSmallStageMax <= 227 * 1024, "moe_small_prepare: over sm_90's shared memory");

template <typename T, int VPL, int kSmallThreads>
__global__ void __launch_bounds__(kSmallThreads)
moe_small_prepare_kernel(const T* __restrict__ hidden, int t_rows, int h, const T* __restrict__ rw,
                         const T* __restrict__ rb, int num_experts, int top_k, int block_m, int nb,
                         float* __restrict__ weights, T* __restrict__ weights_lo, int32_t* __restrict__ ids,
                         int32_t* __restrict__ sorted_pos, int32_t* __restrict__ block_expert) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  __shared__ SmallShared sh;
  extern __shared__ __align__(16) unsigned char stage[];  // this CTA's router rows, then the T hidden rows
  cg::cluster_group cluster = cg::this_cluster();
  const int rank = static_cast<int>(cluster.block_rank());
  const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
  const int per = (num_experts + kSmallCluster - 1) / kSmallCluster;
  const int e0 = rank * per;
  const int ne = max(min(per, num_experts - e0), 0);
  // Stage the operands with cp.async, every 16-byte chunk in flight at once (a register loop waits one
  // memory latency per vector: 15 us at T=1 under ncu).
  T* ws = reinterpret_cast<T*>(stage);
  T* xs = ws + static_cast<int64_t>(ne) * h;
  const int wchunks = ne * h / 8, xchunks = ne > 0 ? t_rows * h / 8 : 0;
  for (int c = threadIdx.x; c < wchunks + xchunks; c += kSmallThreads) {
    const T* src = c < wchunks ? rw + static_cast<int64_t>(e0) * h + c * 8 : hidden + (c - wchunks) * 8;
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(ws + c * 8));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src) : "memory");
  }
  asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::: "memory");
  float* leader_logits = cluster.map_shared_rank(sh.logits, 0);
  cluster.sync();  // staged rows visible to the CTA; every CTA of the cluster runs (CTA 0's shared memory exists)
  // Logits: warp w takes (token, expert) pairs w, w + 8, ...; lanes stride over 16-byte vectors of H.
  for (int pair = warp; pair < t_rows * ne; pair += kSmallThreads / kWarp) {
    const int t = pair / ne, el = pair % ne, e = e0 + el;
    const T* x = xs + static_cast<int64_t>(t) * h;
    const T* w = ws + static_cast<int64_t>(el) * h;
    float acc = 0.f;
    for (int i = lane * 8; i < h; i += kWarp * 8) {
      Vec16<T> xv, wv;
      xv.raw = *reinterpret_cast<const uint4*>(x + i);
      wv.raw = *reinterpret_cast<const uint4*>(w + i);
#pragma unroll
      for (int j = 0; j < 8; ++j) acc += to_float(xv.v[j]) * to_float(wv.v[j]);
    }
    acc = gok::warp_sum(acc);
    if (lane == 0) {
      if (rb != nullptr) acc += to_float(rb[e]);
      leader_logits[t * num_experts + e] = to_float(from_float<T>(acc));
    }
  }
  cluster.sync();  // every logit is in CTA 0's shared memory
  if (rank != 0) return;
  // Route: one warp per token.
  for (int t = warp; t < t_rows; t += kSmallThreads / kWarp) {
    float v[VPL];
#pragma unroll
    for (int j = 0; j < VPL; ++j) {
      const int e = lane + j * kWarp;
      v[j] = e < num_experts ? sh.logits[t * num_experts + e] : 0.f;
    }
    route_warp<T, VPL>(v, t, lane, num_experts, top_k, weights, ids, weights_lo);
    if (lane < top_k) sh.ids[t * top_k + lane] = ids[static_cast<int64_t>(t) * top_k + lane];
  }
  const int m = t_rows * top_k;
  for (int e = threadIdx.x; e < num_experts; e += kSmallThreads) sh.count[e] = 0;
  for (int i = threadIdx.x; i < nb * block_m; i += kSmallThreads) sorted_pos[i] = -1;
  for (int i = threadIdx.x; i < nb; i += kSmallThreads) block_expert[i] = -1;
  __syncthreads();
  if (threadIdx.x < m) atomicAdd(&sh.count[sh.ids[threadIdx.x]], 1);
  __syncthreads();
  if (threadIdx.x == 0) {  // padded start row of each expert (E <= 256 serial adds)
    int row = 0;
    for (int e = 0; e < num_experts; ++e) {
      sh.start[e] = row;
      row += (sh.count[e] + block_m - 1) / block_m * block_m;
    }
  }
  __syncthreads();  // also orders the -1 fill before the placement below
  for (int e = threadIdx.x; e < num_experts; e += kSmallThreads) {
    const int blocks = (sh.count[e] + block_m - 1) / block_m;
    for (int b = 0; b < blocks; ++b) block_expert[sh.start[e] / block_m + b] = e;
  }
  if (threadIdx.x < m) {  // slot p's place: after the earlier slots of its expert
    const int p = threadIdx.x, e = sh.ids[p];
    int rank_in = 0;
    for (int q = 0; q < p; ++q) rank_in += sh.ids[q] == e;
    sorted_pos[sh.start[e] + rank_in] = p;
  }
#else
  __trap();  // launched only on sm_90+ (host check)
#endif
}

// True when the decode-sized fused path ran.
template <typename T>
bool launch_small_prepare(const at::Tensor& hidden, const at::Tensor& rw, const std::optional<at::Tensor>& rb,
                          int top_k, int block_m, int64_t nb, at::Tensor& w, at::Tensor& w_lo, at::Tensor& ids,
                          at::Tensor& sorted_pos, at::Tensor& block_expert, cudaStream_t stream) {
  const int64_t t = hidden.size(0), h = hidden.size(1), e = rw.size(0);
  static const bool enabled = [] {
    const char* env = std::getenv("GOK_MOE_SMALL_PREPARE");
    return env == nullptr || env[0] != '0';
  }();
  const int64_t per = (e + kSmallCluster - 1) / kSmallCluster;
  const int64_t stage = (per + t) * h * static_cast<int64_t>(sizeof(T));
  if (!enabled || t < 1 || t > kSmallMaxT || t * top_k > kSmallMaxM || e > kSmallMaxE || h % 8 != 0 ||
      stage > kSmallStageMax || !rw.is_contiguous() || !gok::is_aligned16(hidden.data_ptr()) ||
      !gok::is_aligned16(rw.data_ptr()) || (rb.has_value() && !rb->is_contiguous())) {
    return false;
  }
  const int dev = hidden.get_device();
  // E > 64 (gpt-oss-120b): 16 router rows per CTA make the logit loop the long pole above 64 (token, expert) pairs
  // per CTA (H100, 2026-12-08, E = 128, CUDA graph: T = 1 / 4 / 16 13.0 / 17.8 / 35.5 us against the separate ops'
  // 21.6 / 22.0 / 22.2), so there the cluster path stops at T * ceil(E / 8) <= 64 (T <= 4 at E = 128).
  if (e > 64 && t * per > 64) return false;
  if (dev >= 64 || gok::device_info(dev).first < 9) return false;
  static bool attr_set[64][4][2] = {};  // per device, VPL and block size: dynamic shared memory above 48 KB allowed
  const bool many = t * per > kSmallThreadsFew / kWarp;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(kSmallCluster, 1, 1);
  cfg.blockDim = dim3(many ? kSmallThreadsMany : kSmallThreadsFew, 1, 1);
  cfg.dynamicSmemBytes = static_cast<size_t>(stage);
  cfg.stream = stream;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeClusterDimension;
  attr.val.clusterDim.x = kSmallCluster;
  attr.val.clusterDim.y = 1;
  attr.val.clusterDim.z = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  const T* hp = reinterpret_cast<const T*>(hidden.data_ptr());
  const T* wp = reinterpret_cast<const T*>(rw.data_ptr());
  const T* bp = rb.has_value() ? reinterpret_cast<const T*>(rb->data_ptr()) : nullptr;
  T* lo = reinterpret_cast<T*>(w_lo.data_ptr());
#define GOK_SMALL_N(VPL, N)                                                                                      \
  if (!attr_set[dev][VPL / 2][N == kSmallThreadsMany]) {                                                        \
    C10_CUDA_CHECK(cudaFuncSetAttribute(moe_small_prepare_kernel<T, VPL, N>,                                    \
                                        cudaFuncAttributeMaxDynamicSharedMemorySize, kSmallStageMax));          \
    attr_set[dev][VPL / 2][N == kSmallThreadsMany] = true;                                                      \
  }                                                                                                             \
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, moe_small_prepare_kernel<T, VPL, N>, hp, static_cast<int>(t),           \
                                    static_cast<int>(h), wp, bp, static_cast<int>(e), top_k, block_m,            \
                                    static_cast<int>(nb), w.data_ptr<float>(), lo, ids.data_ptr<int32_t>(),      \
                                    sorted_pos.data_ptr<int32_t>(), block_expert.data_ptr<int32_t>()))
#define GOK_SMALL(VPL)                                                                                          \
  if (many) {                                                                                                   \
    GOK_SMALL_N(VPL, kSmallThreadsMany);                                                                        \
  } else {                                                                                                      \
    GOK_SMALL_N(VPL, kSmallThreadsFew);                                                                         \
  }
  if (e <= 32) {
    GOK_SMALL(1);
  } else if (e <= 64) {
    GOK_SMALL(2);
  } else {
    GOK_SMALL(4);
  }
#undef GOK_SMALL_N
#undef GOK_SMALL
  return true;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> moe_route(const at::Tensor& router_logits, int64_t top_k) {
  TORCH_CHECK(router_logits.is_cuda() && router_logits.dim() == 2, "moe_route: router_logits must be a CUDA (T, E) tensor");
  const int64_t e = router_logits.size(1);
  TORCH_CHECK(e >= 1 && e <= 1024, "moe_route: E must be in [1, 1024]");
  TORCH_CHECK(top_k >= 1 && top_k <= e && top_k <= 32, "moe_route: top_k must be in [1, min(E, 32)]");
  const c10::cuda::CUDAGuard guard(router_logits.device());
  const auto logits = router_logits.contiguous();
  const int64_t rows = logits.size(0);
  auto w = at::empty({rows, top_k}, logits.options().dtype(at::kFloat));
  auto ids = at::empty({rows, top_k}, logits.options().dtype(at::kInt));
  if (rows == 0) return {w, ids};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  switch (logits.scalar_type()) {
    case at::kFloat: launch_route<float>(logits, static_cast<int>(top_k), w, ids, stream); break;
    case at::kBFloat16: launch_route<__nv_bfloat16>(logits, static_cast<int>(top_k), w, ids, stream); break;
    case at::kHalf: launch_route<__half>(logits, static_cast<int>(top_k), w, ids, stream); break;
    default: TORCH_CHECK(false, "moe_route: router_logits must be float32, bfloat16 or float16");
  }
  return {w, ids};
}

std::tuple<at::Tensor, at::Tensor> moe_dispatch(const at::Tensor& topk_ids, int64_t num_experts, int64_t block_m) {
  TORCH_CHECK(topk_ids.is_cuda() && topk_ids.dim() == 2 && topk_ids.scalar_type() == at::kInt,
              "moe_dispatch: topk_ids must be a CUDA int32 (T, k) tensor");
  TORCH_CHECK(num_experts >= 1 && num_experts <= 4096, "moe_dispatch: num_experts must be in [1, 4096]");
  TORCH_CHECK(block_m >= 1 && block_m <= 1024, "moe_dispatch: block_m must be in [1, 1024]");
  const c10::cuda::CUDAGuard guard(topk_ids.device());
  const auto ids = topk_ids.contiguous();
  const int64_t m = ids.numel();
  TORCH_CHECK(m < (int64_t{1} << 30), "moe_dispatch: T * k too large");
  const int64_t nb = num_blocks_bound(m, num_experts, block_m);
  auto sorted_pos = at::empty({nb * block_m}, ids.options());
  auto block_expert = at::empty({nb}, ids.options());
  if (m == 0) return {sorted_pos, block_expert};
  launch_dispatch(ids, num_experts, block_m, nb, sorted_pos, block_expert, c10::cuda::getCurrentCUDAStream());
  return {sorted_pos, block_expert};
}

at::Tensor moe_finalize(const at::Tensor& y, const at::Tensor& topk_ids, int64_t num_experts, bool skip_foreign) {
  TORCH_CHECK(y.is_cuda() && topk_ids.is_cuda(), "moe_finalize: CUDA tensors expected");
  TORCH_CHECK(topk_ids.dim() == 2 && topk_ids.scalar_type() == at::kInt, "moe_finalize: topk_ids must be int32 (T, k)");
  TORCH_CHECK(y.dim() == 2 && y.size(0) == topk_ids.numel(), "moe_finalize: y must be (T * k, H)");
  const c10::cuda::CUDAGuard guard(y.device());
  const auto yc = y.contiguous();
  const auto ids = topk_ids.contiguous();
  auto out = at::empty({ids.size(0), yc.size(1)}, yc.options());
  if (out.numel() == 0) return out;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int e = static_cast<int>(num_experts);
  switch (yc.scalar_type()) {
    case at::kFloat: launch_finalize<float>(yc, ids, out, e, skip_foreign, stream); break;
    case at::kBFloat16: launch_finalize<__nv_bfloat16>(yc, ids, out, e, skip_foreign, stream); break;
    case at::kHalf: launch_finalize<__half>(yc, ids, out, e, skip_foreign, stream); break;
    default: TORCH_CHECK(false, "moe_finalize: y must be float32, bfloat16 or float16");
  }
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_prepare(
    const at::Tensor& hidden, const at::Tensor& router_weight, const std::optional<at::Tensor>& router_bias,
    int64_t top_k, int64_t block_m, int64_t act_cols) {
  // The eager fast path of the whole block (gpt_oss_kernels/moe/experts.py), everything before the
  // grouped GEMMs in one host call: router GEMM, route, dispatch, and the act / y buffers.
  // Arguments were validated in Python; the checks here are the ones memory safety needs.
  TORCH_CHECK(hidden.is_cuda() && hidden.dim() == 2 && hidden.is_contiguous(), "moe_prepare: hidden must be a contiguous CUDA (T, H) tensor");
  TORCH_CHECK(router_weight.dim() == 2 && router_weight.size(1) == hidden.size(1), "moe_prepare: router_weight must be (E, H)");
  const int64_t e = router_weight.size(0);
  TORCH_CHECK(e >= 1 && e <= 1024, "moe_prepare: E must be in [1, 1024]");
  TORCH_CHECK(top_k >= 1 && top_k <= e && top_k <= 32, "moe_prepare: top_k must be in [1, min(E, 32)]");
  TORCH_CHECK(block_m >= 1 && block_m <= 1024 && act_cols >= 1, "moe_prepare: bad block_m / act_cols");
  const c10::cuda::CUDAGuard guard(hidden.device());
  const auto dt = hidden.scalar_type();
  const at::Tensor rw = router_weight.to(dt);
  const std::optional<at::Tensor> rb =
      router_bias.has_value() ? std::optional<at::Tensor>(router_bias->to(dt)) : std::nullopt;
  const int64_t t = hidden.size(0);
  const int64_t m = t * top_k;
  TORCH_CHECK(m < (int64_t{1} << 30), "moe_prepare: T * k too large");
  auto w = at::empty({t, top_k}, hidden.options().dtype(at::kFloat));
  auto w_lo = at::empty({t, top_k}, hidden.options());
  auto ids = at::empty({t, top_k}, hidden.options().dtype(at::kInt));
  const int64_t nb = num_blocks_bound(m, e, block_m);
  auto sorted_pos = at::empty({nb * block_m}, ids.options());
  auto block_expert = at::empty({nb}, ids.options());
  auto act = at::empty({nb * block_m, act_cols}, hidden.options());
  auto y = at::empty({m, hidden.size(1)}, hidden.options());
  if (m == 0) return {w, w_lo, ids, sorted_pos, block_expert, act, y};
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int k32 = static_cast<int>(top_k), bm32 = static_cast<int>(block_m);
  if ((dt == at::kBFloat16 &&
       launch_small_prepare<__nv_bfloat16>(hidden, rw, rb, k32, bm32, nb, w, w_lo, ids, sorted_pos, block_expert, stream)) ||
      (dt == at::kHalf &&
       launch_small_prepare<__half>(hidden, rw, rb, k32, bm32, nb, w, w_lo, ids, sorted_pos, block_expert, stream))) {
    return {w, w_lo, ids, sorted_pos, block_expert, act, y};
  }
  const at::Tensor logits = rb.has_value() ? at::linear(hidden, rw, *rb) : at::linear(hidden, rw);
  switch (dt) {
    case at::kFloat: launch_route<float>(logits, static_cast<int>(top_k), w, ids, stream, &w_lo); break;
    case at::kBFloat16: launch_route<__nv_bfloat16>(logits, static_cast<int>(top_k), w, ids, stream, &w_lo); break;
    case at::kHalf: launch_route<__half>(logits, static_cast<int>(top_k), w, ids, stream, &w_lo); break;
    default: TORCH_CHECK(false, "moe_prepare: hidden must be float32, bfloat16 or float16");
  }
  launch_dispatch(ids, e, block_m, nb, sorted_pos, block_expert, stream);
  return {w, w_lo, ids, sorted_pos, block_expert, act, y};
}
