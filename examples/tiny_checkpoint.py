"""Write a GPT-OSS checkpoint in openai/gpt-oss's on-disk MXFP4 format (safetensors + config.json with
``quantization_config``), e.g. from the tiny model of ``tiny_gpt_oss.tiny_model()``, and a tiny tokenizer with
GPT-OSS's special tokens and a harmony-style chat template: nothing is downloaded, and transformers loads the
folder as it loads openai/gpt-oss-20b (``AutoTokenizer.from_pretrained(path)``, ``from_pretrained(path)``).

    python examples/tiny_checkpoint.py /tmp/tiny-mxfp4        # weights, config, tokenizer, generation config

``write_fp8_checkpoint``: the same with FP8 experts (``quant.fp8.quantize_experts_fp8``, per channel or 128x128
block scales), loadable by ``gpt_oss_kernels.from_pretrained`` into our FP8 experts layout.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _quant_module(name: str):
    """gpt_oss_kernels.quant.<name>, or straight from this checkout without a build (it imports only torch)."""
    try:
        import importlib

        return importlib.import_module(f"gpt_oss_kernels.quant.{name}")
    except ImportError:
        import importlib.util

        path = ROOT / "torch-ext" / "gpt_oss_kernels" / "quant" / f"{name}.py"
        spec = importlib.util.spec_from_file_location(f"_gok_{name}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod


# openai/gpt-oss-20b's config.json: "quantization_config"
QUANTIZATION_CONFIG = _quant_module("mxfp4").mxfp4_quantization_config()
MODULES_TO_NOT_CONVERT = QUANTIZATION_CONFIG["modules_to_not_convert"]


def _quantize_experts_mxfp4():
    return _quant_module("mxfp4").quantize_experts_mxfp4


def mxfp4_state_dict(model: torch.nn.Module, dtype: torch.dtype = torch.bfloat16) -> dict:
    """The model's state dict as the official checkpoints hold it: experts as ``*_blocks`` / ``*_scales``
    (uint8), every other floating tensor (expert biases included) in ``dtype`` (bf16 in openai's files)."""
    sd = _quantize_experts_mxfp4()(model, bias_dtype=dtype)
    return {n: (t.detach().to(dtype) if t.is_floating_point() else t.detach()).contiguous().cpu()
            for n, t in sd.items()}


def write_mxfp4_checkpoint(model: torch.nn.Module, path: str | Path, dtype: torch.dtype = torch.bfloat16,
                           config_overrides: dict | None = None) -> Path:
    """Writes ``model`` (a ``GptOssForCausalLM``) to ``path`` in the official MXFP4 format: ``model.safetensors``
    with the names of openai/gpt-oss-20b (``model.layers.{i}.mlp.experts.gate_up_proj_blocks``, ``..._scales``,
    ``..._bias``, ``down_proj_blocks``, ...) and ``config.json`` with ``quantization_config = {"quant_method":
    "mxfp4", "modules_to_not_convert": [...]}`` as in the 20b config (``config_overrides`` set further keys,
    e.g. the token ids). Returns the folder."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = mxfp4_state_dict(model, dtype)
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)  # shared with the embedding (safetensors refuses shared storage)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = dict(QUANTIZATION_CONFIG)
    config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    config.update(config_overrides or {})
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


def write_fp8_checkpoint(model: torch.nn.Module, path: str | Path, granularity: str = "channel",
                         dtype: torch.dtype = torch.bfloat16) -> Path:
    """Writes ``model`` (a ``GptOssForCausalLM``) to ``path`` with FP8 experts: ``model.safetensors`` holding
    ``...mlp.experts.gate_up_proj_fp8`` (E, 2I, H) float8_e4m3fn and ``..._scale`` float32 (per channel, or 128x128
    blocks), the same for ``down_proj``, every other floating tensor in ``dtype``; ``config.json`` with
    ``quantization_config = quant.fp8.fp8_quantization_config(granularity)``. Returns the folder."""
    from safetensors.torch import save_file

    fp8 = _quant_module("fp8")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    sd = fp8.quantize_experts_fp8(model, granularity, bias_dtype=dtype)
    keep = (torch.float8_e4m3fn, torch.float32)
    sd = {n: (t.detach().to(dtype) if t.is_floating_point() and not (n.endswith(("_fp8", "_scale")) and t.dtype in keep)
              else t.detach()).contiguous().cpu() for n, t in sd.items()}
    if getattr(model.config, "tie_word_embeddings", False):
        sd.pop("lm_head.weight", None)
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["quantization_config"] = fp8.fp8_quantization_config(granularity)
    config["torch_dtype"] = config["dtype"] = str(dtype).removeprefix("torch.")
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return path


# GPT-OSS's special tokens (o200k_harmony), in the tiny vocabulary: <|endoftext|> is also the padding (id 0, the
# tiny config's pad_token_id), <|return|> ends a reply (the tokenizer's eos), <|unk|> stands for characters outside
# the tiny alphabet (printable ASCII, newline).
SPECIAL_TOKENS = ["<|endoftext|>", "<|startoftext|>", "<|start|>", "<|end|>", "<|message|>", "<|channel|>",
                  "<|constrain|>", "<|return|>", "<|call|>", "<|unk|>"]
SPACE = "\u2581"  # Metaspace: a space is this character at the start of the word that follows it

# The harmony format as openai/gpt-oss's chat template writes it, shortened: the system message (model identity,
# "Reasoning: low|medium|high" from ``reasoning_effort``, default medium; the valid channels), an optional developer
# message (a leading "system" or "developer" turn), user turns, earlier assistant turns in the final channel (with
# their "thinking" in the analysis channel), and with ``add_generation_prompt`` the assistant's start.
CHAT_TEMPLATE = """\
{%- if reasoning_effort is not defined or reasoning_effort is none -%}{%- set reasoning_effort = "medium" -%}{%- endif -%}
{%- if reasoning_effort not in ["low", "medium", "high"] -%}
{{- raise_exception("reasoning_effort must be low, medium or high, got " ~ reasoning_effort) -}}
{%- endif -%}
{%- if model_identity is not defined -%}{%- set model_identity = "You are a helpful assistant." -%}{%- endif -%}
<|start|>system<|message|>{{ model_identity }}
Knowledge cutoff: 2024-06

Reasoning: {{ reasoning_effort }}

# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>
{%- set loop_messages = messages -%}
{%- if messages and messages[0].role in ["system", "developer"] -%}
<|start|>developer<|message|># Instructions

{{ messages[0].content }}

<|end|>
{%- set loop_messages = messages[1:] -%}
{%- endif -%}
{%- for message in loop_messages -%}
{%- if message.role == "user" -%}
<|start|>user<|message|>{{ message.content }}<|end|>
{%- elif message.role == "assistant" -%}
{%- if message.thinking is defined and message.thinking -%}
<|start|>assistant<|channel|>analysis<|message|>{{ message.thinking }}<|end|>
{%- endif -%}
<|start|>assistant<|channel|>final<|message|>{{ message.content }}
{%- if loop.last and not add_generation_prompt -%}<|return|>{%- else -%}<|end|>{%- endif -%}
{%- else -%}
{{- raise_exception("unsupported role " ~ message.role) -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"""

# What the tiny tokenizer's merges are learned from: the template's own text and a few prompts.
_CORPUS = """You are a helpful assistant. Knowledge cutoff: 2024-06 Reasoning: low medium high
# Valid channels: analysis, commentary, final. Channel must be included for every message.
# Instructions system developer user assistant
What is a mixture of experts? Explain it in one sentence. Write a short poem about the sea.
The model routes each token to the top experts, and the experts' outputs are summed with the router's weights.
Hello, how are you today? Tell me about GPT-OSS, the open-weight model, and its kernels on the GPU."""


def _learn_merges(text: str, n: int) -> list[tuple[str, str]]:
    """Byte-pair merges learned from ``text`` (Metaspace words), deterministic: the most frequent pair first,
    ties broken by the pair's text."""
    words: dict[tuple[str, ...], int] = {}
    for w in text.replace(" ", " " + SPACE).split(" "):
        if w:
            words[tuple(w)] = words.get(tuple(w), 0) + 1
    merges = []
    while len(merges) < n:
        pairs: dict[tuple[str, str], int] = {}
        for w, c in words.items():
            for pair in zip(w, w[1:]):
                pairs[pair] = pairs.get(pair, 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = {}
        for w, c in words.items():
            out, i = [], 0
            while i < len(w):
                if w[i:i + 2] == best:
                    out.append(w[i] + w[i + 1])
                    i += 2
                else:
                    out.append(w[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + c
        words = merged
    return merges


def tiny_tokenizer(vocab_size: int = 256):
    """A ``PreTrainedTokenizerFast`` of exactly ``vocab_size`` tokens (the tiny model's 256) built in code: GPT-OSS's
    special tokens, printable ASCII and newline, a space marker, and byte-pair merges learned from the chat
    template's text; ``bos`` <|startoftext|>, ``eos`` <|return|>, ``pad`` <|endoftext|> (id 0) as in gpt-oss;
    ``chat_template`` = ``CHAT_TEMPLATE`` (``apply_chat_template(..., reasoning_effort="low")``)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = ["\n", SPACE] + [chr(c) for c in range(33, 127)]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS + alphabet)}
    if vocab_size < len(vocab):
        raise ValueError(f"vocab_size must be at least {len(vocab)}, got {vocab_size}")
    merges = _learn_merges(_CORPUS, vocab_size - len(vocab))
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    if len(vocab) != vocab_size:
        raise ValueError(f"the corpus gives {len(vocab)} tokens, not {vocab_size}")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<|unk|>", fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPACE, prepend_scheme="never")
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="never")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>", eos_token="<|return|>",
                                   pad_token="<|endoftext|>", unk_token="<|unk|>", chat_template=CHAT_TEMPLATE,
                                   model_max_length=4096)


def token_ids(tokenizer) -> dict:
    """config.json's token ids as gpt-oss sets them: bos <|startoftext|>, eos <|return|>, pad <|endoftext|>."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in ("<|startoftext|>", "<|return|>", "<|endoftext|>")}
    return dict(bos_token_id=ids["<|startoftext|>"], eos_token_id=ids["<|return|>"], pad_token_id=ids["<|endoftext|>"])


def write_tokenizer_files(path: str | Path, tokenizer) -> None:
    """The tokenizer (with its chat template) and generation_config.json (eos: <|return|>, <|endoftext|>,
    <|call|>, as gpt-oss's) into the checkpoint folder ``path``."""
    from transformers import GenerationConfig

    ids = token_ids(tokenizer)
    eos = [ids["eos_token_id"], ids["pad_token_id"], tokenizer.convert_tokens_to_ids("<|call|>")]
    tokenizer.save_pretrained(path)
    config = GenerationConfig(bos_token_id=ids["bos_token_id"], pad_token_id=ids["pad_token_id"], eos_token_id=eos)
    config.save_pretrained(path)


def write_tiny_checkpoint(path: str | Path, model: torch.nn.Module | None = None, seed: int = 0) -> Path:
    """The whole tiny checkpoint folder in one call, as openai/gpt-oss-20b's holds it: the MXFP4 weights and
    config.json (``write_mxfp4_checkpoint``; token ids as gpt-oss sets them: bos <|startoftext|>, eos <|return|>,
    pad <|endoftext|>), the tokenizer with its chat template (``tiny_tokenizer``) and generation_config.json
    (eos: <|return|>, <|endoftext|>, <|call|>). ``model``: a ``GptOssForCausalLM`` with the tiny vocabulary
    (default ``tiny_gpt_oss.tiny_model(seed)``). Returns the folder."""
    if model is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from tiny_gpt_oss import tiny_model

        model = tiny_model(seed=seed)
    tokenizer = tiny_tokenizer(model.config.vocab_size)
    path = write_mxfp4_checkpoint(model, path, config_overrides=token_ids(tokenizer))
    write_tokenizer_files(path, tokenizer)
    return path


def main() -> None:
    out = write_tiny_checkpoint(sys.argv[1] if len(sys.argv) > 1 else "tiny-gpt-oss-mxfp4")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
