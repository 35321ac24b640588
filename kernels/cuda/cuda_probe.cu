// SPDX-License-Identifier: Apache-2.0
// CUDA device probe through the runtime API (kernels layer). Safe on machines without a GPU or
// a driver: the runtime then reports an error code, which becomes `error`.
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>

#include "kernels/cuda/cuda_probe.h"

namespace gptqd::kernels::cuda {

KernelStatus probe_cuda(CudaProbeResult* out) {
  *out = CudaProbeResult{};
  out->compiled_with_cuda = true;
  cudaRuntimeGetVersion(&out->runtime_version);
  if (cudaDriverGetVersion(&out->driver_version) != cudaSuccess) out->driver_version = 0;
  int count = 0;
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    std::snprintf(out->error, sizeof out->error, "%s (%s)", cudaGetErrorString(err), cudaGetErrorName(err));
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    return KernelStatus::ok;
  }
  if (count > kMaxCudaDevices) count = kMaxCudaDevices;
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    err = cudaGetDeviceProperties(&prop, i);
    if (err != cudaSuccess) {
      std::snprintf(out->error, sizeof out->error, "device %d: %s", i, cudaGetErrorString(err));
      return KernelStatus::device_error;
    }
    CudaDeviceInfo& d = out->devices[out->n_devices++];
    d.index = i;
    std::snprintf(d.name, sizeof d.name, "%s", prop.name);
    d.cc_major = prop.major;
    d.cc_minor = prop.minor;
    d.sm_count = prop.multiProcessorCount;
    d.total_memory_bytes = prop.totalGlobalMem;
  }
  return KernelStatus::ok;
}

}  // namespace gptqd::kernels::cuda
