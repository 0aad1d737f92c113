// Host helper shared by the CUDA ops: a device's compute-capability major and SM count, queried once.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <map>
#include <mutex>
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

}  // namespace gok
