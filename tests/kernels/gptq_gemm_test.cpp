// SPDX-License-Identifier: Apache-2.0
// The GPTQ CPU kernels: the scalar oracle against dequantize-then-matmul in float64, and every
// kernel (direct scalar/AVX2/AVX-512, dequantize tiles, unpack) against the oracle, on the real
// Llama layer shapes and odd ones. Fresh random inputs every run (the seed is printed on a
// failure), outputs poisoned with NaN before each call, tolerances derived from operand norms.
#include "kernels/cpu/gptq_gemm.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/half.h"
#include "quantizer/pack.h"

namespace gptqd::kernels::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
constexpr double kEps = std::numeric_limits<float>::epsilon();

struct Case {
  int64_t K, N;
  int bits;
  int64_t group_size;  // -1: one group
  bool act_order;
  int zero_offset;
};

std::string describe(const Case& c) {
  return std::to_string(c.K) + "x" + std::to_string(c.N) + " " + std::to_string(c.bits) + "-bit g" +
         std::to_string(c.group_size) + (c.act_order ? " act-order" : "") + " zero_offset " +
         std::to_string(c.zero_offset);
}

// A random GPTQ linear in checkpoint layout, plus its codes for the float64 check.
struct Linear {
  Case c;
  int64_t G = 0;
  std::vector<uint8_t> codes;  // [K, N]
  std::vector<uint8_t> zeros;  // [G, N] as stored
  std::vector<uint16_t> scales;  // [G, N] fp16
  std::vector<int32_t> g_idx, qweight, qzeros;
  GptqTensors view() const {
    return {qweight.data(), qzeros.data(), scales.data(), g_idx.data(), c.K, c.N, G, c.bits, c.zero_offset};
  }
  double weight(int64_t n, int64_t k) const {  // W[n, k] exactly
    const int64_t g = g_idx[static_cast<size_t>(k)];
    const double z = zeros[static_cast<size_t>(g * c.N + n)] + c.zero_offset;
    return static_cast<double>(f16_to_f32(scales[static_cast<size_t>(g * c.N + n)])) *
           (codes[static_cast<size_t>(k * c.N + n)] - z);
  }
  // sum_k |x_k| * s * (|q| + |z|): the magnitude the factored kernels' rounding scales with.
  double norm(const float* x, int64_t n) const {
    double s = 0;
    for (int64_t k = 0; k < c.K; ++k) {
      const int64_t g = g_idx[static_cast<size_t>(k)];
      const double z = zeros[static_cast<size_t>(g * c.N + n)] + c.zero_offset;
      s += std::fabs(x[k]) * std::fabs(f16_to_f32(scales[static_cast<size_t>(g * c.N + n)])) *
           (codes[static_cast<size_t>(k * c.N + n)] + std::fabs(z));
    }
    return s;
  }
};

Linear make_linear(const Case& c, std::mt19937_64& rng) {
  Linear l;
  l.c = c;
  const int64_t gs = c.group_size < 0 ? c.K : c.group_size;
  l.G = (c.K + gs - 1) / gs;
  const int maxq = (1 << c.bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq);
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  l.codes.resize(static_cast<size_t>(c.K * c.N));
  for (auto& q : l.codes) q = static_cast<uint8_t>(code(rng));
  l.zeros.resize(static_cast<size_t>(l.G * c.N));
  // v1 stores zero - 1, so the stored value stays below maxq there.
  std::uniform_int_distribution<int> zero(0, c.zero_offset == 1 ? maxq - 1 : maxq);
  for (auto& z : l.zeros) z = static_cast<uint8_t>(zero(rng));
  l.scales.resize(static_cast<size_t>(l.G * c.N));
  for (auto& s : l.scales) s = f32_to_f16(scale(rng));
  l.g_idx.resize(static_cast<size_t>(c.K));
  std::vector<int32_t> order(static_cast<size_t>(c.K));
  std::iota(order.begin(), order.end(), 0);
  if (c.act_order) std::shuffle(order.begin(), order.end(), rng);  // the i-th most important column
  for (int64_t i = 0; i < c.K; ++i) l.g_idx[static_cast<size_t>(order[static_cast<size_t>(i)])] = static_cast<int32_t>(i / gs);
  l.qweight = quantizer::pack_qweight(l.codes, c.K, c.N, c.bits);
  l.qzeros = quantizer::pack_qzeros(l.zeros, l.G, c.N, c.bits);
  return l;
}

