// TORCH_CHECK messages in the .cu files are single string literals. On the H100 machine (torch 2.11,
// CUDA 13.0) a failed TORCH_CHECK whose message had more than one part (a literal and a number, which
// goes through c10::str's stream) in host code compiled by nvcc segfaulted instead of raising; a
// one-literal message raised normally (docs/decisions-attention.md "session 6"; cause not found). The
// Python entry points validate first and give the detailed errors.
//
// Host helpers shared by the CUDA ops: a device's compute-capability major and SM count (queried once),
// the opt-in to more than 48 KB of dynamic shared memory, and a launch with programmatic dependent launch.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
#include <set>
#include <utility>

namespace gok {

// (compute capability major, multiprocessor count) of `device`.
inline std::pair<int, int> device_info(int device) {
  static std::mutex mu;
  static std::map<int, std::pair<int, int>> cache;
  const std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(device);
  if (it != cache.end()) return it->second;
  int major = 0, sms = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  return cache[device] = std::make_pair(major, sms);
}

// Lets `kernel` use `bytes` (> 48 KB) of dynamic shared memory on `device`: once per (kernel, device).
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, int bytes, int device) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  if (done.count(key)) return;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes));
  done.insert(key);
}

// Launches `kernel` on `stream` with programmatic dependent launch allowed (the kernel itself waits on
// the previous grid with griddepcontrol.wait before its first dependent read).
template <typename... KArgs, typename... Args>
void launch_pdl(void (*kernel)(KArgs...), dim3 grid, dim3 block, int smem, cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr;
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = &attr;
  cfg.numAttrs = 1;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

}  // namespace gok
