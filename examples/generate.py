#!/usr/bin/env python3
"""The main job: build a tiny GPT-OSS in code, generate greedily without and with our kernels
swapped in (through the package's ``from_pretrained``, as a user would), and print both outputs,
whether they agree, and the time per token.

    python examples/generate.py [--device cpu|cuda] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from tiny_gpt_oss import tiny_model, with_our_kernels  # noqa: E402


def generate(model, prompt: torch.Tensor, new_tokens: int) -> tuple[torch.Tensor, float]:
    with torch.inference_mode():
        model.generate(prompt, max_new_tokens=2, do_sample=False)  # warm-up
        if prompt.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        if prompt.is_cuda:
            torch.cuda.synchronize()
    return out[:, prompt.shape[1]:], (time.perf_counter() - start) / new_tokens


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=24)
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32

    model = tiny_model(seed=0, dtype=dtype, device=args.device)
    prompt = torch.randint(1, model.config.vocab_size, (1, args.prompt_len), generator=torch.Generator().manual_seed(1))
    prompt = prompt.to(args.device)

    plain, plain_s = generate(model, prompt, args.new_tokens)
    kernelized = with_our_kernels(model)
    ours, ours_s = generate(kernelized, prompt, args.new_tokens)

    layer0 = kernelized.model.layers[0]
    swapped = (f"RMSNorm, {type(layer0.mlp).__name__} (post-attention RMSNorm + MoE), MoeExperts, RotaryPosEmb, "
               f"attention ({kernelized.config._attn_implementation})")
    import transformers

    print(f"transformers {transformers.__version__}, device: {args.device}, dtype: {dtype}")
    print(f"our layers swapped in: {swapped}")
    print(f"prompt token ids:        {prompt[0].tolist()}")
    print(f"without our kernels:     {plain[0].tolist()}")
    print(f"with our kernels:        {ours[0].tolist()}")
    same = int((plain[0] == ours[0]).cumprod(0).sum())
    print(f"greedy tokens identical: {'yes' if same == args.new_tokens else f'first {same} of {args.new_tokens}'}")
    # Greedy decoding compounds the first rounding-level flip (in bf16 a near-tied router logit can
    # pick another expert); teacher forcing compares each position's next token on the same text.
    text = torch.cat([prompt, plain], dim=1)
    with torch.inference_mode():
        a = model(text).logits[0, prompt.shape[1] - 1:-1].argmax(-1)
        b = kernelized(text).logits[0, prompt.shape[1] - 1:-1].argmax(-1)
    agree = (a == b).float().mean().item()
    print(f"teacher-forced next-token agreement: {agree:.1%} ({int((a == b).sum())}/{args.new_tokens})")
    print(f"outputs agree: {'yes' if same == args.new_tokens else 'NO'}")
    print(f"time per token: {plain_s * 1e3:.2f} ms without, {ours_s * 1e3:.2f} ms with our kernels "
          f"({args.new_tokens} new tokens, batch 1; a tiny model, so this is framework overhead, not kernel speed)")
    # fp32 (CPU) must match token for token; bf16 (CUDA) must agree on >= 95% of teacher-forced positions.
    ok = same == args.new_tokens if dtype == torch.float32 else agree >= 0.95
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