std::vector<float> random_x(int64_t M, int64_t K, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(M * K));
  for (auto& v : x) v = d(rng);
  return x;
}

// The columns the float64 / oracle checks look at: all for small shapes, else blocks of 32 at the
// start, the end and two random places (the oracle is slow by design).
std::vector<int64_t> checked_columns(int64_t N, int64_t K, std::mt19937_64& rng) {
  std::vector<int64_t> cols;
  if (N * K <= (1 << 22)) {
    cols.resize(static_cast<size_t>(N));
    std::iota(cols.begin(), cols.end(), 0);
    return cols;
  }
  std::uniform_int_distribution<int64_t> start(0, N / 32 - 1);
  for (int64_t b : {int64_t{0}, N / 32 - 1, start(rng), start(rng)}) {
    for (int64_t j = 0; j < 32; ++j) cols.push_back(b * 32 + j);
  }
  std::sort(cols.begin(), cols.end());
  cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
  return cols;
}

// The oracle on a subset of columns: slices whole 32-column blocks out of the packed tensors
// (every packing is whole within 32 columns) and runs gptq_gemm_reference on the slice.
std::vector<float> oracle(const Linear& l, const std::vector<float>& x, int64_t M, const std::vector<int64_t>& cols) {
  const Case& c = l.c;
  std::vector<float> y(static_cast<size_t>(M * c.N), kNaN);
  if (static_cast<int64_t>(cols.size()) == c.N) {
    EXPECT_EQ(gptq_gemm_reference(l.view(), x.data(), c.K, M, y.data(), c.N), KernelStatus::ok);
    return y;
  }
  for (size_t i = 0; i < cols.size(); i += 32) {
    const int64_t n0 = cols[i];
    std::vector<uint8_t> codes(static_cast<size_t>(c.K * 32)), zeros(static_cast<size_t>(l.G * 32));
    std::vector<uint16_t> scales(zeros.size());
    for (int64_t k = 0; k < c.K; ++k) {
      for (int64_t j = 0; j < 32; ++j) codes[static_cast<size_t>(k * 32 + j)] = l.codes[static_cast<size_t>(k * c.N + n0 + j)];
    }
    for (int64_t g = 0; g < l.G; ++g) {
      for (int64_t j = 0; j < 32; ++j) {
        zeros[static_cast<size_t>(g * 32 + j)] = l.zeros[static_cast<size_t>(g * c.N + n0 + j)];
        scales[static_cast<size_t>(g * 32 + j)] = l.scales[static_cast<size_t>(g * c.N + n0 + j)];
      }
    }
    const auto qw = quantizer::pack_qweight(codes, c.K, 32, c.bits);
    const auto qz = quantizer::pack_qzeros(zeros, l.G, 32, c.bits);
    const GptqTensors slice{qw.data(), qz.data(), scales.data(), l.g_idx.data(), c.K, 32, l.G, c.bits, c.zero_offset};
    std::vector<float> ys(static_cast<size_t>(M * 32), kNaN);
    EXPECT_EQ(gptq_gemm_reference(slice, x.data(), c.K, M, ys.data(), 32), KernelStatus::ok);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t j = 0; j < 32; ++j) y[static_cast<size_t>(m * c.N + n0 + j)] = ys[static_cast<size_t>(m * 32 + j)];
    }
  }
  return y;
}

