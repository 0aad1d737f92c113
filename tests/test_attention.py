"""Attention with sinks / sliding window / GQA: the three flash-attn entry points against the
float64 reference (``reference.attention``), on the CPU build here and on the CUDA build (Triton)
on the GPU machine. Sizes grow on CUDA (GPT-OSS heads: 64 q, 8 kv, head_dim 64; caches to 8192)."""

from __future__ import annotations

import importlib

import pytest
import torch

from conftest import HAS_CUDA, TOL, dispatched, poison, poison_allocator, record_ops, rel_err

WINDOWS = [(-1, -1), (127, 127), (5, 5)]


def _heads(device):
    return (64, 8, 64) if device == "cuda" else (8, 2, 32)


def _cu(lens, device):
    return torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device=device)


def _ref_varlen(ref, q, k, v, cu_q, cu_k, scale, sinks, causal, window):
    return ref.attention_varlen(q.double(), k.double(), v.double(), cu_q.cpu(), cu_k.cpu(), scale=scale,
                                sinks=None if sinks is None else sinks.double(), causal=causal, window=window)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("window", WINDOWS)
@pytest.mark.parametrize("sinks", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_varlen(kernel, ref, device, dtype, window, sinks, causal):
    hq, hkv, d = _heads(device)
    if device == "cuda":
        lens_q = [1, 0, 300, 77, 1025, 64]
        lens_k = [1, 5, 300, 200, 1025, 64]
    else:
        lens_q = [1, 0, 37, 9, 70]
        lens_k = [1, 5, 37, 20, 70]
    cu_q, cu_k = _cu(lens_q, device), _cu(lens_k, device)
    q = torch.randn(sum(lens_q), hq, d, device=device, dtype=dtype)
    k = torch.randn(sum(lens_k), hkv, d, device=device, dtype=dtype)
    v = torch.randn_like(k)
    s_aux = torch.randn(hq, device=device) if sinks else None
    scale = 0.125
    out = kernel.flash_attn_varlen_func(q, k, v, cu_q, cu_k, max(lens_q), max(lens_k), softmax_scale=scale,
                                        causal=causal, window_size=window, s_aux=s_aux)
    assert out.shape == q.shape and out.dtype == dtype
    expected = _ref_varlen(ref, q, k, v, cu_q, cu_k, scale, s_aux, causal, window)
    assert rel_err(out, expected) < TOL[dtype]


def test_varlen_gpt_oss_prefill(kernel, ref, device):
    """One long sequence, full causal and the 128-token sliding window as transformers passes it."""
    hq, hkv, d = _heads(device)
    n = 2049 if device == "cuda" else 300
    q = torch.randn(n, hq, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(n, hkv, d, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sinks = torch.randn(hq, device=device, dtype=torch.bfloat16)
    cu = _cu([n], device)
    for window in [(-1, -1), (127, 127)]:
        out = kernel.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, window_size=window, s_aux=sinks)
        expected = _ref_varlen(ref, q, k, v, cu, cu, d**-0.5, sinks, True, window)
        assert rel_err(out, expected) < TOL[torch.bfloat16], window


@pytest.mark.parametrize("sq", [1, 3])
def test_flash_attn_func(kernel, ref, device, sq):
    hq, hkv, d = _heads(device)
    b, sk = 3, 40
    q = torch.randn(b, sq, hq, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(b, sk, hkv, d, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sinks = torch.randn(hq, device=device)
    out = kernel.flash_attn_func(q, k, v, causal=True, window_size=(7, 7), s_aux=sinks)
    assert out.shape == q.shape
    for i in range(b):
        expected = ref.attention(q[i].double(), k[i].double(), v[i].double(), scale=d**-0.5,
                                 sinks=sinks.double(), causal=True, window=(7, 7))
        assert rel_err(out[i], expected) < TOL[torch.bfloat16]


def _decode_lengths(device):
    return [1, 2, 63, 64, 65, 1000, 4097, 8191] if device == "cuda" else [1, 2, 17, 130]


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("window", [(-1, -1), (127, 127)])
@pytest.mark.parametrize("sq", [1, 4])
def test_kvcache_append_and_decode(kernel, ref, device, paged, window, sq):
    hq, hkv, d = _heads(device)
    past = _decode_lengths(device)
    b = len(past)
    cap = max(past) + sq + 7
    page = 64 if device == "cuda" else 16
    dtype = torch.bfloat16
    if paged:
        pages = -(-cap // page)
        n_blocks = b * pages + 3
        k_cache = torch.randn(n_blocks, page, hkv, d, device=device, dtype=dtype)
        block_table = torch.randperm(n_blocks, device=device)[: b * pages].reshape(b, pages).to(torch.int32)
    else:
        k_cache = torch.randn(b, cap, hkv, d, device=device, dtype=dtype)
        block_table = None
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(b, sq, hq, d, device=device, dtype=dtype)
    k_new = torch.randn(b, sq, hkv, d, device=device, dtype=dtype)
    v_new = torch.randn_like(k_new)
    sinks = torch.randn(hq, device=device)
    cache_seqlens = torch.tensor(past, dtype=torch.int32, device=device)

    def seq(cache, i, n):
        if paged:
            return cache[block_table[i].long()].reshape(-1, hkv, d)[:n]
        return cache[i, :n]

    before_k = [seq(k_cache, i, past[i]).clone() for i in range(b)]
    before_v = [seq(v_cache, i, past[i]).clone() for i in range(b)]
    out = kernel.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new, cache_seqlens=cache_seqlens,
                                         block_table=block_table, causal=True, window_size=window, s_aux=sinks)
    assert out.shape == q.shape
    for i in range(b):
        kk = seq(k_cache, i, past[i] + sq)
        vv = seq(v_cache, i, past[i] + sq)
        assert torch.equal(kk[past[i]:], k_new[i]) and torch.equal(vv[past[i]:], v_new[i])  # appended in place
        assert torch.equal(kk[: past[i]], before_k[i]) and torch.equal(vv[: past[i]], before_v[i])
        expected = ref.attention(q[i].double(), kk.double(), vv.double(), scale=d**-0.5, sinks=sinks.double(),
                                 causal=True, window=window)
        assert rel_err(out[i], expected) < TOL[dtype], (i, past[i])


@pytest.mark.parametrize("paged", [False, True])
@pytest.mark.parametrize("window", [(127, 127), (5, 5), (300, 300)])
def test_kvcache_chunked_prefill_window(kernel, ref, device, paged, window):
    """A prompt chunk of 70 tokens appended to caches of 0 / 37 / 300 tokens under a sliding window:
    on CUDA the packed-cache case runs the window kernel (keys before the chunk come from the cache),
    the paged one the general kernel; NaN in the unused cache slots must not leak."""
    hq, hkv, d = _heads(device)
    past, sq, page = [0, 37, 300], 70, 16
    b, cap = len(past), 384
    dtype = torch.bfloat16
    if paged:
        pages = cap // page
        k_cache = torch.randn(b * pages, page, hkv, d, device=device, dtype=dtype)
        block_table = torch.randperm(b * pages, device=device).reshape(b, pages).to(torch.int32)
    else:
        k_cache = torch.randn(b, cap, hkv, d, device=device, dtype=dtype)
        block_table = None
    v_cache = torch.randn_like(k_cache)

    def seq(cache, i, lo, hi):
        if paged:
            return cache[block_table[i].long()].reshape(-1, hkv, d)[lo:hi]
        return cache[i, lo:hi]

    for i, n in enumerate(past):
        seq(k_cache, i, n + sq, cap).fill_(float("nan"))
        seq(v_cache, i, n + sq, cap).fill_(float("nan"))
    q = torch.randn(b, sq, hq, d, device=device, dtype=dtype)
    k_new = torch.randn(b, sq, hkv, d, device=device, dtype=dtype)
    v_new = torch.randn_like(k_new)
    sinks = torch.randn(hq, device=device)
    out = kernel.flash_attn_with_kvcache(q, k_cache, v_cache, k_new, v_new,
                                         cache_seqlens=torch.tensor(past, dtype=torch.int32, device=device),
                                         block_table=block_table, causal=True, window_size=window, s_aux=sinks)
    for i, n in enumerate(past):
        kk, vv = seq(k_cache, i, 0, n + sq), seq(v_cache, i, 0, n + sq)
        expected = ref.attention(q[i].double(), kk.double(), vv.double(), scale=d**-0.5, sinks=sinks.double(),
                                 causal=True, window=window)
        assert rel_err(out[i], expected) < TOL[dtype], (i, n)


def test_kvcache_without_new_tokens_ignores_garbage(kernel, ref, device):
    """Decode against cache_seqlens keys only: NaN in the unused cache slots must not leak."""
    hq, hkv, d = _heads(device)
    lens = [1, 65, 200]
    b, cap = len(lens), 256
    k_cache = torch.randn(b, cap, hkv, d, device=device, dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    for i, n in enumerate(lens):
        k_cache[i, n:] = float("nan")
        v_cache[i, n:] = float("nan")
    q = torch.randn(b, 1, hq, d, device=device, dtype=torch.bfloat16)
    seqlens = torch.tensor(lens, dtype=torch.int32, device=device)
    out = kernel.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True)
    assert torch.isfinite(out).all()
    for i, n in enumerate(lens):
        expected = ref.attention(q[i].double(), k_cache[i, :n].double(), v_cache[i, :n].double(), scale=d**-0.5)
        assert rel_err(out[i], expected) < TOL[torch.bfloat16]


@pytest.mark.kernels_ci
def test_awkward_inputs(kernel, ref, device):
    hq, hkv, d = _heads(device)
    # zero query tokens
    q = torch.randn(0, hq, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(0, hkv, d, device=device, dtype=torch.bfloat16)
    cu = _cu([0], device)
    assert kernel.flash_attn_varlen_func(q, k, k, cu, cu, 0, 0, causal=True).shape == (0, hq, d)
    # a query that sees no key: 0 (sink or not), never NaN
    q = torch.randn(2, hq, d, device=device, dtype=torch.bfloat16)
    out = kernel.flash_attn_varlen_func(q, k, k, _cu([2], device), _cu([0], device), 2, 0, causal=True,
                                        s_aux=torch.randn(hq, device=device))
    assert torch.equal(out, torch.zeros_like(out))
    # large logits stay finite and accurate (fp32 softmax)
    n = 130
    q = 30 * torch.randn(n, hq, d, device=device, dtype=torch.bfloat16)
    k = 30 * torch.randn(n, hkv, d, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sinks = 50 * torch.randn(hq, device=device)
    cu = _cu([n], device)
    for window in ((-1, -1), (127, 127)):
        out = kernel.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, window_size=window, s_aux=sinks)
        expected = _ref_varlen(ref, q, k, v, cu, cu, d**-0.5, sinks, True, window)
        assert rel_err(out, expected) < TOL[torch.bfloat16], window
    # NaN in one query row stays in that row
    q = torch.randn(n, hq, d, device=device, dtype=torch.bfloat16)
    q[3, 0, 0] = float("nan")
    for window in ((-1, -1), (127, 127)):
        out = kernel.flash_attn_varlen_func(q, k, v, cu, cu, n, n, causal=True, window_size=window)
        assert torch.isnan(out[3, 0]).all() and torch.isfinite(out[4:]).all() and torch.isfinite(out[:3]).all()


def test_output_fully_written(kernel, device):
    hq, hkv, d = _heads(device)
    lens = [3, 129, 1]
    q = torch.randn(sum(lens), hq, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(sum(lens), hkv, d, device=device, dtype=torch.bfloat16)
    cu = _cu(lens, device)
    poison(torch.empty(1 << 20, device=device))  # leave NaN in the allocator's recycled memory
    out = kernel.flash_attn_varlen_func(q, k, k, cu, cu, max(lens), max(lens), causal=True)
    assert torch.isfinite(out).all()


@pytest.mark.kernels_ci
def test_bad_inputs(kernel, device):
    hq, hkv, d = _heads(device)
    q = torch.randn(4, hq, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(4, hkv, d, device=device, dtype=torch.bfloat16)
    cu = _cu([4], device)
    f = kernel.flash_attn_varlen_func
    with pytest.raises(TypeError, match="q"):
        f(q.int(), k, k, cu, cu, 4, 4)
    with pytest.raises(TypeError, match="k"):
        f(q, k.half(), k, cu, cu, 4, 4)
    with pytest.raises(ValueError, match="heads"):
        f(q, torch.randn(4, 3, d, device=device, dtype=torch.bfloat16), torch.randn(4, 3, d, device=device,
          dtype=torch.bfloat16), cu, cu, 4, 4)
    with pytest.raises(ValueError, match="s_aux"):
        f(q, k, k, cu, cu, 4, 4, s_aux=torch.randn(hq + 1, device=device))
    with pytest.raises(TypeError, match="cu_seqlens_q"):
        f(q, k, k, cu.float(), cu, 4, 4)
    with pytest.raises(TypeError, match="max_seqlen_q"):
        f(q, k, k, cu, cu, torch.tensor(4), 4)
    with pytest.raises(TypeError, match="window_size"):
        f(q, k, k, cu, cu, 4, 4, window_size=5)
    with pytest.raises(ValueError, match="dropout_p"):
        f(q, k, k, cu, cu, 4, 4, dropout_p=0.1)
    with pytest.raises(ValueError, match="cache_seqlens"):
        kernel.flash_attn_with_kvcache(q[None], k[None], k[None], cache_seqlens=torch.zeros(2, dtype=torch.int32,
                                       device=device))


def test_torch_compile_fullgraph(kernel, ref, device):
    hq, hkv, d = _heads(device)
    n = 33
    q = torch.randn(n, hq, d, device=device, dtype=torch.bfloat16)
    k = torch.randn(n, hkv, d, device=device, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sinks = torch.randn(hq, device=device)
    cu = _cu([10, 23], device)

    def f(q, k, v, sinks):
        return kernel.flash_attn_varlen_func(q, k, v, cu, cu, 23, 23, causal=True, window_size=(4, 4), s_aux=sinks)

    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(q, k, v, sinks), f(q, k, v, sinks))


@pytest.mark.parametrize("paged", [False, True])
def test_torch_compile_fullgraph_kvcache_append(kernel, device, paged):
    """The in-place cache append (index_put_) and the decode op trace as one graph."""
    hq, hkv, d = _heads(device)
    q = torch.randn(2, 1, hq, d, device=device, dtype=torch.bfloat16)
    k_new = torch.randn(2, 1, hkv, d, device=device, dtype=torch.bfloat16)
    v_new = torch.randn_like(k_new)
    seqlens = torch.tensor([3, 17], dtype=torch.int32, device=device)
    sinks = torch.randn(hq, device=device)
    if paged:
        k_cache = torch.randn(6, 16, hkv, d, device=device, dtype=torch.bfloat16)
        table = torch.tensor([[3, 1, 0], [2, 4, 5]], dtype=torch.int32, device=device)
    else:
        k_cache = torch.randn(2, 40, hkv, d, device=device, dtype=torch.bfloat16)
        table = None
    v_cache = torch.randn_like(k_cache)
    k2, v2 = k_cache.clone(), v_cache.clone()

    def f(q, kc, vc, kn, vn):
        return kernel.flash_attn_with_kvcache(q, kc, vc, kn, vn, cache_seqlens=seqlens, block_table=table,
                                              causal=True, window_size=(7, 7), s_aux=sinks)

    got = torch.compile(f, fullgraph=True, backend="aot_eager")(q, k_cache, v_cache, k_new, v_new)
    expected = f(q, k2, v2, k_new, v_new)
    assert torch.equal(got, expected) and torch.equal(k_cache, k2) and torch.equal(v_cache, v2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_graph_decode(kernel, ref):
    hq, hkv, d = 64, 8, 64
    b, cap = 2, 1024
    k_cache = torch.randn(b, cap, hkv, d, device="cuda", dtype=torch.bfloat16)
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(b, 1, hq, d, device="cuda", dtype=torch.bfloat16)
    seqlens = torch.tensor([5, 700], dtype=torch.int32, device="cuda")
    sinks = torch.randn(hq, device="cuda")

    def step():
        return kernel.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=seqlens, causal=True, s_aux=sinks)

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        step()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    seqlens.copy_(torch.tensor([9, 1000], dtype=torch.int32))
    q.normal_()
    g.replay()
    torch.cuda.synchronize()
    for i, n in enumerate([9, 1000]):
        expected = ref.attention(q[i].double(), k_cache[i, :n].double(), v_cache[i, :n].double(), scale=d**-0.5,
                                 sinks=sinks.double())
        assert rel_err(out[i], expected) < TOL[torch.bfloat16]


# --- native CUDA decode (kernel_src/attention/attn_decode_cuda.cu, sm_90+) ----------------------


def _native_decode_op(kernel):
    if not HAS_CUDA or torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("the native decode kernel needs sm_90+")
    return kernel._ops.ops.attn_decode


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("heads", [(64, 8), (16, 16), (32, 2)])  # G = 8 (GPT-OSS), 1, 16
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("paged", [False, True])
def test_native_decode(kernel, ref, heads, dtype, paged):
    """Both ring depths, odd and empty sequences, NaN past the sequence, windows, sinks in fp32 and in q's
    dtype, large logits, poisoned output memory: against float64."""
    op = _native_decode_op(kernel)
    hq, hkv = heads
    d = 64
    lens = [0, 1, 15, 17, 300, 1000, 2049]
    b, cap = len(lens), 2064
    page = 16
    if paged:
        pages = cap // page
        n_blocks = b * pages + 5
        k_cache = torch.randn(n_blocks, page, hkv, d, device="cuda", dtype=dtype)
        bt = torch.randperm(n_blocks, device="cuda")[: b * pages].reshape(b, pages).to(torch.int32)
    else:
        k_cache = torch.randn(b, cap, hkv, d, device="cuda", dtype=dtype)
        bt = None
    v_cache = torch.randn_like(k_cache)

    def seq(cache, i, n):
        return cache[bt[i].long()].reshape(-1, hkv, d)[:n] if paged else cache[i, :n]

    for i, n in enumerate(lens):  # NaN in every slot past the sequence: never read
        if paged:
            rows = bt[i].long()
            for c in (k_cache, v_cache):
                flat = c[rows].reshape(-1, hkv, d)
                flat[n:] = float("nan")
                c[rows] = flat.reshape(-1, page, hkv, d)
        else:
            k_cache[i, n:] = float("nan")
            v_cache[i, n:] = float("nan")
    seq(k_cache, 6, lens[6]).mul_(8)  # large logits in one sequence (fp32 softmax keeps them exact)
    q = torch.randn(b, hq, d, device="cuda", dtype=dtype)
    seqlens = torch.tensor(lens, dtype=torch.int32, device="cuda")
    sinks32 = 3 * torch.randn(hq, device="cuda")
    cases = [(st, None, -1) for st in (0, 2, 4)]
    cases += [(0, sinks32, -1), (2, sinks32.to(dtype), -1), (4, sinks32, 127), (2, None, 5), (0, sinks32, 0)]
    for stages, sinks, wl in cases:
        poison_allocator("cuda", q.numel() * q.element_size())
        out = op(q, k_cache, v_cache, seqlens, bt, sinks, d**-0.5, wl, stages)
        for i, n in enumerate(lens):
            kk, vv = seq(k_cache, i, n), seq(v_cache, i, n)
            expected = ref.attention(q[i : i + 1].double(), kk.double(), vv.double(), scale=d**-0.5,
                                     sinks=None if sinks is None else sinks.double(), causal=True, window=(wl, wl))
            assert torch.isfinite(out[i]).all(), (stages, wl, i)
            assert rel_err(out[i : i + 1], expected) < TOL[dtype], (stages, wl, i, n)
    # NaN in one query head stays in that head
    q[1, 0, 0] = float("nan")
    out = op(q, k_cache, v_cache, seqlens, bt, None, d**-0.5, -1, 0)
    assert torch.isnan(out[1, 0]).all() and torch.isfinite(out[1, 1:]).all() and torch.isfinite(out[2:]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("paged", [False, True])
def test_native_decode_is_the_public_route(kernel, ref, paged):
    """flash_attn_with_kvcache's Sq = 1 decode of a large batch reaches the native kernel (same bits) on sm_90+,
    also inside a CUDA graph replayed with new lengths."""
    op = _native_decode_op(kernel)
    ta = importlib.import_module(kernel.__name__ + ".attention._triton_attn")  # imported on first CUDA use
    b, cap, page = 32, 1024, 64
    assert b * 8 >= ta.SQ1_CUDA_MIN_BH
    if paged:
        k_cache = torch.randn(b * cap // page, page, 8, 64, device="cuda", dtype=torch.bfloat16)
        bt = torch.randperm(b * cap // page, device="cuda").reshape(b, cap // page).to(torch.int32)
    else:
        k_cache = torch.randn(b, cap, 8, 64, device="cuda", dtype=torch.bfloat16)
        bt = None
    v_cache = torch.randn_like(k_cache)
    q = torch.randn(b, 1, 64, 64, device="cuda", dtype=torch.bfloat16)
    sinks = torch.randn(64, device="cuda")
    lens = torch.randint(1, cap + 1, (b,), dtype=torch.int32, device="cuda")

    def step():
        return kernel.flash_attn_with_kvcache(q, k_cache, v_cache, cache_seqlens=lens, block_table=bt, causal=True,
                                              s_aux=sinks)

    got = step()
    direct = op(q[:, 0], k_cache, v_cache, lens, bt, sinks, 0.125, -1, ta.SQ1_CUDA_STAGES)
    assert torch.equal(got[:, 0], direct)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    lens.copy_(torch.randint(1, cap + 1, (b,), dtype=torch.int32))
    q.normal_()
    g.replay()
    torch.cuda.synchronize()
    for i in (0, 13, 31):
        n = int(lens[i])
        kk = k_cache[bt[i].long()].reshape(-1, 8, 64)[:n] if paged else k_cache[i, :n]
        vv = v_cache[bt[i].long()].reshape(-1, 8, 64)[:n] if paged else v_cache[i, :n]
        expected = ref.attention(q[i].double(), kk.double(), vv.double(), scale=0.125, sinks=sinks.double())
        assert rel_err(out[i], expected) < TOL[torch.bfloat16]


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_eager_fast_path_matches_the_op(kernel):
    """Eager CUDA calls skip the op's dispatcher (flash.py ``_attn_fwd``): same bits as the op, which a dispatch
    mode (here the op recorder) still goes through; the three entry points, windowed and not, decode and prefill."""
    g = torch.Generator(device="cuda").manual_seed(11)
    rnd = lambda *s: torch.randn(*s, device="cuda", generator=g).to(torch.bfloat16)  # noqa: E731
    sinks = torch.randn(64, device="cuda", generator=g)
    q, k, v = rnd(2, 5, 64, 64), rnd(2, 300, 8, 64), rnd(2, 300, 8, 64)
    qv, kv, vv = rnd(40, 64, 64), rnd(70, 8, 64), rnd(70, 8, 64)
    cu_q, cu_k = _cu([13, 27], "cuda"), _cu([30, 40], "cuda")
    k_cache, v_cache = rnd(2, 512, 8, 64), rnd(2, 512, 8, 64)
    lens = torch.tensor([100, 511], dtype=torch.int32, device="cuda")
    calls = {
        "func": lambda w: kernel.flash_attn_func(q, k, v, causal=True, window_size=w, s_aux=sinks),
        "varlen": lambda w: kernel.flash_attn_varlen_func(qv, kv, vv, cu_q, cu_k, 27, 40, causal=True,
                                                          window_size=w, s_aux=sinks),
        "kvcache": lambda w: kernel.flash_attn_with_kvcache(q[:, :1], k_cache, v_cache, cache_seqlens=lens,
                                                            causal=True, window_size=w, s_aux=sinks),
    }
    for name, call in calls.items():
        for w in ((-1, -1), (127, 127)):
            fast = call(w)
            with record_ops() as names:
                traced = call(w)
            assert dispatched(names, kernel, "attn_fwd"), name
            assert torch.equal(fast, traced), (name, w)


# --- native CUDA sliding-window prefill (kernel_src/attention/attn_window_cuda.cu, sm_90+) -----


def _native_window_op(kernel):
    if not HAS_CUDA or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the native window kernel needs sm_90")
    return kernel._ops.ops.attn_window


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("heads", [(64, 8), (16, 2), (8, 1)])  # G = 8, the kernel's only group size
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("packed", [True, False])
def test_native_window(kernel, ref, heads, dtype, packed):
    """Every CTA size (32 / 64 / 128 positions), windows 0 / 5 / 127, sequences that are not tile multiples (and empty, and with
    fewer keys than queries: rows that see nothing), queries bottom-right aligned to longer key
    sequences, NaN past the sequence, sinks in fp32 and in q's dtype, large logits, poisoned output
    memory: against float64."""
    op = _native_window_op(kernel)
    hq, hkv = heads
    d = 64
    lens_q = [0, 1, 15, 17, 63, 65, 300, 1000, 40, 129]
    lens_k = [3, 1, 15, 17, 63, 65, 300, 1000, 140, 100]  # the last two: 100 keys earlier; 29 rows see none
    b = len(lens_q)
    cu_q = _cu(lens_q, "cuda")
    q = torch.randn(sum(lens_q), hq, d, device="cuda", dtype=dtype)
    if packed:
        k = torch.randn(sum(lens_k), hkv, d, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        cu_k, seqlens, cap = _cu(lens_k, "cuda"), None, None
        seq_k = lambda t, i: t[int(cu_k[i]) : int(cu_k[i + 1])]  # noqa: E731
    else:
        cap = max(lens_k) + 37
        k = torch.randn(b, cap, hkv, d, device="cuda", dtype=dtype)
        v = torch.randn_like(k)
        for i, n in enumerate(lens_k):  # NaN in every slot past the sequence: never read
            k[i, n:] = float("nan")
            v[i, n:] = float("nan")
        cu_k, seqlens = None, torch.tensor(lens_k, dtype=torch.int32, device="cuda")
        seq_k = lambda t, i: t[i, : lens_k[i]]  # noqa: E731
    k_big = seq_k(k, 7)
    k_big.mul_(8)  # large logits in one sequence (fp32 softmax keeps them exact)
    sinks32 = 3 * torch.randn(hq, device="cuda")
    cases = [(64, None, 127), (32, sinks32, 127), (128, sinks32.to(dtype), 127), (0, sinks32, 5), (64, None, 0)]
    for positions, sinks, wl in cases:
        poison_allocator("cuda", q.numel() * q.element_size())
        out = op(q, k, v, cu_q, cu_k, seqlens, sinks, d**-0.5, b, 0, max(lens_q), wl, positions)
        for i in range(b):
            qi = q[int(cu_q[i]) : int(cu_q[i + 1])]
            expected = ref.attention(qi.double(), seq_k(k, i).double(), seq_k(v, i).double(), scale=d**-0.5,
                                     sinks=None if sinks is None else sinks.double(), causal=True, window=(wl, wl))
            got = out[int(cu_q[i]) : int(cu_q[i + 1])]
            assert torch.isfinite(got).all(), (positions, wl, i)
            assert rel_err(got, expected) < TOL[dtype], (positions, wl, i)
    # fixed-length queries (no cu_q), batched keys only: 3 sequences of 70 queries after 0 / 37 / 300 cached keys
    if not packed:
        past = [0, 37, 300]
        kc = torch.randn(3, 400, hkv, d, device="cuda", dtype=dtype)
        vc = torch.randn_like(kc)
        qf = torch.randn(3 * 70, hq, d, device="cuda", dtype=dtype)
        lens = torch.tensor([n + 70 for n in past], dtype=torch.int32, device="cuda")
        out = op(qf, kc, vc, None, None, lens, sinks32, 0.125, 3, 70, 70, 127, 0)
        for i, n in enumerate(past):
            expected = ref.attention(qf[70 * i : 70 * (i + 1)].double(), kc[i, : n + 70].double(),
                                     vc[i, : n + 70].double(), scale=0.125, sinks=sinks32.double(), causal=True,
                                     window=(127, 127))
            assert rel_err(out[70 * i : 70 * (i + 1)], expected) < TOL[dtype], (i, n)
    # NaN in one query row stays in that row (its position, its head)
    q[int(cu_q[6]) + 3, 0, 0] = float("nan")
    out = op(q, k, v, cu_q, cu_k, seqlens, None, d**-0.5, b, 0, max(lens_q), 127, 0)
    r = int(cu_q[6]) + 3
    assert torch.isnan(out[r, 0]).all() and torch.isfinite(out[r, 1:]).all()
    assert torch.isfinite(out[:r]).all() and torch.isfinite(out[r + 1 :]).all()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_native_window_is_the_public_route(kernel, ref):
    """flash_attn_varlen_func's 128-token sliding window (as transformers passes it) reaches the native kernel
    (same bits) on sm_90+, also inside a CUDA graph replayed with new inputs; the kernel rejects what it
    cannot take."""
    op = _native_window_op(kernel)
    lens = [700, 2049]
    cu = _cu(lens, "cuda")
    n = sum(lens)
    q = torch.randn(n, 64, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(n, 8, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    sinks = torch.randn(64, device="cuda")

    def step():
        return kernel.flash_attn_varlen_func(q, k, v, cu, cu, max(lens), max(lens), causal=True,
                                             window_size=(127, 127), s_aux=sinks)

    got = step()
    direct = op(q, k, v, cu, cu, None, sinks, 0.125, 2, 0, max(lens), 127,
                importlib.import_module(kernel.__name__ + ".attention._triton_attn").WINDOW_CUDA_POSITIONS)
    assert torch.equal(got, direct)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = step()
    for t in (q, k, v):
        t.normal_()
    g.replay()
    torch.cuda.synchronize()
    expected = _ref_varlen(ref, q, k, v, cu, cu, 0.125, sinks, True, (127, 127))
    assert rel_err(out, expected) < TOL[torch.bfloat16]
    with pytest.raises(RuntimeError, match="window_left"):
        op(q, k, v, cu, cu, None, sinks, 0.125, 2, 0, max(lens), 128, 0)
    with pytest.raises(RuntimeError, match="scale"):
        op(q, k, v, cu, cu, None, sinks, -0.125, 2, 0, max(lens), 127, 0)
    with pytest.raises(RuntimeError, match="Hq / Hkv"):
        op(q[:, :32].contiguous(), k, v, cu, cu, None, sinks[:32].contiguous(), 0.125, 2, 0, max(lens), 127, 0)
    with pytest.raises(RuntimeError, match="head_dim"):
        op(q[..., :32].contiguous(), k[..., :32].contiguous(), v[..., :32].contiguous(), cu, cu, None, None, 0.125,
           2, 0, max(lens), 127, 0)
