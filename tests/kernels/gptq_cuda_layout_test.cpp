// SPDX-License-Identifier: Apache-2.0
// The CUDA kernels' weight layouts, checked on the CPU (no GPU needed): repack then unpack gives
// the checkpoint's codes back for every bit width, group size and act-order; every code has
// exactly one place; and an emulation of what the tensor-core kernel does with a lane's 16-byte
// vector -- the lop3/hsub2/hfma2 dequantization and the mma.sync m16n8k16 B-fragment mapping as
// the PTX ISA defines it (written here independently of gptq_cuda_layout.h) -- reproduces
// x . W^T from the definition. A layout or fragment bug fails here before any GPU time is spent.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <set>

#include "kernels/cpu/half.h"
#include "kernels/cuda/gptq_cuda_layout.h"
#include "kernels/cuda/gptq_cuda_repack.h"
#include "tests/kernels/gptq_test_linear.h"

#if defined(GPTQD_HAVE_CUDA)
#include "kernels/cuda/gptq_cuda.h"
#endif

namespace gptqd::kernels::cuda {
namespace {

using cpu::f16_to_f32;
using cpu::f32_to_f16;
using test::LinearCase;
using test::make_test_linear;
using test::TestLinear;

uint64_t fresh_seed() { return std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32); }

// The codes as they are in the checkpoint, from the test's own record.
std::vector<uint8_t> expected_codes(const TestLinear& l) { return l.codes; }

TEST(CudaLayout, TcRepackRoundTrips) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const LinearCase& c : {LinearCase{128, 64, 4, 128, false, true}, LinearCase{256, 192, 4, 32, true, true},
                              LinearCase{384, 128, 4, 64, false, true}, LinearCase{512, 64, 4, -1, true, true},
                              LinearCase{1024, 576, 4, 128, true, true}}) {
    SCOPED_TRACE(c.describe());
    const TestLinear l = make_test_linear(c, rng);
    TcLinear tc;
    std::string why;
    ASSERT_EQ(repack_tc(l.view(), &tc, &why), KernelStatus::ok) << why;
    EXPECT_EQ(unpack_tc_codes(tc), expected_codes(l));
    EXPECT_EQ(tc.scales, l.scales);
    EXPECT_EQ(tc.group_size, c.group_size < 0 ? c.K : c.group_size);
    EXPECT_EQ(tc.perm.empty(), std::is_sorted(l.g_idx.begin(), l.g_idx.end()));
    if (!tc.perm.empty()) {  // perm sorts g_idx
      for (int64_t k = 1; k < c.K; ++k) EXPECT_LE(l.g_idx[tc.perm[k - 1]], l.g_idx[tc.perm[k]]);
    }
  }
}

TEST(CudaLayout, GemvRepackRoundTripsEveryBitWidth) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (int bits : {2, 3, 4, 8}) {
    for (const LinearCase& base : {LinearCase{128, 32, 4, 32, false, false}, LinearCase{256, 96, 4, 64, true, false},
                                   LinearCase{320, 64, 4, -1, false, true}, LinearCase{1024, 160, 4, 128, true, true}}) {
      LinearCase c = base;
      c.bits = bits;
      SCOPED_TRACE(c.describe());
      const TestLinear l = make_test_linear(c, rng);
      GemvLinear g;
      std::string why;
      ASSERT_EQ(repack_gemv(l.view(), &g, &why), KernelStatus::ok) << why;
      EXPECT_EQ(unpack_gemv_codes(g), expected_codes(l));
      ASSERT_EQ(g.zeros.size(), l.zeros.size());
      for (size_t i = 0; i < g.zeros.size(); ++i) ASSERT_EQ(f16_to_f32(g.zeros[i]), l.zeros[i] + 1.0f);
      // The unit's group is the group of each of its 32 sorted rows.
      for (int64_t k = 0; k < c.K; ++k) {
        const int64_t src = g.perm.empty() ? k : g.perm[k];
        ASSERT_EQ(g.unit_group[k / 32], l.g_idx[src]);
      }
    }
  }
}

