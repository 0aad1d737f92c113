#!/usr/bin/env python3
"""GPU harness: our kernels against the anchors, in one process, with the ceilings measured
in the same run. Writes ``results.json`` and ``results.md`` under ``--out``.

Each op family lives in ``benchmarks/harness_<family>.py`` and exposes
``run(kernel, ceilings, quick) -> list[dict]``; every row has at least ``family``, ``case``,
``impl`` and ``median_us``, and where a floor is known ``floor_us`` and ``pct_of_floor``.

    python benchmarks/harness.py --out /tmp/out                  # every family
    python benchmarks/harness.py --out /tmp/out --only rmsnorm   # a subset
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("rmsnorm", "moe", "fusion", "attention", "fp8", "projections", "moe_120b", "moe_mxfp4")


# --- timing -----------------------------------------------------------------------------

def median_us(fn: Callable[[], object], *, warmup_ms: float = 25, rep_ms: float = 100) -> float:
    """Median of CUDA-event timings; the L2 cache is flushed before every run (do_bench)."""
    import triton.testing

    return 1e3 * triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")


LAST_GPU_STATE: dict = {}  # set by median_us_graph(..., gpu_state=True)


def _sample_gpu_state(replay: Callable[[], None], seconds: float = 0.5) -> dict:
    """Median SM clock (MHz) and board power (W) while `replay` runs back to back for `seconds`
    (nvidia-smi sampling every 20 ms). Large shapes run at power-limited clocks; this records at
    which, so run-to-run differences can be told apart from code changes. {} without nvidia-smi."""
    import subprocess
    import time

    try:
        mon = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                                "-lms", "20", "-i", str(torch.cuda.current_device())],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    except OSError:
        return {}
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        replay()
        torch.cuda.synchronize()
    mon.terminate()
    out, _ = mon.communicate()
    clocks, power = [], []
    for line in out.splitlines():
        try:
            c, p = (float(x) for x in line.split(","))
        except ValueError:
            continue
        clocks.append(c)
        power.append(p)
    if len(clocks) < 5:
        return {}
    clocks, power = sorted(clocks[2:]), sorted(power[2:])  # the first samples precede the load
    return {"sm_clock_mhz": clocks[len(clocks) // 2], "power_w": power[len(power) // 2]}


def median_us_graph(calls: Callable[[], object] | Sequence[Callable[[], object]], *, replays: int = 40,
                    gpu_state: bool = False) -> float:
    """Device time per call, without host overhead: every call in `calls` (each bound to its own
    inputs; rotate enough sets that together they exceed L2, see `rotation`) is captured once
    in one CUDA graph, and the result is the median over replays of replay time / len(calls).

    do_bench's eager timing includes the host's launch latency whenever the host is slower than
    the kernel (small kernels, Python-heavy paths); this does not. Report both where it matters.
    """
    calls = [calls] if callable(calls) else list(calls)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            for c in calls:
                c()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        # Results are kept alive until the graph is gone: otherwise the graph's memory pool hands
        # every call the buffer the previous call just freed, and an output smaller than L2 is
        # then written to L2 over and over instead of to DRAM (flatters every implementation).
        keep = [c() for c in calls]
    graph.replay()
    torch.cuda.synchronize()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(replays)]
    for start, end in zip(starts, ends):
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    times = sorted(1e3 * s.elapsed_time(e) / len(calls) for s, e in zip(starts, ends))
    if gpu_state:  # after the timing, so it cannot change the number reported
        LAST_GPU_STATE.clear()
        LAST_GPU_STATE.update(_sample_gpu_state(graph.replay))
    del graph, keep
    return times[len(times) // 2]


def rotation(bytes_per_set: int, *, max_sets: int = 64) -> int:
    """How many input sets to rotate through so that together they cover 3x the L2 cache."""
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    return int(min(max_sets, max(2, -(-3 * l2 // max(bytes_per_set, 1)))))


# --- ceilings ---------------------------------------------------------------------------

def measure_ceilings() -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and the bf16 matmul rate."""
    n = 1 << 30
    src = torch.empty(n, dtype=torch.uint8, device="cuda").random_(0, 255)
    dst = torch.empty_like(src)
    copy_us = median_us(lambda: dst.copy_(src))
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    mm_us = median_us(lambda: a @ b)
    del src, dst, a, b
    torch.cuda.empty_cache()
    return {
        "copy_bytes_per_us": 2 * n / copy_us,  # bytes/µs == MB/s
        "copy_TBps": 2 * n / copy_us / 1e6,
        "bf16_flops_per_us": 2 * 8192**3 / mm_us,
        "bf16_TFLOPs": 2 * 8192**3 / mm_us / 1e6,
    }


def floor_us(ceilings: dict, *, bytes_moved: float = 0.0, flops: float = 0.0) -> float:
    return max(bytes_moved / ceilings["copy_bytes_per_us"], flops / ceilings["bf16_flops_per_us"])


