// SPDX-License-Identifier: Apache-2.0
// The CUDA GPTQ kernels on a GPU against the definition (gptq-reference.md B.7) evaluated in
// float64 from the test's own codes: the real Llama shapes and odd ones, M from 1 to 512, fresh
// random inputs every run (the seed is printed on a failure), the output poisoned with NaN
// before each launch, every CUDA call checked, tolerances from operand norms. Skips cleanly
// where there is no CUDA device (label `cuda`; scripts/gpu-check.sh runs it on a GPU machine).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/half.h"
#include "kernels/cuda/gptq_cuda.h"
#include "tests/kernels/gptq_test_linear.h"

namespace gptqd::kernels::cuda {
namespace {

using cpu::f16_to_f32;
using cpu::f32_to_f16;
using test::LinearCase;
using test::make_test_linear;
using test::TestLinear;

#define CUDA_OK(call)                                                                       \
  do {                                                                                      \
    const cudaError_t e_ = (call);                                                          \
    ASSERT_EQ(e_, cudaSuccess) << #call << ": " << cudaGetErrorName(e_) << " " << cudaGetErrorString(e_); \
  } while (0)

struct Device {
  int index = -1, sm = 0, sm_count = 0;
  std::string why_not;
};

const Device& device() {
  static const Device dev = [] {
    Device d;
    int n = 0;
    const cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n == 0) {
      d.why_not = e != cudaSuccess ? std::string("no CUDA device: ") + cudaGetErrorString(e) : "no CUDA device";
      return d;
    }
    cudaDeviceProp p{};
    if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
      d.why_not = "cudaGetDeviceProperties failed";
      return d;
    }
    d.index = 0;
    d.sm = p.major * 10 + p.minor;
    d.sm_count = p.multiProcessorCount;
    return d;
  }();
  return dev;
}

#define REQUIRE_GPU(min_sm)                                                                         \
  do {                                                                                              \
    if (device().index < 0) GTEST_SKIP() << device().why_not;                                       \
    if (device().sm < (min_sm)) GTEST_SKIP() << "needs sm" << (min_sm) << ", device is sm" << device().sm; \
  } while (0)

uint64_t fresh_seed() { return std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32); }

struct DevMem {
  void* p = nullptr;
  size_t bytes = 0;
  ~DevMem() {
    if (p) cudaFree(p);
  }
};

// Device buffer of `bytes` (at least 1).
::testing::AssertionResult alloc(DevMem* m, size_t bytes) {
  m->bytes = bytes;
  const cudaError_t e = cudaMalloc(&m->p, bytes == 0 ? 1 : bytes);
  if (e != cudaSuccess) return ::testing::AssertionFailure() << "cudaMalloc(" << bytes << "): " << cudaGetErrorString(e);
  return ::testing::AssertionSuccess();
}

// The columns checked against float64: 32 at each end and 32 at a random place (all if few).
std::vector<int64_t> checked_columns(int64_t N, std::mt19937_64& rng) {
  std::vector<int64_t> cols;
  if (N <= 128) {
    for (int64_t n = 0; n < N; ++n) cols.push_back(n);
    return cols;
  }
  std::uniform_int_distribution<int64_t> start(1, N / 32 - 2);
  for (int64_t b : {int64_t{0}, start(rng), N / 32 - 1}) {
    for (int64_t j = 0; j < 32; ++j) cols.push_back(b * 32 + j);
  }
  return cols;
}

enum class Kernel { tc, gemv, dequant };
const char* name(Kernel k) { return k == Kernel::tc ? "tc_gemm" : k == Kernel::gemv ? "gemv" : "dequant_gemm"; }