TEST(CudaLayout, EveryCodeHasExactlyOnePlace) {
  const int64_t K = 64, N = 128;
  std::set<std::pair<int64_t, int>> seen;
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t n = 0; n < N; ++n) {
      const int64_t word = layout::tc_word_index(k, n, N);
      const int nib = layout::tc_nibble(k, n);
      ASSERT_GE(word, 0);
      ASSERT_LT(word, K / 16 * N / 64 * layout::kTcWordsPerSlab);
      ASSERT_TRUE(nib >= 0 && nib < 8);
      EXPECT_TRUE(seen.insert({word, nib}).second) << "k " << k << " n " << n;
      int kr = -1, nr = -1;
      layout::tc_nibble_position(static_cast<int>(word / 4 % 32), nib, &kr, &nr);
      EXPECT_EQ(kr, k % 16);
      EXPECT_EQ(nr, n % 16);
    }
  }
  EXPECT_EQ(static_cast<int64_t>(seen.size()), K * N);
}

TEST(CudaLayout, ActivationSwizzleIsConflictFree) {
  // Per row a bijection of the 16 chunks; any 8 consecutive rows (one ldmatrix 8x8 matrix) at
  // the same logical chunk land in 8 different 16-byte bank groups of a 128-byte line.
  for (int row = 0; row < 64; ++row) {
    std::set<int> chunks;
    for (int c = 0; c < layout::kTcChunksPerRow; ++c) chunks.insert(layout::tc_a_chunk(row, c));
    EXPECT_EQ(chunks.size(), static_cast<size_t>(layout::kTcChunksPerRow));
  }
  for (int r0 = 0; r0 < 64; r0 += 8) {
    for (int c = 0; c < layout::kTcChunksPerRow; ++c) {
      std::set<int> banks;
      for (int r = r0; r < r0 + 8; ++r) banks.insert(layout::tc_a_chunk(r, c) % 8);
      EXPECT_EQ(banks.size(), 8u) << "rows " << r0 << ".., chunk " << c;
    }
  }
}

// --- the tensor-core kernel, emulated ------------------------------------------------------------

float half_round(float v) { return f16_to_f32(f32_to_f16(v)); }

// The kernel's dequantization of one word, instruction by instruction: lop3 (q & mask) | 0x6400,
// then hsub2 with 1032 or hfma2 with 1/16 and -72, each result rounded to fp16.
void emulate_dequant(uint32_t q, float (&lo_hi)[4][2]) {
  auto lop3 = [](uint32_t a, uint32_t mask, uint32_t c) { return (a & mask) | c; };
  auto halves = [](uint32_t u, float (&h)[2]) {
    h[0] = f16_to_f32(static_cast<uint16_t>(u & 0xffff));
    h[1] = f16_to_f32(static_cast<uint16_t>(u >> 16));
  };
  const float c1032 = f16_to_f32(0x6408), c16th = f16_to_f32(0x2c00), cm72 = f16_to_f32(0xd480);
  uint32_t regs[4] = {lop3(q, 0x000f000fu, 0x64006400u), lop3(q, 0x00f000f0u, 0x64006400u), 0, 0};
  q >>= 8;
  regs[2] = lop3(q, 0x000f000fu, 0x64006400u);
  regs[3] = lop3(q, 0x00f000f0u, 0x64006400u);
  for (int p = 0; p < 4; ++p) {
    float h[2];
    halves(regs[p], h);
    for (int i = 0; i < 2; ++i) lo_hi[p][i] = half_round(p % 2 == 0 ? h[i] - c1032 : std::fma(h[i], c16th, cm72));
  }
}

