// SPDX-License-Identifier: Apache-2.0
// The CUDA GPTQ kernels against cuBLAS fp16 (cublasGemmEx) on the same shapes, in the same run:
// per shape and M, the median of CUDA-event timings of single launches, weights rotated through
// enough copies that they never sit in L2, the effective weight bandwidth, the ratio to cuBLAS
// and the bandwidth floor (weight bytes / measured device copy bandwidth). Random weights: every
// 4-bit word is a valid set of codes, so no checkpoint is needed. docs/performance.md has the
// figures; scripts/gpu-check.sh runs this.
//
//   bench_cuda_int4 [--quick] [--iters N]
#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cuda/gptq_cuda.h"

namespace {

using namespace gptqd::kernels;
using namespace gptqd::kernels::cuda;

#define CHECK_CUDA(call)                                                                            \
  do {                                                                                              \
    const cudaError_t e_ = (call);                                                                  \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_));  \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

#define CHECK_BLAS(call)                                                             \
  do {                                                                               \
    const cublasStatus_t s_ = (call);                                                \
    if (s_ != CUBLAS_STATUS_SUCCESS) {                                               \
      std::fprintf(stderr, "%s:%d: %s: cuBLAS status %d\n", __FILE__, __LINE__, #call, static_cast<int>(s_)); \
      std::exit(1);                                                                  \
    }                                                                                \
  } while (0)

void* dev_alloc(size_t bytes) {
  void* p = nullptr;
  CHECK_CUDA(cudaMalloc(&p, bytes));
  return p;
}

template <typename Launch>
double median_us(int iters, Launch&& launch) {
  cudaEvent_t a, b;
  CHECK_CUDA(cudaEventCreate(&a));
  CHECK_CUDA(cudaEventCreate(&b));
  for (int i = 0; i < 3; ++i) launch(i);  // warm-up (and the shared-memory opt-in)
  std::vector<float> t;
  for (int i = 0; i < iters; ++i) {
    CHECK_CUDA(cudaEventRecord(a));
    launch(i);
    CHECK_CUDA(cudaEventRecord(b));
    CHECK_CUDA(cudaEventSynchronize(b));
    float ms = 0;
    CHECK_CUDA(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms * 1000.0f);
  }
  CHECK_CUDA(cudaGetLastError());
  CHECK_CUDA(cudaEventDestroy(a));
  CHECK_CUDA(cudaEventDestroy(b));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Device read bandwidth, GB/s: a device-to-device copy of 1 GiB moves 2 GiB.
double copy_bandwidth_gbs() {
  const size_t bytes = size_t{1} << 30;
  void* src = dev_alloc(bytes);
  void* dst = dev_alloc(bytes);
  CHECK_CUDA(cudaMemset(src, 1, bytes));
  const double us = median_us(10, [&](int) { CHECK_CUDA(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); });
  CHECK_CUDA(cudaFree(src));
  CHECK_CUDA(cudaFree(dst));
  return 2.0 * static_cast<double>(bytes) / (us * 1e3);
}

struct Shape {
  int64_t K, N;
};

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  int iters = 50;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else if (std::strcmp(argv[i], "--iters") == 0 && i + 1 < argc) iters = std::atoi(argv[++i]);
    else {
      std::fprintf(stderr, "usage: %s [--quick] [--iters N]\n", argv[0]);
      return 2;
    }
  }
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::fprintf(stderr, "no CUDA device\n");
    return 1;
  }
  cudaDeviceProp prop{};
  CHECK_CUDA(cudaGetDeviceProperties(&prop, 0));
  const int sm = prop.major * 10 + prop.minor;
  const double bw = copy_bandwidth_gbs();
  std::printf("device: %s, sm%d, %d SMs, L2 %d MiB, copy bandwidth %.0f GB/s\n", prop.name, sm,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, bw);

  std::vector<Shape> shapes = {{4096, 4096}, {4096, 12288}, {4096, 22016}, {11008, 4096}};
  if (!quick) {
    shapes.push_back({8192, 57344});
    shapes.push_back({28672, 8192});
  }
  const std::vector<int64_t> ms = {1, 16, 64, 128};
  cublasHandle_t blas;
  CHECK_BLAS(cublasCreate(&blas));
  std::mt19937_64 rng(1);
  const Launch launch{nullptr, prop.multiProcessorCount};

  std::printf("\n%-13s %4s  %-16s %9s %8s %10s %9s %8s %9s\n", "K x N", "M", "kernel", "us", "GB/s", "cuBLAS us",
              "x cuBLAS", "floor us", "% floor");
  for (const Shape& s : shapes) {
    const int64_t K = s.K, N = s.N;
    const int64_t G = K / 128;
    // Random 4-bit codes in both layouts; fp16 scales around 0.01.
    TcLinear tc;
    tc.K = K;
    tc.N = N;
    tc.n_groups = G;
    tc.group_size = 128;
    tc.words.resize(static_cast<size_t>(K * N / 8));
    for (auto& w : tc.words) w = static_cast<uint32_t>(rng());
    tc.scales.assign(static_cast<size_t>(G * N), cpu::f32_to_f16(0.01f));
    GemvLinear gv;
    gv.K = K;
    gv.N = N;
    gv.n_groups = G;
    gv.bits = 4;
    gv.qweight = tc.words;  // any words are valid codes
    gv.scales = tc.scales;
    gv.zeros.assign(static_cast<size_t>(G * N), cpu::f32_to_f16(8.0f));
    gv.unit_group.resize(static_cast<size_t>(K / 32));
    for (int64_t u = 0; u < K / 32; ++u) gv.unit_group[static_cast<size_t>(u)] = static_cast<int32_t>(u / 4);

    const double weight_bytes = static_cast<double>(K * N) / 2 + static_cast<double>(G * N) * 2;
    const double floor_us = weight_bytes / (bw * 1e3);
    // Enough copies that the working set is 4x L2: every launch reads its weights from DRAM.
    const int copies = static_cast<int>(std::max<double>(1, std::ceil(4.0 * prop.l2CacheSize / weight_bytes)));
    std::vector<DeviceTcLinear> tcs(static_cast<size_t>(copies));
    std::vector<DeviceGemvLinear> gvs(static_cast<size_t>(copies));
    for (int c = 0; c < copies; ++c) {
      if (sm >= 80 && upload(tc, &tcs[static_cast<size_t>(c)]) != KernelStatus::ok) return 1;
      if (upload(gv, &gvs[static_cast<size_t>(c)]) != KernelStatus::ok) return 1;
    }
    // cuBLAS fp16 weights [N][K], rotated the same way.
    const size_t w16_bytes = static_cast<size_t>(K * N) * 2;
    const int copies16 = static_cast<int>(std::max<double>(1, std::ceil(4.0 * prop.l2CacheSize / w16_bytes)));
    std::vector<void*> w16(static_cast<size_t>(copies16));
    for (auto& p : w16) {
      p = dev_alloc(w16_bytes);
      CHECK_CUDA(cudaMemset(p, 0x21, w16_bytes));  // 0x2121: a small fp16
    }
    const int64_t max_m = ms.back();
    void* x = dev_alloc(static_cast<size_t>(max_m * K) * 2);
    void* y = dev_alloc(static_cast<size_t>(max_m * N) * 2);
    CHECK_CUDA(cudaMemset(x, 0x3c, static_cast<size_t>(max_m * K) * 2));  // 0x3c3c: about 1.06
    size_t ws_bytes = 0;
    for (int64_t m : ms) {
      ws_bytes = std::max(ws_bytes, plan_tc(m, K, N, false, launch.sm_count).workspace_bytes());
      if (m <= kGemvMaxM) ws_bytes = std::max(ws_bytes, plan_gemv(m, K, N, launch.sm_count).workspace_bytes());
    }
    void* ws = dev_alloc(std::max<size_t>(ws_bytes, 1));

    for (int64_t m : ms) {
      const float alpha = 1.0f, beta = 0.0f;
      const double blas_us = median_us(iters, [&](int i) {
        CHECK_BLAS(cublasGemmEx(blas, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(N), static_cast<int>(m),
                                static_cast<int>(K), &alpha, w16[static_cast<size_t>(i % copies16)], CUDA_R_16F,
                                static_cast<int>(K), x, CUDA_R_16F, static_cast<int>(K), &beta, y, CUDA_R_16F,
                                static_cast<int>(N), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      });
      auto row = [&](const char* kernel, double us) {
        std::printf("%5lld x %-5lld %4lld  %-16s %9.1f %8.0f %10.1f %9.2f %8.1f %8.0f%%\n", static_cast<long long>(K),
                    static_cast<long long>(N), static_cast<long long>(m), kernel, us, weight_bytes / (us * 1e3),
                    blas_us, blas_us / us, floor_us, 100.0 * floor_us / us);
      };
      const auto* xin = static_cast<const uint16_t*>(x);
      auto* yout = static_cast<uint16_t*>(y);
      if (sm >= 80) {
        row("cuda-tensor-core", median_us(iters, [&](int i) {
              if (tc_gemm(tcs[static_cast<size_t>(i % copies)], xin, m, yout, ws, ws_bytes, launch) != KernelStatus::ok) {
                std::fprintf(stderr, "tc_gemm failed\n");
                std::exit(1);
              }
            }));
      }
      if (m <= kGemvMaxM) {
        row("cuda-gemv", median_us(iters, [&](int i) {
              if (gemv(gvs[static_cast<size_t>(i % copies)], xin, m, yout, ws, ws_bytes, launch) != KernelStatus::ok) {
                std::fprintf(stderr, "gemv failed\n");
                std::exit(1);
              }
            }));
      }
    }
    for (auto& d : tcs) release(&d);
    for (auto& d : gvs) release(&d);
    for (void* p : w16) CHECK_CUDA(cudaFree(p));
    CHECK_CUDA(cudaFree(x));
    CHECK_CUDA(cudaFree(y));
    CHECK_CUDA(cudaFree(ws));
  }
  CHECK_BLAS(cublasDestroy(blas));
  return 0;
}
