"""transformers routes for GPT-OSS: which of transformers' classes our layouts replace, the KernelConfig
for ``from_pretrained(..., kernel_config=...)``, and our own ``from_pretrained`` for every device.

The same layouts serve transformers 5.22 to 5.25: both have the two-class pattern (``register_kernel_
replacements_and_fusions``) and the monkey-patch registry it uses. In 5.25 GptOssRMSNorm / GptOssMLP lost
their hub names, so only these class replacements reach them there.
"""

from __future__ import annotations

import contextlib
import copy
import os
from pathlib import Path
from types import MethodType

import torch

from .. import layers

REPO_ID = "kernels-community/gpt-oss-kernels"
# Continuous batching (generate_batch) accepts only the "flash" names GPT-OSS lists as compatible: our build is
# registered under this one (docs/attention.md).
CONTINUOUS_BATCHING_ALIAS = "kernels-community/vllm-flash-attn3"

_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download", "subfolder")
# transformers' from_pretrained arguments that distribute the model (each rank loads its shard onto its own device).
_DISTRIBUTED_KWARGS = ("distributed_config", "tp_plan", "tp_size", "device_mesh")
# The MXFP4 layout's expert tensors, split over expert-parallel ranks like the bf16 ones of GPT-OSS's own ep_plan
# (dim 0 = experts).
_MXFP4_EP_PLAN = {f"model.layers.*.mlp.experts.{w}_{part}": "grouped_gemm"
                  for w in ("gate_up_proj", "down_proj") for part in ("blocks", "scales")}

# transformers class (anchored pattern: transformers matches patch keys with re.search, and a bare
# "GptOssMLP" would also replace its Mxfp4GptOssMLP) -> our layer. The layout class is layers.<layer>Layout.
_REPLACED = {"^GptOssRMSNorm$": "RMSNorm", "^GptOssExperts$": "MoeExperts", "^GptOssAttention$": "Attention"}
_UNFUSED_MLP = {"^GptOssMLP$": "MoeMLP"}
# The fused module takes the decoder layer's `mlp` slot (it returns what GptOssMLP returns); the norm's slot
# becomes an identity. Order = the arguments of NormMoeMLPLayout.__init__.
_FUSION_KEY = (("GptOssMLP", "model.layers.*.mlp"), ("GptOssRMSNorm", "model.layers.*.post_attention_layernorm"))
_FUSED_LAYER = "NormMoeMLP"


def _hub_names(fused: bool) -> dict[str, str]:
    """kernel_layer_name (what kernelize looks up) -> our layer; for layouts the two are the same."""
    layouts = list(_REPLACED.values()) + [_FUSED_LAYER if fused else "MoeMLP"]
    return {layer: layer for layer in layouts}


def kernel_config(repo_id: str = REPO_ID, *, version: int | None = None, revision: str | None = None,
                  fused: bool = True):
    """The ``transformers.KernelConfig`` that swaps every layer of ours into GPT-OSS, for
    ``AutoModelForCausalLM.from_pretrained(path, use_kernels=True, kernel_config=kernel_config(),
    attn_implementation=attention_implementation())`` on an accelerator (transformers' KernelConfig
    refuses the CPU: use ``from_pretrained`` there).

    ``fused``: the post-attention RMSNorm and the MoE block as one module (``NormMoeMLP``); otherwise
    ``MoeMLP`` replaces GptOssMLP alone. ``kernels`` resolves the repository: ``version`` (default 1) or
    ``revision``; a local build through ``LOCAL_KERNELS="<repo_id>=/path/to/checkout"`` (then the default is
    ``revision="v1"``, which kernels 0.17 needs offline and 0.19 accepts). MXFP4 / FP8 checkpoints (openai/gpt-oss
    as it ships) also need ``config=checkpoint_config(path)`` in that call: transformers' quantizer reads the
    checkpoint's config before any KernelConfig (a ``ValueError`` after the load says so if it took the MoE block).
    Once the model is loaded the config makes ``generate(..., cache_implementation="static")`` correct with our
    attention (``register_static_cache_mask``) and turns MXFP4 blocks into kernel words, as ``from_pretrained``
    does.
    """
    if version is not None and revision is not None:
        raise ValueError(f"pass version or revision, not both (got version={version!r}, revision={revision!r})")
    if version is None and revision is None:
        local = [e.split("=", 1)[0] for e in os.environ.get("LOCAL_KERNELS", "").split(":") if e]
        revision, version = ("v1", None) if repo_id in local else (None, 1)
    meta = {"version": version} if version is not None else {"revision": revision}

    def entry(layer: str):
        return (f"{repo_id}:{layer}", dict(meta))

    mapping: dict = {pattern: entry(layer) for pattern, layer in _REPLACED.items()}
    if fused:
        mapping[_FUSION_KEY] = entry(_FUSED_LAYER)
    else:
        mapping.update({pattern: entry(layer) for pattern, layer in _UNFUSED_MLP.items()})
    # transformers keeps the class patches of a load for every later load: drop ours, so that this config
    # (fused or not) is what the next load gets.
    _unregister(_our_patches())
    return _kernel_config_class()(kernel_mapping=mapping, inherit_mapping=False)


