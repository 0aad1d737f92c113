#!/usr/bin/env python3
"""Regenerate docs/BENCHMARKS.md, its plots and README's headline table from one GPU run.

    python benchmarks/report.py --results $OUT/results.json --e2e $OUT/e2e_model.json

- ``--results``: the harness's results.json (``{"env", "ceilings", "rows"}``, benchmarks/harness.py). Several
  files may be given: each family is taken from the last file that has it, and the page names the run of each.
- ``--e2e``: e2e_model.json of benchmarks/e2e_model.py (optional). A second one (another transformers version)
  adds its columns beside the first.
- Writes ``--md`` (docs/BENCHMARKS.md), one PNG per family and one for the whole model under ``--img-dir``
  (docs/img/), and, with ``--e2e``, the table between ``<!-- headline:start -->`` and ``<!-- headline:end -->``
  in ``--readme`` (README.md; ``--readme ""`` leaves it alone).

Only numbers from the input files are written (as stored); the ratios are computed from them. The plots need
matplotlib; ``--no-plots`` writes the markdown only.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
from collections import OrderedDict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK_START, MARK_END = "<!-- headline:start -->", "<!-- headline:end -->"
ANCHOR_RE = re.compile(r"transformers|liger|triton_kernels|flex|eager|torch|cublas|vllm|megablocks", re.I)
SIZE_RE = re.compile(r"\b([TS])=(\d+)\b")
AXIS_LABEL = {"T": "tokens T", "S": "sequence length S (tokens)"}
CORE_KEYS = ("family", "case", "impl", "median_us", "floor_us", "pct_of_floor")
STATIC_FIXED = "2026-12-06"  # the static-cache route computes the model's tokens with our attention from this date


# --- inputs -----------------------------------------------------------------------------------------------

def load_runs(paths):
    runs = []
    for p in paths:
        d = json.loads(Path(p).read_text())
        runs.append({"path": Path(p), "env": d.get("env", {}), "ceilings": d.get("ceilings", {}),
                     "rows": d.get("rows", [])})
    return runs


def families(runs) -> "OrderedDict[str, tuple[dict, list]]":
    """family -> (run, rows), in the order the families first appear; the last run with a family wins."""
    fams: OrderedDict = OrderedDict()
    for run in runs:
        seen: OrderedDict = OrderedDict()
        for r in run["rows"]:
            seen.setdefault(r["family"], []).append(r)
        for fam, rows in seen.items():
            fams[fam] = (run, rows)
    return fams


def role(impl: str) -> str:
    if impl.lower().startswith("ours"):
        return "ours"
    return "anchor" if ANCHOR_RE.search(impl) else "other"


def parse_case(case: str):
    """("prefill S=8192 full causal") -> ("prefill full causal", "S", 8192); no T= / S= -> (case, None, None)."""
    m = SIZE_RE.search(case)
    if not m:
        return case, None, None
    kind = " ".join((case[:m.start()] + case[m.end():]).split())
    return kind, m.group(1), int(m.group(2))


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def num(v) -> str:
    """A stored number as stored (no re-rounding)."""
    return "" if v is None else str(v)


def same_work(rows: list) -> set:
    """(impl, impl) pairs whose floors agree in every case where both have one: the same bytes and FLOPs."""
    floors: dict = {}
    for r in rows:
        if finite(r.get("floor_us")):
            floors.setdefault(r["impl"], {})[r["case"]] = r["floor_us"]
    pairs = set()
    for a, fa in floors.items():
        for b, fb in floors.items():
            if all(fa[c] == fb[c] for c in fa.keys() & fb.keys()):
                pairs.add((a, b))
    return pairs


def anchor_ratio(r: dict, case_rows: list, same: set) -> str:
    """For an 'ours' row (not an experiment): fastest anchor of the same case doing the same work / this row.
    Anchors timed eagerly ('(eager)' in their name) are compared with this row's eager_us when it has one."""
    if role(r["impl"]) != "ours" or "experiment" in r["impl"] or not finite(r.get("median_us")):
        return ""
    best = None
    for a in case_rows:
        if role(a["impl"]) != "anchor" or not finite(a.get("median_us")):
            continue
        if finite(r.get("floor_us")) and finite(a.get("floor_us")) and (r["impl"], a["impl"]) not in same:
            continue
        if best is None or a["median_us"] < best["median_us"]:
            best = a
    if best is None:
        return ""
    eager = "(eager)" in best["impl"] and finite(r.get("eager_us"))
    ours = r["eager_us"] if eager else r["median_us"]
    return f"{best['median_us'] / ours:.2f}x vs {best['impl']}" + (", eager vs eager" if eager else "")


