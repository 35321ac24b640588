// SPDX-License-Identifier: Apache-2.0
// KernelStatus: what every kernel returns; kernels never throw or log (kernels layer).
#pragma once

namespace gptqd::kernels {

enum class KernelStatus {
  ok,
  bad_shape,     // a size or stride the kernel cannot handle (e.g. not a multiple of the block)
  unsupported,   // a data type or configuration the kernel does not implement
  device_error,  // the device reported an error (CUDA)
};

inline const char* to_string(KernelStatus s) {
  switch (s) {
    case KernelStatus::ok: return "ok";
    case KernelStatus::bad_shape: return "bad shape";
    case KernelStatus::unsupported: return "unsupported";
    case KernelStatus::device_error: return "device error";
  }
  return "unknown";
}

}  // namespace gptqd::kernels
