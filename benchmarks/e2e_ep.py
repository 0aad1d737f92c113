#!/usr/bin/env python3
"""GPT-OSS under transformers' expert parallelism: our layers against transformers' own EP path, N GPUs.

    torchrun --standalone --nproc-per-node 2 benchmarks/e2e_ep.py              # 2 GPUs: check, then bench
    torchrun --standalone --nproc-per-node 4 benchmarks/e2e_ep.py --mode bench
    python benchmarks/e2e_ep.py --dry-run --nproc 4 --cuda               # the plan and memory, no torch.distributed
    torchrun --standalone --nproc-per-node 2 benchmarks/e2e_ep.py --config tiny   # CPU, gloo: the logic end to end

Model: gpt-oss-120b's configuration (36 layers, 128 experts of 2880 x 2880, top-4, 64 / 8 heads of 64, window 128,
vocab 201088) with random weights built on the device (no download, no checkpoint on disk). The experts are MXFP4
as openai/gpt-oss ships them: uint8 blocks (E, N, K/32, 16) and e8m0 scales (E, N, K/32), generated per (layer,
global expert) from a seed, so every rank, every EP size and the one-GPU reference hold the same experts; the
scales give the dequantized weights a std of about K^-1/2. The dense weights come from one seeded state dict.

- ours: the package's ``from_pretrained(None, config=, state_dict=, distributed_config=DistributedConfig(...))``:
  every layer of ours (attention, rotary, RMSNorm, the fused norm + MoE module, the experts inside transformers'
  EP hook), experts in MXFP4 (``--experts mxfp4``, needs the MXFP4 experts op) or in bf16 (``--experts bf16``: the
  same MXFP4 values dequantized, as transformers dequantizes them);
- transformers: ``GptOssForCausalLM.from_pretrained(..., distributed_config=..., use_kernels=False)``: its own EP
  path with its defaults (eager attention, ``grouped_mm`` experts), experts dequantized to bf16 with transformers'
  ``convert_moe_packed_tensors`` (its MXFP4 kernels come from the Hub, unreachable on the GPU machines).

The expert tensors are left out of the state dict (transformers initialises them, sharded) and each rank then
writes its own experts into its local shards (rank r of ep holds experts [r E/ep, (r+1) E/ep), transformers'
``Shard(0)``); dense weights load through transformers as any state dict.

``--mode check`` (``--check-layers`` layers, default 2): logits of 512 tokens (and 16 greedy tokens) of ours and of
transformers under EP on every rank, against the same model on one GPU (rank 0, after the EP models are freed)
and against an fp32 one-GPU transformers model with the same (dequantized) weights. Criterion, as the repo's
integration tests: ours under EP is as close to fp32 as ours on one GPU (rel. err <= 1.5x + 1e-2, argmax agreement
>= one-GPU's - 0.01), and the ranks agree bit for bit. ``--mode bench`` (``--layers``, default 36): prefill of
``--prefill`` tokens (batch 1, logits of the last position) and greedy generate (dynamic cache, ``--prompt``-token
prompt, ``--new-tokens`` new tokens) at each of ``--batches``; every rank runs the same calls in lockstep and the
slowest rank's wall time counts (medians of ``--reps`` after one warm-up). transformers' model is freed before ours
loads (two 120b copies do not fit on 2 GPUs: bf16 experts are 115 GB per GPU there).

Writes ``$OUT/e2e_ep_<N>gpu.json`` (rank 0). On the CPU (no CUDA): gloo, ``--config tiny`` and fp32 are the
defaults there, experts in bf16 (the CPU build has no MXFP4 op yet).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("kernels").setLevel(logging.ERROR)

CONFIGS = {
    # gpt-oss-120b: GptOssConfig's defaults are its shapes.
    "120b": dict(num_hidden_layers=36, num_local_experts=128, num_experts_per_tok=4),
    "20b": dict(num_hidden_layers=24, num_local_experts=32, num_experts_per_tok=4),
    "tiny": "tiny_gpt_oss.tiny_config",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", choices=("check", "bench", "both"), default="both")
    p.add_argument("--impl", choices=("ours", "transformers", "both"), default="both")
    p.add_argument("--config", choices=tuple(CONFIGS), default=None, help="default: 120b on CUDA, tiny on the CPU")
    p.add_argument("--layers", type=int, default=None, help="bench: layers (default: the config's)")
    p.add_argument("--check-layers", type=int, default=2, help="check: layers of the slice")
    p.add_argument("--experts", choices=("mxfp4", "bf16"), default=None,
                   help="our experts' storage (default: mxfp4 on CUDA, bf16 on the CPU)")
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default=None,
                   help="activations (default: bfloat16 on CUDA, float32 on the CPU)")
    p.add_argument("--tp-plan", choices=("auto", "none"), default="auto",
                   help="auto: GPT-OSS's TP plan (embedding + LM head) over the EP ranks too; none: EP alone")
    p.add_argument("--ep-implementation", choices=("auto", "all_reduce", "all_to_all"), default="auto")
    p.add_argument("--batches", default="1,16,64", help="generate batch sizes")
    p.add_argument("--prefill", type=int, default=4096)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "e2e_ep_out")))
    p.add_argument("--dry-run", action="store_true", help="print the resolved plan and per-rank memory; run nothing")
    p.add_argument("--nproc", type=int, default=None, help="--dry-run: ranks to plan for (default WORLD_SIZE or 1)")
    p.add_argument("--cuda", action=argparse.BooleanOptionalAction, default=None,
                   help="--dry-run: plan for CUDA (default: whether CUDA is available)")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b]
    return args


def resolve(args, cuda: bool) -> None:
    """Fill in the device-dependent defaults."""
    args.config = args.config or ("120b" if cuda else "tiny")
    args.experts = args.experts or ("mxfp4" if cuda else "bf16")
    args.dtype = args.dtype or ("bfloat16" if cuda else "float32")


def make_config(args, layers: int | None, *, mxfp4: bool):
    from transformers import GptOssConfig

    spec = CONFIGS[args.config]
    if isinstance(spec, str):
        import tiny_gpt_oss

        cfg = tiny_gpt_oss.tiny_config(**({} if layers is None else dict(num_hidden_layers=layers)))
    else:
        cfg = GptOssConfig(**{**spec, **({} if layers is None else dict(num_hidden_layers=layers))})
    if mxfp4:
        cfg.quantization_config = {"quant_method": "mxfp4"}
    return cfg


def per_rank_bytes(cfg, ep: int, tp: int, experts: str, dtype_bytes: int) -> dict:
    """What one rank holds: its experts, and the dense weights (embedding and LM head split over TP)."""
    e, h, i, layers = cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    per_expert = 2 * i * h + h * i
    expert_bytes = (per_expert * (0.5 + 1 / 32)) if experts == "mxfp4" else per_expert * 2
    experts_b = layers * (e // ep) * (expert_bytes + (2 * i + h) * dtype_bytes)
    heads, kv, d = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    attn = h * (heads * d) * 2 + h * (kv * d) * 2 + (heads * d + 2 * kv * d + h + heads)
    dense = layers * (attn + e * h + e + 2 * h) * dtype_bytes + 2 * cfg.vocab_size * h * dtype_bytes / tp
    return dict(experts_gib=round(experts_b / 2**30, 1), dense_gib=round(dense / 2**30, 1),
                total_gib=round((experts_b + dense) / 2**30, 1))


def distributed_kwargs(args, world: int) -> dict:
    if world == 1:
        return {}
    from transformers.distributed import DistributedConfig

    kw = dict(ep_size=world)
    if args.tp_plan == "auto":
        kw["tp_plan"] = "auto"  # tp_size = WORLD_SIZE
    else:
        kw.update(tp_size=world, tp_plan={})
    if "ep_implementation" in DistributedConfig.__dataclass_fields__:
        kw["ep_implementation"] = args.ep_implementation
    elif args.ep_implementation != "auto":
        raise SystemExit("this transformers has no ep_implementation (5.25 has)")
    return dict(distributed_config=DistributedConfig(**kw))


# --- weights ----------------------------------------------------------------------------------------------


def _seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:6], "little")


def dense_state_dict(cfg, seed: int, device, dtype):
    """Every parameter but the expert weight tensors (their biases included), seeded per name: the same on
    every rank and every run. Scaled like examples/tiny_gpt_oss.py (fan-in^-1/2 matrices, norms about 1,
    non-zero biases and sinks), so logits are spread well beyond bf16 rounding."""
    import torch
    from transformers import GptOssForCausalLM

    with torch.device("meta"):
        skeleton = GptOssForCausalLM(cfg)
    sd = {}
    for name, p in skeleton.state_dict().items():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            continue
        gen = torch.Generator(device=device).manual_seed(_seed(seed, name))
        x = torch.randn(p.shape, generator=gen, device=device, dtype=torch.float32)
        if "norm" in name:
            x = 1 + 0.1 * x
        elif "sinks" in name:
            pass
        elif name.endswith("lm_head.weight") or "embed_tokens" in name:
            x = 0.5 * x
        elif p.dim() == 1:
            x = 0.1 * x
        else:
            x = x * p.shape[-1] ** -0.5
        sd[name] = x.to(dtype)
    del skeleton
    return sd


def expert_mxfp4(cfg, seed: int, layer: int, expert: int, device):
    """One expert's MXFP4 tensors as the checkpoint stores them (blocks uint8 (N, K/32, 16), scales (N, K/32)):
    random e2m1 nibbles, scales 2^-8 or 2^-7 (dequantized std ~ 0.017 ~ 2880^-1/2)."""
    import torch

    h, i = cfg.hidden_size, cfg.intermediate_size
    gen = torch.Generator(device=device).manual_seed(_seed(seed, "experts", layer, expert))
    u8 = dict(dtype=torch.uint8, device=device, generator=gen)
    return dict(
        gate_up_proj_blocks=torch.randint(0, 256, (2 * i, h // 32, 16), **u8),
        gate_up_proj_scales=torch.randint(119, 121, (2 * i, h // 32), **u8),
        down_proj_blocks=torch.randint(0, 256, (h, i // 32, 16), **u8),
        down_proj_scales=torch.randint(119, 121, (h, i // 32), **u8),
    )


def dequantize(blocks, scales, dtype):
    """transformers' own MXFP4 dequantization (integrations/mxfp4.py), one expert: (N, K/32, 16) -> (K, N)."""
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    return convert_moe_packed_tensors(blocks[None], scales[None], dtype=dtype)[0]


