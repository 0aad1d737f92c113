#!/usr/bin/env python3
"""Decode routes at gpt-oss-20b shapes, one process: generate (dynamic cache, static cache), DecodeRunner, and
continuous batching, with our kernels; continuous batching also with transformers' defaults.

The model: gpt-oss-20b's configuration with random weights (``e2e_model.build_model``: bf16 on the GPU, no
download), loaded through the package's ``from_pretrained`` (every layer of ours; ``--mxfp4``: written as an MXFP4
checkpoint and loaded as stored). Greedy, ``--prompt`` (128) tokens, ``--new-tokens`` (256) new tokens
(``min_new_tokens`` too, so every route makes them all), batch 1 and 16:

- ``generate_dynamic``: ``model.generate`` with the dynamic cache;
- ``generate_static``: ``cache_implementation="static"`` (transformers compiles the decode step): the first
  call (compile) apart, and ``static_vs_dynamic_tokens``: the fraction of new tokens equal to the dynamic route's;
- ``runner_N`` for N in ``--steps`` (1 8 32): ``DecodeRunner(model, steps_per_launch=N)``: capture seconds of the
  first call, launches (graph replays) per generated token.

Every route's tokens are also checked teacher forced: the eager model's argmax on the route's own output
(``teacher_forced_agreement``, 1.0 = each token is the one the model picks after the tokens before it).

Continuous batching (unless ``--no-cb``): ``--cb-requests`` (64) requests, prompts of 32-512 and answers of 32-256
tokens (seeded), through transformers' manager (``add_request`` per request with its own ``max_new_tokens``):
transformers' defaults (the plain model, paged eager attention; with ``--mxfp4`` the MXFP4 checkpoint loaded by
transformers, i.e. its own MXFP4 path, as users of the shipped checkpoint get it) and ours (our attention under the name
generate_batch accepts, ``ContinuousBatchingConfig(use_cuda_graph=True)``); total generated tok/s of a second run
(the first, with warm-up and capture, apart), and teacher-forced agreement of the answers. Where the defaults run
out of memory with their own ``max_batch_tokens``, they run with the largest of ``CB_FALLBACK_BUDGETS`` that fits,
and ours also with that budget (``ours_same_budget``).

``--tiny``: the tiny model on the CPU in fp32 (a smoke run of the script; no compile, no CUDA graphs).
Writes --out/e2e_decode.json and --out/e2e_decode.md (also printed); ``--cb-only``: e2e_decode_cb.json / .md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def timed(fn, reps: int, device) -> tuple[float, object]:
    """Median wall seconds of ``reps`` calls (synchronised around each), and the last call's result."""
    times, out = [], None
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


@torch.inference_mode()
def teacher_forced_agreement(model, sequences: torch.Tensor, prompt_len: int) -> float:
    """Fraction of new tokens equal to the model's argmax given the tokens before them (one forward per row)."""
    hits = total = 0
    for row in sequences:
        logits = model(row[None]).logits[0, prompt_len - 1:-1]
        hits += int((logits.argmax(-1) == row[prompt_len:]).sum())
        total += row.numel() - prompt_len
    return round(hits / max(total, 1), 4)


