"""Decode with the host out of the loop: N decode steps of a transformers causal LM as one CUDA graph.

``DecodeRunner(model).generate(input_ids, max_new_tokens=..., ...)`` does what ``model.generate`` does for
greedy and sampled decoding (the arguments that matter: ``max_new_tokens``, ``min_new_tokens``,
``eos_token_id``, ``pad_token_id``, ``do_sample``, ``temperature``, ``top_k``, ``top_p``, ``streamer``), with:

* prefill run eagerly (any prompt length, nothing compiled or captured per length);
* every decode step on the device: the forward with a static KV cache, the token choice (greedy, or temperature /
  top-k / top-p sampling from a seeded ``torch.Generator``), the cache position update, the EOS / max-length flags
  (finished rows keep emitting ``pad_token_id``, as generate does);
* on CUDA, ``steps_per_launch`` (N) consecutive steps captured as one CUDA graph: the host replays it once per N
  tokens and reads the finished flags only then. Captured once per (batch, cache-length bucket, N, sampling
  kind) and reused by later calls (``capture_seconds``); on the CPU the same steps run eagerly.

The runner owns its KV cache (``_RunnerCache``: every layer, sliding ones included, keeps ``max_cache_len``
positions in ``(B, L, Hkv, D)``, so a step has the same shapes and control flow at every position) and runs
attention through this package's ``flash_attn_with_kvcache`` with per-row cache lengths held on the device (no
mask tensors, no host sync), whatever ``attn_implementation`` the model was loaded with. It needs a model whose
attention modules call ``cache.update(key, value, layer_idx)`` and the attention interface with ``scaling`` /
``sliding_window`` / ``s_aux`` (transformers' GPT-OSS; tested with it, plain and through our
``from_pretrained``). Prompts are unpadded (an ``attention_mask`` with zeros raises ``ValueError``).

Rows of a batch still run after they finish, and a captured launch runs all its N steps (up to N - 1 past the
last row's end or ``max_new_tokens``): the price of checking the flags once per launch. Eager launches stop at
``max_new_tokens``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
from dataclasses import dataclass, field

import torch

from ..attention import flash_attn_with_kvcache
from ..attention.rotary import rotary_kv_cache, rotary_pos_emb

_ATTENTION_NAME = "gpt_oss_kernels_decode_runner"


def _runner_attention(module, query, key, value, attention_mask, scaling=None, sliding_window=None, s_aux=None,
                      **_):
    """transformers' attention interface during the runner's forwards: ``query (B, Hq, S, D)``; ``key`` / ``value``
    are the runner cache's ``(B, L, Hkv, D)`` buffers (already holding this step's keys); ``attention_mask`` is the
    per-row number of valid cache positions after this step's write, ``(B,)`` int32 on the device."""
    window = (sliding_window - 1, 0) if sliding_window else (-1, -1)
    out = flash_attn_with_kvcache(query.transpose(1, 2), key, value, cache_seqlens=attention_mask,
                                  softmax_scale=scaling, causal=True, window_size=window, s_aux=s_aux)
    return out, None


def _register_attention() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(_ATTENTION_NAME, _runner_attention)


