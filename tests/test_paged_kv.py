"""``attention.paged_kv.paged_window_kv`` against transformers' own read-back of a sliding layer of its paged cache
(``index_select`` of the read rows, then ``masked_scatter_`` of the new rows onto the sentinel entries), written out
here from transformers 5.25's ``SlidingAttentionCacheAllocator.update``."""

from __future__ import annotations

import pytest
import torch

SENTINEL = 1


def _transformers_rows(k_cache, v_cache, k_new, v_new, read_index):
    mask = (read_index == SENTINEL).unsqueeze(-1).unsqueeze(-1)
    k = torch.index_select(k_cache, 0, read_index)
    k.masked_scatter_(mask, k_new)
    v = torch.index_select(v_cache, 0, read_index)
    v.masked_scatter_(mask, v_new)
    return k, v


def _batch(device, pasts, q_lens, heads=2, d=32, rows=64, pad_reads=0, pad_tokens=0, dtype=torch.float32):
    """A step's read index as transformers builds it for a sliding layer: per sequence its cached rows (random
    distinct cache rows >= 2, as the ring's pages give), then one sentinel per new token; padding rows point at
    the trash row 0 and padding tokens follow the real ones."""
    g = torch.Generator().manual_seed(int(torch.randint(0, 2**31, ())))
    read, cu_k, cu_q = [], [0], [0]
    for past, q in zip(pasts, q_lens):
        read += (torch.randperm(rows - 2, generator=g)[:past] + 2).tolist() + [SENTINEL] * q
        cu_k.append(cu_k[-1] + past + q)
        cu_q.append(cu_q[-1] + q)
    read += [0] * pad_reads
    t = cu_q[-1] + pad_tokens
    k_cache = torch.randn(rows, heads, d, generator=g).to(device=device, dtype=dtype)
    v_cache = torch.randn(rows, heads, d, generator=g).to(device=device, dtype=dtype)
    # new rows as the attention layer hands them over: (1, heads, tokens, d) squeezed and transposed (strided)
    k_new = torch.randn(1, heads, t, d, generator=g).to(device=device, dtype=dtype).squeeze(0).transpose(0, 1)
    v_new = torch.randn(1, heads, t, d, generator=g).to(device=device, dtype=dtype).squeeze(0).transpose(0, 1)
    idx = lambda x: torch.tensor(x, dtype=torch.int32, device=device)  # noqa: E731
    return k_cache, v_cache, k_new, v_new, idx(read), idx(cu_k), idx(cu_q)


def _call(kernel, k_cache, v_cache, k_new, v_new, read, cu_k, cu_q):
    return kernel.attention.paged_kv.paged_window_kv(k_cache, v_cache, k_new, v_new, read, cu_k, cu_q, SENTINEL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pasts,q_lens,pad_reads,pad_tokens", [
    ([5, 0, 7], [1, 4, 1], 0, 0),             # decode rows beside a prefill with no past
    ([7] * 20, [1] * 20, 9, 3),               # a decode batch, graph padding on both axes
    ([0], [1], 0, 0),                         # one token, nothing cached
    ([30, 2], [3, 17], 40, 0),                # chunked prefills
    ([7, 7], [0, 1], 0, 0),                   # a sequence with no new token this step
])
def test_paged_window_kv_matches_transformers(kernel, device, dtype, pasts, q_lens, pad_reads, pad_tokens):
    args = _batch(device, pasts, q_lens, pad_reads=pad_reads, pad_tokens=pad_tokens, dtype=dtype)
    k_cache, v_cache, k_new, v_new, read = args[:5]
    exp_k, exp_v = _transformers_rows(k_cache, v_cache, k_new[: int(args[6][-1])], v_new[: int(args[6][-1])], read)
    got_k, got_v = _call(kernel, *args)
    assert got_k.shape == exp_k.shape and got_k.dtype == dtype and got_k.is_contiguous()
    assert torch.equal(got_k, exp_k) and torch.equal(got_v, exp_v)  # a copy: bit for bit


def test_paged_window_kv_no_reads_and_bad_rows(kernel, device):
    k_cache, v_cache, k_new, v_new, read, cu_k, cu_q = _batch(device, [3], [1])
    got_k, _ = _call(kernel, k_cache, v_cache, k_new, v_new, read[:0], cu_k, cu_q)
    assert got_k.shape == (0, 2, 32)
    bad = read.clone()
    bad[0] = 10_000  # outside the cache: NaN rows, no read
    bad[1] = -3
    got_k, got_v = _call(kernel, k_cache, v_cache, k_new, v_new, bad, cu_k, cu_q)
    assert got_k[:2].isnan().all() and got_v[:2].isnan().all()
    assert torch.equal(got_k[2:], _transformers_rows(k_cache, v_cache, k_new, v_new, read)[0][2:])
    bad = read.clone()
    bad[0] = SENTINEL  # a sentinel among the cached rows: no new token stands behind it
    got_k, got_v = _call(kernel, k_cache, v_cache, k_new, v_new, bad, cu_k, cu_q)
    assert got_k[0].isnan().all() and got_v[0].isnan().all() and not got_k[1:].isnan().any()


def test_paged_window_kv_rejects_bad_arguments(kernel, device):
    k_cache, v_cache, k_new, v_new, read, cu_k, cu_q = _batch(device, [3], [1])
    f = kernel.attention.paged_kv.paged_window_kv
    with pytest.raises(TypeError, match="read_index"):
        f(k_cache, v_cache, k_new, v_new, read.float(), cu_k, cu_q, SENTINEL)
    with pytest.raises(TypeError, match="v_cache"):
        f(k_cache, v_cache.half(), k_new, v_new, read, cu_k, cu_q, SENTINEL)
    with pytest.raises(ValueError, match="k_new"):
        f(k_cache, v_cache, k_new[:, :1], v_new, read, cu_k, cu_q, SENTINEL)
    with pytest.raises(ValueError, match="cu_seqlens"):
        f(k_cache, v_cache, k_new, v_new, read, cu_k, cu_q[:1], SENTINEL)
    with pytest.raises(ValueError, match="read_index"):
        f(k_cache, v_cache, k_new, v_new, read[None], cu_k, cu_q, SENTINEL)
