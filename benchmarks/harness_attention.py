"""Attention rows for the harness (GPT-OSS shapes: 64 q heads, 8 kv heads, head_dim 64, sinks, bf16).

- prefill, 8192 tokens, full causal: TFLOP/s with causal FLOPs counted once (4 * S * S / 2 * D * Hq);
  floor = those FLOPs at the measured bf16 matmul rate.
- prefill, 8192 tokens, 128-token sliding window (window_size=(127, 127), as transformers passes it):
  floor = max(bytes of q, k, v, out at the copy bandwidth, visible-pair FLOPs at the matmul rate).
- decode, one query token against an 8192-token cache, batch 1 and 32 (contiguous and paged):
  floor = bytes of K and V read at the measured copy bandwidth.
Our rows are device time per call from CUDA-graph replays over rotating input sets that together
exceed 3x L2 (prefill: 2 sets of 151 MB; decode B=1: 10 caches of 16.8 MB), so every call reads from
DRAM and no host launch cost is counted. Up to v2 the prefill rows were eager do_bench medians
(which include the host's launch cost when the host is slower than the kernel; still reported as
`eager_us`) and decode replayed one cache per graph (reported as `same_cache_us`: at B=1 that
counts the replay's own launch overhead once per call). Rotary: graph replays over 2 sets too.
Anchors in the same run: transformers' GPT-OSS eager_attention_forward, and FlexAttention (compiled)
with the sink applied through its returned log-sum-exp: out * sigmoid(lse - sink).
"""

from __future__ import annotations

import math

import torch

from harness import floor_us, median_us, median_us_graph, rotation, row

HQ, HKV, D = 64, 8, 64
S = 8192
WINDOW = 128


class _Host(torch.nn.Module):
    """What eager_attention_forward reads from the attention module."""

    def __init__(self, sinks):
        super().__init__()
        self.sinks = torch.nn.Parameter(sinks, requires_grad=False)
        self.num_key_value_groups = HQ // HKV
        self.training = False


def _eager(q4, k4, v4, mask, host):
    from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward

    return eager_attention_forward(host, q4, k4, v4, mask, scaling=D**-0.5)[0]


def _flex_fns():
    from torch.nn.attention.flex_attention import flex_attention

    flex = torch.compile(flex_attention, dynamic=False)

    def run(q4, k4, v4, block_mask, sinks):
        out, lse = flex(q4, k4, v4, block_mask=block_mask, enable_gqa=True, scale=D**-0.5, return_lse=True)
        w = torch.sigmoid(lse - sinks.float()[None, :, None])  # the sink's share of the denominator removed
        return (out.float() * w[..., None]).to(q4.dtype)

    return run


def _additive_mask(sq, sk, window, device):
    qpos = torch.arange(sq, device=device)[:, None] + (sk - sq)
    kpos = torch.arange(sk, device=device)[None, :]
    ok = kpos <= qpos
    if window:
        ok &= kpos > qpos - window
    m = torch.zeros(sq, sk, device=device, dtype=torch.bfloat16)
    return m.masked_fill(~ok, float("-inf"))[None, None]