// Runs `kernel` for every M on one linear and checks it; `blas` for the dequant path.
void check_linear(const LinearCase& c, Kernel kernel, const std::vector<int64_t>& ms, uint64_t seed) {
  SCOPED_TRACE(c.describe() + " " + name(kernel) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const TestLinear l = make_test_linear(c, rng);
  DeviceTcLinear tc{};
  DeviceGemvLinear gv{};
  std::string why;
  if (kernel == Kernel::tc) {
    TcLinear host;
    ASSERT_EQ(repack_tc(l.view(), &host, &why), KernelStatus::ok) << why;
    ASSERT_EQ(upload(host, &tc), KernelStatus::ok);
  } else {
    GemvLinear host;
    ASSERT_EQ(repack_gemv(l.view(), &host, &why), KernelStatus::ok) << why;
    ASSERT_EQ(upload(host, &gv), KernelStatus::ok);
  }
  std::unique_ptr<DeviceTcLinear, void (*)(DeviceTcLinear*)> tc_guard(&tc, release);
  std::unique_ptr<DeviceGemvLinear, void (*)(DeviceGemvLinear*)> gv_guard(&gv, release);
  cublasHandle_t blas = nullptr;
  if (kernel == Kernel::dequant) {
    ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  }
  std::unique_ptr<cublasContext, cublasStatus_t (*)(cublasHandle_t)> blas_guard(blas, cublasDestroy);

  const std::vector<int64_t> cols = checked_columns(c.N, rng);
  const Launch launch{nullptr, device().sm_count};
  for (int64_t M : ms) {
    SCOPED_TRACE("M=" + std::to_string(M));
    const std::vector<float> x = test::random_half_x(M, c.K, rng);
    std::vector<uint16_t> xh(x.size());
    for (size_t i = 0; i < x.size(); ++i) xh[i] = f32_to_f16(x[i]);
    DevMem dx, dy, ws;
    ASSERT_TRUE(alloc(&dx, xh.size() * 2));
    ASSERT_TRUE(alloc(&dy, static_cast<size_t>(M * c.N) * 2));
    CUDA_OK(cudaMemcpy(dx.p, xh.data(), xh.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(dy.p, 0xff, dy.bytes));  // 0xffff is an fp16 NaN: an unwritten output shows
    size_t ws_bytes = 0;
    switch (kernel) {
      case Kernel::tc: ws_bytes = plan_tc(M, c.K, c.N, c.act_order, launch.sm_count).workspace_bytes(); break;
      case Kernel::gemv: ws_bytes = plan_gemv(M, c.K, c.N, launch.sm_count).workspace_bytes(); break;
      case Kernel::dequant: ws_bytes = dequant_gemm_workspace_bytes(M, c.K, c.N, c.act_order); break;
    }
    ASSERT_TRUE(alloc(&ws, ws_bytes));
    CUDA_OK(cudaMemset(ws.p, 0xff, ws_bytes == 0 ? 1 : ws_bytes));  // stale partials must not leak in
    const auto* xin = static_cast<const uint16_t*>(dx.p);
    auto* yout = static_cast<uint16_t*>(dy.p);
    KernelStatus st = KernelStatus::ok;
    switch (kernel) {
      case Kernel::tc: st = tc_gemm(tc, xin, M, yout, ws.p, ws_bytes, launch); break;
      case Kernel::gemv: st = gemv(gv, xin, M, yout, ws.p, ws_bytes, launch); break;
      case Kernel::dequant: st = dequant_gemm(gv, blas, xin, M, yout, ws.p, ws_bytes, launch); break;
    }
    ASSERT_EQ(st, KernelStatus::ok);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaGetLastError());
    std::vector<uint16_t> yh(static_cast<size_t>(M * c.N));
    CUDA_OK(cudaMemcpy(yh.data(), dy.p, yh.size() * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < yh.size(); ++i) ASSERT_TRUE(std::isfinite(f16_to_f32(yh[i]))) << "output " << i << " not written";
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n : cols) {
        double want = 0, norm = 0;
        for (int64_t k = 0; k < c.K; ++k) {
          const double t = static_cast<double>(x[static_cast<size_t>(m * c.K + k)]) * l.weight(n, k);
          want += t;
          norm += std::fabs(t);
        }
        // Weights rounded to fp16 once (2^-11 relative; the tensor-core path and cuBLAS), fp32
        // accumulation (K * 2^-24 relative to the norm), the output rounded to fp16 (2^-11 of
        // the result). Twice that, as a bound the correct kernel stays well inside and a wrong
        // weight (~norm / K * 10) cannot.
        const double tol = 2 * (norm * (std::ldexp(1.0, -11) + c.K * std::ldexp(1.0, -24)) +
                                std::fabs(want) * std::ldexp(1.0, -11)) + 1e-6;
        const double got = f16_to_f32(yh[static_cast<size_t>(m * c.N + n)]);
        ASSERT_NEAR(got, want, tol) << "m " << m << " n " << n << " norm " << norm;
      }
    }
  }
}