// |got - want| <= 4 sqrt(K) eps * norm for every checked element; the first few misses printed.
void expect_close(const Linear& l, const std::vector<float>& x, int64_t M, const std::vector<int64_t>& cols,
                  const std::vector<float>& want, const std::vector<float>& got, int64_t ldy, const std::string& what) {
  int failures = 0;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n : cols) {
      const double w = want[static_cast<size_t>(m * l.c.N + n)], g = got[static_cast<size_t>(m * ldy + n)];
      const double tol = 4.0 * std::sqrt(static_cast<double>(l.c.K)) * kEps * l.norm(x.data() + m * l.c.K, n) + 1e-30;
      if (!(std::fabs(w - g) <= tol) && ++failures <= 5) {
        ADD_FAILURE() << what << ": y[" << m << ", " << n << "] = " << g << ", oracle " << w << " (tol " << tol << ")";
      }
    }
  }
  EXPECT_EQ(failures, 0) << what;
}

std::vector<CpuIsa> isas() {
  std::vector<CpuIsa> out{CpuIsa::scalar};
#if defined(__x86_64__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    out.push_back(CpuIsa::avx2);
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl")) {
    out.push_back(CpuIsa::avx512);
  }
#endif
  return out;
}

const char* isa_name(CpuIsa isa) {
  return isa == CpuIsa::avx512 ? "avx512" : isa == CpuIsa::avx2 ? "avx2" : "scalar";
}

uint64_t fresh_seed() {
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) | rd();
}

// Runs every kernel on `c` for each M and compares with the oracle.
void check_case(const Case& c, const std::vector<int64_t>& ms, bool scalar_too = true) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Linear l = make_linear(c, rng);
  GptqPackedLinear p;
  ASSERT_EQ(gptq_repack(l.view(), &p), KernelStatus::ok);
  ASSERT_EQ(p.n_tiles, (c.N + 15) / 16);
  ASSERT_EQ(p.perm.empty(), !c.act_order || l.G == 1);
  const std::vector<int64_t> cols = checked_columns(c.N, c.K, rng);
  for (int64_t M : ms) {
    SCOPED_TRACE("M=" + std::to_string(M));
    const std::vector<float> x = random_x(M, c.K, rng);
    const std::vector<float> want = oracle(l, x, M, cols);
    std::vector<float> xp(x.size(), kNaN), xsum(static_cast<size_t>(M * p.n_groups), kNaN);
    ASSERT_EQ(gptq_prepare_input(p, x.data(), c.K, M, xp.data(), xsum.data()), KernelStatus::ok);
    const int64_t ldy = c.N + 3;  // a row stride wider than N: the kernels must not touch the gap
    for (CpuIsa isa : isas()) {
      if (isa == CpuIsa::scalar && !scalar_too) continue;
      // Direct kernel, the tiles split in two calls as the threads of the backend split them.
      std::vector<float> y(static_cast<size_t>(M * ldy), kNaN);
      const int64_t mid = p.n_tiles / 2;
      ASSERT_EQ(gptq_gemm_direct(p, isa, xp.data(), xsum.data(), M, 0, mid, y.data(), ldy), KernelStatus::ok);
      ASSERT_EQ(gptq_gemm_direct(p, isa, xp.data(), xsum.data(), M, mid, p.n_tiles, y.data(), ldy), KernelStatus::ok);
      expect_close(l, x, M, cols, want, y, ldy, std::string("direct ") + isa_name(isa));
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = c.N; n < ldy; ++n) ASSERT_TRUE(std::isnan(y[static_cast<size_t>(m * ldy + n)])) << "wrote past N";
      }
    }
  }
}

