// SPDX-License-Identifier: Apache-2.0
// The CUDA device probe: on a machine without a GPU (CI) it must report "no devices" with a
// reason instead of failing; on a GPU machine it lists sane devices (kernels tests, label cuda).
#include "kernels/cuda/cuda_probe.h"

#include <gtest/gtest.h>

#include <cstring>

namespace gptqd::kernels::cuda {
namespace {

TEST(CudaProbe, ReportsDevicesOrWhyThereAreNone) {
  CudaProbeResult r;
  ASSERT_EQ(probe_cuda(&r), KernelStatus::ok) << r.error;
#ifdef GPTQD_HAVE_CUDA
  EXPECT_TRUE(r.compiled_with_cuda);
  EXPECT_GT(r.runtime_version, 0);
#else
  EXPECT_FALSE(r.compiled_with_cuda);
  EXPECT_NE(std::strstr(r.error, "built without CUDA"), nullptr) << r.error;
#endif
  if (r.n_devices == 0) {
    EXPECT_GT(std::strlen(r.error), 0u) << "no devices and no reason given";
    return;
  }
  for (int i = 0; i < r.n_devices; ++i) {
    const CudaDeviceInfo& d = r.devices[i];
    EXPECT_EQ(d.index, i);
    EXPECT_GT(std::strlen(d.name), 0u);
    EXPECT_GE(d.cc_major, 3);
    EXPECT_GT(d.sm_count, 0);
    EXPECT_GT(d.total_memory_bytes, 1ull << 28);
  }
}

TEST(CudaProbe, IsRepeatable) {
  CudaProbeResult a, b;
  ASSERT_EQ(probe_cuda(&a), KernelStatus::ok);
  ASSERT_EQ(probe_cuda(&b), KernelStatus::ok);
  EXPECT_EQ(a.n_devices, b.n_devices);
  EXPECT_STREQ(a.error, b.error);
}

}  // namespace
}  // namespace gptqd::kernels::cuda
