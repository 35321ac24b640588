// SPDX-License-Identifier: Apache-2.0
// dequantize_ggml on hand-built blocks: literal values per type, plus random blocks checked
// against per-element formulas of each block layout (tests).
#include "kernels/cpu/ggml_dequant.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "kernels/cpu/half.h"

namespace gptqd::kernels::cpu {
namespace {

using Bytes = std::vector<uint8_t>;

uint32_t type_id(GgmlType t) { return static_cast<uint32_t>(t); }

void put_f16(Bytes& b, size_t at, float v) {
  const uint16_t h = f32_to_f16(v);
  b[at] = static_cast<uint8_t>(h & 0xff);
  b[at + 1] = static_cast<uint8_t>(h >> 8);
}

std::vector<float> run(GgmlType type, const Bytes& src, int64_t n) {
  std::vector<float> out(static_cast<size_t>(n), -12345.0f);
  EXPECT_EQ(dequantize_ggml(type_id(type), src.data(), n, out.data()), KernelStatus::ok);
  return out;
}

Bytes random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng() & 0xff);
  return b;
}

// Checks `n_blocks` random blocks of `type` (scale fields overwritten with powers of two by
// `set_scales`, so every expected value is exact) against `expect(block, e)` for element e.
void check_random_blocks(GgmlType type, int n_blocks, const std::function<void(Bytes&, size_t, int)>& set_scales,
                         const std::function<double(const uint8_t*, int)>& expect) {
  const GgmlTypeTraits* tr = ggml_type_traits(type_id(type));
  ASSERT_NE(tr, nullptr);
  Bytes src = random_bytes(static_cast<size_t>(n_blocks) * tr->block_bytes, type_id(type) * 7919u);
  for (int i = 0; i < n_blocks; ++i) set_scales(src, static_cast<size_t>(i) * tr->block_bytes, i);
  const int64_t n = static_cast<int64_t>(n_blocks) * tr->block_elems;
  const std::vector<float> got = run(type, src, n);
  int mismatches = 0;
  for (int i = 0; i < n_blocks; ++i) {
    for (uint32_t e = 0; e < tr->block_elems; ++e) {
      const double want = expect(src.data() + static_cast<size_t>(i) * tr->block_bytes, static_cast<int>(e));
      const float g = got[static_cast<size_t>(i) * tr->block_elems + e];
      if (static_cast<double>(g) != want && ++mismatches <= 5) {
        ADD_FAILURE() << tr->name << " block " << i << " element " << e << ": got " << g << ", want " << want;
      }
    }
  }
  EXPECT_EQ(mismatches, 0) << tr->name;
}

float f16_at(const uint8_t* p) { return f16_to_f32(static_cast<uint16_t>(p[0] | (p[1] << 8))); }

// Scale factors used for the random blocks: 2^-3 .. 2^2 and their negatives.
float pow2_scale(int i, int salt) {
  const float v = std::ldexp(1.0f, (i * 3 + salt) % 6 - 3);
  return ((i + salt) % 3 == 0) ? -v : v;
}

