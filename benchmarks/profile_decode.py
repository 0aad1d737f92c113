#!/usr/bin/env python3
"""Where a decode step's time goes: ``generate(..., cache_implementation="static")`` batch 1 under torch.profiler.

The model: gpt-oss-20b's shapes with random weights built on the GPU (``e2e_model.build_model``), loaded through
the package's ``from_pretrained`` (every layer of ours; bf16 experts, or ``--mxfp4``: the same model written as an
MXFP4 checkpoint and loaded as stored). ``--tiny``: the tiny GPT-OSS of the tests on the CPU (fp32; generate does
not compile there), for CI.

One warm-up call (transformers compiles the decode step on CUDA: ``first_call_s``), one timed call, then one call
under the profiler (CPU + CUDA activity). generate's per-step pieces are wrapped in named ranges (instance or
class patches, removed afterwards): ``prepare_inputs`` (prepare_inputs_for_generation, the masks included),
``forward`` (the compiled call: guards, CUDA-graph replay, eager pieces between graph breaks), ``update_kwargs``,
``logits_processors``, ``stopping_criteria``, ``stop_check`` (generate's ``unfinished.max() == 0``: on CUDA it
waits for the GPU every step), ``cache_update`` (CPU only: on CUDA it is inside the compiled forward). A step
is the host time from one ``prepare_inputs`` to the next. Per step: wall, the sum of kernel durations that
start in it, GPU busy (union of kernel intervals) and idle, the host ranges, and the runtime calls (kernel
launches, graph launches, synchronisations). torch._dynamo's counters (graphs, graph breaks and their reasons, recompiles, cudagraph
skips) are read after the warm-up and after the profiled call.

``--runner N``: also the package's DecodeRunner with N steps per launch (the "after"), profiled the same way
with one launch (N tokens) per window. ``--trace``: Chrome traces (open in Perfetto). ``--png``: a timeline
picture of one decode step of generate above the first 1/N of a launch of each runner (matplotlib; the JSON keeps
the events of that step / launch under ``timeline`` either way).

Writes --out/profile_decode.json and --out/profile_decode.md (also printed).
"""

from __future__ import annotations

import argparse
import contextlib
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

# Runtime calls that launch work / wait for the device (CUDA runtime and driver API names as the profiler shows them).
_KERNEL_LAUNCHES = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
_GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")
_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync")


# --- named ranges around generate's per-step pieces ------------------------------------------------------


def _ranged(name, fn, *, eager_only=False):
    def wrapper(*args, **kwargs):
        if eager_only and torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)

    wrapper.__wrapped__ = fn
    return wrapper


@contextlib.contextmanager
def generate_ranges(model):
    """Named ranges around generate's per-step pieces (restored on exit)."""
    from transformers import cache_utils
    from transformers.generation import logits_process, stopping_criteria
    from transformers.generation import utils as gen_utils

    patches = [
        (logits_process.LogitsProcessorList, "__call__", "logits_processors", False),
        (stopping_criteria.StoppingCriteriaList, "__call__", "stopping_criteria", False),
        (gen_utils.StopCheck, "__call__", "stop_check", False),
    ]
    if model.device.type == "cpu":
        # Only where generate does not compile: inside the compiled forward the update is traced, and a patched
        # method would fail dynamo's guards on it (a recompile in the profiled call).
        patches += [(cache_utils.StaticLayer, "update", "cache_update", True),
                    (cache_utils.StaticSlidingWindowLayer, "update", "cache_update", True)]
    saved = []
    for owner, attr, name, eager_only in patches:
        original = owner.__dict__.get(attr)
        if original is None:
            continue
        saved.append((owner, attr, original))
        setattr(owner, attr, _ranged(name, original, eager_only=eager_only))
    model.prepare_inputs_for_generation = _ranged("prepare_inputs", model.prepare_inputs_for_generation)
    model._update_model_kwargs_for_generation = _ranged("update_kwargs", model._update_model_kwargs_for_generation)
    # generate's forward is `self.get_compiled_call(...)` or `self.__call__` (an attribute lookup: the instance's wins)
    model.__call__ = _ranged("forward", type(model).__call__.__get__(model))
    original_compiled = model.get_compiled_call

    def compiled_call(config):
        del model.__dict__["__call__"]  # compile the model's own __call__, not the wrapper
        try:
            return _ranged("forward", original_compiled(config))
        finally:
            model.__call__ = _ranged("forward", type(model).__call__.__get__(model))

    model.get_compiled_call = compiled_call
    try:
        yield
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)
        for attr in ("prepare_inputs_for_generation", "_update_model_kwargs_for_generation", "__call__",
                     "get_compiled_call"):
            model.__dict__.pop(attr, None)


