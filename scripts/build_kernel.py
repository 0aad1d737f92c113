#!/usr/bin/env python3
"""Build one kernel-builder variant of this repository into ``build/<variant>/``.

Nix (and so kernel-builder) cannot run on our machines, so this script reproduces
what ``nix run .#build-and-copy`` lays out, for the installed torch and one backend:

    build/torch<MAJ><MIN>-cxx11-<cu130|cpu>-x86_64-linux/
        _gpt_oss_kernels_<backend>_<id>.abi3.so   native ops (torch-ext/ + kernel_src/)
        _ops.py                                    generated: ops, add_op_namespace_prefix
        metadata.json                              what kernels._rust.Metadata reads, with the
                                                   digest of every other file and the provenance
        __init__.py, layers.py, ...                every .py of torch-ext/gpt_oss_kernels/

It reads ``build.toml`` (edition 6, the same file kernel-builder reads) and compiles
through torch's own extension tooling (``torch.utils.cpp_extension.load``, ninja), so a
second build of an unchanged tree recompiles nothing.

    python scripts/build_kernel.py                 # backend of the installed torch
    python scripts/build_kernel.py --backend cpu
    python scripts/build_kernel.py --all-archs     # CUDA: every capability in build.toml
    python scripts/build_kernel.py --check-cuda    # compile-only pass of every CUDA source (sm_90a)
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER_SUFFIXES = (".h", ".hpp", ".cuh")

# kernel-builder generates this header; the macros must match for torch-ext/torch_binding.cpp.
REGISTRATION_H = """#pragma once
#include <Python.h>

#define _CONCAT(A, B) A##B
#define CONCAT(A, B) _CONCAT(A, B)
#define _STRINGIFY(A) #A
#define STRINGIFY(A) _STRINGIFY(A)

#define TORCH_LIBRARY_EXPAND(NAME, MODULE) TORCH_LIBRARY(NAME, MODULE)
#define TORCH_LIBRARY_IMPL_EXPAND(NAME, DEVICE, MODULE) TORCH_LIBRARY_IMPL(NAME, DEVICE, MODULE)

#define REGISTER_EXTENSION(NAME)                                                  \\
  PyMODINIT_FUNC CONCAT(PyInit_, NAME)() {                                        \\
    static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, STRINGIFY(NAME),   \\
                                        nullptr, 0, nullptr};                     \\
    return PyModule_Create(&module);                                              \\
  }
"""

OPS_PY = '''import torch
from . import {ops_name}

ops = torch.ops.{ops_name}


def add_op_namespace_prefix(op_name: str) -> str:
    """Prefix op by namespace."""
    return f"{ops_name}::{{op_name}}"
'''


# build.toml edition 6 names a kernel's language; the language fixes the backend it builds for.
LANGUAGE_BACKEND = {"cpp-cuda": "cuda", "cpp-cpu": "cpu"}
# What metadata.json records as the builder (provenance.kernel-builder.version): this script, not
# kernel-builder. Its source state is the kernel's own (provenance.kernel), being in the same tree.
BUILDER = "gpt-oss-kernels scripts/build_kernel.py"


def read_config() -> dict:
    with open(ROOT / "build.toml", "rb") as f:
        config = tomllib.load(f)
    edition = config["general"].get("edition")
    if edition != 6:
        raise SystemExit(f"build.toml has edition {edition}; this script reads edition 6")
    for name, kernel in config.get("kernel", {}).items():
        if kernel.get("language") not in LANGUAGE_BACKEND:
            raise SystemExit(f"kernel.{name}: language {kernel.get('language')!r} is not one of {sorted(LANGUAGE_BACKEND)}")
    layout = config["general"].get("build-layout", "files")
    if layout != "files":
        raise SystemExit(f"build-layout {layout!r}: this script lays out files only")
    return config


def git_state() -> tuple[str, bool] | None:
    """(HEAD commit, whether tracked files differ from it), or None outside a git checkout."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT, check=True, capture_output=True, text=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit, bool(status)