const std::vector<int64_t> kAllM = {1, 2, 7, 16, 64, 128, 512};
const std::vector<int64_t> kSmallM = {1, 2, 7, 16};
const std::vector<int64_t> kLargeM = {17, 64, 128, 512};

TEST(CudaGptq, SmallTensorCoreAndGemvCases) {  // the case scripts/gpu-check.sh runs under compute-sanitizer
  REQUIRE_GPU(75);
  const uint64_t seed = fresh_seed();
  if (device().sm >= 80) check_linear({256, 128, 4, 32, true, true}, Kernel::tc, {1, 17, 33}, seed);
  check_linear({256, 96, 3, 64, true, false}, Kernel::gemv, {1, 5}, seed);
  check_linear({256, 96, 4, 128, false, false}, Kernel::dequant, {20}, seed);
}

TEST(CudaGptq, TensorCoreOnLlamaShapes) {
  REQUIRE_GPU(80);
  for (auto [K, N] : {std::pair<int64_t, int64_t>{4096, 4096}, {4096, 12288}, {4096, 22016}, {11008, 4096}}) {
    check_linear({K, N, 4, 128, false, true}, Kernel::tc, kAllM, fresh_seed());
  }
}

TEST(CudaGptq, TensorCoreGroupSizesAndActOrder) {
  REQUIRE_GPU(80);
  check_linear({4096, 4096, 4, -1, false, true}, Kernel::tc, {1, 16, 128}, fresh_seed());
  check_linear({4096, 4096, 4, 128, true, true}, Kernel::tc, {1, 7, 64}, fresh_seed());
  check_linear({1024, 1536, 4, 64, true, true}, Kernel::tc, {1, 16, 33}, fresh_seed());
  check_linear({1024, 576, 4, 32, false, true}, Kernel::tc, {2, 64, 512}, fresh_seed());
  check_linear({128, 64, 4, 128, false, true}, Kernel::tc, kAllM, fresh_seed());  // a single chunk
}

TEST(CudaGptq, GemvOnLlamaShapesAndEveryBitWidth) {
  REQUIRE_GPU(75);
  for (auto [K, N] : {std::pair<int64_t, int64_t>{4096, 4096}, {4096, 12288}, {11008, 4096}, {576, 1536}}) {
    check_linear({K, N, 4, 128, false, false}, Kernel::gemv, kSmallM, fresh_seed());
  }
  check_linear({4096, 22016, 4, 128, true, true}, Kernel::gemv, {1, 16}, fresh_seed());
  for (int bits : {2, 3, 8}) check_linear({4096, 4096, bits, 128, true, false}, Kernel::gemv, kSmallM, fresh_seed());
  check_linear({1536, 576, 4, -1, false, true}, Kernel::gemv, kSmallM, fresh_seed());
  check_linear({160, 36, 4, 32, false, false}, Kernel::gemv, kSmallM, fresh_seed());  // N not a multiple of 128
}

TEST(CudaGptq, DequantGemmForLargeM) {
  REQUIRE_GPU(75);
  check_linear({4096, 4096, 4, 128, true, false}, Kernel::dequant, kLargeM, fresh_seed());
  check_linear({576, 1536, 3, 64, false, false}, Kernel::dequant, {1, 64, 512}, fresh_seed());
  check_linear({11008, 4096, 8, -1, false, true}, Kernel::dequant, {128}, fresh_seed());
}

