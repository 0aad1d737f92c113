#!/usr/bin/env python3
"""Runs examples/gpt_oss_20b.ipynb end to end with other parameters: only its first cell (tagged "parameters",
``MODEL_ID`` and ``DEVICE``) is replaced, and the kernel is this Python (``sys.executable``, with ipykernel).

    python examples/run_notebook.py openai/gpt-oss-20b cuda --out executed.ipynb
    python examples/run_notebook.py /path/to/checkpoint cpu
    python examples/run_notebook.py tiny cpu        # the tiny MXFP4 checkpoint + tokenizer, written to a temp dir

Needs nbformat, nbclient and ipykernel (requirements.txt). Exits 1 and names the failing cell if one raises; with
``--out`` the executed notebook, and with ``--text`` each code cell's source and printed output as plain text,
are written either way.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent
NOTEBOOK = EXAMPLES / "gpt_oss_20b.ipynb"


def set_parameters(nb, **params) -> None:
    """Replaces the source of the cell tagged "parameters" with ``NAME = repr(value)`` lines."""
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"expected one cell tagged 'parameters', found {len(cells)}")
    cells[0].source = "".join(f"{name} = {value!r}\n" for name, value in params.items()).rstrip("\n")


def _kernel_manager_class():
    """An nbclient kernel manager that always starts ipykernel in this Python: an installed "python3" kernelspec
    (~/.local/share/jupyter/kernels/python3, ...) may name another interpreter."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager
    from traitlets import default

    class ThisPython(AsyncKernelManager):
        @default("kernel_spec_manager")
        def _kernel_spec_manager_default(self):
            return KernelSpecManager(kernel_dirs=[], parent=self)

    return ThisPython


def execute_notebook(model_id: str, device: str, *, notebook: Path = NOTEBOOK, out: Path | None = None,
                     text: Path | None = None, timeout: int = 600, cwd: Path = EXAMPLES):
    """Executes ``notebook`` with ``MODEL_ID = model_id`` and ``DEVICE = device`` (working directory ``cwd``,
    ``timeout`` seconds per cell) and returns the executed notebook (``nbformat.NotebookNode``); writes it to
    ``out`` and its outputs as text (``outputs_as_text``) to ``text`` if given, also when a cell fails
    (nbclient's ``CellExecutionError`` is raised after)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(str(notebook), as_version=4)
    set_parameters(nb, MODEL_ID=model_id, DEVICE=device)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", kernel_manager_class=_kernel_manager_class(),
                            resources={"metadata": {"path": str(cwd)}})
    try:
        client.execute()
    finally:
        if out is not None:
            nbformat.write(nb, str(out))
        if text is not None:
            Path(text).write_text(outputs_as_text(nb))
    return nb


def outputs_as_text(nb) -> str:
    """Each code cell's source and what it printed (streams, results, errors), as plain text."""
    parts = []
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        parts.append(f"# ---- code cell {i} ----\n{cell.source}\n# ---- output ----")
        for o in cell.get("outputs", []):
            if o.get("output_type") == "stream":
                parts.append(o.get("text", "").rstrip("\n"))
            elif o.get("output_type") in ("execute_result", "display_data"):
                parts.append(o.get("data", {}).get("text/plain", "").rstrip("\n"))
            elif o.get("output_type") == "error":
                parts.append(f"{o.get('ename')}: {o.get('evalue')}")
    return "\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id", help='a Hub id or a local checkpoint folder; "tiny": the tiny checkpoint')
    parser.add_argument("device", help='"cuda", "cpu", ...')
    parser.add_argument("--out", type=Path, help="write the executed notebook here")
    parser.add_argument("--text", type=Path, help="write each code cell's source and output here, as plain text")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell (default 600)")
    args = parser.parse_args()

    from nbclient.exceptions import CellExecutionError

    with tempfile.TemporaryDirectory() as tmp:
        model_id = args.model_id
        if model_id == "tiny":
            from tiny_checkpoint import write_tiny_checkpoint

            model_id = str(write_tiny_checkpoint(Path(tmp) / "tiny-gpt-oss-mxfp4"))
            print(f"tiny MXFP4 checkpoint + tokenizer written to {model_id}")
        try:
            nb = execute_notebook(model_id, args.device, out=args.out, text=args.text, timeout=args.timeout)
        except CellExecutionError as e:
            print(str(e)[-4000:], file=sys.stderr)
            sys.exit(1)
    code = [c for c in nb.cells if c.cell_type == "code"]
    print(f"{NOTEBOOK.name}: {len(code)} code cells ran without errors (MODEL_ID={args.model_id!r}, "
          f"DEVICE={args.device!r})" + (f"; executed notebook: {args.out}" if args.out else ""))


if __name__ == "__main__":
    sys.path.insert(0, str(EXAMPLES))
    main()
