#!/usr/bin/env python3
"""Every Triton attention variant under TRITON_INTERPRET=1 (CPU, no GPU) against the float64
reference: the general kernel's prefill configurations (aligned / unaligned window start, narrow diagonal
blocks, one masked loop), the sliding-window kernel `_window_fwd`, split decode with the separate
`_combine` and with the fused last-program merge, the Sq = 1 decode kernel `_decode`; and the paged-cache
read-back of a sliding layer (`_triton_paged_kv.py`) against transformers' index_select + masked_scatter.

    TRITON_INTERPRET=1 python scripts/attn_interpret_check.py
"""

from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
import torch  # noqa: E402
from interpret_common import load  # noqa: E402

ta = load("attention/_triton_attn.py")
ref = load("reference.py")
HQ, HKV, D = 8, 2, 32
dt = torch.float16
worst = 0.0


def check(tag, out, expected):
    global worst
    err = ((out.double() - expected).abs().max() / expected.abs().max()).item()
    worst = max(worst, err)
    ok = err < 2e-3 and torch.isfinite(out).all()
    print(f"{'ok ' if ok else 'BAD'} {err:.1e}  {tag}", flush=True)
    if not ok:
        sys.exit(1)


def varlen(lens_q, lens_k, window, causal, sinks, cfg, knob="PREFILL_OVERRIDE"):
    """Packed varlen prefill with an explicit configuration: of the general kernel (PREFILL_OVERRIDE) or
    of `_window_fwd` (WINDOW_OVERRIDE: causal windows only)."""
    cu_q = torch.tensor([0] + torch.tensor(lens_q).cumsum(0).tolist(), dtype=torch.int32)
    cu_k = torch.tensor([0] + torch.tensor(lens_k).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(sum(lens_q), HQ, D, dtype=dt)
    k = torch.randn(sum(lens_k), HKV, D, dtype=dt)
    v = torch.randn_like(k)
    s = torch.randn(HQ) if sinks else None
    left, right = window
    if causal:
        right = 0
    out = torch.full_like(q, float("nan"))
    setattr(ta, knob, cfg)
    ta.attn_fwd(q, k, v, out, cu_q=cu_q, cu_k=cu_k, seqlens_k=None, block_table=None, sinks=s, batch=len(lens_q),
                seq_q_fixed=0, max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k), scale=0.125,
                window_left=left, window_right=right)
    setattr(ta, knob, None)
    exp = ref.attention_varlen(q.double(), k.double(), v.double(), cu_q, cu_k, scale=0.125,
                               sinks=None if s is None else s.double(), causal=causal, window=window)
    check(f"prefill {knob} {cfg} window={window} causal={causal} sinks={sinks} lens_q={lens_q} lens_k={lens_k}", out, exp)


