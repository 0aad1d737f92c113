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


def _fake_profile(events):
    """A stand-in for torch.profiler.profile with the events given as (name, on_gpu, start_us, end_us)."""
    from types import SimpleNamespace

    import torch

    def ev(name, gpu, a, b):
        rng = SimpleNamespace(start=a, end=b, elapsed_us=lambda: b - a)
        dev = torch.autograd.DeviceType.CUDA if gpu else torch.autograd.DeviceType.CPU
        return SimpleNamespace(name=name, device_type=dev, time_range=rng)

    return SimpleNamespace(events=lambda: [ev(*e) for e in events])


def test_profile_decode_kernel_table_and_annotations():
    """The per-step kernel table counts kernels from the first decode launch on, per step, and neither it nor the
    windows count the profiler's GPU-side copies of our host ranges (an annotation spanning the launch)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import profile_decode as pd

    prof = _fake_profile([
        ("prefill_kernel", True, 0, 50),  # before the first launch: not counted
        ("launch", False, 100, 110),  # host range (CPU)
        ("launch", True, 120, 400),  # the same range on the GPU's timeline: an annotation, not a kernel
        ("gemm", True, 120, 200), ("gemm", True, 200, 280), ("norm", True, 280, 300),
    ])
    table = pd.kernel_table(prof, since_us=100, steps=2)
    assert table == [dict(kernel="gemm", us_per_step=80.0, per_step=1.0),
                     dict(kernel="norm", us_per_step=10.0, per_step=0.5)]
    (row,) = pd.per_window(prof, "launch", ["launch"])
    assert row["kernels_run"] == 3 and row["kernel_sum_ms"] == 0.18  # 80 + 80 + 20 us, no annotation
    assert abs(row["gpu_busy_ms"] - 0.18) < 1e-9


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


def test_e2e_decode_tiny_continuous_batching_profile(kernel, tmp_path):
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "e2e_decode.py"), "--tiny", "--cb-only",
                        "--cb-profile", "--out", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    cb = json.loads((tmp_path / "e2e_decode_cb.json").read_text())["continuous_batching"]
    for name in ("transformers_defaults", "ours"):
        assert cb[name]["teacher_forced_agreement"] == 1.0, (name, cb[name])
        assert cb[name]["resolved_config"]["num_blocks"] > 0  # read from the manager's resolved copy
    prof = cb["ours"]["profile"]
    assert prof["wall_s"] > 0 and prof["gpu_busy_s"] == 0.0 and prof["top_kernels"] == []  # CPU: no GPU activity
    assert "ours under the profiler" in (tmp_path / "e2e_decode_cb.md").read_text()