_KERNEL_CONFIG_CLASS = None


def _kernel_config_class():
    """transformers' ``KernelConfig`` plus what our ``from_pretrained`` does once the checkpoint is loaded, run when
    ``set_use_kernels`` maps the loaded model (after transformers registered its flash mask for our attention):
    ``register_static_cache_mask`` for the model's attention name, so ``generate(...,
    cache_implementation="static")`` is correct on this route too; MXFP4 experts to kernel words; and a
    ``ValueError`` when transformers' MXFP4 quantizer took the experts (the config was not
    ``checkpoint_config(path)``)."""
    global _KERNEL_CONFIG_CLASS
    if _KERNEL_CONFIG_CLASS is None:
        from transformers import KernelConfig

        class GptOssKernelConfig(KernelConfig):
            def create_compatible_mapping(self, model, *args, **kwargs):
                _check_experts_not_quantized_by_transformers(model)
                register_static_cache_mask(getattr(model.config, "_attn_implementation", None))
                _use_kernel_words(model)
                return super().create_compatible_mapping(model, *args, **kwargs)

        _KERNEL_CONFIG_CLASS = GptOssKernelConfig
    return _KERNEL_CONFIG_CLASS


def checkpoint_config(model_id_or_path: str | os.PathLike | None = None, *, config=None, **hub_kwargs):
    """The checkpoint's config as our layouts load it, for transformers' own ``from_pretrained(path,
    config=checkpoint_config(path), use_kernels=True, kernel_config=kernel_config())``.

    A checkpoint whose experts are MXFP4 (openai/gpt-oss as it ships) or FP8 names its format in
    ``quantization_config``, and transformers then builds its own quantizer before any KernelConfig is read
    (its ``Mxfp4GptOssMLP`` with another Hub kernel in place of our MoE block, or, without Triton and in 5.22-5.24,
    the experts dequantized to bf16). Here that config goes and the format is recorded instead
    (``gpt_oss_kernels_experts``, and ``gpt_oss_kernels_fp8_granularity``), so ``layers.MoeExpertsLayout`` holds the
    checkpoint's tensors as stored. A bf16 checkpoint's config comes back as it is (a copy).
    ``config``: a config already loaded (then no path is needed); ``hub_kwargs``: ``revision``, ``token``, ...
    for ``AutoConfig.from_pretrained``.
    """
    if config is None:
        if model_id_or_path is None:
            raise ValueError("checkpoint_config: pass the checkpoint's path or Hub id, or config=")
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_id_or_path, **hub_kwargs)
    if getattr(config, "model_type", None) != "gpt_oss":
        where = f" from {model_id_or_path}" if model_id_or_path is not None else ""
        raise ValueError(f"gpt-oss-kernels loads GPT-OSS checkpoints, got model_type "
                         f"{getattr(config, 'model_type', None)!r}{where}")
    config = copy.deepcopy(config)
    config.gpt_oss_kernels_experts = layers.experts_format_of(config)
    if config.gpt_oss_kernels_experts == "fp8":
        config.gpt_oss_kernels_fp8_granularity = layers.fp8_granularity_of(config)
    if config.gpt_oss_kernels_experts in ("mxfp4", "fp8") and hasattr(config, "quantization_config"):
        del config.quantization_config  # our layout holds the quantized experts, not transformers' quantizer
    return config


