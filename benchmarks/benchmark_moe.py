"""`kernels benchmark` workloads for the GPT-OSS MoE block (gpt-oss-20b shapes, bf16).

    kernels benchmark ./benchmarks/benchmark_moe.py   (with LOCAL_KERNELS set)

The runner times with a host clock and a synchronize; the CUDA-event medians against the
anchors are in benchmarks/harness.py (harness_moe.py).
"""

import torch

from kernels.benchmark import Benchmark

H = I = 2880
E, K = 32, 4
ALPHA, LIMIT = 1.702, 7.0


def _reference(x, p):
    """The block in fp32 (GptOssMLP's math): router, top-k softmax, experts, weighted sum."""
    xf = x.float()
    logits = torch.nn.functional.linear(xf, p["rw"].float(), p["rb"].float())
    vals, ids = torch.topk(logits, K)
    w = torch.softmax(vals, -1)
    out = torch.zeros_like(xf)
    for e in ids.unique().tolist():
        tok, slot = torch.where(ids == e)
        gu = xf[tok] @ p["w1"][e].float() + p["b1"][e].float()
        gate, up = gu[:, ::2].clamp(max=LIMIT), gu[:, 1::2].clamp(-LIMIT, LIMIT)
        act = ((up + 1) * gate * torch.sigmoid(ALPHA * gate)).to(x.dtype).float()
        o = act @ p["w2"][e].float() + p["b2"][e].float()
        out.index_add_(0, tok, o * w[tok, slot, None])
    return out.to(x.dtype)


class MoeBenchmark(Benchmark):
    seed = 42

    def _setup(self, tokens):
        g = lambda *s: 0.02 * torch.randn(*s, device=self.device, dtype=torch.bfloat16)  # noqa: E731
        self.p = dict(rw=g(E, H), rb=g(E), w1=g(E, H, 2 * I), b1=g(E, 2 * I), w2=g(E, I, H), b2=g(E, H))
        self.x = torch.randn(tokens, H, device=self.device, dtype=torch.bfloat16)
        self.out = torch.empty_like(self.x)

    def _run(self):
        p = self.p
        self.out = self.kernel.moe(self.x, p["rw"], p["rb"], K, p["w1"], p["b1"], p["w2"], p["b2"], ALPHA, LIMIT)[0]

    def setup_decode_1(self):
        self._setup(1)

    def benchmark_decode_1(self):
        self._run()

    def verify_decode_1(self):
        return _reference(self.x, self.p)

    def setup_decode_64(self):
        self._setup(64)

    def benchmark_decode_64(self):
        self._run()

    def verify_decode_64(self):
        return _reference(self.x, self.p)

    def setup_prefill_4096(self):
        self._setup(4096)

    def benchmark_prefill_4096(self):
        self._run()

    def verify_prefill_4096(self):
        return _reference(self.x, self.p)
