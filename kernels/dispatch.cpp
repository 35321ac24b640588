// SPDX-License-Identifier: Apache-2.0
// The kernel dispatch table (kernels layer): per kernel, the conditions under which it can run
// one GPTQ linear on a device, written once and used both by the hot path (pick_kernel, no
// strings) and by the explanation (choose_kernel, a reason per candidate).
#include "kernels/dispatch.h"

#include <cstdlib>
#include <string>
#include <string_view>

namespace gptqd::kernels {
namespace {

// Builds a reason from pieces; only ever called with a non-null `why`.
void set(std::string* why, std::initializer_list<std::string_view> parts) {
  why->clear();
  for (std::string_view p : parts) why->append(p);
}

std::string num(int64_t v) { return std::to_string(v); }

constexpr KernelId kCudaCandidates[] = {KernelId::cuda_tensor_core, KernelId::cuda_gemv, KernelId::cuda_dequant_gemm,
                                        KernelId::cpu_avx512,       KernelId::cpu_avx2,  KernelId::cpu_dequant_blas,
                                        KernelId::cpu_scalar};
constexpr KernelId kCpuCandidates[] = {KernelId::cpu_avx512, KernelId::cpu_avx2, KernelId::cpu_dequant_blas,
                                       KernelId::cpu_scalar};

// Why an eligible CUDA kernel does not run. The kernels exist (kernels/cuda/gptq_cuda.cu, built
// whenever nvcc is found) but the engine has no CUDA backend to call them from yet.
constexpr const char* kCudaNotServing = "conditions hold, but this gptqd cannot run the CUDA kernels yet (no GPU backend)";

bool is_cuda_kernel(KernelId id) { return id <= KernelId::cuda_dequant_gemm; }

// The group size that matters for tiling: one group over all of K (-1, K itself, or more than
// K: a single partial group) is channelwise.
int64_t effective_group(const LinearDesc& l) { return l.group_size <= 0 || l.group_size >= l.K ? -1 : l.group_size; }

// The widest SIMD level below AVX-512 the CPU has, for "this CPU has AVX2".
const char* best_simd(const cpu::CpuFeatures& f) {
  if (f.avx2) return "AVX2";
  if (f.avx) return "AVX";
  if (f.sse42) return "SSE4.2";
  return "no AVX";
}

// "avx2, f16c": the names of the flags in `need` that are false.
std::string missing(std::initializer_list<std::pair<bool, const char*>> need) {
  std::string s;
  for (const auto& [have, name] : need) {
    if (have) continue;
    if (!s.empty()) s += ", ";
    s += name;
  }
  return s;
}

bool cuda_sm_ok(const DeviceDesc& d, std::string* why) {
  if (d.kind != DeviceKind::cuda) {
    if (why) set(why, {"needs a CUDA device"});
    return false;
  }
  if (d.sm() < 75) {
    if (why) set(why, {"this build's CUDA kernels need sm75 or newer, device is sm", num(d.sm())});
    return false;
  }
  return true;
}

// The GEMV layout (kernels/cuda/gptq_cuda_layout.h), which the GEMV and dequantize kernels read:
// the checkpoint packing in 32-row units along K, each unit inside one group, 4 columns per
// vector load. A last partial group is fine.
bool gemv_layout_ok(const LinearDesc& l, std::string* why) {
  if (l.bits != 2 && l.bits != 3 && l.bits != 4 && l.bits != 8) {
    if (why) set(why, {"the GEMV layout handles 2, 3, 4 and 8 bits, not ", num(l.bits)});
    return false;
  }
  if (l.K % 32 != 0) {
    if (why) set(why, {"the GEMV layout needs K % 32 == 0, K=", num(l.K)});
    return false;
  }
  if (l.N % 4 != 0) {
    if (why) set(why, {"the GEMV layout needs N % 4 == 0, N=", num(l.N)});
    return false;
  }
  const int64_t g = effective_group(l);
  if (g != -1 && g % 32 != 0) {
    if (why) set(why, {"the GEMV layout needs a group size that is a multiple of 32 (or one group), this linear has ", num(g)});
    return false;
  }
  return true;
}

// Whether the conditions of kernel `k` hold; when `why` is given, it says why (or why not).
bool conditions_hold(KernelId k, const DeviceDesc& d, const LinearDesc& l, int64_t m, std::string* why) {
  const cpu::CpuFeatures& f = d.host;
  switch (k) {
    case KernelId::cuda_tensor_core: {
      if (d.kind != DeviceKind::cuda) {
        if (why) set(why, {"needs a CUDA device"});
        return false;
      }
      if (d.sm() < 80) {
        if (why) set(why, {"tensor-core kernel needs sm80, device is sm", num(d.sm())});
        return false;
      }
      if (l.bits != 4) {
        if (why) set(why, {"tensor-core kernel is 4-bit only, this linear is ", num(l.bits), "-bit"});
        return false;
      }
      if (!l.sym) {
        if (why) set(why, {"tensor-core kernel needs symmetric quantization, this linear is asymmetric"});
        return false;
      }
      const int64_t g = effective_group(l);
      if (g != -1 && g != 32 && g != 64 && g != 128) {
        if (why) set(why, {"tensor-core kernel needs group size -1, 32, 64 or 128, this linear has ", num(g)});
        return false;
      }
      if (l.K % 128 != 0) {
        if (why) set(why, {"tensor-core kernel needs K % 128 == 0, K=", num(l.K)});
        return false;
      }
      if (l.N % 64 != 0) {
        if (why) set(why, {"tensor-core kernel needs N % 64 == 0, N=", num(l.N)});
        return false;
      }
      if (why) {
        set(why, {"sm", num(d.sm()), " tensor cores: 4-bit sym, group ", num(g), ", K=", num(l.K), " % 128 == 0, N=",
                  num(l.N), " % 64 == 0", l.act_order ? ", act-order permuted at load" : ""});
      }
      return true;
    }
    case KernelId::cuda_gemv: {
      if (!cuda_sm_ok(d, why) || !gemv_layout_ok(l, why)) return false;
      if (m > kCudaGemvMaxM) {
        if (why) set(why, {"M=", num(m), " is above the GEMV kernel's range (M <= ", num(kCudaGemvMaxM), ")"});
        return false;
      }
      if (why) set(why, {"M=", num(m), " is in the GEMV kernel's range (M <= ", num(kCudaGemvMaxM), ")"});
      return true;
    }
    case KernelId::cuda_dequant_gemm: {
      // Any M: the large-M path, and the GPU fallback of whatever the two others reject at small M.
      if (!cuda_sm_ok(d, why) || !gemv_layout_ok(l, why)) return false;
      if (why) {
        if (m > kCudaGemvMaxM) set(why, {"M=", num(m), " is above the GEMV kernel's range: dequantize to fp16, then cuBLAS"});
        else set(why, {"dequantize to fp16, then cuBLAS (any bits and M)"});
      }
      return true;
    }
    case KernelId::cpu_avx512: {
      if (!f.avx512f || !f.avx512bw || !f.avx512vl) {
        if (why) {
          if (!f.avx512f && !f.avx512bw && !f.avx512vl) {
            set(why, {"needs AVX-512 (avx512f, avx512bw, avx512vl), this CPU has ", best_simd(f)});
          } else {
            set(why, {"needs AVX-512 (avx512f, avx512bw, avx512vl), this CPU lacks ",
                      missing({{f.avx512f, "avx512f"}, {f.avx512bw, "avx512bw"}, {f.avx512vl, "avx512vl"}})});
          }
        }
        return false;
      }
      if (!f.fma || !f.f16c) {
        if (why) set(why, {"needs fma and f16c with AVX-512, this CPU lacks ", missing({{f.fma, "fma"}, {f.f16c, "f16c"}})});
        return false;
      }
      // No M limit: on 32 registers it keeps 8 rows in flight and out-runs dequantize + sgemm at
      // every M measured (docs/performance.md).
      if (why) set(why, {"AVX-512 present: the direct kernel, any M"});
      return true;
    }
    case KernelId::cpu_avx2: {
      if (!f.avx2 || !f.fma || !f.f16c) {
        if (why) {
          set(why, {"needs avx2, fma and f16c, this CPU lacks ",
                    missing({{f.avx2, "avx2"}, {f.fma, "fma"}, {f.f16c, "f16c"}})});
        }
        return false;
      }
      if (m > kCpuDirectMaxM) {
        if (why) set(why, {"M=", num(m), " is above the AVX2 kernel's range (M <= ", num(kCpuDirectMaxM), ")"});
        return false;
      }
      if (why) set(why, {"AVX2+FMA+F16C present, M=", num(m), " is in the AVX2 kernel's range (M <= ", num(kCpuDirectMaxM), ")"});
      return true;
    }
    case KernelId::cpu_dequant_blas: {
      if (m <= kCpuDirectMaxM) {
        if (why) set(why, {"M=", num(m), " is in the direct kernels' range (M <= ", num(kCpuDirectMaxM), ")"});
        return false;
      }
      if (why) set(why, {"M=", num(m), " is above the direct kernels' range: dequantize tiles to fp32, then sgemm"});
      return true;
    }
    case KernelId::cpu_scalar:
      if (why) set(why, {"the scalar reference runs any GPTQ linear"});
      return true;
  }
  return false;
}

struct CandidateList {
  const KernelId* begin;
  const KernelId* end;
};

CandidateList candidates_for(const DeviceDesc& d) {
  if (d.kind == DeviceKind::cuda) return {std::begin(kCudaCandidates), std::end(kCudaCandidates)};
  return {std::begin(kCpuCandidates), std::end(kCpuCandidates)};
}

}  // namespace

const char* to_string(DeviceKind kind) { return kind == DeviceKind::cuda ? "cuda" : "cpu"; }

std::string describe_quantization(const LinearDesc& l) {
  std::string s = std::to_string(l.bits) + "-bit ";
  const int64_t g = effective_group(l);
  s += g == -1 ? std::string("channelwise") : "g" + std::to_string(g);
  s += l.sym ? " sym" : " asym";
  if (l.act_order) s += " act-order";
  return s;
}

const char* kernel_name(KernelId id) {
  switch (id) {
    case KernelId::cuda_tensor_core: return "cuda-tensor-core";
    case KernelId::cuda_gemv: return "cuda-gemv";
    case KernelId::cuda_dequant_gemm: return "cuda-dequant-gemm";
    case KernelId::cpu_avx512: return "cpu-avx512";
    case KernelId::cpu_avx2: return "cpu-avx2";
    case KernelId::cpu_dequant_blas: return "cpu-dequant-blas";
    case KernelId::cpu_scalar: return "cpu-scalar";
  }
  return "unknown";
}

const char* kernel_description(KernelId id) {
  switch (id) {
    case KernelId::cuda_tensor_core: return "sm80+ tensor-core INT4 GEMM (Marlin-style mma.sync), any M";
    case KernelId::cuda_gemv: return "sm75+ GEMV / small M, dequantizing in registers";
    case KernelId::cuda_dequant_gemm: return "sm75+ large M: dequantize to fp16, then cuBLAS";
    case KernelId::cpu_avx512: return "AVX-512 INT4 GEMV / small M";
    case KernelId::cpu_avx2: return "AVX2+FMA INT4 GEMV / small M";
    case KernelId::cpu_dequant_blas: return "large M: dequantize tiles to fp32, then OpenBLAS sgemm";
    case KernelId::cpu_scalar: return "scalar reference, any CPU";
  }
  return "unknown";
}

bool kernel_built(KernelId id) {
  switch (id) {
    case KernelId::cuda_tensor_core:
    case KernelId::cuda_gemv:
    case KernelId::cuda_dequant_gemm: return false;  // no GPU backend calls them yet (kCudaNotServing)
    case KernelId::cpu_avx512:
    case KernelId::cpu_avx2:
#if defined(__x86_64__)
      return true;
#else
      return false;
#endif
    case KernelId::cpu_dequant_blas:
    case KernelId::cpu_scalar: return true;
  }
  return false;
}

KernelSet built_kernels() {
  static const KernelSet built = [] {
    KernelSet s = 0;
    for (int i = 0; i < kKernelCount; ++i) {
      if (kernel_built(static_cast<KernelId>(i))) s |= kernel_bit(static_cast<KernelId>(i));
    }
    return s;
  }();
  return built;
}

KernelId pick_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m, KernelSet built) {
  const CandidateList list = candidates_for(device);
  for (const KernelId* k = list.begin; k != list.end; ++k) {
    if ((built & kernel_bit(*k)) && conditions_hold(*k, device, linear, m, nullptr)) return *k;
  }
  return KernelId::cpu_scalar;
}

