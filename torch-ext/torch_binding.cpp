// One TORCH_LIBRARY block: every op's schema once, the implementation of this variant's
// backend beside it. Schemas are functional (outputs are returned, nothing is mutated)
// so torch.compile traces them without functionalization; fake implementations live in
// the Python package (_fake.py).
#include <torch/library.h>

#include "registration.h"
#include "torch_binding.h"

#if defined(CUDA_KERNEL)
#define BACKEND c10::DeviceType::CUDA
#elif defined(CPU_KERNEL)
#define BACKEND c10::DeviceType::CPU
#else
#error "define CUDA_KERNEL or CPU_KERNEL"
#endif

TORCH_LIBRARY_EXPAND(TORCH_EXTENSION_NAME, ops) {
  // --- rmsnorm ---
  ops.def("rms_norm(Tensor x, Tensor weight, float eps) -> Tensor");
  ops.impl("rms_norm", BACKEND, &rms_norm);
  ops.def("fused_add_rms_norm(Tensor x, Tensor residual, Tensor weight, float eps) -> (Tensor, Tensor)");
  ops.impl("fused_add_rms_norm", BACKEND, &fused_add_rms_norm);
}

REGISTER_EXTENSION(TORCH_EXTENSION_NAME)
