// SPDX-License-Identifier: Apache-2.0
// The CUDA device probe: the real driver on this machine (no GPU in CI: an error, quickly), and
// every other path -- devices, CUDA_VISIBLE_DEVICES, init errors, a hanging or broken driver, no
// devices -- through the fake driver library tests/support/fake_libcuda.cpp (kernels tests, label
// cuda).
#include "kernels/cuda/cuda_probe.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iterator>
#include <optional>
#include <string>

namespace gptqd::kernels::cuda {
namespace {

constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr const char* kTwoDevices = "NVIDIA H100 80GB HBM3,9.0,132,81559,80000;Tesla T4,7.5,40,15360,15000";

// Saves the environment variables the probe and the fake read, clears them for the test, and puts
// them back afterwards.
class CudaProbeTest : public ::testing::Test {
 protected:
  static constexpr const char* kVars[] = {"CUDA_VISIBLE_DEVICES", "GPTQD_FAKE_CUDA", "GPTQD_LIBCUDA"};

  void SetUp() override {
    for (size_t i = 0; i < std::size(kVars); ++i) {
      const char* v = std::getenv(kVars[i]);
      saved_[i] = v != nullptr ? std::optional<std::string>(v) : std::nullopt;
      ::unsetenv(kVars[i]);
    }
  }
  void TearDown() override {
    for (size_t i = 0; i < std::size(kVars); ++i) {
      if (saved_[i]) {
        ::setenv(kVars[i], saved_[i]->c_str(), 1);
      } else {
        ::unsetenv(kVars[i]);
      }
    }
  }

  static CudaProbeResult probe_fake(const char* spec, int timeout_ms = 10000) {
    if (spec != nullptr) ::setenv("GPTQD_FAKE_CUDA", spec, 1);
    CudaProbeOptions options;
    options.library = GPTQD_FAKE_LIBCUDA;
    options.timeout_ms = timeout_ms;
    return probe_cuda(options);
  }

