// SPDX-License-Identifier: Apache-2.0
// GPTQ packing: the reference doc's check words and round trips at every width (quantizer tests).
#include "quantizer/pack.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <vector>

#include "engine/error.h"

namespace gptqd::quantizer {
namespace {

uint32_t u32(int32_t v) { return static_cast<uint32_t>(v); }

std::vector<uint8_t> random_codes(size_t n, int bits, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> dist(0, (1 << bits) - 1);
  std::vector<uint8_t> out(n);
  for (auto& c : out) c = static_cast<uint8_t>(dist(rng));
  return out;
}

TEST(Pack, FourBitCheckWord) {
  const std::vector<uint8_t> codes = {1, 2, 3, 4, 5, 6, 7, 8};  // k = 0..7, one column
  auto q = pack_qweight(codes, 8, 1, 4);
  ASSERT_EQ(q.size(), 1u);
  EXPECT_EQ(u32(q[0]), 0x87654321u);
  EXPECT_EQ(q[0], -2023406815);
  EXPECT_EQ(unpack_qweight(q, 8, 1, 4), codes);
}

TEST(Pack, FirstFeatureInLeastSignificantBitsPerColumn) {
  // K = 8, N = 2: column 1 holds 15 at k = 7 only.
  std::vector<uint8_t> codes(16, 0);
  codes[0 * 2 + 0] = 1;
  codes[7 * 2 + 1] = 15;
  auto q = pack_qweight(codes, 8, 2, 4);
  ASSERT_EQ(q.size(), 2u);
  EXPECT_EQ(u32(q[0]), 0x00000001u);
  EXPECT_EQ(u32(q[1]), 0xF0000000u);
}

TEST(Pack, ThreeBitAllThreesGiveTheReferenceWords) {
  const std::vector<uint8_t> codes(32, 3);
  auto q = pack_qweight(codes, 32, 1, 3);
  ASSERT_EQ(q.size(), 3u);
  EXPECT_EQ(u32(q[0]), 0xDB6DB6DBu);
  EXPECT_EQ(u32(q[1]), 0xB6DB6DB6u);
  EXPECT_EQ(u32(q[2]), 0x6DB6DB6Du);

  auto z = pack_qzeros(codes, 1, 32, 3);
  ASSERT_EQ(z.size(), 3u);
  EXPECT_EQ(u32(z[0]), 0xDB6DB6DBu);
  EXPECT_EQ(u32(z[1]), 0xB6DB6DB6u);
  EXPECT_EQ(u32(z[2]), 0x6DB6DB6Du);
}

TEST(Pack, ThreeBitStraddlingCodesFollowTheTable) {
  // v10 = 0b101 -> bits 0-1 at w0 bits 30-31, bit 2 at w1 bit 0;
  // v21 = 0b011 -> bit 0 at w1 bit 31, bits 1-2 at w2 bits 0-1; v31 = 7 at w2 bits 29-31.
  std::vector<uint8_t> codes(32, 0);
  codes[10] = 5;
  codes[21] = 3;
  codes[31] = 7;
  auto q = pack_qweight(codes, 32, 1, 3);
  EXPECT_EQ(u32(q[0]), 0x40000000u);
  EXPECT_EQ(u32(q[1]), 0x80000001u);
  EXPECT_EQ(u32(q[2]), 0xE0000001u);
  EXPECT_EQ(unpack_qweight(q, 32, 1, 3), codes);
}

TEST(Pack, SymmetricZeroConstants) {
  struct Case {
    int bits;
    uint8_t zero_minus_one;
    uint32_t word;
  };
  for (const Case c : {Case{2, 1, 0x55555555u}, Case{4, 7, 0x77777777u}, Case{8, 127, 0x7F7F7F7Fu}}) {
    const int64_t G = 3, N = 64;
    std::vector<uint8_t> zeros(static_cast<size_t>(G * N), c.zero_minus_one);
    auto z = pack_qzeros(zeros, G, N, c.bits);
    ASSERT_EQ(z.size(), static_cast<size_t>(G * N * c.bits / 32));
    for (int32_t w : z) EXPECT_EQ(u32(w), c.word) << "bits=" << c.bits;
  }
  EXPECT_EQ(static_cast<int32_t>(0x55555555u), 1431655765);
  EXPECT_EQ(static_cast<int32_t>(0x77777777u), 2004318071);
  EXPECT_EQ(static_cast<int32_t>(0x7F7F7F7Fu), 2139062143);
}

TEST(Pack, QzerosPacksAlongTheOutputDimension) {
  // G = 2, N = 8, 4-bit: row g packs n = 0..7 into one word.
  std::vector<uint8_t> zeros = {1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 1};
  auto z = pack_qzeros(zeros, 2, 8, 4);
  ASSERT_EQ(z.size(), 2u);
  EXPECT_EQ(u32(z[0]), 0x87654321u);
  EXPECT_EQ(u32(z[1]), 0x12345678u);
}

TEST(Pack, RoundTripsAtOddSizes) {
  for (int bits : {2, 3, 4, 8}) {
    const int64_t block = bits == 3 ? 32 : 32 / bits;
    for (int64_t K : {block, 3 * block, 7 * block}) {
      for (int64_t N : {int64_t{1}, int64_t{5}, int64_t{17}, int64_t{33}}) {
        auto codes = random_codes(static_cast<size_t>(K * N), bits, static_cast<uint32_t>(bits * 1000 + K + N));
        auto q = pack_qweight(codes, K, N, bits);
        ASSERT_EQ(q.size(), static_cast<size_t>(K * bits / 32 * N));
        EXPECT_EQ(unpack_qweight(q, K, N, bits), codes) << "bits=" << bits << " K=" << K << " N=" << N;
      }
    }
    for (int64_t G : {int64_t{1}, int64_t{3}, int64_t{11}}) {
      for (int64_t N : {block, 5 * block}) {
        auto zeros = random_codes(static_cast<size_t>(G * N), bits, static_cast<uint32_t>(bits + G * 7 + N));
        auto z = pack_qzeros(zeros, G, N, bits);
        ASSERT_EQ(z.size(), static_cast<size_t>(G * (N * bits / 32)));
        EXPECT_EQ(unpack_qzeros(z, G, N, bits), zeros) << "bits=" << bits << " G=" << G << " N=" << N;
      }
    }
  }
}

TEST(Pack, UnpackMatchesTheReferenceFormula) {
  // q[k, n] = (qweight[k / pf, n] >> (b * (k % pf))) & maxq for b = 2, 4, 8.
  for (int bits : {2, 4, 8}) {
    const int64_t pf = 32 / bits, K = 4 * pf, N = 3;
    auto codes = random_codes(static_cast<size_t>(K * N), bits, 7u + static_cast<uint32_t>(bits));
    auto q = pack_qweight(codes, K, N, bits);
    const uint32_t maxq = (1u << bits) - 1u;
    for (int64_t k = 0; k < K; ++k) {
      for (int64_t n = 0; n < N; ++n) {
        const uint32_t word = u32(q[static_cast<size_t>((k / pf) * N + n)]);
        EXPECT_EQ((word >> (bits * (k % pf))) & maxq, codes[static_cast<size_t>(k * N + n)]);
      }
    }
  }
}

void expect_invalid(auto&& f) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument) << e.what();
  }
}

