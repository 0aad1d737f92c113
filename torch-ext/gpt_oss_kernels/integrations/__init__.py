"""How our layers reach a transformers GPT-OSS model (transformers is imported only when these are called).

* ``kernel_config()``: the ``transformers.KernelConfig`` for ``from_pretrained(..., use_kernels=True,
  kernel_config=...)`` on accelerators; with ``config=checkpoint_config(path)`` for MXFP4 / FP8 checkpoints
  (``checkpoint_config``: their experts held by our layouts as stored, not by transformers' quantizer).
* ``from_pretrained()``: loads a GPT-OSS checkpoint (bf16 or MXFP4 as it ships) with every layer of ours,
  attention included, on any device (CPU too), under transformers 5.22 to 5.25.
* ``register_static_cache_mask(name)``: after transformers' own ``from_pretrained`` with our attention, makes
  ``generate(..., cache_implementation="static")`` correct (``from_pretrained()`` above does it itself).
"""

from .decode import DecodeRunner
from .routes import (attention_implementation, checkpoint_config, from_pretrained, kernel_config,
                     register_static_cache_mask)

__all__ = ["DecodeRunner", "attention_implementation", "checkpoint_config", "from_pretrained", "kernel_config",
           "register_static_cache_mask"]
