// SPDX-License-Identifier: Apache-2.0
// The CUDA device probe through the driver API, loaded with dlopen (kernels layer). No CUDA
// header and no link against libcuda or the runtime: the few types and entry points it needs are
// declared here, so the same code runs on machines with no driver at all. The probe runs on its
// own thread; a driver that does not answer within the timeout is abandoned (the thread stays
// detached, owning its own copy of the result) and the daemon runs on the CPU.
#include "kernels/cuda/cuda_probe.h"

#include <dlfcn.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>

namespace gptqd::kernels::cuda {
namespace {

// The driver API's types, as cuda.h declares them (enums are int-sized).
using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
struct CUuuid {
  unsigned char bytes[16];
};

constexpr CUresult kCudaSuccess = 0;
constexpr int kAttrMultiprocessorCount = 16;       // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
constexpr int kAttrComputeCapabilityMajor = 75;    // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
constexpr int kAttrComputeCapabilityMinor = 76;    // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR

struct Driver {
  // Required.
  CUresult (*cuInit)(unsigned int) = nullptr;
  CUresult (*cuDriverGetVersion)(int*) = nullptr;
  CUresult (*cuDeviceGetCount)(int*) = nullptr;
  CUresult (*cuDeviceGet)(CUdevice*, int) = nullptr;
  CUresult (*cuDeviceGetName)(char*, int, CUdevice) = nullptr;
  CUresult (*cuDeviceGetAttribute)(int*, int, CUdevice) = nullptr;
  CUresult (*cuDeviceTotalMem)(size_t*, CUdevice) = nullptr;  // cuDeviceTotalMem_v2
  // Optional: without them the uuid stays empty, free memory 0, errors numeric.
  CUresult (*cuDeviceGetUuid)(CUuuid*, CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxRetain)(CUcontext*, CUdevice) = nullptr;
  CUresult (*cuDevicePrimaryCtxRelease)(CUdevice) = nullptr;
  CUresult (*cuCtxSetCurrent)(CUcontext) = nullptr;
  CUresult (*cuMemGetInfo)(size_t*, size_t*) = nullptr;  // cuMemGetInfo_v2
  CUresult (*cuGetErrorName)(CUresult, const char**) = nullptr;
  CUresult (*cuGetErrorString)(CUresult, const char**) = nullptr;
};

// dlsym's object pointer to a function pointer, without a cast -Wpedantic objects to.
template <class Fn>
bool resolve(void* lib, const char* name, Fn& fn) {
  void* p = dlsym(lib, name);
  static_assert(sizeof fn == sizeof p);
  std::memcpy(&fn, &p, sizeof fn);
  return p != nullptr;
}

template <class Fn>
bool resolve_first(void* lib, const char* name, const char* fallback, Fn& fn) {
  return resolve(lib, name, fn) || resolve(lib, fallback, fn);
}

// "CUDA_ERROR_NO_DEVICE (100): no CUDA-capable device is detected", or "CUDA error 100".
std::string describe(const Driver& d, CUresult rc) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (d.cuGetErrorName == nullptr || d.cuGetErrorName(rc, &name) != kCudaSuccess) name = nullptr;
  if (d.cuGetErrorString == nullptr || d.cuGetErrorString(rc, &text) != kCudaSuccess) text = nullptr;
  std::string out = name != nullptr && *name != '\0' ? std::string(name) + " (" + std::to_string(rc) + ")"
                                                     : "CUDA error " + std::to_string(rc);
  if (text != nullptr && *text != '\0') out += std::string(": ") + text;
  return out;
}

std::string format_uuid(const CUuuid& u) {
  char buf[64];
  const unsigned char* b = u.bytes;
  std::snprintf(buf, sizeof buf,
                "GPU-%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0], b[1], b[2],
                b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]);
  return buf;
}

// Free memory needs a context: retain the device's primary one (shared with the CUDA runtime),
// ask, and release it. Any failure gives 0, which the header documents as "could not ask".
uint64_t free_memory(const Driver& d, CUdevice dev) {
  if (d.cuDevicePrimaryCtxRetain == nullptr || d.cuDevicePrimaryCtxRelease == nullptr ||
      d.cuCtxSetCurrent == nullptr || d.cuMemGetInfo == nullptr) {
    return 0;
  }
  CUcontext ctx = nullptr;
  if (d.cuDevicePrimaryCtxRetain(&ctx, dev) != kCudaSuccess) return 0;
  size_t free_bytes = 0, total_bytes = 0;
  uint64_t out = 0;
  if (d.cuCtxSetCurrent(ctx) == kCudaSuccess) {
    if (d.cuMemGetInfo(&free_bytes, &total_bytes) == kCudaSuccess) out = free_bytes;
    d.cuCtxSetCurrent(nullptr);
  }
  d.cuDevicePrimaryCtxRelease(dev);
  return out;
}

