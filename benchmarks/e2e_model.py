#!/usr/bin/env python3
"""The whole model in transformers at gpt-oss-20b shapes: transformers' defaults against our kernels, one process.

gpt-oss-20b's configuration (24 layers, 32 experts of 2880 x 2880, top-4, 64 / 8 heads, window 128, vocab
201088) with transformers' random initialisation (std 0.02), bf16 weights (experts in bf16, not MXFP4), built on
the GPU in code (no download). First with transformers' defaults (eager attention, `grouped_mm` experts, and
`batched_mm` in generate's decode steps), then the same weights loaded through the package's `from_pretrained`
(our RMSNorm, fused post-attention RMSNorm + MoE, rotary and attention), which is the README's route. Measured with the host clock around synchronised calls, so host overhead counts
(as users see it):
- prefill: one forward of 512 / 4096 tokens, batch 1, logits of the last position only (as generate's
  prefill), tokens per second;
- generate: greedy, dynamic cache, 128-token prompt, 64 new tokens, batch 1 and 16, new tokens per second;
- agreement: logits of a 512-token input, relative error of ours against the defaults and per-position argmax
  agreement, next to the same numbers for transformers' two bf16 expert paths against each other: at
  transformers' random initialisation these shapes are dominated by bf16 rounding (router near-ties, a
  201088-way argmax), so `--diagnose` compares every path against an fp32 copy of the model instead (fewer
  layers: the fp32 copy of 24 layers does not fit next to the bf16 model);
- `--static`: also ours with `cache_implementation="static"` (transformers compiles the decode step);
- `--attn-op-ab`: also ours at batch 1 with attention through the custom op's dispatcher against the eager
  fast path, interleaved (two rounds each);
- `--mxfp4`: instead, the same model with its experts quantized to MXFP4 and written as a checkpoint in the
  official format (examples/tiny_checkpoint.py), then loaded twice: by transformers' own MXFP4 path
  (`Mxfp4GptOssMLP`, OpenAI's triton_kernels through the Hub kernel gpt-oss-triton-kernels, resolved to the
  carried copy in `.anchors/` by LOCAL_KERNELS; `use_kernels=False`, since transformers' default Hub layers
  cannot load offline) and by our `from_pretrained` (MXFP4 experts as stored); each with its weights' and
  peak GPU memory (load + runs), ours also through `DecodeRunner` (N = 32, batch 1 and 16: the README's decode
  route) and with the static cache;
- `--fp8 channel|block`: instead, the experts quantized to FP8 (e4m3, per-channel or 128x128 block scales) and
  written as a checkpoint, loaded by our `from_pretrained`, measured with the fused norm + quant and unfused, beside
  ours with bf16 experts (issue 16: fused against unfused end to end; $OUT/e2e_model_fp8_<granularity>.json).
Medians of `--reps` runs after one warm-up. Needs the CUDA build (`scripts/build_kernel.py`). Writes
$OUT/e2e_model.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("kernels").setLevel(logging.ERROR)

OUT = Path(os.environ.get("OUT", "probe_out"))


def build_model(layers: int):
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = GptOssConfig(num_hidden_layers=layers, num_local_experts=32, num_experts_per_tok=4)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = GptOssForCausalLM(cfg)
    finally:
        torch.set_default_dtype(default)
    return model.eval()


GPU_S: list = []  # device seconds (CUDA events) of the last `timed` call's runs


def timed(fn, reps: int) -> float:
    """Median wall seconds of `reps` calls after one warm-up, synchronised around each (their device time
    from CUDA events goes to GPU_S: wall much above it means the host is the bottleneck)."""
    fn()
    torch.cuda.synchronize()
    times = []
    GPU_S.clear()
    for _ in range(reps):
        ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start = time.perf_counter()
        ev[0].record()
        fn()
        ev[1].record()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        GPU_S.append(ev[0].elapsed_time(ev[1]) / 1e3)
    return statistics.median(times)


def first_then_timed(fn, reps: int) -> tuple[float, float]:
    """Wall seconds of the first call (where a compile or a CUDA-graph capture happens), then ``timed``'s median."""
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start, timed(fn, reps)


