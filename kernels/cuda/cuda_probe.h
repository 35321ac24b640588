// SPDX-License-Identifier: Apache-2.0
// The CUDA device probe (kernels layer): which NVIDIA devices exist, with their compute
// capability, SM count and memory, read through the CUDA driver library loaded at run time
// (dlopen of libcuda.so.1). A machine with no driver, no device or a broken driver gets an
// answer with `error` saying why, never a crash or a hang: the probe runs on its own thread and is
// abandoned after a timeout. Plain structs, no exceptions; the daemon turns the result into
// `gptqctl gpu` output and the dispatch table's device descriptions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gptqd::kernels::cuda {

struct CudaDeviceInfo {
  int index = 0;             // ordinal as the driver numbers it (after CUDA_VISIBLE_DEVICES)
  std::string name;          // "NVIDIA H100 80GB HBM3"
  std::string uuid;          // "GPU-xxxxxxxx-...." when the driver reports it, else empty
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  uint64_t total_memory_bytes = 0;
  uint64_t free_memory_bytes = 0;  // 0 when a context could not be created to ask
};

struct CudaProbeResult {
  bool compiled_with_cuda = false;  // this build contains CUDA kernels (GPTQD_HAVE_CUDA)
  int runtime_version = 0;          // CUDA runtime the build was compiled against (12040 = 12.4); 0 without CUDA
  int driver_version = 0;           // cuDriverGetVersion (12040 = 12.4); 0 when no driver loaded
  std::string driver_library;       // path dlopen succeeded with, or empty
  std::string visible_devices;      // CUDA_VISIBLE_DEVICES as set, "" when unset
  bool visible_devices_set = false;
  std::string error;                // why there are no devices ("no CUDA driver (libcuda.so.1: ...)"), or empty
  std::vector<CudaDeviceInfo> devices;
};

struct CudaProbeOptions {
  // Where the driver library comes from: empty = GPTQD_LIBCUDA when set (tests point it at a fake
  // driver), else "libcuda.so.1" through the normal library search.
  std::string library;
  // Abandon a probe that has not answered after this long (a wedged driver); error says so.
  // A value <= 0 means the default.
  int timeout_ms = 10000;
};

// Never throws. An empty `devices` always comes with a non-empty `error`. CUDA_VISIBLE_DEVICES set
// to an empty string or "-1" hides every device without loading the driver at all.
CudaProbeResult probe_cuda(const CudaProbeOptions& options = {});

}  // namespace gptqd::kernels::cuda