// Dequantized tiles are exact: s * (q - z) rounds once in fp32 either way.
void check_dequant(const Case& c) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  const Linear l = make_linear(c, rng);
  GptqPackedLinear p;
  ASSERT_EQ(gptq_repack(l.view(), &p), KernelStatus::ok);
  std::uniform_int_distribution<int64_t> kd(0, c.K), td(0, p.n_tiles);
  int64_t k0 = kd(rng), k1 = kd(rng), t0 = td(rng), t1 = td(rng);
  if (k0 > k1) std::swap(k0, k1);
  if (t0 > t1) std::swap(t0, t1);
  if (t0 == t1) t1 = std::min(p.n_tiles, t0 + 1), t0 = t1 - 1;
  const int64_t ldo = (t1 - t0) * 16 + 5;
  for (CpuIsa isa : isas()) {
    SCOPED_TRACE(isa_name(isa));
    std::vector<float> out(static_cast<size_t>((k1 - k0) * ldo), kNaN);
    ASSERT_EQ(gptq_dequantize_tiles(p, isa, t0, t1, k0, k1, out.data(), ldo), KernelStatus::ok);
    for (int64_t k = k0; k < k1; ++k) {
      const int64_t orig = p.perm.empty() ? k : p.perm[static_cast<size_t>(k)];
      for (int64_t t = t0; t < t1; ++t) {
        for (int64_t j = 0; j < 16; ++j) {
          const int64_t n = t * 16 + j;
          const float got = out[static_cast<size_t>((k - k0) * ldo + (t - t0) * 16 + j)];
          const float want = n < c.N ? static_cast<float>(l.weight(n, orig)) : 0.0f;
          ASSERT_EQ(got, want) << "k " << k << " n " << n;
        }
      }
    }
  }
  // gptq_unpack_rows gives back the checkpoint's rows exactly, like dequantize_gptq does.
  std::vector<float> rows(static_cast<size_t>(c.N * c.K), kNaN), ref(rows.size(), kNaN);
  ASSERT_EQ(gptq_unpack_rows(p, 0, c.N, rows.data()), KernelStatus::ok);
  ASSERT_EQ(dequantize_gptq(l.qweight.data(), l.qzeros.data(), l.scales.data(), l.g_idx.data(), c.K, c.N, l.G, c.bits,
                            c.zero_offset, ref.data()),
            KernelStatus::ok);
  EXPECT_EQ(rows, ref);
}

TEST(GptqReference, MatchesDequantizeThenMatmulInFloat64) {
  for (const Case& c : {Case{256, 64, 4, 128, false, 1}, Case{576, 96, 4, 128, true, 1}, Case{192, 32, 3, 64, true, 0},
                        Case{128, 48, 2, 32, false, 1}, Case{160, 40, 8, -1, false, 0}, Case{4096, 32, 4, 128, true, 1}}) {
    const uint64_t seed = fresh_seed();
    SCOPED_TRACE(describe(c) + " seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Linear l = make_linear(c, rng);
    const int64_t M = 3;
    const std::vector<float> x = random_x(M, c.K, rng);
    std::vector<float> y(static_cast<size_t>(M * c.N), kNaN);
    ASSERT_EQ(gptq_gemm_reference(l.view(), x.data(), c.K, M, y.data(), c.N), KernelStatus::ok);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < c.N; ++n) {
        double want = 0, mag = 0;
        for (int64_t k = 0; k < c.K; ++k) {
          want += x[static_cast<size_t>(m * c.K + k)] * l.weight(n, k);
          mag += std::fabs(x[static_cast<size_t>(m * c.K + k)] * l.weight(n, k));
        }
        // fp32 products and a K-term fp32 sum: within sqrt(K) eps of sum |x w| (and far below
        // the error one wrong code makes, about mag / K).
        const double tol = 4.0 * std::sqrt(static_cast<double>(c.K)) * kEps * mag;
        ASSERT_NEAR(y[static_cast<size_t>(m * c.N + n)], want, tol) << "m " << m << " n " << n;
      }
    }
  }
}

TEST(GptqReference, RejectsBadShapesAndGidx) {
  std::mt19937_64 rng(1);
  Linear l = make_linear(Case{64, 32, 4, 32, false, 1}, rng);
  std::vector<float> x(64, 1.0f), y(32);
  GptqTensors v = l.view();
  v.bits = 5;
  EXPECT_EQ(gptq_gemm_reference(v, x.data(), 64, 1, y.data(), 32), KernelStatus::unsupported);
  v = l.view();
  v.K = 60;  // not whole words
  EXPECT_EQ(gptq_gemm_reference(v, x.data(), 64, 1, y.data(), 32), KernelStatus::bad_shape);
  l.g_idx[5] = 2;  // only groups 0 and 1 exist
  GptqPackedLinear p;
  EXPECT_EQ(gptq_repack(l.view(), &p), KernelStatus::bad_shape);
  l.g_idx[5] = -1;
  EXPECT_EQ(gptq_gemm_reference(l.view(), x.data(), 64, 1, y.data(), 32), KernelStatus::bad_shape);
}

