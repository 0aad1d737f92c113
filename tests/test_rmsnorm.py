"""rms_norm / fused_add_rms_norm against the float64 reference, the layer, bad input."""

from __future__ import annotations

import pytest
import torch

from conftest import TOL, dispatched, poison_allocator, record_ops, rel_err

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# 2880: gpt-oss; 7, 1: not a multiple of the 16-byte vector; 4104: not a multiple of 32 vectors;
# 12000: several vectors per thread; 30000: longer than the register-resident fast path (fallback).
HIDDEN = [2880, 64, 7, 1, 4104, 12000, 30000]
EPS = 1e-5


def _inputs(shape, dtype, device, w_dtype=torch.float32, scale=1.0):
    x = (torch.randn(shape, dtype=torch.float32) * scale).to(dtype).to(device)
    w = (1 + 0.5 * torch.randn(shape[-1])).to(w_dtype).to(device)
    return x, w


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", HIDDEN)
@pytest.mark.parametrize("rows", [0, 1, 5, 257])
def test_rms_norm(kernel, ref, device, dtype, hidden, rows):
    x, w = _inputs((rows, hidden), dtype, device)
    poison_allocator(device, x.numel() * x.element_size())
    out = kernel.rms_norm(x, w, EPS)
    assert out.dtype == dtype and out.shape == x.shape and out.device == x.device
    expected = ref.rms_norm(x.double(), w.double(), EPS)
    assert rel_err(out, expected) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("hidden", [2880, 520])
def test_many_rows(kernel, ref, device, dtype, hidden):
    # Past 8192 rows the CUDA launch switches to fewer threads per row (more rows in flight).
    x, w = _inputs((8193, hidden), dtype, device)
    residual = torch.randn_like(x)
    poison_allocator(device, x.numel() * x.element_size())
    assert rel_err(kernel.rms_norm(x, w, EPS), ref.rms_norm(x.double(), w.double(), EPS)) <= TOL[dtype]
    out, new_residual = kernel.fused_add_rms_norm(x, residual, w, EPS)
    exp_out, _ = ref.fused_add_rms_norm(x.double(), residual.double(), w.double(), EPS, act_dtype=dtype)
    assert torch.equal(new_residual, x + residual)
    assert rel_err(out, exp_out) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("w_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_rms_norm_weight_dtypes_and_leading_shape(kernel, ref, device, dtype, w_dtype):
    x, w = _inputs((2, 3, 2880), dtype, device, w_dtype)
    out = kernel.rms_norm(x, w, EPS)
    assert out.shape == x.shape
    assert rel_err(out, ref.rms_norm(x.double(), w.double(), EPS)) <= TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [2880, 7, 12000])
@pytest.mark.parametrize("rows", [0, 1, 33])
def test_fused_add_rms_norm(kernel, ref, device, dtype, hidden, rows):
    x, w = _inputs((rows, hidden), dtype, device)
    residual = torch.randn_like(x)
    x_before, r_before = x.clone(), residual.clone()
    poison_allocator(device, x.numel() * x.element_size())
    out, new_residual = kernel.fused_add_rms_norm(x, residual, w, EPS)
    exp_out, exp_residual = ref.fused_add_rms_norm(x.double(), residual.double(), w.double(), EPS, act_dtype=dtype)
    # The new residual is exactly the unfused `x + residual` in the activation dtype.
    assert torch.equal(new_residual, (x + residual))
    assert torch.equal(new_residual.double(), exp_residual)
    assert rel_err(out, exp_out) <= TOL[dtype]
    assert torch.equal(x, x_before) and torch.equal(residual, r_before), "inputs must not be modified"


