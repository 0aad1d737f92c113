// MXFP4 dequantization in registers, shared by the decode GEMM (decode_gemm_cuda.cu) and the prefill GEMM
// (prefill_gemm_cuda.cu): e2m1 values to bf16x2 registers, exact (quant/mxfp4.py has the format and
// KERNEL_WORD_BITS). A pair register holds v * 2^-126 per half (the three magnitude bits on bf16 bits 6..8, the
// sign on 15; 0.5 lands on the bf16 subnormal 2^-127); one fma.rn.bf16x2 by 2^(s - 1) gives RN(v * 2^(s - 127))
// when the scale byte s <= 128, else two (2^127: exact 2v, then 2^(s - 128); overflow to inf).
#pragma once

#include <cstdint>

namespace gok {

__device__ __forceinline__ uint32_t fma_bf16x2(uint32_t a, uint32_t b) {  // a * b + (-0): RN, -0 kept
  uint32_t r;
  asm("fma.rn.bf16x2 %0, %1, %2, %3;\n" : "=r"(r) : "r"(a), "r"(b), "r"(0x80008000u));
  return r;
}

__device__ __forceinline__ uint32_t rotr(uint32_t w, int c) { return __funnelshift_r(w, w, c); }

// Pair P of the checkpoint's word w (nibbles P and P + 4, i.e. k 8j + P and 8j + P + 4).
template <int P>
__device__ __forceinline__ uint32_t e2m1_pair(uint32_t w) {
  const uint32_t m = (P <= 1 ? (w << (6 - 4 * P)) : (w >> (4 * P - 6))) & 0x01C001C0u;
  const uint32_t sg = (w << (12 - 4 * P)) & 0x80008000u;
  return m | sg;
}

// Pair P of a kernel word (values 2P, 2P + 1: k 8j + 2P, 8j + 2P + 1): one rotate and one mask, P = 0 two more.
template <int P>
__device__ __forceinline__ uint32_t e2m1_pair_kw(uint32_t w) {
  if constexpr (P == 0) return (w & 0x80C080C0u) | (rotr(w, 24) & 0x01000100u);
  else return rotr(w, P == 1 ? 2 : P == 2 ? 12 : 6) & 0x81C081C0u;
}

// e2m1_pair_kw for a pair index known only at run time (a lane's), as per-thread constants made once
// (kw_pair_consts): rotr(w, rot) & m1 | rotr(w, 24) & m2 (m2 = 0 except for pair 0).
struct KwPair {
  int rot;
  uint32_t m1, m2;
};
__device__ __forceinline__ KwPair kw_pair_consts(int p) {
  return p == 0 ? KwPair{0, 0x80C080C0u, 0x01000100u}
                : KwPair{p == 1 ? 2 : p == 2 ? 12 : 6, 0x81C081C0u, 0u};
}
__device__ __forceinline__ uint32_t e2m1_pair_kw(uint32_t w, const KwPair& k) {
  const uint32_t lo = rotr(w, 24) & k.m2;
  uint32_t r;  // (rotr(w, rot) & m1) | lo in one LOP3 (the compiler emits two)
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(r) : "r"(rotr(w, k.rot)), "r"(k.m1), "r"(lo));
  return r;
}

// bf16x2 bits of the factor for scale byte s: 2^(s - 1) (one step, s <= 128) or 2^(s - 128) (two steps).
template <bool TWO_STEP>
__device__ __forceinline__ uint32_t scale_factor(uint32_t s) {
  const uint32_t b = TWO_STEP ? (s > 1 ? (s - 1) << 7 : 0x20u << s) : (s + 126) << 7;
  return b | (b << 16);
}

// A pair register (v * 2^-126) times its scale factor (scale_factor<TWO_STEP>).
template <bool TWO_STEP>
__device__ __forceinline__ uint32_t scale_pair(uint32_t r, uint32_t f) {
  return TWO_STEP ? fma_bf16x2(fma_bf16x2(r, 0x7F007F00u), f) : fma_bf16x2(r, f);
}

}  // namespace gok
