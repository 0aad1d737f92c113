"""The layers: forward-only kernel classes, and the ``*Layout`` classes that hold their parameters.

Two-class pattern (transformers' "Writing kernels" guide; kernels' layer rules): ``X`` has only a
``forward`` (no ``__init__``, no other members); kernelize binds it to a module, so ``self`` is that
module. ``XLayout`` is the ``nn.Module`` that replaces transformers' class before the checkpoint loads
(same ``__init__`` signature; for the fused module, the child modules it fuses) and holds the
parameters under the checkpoint's own names, so weights load straight into it.

| layer        | replaces (transformers' class)                     | parameters                             |
|--------------|----------------------------------------------------|----------------------------------------|
| RMSNorm      | GptOssRMSNorm (5.22-5.24 hub name "RMSNorm")       | weight                                 |
| MoeExperts   | GptOssExperts                                      | bf16, MXFP4 or FP8 experts (moe/block.py) |
| MoeMLP       | GptOssMLP (5.22-5.24 hub name "MegaBlocksMoeMLP")  | router, experts                        |
| NormMoeMLP   | post_attention_layernorm + mlp of a decoder layer  | router, experts, post_attention_layernorm |
| Attention    | GptOssAttention (it calls our rotary itself)       | q_proj, k_proj, v_proj, o_proj, sinks  |
| DecoderLayer | GptOssDecoderLayer's forward, with NormMoeMLP (from_pretrained's fused route) | its children's |
| RotaryPosEmb | the function apply_rotary_pos_emb ("rotary_pos_emb"), for models other than GPT-OSS's routes | none |

Which layouts a model gets, and how: ``integrations`` (``kernel_config()``, ``from_pretrained()``).
"""

from __future__ import annotations

import torch
from torch import nn

from .attention.paged_kv import paged_window_kv
from .attention.projection import multi_linear
from .attention.rotary import rotary_pos_emb as _rotary_pos_emb
from .moe.block import expert_format, experts_forward, moe_block
from .moe.fp8 import padded_width
from .norm import fused_add_rms_norm, rms_norm
from .quant.fp8_act import rms_norm_quant_fp8
from .quant.mxfp4 import mxfp4_checkpoint_blocks, mxfp4_kernel_words



# --- forward-only layers -----------------------------------------------------------------------


class RMSNorm(nn.Module):
    """GPT-OSS RMSNorm: fp32 math, output in the input's dtype."""

    weight: torch.Tensor
    variance_epsilon: float

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return rms_norm(hidden_states, self.weight, self.variance_epsilon)


class MoeExperts(nn.Module):
    """transformers' experts interface: ``(hidden (T, H), router_indices (T, k), routing_weights (T, k)) -> (T, H)``."""

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states, router_indices=None, routing_weights=None):
        return experts_forward(self, hidden_states, router_indices, routing_weights)


class MoeMLP(nn.Module):
    """Router + experts. Returns ``(out (B, S, H), router scores (B*S, k))`` like transformers' GptOssMLP:
    the softmax of the top-k logits, in the activations' dtype."""

    router: nn.Module
    experts: nn.Module

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, s, h = hidden_states.shape
        out, scores = moe_block(hidden_states.reshape(-1, h), self.router, self.experts)
        return out.reshape(b, s, h), scores


class NormMoeMLP(nn.Module):
    """The post-attention RMSNorm and the MoE block as one module (it sits where the decoder layer calls
    ``mlp``; its ``post_attention_layernorm`` is an identity then). Same outputs as MoeMLP."""

    router: nn.Module
    experts: nn.Module
    post_attention_layernorm: nn.Module

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, scores, _ = _norm_moe(self, hidden_states)
        return out, scores