TEST(GgmlTypeTraits, SizesMatchGgml) {
  struct Row { GgmlType t; uint32_t elems, bytes; bool deq; };
  const Row rows[] = {
      {GgmlType::F32, 1, 4, true},        {GgmlType::F16, 1, 2, true},       {GgmlType::Q4_0, 32, 18, true},
      {GgmlType::Q4_1, 32, 20, true},     {GgmlType::Q5_0, 32, 22, true},    {GgmlType::Q5_1, 32, 24, true},
      {GgmlType::Q8_0, 32, 34, true},     {GgmlType::Q8_1, 32, 40, false},   {GgmlType::Q2_K, 256, 84, true},
      {GgmlType::Q3_K, 256, 110, true},   {GgmlType::Q4_K, 256, 144, true},  {GgmlType::Q5_K, 256, 176, true},
      {GgmlType::Q6_K, 256, 210, true},   {GgmlType::Q8_K, 256, 292, false}, {GgmlType::IQ2_XXS, 256, 66, false},
      {GgmlType::IQ2_XS, 256, 74, false}, {GgmlType::IQ3_XXS, 256, 98, false}, {GgmlType::IQ1_S, 256, 50, false},
      {GgmlType::IQ4_NL, 32, 18, false},  {GgmlType::IQ3_S, 256, 110, false}, {GgmlType::IQ2_S, 256, 82, false},
      {GgmlType::IQ4_XS, 256, 136, false}, {GgmlType::I8, 1, 1, false},      {GgmlType::I16, 1, 2, false},
      {GgmlType::I32, 1, 4, false},       {GgmlType::I64, 1, 8, false},      {GgmlType::F64, 1, 8, false},
      {GgmlType::IQ1_M, 256, 56, false},  {GgmlType::BF16, 1, 2, true},      {GgmlType::TQ1_0, 256, 54, false},
      {GgmlType::TQ2_0, 256, 66, false},
  };
  for (const Row& r : rows) {
    const GgmlTypeTraits* tr = ggml_type_traits(type_id(r.t));
    ASSERT_NE(tr, nullptr) << type_id(r.t);
    EXPECT_EQ(tr->block_elems, r.elems) << tr->name;
    EXPECT_EQ(tr->block_bytes, r.bytes) << tr->name;
    EXPECT_EQ(tr->can_dequantize, r.deq) << tr->name;
  }
  EXPECT_STREQ(ggml_type_traits(type_id(GgmlType::Q4_K))->name, "Q4_K");
  for (uint32_t unknown : {4u, 5u, 31u, 32u, 33u, 36u, 39u, 1000u, 0xffffffffu}) {
    EXPECT_EQ(ggml_type_traits(unknown), nullptr) << unknown;
  }
}

TEST(GgmlDequant, PlainTypes) {
  const float f32[3] = {1.5f, -0.0f, 3e38f};
  Bytes src(sizeof f32);
  std::memcpy(src.data(), f32, sizeof f32);
  const auto out32 = run(GgmlType::F32, src, 3);
  EXPECT_EQ(std::memcmp(out32.data(), f32, sizeof f32), 0);

  const Bytes f16 = {0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0xff, 0x7b};  // 1, -2, 2^-24, 65504
  EXPECT_EQ(run(GgmlType::F16, f16, 4), (std::vector<float>{1.0f, -2.0f, std::ldexp(1.0f, -24), 65504.0f}));

  const Bytes bf16 = {0x80, 0x3f, 0x40, 0xc0, 0x80, 0x7f};  // 1, -3, inf
  const auto outbf = run(GgmlType::BF16, bf16, 3);
  EXPECT_EQ(outbf[0], 1.0f);
  EXPECT_EQ(outbf[1], -3.0f);
  EXPECT_TRUE(std::isinf(outbf[2]));
}

TEST(GgmlDequant, Q4_0HandBlock) {
  // d = 0.5; byte j holds element j in its low nibble (j) and element j + 16 in its high (15 - j).
  Bytes b(18);
  put_f16(b, 0, 0.5f);
  for (int j = 0; j < 16; ++j) b[2 + j] = static_cast<uint8_t>(j | ((15 - j) << 4));
  const auto y = run(GgmlType::Q4_0, b, 32);
  EXPECT_EQ(y[0], -4.0f);    // (0 - 8) * 0.5
  EXPECT_EQ(y[8], 0.0f);
  EXPECT_EQ(y[15], 3.5f);
  EXPECT_EQ(y[16], 3.5f);    // (15 - 8) * 0.5
  EXPECT_EQ(y[31], -4.0f);
}