# --- markdown ---------------------------------------------------------------------------------------------

def env_line(run) -> tuple[str, str, str]:
    env = run["env"]
    device = env.get("device", "?") + (f" ({env['sms']} SMs)" if env.get("sms") else "")
    skip = {"date", "device", "sms", "switches"}
    versions = ", ".join(f"{k.replace('_', '-')} {v}" for k, v in env.items() if k not in skip)
    if env.get("switches"):  # kernel switches (GOK_*) set for the run
        versions += "; switches " + " ".join(f"{k}={v}" for k, v in env["switches"].items())
    return env.get("date", "?"), device, versions


def ceilings_text(c: dict) -> tuple[str, str]:
    copy = f"{c['copy_TBps']:.2f} TB/s" if finite(c.get("copy_TBps")) else "not measured"
    mm = f"{c['bf16_TFLOPs']:.0f} TFLOP/s" if finite(c.get("bf16_TFLOPs")) else "not measured"
    return copy, mm


def family_table(rows: list) -> list[str]:
    by_case: OrderedDict = OrderedDict()
    for r in rows:
        by_case.setdefault(r["case"], []).append(r)
    same = same_work(rows)
    out = ["| case | impl | median µs | floor µs | % of floor | fastest anchor / this | notes |",
           "|---|---|---|---|---|---|---|"]
    for case, crs in by_case.items():
        for r in crs:
            notes = ", ".join(f"{k}={v}" for k, v in r.items() if k not in CORE_KEYS)
            out.append(f"| {case} | {r['impl']} | {num(r.get('median_us'))} | {num(r.get('floor_us'))} | "
                       f"{num(r.get('pct_of_floor'))} | {anchor_ratio(r, crs, same)} | {notes.replace('|', '/')} |")
    return out


E2E_NAMES = {"transformers": "transformers defaults", "transformers_mxfp4": "transformers' MXFP4 path",
             "ours": "ours"}


def e2e_series(e2e: dict) -> list[str]:
    keys: list[str] = []
    for r in e2e.get("rows", []):
        for k, v in r.items():
            if k not in ("what", "speedup") and not k.endswith("speedup") and finite(v) and k not in keys:
                keys.append(k)
    first = [k for k in keys if k.startswith("transformers")]
    last = [k for k in keys if k.startswith("ours")]
    return first + [k for k in keys if k not in first and k not in last] + last


def e2e_what(what: str):
    """'prefill_4096_tok_s' -> ('prefill', 4096); 'generate_b16_tok_s' -> ('generate', 16)."""
    m = re.fullmatch(r"prefill_(\d+)_tok_s", what)
    if m:
        return "prefill", int(m.group(1))
    m = re.fullmatch(r"generate_b(\d+)_tok_s", what)
    if m:
        return "generate", int(m.group(1))
    m = re.fullmatch(r"runner_b(\d+)_tok_s vs generate_b\d+_tok_s", what)
    if m:
        return "runner", int(m.group(1))
    return what, None


def e2e_label(what: str) -> str:
    kind, n = e2e_what(what)
    if kind == "prefill":
        return f"prefill, {n}-token prompt"
    if kind == "generate":
        return f"generate, batch {n}"
    if kind == "runner":
        return f"batch {n}: ours `DecodeRunner` (N = 32) against the other's `generate`"
    return what