def fill_experts(model, cfg, seed: int, rank: int) -> int:
    """Writes this rank's experts into every layer's local shards (rank r holds [r E_local, (r+1) E_local)).
    Returns E_local."""
    import torch

    def local(t):
        return t.to_local() if hasattr(t, "to_local") else t

    e_local = None
    with torch.no_grad():
        for layer_idx, layer in enumerate(model.model.layers):
            experts = layer.mlp.experts
            mxfp4 = getattr(experts, "gate_up_proj_blocks", None) is not None
            first = local(experts.gate_up_proj_blocks if mxfp4 else experts.gate_up_proj)
            e_local = first.shape[0]
            for j in range(e_local):
                q = expert_mxfp4(cfg, seed, layer_idx, rank * e_local + j, first.device)
                if mxfp4:
                    for name, t in q.items():
                        local(getattr(experts, name))[j].copy_(t)
                else:
                    dt = local(experts.gate_up_proj).dtype
                    local(experts.gate_up_proj)[j].copy_(dequantize(q["gate_up_proj_blocks"],
                                                                    q["gate_up_proj_scales"], dt))
                    local(experts.down_proj)[j].copy_(dequantize(q["down_proj_blocks"], q["down_proj_scales"], dt))
    return e_local


# --- loading ------------------------------------------------------------------------------------------------