TEST(GgmlDequant, Q4_1HandBlock) {
  Bytes b(20);
  put_f16(b, 0, 0.25f);   // d
  put_f16(b, 2, -1.0f);   // m
  for (int j = 0; j < 16; ++j) b[4 + j] = static_cast<uint8_t>(j | (15 << 4));
  const auto y = run(GgmlType::Q4_1, b, 32);
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[4], 0.0f);
  EXPECT_EQ(y[15], 2.75f);
  EXPECT_EQ(y[16], 2.75f);
}

TEST(GgmlDequant, Q5_0HandBlock) {
  Bytes b(22);
  put_f16(b, 0, 1.0f);
  b[2] = 0x01;  // qh bit 0: element 0 gets +16
  b[5] = 0x80;  // qh bit 31: element 31 gets +16
  b[6] = 0xf3;  // element 0 low nibble 3, element 16 high nibble 15
  b[21] = 0x4f;  // element 15 low nibble 15, element 31 high nibble 4
  const auto y = run(GgmlType::Q5_0, b, 32);
  EXPECT_EQ(y[0], 3.0f);      // (3 | 16) - 16
  EXPECT_EQ(y[16], -1.0f);    // 15 - 16
  EXPECT_EQ(y[15], -1.0f);
  EXPECT_EQ(y[31], 4.0f);     // (4 | 16) - 16
  EXPECT_EQ(y[1], -16.0f);
}

TEST(GgmlDequant, Q5_1HandBlock) {
  Bytes b(24);
  put_f16(b, 0, 2.0f);
  put_f16(b, 2, 0.5f);
  b[4 + 2] = 0x01;  // qh bit 16: element 16 gets +16
  b[8] = 0x21;      // element 0 = 1, element 16 = 2 | 16
  const auto y = run(GgmlType::Q5_1, b, 32);
  EXPECT_EQ(y[0], 2.5f);
  EXPECT_EQ(y[16], 36.5f);
  EXPECT_EQ(y[1], 0.5f);
}

TEST(GgmlDequant, Q8_0HandBlock) {
  Bytes b(34);
  put_f16(b, 0, 0.125f);
  b[2] = 0x7f;  // 127
  b[3] = 0x80;  // -128
  b[4] = 0xff;  // -1
  const auto y = run(GgmlType::Q8_0, b, 32);
  EXPECT_EQ(y[0], 15.875f);
  EXPECT_EQ(y[1], -16.0f);
  EXPECT_EQ(y[2], -0.125f);
  EXPECT_EQ(y[3], 0.0f);
}

TEST(GgmlDequant, Q2_KHandBlock) {
  Bytes b(84);
  b[0] = 0x23;            // group 0: scale 3, min 2
  b[15] = 0x10;           // group 15: scale 0, min 1
  b[16] = 0x03 | (2 << 6);  // qs[0]: element 0 -> 3, element 96 -> 2
  put_f16(b, 80, 0.5f);   // d
  put_f16(b, 82, 0.25f);  // dmin
  const auto y = run(GgmlType::Q2_K, b, 256);
  EXPECT_EQ(y[0], 0.5f * 3 * 3 - 0.25f * 2);
  EXPECT_EQ(y[1], -0.5f);
  EXPECT_EQ(y[255], -0.25f);
  EXPECT_EQ(y[96], 0.0f);  // group 6 has scale 0, min 0
}

TEST(GgmlDequant, Q6_KHandBlock) {
  Bytes b(210);
  b[0] = 0x21;            // ql[0]: element 0 low 1, element 64 low 2
  b[128] = 0x01;          // qh[0]: element 0 high bits 01
  b[192] = static_cast<uint8_t>(-3);  // scale of group 0
  b[196] = 5;             // scale of group 4 (elements 64..79)
  put_f16(b, 208, 0.5f);
  const auto y = run(GgmlType::Q6_K, b, 256);
  EXPECT_EQ(y[0], 0.5f * -3 * ((1 | 16) - 32));
  EXPECT_EQ(y[64], 0.5f * 5 * (2 - 32));
  EXPECT_EQ(y[1], 0.5f * -3 * -32);
}

