"""Every layer of ours in transformers' GPT-OSS through the package's two entry points, under the
installed transformers (CI runs this file under 5.25 and 5.22):

- ``from_pretrained`` (any device): layouts registered while the model loads, then kernels' kernelize;
- ``kernel_config()`` for transformers' own ``from_pretrained(..., use_kernels=True, kernel_config=...)``
  (accelerators only: transformers refuses the CPU there; on the CPU its mechanics are run with the CPU
  let through transformers' device check).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import (REPO_ID, ROOT, as_close_as_transformers_bf16, dispatched, local_repo,
                      next_token_agreement_as_transformers_bf16, record_ops, rel_err)
from tiny_gpt_oss import tiny_model, with_our_kernels

# One op per layer: RMSNorm, the MoE block (router + experts), rotary, attention.
OPS = ("rms_norm", "moe_route", "moe_experts", "rotary_pos_emb", "attn_fwd")


def _logits(model, ids):
    with torch.inference_mode():
        return model(ids).logits.float()


# Ours runs in bf16 on the GPU and fp32 on the CPU. The unkernelized model is the reference in fp32 on both:
# transformers' own bf16 model is not one (on these random tiny models it lands up to 0.36 away from its fp32
# self, ours ~0.01; measured on the CPU, 2026-12-04).
OURS_DTYPE = {"cuda": torch.bfloat16, "cpu": torch.float32}


def _reference(device):
    """The unkernelized model, fp32: eager attention, transformers' experts."""
    model = tiny_model(seed=3, dtype=torch.float32, device=device)
    model.set_attn_implementation("eager")
    return model


def _check_runs_our_layers(kernel, ours, reference, device):
    ids = torch.randint(1, reference.config.vocab_size, (8, 24), device=device)
    expected = _logits(reference, ids)
    assert all(type(layer.self_attn).__name__ == "AttentionLayout" for layer in ours.model.layers)
    with record_ops() as names:
        got = _logits(ours, ids)
    # multi_linear is a native op only at decode sizes on CUDA (8 x 24 rows here: torch's linear)
    assert [op for op in OPS if not dispatched(names, kernel, op)] == []
    if device == "cuda":
        with record_ops() as names:
            _logits(ours, ids[:1, :8])
        assert dispatched(names, kernel, "multi_linear")
    if device == "cuda":  # bf16: per position, against transformers' own bf16 model as a baseline (conftest)
        as_close_as_transformers_bf16(got, reference, ids, expected)
    else:
        assert rel_err(got, expected) <= 1e-4


@pytest.mark.kernels_ci
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_from_pretrained_runs_every_layer(kernel, device, fused):
    reference = _reference(device)
    ours = with_our_kernels(reference, fused=fused, dtype=OURS_DTYPE[device])
    layer = ours.model.layers[0]
    assert type(layer.mlp) is (kernel.layers.NormMoeMLPLayout if fused else kernel.layers.MoeMLPLayout)
    assert type(layer.mlp.experts) is kernel.layers.MoeExpertsLayout
    assert type(layer.input_layernorm) is kernel.layers.RMSNormLayout
    assert isinstance(layer.post_attention_layernorm, torch.nn.Identity) == fused
    assert ours.config._attn_implementation == REPO_ID
    _check_runs_our_layers(kernel, ours, reference, device)


def test_fused_and_unfused_agree_bit_for_bit(kernel, device):
    """The fused route (NormMoeMLP, and the decoder layer's forward that adds the attention's output to the residual
    inside fused_add_rms_norm) gives the unfused route's logits to the bit, with one add fewer per layer."""
    reference = _reference(device)
    ids = torch.randint(1, reference.config.vocab_size, (3, 17), device=device)
    fused_model = with_our_kernels(reference, fused=True, dtype=OURS_DTYPE[device])
    unfused_model = with_our_kernels(reference, fused=False, dtype=OURS_DTYPE[device])
    assert type(fused_model.model.layers[0]).forward.__qualname__ == "DecoderLayer.forward"  # (a load of its own)
    counts = {}
    for name, model in (("fused", fused_model), ("unfused", unfused_model)):
        with record_ops() as names:
            counts[name] = _logits(model, ids), sum(n.startswith("aten.add.Tensor") for n in names), names
    (fused, fused_adds, fused_names), (unfused, unfused_adds, _) = counts["fused"], counts["unfused"]
    assert torch.equal(fused, unfused)
    layers_ = reference.config.num_hidden_layers
    assert sum(n.startswith(f"{kernel.__name__}.fused_add_rms_norm.") for n in fused_names) == layers_
    assert unfused_adds - fused_adds == layers_, (fused_adds, unfused_adds)
    for layer in fused_model.model.layers:  # the switch the decode benchmark's A/B uses
        layer.fuse_residual = False
    with record_ops() as names:
        assert torch.equal(_logits(fused_model, ids), unfused)
    assert sum(n.startswith("aten.add.Tensor") for n in names) == unfused_adds


