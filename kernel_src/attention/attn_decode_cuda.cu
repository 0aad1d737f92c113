// Sq = 1 decode attention where there is enough work per (sequence, KV head) pair or few keys (the
// decode step of flash_attn_with_kvcache at batch x KV heads >= about the SM count, or with a narrow
// left window): one query position per sequence against a batched or paged KV cache, GQA, per-head
// sinks, optional left window. Semantics are those of the Triton `_decode` + `_combine` pair
// (torch-ext/gpt_oss_kernels/attention/_triton_attn.py), which serves the other decode shapes; the
// routing is in `_native_decode` there.
//
// Why a hand kernel: with one CTA per (sequence, KV head) there is no key split, so no partials and
// no second launch to merge them; each CTA streams its sequence's keys with 128 KB in flight (the
// Triton pair splits B=32 three ways to fill the GPU and merges in a second kernel: 197 vs 189 us).
// (A version that also split the keys of small batches over a thread-block cluster, merging through
// distributed shared memory, was slower than the Triton pair at B=1: clusters of 16 CTAs do not all
// fit one per SM on an H100; branch decode-cluster, docs/decisions-attention.md "session 5".)
//
// Layout of the work:
//   grid (B * Hkv), 8 warps per CTA. Each warp takes a contiguous, 16-key-aligned part of the visible
//   keys [start, seqlen) and streams it in blocks of 16 keys through its own ring of NST stages
//   (cp.async, 16 bytes per lane, zero-fill past its part: cache slots past the sequence are never
//   read, so garbage there cannot reach the output).
//   Per block: S = Q K^T and O += P V with mma.m16n8k16 (the G <= 16 query heads of the KV head are
//   the MMA's 16 rows), online softmax in base 2 (scale folded into the exponent's argument).
//   Merge: the 8 warps' (m, l, O) through shared memory; the sink joins the denominator there
//   (out = sum_i p_i v_i / (sum_i p_i + exp(sink - m))).
// Shared memory rows are 128 bytes (one key); the 16-byte chunk c of key r is stored at chunk
// c ^ (r & 7), so the 8 rows an ldmatrix reads hit 8 different bank groups.
// PDL: the kernel waits for the previous grid (griddepcontrol.wait) before its first global read
// and lets the next one launch at once (its CTAs become resident as this kernel's retire).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <utility>

#include "common/device.cuh"
#include "common/mma.cuh"
#include "attention/sinks.cuh"
#include "torch-ext/torch_binding.h"