# --- the profile, per step -----------------------------------------------------------------------------------


def _dynamo_counters() -> dict:
    from torch._dynamo.utils import counters

    breaks = dict(counters["graph_break"])
    return dict(frames_compiled=counters["frames"].get("ok", 0),
                unique_graphs=counters["stats"].get("unique_graphs", 0),
                calls_captured=counters["stats"].get("calls_captured", 0),
                graph_breaks=sum(breaks.values()),
                graph_break_reasons=dict(sorted(breaks.items(), key=lambda kv: -kv[1])[:10]),
                recompiles=sum(counters["recompiles"].values()) if "recompiles" in counters else 0,
                cudagraph_skips=dict(counters["inductor"]).get("cudagraph_skips", 0))


def _reset_dynamo_counters() -> None:
    from torch._dynamo.utils import counters

    counters.clear()


def _union(intervals) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def per_window(prof, marker: str, ranges: list[str]) -> list[dict]:
    """One row per window between consecutive starts of the host range ``marker`` (the last window ends with the
    last GPU kernel or host event): times in ms."""
    events = list(prof.events())
    cpu = [e for e in events if e.device_type == torch.autograd.DeviceType.CPU]
    # the host ranges also show on the GPU's timeline (annotations spanning their kernels): not GPU work
    gpu = [e for e in events if e.device_type != torch.autograd.DeviceType.CPU and e.time_range.elapsed_us() > 0
           and e.name not in ranges]
    starts = sorted(e.time_range.start for e in cpu if e.name == marker)
    if not starts:
        return []
    end_all = max([e.time_range.end for e in cpu if e.name in ranges] + [e.time_range.end for e in gpu] + [starts[-1]])
    bounds = list(zip(starts, starts[1:] + [end_all]))
    rows = []
    for a, b in bounds:
        inside = [e for e in cpu if a <= e.time_range.start < b]
        kernels = [(max(e.time_range.start, a), min(e.time_range.end, b)) for e in gpu
                   if e.time_range.end > a and e.time_range.start < b]
        row = dict(wall_ms=(b - a) / 1e3,
                   kernel_sum_ms=sum(e.time_range.elapsed_us() for e in gpu if a <= e.time_range.start < b) / 1e3,
                   gpu_busy_ms=_union(kernels) / 1e3)
        row["gpu_idle_ms"] = row["wall_ms"] - row["gpu_busy_ms"]
        for name in ranges:
            row[f"host_{name}_ms"] = sum(e.time_range.elapsed_us() for e in inside if e.name == name) / 1e3
        row["kernel_launches"] = sum(1 for e in inside if e.name in _KERNEL_LAUNCHES)
        row["graph_launches"] = sum(1 for e in inside if e.name in _GRAPH_LAUNCHES)
        row["syncs_and_copies"] = sum(1 for e in inside if e.name in _SYNCS)
        row["kernels_run"] = sum(1 for e in gpu if a <= e.time_range.start < b)
        # what happened in the window, for the timeline picture: host ranges and runtime calls, GPU activity
        row["timeline"] = (
            [("host", e.name, e.time_range.start - a, e.time_range.end - a) for e in inside
             if e.name in ranges or e.name in _KERNEL_LAUNCHES + _GRAPH_LAUNCHES + _SYNCS]
            + [("gpu", e.name[:60], max(e.time_range.start, a) - a, min(e.time_range.end, b) - a) for e in gpu
               if e.time_range.end > a and e.time_range.start < b])
        rows.append(row)
    return rows


def _median_row(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k != "timeline"] if rows else []
    return {k: round(statistics.median(r[k] for r in rows), 4) for k in keys}


