"""GPT-OSS rotary (hub function name "rotary_pos_emb") against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from conftest import TOL, poison_allocator, rel_err


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
@pytest.mark.parametrize("cos_batch", [1, 2])
def test_rotary(kernel, ref, device, dtype, unsqueeze_dim, cos_batch):
    b, s, hq, hkv, d = 2, 37, 8, 2, 64
    # transformers' layout: (B, S, H, D) projections viewed as (B, H, S, D) (non-contiguous)
    q = torch.randn(b, s, hq, d, device=device, dtype=dtype)
    k = torch.randn(b, s, hkv, d, device=device, dtype=dtype)
    if unsqueeze_dim == 1:
        q, k = q.transpose(1, 2), k.transpose(1, 2)
    pos = torch.arange(s, device=device, dtype=torch.float32)
    inv = 150000.0 ** (-torch.arange(0, d, 2, device=device, dtype=torch.float32) / d)
    ang = pos[:, None] * inv[None, :]
    cos = ang.cos()[None].expand(cos_batch, s, d // 2).to(dtype) * 1.3
    sin = ang.sin()[None].expand(cos_batch, s, d // 2).to(dtype) * 1.3
    qe, ke = kernel.rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    rq, rk = ref.rotary_pos_emb(q.double(), k.double(), cos.double(), sin.double(), unsqueeze_dim=unsqueeze_dim)
    assert qe.shape == q.shape and ke.shape == k.shape and qe.dtype == dtype
    assert rel_err(qe, rq) < TOL[dtype] and rel_err(ke, rk) < TOL[dtype]


@pytest.mark.parametrize("case", ["odd_half", "unaligned", "fp32_cos", "mixed_qk", "negative_dim", "nan_large",
                                  "one_token"])
def test_rotary_awkward(kernel, ref, device, case):
    """Head dims whose half is odd (scalar path), rows not aligned to the 16-byte vector (a view one element
    in), fp32 cos/sin with bf16 q/k, q and k in different dtypes, negative unsqueeze_dim, NaN and very
    large values (kept where they are), one token; outputs over poisoned memory."""
    dtype = torch.bfloat16
    b, s, hq, hkv, d = 2, 5, 4, 2, 64
    if case == "odd_half":
        d = 6
    if case == "one_token":
        b, s = 1, 1
    q = torch.randn(b, s, hq, d + (1 if case == "unaligned" else 0), device=device, dtype=dtype)
    k = torch.randn(b, s, hkv, d + (1 if case == "unaligned" else 0), device=device, dtype=dtype)
    if case == "unaligned":
        q, k = q[..., 1:], k[..., 1:]
    if case == "mixed_qk":
        k = k.float()
    if case == "nan_large":
        q[0, 1, 2, 3] = float("nan")
        k[1, 2, 1, 40] = 3e38 if k.dtype == torch.float32 else 1e38
    q, k = q.transpose(1, 2), k.transpose(1, 2)
    cdt = torch.float32 if case == "fp32_cos" else dtype
    cos = torch.randn(b, s, d // 2, device=device).to(cdt)
    sin = torch.randn(b, s, d // 2, device=device).to(cdt)
    ud = -3 if case == "negative_dim" else 1
    poison_allocator(device, q.numel() * q.element_size())
    qe, ke = kernel.rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=ud)
    rq, rk = ref.rotary_pos_emb(q.double(), k.double(), cos.double(), sin.double(), unsqueeze_dim=ud)
    assert qe.dtype == q.dtype and ke.dtype == k.dtype
    if case == "nan_large":
        nan_q = torch.isnan(rq)
        assert torch.equal(torch.isnan(qe), nan_q) and nan_q.sum() == 2  # x1 and its x2 partner
        assert rel_err(qe[~nan_q], rq[~nan_q]) < TOL[dtype]
        assert not torch.isnan(ke).any()
        fin = torch.isfinite(rk.to(k.dtype))
        assert torch.equal(torch.isfinite(ke), fin) and rel_err(ke[fin], rk[fin]) < TOL[dtype]
        return
    assert rel_err(qe, rq) < TOL[q.dtype] and rel_err(ke, rk) < TOL[k.dtype]


@pytest.mark.kernels_ci
def test_rotary_empty_and_bad(kernel, device):
    q = torch.randn(1, 4, 0, 64, device=device)
    cos = torch.randn(1, 0, 32, device=device)
    qe, ke = kernel.rotary_pos_emb(q, q, cos, cos)
    assert qe.shape == q.shape
    q = torch.randn(1, 4, 5, 64, device=device)
    cos = torch.randn(1, 5, 32, device=device)
    with pytest.raises(ValueError, match="cos"):
        kernel.rotary_pos_emb(q, q, cos[..., :16], cos)
    with pytest.raises(ValueError, match="unsqueeze_dim"):
        kernel.rotary_pos_emb(q, q, cos, cos, unsqueeze_dim=0)
    with pytest.raises(TypeError, match="q"):
        kernel.rotary_pos_emb(q.int(), q, cos, cos)
    with pytest.raises(ValueError, match="q"):
        kernel.rotary_pos_emb(q[0], q, cos, cos)


def test_rotary_compile_fullgraph(kernel, device):
    q = torch.randn(2, 4, 5, 64, device=device, dtype=torch.bfloat16)
    k = torch.randn(2, 2, 5, 64, device=device, dtype=torch.bfloat16)
    cos = torch.randn(2, 5, 32, device=device, dtype=torch.bfloat16)
    sin = torch.randn(2, 5, 32, device=device, dtype=torch.bfloat16)
    f = torch.compile(kernel.rotary_pos_emb, fullgraph=True, backend="aot_eager")
    a, b = f(q, k, cos, sin)
    c, d = kernel.rotary_pos_emb(q, k, cos, sin)
    assert torch.equal(a, c) and torch.equal(b, d)


def _rotary_kv_cache():
    import sys

    return next(m for n, m in sys.modules.items() if n.endswith(".attention.rotary")).rotary_kv_cache


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("unsqueeze_dim", [1, 2])
@pytest.mark.parametrize("s", [1, 7])
def test_rotary_kv_cache(kernel, ref, device, dtype, unsqueeze_dim, s):
    """rotary_kv_cache (the DecodeRunner's cache write folded into rotary): the rotated q returned, the rotated k and
    v written into poisoned (B, L, Hkv, D) caches at the given positions and nowhere else."""
    fn = _rotary_kv_cache()
    b, hq, hkv, d, length = 2, 8, 2, 64, 40
    q = torch.randn(b, s, hq, d, device=device, dtype=dtype)
    k = torch.randn(b, s, hkv, d, device=device, dtype=dtype)
    v = torch.randn(b, s, hkv, d, device=device, dtype=dtype)
    if unsqueeze_dim == 1:
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    cos = torch.randn(1, s, d // 2, device=device, dtype=dtype)
    sin = torch.randn(1, s, d // 2, device=device, dtype=dtype)
    k_cache = torch.full((b, length, hkv, d), float("nan"), device=device, dtype=dtype)
    v_cache = torch.full_like(k_cache, float("nan"))
    index = torch.arange(30, 30 + s, device=device)
    qe = fn(q, k, v, cos, sin, k_cache, v_cache, index, unsqueeze_dim)
    rq, rk = ref.rotary_pos_emb(q.double(), k.double(), cos.double(), sin.double(), unsqueeze_dim=unsqueeze_dim)
    assert qe.shape == q.shape and qe.dtype == dtype and rel_err(qe, rq) < TOL[dtype]
    bshd = (lambda t: t.transpose(1, 2)) if unsqueeze_dim == 1 else (lambda t: t)
    assert rel_err(k_cache[:, 30:30 + s], bshd(rk)) < TOL[dtype]
    assert torch.equal(v_cache[:, 30:30 + s], bshd(v))
    rest = torch.ones(length, dtype=torch.bool)
    rest[30:30 + s] = False
    assert k_cache[:, rest].isnan().all() and v_cache[:, rest].isnan().all()
    same_q, _ = kernel.rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=unsqueeze_dim)
    assert torch.equal(qe, same_q)  # one arithmetic


def test_rotary_kv_cache_bad_input(kernel, device):
    fn = _rotary_kv_cache()
    q = torch.randn(1, 4, 3, 64, device=device)
    k = torch.randn(1, 2, 3, 64, device=device)
    cos = torch.randn(1, 3, 32, device=device)
    cache = torch.zeros(1, 10, 2, 64, device=device)
    index = torch.arange(3, device=device)
    good = (q, k, k.clone(), cos, cos, cache, cache.clone(), index)
    with pytest.raises(ValueError, match="v"):
        fn(*good[:2], k[:, :1], *good[3:])
    with pytest.raises(TypeError, match="v"):
        fn(*good[:2], k.double(), *good[3:])
    with pytest.raises(ValueError, match="k_cache"):
        fn(*good[:5], torch.zeros(1, 10, 3, 64, device=device), *good[6:])
    with pytest.raises(ValueError, match="v_cache"):
        fn(*good[:6], torch.zeros(1, 11, 2, 64, device=device), index)
    with pytest.raises(TypeError, match="k_cache"):
        fn(*good[:5], cache.half(), *good[6:])
    with pytest.raises(TypeError, match="index"):
        fn(*good[:7], index.int())
    with pytest.raises(ValueError, match="index"):
        fn(*good[:7], index[:2])
    with pytest.raises(ValueError, match="k_cache"):
        fn(*good[:5], torch.zeros(1, 10, 64, 2, device=device).transpose(2, 3), *good[6:])


@pytest.mark.gpu
def test_rotary_kv_cache_skips_positions_outside_the_cache(kernel):
    """On CUDA positions outside [0, L) are not written (no host sync to check them); the others are."""
    fn = _rotary_kv_cache()
    q = torch.randn(1, 4, 3, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 2, 3, 64, device="cuda", dtype=torch.bfloat16)
    cos = torch.randn(1, 3, 32, device="cuda", dtype=torch.bfloat16)
    k_cache = torch.full((1, 10, 2, 64), float("nan"), device="cuda", dtype=torch.bfloat16)
    v_cache = torch.full_like(k_cache, float("nan"))
    fn(q, k, k, cos, cos, k_cache, v_cache, torch.tensor([-1, 4, 10], device="cuda"))
    assert not k_cache[:, 4].isnan().any() and not v_cache[:, 4].isnan().any()
    assert k_cache[:, [0, 1, 2, 3, 5, 6, 7, 8, 9]].isnan().all()
    assert torch.equal(v_cache[0, 4], k[0, :, 1])
