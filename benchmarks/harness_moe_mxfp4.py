"""The MXFP4 rows of harness_moe alone (``harness_moe.mxfp4_rows``: the block with MXFP4 experts beside our bf16
block on the dequantized weights and transformers' MXFP4 path), for a device call that only needs those:
``python benchmarks/harness.py --only moe_mxfp4 [--quick]``."""

from harness_moe import mxfp4_rows


def run(kernel, ceilings: dict, quick: bool) -> list[dict]:
    return mxfp4_rows(kernel, ceilings, quick)