def load(impl: str, args, layers: int | None, sd, dist_kw: dict, device, dtype, rank: int):
    """One model: ours (``impl == "ours"``) or transformers' own, distributed when ``dist_kw`` is given, else on
    ``device``; its experts filled for ``rank``."""
    import torch
    from transformers import GptOssForCausalLM

    mxfp4 = impl == "ours" and args.experts == "mxfp4"
    cfg = make_config(args, layers, mxfp4=mxfp4)
    place = dict(dist_kw) if dist_kw else dict(device=str(device)) if impl == "ours" else dict(device_map=device)
    t0 = time.perf_counter()
    if impl == "ours":
        kernel = load_kernel()
        if mxfp4 and not hasattr(kernel, "moe_experts_mxfp4"):
            raise SystemExit("--experts mxfp4 needs the MXFP4 experts op (moe_experts_mxfp4) in this build; "
                             "use --experts bf16")
        model = kernel.from_pretrained(None, config=cfg, state_dict=sd, dtype=dtype, **place)
    else:
        model = GptOssForCausalLM.from_pretrained(None, config=cfg, state_dict=sd, dtype=dtype, use_kernels=False,
                                                  **place)
    e_local = fill_experts(model, cfg, args.seed, rank if dist_kw else 0)
    sync(device)
    return model.eval(), dict(load_s=round(time.perf_counter() - t0, 1), local_experts=e_local)


