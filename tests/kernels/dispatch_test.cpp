// SPDX-License-Identifier: Apache-2.0
// The dispatch table against fake devices (sm70, sm75, sm80, sm86, sm89, sm90, and CPUs with
// AVX-512, AVX2 only or neither): the expected kernel of every common configuration is written
// by hand from the rules in dispatch.h, once with every kernel built (what the table intends)
// and once with this build's kernels (the CPU fallback), plus the wording of the reasons
// (kernels tests).
#include "kernels/dispatch.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace gptqd::kernels {
namespace {

using K = KernelId;

cpu::CpuFeatures cpu_avx512() {
  cpu::CpuFeatures f;
  f.model_name = "fake AVX-512 CPU";
  f.logical_cpus = 8;
  f.sse42 = f.avx = f.avx2 = f.fma = f.f16c = true;
  f.avx512f = f.avx512bw = f.avx512vl = true;
  return f;
}

cpu::CpuFeatures cpu_avx2() {
  cpu::CpuFeatures f;
  f.model_name = "fake AVX2 CPU";
  f.logical_cpus = 4;
  f.sse42 = f.avx = f.avx2 = f.fma = f.f16c = true;
  return f;
}

cpu::CpuFeatures cpu_plain() {
  cpu::CpuFeatures f;
  f.model_name = "fake SSE4.2 CPU";
  f.logical_cpus = 2;
  f.sse42 = true;
  return f;
}

DeviceDesc cpu_device(const cpu::CpuFeatures& f) {
  DeviceDesc d;
  d.name = f.model_name;
  d.host = f;
  return d;
}

// A GPU whose host CPU has AVX2 (the CPU fallback then is cpu-avx2 / cpu-dequant-blas).
DeviceDesc gpu(int sm) {
  DeviceDesc d;
  d.kind = DeviceKind::cuda;
  d.index = 0;
  d.name = "fake sm" + std::to_string(sm);
  d.cc_major = sm / 10;
  d.cc_minor = sm % 10;
  d.host = cpu_avx2();
  return d;
}

LinearDesc lin(int bits, int64_t group, int64_t k, int64_t n, bool act_order = false, bool sym = true) {
  LinearDesc l;
  l.bits = bits;
  l.group_size = group;
  l.act_order = act_order;
  l.sym = sym;
  l.K = k;
  l.N = n;
  return l;
}

// The CPU kernels only: this build on x86-64 (no CUDA kernels yet).
constexpr KernelSet kCpuKernels = kernel_bit(K::cpu_avx512) | kernel_bit(K::cpu_avx2) |
                                  kernel_bit(K::cpu_dequant_blas) | kernel_bit(K::cpu_scalar);

const Candidate& candidate(const Choice& c, KernelId k) {
  for (const auto& cand : c.candidates) {
    if (cand.kernel == k) return cand;
  }
  ADD_FAILURE() << kernel_name(k) << " is not a candidate";
  static const Candidate none;
  return none;
}

// The reason `k` got, for messages and substring checks.
std::string reason(const Choice& c, KernelId k) { return candidate(c, k).reason; }

// ---- the rules, one device at a time --------------------------------------------------------

TEST(Dispatch, ThisBuildContainsTheCpuKernels) {
  EXPECT_FALSE(kernel_built(K::cuda_tensor_core));
  EXPECT_FALSE(kernel_built(K::cuda_gemv));
  EXPECT_FALSE(kernel_built(K::cuda_dequant_gemm));
  EXPECT_TRUE(kernel_built(K::cpu_dequant_blas));
  EXPECT_TRUE(kernel_built(K::cpu_scalar));
#if defined(__x86_64__)
  EXPECT_TRUE(kernel_built(K::cpu_avx512));
  EXPECT_TRUE(kernel_built(K::cpu_avx2));
  EXPECT_EQ(built_kernels(), kCpuKernels);
#endif
  for (int i = 0; i < kKernelCount; ++i) {
    const auto k = static_cast<KernelId>(i);
    EXPECT_EQ((built_kernels() & kernel_bit(k)) != 0, kernel_built(k)) << kernel_name(k);
    EXPECT_STRNE(kernel_name(k), "unknown");
    EXPECT_STRNE(kernel_description(k), "unknown");
  }
}

TEST(Dispatch, CpuOnlyCandidatesOnACpu) {
  const Choice c = choose_kernel(cpu_device(cpu_avx2()), lin(4, 128, 4096, 4096), 1, kAllKernels);
  ASSERT_EQ(c.candidates.size(), 4u);
  EXPECT_EQ(c.candidates[0].kernel, K::cpu_avx512);
  EXPECT_EQ(c.candidates[3].kernel, K::cpu_scalar);
  EXPECT_EQ(c.runs_on, DeviceKind::cpu);
}

TEST(Dispatch, CpuWithAvx512) {
  const DeviceDesc d = cpu_device(cpu_avx512());
  const LinearDesc l = lin(4, 128, 4096, 4096);
  Choice c = choose_kernel(d, l, 1, kCpuKernels);
  EXPECT_EQ(c.kernel, K::cpu_avx512);
  EXPECT_TRUE(candidate(c, K::cpu_avx512).chosen);
  EXPECT_EQ(reason(c, K::cpu_avx2), "lower priority than cpu-avx512");
  EXPECT_TRUE(candidate(c, K::cpu_avx2).eligible);
  EXPECT_EQ(reason(c, K::cpu_dequant_blas), "M=1 is in the direct kernels' range (M <= 8)");
  EXPECT_EQ(reason(c, K::cpu_scalar), "lower priority than cpu-avx512");
  // The AVX-512 kernel has no M limit (it out-runs dequantize + sgemm at every M measured).
  c = choose_kernel(d, l, 64, kCpuKernels);
  EXPECT_EQ(c.kernel, K::cpu_avx512);
  EXPECT_EQ(reason(c, K::cpu_avx512), "AVX-512 present: the direct kernel, any M");
  EXPECT_EQ(reason(c, K::cpu_avx2), "M=64 is above the AVX2 kernel's range (M <= 8)");
  EXPECT_EQ(reason(c, K::cpu_dequant_blas), "lower priority than cpu-avx512");
  EXPECT_EQ(pick_kernel(d, l, 8, kCpuKernels), K::cpu_avx512);
  EXPECT_EQ(pick_kernel(d, l, 512, kCpuKernels), K::cpu_avx512);
}

TEST(Dispatch, CpuWithAvx2Only) {
  const DeviceDesc d = cpu_device(cpu_avx2());
  const Choice c = choose_kernel(d, lin(3, 128, 4096, 4096), 1, kCpuKernels);
  EXPECT_EQ(c.kernel, K::cpu_avx2);
  EXPECT_EQ(reason(c, K::cpu_avx512), "needs AVX-512 (avx512f, avx512bw, avx512vl), this CPU has AVX2");
  EXPECT_FALSE(candidate(c, K::cpu_avx512).eligible);
  EXPECT_EQ(pick_kernel(d, lin(8, -1, 4096, 4096), 512, kCpuKernels), K::cpu_dequant_blas);
}

TEST(Dispatch, CpuWithNeitherRunsScalarForSmallM) {
  const DeviceDesc d = cpu_device(cpu_plain());
  Choice c = choose_kernel(d, lin(4, 128, 4096, 4096), 1, kCpuKernels);
  EXPECT_EQ(c.kernel, K::cpu_scalar);
  EXPECT_EQ(reason(c, K::cpu_avx512), "needs AVX-512 (avx512f, avx512bw, avx512vl), this CPU has SSE4.2");
  EXPECT_EQ(reason(c, K::cpu_avx2), "needs avx2, fma and f16c, this CPU lacks avx2, fma, f16c");
  EXPECT_EQ(reason(c, K::cpu_scalar), "the scalar reference runs any GPTQ linear");
  c = choose_kernel(d, lin(4, 128, 4096, 4096), 17, kCpuKernels);
  EXPECT_EQ(c.kernel, K::cpu_dequant_blas);
  EXPECT_EQ(reason(c, K::cpu_scalar), "lower priority than cpu-dequant-blas");
}

TEST(Dispatch, PartialAvx512AndMissingF16cAreNamed) {
  cpu::CpuFeatures f = cpu_avx2();
  f.avx512f = true;
  Choice c = choose_kernel(cpu_device(f), lin(4, 128, 4096, 4096), 1, kCpuKernels);
  EXPECT_EQ(reason(c, K::cpu_avx512), "needs AVX-512 (avx512f, avx512bw, avx512vl), this CPU lacks avx512bw, avx512vl");
  EXPECT_EQ(c.kernel, K::cpu_avx2);
  f = cpu_avx512();
  f.f16c = false;
  c = choose_kernel(cpu_device(f), lin(4, 128, 4096, 4096), 1, kCpuKernels);
  EXPECT_EQ(reason(c, K::cpu_avx512), "needs fma and f16c with AVX-512, this CPU lacks f16c");
  EXPECT_EQ(reason(c, K::cpu_avx2), "needs avx2, fma and f16c, this CPU lacks f16c");
  EXPECT_EQ(c.kernel, K::cpu_scalar);
}

TEST(Dispatch, CpuTakesEveryBitWidthAndGroupSize) {
  const DeviceDesc d = cpu_device(cpu_avx2());
  for (int bits : {2, 3, 4, 8}) {
    for (int64_t g : {int64_t{-1}, int64_t{32}, int64_t{96}, int64_t{128}}) {
      for (bool sym : {true, false}) {
        // 4000 = 41 groups of 96 + a partial one: fine on the CPU.
        const LinearDesc l = lin(bits, g, 4000, 1000, g == 96, sym);
        EXPECT_EQ(pick_kernel(d, l, 1, kCpuKernels), K::cpu_avx2) << describe_quantization(l);
        EXPECT_EQ(pick_kernel(d, l, 100, kCpuKernels), K::cpu_dequant_blas) << describe_quantization(l);
      }
    }
  }
}

TEST(Dispatch, Sm90TensorCoreForAnyM) {
  const DeviceDesc d = gpu(90);
  for (int64_t m : {1, 16, 17, 64, 512}) {
    const Choice c = choose_kernel(d, lin(4, 128, 4096, 4096), m, kAllKernels);
    EXPECT_EQ(c.kernel, K::cuda_tensor_core) << "M=" << m;
    EXPECT_EQ(c.runs_on, DeviceKind::cuda);
    EXPECT_EQ(c.candidates.size(), 7u);
    EXPECT_NE(reason(c, K::cuda_tensor_core).find("sm90 tensor cores"), std::string::npos);
    // Everything else that qualifies is lower priority.
    for (const auto& cand : c.candidates) {
      if (cand.eligible && !cand.chosen) {
        EXPECT_EQ(cand.reason, "lower priority than cuda-tensor-core");
      }
    }
  }
  // act-order is a load-time permutation: no obstacle.
  EXPECT_EQ(pick_kernel(d, lin(4, 128, 4096, 4096, true), 1, kAllKernels), K::cuda_tensor_core);
}

TEST(Dispatch, Sm75GemvThenDequantGemm) {
  const DeviceDesc d = gpu(75);
  Choice c = choose_kernel(d, lin(4, 128, 4096, 4096), 1, kAllKernels);
  EXPECT_EQ(c.kernel, K::cuda_gemv);
  EXPECT_EQ(reason(c, K::cuda_tensor_core), "tensor-core kernel needs sm80, device is sm75");
  EXPECT_EQ(reason(c, K::cuda_dequant_gemm), "lower priority than cuda-gemv");
  c = choose_kernel(d, lin(4, 128, 4096, 4096), 16, kAllKernels);
  EXPECT_EQ(c.kernel, K::cuda_gemv);
  c = choose_kernel(d, lin(4, 128, 4096, 4096), 17, kAllKernels);
  EXPECT_EQ(c.kernel, K::cuda_dequant_gemm);
  EXPECT_EQ(reason(c, K::cuda_gemv), "M=17 is above the GEMV kernel's range (M <= 16)");
}

TEST(Dispatch, Sm70FallsBackToTheHostCpu) {
  const DeviceDesc d = gpu(70);
  Choice c = choose_kernel(d, lin(4, 128, 4096, 4096), 1, kAllKernels);
  EXPECT_EQ(c.kernel, K::cpu_avx2);
  EXPECT_EQ(c.runs_on, DeviceKind::cpu);
  EXPECT_EQ(reason(c, K::cuda_tensor_core), "tensor-core kernel needs sm80, device is sm70");
  EXPECT_EQ(reason(c, K::cuda_gemv), "this build's CUDA kernels need sm75 or newer, device is sm70");
  EXPECT_EQ(reason(c, K::cuda_dequant_gemm), "this build's CUDA kernels need sm75 or newer, device is sm70");
  c = choose_kernel(d, lin(4, 128, 4096, 4096), 512, kAllKernels);
  EXPECT_EQ(c.kernel, K::cpu_dequant_blas);
}

TEST(Dispatch, TensorCoreRejectionsNameTheNumbers) {
  const DeviceDesc d = gpu(86);
  auto why = [&](const LinearDesc& l) { return reason(choose_kernel(d, l, 1, kAllKernels), K::cuda_tensor_core); };
  EXPECT_EQ(why(lin(8, 128, 4096, 4096)), "tensor-core kernel is 4-bit only, this linear is 8-bit");
  EXPECT_EQ(why(lin(3, 128, 4096, 4096)), "tensor-core kernel is 4-bit only, this linear is 3-bit");
  EXPECT_EQ(why(lin(4, 128, 4096, 4096, false, false)),
            "tensor-core kernel needs symmetric quantization, this linear is asymmetric");
  EXPECT_EQ(why(lin(4, 96, 4096, 4096)), "tensor-core kernel needs group size -1, 32, 64 or 128, this linear has 96");
  EXPECT_EQ(why(lin(4, 128, 10944, 4096)), "tensor-core kernel needs K % 128 == 0, K=10944");
  EXPECT_EQ(why(lin(4, 128, 576, 1536)), "tensor-core kernel needs K % 128 == 0, K=576");
  EXPECT_EQ(why(lin(4, 128, 4096, 1000)), "tensor-core kernel needs N % 64 == 0, N=1000");
  // group_size == K is channelwise.
  EXPECT_TRUE(candidate(choose_kernel(d, lin(4, 4096, 4096, 4096), 1, kAllKernels), K::cuda_tensor_core).eligible);
}

TEST(Dispatch, GemvLayoutNeedsWholeUnitsOf32) {
  const DeviceDesc d = gpu(89);
  // A group of 96 does not divide K=4000, but every 32-row unit lies in one group: the GEMV
  // layout takes it (the last group is partial).
  Choice c = choose_kernel(d, lin(4, 96, 4000, 4096), 1, kAllKernels);
  EXPECT_EQ(c.kernel, K::cuda_gemv);
  EXPECT_EQ(c.runs_on, DeviceKind::cuda);
  c = choose_kernel(d, lin(4, 96, 4000, 4096), 64, kAllKernels);
  EXPECT_EQ(c.kernel, K::cuda_dequant_gemm);
  // A group of 100 splits units: no CUDA kernel, the host CPU runs it.
  c = choose_kernel(d, lin(4, 100, 4000, 4096), 1, kAllKernels);
  EXPECT_EQ(reason(c, K::cuda_gemv),
            "the GEMV layout needs a group size that is a multiple of 32 (or one group), this linear has 100");
  EXPECT_EQ(reason(c, K::cuda_dequant_gemm), reason(c, K::cuda_gemv));
  EXPECT_EQ(c.runs_on, DeviceKind::cpu);
  EXPECT_EQ(reason(choose_kernel(d, lin(4, 128, 4000, 4098), 1, kAllKernels), K::cuda_gemv),
            "the GEMV layout needs N % 4 == 0, N=4098");
  EXPECT_EQ(reason(choose_kernel(d, lin(4, -1, 4000 + 16, 4096), 1, kAllKernels), K::cuda_gemv),
            "the GEMV layout needs K % 32 == 0, K=4016");
}

TEST(Dispatch, UnbuiltKernelsSayTheirConditionsHold) {
  const Choice c = choose_kernel(gpu(90), lin(4, 128, 4096, 4096), 1, kCpuKernels);
  EXPECT_EQ(c.kernel, K::cpu_avx2);
  EXPECT_EQ(c.runs_on, DeviceKind::cpu);
  const Candidate& tc = candidate(c, K::cuda_tensor_core);
  EXPECT_TRUE(tc.eligible);
  EXPECT_FALSE(tc.built);
  EXPECT_FALSE(tc.chosen);
  EXPECT_EQ(tc.reason, "conditions hold, but this gptqd cannot run the CUDA kernels yet (no GPU backend)");
  EXPECT_EQ(reason(c, K::cuda_gemv), "conditions hold, but this gptqd cannot run the CUDA kernels yet (no GPU backend)");
  EXPECT_EQ(reason(c, K::cuda_dequant_gemm), "conditions hold, but this gptqd cannot run the CUDA kernels yet (no GPU backend)");
  const Choice t4 = choose_kernel(gpu(75), lin(4, 128, 4096, 4096), 1, kCpuKernels);
  EXPECT_EQ(reason(t4, K::cuda_tensor_core), "tensor-core kernel needs sm80, device is sm75");
}

TEST(Dispatch, DescribesTheQuantization) {
  EXPECT_EQ(describe_quantization(lin(4, 128, 4096, 4096)), "4-bit g128 sym");
  EXPECT_EQ(describe_quantization(lin(3, -1, 4096, 4096, true, false)), "3-bit channelwise asym act-order");
  EXPECT_EQ(describe_quantization(lin(8, 4096, 4096, 4096)), "8-bit channelwise sym");
}

// ---- the grid: every device x configuration x M, expected by hand --------------------------

struct Config {
  const char* label;
  LinearDesc l;
};

const std::vector<Config>& configs() {
  static const std::vector<Config> c = {
      {"4b g128", lin(4, 128, 4096, 4096)},
      {"4b g128 act", lin(4, 128, 4096, 4096, true)},
      {"4b g-1", lin(4, -1, 4096, 4096)},
      {"4b g32", lin(4, 32, 4096, 4096)},
      {"4b g96", lin(4, 96, 4096, 4096)},     // 4096 / 96 is not whole, but 96 is whole units of 32
      {"4b g100", lin(4, 100, 4000, 4096)},   // units of 32 cross groups: no CUDA kernel
      {"8b g128", lin(8, 128, 4096, 4096)},
      {"3b g128", lin(3, 128, 4096, 4096)},
      {"4b g128 asym", lin(4, 128, 4096, 4096, false, false)},
      {"4b g128 K576 N1536", lin(4, 128, 576, 1536)},    // SmolLM2 gate/up: 576 % 128 = 64
      {"4b g64 K1536 N576", lin(4, 64, 1536, 576)},      // SmolLM2 down
      {"4b g64 K10944", lin(4, 64, 10944, 4096)},        // vLLM's "not divisible by min_thread_k = 128"
      {"4b g128 K10944", lin(4, 128, 10944, 4096)},      // ... and 128 does not divide it either
  };
  return c;
}

// The intended kernel with every kernel built, from the rules (device: sm, or 0 for the AVX2 CPU).
KernelId intended(int sm, const Config& cfg, int64_t m) {
  const LinearDesc& l = cfg.l;
  const int64_t g = l.group_size <= 0 || l.group_size >= l.K ? -1 : l.group_size;
  if (sm >= 80 && l.bits == 4 && l.sym && (g == -1 || g == 32 || g == 64 || g == 128) && l.K % 128 == 0 &&
      l.N % 64 == 0) {
    return K::cuda_tensor_core;
  }
  if (sm >= 75) {
    if (l.K % 32 == 0 && l.N % 4 == 0 && (g == -1 || g % 32 == 0)) return m <= 16 ? K::cuda_gemv : K::cuda_dequant_gemm;
  }
  return m <= 8 ? K::cpu_avx2 : K::cpu_dequant_blas;
}

struct Expectation {
  const char* config;
  int sm;  // 0: no GPU (the AVX2 CPU itself)
  int64_t m;
  KernelId kernel;
};

// A few of the grid's answers spelled out, so a mistake in intended() cannot hide one in the table.
const Expectation kSpelledOut[] = {
    {"4b g128", 90, 1, K::cuda_tensor_core},          {"4b g128", 80, 512, K::cuda_tensor_core},
    {"4b g128", 75, 1, K::cuda_gemv},                 {"4b g128", 75, 64, K::cuda_dequant_gemm},
    {"4b g128", 70, 1, K::cpu_avx2},                  {"4b g128", 70, 512, K::cpu_dequant_blas},
    {"4b g128 act", 86, 17, K::cuda_tensor_core},     {"4b g-1", 89, 1, K::cuda_tensor_core},
    {"4b g32", 80, 16, K::cuda_tensor_core},          {"4b g96", 90, 1, K::cuda_gemv},
    {"4b g96", 90, 17, K::cuda_dequant_gemm},         {"8b g128", 90, 1, K::cuda_gemv},
    {"8b g128", 90, 512, K::cuda_dequant_gemm},       {"3b g128", 86, 16, K::cuda_gemv},
    {"4b g128 asym", 89, 1, K::cuda_gemv},            {"4b g128 K576 N1536", 90, 1, K::cuda_gemv},
    {"4b g128 K576 N1536", 90, 64, K::cuda_dequant_gemm},
    {"4b g64 K1536 N576", 80, 1, K::cuda_tensor_core}, {"4b g64 K10944", 90, 1, K::cuda_gemv},
    {"4b g128 K10944", 90, 1, K::cuda_gemv},          {"4b g128 K10944", 90, 512, K::cuda_dequant_gemm},
    {"4b g100", 90, 1, K::cpu_avx2},                  {"4b g100", 75, 512, K::cpu_dequant_blas},
    {"4b g128", 0, 1, K::cpu_avx2},                   {"4b g128", 0, 16, K::cpu_dequant_blas},
};

DeviceDesc device_for(int sm) { return sm == 0 ? cpu_device(cpu_avx2()) : gpu(sm); }

TEST(DispatchGrid, SpelledOutCases) {
  for (const auto& e : kSpelledOut) {
    const Config* cfg = nullptr;
    for (const auto& c : configs()) {
      if (std::string(c.label) == e.config) cfg = &c;
    }
    ASSERT_NE(cfg, nullptr) << e.config;
    const Choice c = choose_kernel(device_for(e.sm), cfg->l, e.m, kAllKernels);
    EXPECT_EQ(c.kernel, e.kernel) << e.config << " sm" << e.sm << " M=" << e.m << ": got " << kernel_name(c.kernel);
    EXPECT_EQ(intended(e.sm, *cfg, e.m), e.kernel) << e.config << " sm" << e.sm << " M=" << e.m;
  }
}

TEST(DispatchGrid, EveryDeviceConfigAndM) {
  const int sms[] = {0, 70, 75, 80, 86, 89, 90};
  const int64_t ms[] = {1, 8, 9, 16, 17, 64, 512};
  for (int sm : sms) {
    const DeviceDesc d = device_for(sm);
    for (const auto& cfg : configs()) {
      for (int64_t m : ms) {
        const std::string where = std::string(cfg.label) + " sm" + std::to_string(sm) + " M=" + std::to_string(m);
        // What the table intends, once the CUDA kernels exist.
        const Choice all = choose_kernel(d, cfg.l, m, kAllKernels);
        EXPECT_EQ(all.kernel, intended(sm, cfg, m)) << where << ": got " << kernel_name(all.kernel);
        // What this build runs: the CUDA kernels are absent, so the host CPU.
        const Choice cpu_only = choose_kernel(d, cfg.l, m, kCpuKernels);
        EXPECT_EQ(cpu_only.kernel, m <= 8 ? K::cpu_avx2 : K::cpu_dequant_blas) << where;
        EXPECT_EQ(cpu_only.runs_on, DeviceKind::cpu) << where;
        // Exactly one chosen candidate, the answer; it is eligible and built.
        for (const Choice* c : {&all, &cpu_only}) {
          int n_chosen = 0;
          for (const auto& cand : c->candidates) {
            EXPECT_FALSE(cand.reason.empty()) << where << " " << kernel_name(cand.kernel);
            if (!cand.chosen) continue;
            ++n_chosen;
            EXPECT_EQ(cand.kernel, c->kernel) << where;
            EXPECT_TRUE(cand.eligible && cand.built) << where;
          }
          EXPECT_EQ(n_chosen, 1) << where;
          EXPECT_EQ(c->runs_on, c->kernel <= K::cuda_dequant_gemm ? DeviceKind::cuda : DeviceKind::cpu) << where;
        }
        // The hot path agrees with the explanation, for every kernel set of interest.
        EXPECT_EQ(pick_kernel(d, cfg.l, m, kAllKernels), all.kernel) << where;
        EXPECT_EQ(pick_kernel(d, cfg.l, m, kCpuKernels), cpu_only.kernel) << where;
        EXPECT_EQ(pick_kernel(d, cfg.l, m), choose_kernel(d, cfg.l, m).kernel) << where;
      }
    }
  }
}

TEST(DispatchGrid, PickAgreesWithChooseForEveryKernelSubset) {
  const DeviceDesc devices[] = {cpu_device(cpu_avx512()), cpu_device(cpu_avx2()), cpu_device(cpu_plain()),
                                gpu(70), gpu(75), gpu(80), gpu(90)};
  for (const auto& d : devices) {
    for (const auto& cfg : configs()) {
      for (int64_t m : {1, 16, 17, 64, 512}) {
        for (KernelSet set = 0; set <= kAllKernels; ++set) {
          EXPECT_EQ(pick_kernel(d, cfg.l, m, set), choose_kernel(d, cfg.l, m, set).kernel)
              << d.name << " " << cfg.label << " M=" << m << " set " << set;
        }
      }
    }
  }
}

TEST(Dispatch, HostCpuDeviceIsCachedAndUsable) {
  const DeviceDesc& a = host_cpu_device();
  const DeviceDesc& b = host_cpu_device();
  EXPECT_EQ(&a, &b);
  EXPECT_EQ(a.kind, DeviceKind::cpu);
  const Choice c = choose_kernel(a, lin(4, 128, 4096, 4096), 1);
  EXPECT_EQ(c.runs_on, DeviceKind::cpu);
  EXPECT_EQ(pick_kernel(a, lin(4, 128, 4096, 4096), 1), c.kernel);
  const bool avx512 = a.host.avx512f && a.host.avx512bw && a.host.avx512vl && a.host.fma && a.host.f16c;
  EXPECT_EQ(pick_kernel(a, lin(4, 128, 4096, 4096), 512), avx512 ? K::cpu_avx512 : K::cpu_dequant_blas);
}

}  // namespace
}  // namespace gptqd::kernels