def _check_experts_not_quantized_by_transformers(model) -> None:
    """After transformers' ``from_pretrained`` with our KernelConfig: ``ValueError`` when its quantizer put its own
    MoE block in place of ours (a quantized checkpoint loaded without ``checkpoint_config``); a warning when it
    dequantized MXFP4 experts into our bf16 layout (it works, at 3.8x the experts' memory)."""
    if getattr(model, "hf_quantizer", None) is None:
        return
    method = layers._quantization_config(model.config).get("quant_method")
    method = str(getattr(method, "value", method))
    if method not in ("mxfp4", "fp8"):
        return
    fix = ("pass config=gpt_oss_kernels.checkpoint_config(path) to from_pretrained (or load with "
           "gpt_oss_kernels.from_pretrained)")
    foreign = [f"{name} ({type(m).__name__})" for name, m in model.named_modules()
               if name.endswith(".mlp") and not isinstance(m, (layers.MoeMLPLayout, layers.NormMoeMLPLayout))]
    if foreign:
        raise ValueError(f"this {method} checkpoint's experts were taken by transformers' quantizer, not our layers "
                         f"({', '.join(foreign[:2])}{', ...' if len(foreign) > 2 else ''}): {fix}")
    if method == "mxfp4" and any(isinstance(m, layers.MoeExpertsLayout) and layers.expert_format(m) == "bf16"
                                 for m in model.modules()):
        import warnings

        warnings.warn(f"transformers dequantized this MXFP4 checkpoint's experts to bf16 (3.8x their memory); for "
                      f"the experts as stored, {fix}", stacklevel=3)


def _use_kernel_words(model) -> None:
    """MXFP4 experts' blocks -> kernel words (the decode and prefill GEMMs' layout), as our ``from_pretrained`` does
    once loaded; not under transformers' tensor / expert parallelism (its hooks swap those parameters by shard)."""
    if any(getattr(m, "_is_hooked", False) for m in model.modules()):
        return
    for m in model.modules():
        if isinstance(m, layers.MoeExpertsLayout):
            m.use_kernel_words()


def attention_implementation(continuous_batching: bool = False) -> str:
    """The ``attn_implementation`` name that loads this build's attention in transformers.

    transformers loads attention kernels by Hub repo id through ``kernels``; unless ``LOCAL_KERNELS``
    already names that id, this points it at this build (whatever path or Hub snapshot it was loaded from).
    ``continuous_batching``: the name ``generate_batch`` accepts for GPT-OSS (an alias of this build).
    """
    name = CONTINUOUS_BATCHING_ALIAS if continuous_batching else REPO_ID
    entries = [e for e in os.environ.get("LOCAL_KERNELS", "").split(":") if e]
    if not any(e.split("=", 1)[0] == name for e in entries):
        entries.append(f"{name}={Path(__file__).resolve().parents[1]}")
        os.environ["LOCAL_KERNELS"] = ":".join(entries)
    return name


