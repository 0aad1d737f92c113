"""Attention with sinks / sliding window / GQA (flash-attn entry-point names), GPT-OSS rotary, and the projections
(``multi_linear``: q, k and v in one launch at decode sizes)."""

from .flash import flash_attn_func, flash_attn_varlen_func, flash_attn_with_kvcache
from .projection import multi_linear
from .rotary import rotary_pos_emb

__all__ = ["flash_attn_func", "flash_attn_varlen_func", "flash_attn_with_kvcache", "multi_linear", "rotary_pos_emb"]
