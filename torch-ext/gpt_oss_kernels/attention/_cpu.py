"""CPU implementation of the attention op (vectorised torch, fp32 accumulation).

Same contract as the Triton kernel (see _triton_attn.py): rows are processed per sequence, queries
in chunks so that the score matrix stays small, GQA by grouping query heads per KV head (no copy
of K/V per query head), the sink added to the denominator only.
"""

from __future__ import annotations

from typing import Optional

import torch

_Q_CHUNK = 512


def _one_sequence(q, k, v, sinks, scale, window_left, window_right, out):
    # q (Sq, Hq, D), k/v (Sk, Hkv, D); writes out (Sq, Hq, D).
    sq, hq, d = q.shape
    sk, hkv, _ = k.shape
    g = hq // hkv
    kf = k.float().permute(1, 2, 0)  # (Hkv, D, Sk)
    vf = v.float().permute(1, 0, 2)  # (Hkv, Sk, D)
    kpos = torch.arange(sk)
    sink = None
    if sinks is not None:
        sink = sinks.float().reshape(hkv, g, 1, 1)
    for c0 in range(0, sq, _Q_CHUNK):
        c1 = min(sq, c0 + _Q_CHUNK)
        qc = q[c0:c1].float().permute(1, 0, 2).reshape(hkv, g, c1 - c0, d)  # (Hkv, G, C, D)
        s = torch.matmul(qc.reshape(hkv, g * (c1 - c0), d), kf).reshape(hkv, g, c1 - c0, sk) * scale
        qpos = torch.arange(c0, c1)[:, None] + (sk - sq)
        visible = torch.ones(c1 - c0, sk, dtype=torch.bool)
        if window_right >= 0:
            visible &= kpos[None, :] <= qpos + window_right
        if window_left >= 0:
            visible &= kpos[None, :] >= qpos - window_left
        s = s.masked_fill(~visible, float("-inf"))
        m = s.amax(-1, keepdim=True) if sk > 0 else torch.full((hkv, g, c1 - c0, 1), float("-inf"))
        if sink is not None:
            m = torch.maximum(m, sink.expand_as(m))
        m = torch.where(torch.isinf(m) & (m < 0), torch.zeros_like(m), m)
        p = torch.exp(s - m)
        denom = p.sum(-1, keepdim=True)
        if sink is not None:
            denom = denom + torch.exp(sink - m)
        denom = torch.where(denom == 0, torch.ones_like(denom), denom)
        o = torch.matmul(p.reshape(hkv, g * (c1 - c0), sk), vf).reshape(hkv, g, c1 - c0, d) / denom
        out[c0:c1] = o.reshape(hq, c1 - c0, d).permute(1, 0, 2).to(out.dtype)


def attn_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    *,
    cu_q: Optional[torch.Tensor],
    cu_k: Optional[torch.Tensor],
    seqlens_k: Optional[torch.Tensor],
    block_table: Optional[torch.Tensor],
    sinks: Optional[torch.Tensor],
    batch: int,
    seq_q_fixed: int,
    scale: float,
    window_left: int,
    window_right: int,
    **_,
) -> torch.Tensor:
    cq = cu_q.tolist() if cu_q is not None else [b * seq_q_fixed for b in range(batch + 1)]
    ck = cu_k.tolist() if cu_k is not None else None
    lens = seqlens_k.tolist() if seqlens_k is not None else None
    for b in range(batch):
        qs = q[cq[b] : cq[b + 1]]
        if ck is not None:
            ks, vs = k[ck[b] : ck[b + 1]], v[ck[b] : ck[b + 1]]
        elif block_table is not None:
            page = k.shape[1]
            n = lens[b]
            blocks = block_table[b, : (n + page - 1) // page].long()
            ks = k[blocks].reshape(-1, *k.shape[2:])[:n]
            vs = v[blocks].reshape(-1, *v.shape[2:])[:n]
        else:
            ks, vs = k[b, : lens[b]], v[b, : lens[b]]
        if qs.shape[0]:
            _one_sequence(qs, ks, vs, sinks, scale, window_left, window_right, out[cq[b] : cq[b + 1]])
    return out
