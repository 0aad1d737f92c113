"""``convert_checkpoint`` (quant/checkpoint.py): checkpoint folders with bf16 or MXFP4 experts rewritten with FP8 or
MXFP4 experts, tensor by tensor. The converted experts are exactly the format helpers' output on the source's
(exactly dequantized) weights, every other tensor and top-level file is carried over, sharded sources with a
projection's blocks and scales in different shards work, and the result loads into our layout through
``from_pretrained`` and computes like the source model."""

from __future__ import annotations

import json

import pytest
import torch

from tiny_checkpoint import write_tiny_checkpoint
from tiny_gpt_oss import tiny_model

EXPERT = "model.layers.{}.mlp.experts.{}"


def fro_rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _load(path):
    from safetensors.torch import load_file

    out = {}
    for f in sorted(path.glob("*.safetensors")):
        out.update(load_file(str(f)))
    return out


def _bf16_checkpoint(model, path):
    model.to(torch.bfloat16).save_pretrained(path)
    model.float()
    return path


def _split_shards(path):
    """Rewrites the single-file checkpoint at ``path`` as two shards (and an index) with every projection's blocks
    in the first shard and its scales in the second, as a sharded download can have them."""
    from safetensors.torch import save_file

    sd = _load(path)
    (path / "model.safetensors").unlink()
    second = {n: t for n, t in sd.items() if n.endswith("_scales") or n.startswith("lm_head")}
    first = {n: t for n, t in sd.items() if n not in second}
    names = ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors")
    for name, part in zip(names, (first, second)):
        save_file(part, str(path / name), metadata={"format": "pt"})
    index = {"metadata": {"total_size": 0},
             "weight_map": {n: names[0] if n in first else names[1] for n in sd}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))
    return path


@pytest.mark.parametrize("granularity", ["channel", "block"])
def test_mxfp4_to_fp8_exact_and_loads(kernel, tmp_path, granularity):
    model = tiny_model(seed=5)
    src = _split_shards(write_tiny_checkpoint(tmp_path / "mxfp4", model))
    stored = _load(src)
    dst = kernel.convert_checkpoint(src, tmp_path / "fp8", experts="fp8", granularity=granularity)
    out = _load(dst)
    layers = model.config.num_hidden_layers
    for i in range(layers):
        for proj in ("gate_up_proj", "down_proj"):
            key = EXPERT.format(i, proj)
            w = kernel.dequantize_mxfp4(stored[key + "_blocks"], stored[key + "_scales"], torch.float32)
            q, s = kernel.quantize_fp8(w, granularity)
            assert torch.equal(out[key + "_fp8"].view(torch.uint8), q.view(torch.uint8))
            assert torch.equal(out[key + "_scale"], s)
            assert key + "_blocks" not in out and key + "_scales" not in out
    carried = {n for n in stored if not n.endswith(("_blocks", "_scales"))}
    for n in carried:
        assert torch.equal(out[n], stored[n]), n
    assert set(out) == carried | {EXPERT.format(i, p) + s for i in range(layers)
                                  for p in ("gate_up_proj", "down_proj") for s in ("_fp8", "_scale")}
    # shards keep their names; the index maps every tensor to the shard that holds it
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    for name, shard in index["weight_map"].items():
        assert name in _load_one(dst / shard)
    assert set(index["weight_map"]) == set(out)
    config = json.loads((dst / "config.json").read_text())
    assert config["quantization_config"] == kernel.quant.fp8.fp8_quantization_config(granularity)
    assert (dst / "tokenizer.json").is_file() and (dst / "tokenizer_config.json").is_file()

    ours = kernel.from_pretrained(dst, device="cpu", dtype=torch.float32)
    assert ours.config.gpt_oss_kernels_experts == "fp8"
    mx = kernel.from_pretrained(src, device="cpu", dtype=torch.float32)
    ids = torch.randint(1, model.config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        got, want = ours(ids).logits, mx(ids).logits
    assert fro_rel(got, want) <= 0.2  # e4m3 experts against the MXFP4 ones (the load is checked exactly above)


def _load_one(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_bf16_to_mxfp4_and_fp8(kernel, tmp_path):
    model = tiny_model(seed=6)
    src = _bf16_checkpoint(model, tmp_path / "bf16")
    stored = _load(src)
    mx = _load(kernel.convert_checkpoint(src, tmp_path / "mxfp4", experts="mxfp4"))
    f8 = _load(kernel.convert_checkpoint(src, tmp_path / "fp8", experts="fp8"))
    for i in range(model.config.num_hidden_layers):
        for proj in ("gate_up_proj", "down_proj"):
            key = EXPERT.format(i, proj)
            blocks, scales = kernel.quantize_mxfp4(stored[key])
            assert torch.equal(mx[key + "_blocks"], blocks) and torch.equal(mx[key + "_scales"], scales)
            q, s = kernel.quantize_fp8(stored[key])
            assert torch.equal(f8[key + "_fp8"].view(torch.uint8), q.view(torch.uint8))
            assert torch.equal(f8[key + "_scale"], s)
            assert key not in mx and key not in f8
    assert torch.equal(mx["model.layers.0.mlp.experts.gate_up_proj_bias"],
                       stored["model.layers.0.mlp.experts.gate_up_proj_bias"])
    # MXFP4 -> MXFP4 copies the stored bytes
    again = _load(kernel.convert_checkpoint(tmp_path / "mxfp4", tmp_path / "mxfp4-again", experts="mxfp4"))
    assert set(again) == set(mx) and all(torch.equal(again[n], mx[n]) for n in mx)
    loaded = kernel.from_pretrained(tmp_path / "mxfp4", device="cpu", dtype=torch.float32)
    assert loaded.config.gpt_oss_kernels_experts == "mxfp4"


def test_bad_arguments(kernel, tmp_path):
    model = tiny_model(seed=7)
    src = _bf16_checkpoint(model, tmp_path / "bf16")
    with pytest.raises(ValueError, match="experts must be one of"):
        kernel.convert_checkpoint(src, tmp_path / "x", experts="int4")
    with pytest.raises(ValueError, match="granularity must be one of"):
        kernel.convert_checkpoint(src, tmp_path / "x", experts="fp8", granularity="tensor")
    with pytest.raises(ValueError, match="config.json"):
        kernel.convert_checkpoint(tmp_path / "nowhere", tmp_path / "x", experts="fp8")
    with pytest.raises(ValueError, match="dst must differ"):
        kernel.convert_checkpoint(src, src, experts="fp8")
    fp8 = kernel.convert_checkpoint(src, tmp_path / "fp8", experts="fp8")
    with pytest.raises(ValueError, match="already holds FP8 experts"):
        kernel.convert_checkpoint(fp8, tmp_path / "fp8-again", experts="mxfp4")