def _static_cache_mask(batch_size: int, q_length: int, kv_length: int, q_offset=0, kv_offset: int = 0,
                       attention_mask=None, **kwargs):
    """transformers' flash mask function, with back the all-ones 2D mask that ``generate`` drops under a static
    cache for this build's attention, for prefills; decode steps get no mask (``_kernel_attention`` finds their
    written slots).

    transformers runs a Hub kernel that has ``flash_attn_varlen_func`` (ours) through its flash wrapper and flash
    mask, but ``generate`` keeps an unpadded batch's 2D mask under a static cache only when the implementation's
    *name* contains "flash" (``is_flash_attention_requested``, transformers 5.25 ``generation/utils.py``), and
    ours must not (GPT-OSS rewrites such names). With no mask the wrapper hands the attention the whole static
    K/V buffers (``kv_length`` slots), and the bottom-right causal alignment then lets the prefill see later prompt
    tokens and every step the zero slots not written yet. The written slots are those before ``q_offset +
    q_length`` (slot ``j`` holds position ``kv_offset + j``; ``q_offset`` is a tensor for full static layers)."""
    from transformers.masking_utils import flash_attention_mask

    if attention_mask is None:
        if q_length == 1:
            # Decode step: no mask; ``_kernel_attention`` takes the written slots from the position ids (a 2D mask
            # here would send the flash wrapper through its unpadding, which reads lengths on the host).
            return None
        static = isinstance(q_offset, torch.Tensor)
        seen = int(q_offset) + q_length
        if static or seen < kv_offset + kv_length:
            # What generate passes for flash implementations: ones over the positions seen so far.
            attention_mask = torch.ones(batch_size, seen, dtype=torch.bool, device=kwargs.get("device"))
    return flash_attention_mask(batch_size, q_length, kv_length, q_offset=q_offset, kv_offset=kv_offset,
                                attention_mask=attention_mask, **kwargs)


def _kernel_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' flash wrapper for this build's attention, except for a decode step with no mask (an unpadded
    batch, dynamic or static cache): there ``key`` / ``value`` may be a static cache's whole buffers, so the keys
    attended are the written ones, ``min(position + 1, buffer length)`` per row from the position ids (full layers:
    slot ``j`` holds position ``j``; static sliding layers: the slots fill in order, then roll with the newest last),
    through ``flash_attn_with_kvcache`` with those lengths on the device (no unpadding, no host sync)."""
    from transformers.integrations.flash_attention import flash_attention_forward

    position_ids = kwargs.get("position_ids")
    if attention_mask is not None or query.shape[2] != 1 or position_ids is None or kwargs.get("output_attentions"):
        return flash_attention_forward(module, query, key, value, attention_mask, **kwargs)
    from ..attention import flash_attn_with_kvcache

    batch, length = query.shape[0], key.shape[2]
    seqlens = (position_ids[..., -1].reshape(-1) + 1).clamp(max=length).to(torch.int32).expand(batch)
    sliding_window = kwargs.get("sliding_window")
    # transformers' flash window: sliding_window - 1 keys to the left, only when the keys outnumber the window
    window = (sliding_window - 1, 0) if sliding_window is not None and length > sliding_window else (-1, -1)
    out = flash_attn_with_kvcache(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2),
                                  cache_seqlens=seqlens, softmax_scale=kwargs.get("scaling"), causal=True,
                                  window_size=window, s_aux=kwargs.get("s_aux"))
    return out, None


def register_static_cache_mask(attn_implementation: str) -> None:
    """Registers ``_static_cache_mask`` as the mask function of this build's attention names, and for the plain
    name ``_kernel_attention`` as its attention function (transformers registers its flash mask and wrapper each
    time it loads the kernel, so this runs after the model is loaded; continuous batching keeps its paged wrapper)."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if attn_implementation in (REPO_ID, CONTINUOUS_BATCHING_ALIAS):
        ALL_MASK_ATTENTION_FUNCTIONS.register(attn_implementation, _static_cache_mask)
    if attn_implementation == REPO_ID:
        ALL_ATTENTION_FUNCTIONS.register(attn_implementation, _kernel_attention)


class _ThisBuild:
    """A ``kernels`` layer repository for the layers of this very build: kernelize takes the layer from the
    package that is running, so no path or Hub lookup can pick another copy."""

    def __init__(self, layer_name: str) -> None:
        self.layer_name = layer_name

    def load(self):
        return getattr(layers, self.layer_name)

    def __eq__(self, other) -> bool:
        return isinstance(other, _ThisBuild) and other.layer_name == self.layer_name

    def __hash__(self) -> int:
        return hash(("gpt_oss_kernels", self.layer_name))

    def __repr__(self) -> str:
        return f"this build of gpt-oss-kernels: layers.{self.layer_name}"