def _norm_moe(mlp: nn.Module, hidden_states: torch.Tensor, residual: torch.Tensor | None = None) -> tuple:
    """NormMoeMLP's work on ``hidden_states`` (B, S, H): ``(out, router scores, new residual)``. With ``residual``
    the norm's kernel adds it first (rounded to the activations' dtype, as ``residual + hidden_states`` is) and
    returns the sum as the new residual; without, that is None."""
    b, s, h = hidden_states.shape
    norm = mlp.post_attention_layernorm
    x = hidden_states.reshape(-1, h)
    r = residual.reshape(-1, h) if residual is not None else None
    new_residual = None
    if (x.is_cuda and getattr(mlp, "fuse_norm_quant", True) and expert_format(mlp.experts) == "fp8"
            and not getattr(mlp.experts, "_is_hooked", False)):
        # FP8 experts: the norm writes the e4m3 rows the experts' GEMM 1 reads (and the bf16 rows the router
        # reads) from one read of the residual stream. Unfused (fuse_norm_quant = False): rms_norm, then the
        # experts op quantizes the normed rows in a second pass (the same values).
        q, scale, normed, *added = rms_norm_quant_fp8(x, norm.weight, norm.variance_epsilon, padded_width(h), r,
                                                      write_normed=True)
        out, scores = moe_block(normed, mlp.router, mlp.experts, hidden_fp8=(q, scale))
        new_residual = added[0] if added else None
    else:
        if r is None:
            normed = rms_norm(x, norm.weight, norm.variance_epsilon)
        else:
            normed, new_residual = fused_add_rms_norm(x, r, norm.weight, norm.variance_epsilon)
        out, scores = moe_block(normed, mlp.router, mlp.experts)
    return (out.reshape(b, s, h), scores,
            new_residual.reshape(b, s, h) if new_residual is not None else None)


class DecoderLayer(nn.Module):
    """GptOssDecoderLayer's forward where its ``mlp`` is NormMoeMLP (our ``from_pretrained`` with ``fused=True``; its
    ``post_attention_layernorm`` is then an identity): the residual add after the attention goes into the norm's
    kernel (``fused_add_rms_norm``; ``rms_norm_quant_fp8`` with its residual for FP8 experts), one launch fewer per
    layer, the same values as transformers' forward. The norm and the attention are called as modules; the ``mlp``
    module too (after a separate add) where it carries a hook, since its fused work bypasses its call."""

    input_layernorm: nn.Module
    self_attn: nn.Module
    mlp: nn.Module

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states, attention_mask=None, position_ids=None, cache=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        # the cache under the name it came by (transformers 5.25 passes cache=, 5.22-5.24 past_key_values=)
        held = {"cache": cache} if cache is not None else {}
        if past_key_values is not None:
            held["past_key_values"] = past_key_values
        attn, _ = self.self_attn(hidden_states=self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                 position_ids=position_ids, use_cache=use_cache,
                                 position_embeddings=position_embeddings, **held, **kwargs)
        mlp = self.mlp
        # unfused: a hook on the module (e.g. a tensor-parallel plan's) must see its call; `fuse_residual = False` on
        # the layer measures the fusion (benchmarks/e2e_decode.py --ab)
        if (not getattr(self, "fuse_residual", True) or mlp._forward_hooks or mlp._forward_pre_hooks
                or getattr(mlp, "_is_hooked", False)):
            residual = hidden_states + attn
            out, _ = mlp(residual)
        else:
            out, _, residual = _norm_moe(mlp, attn, hidden_states)
        return residual + out


class RotaryPosEmb(nn.Module):
    """transformers' ``apply_rotary_pos_emb`` (hub function name ``"rotary_pos_emb"``)."""

    can_torch_compile = True
    has_backward = False

    def forward(self, q, k, cos, sin, unsqueeze_dim=1):
        return _rotary_pos_emb(q, k, cos, sin, unsqueeze_dim)


# The layer name transformers' default mapping uses for "rotary_pos_emb" (kernels-community/rotary).
apply_rotary_transformers = RotaryPosEmb


def _plain_linears(*modules: nn.Module) -> bool:
    """Whether each module computes exactly ``F.linear(x, weight, bias)`` when called: an ``nn.Linear`` with no
    hooks (transformers' tensor parallelism hooks the projections; quantizers replace their class)."""
    return all(type(m) is nn.Linear and not m._forward_hooks and not m._forward_pre_hooks
               and "forward" not in m.__dict__ and not getattr(m, "_is_hooked", False) for m in modules)


