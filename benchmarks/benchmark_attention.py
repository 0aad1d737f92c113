"""`kernels benchmark` workloads for GPT-OSS attention (64 q heads, 8 kv heads, head_dim 64, sinks, bf16).

    kernels benchmark ./benchmarks/benchmark_attention.py   (with LOCAL_KERNELS set)

The runner times with a host clock and a synchronize; the CUDA-event medians against the anchors
(transformers eager, FlexAttention) are in benchmarks/harness.py (harness_attention.py).
"""

import torch

from kernels.benchmark import Benchmark

HQ, HKV, D = 64, 8, 64


def _reference(q, k, v, sinks, window=None):
    """Eager GPT-OSS attention for one sequence (q (Sq, Hq, D), k/v (Sk, Hkv, D)), fp32."""
    sq, sk = q.shape[0], k.shape[0]
    kr = k.float().repeat_interleave(HQ // HKV, 1)
    vr = v.float().repeat_interleave(HQ // HKV, 1)
    s = torch.einsum("qhd,khd->hqk", q.float(), kr) * D**-0.5
    qpos = torch.arange(sq, device=q.device)[:, None] + sk - sq
    kpos = torch.arange(sk, device=q.device)[None, :]
    ok = kpos <= qpos
    if window:
        ok &= kpos > qpos - window
    s = s.masked_fill(~ok, float("-inf"))
    s = torch.cat([s, sinks.float().reshape(HQ, 1, 1).expand(HQ, sq, 1)], -1)
    p = torch.softmax(s, -1)[..., :-1]
    return torch.einsum("hqk,khd->qhd", p, vr).to(q.dtype)


class AttentionBenchmark(Benchmark):
    seed = 42

    def _prefill(self, n):
        self.q = torch.randn(n, HQ, D, device=self.device, dtype=torch.bfloat16)
        self.k = torch.randn(n, HKV, D, device=self.device, dtype=torch.bfloat16)
        self.v = torch.randn_like(self.k)
        self.sinks = torch.randn(HQ, device=self.device)
        self.cu = torch.tensor([0, n], dtype=torch.int32, device=self.device)
        self.n = n

    def setup_prefill_2048(self):
        self._prefill(2048)

    def benchmark_prefill_2048(self):
        n = self.n
        self.out = self.kernel.flash_attn_varlen_func(self.q, self.k, self.v, self.cu, self.cu, n, n, causal=True,
                                                      s_aux=self.sinks)

    def verify_prefill_2048(self):
        return _reference(self.q, self.k, self.v, self.sinks)

    def setup_sliding_2048(self):
        self._prefill(2048)

    def benchmark_sliding_2048(self):
        n = self.n
        self.out = self.kernel.flash_attn_varlen_func(self.q, self.k, self.v, self.cu, self.cu, n, n, causal=True,
                                                      window_size=(127, 127), s_aux=self.sinks)

    def verify_sliding_2048(self):
        return _reference(self.q, self.k, self.v, self.sinks, window=128)

    def _decode(self, b, s):
        self.kc = torch.randn(b, s, HKV, D, device=self.device, dtype=torch.bfloat16)
        self.vc = torch.randn_like(self.kc)
        self.qd = torch.randn(b, 1, HQ, D, device=self.device, dtype=torch.bfloat16)
        self.lens = torch.full((b,), s, dtype=torch.int32, device=self.device)
        self.sinks = torch.randn(HQ, device=self.device)

    def setup_decode_b1_8192(self):
        self._decode(1, 8192)

    def benchmark_decode_b1_8192(self):
        self.out = self.kernel.flash_attn_with_kvcache(self.qd, self.kc, self.vc, cache_seqlens=self.lens,
                                                       causal=True, s_aux=self.sinks)

    def verify_decode_b1_8192(self):
        return _reference(self.qd[0], self.kc[0], self.vc[0], self.sinks)[None]

    def setup_decode_b32_8192(self):
        self._decode(32, 8192)

    def benchmark_decode_b32_8192(self):
        self.out = self.kernel.flash_attn_with_kvcache(self.qd, self.kc, self.vc, cache_seqlens=self.lens,
                                                       causal=True, s_aux=self.sinks)

    def verify_decode_b32_8192(self):
        return torch.stack([_reference(self.qd[i], self.kc[i], self.vc[i], self.sinks) for i in range(32)])
