"""Attention projection rows for the harness (gpt-oss-20b: hidden 2880, 64 q heads and 8 kv heads of 64, bias,
bf16), at decode sizes T = 1 / 4 / 16 rows (tokens): q, k, v through ``multi_linear`` (one launch) against transformers'
three ``F.linear`` (cuBLAS) and against one cuBLAS ``F.linear`` on the concatenated weight; o_proj through
``multi_linear`` against ``F.linear``. CUDA-graph replays over as many layers' weights as cover 3x L2, so every
call reads its weights from DRAM; floor = weight + activation bytes at the measured copy bandwidth."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from harness import floor_us, median_us_graph, rotation, row

H, QN, KN = 2880, 64 * 64, 8 * 64
ORDER = ("q", "k", "v")


def _layer(dev, bf):
    w = {n: torch.randn(r, H, device=dev, dtype=bf) * H**-0.5 for n, r in (("q", QN), ("k", KN), ("v", KN))}
    b = {n: torch.randn(t.shape[0], device=dev, dtype=bf) * 0.1 for n, t in w.items()}
    return dict(w=[w[n] for n in ORDER], b=[b[n] for n in ORDER], wqkv=torch.cat([w[n] for n in ORDER]),
                bqkv=torch.cat([b[n] for n in ORDER]), wo=torch.randn(H, QN, device=dev, dtype=bf) * QN**-0.5,
                bo=torch.randn(H, device=dev, dtype=bf) * 0.1)


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    dev, bf = "cuda", torch.bfloat16
    qkv_bytes = (QN + 2 * KN) * H * 2
    layers = [_layer(dev, bf) for _ in range(rotation(qkv_bytes))]
    rows: list[dict] = []
    for m in (1, 4, 16):
        xs = [torch.randn(m, H, device=dev, dtype=bf) for _ in layers]
        ao = [torch.randn(m, QN, device=dev, dtype=bf) for _ in layers]
        impls = {
            "ours: q, k, v (multi_linear, one launch)": [
                lambda x=x, L=L: kernel.multi_linear(x, L["w"], L["b"]) for x, L in zip(xs, layers)],
            "transformers: q, k, v (3 x F.linear, cuBLAS)": [
                lambda x=x, L=L: tuple(F.linear(x, w, b) for w, b in zip(L["w"], L["b"])) for x, L in zip(xs, layers)],
            "cuBLAS: q, k, v as one F.linear on the concatenated weight": [
                lambda x=x, L=L: F.linear(x, L["wqkv"], L["bqkv"]) for x, L in zip(xs, layers)],
            "ours: o_proj (multi_linear)": [
                lambda a=a, L=L: kernel.multi_linear(a, [L["wo"]], [L["bo"]]) for a, L in zip(ao, layers)],
            "transformers: o_proj (F.linear, cuBLAS)": [
                lambda a=a, L=L: F.linear(a, L["wo"], L["bo"]) for a, L in zip(ao, layers)],
        }
        # ours against the fp32 product of the same bf16 values, before timing
        got = torch.cat(kernel.multi_linear(xs[0], layers[0]["w"], layers[0]["b"]), -1).float()
        want = F.linear(xs[0].float(), layers[0]["wqkv"].float(), layers[0]["bqkv"].float())
        err = ((got - want).abs().max() / want.abs().max()).item()
        for name, calls in impls.items():
            t = median_us_graph(calls, replays=50)
            if "q, k, v" in name:
                byts = qkv_bytes + 2 * m * (H + QN + 2 * KN)
            else:
                byts = QN * H * 2 + 2 * m * (QN + H)
            extra = {"rel_err_vs_fp32": round(err, 5)} if name.startswith("ours: q, k, v") else {}
            rows.append(row("projections", f"T={m}", name, t, floor_us(ceilings, bytes_moved=byts), **extra))
        print(rows[-5:], flush=True)
    return rows
