// SPDX-License-Identifier: Apache-2.0
// What this CPU can run: the instruction-set features the CPU kernels choose between, checked
// with cpuid and with the OS's xgetbv (so AVX-512 disabled by the kernel or a hypervisor counts as
// absent) (kernels layer).
#pragma once

#include <string>
#include <vector>

namespace gptqd::kernels::cpu {

struct CpuFeatures {
  std::string model_name;  // "AMD EPYC 7B13" from cpuid's brand string; "unknown" if none
  int logical_cpus = 0;    // std::thread::hardware_concurrency()
  bool sse42 = false;
  bool avx = false;
  bool avx2 = false;
  bool fma = false;
  bool f16c = false;
  bool avx512f = false;
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512_vnni = false;
  bool avx_vnni = false;
  // The names of the features above that are present, lower case as /proc/cpuinfo spells them
  // ("avx2", "fma", "f16c", "avx512f", ...), in the order of the fields.
  std::vector<std::string> names() const;
};

// Detects once per call (cheap; callers may cache). On non-x86 builds every flag is false.
CpuFeatures detect_cpu_features();

}  // namespace gptqd::kernels::cpu
