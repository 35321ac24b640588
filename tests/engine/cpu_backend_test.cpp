// SPDX-License-Identifier: Apache-2.0
// The CPU backend's fast paths against the scalar kernels they replace: BLAS attention vs
// kernels::cpu::attention, fp16 GEMV (AVX2/F16C) and the fp16 tile-converting GEMM vs a double
// reference, at real shapes and odd ones (engine tests).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "engine/backend.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/half.h"

namespace gptqd::engine {
namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

double max_rel_err(const std::vector<float>& got, const std::vector<double>& want) {
  double norm = 0, err = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    norm = std::max(norm, std::abs(want[i]));
    err = std::max(err, std::abs(got[i] - want[i]));
  }
  return err / norm;
}

struct AttnCase {
  int64_t n, pos0, n_heads, n_kv_heads, head_dim;
};

TEST(CpuBackend, AttentionMatchesTheScalarKernel) {
  auto be = make_backend("cpu", 2);
  // Decode (n = 1) and prefill chunks, with and without a cached prefix; GQA 3:1 (SmolLM2), 4:1,
  // MHA, head_dim 64 and an odd 40.
  const AttnCase cases[] = {{1, 0, 9, 3, 64},      {1, 300, 9, 3, 64}, {37, 0, 8, 2, 64}, {64, 100, 32, 8, 128},
                            {5, 3, 4, 4, 40},      {1, 77, 4, 4, 44},  {3, 20, 6, 2, 20}, {4, 9, 8, 1, 24},
                            {2, 500, 32, 8, 128}};
  for (const auto& c : cases) {
    const int64_t q_stride = c.n_heads * c.head_dim + 2 * c.n_kv_heads * c.head_dim;  // as in the fused qkv rows
    const int64_t kv_stride = c.n_kv_heads * c.head_dim, n_keys = c.pos0 + c.n;
    auto q = randn(static_cast<size_t>(c.n * q_stride), 1);
    auto k = randn(static_cast<size_t>(n_keys * kv_stride), 2);
    auto v = randn(static_cast<size_t>(n_keys * kv_stride), 3);
    std::vector<float> fast(static_cast<size_t>(c.n * c.n_heads * c.head_dim));
    std::vector<float> slow(fast.size()), scratch(static_cast<size_t>(n_keys));
    be->attention(q.data(), q_stride, k.data(), v.data(), kv_stride, c.n, c.pos0, c.n_heads, c.n_kv_heads, c.head_dim,
                  fast.data());
    ASSERT_EQ(kernels::cpu::attention(q.data(), q_stride, k.data(), v.data(), kv_stride, c.n, c.pos0, c.n_heads,
                                      c.n_kv_heads, c.head_dim, 0, c.n_heads, scratch.data(), slow.data(),
                                      c.n_heads * c.head_dim),
              kernels::KernelStatus::ok);
    std::vector<double> want(slow.begin(), slow.end());
    EXPECT_LT(max_rel_err(fast, want), 1e-5) << "n " << c.n << " pos0 " << c.pos0 << " heads " << c.n_heads << "/"
                                             << c.n_kv_heads << " head_dim " << c.head_dim;
  }
}

// fp16 weights through the backend: n = 1 (GEMV) and n > 1 (tiles + BLAS), rows not a multiple of
// the tile, cols not a multiple of the SIMD width.
TEST(CpuBackend, F16MatmulMatchesADoubleReference) {
  auto be = make_backend("cpu", 2);
  struct Shape {
    int64_t rows, cols, n;
  } shapes[] = {{576, 576, 1}, {1536, 576, 1}, {576, 1536, 7}, {300, 45, 1}, {300, 45, 3}, {1000, 64, 256}};
  for (const auto& sh : shapes) {
    DenseMatrix w;
    w.rows = sh.rows;
    w.cols = sh.cols;
    for (float f : randn(static_cast<size_t>(sh.rows * sh.cols), 5, 0.05f)) w.data_f16.push_back(kernels::cpu::f32_to_f16(f));
    auto x = randn(static_cast<size_t>(sh.n * sh.cols), 6);
    std::vector<float> y(static_cast<size_t>(sh.n * sh.rows));
    be->matmul(w, x.data(), sh.n, y.data());
    std::vector<double> want(y.size());
    for (int64_t i = 0; i < sh.n; ++i) {
      for (int64_t r = 0; r < sh.rows; ++r) {
        double s = 0;
        for (int64_t k = 0; k < sh.cols; ++k) {
          s += static_cast<double>(kernels::cpu::f16_to_f32(w.data_f16[static_cast<size_t>(r * sh.cols + k)])) *
               x[static_cast<size_t>(i * sh.cols + k)];
        }
        want[static_cast<size_t>(i * sh.rows + r)] = s;
      }
    }
    EXPECT_LT(max_rel_err(y, want), 1e-5) << sh.rows << "x" << sh.cols << " n " << sh.n;
    // The same matrix in fp32 goes through plain BLAS and must agree.
    DenseMatrix w32;
    w32.rows = sh.rows;
    w32.cols = sh.cols;
    w.row(0, x.data());  // exercise row(); x is overwritten below anyway
    for (uint16_t h : w.data_f16) w32.data.push_back(kernels::cpu::f16_to_f32(h));
    x = randn(static_cast<size_t>(sh.n * sh.cols), 6);
    std::vector<float> y32(y.size());
    be->matmul(w32, x.data(), sh.n, y32.data());
    EXPECT_LT(max_rel_err(y32, want), 1e-5);
  }
}

TEST(CpuKernels, F16GemvSimdEqualsScalarReference) {
  const int64_t rows = 97, cols = 203;
  std::vector<uint16_t> w;
  for (float f : randn(static_cast<size_t>(rows * cols), 9, 0.1f)) w.push_back(kernels::cpu::f32_to_f16(f));
  auto x = randn(static_cast<size_t>(cols), 10);
  std::vector<float> a(static_cast<size_t>(rows)), b(static_cast<size_t>(rows));
  ASSERT_EQ(kernels::cpu::gemv_f16(w.data(), x.data(), cols, 0, rows, a.data()), kernels::KernelStatus::ok);
  ASSERT_EQ(kernels::cpu::gemv_f16_reference(w.data(), x.data(), cols, 0, rows, b.data()), kernels::KernelStatus::ok);
  std::vector<double> want(b.begin(), b.end());
  EXPECT_LT(max_rel_err(a, want), 1e-5);
  std::printf("[ info     ] F16C path in use: %s\n", kernels::cpu::have_f16c_path() ? "yes" : "no");
  EXPECT_EQ(kernels::cpu::gemv_f16(w.data(), x.data(), 0, 0, rows, a.data()), kernels::KernelStatus::bad_shape);
}

}  // namespace
}  // namespace gptqd::engine
