// Causal sliding-window prefill (GPT-OSS's 128-token layers: window_left <= 127 keys back, no right
// edge), GQA with 8 query heads per KV head, head_dim 64, per-head sinks, on packed (cu_seqlens_k) or
// batched (seqlens_k) K/V and packed (cu_seqlens_q) or fixed-length queries; sm_90a (wgmma). Semantics
// are those of the Triton `_window_fwd` (torch-ext/gpt_oss_kernels/attention/_triton_attn.py), which
// serves the shapes this kernel does not take; the routing is in `_native_window` there.
//
// Why a hand kernel: every query sees at most 128 keys, so the work is a band of the score matrix. The
// Triton kernel's best tile (16 positions x 4 heads) computes 144 keys per query and reloads its K/V
// window for only two head steps (90 us at S=8192, 38.8% of issue slots in ncu: latency-bound). A
// version of this kernel with mma.sync (branch window-mma) reached only 88.5 us, ~620 SM clocks per 16
// rows; by our operation count (not profiled) about the sum of its 70 ldmatrix.x4 of K/V fragments and
// 140 mma.sync. wgmma reads K and V from shared memory without the register round trip.
//
// Layout of the work:
//   grid (ceil(max_seqlen_q / P), B * Hkv), one warpgroup (4 warps) per CTA, 3 CTAs per SM. A CTA owns P
//   query positions of one (sequence, KV head) and the 8 heads that share it. It loads the P + 127 keys
//   those positions can see into shared memory once (cp.async, zero-filled outside [0, seqlen_k)), then
//   walks its tiles of 64 rows = 8 positions x 8 heads (row r: position r / 8, head r % 8; warp w holds
//   rows 16w..16w+15, i.e. positions 2w and 2w + 1), with the next tile's Q prefetched by cp.async.
//   Per tile: S = Q K^T as one wgmma chain m64n136k16 over the tile's band (the 135 keys from the window
//   start of its first position to its last position; shared-memory row 8t, on a 1024-byte swizzle atom);
//   masks on the band's edge n-tiles only; a one-pass softmax in base 2 with all 68 scores of a thread in
//   registers; O = P V as wgmma m64n64k16 with P from registers and V^T from shared memory; the output
//   goes through the tile's Q buffer to 16-byte stores.
// Shared memory rows are 128 bytes (one key, or one Q row), 128-byte swizzled: the 16-byte chunk c of
// row r sits at chunk c ^ (r & 7), which is both wgmma's canonical layout and conflict-free for the
// 16-byte stores.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>

#include "common/device.cuh"
#include "common/mma.cuh"
#include "attention/sinks.cuh"
#include "torch-ext/torch_binding.h"

namespace {

using gok::cp_async16;
using gok::cp_async_commit;
using gok::cp_async_wait;
using gok::pack2;
using gok::smem_addr;

constexpr int kD = 64;           // head_dim
constexpr int kG = 8;            // query heads per KV head
constexpr int kThreads = 128;    // one warpgroup
constexpr int kRowBytes = kD * 2;
constexpr int kWindowMax = 127;  // keys back a query may see (window_left)
constexpr int kTileRows = 64;    // wgmma M: 8 positions x 8 heads
constexpr int kTilePos = kTileRows / kG;
constexpr int kNT = (kWindowMax + kTilePos + 7) / 8;  // 17 n-tiles of 8 keys: the band, N = 136
constexpr int kKS = (kNT + 1) / 2;                    // 9 P V k-steps of 16 keys
constexpr int kQBytes = kTileRows * kRowBytes;        // one Q (or output) tile: 8 KB
static_assert(kNT * 8 == 136, "the QK wgmma is m64n136k16");

// --- wgmma for the two shapes of the kernel (sm_90a) ---------------------------------------------
// d (64 x 136, fp32, this thread's 68 values) = scale_d ? d : 0, += A (64 x 16, shared, K-major) * B (16 x 136,
// shared, K-major: rows of K).
template <typename T>
__device__ __forceinline__ void wgmma_m64n136k16_ss(float (&d)[68], uint64_t da, uint64_t db, int scale_d);
template <>
__device__ __forceinline__ void wgmma_m64n136k16_ss<__nv_bfloat16>(float (&d)[68], uint64_t da, uint64_t db, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n136k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67}, %68, %69, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67])
      : "l"(da), "l"(db), "r"(scale_d));
