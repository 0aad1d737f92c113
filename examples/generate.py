#!/usr/bin/env python3
"""A prompt in, text out: loads a GPT-OSS checkpoint with every layer of ours (the package's ``from_pretrained``)
and streams the reply through the chat template.

    python examples/generate.py --prompt "Explain MXFP4." [--model openai/gpt-oss-20b] [--device cuda|cpu]
                                [--reasoning-effort low|medium|high] [--max-new-tokens 256]

The default model is openai/gpt-oss-20b; when it is not available (offline and not in the Hugging Face cache), the
script says so and uses a tiny random GPT-OSS checkpoint (MXFP4 + tokenizer, examples/tiny_checkpoint.py) written
to a temporary folder: the text is then random.

    python examples/generate.py --compare [--device cpu|cuda] [--new-tokens 32]      # `make demo`

``--compare``: the tiny GPT-OSS built in code, greedy generation on the same prompt with transformers' own
modules and again with our layers; prints both token sequences and texts, whether they agree (token for token; and
the teacher-forced next-token agreement, the fair measure in bf16) and the time per token. Exit status 1 when they
do not agree (fp32: token for token; bf16: >= 95% teacher-forced).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

DEFAULT_MODEL = "openai/gpt-oss-20b"
DEFAULT_PROMPT = "Explain what a mixture-of-experts layer does, in two sentences."


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


def compare(args, dtype: torch.dtype) -> None:
    """`make demo`: transformers' modules against ours on the tiny model built in code, same prompt, greedy."""
    from tiny_checkpoint import tiny_tokenizer
    from tiny_gpt_oss import tiny_model, with_our_kernels

    model = tiny_model(seed=0, dtype=dtype, device=args.device)
    tokenizer = tiny_tokenizer(model.config.vocab_size)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                           reasoning_effort=args.reasoning_effort, return_tensors="pt",
                                           return_dict=True)["input_ids"].to(args.device)
    n = args.max_new_tokens

    plain, plain_s = generate(model, prompt, n)
    kernelized = with_our_kernels(model)
    ours, ours_s = generate(kernelized, prompt, n)

    layer0 = kernelized.model.layers[0]
    swapped = (f"RMSNorm, {type(layer0.mlp).__name__} (post-attention RMSNorm + MoE), MoeExperts, RotaryPosEmb, "
               f"attention ({kernelized.config._attn_implementation})")
    import transformers

    print(f"transformers {transformers.__version__}, device: {args.device}, dtype: {dtype}")
    print(f"tiny GPT-OSS built in code (random weights: the text is random); our layers swapped in: {swapped}")
    print(f"prompt: {args.prompt!r} through the chat template ({prompt.shape[1]} tokens)")
    print(f"without our kernels:     {plain[0].tolist()}")
    print(f"with our kernels:        {ours[0].tolist()}")
    print(f"as text, without:        {tokenizer.decode(plain[0])!r}")
    print(f"as text, with:           {tokenizer.decode(ours[0])!r}")
    same = int((plain[0] == ours[0]).cumprod(0).sum())
    print(f"greedy tokens identical: {'yes' if same == n else f'first {same} of {n}'}")
    # Greedy decoding compounds the first rounding-level flip (in bf16 a near-tied router logit can
    # pick another expert); teacher forcing compares each position's next token on the same text.
    text = torch.cat([prompt, plain], dim=1)
    with torch.inference_mode():
        a = model(text).logits[0, prompt.shape[1] - 1:-1].argmax(-1)
        b = kernelized(text).logits[0, prompt.shape[1] - 1:-1].argmax(-1)
    agree = (a == b).float().mean().item()
    print(f"teacher-forced next-token agreement: {agree:.1%} ({int((a == b).sum())}/{n})")
    print(f"outputs agree: {'yes' if same == n else 'NO'}")
    print(f"time per token: {plain_s * 1e3:.2f} ms without, {ours_s * 1e3:.2f} ms with our kernels "
          f"({n} new tokens, batch 1; a tiny model, so this is framework overhead, not kernel speed)")
    # fp32 (CPU) must match token for token; bf16 (CUDA) must agree on >= 95% of teacher-forced positions.
    ok = same == n if dtype == torch.float32 else agree >= 0.95
    sys.exit(0 if ok else 1)


def load_kernel():
    """This checkout's build when there is one, else the Hub's."""
    import kernels
    import tiny_gpt_oss

    if any(tiny_gpt_oss.BUILD_DIR.glob("torch*/metadata.json")):
        return tiny_gpt_oss.load_kernel()
    return kernels.get_kernel(tiny_gpt_oss.REPO_ID, version=1, backend=None if torch.cuda.is_available() else "cpu")


def chat(args, dtype: torch.dtype, tmp: str) -> None:
    from transformers import AutoTokenizer, TextStreamer

    k = load_kernel()
    model_id = args.model or DEFAULT_MODEL
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = k.from_pretrained(model_id, device=args.device, dtype=dtype)
    except OSError as e:  # not on disk, not in the cache, no network (transformers raises OSError for each)
        if args.model is not None:
            raise
        from tiny_checkpoint import write_tiny_checkpoint

        reason = str(e).strip().splitlines()[0][:200]
        model_id = str(write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss-mxfp4"))
        print(f"{DEFAULT_MODEL} is not available offline ({reason}); using a tiny random GPT-OSS checkpoint "
              f"(MXFP4 + tokenizer) written to {model_id} instead: its reply is random text.\n", flush=True)
        tokenizer = AutoTokenizer.from_pretrained(model_id)
        model = k.from_pretrained(model_id, device=args.device, dtype=dtype)

    print(f"{model_id} on {args.device} ({dtype}) with our layers: {type(model.model.layers[0].mlp).__name__}, "
          f"experts {model.config.gpt_oss_kernels_experts}, attention {model.config._attn_implementation}")
    print(f"reasoning effort: {args.reasoning_effort}\nuser: {args.prompt}\nassistant: ", end="", flush=True)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True,
                                           reasoning_effort=args.reasoning_effort, return_tensors="pt",
                                           return_dict=True).to(model.device)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(**inputs, max_new_tokens=args.max_new_tokens, do_sample=False, streamer=streamer)
    seconds = time.perf_counter() - start
    n = out.shape[1] - inputs["input_ids"].shape[1]
    print(f"[{n} new tokens in {seconds:.1f} s, {n / seconds:.1f} tokens/s]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT)
    parser.add_argument("--model", default=None, help=f"a Hub id or a checkpoint folder (default {DEFAULT_MODEL}, "
                                                      "falling back to a tiny checkpoint when it is not available)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--reasoning-effort", default="low", choices=["low", "medium", "high"])
    parser.add_argument("--max-new-tokens", "--new-tokens", dest="max_new_tokens", type=int, default=None,
                        help="default 256 (32 with --compare, which generates exactly this many)")
    parser.add_argument("--compare", action="store_true",
                        help="the tiny model built in code: transformers' modules against ours (`make demo`)")
    args = parser.parse_args()
    if args.max_new_tokens is None:
        args.max_new_tokens = 32 if args.compare else 256
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32

    if args.compare:
        if args.model is not None:
            parser.error("--compare runs the tiny model built in code; leave --model out")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing to download
        compare(args, dtype)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            chat(args, dtype, tmp)


if __name__ == "__main__":
    main()
