"""An MXFP4 checkpoint in the official on-disk format (written here, from a tiny model built in code) loaded
with every layer of ours through the package's ``from_pretrained``: the experts keep the checkpoint's blocks
(as kernel words, the same bytes' size) and scales (no bf16 copy), transformers' MXFP4 quantizer and its Hub kernel (gpt-oss-triton-kernels) are
never involved (offline, nowhere on disk), and the model computes what the same model computes in float64 on
the exactly dequantized weights."""

from __future__ import annotations

import copy

import pytest
import torch

from conftest import as_close_as_transformers_bf16, dispatched, next_token_agreement_as_transformers_bf16, record_ops, rel_err
from tiny_checkpoint import write_mxfp4_checkpoint
from tiny_gpt_oss import tiny_model

OPS = ("rms_norm", "moe_route", "moe_experts_mxfp4", "rotary_pos_emb", "attn_fwd")


def _dequantized_reference(kernel, model, path, dtype):
    """``model`` as the checkpoint at ``path`` stores it, computed in ``dtype``: every tensor rounded to bf16 (as
    stored) and the experts replaced by the exact values of the checkpoint's blocks and scales."""
    from safetensors.torch import load_file

    stored = load_file(str(path / "model.safetensors"))
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for p in ref.parameters():  # parameters only: the rotary buffers stay as computed
            p.copy_(p.to(torch.bfloat16))
    ref = ref.to(dtype)
    ref.set_attn_implementation("eager")
    ref.set_experts_implementation("eager")  # grouped_mm has no float64
    with torch.no_grad():
        for i, layer in enumerate(ref.model.layers):
            ex = layer.mlp.experts
            for proj in ("gate_up_proj", "down_proj"):
                key = f"model.layers.{i}.mlp.experts.{proj}"
                w = kernel.dequantize_mxfp4(stored[f"{key}_blocks"], stored[f"{key}_scales"], torch.float32)
                getattr(ex, proj).copy_(w.to(dtype))
    return ref


@pytest.fixture
def checkpoint(tmp_path, monkeypatch):
    monkeypatch.delenv("LOCAL_KERNELS", raising=False)  # no gpt-oss-triton-kernels anywhere
    model = tiny_model(seed=5, dtype=torch.float32)
    return model, write_mxfp4_checkpoint(model, tmp_path / "tiny-mxfp4")


def test_mxfp4_checkpoint_loads_into_our_layers(kernel, device, checkpoint):
    model, path = checkpoint
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    ours = kernel.from_pretrained(path, device=device, dtype=dtype)
    assert ours.config.gpt_oss_kernels_experts == "mxfp4"
    for layer in ours.model.layers:
        ex = layer.mlp.experts
        assert type(ex) is kernel.layers.MoeExpertsLayout
        # the blocks as kernel words (the same bytes' size), the scales as stored
        assert ex.gate_up_proj_blocks.dtype == torch.uint32 and ex.down_proj_blocks.dtype == torch.uint32
        assert ex.gate_up_proj_scales.dtype == torch.uint8 and ex.down_proj_scales.dtype == torch.uint8
        assert not hasattr(ex, "gate_up_proj") and not hasattr(ex, "down_proj")
    assert not any(p.is_floating_point() and p.dim() == 3 for p in ours.parameters()), "a full-size float expert copy"

    # float32 (not 64): under kernels 0.17 kernelize replaces the rotary function process-wide, so the reference
    # may run our rotary op too, which takes fp16/bf16/fp32
    ref = _dequantized_reference(kernel, model, path, torch.float32).to(device)
    ids = torch.randint(1, model.config.vocab_size, (8, 24), device=device)
    with torch.inference_mode():
        expected = ref(ids).logits
        with record_ops() as names:
            got = ours(ids).logits
    assert [op for op in OPS if not dispatched(names, kernel, op)] == []
    if device == "cuda":  # bf16: per position, against transformers' own bf16 model as a baseline (conftest)
        as_close_as_transformers_bf16(got, ref, ids, expected)
    else:
        assert rel_err(got, expected) <= 1e-4