# o_proj through multi_linear up to this many rows, cuBLAS above. On an H200 (2026-12-06, the 4-warp version of
# the kernel) cuBLAS won at 16 rows (12.7 against 14.3 us); on an H100 the kept 8-warp version wins there too
# (13.9 against 15.3): the limit stays at 8 until the kept kernel is measured on an H200 (docs/attention.md).
_O_PROJ_KERNEL_ROWS = 8


def _paged_window_update(cache, k, v, layer_idx: int, kwargs: dict):
    """``cache.update(k, v, layer_idx, kwargs=kwargs)``, except for a sliding layer of transformers' paged cache
    (continuous batching, index path) with rows to read: there the rows it reads and the new ones come from one
    ``paged_window_kv`` launch instead of its ``index_select`` + ``masked_scatter_`` (attention/paged_kv.py says
    why), then the new rows are written as it writes them; ``kwargs`` are updated as it updates them. Anything
    else (another cache, the block-table path, a full layer, a transformers without these attributes) is
    transformers' own update."""
    table = getattr(cache, "layer_to_allocator", None)
    alloc = table.get(layer_idx) if isinstance(table, dict) else None
    if (alloc is None or getattr(alloc, "layer_type", None) != "sliding_attention" or kwargs.get("block_table") is not None
            or not hasattr(alloc, "_kv_token_views") or not hasattr(alloc, "sentinel_index")
            or not isinstance(kwargs.get("read_index"), (list, tuple)) or "cu_seq_lens_q" not in kwargs
            or kwargs["read_index"][alloc.index].numel() == 0):
        return cache.update(k, v, layer_idx, kwargs=kwargs)
    kwargs["cu_seq_lens_k"] = kwargs["cu_seq_lens_k"][alloc.layer_type].to(torch.int32)
    kwargs["max_length_k"] = kwargs["max_length_k"][alloc.layer_type]
    read_index, write_index = kwargs["read_index"][alloc.index], kwargs["write_index"][alloc.index]
    k_cache, v_cache = alloc._kv_token_views[layer_idx]
    k_new, v_new = (t.squeeze(0).transpose(0, 1) for t in (k, v))  # (tokens, heads, head_dim)
    k_rows, v_rows = paged_window_kv(k_cache, v_cache, k_new, v_new, read_index, kwargs["cu_seq_lens_k"],
                                     kwargs["cu_seq_lens_q"], alloc.sentinel_index)
    k_cache.index_copy_(0, write_index, k_new)  # after the read: a new row may take the slot of one just read
    v_cache.index_copy_(0, write_index, v_new)
    return k_rows.transpose(0, 1).unsqueeze(0), v_rows.transpose(0, 1).unsqueeze(0)


