// SPDX-License-Identifier: Apache-2.0
// A fake CUDA driver library for the probe's tests (test support): the driver API entry points
// kernels/cuda/cuda_probe.cpp resolves, with the real signatures, behaving as GPTQD_FAKE_CUDA
// says (read at every cuInit, so one process can try several drivers):
//   "NAME,MAJOR.MINOR,SM_COUNT,TOTAL_MIB,FREE_MIB;NAME2,..."  those devices
//   "error:CODE"      cuInit returns CODE (100 CUDA_ERROR_NO_DEVICE, 999 CUDA_ERROR_UNKNOWN, ...)
//   "hang"            cuInit never returns (a wedged driver)
//   "broken_device"   one device whose cuDeviceGetAttribute fails with 999
//   unset or empty    no devices
// CUDA_VISIBLE_DEVICES is applied as the real driver does for a list of indices: entries are kept
// up to the first one that is not a valid, unused ordinal; none left makes cuInit fail with 100.
#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using CUresult = int;
using CUdevice = int;
using CUcontext = void*;
struct CUuuid {
  unsigned char bytes[16];
};

constexpr CUresult kSuccess = 0;
constexpr CUresult kInvalidValue = 1;
constexpr CUresult kNotInitialized = 3;
constexpr CUresult kNoDevice = 100;
constexpr CUresult kInvalidDevice = 101;
constexpr CUresult kInvalidContext = 201;
constexpr CUresult kUnknown = 999;
constexpr int kDriverVersion = 12040;
constexpr size_t kMiB = size_t{1} << 20;

struct FakeDevice {
  std::string name;
  int cc_major = 0;
  int cc_minor = 0;
  int sm_count = 0;
  size_t total_bytes = 0;
  size_t free_bytes = 0;
  int physical_index = 0;  // before CUDA_VISIBLE_DEVICES, for the uuid
};

constexpr int kMaxDevices = 16;

struct FakeDriver {
  std::mutex mutex;
  bool initialized = false;
  bool broken_attributes = false;
  std::vector<FakeDevice> devices;
  int retain_count[kMaxDevices] = {};
};

FakeDriver& driver() {
  static FakeDriver* d = new FakeDriver;  // never destroyed: a hung thread may outlive statics
  return *d;
}

// A context is a pointer to its device's slot here; the current one is per thread, as in CUDA.
int g_context_slots[kMaxDevices] = {};
thread_local CUcontext t_current = nullptr;

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t begin = 0;
  for (;;) {
    const size_t end = s.find(sep, begin);
    out.push_back(s.substr(begin, end == std::string::npos ? std::string::npos : end - begin));
    if (end == std::string::npos) return out;
    begin = end + 1;
  }
}

bool parse_int(const std::string& s, long& out) {
  if (s.empty()) return false;
  char* end = nullptr;
  out = std::strtol(s.c_str(), &end, 10);
  return *end == '\0';
}

// "NAME,MAJOR.MINOR,SM_COUNT,TOTAL_MIB,FREE_MIB;..." -> devices; false when malformed.
bool parse_devices(const std::string& spec, std::vector<FakeDevice>& out) {
  for (const std::string& entry : split(spec, ';')) {
    if (entry.empty()) continue;
    const std::vector<std::string> f = split(entry, ',');
    if (f.size() != 5) return false;
    const size_t dot = f[1].find('.');
    long major = 0, minor = 0, sms = 0, total = 0, free = 0;
    if (dot == std::string::npos || !parse_int(f[1].substr(0, dot), major) ||
        !parse_int(f[1].substr(dot + 1), minor) || !parse_int(f[2], sms) || !parse_int(f[3], total) ||
        !parse_int(f[4], free)) {
      return false;
    }
    FakeDevice d;
    d.name = f[0];
    d.cc_major = static_cast<int>(major);
    d.cc_minor = static_cast<int>(minor);
    d.sm_count = static_cast<int>(sms);
    d.total_bytes = static_cast<size_t>(total) * kMiB;
    d.free_bytes = static_cast<size_t>(free) * kMiB;
    d.physical_index = static_cast<int>(out.size());
    out.push_back(d);
  }
  return static_cast<int>(out.size()) <= kMaxDevices;
}

