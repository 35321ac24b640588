// SPDX-License-Identifier: Apache-2.0
// The CUDA device probe: which devices exist and their compute capability (kernels layer).
// Plain structs, no exceptions; the daemon turns the result into `gptqctl gpu` output.
#pragma once

#include <cstdint>

#include "kernels/status.h"

namespace gptqd::kernels::cuda {

struct CudaDeviceInfo {
  int index = 0;
  char name[256] = {};
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  uint64_t total_memory_bytes = 0;
};

constexpr int kMaxCudaDevices = 16;

struct CudaProbeResult {
  bool compiled_with_cuda = false;  // false: this build has no CUDA code at all
  int runtime_version = 0;          // e.g. 13000; 0 when unknown
  int driver_version = 0;           // 0 when no driver is installed
  int n_devices = 0;                // devices listed below (at most kMaxCudaDevices)
  char error[256] = {};             // why there are no devices ("no CUDA driver", ...), or empty
  CudaDeviceInfo devices[kMaxCudaDevices];
};

// Fills `out`. Returns ok even when there is no GPU (n_devices = 0 and `error` says why);
// device_error only when the runtime failed while listing devices it had reported.
KernelStatus probe_cuda(CudaProbeResult* out);

}  // namespace gptqd::kernels::cuda
