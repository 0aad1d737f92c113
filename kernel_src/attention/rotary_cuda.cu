// GPT-OSS rotary (transformers' `apply_rotary_pos_emb` for q and k): on halves of head_dim,
//   out[:half] = x1 cos - x2 sin,  out[half:] = x2 cos + x1 sin,
// with half-dim cos/sin of shape (1 or B, S, D/2); fp32 arithmetic, one rounding to x's dtype.
//
// Why a hand kernel: the op is a few microseconds of memory traffic per layer, and in transformers'
// eager loop (batch-1 decode, short prefills) its cost is the host's: a C++ op launches both tensors in
// one kernel. The Python custom op with two Triton launches it replaces took 290 us of host time per layer
// under the profiler, 232 us of it its own (docs/BENCHMARKS.md, whole-model section).
//
// Layout: x is (B, H, S, D) (unsqueeze_dim 1) or (B, S, H, D) (unsqueeze_dim 2), any strides with a
// contiguous last dimension; the output has x's strides (empty_like). One thread per (position, head of
// q then of k, VEC consecutive elements of each half), packed over a 1-D grid (GPT-OSS: 72 heads x 4
// vectors = 288 threads per position); each thread reads its VEC cos / sin values (shared by the heads
// through L1).
//
// rotary_kv_cache (the DecodeRunner's cache write folded in): the same launch also copies v, and writes the
// rotated k and v straight into the (B, L, Hkv, D) caches at positions index[s] (a device tensor: one captured
// step serves every position) instead of returning them: the two index_copy launches per layer go away.
// Positions outside [0, L) are not written.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <initializer_list>
#include <tuple>

#include "common/vec.cuh"
#include "torch-ext/torch_binding.h"

namespace {

constexpr int kThreads = 256;

// Strides (elements) of one rotated tensor seen as (B, S, H, D), and of its output.
struct Side {
  const void* x;
  void* out;
  int64_t xb, xs, xh, ob, os, oh;
  int heads;
};

struct Params {
  Side q, k, v;  // v: rotary_kv_cache only (copied, not rotated)
  const void* cos;
  const void* sin;
  int64_t cb, cs, sb, ss;  // cos / sin strides of (batch or 0, position)
  int seq, half, positions;
  const int64_t* index;  // rotary_kv_cache: cache position of each of the S positions (k and v outputs)
  int64_t cache_len;
};

// VEC consecutive elements as one aligned load / store (VEC * sizeof(T) bytes).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <typename T, typename C, int VEC, bool KV>
__global__ void __launch_bounds__(kThreads) rotary_kernel(const Params p) {
  const int per_head = p.half / VEC;
  const int per_pos = (p.q.heads + p.k.heads + (KV ? p.v.heads : 0)) * per_head;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int pos = static_cast<int>(i / per_pos);
  if (pos >= p.positions) return;
  const int item = static_cast<int>(i % per_pos);
  const int b = pos / p.seq;
  const int s = pos % p.seq;
  int head = item / per_head;
  const int d = (item % per_head) * VEC;
  int which = 0;  // 0: q, 1: k, 2: v (a field-wise select below: a pointer into the parameters would spill them)
  if (head >= p.q.heads) {
    head -= p.q.heads;
    which = 1;
    if (KV && head >= p.k.heads) {
      head -= p.k.heads;
      which = 2;
    }
  }
  const Side side = which == 0 ? p.q : (!KV || which == 1) ? p.k : p.v;
  const bool copy = KV && which == 2;
  int64_t s_out = s;
  if (KV && which != 0) {
    s_out = p.index[s];
    if (s_out < 0 || s_out >= p.cache_len) return;
  }
  const T* xp = static_cast<const T*>(side.x) + b * side.xb + s * side.xs + head * side.xh + d;
  T* op = static_cast<T*>(side.out) + b * side.ob + s_out * side.os + head * side.oh + d;
  const Pack<T, VEC> x1 = *reinterpret_cast<const Pack<T, VEC>*>(xp);
  const Pack<T, VEC> x2 = *reinterpret_cast<const Pack<T, VEC>*>(xp + p.half);
  if (copy) {
    *reinterpret_cast<Pack<T, VEC>*>(op) = x1;
    *reinterpret_cast<Pack<T, VEC>*>(op + p.half) = x2;
    return;
  }
  const C* cp = static_cast<const C*>(p.cos) + b * p.cb + s * p.cs + d;
  const C* sp = static_cast<const C*>(p.sin) + b * p.sb + s * p.ss + d;
  Pack<T, VEC> o1, o2;
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    const float c = gok::to_float(cp[j]), sn = gok::to_float(sp[j]);
    const float a = gok::to_float(x1.v[j]), bb = gok::to_float(x2.v[j]);
    o1.v[j] = gok::from_float<T>(a * c - bb * sn);
    o2.v[j] = gok::from_float<T>(bb * c + a * sn);
  }
  *reinterpret_cast<Pack<T, VEC>*>(op) = o1;
  *reinterpret_cast<Pack<T, VEC>*>(op + p.half) = o2;
}