def test_mxfp4_state_dict_and_save_pretrained_give_the_checkpoint_bytes(kernel, device, checkpoint, tmp_path):
    """The loaded experts hold kernel words, yet state_dict(), save_pretrained() and load_state_dict() speak the
    checkpoint's bytes: saved and reloaded, the model holds the same words and computes the same logits."""
    from safetensors.torch import load_file

    model, path = checkpoint
    stored = load_file(str(path / "model.safetensors"))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    ours = kernel.from_pretrained(path, device=device, dtype=dtype)
    keys = [k for k in stored if k.endswith(("_blocks", "_scales"))]
    assert len(keys) == 4 * model.config.num_hidden_layers
    sd = ours.state_dict()
    for k in keys:
        assert sd[k].dtype == torch.uint8 and torch.equal(sd[k].cpu(), stored[k]), k
    words = {k: v.clone() for k, v in ours.named_parameters() if v.dtype == torch.uint32}
    assert len(words) == 2 * model.config.num_hidden_layers
    for k, v in words.items():
        assert torch.equal(v.cpu(), kernel.mxfp4_kernel_words(stored[k])), k

    ours.save_pretrained(tmp_path / "saved")
    saved = load_file(str(tmp_path / "saved" / "model.safetensors"))
    for k in keys:
        assert torch.equal(saved[k], stored[k]), k
    again = kernel.from_pretrained(tmp_path / "saved", device=device, dtype=dtype)
    for k, v in again.named_parameters():
        if v.dtype == torch.uint32:
            assert torch.equal(v, words[k]), k

    ex = again.model.layers[0].mlp.experts  # load_state_dict with the checkpoint's bytes into kernel words
    ex.gate_up_proj_blocks.data.zero_()
    prefix = "model.layers.0.mlp.experts."
    ex.load_state_dict({k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)})
    assert torch.equal(ex.gate_up_proj_blocks, words[prefix + "gate_up_proj_blocks"])
    ids = torch.randint(1, model.config.vocab_size, (2, 12), device=device)
    with torch.inference_mode():
        assert torch.equal(again(ids).logits, ours(ids).logits)


@pytest.mark.parametrize("fmt", ["mxfp4", "fp8"])
def test_quantized_checkpoint_through_transformers_kernel_config(kernel, checkpoint, accelerator_or_cpu, local_kernels,
                                                                 tmp_path, fmt):
    """transformers' own from_pretrained with our KernelConfig and ``checkpoint_config(path)``: the experts load as
    stored into our layout (MXFP4 blocks as kernel words after the load, as our from_pretrained gives them; no
    quantizer, no gpt-oss-triton-kernels) and the model computes exactly what our from_pretrained's model computes."""
    from transformers import AutoModelForCausalLM

    from conftest import REPO_ID
    from tiny_checkpoint import write_fp8_checkpoint

    device = accelerator_or_cpu
    model, path = checkpoint
    if fmt == "fp8":
        path = write_fp8_checkpoint(model, tmp_path / "tiny-fp8")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    config = kernel.checkpoint_config(path)
    assert config.gpt_oss_kernels_experts == fmt and not hasattr(config, "quantization_config")
    theirs = AutoModelForCausalLM.from_pretrained(path, config=config, device_map=device, dtype=dtype, use_kernels=True,
                                                  kernel_config=kernel.kernel_config(), attn_implementation=REPO_ID)
    assert getattr(theirs, "hf_quantizer", None) is None
    for layer in theirs.model.layers:
        ex = layer.mlp.experts
        assert type(ex) is kernel.layers.MoeExpertsLayout and kernel.layers.expert_format(ex) == fmt
        if fmt == "mxfp4":
            assert ex.gate_up_proj_blocks.dtype == torch.uint32
    assert not any(p.is_floating_point() and p.dim() == 3 and p.element_size() > 1 for p in theirs.parameters()), \
        "a full-size float expert copy"
    ours = kernel.from_pretrained(path, device=device, dtype=dtype)
    ids = torch.randint(1, model.config.vocab_size, (4, 16), device=device)
    with torch.inference_mode():
        got = theirs(ids).logits
        assert torch.equal(got, ours(ids).logits)
    if fmt == "mxfp4":
        with torch.inference_mode(), record_ops() as names:
            theirs(ids)
        assert [op for op in OPS if not dispatched(names, kernel, op)] == []