namespace {

using gok::cp_async16;
using gok::cp_async_commit;
using gok::cp_async_wait;
using gok::ldmatrix_x4;
using gok::ldmatrix_x4_trans;
using gok::mma16816;
using gok::pack2;
using gok::smem_addr;

constexpr int kD = 64;                       // head_dim
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kKeys = 16;                    // keys per block (one ring stage of one warp)
constexpr int kRows = 16;                    // MMA rows: the G <= 16 query heads of a KV head
constexpr int kRowBytes = kD * 2;            // one key of K (or V) in shared memory
constexpr int kStageBytes = 2 * kKeys * kRowBytes;  // K then V of one block: 4 KB

struct Params {
  const void* q;
  const void* k;
  const void* v;
  void* out;
  const int* seqlens;
  const int* block_table;
  const void* sinks;
  int64_t q_sb, q_sh;            // q (B, Hq, D): element strides of a sequence, a head
  int64_t k_sb, k_st, k_sh;      // cache (B or blocks, S or page, Hkv, D)
  int64_t v_sb, v_st, v_sh;
  int64_t bt_sb;                 // block_table row stride
  int64_t o_sb, o_sh;            // out (B, Hq, D)
  int page;                      // 0: batched cache; else keys per page (paged cache)
  int hkv, g;
  int window_left;               // -1: none
  int sink_mode;                 // 0: none, 1: fp32 sinks, 2: sinks in q's dtype
  float scale_log2;              // softmax_scale * log2(e)
};

// Shared memory: the warps' rings; after the key loop, reused for the warps' partials (m, l, O of
// 16 rows each).
struct WarpPart {
  float m[kRows];
  float l[kRows];
  float o[kRows][kD];
};

template <int NST>
constexpr int smem_bytes() {
  constexpr int ring = kWarps * NST * kStageBytes;
  constexpr int parts = kWarps * static_cast<int>(sizeof(WarpPart));
  return ring > parts ? ring : parts;
}

template <typename T, int NST>
__global__ void __launch_bounds__(kThreads, 1) attn_decode_kernel(const Params p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  extern __shared__ __align__(128) unsigned char smem[];
  const int b = blockIdx.x / p.hkv;
  const int kvh = blockIdx.x % p.hkv;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;

  gok::pdl_wait_and_release();

  // Keys of this warp: [w0, w1), a part of [start, seqlen).
  const int seqlen = max(p.seqlens[b], 0);
  const int start = p.window_left >= 0 ? max(seqlen - 1 - p.window_left, 0) : 0;
  const int n = max(seqlen - start, 0);
  const int per_warp = ((n + kWarps - 1) / kWarps + kKeys - 1) / kKeys * kKeys;
  const int w0 = start + min(warp * per_warp, n);
  const int w1 = start + min((warp + 1) * per_warp, n);
  const int nblk = (w1 - w0 + kKeys - 1) / kKeys;

  const T* kp = static_cast<const T*>(p.k);
  const T* vp = static_cast<const T*>(p.v);
  unsigned char* ring = smem + warp * NST * kStageBytes;
  const uint32_t ring_s = smem_addr(ring);
  const int* bt = p.block_table + static_cast<int64_t>(b) * p.bt_sb;

  // Lane l loads 16-byte chunk (l % 8) of keys l / 8 + 4 j (j < 4) of a block, K and V.
  auto issue = [&](int i) {
    const uint32_t st = ring_s + (i % NST) * kStageBytes;
    const int kb = w0 + i * kKeys;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int row = lane / 8 + 4 * j;
      const int ch = lane % 8;
      const int pos = kb + row;
      const bool ok = pos < w1;
      int64_t koff = 0, voff = 0;
      if (ok) {
        if (p.page > 0) {
          const int64_t blk = bt[pos / p.page];
          const int64_t in = pos % p.page;
          koff = blk * p.k_sb + in * p.k_st;
          voff = blk * p.v_sb + in * p.v_st;
        } else {
          koff = b * p.k_sb + static_cast<int64_t>(pos) * p.k_st;
          voff = b * p.v_sb + static_cast<int64_t>(pos) * p.v_st;
        }
        koff += kvh * p.k_sh + ch * 8;
        voff += kvh * p.v_sh + ch * 8;
      }
      const uint32_t sw = row * kRowBytes + ((ch ^ (row & 7)) * 16);
      cp_async16(st + sw, kp + koff, ok);
      cp_async16(st + kKeys * kRowBytes + sw, vp + voff, ok);
    }
  };

#pragma unroll
  for (int i = 0; i < NST; ++i) {
    if (i < nblk) issue(i);
    cp_async_commit();
  }

  // Q as the MMA's A operand (rows = query heads kvh * G + r, r < G; other rows 0), 4 k-steps.
  const int r0 = lane / 4;
  const int cq = (lane % 4) * 2;
  uint32_t qa[4][4];
  {
    const T* qb = static_cast<const T*>(p.q) + static_cast<int64_t>(b) * p.q_sb +
                  static_cast<int64_t>(kvh) * p.g * p.q_sh;
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
#pragma unroll
      for (int h = 0; h < 4; ++h) {  // a0 (r0, c), a1 (r0 + 8, c), a2 (r0, c + 8), a3 (r0 + 8, c + 8)
        const int r = r0 + (h % 2) * 8;
        const int c = ks * 16 + cq + (h / 2) * 8;
        qa[ks][h] = r < p.g ? *reinterpret_cast<const uint32_t*>(qb + r * p.q_sh + c) : 0u;
      }
    }
  }

  float o[8][4];
