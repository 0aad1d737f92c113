// One TORCH_LIBRARY block: every op's schema once, the implementation of this variant's
// backend beside it. Schemas are functional (outputs are returned, nothing is mutated)
// so torch.compile traces them without functionalization; fake implementations live in
// the Python package (_fake.py).
#include <torch/library.h>

#include "registration.h"
#include "torch_binding.h"

#if defined(CUDA_KERNEL)
#define BACKEND c10::DeviceType::CUDA
#elif defined(CPU_KERNEL)
#define BACKEND c10::DeviceType::CPU
#else
#error "define CUDA_KERNEL or CPU_KERNEL"
#endif

TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, ops) {
  // --- rmsnorm ---
  ops.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  ops.impl("rms_norm", BACKEND, &rms_norm);
  ops.def("fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  ops.impl("fused_add_rms_norm", BACKEND, &fused_add_rms_norm);

  // --- moe ---
  ops.def("moe_route(Tensor router_logits, int top_k) -> (Tensor, Tensor)");
  ops.impl("moe_route", BACKEND, &moe_route);
  ops.def("moe_dispatch(Tensor topk_ids, int num_experts, int block_m) -> (Tensor, Tensor)");
  ops.impl("moe_dispatch", BACKEND, &moe_dispatch);
  // skip_foreign: ids outside [0, num_experts) contribute zero (expert parallelism: another rank's
  // experts) instead of flagging their token's row NaN.
  ops.def("moe_finalize(Tensor y, Tensor topk_ids, int num_experts, bool skip_foreign=False) -> Tensor");
  ops.impl("moe_finalize", BACKEND, &moe_finalize);
  ops.def(
      "moe_experts(Tensor hidden, Tensor topk_ids, Tensor topk_weights, Tensor gate_up_proj, "
      "Tensor? gate_up_proj_bias, Tensor down_proj, Tensor? down_proj_bias, float alpha, float limit, "
      "bool skip_foreign=False) -> Tensor");
#if defined(CPU_KERNEL)
  ops.impl("moe_experts", BACKEND, &moe_experts);  // CUDA: Triton, registered in moe/experts.py
#endif
  // The experts with MXFP4 weights (blocks (E, N, K/32, 16) uint8 or kernel words (E, N, K/8) uint32, scales
  // (E, N, K/32) uint8).
  ops.def(
      "moe_experts_mxfp4(Tensor hidden, Tensor topk_ids, Tensor topk_weights, Tensor gate_up_blocks, "
      "Tensor gate_up_scales, Tensor? gate_up_bias, Tensor down_blocks, Tensor down_scales, Tensor? down_bias, "
      "float alpha, float limit, bool skip_foreign=False) -> Tensor");
#if defined(CPU_KERNEL)
  ops.impl("moe_experts_mxfp4", BACKEND, &moe_experts_mxfp4);  // CUDA: Triton, registered in moe/mxfp4.py
#endif
  // FP8 experts: e4m3 weights (E, N, K) with float32 scales (E, N) per channel or (E, N/128, K/128) per block.
  ops.def(
      "moe_experts_fp8(Tensor hidden, Tensor topk_ids, Tensor topk_weights, Tensor gate_up_fp8, "
      "Tensor gate_up_scale, Tensor? gate_up_bias, Tensor down_fp8, Tensor down_scale, Tensor? down_bias, "
      "float alpha, float limit, bool skip_foreign=False) -> Tensor");
  // The weighted top-k reduction, back to token order, cropped to the first h columns of a padded y.
  ops.def(
      "finalize_slice(Tensor y, Tensor topk_ids, Tensor? topk_weights, int num_experts, int h, "
      "bool skip_foreign=False) -> Tensor");
#if defined(CPU_KERNEL)
  ops.impl("moe_experts_fp8", BACKEND, &moe_experts_fp8);  // CUDA: Triton, registered in moe/fp8.py
  ops.impl("finalize_slice", BACKEND, &finalize_slice);    // CUDA: Triton, registered in moe/fp8.py
#endif
#if defined(CUDA_KERNEL)
  // CUDA only, eager only (never traced): the host fast path of moe() (moe/experts.py).
  ops.def(
      "moe_prepare(Tensor hidden, Tensor router_weight, Tensor? router_bias, int top_k, int block_m, "
      "int act_cols) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  ops.impl("moe_prepare", BACKEND, &moe_prepare);
  // The MXFP4 / FP8 grouped GEMMs at decode sizes (16-row blocks), writing into out (moe/grouped_gemm.py).
  ops.def(
      "moe_gemm_decode(Tensor a, Tensor? a_scale, Tensor w, Tensor w_scale, Tensor? bias, Tensor sorted_pos, "
      "Tensor block_expert, Tensor topk_w, int top_k, float alpha, float limit, bool first, Tensor(a!) out) -> ()");
  ops.impl("moe_gemm_decode", BACKEND, &moe_gemm_decode);
  // The MXFP4 grouped GEMMs at prefill sizes (64- / 128-row blocks, kernel words, sm_90a), writing into out.
  ops.def(
      "moe_gemm_prefill_mxfp4(Tensor a, Tensor w, Tensor w_scale, Tensor? bias, Tensor sorted_pos, "
      "Tensor block_expert, Tensor topk_w, int top_k, float alpha, float limit, bool first, Tensor(a!) out) -> ()");
  ops.impl("moe_gemm_prefill_mxfp4", BACKEND, &moe_gemm_prefill_mxfp4);
#endif
  // --- end moe ---

  // --- fp8 activations (per-token e4m3 into a zero-padded buffer) ---
  ops.def("pad_quant_fp8(Tensor x, int h_pad) -> (Tensor, Tensor)");
  ops.def(
      "rms_norm_quant_fp8(Tensor x, Tensor weight, float eps, int h_pad, Tensor? residual=None, "
      "bool write_normed=False) -> (Tensor, Tensor, Tensor, Tensor)");
  ops.impl("pad_quant_fp8", BACKEND, &pad_quant_fp8);
  ops.impl("rms_norm_quant_fp8", BACKEND, &rms_norm_quant_fp8);

  // --- attention ---
  ops.def("rotary_pos_emb(Tensor q, Tensor k, Tensor cos, Tensor sin, int unsqueeze_dim) -> (Tensor, Tensor)");
  ops.impl("rotary_pos_emb", BACKEND, &rotary_pos_emb);
  ops.def(
      "rotary_kv_cache(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor sin, Tensor(a!) k_cache, Tensor(b!) v_cache, "
      "Tensor index, int unsqueeze_dim) -> Tensor");
  ops.impl("rotary_kv_cache", BACKEND, &rotary_kv_cache);
#if defined(CUDA_KERNEL)
  // CUDA only, called from attn_fwd's CUDA implementation (attention/_triton_attn.py) on sm_90+:
  // Sq = 1 decode of large batches or narrow windows, and the causal sliding-window prefill.
  ops.def(
      "attn_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor seqlens, Tensor? block_table, Tensor? s_aux, "
      "float scale, int window_left, int stages) -> Tensor");
  ops.impl("attn_decode", BACKEND, &attn_decode);
  ops.def(
      "attn_window(Tensor q, Tensor k, Tensor v, Tensor? cu_q, Tensor? cu_k, Tensor? seqlens_k, Tensor? s_aux, "
      "float scale, int batch, int seq_q_fixed, int max_seqlen_q, int window_left, int positions) -> Tensor");
  ops.impl("attn_window", BACKEND, &attn_window);
  // The attention projections at decode sizes (<= 16 rows): x W_i^T + b_i side by side (attention/projection.py).
  ops.def("multi_linear(Tensor x, Tensor[] weights, Tensor[] biases) -> Tensor");
  ops.impl("multi_linear", BACKEND, &multi_linear);
#endif
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
