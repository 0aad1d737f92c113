"""DecodeRunner (integrations/decode.py): N decode steps per launch, against transformers' generate.

On the CPU the steps run eagerly (the same code the CUDA graph captures): greedy tokens identical to
``model.generate`` in fp32, plain transformers modules and every layer of ours; rows finishing at different steps;
sampling reproducible from a seed; lengths that are not a multiple of N; EOS as the first token; the streamer.
The ``gpu`` tests run the captured graphs.
"""

from __future__ import annotations

import pytest
import torch

from tiny_gpt_oss import tiny_model, with_our_kernels

VOCAB = 256


def _models(device, dtype):
    plain = tiny_model(seed=3, dtype=torch.float32, device=device)
    plain.set_attn_implementation("eager")
    return plain, with_our_kernels(plain, dtype=dtype)


@pytest.fixture(scope="module")
def models_cpu(kernel):
    return _models("cpu", torch.float32)


class _Recorder:
    """A streamer that keeps what it is given (the prompt first, then the new tokens in chunks)."""

    def __init__(self):
        self.puts, self.ended = [], False

    def put(self, value):
        self.puts.append(value.reshape(value.shape[0] if value.dim() > 1 else 1, -1).clone())

    def end(self):
        self.ended = True


def _greedy(model, prompt, **kw):
    with torch.inference_mode():  # an explicit mask: generate would infer padding from pad ids in the prompt
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, **kw)