TEST(GgmlDequant, LegacyRandomBlocksMatchLayout) {
  auto d_only = [](Bytes& b, size_t at, int i) { put_f16(b, at, pow2_scale(i, 0)); };
  auto d_and_m = [](Bytes& b, size_t at, int i) {
    put_f16(b, at, pow2_scale(i, 0));
    put_f16(b, at + 2, pow2_scale(i, 1));
  };
  auto nibble = [](const uint8_t* qs, int e) { return e < 16 ? (qs[e] & 0x0f) : (qs[e - 16] >> 4); };
  auto fifth_bit = [](const uint8_t* qh, int e) { return (qh[e / 8] >> (e % 8)) & 1; };
  check_random_blocks(GgmlType::Q4_0, 9, d_only,
                      [&](const uint8_t* x, int e) { return f16_at(x) * (nibble(x + 2, e) - 8.0); });
  check_random_blocks(GgmlType::Q4_1, 9, d_and_m, [&](const uint8_t* x, int e) {
    return f16_at(x) * nibble(x + 4, e) + f16_at(x + 2);
  });
  check_random_blocks(GgmlType::Q5_0, 9, d_only, [&](const uint8_t* x, int e) {
    return f16_at(x) * ((nibble(x + 6, e) | (fifth_bit(x + 2, e) << 4)) - 16.0);
  });
  check_random_blocks(GgmlType::Q5_1, 9, d_and_m, [&](const uint8_t* x, int e) {
    return f16_at(x) * (nibble(x + 8, e) | (fifth_bit(x + 4, e) << 4)) + f16_at(x + 2);
  });
  check_random_blocks(GgmlType::Q8_0, 9, d_only,
                      [&](const uint8_t* x, int e) { return f16_at(x) * static_cast<int8_t>(x[2 + e]); });
}

// The 6-bit (scale, min) pair of group g (0..7) in the 12 scale bytes of Q4_K / Q5_K.
void k4_scale_min(const uint8_t* s, int g, int* sc, int* m) {
  if (g < 4) {
    *sc = s[g] & 63;
    *m = s[g + 4] & 63;
  } else {
    *sc = (s[g + 4] & 0x0f) | ((s[g - 4] >> 6) << 4);
    *m = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
  }
}