def test_matches_transformers_module(kernel, device):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm

    module = GptOssRMSNorm(2880, eps=EPS).to(device)
    with torch.no_grad():
        module.weight.copy_(1 + 0.5 * torch.randn(2880))
    x = torch.randn(64, 2880, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = module(x)
    out = kernel.rms_norm(x, module.weight, module.variance_epsilon)
    # Same fp32 math; only the reduction order differs, so at most one bf16 ulp apart.
    assert rel_err(out, expected.float()) <= 8e-3


def test_unaligned_and_non_contiguous(kernel, ref, device):
    # A row start that is not 16-byte aligned takes the scalar path.
    buf = torch.randn(1 + 9 * 2880, device=device, dtype=torch.bfloat16)
    x = buf[1:].view(9, 2880)
    w = torch.randn(2880, device=device)
    assert rel_err(kernel.rms_norm(x, w, EPS), ref.rms_norm(x.double(), w.double(), EPS)) <= 1e-2
    # Non-contiguous input is copied to a contiguous one first.
    xt = torch.randn(2880, 17, device=device, dtype=torch.bfloat16).t()
    assert rel_err(kernel.rms_norm(xt, w, EPS), ref.rms_norm(xt.double(), w.double(), EPS)) <= 1e-2
    out, r = kernel.fused_add_rms_norm(xt, xt, w, EPS)
    assert torch.equal(r, xt + xt)


def test_large_nan_and_inf_rows(kernel, ref, device):
    x, w = _inputs((4, 2880), torch.bfloat16, device, scale=1e4)
    x[1, 17] = float("nan")
    x[2, 5] = float("inf")
    out = kernel.rms_norm(x, w, EPS)
    expected = ref.rms_norm(x.double(), w.double(), EPS)
    assert rel_err(out[[0, 3]], expected[[0, 3]]) <= 1e-2  # huge but finite rows stay exact
    assert torch.isnan(out[1]).all(), "a NaN poisons its own row only"
    assert not torch.isfinite(out[2]).all()
    assert torch.isfinite(out[[0, 3]]).all()


def test_bad_input(kernel, device):
    x = torch.randn(4, 64, device=device)
    w = torch.randn(64, device=device)
    with pytest.raises(TypeError, match="x"):
        kernel.rms_norm(x.to(torch.int32), w, EPS)
    with pytest.raises(TypeError, match="x"):
        kernel.rms_norm(x.double(), w, EPS)
    with pytest.raises(TypeError, match="weight"):
        kernel.rms_norm(x, w.to(torch.int64), EPS)
    with pytest.raises(ValueError, match="weight"):
        kernel.rms_norm(x, torch.randn(63, device=device), EPS)
    with pytest.raises(ValueError, match="weight"):
        kernel.rms_norm(x, torch.randn(1, 64, device=device), EPS)
    with pytest.raises(ValueError, match="x"):
        kernel.rms_norm(torch.tensor(1.0, device=device), w, EPS)
    with pytest.raises(ValueError, match="eps"):
        kernel.rms_norm(x, w, -1.0)
    with pytest.raises(TypeError, match="eps"):
        kernel.rms_norm(x, w, "1e-5")
    with pytest.raises(TypeError, match="x"):
        kernel.rms_norm(x.tolist(), w, EPS)
    with pytest.raises(ValueError, match="residual"):
        kernel.fused_add_rms_norm(x, x[:2], w, EPS)
    with pytest.raises(TypeError, match="residual"):
        kernel.fused_add_rms_norm(x, x.half(), w, EPS)
    # Empty input is fine.
    assert kernel.rms_norm(x[:0], w, EPS).shape == (0, 64)


@pytest.mark.gpu
def test_mismatched_devices(kernel):
    x = torch.randn(4, 64, device="cuda")
    with pytest.raises(ValueError, match="weight"):
        kernel.rms_norm(x, torch.randn(64), EPS)
    with pytest.raises(ValueError, match="residual"):
        kernel.fused_add_rms_norm(x, x.cpu(), torch.randn(64, device="cuda"), EPS)


def _norm_module(device, dtype=torch.bfloat16):
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssRMSNorm

    module = GptOssRMSNorm(2880, eps=EPS).to(device)
    with torch.no_grad():
        module.weight.copy_(1 + 0.5 * torch.randn(2880))
    return module


def test_layer_dispatches_our_op(kernel, device):
    module = _norm_module(device)
    x = torch.randn(2, 5, 2880, device=device, dtype=torch.bfloat16)
    with torch.no_grad():
        expected = module(x)
    with record_ops() as names:
        out = kernel.layers.RMSNorm.forward(module, x)
    assert dispatched(names, kernel, "rms_norm"), names
    assert rel_err(out, expected.float()) <= 8e-3


@torch.no_grad()
def test_layer_torch_compile_fullgraph(kernel, device):
    module = _norm_module(device)
    x = torch.randn(3, 2880, device=device, dtype=torch.bfloat16)
    eager = kernel.layers.RMSNorm.forward(module, x)
    backend = "inductor" if device == "cuda" else "aot_eager"
    torch._dynamo.reset()
    compiled = torch.compile(lambda t: kernel.layers.RMSNorm.forward(module, t), fullgraph=True, backend=backend)
    assert torch.equal(compiled(x), eager)
    fused = torch.compile(lambda t, r: kernel.fused_add_rms_norm(t, r, module.weight, EPS), fullgraph=True,
                          backend=backend)
    a, b = fused(x, x)
    ea, eb = kernel.fused_add_rms_norm(x, x, module.weight, EPS)
    assert torch.equal(a, ea) and torch.equal(b, eb)


@pytest.mark.gpu
def test_layer_cuda_graph_replay(kernel):
    module = _norm_module("cuda")
    static_x = torch.randn(64, 2880, device="cuda", dtype=torch.bfloat16)
    static_r = torch.randn_like(static_x)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        kernel.layers.RMSNorm.forward(module, static_x)
        kernel.fused_add_rms_norm(static_x, static_r, module.weight, EPS)
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        static_out = kernel.layers.RMSNorm.forward(module, static_x)
        static_fused, static_res = kernel.fused_add_rms_norm(static_x, static_r, module.weight, EPS)
    for _ in range(3):
        static_x.copy_(torch.randn_like(static_x))
        static_r.copy_(torch.randn_like(static_r))
        g.replay()
        torch.cuda.synchronize()
        assert torch.equal(static_out, kernel.layers.RMSNorm.forward(module, static_x))
        fused, res = kernel.fused_add_rms_norm(static_x, static_r, module.weight, EPS)
        assert torch.equal(static_fused, fused) and torch.equal(static_res, res)