// y [M, N] as the tensor-core kernel computes it, from the tc layout alone.
std::vector<double> emulate_tc(const TcLinear& w, const std::vector<float>& x, int64_t M) {
  const int64_t slabs = w.N / 64;
  std::vector<double> y(static_cast<size_t>(M * w.N), 0.0);
  for (int64_t kb = 0; kb < w.K / 16; ++kb) {
    const int64_t group = kb * 16 / w.group_size;
    for (int64_t slab = 0; slab < slabs; ++slab) {
      for (int j = 0; j < 4; ++j) {          // 16x16 tile j of the slab
        for (int half = 0; half < 2; ++half) {  // its n8 halves: one mma each
          float B[16][8];
          bool filled[16][8] = {};
          for (int lane = 0; lane < 32; ++lane) {
            const uint32_t word = w.words[static_cast<size_t>(((kb * slabs + slab) * 32 + lane) * 4 + j)];
            float regs[4][2];
            emulate_dequant(word, regs);
            const int g = lane / 4, t = lane % 4;
            const int64_t n = slab * 64 + j * 16 + half * 8 + g;
            const float s = f16_to_f32(w.scales[static_cast<size_t>(group * w.N + n)]);
            // Operand registers of this n-half: b0 = regs[2*half], b1 = regs[2*half + 1];
            // PTX ISA, mma.m16n8k16 .f16 B fragment: b0 holds rows 2t, 2t+1 of column g, b1 rows
            // 2t+8, 2t+9 (lower half = lower row).
            for (int r = 0; r < 2; ++r) {
              for (int i = 0; i < 2; ++i) {
                const int krow = 2 * t + i + 8 * r;
                EXPECT_FALSE(filled[krow][g]);
                filled[krow][g] = true;
                B[krow][g] = half_round(regs[2 * half + r][i] * s);  // __hmul2 by the group scale
              }
            }
          }
          for (int m = 0; m < M; ++m) {
            for (int nn = 0; nn < 8; ++nn) {
              double acc = 0;
              for (int kk = 0; kk < 16; ++kk) {
                const int64_t k = kb * 16 + kk;
                const int64_t src = w.perm.empty() ? k : w.perm[static_cast<size_t>(k)];
                acc += static_cast<double>(x[static_cast<size_t>(m * w.K + src)]) * B[kk][nn];
              }
              y[static_cast<size_t>(m * w.N + slab * 64 + j * 16 + half * 8 + nn)] += acc;
            }
          }
        }
      }
    }
  }
  return y;
}

TEST(CudaLayout, TensorCoreFragmentsEmulatedGiveTheProduct) {
  const uint64_t seed = fresh_seed();
  SCOPED_TRACE("seed " + std::to_string(seed));
  std::mt19937_64 rng(seed);
  for (const LinearCase& c : {LinearCase{128, 64, 4, 128, false, true}, LinearCase{256, 128, 4, 32, true, true},
                              LinearCase{256, 64, 4, 64, true, true}, LinearCase{384, 192, 4, -1, false, true}}) {
    SCOPED_TRACE(c.describe());
    const TestLinear l = make_test_linear(c, rng);
    TcLinear tc;
    ASSERT_EQ(repack_tc(l.view(), &tc), KernelStatus::ok);
    const int64_t M = 3;
    const std::vector<float> x = test::random_half_x(M, c.K, rng);
    const std::vector<double> got = emulate_tc(tc, x, M);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < c.N; ++n) {
        double want = 0, norm = 0;
        for (int64_t k = 0; k < c.K; ++k) {
          const double t = x[static_cast<size_t>(m * c.K + k)] * l.weight(n, k);
          want += t;
          norm += std::fabs(t);
        }
        // The only rounding is each weight to fp16 (relative 2^-11): the error is at most
        // norm * 2^-11; a misplaced code would be off by a whole weight.
        ASSERT_NEAR(got[static_cast<size_t>(m * c.N + n)], want, norm * std::ldexp(1.0, -11) + 1e-9)
            << "m " << m << " n " << n;
      }
    }
  }
}