// The real driver's rule for a list of ordinals: keep entries up to the first invalid one.
std::vector<FakeDevice> apply_visible_devices(const std::vector<FakeDevice>& all, const char* visible) {
  std::vector<FakeDevice> out;
  std::vector<bool> used(all.size(), false);
  for (const std::string& entry : split(visible, ',')) {
    long index = -1;
    if (!parse_int(entry, index) || index < 0 || index >= static_cast<long>(all.size()) ||
        used[static_cast<size_t>(index)]) {
      break;
    }
    used[static_cast<size_t>(index)] = true;
    out.push_back(all[static_cast<size_t>(index)]);
  }
  return out;
}

// Looks the device up under the lock; false (with rc) when not initialized or out of range.
bool device_at(CUdevice dev, FakeDevice& out, CUresult& rc) {
  FakeDriver& d = driver();
  std::lock_guard lock(d.mutex);
  if (!d.initialized) {
    rc = kNotInitialized;
    return false;
  }
  if (dev < 0 || dev >= static_cast<int>(d.devices.size())) {
    rc = kInvalidDevice;
    return false;
  }
  out = d.devices[static_cast<size_t>(dev)];
  rc = kSuccess;
  return true;
}

}  // namespace

#define FAKE_EXPORT extern "C" __attribute__((visibility("default")))

FAKE_EXPORT CUresult cuInit(unsigned int flags) {
  if (flags != 0) return kInvalidValue;
  const char* env = std::getenv("GPTQD_FAKE_CUDA");
  const std::string spec = env != nullptr ? env : "";
  if (spec == "hang") {
    for (;;) std::this_thread::sleep_for(std::chrono::hours(1));  // holds no lock
  }
  if (spec.rfind("error:", 0) == 0) {
    long code = kUnknown;
    if (!parse_int(spec.substr(6), code)) code = kUnknown;
    return static_cast<CUresult>(code);
  }
  std::vector<FakeDevice> devices;
  bool broken = false;
  if (spec == "broken_device") {
    broken = true;
    devices.push_back(FakeDevice{"Broken GPU", 0, 0, 0, 0, 0, 0});
  } else if (!parse_devices(spec, devices)) {
    return kUnknown;
  }
  if (const char* visible = std::getenv("CUDA_VISIBLE_DEVICES"); visible != nullptr) {
    devices = apply_visible_devices(devices, visible);
    if (devices.empty()) return kNoDevice;
  }
  FakeDriver& d = driver();
  std::lock_guard lock(d.mutex);
  d.initialized = true;
  d.broken_attributes = broken;
  d.devices = std::move(devices);
  return kSuccess;
}

FAKE_EXPORT CUresult cuDriverGetVersion(int* version) {
  if (version == nullptr) return kInvalidValue;
  *version = kDriverVersion;
  return kSuccess;
}

FAKE_EXPORT CUresult cuDeviceGetCount(int* count) {
  if (count == nullptr) return kInvalidValue;
  FakeDriver& d = driver();
  std::lock_guard lock(d.mutex);
  if (!d.initialized) return kNotInitialized;
  *count = static_cast<int>(d.devices.size());
  return kSuccess;
}

FAKE_EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  if (device == nullptr) return kInvalidValue;
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(ordinal, info, rc)) return rc;
  *device = ordinal;
  return kSuccess;
}

FAKE_EXPORT CUresult cuDeviceGetName(char* name, int len, CUdevice dev) {
  if (name == nullptr || len <= 0) return kInvalidValue;
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(dev, info, rc)) return rc;
  const size_t n = std::min(info.name.size(), static_cast<size_t>(len) - 1);
  std::memcpy(name, info.name.data(), n);
  name[n] = '\0';
  return kSuccess;
}

FAKE_EXPORT CUresult cuDeviceGetAttribute(int* value, int attribute, CUdevice dev) {
  if (value == nullptr) return kInvalidValue;
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(dev, info, rc)) return rc;
  {
    FakeDriver& d = driver();
    std::lock_guard lock(d.mutex);
    if (d.broken_attributes) return kUnknown;
  }
  switch (attribute) {
    case 16:  // CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT
      *value = info.sm_count;
      return kSuccess;
    case 75:  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
      *value = info.cc_major;
      return kSuccess;
    case 76:  // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR
      *value = info.cc_minor;
      return kSuccess;
    default:
      return kInvalidValue;
  }
}

