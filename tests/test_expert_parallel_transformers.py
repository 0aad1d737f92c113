"""GPT-OSS under transformers' expert parallelism with our layers, two processes on the CPU (gloo).

transformers 5.25 runs its distributed inference on the CPU: with no accelerator it initialises gloo and
puts every rank on the CPU (``distributed/utils.py``), and DTensor sharding, the EP hook on ``mlp.experts``
and the all-reduce / all-to-all collectives all work there. So this is the real thing, not an emulation:
``tests/ep_worker.py`` runs under ``torchrun --standalone --nproc-per-node 2`` (a free port each time),
loads a tiny GPT-OSS checkpoint through our ``from_pretrained(..., distributed_config=...)`` in four layouts

- ``ep``: ``DistributedConfig(tp_size=2, ep_size=2, tp_plan={})`` (EP alone; "auto" = AllReduceEP, the experts
  see the sentinel id E_local for the other rank's experts), fused norm + MoE module;
- ``auto_tp_ep``: ``tp_plan="auto", enable_expert_parallel=True`` (GPT-OSS's TP plan: embedding rows and LM
  head columns), unfused MoE module;
- ``all_to_all``: ``ep_implementation="all_to_all"`` (tokens exchanged; local ids only);
- ``heads_tp_ep``: a TP plan that splits the attention heads and sinks (``local_params`` on the attention) + EP,

and the logits (fp32) and greedy tokens of every rank must match the single-process model with our layers.
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

LAYOUTS = {"ep": True, "auto_tp_ep": False, "all_to_all": True, "heads_tp_ep": True}  # name -> fused
E, E_LOCAL = 8, 4  # tiny_model: 8 experts over 2 ranks


def _needs(layout):
    if layout not in layouts():
        pytest.skip(f"layout {layout!r} needs a newer transformers (tests/ep_worker.py capabilities())")


@pytest.fixture(scope="module")
def runs(kernel, tmp_path_factory):
    """(single-process logits and tokens per fused flag, the two ranks' results)."""
    tmp = tmp_path_factory.mktemp("ep")
    checkpoint, out = tmp / "checkpoint", tmp / "out"
    out.mkdir()
    tiny_model(seed=3).save_pretrained(checkpoint)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           str(ROOT / "tests" / "ep_worker.py"), str(ROOT / "build"), str(checkpoint), str(out)]
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
        assert got["experts_class"] == "MoeExpertsLayout" and got["local_experts"] == E_LOCAL


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
