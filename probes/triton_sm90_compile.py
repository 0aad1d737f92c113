#!/usr/bin/env python3
"""Probe (delete once answered): do the package's Triton kernels compile for sm_90 with the Triton that torch 2.15
brings (3.9), on a machine without a GPU?

Runs the Triton-interpreter checks (scripts/*_interpret_check.py) with the interpreter off and a stand-in driver
whose target is sm_90: every launch compiles its specialization (to a cubin, through Triton's own ptxas) instead of
running, and autotuned kernels compile every config. The checks' numbers are then meaningless (nothing runs); what
counts is the table at the end: per kernel, the specializations compiled and any compile error.

    PYTHONPATH=<site with triton> python probes/triton_sm90_compile.py [attn moe_mxfp4 fp8]
"""

from __future__ import annotations

import collections
import contextlib
import io
import os
import runpy
import sys
import traceback
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # Triton's own library must load as compiled functions
import triton  # noqa: E402
from triton import knobs  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import autotuner, driver, jit  # noqa: E402

knobs.runtime.interpret = False  # an override the knob keeps, whatever the environment says next
os.environ["TRITON_INTERPRET"] = "1"  # the checks assert it
ROOT = Path(__file__).resolve().parents[1]
compiled: dict[str, int] = collections.Counter()
failed: dict[str, list[str]] = collections.defaultdict(list)


class Sm90:
    """What JITFunction.run asks of the active driver before it compiles."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self):
        import torch

        return torch.device("cpu")


driver.set_active(Sm90())
_do_compile = jit.JITFunction._do_compile


def do_compile(self, key, signature, device, constexprs, options, attrs, warmup):
    name = self.fn.__name__
    try:
        kernel = _do_compile(self, key, signature, device, constexprs, options, attrs, True)
        compiled[name] += 1
        return kernel
    except Exception as e:  # noqa: BLE001 - recorded, the check goes on
        failed[name].append(f"{type(e).__name__}: {str(e).strip().splitlines()[-1][:300] if str(e).strip() else ''}")
        return None


jit.JITFunction._do_compile = do_compile
_run = jit.JITFunction.run
jit.JITFunction.run = lambda self, *a, grid, warmup, **kw: _run(self, *a, grid=grid, warmup=True, **kw)


def autotuned_run(self, *args, **kwargs):
    self.nargs = dict(zip(self.arg_names, args))
    for config in self.prune_configs(kwargs):
        self.fn.run(*args, grid=(1,), warmup=True, **{**kwargs, **config.all_kwargs()})


autotuner.Autotuner.run = autotuned_run

sys.path.insert(0, str(ROOT / "scripts"))
_exit = sys.exit
sys.exit = lambda code=0: None  # the checks stop at their first (here meaningless) mismatch: let them go on
for check in sys.argv[1:] or ["attn", "moe_mxfp4", "fp8"]:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(ROOT / "scripts" / f"{check}_interpret_check.py"), run_name="__main__")
    except Exception:  # noqa: BLE001 - a check may stop on garbage outputs; what it launched so far counts
        print(f"{check}: stopped early:\n{traceback.format_exc()[-1500:]}")
    print(f"{check}: done")

print(f"triton {triton.__version__}, target sm_90")
for name in sorted(set(compiled) | set(failed)):
    print(f"{name}: {compiled[name]} compiled, {len(failed[name])} failed")
    for msg in sorted(set(failed[name]))[:5]:
        print(f"    {msg}")
_exit(1 if failed else 0)