def _rel(a, b):
    return ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    from torch.nn.attention.flex_attention import create_block_mask

    rows: list[dict] = []
    dev = "cuda"
    bf = torch.bfloat16
    sinks = torch.randn(HQ, device=dev, dtype=torch.float32)
    host = _Host(sinks.to(bf)).to(dev)
    flex = _flex_fns()

    # --- prefill, full causal and sliding window -------------------------------------------
    q = torch.randn(S, HQ, D, device=dev, dtype=bf)
    k = torch.randn(S, HKV, D, device=dev, dtype=bf)
    v = torch.randn(S, HKV, D, device=dev, dtype=bf)
    cu = torch.tensor([0, S], dtype=torch.int32, device=dev)
    q4, k4, v4 = (t.transpose(0, 1)[None] for t in (q, k, v))  # (1, H, S, D) views
    q4c, k4c, v4c = (t.contiguous() for t in (q4, k4, v4))
    for name, window in (("prefill S=8192 full causal", None), ("prefill S=8192 sliding 128", WINDOW)):
        ws = (window - 1, window - 1) if window else (-1, -1)
        fn = lambda: kernel.flash_attn_varlen_func(q, k, v, cu, cu, S, S, causal=True, window_size=ws, s_aux=sinks)  # noqa: E731
        out = fn()
        # a second input set: the two together exceed L2, so each call reads q, k, v from DRAM
        q2, k2, v2 = torch.randn_like(q), torch.randn_like(k), torch.randn_like(v)
        fn2 = lambda: kernel.flash_attn_varlen_func(q2, k2, v2, cu, cu, S, S, causal=True, window_size=ws, s_aux=sinks)  # noqa: E731
        if window:
            pairs = sum(min(i + 1, window) for i in range(S))
        else:
            pairs = S * S / 2
        flops = 4 * pairs * D * HQ
        byts = 2 * (2 * q.numel() + 2 * k.numel())  # bf16 q, out, k, v once each
        flop_floor = flops / ceilings["bf16_flops_per_us"]
        floor = floor_us(ceilings, bytes_moved=byts, flops=flops)
        t = median_us_graph([fn, fn2])
        t_eager = median_us(fn)
        del q2, k2, v2
        # agreement with FlexAttention (both accumulate in fp32) is reported beside the time
        def causal_mod(b, h, qi, ki):
            return ki <= qi

        def sliding_mod(b, h, qi, ki):
            return (ki <= qi) & (qi - ki < WINDOW)

        bm = create_block_mask(sliding_mod if window else causal_mod, None, None, S, S, device=dev)
        fl = lambda: flex(q4c, k4c, v4c, bm, sinks)  # noqa: E731
        try:
            ref_out = fl()
            agree = _rel(out, ref_out.transpose(1, 2)[0])
            t_flex = median_us(fl)
        except Exception as e:  # noqa: BLE001
            agree, t_flex = float("nan"), float("nan")
            print("flex failed:", repr(e)[:200], flush=True)
        try:  # the tile shape the autotuner chose for this case
            ta = kernel.attention._triton_attn
            tuned = ta._attn_fwd_window if window else ta._attn_fwd_tuned
            cfg = [str(c) for key, c in tuned.cache.items() if window or key[4] is False][-1:]  # key[4]: HAS_WL
        except Exception:  # noqa: BLE001
            cfg = []
        ta = kernel.attention._triton_attn
        native = window and ta._native_window(q, k, v, cu, cu, None, sinks, 1, 0, 0.125, window - 1, 0) is not None
        path = "ours (CUDA window kernel)" if native else "ours (Triton)"
        rows.append(row("attention", name, path, t, floor, TFLOPs=round(flops / t / 1e6, 1),
                        flop_floor_us=round(flop_floor, 1), rel_vs_flex=f"{agree:.1e}", eager_us=round(t_eager, 1),
                        config=(cfg[0] if cfg else "?").replace(",", ";")))
        rows.append(row("attention", name, "FlexAttention + LSE sink", t_flex, floor,
                        TFLOPs=round(flops / t_flex / 1e6, 1), ours_speedup=round(t_flex / t, 2)))
        try:
            mask = _additive_mask(S, S, window, dev)
            te = median_us(lambda: _eager(q4, k4, v4, mask, host), warmup_ms=5, rep_ms=50)
            rows.append(row("attention", name, "transformers eager", te, floor, TFLOPs=round(flops / te / 1e6, 1),
                            ours_speedup=round(te / t, 1)))
            del mask
        except torch.OutOfMemoryError:
            rows.append(row("attention", name, "transformers eager", float("nan"), floor, note="out of memory"))
        torch.cuda.empty_cache()
        print(rows[-3:], flush=True)

    # --- decode against an 8192-token cache --------------------------------------------------
    for b in (1, 32):
        kv_bytes = 2 * b * S * HKV * D * 2
        n_sets = rotation(kv_bytes)  # caches that together exceed 3x L2: every call reads DRAM
        caches = [(torch.randn(b, S, HKV, D, device=dev, dtype=bf), torch.randn(b, S, HKV, D, device=dev, dtype=bf))
                  for _ in range(n_sets)]
        kc, vc = caches[0]
        qd = torch.randn(b, 1, HQ, D, device=dev, dtype=bf)
        lens = torch.full((b,), S, dtype=torch.int32, device=dev)
        floor = floor_us(ceilings, bytes_moved=kv_bytes + 2 * 2 * qd.numel())

        def dec(kc_, vc_):
            return lambda: kernel.flash_attn_with_kvcache(qd, kc_, vc_, cache_seqlens=lens, causal=True, s_aux=sinks)

        fn = dec(kc, vc)
        calls = [dec(*c) for c in caches]
        t = median_us_graph(calls)
        t_same = median_us_graph(fn)
        ta = kernel.attention._triton_attn
        # same_cache_us: one call per graph replay on one cache (v2's method): the replay's own launch
        # overhead is counted once per call, and at B=1 the cache is L2-resident
        # large batches take the native CUDA kernel (one CTA per sequence x KV head), small ones the Triton pair
        native = ta._native_decode(qd[:, 0], kc, vc, lens, sinks, b, -1) is not None
        label = "ours (CUDA, one CTA per sequence x KV head)" if native else "ours (Triton, split-K)"
        rows.append(row("attention", f"decode B={b} cache=8192", label, t, floor,
                        GBps=round(kv_bytes / t / 1e3), caches=n_sets, same_cache_us=round(t_same, 2)))
        # (the fused last-program merge belongs to the general kernel's split decode, which Sq = 1
        # decode no longer takes: `_decode` + `_combine`)
        if native:
            alts = [("ours, Triton split-K instead (SQ1_CUDA off)", "SQ1_CUDA", False)]
        else:
            alts = [("ours, no programmatic dependent launch", "DECODE_PDL", False)]
        for label, knob, value in alts:
            default = getattr(ta, knob)
            setattr(ta, knob, value)
            try:
                t_alt = median_us_graph(calls)
            finally:
                setattr(ta, knob, default)
            rows.append(row("attention", f"decode B={b} cache=8192", label, t_alt, floor,
                            GBps=round(kv_bytes / t_alt / 1e3), caches=n_sets))
        # paged (64-token pages, shuffled)
        page = 64
        n_pages = b * S // page
        perm = torch.randperm(n_pages, device=dev)
        bt = perm.reshape(b, S // page).to(torch.int32)
        paged = [(kc_.reshape(n_pages, page, HKV, D)[perm.argsort()].contiguous(),
                  vc_.reshape(n_pages, page, HKV, D)[perm.argsort()].contiguous()) for kc_, vc_ in caches]
        del caches, calls

        def pag(kp_, vp_):
            return lambda: kernel.flash_attn_with_kvcache(qd, kp_, vp_, cache_seqlens=lens, block_table=bt, causal=True,
                                                          s_aux=sinks)

        fp = pag(*paged[0])
        agree = _rel(fp(), fn())
        tp = median_us_graph([pag(*c) for c in paged])
        rows.append(row("attention", f"decode B={b} cache=8192", "ours paged (page 64)", tp, floor,
                        GBps=round(kv_bytes / tp / 1e3), rel_vs_contiguous=f"{agree:.1e}", caches=n_sets))
        kp, vp = paged[0]
        del paged
        # anchors
        q4d = qd.transpose(1, 2)
        k4d, v4d = kc.transpose(1, 2), vc.transpose(1, 2)
        te = median_us_graph(lambda: _eager(q4d, k4d, v4d, None, host))
        rows.append(row("attention", f"decode B={b} cache=8192", "transformers eager", te, floor,
                        ours_speedup=round(te / t, 1)))
        try:
            q4dc, k4dc, v4dc = q4d.contiguous(), k4d.contiguous(), v4d.contiguous()
            bm = create_block_mask(lambda bb, h, qi, ki: ki >= 0, None, None, 1, S, device=dev)
            tf = median_us_graph(lambda: flex(q4dc, k4dc, v4dc, bm, sinks))
            rows.append(row("attention", f"decode B={b} cache=8192", "FlexAttention + LSE sink", tf, floor,
                            ours_speedup=round(tf / t, 1)))
        except Exception as e:  # noqa: BLE001
            print("flex decode failed:", repr(e)[:200], flush=True)
        print(rows[-4:], flush=True)
        del kc, vc, kp, vp
        torch.cuda.empty_cache()

    # --- rotary (transformers' layout, 8192 tokens) ------------------------------------------------
    from transformers.models.gpt_oss.modeling_gpt_oss import _apply_rotary_emb

    qr = torch.randn(1, S, HQ, D, device=dev, dtype=bf).transpose(1, 2)
    kr = torch.randn(1, S, HKV, D, device=dev, dtype=bf).transpose(1, 2)
    ang = torch.randn(1, S, D // 2, device=dev)
    cos, sin = ang.cos().to(bf), ang.sin().to(bf)
    byts = 2 * 2 * (qr.numel() + kr.numel())
    floor = floor_us(ceilings, bytes_moved=byts)
    # graph replays over 2 input sets (151 MB each), as the prefill rows: eager do_bench of this
    # ~70 µs op measured the host's launch cost in slow-host sessions (72, 108, 272 µs in three runs
    # of unchanged code); the do_bench numbers stay as eager_us
    qr2, kr2 = torch.randn_like(qr), torch.randn_like(kr)
    c1, s1 = cos.unsqueeze(1), sin.unsqueeze(1)
    t_eager = median_us(lambda: kernel.rotary_pos_emb(qr, kr, cos, sin))
    te_eager = median_us(lambda: (_apply_rotary_emb(qr, c1, s1), _apply_rotary_emb(kr, c1, s1)))
    try:
        t = median_us_graph([lambda: kernel.rotary_pos_emb(qr, kr, cos, sin),
                             lambda: kernel.rotary_pos_emb(qr2, kr2, cos, sin)])
        te = median_us_graph([lambda: (_apply_rotary_emb(qr, c1, s1), _apply_rotary_emb(kr, c1, s1)),
                              lambda: (_apply_rotary_emb(qr2, c1, s1), _apply_rotary_emb(kr2, c1, s1))])
    except Exception as e:  # noqa: BLE001  (graph capture failed: eager numbers, said so)
        print("rotary graph timing failed:", repr(e)[:200], flush=True)
        t, te = t_eager, te_eager
    rows.append(row("attention", "rotary S=8192", "ours (CUDA)", t, floor, ours_speedup=round(te / t, 1),
                    eager_us=round(t_eager, 1)))
    rows.append(row("attention", "rotary S=8192", "transformers eager", te, floor, eager_us=round(te_eager, 1)))
    print(rows[-2:], flush=True)
    return rows