// Reads one device; on failure returns false with `error` saying which call failed.
bool read_device(const Driver& d, int ordinal, CudaDeviceInfo& info, std::string& error) {
  const std::string where = "device " + std::to_string(ordinal) + ": ";
  CUdevice dev = 0;
  CUresult rc = d.cuDeviceGet(&dev, ordinal);
  if (rc != kCudaSuccess) {
    error = where + "cuDeviceGet failed: " + describe(d, rc);
    return false;
  }
  info.index = ordinal;

  char name[256] = {};
  rc = d.cuDeviceGetName(name, static_cast<int>(sizeof name), dev);
  if (rc != kCudaSuccess) {
    error = where + "cuDeviceGetName failed: " + describe(d, rc);
    return false;
  }
  name[sizeof name - 1] = '\0';
  info.name = name;

  const std::pair<int, int*> attributes[] = {
      {kAttrComputeCapabilityMajor, &info.cc_major},
      {kAttrComputeCapabilityMinor, &info.cc_minor},
      {kAttrMultiprocessorCount, &info.sm_count},
  };
  for (const auto& [attribute, value] : attributes) {
    rc = d.cuDeviceGetAttribute(value, attribute, dev);
    if (rc != kCudaSuccess) {
      error = where + "cuDeviceGetAttribute(" + std::to_string(attribute) + ") failed: " + describe(d, rc);
      return false;
    }
  }

  size_t total = 0;
  rc = d.cuDeviceTotalMem(&total, dev);
  if (rc != kCudaSuccess) {
    error = where + "cuDeviceTotalMem failed: " + describe(d, rc);
    return false;
  }
  info.total_memory_bytes = total;

  CUuuid uuid{};
  if (d.cuDeviceGetUuid != nullptr && d.cuDeviceGetUuid(&uuid, dev) == kCudaSuccess) info.uuid = format_uuid(uuid);
  info.free_memory_bytes = free_memory(d, dev);
  return true;
}

// The probe proper, run on the probe thread. Fills `r` (which starts with the caller's fields).
void run_probe(const std::string& library, CudaProbeResult& r) {
  dlerror();  // clear a stale message
  // Never dlclosed: a timed-out probe thread may still be inside it, and the CUDA runtime
  // shares the same handle anyway.
  void* lib = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (lib == nullptr) {
    const char* why = dlerror();
    r.error = "no CUDA driver (" + std::string(why != nullptr ? why : library) + ")";
    return;
  }
  r.driver_library = library;

  Driver d;
  const char* missing = nullptr;  // the first required entry point the library lacks
  auto require = [&](const char* name, auto& fn) {
    if (!resolve(lib, name, fn) && missing == nullptr) missing = name;
  };
  require("cuInit", d.cuInit);
  require("cuDriverGetVersion", d.cuDriverGetVersion);
  require("cuDeviceGetCount", d.cuDeviceGetCount);
  require("cuDeviceGet", d.cuDeviceGet);
  require("cuDeviceGetName", d.cuDeviceGetName);
  require("cuDeviceGetAttribute", d.cuDeviceGetAttribute);
  require("cuDeviceTotalMem_v2", d.cuDeviceTotalMem);
  if (missing != nullptr) {
    r.error = "the CUDA driver " + library + " has no " + missing + " (not a CUDA driver library?)";
    return;
  }
  resolve(lib, "cuGetErrorName", d.cuGetErrorName);
  resolve(lib, "cuGetErrorString", d.cuGetErrorString);
  resolve_first(lib, "cuDeviceGetUuid_v2", "cuDeviceGetUuid", d.cuDeviceGetUuid);
  resolve(lib, "cuDevicePrimaryCtxRetain", d.cuDevicePrimaryCtxRetain);
  resolve_first(lib, "cuDevicePrimaryCtxRelease_v2", "cuDevicePrimaryCtxRelease", d.cuDevicePrimaryCtxRelease);
  resolve(lib, "cuCtxSetCurrent", d.cuCtxSetCurrent);
  resolve(lib, "cuMemGetInfo_v2", d.cuMemGetInfo);

  // Works before cuInit, so a driver that fails to initialize still reports its version.
  int version = 0;
  if (d.cuDriverGetVersion(&version) == kCudaSuccess) r.driver_version = version;

  CUresult rc = d.cuInit(0);
  if (rc != kCudaSuccess) {
    r.error = "CUDA driver failed to initialize: " + describe(d, rc);
    return;
  }
  int count = 0;
  rc = d.cuDeviceGetCount(&count);
  if (rc != kCudaSuccess) {
    r.error = "cuDeviceGetCount failed: " + describe(d, rc);
    return;
  }
  if (count <= 0) {
    r.error = "the CUDA driver reports no devices";
    return;
  }
  for (int i = 0; i < count; ++i) {
    CudaDeviceInfo info;
    if (!read_device(d, i, info, r.error)) {
      r.devices.clear();  // a driver that cannot describe a device is not trusted with any
      return;
    }
    r.devices.push_back(std::move(info));
  }
}