def _patches(fused: bool) -> dict:
    """transformers class patterns -> our layout classes, for transformers' monkey-patch registry."""
    from transformers.integrations.hub_kernels import make_parent_class_for_kernel_fusion
    from transformers.models.gpt_oss import modeling_gpt_oss

    patches = {pattern: _layout(layer) for pattern, layer in _REPLACED.items()}
    if fused:
        children = [path.rsplit(".", 1)[1] for _, path in _FUSION_KEY]
        fused_layer = make_parent_class_for_kernel_fusion(modeling_gpt_oss.GptOssDecoderLayer, children,
                                                          _layout(_FUSED_LAYER))
        # and the decoder layer's forward that takes the post-attention residual add into the norm's kernel
        patches["^GptOssDecoderLayer$"] = type(fused_layer.__name__, (fused_layer,),
                                               {"forward": layers.DecoderLayer.forward})
    else:
        patches.update({pattern: _layout(layer) for pattern, layer in _UNFUSED_MLP.items()})
    return patches


def _layout(layer: str):
    return getattr(layers, f"{layer}Layout")


def _our_patches() -> dict:
    """The entries of transformers' patch registry that put our layouts into GPT-OSS (registered by an
    earlier load through either route)."""
    from transformers import monkey_patching as mp
    from transformers.models.gpt_oss import modeling_gpt_oss

    ours = {_layout(layer) for layer in [*_REPLACED.values(), *_UNFUSED_MLP.values(), _FUSED_LAYER]}
    decoder = modeling_gpt_oss.GptOssDecoderLayer
    return {k: v for k, v in mp.get_patch_mapping().items()
            if v in ours or (v.__name__ == f"Fused{decoder.__name__}" and issubclass(v, decoder))}


def _unregister(patches: dict) -> None:
    from transformers import monkey_patching as mp

    if patches:
        mp.unregister_patch_mapping(list(patches))


@contextlib.contextmanager
def _registered(fused: bool, model_type: str):
    """Our layouts (and the fused norm's key renaming) registered with transformers while one model loads;
    whatever was registered before is put back after."""
    from transformers import conversion_mapping as cm
    from transformers import monkey_patching as mp

    patches = _patches(fused)
    earlier = _our_patches()
    _unregister(earlier)
    before = mp.get_patch_mapping()
    conversions_before = cm.get_checkpoint_conversion_mapping(model_type)
    mp.register_patch_mapping(patches, overwrite=True)
    if fused:
        rules = list(layers.NormMoeMLPLayout.conversion_mapping)
        cm.register_checkpoint_conversion_mapping(model_type, (conversions_before or []) + rules, overwrite=True)
    try:
        yield
    finally:
        mp.unregister_patch_mapping([k for k in patches if k not in before])
        mp.register_patch_mapping({**{k: v for k, v in before.items() if k in patches}, **earlier}, overwrite=True)
        if fused:
            cm.register_checkpoint_conversion_mapping(model_type, conversions_before or [], overwrite=True)