  std::optional<std::string> saved_[std::size(kVars)];
};

bool contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// "GPU-" + 8-4-4-4-12 lower-case hex digits.
bool well_formed_uuid(const std::string& u) {
  if (u.size() != 40 || u.rfind("GPU-", 0) != 0) return false;
  for (size_t i = 4; i < u.size(); ++i) {
    const size_t k = i - 4;
    const bool dash = k == 8 || k == 13 || k == 18 || k == 23;
    if (dash ? u[i] != '-' : std::string("0123456789abcdef").find(u[i]) == std::string::npos) return false;
  }
  return true;
}

void expect_build_fields(const CudaProbeResult& r) {
#ifdef GPTQD_HAVE_CUDA
  EXPECT_TRUE(r.compiled_with_cuda);
  EXPECT_GT(r.runtime_version, 0);
#else
  EXPECT_FALSE(r.compiled_with_cuda);
  EXPECT_EQ(r.runtime_version, 0);
#endif
}

void expect_no_devices_with_reason(const CudaProbeResult& r) {
  EXPECT_TRUE(r.devices.empty());
  EXPECT_FALSE(r.error.empty()) << "no devices and no reason given";
}

TEST_F(CudaProbeTest, RealDriverReportsDevicesOrWhyThereAreNone) {
  CudaProbeOptions options;
  options.library = "libcuda.so.1";
  const auto start = std::chrono::steady_clock::now();
  const CudaProbeResult r = probe_cuda(options);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("real probe: %.3f s, %zu device(s), driver %d, error \"%s\"\n", seconds, r.devices.size(),
              r.driver_version, r.error.c_str());
  EXPECT_LT(seconds, 10.5);
  expect_build_fields(r);
  EXPECT_FALSE(r.visible_devices_set);
  if (r.devices.empty()) {
    EXPECT_FALSE(r.error.empty()) << "no devices and no reason given";
    return;
  }
  EXPECT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.driver_library, "libcuda.so.1");
  EXPECT_GT(r.driver_version, 0);
  for (size_t i = 0; i < r.devices.size(); ++i) {
    const CudaDeviceInfo& d = r.devices[i];
    EXPECT_EQ(d.index, static_cast<int>(i));
    EXPECT_FALSE(d.name.empty());
    EXPECT_TRUE(d.uuid.empty() || well_formed_uuid(d.uuid)) << d.uuid;
    EXPECT_GE(d.cc_major, 3);
    EXPECT_GE(d.cc_minor, 0);
    EXPECT_GT(d.sm_count, 0);
    EXPECT_GT(d.total_memory_bytes, uint64_t{1} << 28);
    EXPECT_LE(d.free_memory_bytes, d.total_memory_bytes);
  }
}

TEST_F(CudaProbeTest, MissingLibraryIsNoDriver) {
  CudaProbeOptions options;
  options.library = "/nonexistent/gptqd/libcuda.so.1";
  const CudaProbeResult r = probe_cuda(options);
  expect_no_devices_with_reason(r);
  EXPECT_EQ(r.error.rfind("no CUDA driver (", 0), 0u) << r.error;
  EXPECT_TRUE(contains(r.error, "/nonexistent/gptqd/libcuda.so.1")) << r.error;
  EXPECT_TRUE(r.driver_library.empty());
  EXPECT_EQ(r.driver_version, 0);
  expect_build_fields(r);
}

TEST_F(CudaProbeTest, LibraryThatIsNotADriver) {
  CudaProbeOptions options;
  options.library = "libm.so.6";
  const CudaProbeResult r = probe_cuda(options);
  expect_no_devices_with_reason(r);
  EXPECT_TRUE(contains(r.error, "has no cuInit")) << r.error;
  EXPECT_EQ(r.driver_library, "libm.so.6");  // dlopen worked; it is just not a driver
}

TEST_F(CudaProbeTest, FakeDriverWithTwoDevices) {
  const CudaProbeResult r = probe_fake(kTwoDevices);
  ASSERT_TRUE(r.error.empty()) << r.error;
  expect_build_fields(r);
  EXPECT_EQ(r.driver_version, 12040);
  EXPECT_EQ(r.driver_library, GPTQD_FAKE_LIBCUDA);
  EXPECT_FALSE(r.visible_devices_set);
  EXPECT_EQ(r.visible_devices, "");
  ASSERT_EQ(r.devices.size(), 2u);

  const CudaDeviceInfo& h100 = r.devices[0];
  EXPECT_EQ(h100.index, 0);
  EXPECT_EQ(h100.name, "NVIDIA H100 80GB HBM3");
  EXPECT_TRUE(h100.uuid.empty() || well_formed_uuid(h100.uuid)) << h100.uuid;
  EXPECT_EQ(h100.cc_major, 9);
  EXPECT_EQ(h100.cc_minor, 0);
  EXPECT_EQ(h100.sm_count, 132);
  EXPECT_EQ(h100.total_memory_bytes, 81559 * kMiB);
  EXPECT_EQ(h100.free_memory_bytes, 80000 * kMiB);

  const CudaDeviceInfo& t4 = r.devices[1];
  EXPECT_EQ(t4.index, 1);
  EXPECT_EQ(t4.name, "Tesla T4");
  EXPECT_TRUE(t4.uuid.empty() || well_formed_uuid(t4.uuid)) << t4.uuid;
  EXPECT_NE(t4.uuid, h100.uuid);
  EXPECT_EQ(t4.cc_major, 7);
  EXPECT_EQ(t4.cc_minor, 5);
  EXPECT_EQ(t4.sm_count, 40);
  EXPECT_EQ(t4.total_memory_bytes, 15360 * kMiB);
  EXPECT_EQ(t4.free_memory_bytes, 15000 * kMiB);
}

TEST_F(CudaProbeTest, LibraryFromEnvironment) {
  ::setenv("GPTQD_LIBCUDA", GPTQD_FAKE_LIBCUDA, 1);
  ::setenv("GPTQD_FAKE_CUDA", kTwoDevices, 1);
  const CudaProbeResult r = probe_cuda();
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_EQ(r.driver_library, GPTQD_FAKE_LIBCUDA);
  EXPECT_EQ(r.devices.size(), 2u);
}

TEST_F(CudaProbeTest, IsRepeatable) {
  const CudaProbeResult a = probe_fake(kTwoDevices);
  const CudaProbeResult b = probe_fake(kTwoDevices);
  ASSERT_EQ(a.devices.size(), b.devices.size());
  for (size_t i = 0; i < a.devices.size(); ++i) {
    EXPECT_EQ(a.devices[i].name, b.devices[i].name);
    EXPECT_EQ(a.devices[i].uuid, b.devices[i].uuid);
    EXPECT_EQ(a.devices[i].free_memory_bytes, b.devices[i].free_memory_bytes);
  }
}

TEST_F(CudaProbeTest, VisibleDevicesSelectsTheDriversOrdinals) {
  ::setenv("CUDA_VISIBLE_DEVICES", "1", 1);
  const CudaProbeResult r = probe_fake(kTwoDevices);
  ASSERT_TRUE(r.error.empty()) << r.error;
  EXPECT_TRUE(r.visible_devices_set);
  EXPECT_EQ(r.visible_devices, "1");
  ASSERT_EQ(r.devices.size(), 1u);
  EXPECT_EQ(r.devices[0].index, 0);
  EXPECT_EQ(r.devices[0].name, "Tesla T4");
  EXPECT_EQ(r.devices[0].sm_count, 40);
}

TEST_F(CudaProbeTest, VisibleDevicesStopAtTheFirstInvalidEntry) {
  ::setenv("CUDA_VISIBLE_DEVICES", "1,7,0", 1);
  const CudaProbeResult r = probe_fake(kTwoDevices);
  ASSERT_EQ(r.devices.size(), 1u) << r.error;
  EXPECT_EQ(r.devices[0].name, "Tesla T4");
}

TEST_F(CudaProbeTest, EmptyOrNegativeVisibleDevicesHideEveryGpuWithoutLoadingTheDriver) {
  for (const char* visible : {"", "-1", " -1 ", "-1,0"}) {
    SCOPED_TRACE(std::string("CUDA_VISIBLE_DEVICES=\"") + visible + "\"");
    ::setenv("CUDA_VISIBLE_DEVICES", visible, 1);
    // "hang" would time out if the driver were loaded at all.
    const CudaProbeResult r = probe_fake("hang", 300);
    expect_no_devices_with_reason(r);
    EXPECT_EQ(r.error, std::string("CUDA_VISIBLE_DEVICES=\"") + visible + "\" hides every GPU");
    EXPECT_TRUE(r.visible_devices_set);
    EXPECT_EQ(r.visible_devices, visible);
    EXPECT_TRUE(r.driver_library.empty());
    EXPECT_EQ(r.driver_version, 0);
    expect_build_fields(r);
  }
}

TEST_F(CudaProbeTest, VisibleDevicesNamingNoDeviceIsAnInitError) {
  ::setenv("CUDA_VISIBLE_DEVICES", "5", 1);
  const CudaProbeResult r = probe_fake(kTwoDevices);
  expect_no_devices_with_reason(r);
  EXPECT_TRUE(contains(r.error, "CUDA_ERROR_NO_DEVICE")) << r.error;
}

TEST_F(CudaProbeTest, InitErrorNoDevice) {
  const CudaProbeResult r = probe_fake("error:100");
  expect_no_devices_with_reason(r);
  EXPECT_EQ(r.error.rfind("CUDA driver failed to initialize: ", 0), 0u) << r.error;
  EXPECT_TRUE(contains(r.error, "CUDA_ERROR_NO_DEVICE (100)")) << r.error;
  EXPECT_TRUE(contains(r.error, "no CUDA-capable device is detected")) << r.error;
  EXPECT_EQ(r.driver_version, 12040);  // read before cuInit
  EXPECT_EQ(r.driver_library, GPTQD_FAKE_LIBCUDA);
}

TEST_F(CudaProbeTest, InitErrorUnknown) {
  const CudaProbeResult r = probe_fake("error:999");
  expect_no_devices_with_reason(r);
  EXPECT_TRUE(contains(r.error, "CUDA_ERROR_UNKNOWN (999)")) << r.error;
}

TEST_F(CudaProbeTest, InitErrorWithoutAName) {
  const CudaProbeResult r = probe_fake("error:4242");
  expect_no_devices_with_reason(r);
  EXPECT_TRUE(contains(r.error, "CUDA error 4242")) << r.error;
}

TEST_F(CudaProbeTest, HangingDriverIsAbandonedAfterTheTimeout) {
  const auto start = std::chrono::steady_clock::now();
  const CudaProbeResult r = probe_fake("hang", 300);
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_GE(elapsed, std::chrono::milliseconds(290));
  EXPECT_LT(elapsed, std::chrono::seconds(2));
  expect_no_devices_with_reason(r);
  EXPECT_EQ(r.error, "the CUDA driver did not answer within 300 ms (a wedged driver?); running on the CPU");
  expect_build_fields(r);

  // The abandoned thread is still inside cuInit; the same library answers a new probe.
  const CudaProbeResult again = probe_fake(kTwoDevices);
  EXPECT_TRUE(again.error.empty()) << again.error;
  EXPECT_EQ(again.devices.size(), 2u);
}

TEST_F(CudaProbeTest, BrokenDeviceGivesNoDevicesAndAReason) {
  const CudaProbeResult r = probe_fake("broken_device");
  expect_no_devices_with_reason(r);
  EXPECT_TRUE(contains(r.error, "device 0")) << r.error;
  EXPECT_TRUE(contains(r.error, "cuDeviceGetAttribute")) << r.error;
  EXPECT_TRUE(contains(r.error, "CUDA_ERROR_UNKNOWN (999)")) << r.error;
}

TEST_F(CudaProbeTest, ZeroDevices) {
  const CudaProbeResult unset = probe_fake(nullptr);
  expect_no_devices_with_reason(unset);
  EXPECT_EQ(unset.error, "the CUDA driver reports no devices");

  const CudaProbeResult empty = probe_fake("");
  EXPECT_EQ(empty.error, "the CUDA driver reports no devices");
  EXPECT_TRUE(empty.devices.empty());
}

}  // namespace
}  // namespace gptqd::kernels::cuda