TEST(CudaGptq, RefusesBadArguments) {
  REQUIRE_GPU(75);
  std::mt19937_64 rng(3);
  const TestLinear l = make_test_linear({256, 128, 4, 128, false, true}, rng);
  GemvLinear host;
  ASSERT_EQ(repack_gemv(l.view(), &host), KernelStatus::ok);
  DeviceGemvLinear gv;
  ASSERT_EQ(upload(host, &gv), KernelStatus::ok);
  std::unique_ptr<DeviceGemvLinear, void (*)(DeviceGemvLinear*)> guard(&gv, release);
  DevMem dx, dy;
  ASSERT_TRUE(alloc(&dx, 64 * 256 * 2));
  ASSERT_TRUE(alloc(&dy, 64 * 128 * 2));
  const Launch launch{nullptr, device().sm_count};
  const auto* x = static_cast<const uint16_t*>(dx.p);
  auto* y = static_cast<uint16_t*>(dy.p);
  EXPECT_EQ(gemv(gv, x, 17, y, nullptr, 1 << 30, launch), KernelStatus::bad_shape);  // above the GEMV range
  EXPECT_EQ(gemv(gv, x, 0, y, nullptr, 0, launch), KernelStatus::bad_shape);
  const size_t need = plan_gemv(16, 256, 128, launch.sm_count).workspace_bytes();
  if (need > 0) {
    EXPECT_EQ(gemv(gv, x, 16, y, nullptr, need - 1, launch), KernelStatus::bad_shape);
  }
  EXPECT_EQ(dequant_gemm(gv, nullptr, x, 4, y, nullptr, 0, launch), KernelStatus::bad_shape);
  CUDA_OK(cudaDeviceSynchronize());
}

TEST(CudaGptq, RepeatedCallsAreBitwiseIdentical) {
  REQUIRE_GPU(80);
  std::mt19937_64 rng(fresh_seed());
  const TestLinear l = make_test_linear({4096, 4096, 4, 128, false, true}, rng);
  TcLinear host;
  ASSERT_EQ(repack_tc(l.view(), &host), KernelStatus::ok);
  DeviceTcLinear tc;
  ASSERT_EQ(upload(host, &tc), KernelStatus::ok);
  std::unique_ptr<DeviceTcLinear, void (*)(DeviceTcLinear*)> guard(&tc, release);
  const int64_t M = 16;
  const std::vector<float> x = test::random_half_x(M, 4096, rng);
  std::vector<uint16_t> xh(x.size());
  for (size_t i = 0; i < x.size(); ++i) xh[i] = f32_to_f16(x[i]);
  const Launch launch{nullptr, device().sm_count};
  const size_t wsb = plan_tc(M, 4096, 4096, false, launch.sm_count).workspace_bytes();
  DevMem dx, dy, ws;
  ASSERT_TRUE(alloc(&dx, xh.size() * 2));
  ASSERT_TRUE(alloc(&dy, M * 4096 * 2));
  ASSERT_TRUE(alloc(&ws, wsb));
  CUDA_OK(cudaMemcpy(dx.p, xh.data(), xh.size() * 2, cudaMemcpyHostToDevice));
  std::vector<uint16_t> first, now(static_cast<size_t>(M * 4096));
  for (int rep = 0; rep < 3; ++rep) {
    CUDA_OK(cudaMemset(dy.p, 0xff, dy.bytes));
    ASSERT_EQ(tc_gemm(tc, static_cast<const uint16_t*>(dx.p), M, static_cast<uint16_t*>(dy.p), ws.p, wsb, launch),
              KernelStatus::ok);
    CUDA_OK(cudaMemcpy(now.data(), dy.p, now.size() * 2, cudaMemcpyDeviceToHost));
    if (rep == 0) {
      first = now;
    } else {
      EXPECT_EQ(now, first) << "run " << rep << " differs from the first";
    }
  }
}

}  // namespace
}  // namespace gptqd::kernels::cuda