def source_id() -> str:
    """7 hex of the git tree of HEAD, ``_dirty`` when tracked files differ from it."""
    state = git_state()
    if state is None:
        return "0000000_dirty"
    tree = subprocess.run(
        ["git", "rev-parse", "--short=7", "HEAD^{tree}"], cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.strip()
    return tree + ("_dirty" if state[1] else "")


def kernels_minver() -> str:
    """The oldest `kernels` this project supports: the lower bound in requirements.txt."""
    m = re.search(r"^kernels\s*>=\s*([0-9]+\.[0-9]+\.[0-9]+)", (ROOT / "requirements.txt").read_text(), re.M)
    if m is None:
        raise SystemExit("requirements.txt has no `kernels>=X.Y.Z` line")
    return m.group(1)


def hash_variant(variant: Path) -> dict[str, str]:
    """File digests as kernels' ``Digest.hash_variant(DigestAlgorithm.SHA256, variant)`` computes them.

    Every file below ``variant``, keyed by its relative path with ``/``, valued by the
    base64 (standard alphabet, padded) SHA-256 of its bytes; left out: the
    top-level ``metadata.json`` and ``metadata.json.sigstore`` (they carry the digest), and
    Python bytecode (anything under a ``__pycache__`` directory, ``*.pyc``), which the
    interpreter writes into the variant when it is imported.
    """
    files = {}
    for path in sorted(variant.rglob("*")):
        rel = path.relative_to(variant)
        if (not path.is_file() or rel.as_posix() in ("metadata.json", "metadata.json.sigstore")
                or "__pycache__" in rel.parts or path.suffix == ".pyc"):
            continue
        files[rel.as_posix()] = base64.b64encode(hashlib.sha256(path.read_bytes()).digest()).decode()
    return files


def detect_backend() -> str:
    import torch

    return "cuda" if torch.version.cuda and torch.cuda.is_available() else "cpu"


def variant_name(backend: str) -> str:
    import torch

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    if backend == "cuda":
        cu_major, cu_minor = torch.version.cuda.split(".")[:2]
        tag = f"cu{cu_major}{cu_minor}"
    else:
        tag = backend
    return f"torch{major}{minor}-cxx11-{tag}-{platform.machine()}-linux"


def kernels_for(config: dict, backend: str) -> list[dict]:
    return [k for k in config.get("kernel", {}).values() if LANGUAGE_BACKEND[k["language"]] == backend]


def compiled_sources(paths: list[str]) -> list[str]:
    return [str(ROOT / p) for p in paths if not p.endswith(HEADER_SUFFIXES)]


def cuda_archs(config: dict, all_archs: bool) -> list[str]:
    """Capabilities from build.toml; by default only the one of the local GPU."""
    listed = sorted({c for k in kernels_for(config, "cuda") for c in k.get("cuda-capabilities", [])})
    if all_archs:
        return listed
    import torch

    major, minor = torch.cuda.get_device_capability()
    local = f"{major}.{minor}"
    for cap in listed:
        if cap.rstrip("a") == local:
            return [cap]
    raise SystemExit(f"GPU capability {local} is not in build.toml's cuda-capabilities {listed}")


def generated_dir(backend: str) -> Path:
    d = ROOT / "build" / ".generated" / backend
    d.mkdir(parents=True, exist_ok=True)
    (d / "registration.h").write_text(REGISTRATION_H)
    return d


def cxx_standard() -> str:
    """The C++ standard of the installed torch's own extension build, which its headers need: C++20 from torch 2.12
    on (2.15's headers refuse C++17), C++17 before (the GPU machine's 2.11)."""
    import torch

    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    return "c++20" if (major, minor) >= (2, 12) else "c++17"


def include_dirs(config: dict, backend: str) -> list[str]:
    dirs = [str(ROOT), str(ROOT / "kernel_src"), str(generated_dir(backend))]
    for k in kernels_for(config, backend):
        dirs += [str(ROOT / i) for i in k.get("include", [])]
    return dirs


def compile_extension(config: dict, backend: str, ops_name: str, archs: list[str], verbose: bool) -> Path:
    from torch.utils import cpp_extension

    sources = compiled_sources(config["torch"]["src"])
    std = f"-std={cxx_standard()}"
    cxx_flags = ["-O3", std, f"-D{backend.upper()}_KERNEL"] + config["torch"].get("cxx-flags", [])
    cuda_flags: list[str] = []
    for k in kernels_for(config, backend):
        sources += compiled_sources(k["src"])
        cxx_flags += k.get("cxx-flags", [])
        cuda_flags += k.get("cuda-flags", [])
    if backend == "cuda":
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
        cuda_flags = ["-O3", std, "-DCUDA_KERNEL", "--use_fast_math", "-lineinfo"] + cuda_flags

    build_dir = ROOT / "build" / ".ninja" / backend
    build_dir.mkdir(parents=True, exist_ok=True)
    # Only the newest object set matters; an old id's .so would be loaded by nobody.
    for old in build_dir.glob("_*.so"):
        old.unlink()
    cpp_extension.load(
        name=ops_name,
        sources=sources,
        extra_cflags=cxx_flags,
        extra_cuda_cflags=cuda_flags,
        extra_include_paths=include_dirs(config, backend),
        build_directory=str(build_dir),
        is_python_module=False,
        with_cuda=backend == "cuda",
        verbose=verbose,
    )
    return build_dir / f"{ops_name}.so"


def write_variant(config: dict, backend: str, ops_name: str, so_path: Path, archs: list[str]) -> Path:
    general = config["general"]
    package = ROOT / "torch-ext" / general["name"].replace("-", "_")
    out = ROOT / "build" / variant_name(backend)
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(package, out, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "_ops.py"))
    shutil.copy2(so_path, out / f"{ops_name}.abi3.so")
    (out / "_ops.py").write_text(OPS_PY.format(ops_name=ops_name))
    backend_info: dict = {"type": backend}
    if backend == "cuda":
        backend_info["archs"] = archs
    provenance: dict = {"kernel-builder": {"version": BUILDER}}
    state = git_state()
    if state is not None:
        provenance["kernel"] = {"commit": state[0], "dirty": state[1]}
    metadata = {
        "name": general["name"],
        "id": ops_name,
        "version": general["version"],
        "license": general["license"],
        "kernels-minver": kernels_minver(),
        "build-layout": general.get("build-layout", "files"),
        "python-depends": general.get("python-depends", []),
        "backend": backend_info,
        # Written last: the digest covers every file of the variant but metadata.json.
        "digest": {"algorithm": "sha256", "files": hash_variant(out)},
        "provenance": provenance,
    }
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def check_cuda(config: dict, arch: str = "90a", resource_usage: bool = False) -> None:
    """Compile every CUDA source (and the binding as the CUDA variant sees it), without linking.

    Works on a machine with nvcc but no GPU and a CPU build of torch: the CUDA headers of
    ATen/c10 ship in every torch wheel.
    """
    import torch.utils.cpp_extension as ce

    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    cuda_home = Path(nvcc).resolve().parents[1]
    os.environ.setdefault("CUDA_HOME", str(cuda_home))
    torch_inc = ce.include_paths()
    import sysconfig

    incs = include_dirs(config, "cuda") + torch_inc + [str(cuda_home / "include"), sysconfig.get_paths()["include"]]
    # A CPU wheel of torch lacks the one header its CUDA build generates; stand one in.
    if not any(Path(d, "c10/cuda/impl/cuda_cmake_macros.h").exists() for d in torch_inc):
        stub = ROOT / "build" / ".generated" / "check"
        (stub / "c10/cuda/impl").mkdir(parents=True, exist_ok=True)
        (stub / "c10/cuda/impl/cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
        incs.append(str(stub))
    inc_flags = [f"-I{d}" for d in incs]
    out_dir = ROOT / "build" / ".check"
    out_dir.mkdir(parents=True, exist_ok=True)
    failures = []
    std = f"-std={cxx_standard()}"
    cu_sources = [s for k in kernels_for(config, "cuda") for s in compiled_sources(k["src"]) if s.endswith(".cu")]
    for src in cu_sources:
        cmd = [nvcc, "-c", src, "-o", str(out_dir / (Path(src).stem + ".o")), std, "-O3",
               "--use_fast_math", "-DCUDA_KERNEL", f"-gencode=arch=compute_{arch},code=sm_{arch}",
               "-D_GLIBCXX_USE_CXX11_ABI=1", "--expt-relaxed-constexpr"] + inc_flags
        if resource_usage:
            cmd.append("-Xptxas=-v")
        print("nvcc", Path(src).relative_to(ROOT), flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if resource_usage or r.returncode:
            sys.stdout.write(r.stdout + r.stderr)
        if r.returncode:
            failures.append(src)
    for src in compiled_sources(config["torch"]["src"]):
        cmd = ["g++", "-fsyntax-only", std, "-DCUDA_KERNEL", "-DTORCH_EXTENSION_NAME=check", src] + inc_flags
        print("g++ -fsyntax-only", Path(src).relative_to(ROOT), "(CUDA variant)", flush=True)
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode:
            sys.stdout.write(r.stdout + r.stderr)
            failures.append(src)
    if failures:
        raise SystemExit(f"CUDA compile check failed for: {failures}")
    print(f"CUDA compile check passed ({len(cu_sources)} CUDA sources, sm_{arch})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=["cpu", "cuda"], help="default: cuda when a GPU is visible, else cpu")
    parser.add_argument("--all-archs", action="store_true", help="CUDA: build every capability in build.toml")
    parser.add_argument("--check-cuda", action="store_true", help="compile-only pass of the CUDA sources (sm_90a)")
    parser.add_argument("--resource-usage", action="store_true", help="with --check-cuda: print ptxas -v")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()

    config = read_config()
    if args.check_cuda:
        check_cuda(config, resource_usage=args.resource_usage)
        return
    backend = args.backend or detect_backend()
    if backend not in config["general"]["backends"]:
        raise SystemExit(f"backend {backend!r} is not in build.toml's backends")
    archs = cuda_archs(config, args.all_archs) if backend == "cuda" else []
    ops_name = f"_{config['general']['name'].replace('-', '_')}_{backend}_{source_id()}"
    so_path = compile_extension(config, backend, ops_name, archs, args.verbose)
    out = write_variant(config, backend, ops_name, so_path, archs)
    print(f"built {out.relative_to(ROOT)} ({ops_name})")


if __name__ == "__main__":
    main()