FAKE_EXPORT CUresult cuDeviceTotalMem_v2(size_t* bytes, CUdevice dev) {
  if (bytes == nullptr) return kInvalidValue;
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(dev, info, rc)) return rc;
  *bytes = info.total_bytes;
  return kSuccess;
}

// A fixed uuid per physical device: GPU-fa4e0000-0000-4000-8000-0000000000NN.
FAKE_EXPORT CUresult cuDeviceGetUuid(CUuuid* uuid, CUdevice dev) {
  if (uuid == nullptr) return kInvalidValue;
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(dev, info, rc)) return rc;
  std::memset(uuid->bytes, 0, sizeof uuid->bytes);
  uuid->bytes[0] = 0xfa;
  uuid->bytes[1] = 0x4e;
  uuid->bytes[6] = 0x40;
  uuid->bytes[8] = 0x80;
  uuid->bytes[15] = static_cast<unsigned char>(info.physical_index);
  return kSuccess;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
  if (ctx == nullptr) return kInvalidValue;
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(dev, info, rc)) return rc;
  FakeDriver& d = driver();
  std::lock_guard lock(d.mutex);
  ++d.retain_count[dev];
  *ctx = &g_context_slots[dev];
  return kSuccess;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease_v2(CUdevice dev) {
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(dev, info, rc)) return rc;
  FakeDriver& d = driver();
  std::lock_guard lock(d.mutex);
  if (d.retain_count[dev] <= 0) return kInvalidContext;
  --d.retain_count[dev];
  return kSuccess;
}

FAKE_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
  if (ctx != nullptr && (ctx < static_cast<void*>(&g_context_slots[0]) ||
                         ctx >= static_cast<void*>(&g_context_slots[kMaxDevices]))) {
    return kInvalidContext;
  }
  t_current = ctx;
  return kSuccess;
}

FAKE_EXPORT CUresult cuMemGetInfo_v2(size_t* free_bytes, size_t* total_bytes) {
  if (free_bytes == nullptr || total_bytes == nullptr) return kInvalidValue;
  if (t_current == nullptr) return kInvalidContext;
  const int dev = static_cast<int>(static_cast<int*>(t_current) - g_context_slots);
  FakeDevice info;
  CUresult rc = kSuccess;
  if (!device_at(dev, info, rc)) return rc;
  {
    FakeDriver& d = driver();
    std::lock_guard lock(d.mutex);
    if (d.retain_count[dev] <= 0) return kInvalidContext;  // released: the context is gone
  }
  *free_bytes = info.free_bytes;
  *total_bytes = info.total_bytes;
  return kSuccess;
}

namespace {

struct ErrorText {
  CUresult code;
  const char* name;
  const char* text;
};
constexpr ErrorText kErrors[] = {
    {kSuccess, "CUDA_SUCCESS", "no error"},
    {kInvalidValue, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {kNotInitialized, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {kNoDevice, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {kInvalidDevice, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {kInvalidContext, "CUDA_ERROR_INVALID_CONTEXT", "invalid device context"},
    {kUnknown, "CUDA_ERROR_UNKNOWN", "unknown error"},
};

// Like the real driver: an unknown code gives CUDA_ERROR_INVALID_VALUE and a null string.
CUresult lookup(CUresult code, const char** out, bool name) {
  if (out == nullptr) return kInvalidValue;
  for (const ErrorText& e : kErrors) {
    if (e.code == code) {
      *out = name ? e.name : e.text;
      return kSuccess;
    }
  }
  *out = nullptr;
  return kInvalidValue;
}

}  // namespace

FAKE_EXPORT CUresult cuGetErrorName(CUresult code, const char** name) { return lookup(code, name, true); }

FAKE_EXPORT CUresult cuGetErrorString(CUresult code, const char** text) { return lookup(code, text, false); }
