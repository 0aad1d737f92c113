"""`kernels benchmark` workloads for RMSNorm (GPT-OSS hidden size 2880, bf16).

    kernels benchmark ./benchmarks/benchmark_rmsnorm.py   (with LOCAL_KERNELS set)

The runner times with a host clock and a synchronize; the CUDA-event medians against the
anchors are in benchmarks/harness.py.
"""

import torch

from kernels.benchmark import Benchmark

H = 2880
EPS = 1e-5


def _reference(x, w, eps):
    xf = x.float()
    return ((xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)) * w.float()).to(x.dtype)


class RMSNormBenchmark(Benchmark):
    seed = 42

    def _setup(self, tokens):
        self.x = torch.randn(tokens, H, device=self.device, dtype=torch.bfloat16)
        self.residual = torch.randn_like(self.x)
        self.w = 1 + 0.1 * torch.randn(H, device=self.device, dtype=torch.float32)
        self.out = torch.empty_like(self.x)

    def setup_decode(self):
        self._setup(1)

    def benchmark_decode(self):
        self.out = self.kernel.rms_norm(self.x, self.w, EPS)

    def verify_decode(self):
        return _reference(self.x, self.w, EPS)

    def setup_prefill_4096(self):
        self._setup(4096)

    def benchmark_prefill_4096(self):
        self.out = self.kernel.rms_norm(self.x, self.w, EPS)

    def verify_prefill_4096(self):
        return _reference(self.x, self.w, EPS)

    def setup_fused_add_4096(self):
        self._setup(4096)

    def benchmark_fused_add_4096(self):
        self.out = self.kernel.fused_add_rms_norm(self.x, self.residual, self.w, EPS)[0]

    def verify_fused_add_4096(self):
        return _reference(self.x + self.residual, self.w, EPS)