def e2e_ordered(rows: list) -> list:
    def key(r):
        kind, n = e2e_what(r["what"])
        return ({"prefill": 0, "generate": 1, "runner": 2}.get(kind, 3), -(n or 0))
    return sorted(rows, key=key)


def e2e_labels(e2es) -> list[str]:
    versions = [e.get("transformers") for _, e in e2es]
    if all(versions) and len(set(versions)) == len(versions):
        return [f"transformers {v}" for v in versions]
    kinds = ["MXFP4 experts" if "transformers_mxfp4" in e2e_series(e) else "bf16 experts" for _, e in e2es]
    if len(set(kinds)) == len(kinds):
        return kinds
    return [p.stem for p, _ in e2es]


def headline_table(e2es) -> list[str]:
    """Whole model, tokens per second: one column per series of each e2e file, and ours / defaults."""
    labels = e2e_labels(e2es) if len(e2es) > 1 else [""]
    head, cols = ["tokens per second"], []
    for (path, e), lab in zip(e2es, labels):
        series = e2e_series(e)
        for s in series:
            head.append(E2E_NAMES.get(s, s.replace("_", " ")) + (f" ({lab})" if lab else ""))
            cols.append((e, s))
        base = next((b for b in series if b.startswith("transformers")), None)
        if base is not None and "ours" in series:
            head.append(f"ours / {'defaults' if base == 'transformers' else E2E_NAMES.get(base, base)}"
                        + (f" ({lab})" if lab else ""))
            cols.append((e, "speedup"))
    whats: list[str] = []
    for _, e in e2es:
        for r in e2e_ordered(e.get("rows", [])):
            if r["what"] not in whats:
                whats.append(r["what"])
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for what in whats:
        cells = [e2e_label(what)]
        for e, s in cols:
            r = next((r for r in e.get("rows", []) if r["what"] == what), None)
            v = r.get(s) if r else None
            if s == "speedup" and r is not None and v is None and finite(r.get("ours")) and finite(r.get("transformers")):
                v = round(r["ours"] / r["transformers"], 2)
            cells.append(f"{v}x" if s == "speedup" and finite(v) else (f"{v:,}" if finite(v) else "not measured"))
        out.append("| " + " | ".join(cells) + " |")
    static = [(e, e.get("ours_static_cache") or {}) for _, e in e2es]
    if any(st.get("generate_b1_static_tok_s") for _, st in static):
        # Before 2026-12-06 transformers' static route handed a flash-style attention (ours) the whole static cache
        # without lengths, so those runs' tokens were not the model's (tests/test_integration_decode.py); marked.
        def wrong_route(e):
            return str(e.get("date", "")) < STATIC_FIXED

        label = 'generate, batch 1, `cache_implementation="static"`'
        if any(wrong_route(e) for e, st in static if st.get("generate_b1_static_tok_s")):
            label += f' († runs before {STATIC_FIXED}: a route that computed wrong tokens with our attention, README "Decoding")'
        cells = [label]
        for e, s in cols:
            st = e.get("ours_static_cache") or {}
            v = st.get("generate_b1_static_tok_s")
            cells.append(f"{v:,}{' †' if wrong_route(e) else ''}" if s == "ours" and finite(v)
                         else "not measured" if s != "speedup" else "")
        out.append("| " + " | ".join(cells) + " |")
    return out


def e2e_source(e2es) -> str:
    parts = []
    for path, e in e2es:
        parts.append(f"`{path.name}`: {e.get('device', '?')}, {e.get('date', 'date not recorded')}, torch "
                     f"{e.get('torch', '?')}, transformers {e.get('transformers', 'not recorded')}, "
                     f"{e.get('layers', '?')} layers, {e.get('new_tokens', '?')} new tokens, median of "
                     f"{e.get('reps', '?')} runs")
    return "; ".join(parts)


