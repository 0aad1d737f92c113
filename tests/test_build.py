"""The repository builds the way kernel-builder lays it out, and loads through `kernels`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ID, ROOT


def _variants():
    return sorted(p.parent for p in (ROOT / "build").glob("torch*-*/metadata.json"))


def test_build_toml_passes_kernel_builder_parser():
    import kernels._rust as kr

    build = kr.Build.open(str(ROOT))
    assert {str(b).lower() for b in build.general.backends} >= {"cpu", "cuda"}


def test_variant_layout_and_metadata(kernel):
    import kernels._rust as kr

    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    variants = _variants()
    assert variants, "no build/<variant>/"
    for variant in variants:
        assert variant.name.startswith(f"torch{major}{minor}-cxx11-") and variant.name.endswith("-x86_64-linux")
        meta = kr.Metadata.read_from_file(variant / "metadata.json")
        raw = json.loads((variant / "metadata.json").read_text())
        assert raw["name"] == "gpt-oss-kernels" and raw["version"] == 1 and raw["license"] == "Apache-2.0"
        backend = raw["backend"]["type"]
        assert meta.id.startswith(f"_gpt_oss_kernels_{backend}_")
        assert (variant / f"{meta.id}.abi3.so").exists()
        ops_py = (variant / "_ops.py").read_text()
        assert f"torch.ops.{meta.id}" in ops_py and "def add_op_namespace_prefix" in ops_py
        package = ROOT / "torch-ext" / "gpt_oss_kernels"
        for src in package.rglob("*.py"):
            assert (variant / src.relative_to(package)).exists(), f"{src.name} missing from {variant.name}"


def test_public_api_is_all(kernel):
    assert sorted(kernel.__all__) == sorted(set(kernel.__all__))
    for name in kernel.__all__:
        assert hasattr(kernel, name), name
    assert {"rms_norm", "fused_add_rms_norm", "layers"} <= set(kernel.__all__)


def test_get_kernel_with_local_kernels_env(kernel):
    code = (
        "import kernels, torch\n"
        f"k = kernels.get_kernel({REPO_ID!r}, version=1)\n"
        "x = torch.randn(2, 8); w = torch.ones(8)\n"
        "print(type(k.rms_norm(x, w, 1e-5)).__name__)\n"
    )
    env = dict(os.environ, LOCAL_KERNELS=f"{REPO_ID}={ROOT}", HF_HUB_OFFLINE="1")
    if torch.cuda.is_available():
        code = code.replace("torch.randn(2, 8)", "torch.randn(2, 8, device='cuda')").replace(
            "torch.ones(8)", "torch.ones(8, device='cuda')")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().endswith("Tensor")


@pytest.mark.skipif(shutil.which("nvcc") is None and not os.path.exists("/usr/local/cuda/bin/nvcc"),
                    reason="nvcc not installed")
@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU machine builds the CUDA variant for real")
def test_cuda_sources_compile_for_sm90a():
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_kernel.py"), "--check-cuda"],
                       capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "CUDA compile check passed" in r.stdout