// (B, S, H, D) strides of x for head dimension `hd` (1 or 2).
void strides_bshd(const at::Tensor& x, int hd, int64_t* b, int64_t* s, int64_t* h) {
  *b = x.stride(0);
  *h = x.stride(hd);
  *s = x.stride(3 - hd);
}

void fill_side(Side* side, const at::Tensor& x, const at::Tensor& out, int hd) {
  side->x = x.data_ptr();
  side->out = out.data_ptr();
  side->heads = x.numel() == 0 ? 0 : static_cast<int>(x.size(hd));
  strides_bshd(x, hd, &side->xb, &side->xs, &side->xh);
  strides_bshd(out, hd, &side->ob, &side->os, &side->oh);
}

bool aligned(const at::Tensor& t, int bytes) {
  if (reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes) return false;
  for (int i = 0; i < t.dim() - 1; ++i) {
    if ((t.stride(i) * static_cast<int64_t>(t.element_size())) % bytes) return false;
  }
  return true;
}

template <typename T, typename C, bool KV>
void launch(const Params& p, int vec, cudaStream_t stream) {
  const int64_t threads =
      static_cast<int64_t>(p.positions) * (p.q.heads + p.k.heads + (KV ? p.v.heads : 0)) * (p.half / vec);
  TORCH_CHECK((threads + kThreads - 1) / kThreads <= INT32_MAX, "rotary_pos_emb: too many elements");
  const dim3 grid(static_cast<unsigned>((threads + kThreads - 1) / kThreads));
  if (vec == 8) {
    rotary_kernel<T, C, 8, KV><<<grid, kThreads, 0, stream>>>(p);
  } else if (vec == 2) {
    rotary_kernel<T, C, 2, KV><<<grid, kThreads, 0, stream>>>(p);
  } else {
    rotary_kernel<T, C, 1, KV><<<grid, kThreads, 0, stream>>>(p);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <bool KV>
void dispatch(const Params& p, const at::Tensor& q, const at::Tensor& cos, int vec, cudaStream_t stream) {
  const bool f32 = cos.scalar_type() == at::kFloat;
  switch (q.scalar_type()) {
    case at::kBFloat16:
      f32 ? launch<__nv_bfloat16, float, KV>(p, vec, stream) : launch<__nv_bfloat16, __nv_bfloat16, KV>(p, vec, stream);
      break;
    case at::kHalf:
      f32 ? launch<__half, float, KV>(p, vec, stream) : launch<__half, __half, KV>(p, vec, stream);
      break;
    case at::kFloat:
      launch<float, float, KV>(p, vec, stream);
      break;
    default:
      TORCH_CHECK(false, "rotary_pos_emb: q must be float32, float16 or bfloat16");
  }
}

// The checks memory safety needs (the ops validate in Python: attention/rotary.py), shared by both ops; fills
// p's q / k sides (outputs q_out, k_out), cos / sin and sizes. Returns the head dimension's index.
int common_params(Params& p, const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos, const at::Tensor& sin,
                  int64_t unsqueeze_dim, const at::Tensor& q_out, const at::Tensor& k_out) {
  TORCH_CHECK(q.is_cuda() && k.is_cuda() && cos.is_cuda() && sin.is_cuda(), "rotary_pos_emb: tensors must be on CUDA");
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && cos.dim() == 3 && sin.dim() == 3,
              "rotary_pos_emb: q and k must be 4-D, cos and sin 3-D");
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), "rotary_pos_emb: q and k must have one dtype");
  TORCH_CHECK(cos.scalar_type() == sin.scalar_type() &&
                  (cos.scalar_type() == at::kFloat || cos.scalar_type() == q.scalar_type()),
              "rotary_pos_emb: cos and sin must have one dtype, float32 or q's");
  const int hd = unsqueeze_dim < 0 ? static_cast<int>(unsqueeze_dim) + 4 : static_cast<int>(unsqueeze_dim);
  TORCH_CHECK(hd == 1 || hd == 2, "rotary_pos_emb: unsqueeze_dim must select dimension 1 or 2");
  const int sd = 3 - hd;
  const int64_t bsz = q.size(0), seq = q.size(sd), d = q.size(3), half = d / 2;
  TORCH_CHECK(d % 2 == 0 && k.size(3) == d && k.size(0) == bsz && k.size(sd) == seq,
              "rotary_pos_emb: k must match q's batch, sequence and even head_dim");
  for (const at::Tensor* c : {&cos, &sin}) {
    TORCH_CHECK(c->size(2) == half && c->size(1) == seq && (c->size(0) == 1 || c->size(0) == bsz),
                "rotary_pos_emb: cos and sin must be (1 or B, S, head_dim / 2)");
  }
  for (const at::Tensor* t : {&q, &k, &cos, &sin}) {
    TORCH_CHECK(t->stride(-1) == 1 || t->size(-1) == 1, "rotary_pos_emb: last dimensions must be contiguous");
  }
  TORCH_CHECK(bsz * seq <= INT32_MAX, "rotary_pos_emb: too many positions");
  fill_side(&p.q, q, q_out, hd);
  fill_side(&p.k, k, k_out, hd);
  p.cos = cos.data_ptr();
  p.sin = sin.data_ptr();
  p.cb = cos.size(0) == 1 ? 0 : cos.stride(0);
  p.sb = sin.size(0) == 1 ? 0 : sin.stride(0);
  p.cs = cos.stride(1);
  p.ss = sin.stride(1);
  p.seq = static_cast<int>(seq);
  p.half = static_cast<int>(half);
  p.positions = static_cast<int>(bsz * seq);
  return hd;
}