def static_generate(model, reps: int, new_tokens: int) -> dict:
    """generate() batch 1 with `cache_implementation="static"` (transformers then compiles the decode step):
    new tokens per second, and the first call's time (compilation included)."""
    gen = torch.Generator(device="cuda").manual_seed(2)
    prompt = torch.randint(1, model.config.vocab_size, (1, 128), device="cuda", generator=gen)

    def run():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False, cache_implementation="static")

    with torch.inference_mode():
        first, s = first_then_timed(run, reps)
    print(f"  generate batch 1, static cache: {new_tokens / s:.1f} new tok/s (first call {first:.0f} s)", flush=True)
    return dict(generate_b1_static_tok_s=round(new_tokens / s, 1), static_first_call_s=round(first, 1))


def profile_decode(model, name: str) -> None:
    """Host time by op over a batch-1 generate of 16 new tokens (after a warm-up): where the eager loop spends it."""
    prompt = torch.randint(1, model.config.vocab_size, (1, 128), device="cuda")

    def run():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=16, min_new_tokens=16,
                              do_sample=False)

    with torch.inference_mode():
        run()
        torch.cuda.synchronize()
        start = time.perf_counter()
        run()
        torch.cuda.synchronize()
        plain = time.perf_counter() - start
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                torch.profiler.ProfilerActivity.CUDA]) as prof:
            run()
            torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    head = f"{name}: generate batch 1, 16 new tokens, {plain * 1e3:.1f} ms without the profiler\n"
    (OUT / f"e2e_profile_decode_{name}.txt").write_text(head + table)
    print(head + table[:5000], flush=True)


def measure(model, reps: int, new_tokens: int) -> dict:
    gen = torch.Generator(device="cuda").manual_seed(0)
    vocab = model.config.vocab_size
    res = {}
    with torch.inference_mode():
        for n in (512, 1024, 4096):
            ids = torch.randint(1, vocab, (1, n), device="cuda", generator=gen)
            s = timed(lambda: model(ids, use_cache=False, logits_to_keep=1), 3 * reps)
            g = statistics.median(GPU_S)
            res[f"prefill_{n}_tok_s"] = round(n / s, 1)
            res[f"prefill_{n}_ms"] = dict(wall=round(1e3 * s, 2), device=round(1e3 * g, 2),
                                          device_min_max=[round(1e3 * min(GPU_S), 2), round(1e3 * max(GPU_S), 2)])
            print(f"  prefill {n}: {n / s:.0f} tok/s (wall {1e3 * s:.1f} ms, device {1e3 * g:.1f} ms)", flush=True)
        for b in (1, 16):
            res[f"generate_b{b}_tok_s"] = generate_tok_s(model, reps, new_tokens, b, gen)
    return res


def generate_tok_s(model, reps: int, new_tokens: int, b: int, gen) -> float:
    prompt = torch.randint(1, model.config.vocab_size, (b, 128), device="cuda", generator=gen)

    def run():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                              min_new_tokens=new_tokens, do_sample=False)

    with torch.inference_mode():
        s = timed(run, reps)
    print(f"  generate batch {b}: {b * new_tokens / s:.1f} new tok/s", flush=True)
    return round(b * new_tokens / s, 1)


def attn_op_path_b1(model, reps: int, new_tokens: int) -> dict:
    """Batch-1 generate of ours with attention forced through the custom op's dispatcher (the route before the
    eager fast path, attention/flash.py ``_attn_fwd``), then again with the fast path, interleaved."""
    mods = [m for n, m in list(sys.modules.items()) if n.endswith(".attention.flash")]  # every loaded copy
    fast = {m: m._attn_fwd for m in mods}
    res = {"fast_path": [], "op_path": []}
    for _ in range(2):
        for name in ("op_path", "fast_path"):
            for m in mods:
                m._attn_fwd = (lambda q, *a, m=m: m.ops.attn_fwd(q, *a)) if name == "op_path" else fast[m]
            try:
                print(f"  {name}:", end="", flush=True)
                gen = torch.Generator(device="cuda").manual_seed(5)
                res[name].append(generate_tok_s(model, reps, new_tokens, 1, gen))
            finally:
                for m in mods:
                    m._attn_fwd = fast[m]
    return res