def from_pretrained(model_id_or_path: str | os.PathLike, *, device: str | None = None, dtype=None,
                    fused: bool = True, attention: bool = True, **kwargs):
    """Loads a GPT-OSS checkpoint into ``GptOssForCausalLM`` with every layer of ours: RMSNorm, the MoE
    block (bf16, or MXFP4 straight from the checkpoint's blocks and scales), rotary, and attention.

    ``device``: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... (``device_map``); ``dtype``: the activations'
    dtype (default: the checkpoint's). ``fused``: the post-attention RMSNorm inside the MoE module.
    ``attention``: set ``attn_implementation`` to this build's attention. Other keyword arguments go to
    transformers' ``from_pretrained``. Works on any device and under transformers 5.22-5.25; raises
    ``RuntimeError`` naming any module that did not get our layer (transformers' own kernelize would
    silently keep its layer).

    Distributed (every rank calls this, e.g. under torchrun): ``distributed_config=DistributedConfig(...)``
    (or transformers' older ``tp_plan=`` / ``tp_size=`` / ``device_mesh=``) go to transformers, which
    places each rank on its own device (``cuda:LOCAL_RANK``, or the CPU with gloo), so ``device`` must be
    left out. Under expert parallelism our experts layer runs inside transformers' hook on this rank's
    experts (kernelize keeps the hook; docs/transformers.md, "Expert parallelism"); MXFP4 experts get the
    plan rules of their blocks and scales. A ``tp_plan`` that splits the attention heads must also split
    the sinks (``ValueError`` otherwise, before loading).

    MXFP4 checkpoints (``quantization_config.quant_method == "mxfp4"``, as openai/gpt-oss ships) load
    without transformers' MXFP4 quantizer (which would replace the MoE block and fetch another Hub kernel):
    the experts keep their blocks and scales (``model.config.gpt_oss_kernels_experts == "mxfp4"``), the blocks as
    kernel words once loaded (``layers.MoeExpertsLayout.use_kernel_words``; ``save_pretrained`` writes the
    checkpoint's bytes; distributed loads keep the checkpoint's words). FP8-experts
    checkpoints (``quant_method == "fp8"``, written by ``examples/tiny_checkpoint.write_fp8_checkpoint`` from
    ``quant.fp8.quantize_experts_fp8``) load the same way into our FP8 layout.
    """
    from kernels import Mode, kernelize, use_kernel_mapping
    from transformers import GptOssForCausalLM

    hub = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    config = checkpoint_config(model_id_or_path, config=kwargs.pop("config", None), **hub)
    if attention and "attn_implementation" not in kwargs:
        kwargs["attn_implementation"] = attention_implementation()
    distributed = [k for k in _DISTRIBUTED_KWARGS if kwargs.get(k) is not None]
    if distributed:
        if device is not None or kwargs.get("device_map") is not None:
            raise ValueError(
                f"from_pretrained: pass device= (or device_map=) or {' / '.join(distributed)}=, not both: "
                "transformers places each rank of a distributed load on its own device (cuda:LOCAL_RANK, or the CPU)")
        _check_tp_plan(_plan_of(kwargs, "tp_plan"))
        if config.gpt_oss_kernels_experts == "mxfp4" and kwargs.get("distributed_config") is not None:
            kwargs["distributed_config"] = _with_mxfp4_ep_plan(kwargs["distributed_config"])
    if device is not None:
        kwargs.setdefault("device_map", device)
    if dtype is not None:
        kwargs["dtype"] = dtype

    with _registered(fused, config.model_type):
        model = GptOssForCausalLM.from_pretrained(model_id_or_path, config=config, use_kernels=False, **kwargs)
    if attention:
        register_static_cache_mask(model.config._attn_implementation)
    if attention and model.device.type == "cuda" and model.dtype == torch.float32:
        raise ValueError("from_pretrained: our CUDA attention takes float16 / bfloat16 activations, the model loaded "
                         "as float32: pass dtype=torch.bfloat16, or attention=False to keep transformers' attention")

    device_type = model.device.type
    names = _hub_names(fused)
    mapping = {hub: {device_type: _ThisBuild(layer)} for hub, layer in names.items()}
    # transformers' tensor / expert parallel hooks replace `forward` on the instance, wrapping the forward the
    # module had when the model was built: for our layouts that is already our layer's (layout.forward is
    # layer.forward). kernelize would replace the hook itself (module.forward = layer.forward), losing the
    # cross-rank part (the experts would see global ids against local shards), so the hooks are put back.
    hooks = {m: m.__dict__["forward"] for m in model.modules()
             if str(getattr(type(m), "kernel_layer_name", None)) in names and _is_parallel_hook(m)}
    with use_kernel_mapping(mapping, inherit_mapping=False):
        kernelize(model, mode=Mode.INFERENCE, device=device_type, use_fallback=False)
    for module, hook in hooks.items():
        module.forward = hook
    check_kernelized(model, names)
    if not distributed:  # (distributed: transformers' hooks swap the experts' parameters by shard, keep its bytes)
        _use_kernel_words(model)  # MXFP4 experts: the decode GEMM's layout, in place (no-op otherwise)
    return model


def _is_parallel_hook(module) -> bool:
    """Whether transformers' tensor/expert parallelism installed its forward hook on this module (a plain
    function in the instance's ``forward``; kernelize installs bound methods)."""
    fwd = module.__dict__.get("forward")
    return bool(getattr(module, "_is_hooked", False)) and callable(fwd) and not isinstance(fwd, MethodType)