#endif
}
template <>
__device__ __forceinline__ void wgmma_m64n136k16_ss<__half>(float (&d)[68], uint64_t da, uint64_t db, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %70, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n136k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, %64, %65, %66, %67}, %68, %69, p, 1, 1, 0, 0;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]), "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]), "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]), "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]), "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63]), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67])
      : "l"(da), "l"(db), "r"(scale_d));
#endif
}
// d (64 x 64, fp32, 32 values) = scale_d ? d : 0, += A (64 x 16, registers: this thread's 4 pairs) * B (16 x 64,
// shared, MN-major: rows of V, transposed).
template <typename T>
__device__ __forceinline__ void wgmma_m64n64k16_rs(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int scale_d);
template <>
__device__ __forceinline__ void wgmma_m64n64k16_rs<__nv_bfloat16>(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
#endif
}
template <>
__device__ __forceinline__ void wgmma_m64n64k16_rs<__half>(float (&d)[32], const uint32_t (&a)[4], uint64_t db, int scale_d) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  asm volatile(
      "{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
      "wgmma.mma_async.sync.aligned.m64n64k16.f32.f16.f16 {%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]), "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]), "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]), "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(scale_d));
#endif
}

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int* cu_q;       // null: seq_q_fixed queries per sequence
  const int* cu_k;       // null: batched K/V (B, S, Hkv, D) with seqlens_k
  const int* seqlens_k;
  const void* sinks;
  int64_t q_st, q_sh;    // q (Tq, Hq, D) element strides
  int64_t k_sb, k_st, k_sh;
  int64_t v_sb, v_st, v_sh;
  int tq;                // rows of q / out (sequences are clamped to them)
  int k_cap;             // packed: rows of k; batched: keys per sequence the cache holds
  int seq_q_fixed;
  int hkv;
  int window_left;
  int sink_mode;         // 0: none, 1: fp32 sinks, 2: sinks in q's dtype
  float scale_log2;      // softmax_scale * log2(e), > 0
};

// P query positions per CTA.
template <int P>
struct Shape {
  static constexpr int kTiles = P / kTilePos;          // 64-row tiles per CTA
  static constexpr int kKvRows = P + 16 * kKS;         // key rows in shared memory (>= every row read)
  static constexpr int kKvBytes = kKvRows * kRowBytes;  // a multiple of 1024: V and Q stay on swizzle atoms
  static constexpr int kSmem = 1024 + 2 * kKvBytes + 2 * kQBytes;  // + alignment slack
  static_assert(kKvBytes % 1024 == 0, "P must be a multiple of 8");
};

__device__ __forceinline__ uint32_t swz(int row, int ch) { return row * kRowBytes + ((ch ^ (row & 7)) * 16); }

