"""MXFP4 expert weights exactly as openai/gpt-oss checkpoints store them.

Per projection (``gate_up_proj``: N = 2I output rows, K = H; ``down_proj``: N = H, K = I):

* ``*_blocks`` uint8 ``(E, N, K/32, 16)``: the e2m1 (FP4) values of row n, 32 per block along K, two per
  byte, **low nibble first** (byte j of a block holds k = 2j in bits 0-3 and k = 2j+1 in bits 4-7); a
  nibble is sign (bit 3) and the magnitude code 0..7 -> 0, 0.5, 1, 1.5, 2, 3, 4, 6.
* ``*_scales`` uint8 ``(E, N, K/32)``: one e8m0 exponent byte s per block, scale = 2^(s - 127).
* gate/up rows interleaved as in the bf16 model (row 2i: gate i, row 2i+1: up i); biases bf16 ``(E, N)``.

So row n of an expert is K/2 contiguous bytes plus K/32 contiguous scale bytes. The kernels read it in either
of two forms, told apart by dtype:

* the checkpoint's uint8 blocks as they are (``(E, N, K/32, 16)``);
* **kernel words** (``mxfp4_kernel_words``): uint32 ``(E, N, K/8)``, word j of a row holding the same 8 values
  k = 8j .. 8j + 7 with their bits permuted inside the word (``KERNEL_WORD_BITS``) so that the bf16x2 pair of
  values (2P, 2P + 1) is one rotate and one mask (``rotr(w, c) & 0x81C081C0``, c = 2, 12, 6 for P = 1, 2, 3; P = 0:
  ``(w & 0x80C080C0) | (rotr(w, 24) & 0x01000100)``): magnitude bits on bf16 bits 6..8 and the sign on 15 of each
  half, i.e. v * 2^-126. The same bytes' size, so the layout class converts in place at load
  (``MoeExpertsLayout.use_kernel_words``) and its state dict gives the checkpoint's bytes back
  (``mxfp4_checkpoint_blocks``). Decode GEMM on the H100 (2026-12-06): one-step span 185 -> 121 sm_90a
  instructions, block T = 1 44.6-46.9 -> 42.5-42.7 us, T = 64 277.7 -> 248.9 us (docs/decisions-moe.md).

Value of weight (k, n) of expert e: ``e2m1(nibble) * 2^(s - 127)``, as transformers' dequantization
computes it (``_convert_moe_packed_tensors``: a look-up in ``dtype``, then ``torch.ldexp``, i.e. a float32
multiply by 2^(s-127) rounded once to ``dtype``). Two scale bytes need a decision:

* **0xFF** (OCP MX: NaN): transformers gives 2^128, so x * 2^128 = +-inf for a non-zero nibble and NaN
  for +-0 (0 * inf). ``dequantize_mxfp4`` returns exactly that, and every kernel of this package computes
  as a matmul with those weights would (NaN / inf propagate as IEEE says). ``quantize_mxfp4`` never
  writes 0xFF.
* **0x00**: 2^-127, a subnormal in float32 and bf16: kept exact (no flush to zero) on every path.

Exact arithmetic: e2m1 values have 2 significant bits, so every product e2m1 * 2^(s-127) with s <= 254 is
exact in float32 and in bf16 (the smallest, 0.5 * 2^-127 = 2^-128, is a bf16 subnormal); only float16
rounds (its range is narrower) and s = 255 (or 4, 6 * 2^127) overflows to inf.
"""

from __future__ import annotations

import re

import torch