TEST(Pack, BadSizesAreRejected) {
  std::vector<uint8_t> codes(64, 1);
  expect_invalid([&] { pack_qweight(codes, 4, 16, 4); });   // K not a multiple of 8
  expect_invalid([&] { pack_qweight(codes, 16, 4, 3); });   // K not a multiple of 32
  expect_invalid([&] { pack_qweight(codes, 8, 4, 2); });    // K not a multiple of 16
  expect_invalid([&] { pack_qweight(codes, 2, 32, 8); });   // K not a multiple of 4
  expect_invalid([&] { pack_qweight(codes, 8, 7, 4); });    // codes.size() != K * N
  expect_invalid([&] { pack_qweight(codes, 8, 8, 5); });    // unsupported width
  expect_invalid([&] { pack_qweight(codes, -8, -8, 4); });  // negative sizes
  expect_invalid([&] { pack_qzeros(codes, 16, 4, 4); });    // N not a multiple of 8
  expect_invalid([&] { pack_qzeros(codes, 4, 16, 3); });    // N not a multiple of 32
  expect_invalid([&] { pack_qzeros(codes, 3, 16, 4); });    // codes.size() != G * N
  std::vector<int32_t> words(4, 0);
  expect_invalid([&] { unpack_qweight(words, 8, 5, 4); });  // words.size() != K/8 * N
  expect_invalid([&] { unpack_qzeros(words, 2, 24, 4); });
  expect_invalid([&] { unpack_qweight(words, 8, 4, 1); });
}

TEST(Pack, CodesOutOfRangeAreRejected) {
  std::vector<uint8_t> codes(8, 0);
  codes[5] = 16;
  expect_invalid([&] { pack_qweight(codes, 8, 1, 4); });
  std::vector<uint8_t> three(32, 0);
  three[0] = 8;
  expect_invalid([&] { pack_qzeros(three, 1, 32, 3); });
}

TEST(Pack, EmptyInputsGiveEmptyOutputs) {
  EXPECT_TRUE(pack_qweight({}, 0, 16, 4).empty());
  EXPECT_TRUE(pack_qzeros({}, 0, 16, 4).empty());
  EXPECT_TRUE(unpack_qweight({}, 8, 0, 4).empty());
}

}  // namespace
}  // namespace gptqd::quantizer
