// SPDX-License-Identifier: Apache-2.0
// The kernel dispatch table: the one place that decides which INT4 kernel runs one GPTQ linear
// on one device for a given number of input rows M, and why every other candidate was rejected
// (kernels layer). Pure functions of plain descriptions, so the table is unit-tested with fake
// devices (sm70 ... sm90, none) on any machine. gptq-reference.md Part C is where the
// conditions come from; the CPU backend calls pick_kernel on every GPTQ matmul, `GET /api/gpu`
// and `gptqctl gpu/show` call choose_kernel for the explanations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_features.h"

namespace gptqd::kernels {

enum class DeviceKind { cpu, cuda };
const char* to_string(DeviceKind kind);  // "cpu", "cuda"

// A device as the table sees it. For a CUDA device `host` is the CPU of the same machine: the
// CPU kernels are the fallback of every CUDA device.
struct DeviceDesc {
  DeviceKind kind = DeviceKind::cpu;
  int index = -1;        // CUDA ordinal; -1 for the CPU
  std::string name;      // "NVIDIA H100 80GB HBM3" or the CPU model name
  int cc_major = 0;      // CUDA compute capability (8, 6 for sm86); 0 for the CPU
  int cc_minor = 0;
  cpu::CpuFeatures host;
  int sm() const { return cc_major * 10 + cc_minor; }
};

// One GPTQ linear: y [M, N] = x [M, K] · W^T.
struct LinearDesc {
  int bits = 4;            // 2, 3, 4, 8
  int64_t group_size = 128;  // -1: one group per output row (channelwise)
  bool act_order = false;  // desc_act: g_idx is not k / group_size
  bool sym = true;
  int64_t K = 0;           // in_features
  int64_t N = 0;           // out_features
};

// "4-bit g128 sym", "3-bit channelwise asym act-order": the quantization of a linear in words.
std::string describe_quantization(const LinearDesc& linear);

// Every kernel gptqd knows, built or not. Order = priority: the first eligible one runs.
enum class KernelId {
  cuda_tensor_core,   // sm80+: Marlin-style mma.sync kernel, 4-bit sym, K%128, N%64, gs in {-1,32,64,128}
  cuda_gemv,          // sm75+: dequantize-in-registers GEMV / small M (M <= kCudaGemvMaxM), 2/3/4/8-bit,
                      //   K % 32, N % 4, group size a multiple of 32 or one group
  cuda_dequant_gemm,  // sm75+: dequantize to fp16 + cuBLAS, any M; the GEMV kernel's layout conditions
  cpu_avx512,         // AVX-512F/BW/VL+FMA+F16C: the direct INT4 kernel, any M
  cpu_avx2,           // AVX2+FMA+F16C: the same kernel on 8-wide vectors, M <= kCpuDirectMaxM
  cpu_dequant_blas,   // any CPU: dequantize tiles to fp32 + OpenBLAS sgemm, large M
  cpu_scalar,         // any CPU: the scalar reference, always eligible (the last resort)
};
constexpr int kKernelCount = 7;

constexpr int64_t kCpuDirectMaxM = 8;   // the AVX2 and scalar kernels' M range; above it dequant+BLAS
constexpr int64_t kCudaGemvMaxM = 16;   // the CUDA GEMV kernel's M range

const char* kernel_name(KernelId id);         // "cpu-avx512", "cuda-tensor-core", ...
const char* kernel_description(KernelId id);  // one line for humans
bool kernel_built(KernelId id);               // false for kernels this binary cannot run (the CUDA ones
                                              // until the engine has a GPU backend)

// A set of kernels as bits (1 << KernelId), for asking what would run with kernels this binary
// lacks (tests, and the "intended" choice once the CUDA kernels exist).
using KernelSet = uint32_t;
constexpr KernelSet kernel_bit(KernelId id) { return KernelSet{1} << static_cast<int>(id); }
constexpr KernelSet kAllKernels = (KernelSet{1} << kKernelCount) - 1;
KernelSet built_kernels();  // the kernels this binary contains

struct Candidate {
  KernelId kernel = KernelId::cpu_scalar;
  bool chosen = false;
  bool eligible = false;  // conditions hold (a candidate after the chosen one may be eligible too)
  bool built = false;     // in the kernel set asked about; eligible but not built = would run once built
  std::string reason;     // why rejected ("tensor-core kernel needs sm80, device is sm75"); for the
                          // chosen one, why it runs; for eligible ones after it, "lower priority than X"
};

struct Choice {
  KernelId kernel = KernelId::cpu_scalar;  // what runs
  DeviceKind runs_on = DeviceKind::cpu;    // a CUDA device may fall back to the host CPU
  std::vector<Candidate> candidates;       // every kernel considered, in priority order
};

// The decision with its explanation. Never fails: the CPU scalar reference always qualifies.
// Candidates: on a CPU device the CPU kernels; on a CUDA device the CUDA kernels, then the CPU
// kernels of `device.host` as the fallback. Conditions are checked before "built", so a kernel
// this binary lacks is rejected with "conditions hold, but ..." only when it would otherwise run.
Choice choose_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m);
// The same with `built` in place of built_kernels(): what would run if those kernels existed.
Choice choose_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m, KernelSet built);

// This machine's CPU as a device (features detected once, then cached; thread-safe).
const DeviceDesc& host_cpu_device();

// The same decision without building strings (hot path: the CPU backend calls it per matmul).
KernelId pick_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m);
KernelId pick_kernel(const DeviceDesc& device, const LinearDesc& linear, int64_t m, KernelSet built);

}  // namespace gptqd::kernels
