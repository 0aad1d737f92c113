"""The repository builds the way kernel-builder lays it out, and loads through `kernels`."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap

import kernels
import pytest
import torch
from packaging.version import Version

from conftest import KERNELS_BACKEND, REPO_ID, ROOT

# build.toml is edition 6, which kernels >= 0.19 reads; kernels 0.17.2 (transformers 5.22's pair)
# reads editions up to 5 ("unsupported build edition 6"). It still loads the built variants.
KERNELS_READS_EDITION_6 = Version(kernels.__version__).release >= (0, 19)


def _variants():
    return sorted(p.parent for p in (ROOT / "build").glob("torch*-*/metadata.json"))


def _build_script():
    spec = importlib.util.spec_from_file_location("build_kernel", ROOT / "scripts" / "build_kernel.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(not KERNELS_READS_EDITION_6,
                    reason=f"kernels {kernels.__version__} parses build.toml editions <= 5; build.toml is edition 6 "
                           "(kernels >= 0.19); this kernels still loads the build, see the tests below")
def test_build_toml_passes_kernel_builder_parser(capfd):
    import kernels._rust as kr

    build = kr.Build.open(str(ROOT))
    assert {str(b).lower() for b in build.general.backends} >= {"cpu", "cuda"}
    # An older edition would be upgraded in memory, with a warning on stderr.
    captured = capfd.readouterr()
    assert "edition" not in captured.err + captured.out, captured.err


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
        assert raw["build-layout"] == "files" and raw["kernels-minver"] == _build_script().kernels_minver()
        assert str(meta.kernels_minver) == raw["kernels-minver"]
        assert meta.digest is not None and str(meta.digest.algorithm).lower().endswith("sha256")
        assert meta.provenance is not None
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
        f"k = kernels.get_kernel({REPO_ID!r}, version=1, backend={KERNELS_BACKEND!r})\n"
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


def test_digest_is_kernels_hash_variant(tmp_path):
    """build_kernel.py hashes a variant exactly as kernels' Digest.hash_variant does (which
    kernels 0.19 checks on every load): same files, bytecode and metadata.json left out."""
    import kernels._rust as kr

    tree = {"a.py": b"x", "sub/b.py": b"y", "lib.abi3.so": b"\0\1", ".hidden": b"h", "sub/metadata.json": b"{}",
            "__pycache__/a.cpython-311.pyc": b"bc", "sub/__pycache__/b.txt": b"bc", "c.pyc": b"bc",
            "metadata.json": b"{}", "metadata.json.sigstore": b"sig"}
    for rel, data in tree.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    ours = _build_script().hash_variant(tmp_path)
    assert ours == kr.Digest.hash_variant(kr.DigestAlgorithm.SHA256, tmp_path).files
    assert sorted(ours) == [".hidden", "a.py", "lib.abi3.so", "sub/b.py", "sub/metadata.json"]
    for variant in _variants():
        meta = kr.Metadata.read_from_file(variant / "metadata.json")
        meta.digest.validate(kr.Digest.hash_variant(meta.digest.algorithm, variant))


_LOAD_SCRIPT = textwrap.dedent("""
    import json, logging, os, sys, warnings
    from pathlib import Path

    records = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(f"{record.name} {record.levelname}: {record.getMessage()}")

    logging.getLogger().addHandler(Collect(level=logging.WARNING))
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import kernels, torch
        import kernels._rust as kr

        build = Path(sys.argv[1]) / "build"

        @kernels.use_kernel_forward_from_hub("RMSNorm")
        class Norm(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.weight = torch.nn.Parameter(torch.ones(8))
                self.variance_epsilon = 1e-5

            def forward(self, hidden_states):
                return hidden_states

        device = "cuda" if torch.cuda.is_available() else "cpu"
        backend = None if torch.cuda.is_available() else "cpu"  # tests/conftest.py: KERNELS_BACKEND
        for _ in range(2):
            k = kernels.get_kernel(sys.argv[2], version=1, backend=backend)  # LOCAL_KERNELS
            assert kernels.get_local_kernel(build, backend=backend) is k
            # a layer repository takes no backend: torch built for CUDA without a GPU gets the variant's directory
            layer_path = build if backend is None or torch.version.cuda is None else Path(k.__file__).parent
            repo = kernels.LocalLayerRepository(repo_path=layer_path, layer_name="RMSNorm")
            with kernels.use_kernel_mapping({"RMSNorm": {device: repo}}, inherit_mapping=False):
                model = kernels.kernelize(torch.nn.Sequential(Norm()).to(device), mode=kernels.Mode.INFERENCE,
                                          device=device)
            x = torch.randn(2, 8, device=device)
            torch.testing.assert_close(model(x), k.rms_norm(x, model[0].weight, 1e-5))
        for variant in sorted(p.parent for p in build.glob("torch*-*/metadata.json")):
            meta = kr.Metadata.read_from_file(variant / "metadata.json")
            for _ in range(2):  # after the loads: the files still match, twice in a row
                meta.digest.validate(kr.Digest.hash_variant(meta.digest.algorithm, variant))
                if hasattr(kr, "DigestReceipt"):  # kernels >= 0.19: the check every load runs
                    from kernels._internals.digest import DigestVerificationResult, verify_digest
                    result = verify_digest(variant, metadata=meta, location=None)
                    assert isinstance(result, DigestVerificationResult.Success), str(result)
    dirty = any(json.loads((p / "metadata.json").read_text())["provenance"].get("kernel", {}).get("dirty")
                for p in build.glob("torch*-*"))
    print(json.dumps({"records": records, "warnings": [str(w.message) for w in caught], "dirty": dirty}))
""")


def test_local_loads_are_verified_without_warnings():
    """get_kernel (LOCAL_KERNELS), get_local_kernel and LocalLayerRepository + kernelize load the
    build twice without a warning: the metadata records a digest (kernels 0.19 verifies it on every
    load and raises on a mismatch) and the provenance. The one warning allowed is kernels' own for a
    build from a tree with uncommitted changes (provenance dirty), which a clean checkout never has."""
    env = dict(os.environ, LOCAL_KERNELS=f"{REPO_ID}={ROOT}", HF_HUB_OFFLINE="1")
    r = subprocess.run([sys.executable, "-c", _LOAD_SCRIPT, str(ROOT), REPO_ID], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    records = out["records"]
    if out["dirty"]:
        records = [m for m in records if "built from a dirty git tree" not in m]
    assert records == [] and out["warnings"] == [], out
    assert not any("does not record a digest" in m for m in out["records"])


def test_gpu_run_sanitize_plan_chunks_node_ids(tmp_path):
    """--sanitize runs GOK_SANITIZE_CHUNK node ids per memcheck process (one process per file ran out of device
    memory, 2026-12-07), the capture tests in one more process; --initcheck / --racecheck add one process each."""
    script = ROOT / "scripts" / "gpu_run.sh"
    out = tmp_path / "dry"
    ids = " ".join(f"tests/test_fp8.py::t{i}" for i in range(9))
    env = dict(os.environ, OUT=str(out), GOK_SANITIZE_CHUNK="4")
    plan = subprocess.run(["bash", str(script), "--dry-run", "--sanitize", "--no-bench", "--tests",
                           f"tests/test_rotary.py {ids}", "--initcheck", "tests/test_fp8.py::t0"],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    for line in ("tests/test_rotary.py [1-1 of 1]", "tests/test_fp8.py [1-4 of 9]", "tests/test_fp8.py [5-8 of 9]",
                 "tests/test_fp8.py [9-9 of 9]", "cuda_graph tests (caching allocator on)", "initcheck:"):
        assert line in plan, plan
    commands = (out / "tests.log").read_text()
    assert commands.count("PYTORCH_NO_CUDA_MEMORY_CACHING=1 GOK_SANITIZE=1 compute-sanitizer --tool memcheck") == 4
    assert commands.count("-k cuda_graph tests/test_rotary.py tests/test_fp8.py") == 1, commands
    assert "tests/test_fp8.py::t8 -p no:cacheprovider" in commands
    assert "--tool initcheck" in (out / "initcheck.log").read_text()


def test_gpu_run_plans_whole_model_runs_and_packs(tmp_path):
    """scripts/gpu_run.sh (the device call): --dry-run lists the whole-model families; --pack leaves one archive in
    $OUT even when a step fails (here the wheel install, through a python3 that always fails)."""
    script = ROOT / "scripts" / "gpu_run.sh"
    env = dict(os.environ, OUT=str(tmp_path / "dry"))
    probe = tmp_path / "some_probe.py"
    probe.write_text("")
    plan = subprocess.run(["bash", str(script), "--dry-run", "--no-tests", "--only", "moe e2e e2e-mxfp4 e2e-fp8",
                           "--probe", str(probe)],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout
    for line in ("benchmarks/harness.py --out", "e2e_model.py --static", "e2e_model.py --mxfp4 --static",
                 "e2e_model.py --fp8 channel", f"{probe} --out"):
        assert line in plan, plan
    bad = subprocess.run(["bash", str(script), "--dry-run", "--probe", "probes/none.py"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--probe needs a probe script" in bad.stdout
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\nexit 1\n")
    (fake / "python3").chmod(0o755)
    out = tmp_path / "packed"
    env = dict(os.environ, OUT=str(out), PATH=f"{fake}:{os.environ['PATH']}")
    res = subprocess.run(["bash", str(script), "--pack", "--no-tests"], cwd=ROOT, env=env, capture_output=True,
                         text=True)
    assert res.returncode != 0
    assert (out / "gpu_out.tgz").is_file()