template <typename T, int P>
__global__ void __launch_bounds__(kThreads, 3) attn_window_kernel(const Params p) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  using S = Shape<P>;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  unsigned char* smem = smem_raw + ((1024 - (smem_addr(smem_raw) & 1023)) & 1023);
  const int b = blockIdx.y / p.hkv;
  const int kvh = blockIdx.y % p.hkv;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int p0 = blockIdx.x * P;

  gok::pdl_wait_and_release();

  // The sequence: its query rows [q_start, q_start + seqlen_q) and keys [0, seqlen_k), clamped to the
  // tensors (lengths come from device tensors the host does not read).
  int q_start, seqlen_q, seqlen_k;
  int64_t kb, vb;
  if (p.cu_q != nullptr) {
    q_start = min(max(p.cu_q[b], 0), p.tq);
    seqlen_q = min(p.cu_q[b + 1], p.tq) - q_start;
  } else {
    q_start = b * p.seq_q_fixed;
    seqlen_q = p.seq_q_fixed;
  }
  if (p.cu_k != nullptr) {
    const int k_start = min(max(p.cu_k[b], 0), p.k_cap);
    seqlen_k = min(p.cu_k[b + 1], p.k_cap) - k_start;
    kb = static_cast<int64_t>(k_start) * p.k_st;
    vb = static_cast<int64_t>(k_start) * p.v_st;
  } else {
    seqlen_k = min(p.seqlens_k[b], p.k_cap);
    kb = static_cast<int64_t>(b) * p.k_sb;
    vb = static_cast<int64_t>(b) * p.v_sb;
  }
  seqlen_k = max(seqlen_k, 0);
  kb += static_cast<int64_t>(kvh) * p.k_sh;
  vb += static_cast<int64_t>(kvh) * p.v_sh;
  if (p0 >= seqlen_q) return;  // whole CTA, before any barrier

  const int wl = p.window_left;
  const int shift = seqlen_k - seqlen_q;  // query i is key position i + shift (bottom-right aligned)
  const int kbase = p0 + shift - wl;      // key of shared-memory row 0

  const uint32_t ks = smem_addr(smem);
  const uint32_t vs = ks + S::kKvBytes;
  const uint32_t qbuf = vs + S::kKvBytes;
  unsigned char* qbuf_ptr = smem + 2 * S::kKvBytes;

  const T* kp = static_cast<const T*>(p.k);
  const T* vp = static_cast<const T*>(p.v);
  const T* qp = static_cast<const T*>(p.q);
  for (int idx = threadIdx.x; idx < S::kKvRows * 8; idx += kThreads) {
    const int row = idx / 8, ch = idx % 8;
    const int key = kbase + row;
    const bool ok = key >= 0 && key < seqlen_k;
    const int64_t kk = ok ? key : 0;
    cp_async16(ks + swz(row, ch), kp + kb + kk * p.k_st + ch * 8, ok);
    cp_async16(vs + swz(row, ch), vp + vb + kk * p.v_st + ch * 8, ok);
  }

  // Q tile t -> stage; each warp loads (and later stores) its own 16 rows.
  auto issue_q = [&](int t, int stage) {
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int idx = lane + 32 * j;
      const int r = 16 * warp + idx / 8, ch = idx % 8;
      const int pos = p0 + t * kTilePos + r / kG;
      const bool ok = pos < seqlen_q;
      const int64_t off = ok ? static_cast<int64_t>(q_start + pos) * p.q_st + (kvh * kG + r % kG) * p.q_sh + ch * 8 : 0;
      cp_async16(qbuf + stage * kQBytes + swz(r, ch), qp + off, ok);
    }
  };
  const int n_tiles = min(S::kTiles, (seqlen_q - p0 + kTilePos - 1) / kTilePos);
  issue_q(0, 0);
  cp_async_commit();
  if (n_tiles > 1) issue_q(1, 1);
  cp_async_commit();

  const int r0 = lane / 4;         // fragment rows 16 warp + r0 and + 8
  const int cq = (lane % 4) * 2;   // fragment columns cq, cq + 1 of each n-tile
  const int d0 = 2 * warp, d1 = 2 * warp + 1;  // position offsets of the two rows in the tile
  // rows r0 and r0 + 8 are the same head at two positions
  const float sink0 = gok::sink_log2<T>(p.sinks, p.sink_mode, kvh * kG + r0), sink1 = sink0;
  T* outp = static_cast<T*>(p.out);
  const int hq = p.hkv * kG;

  for (int t = 0; t < n_tiles; ++t) {
    const int stage = t % 2;
    cp_async_wait<1>();               // this thread's part of Q(t) (and, at t = 0, of K / V) has landed
    gok::fence_proxy_async_smem();    // ... and is visible to wgmma
    __syncthreads();

    // S = Q K^T over the band: keys kt0 + c, c < 136; shared-memory row of c = 0 is 8t.
    const int krow0 = t * kTilePos;
    const int kt0 = kbase + krow0;
    float s[4 * kNT];
    const uint64_t dq = gok::wgmma_desc_sw128(qbuf + stage * kQBytes);
    const uint64_t dk = gok::wgmma_desc_sw128(ks + krow0 * kRowBytes);
    gok::wgmma_fence();
#pragma unroll
    for (int kq = 0; kq < 4; ++kq) wgmma_m64n136k16_ss<T>(s, dq + 2 * kq, dk + 2 * kq, kq);  // +32 bytes along K
    gok::wgmma_commit();
    gok::wgmma_wait<0>();

    // Row (position offset d) sees band columns [max(d, -kt0), wl + d].
    const int lo_all = max(d1, -kt0);  // both rows' bands start at or before this column
    const int lo0 = max(d0, -kt0), lo1 = max(d1, -kt0);
    const int hi0 = wl + d0, hi1 = wl + d1;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
      if (8 * j < lo_all || 8 * j + 7 > wl) {  // warp-uniform: only the band's edge n-tiles
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int c = 8 * j + cq + e;
          if (c < lo0 || c > hi0) s[4 * j + e] = -INFINITY;
          if (c < lo1 || c > hi1) s[4 * j + 2 + e] = -INFINITY;
        }
      }
      mx0 = fmaxf(mx0, fmaxf(s[4 * j], s[4 * j + 1]));
      mx1 = fmaxf(mx1, fmaxf(s[4 * j + 2], s[4 * j + 3]));
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    // max(s) * scale == max(s * scale) for scale > 0; the scale goes inside the exponent (one FMA).
    float m0 = fmaxf(mx0 * p.scale_log2, sink0), m1 = fmaxf(mx1 * p.scale_log2, sink1);
    m0 = m0 == -INFINITY ? 0.f : m0;
    m1 = m1 == -INFINITY ? 0.f : m1;
    float l0 = 0.f, l1 = 0.f;