METHOD = """\
- `median µs`: the harness's median for the row. Our rows are device time per call from CUDA-graph replays over
  rotating input sets that together exceed L2 (each call's output kept alive), unless the impl says otherwise;
  `eager_us` beside them is `triton.testing.do_bench`'s eager median (L2 flushed), which includes the host's
  launch cost when the host is slower than the GPU. How each anchor is timed is in its impl name and in
  `benchmarks/harness_<family>.py`.
- `floor µs`: max(bytes moved / the copy ceiling, FLOPs / the bf16 matmul ceiling), both measured in the same
  run; `% of floor` = floor / median.
- `fastest anchor / this`: for our rows, the fastest anchor of the same case doing the same work (same floor)
  divided by our time; above 1 is faster than the anchor. Anchors timed eagerly are compared with our `eager_us`.
- Plots: time per call against the case's size (log-log), one line per impl and the floor dashed; a case
  measured at one size only is drawn as bars. Compare rows within one run: clocks and the host differ between
  machines."""


def markdown(runs, fams, e2es, img_rel: str | None, plots: dict, decisions=()) -> str:
    links = ", ".join(f"[{d}]({d})" for d in decisions) or "the `decisions-*.md` pages next to this one"
    lines = ["# Benchmarks", "",
             "Generated by `python benchmarks/report.py` from the runs below (`scripts/gpu_run.sh`, "
             "`benchmarks/harness.py`, `benchmarks/e2e_model.py`); the next GPU run rewrites this page. "
             f"What each kernel choice measured, and the alternatives that lost: {links}.", "", "## Runs", "",
             "| results | date | device | versions | copy ceiling (read + write) | bf16 matmul 8192³ | families |",
             "|---|---|---|---|---|---|---|"]
    for run in runs:
        fam_names = [f for f, (r, _) in fams.items() if r is run]
        if not fam_names:
            continue
        date, device, versions = env_line(run)
        copy, mm = ceilings_text(run["ceilings"])
        lines.append(f"| `{run['path'].name}` | {date} | {device} | {versions} | {copy} | {mm} | {', '.join(fam_names)} |")
    lines += ["", "## Method", "", METHOD]
    for fam, (run, rows) in fams.items():
        date, device, _ = env_line(run)
        lines += ["", f"## {fam}", "", f"Run `{run['path'].name}` ({device}, {date}).", ""]
        if fam in plots and img_rel is not None:
            lines += [f"![{fam}: time per call against size]({img_rel}/{plots[fam].name})", ""]
        lines += family_table(rows)
    if e2es:
        lines += ["", "## Whole model in transformers", "",
                  "Tokens per second of the whole model, transformers' defaults against ours, each measured in one "
                  "process (`benchmarks/e2e_model.py`; host overhead counts, as users see it). " + e2e_source(e2es) + ".",
                  ""]
        if "whole_model" in plots and img_rel is not None:
            lines += [f"![whole model: tokens per second]({img_rel}/{plots['whole_model'].name})", ""]
        lines += headline_table(e2es)
        for path, e in e2es:
            extra = []
            if finite(e.get("logits_rel_err")):
                extra.append(f"logits of a 512-token input, ours against the defaults: relative error "
                             f"{e['logits_rel_err']}, argmax agreement {e.get('argmax_agreement')}")
            alt = e.get("transformers_eager_experts_vs_grouped_mm")
            if isinstance(alt, dict) and alt:
                extra.append(f"transformers' own two bf16 expert paths against each other: relative error "
                             f"{alt.get('rel_err')}, argmax agreement {alt.get('argmax_agreement')}")
            st = e.get("ours_static_cache") or {}
            if finite(st.get("static_first_call_s")):
                extra.append(f"static cache: first call {st['static_first_call_s']} s (compilation included)")
            mem = [(name, e.get(key) or {}) for key, name in (("transformers_mxfp4", "transformers' MXFP4 path"),
                                                              ("ours", "ours"))]
            if all(finite(m.get("peak_gb")) for _, m in mem):
                extra.append("GPU memory, weights after loading / peak over loading and the runs: " + "; ".join(
                    f"{name} {m['weights_gb']} / {m['peak_gb']} GB" for name, m in mem))
            lg = e.get("ours_vs_transformers_mxfp4_logits")
            if isinstance(lg, dict) and lg:
                extra.append(f"logits of a 512-token input, ours against transformers' MXFP4 path: relative error "
                             f"{lg.get('rel_err')}, argmax agreement {lg.get('argmax_agreement')}")
            ab = e.get("ours_b1_attn_op_ab") or {}
            if ab:
                extra.append("batch-1 generate of ours, attention through the op's dispatcher / the eager fast path, "
                             f"interleaved: {_join(ab.get('op_path'))} / {_join(ab.get('fast_path'))} tok/s")
            if extra:
                lines += ["", f"`{path.name}`:"] + [f"- {x}." for x in extra]
    return "\n".join(lines) + "\n"


