"""Test fixtures: the kernel is always loaded from the local build (build/<variant>/),
through the `kernels` package, exactly as users load it. Run `make build` first (the
README's test command does).

Tests take the `device` fixture: "cuda" when the loaded variant is the CUDA one, else "cpu".
On a GPU machine every such test is also marked `gpu`, so `pytest -m gpu` runs the whole op
suite on the GPU; tests that only make sense on CUDA carry `@pytest.mark.gpu` themselves
and are skipped elsewhere.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))  # tiny_gpt_oss: the tiny model built in code
REPO_ID = "kernels-community/gpt-oss-kernels"
HAS_CUDA = torch.cuda.is_available()
# kernels picks the variant for the backend torch was built for. With torch built for CUDA (PyPI's default Linux
# wheel) on a machine without a GPU, that is a CUDA variant, and this machine builds the CPU one: kernels' loaders
# then get backend="cpu", and a repository path (LOCAL_KERNELS, LocalLayerRepository) names the variant directory
# itself (`local_repo`), which kernels loads as it is.
KERNELS_BACKEND = None if HAS_CUDA else "cpu"

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (and the CUDA build)")
    config.addinivalue_line("markers", "kernels_ci: cheap subset for the kernels CI")
    config.addinivalue_line("markers", "slow: long-running")


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_gpu)
        elif HAS_CUDA and "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gpu)


@pytest.fixture(scope="session")
def kernel():
    import kernels

    build = ROOT / "build"
    if not any(build.glob("torch*-*/metadata.json")):
        pytest.exit("no local build: run `python scripts/build_kernel.py` (or `make build`) first", returncode=2)
    return kernels.get_local_kernel(build, backend=KERNELS_BACKEND)


@pytest.fixture(scope="session")
def device(kernel) -> str:
    return "cuda" if HAS_CUDA else "cpu"


def local_repo(kernel) -> Path:
    """The path a ``LOCAL_KERNELS`` entry or a ``LocalLayerRepository`` gives for this build: the checkout, as the
    README says; the loaded variant's directory where torch is built for CUDA and no GPU is visible (above)."""
    return ROOT if HAS_CUDA or torch.version.cuda is None else Path(kernel.__file__).parent


@pytest.fixture
def local_kernels(kernel, monkeypatch):
    """Resolve our repo id to this checkout's build (offline), as a user with a local build would."""
    monkeypatch.setenv("LOCAL_KERNELS", f"{REPO_ID}={local_repo(kernel)}")


@pytest.fixture
def accelerator_or_cpu(kernel, device, monkeypatch):
    """For transformers' own ``from_pretrained(..., kernel_config=...)``. On the GPU: cuda. On the CPU:
    transformers' KernelConfig refuses the device, so let the CPU through its device check to run the route's
    mechanics (layouts, fusion, key renaming, kernelize) in CI. transformers keeps a load's class patches for
    every later load in the process: drop them afterwards."""
    if device == "cpu":
        from transformers.utils import kernel_config as kc

        monkeypatch.setattr(kc, "KERNELS_SUPPORTED_DEVICE_TYPES", [*kc.KERNELS_SUPPORTED_DEVICE_TYPES, "cpu"])
    yield device
    routes = kernel.integrations.routes
    routes._unregister(routes._our_patches())


@pytest.fixture(scope="session")
def ref(kernel):
    return kernel.reference


@pytest.fixture(autouse=True)
def _seed(request):
    # Random inputs every run, but reproducible from the printed seed when a test fails.
    seed = int.from_bytes(os.urandom(4), "little")
    torch.manual_seed(seed)
    request.node.user_properties.append(("seed", seed))
    yield
    if os.environ.get("GOK_SANITIZE") == "1":
        # Under compute-sanitizer (scripts/gpu_run.sh --sanitize, caching allocator off) device memory ran out
        # within one process: free what reference cycles still hold before the next test allocates.
        import gc

        gc.collect()


def gpu_shape(big: dict) -> dict:
    """The GPU tests' gpt-oss-20b expert shapes; under compute-sanitizer (GOK_SANITIZE=1, caching allocator off)
    8 experts instead of 32: every expert GEMM keeps its shape (and its tiles' tails), the weights and the float64
    reference take a quarter of the memory (test_moe_mxfp4.py ran the H100 out of memory after two or three tests
    per process there, 2026-12-08: 35 cudaMalloc failures, 0 invalid accesses)."""
    return dict(big, E=min(big["E"], 8)) if os.environ.get("GOK_SANITIZE") == "1" else big


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in float64; NaN anywhere in `out` where `ref` is finite fails."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    if out.numel() == 0:
        return 0.0
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out) | ~finite, torch.ones_like(finite)), "non-finite output where reference is finite"
    denom = ref[finite].abs().max().clamp_min(1e-30)
    return ((out - ref)[finite].abs().max() / denom).item()


TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def positions_within(out: torch.Tensor, ref: torch.Tensor, tol: float) -> float:
    """Fraction of positions (rows of the last dimension) whose max |out - ref| is within ``tol`` of max |ref|.

    Whole-model logits in bf16: a router logit rounded to bf16 can flip one token's expert (a near-tie), which
    moves that position far and, through attention, the later positions of its sequence a little (seen on the
    CPU, tiny MXFP4 model: 51% at the flipped position, 2-17% after it, 1% before); the max over all positions
    then measures the flip, not the kernels."""
    out = out.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = (out - ref).abs().amax(-1) / ref.abs().max().clamp_min(1e-30)
    return (err <= tol).double().mean().item()


def as_close_as_transformers_bf16(got: torch.Tensor, reference, ids: torch.Tensor, expected: torch.Tensor,
                                  tol: float = 2e-2) -> tuple[float, float]:
    """bf16 whole-model logits ``got`` against the fp32 unkernelized model's ``expected``: the fraction of positions
    within ``tol`` must reach 85%, or what transformers' own bf16 model (``reference``'s parameters cast to bf16,
    its buffers left as from_pretrained leaves them) reaches minus 10 points. Pass many short sequences (8 x 24):
    a flip spoils the rest of its sequence, so one long sequence makes the fraction a coin toss. Measured on the
    CPU (2026-12-04, tiny MXFP4 models, 3 models x 6 inputs of 8 x 16 positions): ours 0.906-1.000 (mean 0.977),
    transformers' bf16 model 0.875-1.000 (mean 0.977), ours at most 8.6 points below it.
    Returns (ours, transformers')."""
    import copy

    theirs = copy.deepcopy(reference)
    for p in theirs.parameters():
        p.data = p.data.to(torch.bfloat16)
    with torch.inference_mode():
        theirs_logits = theirs(ids).logits.float()
    ours, base = positions_within(got, expected, tol), positions_within(theirs_logits, expected, tol)
    assert ours >= min(0.85, base - 0.10), (ours, base)
    return ours, base


def next_token_agreement_as_transformers_bf16(ours, reference, text: torch.Tensor, start: int) -> None:
    """Greedy decoding in bf16 against the fp32 unkernelized model: on the same ``text`` (teacher forced), ours must
    pick the fp32 model's next token at >= 90% of positions from ``start``, or as often as transformers' own bf16
    model does minus one position (a rounding-level flip on a near tie changes one position)."""
    import copy

    theirs = copy.deepcopy(reference)
    for p in theirs.parameters():
        p.data = p.data.to(torch.bfloat16)
    with torch.inference_mode():
        want = reference(text).logits[0, start:-1].argmax(-1)
        ours_agree = (ours(text).logits[0, start:-1].argmax(-1) == want).float().mean().item()
        base = (theirs(text).logits[0, start:-1].argmax(-1) == want).float().mean().item()
    assert ours_agree >= min(0.9, base - 1.0 / want.numel()), (ours_agree, base)


def poison(t: torch.Tensor) -> torch.Tensor:
    """Fill with NaN so that an unwritten element shows up."""
    return t.fill_(float("nan"))


def poison_allocator(device: str, nbytes: int, blocks: int = 4) -> None:
    """Make the next allocations of up to `nbytes` on `device` come back full of NaN bits.

    Ops allocate their own outputs; on CUDA the caching allocator hands freed blocks back, so
    filling and freeing blocks first means an element the kernel fails to write reads NaN
    (0xFF bytes are NaN in fp32, fp16 and bf16). On the CPU this is best effort.
    """
    keep = [torch.full((max(nbytes, 1),), 0xFF, dtype=torch.uint8, device=device) for _ in range(blocks)]
    del keep


@contextmanager
def record_ops():
    """Records the names of every op dispatched inside the block (custom ops included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names: list[str] = []

    class _Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            names.append(str(func))
            return func(*args, **(kwargs or {}))

    with _Recorder():
        yield names


def dispatched(names: list[str], kernel, op: str) -> bool:
    """Whether `record_ops` saw this kernel's op `op` (names look like `<namespace>.<op>.default`)."""
    return any(n.startswith(f"{kernel.__name__}.{op}.") for n in names)