#pragma unroll
  for (int j = 0; j < 8; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows r0, r0 + 8 (l: this lane's part)
  const int mi = lane / 8, mr = lane % 8;  // ldmatrix: matrix and row this lane addresses

  for (int i = 0; i < nblk; ++i) {
    cp_async_wait<NST - 1>();
    __syncwarp();
    const uint32_t sk = ring_s + (i % NST) * kStageBytes;
    const uint32_t sv = sk + kKeys * kRowBytes;

    // S = Q K^T: n-tile 0 keys 0-7, n-tile 1 keys 8-15.
    float s[2][4] = {{0.f, 0.f, 0.f, 0.f}, {0.f, 0.f, 0.f, 0.f}};
#pragma unroll
    for (int ks = 0; ks < 4; ++ks) {
      const int key = (mi / 2) * 8 + mr;
      const int ch = 2 * ks + (mi % 2);
      uint32_t kb[4];
      ldmatrix_x4(sk + key * kRowBytes + ((ch ^ (key & 7)) * 16), kb);
      mma16816<T>(s[0], qa[ks], kb[0], kb[1]);
      mma16816<T>(s[1], qa[ks], kb[2], kb[3]);
    }

    // Online softmax over the block (base 2); keys past the warp's range are -inf.
    const int kb0 = w0 + i * kKeys;
    float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool in = kb0 + nt * 8 + cq + e < w1;
        s[nt][e] = in ? s[nt][e] * p.scale_log2 : -INFINITY;
        s[nt][2 + e] = in ? s[nt][2 + e] * p.scale_log2 : -INFINITY;
        mx0 = fmaxf(mx0, s[nt][e]);
        mx1 = fmaxf(mx1, s[nt][2 + e]);
      }
    }
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
    mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
    mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float u0 = n0 == -INFINITY ? 0.f : n0, u1 = n1 == -INFINITY ? 0.f : n1;
    const float a0 = exp2f(m0 - u0), a1 = exp2f(m1 - u1);
    m0 = n0;
    m1 = n1;
    float ps0 = 0.f, ps1 = 0.f;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        s[nt][e] = exp2f(s[nt][e] - u0);
        s[nt][2 + e] = exp2f(s[nt][2 + e] - u1);
        ps0 += s[nt][e];
        ps1 += s[nt][2 + e];
      }
    }
    l0 = l0 * a0 + ps0;
    l1 = l1 * a1 + ps1;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      o[j][0] *= a0;
      o[j][1] *= a0;
      o[j][2] *= a1;
      o[j][3] *= a1;
    }

    // O += P V: P (16 x 16 keys) from the score registers, V^T fragments by ldmatrix.trans.
    const uint32_t pa[4] = {pack2<T>(s[0][0], s[0][1]), pack2<T>(s[0][2], s[0][3]), pack2<T>(s[1][0], s[1][1]),
                            pack2<T>(s[1][2], s[1][3])};
