#!/usr/bin/env python3
"""Probe (issue 17, decode step): would q/k/v as one GEMM save what the decode profile suggests? At batch-1 decode
the three projections take 25.6 us per layer on an H100 (cuBLAS split-K GEMVs and their reductions, 29.5 MB:
docs/transformers.md "Where a decode step goes") against a 9.8 us byte floor. Times, at gpt-oss-20b shapes (H = 2880,
64 query heads and 8 KV heads of 64, bias), q, k, v as three F.linear calls against one F.linear on the
concatenated weight, and o_proj, at M = 1, 16, 4096 rows, CUDA-graph replay over as many layers' weights as exceed
L2. Delete once answered (the answer decides whether the attention layer or the decode runner should own a fused
projection).

    python probes/attention_projections.py --out $OUT
"""

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import harness  # noqa: E402

H, NQ, NKV, D = 2880, 64, 8, 64


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("probe_out"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    ceil = harness.measure_ceilings()
    dev, bf = "cuda", torch.bfloat16
    qn, kn = NQ * D, NKV * D
    wbytes = (qn + 2 * kn) * H * 2
    n_layers = harness.rotation(wbytes)
    layers = []
    for _ in range(n_layers):
        wq, wk, wv = (torch.randn(n, H, device=dev, dtype=bf) * 0.02 for n in (qn, kn, kn))
        bq, bk, bv = (torch.randn(n, device=dev, dtype=bf) * 0.02 for n in (qn, kn, kn))
        wo, bo = torch.randn(H, qn, device=dev, dtype=bf) * 0.02, torch.randn(H, device=dev, dtype=bf) * 0.02
        layers.append(dict(wq=wq, wk=wk, wv=wv, bq=bq, bk=bk, bv=bv, wqkv=torch.cat([wq, wk, wv]),
                           bqkv=torch.cat([bq, bk, bv]), wo=wo, bo=bo))
    rows = []
    for m in (1, 16, 4096):
        xs = [torch.randn(m, H, device=dev, dtype=bf) for _ in layers]
        os_ = [torch.randn(m, qn, device=dev, dtype=bf) for _ in layers]
        three = [lambda x=x, w=w: (F.linear(x, w["wq"], w["bq"]), F.linear(x, w["wk"], w["bk"]),
                                   F.linear(x, w["wv"], w["bv"])) for x, w in zip(xs, layers)]
        one = [lambda x=x, w=w: F.linear(x, w["wqkv"], w["bqkv"]).split([qn, kn, kn], dim=-1)
               for x, w in zip(xs, layers)]
        o = [lambda a=a, w=w: F.linear(a, w["wo"], w["bo"]) for a, w in zip(os_, layers)]
        t3, t1, to = (harness.median_us_graph(c, replays=50) for c in (three, one, o))
        for name, t, nbytes in (("q, k, v: three GEMMs", t3, wbytes), ("q, k, v: one GEMM", t1, wbytes),
                                ("o_proj", to, qn * H * 2)):
            n_out = nbytes // (2 * H) if name != "o_proj" else H
            k_in = H if name != "o_proj" else qn
            floor = harness.floor_us(ceil, bytes_moved=nbytes + 2 * m * (k_in + n_out), flops=2 * m * (nbytes // 2))
            rows.append(dict(M=m, what=name, us=round(t, 2), floor_us=round(floor, 2),
                             pct_of_floor=round(100 * floor / t, 1)))
            print(rows[-1], flush=True)
    res = dict(device=torch.cuda.get_device_name(), ceilings=ceil, layers=n_layers, rows=rows)
    (args.out / "attention_projections.json").write_text(json.dumps(res, indent=1))
    lines = ["| M | what | us | floor us | % of floor |", "|---|---|---|---|---|"]
    lines += [f"| {r['M']} | {r['what']} | {r['us']} | {r['floor_us']} | {r['pct_of_floor']} |" for r in rows]
    (args.out / "attention_projections.md").write_text(f"{res['device']}\n\n" + "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