def test_transformers_quantizer_in_our_place_is_an_error(kernel, checkpoint):
    """Loaded without ``checkpoint_config`` where Triton is installed, transformers' quantizer takes an MXFP4
    checkpoint before any KernelConfig is read: 5.25 builds its own MoE block (our KernelConfig then raises, naming
    the fix), 5.22-5.24 dequantize the experts into our bf16 layout under ``use_kernels`` (it warns). (Without
    Triton, as on the CPU, both drop the quantizer and the blocks load into our layout as stored.)"""
    model, path = checkpoint
    check = kernel.integrations.routes._check_experts_not_quantized_by_transformers
    mxfp4 = kernel.from_pretrained(path, device="cpu")
    bf16 = kernel.from_pretrained(None, config=model.config, state_dict=model.state_dict(), device="cpu")
    for m in (mxfp4, bf16):
        check(m)  # no quantizer: nothing to say
        m.hf_quantizer = object()
        m.config.quantization_config = {"quant_method": "mxfp4"}
    check(mxfp4)  # our MXFP4 layout in place
    with pytest.warns(UserWarning, match="dequantized this MXFP4 checkpoint's experts to bf16.*checkpoint_config"):
        check(bf16)
    mxfp4.model.layers[0].mlp = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp \(Identity\).*checkpoint_config\(path\)"):
        check(mxfp4)


def test_mxfp4_greedy_matches_dequantized_model(kernel, device, checkpoint):
    model, path = checkpoint
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    ours = kernel.from_pretrained(path, device=device, dtype=dtype)
    ref = _dequantized_reference(kernel, model, path, torch.float32).to(device)
    prompt = torch.randint(1, model.config.vocab_size, (1, 10), device=device)
    kw = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False)
    with torch.inference_mode():
        expected = ref.generate(prompt, **kw)
        if device == "cuda":  # bf16: compare each position's next token on the same text
            next_token_agreement_as_transformers_bf16(ours, ref, expected, 9)
            return
        assert ours.generate(prompt, **kw).tolist() == expected.tolist()


@pytest.mark.gpu
def test_two_layer_20b_shapes_mxfp4_argmax_agreement(kernel, tmp_path):
    """gpt-oss-20b shapes, 2 layers, random weights (std 0.02), MXFP4 experts: ours against the same model in fp32
    on the exactly dequantized weights, per-position argmax agreement over 512 positions: >= 99% with fp32
    activations; in bf16 at least what transformers' own bf16 model (on the same dequantized weights) gets (at
    random initialisation the 201,088 logits of a position are nearly tied, so bf16 rounding alone moves the
    argmax: docs/decisions-moe.md)."""
    from transformers import GptOssConfig, GptOssForCausalLM

    torch.manual_seed(0)
    config = GptOssConfig(num_hidden_layers=2, layer_types=["sliding_attention", "full_attention"])
    with torch.device("cuda"):
        model = GptOssForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.02)
    path = write_mxfp4_checkpoint(model, tmp_path / "mxfp4-2l")
    ids = torch.randint(1, config.vocab_size, (1, 512), device="cuda")

    def logits(m):
        with torch.inference_mode():
            return m(ids).logits[0].float()

    ref = _dequantized_reference(kernel, model, path, torch.float32)
    del model
    expected = logits(ref)
    for p in ref.parameters():  # parameters only: the rotary buffers stay fp32, as from_pretrained leaves them
        p.data = p.data.to(torch.bfloat16)
    theirs16 = logits(ref)
    del ref
    agree = {}
    for dtype in (torch.float32, torch.bfloat16):
        # our CUDA attention takes fp16 / bf16: the fp32 run keeps transformers' eager attention
        ours = kernel.from_pretrained(path, device="cuda", dtype=dtype, attention=dtype != torch.float32)
        agree[dtype] = (logits(ours).argmax(-1) == expected.argmax(-1)).float().mean().item()
        del ours
    baseline = (theirs16.argmax(-1) == expected.argmax(-1)).float().mean().item()
    print(f"argmax agreement with fp32: ours fp32 {agree[torch.float32]:.4f}, ours bf16 {agree[torch.bfloat16]:.4f}, "
          f"transformers bf16 {baseline:.4f}")
    assert agree[torch.float32] >= 0.99
    assert agree[torch.bfloat16] >= baseline - 0.01