def decode(b, sq, cache, paged, fused, splits, window):
    kc = torch.randn(b, cache, HKV, D, dtype=dt)
    vc = torch.randn_like(kc)
    q = torch.randn(b * sq, HQ, D, dtype=dt)
    lens = torch.randint(sq, cache + 1, (b,), dtype=torch.int32)
    s = torch.randn(HQ)
    bt = None
    k_in, v_in = kc, vc
    if paged:
        page = 16
        n = b * cache // page
        perm = torch.randperm(n)
        k_in = kc.reshape(n, page, HKV, D)[perm.argsort()].contiguous()
        v_in = vc.reshape(n, page, HKV, D)[perm.argsort()].contiguous()
        bt = perm.reshape(b, cache // page).to(torch.int32)
    out = torch.full_like(q, float("nan"))
    ta.FUSED_COMBINE = fused
    ta._INTERPRET_SPLITS = splits
    left, right = window
    ta.attn_fwd(q, k_in, v_in, out, cu_q=None, cu_k=None, seqlens_k=lens, block_table=bt, sinks=s, batch=b,
                seq_q_fixed=sq, max_seqlen_q=sq, max_seqlen_k=cache, scale=0.125, window_left=left, window_right=0)
    exp = torch.cat([ref.attention(q[i * sq:(i + 1) * sq].double(), kc[i, :lens[i]].double(), vc[i, :lens[i]].double(),
                                   scale=0.125, sinks=s.double(), causal=True, window=window) for i in range(b)])
    check(f"decode b={b} sq={sq} cache={cache} paged={paged} fused={fused} splits={splits} window={window}", out, exp)
    if fused and ta._COUNTERS:
        assert int(ta._COUNTERS[-1].abs().sum()) == 0, "counters not reset"


torch.manual_seed(0)
cfgs = [
    dict(BLOCK_M=32, BLOCK_N=16),
    dict(BLOCK_M=32, BLOCK_N=16, ALIGN=True),
    dict(BLOCK_M=64, BLOCK_N=32, BLOCK_N_R=16),
    dict(BLOCK_M=32, BLOCK_N=32, BLOCK_N_R=16, ALIGN=True),
    dict(BLOCK_M=32, BLOCK_N=16, ONE_LOOP=True),
    dict(BLOCK_M=32, BLOCK_N=16, BLOCK_N_R=16, TILES=2),
    dict(BLOCK_M=32, BLOCK_N=16, TILES=4),
]
for cfg in cfgs:
    for window, causal in (((11, 11), True), ((-1, -1), True), ((5, 5), False), ((-1, -1), False)):
        varlen([1, 0, 45, 9, 70], [1, 5, 45, 20, 70], window, causal, True, cfg)
varlen([70], [70], (11, 11), True, False, cfgs[2])
# `_window_fwd`: windows of 0 / 5 / 16 / 40 keys back, stacked heads
for cfg in (dict(BLOCK_P=16), dict(BLOCK_P=32), dict(BLOCK_P=16, HEADS_PER_STEP=2)):
    for left in (0, 5, 16, 40):
        varlen([1, 0, 45, 9, 70], [1, 5, 45, 20, 70], (left, left), True, True, cfg, "WINDOW_OVERRIDE")
    varlen([70, 33], [70, 33], (40, 40), True, False, cfg, "WINDOW_OVERRIDE")
ta.FUSED_MAX_SPLITS = 64
for fused in (False, True):
    for splits in (2, 3, 5):
        decode(2, 1, 128, False, fused, splits, (-1, -1))
    decode(2, 1, 128, True, fused, 4, (-1, -1))
    decode(2, 3, 128, False, fused, 3, (-1, -1))
    decode(2, 1, 128, False, fused, 4, (40, 40))
# `_decode` (Sq = 1) + `_combine`: batched and paged caches, windows, split counts
ta.SQ1_DECODE = True
for splits in (2, 3, 5):
    decode(3, 1, 128, False, False, splits, (-1, -1))
decode(2, 1, 128, True, False, 4, (-1, -1))
decode(2, 1, 128, False, False, 3, (40, 40))
decode(2, 1, 128, True, False, 3, (40, 40))


def paged_window(pasts, q_lens, pad_reads, heads=HKV, d=D, rows=64, sentinel=1):
    """Read rows of a sliding layer as transformers lists them (cached rows, then one sentinel per new token;
    trash row 0 as padding) through `paged_window_kv_cuda`, bit for bit against index_select + masked_scatter."""
    read, cu_k, cu_q = [], [0], [0]
    for past, q in zip(pasts, q_lens):
        read += (torch.randperm(rows - 2)[:past] + 2).tolist() + [sentinel] * q
        cu_k.append(cu_k[-1] + past + q)
        cu_q.append(cu_q[-1] + q)
    read = torch.tensor(read + [0] * pad_reads, dtype=torch.int32)
    kc, vc = torch.randn(rows, heads, d), torch.randn(rows, heads, d)
    kn, vn = (torch.randn(1, heads, cu_q[-1], d).squeeze(0).transpose(0, 1) for _ in range(2))
    got = pk.paged_window_kv_cuda(kc, vc, kn, vn, read, torch.tensor(cu_k, dtype=torch.int32),
                                  torch.tensor(cu_q, dtype=torch.int32), sentinel)
    mask = (read == sentinel)[:, None, None]
    for g, cache, new in zip(got, (kc, vc), (kn, vn)):
        exp = cache.index_select(0, read).masked_scatter_(mask, new)
        ok = torch.equal(g, exp)
        print(f"{'ok ' if ok else 'BAD'} paged_window_kv pasts={pasts} q_lens={q_lens} pad={pad_reads} heads={heads}",
              flush=True)
        if not ok:
            sys.exit(1)


pk = load("attention/_triton_paged_kv.py")
paged_window([5, 0, 7], [1, 4, 1], 0)
paged_window([7] * 20, [1] * 20, 9)
paged_window([30, 2], [3, 17], 40)
paged_window([7, 7], [0, 1], 0, heads=3, d=16)
# rows nothing stands behind (outside the cache, a sentinel among the cached rows): NaN, no read
kc, vc, kn, vn = torch.randn(8, 1, 16), torch.randn(8, 1, 16), torch.randn(1, 1, 16), torch.randn(1, 1, 16)
rows = pk.paged_window_kv_cuda(kc, vc, kn, vn, torch.tensor([99, 1, 3, 1], dtype=torch.int32),
                               torch.tensor([0, 4], dtype=torch.int32), torch.tensor([0, 1], dtype=torch.int32), 1)[0]
ok = rows[:2].isnan().all() and torch.equal(rows[2], kc[3]) and torch.equal(rows[3], kn[0])
print(f"{'ok ' if ok else 'BAD'} paged_window_kv NaN rows", flush=True)
if not ok:
    sys.exit(1)
print(f"all ok, worst rel. err {worst:.1e}")