def test_from_pretrained_greedy_identical(kernel, device):
    reference = _reference(device)
    ours = with_our_kernels(reference, dtype=OURS_DTYPE[device])
    prompt = torch.randint(1, reference.config.vocab_size, (1, 12), device=device)
    kw = dict(max_new_tokens=16, min_new_tokens=16, do_sample=False)
    with torch.inference_mode():
        expected = reference.generate(prompt, **kw)
        got = ours.generate(prompt, **kw)
        if device == "cuda":  # bf16: a rounding-level flip changes the rest of a greedy sequence; compare each step
            next_token_agreement_as_transformers_bf16(ours, reference, expected, 11)
            return
    assert got.tolist() == expected.tolist()


def test_from_pretrained_checkpoint_on_disk(kernel, device, tmp_path):
    reference = _reference(device)
    reference.save_pretrained(tmp_path / "tiny")
    ours = kernel.from_pretrained(tmp_path / "tiny", device=device, dtype=OURS_DTYPE[device], local_files_only=True)
    _check_runs_our_layers(kernel, ours, reference, device)


def test_from_pretrained_leaves_transformers_as_it_was(kernel, device, tmp_path):
    from transformers import GptOssForCausalLM
    from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP

    reference = _reference(device)
    with_our_kernels(reference, dtype=OURS_DTYPE[device])  # fp32 on CUDA would refuse our attention
    reference.save_pretrained(tmp_path / "tiny")
    plain = GptOssForCausalLM.from_pretrained(tmp_path / "tiny", device_map=device, use_kernels=False)
    assert type(plain.model.layers[0].mlp) is GptOssMLP


def test_from_pretrained_errors(kernel, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(tmp_path / "llama")
    with pytest.raises(ValueError, match="GPT-OSS checkpoints, got model_type 'llama'"):
        kernel.from_pretrained(tmp_path / "llama", device="cpu")
    with pytest.raises(ValueError, match="version or revision, not both"):
        kernel.kernel_config(version=1, revision="v1")


def test_check_kernelized_names_what_is_missing(kernel):
    """An unkernelized model: 5.22 names its GptOssRMSNorm modules (they carry the hub name), 5.25 says no module
    runs the layer (the hub name is gone there)."""
    from transformers import GptOssForCausalLM

    from tiny_gpt_oss import tiny_config

    plain = GptOssForCausalLM(tiny_config())
    with pytest.raises(RuntimeError, match=r"model\.layers\.0\.input_layernorm|no module runs layers\.RMSNorm"):
        kernel.integrations.routes.check_kernelized(plain, {"RMSNorm": "RMSNorm"})


# --- transformers' own from_pretrained with kernel_config() -------------------------------------------


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_transformers_from_pretrained_with_kernel_config(kernel, accelerator_or_cpu, local_kernels, tmp_path, fused):
    from transformers import AutoModelForCausalLM

    device = accelerator_or_cpu
    reference = _reference(device)
    reference.save_pretrained(tmp_path / "tiny")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", device_map=device, dtype=OURS_DTYPE[device],
                                                use_kernels=True, kernel_config=kernel.kernel_config(fused=fused),
                                                attn_implementation=REPO_ID)
    assert type(ours.model.layers[0].mlp).__name__ == ("NormMoeMLPLayout" if fused else "MoeMLPLayout")
    _check_runs_our_layers(kernel, ours, reference, device)


def test_transformers_from_pretrained_unknown_layer_or_missing_build(kernel, accelerator_or_cpu, monkeypatch,
                                                                     tmp_path):
    from transformers import AutoModelForCausalLM, KernelConfig

    device = accelerator_or_cpu
    _reference(device).save_pretrained(tmp_path / "tiny")

    def load(mapping):
        config = KernelConfig(kernel_mapping=mapping, inherit_mapping=False)
        return AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", device_map=device, use_kernels=True,
                                                    kernel_config=config)

    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO_ID}={local_repo(kernel)}")
    with pytest.raises(ValueError, match="NoSuchLayer"):
        load({"^GptOssRMSNorm$": (f"{REPO_ID}:NoSuchLayer", {"revision": "v1"})})
    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO_ID}={tmp_path / 'no-build-here'}")
    with pytest.raises((FileNotFoundError, ValueError), match="build variant|not available"):
        load({"^GptOssRMSNorm$": (f"{REPO_ID}:RMSNorm", {"revision": "v1"})})


