"""benchmarks/report.py: BENCHMARKS.md, its plots and README's headline table from a tiny fake run (no GPU,
no build). The markdown checks run everywhere; the plot check needs matplotlib."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "benchmarks" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


ENV = {"date": "2030-01-02 03:04 UTC", "device": "Fake GPU", "sms": 7, "torch": "9.9", "transformers": "8.8"}
CEILINGS = {"copy_bytes_per_us": 3.0e6, "copy_TBps": 3.004, "bf16_flops_per_us": 7.0e8, "bf16_TFLOPs": 700.4}


def _row(family, case, impl, us, floor=None, **extra):
    r = {"family": family, "case": case, "impl": impl, "median_us": us}
    if floor:
        r.update(floor_us=floor, pct_of_floor=round(100 * floor / us, 1))
    r.update(extra)
    return r


ROWS = [
    _row("rmsnorm", "T=16", "ours rms_norm", 2.0, 1.0),
    _row("rmsnorm", "T=16", "Liger RMSNorm", 4.0, 1.0),
    _row("rmsnorm", "T=16", "ours fused_add_rms_norm", 3.0, 1.5),
    _row("rmsnorm", "T=4096", "ours rms_norm", 20.25, 16.0),
    _row("rmsnorm", "T=4096", "Liger RMSNorm", 30.375, 16.0),
    _row("rmsnorm", "T=4096", "ours fused_add_rms_norm", 40.0, 32.0),
    _row("moe", "T=1", "ours MoeMLP (CUDA graph)", 80.0, 60.0, eager_us=100.0),
    _row("moe", "T=1", "transformers grouped_mm (eager)", 500.0, 60.0),
    _row("moe", "T=64", "ours MoeMLP (CUDA graph)", 500.0, 450.0, eager_us=520.0),
    _row("moe", "T=64", "transformers grouped_mm (eager)", 1300.0, 450.0),
    _row("attention", "prefill S=8192 full causal", "ours (Triton)", 1300.5, 800.0),
    _row("attention", "prefill S=8192 full causal", "FlexAttention + LSE sink", 1755.675, 800.0),
    _row("attention", "error", "ours", float("nan"), error="RuntimeError('boom')"),
]
E2E = {"device": "Fake GPU", "torch": "9.9", "transformers": "8.8", "layers": 24, "reps": 3, "new_tokens": 64,
       "date": "2030-01-02 04:00 UTC",
       "rows": [{"what": "prefill_4096_tok_s", "transformers": 6605.3, "ours": 65444.6, "speedup": 9.91},
                {"what": "generate_b1_tok_s", "transformers": 22.7, "ours": 34.5, "speedup": 1.52},
                {"what": "generate_b16_tok_s", "transformers": 208.9, "ours": 719.2, "speedup": 3.44}],
       "ours_static_cache": {"generate_b1_static_tok_s": 156.5, "static_first_call_s": 52.4}}
README = "# x\n\nintro\n\n<!-- headline:start -->\n| old | table |\n<!-- headline:end -->\n\n## Layout\nkept\n"


@pytest.fixture
def run_files(tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"env": ENV, "ceilings": CEILINGS, "rows": ROWS}))
    e2e = tmp_path / "e2e_model.json"
    e2e.write_text(json.dumps(E2E))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    return results, e2e, readme, tmp_path / "docs" / "BENCHMARKS.md"


def test_markdown_and_headline(run_files):
    results, e2e, readme, md = run_files
    assert _report().main(["--results", str(results), "--e2e", str(e2e), "--md", str(md), "--readme", str(readme),
                           "--no-plots"]) == 0
    text = md.read_text()
    for fam in ("rmsnorm", "moe", "attention"):
        assert f"\n## {fam}\n" in text
    # the run: file, date, device, versions, ceilings
    assert "`results.json` | 2030-01-02 03:04 UTC | Fake GPU (7 SMs) |" in text
    assert "torch 9.9" in text and "3.00 TB/s" in text and "700 TFLOP/s" in text
    # stored numbers as stored, and the anchor ratio (same work only; eager anchors against our eager time)
    assert "| T=4096 | ours rms_norm | 20.25 | 16.0 | 79.0 | 1.50x vs Liger RMSNorm |" in text
    assert "| T=4096 | ours fused_add_rms_norm | 40.0 | 32.0 | 80.0 |  |" in text
    assert "| T=1 | ours MoeMLP (CUDA graph) | 80.0 | 60.0 | 75.0 | 5.00x vs transformers grouped_mm (eager), eager vs eager |" in text
    assert "1.35x vs FlexAttention + LSE sink" in text
    assert "| error | ours | nan |" in text and "boom" in text
    assert "![" not in text  # --no-plots
    # whole model and the README headline from the same e2e run
    assert "## Whole model in transformers" in text
    for t in (text, readme.read_text()):
        assert "| prefill, 4096-token prompt | 6,605.3 | 65,444.6 | 9.91x |" in t
        assert "| generate, batch 16 | 208.9 | 719.2 | 3.44x |" in t
        # a run after the static-cache fix: its number, unmarked
        assert '| generate, batch 1, `cache_implementation="static"` | not measured | 156.5 |  |' in t
    new = readme.read_text()
    assert "| old | table |" not in new
    assert new.startswith("# x\n\nintro\n\n<!-- headline:start -->\n| tokens per second |")
    assert new.endswith("<!-- headline:end -->\n\n## Layout\nkept\n")


def test_several_results_files_last_family_wins(tmp_path, run_files):
    results, _, _, md = run_files
    later = tmp_path / "later.json"
    env = dict(ENV, date="2030-02-02 00:00 UTC")
    later.write_text(json.dumps({"env": env, "ceilings": CEILINGS,
                                 "rows": [_row("moe", "T=1", "ours MoeMLP (CUDA graph)", 70.0, 60.0)]}))
    _report().main(["--results", str(results), str(later), "--md", str(md), "--readme", "", "--no-plots"])
    text = md.read_text()
    moe = text[text.index("\n## moe\n"):text.index("\n## attention\n")]
    assert "`later.json`" in moe and "| 70.0 |" in moe and "| 80.0 |" not in moe
    assert "`results.json`" in text[text.index("\n## rmsnorm\n"):]


def test_static_rows_of_runs_before_the_fix_are_marked(tmp_path, run_files):
    """Static-cache numbers of runs before 2026-12-06 came from a route that computed wrong tokens with our
    attention: marked in the row and its label."""
    results, _, _, md = run_files
    old = tmp_path / "old_e2e.json"
    old.write_text(json.dumps(dict(E2E, date="2026-12-04 18:41 UTC")))
    _report().main(["--results", str(results), "--e2e", str(old), "--md", str(md), "--readme", "", "--no-plots"])
    assert ('| generate, batch 1, `cache_implementation="static"` († runs before 2026-12-06: a route that computed '
            'wrong tokens with our attention, README "Decoding") | not measured | 156.5 † |  |') in md.read_text()


def test_plots(run_files):
    pytest.importorskip("matplotlib")
    results, e2e, readme, md = run_files
    _report().main(["--results", str(results), "--e2e", str(e2e), "--md", str(md), "--readme", str(readme)])
    img = md.parent / "img"
    text = md.read_text()
    for name in ("rmsnorm", "moe", "attention", "whole_model"):
        png = img / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert png.stat().st_size > 10_000
        assert f"(img/{name}.png)" in text


def test_parse_case():
    parse = _report().parse_case
    assert parse("T=4096") == ("", "T", 4096)
    assert parse("prefill S=8192 sliding 128") == ("prefill sliding 128", "S", 8192)
    assert parse("decode B=1 cache=8192") == ("decode B=1 cache=8192", None, None)


def test_mxfp4_runner_rows(tmp_path, run_files):
    """e2e_model --mxfp4 adds ours through DecodeRunner against transformers' MXFP4 generate: labelled, after the
    generate rows, with its ratio."""
    results, _, _, md = run_files
    mx = tmp_path / "e2e_model_mxfp4.json"
    rows = [{"what": "prefill_4096_tok_s", "transformers_mxfp4": 7000.0, "ours": 48000.0, "speedup": 6.86},
            {"what": "runner_b16_tok_s vs generate_b16_tok_s", "transformers_mxfp4": 277.0, "ours": 2760.8,
             "speedup": 9.97},
            {"what": "generate_b1_tok_s", "transformers_mxfp4": 16.8, "ours": 68.4, "speedup": 4.07}]
    mx.write_text(json.dumps(dict(E2E, rows=rows)))
    _report().main(["--results", str(results), "--e2e", str(mx), "--md", str(md), "--readme", "", "--no-plots"])
    text = md.read_text()
    runner = "| batch 16: ours `DecodeRunner` (N = 32) against the other's `generate` | 277.0 | 2,760.8 | 9.97x |"
    assert runner in text
    assert text.index("| generate, batch 1 |") < text.index(runner)


def test_env_line_names_the_kernel_switches():
    """A run's GOK_* switches (harness.environment()["switches"]) appear in its environment line; none: no mention."""
    report = _report()
    assert "switches" not in report.env_line({"env": dict(ENV, switches={})})[2]
    line = report.env_line({"env": dict(ENV, switches={"GOK_PREFILL_GEMM": "1"})})[2]
    assert line.endswith("switches GOK_PREFILL_GEMM=1") and "torch 9.9" in line