class _RunnerCache:
    """The KV cache the model writes during the runner's forwards (what it calls on a transformers ``Cache``:
    ``update``). Buffers are allocated on the first write of each layer; the write positions come from the
    runner's state (``write_index``: device tensor), so one step is the same kernels at every position."""

    is_compileable = True
    fuse_rotary = True  # rotary_update in one launch (False: rotary_pos_emb, then update: the A/B of the fusion)

    def __init__(self, state: "_State") -> None:
        self.state = state
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}

    def _buffers(self, layer_idx, k, v):
        """The layer's (B, L, Hkv, D) key and value buffers; ``k`` / ``v`` (B, S, Hkv, D) this step's."""
        if layer_idx not in self.keys:
            b, _, h, d = k.shape
            shape = (b, self.state.max_cache_len, h)
            self.keys[layer_idx] = torch.zeros(*shape, d, dtype=k.dtype, device=k.device)
            self.values[layer_idx] = torch.zeros(*shape, v.shape[-1], dtype=v.dtype, device=v.device)
        return self.keys[layer_idx], self.values[layer_idx]

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        k = key_states.transpose(1, 2)  # (B, S, Hkv, D)
        v = value_states.transpose(1, 2)
        keys, values = self._buffers(layer_idx, k, v)
        keys.index_copy_(1, self.state.write_index, k)
        values.index_copy_(1, self.state.write_index, v)
        return keys, values

    def rotary_update(self, q, k, v, cos, sin, layer_idx):
        """``layers.Attention``'s rotary and cache write in one launch (``rotary_kv_cache``): q, k, v (B, H, S, D)
        before rotary -> (rotated q, the layer's key and value buffers, holding this step's rotated k and v)."""
        keys, values = self._buffers(layer_idx, k.transpose(1, 2), v.transpose(1, 2))
        if not self.fuse_rotary or k.dtype != q.dtype or v.dtype != q.dtype or keys.dtype != q.dtype:
            q, k = rotary_pos_emb(q, k, cos, sin)
            return (q, *self.update(k, v, layer_idx))
        return rotary_kv_cache(q, k, v, cos, sin, keys, values, self.state.write_index), keys, values

    def get_seq_length(self, layer_idx: int = 0):
        return self.state.pos


@dataclass
class _State:
    """Device tensors of one (batch, cache bucket, N, sampling kind): read and written in place by the steps, so a
    captured graph replays against them."""

    batch: int
    max_cache_len: int
    capacity: int  # generated-token slots (max new tokens of the bucket + N of slack for the last launch)
    device: torch.device
    tokens: torch.Tensor = None  # (B, 1) the token fed to the next step
    pos: torch.Tensor = None  # (1,) tokens in the cache
    write_index: torch.Tensor = None  # (S,) cache positions of the current forward
    seqlens: torch.Tensor = None  # (B,) int32 valid cache positions after the current forward's write
    count: torch.Tensor = None  # (1,) tokens generated
    n_out: torch.Tensor = None  # (1,) columns generate would return: steps taken while some row was unfinished
    finished: torch.Tensor = None  # (B,) bool
    out: torch.Tensor = None  # (B, capacity) generated tokens
    max_new: torch.Tensor = None  # (1,)
    min_new: torch.Tensor = None  # (1,)
    eos: torch.Tensor = None  # (E,) with E >= 1 (a never-emitted -1 when there is no EOS)
    pad: torch.Tensor = None  # (1,)
    temperature: torch.Tensor = None  # (1,) float32
    top_p: torch.Tensor = None  # (1,) float32
    generator: torch.Generator = None
    cache: _RunnerCache = None
    graph: object = None
    steps_cuda: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        long = dict(dtype=torch.long, device=self.device)
        self.tokens = torch.zeros(self.batch, 1, **long)
        self.pos = torch.zeros(1, **long)
        self.write_index = torch.zeros(1, **long)
        self.seqlens = torch.zeros(self.batch, dtype=torch.int32, device=self.device)
        self.count = torch.zeros(1, **long)
        self.n_out = torch.zeros(1, **long)
        self.finished = torch.zeros(self.batch, dtype=torch.bool, device=self.device)
        self.out = torch.zeros(self.batch, self.capacity, **long)
        self.max_new = torch.zeros(1, **long)
        self.min_new = torch.zeros(1, **long)
        self.pad = torch.zeros(1, **long)
        self.temperature = torch.ones(1, dtype=torch.float32, device=self.device)
        self.top_p = torch.ones(1, dtype=torch.float32, device=self.device)
        self.generator = torch.Generator(device=self.device)
        self.cache = _RunnerCache(self)


@dataclass(frozen=True)
class _Sampling:
    do_sample: bool
    top_k: int  # 0: off
    top_p: bool  # whether the top-p filter runs (its value is a device tensor)
    n_eos: int