TEST(GgmlDequant, KQuantRandomBlocksMatchLayout) {
  check_random_blocks(
      GgmlType::Q2_K, 5,
      [](Bytes& b, size_t at, int i) {
        put_f16(b, at + 80, pow2_scale(i, 0));
        put_f16(b, at + 82, pow2_scale(i, 1));
      },
      [](const uint8_t* x, int e) {
        const int sc = x[e / 16];
        const int q = (x[16 + 32 * (e / 128) + e % 32] >> (2 * ((e % 128) / 32))) & 3;
        return static_cast<double>(f16_at(x + 80)) * (sc & 15) * q - static_cast<double>(f16_at(x + 82)) * (sc >> 4);
      });
  check_random_blocks(
      GgmlType::Q3_K, 5, [](Bytes& b, size_t at, int i) { put_f16(b, at + 108, pow2_scale(i, 0)); },
      [](const uint8_t* x, int e) {
        const uint8_t* s = x + 96;
        const int k = e / 16;
        const int low = k < 8 ? (s[k] & 0x0f) : (s[k - 8] >> 4);
        const int high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        const int scale = (low | (high << 4)) - 32;
        const int j = (e % 128) / 32;
        const int q = (x[32 + 32 * (e / 128) + e % 32] >> (2 * j)) & 3;
        const int hbit = (x[e % 32] >> (4 * (e / 128) + j)) & 1;
        return static_cast<double>(f16_at(x + 108)) * scale * (q - (hbit ? 0 : 4));
      });
  auto d_dmin = [](Bytes& b, size_t at, int i) {
    put_f16(b, at, pow2_scale(i, 0));
    put_f16(b, at + 2, pow2_scale(i, 1));
  };
  check_random_blocks(GgmlType::Q4_K, 5, d_dmin, [](const uint8_t* x, int e) {
    int sc = 0, m = 0;
    k4_scale_min(x + 4, e / 32, &sc, &m);
    const uint8_t byte = x[16 + 32 * (e / 64) + e % 32];
    const int q = (e % 64) < 32 ? (byte & 0x0f) : (byte >> 4);
    return static_cast<double>(f16_at(x)) * sc * q - static_cast<double>(f16_at(x + 2)) * m;
  });
  check_random_blocks(GgmlType::Q5_K, 5, d_dmin, [](const uint8_t* x, int e) {
    int sc = 0, m = 0;
    k4_scale_min(x + 4, e / 32, &sc, &m);
    const uint8_t byte = x[48 + 32 * (e / 64) + e % 32];
    const int low = (e % 64) < 32 ? (byte & 0x0f) : (byte >> 4);
    const int high = (x[16 + e % 32] >> (e / 32)) & 1;
    return static_cast<double>(f16_at(x)) * sc * (low + 16 * high) - static_cast<double>(f16_at(x + 2)) * m;
  });
  check_random_blocks(
      GgmlType::Q6_K, 5, [](Bytes& b, size_t at, int i) { put_f16(b, at + 208, pow2_scale(i, 0)); },
      [](const uint8_t* x, int e) {
        const int n = e / 128, j = (e % 128) / 32, l = e % 32;
        const uint8_t byte = x[64 * n + l + (j % 2) * 32];
        const int low = j < 2 ? (byte & 0x0f) : (byte >> 4);
        const int high = (x[128 + 32 * n + l] >> (2 * j)) & 3;
        const int scale = static_cast<int8_t>(x[192 + e / 16]);
        return static_cast<double>(f16_at(x + 208)) * scale * ((low | (high << 4)) - 32);
      });
}

TEST(GgmlDequant, RejectsPartialBlocks) {
  const Bytes src(1024);
  std::vector<float> out(1024);
  EXPECT_EQ(dequantize_ggml(type_id(GgmlType::Q4_0), src.data(), 31, out.data()), KernelStatus::bad_shape);
  EXPECT_EQ(dequantize_ggml(type_id(GgmlType::Q4_0), src.data(), 33, out.data()), KernelStatus::bad_shape);
  EXPECT_EQ(dequantize_ggml(type_id(GgmlType::Q6_K), src.data(), 128, out.data()), KernelStatus::bad_shape);
  EXPECT_EQ(dequantize_ggml(type_id(GgmlType::F32), src.data(), -1, out.data()), KernelStatus::bad_shape);
  EXPECT_EQ(dequantize_ggml(type_id(GgmlType::Q8_0), nullptr, 32, out.data()), KernelStatus::bad_shape);
  EXPECT_EQ(dequantize_ggml(type_id(GgmlType::Q8_0), src.data(), 0, out.data()), KernelStatus::ok);
}

TEST(GgmlDequant, RejectsTypesItCannotDequantize) {
  const Bytes src(1024);
  std::vector<float> out(256);
  for (GgmlType t : {GgmlType::Q8_1, GgmlType::Q8_K, GgmlType::IQ2_XXS, GgmlType::IQ4_NL, GgmlType::I32,
                     GgmlType::F64, GgmlType::TQ2_0}) {
    EXPECT_EQ(dequantize_ggml(type_id(t), src.data(), 256, out.data()), KernelStatus::unsupported) << type_id(t);
  }
  EXPECT_EQ(dequantize_ggml(4, src.data(), 32, out.data()), KernelStatus::unsupported);
  EXPECT_EQ(dequantize_ggml(12345, src.data(), 32, out.data()), KernelStatus::unsupported);
}

}  // namespace
}  // namespace gptqd::kernels::cpu