#pragma unroll
    for (int jj = 0; jj < 4; ++jj) {
      const int key = (mi % 2) * 8 + mr;
      const int ch = 2 * jj + mi / 2;
      uint32_t vb[4];
      ldmatrix_x4_trans(sv + key * kRowBytes + ((ch ^ (key & 7)) * 16), vb);
      mma16816<T>(o[2 * jj], pa, vb[0], vb[1]);
      mma16816<T>(o[2 * jj + 1], pa, vb[2], vb[3]);
    }

    __syncwarp();
    if (i + NST < nblk) issue(i + NST);
    cp_async_commit();
  }
  cp_async_wait<0>();
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
  __syncthreads();  // every warp is done with its ring: reuse it for the warps' partials

  WarpPart* wp = reinterpret_cast<WarpPart*>(smem);
  if (lane % 4 == 0) {
    wp[warp].m[r0] = m0;
    wp[warp].m[r0 + 8] = m1;
    wp[warp].l[r0] = l0;
    wp[warp].l[r0 + 8] = l1;
  }
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    *reinterpret_cast<float2*>(&wp[warp].o[r0][j * 8 + cq]) = make_float2(o[j][0], o[j][1]);
    *reinterpret_cast<float2*>(&wp[warp].o[r0 + 8][j * 8 + cq]) = make_float2(o[j][2], o[j][3]);
  }
  __syncthreads();

  {  // warps -> output: thread t merges row t / 16 (a query head, if < G), columns 4 (t % 16) .. + 3
    const int h = threadIdx.x / 16;
    const int d4 = (threadIdx.x % 16) * 4;
    if (h < p.g) {
      const int head = kvh * p.g + h;
      float mw = -INFINITY;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) mw = fmaxf(mw, wp[w].m[h]);
      const float sink = gok::sink_log2<T>(p.sinks, p.sink_mode, head);
      mw = fmaxf(mw, sink);
      const float mu = mw == -INFINITY ? 0.f : mw;
      float lw = p.sink_mode != 0 ? exp2f(sink - mu) : 0.f;
      float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
#pragma unroll
      for (int w = 0; w < kWarps; ++w) {
        const float sc = exp2f(wp[w].m[h] - mu);
        lw += wp[w].l[h] * sc;
        const float4 x = *reinterpret_cast<const float4*>(&wp[w].o[h][d4]);
        acc.x += x.x * sc;
        acc.y += x.y * sc;
        acc.z += x.z * sc;
        acc.w += x.w * sc;
      }
      const float inv = lw == 0.f ? 0.f : 1.f / lw;  // no key and no sink: 0
      T* dst = static_cast<T*>(p.out) + static_cast<int64_t>(b) * p.o_sb + static_cast<int64_t>(head) * p.o_sh + d4;
      *reinterpret_cast<uint2*>(dst) = make_uint2(pack2<T>(acc.x * inv, acc.y * inv), pack2<T>(acc.z * inv, acc.w * inv));
    }
  }
#else
  __trap();  // launched only on sm_90+ (host check)
#endif
}

template <typename T, int NST>
void launch(const Params& p, int bh, int device, cudaStream_t stream) {
  gok::allow_dynamic_smem(attn_decode_kernel<T, NST>, smem_bytes<NST>(), device);
  gok::launch_pdl(attn_decode_kernel<T, NST>, dim3(bh, 1, 1), dim3(kThreads, 1, 1), smem_bytes<NST>(), stream, p);
}

template <typename T>
void dispatch(const Params& p, int64_t stages, int bh, int device, cudaStream_t stream) {
  // 0: 4 stages (128 KB in flight, one CTA per SM) when the last wave of one CTA per SM is >= 90% full,
  // else 2 (3 CTAs per SM: a part-empty last wave would leave SMs idle). H100, 8192-key caches
  // (docs/decisions-attention.md "session 5"): B=32 (256 CTAs) 183.3 us with 4 stages vs 187.9 with 2;
  // B=24 (192) 152.8 vs 150.0; B=16 (128) 93.5 vs 92.6.
  if (stages == 0) {
    const int sms = gok::device_info(device).second;
    const int tail = bh % sms;
    stages = (tail == 0 || 10 * tail >= 9 * sms) ? 4 : 2;
  }
  if (stages == 2) {
    launch<T, 2>(p, bh, device, stream);
  } else {
    launch<T, 4>(p, bh, device, stream);
  }
}

}  // namespace

