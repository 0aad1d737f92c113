#!/usr/bin/env python3
"""Bit-level emulation of how the CUDA prefill GEMM (kernel_src/moe/prefill_gemm_cuda.cu) builds wgmma's A operand
from kernel words: per lane (g, c) and k16 step, pair c of the step's two words through the per-lane rotate / masks
(moe/mxfp4.cuh kw_pair_consts, e2m1_pair_kw: lop3 0xEA), times the scale factor (one step for scale bytes <= 128,
two above), placed where the m64nNk16 A fragment puts it (a0: row g, k 2c, 2c + 1; a1: row g + 8; a2 / a3: k + 8),
with tile rows g / g + 8 holding weight rows 2g / 2g + 1. The 16 x 64 tile assembled from all 32 lanes must equal
quant/mxfp4.dequantize_mxfp4 in bf16 bit for bit, for every scale byte 0..255 (random words: every nibble occurs).
No GPU needed; the hardware is checked by the GPU tests (tests/test_moe_mxfp4.py::test_moe_gemm_prefill_mxfp4_*).

    python scripts/mxfp4_prefill_fragment_check.py
"""
import importlib.util as u
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sm = u.spec_from_file_location("mx", str(ROOT / "torch-ext" / "gpt_oss_kernels" / "quant" / "mxfp4.py"))
mx = u.module_from_spec(sm)
sm.loader.exec_module(mx)
M = 0xFFFFFFFF

# The per-lane constants as the header writes them (checked against its text so the two cannot drift apart).
HDR = (ROOT / "kernel_src" / "moe" / "mxfp4.cuh").read_text()
assert "KwPair{0, 0x80C080C0u, 0x01000100u}" in HDR and "KwPair{p == 1 ? 2 : p == 2 ? 12 : 6, 0x81C081C0u, 0u}" in HDR
assert re.search(r"lop3\.b32 %0, %1, %2, %3, 0xEA", HDR) and "rotr(w, 24) & k.m2" in HDR
KW = {0: (0, 0x80C080C0, 0x01000100), 1: (2, 0x81C081C0, 0), 2: (12, 0x81C081C0, 0), 3: (6, 0x81C081C0, 0)}


def rotr(w: torch.Tensor, c: int) -> torch.Tensor:
    return ((w >> c) | (w << (32 - c))) & M if c else w


def pair_kw(w: torch.Tensor, c: int) -> torch.Tensor:  # e2m1_pair_kw(w, kw_pair_consts(c))
    rot, m1, m2 = KW[c]
    lo = rotr(w, 24) & m2
    return (rotr(w, rot) & m1) | lo  # lop3 0xEA: (a & b) | c


def bf16_bits_to_f64(b: torch.Tensor) -> torch.Tensor:
    return (b << 16).to(torch.int32).view(torch.float32).double()


def f64_to_bf16_bits(x: torch.Tensor) -> torch.Tensor:
    return x.float().to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF


def fma_bf16x2(a: torch.Tensor, b: int) -> torch.Tensor:  # a * b + (-0), per half; exact products (see below)
    out = torch.zeros_like(a)
    for h in (0, 16):
        x = bf16_bits_to_f64((a >> h) & 0xFFFF)
        y = bf16_bits_to_f64(torch.full_like(a, (b >> h) & 0xFFFF))
        out |= f64_to_bf16_bits(x * y + (-0.0)) << h  # 2-bit mantissas times a power of two: exact in float64
    return out


def scale_factor(s: int, two: bool) -> int:
    b = ((s - 1) << 7 if s > 1 else 0x20 << s) if two else (s + 126) << 7
    return b | (b << 16)


def scale_pair(r: torch.Tensor, f: int, two: bool) -> torch.Tensor:
    return fma_bf16x2(fma_bf16x2(r, 0x7F007F00), f) if two else fma_bf16x2(r, f)


def tile_from_lanes(words: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """words (16, 16) int64 kernel words of 16 weight rows x 64 k (two MX blocks), scales (16, 2): the (16, 64) bf16
    bits the warp's A fragments hold, in weight-row order."""
    out = torch.full((16, 64), -1, dtype=torch.int64)
    two = bool((scales > 128).any())  # the kernel decides per warp: any lane's byte above 128
    for g in range(8):
        for c in range(4):
            r0, r1 = 2 * g, 2 * g + 1  # tile rows g, g + 8
            for s in range(4):  # k16 step; MX block s // 2, words 2s, 2s + 1 of the stage's 8
                blk = s // 2
                f0, f1 = scale_factor(int(scales[r0, blk]), two), scale_factor(int(scales[r1, blk]), two)
                regs = {  # a0 .. a3 as dequant_step computes them
                    0: scale_pair(pair_kw(words[r0, 2 * s:2 * s + 1], c), f0, two),
                    1: scale_pair(pair_kw(words[r1, 2 * s:2 * s + 1], c), f1, two),
                    2: scale_pair(pair_kw(words[r0, 2 * s + 1:2 * s + 2], c), f0, two),
                    3: scale_pair(pair_kw(words[r1, 2 * s + 1:2 * s + 2], c), f1, two),
                }
                for i, reg in regs.items():  # wgmma A fragment: row g (+8 for a1 / a3), k 2c, 2c+1 (+8 for a2 / a3)
                    row = r1 if i in (1, 3) else r0
                    k = 16 * s + 2 * c + (8 if i >= 2 else 0)
                    out[row, k] = int(reg) & 0xFFFF
                    out[row, k + 1] = int(reg) >> 16
    return out


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    bad = 0
    for s_byte in range(256):
        blocks = torch.randint(0, 256, (1, 16, 2, 16), dtype=torch.uint8, generator=gen)
        scales = torch.full((1, 16, 2), s_byte, dtype=torch.uint8)
        scales[0, ::3, 1] = torch.randint(0, 129, (6,), dtype=torch.uint8, generator=gen)  # mixed steps in a warp
        words = mx.mxfp4_kernel_words(blocks)[0].view(torch.int32).to(torch.int64) & M  # (16, 16)
        got = tile_from_lanes(words, scales[0].to(torch.int64))
        want = mx.dequantize_mxfp4(blocks, scales, torch.bfloat16)[0].t().contiguous()  # (N = 16, K = 64)
        want = want.view(torch.int16).to(torch.int64) & 0xFFFF
        if not torch.equal(got, want):
            bad += 1
            if bad < 4:
                print("scale byte", s_byte, "mismatches", int((got != want).sum()))
    print("mismatches", bad)
    assert bad == 0


if __name__ == "__main__":
    main()
