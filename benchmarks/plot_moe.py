#!/usr/bin/env python3
"""Plot the MoE rows of a harness results.json (median µs vs tokens, log-log), with the floor.

    python benchmarks/plot_moe.py docs/results/2026-11-22-h100-moe.json docs/moe_bench.png

Needs matplotlib (a development tool only; not a dependency of the package).
"""

import json
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    data = json.load(open(src))
    series, floor = defaultdict(dict), {}
    for r in data["rows"]:
        if r["family"] != "moe" or "experiment" in r["impl"]:
            continue
        t = int(r["case"].split("=")[1])
        series[r["impl"]][t] = r["median_us"]
        if "eager_us" in r and r["impl"].startswith("ours"):  # same method as the transformers rows
            series["ours MoeMLP (eager)"][t] = r["eager_us"]
        if "floor_us" in r:
            floor[t] = r["floor_us"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for impl, pts in sorted(series.items()):
        ts = sorted(pts)
        ax.plot(ts, [pts[t] for t in ts], marker="o", label=impl)
    ts = sorted(floor)
    ax.plot(ts, [floor[t] for t in ts], "k--", label="floor (bytes or FLOPs at measured ceilings)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("tokens T")
    ax.set_ylabel("median µs (router + experts)")
    env = data["env"]
    ax.set_title(f"GPT-OSS-20b MoE block, bf16 — {env['device']}, {env['date']}", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(dst, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:3])