TEST(CudaLayout, RepackRefusesWhatTheKernelsCannotRun) {
  std::mt19937_64 rng(7);
  std::string why;
  TcLinear tc;
  {
    const TestLinear l = make_test_linear({128, 64, 4, 128, false, false}, rng);  // asymmetric
    EXPECT_EQ(repack_tc(l.view(), &tc, &why), KernelStatus::unsupported);
    EXPECT_NE(why.find("symmetric"), std::string::npos) << why;
  }
  {
    const TestLinear l = make_test_linear({128, 64, 8, 128, false, true}, rng);
    EXPECT_EQ(repack_tc(l.view(), &tc, &why), KernelStatus::unsupported);
    EXPECT_NE(why.find("4-bit only"), std::string::npos) << why;
  }
  {
    const TestLinear l = make_test_linear({192, 64, 4, 64, false, true}, rng);  // K % 128
    EXPECT_EQ(repack_tc(l.view(), &tc, &why), KernelStatus::unsupported);
    EXPECT_NE(why.find("K % 128"), std::string::npos) << why;
  }
  {
    const TestLinear l = make_test_linear({128, 96, 4, 32, false, true}, rng);  // N % 64
    EXPECT_EQ(repack_tc(l.view(), &tc, &why), KernelStatus::unsupported);
    EXPECT_NE(why.find("N % 64"), std::string::npos) << why;
  }
  {
    TestLinear l = make_test_linear({256, 64, 4, 128, false, true}, rng);
    l.g_idx[5] = 1;  // group 0 one row short, group 1 one too many
    EXPECT_EQ(repack_tc(l.view(), &tc, &why), KernelStatus::unsupported);
    EXPECT_NE(why.find("groups of exactly 128"), std::string::npos) << why;
    GemvLinear g;
    EXPECT_EQ(repack_gemv(l.view(), &g, &why), KernelStatus::unsupported);
    EXPECT_NE(why.find("mid-unit"), std::string::npos) << why;
  }
  {
    TestLinear l = make_test_linear({128, 64, 4, 64, false, true}, rng);
    l.g_idx[3] = 9;  // out of range
    EXPECT_EQ(repack_tc(l.view(), &tc, &why), KernelStatus::bad_shape);
    EXPECT_NE(why.find("g_idx[3]=9"), std::string::npos) << why;
  }
}

#if defined(GPTQD_HAVE_CUDA)
// The launch plans: every k chunk (unit) in exactly one split, no empty split, workspace sized.
TEST(CudaLayout, PlansCoverKWithoutEmptySplits) {
  for (int64_t M : {1, 7, 16, 17, 64, 128, 512}) {
    for (auto [K, N] : {std::pair<int64_t, int64_t>{4096, 4096}, {4096, 22016}, {11008, 4096}, {128, 64}, {576, 1536}}) {
      for (int sms : {1, 46, 132}) {
        if (K % 128 == 0 && N % 64 == 0) {
          const TcPlan p = plan_tc(M, K, N, true, sms);
          const int64_t chunks = K / 128;
          EXPECT_GE(p.splits, 1);
          EXPECT_GE(p.splits * p.chunks_per_split, chunks);
          EXPECT_LT((p.splits - 1) * p.chunks_per_split, chunks);
          EXPECT_GE(p.row_blocks * 16 * p.m_blocks, M);
          EXPECT_EQ(p.slabs * 64, N);
          EXPECT_EQ(p.partial_bytes == 0, p.splits == 1);
          EXPECT_GE(p.perm_bytes, static_cast<size_t>(M * K * 2));
        }
        if (M <= kGemvMaxM) {
          const GemvPlan g = plan_gemv(M, K, N, sms);
          const int64_t units = K / 32;
          EXPECT_GE(g.m_tile, M);
          EXPECT_GE(g.splits * g.units_per_split, units);
          EXPECT_LT((g.splits - 1) * g.units_per_split, units);
          EXPECT_LE(g.units_per_split * 32 * g.m_tile, 8192);  // the shared-memory x slice
        }
      }
    }
  }
}
#endif

}  // namespace
}  // namespace gptqd::kernels::cuda