class DecodeRunner:
    """Greedy / sampled decoding of a transformers causal LM (GPT-OSS) with N decode steps per host launch.

    ``runner = DecodeRunner(model, steps_per_launch=8)`` once, then ``runner.generate(input_ids, ...)`` where the
    code called ``model.generate(input_ids, ...)``: same output (the prompt followed by the new tokens, finished
    rows padded with ``pad_token_id``, as many columns as the longest row needed), greedy token for token.

    ``steps_per_launch``: decode steps per CUDA-graph replay (host check of the finished flags every N tokens).
    ``cache_bucket``: the cache length (prompt + new tokens + N) is rounded up to a multiple of this; each
    (batch, bucket) is captured once. ``use_cuda_graph``: False runs the same steps eagerly on CUDA too.
    After a call, ``last_stats`` holds launches (graph replays, or groups of N eager steps), generated tokens,
    capture seconds and wall seconds of that call; ``capture_seconds`` the one-time cost per captured key.
    """

    def __init__(self, model, *, steps_per_launch: int = 8, cache_bucket: int = 256, use_cuda_graph: bool = True):
        if not isinstance(steps_per_launch, int) or steps_per_launch < 1:
            raise ValueError(f"steps_per_launch must be an int >= 1, got {steps_per_launch!r}")
        if not isinstance(cache_bucket, int) or cache_bucket < 1:
            raise ValueError(f"cache_bucket must be an int >= 1, got {cache_bucket!r}")
        self.model = model
        self.steps_per_launch = steps_per_launch
        self.cache_bucket = cache_bucket
        self.use_cuda_graph = use_cuda_graph
        self.capture_seconds: dict = {}
        self.last_stats: dict = {}
        self._states: dict = {}
        # transformers 5.25 calls the cache argument `cache`, 5.22-5.24 `past_key_values`
        params = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in params else "past_key_values"
        _register_attention()

    # --- the device-side step ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _runner_attention(self):
        config = self.model.config
        before = config._attn_implementation
        config._attn_implementation = _ATTENTION_NAME
        try:
            yield
        finally:
            config._attn_implementation = before

    def _forward(self, st: _State, ids: torch.Tensor) -> torch.Tensor:
        """Logits (B, V) float32 of the last position of ``ids`` (B, S) written at cache positions pos..pos+S-1."""
        s = ids.shape[1]
        positions = st.pos + torch.arange(s, device=st.device)
        st.write_index = positions  # the cache reads it on every layer's write
        st.seqlens.copy_((st.pos + s).to(torch.int32).expand(st.batch))
        masks = {"full_attention": st.seqlens, "sliding_attention": st.seqlens}
        out = self.model(input_ids=ids, position_ids=positions.expand(st.batch, s), attention_mask=masks,
                         use_cache=True, logits_to_keep=1, **{self._cache_kwarg: st.cache})
        st.pos.add_(s)
        return out.logits[:, -1].float()

    def _choose(self, st: _State, kind: _Sampling, scores: torch.Tensor) -> None:
        """Token choice and bookkeeping, on the device: what generate's loop does between two forwards."""
        if kind.n_eos:  # min_new_tokens: EOS banned until then (MinNewTokensLengthLogitsProcessor)
            banned = torch.where(st.count < st.min_new, float("-inf"), scores.index_select(1, st.eos))
            scores = scores.index_copy(1, st.eos, banned)
        if kind.do_sample:
            # transformers' order: temperature, top-k, top-p (TemperatureLogitsWarper, TopKLogitsWarper,
            # TopPLogitsWarper with min_tokens_to_keep=1).
            scores = scores / st.temperature
            if kind.top_k:
                kth = torch.topk(scores, min(kind.top_k, scores.shape[-1]), dim=-1).values[:, -1:]
                scores = scores.masked_fill(scores < kth, float("-inf"))
            if kind.top_p:
                sorted_scores, order = torch.sort(scores, dim=-1)
                remove = sorted_scores.softmax(-1).cumsum(-1) <= 1 - st.top_p
                remove[:, -1] = False
                scores = scores.masked_fill(remove.scatter(1, order, remove), float("-inf"))
            # Exponential race (Gumbel-max): argmax p_i / E_i with E_i ~ Exp(1) draws i with probability p_i; unlike
            # torch.multinomial it is capturable and draws from the generator registered with the graph.
            noise = torch.empty_like(scores).exponential_(generator=st.generator)
            chosen = (scores.softmax(-1) / noise).argmax(-1)
        else:
            chosen = scores.argmax(-1)
        active = ~st.finished
        chosen = torch.where(active, chosen, st.pad)
        st.out.index_copy_(1, st.count, chosen[:, None])
        st.n_out.add_(active.any().long())
        if kind.n_eos:
            st.finished.logical_or_((chosen[:, None] == st.eos[None, :]).any(-1))
        st.count.add_(1)
        st.finished.logical_or_(st.count >= st.max_new)
        st.tokens.copy_(chosen[:, None])

    def _steps(self, st: _State, kind: _Sampling, n: int) -> None:
        for _ in range(n):
            self._choose(st, kind, self._forward(st, st.tokens))

    # --- host side -----------------------------------------------------------------------------------

    def _state(self, batch: int, prompt_len: int, max_new: int, kind: _Sampling, device) -> _State:
        n = self.steps_per_launch
        need = prompt_len + max_new + n
        length = math.ceil(need / self.cache_bucket) * self.cache_bucket
        key = (batch, length, n, kind, str(device))
        st = self._states.get(key)
        if st is None:
            st = _State(batch=batch, max_cache_len=length, capacity=length, device=device)
            st.eos = torch.full((max(kind.n_eos, 1),), -1, dtype=torch.long, device=device)
            self._states[key] = st
        st.extra["key"] = key
        return st

    def _capture(self, st: _State, kind: _Sampling) -> float:
        """Allocates the cache (a one-token prefill), warms the steps up on a side stream (Triton compiles, the
        caching allocator settles) and captures N steps. Returns the seconds it took."""
        t0 = time.perf_counter()
        n = self.steps_per_launch
        self._reset(st, max_new=st.capacity, min_new=0)
        self._forward(st, st.tokens)
        side = torch.cuda.Stream(device=st.device)
        side.wait_stream(torch.cuda.current_stream(st.device))
        with torch.cuda.stream(side):
            self._steps(st, kind, n)
        torch.cuda.current_stream(st.device).wait_stream(side)
        torch.cuda.synchronize(st.device)
        graph = torch.cuda.CUDAGraph()
        if kind.do_sample:
            graph.register_generator_state(st.generator)
        with torch.cuda.graph(graph):  # a pool of its own: no intermediate is shared with another key's graph
            self._steps(st, kind, n)
        torch.cuda.synchronize(st.device)
        st.graph = graph
        seconds = time.perf_counter() - t0
        self.capture_seconds[st.extra["key"]] = round(seconds, 3)
        return seconds

    @staticmethod
    def _reset(st: _State, *, max_new: int, min_new: int) -> None:
        st.pos.zero_()
        st.count.zero_()
        st.n_out.zero_()
        st.finished.zero_()
        st.tokens.zero_()
        st.max_new.fill_(max_new)
        st.min_new.fill_(min_new)

    def _launch(self, st: _State, kind: _Sampling, remaining: int) -> int:
        """One launch: the captured N steps, or (eager) up to N steps, none past max_new_tokens. Returns the steps run."""
        if st.graph is not None:
            st.graph.replay()
            return self.steps_per_launch
        n = min(self.steps_per_launch, remaining)
        self._steps(st, kind, n)
        return n

    def _settings(self, max_new_tokens, min_new_tokens, eos_token_id, pad_token_id, do_sample, temperature, top_k,
                  top_p):
        """generate's resolution: arguments, else the model's generation_config."""
        gc = getattr(self.model, "generation_config", None)

        def pick(value, name, default):
            if value is not None:
                return value
            got = getattr(gc, name, None) if gc is not None else None
            return default if got is None else got

        max_new = pick(max_new_tokens, "max_new_tokens", None)
        if max_new is None:
            raise ValueError("max_new_tokens is required (the model's generation_config sets none)")
        if not isinstance(max_new, int) or max_new < 1:
            raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new!r}")
        min_new = pick(min_new_tokens, "min_new_tokens", 0)
        if not isinstance(min_new, int) or min_new < 0:
            raise ValueError(f"min_new_tokens must be an int >= 0, got {min_new!r}")
        eos = pick(eos_token_id, "eos_token_id", None)
        eos = [] if eos is None else ([eos] if isinstance(eos, int) else list(eos))
        pad = pick(pad_token_id, "pad_token_id", None)
        if pad is None:
            pad = eos[0] if eos else 0
        do_sample = bool(pick(do_sample, "do_sample", False))
        temperature = float(pick(temperature, "temperature", 1.0))
        top_k = int(pick(top_k, "top_k", 0) or 0)
        top_p = float(pick(top_p, "top_p", 1.0))
        if do_sample:
            if not temperature > 0:
                raise ValueError(f"temperature must be > 0 when sampling, got {temperature}")
            if top_k < 0:
                raise ValueError(f"top_k must be >= 0, got {top_k}")
            if not 0 < top_p <= 1:
                raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        kind = _Sampling(do_sample, top_k if do_sample else 0, do_sample and top_p < 1, len(eos))
        return max_new, min_new, eos, pad, temperature, top_p, kind

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, *, max_new_tokens: int | None = None,
                 min_new_tokens: int | None = None, eos_token_id=None, pad_token_id: int | None = None,
                 do_sample: bool | None = None, temperature: float | None = None, top_k: int | None = None,
                 top_p: float | None = None, streamer=None, attention_mask: torch.Tensor | None = None,
                 seed: int | None = None) -> torch.Tensor:
        """``model.generate`` for unpadded prompts ``input_ids (B, P)``: returns ``(B, P + n)`` long, ``n`` the
        new tokens of the longest row. ``seed``: the sampling generator's seed (default: drawn from torch's
        global generator, so ``torch.manual_seed`` makes sampling reproducible as it does for generate)."""
        t_start = time.perf_counter()
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype != torch.long:
            raise TypeError(f"input_ids must be a (B, P) torch.long tensor, got "
                            f"{getattr(input_ids, 'dtype', type(input_ids))} {tuple(getattr(input_ids, 'shape', ()))}")
        batch, prompt_len = input_ids.shape
        if batch == 0 or prompt_len == 0:
            raise ValueError(f"input_ids must hold at least one row and one token, got {tuple(input_ids.shape)}")
        device = self.model.device
        if input_ids.device != device:
            raise ValueError(f"input_ids must be on the model's device ({device}), got {input_ids.device}")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError("DecodeRunner takes unpadded prompts: attention_mask has zeros (use model.generate)")
        max_new, min_new, eos, pad, temperature, top_p, kind = self._settings(
            max_new_tokens, min_new_tokens, eos_token_id, pad_token_id, do_sample, temperature, top_k, top_p)

        st = self._state(batch, prompt_len, max_new, kind, device)
        if eos:
            st.eos.copy_(torch.tensor(eos, dtype=torch.long))
        st.pad.fill_(pad)
        st.temperature.fill_(temperature)
        st.top_p.fill_(top_p)
        capture_s = 0.0
        with self._runner_attention():
            graphed = self.use_cuda_graph and device.type == "cuda"
            if graphed and st.graph is None:
                capture_s = self._capture(st, kind)
            st.generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
            self._reset(st, max_new=max_new, min_new=min_new)
            if streamer is not None:
                streamer.put(input_ids.cpu())
            self._choose(st, kind, self._forward(st, input_ids))  # prefill, eagerly, and the first token
            done_steps, launches, streamed = 1, 0, 0
            done = max_new <= 1 or bool(st.finished.all())
            while True:
                if streamer is not None:
                    valid = min(done_steps, max_new)
                    chunk = st.out[:, streamed:valid]
                    if done:
                        chunk = chunk[:, : max(int(st.n_out) - streamed, 0)]
                    if chunk.shape[1]:
                        streamer.put(chunk.cpu())
                    streamed += chunk.shape[1]
                if done:
                    break
                done_steps += self._launch(st, kind, max_new - done_steps)
                launches += 1
                done = done_steps >= max_new or bool(st.finished.all())
        n = int(st.n_out)
        if streamer is not None:
            streamer.end()
        result = torch.cat([input_ids, st.out[:, :n]], dim=1)
        self.last_stats = dict(new_tokens=n, launches=launches, steps_per_launch=self.steps_per_launch,
                               launches_per_token=round(launches / max(n, 1), 4), capture_s=round(capture_s, 3),
                               graphed=graphed, max_cache_len=st.max_cache_len,
                               wall_s=round(time.perf_counter() - t_start, 4))
        return result
