"""The MXFP4 checkpoint format (quant/mxfp4.py): dequantize bit for bit as transformers, OCP quantize and its
round trip on dequantized checkpoints, the kernel words (and the layout's state dict around them), the checkpoint
state dict and writer (examples/tiny_checkpoint.py)."""

from __future__ import annotations

import json

import pytest
import torch

_INT = {2: torch.int16, 4: torch.int32}
FP4 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                   dtype=torch.float64)


def _bits(t):
    return t.view(_INT[t.element_size()]) if t.element_size() in _INT else t


def _random_packed(e, n, g, device, edge=(0, 1, 2, 126, 127, 128, 253, 254, 255)):
    b = torch.randint(0, 256, (e, n, g, 16), dtype=torch.uint8, device=device)
    s = torch.randint(0, 256, (e, n, g), dtype=torch.uint8, device=device)
    edge = torch.tensor(edge, dtype=torch.uint8, device=device)
    pick = torch.randint(0, len(edge), (e, n, g), device=device)
    s = torch.where(torch.rand(e, n, g, device=device) < 0.5, edge[pick], s)
    return b, s


@pytest.mark.kernels_ci
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_dequantize_bit_for_bit_as_transformers(kernel, device, dtype):
    from transformers.integrations.mxfp4 import _convert_moe_packed_tensors

    b, s = _random_packed(3, 40, 5, device)
    got = kernel.dequantize_mxfp4(b, s, dtype)
    expected = _convert_moe_packed_tensors(b, s, dtype=dtype)
    assert got.shape == expected.shape == (3, 5 * 32, 40) and got.dtype == dtype and got.is_contiguous()
    assert torch.equal(_bits(got), _bits(expected))  # NaN payloads included


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16])
def test_dequantize_every_byte_and_scale_is_the_exact_value_rounded_once(kernel, dtype):
    """All 256 x 256 (byte, scale) pairs on the CPU: RN_dtype(e2m1 * 2^(s - 127)); scale 0 gives the exact
    subnormal 2^-127 multiples, 0xFF gives 0 (zero nibble), 2^127 (0.5) or +-inf (|v| >= 1): no NaN."""
    g = torch.arange(256, dtype=torch.uint8).reshape(16, 16)
    blocks = g.expand(256, 16, 16).reshape(1, 256, 16, 16).contiguous()
    scales = torch.arange(256).to(torch.uint8).reshape(1, 256, 1).expand(1, 256, 16).contiguous()
    got = kernel.dequantize_mxfp4(blocks, scales, dtype)[0].T  # (scale, k)
    codes = torch.stack([g & 15, g >> 4], -1).reshape(-1).long()
    exact = FP4[codes][None, :] * torch.exp2(torch.arange(256, dtype=torch.float64) - 127)[:, None]
    assert torch.equal(_bits(got), _bits(exact.to(dtype)))
    assert not got.isnan().any()
    if dtype != torch.float16:
        assert got[0].abs().min() == 0 and got[0][got[0] != 0].abs().min() == 2.0**-128  # subnormal, exact
        assert got[255][codes == 1].eq(2.0**127).all() and got[255][codes == 2].eq(float("inf")).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_quantize_round_trip_on_dequantized_checkpoints(kernel, dtype):
    """dequantize(quantize(dequantize(b, s))) == dequantize(b, s) for every valid (b, s): random bytes, scale
    bytes 0..254 (0xFF is OCP's NaN) with the edge exponents over-represented. In float32 / bf16, scales 253-254 with
    large e2m1 values overflow to inf (not a weight): those blocks keep magnitudes <= 1.5 there."""
    b, s = _random_packed(4, 24, 6, "cpu", edge=(0, 1, 2, 3, 125, 126, 127, 128, 129, 252, 253, 254))
    s = torch.where(s == 255, torch.full_like(s, 254), s)
    if dtype != torch.float64:
        b = torch.where((s >= 253)[..., None], b & 0xBB, b)  # codes 0..3 (and their signs)
    b[0, 0, 0] = 0  # an all-zero block
    b[0, 1, 0] = 0x88  # -0 everywhere
    w = kernel.dequantize_mxfp4(b, s, dtype)
    b2, s2 = kernel.quantize_mxfp4(w)
    assert b2.dtype == s2.dtype == torch.uint8 and b2.shape == b.shape and s2.shape == s.shape
    assert torch.equal(_bits(kernel.dequantize_mxfp4(b2, s2, dtype)), _bits(w))
    assert s2[0, 0, 0] == 0 and (s2 <= 254).all()  # zero block: scale byte 0; 0xFF never written