def _middle_timeline(rows: list[dict], candidates: list[dict]) -> list:
    """The timeline of the middle one of ``candidates`` (a steady decode step / launch); dropped from every row
    (size)."""
    middle = candidates[len(candidates) // 2]["timeline"] if candidates else []
    for r in rows:
        r.pop("timeline", None)
    return middle


def plot_timelines(res: dict, path: Path) -> bool:
    """One decode step of generate (static cache) above one step's share of a launch of each DecodeRunner
    profiled, same time scale: host ranges and runtime calls, GPU activity. False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [("generate, static cache: one decode step", res["generate_static"]["timeline"])]
    for r in res.get("runner", []):  # the first 1/N of a launch: one step's worth of its timeline
        n, tl = r["steps_per_launch"], r["timeline"]
        cut = max([t1 for *_, t1 in tl] + [0.0]) / n
        panels.append((f"DecodeRunner, {n} steps per launch: the first 1/{n} of a launch (one step's time)",
                       [(lane, name, t0, min(t1, cut)) for lane, name, t0, t1 in tl if t0 < cut]))
    span = max([t1 for _, tl in panels for *_, t1 in tl] + [1.0]) / 1e3
    fig, axes = plt.subplots(len(panels), 1, figsize=(14, 1.6 + 1.4 * len(panels)), squeeze=False)
    colors = {name: f"C{i}" for i, name in enumerate(GENERATE_RANGES + ["launch"])}
    for ax, (title, tl) in zip(axes[:, 0], panels):
        for lane, name, t0, t1 in tl:
            y = 1 if lane == "host" else 0
            color = colors.get(name, "0.6" if lane == "host" else "C3")
            height = 0.8 if name in colors or lane == "gpu" else 0.4
            ax.broken_barh([(t0 / 1e3, max(t1 - t0, 0.5) / 1e3)], (y - height / 2, height), color=color, lw=0)
        ax.set_xlim(0, span)
        ax.set_yticks([0, 1], ["GPU", "host"])
        ax.set_title(title, fontsize=9, loc="left")
    axes[-1, 0].set_xlabel("ms")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors.values()]
    fig.legend(handles, list(colors), loc="upper right", fontsize=7, ncol=4)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def _top_cpu_ops(prof, n: int = 15) -> list[dict]:
    avg = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:n]
    return [dict(name=e.key, calls=e.count, self_cpu_ms=round(e.self_cpu_time_total / 1e3, 3)) for e in avg]


def kernel_table(prof, since_us: float, steps: int, skip=("launch",), n: int = 30) -> list[dict]:
    """GPU kernels that start at or after ``since_us`` (the first decode launch), summed by name: microseconds
    and launches per decode step, largest first (the rest as one row). ``skip``: our host ranges, which the
    profiler also reports on the GPU's timeline (as annotations, not kernels)."""
    totals: dict[str, list] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CPU or e.time_range.start < since_us or e.name in skip:
            continue
        t = totals.setdefault(e.name[:90], [0.0, 0])
        t[0] += e.time_range.elapsed_us()
        t[1] += 1
    rows = sorted(totals.items(), key=lambda kv: -kv[1][0])
    rest = rows[n:]
    if rest:
        rows = rows[:n] + [(f"({len(rest)} other kernels)", [sum(v[0] for _, v in rest), sum(v[1] for _, v in rest)])]
    return [dict(kernel=k, us_per_step=round(us / steps, 2), per_step=round(count / steps, 2))
            for k, (us, count) in rows]


def _activities(device: str):
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    return acts


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


GENERATE_RANGES = ["prepare_inputs", "forward", "update_kwargs", "logits_processors", "stopping_criteria",
                   "stop_check", "cache_update"]


def profile_generate(model, prompt, new_tokens: int, out: Path, trace: bool) -> dict:
    device = prompt.device.type
    kw = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens,
              do_sample=False, cache_implementation="static")
    _reset_dynamo_counters()
    with torch.inference_mode():
        t0 = time.perf_counter()
        model.generate(prompt, **kw)
        _sync(device)
        first = time.perf_counter() - t0
        after_warmup = _dynamo_counters()
        _reset_dynamo_counters()
        t0 = time.perf_counter()
        model.generate(prompt, **kw)
        _sync(device)
        plain = time.perf_counter() - t0
        with generate_ranges(model), torch.profiler.profile(activities=_activities(device)) as prof:
            model.generate(prompt, **kw)
            _sync(device)
    steady = _dynamo_counters()
    rows = per_window(prof, "prepare_inputs", GENERATE_RANGES)  # rows[0]: the prefill
    if trace:
        prof.export_chrome_trace(str(out / "profile_decode_generate_static.trace.json"))
    median = _median_row(rows[1:] or rows)
    return dict(first_call_s=round(first, 3), call_s=round(plain, 4),
                tok_s=round(prompt.shape[0] * new_tokens / plain, 1), dynamo_first_call=after_warmup,
                dynamo_steady_calls=steady, median_step=median, timeline=_middle_timeline(rows, rows[1:] or rows),
                steps=rows, top_cpu_ops=_top_cpu_ops(prof))


