"""examples/gpt_oss_20b.ipynb executed end to end on the CPU, offline, against the tiny MXFP4 checkpoint and
tokenizer written here (examples/tiny_checkpoint.py): only the parameters cell changes (MODEL_ID, DEVICE), through
examples/run_notebook.py, as a user or the GPU machine runs it. Also: the tiny checkpoint folder on its own, the
notebook as stored (outputs stripped), and the GPU run's pieces on the CPU: scripts/random_mxfp4_checkpoint.py
(its format and the 20b shape) and scripts/gpu_notebook.sh --tiny."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))  # random_mxfp4_checkpoint
NOTEBOOK = ROOT / "examples" / "gpt_oss_20b.ipynb"


def test_notebook_is_stored_without_outputs():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c["outputs"] == [] and c["execution_count"] is None for c in code)
    first = code[0]
    assert first is nb["cells"][0] and "parameters" in first["metadata"]["tags"]
    assert "".join(first["source"]) == 'MODEL_ID = "openai/gpt-oss-20b"\nDEVICE = "cuda"'


def test_tiny_checkpoint_folder_loads_offline(tmp_path):
    from tiny_checkpoint import write_tiny_checkpoint
    from transformers import AutoConfig, AutoTokenizer, GenerationConfig

    path = write_tiny_checkpoint(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    assert len(tok) == config.vocab_size == 256
    assert config.quantization_config["quant_method"] == "mxfp4"
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|return|>", "<|endoftext|>", "<|call|>", "<|start|>")}
    assert tok.eos_token_id == config.eos_token_id == ids["<|return|>"]
    assert tok.pad_token_id == config.pad_token_id == 0 == ids["<|endoftext|>"]
    assert GenerationConfig.from_pretrained(path).eos_token_id == [ids["<|return|>"], ids["<|endoftext|>"], ids["<|call|>"]]

    messages = [{"role": "user", "content": "What is a mixture of experts?"}]
    for effort in ("low", "medium", "high"):
        text = tok.apply_chat_template(messages, add_generation_prompt=True, reasoning_effort=effort, tokenize=False)
        assert f"Reasoning: {effort}\n" in text and text.startswith("<|start|>system<|message|>")
        assert text.endswith("<|start|>user<|message|>What is a mixture of experts?<|end|><|start|>assistant")
    enc = tok.apply_chat_template(messages, add_generation_prompt=True, reasoning_effort="low", return_tensors="pt")
    ids_ = enc["input_ids"]
    assert ids_.shape[0] == 1 and int(ids_.max()) < 256
    assert tok.decode(ids_[0]) == tok.apply_chat_template(messages, add_generation_prompt=True,
                                                          reasoning_effort="low", tokenize=False)
    with pytest.raises(Exception, match="reasoning_effort"):
        tok.apply_chat_template(messages, reasoning_effort="max", tokenize=False)


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream" and o.get("name") == "stdout")


def test_notebook_runs_on_the_tiny_checkpoint(kernel, tmp_path):
    """examples/run_notebook.py MODEL_ID cpu --out executed.ipynb, as a user runs it: nothing downloaded, the
    notebook finds this checkout's build itself (LOCAL_KERNELS unset)."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    import nbformat
    from tiny_checkpoint import write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "tiny-gpt-oss-mxfp4")
    executed = tmp_path / "executed.ipynb"
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_KERNELS"}
    env["HF_HUB_OFFLINE"] = "1"
    r = subprocess.run([sys.executable, str(ROOT / "examples" / "run_notebook.py"), str(path), "cpu",
                        "--out", str(executed), "--timeout", "180"], capture_output=True, text=True, timeout=600,
                       env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    n_code = sum(c["cell_type"] == "code" for c in json.loads(NOTEBOOK.read_text())["cells"])
    assert f"{n_code} code cells ran without errors" in r.stdout, r.stdout
    nb = nbformat.read(str(executed), as_version=4)

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[0].source == f"MODEL_ID = {str(path)!r}\nDEVICE = 'cpu'"
    source = json.loads(NOTEBOOK.read_text())["cells"]
    assert [c.source for c in nb.cells[1:]] == ["".join(c["source"]) for c in source[1:]]  # nothing else changed
    assert all(o.get("output_type") != "error" for c in code for o in c.outputs)
    out = {c.source: _stdout(c) for c in code}

    def cell(marker: str) -> str:
        (text,) = [t for s, t in out.items() if marker in s]
        return text

    assert "from the local build in" in cell("kernels.get_kernel(")
    assert "NormMoeMLPLayout" in cell("k.from_pretrained(") and "experts: mxfp4" in cell("k.from_pretrained(")
    chat = cell("TextStreamer")
    streamed, _, tail = chat.rpartition("[")
    assert streamed.strip() and re.fullmatch(r"[1-9]\d* new tokens\]\s*", tail), chat  # the reply streamed as text
    batch = cell("generate_batch")
    assert batch.count("tokens)") == 4 and "(0 tokens)" not in batch and "failed:" not in batch, batch
    speed = cell("Mxfp4Config")
    assert "ours (gpt-oss-kernels, MXFP4 experts)" in speed and "experts dequantized" in speed, speed
    ops = cell("moe_mxfp4(")
    assert "rms_norm:" in ops and "moe_mxfp4: same experts as the reference: True" in ops, ops


def test_random_checkpoint_has_the_tiny_checkpoints_format(tmp_path):
    """scripts/random_mxfp4_checkpoint.py (what gpu_notebook.sh writes, sharded, one layer at a time) in the tiny
    shape: the same tensor names, shapes and dtypes and the same config.json as examples/tiny_checkpoint.py's
    single-file checkpoint of the tiny model; the index names every tensor once and its total size."""
    from random_mxfp4_checkpoint import write_random_mxfp4_checkpoint
    from safetensors import safe_open
    from tiny_checkpoint import write_tiny_checkpoint

    def tensors(files):
        out = {}
        for f in files:
            with safe_open(str(f), "pt") as h:
                for name in h.keys():
                    t = h.get_tensor(name)
                    out[name] = (tuple(t.shape), t.dtype, f.name)
        return out

    sharded = write_random_mxfp4_checkpoint(tmp_path / "sharded", "tiny", "cpu", log=lambda s: None)
    single = write_tiny_checkpoint(tmp_path / "single")
    got = tensors(sorted(sharded.glob("model-*.safetensors")))
    want = tensors([single / "model.safetensors"])
    assert {n: v[:2] for n, v in got.items()} == {n: v[:2] for n, v in want.items()}
    assert json.loads((sharded / "config.json").read_text()) == json.loads((single / "config.json").read_text())
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    assert index["weight_map"] == {n: v[2] for n, v in got.items()}
    assert len(set(index["weight_map"].values())) == 3  # two layers, then embedding / final norm / LM head
    assert index["metadata"]["total_size"] == sum(math.prod(shape) * dtype.itemsize for shape, dtype, _ in got.values())
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (sharded / f).read_text() == (single / f).read_text()


def test_20b_shape_is_gpt_oss_20b():
    """The 20b shape's config and parameter shapes are openai/gpt-oss-20b's (its config.json; built on the meta
    device, nothing written)."""
    from random_mxfp4_checkpoint import checkpoint_config, parameter_groups

    config = checkpoint_config("20b")
    assert config["quantization_config"]["quant_method"] == "mxfp4"
    assert config["layer_types"] == ["sliding_attention", "full_attention"] * 12 and config["sliding_window"] == 128
    groups = parameter_groups(config)
    assert list(groups) == [*range(24), -1]
    layer = {n.removeprefix("model.layers.0."): tuple(s) for n, s in groups[0].items()}
    assert layer["self_attn.q_proj.weight"] == (64 * 64, 2880) and layer["self_attn.k_proj.weight"] == (8 * 64, 2880)
    assert layer["self_attn.sinks"] == (64,) and layer["mlp.router.weight"] == (32, 2880)
    assert layer["mlp.experts.gate_up_proj"] == (32, 2880, 2 * 2880) and layer["mlp.experts.down_proj"] == (32, 2880, 2880)
    assert {n: tuple(s) for n, s in groups[-1].items()} == {
        "model.embed_tokens.weight": (201088, 2880), "model.norm.weight": (2880,), "lm_head.weight": (201088, 2880)}
    params = sum(math.prod(s) for g in groups.values() for s in g.values())
    assert 20.8e9 < params < 21.0e9  # gpt-oss-20b: 20.9B parameters


def test_gpu_notebook_script_on_the_cpu(kernel, tmp_path):
    """scripts/gpu_notebook.sh --tiny: the GPU run's steps (checkpoint writer, run_notebook.py, the files under
    $OUT) on the CPU with the tiny shape and this Python."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "LOCAL_KERNELS"}
    env.update(OUT=str(out), PYTHON=sys.executable)
    r = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_notebook.sh"), "--tiny"], capture_output=True, text=True,
                       timeout=600, env=env, cwd=tmp_path)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "checkpoint.log", "gpt_oss_20b.executed.ipynb", "gpt_oss_20b.outputs.txt", "notebook.log"]
    assert "tiny-shaped MXFP4 checkpoint, 3 shards" in (out / "checkpoint.log").read_text()
    assert "7 code cells ran without errors" in (out / "notebook.log").read_text()
    text = (out / "gpt_oss_20b.outputs.txt").read_text()
    assert text.count("# ---- code cell") == 7 and "DEVICE = 'cpu'" in text
    assert "ours (gpt-oss-kernels, MXFP4 experts)" in text and "tokens/s" in text
