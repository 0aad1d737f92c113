"""One rank of tests/test_expert_parallel_transformers.py (run by torchrun; CPU, gloo).

``python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ep_worker.py BUILD CHECKPOINT OUT
[MXFP4_CHECKPOINT]``

Loads the checkpoint through our ``from_pretrained`` with transformers' distributed arguments in several
layouts (below), runs the same inputs through each, and writes ``OUT/rank<r>.pt``: the logits and greedy tokens
of every layout, and what the experts op was called with; for the MXFP4 checkpoint, this rank's expert tensors
after loading (blocks and scales split like the bf16 experts). Nothing here compares; the test does.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

# transformers' own names; GPT-OSS's plan in 5.25: only the embedding (vocab rows) and the LM head (columns).
HEAD_SHARDED_TP_PLAN = {
    "model.layers.*.self_attn.q_proj": "colwise",
    "model.layers.*.self_attn.k_proj": "colwise",
    "model.layers.*.self_attn.v_proj": "colwise",
    "model.layers.*.self_attn.o_proj": "rowwise",
    "model.layers.*.self_attn.sinks": "colwise",
    "model.layers.*.self_attn": "local_params",
}


def capabilities() -> dict[str, bool]:
    """What the installed transformers has: 5.25 picks the EP implementation ("auto": AllReduceEP at inference,
    the experts see sentinel ids) and has the ``local_params`` style a head-sharded GPT-OSS plan needs; 5.22
    always exchanges tokens (all-to-all dispatch, local ids) and has neither."""
    from transformers.distributed import DistributedConfig, expert_parallel, tensor_parallel  # noqa: F401 (registers)
    from transformers.distributed.parallel_utils import ALL_PARALLEL_STYLES

    return {"ep_implementation": "ep_implementation" in DistributedConfig.__dataclass_fields__,
            "all_reduce_ep": hasattr(expert_parallel, "AllReduceEP"),
            "local_params": "local_params" in ALL_PARALLEL_STYLES}


def layouts():
    """name -> (DistributedConfig kwargs, from_pretrained kwargs), those the installed transformers has."""
    caps = capabilities()
    all_layouts = {
        # EP alone over the 2 ranks (tp_plan={}): transformers' "auto" = AllReduceEP at inference.
        "ep": (dict(tp_size=2, ep_size=2, tp_plan={}), dict(fused=True)),
        # The spelling: tp_plan="auto" (embedding + LM head sharded) with enable_expert_parallel.
        "auto_tp_ep": (dict(tp_plan="auto", enable_expert_parallel=True), dict(fused=False)),
        # Tokens exchanged by all-to-all instead (the experts see local ids, top-1, unit weights).
        "all_to_all": (dict(tp_size=2, ep_size=2, tp_plan={}, ep_implementation="all_to_all"), dict(fused=True)),
        # GPT-OSS's TP plan alone: every rank runs every expert (our experts are not hooked: the fused fast path).
        "tp_only": (dict(tp_size=2), dict(fused=True)),
        # The same through from_pretrained's older keyword (deprecated in transformers, still accepted).
        "tp_plan_kwarg": (None, dict(fused=True, tp_plan="auto")),
        # Attention heads (and sinks) split over the ranks, EP on the experts.
        "heads_tp_ep": (dict(tp_plan=HEAD_SHARDED_TP_PLAN, enable_expert_parallel=True), dict(fused=True)),
    }
    needs = {"all_to_all": "ep_implementation", "heads_tp_ep": "local_params"}
    return {name: v for name, v in all_layouts.items() if name not in needs or caps[needs[name]]}


class _ExpertCalls(TorchDispatchMode):
    """Records the ops of this kernel that ran, and (ids min, ids max, E_local, skip_foreign) of every
    moe_experts call."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.ops = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "gpt_oss_kernels" in func.namespace:
            self.ops.add(func.name().split("::")[-1])
        if func.name().endswith("::moe_experts"):
            ids, experts = args[1], args[3]
            skip = args[9] if len(args) > 9 else kwargs.get("skip_foreign", False)
            self.calls.append((int(ids.min()), int(ids.max()), int(experts.shape[0]), bool(skip)))
        return func(*args, **kwargs)