def profile_runner(kernel, model, prompt, new_tokens: int, steps: int, out: Path, trace: bool) -> dict:
    device = prompt.device.type
    runner = kernel.DecodeRunner(model, steps_per_launch=steps)
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    runner.generate(prompt, **kw)
    first = runner.last_stats
    _sync(device)
    t0 = time.perf_counter()
    runner.generate(prompt, **kw)
    _sync(device)
    plain = time.perf_counter() - t0
    original = runner._launch
    runner._launch = _ranged("launch", original)
    try:
        with torch.profiler.profile(activities=_activities(device)) as prof:
            runner.generate(prompt, **kw)
            _sync(device)
    finally:
        del runner._launch
    rows = per_window(prof, "launch", ["launch"])
    starts = [e.time_range.start for e in prof.events()
              if e.name == "launch" and e.device_type == torch.autograd.DeviceType.CPU]
    kernels = kernel_table(prof, min(starts), len(starts) * steps) if starts else []
    if trace:
        prof.export_chrome_trace(str(out / f"profile_decode_runner{steps}.trace.json"))
    med = _median_row(rows[:-1] or rows)  # the last window also holds the end of the call
    return dict(steps_per_launch=steps, first_call=first, call_s=round(plain, 4),
                tok_s=round(prompt.shape[0] * new_tokens / plain, 1), launches=runner.last_stats["launches"],
                median_launch=med, kernels_per_step=kernels, timeline=_middle_timeline(rows, rows[:-1] or rows),
                windows=rows,
                median_per_token={k: round(v / steps, 4) for k, v in med.items() if k.endswith("_ms")})


# --- models ---------------------------------------------------------------------------------------------------------


def load_models(args):
    from harness import load_kernel

    kernel = load_kernel()
    if args.tiny:
        from tiny_gpt_oss import tiny_model, with_our_kernels

        plain = tiny_model(seed=3)
        return kernel, with_our_kernels(plain), "cpu"
    from e2e_model import build_model

    torch.manual_seed(0)
    model = build_model(args.layers)
    if args.mxfp4:
        import gc

        from tiny_checkpoint import write_mxfp4_checkpoint

        path = Path(os.environ.get("MXFP4_CKPT", "/tmp/gpt-oss-20b-shaped-mxfp4"))
        write_mxfp4_checkpoint(model, path)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        return kernel, kernel.from_pretrained(path, device="cuda", dtype=torch.bfloat16), "cuda"
    ours = kernel.from_pretrained(None, config=model.config, state_dict=model.state_dict(), device="cuda",
                                  dtype=torch.bfloat16)
    del model
    torch.cuda.empty_cache()
    return kernel, ours, "cuda"