#pragma unroll
    for (int j = 0; j < kNT; ++j) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[4 * j + e] = exp2f(fmaf(s[4 * j + e], p.scale_log2, -m0));
        s[4 * j + 2 + e] = exp2f(fmaf(s[4 * j + 2 + e], p.scale_log2, -m1));
        l0 += s[4 * j + e];
        l1 += s[4 * j + 2 + e];
      }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    l0 += exp2f(sink0 - m0);  // sink -inf (none): 0
    l1 += exp2f(sink1 - m1);
    const float inv0 = l0 == 0.f ? 0.f : 1.f / l0;  // no key and no sink: 0
    const float inv1 = l1 == 0.f ? 0.f : 1.f / l1;

    // O = P V: P (64 x 16 keys of k-step kk) from the score registers (wgmma's A-fragment layout is the
    // accumulator's), V^T from shared memory rows 8t + 16 kk.
    uint32_t pa[kKS][4];
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) {
      pa[kk][0] = pack2<T>(s[8 * kk], s[8 * kk + 1]);
      pa[kk][1] = pack2<T>(s[8 * kk + 2], s[8 * kk + 3]);
      if (2 * kk + 1 < kNT) {
        pa[kk][2] = pack2<T>(s[8 * kk + 4], s[8 * kk + 5]);
        pa[kk][3] = pack2<T>(s[8 * kk + 6], s[8 * kk + 7]);
      } else {
        pa[kk][2] = pa[kk][3] = 0u;
      }
    }
    float o[32];
    const uint64_t dv = gok::wgmma_desc_sw128(vs + krow0 * kRowBytes);
    gok::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kKS; ++kk) wgmma_m64n64k16_rs<T>(o, pa[kk], dv + kk * (16 * kRowBytes >> 4), kk);
    gok::wgmma_commit();
    gok::wgmma_wait<0>();

    // Output through this warp's 16 rows of the tile's Q buffer (wgmma has read Q) to 16-byte stores.
    unsigned char* ob = qbuf_ptr + stage * kQBytes;
    const int rw = 16 * warp + r0;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      *reinterpret_cast<uint32_t*>(ob + swz(rw, j) + cq * 2) = pack2<T>(o[4 * j] * inv0, o[4 * j + 1] * inv0);
      *reinterpret_cast<uint32_t*>(ob + swz(rw + 8, j) + cq * 2) = pack2<T>(o[4 * j + 2] * inv1, o[4 * j + 3] * inv1);
    }
    __syncwarp();
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int idx = lane + 32 * j;
      const int r = 16 * warp + idx / 8, ch = idx % 8;
      const int pos = p0 + t * kTilePos + r / kG;
      if (pos < seqlen_q) {
        const uint4 val = *reinterpret_cast<const uint4*>(ob + swz(r, ch));
        *reinterpret_cast<uint4*>(outp + (static_cast<int64_t>(q_start + pos) * hq + kvh * kG + r % kG) * kD + ch * 8) = val;
      }
    }
    __syncwarp();  // this warp's reads of its rows are done before the prefetch below overwrites them
    if (t + 2 < n_tiles) issue_q(t + 2, stage);
    cp_async_commit();
  }
  cp_async_wait<0>();