def test_quantize_ocp_rules(kernel):
    """Shared exponent floor(log2(amax)) - 2, round half to even onto e2m1, saturation at +-6."""
    vals = [4.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -5.0, 0.3, -0.0, 0.1, 2.9, 6.0, 3.0, 0.5] * 2
    w = torch.tensor(vals, dtype=torch.float64).reshape(1, 32, 1) * 2.0**-10  # amax 6 * 2^-10 -> X = -10
    b, s = kernel.quantize_mxfp4(w)
    assert s.item() == 127 - 10  # floor(log2(6 * 2^-10)) - 2
    got = kernel.dequantize_mxfp4(b, s, torch.float32).flatten() * 2.0**10
    want = [4.0, 0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, -4.0, 0.5, -0.0, 0.0, 3.0, 6.0, 3.0, 0.5] * 2
    assert got.tolist() == want and torch.signbit(got[10])
    # saturation: amax just below the next power of two maps to 6 (7.9 * 2^X > 6 * 2^X)
    w = torch.full((1, 32, 1), 7.9)
    b, s = kernel.quantize_mxfp4(w)
    assert s.item() == 127 + 2 - 2 and kernel.dequantize_mxfp4(b, s, torch.float32).unique().tolist() == [6.0]
    # tiny blocks clamp the exponent at 2^-127 and round to its grid; huge float64 ones at 2^127 and saturate
    b, s = kernel.quantize_mxfp4(torch.full((1, 32, 1), 2.0**-140, dtype=torch.float64))
    assert s.item() == 0 and kernel.dequantize_mxfp4(b, s, torch.float32).abs().max() == 0
    b, s = kernel.quantize_mxfp4(torch.full((1, 32, 1), 2.0**200, dtype=torch.float64))
    assert s.item() == 254 and b.unique().tolist() == [0x77]


def test_quantize_bad_input(kernel):
    with pytest.raises(ValueError, match="multiple of 32"):
        kernel.quantize_mxfp4(torch.zeros(2, 48, 4))
    with pytest.raises(ValueError, match="non-finite"):
        kernel.quantize_mxfp4(torch.full((1, 32, 2), float("inf")))
    with pytest.raises(TypeError, match="float"):
        kernel.quantize_mxfp4(torch.zeros(1, 32, 2, dtype=torch.int32))
    with pytest.raises(ValueError, match=r"\(E, K, N\)"):
        kernel.quantize_mxfp4(torch.zeros(32, 2))
    with pytest.raises(TypeError, match="scales must be uint8"):
        kernel.dequantize_mxfp4(torch.zeros(1, 2, 1, 16, dtype=torch.uint8), torch.zeros(1, 2, 1))
    with pytest.raises(ValueError, match="scales must be"):
        kernel.dequantize_mxfp4(torch.zeros(1, 2, 1, 16, dtype=torch.uint8), torch.zeros(1, 2, 2, dtype=torch.uint8))


