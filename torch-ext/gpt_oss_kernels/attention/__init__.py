"""Attention with sinks / sliding window / GQA (flash-attn entry-point names) and GPT-OSS rotary."""

from .flash import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
from .rotary import rotary_pos_emb

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache", "rotary_pos_emb"]
