"""Our attention and rotary inside transformers' GPT-OSS (tiny model built in code, no downloads).

Routes (docs/attention.md):
- ``attn_implementation="kernels-community/gpt-oss-kernels"`` with ``LOCAL_KERNELS`` pointing that repo
  id at this checkout: generate() with the dynamic and the static cache.
- continuous batching (``generate_batch``) only accepts implementations whose name contains "flash",
  and GPT-OSS rewrites every such name outside its compatible list to
  ``kernels-community/vllm-flash-attn3``; so we map that compatible repo id to our build with
  ``LOCAL_KERNELS`` and request it by that name.
- rotary: kernels' ``use_kernel_mapping`` + ``kernelize`` with the ``RotaryPosEmb`` layer for the hub
  name ``"rotary_pos_emb"``.
"""

from __future__ import annotations

import os

import pytest
import torch

from conftest import REPO_ID, local_repo, record_ops, rel_err

transformers = pytest.importorskip("transformers")

ALIAS = "kernels-community/vllm-flash-attn3"


@pytest.fixture(scope="module", autouse=True)
def _local_kernels(kernel):
    old = os.environ.get("LOCAL_KERNELS")
    os.environ["LOCAL_KERNELS"] = f"{REPO_ID}={local_repo(kernel)}:{ALIAS}={local_repo(kernel)}"
    yield
    if old is None:
        os.environ.pop("LOCAL_KERNELS", None)
    else:
        os.environ["LOCAL_KERNELS"] = old


def _model(device):
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(
        vocab_size=128, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, num_local_experts=4, num_experts_per_tok=2, sliding_window=8,
        max_position_embeddings=256, layer_types=["sliding_attention", "full_attention"],
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0, "beta_fast": 32.0,
                         "beta_slow": 1.0, "original_max_position_embeddings": 8, "truncate": False},
    )
    g = torch.Generator().manual_seed(1234)
    model = GptOssForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        model.lm_head.weight.mul_(20)  # peaked logits: no near-ties in greedy decoding
        for mod in model.modules():
            if hasattr(mod, "sinks"):
                mod.sinks.copy_(torch.randn(mod.sinks.shape, generator=g))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return model.to(device=device, dtype=dtype)


def _inputs(device):
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, 128, (2, 21), generator=g).to(device)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0  # left padding in the second row
    return ids, mask


def _attn_calls(names):
    return sum("attn_fwd" in n for n in names)


def test_logits_match_eager(kernel, device):
    model = _model(device)
    ids, mask = _inputs(device)
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = model(ids, attention_mask=mask).logits
        model.set_attn_implementation(REPO_ID)
        with record_ops() as names:
            got = model(ids, attention_mask=mask).logits
    assert _attn_calls(names) == 2  # one per layer: the model really ran our op
    valid = mask.bool()
    assert rel_err(got[valid], expected[valid]) < 2e-2


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_matches_eager(kernel, device, cache):
    model = _model(device)
    ids, mask = _inputs(device)
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0)
    if cache == "static":
        kw["cache_implementation"] = "static"
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = model.generate(ids, **kw)
        model.set_attn_implementation(REPO_ID)
        with record_ops() as names:
            got = model.generate(ids, **kw)
    assert _attn_calls(names) > 0
    assert got.tolist() == expected.tolist()


def test_generate_batch_matches_eager(kernel, device):
    from transformers import GenerationConfig

    model = _model(device)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 128, (n,), generator=g).tolist() for n in (5, 17, 9, 12)]
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = [model.generate(torch.tensor([p], device=device), max_new_tokens=10, do_sample=False,
                                   pad_token_id=0)[0, len(p):].tolist() for p in prompts]
        model.set_attn_implementation(ALIAS)
        gc = GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=-1, pad_token_id=0)
        out = model.generate_batch(prompts, generation_config=gc)
    # generate_batch runs the model in a worker thread (no dispatch recording there): check instead
    # that transformers resolved the flash entry points to this build's functions
    import transformers.modeling_flash_attention_utils as fau

    assert "gpt_oss_kernels" in fau._flash_varlen_fn.__module__, fau._flash_varlen_fn
    got = [out[k].generated_tokens for k in sorted(out, key=lambda r: int(r.split("_")[-1]))]
    assert got == expected