class Attention(nn.Module):
    """GptOssAttention's forward with q, k and v projected by one ``multi_linear`` (one kernel launch at decode
    sizes, where cuBLAS runs three split-K GEMVs) and o_proj by another, and this package's rotary. The cache
    update and the attention call are transformers' (with the DecodeRunner's cache, ``rotary_update``: rotary and
    the cache write in one launch; its attention interface for ``config._attn_implementation``;
    ``cache=`` as transformers 5.25 passes it, ``past_key_values=`` as 5.22-5.24 do). Projections that are not
    plain ``nn.Linear`` modules (tensor-parallel hooks, quantized linears) are called as modules."""

    config: object
    layer_idx: int
    head_dim: int

    can_torch_compile = True
    has_backward = False

    def forward(self, hidden_states, position_embeddings, attention_mask, cache=None, past_key_values=None,
                **kwargs):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
        from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if _plain_linears(*projections):
            q, k, v = multi_linear(hidden_states, [p.weight for p in projections], [p.bias for p in projections])
        else:
            q, k, v = (p(hidden_states) for p in projections)
        q, k, v = (t.view(hidden_shape).transpose(1, 2) for t in (q, k, v))
        cos, sin = position_embeddings
        held = cache if cache is not None else past_key_values
        if hasattr(held, "rotary_update"):  # the DecodeRunner's cache: rotary and the cache write in one launch
            q, k, v = held.rotary_update(q, k, v, cos, sin, self.layer_idx)
        else:
            q, k = _rotary_pos_emb(q, k, cos, sin)
            if cache is not None:
                k, v = _paged_window_update(cache, k, v, self.layer_idx, kwargs)
            elif past_key_values is not None:
                k, v = past_key_values.update(k, v, self.layer_idx)
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
        out, weights = attention(self, q, k, v, attention_mask, dropout=0.0 if not self.training else
                                 self.attention_dropout, scaling=self.scaling, sliding_window=self.sliding_window,
                                 s_aux=self.sinks, **kwargs)
        out = out.reshape(*input_shape, -1).contiguous()
        if _plain_linears(self.o_proj) and out.numel() <= _O_PROJ_KERNEL_ROWS * out.shape[-1]:
            (out,) = multi_linear(out, [self.o_proj.weight], [self.o_proj.bias])
        else:
            out = self.o_proj(out)
        return out, weights


# --- layouts: the parameters, under the checkpoint's names -----------------------------------------


class RMSNormLayout(nn.Module):
    """GptOssRMSNorm's parameters (``__init__(hidden_size, eps)`` as GptOssRMSNorm)."""

    kernel_layer_name = "RMSNorm"  # the layer kernelize gives it (transformers' route sets the same)
    forward = RMSNorm.forward  # runs before kernelize too (transformers would put a no-op here)

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps


def _quantization_config(config) -> dict:
    qc = getattr(config, "quantization_config", None)
    if qc is None or isinstance(qc, dict):
        return qc or {}
    return qc.to_dict() if hasattr(qc, "to_dict") else vars(qc)


def experts_format_of(config) -> str:
    """The expert format a config asks for: ``"mxfp4"`` when its checkpoint stores MXFP4 experts
    (``quantization_config.quant_method == "mxfp4"``), ``"fp8"`` for FP8 experts (``quant_method == "fp8"``, as
    ``quant.fp8.fp8_quantization_config`` writes it), either also as set by ``integrations.from_pretrained``
    (``config.gpt_oss_kernels_experts``), else ``"bf16"`` (the model's float dtype)."""
    fmt = getattr(config, "gpt_oss_kernels_experts", None)
    if fmt is None:
        method = _quantization_config(config).get("quant_method")
        method = str(getattr(method, "value", method))
        fmt = method if method in ("mxfp4", "fp8") else "bf16"
    if fmt not in ("bf16", "mxfp4", "fp8"):
        raise ValueError(f"unknown expert format {fmt!r}: expected 'bf16', 'mxfp4' or 'fp8'")
    return fmt


def fp8_granularity_of(config) -> str:
    """``"block"`` (128x128 scales) when the config's ``weight_block_size`` is set (or
    ``config.gpt_oss_kernels_fp8_granularity`` says so), else ``"channel"``."""
    g = getattr(config, "gpt_oss_kernels_fp8_granularity", None)
    if g is None:
        g = "block" if _quantization_config(config).get("weight_block_size") else "channel"
    if g not in ("channel", "block"):
        raise ValueError(f"unknown FP8 granularity {g!r}: expected 'channel' or 'block'")
    return g


