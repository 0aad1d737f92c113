// Every native op of gpt-oss-kernels, declared once. Each variant compiles exactly one
// implementation of each: kernel_src/<family>/*_cuda.cu (CUDA) or *_cpu.cpp (CPU).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

// --- rmsnorm ---------------------------------------------------------------------------
at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x, const at::Tensor& residual,
                                                      const at::Tensor& weight, double eps);