def switches() -> dict:
    """The package's kernel switches (GOK_*) set for this run: its numbers are only comparable under the same ones."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("GOK_")}


def compare(logits, ref) -> dict:
    rel = ((logits - ref).abs().max() / ref.abs().max()).item()
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    return dict(rel_err=round(rel, 5), argmax_agreement=round(agree, 4))


def diagnose(layers: int) -> None:
    """Logits of a 512-token input against an fp32 copy of the model: transformers' bf16 paths and ours,
    each of our layers alone and all together (issue 3's agreement check at more layers)."""
    import copy

    torch.manual_seed(0)
    model = build_model(layers)
    check = torch.randint(1, model.config.vocab_size, (1, 512), device="cuda",
                          generator=torch.Generator(device="cuda").manual_seed(1))

    def logits_of(m):
        with torch.inference_mode():
            return m(check).logits[0].float()

    ref32 = logits_of(copy.deepcopy(model).float())
    res = dict(layers=layers, ref_abs_max=ref32.abs().max().item(), ref_std=ref32.std().item(), rows=[])
    base = logits_of(model)

    def add(name, logits):
        r = dict(variant=name, vs_fp32=compare(logits, ref32), vs_bf16_default=compare(logits, base))
        res["rows"].append(r)
        print(r, flush=True)

    add("transformers bf16 (eager attention, grouped_mm)", base)
    alt = copy.deepcopy(model)
    alt.set_experts_implementation("eager")
    add("transformers bf16, eager experts", logits_of(alt))
    del alt
    for name, attn in (("ours, transformers' attention", False), ("ours, all", True)):
        m = ours_from(model, attention=attn)
        add(name, logits_of(m))
        del m
        torch.cuda.empty_cache()
    (OUT / f"e2e_diagnose_{layers}.json").write_text(json.dumps(res, indent=1))


def ours_from(model, *, fused: bool = True, attention: bool = True):
    """The same weights through the package's public from_pretrained (the README's route)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness import load_kernel

    return load_kernel().from_pretrained(None, config=model.config, state_dict=model.state_dict(), device="cuda",
                                         dtype=torch.bfloat16, fused=fused, attention=attention)


def runner_tok_s(kernel, model, reps: int, new_tokens: int, b: int, gen, steps: int = 32) -> dict:
    """The README's decode route (``DecodeRunner``, ``steps`` decode steps per CUDA-graph launch): greedy, 128-token
    prompt, new tokens per second at batch ``b`` (median of ``reps`` after the first call, which captures)."""
    runner = kernel.DecodeRunner(model, steps_per_launch=steps)
    prompt = torch.randint(1, model.config.vocab_size, (b, 128), device="cuda", generator=gen)

    def run():
        return runner.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)

    with torch.inference_mode():
        first, s = first_then_timed(run, reps)
    print(f"  DecodeRunner (N = {steps}) batch {b}: {b * new_tokens / s:.1f} new tok/s (first call {first:.1f} s)",
          flush=True)
    return {f"runner_b{b}_tok_s": round(b * new_tokens / s, 1), f"runner_b{b}_first_call_s": round(first, 1)}


def load_transformers_mxfp4(path):
    """transformers' own MXFP4 path on an MXFP4 checkpoint: its ``Mxfp4GptOssMLP`` with OpenAI's triton_kernels
    through the Hub kernel gpt-oss-triton-kernels, resolved offline to the carried copy in ``.anchors/``."""
    import transformers
    from harness import use_anchor_kernel

    use_anchor_kernel()
    return transformers.AutoModelForCausalLM.from_pretrained(path, device_map="cuda", dtype=torch.bfloat16,
                                                             use_kernels=False)


def mxfp4_run(args) -> None:
    """Transformers' MXFP4 path against ours on one MXFP4 checkpoint (module docstring, `--mxfp4`)."""
    import gc

    import transformers
    from tiny_checkpoint import write_mxfp4_checkpoint

    torch.manual_seed(0)
    path = Path(os.environ.get("MXFP4_CKPT", "/tmp/gpt-oss-20b-shaped-mxfp4"))
    t0 = time.perf_counter()
    model = build_model(args.layers)
    write_mxfp4_checkpoint(model, path)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    print(f"MXFP4 checkpoint written to {path} in {time.perf_counter() - t0:.0f} s "
          f"({sum(f.stat().st_size for f in path.iterdir()) / 1e9:.1f} GB)", flush=True)
    check = torch.randint(1, 201088, (1, 512), device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))
    res = dict(device=torch.cuda.get_device_name(), switches=switches(), torch=torch.__version__, transformers=transformers.__version__,
               layers=args.layers, reps=args.reps, new_tokens=args.new_tokens,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    logits = {}
    for name in ("transformers_mxfp4", "ours"):
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        if name == "ours":
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from harness import load_kernel

            kernel = load_kernel()
            m = kernel.from_pretrained(path, device="cuda", dtype=torch.bfloat16)
        else:
            m = load_transformers_mxfp4(path)
            print("transformers' MoE block:", type(m.model.layers[0].mlp).__name__, flush=True)
        torch.cuda.synchronize()
        load_s = time.perf_counter() - t0
        weights_gb = torch.cuda.memory_allocated() / 1e9
        print(f"{name}: loaded in {load_s:.0f} s, {weights_gb:.1f} GB on the GPU", flush=True)
        with torch.inference_mode():
            logits[name] = m(check).logits[0].float()
        r = measure(m, args.reps, args.new_tokens)
        if name == "ours":
            gen = torch.Generator(device="cuda").manual_seed(3)
            for b in (1, 16):
                r.update(runner_tok_s(kernel, m, args.reps, args.new_tokens, b, gen))
        if name == "ours" and args.static:
            r.update(static_generate(m, args.reps, args.new_tokens))
        r.update(load_s=round(load_s, 1), weights_gb=round(weights_gb, 2),
                 peak_gb=round(torch.cuda.max_memory_allocated() / 1e9, 2))
        res[name] = r
        del m
    res["ours_vs_transformers_mxfp4_logits"] = compare(logits["ours"], logits["transformers_mxfp4"])
    res["ours_static_cache"] = {k: res["ours"][k] for k in ("generate_b1_static_tok_s", "static_first_call_s")
                                if k in res["ours"]}
    rows = [dict(what=k, transformers_mxfp4=res["transformers_mxfp4"][k], ours=res["ours"][k],
                 speedup=round(res["ours"][k] / res["transformers_mxfp4"][k], 2))
            for k in res["transformers_mxfp4"] if k.endswith("tok_s")]
    # The README's decode route (DecodeRunner) against transformers' MXFP4 generate at the same batch size.
    rows += [dict(what=f"runner_b{b}_tok_s vs generate_b{b}_tok_s", transformers_mxfp4=res["transformers_mxfp4"][g],
                  ours=res["ours"][k], speedup=round(res["ours"][k] / res["transformers_mxfp4"][g], 2))
             for b in (1, 16) for k, g in [(f"runner_b{b}_tok_s", f"generate_b{b}_tok_s")] if k in res["ours"]]
    res["rows"] = rows
    (OUT / "e2e_model_mxfp4.json").write_text(json.dumps(res, indent=1))
    print("\n| what | transformers MXFP4 | ours MXFP4 | speedup |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['transformers_mxfp4']} | {r['ours']} | {r['speedup']}x |")
    for k in ("weights_gb", "peak_gb", "load_s"):
        print(f"| {k} | {res['transformers_mxfp4'][k]} | {res['ours'][k]} | |")
    print(f"logits, ours vs transformers' MXFP4 path: {res['ours_vs_transformers_mxfp4_logits']}")
    if "generate_b1_static_tok_s" in res["ours"]:
        print(f"ours, static cache: {res['ours']['generate_b1_static_tok_s']} tok/s")


def fp8_run(args) -> None:
    """FP8 experts (issue 16): the model's experts quantized to e4m3 (``--fp8 channel|block``) and written as a
    checkpoint (examples/tiny_checkpoint.write_fp8_checkpoint), loaded by our ``from_pretrained``; measured with the
    fused post-attention RMSNorm + quant (NormMoeMLP's rms_norm_quant_fp8) and unfused (``fuse_norm_quant = False``
    on every layer: rms_norm, then the experts quantize again), beside ours with the bf16 experts, one process.
    Logits of a 512-token input against transformers' defaults on the bf16 weights."""
    import gc

    import transformers
    from tiny_checkpoint import write_fp8_checkpoint

    torch.manual_seed(0)
    path = Path(os.environ.get("FP8_CKPT", f"/tmp/gpt-oss-20b-shaped-fp8-{args.fp8}"))
    model = build_model(args.layers)
    t0 = time.perf_counter()
    write_fp8_checkpoint(model, path, args.fp8)
    print(f"FP8 ({args.fp8}) checkpoint written to {path} in {time.perf_counter() - t0:.0f} s "
          f"({sum(f.stat().st_size for f in path.iterdir()) / 1e9:.1f} GB)", flush=True)
    check = torch.randint(1, model.config.vocab_size, (1, 512), device="cuda",
                          generator=torch.Generator(device="cuda").manual_seed(1))
    with torch.inference_mode():
        ref_logits = model(check).logits[0].float()
    res = dict(device=torch.cuda.get_device_name(), switches=switches(), torch=torch.__version__, transformers=transformers.__version__,
               layers=args.layers, reps=args.reps, new_tokens=args.new_tokens, granularity=args.fp8,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    model = ours_from(model)
    torch.cuda.empty_cache()
    with torch.inference_mode():
        res["ours_bf16_logits_vs_defaults"] = compare(model(check).logits[0].float(), ref_logits)
    print("ours, bf16 experts:", flush=True)
    res["ours_bf16"] = measure(model, args.reps, args.new_tokens)
    del model
    gc.collect()
    torch.cuda.empty_cache()
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from harness import load_kernel

    kernel = load_kernel()
    model = kernel.from_pretrained(path, device="cuda", dtype=torch.bfloat16)
    res["fp8_weights_gb"] = round(torch.cuda.memory_allocated() / 1e9, 2)
    fused = [m for m in model.modules() if hasattr(m, "fuse_norm_quant")]
    for flag in (True, False):
        for m in fused:
            m.fuse_norm_quant = flag
        name = "ours_fp8_fused" if flag else "ours_fp8_unfused"
        with torch.inference_mode():
            res[f"{name}_logits_vs_defaults"] = compare(model(check).logits[0].float(), ref_logits)
        print(f"{name} ({len(fused)} NormMoeMLP layers):", flush=True)
        res[name] = measure(model, args.reps, args.new_tokens)
    rows = [dict(what=k, ours_bf16=res["ours_bf16"][k], fp8_unfused=res["ours_fp8_unfused"][k],
                 fp8_fused=res["ours_fp8_fused"][k],
                 fused_vs_unfused_pct=round(100 * (res["ours_fp8_fused"][k] / res["ours_fp8_unfused"][k] - 1), 1))
            for k in res["ours_bf16"] if k.endswith("tok_s")]
    res["rows"] = rows
    (OUT / f"e2e_model_fp8_{args.fp8}.json").write_text(json.dumps(res, indent=1))
    print("\n| what | ours bf16 | ours FP8 unfused | ours FP8 fused | fused vs unfused |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['ours_bf16']} | {r['fp8_unfused']} | {r['fp8_fused']} | {r['fused_vs_unfused_pct']}% |")
    for k in ("ours_bf16_logits_vs_defaults", "ours_fp8_fused_logits_vs_defaults", "ours_fp8_unfused_logits_vs_defaults"):
        print(f"{k}: {res[k]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--diagnose", action="store_true", help="only the logits check, per layer kind")
    parser.add_argument("--static", action="store_true", help="also ours with the static cache (compiled decode)")
    parser.add_argument("--profile", type=int, default=0, help="profile one prefill of this many tokens (ours)")
    parser.add_argument("--attn-op-ab", action="store_true",
                        help="also batch-1 generate of ours with attention through the op's dispatcher, interleaved")
    parser.add_argument("--profile-decode", action="store_true",
                        help="profile 16 new tokens of batch-1 generate, defaults and ours")
    parser.add_argument("--mxfp4", action="store_true",
                        help="MXFP4 checkpoint: transformers' MXFP4 path against ours (instead of the bf16 run)")
    parser.add_argument("--fp8", choices=("channel", "block"), default=None,
                        help="FP8 experts checkpoint: ours bf16 / FP8 unfused / FP8 fused (instead of the bf16 run)")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if args.fp8:
        return fp8_run(args)
    if args.diagnose:
        return diagnose(args.layers)
    if args.mxfp4:
        return mxfp4_run(args)
    import transformers

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(args.layers)
    print(f"model built in {time.perf_counter() - t0:.0f} s, "
          f"{sum(p.numel() for p in model.parameters()) / 1e9:.1f} B parameters", flush=True)
    check = torch.randint(1, model.config.vocab_size, (1, 512), device="cuda",
                          generator=torch.Generator(device="cuda").manual_seed(1))
    with torch.inference_mode():
        ref_logits = model(check).logits[0].float()
        model.set_experts_implementation("eager")  # transformers' other bf16 path: the spread between its own paths
        alt = compare(model(check).logits[0].float(), ref_logits)
        model.set_experts_implementation("grouped_mm")
    print(f"transformers eager experts against grouped_mm: {alt}", flush=True)
    if args.profile_decode:
        profile_decode(model, "defaults")
    print("transformers defaults (eager attention, grouped_mm / batched_mm experts):", flush=True)
    default = measure(model, args.reps, args.new_tokens)

    model = ours_from(model)  # the defaults' model is freed here: two 20b-shaped bf16 copies would fit, three not
    torch.cuda.empty_cache()
    with torch.inference_mode():
        logits = model(check).logits[0].float()
    rel = ((logits - ref_logits).abs().max() / ref_logits.abs().max()).item()
    agree = (logits.argmax(-1) == ref_logits.argmax(-1)).float().mean().item()
    del ref_logits, logits
    print(f"ours: logits rel. err {rel:.2e}, argmax agreement {agree:.1%} (512 positions)", flush=True)
    print("ours (from_pretrained: every layer, fused post-attention RMSNorm + MoE):", flush=True)
    ours = measure(model, args.reps, args.new_tokens)
    static = static_generate(model, args.reps, args.new_tokens) if args.static else {}
    ab = attn_op_path_b1(model, args.reps, args.new_tokens) if args.attn_op_ab else {}
    if args.profile_decode:
        profile_decode(model, "ours")
    if args.profile:
        ids = torch.randint(1, model.config.vocab_size, (1, args.profile), device="cuda")
        with torch.inference_mode(), torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]) as prof:
            model(ids, use_cache=False, logits_to_keep=1)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
        (OUT / f"e2e_profile_{args.profile}.txt").write_text(table)
        print(table[:6000])

    rows = [dict(what=k, transformers=default[k], ours=ours[k], speedup=round(ours[k] / default[k], 2))
            for k in default if k.endswith("tok_s")]
    details = {k: dict(transformers=default[k], ours=ours[k]) for k in default if not k.endswith("tok_s")}
    res = dict(device=torch.cuda.get_device_name(), switches=switches(), torch=torch.__version__, transformers=transformers.__version__,
               layers=args.layers, reps=args.reps,
               new_tokens=args.new_tokens, logits_rel_err=rel, argmax_agreement=agree,
               transformers_eager_experts_vs_grouped_mm=alt, rows=rows, details=details, ours_static_cache=static,
               ours_b1_attn_op_ab=ab,
               date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    (OUT / "e2e_model.json").write_text(json.dumps(res, indent=1))
    print("\n| what | transformers defaults | ours | speedup |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['what']} | {r['transformers']} | {r['ours']} | {r['speedup']}x |")
    if static:
        print(f"ours, static cache: {static}")
    if ab:
        print(f"ours, batch-1 generate tok/s, attention through the op / the eager fast path: {ab}")


if __name__ == "__main__":
    main()
