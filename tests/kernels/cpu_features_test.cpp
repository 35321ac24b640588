// SPDX-License-Identifier: Apache-2.0
// cpuid + xgetbv detection against the kernel's own view: every flag matches the "flags" line of
// /proc/cpuinfo, which Linux also clears when the OS does not save the register state (kernels
// tests).
#include "kernels/cpu/cpu_features.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace gptqd::kernels::cpu {
namespace {

// The first "flags" line of /proc/cpuinfo as a set; empty when there is none (non-x86, no /proc).
std::set<std::string> proc_cpuinfo_flags() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos || line.compare(0, 5, "flags") != 0) continue;
    std::istringstream words(line.substr(colon + 1));
    std::set<std::string> flags;
    for (std::string w; words >> w;) flags.insert(w);
    return flags;
  }
  return {};
}

std::vector<std::pair<const char*, bool>> fields(const CpuFeatures& f) {
  return {{"sse4_2", f.sse42},     {"avx", f.avx},           {"avx2", f.avx2},
          {"fma", f.fma},          {"f16c", f.f16c},         {"avx512f", f.avx512f},
          {"avx512bw", f.avx512bw}, {"avx512vl", f.avx512vl}, {"avx512_vnni", f.avx512_vnni},
          {"avx_vnni", f.avx_vnni}};
}

TEST(CpuFeatures, EveryFlagMatchesProcCpuinfo) {
  const std::set<std::string> flags = proc_cpuinfo_flags();
  if (flags.empty()) GTEST_SKIP() << "no flags line in /proc/cpuinfo";
  const CpuFeatures f = detect_cpu_features();
  for (const auto& [name, present] : fields(f)) {
    EXPECT_EQ(present, flags.count(name) == 1) << name << ": cpuid says " << present;
  }
}

TEST(CpuFeatures, ModelNameAndCpuCount) {
  const CpuFeatures f = detect_cpu_features();
  EXPECT_FALSE(f.model_name.empty());
  ASSERT_FALSE(f.model_name.empty());
  EXPECT_NE(f.model_name.front(), ' ');
  EXPECT_NE(f.model_name.back(), ' ');
  EXPECT_EQ(f.logical_cpus, static_cast<int>(std::thread::hardware_concurrency()));
  std::printf("cpu: \"%s\", %d logical cpus\n", f.model_name.c_str(), f.logical_cpus);
}

TEST(CpuFeatures, NamesListThePresentFieldsInOrder) {
  const CpuFeatures f = detect_cpu_features();
  std::vector<std::string> expected;
  for (const auto& [name, present] : fields(f)) {
    if (present) expected.emplace_back(name);
  }
  EXPECT_EQ(f.names(), expected);

  CpuFeatures all;
  all.sse42 = all.avx = all.avx2 = all.fma = all.f16c = true;
  all.avx512f = all.avx512bw = all.avx512vl = all.avx512_vnni = all.avx_vnni = true;
  EXPECT_EQ(all.names(), (std::vector<std::string>{"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw",
                                                   "avx512vl", "avx512_vnni", "avx_vnni"}));
  EXPECT_TRUE(CpuFeatures{}.names().empty());
}

TEST(CpuFeatures, ImpliedFeaturesAreConsistent) {
  const CpuFeatures f = detect_cpu_features();
  EXPECT_TRUE(f.avx || !(f.avx2 || f.fma || f.f16c || f.avx_vnni));
  EXPECT_TRUE(f.avx512f || !(f.avx512bw || f.avx512vl || f.avx512_vnni));
  EXPECT_TRUE(f.avx || !f.avx512f);
}

TEST(CpuFeatures, IsStable) {
  const CpuFeatures a = detect_cpu_features();
  const CpuFeatures b = detect_cpu_features();
  EXPECT_EQ(a.names(), b.names());
  EXPECT_EQ(a.model_name, b.model_name);
}

}  // namespace
}  // namespace gptqd::kernels::cpu
