// SPDX-License-Identifier: Apache-2.0
// cpuid + xgetbv feature detection (kernels layer). A feature counts only when the CPU has it AND
// the OS saves its register state (XCR0), as the Linux kernel does for /proc/cpuinfo's flags.
#include "kernels/cpu/cpu_features.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <thread>
#include <utility>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define GPTQD_CPU_X86 1
#endif

namespace gptqd::kernels::cpu {
namespace {

std::string trim(std::string s) {
  const char* ws = " \t\r\n";
  s.erase(0, std::min(s.size(), s.find_first_not_of(ws)));
  const size_t end = s.find_last_not_of(ws);
  s.erase(end == std::string::npos ? 0 : end + 1);
  return s;
}

#ifdef GPTQD_CPU_X86

bool bit(uint32_t reg, int n) { return ((reg >> n) & 1u) != 0; }

// XCR0: which register states the OS saves on a context switch. Only valid with OSXSAVE.
uint64_t read_xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

std::string brand_string() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0x80000000u, &eax, &ebx, &ecx, &edx) || eax < 0x80000004u) return {};
  char brand[49] = {};
  for (unsigned leaf = 0; leaf < 3; ++leaf) {
    unsigned regs[4] = {};
    __get_cpuid(0x80000002u + leaf, &regs[0], &regs[1], &regs[2], &regs[3]);
    std::memcpy(brand + 16 * leaf, regs, sizeof regs);
  }
  return trim(std::string(brand));  // stops at the first NUL; the brand is space-padded
}

void detect_x86(CpuFeatures& f) {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(0, &eax, &ebx, &ecx, &edx)) return;
  const unsigned max_leaf = eax;

  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return;
  const uint32_t leaf1_ecx = ecx;
  f.sse42 = bit(leaf1_ecx, 20);

  const bool osxsave = bit(leaf1_ecx, 27);
  const uint64_t xcr0 = osxsave ? read_xcr0() : 0;
  const bool ymm_state = (xcr0 & 0x6u) == 0x6u;            // XMM (1) + YMM (2)
  const bool zmm_state = ymm_state && (xcr0 & 0xe0u) == 0xe0u;  // opmask (5), ZMM_Hi256 (6), Hi16_ZMM (7)

  f.avx = ymm_state && bit(leaf1_ecx, 28);
  f.fma = f.avx && bit(leaf1_ecx, 12);
  f.f16c = f.avx && bit(leaf1_ecx, 29);

  if (max_leaf < 7) return;
  __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx);
  const unsigned leaf7_max_sub = eax;
  const uint32_t leaf7_ebx = ebx, leaf7_ecx = ecx;
  f.avx2 = f.avx && bit(leaf7_ebx, 5);
  f.avx512f = zmm_state && bit(leaf7_ebx, 16);
  f.avx512bw = f.avx512f && bit(leaf7_ebx, 30);
  f.avx512vl = f.avx512f && bit(leaf7_ebx, 31);
  f.avx512_vnni = f.avx512f && bit(leaf7_ecx, 11);
  if (leaf7_max_sub >= 1) {
    __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx);
    f.avx_vnni = f.avx && bit(eax, 4);
  }
}

#else

// Non-x86: the model from /proc/cpuinfo ("model name" on most, "Processor"/"cpu model" elsewhere).
std::string proc_cpuinfo_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    const size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = trim(line.substr(0, colon));
    if (key == "model name" || key == "Processor" || key == "cpu model" || key == "cpu") {
      std::string value = trim(line.substr(colon + 1));
      if (!value.empty()) return value;
    }
  }
  return {};
}

#endif

}  // namespace

std::vector<std::string> CpuFeatures::names() const {
  std::vector<std::string> out;
  const std::pair<bool, const char*> all[] = {
      {sse42, "sse4_2"},     {avx, "avx"},           {avx2, "avx2"},         {fma, "fma"},
      {f16c, "f16c"},        {avx512f, "avx512f"},   {avx512bw, "avx512bw"}, {avx512vl, "avx512vl"},
      {avx512_vnni, "avx512_vnni"}, {avx_vnni, "avx_vnni"},
  };
  for (const auto& [present, name] : all) {
    if (present) out.emplace_back(name);
  }
  return out;
}

CpuFeatures detect_cpu_features() {
  CpuFeatures f;
#ifdef GPTQD_CPU_X86
  detect_x86(f);
  f.model_name = brand_string();
#else
  f.model_name = proc_cpuinfo_model();
#endif
  if (f.model_name.empty()) f.model_name = "unknown";
  f.logical_cpus = static_cast<int>(std::thread::hardware_concurrency());
  return f;
}

}  // namespace gptqd::kernels::cpu
