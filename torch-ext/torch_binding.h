// Every native op of gpt-oss-kernels, declared once. Each variant compiles exactly one
// implementation of each: kernel_src/<family>/*_cuda.cu (CUDA) or *_cpu.cpp (CPU).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

// --- rmsnorm ---------------------------------------------------------------------------
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                      const at::Tensor& weight, double eps);

// --- moe -------------------------------------------------------------------------------
// kernel_src/moe/: moe_cuda.cu (CUDA variant) and moe_cpu.cpp (CPU variant). moe_experts and
// moe_experts_mxfp4 have a C++ implementation in the CPU variant only; the CUDA variant's is the Triton
// pipeline, registered from Python (gpt_oss_kernels/moe/experts.py, moe/mxfp4.py) on this same schema.
std::tuple<at::Tensor, at::Tensor> moe_route(const at::Tensor& router_logits, int64_t top_k);
std::tuple<at::Tensor, at::Tensor> moe_dispatch(const at::Tensor& topk_ids, int64_t num_experts, int64_t block_m);
at::Tensor moe_finalize(const at::Tensor& y, const at::Tensor& topk_ids, int64_t num_experts, bool skip_foreign);
#if defined(CUDA_KERNEL)
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> moe_prepare(
    const at::Tensor& hidden, const at::Tensor& router_weight, const std::optional<at::Tensor>& router_bias,
    int64_t top_k, int64_t block_m, int64_t act_cols);
// The quantized expert GEMMs over 16-row dispatch blocks (kernel_src/moe/decode_gemm_cuda.cu): GEMM 1 (first:
// gathered rows of a -> SwiGLU act) or GEMM 2 (act -> weighted y rows); MXFP4 weights with bf16 a, or e4m3 weights
// with e4m3 a and its per-row a_scale.
void moe_gemm_decode(const at::Tensor& a, const std::optional<at::Tensor>& a_scale, const at::Tensor& w,
                     const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, const at::Tensor& sorted_pos,
                     const at::Tensor& block_expert, const at::Tensor& topk_w, int64_t top_k, double alpha,
                     double limit, bool first, at::Tensor& out);
// The MXFP4 grouped GEMMs at prefill sizes (64- / 128-row blocks; kernel words, bf16 a; sm_90a wgmma): GEMM 1
// (gathered rows of a -> SwiGLU act) or GEMM 2 (act -> weighted y rows).
void moe_gemm_prefill_mxfp4(const at::Tensor& a, const at::Tensor& w, const at::Tensor& w_scale,
                            const std::optional<at::Tensor>& bias, const at::Tensor& sorted_pos,
                            const at::Tensor& block_expert, const at::Tensor& topk_w, int64_t top_k, double alpha,
                            double limit, bool first, at::Tensor& out);
#endif
#if defined(CPU_KERNEL)
at::Tensor moe_experts(const at::Tensor& hidden, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                       const at::Tensor& gate_up_proj, const std::optional<at::Tensor>& gate_up_proj_bias,
                       const at::Tensor& down_proj, const std::optional<at::Tensor>& down_proj_bias, double alpha,
                       double limit, bool skip_foreign);
// MXFP4 experts (checkpoint layout): each hit expert dequantized exactly just before its matmuls.
at::Tensor moe_experts_mxfp4(const at::Tensor& hidden, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                             const at::Tensor& gate_up_blocks, const at::Tensor& gate_up_scales,
                             const std::optional<at::Tensor>& gate_up_bias, const at::Tensor& down_blocks,
                             const at::Tensor& down_scales, const std::optional<at::Tensor>& down_bias, double alpha,
                             double limit, bool skip_foreign);
at::Tensor moe_experts_fp8(const at::Tensor& hidden, const at::Tensor& topk_ids, const at::Tensor& topk_weights,
                           const at::Tensor& gate_up_fp8, const at::Tensor& gate_up_scale,
                           const std::optional<at::Tensor>& gate_up_bias, const at::Tensor& down_fp8,
                           const at::Tensor& down_scale, const std::optional<at::Tensor>& down_bias, double alpha,
                           double limit, bool skip_foreign);
at::Tensor finalize_slice(const at::Tensor& y, const at::Tensor& topk_ids, const std::optional<at::Tensor>& topk_weights,
                          int64_t num_experts, int64_t h, bool skip_foreign);
#endif

// --- fp8 activations ---------------------------------------------------------------------
// kernel_src/fp8/: fp8_act_cuda.cu (CUDA variant) and fp8_cpu.cpp (CPU variant).
std::tuple<at::Tensor, at::Tensor> pad_quant_fp8(const at::Tensor& x, int64_t h_pad);
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> rms_norm_quant_fp8(
    const at::Tensor& x, const at::Tensor& weight, double eps, int64_t h_pad,
    const std::optional<at::Tensor>& residual, bool write_normed);
#if defined(CPU_KERNEL)
// Shared with moe_experts_fp8: per-row e4m3 of x (T, H) into (T, h_pad), and back to float (T, h).
std::tuple<at::Tensor, at::Tensor> quantize_rows_fp8_cpu(const at::Tensor& x, int64_t h_pad);
at::Tensor dequantize_rows_fp8_cpu(const at::Tensor& q, const at::Tensor& scale, int64_t h);
#endif

// --- attention ---------------------------------------------------------------------------
// GPT-OSS rotary on q and k, one launch (kernel_src/attention/rotary_cuda.cu, rotary_cpu.cpp).
std::tuple<at::Tensor, at::Tensor> rotary_pos_emb(const at::Tensor& q, const at::Tensor& k, const at::Tensor& cos,
                                                  const at::Tensor& sin, int64_t unsqueeze_dim);
// The same on q, with the rotated k and v written into (B, L, Hkv, D) caches at positions index (S,) instead of
// returned (one launch in place of rotary + two index_copy); returns the rotated q.
at::Tensor rotary_kv_cache(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cos,
                           const at::Tensor& sin, at::Tensor& k_cache, at::Tensor& v_cache, const at::Tensor& index,
                           int64_t unsqueeze_dim);

// The public attention op (attn_fwd) is a Python custom op (Triton on CUDA, torch on CPU); these
// CUDA-only helpers are two of its paths on sm_90+: the Sq = 1 decode for large batches or narrow
// windows (kernel_src/attention/attn_decode_cuda.cu) and the causal sliding-window prefill of at most
// 127 keys back (kernel_src/attention/attn_window_cuda.cu).
#if defined(CUDA_KERNEL)
// y_i = x W_i^T + b_i for one to three weights on the same x (at most 16 rows), side by side in one (M, sum N_i)
// output: the attention projections at decode sizes (kernel_src/attention/projection_cuda.cu). CUDA only: the
// Python entry point (attention/projection.py) runs torch's linear elsewhere.
at::Tensor multi_linear(const at::Tensor& x, at::TensorList weights, at::TensorList biases);
at::Tensor attn_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                       const at::Tensor& seqlens, const std::optional<at::Tensor>& block_table,
                       const std::optional<at::Tensor>& s_aux, double scale, int64_t window_left, int64_t stages);
at::Tensor attn_window(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                       const std::optional<at::Tensor>& cu_q, const std::optional<at::Tensor>& cu_k,
                       const std::optional<at::Tensor>& seqlens_k, const std::optional<at::Tensor>& s_aux, double scale,
                       int64_t batch, int64_t seq_q_fixed, int64_t max_seqlen_q, int64_t window_left,
                       int64_t positions);
#endif