# --- report ---------------------------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    g = res["generate_static"]
    med = g["median_step"]
    lines = [f"## Decode step profile: {res['what']}", "",
             f"generate(cache_implementation=\"static\"), batch {res['batch']}, {res['prompt']}-token prompt, "
             f"{res['new_tokens']} new tokens: {g['tok_s']} tok/s without the profiler (first call "
             f"{g['first_call_s']} s). Median over the decode steps under the profiler ({res['device']}, "
             f"torch {res['torch']}, transformers {res['transformers']}):", "",
             "| per decode step | ms | % of wall |", "|---|---|---|"]
    wall = med.get("wall_ms", 0) or 1e-9
    for key in ["wall_ms", "kernel_sum_ms", "gpu_busy_ms", "gpu_idle_ms"] + [f"host_{r}_ms" for r in GENERATE_RANGES]:
        if key in med:
            lines.append(f"| {key[:-3].replace('_', ' ')} | {med[key]:.3f} | {100 * med[key] / wall:.0f}% |")
    host = sum(med.get(f"host_{r}_ms", 0) for r in GENERATE_RANGES if r != "cache_update")
    lines.append(f"| host outside the ranges (generate's loop) | {wall - host:.3f} | {100 * (wall - host) / wall:.0f}% |")
    lines += ["", "| per decode step | count |", "|---|---|"]
    for key in ("kernel_launches", "graph_launches", "syncs_and_copies", "kernels_run"):
        lines.append(f"| {key.replace('_', ' ')} | {med.get(key, 0)} |")
    lines += ["", "| torch._dynamo | first call | later calls |", "|---|---|---|"]
    for key in ("frames_compiled", "unique_graphs", "calls_captured", "graph_breaks", "recompiles", "cudagraph_skips"):
        lines.append(f"| {key.replace('_', ' ')} | {g['dynamo_first_call'].get(key)} | {g['dynamo_steady_calls'].get(key)} |")
    reasons = g["dynamo_first_call"].get("graph_break_reasons") or {}
    if reasons:
        lines += ["", "Graph breaks (first call): " + "; ".join(f"{k} ({v})" for k, v in reasons.items())]
    for r in res.get("runner", []):
        m, t = r["median_launch"], r["median_per_token"]
        lines += ["", f"DecodeRunner, {r['steps_per_launch']} steps per launch: {r['tok_s']} tok/s, {r['launches']} "
                  f"launches, capture {r['first_call'].get('capture_s')} s; per token: wall {t.get('wall_ms')} ms, "
                  f"kernels {t.get('kernel_sum_ms')} ms, GPU idle {t.get('gpu_idle_ms')} ms "
                  f"(per launch: {m.get('graph_launches')} graph launches, {m.get('kernel_launches')} kernel launches, "
                  f"{m.get('syncs_and_copies')} syncs/copies)"]
        if r.get("kernels_per_step"):
            total = sum(k["us_per_step"] for k in r["kernels_per_step"]) or 1e-9
            lines += ["", "| kernel (decode steps of the launches) | us per step | % | launches per step |",
                      "|---|---|---|---|"]
            lines += [f"| `{k['kernel']}` | {k['us_per_step']:.1f} | {100 * k['us_per_step'] / total:.1f}% | "
                      f"{k['per_step']:g} |" for k in r["kernels_per_step"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    import transformers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "probe_out")))
    parser.add_argument("--tiny", action="store_true", help="tiny model on the CPU (CI)")
    parser.add_argument("--mxfp4", action="store_true", help="MXFP4 experts (checkpoint written and loaded as stored)")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--runner", type=int, nargs="*", default=[], help="also DecodeRunner with these N")
    parser.add_argument("--trace", action="store_true", help="write Chrome traces")
    parser.add_argument("--png", action="store_true", help="timeline picture of one step / launch (matplotlib)")
    args = parser.parse_args(argv)
    if args.tiny:
        args.prompt, args.new_tokens = min(args.prompt, 12), min(args.new_tokens, 6)
    args.out.mkdir(parents=True, exist_ok=True)
    kernel, model, device = load_models(args)
    vocab = model.config.vocab_size
    prompt = torch.randint(1, vocab, (args.batch, args.prompt), device=device,
                           generator=torch.Generator(device=device).manual_seed(2))
    res = dict(what=("tiny GPT-OSS (CPU, fp32)" if args.tiny else
                     f"gpt-oss-20b shapes ({args.layers} layers), ours, {'MXFP4' if args.mxfp4 else 'bf16'} experts"),
               device=torch.cuda.get_device_name() if device == "cuda" else "cpu", torch=torch.__version__,
               transformers=transformers.__version__, batch=args.batch, prompt=args.prompt,
               new_tokens=args.new_tokens, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    res["generate_static"] = profile_generate(model, prompt, args.new_tokens, args.out, args.trace)
    res["runner"] = [profile_runner(kernel, model, prompt, args.new_tokens, n, args.out, args.trace)
                     for n in args.runner]
    if args.png:
        png = args.out / "profile_decode_timeline.png"
        res["timeline_png"] = str(png) if plot_timelines(res, png) else "matplotlib missing: no picture"
    (args.out / "profile_decode.json").write_text(json.dumps(res, indent=1))
    md = markdown(res)
    (args.out / "profile_decode.md").write_text(md)
    print(md, flush=True)
    return res


if __name__ == "__main__":
    main()