def test_quantize_in_expert_groups_equals_one_pass(kernel, monkeypatch):
    """Large weights are quantized a few experts at a time (bounded float64 temporaries): the same bytes as one
    pass, for a group size that does not divide E, and non-finite values are still refused."""
    import sys

    mod = sys.modules[kernel.quantize_mxfp4.__module__]
    w = torch.randn(7, 64, 24) * torch.logspace(-3, 3, 7)[:, None, None]
    whole = kernel.quantize_mxfp4(w)
    monkeypatch.setattr(mod, "_QUANTIZE_CHUNK", 3 * 64 * 24)  # groups of 3, 3, 1
    grouped = kernel.quantize_mxfp4(w)
    assert all(torch.equal(a, b) for a, b in zip(whole, grouped))
    w[6, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        kernel.quantize_mxfp4(w)


def _rotr(w, c):
    return ((w >> c) | (w << (32 - c))) & 0xFFFFFFFF


@pytest.mark.kernels_ci
def test_kernel_words_round_trip_and_pairs(kernel, device):
    """mxfp4_kernel_words / mxfp4_checkpoint_blocks invert each other; every byte value in every position of a
    word gives, for each pair P of values (2P, 2P + 1), the bf16x2 bits the kernels take from one rotate and one
    mask: magnitude code on bits 6..8, sign on 15 (values 2P in the low half); dequantize_mxfp4 reads either form
    to the same bits."""
    b = torch.randint(0, 256, (3, 16, 5, 16), dtype=torch.uint8, device=device)
    b[0].view(-1)[:1024] = torch.arange(256, device=device).repeat_interleave(4).to(torch.uint8)  # words v v v v
    w = kernel.mxfp4_kernel_words(b)
    assert w.dtype == torch.uint32 and w.shape == (3, 16, 20) and w.device == b.device
    assert torch.equal(kernel.mxfp4_checkpoint_blocks(w), b)
    kw = w.cpu().view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    ck = b.cpu().view(torch.int32).view(3, 16, 20).to(torch.int64) & 0xFFFFFFFF
    for p in range(4):
        r = (kw & 0x80C080C0) | (_rotr(kw, 24) & 0x01000100) if p == 0 else _rotr(kw, (0, 2, 12, 6)[p]) & 0x81C081C0
        for half in range(2):
            nib = (ck >> (4 * (2 * p + half))) & 0xF
            assert torch.equal((r >> (16 * half)) & 0xFFFF, ((nib & 7) << 6) | ((nib >> 3) << 15)), (p, half)
    s = torch.randint(0, 256, (3, 16, 5), dtype=torch.uint8, device=device)
    for dtype in (torch.bfloat16, torch.float32):
        assert torch.equal(_bits(kernel.dequantize_mxfp4(w, s, dtype)), _bits(kernel.dequantize_mxfp4(b, s, dtype)))


def test_kernel_words_bad_input(kernel):
    with pytest.raises(TypeError, match="blocks must be a uint8"):
        kernel.mxfp4_kernel_words(torch.zeros(1, 2, 1, 16, dtype=torch.int8))
    with pytest.raises(ValueError, match=r"\(\.\.\., N, K/32, 16\)"):
        kernel.mxfp4_kernel_words(torch.zeros(1, 2, 1, 8, dtype=torch.uint8))
    with pytest.raises(TypeError, match="words must be a uint32"):
        kernel.mxfp4_checkpoint_blocks(torch.zeros(1, 2, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="multiple of 32"):
        kernel.mxfp4_checkpoint_blocks(torch.zeros(1, 2, 3, dtype=torch.uint32))


def test_layout_kernel_words_keep_the_checkpoint_state_dict(kernel):
    """MoeExpertsLayout.use_kernel_words converts in place (uint32, same bytes' size), once; state_dict gives the
    checkpoint's bytes; load_state_dict takes them (or kernel words) into a converted layout."""
    from tiny_gpt_oss import tiny_config

    config = tiny_config()
    config.gpt_oss_kernels_experts = "mxfp4"
    layout = kernel.layers.MoeExpertsLayout(config)
    sd = {k: (torch.randint(0, 256, v.shape, dtype=torch.uint8) if v.dtype == torch.uint8 else torch.randn(v.shape))
          for k, v in layout.state_dict().items()}
    layout.load_state_dict(sd)
    layout.use_kernel_words()
    layout.use_kernel_words()  # a no-op the second time
    assert layout.gate_up_proj_blocks.dtype == torch.uint32 and not layout.gate_up_proj_blocks.requires_grad
    assert torch.equal(layout.down_proj_blocks, kernel.mxfp4_kernel_words(sd["down_proj_blocks"]))
    out = layout.state_dict()
    assert out.keys() == sd.keys() and all(torch.equal(out[k], sd[k]) for k in sd)
    fresh = kernel.layers.MoeExpertsLayout(config)
    fresh.use_kernel_words()
    fresh.load_state_dict(sd)
    assert torch.equal(fresh.gate_up_proj_blocks, layout.gate_up_proj_blocks)
    fresh.load_state_dict({**sd, "gate_up_proj_blocks": layout.gate_up_proj_blocks.clone()})
    assert torch.equal(fresh.gate_up_proj_blocks, layout.gate_up_proj_blocks)
    layout.use_kernel_words(False)  # back to the checkpoint's bytes
    assert layout.gate_up_proj_blocks.dtype == torch.uint8
    assert torch.equal(layout.gate_up_proj_blocks, sd["gate_up_proj_blocks"])


def test_quantize_experts_state_dict_names(kernel):
    from tiny_gpt_oss import tiny_model

    model = tiny_model()
    sd = model.state_dict()
    q = kernel.quantize_experts_mxfp4(model)
    e, h, i = 8, 128, 96
    for layer in range(2):
        p = f"model.layers.{layer}.mlp.experts."
        assert p + "gate_up_proj" not in q and p + "down_proj" not in q
        assert q[p + "gate_up_proj_blocks"].shape == (e, 2 * i, h // 32, 16)
        assert q[p + "gate_up_proj_scales"].shape == (e, 2 * i, h // 32)
        assert q[p + "down_proj_blocks"].shape == (e, h, i // 32, 16)
        assert q[p + "down_proj_scales"].shape == (e, h, i // 32)
        assert q[p + "gate_up_proj_bias"].dtype == q[p + "down_proj_bias"].dtype == torch.bfloat16
        for proj in ("gate_up_proj", "down_proj"):
            w = kernel.dequantize_mxfp4(q[p + proj + "_blocks"], q[p + proj + "_scales"], torch.float32)
            assert w.shape == sd[p + proj].shape
            # MXFP4 keeps ~1 significant bit: close, relative to each block's largest value
            assert ((w - sd[p + proj]).abs().max() / sd[p + proj].abs().max()) < 0.3
    for n, t in sd.items():
        if ".mlp.experts." not in n:
            assert q[n].data_ptr() == t.data_ptr() and torch.equal(q[n], t)  # unchanged
    assert kernel.quantize_experts_mxfp4(sd).keys() == q.keys()  # a state dict works as well


@pytest.mark.parametrize("tv", ["installed"])
def test_tiny_checkpoint_loads_in_transformers(kernel, tmp_path, tv):
    """examples/tiny_checkpoint.py writes the official on-disk format; plain transformers loads it (dequantize
    on the CPU) and holds exactly dequantize_mxfp4's weights; everything else as written."""
    from tiny_checkpoint import MODULES_TO_NOT_CONVERT, mxfp4_state_dict, write_mxfp4_checkpoint
    from tiny_gpt_oss import tiny_model
    from transformers import AutoModelForCausalLM, Mxfp4Config

    model = tiny_model()
    path = write_mxfp4_checkpoint(model, tmp_path / "ckpt")
    config = json.loads((path / "config.json").read_text())
    assert config["quantization_config"] == {"quant_method": "mxfp4", "modules_to_not_convert": MODULES_TO_NOT_CONVERT}
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert f.get_tensor("model.layers.0.mlp.experts.gate_up_proj_blocks").dtype == torch.uint8
    assert "model.layers.1.mlp.experts.down_proj_scales" in names and "model.layers.0.mlp.experts.down_proj" not in names
    loaded = AutoModelForCausalLM.from_pretrained(path, quantization_config=Mxfp4Config(dequantize=True),
                                                  device_map="cpu")
    sd = mxfp4_state_dict(model)
    for layer in range(2):
        ex = loaded.model.layers[layer].mlp.experts
        p = f"model.layers.{layer}.mlp.experts."
        for proj in ("gate_up_proj", "down_proj"):
            want = kernel.dequantize_mxfp4(sd[p + proj + "_blocks"], sd[p + proj + "_scales"], torch.bfloat16)
            got = getattr(ex, proj)
            assert got.dtype == torch.bfloat16 and torch.equal(_bits(got.detach()), _bits(want))
            assert torch.equal(getattr(ex, proj + "_bias").detach(), sd[p + proj + "_bias"])
    lsd = loaded.state_dict()
    for n, t in sd.items():
        if ".mlp.experts." not in n:
            assert torch.equal(lsd[n], t), n