# e2m1 magnitude codes 0..7 and their negatives (codes 8..15), as transformers' FP4_VALUES
FP4_VALUES = (+0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
BLOCK = 32  # values per scale, along K

_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_packed(blocks: torch.Tensor, scales: torch.Tensor) -> None:
    for name, t in (("blocks", blocks), ("scales", scales)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dtype != torch.uint8:
            raise TypeError(f"{name} must be uint8, got dtype {t.dtype} (shape {tuple(t.shape)})")
    if blocks.dim() < 3 or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"blocks must be (..., N, K/32, 16), got shape {tuple(blocks.shape)}")
    if tuple(scales.shape) != tuple(blocks.shape[:-1]):
        raise ValueError(f"scales must be blocks.shape[:-1] = {tuple(blocks.shape[:-1])}, got {tuple(scales.shape)}")
    if blocks.device != scales.device:
        raise ValueError(f"scales must be on blocks' device ({blocks.device}), got {scales.device}")


# Kernel words: bit KERNEL_WORD_BITS[p][b] of a word holds bit b of value p (k = 8j + p; bits 0-2 the magnitude code,
# 3 the sign), which the checkpoint stores at bit 4p + b of the little-endian word.
KERNEL_WORD_BITS = ((6, 7, 0, 15), (22, 23, 16, 31), (8, 9, 10, 17), (24, 25, 26, 1), (18, 19, 20, 27),
                    (2, 3, 4, 11), (12, 13, 14, 21), (28, 29, 30, 5))


def _byte_tables(device, inverse: bool) -> torch.Tensor:
    """(4, 256) int64: the bits that byte j of a word, with value v, contributes to the other form's word."""
    table = [[0] * 256 for _ in range(4)]
    for p, dest in enumerate(KERNEL_WORD_BITS):
        for b, d in enumerate(dest):
            src, dst = (d, 4 * p + b) if inverse else (4 * p + b, d)
            for v in range(256):
                if v >> (src % 8) & 1:
                    table[src // 8][v] |= 1 << dst
    return torch.tensor(table, dtype=torch.int64, device=device)


def _permute_words(u8: torch.Tensor, inverse: bool, chunk: int = 1 << 22) -> torch.Tensor:
    """Contiguous bytes (a multiple of 4) -> the other form's bytes, word by word (a byte look-up per byte)."""
    table = _byte_tables(u8.device, inverse).view(-1)
    src = u8.reshape(-1, 4)
    out = torch.empty(src.shape[0], dtype=torch.int32, device=u8.device)
    offs = torch.arange(4, device=u8.device) * 256
    for r0 in range(0, src.shape[0], chunk):
        w = table[src[r0:r0 + chunk].to(torch.int64) + offs].sum(1)  # disjoint bits: the sum is the OR
        out[r0:r0 + chunk] = torch.where(w >= 1 << 31, w - (1 << 32), w).to(torch.int32)
    return out.view(torch.uint8)


def mxfp4_kernel_words(blocks: torch.Tensor) -> torch.Tensor:
    """The checkpoint's uint8 blocks ``(..., N, K/32, 16)`` -> kernel words, uint32 ``(..., N, K/8)`` (the module
    docstring; the same bytes' size). Every op that takes MXFP4 blocks also takes these; exact both ways
    (``mxfp4_checkpoint_blocks``). Works on any device (fastest where the blocks are)."""
    if not isinstance(blocks, torch.Tensor) or blocks.dtype != torch.uint8:
        raise TypeError(f"blocks must be a uint8 torch.Tensor, got "
                        f"{getattr(blocks, 'dtype', type(blocks).__name__)}")
    if blocks.dim() < 3 or blocks.shape[-1] != BLOCK // 2:
        raise ValueError(f"blocks must be (..., N, K/32, 16), got shape {tuple(blocks.shape)}")
    *prefix, n, g, _ = blocks.shape
    return _permute_words(blocks.contiguous(), inverse=False).view(torch.uint32).view(*prefix, n, g * 4)


def mxfp4_checkpoint_blocks(words: torch.Tensor) -> torch.Tensor:
    """Kernel words, uint32 ``(..., N, K/8)`` -> the checkpoint's uint8 blocks ``(..., N, K/32, 16)``."""
    if not isinstance(words, torch.Tensor) or words.dtype != torch.uint32:
        raise TypeError(f"words must be a uint32 torch.Tensor (mxfp4_kernel_words), got "
                        f"{getattr(words, 'dtype', type(words).__name__)}")
    if words.dim() < 2 or words.shape[-1] % 4:
        raise ValueError(f"words must be (..., N, K/8) with K a multiple of 32, got shape {tuple(words.shape)}")
    *prefix, n, kw = words.shape
    u8 = words.contiguous().view(torch.uint8)
    return _permute_words(u8, inverse=True).view(*prefix, n, kw // 4, 16)


def dequantize_mxfp4(blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.bfloat16,
                     rows_per_chunk: int = 1 << 20) -> torch.Tensor:
    """The checkpoint's ``(E, N, K/32, 16)`` blocks (or their kernel words, ``mxfp4_kernel_words``) and
    ``(E, N, K/32)`` scales -> ``(E, K, N)`` weights in ``dtype``: GptOssExperts' layout, ``(E, H, 2I)`` for gate_up
    and ``(E, I, H)`` for down.

    Bit for bit what transformers' ``_convert_moe_packed_tensors`` returns (same look-up table in ``dtype``,
    same ``torch.ldexp``), without its int32 index copies of the whole tensor. Works on any device.
    """
    if isinstance(blocks, torch.Tensor) and blocks.dtype == torch.uint32:
        blocks = mxfp4_checkpoint_blocks(blocks)
    _check_packed(blocks, scales)
    if dtype not in _FLOATS:
        raise TypeError(f"dtype must be a float dtype, got {dtype}")
    lut = torch.tensor(FP4_VALUES, dtype=dtype, device=blocks.device)
    # pair table: byte b -> (value of its low nibble, value of its high nibble)
    codes = torch.arange(256, device=blocks.device)
    pair = torch.stack([lut[codes & 0x0F], lut[codes >> 4]], dim=1)  # (256, 2)
    *prefix, g, b = blocks.shape
    rows = blocks.numel() // b
    flat = blocks.reshape(rows, b)
    exp = scales.reshape(rows, 1).to(torch.int32) - 127
    out = torch.empty(rows, 2 * b, dtype=dtype, device=blocks.device)
    for r0 in range(0, rows, rows_per_chunk):
        r1 = min(r0 + rows_per_chunk, rows)
        sub = out[r0:r1]
        sub.view(r1 - r0, b, 2).copy_(pair[flat[r0:r1].int()])
        torch.ldexp(sub, exp[r0:r1], out=sub)  # transformers' arithmetic: float32 2^e, one rounding to dtype
    return out.view(*prefix, g * 2 * b).transpose(1, 2).contiguous()


# Values per quantize_mxfp4 pass (a pass holds several float64 copies of its values, 8 bytes each). One pass over a
# 20b layer's 32 gate_up experts ran an 80 GB H100 out of memory (a 15.8 GiB temporary; 2026-12-07).
_QUANTIZE_CHUNK = 1 << 27


def quantize_mxfp4(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(E, K, N)`` float weights (GptOssExperts' layout, any float dtype) -> ``(blocks (E, N, K/32, 16),
    scales (E, N, K/32))`` uint8, per OCP MX v1.0:

    * a block is 32 consecutive values along K of one output column n;
    * shared exponent X = floor(log2(amax)) - 2 (2 = e2m1's largest exponent), stored as X + 127 clamped to
      [0, 254] (0xFF, NaN in OCP, is never written);
    * each value w / 2^X rounded to nearest, ties to even, onto e2m1, saturating at +-6; the sign is kept
      (-0.0 stays -0.0);
    * an all-zero block gets scale byte 0 (2^-127), as openai's own quantizer writes it.

    Exact on dequantized checkpoints: ``dequantize_mxfp4(*quantize_mxfp4(dequantize_mxfp4(b, s)))`` equals
    ``dequantize_mxfp4(b, s)`` for every block with scale bytes <= 254 (the block's largest magnitude fixes
    X so that every value of it is again on the e2m1 grid; the bytes may differ: +-0, scale choice).
    Raises ValueError on non-finite values (no e2m1 encoding). K must be a multiple of 32.
    """
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"w must be a torch.Tensor, got {type(w).__name__}")
    if w.dtype not in _FLOATS:
        raise TypeError(f"w must have a float dtype, got {w.dtype}")
    if w.dim() != 3:
        raise ValueError(f"w must be (E, K, N), got shape {tuple(w.shape)}")
    e, k, n = w.shape
    if k % BLOCK:
        raise ValueError(f"w's K (dim 1) must be a multiple of {BLOCK}, got shape {tuple(w.shape)}")
    if e > 1 and e * k * n > _QUANTIZE_CHUNK:  # a few experts at a time: the float64 temporaries stay bounded
        step = max(1, _QUANTIZE_CHUNK // (k * n))
        parts = [quantize_mxfp4(w[i:i + step]) for i in range(0, e, step)]
        return torch.cat([b for b, _ in parts]), torch.cat([s for _, s in parts])
    x = w.detach().to(torch.float64).transpose(1, 2).reshape(e, n, k // BLOCK, BLOCK)  # (E, N, G, 32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("w has non-finite values: MXFP4 cannot encode them")
    amax = x.abs().amax(-1)
    _, ex = torch.frexp(amax)  # amax = m * 2^ex, m in [0.5, 1): floor(log2 amax) = ex - 1, exactly
    s = torch.where(amax > 0, ex.to(torch.int64) - 1 - 2 + 127, torch.zeros_like(ex, dtype=torch.int64))
    s = s.clamp(0, 254)
    inv = ((127 - s + 1023) << 52).view(torch.float64)  # 2^(127 - s), built exactly from its bits
    p = x * inv.unsqueeze(-1)  # exact: a power of two, float64
    a = p.abs()
    # round half to even onto {0, .5, 1, 1.5, 2, 3, 4, 6}: ties at .25 -> 0, .75 -> 1, 1.25 -> 1, 1.75 -> 2,
    # 2.5 -> 2, 3.5 -> 4, 5 -> 4 (the even code); > 5 -> 6 (saturating)
    code = ((a > 0.25).to(torch.uint8) + (a >= 0.75) + (a > 1.25) + (a >= 1.75) + (a > 2.5) + (a >= 3.5) + (a > 5))
    code = code | (torch.signbit(p).to(torch.uint8) << 3)
    code = code.reshape(e, n, k // BLOCK, BLOCK // 2, 2)
    blocks = (code[..., 0] | (code[..., 1] << 4)).contiguous()
    return blocks, s.to(torch.uint8).contiguous()


# --- checkpoints -------------------------------------------------------------------------------------------

_EXPERT_KEY = re.compile(r"^(?P<prefix>.*\.mlp\.experts\.)(?P<proj>gate_up_proj|down_proj)$")


def quantize_experts_mxfp4(state_dict_or_model, bias_dtype: torch.dtype = torch.bfloat16) -> dict:
    """A bf16 (or any float) GPT-OSS state dict, or a ``GptOssForCausalLM``, -> the state dict of an MXFP4
    checkpoint as openai/gpt-oss-20b's safetensors name it: every ``...mlp.experts.gate_up_proj`` /
    ``down_proj`` becomes ``..._blocks`` and ``..._scales`` (``quantize_mxfp4``), the expert biases are cast
    to ``bias_dtype`` (bf16 in the official checkpoints), every other tensor is kept as it is.
    """
    if isinstance(state_dict_or_model, torch.nn.Module):
        sd = state_dict_or_model.state_dict()
    else:
        sd = dict(state_dict_or_model)
    out = {}
    for name, t in sd.items():
        m = _EXPERT_KEY.match(name)
        if m is not None:
            blocks, scales = quantize_mxfp4(t)
            out[f"{name}_blocks"], out[f"{name}_scales"] = blocks, scales
        elif name.endswith(("mlp.experts.gate_up_proj_bias", "mlp.experts.down_proj_bias")):
            out[name] = t.detach().to(bias_dtype)
        else:
            out[name] = t
    return out


def mxfp4_quantization_config() -> dict:
    """The ``quantization_config`` of openai/gpt-oss-20b's config.json (what transformers and our loader read)."""
    return {"quant_method": "mxfp4",
            "modules_to_not_convert": ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens",
                                       "lm_head"]}