#else
  __trap();  // launched only on sm_90 (host check); built for sm_90a
#endif
}

template <typename T, int P>
void launch(const Params& p, int max_seqlen_q, int grid_y, int device, cudaStream_t stream) {
  using S = Shape<P>;
  auto kern = attn_window_kernel<T, P>;
  gok::allow_dynamic_smem(kern, S::kSmem, device);
  gok::launch_pdl(kern, dim3((max_seqlen_q + P - 1) / P, grid_y, 1), dim3(kThreads, 1, 1), S::kSmem, stream, p);
}

template <typename T>
void dispatch(const Params& p, int64_t positions, int max_seqlen_q, int grid_y, int device, cudaStream_t stream) {
  if (positions == 32) {
    launch<T, 32>(p, max_seqlen_q, grid_y, device, stream);
  } else if (positions == 128) {
    launch<T, 128>(p, max_seqlen_q, grid_y, device, stream);
  } else {
    launch<T, 64>(p, max_seqlen_q, grid_y, device, stream);
  }
}

}  // namespace

at::Tensor attn_window(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const std::optional<at::Tensor>& cu_q, const std::optional<at::Tensor>& cu_k,
                       const std::optional<at::Tensor>& seqlens_k, const std::optional<at::Tensor>& s_aux, double scale,
                       int64_t batch, int64_t seq_q_fixed, int64_t max_seqlen_q, int64_t window_left,
                       int64_t positions) {
  // Validated in Python (flash.py); the checks here are the ones memory safety and the kernel's
  // layout assumptions need. Each message is one string literal: see common/device.cuh.
  TORCH_CHECK(q.is_cuda() && q.dim() == 3, "attn_window: q must be a CUDA (Tq, Hq, D) tensor");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
              "attn_window: q must be bfloat16 or float16");
  TORCH_CHECK(k.scalar_type() == q.scalar_type() && v.scalar_type() == q.scalar_type(), "attn_window: k and v must have q's dtype");
  const bool packed = cu_k.has_value();
  TORCH_CHECK(k.dim() == (packed ? 3 : 4) && k.sizes() == v.sizes(),
              "attn_window: k and v must be (Tk, Hkv, D) with cu_k or (B, S, Hkv, D) with seqlens_k, the same shape");
  TORCH_CHECK(packed != seqlens_k.has_value(), "attn_window: pass exactly one of cu_k and seqlens_k");
  const int64_t tq = q.size(0), hq = q.size(1), d = q.size(2), hkv = k.size(-2);
  TORCH_CHECK(d == kD && k.size(-1) == kD, "attn_window: head_dim must be 64");
  TORCH_CHECK(hkv >= 1 && hq % hkv == 0, "attn_window: Hq must be a multiple of Hkv");
  TORCH_CHECK(hq / hkv == kG, "attn_window: Hq / Hkv must be 8");
  TORCH_CHECK(window_left >= 0 && window_left <= kWindowMax, "attn_window: window_left must be in [0, 127]");
  TORCH_CHECK(scale > 0, "attn_window: softmax scale must be > 0");
  TORCH_CHECK(positions == 0 || positions == 32 || positions == 64 || positions == 128,
              "attn_window: positions must be 0 (auto), 32, 64 or 128");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) % 8 == 0 && q.stride(0) % 8 == 0 &&
                  gok::is_aligned16(q.data_ptr()),
              "attn_window: q rows must be contiguous and 16-byte aligned");
  for (const at::Tensor* c : {&k, &v}) {
    bool ok = c->stride(-1) == 1 && gok::is_aligned16(c->data_ptr());
    for (int i = 0; i < c->dim() - 1; ++i) ok = ok && c->stride(i) % 8 == 0;
    TORCH_CHECK(ok, "attn_window: k / v rows must be contiguous and 16-byte aligned");
  }
  TORCH_CHECK(batch >= 0 && batch * hkv <= 65535, "attn_window: batch * Hkv must be <= 65535");
  auto check_index = [&](const std::optional<at::Tensor>& t, int64_t n, const char* msg) {
    TORCH_CHECK(t->is_cuda() && t->scalar_type() == at::kInt && t->dim() == 1 && t->size(0) >= n && t->is_contiguous(), msg);
  };
  if (cu_q.has_value()) {
    check_index(cu_q, batch + 1, "attn_window: cu_q must be a contiguous int32 CUDA tensor of batch + 1 entries");
  } else {
    TORCH_CHECK(seq_q_fixed >= 0 && batch * seq_q_fixed <= tq, "attn_window: batch * seq_q_fixed exceeds q's rows");
  }
  if (packed) {
    check_index(cu_k, batch + 1, "attn_window: cu_k must be a contiguous int32 CUDA tensor of batch + 1 entries");
  } else {
    check_index(seqlens_k, batch, "attn_window: seqlens_k must be a contiguous int32 CUDA tensor of batch entries");
    TORCH_CHECK(k.size(0) >= batch, "attn_window: the K/V cache must hold the batch");
  }
  TORCH_CHECK(tq <= INT32_MAX && k.size(packed ? 0 : 1) <= INT32_MAX && max_seqlen_q <= INT32_MAX,
              "attn_window: sizes must fit int32");
  const c10::cuda::CUDAGuard guard(q.device());
  const int device = q.get_device();
  TORCH_CHECK(gok::device_info(device).first == 9, "attn_window: needs sm_90 (wgmma)");
  auto out = at::empty({tq, hq, d}, q.options());
  if (tq == 0 || batch == 0 || max_seqlen_q <= 0) return out;
  const int sink_mode = gok::sink_mode(s_aux, q);
  Params p{};
  p.q = q.data_ptr();
  p.k = k.data_ptr();
  p.v = v.data_ptr();
  p.out = out.data_ptr();
  p.cu_q = cu_q.has_value() ? cu_q->data_ptr<int>() : nullptr;
  p.cu_k = packed ? cu_k->data_ptr<int>() : nullptr;
  p.seqlens_k = packed ? nullptr : seqlens_k->data_ptr<int>();
  p.sinks = s_aux.has_value() ? s_aux->data_ptr() : nullptr;
  p.q_st = q.stride(0);
  p.q_sh = q.stride(1);
  p.k_sb = packed ? 0 : k.stride(0);
  p.k_st = k.stride(-3);
  p.k_sh = k.stride(-2);
  p.v_sb = packed ? 0 : v.stride(0);
  p.v_st = v.stride(-3);
  p.v_sh = v.stride(-2);
  p.tq = static_cast<int>(tq);
  p.k_cap = static_cast<int>(k.size(packed ? 0 : 1));
  p.seq_q_fixed = static_cast<int>(seq_q_fixed);
  p.hkv = static_cast<int>(hkv);
  p.window_left = static_cast<int>(window_left);
  p.sink_mode = sink_mode;
  p.scale_log2 = static_cast<float>(scale) * gok::kLog2e;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int gy = static_cast<int>(batch * hkv);
  const int msq = static_cast<int>(max_seqlen_q);
  if (q.scalar_type() == at::kBFloat16) {
    dispatch<__nv_bfloat16>(p, positions, msq, gy, device, stream);
  } else {
    dispatch<__half>(p, positions, msq, gy, device, stream);
  }
  return out;
}
