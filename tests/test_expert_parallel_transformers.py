"""GPT-OSS under transformers' expert parallelism with our layers, two processes on the CPU (gloo).

transformers 5.25 runs its distributed inference on the CPU: with no accelerator it initialises gloo and
puts every rank on the CPU (``distributed/utils.py``), and DTensor sharding, the EP hook on ``mlp.experts``
and the all-reduce / all-to-all collectives all work there. So this is the real thing, not an emulation:
``tests/ep_worker.py`` runs under ``torchrun --standalone --nproc-per-node 2`` (a free port each time),
loads a tiny GPT-OSS checkpoint through our ``from_pretrained(..., distributed_config=...)`` in these layouts

- ``ep``: ``DistributedConfig(tp_size=2, ep_size=2, tp_plan={})`` (EP alone; "auto" = AllReduceEP, the experts
  see the sentinel id E_local for the other rank's experts), fused norm + MoE module;
- ``auto_tp_ep``: ``tp_plan="auto", enable_expert_parallel=True`` (GPT-OSS's TP plan: embedding rows and LM
  head columns), unfused MoE module;
- ``all_to_all``: ``ep_implementation="all_to_all"`` (tokens exchanged; local ids only);
- ``tp_only``: ``tp_size=2`` without EP (every rank runs all experts, our fused fast path), and the same through
  the older ``from_pretrained(..., tp_plan="auto")`` keyword (``tp_plan_kwarg``);
- ``heads_tp_ep``: a TP plan that splits the attention heads and sinks (``local_params`` on the attention) + EP,

and the logits (fp32) and greedy tokens of every rank must match the single-process model with our layers.
An MXFP4 checkpoint (blocks and scales as openai/gpt-oss ships them) loads with each rank holding its half
of the experts' blocks and scales (its forward needs the MXFP4 experts op, which lands separately).
Skipped on a CUDA machine: transformers would bind rank r to cuda:r and use NCCL (benchmarks/e2e_ep.py is
the multi-GPU run).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import HAS_CUDA, ROOT, rel_err
from ep_worker import capabilities, layouts
from tiny_gpt_oss import tiny_model

pytestmark = pytest.mark.skipif(HAS_CUDA, reason="CPU/gloo test: on a GPU machine transformers binds ranks to GPUs")

LAYOUTS = {"ep": True, "auto_tp_ep": False, "all_to_all": True, "tp_only": True, "tp_plan_kwarg": True,
           "heads_tp_ep": True}  # name -> fused
E, E_LOCAL = 8, 4  # tiny_model: 8 experts over 2 ranks


def _mxfp4_checkpoint(path):
    """tiny_model's weights with its experts stored as openai/gpt-oss stores them: uint8 blocks (E, N, K/32, 16)
    and e8m0 scales (E, N, K/32), quantization_config.quant_method = "mxfp4"."""
    import json

    from safetensors.torch import save_file

    model = tiny_model(seed=3)
    c = model.config
    e, h, i = c.num_local_experts, c.hidden_size, c.intermediate_size
    gen = torch.Generator().manual_seed(1)
    u8 = lambda *shape, lo=0, hi=256: torch.randint(lo, hi, shape, dtype=torch.uint8, generator=gen)  # noqa: E731
    sd = {k: v.contiguous() for k, v in model.state_dict().items() if not k.endswith(("gate_up_proj", "down_proj"))}
    for layer in range(c.num_hidden_layers):
        p = f"model.layers.{layer}.mlp.experts."
        sd[p + "gate_up_proj_blocks"], sd[p + "gate_up_proj_scales"] = u8(e, 2 * i, h // 32, 16), u8(
            e, 2 * i, h // 32, lo=120, hi=130)
        sd[p + "down_proj_blocks"], sd[p + "down_proj_scales"] = u8(e, h, i // 32, 16), u8(
            e, h, i // 32, lo=120, hi=130)
    path.mkdir()
    save_file(sd, path / "model.safetensors", metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps({**c.to_dict(), "quantization_config": {"quant_method": "mxfp4"}}))
    return sd


def _needs(layout):
    if layout not in layouts():
        pytest.skip(f"layout {layout!r} needs a newer transformers (tests/ep_worker.py capabilities())")


@pytest.fixture(scope="module")
def runs(kernel, tmp_path_factory):
    """(single-process logits and tokens per fused flag, the two ranks' results)."""
    tmp = tmp_path_factory.mktemp("ep")
    checkpoint, out, mxfp4 = tmp / "checkpoint", tmp / "out", tmp / "mxfp4"
    out.mkdir()
    tiny_model(seed=3).save_pretrained(checkpoint)
    _mxfp4_checkpoint(mxfp4)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "ep_worker.py"), str(ROOT / "build"), str(checkpoint), str(out), str(mxfp4)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The single-process models load while the two ranks run.
    ids = torch.arange(3, 3 + 2 * 21).reshape(2, 21) % 250 + 1
    single = {}
    for fused in (True, False):
        model = kernel.from_pretrained(str(checkpoint), dtype=torch.float32, fused=fused)
        with torch.inference_mode():
            single[fused] = (model(ids).logits.float(),
                             model.generate(ids[:1, :9], max_new_tokens=8, min_new_tokens=8, do_sample=False))
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        proc.kill()
        log, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{log[-6000:]}")
    assert proc.returncode == 0, log[-6000:]
    return single, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.mark.kernels_ci
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_two_ranks_match_one_process(runs, layout):
    _needs(layout)
    single, ranks = runs
    logits, tokens = single[LAYOUTS[layout]]
    for rank, result in enumerate(ranks):
        got = result[layout]
        # fp32: only the order of the cross-rank sums differs from one process
        assert rel_err(got["logits"], logits) <= 1e-5, (layout, rank)
        assert torch.equal(got["tokens"], tokens), (layout, rank)
        # our layers ran (attention, norms, rotary, the experts), on this rank's half of the experts
        assert {"attn_fwd", "rms_norm", "rotary_pos_emb", "moe_experts"} <= set(got["ops"]), got["ops"]
        assert got["experts_class"] == "MoeExpertsLayout"
        assert got["local_experts"] == (E if layout.startswith("tp_") else E_LOCAL)