def row(family: str, case: str, impl: str, us: float, floor: float | None = None, **extra) -> dict:
    r = {"family": family, "case": case, "impl": impl, "median_us": round(us, 2)}
    if floor:
        r["floor_us"] = round(floor, 2)
        r["pct_of_floor"] = round(100.0 * floor / us, 1)
    r.update(extra)
    return r


# --- report -----------------------------------------------------------------------------

def environment() -> dict:
    import importlib.metadata as md

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(),
        "sms": torch.cuda.get_device_properties(0).multi_processor_count,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": version("triton"),
        "transformers": version("transformers"),
        "kernels": version("kernels"),
        "liger_kernel": version("liger_kernel"),
        # the package's kernel switches set for this run (GOK_*): a number is only comparable under the same ones
        "switches": {k: v for k, v in sorted(os.environ.items()) if k.startswith("GOK_")},
    }


def markdown(env: dict, ceilings: dict, rows: Sequence[dict]) -> str:
    lines = [
        f"Device: {env['device']} ({env['sms']} SMs), {env['date']}; torch {env['torch']} (CUDA {env['cuda']}), "
        f"triton {env['triton']}, transformers {env['transformers']}, kernels {env['kernels']}, "
        f"liger-kernel {env['liger_kernel']}"
        + ("; switches " + " ".join(f"{k}={v}" for k, v in env["switches"].items()) if env.get("switches") else "")
        + ".",
        "",
        f"Ceilings measured in this run: copy {ceilings['copy_TBps']:.2f} TB/s (read + write), "
        f"bf16 matmul 8192³ {ceilings['bf16_TFLOPs']:.0f} TFLOP/s.",
        "",
    ]
    family = None
    for r in rows:
        if r["family"] != family:
            family = r["family"]
            lines += ["", f"### {family}", "", "| case | impl | median µs | floor µs | % of floor | notes |",
                      "|---|---|---|---|---|---|"]
        notes = ", ".join(f"{k}={v}" for k, v in r.items()
                          if k not in ("family", "case", "impl", "median_us", "floor_us", "pct_of_floor"))
        lines.append(f"| {r['case']} | {r['impl']} | {r['median_us']} | {r.get('floor_us', '')} | "
                     f"{r.get('pct_of_floor', '')} | {notes} |")
    return "\n".join(lines) + "\n"


def load_kernel():
    import kernels

    return kernels.get_local_kernel(ROOT / "build", backend=None if torch.cuda.is_available() else "cpu")


def use_anchor_kernel(repo: str = "kernels-community/gpt-oss-triton-kernels") -> Path | None:
    """Resolve the Hub kernel ``repo`` offline to its carried copy in ``.anchors/`` (``LOCAL_KERNELS``), as the
    anchors that need one (transformers' MXFP4 path) load it; None when the copy is not there."""
    anchor = ROOT / ".anchors" / repo.split("/")[-1]
    if not anchor.exists():
        return None
    entry = f"{repo}={anchor}"
    if entry not in os.environ.get("LOCAL_KERNELS", "").split(":"):
        os.environ["LOCAL_KERNELS"] = ":".join(e for e in [os.environ.get("LOCAL_KERNELS", ""), entry] if e)
    return anchor


def load_package_file(relpath: str):
    """One module of the package straight from torch-ext, no build (the probes import the Triton kernel
    files this way, to set their module-level knobs), e.g. ``load_package_file("attention/_triton_attn.py")``."""
    import importlib.util

    path = ROOT / "torch-ext" / "gpt_oss_kernels" / relpath
    spec = importlib.util.spec_from_file_location(Path(relpath).stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out")))
    # moe_mxfp4: harness_moe's MXFP4 rows alone (the moe family includes them)
    parser.add_argument("--only", nargs="*", choices=FAMILIES, default=[f for f in FAMILIES if f != "moe_mxfp4"])
    parser.add_argument("--quick", action="store_true", help="fewer sizes")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(Path(__file__).parent))
    kernel = load_kernel()
    env = environment()
    ceilings = measure_ceilings()
    print(f"ceilings: {ceilings}", flush=True)
    rows: list[dict] = []
    for family in args.only:
        module_path = Path(__file__).parent / f"harness_{family}.py"
        if not module_path.exists():
            print(f"[{family}] no harness module yet, skipped", flush=True)
            continue
        module = importlib.import_module(f"harness_{family}")
        try:
            family_rows = module.run(kernel, ceilings, args.quick)
        except Exception as e:  # one family failing must not hide the others' numbers
            import traceback

            traceback.print_exc()
            family_rows = [row(family, "error", "ours", float("nan"), error=repr(e)[:200])]
        rows += family_rows
        (args.out / "results.json").write_text(json.dumps({"env": env, "ceilings": ceilings, "rows": rows}, indent=1))
    md = markdown(env, ceilings, rows)
    (args.out / "results.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