def test_rotary_kernelized(kernel, device):
    from kernels import LocalLayerRepository, Mode, kernelize, use_kernel_mapping

    model = _model(device)
    ids, mask = _inputs(device)
    from transformers.models.gpt_oss import modeling_gpt_oss

    rotary_fn = modeling_gpt_oss.apply_rotary_pos_emb  # a module-global nn.Module instance
    saved = rotary_fn.__dict__.get("forward")
    with torch.no_grad():
        model.set_attn_implementation("eager")
        expected = model(ids, attention_mask=mask).logits
        mapping = {"rotary_pos_emb": {device: LocalLayerRepository(local_repo(kernel), layer_name="RotaryPosEmb")}}
        try:
            with use_kernel_mapping(mapping, inherit_mapping=False):
                kernelize(model, mode=Mode.INFERENCE, device=device)
            with record_ops() as names:
                got = model(ids, attention_mask=mask).logits
        finally:  # kernelize swapped that global's forward: put the original back for other tests
            if saved is None:
                rotary_fn.__dict__.pop("forward", None)
            else:
                rotary_fn.forward = saved
    assert sum("rotary_pos_emb" in n for n in names) == 2
    valid = mask.bool()
    assert rel_err(got[valid], expected[valid]) < 2e-2


def test_continuous_batching_manager_with_our_layers(kernel, device, tmp_path, monkeypatch):
    """What a server runs (examples/serve.md): an MXFP4 checkpoint loaded with every layer of ours, attention
    switched to the continuous-batching alias, a ContinuousBatchingManager serving a streamed request next to two
    others; each gets what generate() gives with our attention. Under 5.25 the sliding layers' cache reads go
    through ``paged_window_kv`` (layers._paged_window_update), not transformers' masked_scatter."""
    from tiny_checkpoint import write_tiny_checkpoint
    from transformers import AutoTokenizer, GenerationConfig

    path = write_tiny_checkpoint(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(path)
    model = kernel.from_pretrained(path, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32)
    routes = kernel.integrations.routes
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       return_dict=True)["input_ids"] for q in ("Hi", "What is MXFP4?", "A poem")]
    with torch.inference_mode():
        expected = [model.generate(torch.tensor([p], device=device), max_new_tokens=10, do_sample=False,
                                   eos_token_id=-1)[0, len(p):].tolist() for p in prompts]
    model.set_attn_implementation(routes.attention_implementation(continuous_batching=True))
    assert model.config._attn_implementation == ALIAS
    paged = kernel.layers.paged_window_kv
    window_reads = []
    monkeypatch.setattr(kernel.layers, "paged_window_kv", lambda *a: window_reads.append(1) or paged(*a))
    manager = model.init_continuous_batching(
        generation_config=GenerationConfig(max_new_tokens=10, do_sample=False, eos_token_id=-1, pad_token_id=0))
    manager.start()
    try:
        streamed_id = manager.add_request(prompts[0], max_new_tokens=10, streaming=True)
        other_ids = [manager.add_request(p, max_new_tokens=10) for p in prompts[1:]]
        steps = [list(out.generated_tokens) for out in manager.request_id_iter(streamed_id)]
        got = [steps[-1]]
        for rid in other_ids:
            result = None
            for _ in range(60):
                result = manager.get_result(request_id=rid, timeout=1)
                if result is not None:
                    break
            assert result is not None and result.is_finished(), rid
            got.append(list(result.generated_tokens))
    finally:
        manager.stop(block=True, timeout=30)
    model.set_attn_implementation(routes.attention_implementation())
    import transformers.modeling_flash_attention_utils as fau

    assert "gpt_oss_kernels" in fau._flash_varlen_fn.__module__, fau._flash_varlen_fn
    assert len(steps) == 10 and all(len(s) == i + 1 for i, s in enumerate(steps))  # one token per streamed step
    if int(transformers.__version__.split(".")[1]) >= 25:  # 5.22-5.24 update the cache in their paged wrapper
        assert window_reads  # the worker thread's forward took our sliding-layer read-back
    if device == "cpu":  # fp32: token for token
        assert got == expected
    else:  # bf16, paged against the dynamic cache: the same first token (later ones may flip on a near-tie)
        assert [g[0] for g in got] == [e[0] for e in expected] and all(len(g) == 10 for g in got)
