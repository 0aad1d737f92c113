#!/usr/bin/env python3
"""Bit-level emulation of the packed PTX dequantization of the MoE GEMM's "mxfp4_asm" format
(grouped_gemm._E2M1X8_BF16_ASM: shl/shr/and/or and fma.rn.bf16x2, read from the source; and _E2M1X8_BF16_KW_ASM,
the same for kernel words: shf.r.wrap rotates) against quant/mxfp4.dequantize_mxfp4 in bf16, for every scale byte
0..255 on random words (every nibble value occurs).
No GPU needed; the hardware itself is checked by the GPU tests (tests/test_moe_mxfp4.py).

    python scripts/mxfp4_asm_emulation_check.py
"""


import re, numpy as np, torch, importlib.util as u
from pathlib import Path
PKG = Path(__file__).resolve().parents[1] / "torch-ext" / "gpt_oss_kernels"

src = open(str(PKG / "moe" / "grouped_gemm.py")).read()
def asm_of(name):
    start = src.index(f'{name} = tl.constexpr("""') + len(name) + 19
    return src[start: src.index('""")', start)]
sm=u.spec_from_file_location("mx",str(PKG / "quant" / "mxfp4.py")); mx=u.module_from_spec(sm); sm.loader.exec_module(mx)
M = 0xFFFFFFFF
def bf16x2_fma(a, b, c):
    def lanes(x): return [(x & 0xFFFF), (x >> 16) & 0xFFFF]
    out = 0
    for i, (x, y, z) in enumerate(zip(lanes(a), lanes(b), lanes(c))):
        xf = torch.tensor([x << 16], dtype=torch.int64).to(torch.int32).view(torch.float32).double()
        yf = torch.tensor([y << 16], dtype=torch.int64).to(torch.int32).view(torch.float32).double()
        zf = torch.tensor([z << 16], dtype=torch.int64).to(torch.int32).view(torch.float32).double()
        r = xf * yf + zf  # exact in float64 for these operands (2-bit mantissas, exponents within range)
        rb = r.float().to(torch.bfloat16)  # exact value -> fp32 exact (or inf) -> bf16 exact
        bits = int(rb.view(torch.int16).item()) & 0xFFFF
        out |= bits << (16 * i)
    return out
def run(asm, q, f):
    regs = {"$8": q, "$9": f}; outs = {}
    for line in asm.strip().splitlines():
        line = line.strip().rstrip(";")
        if line in ("{", "}") or line.startswith(".reg"): continue
        op, rest = line.split(None, 1)
        args = [a.strip() for a in rest.split(",")] if not rest.startswith("{") else None
        val = lambda a: int(a, 16) if a.startswith("0x") else (int(a) if a.isdigit() else regs[a])
        if op == "mov.b32" and rest.startswith("{"):
            m = re.match(r"\{(\$\d+), (\$\d+)\}, (\w+)", rest); r = regs[m.group(3)]
            outs[m.group(1)] = r & 0xFFFF; outs[m.group(2)] = r >> 16; continue
        d = args[0]
        if op == "mov.b32": regs[d] = val(args[1])
        elif op == "shl.b32": regs[d] = (val(args[1]) << val(args[2])) & M
        elif op == "shr.b32": regs[d] = (val(args[1]) >> val(args[2])) & M
        elif op == "and.b32": regs[d] = val(args[1]) & val(args[2])
        elif op == "or.b32": regs[d] = val(args[1]) | val(args[2])
        elif op == "shf.r.wrap.b32": regs[d] = (((val(args[2]) << 32) | val(args[1])) >> (val(args[3]) & 31)) & M
        elif op == "fma.rn.bf16x2": regs[d] = bf16x2_fma(val(args[1]), val(args[2]), val(args[3]))
        else: raise ValueError(op)
    return [outs[f"${i}"] for i in range(8)]
bad = 0
rng = np.random.default_rng(0)
for s in range(256):
    f = (s - 1) << 7 if s >= 2 else 0x20 << s
    f = f | (f << 16)
    words = list(range(0, 256, 1))  # every byte in byte 0..3 positions via words
    for t in range(4 if s % 17 else 16):
        byts = rng.integers(0, 256, 4, dtype=np.uint8) if t else np.array([s % 256, (s * 7) % 256, (s * 13) % 256, (255 - s) % 256], dtype=np.uint8)
        q = int(byts.view(np.uint32)[0])
        blocks = torch.zeros(1, 1, 1, 16, dtype=torch.uint8); blocks[0, 0, 0, :4] = torch.from_numpy(byts)
        kw = int(mx.mxfp4_kernel_words(blocks)[0, 0, 0].view(torch.int32).item()) & M
        ref = mx.dequantize_mxfp4(blocks, torch.tensor([[[s]]], dtype=torch.uint8), torch.bfloat16)[0, :8, 0]
        refb = [int(x) & 0xFFFF for x in ref.view(torch.int16).tolist()]
        for name, word in (("_E2M1X8_BF16_ASM", q), ("_E2M1X8_BF16_KW_ASM", kw)):
            got = run(asm_of(name), word, f)
            if got != refb:
                bad += 1
                if bad < 5: print(name, "s", s, byts, [hex(g) for g in got], [hex(r) for r in refb])
print("mismatches", bad)
assert bad == 0