def _join(v) -> str:
    return ", ".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)


def update_readme(readme: Path, e2es) -> bool:
    text = readme.read_text()
    i, j = text.find(MARK_START), text.find(MARK_END)
    if i < 0 or j < i:
        print(f"{readme}: no {MARK_START} ... {MARK_END} markers, left alone")
        return False
    block = "\n".join(headline_table(e2es)) + f"\n\nMeasured: {e2e_source(e2es)} (all rows in docs/BENCHMARKS.md).\n"
    readme.write_text(text[:i + len(MARK_START)] + "\n" + block + text[j:])
    return True


# --- plots ------------------------------------------------------------------------------------------------

OURS_COLORS = ["#1f5fbf", "#2ca02c", "#17becf", "#9467bd", "#7f7f7f", "#bcbd22", "#8c564b", "#0b3d2e"]
OURS_ALT = ["#7fa7e0", "#9e9e9e", "#b39ddb", "#80cbc4"]
ANCHOR_COLORS = ["#d62728", "#ff7f0e", "#e377c2", "#a05a2c", "#ffbb78"]


def _colors(rows):
    colors, n = {}, {"ours": 0, "anchor": 0, "other": 0}
    for r in rows:
        impl = r["impl"]
        if impl in colors:
            continue
        k = role(impl)
        pal = OURS_COLORS if k == "ours" else ANCHOR_COLORS if k == "anchor" else ["#555555", "#999999"]
        colors[impl] = pal[n[k] % len(pal)]
        n[k] += 1
    return colors


def _wrap(s: str, width: int = 30) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(s, width)) or s