std::string trim(const std::string& s) {
  const size_t begin = s.find_first_not_of(" \t");
  if (begin == std::string::npos) return {};
  return s.substr(begin, s.find_last_not_of(" \t") - begin + 1);
}

// CUDA_VISIBLE_DEVICES="" or one whose first entry is a negative number hides every device (the
// driver stops at the first invalid entry).
bool hides_every_device(const std::string& visible) {
  const std::string first = trim(visible.substr(0, visible.find(',')));
  if (first.empty()) return true;
  char* end = nullptr;
  const long n = std::strtol(first.c_str(), &end, 10);
  return end != first.c_str() && *end == '\0' && n < 0;
}

// What the caller and the probe thread share; the thread keeps it alive after a timeout.
struct ProbeState {
  std::mutex mutex;
  std::condition_variable done_cv;
  bool done = false;
  CudaProbeResult result;
};

}  // namespace

CudaProbeResult probe_cuda(const CudaProbeOptions& options) {
  CudaProbeResult base;
  try {
#ifdef GPTQD_HAVE_CUDA
    base.compiled_with_cuda = true;
#endif
#ifdef GPTQD_CUDART_VERSION
    base.runtime_version = GPTQD_CUDART_VERSION;
#endif
    if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible != nullptr) {
      base.visible_devices_set = true;
      base.visible_devices = visible;
      if (hides_every_device(base.visible_devices)) {
        base.error = "CUDA_VISIBLE_DEVICES=\"" + base.visible_devices + "\" hides every GPU";
        return base;
      }
    }
    std::string library = options.library;
    if (library.empty()) {
      const char* env = std::getenv("GPTQD_LIBCUDA");
      library = env != nullptr && *env != '\0' ? env : "libcuda.so.1";
    }
    const int timeout_ms = options.timeout_ms > 0 ? options.timeout_ms : CudaProbeOptions{}.timeout_ms;

    auto state = std::make_shared<ProbeState>();
    std::thread worker;
    try {
      worker = std::thread([state, library, r = base]() mutable {
        try {
          run_probe(library, r);
        } catch (const std::exception& e) {
          r.devices.clear();
          r.error = std::string("the CUDA probe failed: ") + e.what();
        } catch (...) {
          r.devices.clear();
          r.error = "the CUDA probe failed";
        }
        std::lock_guard lock(state->mutex);
        state->result = std::move(r);
        state->done = true;
        state->done_cv.notify_all();
      });
    } catch (const std::exception& e) {
      base.error = std::string("could not start the CUDA probe thread: ") + e.what();
      return base;
    }

    // Whatever happens below, the thread is joined or detached, never destroyed joinable.
    struct DetachOnExit {
      std::thread& thread;
      ~DetachOnExit() {
        if (thread.joinable()) thread.detach();
      }
    } detach_on_exit{worker};

    std::unique_lock lock(state->mutex);
    const bool answered =
        state->done_cv.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return state->done; });
    if (!answered) {
      lock.unlock();
      worker.detach();  // it owns `state` and its own result; it never touches ours again
      base.error = "the CUDA driver did not answer within " + std::to_string(timeout_ms) +
                   " ms (a wedged driver?); running on the CPU";
      return base;
    }
    CudaProbeResult out = std::move(state->result);
    lock.unlock();
    try {
      worker.join();  // it has stored its answer; only its return is left
    } catch (...) {
      // detach_on_exit lets it go
    }
    return out;
  } catch (const std::exception& e) {
    base.devices.clear();
    base.error = std::string("the CUDA probe failed: ") + e.what();
  } catch (...) {
    base.devices.clear();
    base.error = "the CUDA probe failed";
  }
  return base;
}

}  // namespace gptqd::kernels::cuda