at::Tensor attn_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const at::Tensor& seqlens, const std::optional<at::Tensor>& block_table,
                       const std::optional<at::Tensor>& s_aux, double scale, int64_t window_left, int64_t stages) {
  // Validated in Python (flash.py); the checks here are the ones memory safety and the kernel's
  // layout assumptions need. Each message is one string literal: see common/device.cuh.
  TORCH_CHECK(q.is_cuda() && q.dim() == 3, "attn_decode: q must be a CUDA (B, Hq, D) tensor");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
              "attn_decode: q must be bfloat16 or float16");
  TORCH_CHECK(k_cache.dim() == 4 && v_cache.dim() == 4 && k_cache.sizes() == v_cache.sizes(),
              "attn_decode: k_cache and v_cache must be 4-D with the same shape");
  TORCH_CHECK(k_cache.scalar_type() == q.scalar_type() && v_cache.scalar_type() == q.scalar_type(),
              "attn_decode: caches must have q's dtype");
  const int64_t bsz = q.size(0), hq = q.size(1), d = q.size(2), hkv = k_cache.size(2);
  TORCH_CHECK(d == kD && k_cache.size(3) == kD, "attn_decode: head_dim must be 64");
  TORCH_CHECK(hkv >= 1 && hq % hkv == 0 && hq / hkv <= kRows, "attn_decode: Hq / Hkv must be an integer <= 16");
  TORCH_CHECK(q.stride(2) == 1 && q.stride(1) % 2 == 0 && q.stride(0) % 2 == 0 &&
                  reinterpret_cast<uintptr_t>(q.data_ptr()) % 4 == 0,
              "attn_decode: q rows must be contiguous and 4-byte aligned");
  for (const at::Tensor* c : {&k_cache, &v_cache}) {
    TORCH_CHECK(c->stride(3) == 1 && c->stride(0) % 8 == 0 && c->stride(1) % 8 == 0 && c->stride(2) % 8 == 0 &&
                    gok::is_aligned16(c->data_ptr()),
                "attn_decode: cache rows must be contiguous and 16-byte aligned");
  }
  TORCH_CHECK(seqlens.is_cuda() && seqlens.scalar_type() == at::kInt && seqlens.dim() == 1 && seqlens.size(0) == bsz &&
                  seqlens.is_contiguous(),
              "attn_decode: seqlens must be a contiguous int32 (B,) CUDA tensor");
  const bool paged = block_table.has_value();
  if (paged) {
    TORCH_CHECK(block_table->is_cuda() && block_table->scalar_type() == at::kInt && block_table->dim() == 2 &&
                    block_table->size(0) == bsz && block_table->stride(1) == 1,
                "attn_decode: block_table must be an int32 (B, pages) CUDA tensor with contiguous rows");
  } else {
    TORCH_CHECK(k_cache.size(0) >= bsz, "attn_decode: the cache must hold q's batch");
  }
  TORCH_CHECK(stages == 0 || stages == 2 || stages == 4, "attn_decode: stages must be 0 (auto), 2 or 4");
  TORCH_CHECK(window_left >= -1, "attn_decode: window_left must be >= -1");
  const c10::cuda::CUDAGuard guard(q.device());
  TORCH_CHECK(gok::device_info(q.get_device()).first >= 9, "attn_decode: needs sm_90 or newer");
  auto out = at::empty({bsz, hq, d}, q.options());
  if (bsz == 0 || hq == 0) return out;
  const int sink_mode = gok::sink_mode(s_aux, q);
  Params p{};
  p.q = q.data_ptr();
  p.k = k_cache.data_ptr();
  p.v = v_cache.data_ptr();
  p.out = out.data_ptr();
  p.seqlens = seqlens.data_ptr<int>();
  p.block_table = paged ? block_table->data_ptr<int>() : nullptr;
  p.sinks = s_aux.has_value() ? s_aux->data_ptr() : nullptr;
  p.q_sb = q.stride(0);
  p.q_sh = q.stride(1);
  p.k_sb = k_cache.stride(0);
  p.k_st = k_cache.stride(1);
  p.k_sh = k_cache.stride(2);
  p.v_sb = v_cache.stride(0);
  p.v_st = v_cache.stride(1);
  p.v_sh = v_cache.stride(2);
  p.bt_sb = paged ? block_table->stride(0) : 0;
  p.o_sb = out.stride(0);
  p.o_sh = out.stride(1);
  p.page = paged ? static_cast<int>(k_cache.size(1)) : 0;
  p.hkv = static_cast<int>(hkv);
  p.g = static_cast<int>(hq / hkv);
  p.window_left = static_cast<int>(window_left);
  p.sink_mode = sink_mode;
  p.scale_log2 = static_cast<float>(scale) * gok::kLog2e;
  TORCH_CHECK(bsz * hkv <= INT32_MAX, "attn_decode: B * Hkv too large");
  const int bh = static_cast<int>(bsz * hkv);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int device = q.get_device();
  if (q.scalar_type() == at::kBFloat16) {
    dispatch<__nv_bfloat16>(p, stages, bh, device, stream);
  } else {
    dispatch<__half>(p, stages, bh, device, stream);
  }
  return out;
}