def decode_routes(kernel, model, batch: int, args, device) -> dict:
    vocab = model.config.vocab_size
    prompt = torch.randint(1, vocab, (batch, args.prompt), device=device,
                           generator=torch.Generator(device=device).manual_seed(100 + batch))
    new = args.new_tokens
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new, min_new_tokens=new, do_sample=False)
    res = {}
    with torch.inference_mode():
        model.generate(prompt, **kw)  # warm-up (Triton compiles)
        s, dynamic = timed(lambda: model.generate(prompt, **kw), args.reps, device)
    res["generate_dynamic"] = dict(tok_s=round(batch * new / s, 1), launches_per_token=None,
                                   teacher_forced_agreement=teacher_forced_agreement(model, dynamic, args.prompt))
    print(f"  batch {batch} generate, dynamic cache: {res['generate_dynamic']}", flush=True)
    if not args.no_static:
        try:
            with torch.inference_mode():
                _sync(device)
                t0 = time.perf_counter()
                model.generate(prompt, cache_implementation="static", **kw)
                _sync(device)
                first = time.perf_counter() - t0
                s, static = timed(lambda: model.generate(prompt, cache_implementation="static", **kw), args.reps, device)
            res["generate_static"] = dict(
                tok_s=round(batch * new / s, 1), first_call_s=round(first, 2), launches_per_token=None,
                static_vs_dynamic_tokens=round((static[:, args.prompt:] == dynamic[:, args.prompt:]).float().mean().item(), 4),
                teacher_forced_agreement=teacher_forced_agreement(model, static, args.prompt))
        except Exception as e:  # noqa: BLE001 (a failing route is a result)
            res["generate_static"] = dict(error=f"{type(e).__name__}: {e}"[:500])
        print(f"  batch {batch} generate, static cache: {res['generate_static']}", flush=True)
    for n in args.steps:
        runner = kernel.DecodeRunner(model, steps_per_launch=n)
        rkw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False)
        try:
            _sync(device)
            t0 = time.perf_counter()
            runner.generate(prompt, **rkw)
            _sync(device)
            first = time.perf_counter() - t0
            first_stats = dict(runner.last_stats)
            s, out = timed(lambda: runner.generate(prompt, **rkw), args.reps, device)
            stats = runner.last_stats
            res[f"runner_{n}"] = dict(
                tok_s=round(batch * new / s, 1), first_call_s=round(first, 2), capture_s=first_stats["capture_s"],
                graphed=stats["graphed"], launches=stats["launches"], launches_per_token=stats["launches_per_token"],
                max_cache_len=stats["max_cache_len"],
                runner_vs_dynamic_tokens=round((out[:, args.prompt:] == dynamic[:, args.prompt:]).float().mean().item(), 4),
                teacher_forced_agreement=teacher_forced_agreement(model, out, args.prompt))
        except Exception as e:  # noqa: BLE001
            res[f"runner_{n}"] = dict(error=f"{type(e).__name__}: {e}"[:500])
        print(f"  batch {batch} DecodeRunner N={n}: {res[f'runner_{n}']}", flush=True)
        del runner
        gc.collect()
    if args.ab:
        res.update(ab_routes(kernel, model, prompt, batch, max(args.steps), args, device))
    return res