class MoeExpertsLayout(nn.Module):
    """GptOssExperts' parameters in the format the checkpoint stores (``__init__(config)``).

    bf16: ``gate_up_proj`` (E, H, 2I), ``down_proj`` (E, I, H). MXFP4: ``*_blocks`` uint8 (E, N, K/32, 16)
    and ``*_scales`` uint8 (E, N, K/32), exactly as openai/gpt-oss stores them (no bf16 copy); after
    ``use_kernel_words()`` (``integrations.from_pretrained`` calls it once the checkpoint is loaded) the blocks hold
    their kernel words, uint32 (E, N, K/8) (``quant.mxfp4_kernel_words``: the same values and bytes, faster at
    decode), while ``state_dict()`` still gives, and ``load_state_dict()`` still takes, the checkpoint's bytes.
    FP8 (``quant.fp8``): ``*_fp8`` float8_e4m3fn (E, N, K) and ``*_scale`` float32, (E, N) per channel or
    (E, ceil(N/128), ceil(K/128)) per block (``fp8_granularity_of``). Biases ``gate_up_proj_bias`` (E, 2I),
    ``down_proj_bias`` (E, H) in every format.
    """

    kernel_layer_name = "MoeExperts"
    forward = MoeExperts.forward

    def __init__(self, config) -> None:
        super().__init__()
        e, h, i = config.num_local_experts, config.hidden_size, config.intermediate_size
        self.num_experts, self.hidden_size, self.intermediate_size = e, h, i
        self.alpha = getattr(config, "swiglu_alpha", 1.702)
        self.limit = getattr(config, "swiglu_limit", 7.0)
        self.gate_up_proj_bias = nn.Parameter(torch.empty(e, 2 * i))
        self.down_proj_bias = nn.Parameter(torch.empty(e, h))
        fmt = experts_format_of(config)
        if fmt == "fp8":
            self._fp8_params(e, h, i, fp8_granularity_of(config))
        elif fmt == "mxfp4":
            if h % 32 or i % 32:
                raise ValueError(f"MXFP4 experts need hidden_size and intermediate_size divisible by 32, got {h}, {i}")
            u8 = dict(dtype=torch.uint8)
            self.gate_up_proj_blocks = nn.Parameter(torch.empty(e, 2 * i, h // 32, 16, **u8), requires_grad=False)
            self.gate_up_proj_scales = nn.Parameter(torch.empty(e, 2 * i, h // 32, **u8), requires_grad=False)
            self.down_proj_blocks = nn.Parameter(torch.empty(e, h, i // 32, 16, **u8), requires_grad=False)
            self.down_proj_scales = nn.Parameter(torch.empty(e, h, i // 32, **u8), requires_grad=False)
        else:
            self.gate_up_proj = nn.Parameter(torch.empty(e, h, 2 * i))
            self.down_proj = nn.Parameter(torch.empty(e, i, h))

    _MXFP4_BLOCKS = ("gate_up_proj_blocks", "down_proj_blocks")

    @torch.no_grad()
    def use_kernel_words(self, enabled: bool = True) -> None:
        """MXFP4 blocks -> kernel words (``enabled=False``: back to the checkpoint's bytes), one projection at a
        time on the blocks' device; a no-op where they already are, or for other formats. Not under expert
        parallelism: transformers' hooks swap those parameters by shard."""
        for name in self._MXFP4_BLOCKS:
            blocks = getattr(self, name, None)
            if not isinstance(blocks, torch.Tensor):
                continue
            if enabled and blocks.dtype == torch.uint8:
                setattr(self, name, nn.Parameter(mxfp4_kernel_words(blocks), requires_grad=False))
            elif not enabled and blocks.dtype == torch.uint32:
                setattr(self, name, nn.Parameter(mxfp4_checkpoint_blocks(blocks), requires_grad=False))

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name in self._MXFP4_BLOCKS:
            t = destination.get(prefix + name)
            if isinstance(t, torch.Tensor) and t.dtype == torch.uint32:
                destination[prefix + name] = mxfp4_checkpoint_blocks(t.detach())

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        for name in self._MXFP4_BLOCKS:
            own, given = getattr(self, name, None), state_dict.get(prefix + name)
            if (isinstance(own, torch.Tensor) and own.dtype == torch.uint32 and isinstance(given, torch.Tensor)
                    and given.dtype == torch.uint8):
                state_dict[prefix + name] = mxfp4_kernel_words(given)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def _fp8_params(self, e: int, h: int, i: int, granularity: str) -> None:
        f8, f32 = dict(dtype=torch.float8_e4m3fn), dict(dtype=torch.float32)

        def scale(n, k):
            return (e, n) if granularity == "channel" else (e, -(-n // 128), -(-k // 128))

        self.gate_up_proj_fp8 = nn.Parameter(torch.empty(e, 2 * i, h, **f8), requires_grad=False)
        self.gate_up_proj_scale = nn.Parameter(torch.empty(*scale(2 * i, h), **f32), requires_grad=False)
        self.down_proj_fp8 = nn.Parameter(torch.empty(e, h, i, **f8), requires_grad=False)
        self.down_proj_scale = nn.Parameter(torch.empty(*scale(h, i), **f32), requires_grad=False)


class MoeMLPLayout(nn.Module):
    """GptOssMLP's children (``__init__(config)``): transformers' router (its class, so output recorders
    still see router logits) and the experts (whatever class ``GptOssExperts`` resolves to: our
    MoeExpertsLayout when that layout is also in use)."""

    kernel_layer_name = "MoeMLP"
    forward = MoeMLP.forward

    def __init__(self, config) -> None:
        super().__init__()
        from transformers.models.gpt_oss import modeling_gpt_oss as m

        self.router = m.GptOssTopKRouter(config)
        self.experts = m.GptOssExperts(config)


class AttentionLayout(nn.Module):
    """GptOssAttention's parameters and attributes, under its names (``__init__(config, layer_idx)`` as
    GptOssAttention; transformers' attention functions read ``is_causal``, ``num_key_value_groups``, ``scaling``)."""

    kernel_layer_name = "Attention"
    forward = Attention.forward

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.layer_type = config.layer_types[layer_idx] if hasattr(config, "layer_types") else None
        self.config = config
        self.layer_idx = layer_idx
        self.head_dim = getattr(config, "head_dim", config.hidden_size // config.num_attention_heads)
        self.num_key_value_groups = config.num_attention_heads // config.num_key_value_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_dropout
        self.is_causal = True
        h, q_out, kv_out = config.hidden_size, config.num_attention_heads * self.head_dim, \
            config.num_key_value_heads * self.head_dim
        bias = config.attention_bias
        self.q_proj = nn.Linear(h, q_out, bias=bias)
        self.k_proj = nn.Linear(h, kv_out, bias=bias)
        self.v_proj = nn.Linear(h, kv_out, bias=bias)
        self.o_proj = nn.Linear(q_out, h, bias=bias)
        self.sliding_window = config.sliding_window if self.layer_type == "sliding_attention" else None
        self.sinks = nn.Parameter(torch.empty(config.num_attention_heads))


class _NormKeyRenaming:
    """``conversion_mapping`` of NormMoeMLPLayout, built on first access (transformers is imported only then)."""

    def __get__(self, obj, owner):
        from transformers.conversion_mapping import WeightRenaming

        return [WeightRenaming(r"layers\.(\d+)\.post_attention_layernorm\.weight",
                               r"layers.\1.mlp.post_attention_layernorm.weight")]


class NormMoeMLPLayout(nn.Module):
    """Fuses a decoder layer's ``mlp`` and ``post_attention_layernorm`` (``__init__(mlp, norm)``: transformers'
    fusion passes the children in the order of the fusion key). It adopts their modules, so the parameters
    keep their checkpoint names except the norm's, which moves under ``mlp.`` (``conversion_mapping``; the
    pattern cannot match a key it already renamed, so registering it twice is harmless)."""

    kernel_layer_name = "NormMoeMLP"
    forward = NormMoeMLP.forward
    conversion_mapping = _NormKeyRenaming()

    def __init__(self, mlp: nn.Module, norm: nn.Module) -> None:
        super().__init__()
        self.router = mlp.router
        self.experts = mlp.experts
        self.post_attention_layernorm = norm
        # FP8 experts on CUDA: rms_norm_quant_fp8 in front of the experts (False: rms_norm, then a separate
        # quantization pass; kept so that the fusion is measured, benchmarks/harness_fp8.py).
        self.fuse_norm_quant = True
