"""Expert parallelism at the op and layer level (one process; the two-process run under transformers is
tests/test_expert_parallel_transformers.py).

Under transformers' expert parallelism an experts module holds E_local = E / ep experts and is called with
ids outside [0, E_local) for the other ranks' experts (transformers' ``AllReduceEP`` passes E_local, weight 0).
``moe_experts(..., skip_foreign=True)`` (and ``moe_finalize``'s flag) makes such a slot contribute exactly
zero on both backends, without a host sync; the default keeps bad-id detection (CPU raises, CUDA NaN).
Tests that take ``device`` run on the GPU too (``pytest -m gpu``): sentinel ids need one device only.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TOL, poison_allocator, rel_err

ALPHA, LIMIT = 1.702, 7.0
SMALL = dict(H=64, I=48, E=8, k=4)
BIG = dict(H=2880, I=2880, E=32, k=4)  # gpt-oss-20b's experts (E=32) on the GPU
MOE_TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}


def _shape(device):
    return BIG if device == "cuda" else SMALL


def _params(s, dtype, device, bias=True):
    r = lambda *shape, std: (torch.randn(*shape, device=device) * std).to(dtype)  # noqa: E731
    return dict(
        gate_up_proj=r(s["E"], s["H"], 2 * s["I"], std=2.0 * s["H"] ** -0.5),
        gate_up_proj_bias=r(s["E"], 2 * s["I"], std=0.1) if bias else None,
        down_proj=r(s["E"], s["I"], s["H"], std=s["I"] ** -0.5),
        down_proj_bias=r(s["E"], s["H"], std=0.1) if bias else None,
    )


def _routes(T, E, k, device):
    logits = torch.randn(T, E, device=device)
    top = torch.topk(logits, k)
    return torch.softmax(top.values, -1), top.indices.int()


def _shard(p, rank, ep):
    e_local = p["gate_up_proj"].shape[0] // ep
    return {n: None if t is None else t[rank * e_local:(rank + 1) * e_local] for n, t in p.items()}


def _local_routes(ids, w, rank, e_local):
    """transformers' AllReduceEP: ids of other ranks become the sentinel E_local, their weights 0."""
    off = (ids.long() // e_local) != rank
    return torch.where(off, e_local, ids.long() % e_local).to(ids.dtype), w.masked_fill(off, 0.0), off


def _experts(kernel, x, ids, w, p, **kw):
    return kernel.moe_experts(x, ids, w, p["gate_up_proj"], p["gate_up_proj_bias"], p["down_proj"],
                              p["down_proj_bias"], ALPHA, LIMIT, **kw)


def _ref(ref, x, ids, w, p, keep=None):
    """float64 reference over the slots in ``keep`` (all by default); ``ids`` global, ``p`` all experts."""
    ids = ids.long()
    w = w.double() if keep is None else torch.where(keep, w.double(), 0.0)
    ids = ids if keep is None else torch.where(keep, ids, 0)
    d = lambda t: None if t is None else t.double()  # noqa: E731
    return ref.moe_experts(x.double(), ids, w, d(p["gate_up_proj"]), d(p["gate_up_proj_bias"]), d(p["down_proj"]),
                           d(p["down_proj_bias"]), ALPHA, LIMIT)


# --- ops ---------------------------------------------------------------------------------------------


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ep", [2, 4])
@pytest.mark.parametrize("T", [1, 5, 300])
def test_each_rank_computes_its_share(kernel, ref, device, dtype, ep, T):
    """Every rank's call with skip_foreign is the float64 reference over its own slots; the ranks' outputs
    sum to the whole block (what transformers' all-reduce then does)."""
    s = _shape(device)
    p = _params(s, dtype, device)
    x = torch.randn(T, s["H"], device=device).to(dtype)
    w, ids = _routes(T, s["E"], s["k"], device)
    e_local = s["E"] // ep
    total = torch.zeros(T, s["H"], dtype=torch.float64, device=device)
    for rank in range(ep):
        lids, lw, off = _local_routes(ids, w, rank, e_local)
        poison_allocator(device, T * s["k"] * max(s["H"], s["I"]) * 4)
        out = _experts(kernel, x, lids, lw, _shard(p, rank, ep), skip_foreign=True)
        assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
        assert rel_err(out, _ref(ref, x, ids, w, p, keep=~off)) <= MOE_TOL[dtype]
        total += out.double()
    assert rel_err(total, _ref(ref, x, ids, w, p)) <= MOE_TOL[dtype]


def test_foreign_ids_contribute_exactly_zero(kernel, device):
    """Any id outside [0, E) (the sentinel E, -1, far out) is skipped whatever its weight (NaN included):
    the output is the call with those slots zero-weighted on a real expert, and no row is NaN (not bit
    for bit on the CPU: at::mm's result for a row can depend on how many rows its expert's GEMM has)."""
    s = SMALL
    p = _params(s, torch.float32, device)
    T = 9
    x = torch.randn(T, s["H"], device=device)
    w, ids = _routes(T, s["E"], s["k"], device)
    foreign = torch.zeros_like(ids, dtype=torch.bool)
    foreign[0, :] = True  # every slot of token 0: its row is exactly zero
    foreign[3, 1] = foreign[5, 0] = foreign[5, 3] = foreign[8, 2] = True
    bad_ids = ids.clone()
    bad_ids[foreign] = torch.tensor([s["E"], -1, 1000, s["E"], s["E"] + 7, -5, s["E"], 2**30],
                                    dtype=ids.dtype, device=device)
    bad_w = w.masked_fill(foreign, float("nan"))
    got = _experts(kernel, x, bad_ids, bad_w, p, skip_foreign=True)
    assert torch.isfinite(got).all()
    assert torch.equal(got[0], torch.zeros_like(got[0]))
    zeroed = _experts(kernel, x, torch.where(foreign, 0, ids), w.masked_fill(foreign, 0.0), p, skip_foreign=True)
    assert rel_err(got, zeroed) <= 1e-6


def test_skip_foreign_with_in_range_ids_is_the_default(kernel, device):
    s = SMALL
    p = _params(s, torch.bfloat16, device)
    x = torch.randn(17, s["H"], device=device).to(torch.bfloat16)
    w, ids = _routes(17, s["E"], s["k"], device)
    assert torch.equal(_experts(kernel, x, ids, w, p, skip_foreign=True), _experts(kernel, x, ids, w, p))


def test_k_larger_than_local_experts(kernel, ref, device):
    """E = 8 over 4 ranks, top-4: each rank holds 2 experts but a token names 4 (k > E_local is legal
    under skip_foreign; without it top_k > E is still refused)."""
    s = dict(SMALL, E=8, k=4)
    p = _params(s, torch.float32, device)
    x = torch.randn(6, s["H"], device=device)
    w, ids = _routes(6, s["E"], s["k"], device)
    lids, lw, off = _local_routes(ids, w, 1, 2)
    shard = _shard(p, 1, 4)
    out = _experts(kernel, x, lids, lw, shard, skip_foreign=True)
    assert rel_err(out, _ref(ref, x, ids, w, p, keep=~off)) <= 1e-4
    with pytest.raises(ValueError, match="top_k"):
        _experts(kernel, x, lids, lw, shard)


def test_default_still_detects_bad_ids(kernel, device):
    """The public op's default is unchanged: CPU raises, CUDA flags the token's row NaN."""
    s = SMALL
    p = _params(s, torch.float32, device)
    x = torch.randn(4, s["H"], device=device)
    w, ids = _routes(4, s["E"], s["k"], device)
    ids[1, 2] = s["E"]
    if device == "cpu":
        with pytest.raises(RuntimeError, match="topk_ids must be in"):
            _experts(kernel, x, ids, w, p)
    else:
        out = _experts(kernel, x, ids, w, p)
        assert torch.isnan(out[1]).all() and torch.isfinite(out[[0, 2, 3]]).all()
    with pytest.raises(TypeError, match="skip_foreign"):
        _experts(kernel, x, ids, w, p, skip_foreign=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("H", [2880, 7])
@pytest.mark.parametrize("skip", [False, True])
def test_moe_finalize_foreign_slots(kernel, device, dtype, H, skip):
    T, k, E = 33, 4, 8
    y = torch.randn(T * k, H, device=device).to(dtype)
    ids = torch.randint(0, E, (T, k), device=device, dtype=torch.int32)
    ids[3, 2], ids[7, 0], ids[7, 3] = E, -1, E + 100
    y.view(T, k, H)[3, 2] = float("nan")  # a row dispatch never wrote: must not be read when skipped
    out = kernel._ops.ops.moe_finalize(y, ids, E, skip)
    keep = ((ids >= 0) & (ids < E)).unsqueeze(-1)
    expected = torch.where(keep, y.double().view(T, k, H), 0.0).sum(1)
    rows = [t for t in range(T) if t not in (3, 7)]
    assert rel_err(out[rows], expected[rows]) <= TOL[dtype]
    if skip:
        assert rel_err(out, expected) <= TOL[dtype]
    else:
        assert torch.isnan(out[3]).all() and torch.isnan(out[7]).all()


# --- the layer ---------------------------------------------------------------------------------------


def _experts_module(kernel, p, local: bool):
    from torch import nn

    m = nn.Module()
    for n, t in p.items():
        setattr(m, n, nn.Parameter(t, requires_grad=False))
    m.alpha, m.limit = ALPHA, LIMIT
    m._is_expert_parallel = local
    return m


def test_experts_layer_under_all_reduce_ep_matches_transformers(kernel, device):
    """Our MoeExperts layer (the forward transformers' EP hook calls) on each rank's shard, with the routes
    transformers' AllReduceEP hands it, summed over the ranks = transformers' own GptOssExperts on all experts."""
    from transformers import GptOssConfig
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssExperts

    s, ep, T = SMALL, 2, 40
    p = _params(s, torch.float32, device)
    x = torch.randn(T, s["H"], device=device)
    w, ids = _routes(T, s["E"], s["k"], device)
    config = GptOssConfig(hidden_size=s["H"], intermediate_size=s["I"], num_local_experts=s["E"],
                          num_experts_per_tok=s["k"])
    config._experts_implementation = "eager"
    with torch.device(device):
        theirs = GptOssExperts(config).eval()
    with torch.no_grad():
        for n, t in p.items():
            getattr(theirs, n).copy_(t)
    with torch.inference_mode():
        expected = theirs(x, ids.long(), w)
        total = torch.zeros_like(expected)
        for rank in range(ep):
            lids, lw, _ = _local_routes(ids.long(), w, rank, s["E"] // ep)
            shard = _experts_module(kernel, _shard(p, rank, ep), local=True)
            total += kernel.layers.MoeExperts.forward(shard, x, lids, lw)
        # without transformers' flag the sentinel is bad input, as for the public op
        if device == "cpu":
            with pytest.raises(RuntimeError, match="topk_ids must be in"):
                kernel.layers.MoeExperts.forward(_experts_module(kernel, _shard(p, 0, ep), local=False), x, lids, lw)
    assert rel_err(total, expected) <= 1e-4


# --- GPU: no host sync, CUDA graphs, torch.compile with foreign ids ------------------------------------


def _gpu_rank_inputs(T, ep=4, rank=1, dtype=torch.bfloat16):
    s = BIG
    p = _shard(_params(s, dtype, "cuda"), rank, ep)
    x = torch.randn(T, s["H"], device="cuda").to(dtype)
    w, ids = _routes(T, s["E"], s["k"], "cuda")
    lids, lw, _ = _local_routes(ids, w, rank, s["E"] // ep)
    return x, lids, lw, p


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 64, 2048])
def test_skip_foreign_no_host_sync(kernel, T):
    x, ids, w, p = _gpu_rank_inputs(T)
    _experts(kernel, x, ids, w, p, skip_foreign=True)  # warm-up: Triton compile and autotune synchronise
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _experts(kernel, x, ids, w, p, skip_foreign=True)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.gpu
@pytest.mark.parametrize("T", [1, 64, 1024])
def test_skip_foreign_cuda_graph(kernel, T):
    x, ids, w, p = _gpu_rank_inputs(T)
    for _ in range(2):
        _experts(kernel, x, ids, w, p, skip_foreign=True)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = _experts(kernel, x, ids, w, p, skip_foreign=True)
    for rank in (0, 3):  # new routes: other ranks' slots become the sentinel
        s = BIG
        gw, gids = _routes(T, s["E"], s["k"], "cuda")
        lids, lw, _ = _local_routes(gids, gw, rank, s["E"] // 4)
        ids.copy_(lids)
        w.copy_(lw)
        g.replay()
        expected = _experts(kernel, x, ids, w, p, skip_foreign=True)
        torch.cuda.synchronize()
        assert torch.isfinite(out).all() and torch.equal(out, expected)


@pytest.mark.gpu
def test_skip_foreign_torch_compile_fullgraph(kernel):
    torch._dynamo.reset()
    x, ids, w, p = _gpu_rank_inputs(77)
    module = _experts_module(kernel, p, local=True)
    fwd = kernel.layers.MoeExperts.forward
    compiled = torch.compile(lambda a, b, c: fwd(module, a, b, c), fullgraph=True)
    with torch.inference_mode():
        assert torch.equal(compiled(x, ids, w), fwd(module, x, ids, w))