@pytest.mark.parametrize("which", ["plain", "ours"])
@pytest.mark.parametrize("steps", [1, 4, 8])
def test_greedy_identical_to_generate(kernel, models_cpu, which, steps):
    model = models_cpu[0 if which == "plain" else 1]
    # 13-token prompts + 21 new tokens: past the sliding window (16) of every other layer; 21 is no multiple of 4, 8.
    prompt = torch.randint(1, VOCAB, (3, 13))
    expected = _greedy(model, prompt, max_new_tokens=21, min_new_tokens=21)
    runner = kernel.DecodeRunner(model, steps_per_launch=steps)
    got = runner.generate(prompt, max_new_tokens=21, min_new_tokens=21, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert runner.last_stats["launches"] == -(-20 // steps)  # the first token comes from the prefill
    assert model.config._attn_implementation == ("eager" if which == "plain" else kernel.integrations.routes.REPO_ID)
    again = runner.generate(prompt, max_new_tokens=21, min_new_tokens=21, do_sample=False)  # state reused
    assert again.tolist() == expected.tolist()


def test_runner_writes_the_cache_inside_rotary(kernel, models_cpu):
    """With every layer of ours, the runner's steps rotate q / k and write k / v into its cache in one op
    (rotary_kv_cache) instead of rotary_pos_emb and two index_copy per layer."""
    from conftest import dispatched, record_ops

    model = models_cpu[1]
    prompt = torch.randint(1, VOCAB, (2, 5))
    runner = kernel.DecodeRunner(model, steps_per_launch=2)
    with record_ops() as names:
        runner.generate(prompt, max_new_tokens=3, min_new_tokens=3, do_sample=False)
    assert dispatched(names, kernel, "rotary_kv_cache") and not dispatched(names, kernel, "rotary_pos_emb")
    # the token bookkeeping only (one per new token); the cache writes would add 2 per layer and forward
    assert sum(n.startswith("aten.index_copy") for n in names) <= 3


def _eos_finishing_rows_at(seqs: list[list[int]], steps: list[int]):
    """EOS ids that make row r of these greedy sequences finish at new token steps[r] (1-based), or None."""
    eos = [seq[s - 1] for seq, s in zip(seqs, steps)]
    for seq, s in zip(seqs, steps):
        if any(t in eos for t in seq[: s - 1]) or seq[s - 1] not in eos:
            return None
    return eos


def test_rows_finish_at_different_steps(kernel, models_cpu):
    model = models_cpu[1]
    runner = kernel.DecodeRunner(model, steps_per_launch=4)
    for _ in range(50):  # find prompts whose greedy continuations allow such EOS ids
        prompt = torch.randint(1, VOCAB, (3, 9))
        free = _greedy(model, prompt, max_new_tokens=16, min_new_tokens=16)[:, 9:].tolist()
        eos = _eos_finishing_rows_at(free, [2, 7, 11])
        if eos is not None:
            break
    else:
        pytest.skip("no prompt found whose greedy rows end at the chosen steps")
    kw = dict(max_new_tokens=16, eos_token_id=eos, pad_token_id=VOCAB - 1)
    expected = _greedy(model, prompt, **kw)
    got = runner.generate(prompt, do_sample=False, **kw)
    assert got.tolist() == expected.tolist()
    new = got[:, 9:]
    assert new.shape[1] == 11  # the last row to finish decides the length, as in generate
    assert new[0, 2:].eq(VOCAB - 1).all() and new[1, 7:].eq(VOCAB - 1).all()  # finished rows stop changing
    # the first row alone: finished after two tokens, so no launch after the prefill's token and one launch
    alone = runner.generate(prompt[:1], do_sample=False, **kw)
    assert alone.tolist() == _greedy(model, prompt[:1], **kw).tolist()


def test_eos_as_first_token(kernel, models_cpu):
    model = models_cpu[1]
    prompt = torch.randint(1, VOCAB, (2, 7))
    first = _greedy(model, prompt, max_new_tokens=1)[:, 7].tolist()
    runner = kernel.DecodeRunner(model, steps_per_launch=8)
    got = runner.generate(prompt, max_new_tokens=10, eos_token_id=first, do_sample=False)
    assert got.tolist() == _greedy(model, prompt, max_new_tokens=10, eos_token_id=first).tolist()
    assert got.shape[1] == 8 and runner.last_stats["launches"] == 0
    one = runner.generate(prompt, max_new_tokens=1, do_sample=False)
    assert one.tolist() == _greedy(model, prompt, max_new_tokens=1).tolist()


def test_sampling_reproducible_and_filters(kernel, models_cpu):
    model = models_cpu[1]
    runner = kernel.DecodeRunner(model, steps_per_launch=4)
    prompt = torch.randint(1, VOCAB, (2, 6))
    kw = dict(max_new_tokens=15, min_new_tokens=15, do_sample=True, temperature=1.3, top_k=40, top_p=0.95)
    a = runner.generate(prompt, seed=7, **kw)
    b = runner.generate(prompt, seed=7, **kw)
    c = runner.generate(prompt, seed=8, **kw)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()
    torch.manual_seed(11)
    d = runner.generate(prompt, **kw)
    torch.manual_seed(11)
    assert runner.generate(prompt, **kw).tolist() == d.tolist()
    # top_k=1, or a top_p only the best token passes, leaves the greedy choice
    greedy = _greedy(model, prompt, max_new_tokens=15, min_new_tokens=15)
    assert runner.generate(prompt, seed=1, max_new_tokens=15, min_new_tokens=15, do_sample=True,
                           top_k=1).tolist() == greedy.tolist()
    assert runner.generate(prompt, seed=1, max_new_tokens=15, min_new_tokens=15, do_sample=True, temperature=0.5,
                           top_p=1e-6).tolist() == greedy.tolist()


def test_sampling_follows_the_distribution(kernel, models_cpu):
    """The first sampled token over many seeds against the softmax of the prefill's logits (temperature 2, top-k 5):
    every drawn token is in the top 5 and the frequencies match the renormalised probabilities."""
    model = models_cpu[0]
    runner = kernel.DecodeRunner(model, steps_per_launch=1)
    prompt = torch.randint(1, VOCAB, (64, 5))
    prompt[:] = prompt[0]
    with torch.inference_mode():
        logits = model(prompt[:1]).logits[0, -1].double() / 2.0
    top = torch.topk(logits, 5)
    want = torch.zeros(VOCAB, dtype=torch.float64)
    want[top.indices] = top.values.softmax(-1)
    counts = torch.zeros(VOCAB, dtype=torch.float64)
    for seed in range(16):
        first = runner.generate(prompt, seed=seed, max_new_tokens=1, do_sample=True, temperature=2.0, top_k=5)[:, 5]
        counts += torch.bincount(first, minlength=VOCAB).double()
    freq = counts / counts.sum()
    assert set(torch.nonzero(counts).flatten().tolist()) <= set(top.indices.tolist())
    assert (freq - want).abs().max() < 0.06, (freq[top.indices], want[top.indices])


def test_streamer_gets_every_token(kernel, models_cpu):
    model = models_cpu[1]
    runner = kernel.DecodeRunner(model, steps_per_launch=4)
    prompt = torch.randint(1, VOCAB, (1, 8))
    rec = _Recorder()
    got = runner.generate(prompt, max_new_tokens=11, min_new_tokens=11, do_sample=False, streamer=rec)
    assert rec.ended and rec.puts[0].tolist() == prompt.tolist()
    assert torch.cat(rec.puts[1:], dim=1).tolist() == got[:, 8:].tolist()
    assert [p.shape[1] for p in rec.puts[1:]] == [1, 4, 4, 2]  # the prefill's token, then one chunk per launch


def test_errors(kernel, models_cpu):
    model = models_cpu[1]
    runner = kernel.DecodeRunner(model)
    prompt = torch.randint(1, VOCAB, (2, 5))
    mask = torch.ones_like(prompt)
    mask[0, 0] = 0
    with pytest.raises(ValueError, match="unpadded prompts"):
        runner.generate(prompt, attention_mask=mask, max_new_tokens=3)
    with pytest.raises(TypeError, match="input_ids"):
        runner.generate(prompt.int(), max_new_tokens=3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        runner.generate(prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature"):
        runner.generate(prompt, max_new_tokens=3, do_sample=True, temperature=0.0)
    with pytest.raises(ValueError, match="steps_per_launch"):
        kernel.DecodeRunner(model, steps_per_launch=0)


# --- CUDA graphs -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def models_cuda(kernel):
    return _models("cuda", torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("steps", [1, 8, 32])
def test_cuda_graph_same_tokens_as_eager(kernel, models_cuda, steps):
    """The captured steps give exactly the runner's eager tokens (same kernels), and every token is the one the
    eager kernelized model picks on the same text (teacher forced)."""
    _, ours = models_cuda
    prompt = torch.randint(1, VOCAB, (4, 24), device="cuda")
    kw = dict(max_new_tokens=45, min_new_tokens=45, do_sample=False)
    graphed = kernel.DecodeRunner(ours, steps_per_launch=steps)
    got = graphed.generate(prompt, **kw)
    stats = graphed.last_stats
    assert stats["graphed"] and stats["capture_s"] > 0
    assert stats["launches"] == -(-44 // steps)
    eager = kernel.DecodeRunner(ours, steps_per_launch=steps, use_cuda_graph=False).generate(prompt, **kw)
    assert got.tolist() == eager.tolist()
    with torch.inference_mode():
        want = ours(got).logits[:, 23:-1].argmax(-1)
    agree = (want == got[:, 24:]).float().mean().item()
    assert agree >= 0.9, agree  # bf16, other attention kernels in the full forward: near ties may flip (conftest)
    assert graphed.generate(prompt, **kw).tolist() == got.tolist()
    assert graphed.last_stats["capture_s"] == 0  # captured once per (batch, bucket)


@pytest.mark.gpu
def test_cuda_graph_greedy_as_generate_and_sampling_seeded(kernel, models_cuda):
    _, ours = models_cuda
    prompt = torch.randint(1, VOCAB, (1, 16), device="cuda")
    runner = kernel.DecodeRunner(ours, steps_per_launch=8)
    with torch.inference_mode():
        expected = ours.generate(prompt, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    got = runner.generate(prompt, max_new_tokens=30, min_new_tokens=30, do_sample=False)
    # bf16 with other attention kernels than generate's: one near-tie flip changes the rest of a greedy sequence, so
    # both are checked teacher forced (as tests/test_integration_transformers.py does), and the tokens before the
    # first difference must be the same sequence
    with torch.inference_mode():
        want = ours(expected).logits[0, 15:-1].argmax(-1)
        mine = ours(got).logits[0, 15:-1].argmax(-1)
    assert (want == expected[0, 16:]).float().mean() >= 0.9
    assert (mine == got[0, 16:]).float().mean() >= 0.9
    differ = (got[0] != expected[0]).nonzero()
    first = int(differ[0]) if differ.numel() else got.shape[1]
    assert first >= 16 + 4, (got.tolist(), expected.tolist())
    kw = dict(max_new_tokens=30, min_new_tokens=30, do_sample=True, temperature=0.8, top_k=50, top_p=0.9)
    a = runner.generate(prompt, seed=3, **kw)
    assert runner.generate(prompt, seed=3, **kw).tolist() == a.tolist()
    assert runner.generate(prompt, seed=4, **kw).tolist() != a.tolist()


@pytest.mark.parametrize("prompt_len", [5, 12, 30])  # 30: past the sliding window (16) of every other layer
@pytest.mark.parametrize("batch", [1, 3])
def test_static_cache_generate_equals_dynamic(kernel, models_cpu, batch, prompt_len):
    """``cache_implementation="static"`` with our attention: the same greedy tokens (and close logits) as the
    dynamic cache, fp32 on the CPU. transformers 5.25's generate drops an unpadded batch's 2D mask under a static
    cache unless the attention's name contains "flash" (ours does not), and its flash wrapper then gave our
    attention the whole static K/V buffers: the prefill saw later prompt tokens and each step the unwritten zero
    slots (0.1-0.4 of the tokens equal). ``from_pretrained`` registers a mask function that puts the mask back
    (integrations/routes.py ``_static_cache_mask``)."""
    plain, ours = models_cpu
    gen = torch.Generator().manual_seed(batch * 100 + prompt_len)
    prompt = torch.randint(1, VOCAB, (batch, prompt_len), generator=gen)
    kw = dict(max_new_tokens=12, min_new_tokens=12, return_dict_in_generate=True, output_logits=True)
    for model in (plain, ours):
        dynamic = _greedy(model, prompt, **kw)
        static = _greedy(model, prompt, cache_implementation="static", **kw)
        assert static.sequences.tolist() == dynamic.sequences.tolist()
        for s, d in zip(static.logits, dynamic.logits):
            assert (s - d).abs().max() <= 1e-4 * d.abs().max()
    runner = kernel.DecodeRunner(ours)
    assert runner.generate(prompt, max_new_tokens=12, min_new_tokens=12, do_sample=False).tolist() == \
        dynamic.sequences.tolist()


def test_static_cache_decode_steps_use_cache_lengths(kernel, models_cpu, monkeypatch):
    """Every decode step of an unpadded static-cache generate goes through ``flash_attn_with_kvcache`` with the
    written lengths from the position ids (``_kernel_attention``), not through the flash wrapper's unpadding (which
    reads lengths on the host); only the prefill takes the wrapper. Tokens as the dynamic cache's."""
    import transformers.integrations.flash_attention as fa

    _, ours = models_cpu
    layers = ours.config.num_hidden_layers
    calls = {"kvcache": [], "wrapper": 0}
    kvcache, wrapper = kernel.attention.flash_attn_with_kvcache, fa.flash_attention_forward

    def count_kvcache(q, k_cache, v_cache, cache_seqlens=None, **kw):
        calls["kvcache"].append((k_cache.shape[1], cache_seqlens.tolist()))
        return kvcache(q, k_cache, v_cache, cache_seqlens=cache_seqlens, **kw)

    def count_wrapper(*a, **kw):
        calls["wrapper"] += 1
        return wrapper(*a, **kw)

    monkeypatch.setattr(kernel.attention, "flash_attn_with_kvcache", count_kvcache)
    monkeypatch.setattr(fa, "flash_attention_forward", count_wrapper)
    prompt = torch.randint(1, VOCAB, (2, 14), generator=torch.Generator().manual_seed(5))
    new = 6
    static = _greedy(ours, prompt, max_new_tokens=new, min_new_tokens=new, cache_implementation="static")
    assert calls["wrapper"] == layers  # the prefill
    assert len(calls["kvcache"]) == (new - 1) * layers
    # step i (0-based) writes position 14 + i: 15 + i keys, capped by a sliding layer's buffer (its window, 16)
    for i in range(new - 1):
        for length, seqlens in calls["kvcache"][i * layers:(i + 1) * layers]:
            assert seqlens == [min(15 + i, length)] * 2
    monkeypatch.undo()
    assert static.tolist() == _greedy(ours, prompt, max_new_tokens=new, min_new_tokens=new).tolist()


def test_kernel_config_registers_static_cache_mask(kernel, monkeypatch):
    """transformers' own route (``from_pretrained(..., kernel_config=kernel_config(), attn_implementation=...)``,
    accelerators only): transformers registers its flash mask for our attention when the model loads; our
    KernelConfig puts the static-cache mask back when ``set_use_kernels`` maps the model (the mapping itself is
    stubbed here: on the CPU the layouts are registered only inside our from_pretrained)."""
    from transformers import KernelConfig
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    routes = kernel.integrations.routes
    name = kernel.integrations.attention_implementation()
    model = tiny_model()
    model.set_attn_implementation(name)
    before = ALL_MASK_ATTENTION_FUNCTIONS[name]
    # What transformers' load_and_register_attn_kernel registers for a kernel with flash_attn_varlen_func.
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, ALL_MASK_ATTENTION_FUNCTIONS["flash_attention_2"])
    monkeypatch.setattr(KernelConfig, "create_compatible_mapping", lambda self, model, *a, **k: None)
    cfg = kernel.kernel_config()
    assert isinstance(cfg, KernelConfig)
    cfg.create_compatible_mapping(model)
    assert ALL_MASK_ATTENTION_FUNCTIONS[name] is routes._static_cache_mask
    ALL_MASK_ATTENTION_FUNCTIONS.register(name, before)


def test_static_cache_generate_with_padding_equals_dynamic(kernel, models_cpu):
    """Rows of different lengths (left padding, an explicit mask): the static cache's greedy tokens equal the
    dynamic cache's, including a row longer than the sliding window."""
    _, ours = models_cpu
    prompt = torch.randint(1, VOCAB, (3, 20), generator=torch.Generator().manual_seed(7))
    mask = torch.ones_like(prompt)
    mask[1, :6], mask[2, :15] = 0, 0
    prompt = prompt.masked_fill(mask == 0, 0)
    kw = dict(attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False)
    with torch.inference_mode():
        dynamic = ours.generate(prompt, **kw)
        static = ours.generate(prompt, cache_implementation="static", **kw)
    assert static.tolist() == dynamic.tolist()