@pytest.mark.parametrize("layout", ["ep", "auto_tp_ep", "heads_tp_ep"])
def test_all_reduce_ep_passes_sentinels_and_our_experts_skip_them(runs, layout):
    """transformers' AllReduceEP hands the experts the sentinel E_local for the other rank's experts; our layer
    passes skip_foreign (the module is split), so they contribute zero (the logits test above)."""
    _needs(layout)
    if not capabilities()["all_reduce_ep"]:
        pytest.skip("this transformers always exchanges tokens (local ids only)")
    for result in runs[1]:
        calls = result[layout]["calls"]
        assert calls and all(e_local == E_LOCAL and skip for _, _, e_local, skip in calls)
        assert max(hi for _, hi, _, _ in calls) == E_LOCAL  # the sentinel reached the op


def test_all_to_all_ep_passes_local_ids(runs):
    layout = "all_to_all" if capabilities()["ep_implementation"] else "ep"  # 5.22: "ep" is all-to-all dispatch
    for result in runs[1]:
        calls = result[layout]["calls"]
        assert calls and all(0 <= lo and hi < E_LOCAL for lo, hi, _, _ in calls)


def test_heads_split_over_ranks(runs):
    """tiny_model: 2 KV heads; the head-sharded plan leaves one per rank (GPT-OSS's own plan leaves both)."""
    _needs("heads_tp_ep")
    for result in runs[1]:
        assert result["heads_tp_ep"]["kv_heads"] == 1
        assert result["auto_tp_ep"]["kv_heads"] is None  # attention not sharded by tp_plan="auto"


def test_clear_errors(runs):
    for result in runs[1]:
        # transformers' use_kernels route kernelizes after the EP hook is installed and drops it
        assert "expert-parallel hook no longer runs this forward" in (result["clobbered_error"] or "")
        assert "sinks" in (result["unsharded_sinks_error"] or "")
        assert "not both" in (result["device_error"] or "")


def test_mxfp4_experts_split_over_ranks(runs, tmp_path):
    """Our from_pretrained adds the MXFP4 tensors to transformers' ep_plan (its own names only the bf16 ones):
    rank r holds experts [4r, 4r + 4) of every blocks / scales / bias tensor, exactly as stored."""
    expected = _mxfp4_checkpoint(tmp_path / "mxfp4")  # same generator seed: the same tensors as the run's
    for rank, result in enumerate(runs[1]):
        mx = result["mxfp4"]
        assert mx["format"] == "mxfp4" and mx["num_experts"] == E_LOCAL and mx["is_expert_parallel"]
        for name, local in mx["tensors"].items():
            full = expected[f"model.layers.1.mlp.experts.{name}"]
            assert torch.equal(local, full[rank * E_LOCAL:(rank + 1) * E_LOCAL].to(local.dtype)), name


# --- benchmarks/e2e_ep.py: the multi-GPU run's script, kept runnable on the CPU -------------------------------


def _e2e_ep(*argv, torchrun=False, timeout=240):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"] if torchrun \
        else [sys.executable]
    proc = subprocess.run(launch + [str(ROOT / "benchmarks" / "e2e_ep.py"), *argv], env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-6000:]
    return proc.stdout


@pytest.mark.parametrize("nproc,per_rank_gib", [(2, 31.3), (4, 16.5)])
def test_e2e_ep_dry_run_plans_120b(nproc, per_rank_gib):
    import json

    out = _e2e_ep("--dry-run", "--cuda", "--nproc", str(nproc))
    plan = json.loads(out)
    assert (plan["config"], plan["layers"], plan["experts"], plan["top_k"]) == ("120b", 36, 128, 4)
    assert plan["experts_per_rank"] == 128 // nproc and plan["ours_experts"] == "mxfp4"
    assert plan["batches"] == [1, 16, 64] and plan["prefill"] == 4096
    assert plan["per_rank_ours"]["total_gib"] == pytest.approx(per_rank_gib, abs=0.5)
    assert plan["per_rank_transformers"]["total_gib"] < 139  # bf16 experts of 120b fit on 2 H200s, barely


def test_e2e_ep_runs_on_two_cpu_ranks(tmp_path):
    """The script's whole logic (check, then bench, ours and transformers') at the tiny config under gloo."""
    import json

    _e2e_ep("--prefill", "64", "--new-tokens", "4", "--batches", "1,2", "--reps", "1", "--out", str(tmp_path),
            torchrun=True)
    res = json.loads((tmp_path / "e2e_ep_2gpu.json").read_text())
    for impl in ("ours", "transformers"):
        check = res["check"]["impls"][impl]
        assert check["pass"] and check["ranks_bit_identical"] and check["greedy_tokens_equal"], check
        assert check["ep_load"]["local_experts"] == E_LOCAL and check["one_gpu_load"]["local_experts"] == E
    assert [r["what"] for r in res["bench"]["rows"]] == ["prefill_64_tok_s", "generate_b1_tok_s", "generate_b2_tok_s"]
