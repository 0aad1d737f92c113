"""The decode benchmarks with --tiny on the CPU (CI): profile_decode.py and e2e_decode.py run and write their
tables and JSON."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT


def test_profile_decode_tiny(kernel, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_decode.py"), "--tiny", "--runner", "2",
                        "--new-tokens", "5", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = json.loads((tmp_path / "profile_decode.json").read_text())
    gen = res["generate_static"]
    assert len(gen["steps"]) == 5  # the prefill, then one window per decode step
    step = gen["median_step"]
    assert step["wall_ms"] > 0 and step["host_forward_ms"] > 0 and step["host_prepare_inputs_ms"] > 0
    assert step["host_forward_ms"] <= step["wall_ms"]
    assert gen["dynamo_first_call"]["graph_breaks"] == 0  # no compile on the CPU
    assert {lane for lane, *_ in gen["timeline"]} == {"host"}  # a step's events for the picture (no GPU here)
    assert "timeline" not in gen["steps"][0]
    runner = res["runner"][0]
    assert runner["launches"] == 2 and len(runner["windows"]) == 2  # tokens 2-3 and 4-5 (the prefill gives the first)
    md = (tmp_path / "profile_decode.md").read_text()
    assert "| wall |" in md and "DecodeRunner, 2 steps per launch" in md


def test_e2e_decode_tiny(kernel, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "e2e_decode.py"), "--tiny", "--no-cb", "--batches",
                        "2", "--steps", "1", "4", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    res = json.loads((tmp_path / "e2e_decode.json").read_text())
    routes = res["batches"]["2"]
    assert set(routes) == {"generate_dynamic", "generate_static", "runner_1", "runner_4"}
    for name in ("generate_dynamic", "runner_1", "runner_4"):
        assert routes[name]["teacher_forced_agreement"] == 1.0, (name, routes[name])  # fp32: each token the argmax
    assert routes["runner_4"]["runner_vs_dynamic_tokens"] == 1.0
    assert routes["runner_4"]["launches"] == 3  # 9 decode steps after the prefill's token, 4 per launch
    assert "| runner_4 | 2 |" in (tmp_path / "e2e_decode.md").read_text()