// The Llama layer shapes of the issue (7B attention/MLP, SmolLM2).
TEST(GptqKernels, RealLayerShapes4Bit) {
  check_case({576, 1536, 4, 128, false, 1}, {1, 2, 5, 16});
  check_case({1536, 576, 4, 128, true, 1}, {1, 3, 8});
  check_case({4096, 4096, 4, 128, false, 1}, {1, 4}, /*scalar_too=*/false);
  check_case({4096, 12288, 4, 128, true, 1}, {1}, false);
  check_case({4096, 22016, 4, 128, false, 1}, {1}, false);
  check_case({11008, 4096, 4, 128, true, 1}, {1, 2}, false);
}

TEST(GptqKernels, RealLayerShapes8Bit) {
  check_case({576, 1536, 8, 128, false, 0}, {1, 7});
  check_case({4096, 4096, 8, 128, true, 1}, {1, 2}, false);
}

TEST(GptqKernels, TwoAndThreeBit) {
  check_case({576, 1536, 3, 128, false, 1}, {1, 4});
  check_case({1536, 576, 3, 64, true, 1}, {1, 2});
  check_case({576, 1536, 2, 128, true, 0}, {1, 9});
}

TEST(GptqKernels, OddShapesAndGroups) {
  check_case({576, 40, 4, 128, false, 1}, {1, 2, 3, 4, 5, 8, 11});    // partial last group (576 = 4*128 + 64), partial tile
  check_case({200, 24, 4, 20, true, 1}, {1, 2, 9});                   // groups that start mid-word
  check_case({224, 96, 3, 48, true, 0}, {1, 3});                      // 3-bit groups inside 32-code blocks
  check_case({160, 8, 8, -1, false, 1}, {1, 16});                     // one group, N below one tile
  check_case({96, 16, 2, 96, false, 1}, {1, 2});                      // gs == K
  check_case({128, 48, 4, 32, true, 1}, {1, 6});
}

TEST(GptqKernels, DequantizedTilesAreExact) {
  check_dequant({576, 1536, 4, 128, false, 1});
  check_dequant({1536, 576, 4, 128, true, 1});
  check_dequant({200, 24, 4, 20, true, 0});
  check_dequant({224, 96, 3, 48, true, 1});
  check_dequant({576, 40, 8, 64, false, 1});
  check_dequant({128, 48, 2, -1, false, 1});
}

TEST(GptqKernels, PrepareInputPermutesAndSumsGroups) {
  std::mt19937_64 rng(fresh_seed());
  const Linear l = make_linear({64, 16, 4, 16, true, 1}, rng);
  GptqPackedLinear p;
  ASSERT_EQ(gptq_repack(l.view(), &p), KernelStatus::ok);
  ASSERT_EQ(p.perm.size(), 64u);
  std::vector<float> x(64);
  std::iota(x.begin(), x.end(), 0.0f);
  std::vector<float> xp(64), xsum(4);
  ASSERT_EQ(gptq_prepare_input(p, x.data(), 64, 1, xp.data(), xsum.data()), KernelStatus::ok);
  for (int g = 0; g < 4; ++g) {
    float want = 0;
    for (int k = 0; k < 64; ++k) want += l.g_idx[static_cast<size_t>(k)] == g ? x[static_cast<size_t>(k)] : 0.0f;
    EXPECT_EQ(xsum[static_cast<size_t>(g)], want);
    for (int64_t k = p.group_begin[g]; k < p.group_begin[g + 1]; ++k) {
      EXPECT_EQ(l.g_idx[static_cast<size_t>(xp[static_cast<size_t>(k)])], g);  // x[k] == k identifies the column
    }
  }
}

}  // namespace
}  // namespace gptqd::kernels::cpu