_KERNEL = None
RANK = 0


def log(*a) -> None:
    if RANK == 0:
        print(*a, flush=True)


def load_kernel():
    global _KERNEL
    if _KERNEL is None:
        import kernels
        import torch

        _KERNEL = kernels.get_local_kernel(ROOT / "build", backend=None if torch.cuda.is_available() else "cpu")
    return _KERNEL


def free() -> None:
    """After the caller dropped its references (``del model``)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --- check --------------------------------------------------------------------------------------------------


def compare(a, b) -> dict:
    rel = ((a - b).abs().max() / b.abs().max()).item()
    agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    return dict(rel_err=round(rel, 6), argmax_agreement=round(agree, 4))


def outputs(model, device, vocab: int, seed: int):
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(1, vocab, (1, 512), generator=gen).to(device)
    with torch.inference_mode():
        logits = model(ids).logits[0].float().cpu()
        tokens = model.generate(ids[:, :32], attention_mask=torch.ones_like(ids[:, :32]), max_new_tokens=16,
                                min_new_tokens=16, do_sample=False)[0, 32:].cpu()
    return logits, tokens


def run_check(args, rank: int, world: int, device, dtype, dist_kw) -> dict:
    import torch
    import torch.distributed as dist

    layers = args.check_layers
    cfg = make_config(args, layers, mxfp4=False)
    sd = dense_state_dict(cfg, args.seed, device, dtype)
    impls = ["ours", "transformers"] if args.impl == "both" else [args.impl]
    res = dict(layers=layers, impls={})
    ep_out = {}
    for impl in impls:
        model, info = load(impl, args, layers, sd, dist_kw, device, dtype, rank)
        ep_out[impl] = outputs(model, device, cfg.vocab_size, args.seed)
        res["impls"][impl] = dict(ep_load=info)
        del model
        free()
    if world > 1:
        # every rank must hold the same logits (the all-reduce / all-gather leave no rank behind)
        for impl in impls:
            ref = ep_out[impl][0].to(device)
            gathered = [torch.empty_like(ref) for _ in range(world)]
            dist.all_gather(gathered, ref)
            same = all(torch.equal(g, gathered[0]) for g in gathered)
            res["impls"][impl]["ranks_bit_identical"] = same
        dist.barrier()
    if rank == 0:
        fp32_sd = {k: v.float() for k, v in sd.items()}
        one = {}
        for impl in impls:
            model, info = load(impl, args, layers, sd, {}, device, dtype, 0)
            one[impl] = outputs(model, device, cfg.vocab_size, args.seed)
            res["impls"][impl]["one_gpu_load"] = info
            del model
            free()
        model, _ = load("transformers", args, layers, fp32_sd, {}, device, torch.float32, 0)
        ref32 = outputs(model, device, cfg.vocab_size, args.seed)[0]
        del model, fp32_sd
        free()
        for impl in impls:
            ep_logits, ep_tokens = ep_out[impl]
            one_logits, one_tokens = one[impl]
            r = res["impls"][impl]
            r.update(ep_vs_one_gpu=compare(ep_logits, one_logits), ep_vs_fp32=compare(ep_logits, ref32),
                     one_gpu_vs_fp32=compare(one_logits, ref32),
                     greedy_tokens_equal=bool(torch.equal(ep_tokens, one_tokens)),
                     greedy_tokens_agreement=round((ep_tokens == one_tokens).float().mean().item(), 3))
            if world > 1:
                r["pass"] = bool(r["ranks_bit_identical"]
                                 and r["ep_vs_fp32"]["rel_err"] <= 1.5 * r["one_gpu_vs_fp32"]["rel_err"] + 1e-2
                                 and r["ep_vs_fp32"]["argmax_agreement"]
                                 >= r["one_gpu_vs_fp32"]["argmax_agreement"] - 0.01)
            print(f"check {impl}: {json.dumps(r)}", flush=True)
    if world > 1:
        dist.barrier()
    del sd
    free()
    return res


# --- bench --------------------------------------------------------------------------------------------------


def timed(fn, reps: int, device, world: int) -> float:
    """Median over `reps` (after one warm-up) of the slowest rank's wall seconds, every rank in lockstep."""
    import torch
    import torch.distributed as dist

    fn()
    sync(device)
    times = []
    for _ in range(reps):
        if world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        fn()
        sync(device)
        dt = torch.tensor([time.perf_counter() - t0], dtype=torch.float64, device=device)
        if world > 1:
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
        times.append(dt.item())
    return statistics.median(times)