def _line_panel(ax, kind, axis, rows, colors, fam):
    from matplotlib.ticker import NullLocator

    series: OrderedDict = OrderedDict()
    for r in rows:
        if finite(r.get("median_us")):
            series.setdefault(r["impl"], []).append(r)
    xs_all = sorted({parse_case(r["case"])[2] for r in rows})
    main = next((s for s in series if role(s) == "ours"), None)
    for impl, rs in series.items():
        rs = sorted(rs, key=lambda r: parse_case(r["case"])[2])
        x = [parse_case(r["case"])[2] for r in rs]
        y = [r["median_us"] for r in rs]
        exp = "experiment" in impl
        ax.plot(x, y, marker="o" if role(impl) == "ours" else "s", ms=4 if exp else 5,
                lw=2.4 if impl == main else 1.0 if exp else 1.6, ls=":" if exp else "-",
                alpha=0.75 if exp else 1.0, color=colors[impl], label=impl)
    # floors: the main series' floor black; another series' floor only where it differs (e.g. a fused op's bytes)
    def floor_pts(rs):
        return {parse_case(r["case"])[2]: r["floor_us"] for r in rs if finite(r.get("floor_us"))}

    main_floor = floor_pts(series.get(main, []))
    if main_floor:
        xs = sorted(main_floor)
        ax.plot(xs, [main_floor[x] for x in xs], ls="--", lw=1.6, color="black",
                label="floor (bytes or FLOPs at the measured ceilings)")
    for impl, rs in series.items():
        pts = floor_pts(rs)
        if impl == main or not pts or all(main_floor.get(x) == f for x, f in pts.items()):
            continue
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], ls="--", lw=1.4, color=colors[impl], alpha=0.8, label=f"floor of {impl}")
    times = [r["median_us"] for rs in series.values() for r in rs]
    if times:  # floors far below every time (a few bytes at T=1) would squash the plot: they leave the axes
        ax.set_ylim(bottom=min(times) / 3)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs_all)
    ax.set_xticklabels([str(x) for x in xs_all])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(f"{AXIS_LABEL.get(axis, axis)} (log scale)")
    ax.set_ylabel("median time per call (µs, log scale)")
    ax.set_title(f"{fam}{': ' + kind if kind else ''}", fontsize=11)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def _bar_panel(ax, case, rows, colors):
    rs = [r for r in rows if finite(r.get("median_us"))]
    main = next((r["impl"] for r in rs if role(r["impl"]) == "ours"), None)
    ours = [r["impl"] for r in rs if role(r["impl"]) == "ours" and r["impl"] != main]
    col = {r["impl"]: OURS_COLORS[0] if r["impl"] == main else
           OURS_ALT[ours.index(r["impl"]) % len(OURS_ALT)] if r["impl"] in ours else colors[r["impl"]] for r in rs}
    y = list(range(len(rs)))[::-1]
    ax.barh(y, [r["median_us"] for r in rs], color=[col[r["impl"]] for r in rs], height=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels([_wrap(r["impl"]) for r in rs], fontsize=7.5)
    ax.set_xscale("log")
    for yi, r in zip(y, rs):
        ax.text(r["median_us"] * 1.08, yi, f"{r['median_us']} µs", va="center", fontsize=7.5)
    floors = sorted({r["floor_us"] for r in rs if finite(r.get("floor_us"))})
    for k, f in enumerate(floors):
        ax.axvline(f, ls="--", lw=1.4, color="black" if k == 0 else "0.45", label=f"floor {f} µs")
    if floors:
        ax.legend(fontsize=7.5, loc="lower right")
    lo = min([r["median_us"] for r in rs] + floors) / 2
    ax.set_xlim(lo, max(r["median_us"] for r in rs) * 6)
    ax.set_xlabel("median time per call (µs, log scale)")
    ax.set_title(case, fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)


def plot_family(fam, run, rows, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds: OrderedDict = OrderedDict()
    for r in rows:
        kind, axis, x = parse_case(r["case"])
        kinds.setdefault((kind, axis), []).append(r)
    panels = []
    for (kind, axis), rs in kinds.items():
        sizes = {parse_case(r["case"])[2] for r in rs if finite(r.get("median_us"))}
        if not sizes and not any(finite(r.get("median_us")) for r in rs):
            continue
        if axis and len(sizes) >= 2:
            panels.append(("line", kind, axis, rs))
        else:
            by_case: OrderedDict = OrderedDict()
            for r in rs:
                by_case.setdefault(r["case"], []).append(r)
            panels += [("bar", case, None, crs) for case, crs in by_case.items()]
    if not panels:
        return None
    colors = _colors(rows)
    ncols = 1 if len(panels) == 1 or any(p[0] == "line" for p in panels) else 2
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(11 if ncols == 1 else 14, 4.6 * nrows), squeeze=False)
    for ax, (kind_, name, axis, rs) in zip(axes.flat, panels):
        if kind_ == "line":
            _line_panel(ax, name, axis, rs, colors, fam)
        else:
            _bar_panel(ax, name, rs, colors)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    date, device, _ = env_line(run)
    fig.suptitle(f"{fam}: time per call (lower is better), {device}, {date}", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_e2e(e2es, path: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullLocator

    labels = e2e_labels(e2es) if len(e2es) > 1 else [""]
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    styles = ["-", "--", ":", "-."]
    for (path_, e), lab, ls in zip(e2es, labels, styles):
        series = e2e_series(e)
        for s in series:
            same = [k for k in series if k.split("_")[0] == s.split("_")[0]]
            pal = OURS_COLORS if s.startswith("ours") else ANCHOR_COLORS if s.startswith("transformers") else ["0.4"]
            color = pal[same.index(s) * (2 if pal is OURS_COLORS else 1) % len(pal)]
            for ax, kind in zip(axes, ("generate", "prefill")):
                pts = sorted((e2e_what(r["what"])[1], r[s]) for r in e.get("rows", [])
                             if e2e_what(r["what"])[0] == kind and finite(r.get(s)))
                if not pts:
                    continue
                name = E2E_NAMES.get(s, s.replace("_", " ")) + (f" ({lab})" if lab else "")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ls=ls, lw=2, color=color, label=name)
                for x, y in pts if ls == styles[0] else ():  # values of the first file only: readable
                    ax.annotate(f"{y:,}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7.5)
        st = e.get("ours_static_cache") or {}
        if finite(st.get("generate_b1_static_tok_s")):
            v = st["generate_b1_static_tok_s"]
            axes[0].plot([1], [v], marker="*", ms=12, ls="none", color=OURS_COLORS[1],
                         label='ours, cache_implementation="static": wrong tokens, not a route'
                         + (f" ({lab})" if lab else ""))
            axes[0].annotate(f"{v:,}", (1, v), textcoords="offset points", xytext=(6, -10), fontsize=7.5)
    for ax, kind in zip(axes, ("generate", "prefill")):
        xs = sorted({e2e_what(r["what"])[1] for _, e in e2es for r in e.get("rows", []) if e2e_what(r["what"])[0] == kind})
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.xaxis.set_minor_locator(NullLocator())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if str(v)[0] in "2358" else ""))
        if xs:
            ax.set_xticks(xs)
            ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel("batch size (sequences, log scale)" if kind == "generate" else "prompt length (tokens, log scale)")
        ax.set_ylabel("new tokens per second (log scale)" if kind == "generate" else "tokens per second (log scale)")
        ax.set_title("generate (greedy, new tokens/s), higher is better" if kind == "generate"
                     else "prefill (batch 1, tokens/s), higher is better", fontsize=11)
        ax.grid(True, alpha=0.3)
        # below the axes: with several runs the legend would cover the points
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=1)
    e = e2es[0][1]
    fig.suptitle(f"whole model in transformers: defaults against ours, {e.get('device', '?')}, "
                 f"{e.get('date', 'date not recorded')}", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# --- main -------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--results", nargs="+", required=True, type=Path, help="harness results.json (one or more)")
    p.add_argument("--e2e", action="append", default=[], type=Path, help="e2e_model.json (repeat for a second one)")
    p.add_argument("--md", type=Path, default=ROOT / "docs" / "BENCHMARKS.md")
    p.add_argument("--img-dir", type=Path, default=None, help="default: img/ next to --md")
    p.add_argument("--readme", default=str(ROOT / "README.md"), help='README with the headline markers ("": none)')
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)

    runs = load_runs(args.results)
    fams = families(runs)
    e2es = [(path, json.loads(path.read_text())) for path in args.e2e]
    img_dir = args.img_dir or args.md.parent / "img"
    plots: dict = {}
    if not args.no_plots:
        img_dir.mkdir(parents=True, exist_ok=True)
        for fam, (run, rows) in fams.items():
            out = plot_family(fam, run, rows, img_dir / f"{re.sub(r'[^A-Za-z0-9_.-]', '_', fam)}.png")
            if out:
                plots[fam] = out
        if e2es:
            plots["whole_model"] = plot_e2e(e2es, img_dir / "whole_model.png")
    img_rel = Path(os.path.relpath(img_dir, args.md.parent)).as_posix()
    args.md.parent.mkdir(parents=True, exist_ok=True)
    decisions = sorted(p.name for p in args.md.parent.glob("decisions-*.md"))
    args.md.write_text(markdown(runs, fams, e2es, img_rel, plots, decisions))
    print(f"wrote {args.md}" + "".join(f", {p}" for p in plots.values()))
    if e2es and args.readme:
        if update_readme(Path(args.readme), e2es):
            print(f"updated the headline table in {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
