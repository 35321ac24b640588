// SPDX-License-Identifier: Apache-2.0
// The CUDA probe of a build without CUDA (GPTQD_CUDA=OFF or no nvcc) (kernels layer).
#include <cstdio>

#include "kernels/cuda/cuda_probe.h"

namespace gptqd::kernels::cuda {

KernelStatus probe_cuda(CudaProbeResult* out) {
  *out = CudaProbeResult{};
  std::snprintf(out->error, sizeof out->error, "%s", "this gptqd was built without CUDA (GPTQD_CUDA=OFF)");
  return KernelStatus::ok;
}

}  // namespace gptqd::kernels::cuda