def measure(model, args, device, world: int, vocab: int) -> dict:
    import torch

    gen = torch.Generator().manual_seed(args.seed + 2)
    res = {}
    with torch.inference_mode():
        ids = torch.randint(1, vocab, (1, args.prefill), generator=gen).to(device)
        s = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), args.reps, device, world)
        res[f"prefill_{args.prefill}_tok_s"] = round(args.prefill / s, 1)
        log(f"  prefill {args.prefill}: {args.prefill / s:.0f} tok/s ({1e3 * s:.1f} ms)")
        for b in args.batches:
            prompt = torch.randint(1, vocab, (b, args.prompt), generator=gen).to(device)

            def run(prompt=prompt):
                return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new_tokens,
                                      min_new_tokens=args.new_tokens, do_sample=False)

            s = timed(run, args.reps, device, world)
            res[f"generate_b{b}_tok_s"] = round(b * args.new_tokens / s, 1)
            log(f"  generate batch {b}: {b * args.new_tokens / s:.1f} new tok/s")
    return res


def run_bench(args, rank: int, world: int, device, dtype, dist_kw) -> dict:
    layers = args.layers
    cfg = make_config(args, layers, mxfp4=False)
    sd = dense_state_dict(cfg, args.seed, device, dtype)
    # Kept on the host between the two loads: on 2 GPUs transformers' bf16 model leaves no room for a copy.
    sd = {k: v.cpu() for k, v in sd.items()}
    impls = ["transformers", "ours"] if args.impl == "both" else [args.impl]
    res = dict(layers=cfg.num_hidden_layers, impls={})
    for impl in impls:
        model, info = load(impl, args, layers, sd, dist_kw, device, dtype, rank)
        log(f"{impl}: loaded in {info['load_s']} s, {info['local_experts']} experts per rank")
        res["impls"][impl] = dict(load=info, **measure(model, args, device, world, cfg.vocab_size))
        if device.type == "cuda":
            import torch

            res["impls"][impl]["max_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 1)
            torch.cuda.reset_peak_memory_stats(device)
        del model
        free()
    if len(impls) == 2:
        t, o = res["impls"]["transformers"], res["impls"]["ours"]
        res["rows"] = [dict(what=k, transformers=t[k], ours=o[k], speedup=round(o[k] / t[k], 2))
                       for k in o if k.endswith("tok_s")]
    return res


# --- main ---------------------------------------------------------------------------------------------------


def dry_run(args) -> dict:
    cuda = args.cuda
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    resolve(args, cuda)
    world = args.nproc or int(os.environ.get("WORLD_SIZE", 1))
    cfg = make_config(args, args.layers, mxfp4=args.experts == "mxfp4")
    if world > 1 and cfg.num_local_experts % world:
        raise SystemExit(f"{cfg.num_local_experts} experts do not split over {world} ranks")
    tp = world if args.tp_plan == "auto" else 1
    dtype_bytes = 2 if args.dtype == "bfloat16" else 4
    plan = dict(
        world=world, backend="nccl" if cuda else "gloo", config=args.config, layers=cfg.num_hidden_layers,
        experts=cfg.num_local_experts, top_k=cfg.num_experts_per_tok, experts_per_rank=cfg.num_local_experts // world,
        ours_experts=args.experts, dtype=args.dtype, tp_plan=args.tp_plan, ep_implementation=args.ep_implementation,
        mode=args.mode, impl=args.impl, batches=args.batches, prefill=args.prefill, prompt=args.prompt,
        new_tokens=args.new_tokens, reps=args.reps, check_layers=args.check_layers,
        per_rank_ours=per_rank_bytes(cfg, world, tp, args.experts, dtype_bytes),
        per_rank_transformers=per_rank_bytes(cfg, world, tp, "bf16", dtype_bytes),
        out=str(args.out / f"e2e_ep_{world}gpu.json"),
    )
    print(json.dumps(plan, indent=1))
    return plan


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.dry_run:
        dry_run(args)
        return
    import datetime

    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    resolve(args, cuda)
    global RANK
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    RANK = rank
    import transformers

    transformers.logging.set_verbosity_error()  # the load report lists the experts as missing: they are filled after
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(world, 1)))
    if world > 1 and not dist.is_initialized():
        # transformers would initialise the same group (nccl / gloo from RANK, WORLD_SIZE); doing it first lets the
        # one-GPU reference of the check synchronise with the other ranks.
        dist.init_process_group("nccl" if cuda else "gloo", device_id=device if cuda else None,
                                timeout=datetime.timedelta(minutes=30))
    dtype = getattr(torch, args.dtype)
    dist_kw = distributed_kwargs(args, world)
    args.out.mkdir(parents=True, exist_ok=True)
    result = dict(world=world, device=torch.cuda.get_device_name(device) if cuda else "cpu",
                  torch=torch.__version__, transformers=transformers.__version__, config=args.config,
                  experts=args.experts, dtype=args.dtype, tp_plan=args.tp_plan,
                  ep_implementation=args.ep_implementation, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    if args.mode in ("check", "both"):
        result["check"] = run_check(args, rank, world, device, dtype, dist_kw)
    if args.mode in ("bench", "both"):
        result["bench"] = dict(prefill=args.prefill, prompt=args.prompt, new_tokens=args.new_tokens,
                               batches=args.batches, reps=args.reps,
                               **run_bench(args, rank, world, device, dtype, dist_kw))
    if rank == 0:
        path = args.out / f"e2e_ep_{world}gpu.json"
        path.write_text(json.dumps(result, indent=1))
        print(f"wrote {path}")
        for row in result.get("bench", {}).get("rows", []):
            print(f"| {row['what']} | {row['transformers']} | {row['ours']} | {row['speedup']}x |")
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