def test_transformers_use_local_kernel_upstream_bug(kernel, accelerator_or_cpu, tmp_path):
    """transformers 5.22.2 and 5.25.0: ``KernelConfig(use_local_kernel=True)`` hands a ``(repo, metadata)`` tuple
    to ``add_to_mapping_local``, which calls ``.split`` on it. The README's route uses LOCAL_KERNELS instead."""
    from transformers import AutoModelForCausalLM, KernelConfig

    _reference(accelerator_or_cpu).save_pretrained(tmp_path / "tiny")
    build = ROOT / "build" if local_repo(kernel) == ROOT else local_repo(kernel)
    config = KernelConfig(kernel_mapping={"^GptOssRMSNorm$": f"{build}:RMSNorm"}, use_local_kernel=True)
    with pytest.raises(AttributeError, match="'tuple' object has no attribute 'split'"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "tiny", device_map=accelerator_or_cpu, use_kernels=True,
                                             kernel_config=config)


_CUDA_TORCH_WITHOUT_GPU = textwrap.dedent("""
    import sys, torch
    torch.version.cuda = "13.0"  # as PyPI's default wheel says, on this machine without a GPU
    import kernels
    sys.path.insert(0, sys.argv[1])
    from tiny_gpt_oss import BUILD_DIR, tiny_model, with_our_kernels
    try:
        kernels.get_local_kernel(BUILD_DIR)
        raise SystemExit("kernels found a variant for a CUDA-built torch in a CPU build")
    except FileNotFoundError:
        pass
    plain = tiny_model()
    ours = with_our_kernels(plain)  # backend="cpu"; attention through transformers' loader by repo id
    ids = torch.arange(1, 9).reshape(1, 8)
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, plain(ids).logits, rtol=1e-4, atol=1e-4)
    print(ours.config._attn_implementation, type(ours.model.layers[0].mlp).__name__)
""")


@pytest.mark.skipif(torch.cuda.is_available() or torch.version.cuda is not None,
                    reason="simulates a CUDA-built torch on a machine without a GPU from a CPU-built one")
def test_loads_with_a_cuda_built_torch_and_no_gpu(kernel):
    """PyPI's default torch is built for CUDA, and kernels then looks for a CUDA variant even where no GPU is
    visible, while such a machine builds the CPU one (docs/results/2026-12-08-cpu-torch215.md). The examples' loader
    asks for the CPU variant, and our from_pretrained points transformers' attention loader at the variant's folder,
    so the tiny model loads and runs every layer of ours; a plain get_local_kernel fails as kernels does."""
    r = subprocess.run([sys.executable, "-c", _CUDA_TORCH_WITHOUT_GPU, str(ROOT / "examples")], capture_output=True,
                       text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.split()[-2:] == [REPO_ID, "NormMoeMLPLayout"], r.stdout[-2000:]


def test_demo_generates_the_same_tokens(kernel):
    """`make demo`'s job (`generate.py --compare`): all our layers and attention swapped in, same greedy tokens."""
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "generate.py"), "--compare", "--new-tokens", "12"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "outputs agree: yes" in r.stdout
    assert "NormMoeMLP" in r.stdout and "attention" in r.stdout
    assert "teacher-forced next-token agreement: 100.0% (12/12)" in r.stdout


@pytest.mark.parametrize("script, args, expected", [
    # the default model (openai/gpt-oss-20b) is not in this empty cache: the tiny checkpoint stands in
    ("generate.py", ["--prompt", "What is MXFP4?", "--max-new-tokens", "8"],
     ["openai/gpt-oss-20b is not available offline", "tiny random GPT-OSS checkpoint", "NormMoeMLPLayout",
      "experts mxfp4", "new tokens in"]),
    ("get_kernel.py", [], ["moe_mxfp4", "flash_attn_func", "all ops match the reference"]),
    ("tiny_checkpoint.py", ["{tmp}/tiny"], ["wrote {tmp}/tiny"]),
])
def test_example_script_runs_offline(kernel, tmp_path, script, args, expected):
    """examples/*.py as a user runs them, offline, with an empty Hugging Face cache (run_notebook.py: test_notebook.py)."""
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_KERNELS"}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    r = subprocess.run([sys.executable, str(ROOT / "examples" / script), *[a.format(tmp=tmp_path) for a in args]],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    missing = [e.format(tmp=tmp_path) for e in expected if e.format(tmp=tmp_path) not in r.stdout]
    assert not missing, (missing, r.stdout[-3000:])