def main(build: str, checkpoint: str, out: str, mxfp4_checkpoint: str | None = None) -> None:
    import kernels
    from transformers.distributed import DistributedConfig

    k = kernels.get_local_kernel(Path(build), backend=None if torch.cuda.is_available() else "cpu")
    ids = torch.arange(3, 3 + 2 * 21).reshape(2, 21) % 250 + 1
    prompt = ids[:1, :9]
    result = {}
    for name, (dc_kwargs, kw) in layouts().items():
        dist_kw = {} if dc_kwargs is None else dict(distributed_config=DistributedConfig(**dc_kwargs))
        model = k.from_pretrained(checkpoint, dtype=torch.float32, **dist_kw, **kw)
        experts = model.model.layers[0].mlp.experts
        with torch.inference_mode(), _ExpertCalls() as calls:
            logits = model(ids).logits.float()
        with torch.inference_mode():
            tokens = model.generate(prompt, max_new_tokens=8, min_new_tokens=8, do_sample=False)
        result[name] = dict(
            logits=logits, tokens=tokens, calls=calls.calls, ops=sorted(calls.ops),
            experts_class=type(experts).__name__,
            local_experts=int(getattr(experts.gate_up_proj, "to_local", lambda: experts.gate_up_proj)().shape[0]),
            kv_heads=int(model.model.layers[0].self_attn.k_proj.weight.to_local().shape[0] // 32)
            if hasattr(model.model.layers[0].self_attn.k_proj.weight, "to_local") else None,
        )
        if name == "ep":
            # What transformers' own use_kernels route does after loading: kernelize again without keeping the
            # hook. Our experts layer must refuse to run on its local shard with global ids.
            from kernels import Mode, kernelize, use_kernel_mapping

            routes = k.integrations.routes
            names = routes._hub_names(True)
            mapping = {hub: {"cpu": routes._ThisBuild(layer)} for hub, layer in names.items()}
            with use_kernel_mapping(mapping, inherit_mapping=False):
                kernelize(model, mode=Mode.INFERENCE, device="cpu", use_fallback=False)
            try:
                with torch.inference_mode():
                    model(ids)
                result["clobbered_error"] = None
            except RuntimeError as e:
                result["clobbered_error"] = str(e)
        del model
    try:
        k.from_pretrained(checkpoint, dtype=torch.float32, distributed_config=DistributedConfig(
            tp_plan={"model.layers.*.self_attn.q_proj": "colwise"}, enable_expert_parallel=True))
        result["unsharded_sinks_error"] = None
    except ValueError as e:
        result["unsharded_sinks_error"] = str(e)
    try:
        k.from_pretrained(checkpoint, device="cpu", distributed_config=DistributedConfig(tp_size=2, ep_size=2))
        result["device_error"] = None
    except ValueError as e:
        result["device_error"] = str(e)
    if mxfp4_checkpoint:
        model = k.from_pretrained(mxfp4_checkpoint, dtype=torch.float32,
                                  distributed_config=DistributedConfig(tp_size=2, ep_size=2, tp_plan={}))
        experts = model.model.layers[1].mlp.experts
        result["mxfp4"] = dict(
            format=model.config.gpt_oss_kernels_experts, num_experts=experts.num_experts,
            is_expert_parallel=getattr(experts, "_is_expert_parallel", False),
            tensors={n: getattr(experts, n).to_local().clone() for n in (
                "gate_up_proj_blocks", "gate_up_proj_scales", "down_proj_blocks", "down_proj_scales",
                "gate_up_proj_bias", "down_proj_bias")})
        del model
    torch.save(result, Path(out) / f"rank{dist.get_rank()}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main(*sys.argv[1:5])
    except BaseException:
        traceback.print_exc()
        raise