def ab_routes(kernel, model, prompt, batch, n, args, device) -> dict:
    """The DecodeRunner (N = n) with one change undone at a time, in this process: the rotary + KV-write fusion off
    (``_RunnerCache.fuse_rotary``), the post-attention residual add outside the norm (``fuse_residual`` on each
    decoder layer of the fused route), the MXFP4 experts back on the checkpoint's bytes (``use_kernel_words(False)``;
    MXFP4 only), and each ``--ab-env`` variable set (a kernel switch read at launch). Each is restored after its
    run; ``--ab-only`` picks among them."""
    from importlib import import_module

    decode = import_module(kernel.__name__ + ".integrations.decode")
    experts = [m for m in model.modules() if isinstance(m, kernel.layers.MoeExpertsLayout)]
    variants = {"unfused_rotary": (lambda on: setattr(decode._RunnerCache, "fuse_rotary", not on)),
                "unfused_residual": (lambda on: [setattr(layer, "fuse_residual", not on)
                                                 for layer in model.model.layers])}
    if args.mxfp4:
        variants["checkpoint_bytes"] = lambda on: [m.use_kernel_words(not on) for m in experts]
    for kv in args.ab_env:
        name, _, value = kv.partition("=")
        variants[f"env_{kv}"] = (lambda on, name=name, value=value:
                                 os.environ.__setitem__(name, value) if on else os.environ.pop(name, None))
    if args.ab_only is not None:
        variants = {k: v for k, v in variants.items() if k in args.ab_only}
    rkw = dict(max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
    res = {}
    for name, switch in variants.items():
        switch(True)
        try:
            runner = kernel.DecodeRunner(model, steps_per_launch=n)
            runner.generate(prompt, **rkw)
            s, _ = timed(lambda: runner.generate(prompt, **rkw), args.reps, device)
            res[f"runner_{n}_{name}"] = dict(tok_s=round(batch * args.new_tokens / s, 1),
                                             launches_per_token=runner.last_stats["launches_per_token"])
        except Exception as e:  # noqa: BLE001
            res[f"runner_{n}_{name}"] = dict(error=f"{type(e).__name__}: {e}"[:500])
        finally:
            switch(False)
        print(f"  batch {batch} DecodeRunner N={n}, {name}: {res[f'runner_{n}_{name}']}", flush=True)
        del runner
        gc.collect()
    return res


# --- continuous batching ---------------------------------------------------------------------------------------------


def cb_requests(n: int, vocab: int, tiny: bool) -> list[tuple[list[int], int]]:
    gen = torch.Generator().manual_seed(7)
    lo_p, hi_p, lo_a, hi_a = (4, 24, 2, 12) if tiny else (32, 512, 32, 256)
    out = []
    for _ in range(n):
        p = int(torch.randint(lo_p, hi_p + 1, (1,), generator=gen))
        a = int(torch.randint(lo_a, hi_a + 1, (1,), generator=gen))
        out.append((torch.randint(1, vocab, (p,), generator=gen).tolist(), a))
    return out


def cb_run(model, requests, cb_config, resolved_into: dict | None = None) -> tuple[float, dict]:
    """All requests through transformers' continuous-batching manager, each with its own max_new_tokens: wall
    seconds and {request index: generated tokens}; ``resolved_into`` gets the settings transformers resolved
    (``resolved``)."""
    from transformers import GenerationConfig
    from transformers.generation.continuous_batching.utils import WorkloadHints

    gc_ = GenerationConfig(do_sample=False, max_new_tokens=max(a for _, a in requests), eos_token_id=None)
    hints = WorkloadHints(max_prompt_length=max(len(p) for p, _ in requests),
                          max_generated_length=max(a for _, a in requests), num_requests=len(requests))
    results = {}
    _sync(model.device)
    t0 = time.perf_counter()
    with model.continuous_batching_context_manager(generation_config=gc_, continuous_batching_config=cb_config,
                                                   block=True, timeout=5, workload_hints=hints) as manager:
        ids = {manager.add_request(p, request_id=f"r{i}", max_new_tokens=a): i for i, (p, a) in enumerate(requests)}
        while len(results) < len(requests):
            r = manager.get_result(timeout=1)
            if r is not None and r.is_finished():
                if r.error is not None:
                    raise RuntimeError(f"request {r.request_id}: {r.error}")
                results[ids[r.request_id]] = r.generated_tokens
            elif r is None and not manager.is_running():
                raise RuntimeError("continuous batching stopped before every request finished")
        if resolved_into is not None:
            resolved_into.update(resolved(manager.continuous_batching_config))
    _sync(model.device)
    return time.perf_counter() - t0, results


# What transformers resolved for a run (the manager's deep copy of the config, filled in when it starts).
_RESOLVED = ("use_cuda_graph", "use_async_batching", "max_blocks_per_request", "max_batch_tokens", "num_blocks",
             "max_requests_per_batch", "q_padding_interval_size", "kv_padding_interval_size", "page_size")


def resolved(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k in _RESOLVED if (v := getattr(cfg, k, None)) is not None}


def cb_profile(model, requests, config, n: int = 25) -> dict:
    """One more run of ``requests`` under torch.profiler (after the timed one: graphs captured): where the wall time
    goes. GPU busy = union of the GPU's kernel / copy intervals; the kernels summed by name (profile_decode's
    kernel_table, largest first); the runtime calls that launch work or wait, counted over all threads (CUPTI sees the
    manager's thread too)."""
    from profile_decode import _GRAPH_LAUNCHES, _KERNEL_LAUNCHES, _SYNCS, _union, kernel_table

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        wall, _ = cb_run(model, requests, config())
    events = list(prof.events())
    gpu = [e for e in events if e.device_type != torch.autograd.DeviceType.CPU and e.time_range.elapsed_us() > 0]
    cpu_names = [e.name for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    top = [dict(kernel=r["kernel"], ms=round(r["us_per_step"] / 1e3, 2), calls=int(r["per_step"]))
           for r in kernel_table(prof, float("-inf"), 1, skip=(), n=n)]  # one "step": the whole run
    return dict(wall_s=round(wall, 3), gpu_busy_s=round(_union((e.time_range.start, e.time_range.end) for e in gpu) / 1e6, 3),
                kernel_sum_s=round(sum(e.time_range.elapsed_us() for e in gpu) / 1e6, 3),
                graph_launches=sum(n in _GRAPH_LAUNCHES for n in cpu_names),
                kernel_launches=sum(n in _KERNEL_LAUNCHES for n in cpu_names),
                syncs_and_copies=sum(n in _SYNCS for n in cpu_names), top_kernels=top)


def _cb_measure(kernel, name, model, requests, config, device, profile_it: bool = False) -> dict:
    """Two runs (warm-up, then timed) of ``requests`` through ``config()``, and the outputs' teacher-forced
    agreement with the model's own full-sequence forward; ``profile_it``: a third run under the profiler
    (``cb_profile``)."""
    before = model.config._attn_implementation
    try:
        if name.startswith("ours"):
            model.set_attn_implementation(kernel.integrations.attention_implementation(continuous_batching=True))
        first, _ = cb_run(model, requests, config())
        settings = {}
        wall, results = cb_run(model, requests, config(), settings)
        total = sum(len(results[i]) for i in range(len(requests)))
        profile = cb_profile(model, requests, config) if profile_it else None
        agree_hits = agree_total = 0
        with torch.inference_mode():
            for i, (p, _) in enumerate(requests):
                seq = torch.tensor(p + list(results[i]), device=device)
                logits = model(seq[None]).logits[0, len(p) - 1:-1]
                agree_hits += int((logits.argmax(-1) == seq[len(p):]).sum())
                agree_total += len(results[i])
        r = dict(tok_s=round(total / wall, 1), wall_s=round(wall, 2), first_run_s=round(first, 2),
                 generated_tokens=total, attn_implementation=model.config._attn_implementation,
                 teacher_forced_agreement=round(agree_hits / max(agree_total, 1), 4), resolved_config=settings)
        if profile is not None:
            r["profile"] = profile
        return r
    except Exception as e:  # noqa: BLE001
        return dict(error=f"{type(e).__name__}: {e}"[:500])
    finally:
        model.set_attn_implementation(before)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# transformers' defaults first with their own batch budget; where their eager attention's score tensor does not fit
# beside the cache (8 and 16 GiB allocations on an 80 GB H100, 2026-12-06 / -07), with the largest of these that runs.
CB_FALLBACK_BUDGETS = (1024, 512, 256, 128)


def continuous_batching(kernel, plain, ours, args, device, load_ours=None) -> dict:
    """``ours`` None: loaded by ``load_ours()`` after the defaults' run, with a bf16 defaults' model moved to the CPU
    first (a bf16 20b-shaped model twice does not fit an 80 GB GPU beside the caches; two MXFP4 ones do).

    transformers' defaults (paged eager attention) run with their own ``max_batch_tokens``; if that runs out of
    memory, with the largest of ``CB_FALLBACK_BUDGETS`` that fits (recorded as ``max_batch_tokens``), and ours then
    runs both with its own budget (``ours``) and with the defaults' (``ours_same_budget``): ``speedup`` is ours
    against the defaults as each runs unchanged (or with the smallest change that lets it run),
    ``speedup_same_budget`` the like-for-like one."""
    from transformers import ContinuousBatchingConfig

    requests = cb_requests(args.cb_requests, (ours or plain).config.vocab_size, args.tiny)
    graphs = torch.device(device).type == "cuda"
    # Both get half the free memory for the KV cache: with transformers' 0.9 the defaults' eager attention ran out
    # of memory on an 80 GB H100 (2026-12-06).
    mem = dict(max_memory_percent=0.5) if graphs else {}
    runs = {}
    budget, too_big = None, []
    if plain is not None:
        for budget in (None,) + (CB_FALLBACK_BUDGETS if graphs else ()):
            extra = {} if budget is None else dict(max_batch_tokens=budget)
            r = _cb_measure(kernel, "transformers_defaults", plain, requests,
                            lambda: ContinuousBatchingConfig(auto_switch_to_flash=False, **mem, **extra), device)
            r["max_batch_tokens"] = budget or "transformers' choice"
            if too_big:
                r["out_of_memory_with"] = list(too_big)
            runs["transformers_defaults"] = r
            print(f"  continuous batching, transformers_defaults: {r}", flush=True)
            if "out of memory" not in r.get("error", ""):
                break
            too_big.append(r["max_batch_tokens"])
    if ours is None and load_ours is not None:
        if plain is not None and getattr(plain.config, "quantization_config", None) is None:
            plain.to("cpu")  # bf16: two 20b-shaped models do not fit an 80 GB GPU beside the caches (MXFP4 ones do)
        gc.collect()
        torch.cuda.empty_cache()
        ours = load_ours()
    if ours is not None:
        variants = [("ours", None)] + ([("ours_same_budget", budget)] if budget is not None else [])
        for name, b in variants:
            extra = {} if b is None else dict(max_batch_tokens=b)
            runs[name] = _cb_measure(kernel, name, ours, requests,
                                     lambda: ContinuousBatchingConfig(use_cuda_graph=graphs, **mem, **extra), device,
                                     profile_it=args.cb_profile and name == "ours")
            runs[name]["max_batch_tokens"] = b or "transformers' choice"
            print(f"  continuous batching, {name}: {runs[name]}", flush=True)
    base = runs.get("transformers_defaults", {}).get("tok_s")
    for name, key in (("ours", "speedup"), ("ours_same_budget", "speedup_same_budget")):
        if base and "tok_s" in runs.get(name, {}):
            runs[key] = round(runs[name]["tok_s"] / base, 2)
    runs["max_memory_percent"] = mem.get("max_memory_percent")
    if plain is not None:
        quant = getattr(plain.config, "quantization_config", None)
        runs["defaults_experts"] = (str(plain.dtype).removeprefix("torch.") if quant is None
                                    else f"{getattr(quant, 'quant_method', quant)} (transformers' own path)")
    runs["requests"] = len(requests)
    runs["prompt_tokens"] = sum(len(p) for p, _ in requests)
    return runs


# --- main -----------------------------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    lines = [f"## Decode routes: {res['what']}", "",
             f"{res['prompt']}-token prompt, {res['new_tokens']} new tokens, greedy; {res['device']}, torch "
             f"{res['torch']}, transformers {res['transformers']}, {res['date']}.", ""]
    if res["batches"]:
        lines += ["| route | batch | tok/s | first call s | capture s | launches / token | teacher-forced agreement |",
                  "|---|---|---|---|---|---|---|"]
    for b, routes in res["batches"].items():
        for route, r in routes.items():
            if "error" in r:
                lines.append(f"| {route} | {b} | error: {r['error'][:120]} | | | | |")
                continue
            lines.append(f"| {route} | {b} | {r['tok_s']} | {r.get('first_call_s', '')} | {r.get('capture_s', '')} | "
                         f"{r.get('launches_per_token') if r.get('launches_per_token') is not None else '1+ (per step)'} | "
                         f"{r.get('teacher_forced_agreement')} |")
    for b, routes in res["batches"].items():
        st = routes.get("generate_static", {})
        if "static_vs_dynamic_tokens" in st:
            lines.append(f"\nbatch {b}: static-cache tokens equal to the dynamic cache's at "
                         f"{st['static_vs_dynamic_tokens']:.1%} of positions.")
    cb = res.get("continuous_batching")
    if cb:
        lines += ["", f"Continuous batching: {cb['requests']} requests ({cb['prompt_tokens']} prompt tokens), "
                  f"prompts 32-512, answers 32-256 tokens; transformers' defaults with "
                  f"{cb.get('defaults_experts', 'bf16')} experts:", "",
                  "| | tok/s | max_batch_tokens | wall s (2nd run) | 1st run s | attention | teacher-forced agreement |",
                  "|---|---|---|---|---|---|---|"]
        for name in ("transformers_defaults", "ours", "ours_same_budget"):
            r = cb.get(name, {})
            if "error" in r:
                lines.append(f"| {name} | error: {r['error'][:160]} | {r.get('max_batch_tokens', '')} | | | | |")
            elif r:
                lines.append(f"| {name} | {r['tok_s']} | {r['max_batch_tokens']} | {r['wall_s']} | "
                             f"{r['first_run_s']} | {r['attn_implementation']} | {r['teacher_forced_agreement']} |")
        for name in ("transformers_defaults", "ours", "ours_same_budget"):
            if cb.get(name, {}).get("resolved_config"):
                lines.append(f"\n{name}, as transformers resolved it: {cb[name]['resolved_config']}")
        prof = cb.get("ours", {}).get("profile")
        if prof:
            lines += ["", f"ours under the profiler: wall {prof['wall_s']} s, GPU busy {prof['gpu_busy_s']} s "
                      f"({prof['gpu_busy_s'] / prof['wall_s']:.0%}), kernel sum {prof['kernel_sum_s']} s; "
                      f"{prof['graph_launches']} graph launches, {prof['kernel_launches']} kernel launches, "
                      f"{prof['syncs_and_copies']} syncs / copies.", "", "| GPU kernel | ms | calls |", "|---|---|---|"]
            lines += [f"| {k['kernel']} | {k['ms']} | {k['calls']} |" for k in prof["top_kernels"]]
        oom = cb.get("transformers_defaults", {}).get("out_of_memory_with")
        if oom:
            lines.append(f"\ntransformers' defaults ran out of memory with max_batch_tokens {', '.join(map(str, oom))}.")
        for key, what in (("speedup", "ours / defaults"), ("speedup_same_budget", "ours / defaults, same budget")):
            if key in cb:
                lines.append(f"\n{what}: {cb[key]}x")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    import transformers
    from harness import load_kernel

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "probe_out")))
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (smoke run)")
    parser.add_argument("--mxfp4", action="store_true", help="MXFP4 experts (checkpoint written and loaded as stored)")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--steps", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-cb", action="store_true", help="skip continuous batching")
    parser.add_argument("--no-static", action="store_true",
                        help="skip generate's static cache (its flash-style route reads unwritten slots, docs/transformers.md)")
    parser.add_argument("--cb-only", action="store_true", help="only continuous batching")
    parser.add_argument("--torch-projections", action="store_true",
                        help="attention projections through torch's linear (the A/B of multi_linear)")
    parser.add_argument("--cb-requests", type=int, default=64)
    parser.add_argument("--cb-profile", action="store_true",
                        help="ours' continuous batching once more under torch.profiler (cb_profile: GPU busy, kernels)")
    parser.add_argument("--ab", action="store_true",
                        help="also the runner with the rotary fusion off / the residual add unfused / MXFP4 on the "
                             "checkpoint's bytes (ab_routes)")
    parser.add_argument("--ab-env", nargs="*", default=[], metavar="NAME=VALUE",
                        help="with --ab: also the runner with this environment variable set (a kernel switch)")
    parser.add_argument("--ab-only", nargs="*", default=None,
                        help="with --ab: only these variants (unfused_rotary, unfused_residual, checkpoint_bytes, "
                             "env_NAME=VALUE)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    kernel = load_kernel()
    kernel.attention.projection.KERNEL = not args.torch_projections
    plain = None
    if args.tiny:
        from tiny_gpt_oss import tiny_model, with_our_kernels

        device = "cpu"
        args.prompt, args.new_tokens = min(args.prompt, 12), min(args.new_tokens, 10)
        args.cb_requests = min(args.cb_requests, 6)
        args.reps = 1
        plain = tiny_model(seed=3)
        ours = with_our_kernels(plain)
        what = "tiny GPT-OSS (CPU, fp32)"
    else:
        from e2e_model import build_model, load_transformers_mxfp4

        device = "cuda"
        torch.manual_seed(0)
        t0 = time.perf_counter()
        plain = build_model(args.layers)
        path = Path(os.environ.get("MXFP4_CKPT", "/tmp/gpt-oss-20b-shaped-mxfp4"))
        if args.mxfp4:
            from tiny_checkpoint import write_mxfp4_checkpoint

            write_mxfp4_checkpoint(plain, path)
            if not args.no_cb:
                # The checkpoint as it ships: transformers' defaults load it through their own MXFP4 path.
                del plain
                gc.collect()
                torch.cuda.empty_cache()
                plain = load_transformers_mxfp4(path)

        def load_ours():
            if args.mxfp4:
                return kernel.from_pretrained(path, device="cuda", dtype=torch.bfloat16)
            return kernel.from_pretrained(None, config=plain.config, state_dict=plain.state_dict(), device="cuda",
                                          dtype=torch.bfloat16)

        ours = None if args.cb_only else load_ours()
        if args.no_cb:  # the defaults' model only serves the continuous-batching comparison
            plain = None
        gc.collect()
        torch.cuda.empty_cache()
        print(f"models ready in {time.perf_counter() - t0:.0f} s", flush=True)
        what = f"gpt-oss-20b shapes ({args.layers} layers), ours with {'MXFP4' if args.mxfp4 else 'bf16'} experts"
    res = dict(what=what, device=torch.cuda.get_device_name() if device == "cuda" else "cpu",
               switches={k: v for k, v in sorted(os.environ.items()) if k.startswith("GOK_")}, torch=torch.__version__,
               transformers=transformers.__version__, prompt=args.prompt, new_tokens=args.new_tokens,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), batches={},
               projections="torch linear" if args.torch_projections else "multi_linear")
    stem = "e2e_decode_cb" if args.cb_only else "e2e_decode"
    if not args.cb_only:
        for b in args.batches:
            res["batches"][str(b)] = decode_routes(kernel, ours, b, args, device)
            (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    if not args.no_cb:
        res["continuous_batching"] = continuous_batching(kernel, plain, ours, args, device,
                                                         load_ours=None if args.tiny else load_ours)
    if device == "cuda":
        res["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (args.out / f"{stem}.md").write_text(md)
    print(md, flush=True)
    return res


if __name__ == "__main__":
    main()