// Widest vector the rows of every tensor allow (8 elements needs 8 | half and rows aligned to 8 elements), else
// 2, else 1; cos / sin are read one element at a time.
int widest_vec(int half, std::initializer_list<const at::Tensor*> ts) {
  auto fits = [&](int vec) {
    if (half % vec) return false;
    for (const at::Tensor* t : ts) {
      if (t->numel() && !aligned(*t, vec * static_cast<int>(t->element_size()))) return false;
    }
    return true;
  };
  return fits(8) ? 8 : fits(2) ? 2 : 1;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> rotary_pos_emb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                  const at::Tensor& sin, int64_t unsqueeze_dim) {
  auto q_out = at::empty_like(q);
  auto k_out = at::empty_like(k);
  Params p{};
  common_params(p, q, k, cos, sin, unsqueeze_dim, q_out, k_out);
  if (q.numel() == 0 && k.numel() == 0) return {q_out, k_out};
  const int vec = widest_vec(p.half, {&q, &k, &q_out, &k_out});
  const c10::cuda::CUDAGuard guard(q.device());
  dispatch<false>(p, q, cos, vec, c10::cuda::getCurrentCUDAStream());
  return {q_out, k_out};
}

at::Tensor rotary_kv_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                           const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& index,
                           int64_t unsqueeze_dim) {
  auto q_out = at::empty_like(q);
  Params p{};
  const int hd = common_params(p, q, k, cos, sin, unsqueeze_dim, q_out, k_cache);
  const int64_t bsz = q.size(0), seq = q.size(3 - hd), hkv = k.size(hd), d = q.size(3);
  TORCH_CHECK(v.is_cuda() && v.dim() == 4 && v.scalar_type() == q.scalar_type() && v.sizes() == k.sizes() &&
                  v.stride(-1) == 1,
              "rotary_kv_cache: v must be a CUDA tensor shaped and typed as k, last dimension contiguous");
  for (const at::Tensor* c : {&k_cache, &v_cache}) {
    TORCH_CHECK(c->is_cuda() && c->dim() == 4 && c->scalar_type() == q.scalar_type() && c->size(0) == bsz &&
                    c->size(2) == hkv && c->size(3) == d && c->stride(3) == 1,
                "rotary_kv_cache: caches must be (B, L, Hkv, head_dim) in q's dtype, last dimension contiguous");
  }
  TORCH_CHECK(v_cache.size(1) == k_cache.size(1), "rotary_kv_cache: k_cache and v_cache must have one length");
  TORCH_CHECK(index.is_cuda() && index.scalar_type() == at::kLong && index.dim() == 1 && index.numel() == seq &&
                  index.is_contiguous(),
              "rotary_kv_cache: index must be a contiguous int64 CUDA tensor of S positions");
  // the caches are (B, L, H, D): the sides' outputs are seen as (B, S = L, H, D) with the head at dimension 2
  fill_side(&p.v, v, v_cache, hd);
  for (Side* side : {&p.k, &p.v}) {
    const at::Tensor& c = side == &p.k ? k_cache : v_cache;
    strides_bshd(c, 2, &side->ob, &side->os, &side->oh);
  }
  p.index = index.data_ptr<int64_t>();
  p.cache_len = k_cache.size(1);
  if (q.numel() == 0 && k.numel() == 0) return q_out;
  const int vec = widest_vec(p.half, {&q, &k, &v, &q_out, &k_cache, &v_cache});
  const c10::cuda::CUDAGuard guard(q.device());
  dispatch<true>(p, q, cos, vec, c10::cuda::getCurrentCUDAStream());
  return q_out;
}