def _plan_of(kwargs: dict, name: str):
    dc = kwargs.get("distributed_config")
    if dc is not None:
        return dc.get(name) if isinstance(dc, dict) else getattr(dc, name, None)
    return kwargs.get(name)


def _check_tp_plan(tp_plan) -> None:
    """GPT-OSS's own plan (``tp_plan="auto"``) splits only the embedding and the LM head: attention and the norms
    run whole on every rank. A custom plan that splits the heads (q/k/v colwise) must split the sinks the same
    way and give the attention module its local parameters, or each rank's attention sees its heads with all
    the sinks (a shape error deep in the attention call, ours or transformers' eager one)."""
    if not isinstance(tp_plan, dict):
        return
    def style(key):
        return next((v for k, v in tp_plan.items() if k.endswith(key)), None)
    heads = [p for p in ("q_proj", "k_proj", "v_proj") if str(style(f"self_attn.{p}")).endswith("colwise")]
    if not heads:
        return
    missing = []
    if style("self_attn.sinks") != "colwise":
        missing.append("'model.layers.*.self_attn.sinks': 'colwise'")
    if style("self_attn") != "local_params":
        missing.append("'model.layers.*.self_attn': 'local_params'")
    from transformers.distributed import tensor_parallel  # noqa: F401 (registers the TP styles)
    from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES

    if "local_params" not in ALL_PARALLEL_STYLES:
        raise ValueError(
            f"tp_plan splits the attention heads ({', '.join(heads)}): GPT-OSS attention with sharded heads needs "
            "its sinks split too and the attention run on local parameters ('local_params'), which this "
            "transformers does not have (5.25 does); use tp_plan='auto' (attention whole on every rank)")
    if missing:
        raise ValueError(
            f"tp_plan splits the attention heads ({', '.join(heads)}) but not the sinks: GPT-OSS attention with "
            f"sharded heads needs {' and '.join(missing)} in tp_plan (each rank's attention then gets its heads' "
            "sinks as a local tensor)")


def _with_mxfp4_ep_plan(distributed_config):
    """The distributed config with the MXFP4 experts' plan rules added (the model's own ep_plan names only the
    bf16 tensors); rules the caller gave win."""
    if isinstance(distributed_config, dict):
        return {**distributed_config, "ep_plan": {**_MXFP4_EP_PLAN, **(distributed_config.get("ep_plan") or {})}}
    if getattr(distributed_config, "ep_size", 1) in (None, 1):
        return distributed_config
    out = copy.copy(distributed_config)
    out.ep_plan = {**_MXFP4_EP_PLAN, **(distributed_config.ep_plan or {})}
    return out


def check_kernelized(model, names: dict[str, str]) -> None:
    """Raises ``RuntimeError`` unless every module (and kernel function) with a hub name in ``names`` runs
    our layer ``names[hub name]``, and every one of those layers runs somewhere."""
    missing, used = [], set()
    for path, module in model.named_modules():
        candidates = [(path, module)] + [(f"{path}.{n}", f) for n, f in getattr(module, "_kernel_funcs", {}).items()]
        for where, mod in candidates:
            name = getattr(type(mod), "kernel_layer_name", None)
            if name is None:
                continue
            layer = getattr(layers, names[str(name)]) if str(name) in names else None
            forward = getattr(mod.__dict__.get("forward"), "__func__", None)
            # A module under transformers' parallel hook runs our layer inside it when its class's forward is ours.
            hooked = _is_parallel_hook(mod) and layer is not None and type(mod).forward is layer.forward
            if layer is None or (forward is not layer.forward and not hooked):
                missing.append(f"{where} ({type(mod).__name__}, hub name {name!r})")
            else:
                used.add(names[str(name)])
    unused = [n for n in names.values() if n not in used]
    if missing or unused:
        raise RuntimeError(
            "gpt-oss-kernels layers were not swapped in: "
            + "; ".join(missing + [f"no module runs layers.{n}" for n in unused])
        )