KernelId pick_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m) {
  return pick_kernel(device, linear, m, built_kernels());
}

Choice choose_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m, KernelSet built) {
  Choice choice;
  const CandidateList list = candidates_for(device);
  bool have_winner = false;
  for (const KernelId* k = list.begin; k != list.end; ++k) {
    Candidate c;
    c.kernel = *k;
    c.built = (built & kernel_bit(*k)) != 0;
    std::string why;
    c.eligible = conditions_hold(*k, device, linear, m, &why);
    if (!c.eligible) {
      c.reason = std::move(why);
    } else if (have_winner) {
      c.reason = std::string("lower priority than ") + kernel_name(choice.kernel);
    } else if (!c.built) {
      c.reason = is_cuda_kernel(*k) ? kCudaNotServing
                                    : "conditions hold, but this gptqd was built without the x86 SIMD kernels";
    } else {
      c.chosen = true;
      c.reason = std::move(why);
      choice.kernel = *k;
      have_winner = true;
    }
    choice.candidates.push_back(std::move(c));
  }
  // The scalar reference is the last candidate, always eligible, so a winner exists unless
  // `built` leaves it out; then cpu_scalar stays the answer, as pick_kernel says.
  choice.runs_on = is_cuda_kernel(choice.kernel) ? DeviceKind::cuda : DeviceKind::cpu;
  return choice;
}

Choice choose_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m) {
  return choose_kernel(device, linear, m, built_kernels());
}

const DeviceDesc& host_cpu_device() {
  static const DeviceDesc device = [] {
    DeviceDesc d;
    d.kind = DeviceKind::cpu;
    d.index = -1;
    d.host = cpu::detect_cpu_features();
    d.name = d.host.model_name;
    // GPTQD_CPU_DISABLE="avx512f,avx2": run as if the CPU lacked these (to compare the kernel
    // paths on one machine, or to step around a suspect one). Unknown names are ignored.
    if (const char* off = std::getenv("GPTQD_CPU_DISABLE")) {
      const std::string list = std::string(",") + off + ",";
      auto drop = [&](const char* name, bool& flag) {
        if (list.find(std::string(",") + name + ",") != std::string::npos) flag = false;
      };
      cpu::CpuFeatures& f = d.host;
      drop("avx512f", f.avx512f);
      drop("avx512bw", f.avx512bw);
      drop("avx512vl", f.avx512vl);
      drop("avx2", f.avx2);
      drop("fma", f.fma);
      drop("f16c", f.f16c);
    }
    return d;
  }();
  return device;
}

}  // namespace gptqd::kernels
