// SPDX-License-Identifier: Apache-2.0
// kernels/cpu/half.h against independent references: numpy for fp16 (every fp16 bit pattern and
// every rounding boundary), the gguf package and a distance-based definition for bf16 (tests).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/half.h"
#include "tests/support/test_env.h"

namespace gptqd::kernels::cpu {
namespace {

// Writes, little-endian: u32 f32_bits[65536] (numpy float16 -> float32 of every bit pattern),
// u64 n, f32 inputs[n], u16 f16_bits[n] (numpy astype(float16)), u16 bf16_bits[n]
// (gguf.quants.quantize BF16, the port of ggml's fp32 -> bf16).
constexpr const char* kReferenceScript = R"PY(
import sys
import numpy as np
import gguf

out = sys.argv[1]
h = np.arange(65536, dtype=np.uint32).astype(np.uint16)
table = h.view(np.float16).astype(np.float32)

# Every finite non-negative fp16 value, the exact midpoint to its upper neighbour (the next value
# is 65536 past the largest finite one), and the float32 values one ulp either side of both.
pos = h[: 0x7C00]
v = pos.view(np.float16).astype(np.float64)
nxt = np.append(v[1:], 65536.0)
mid = ((v + nxt) / 2).astype(np.float32)
v32 = v.astype(np.float32)
inf32 = np.float32(np.inf)
edges = [v32, mid, np.nextafter(mid, -inf32), np.nextafter(mid, inf32),
         np.nextafter(v32, -inf32), np.nextafter(v32, inf32)]
rng = np.random.default_rng(20240531)
random_bits = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32).view(np.float32)
in_range = (rng.uniform(0.5, 1.0, size=1 << 20) * np.exp2(rng.integers(-27, 18, size=1 << 20))).astype(np.float32)
special_bits = np.array([0x00000000, 0x00000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0x7F800000,
                         0x7F800001, 0x7FC00000, 0x7FFFFFFF, 0x7FBFFFFF, 0x33000000, 0x33000001,
                         0x32FFFFFF, 0x477FE000, 0x477FEFFF, 0x477FF000, 0x477FF001, 0x38800000,
                         0x387FFFFF, 0x3F800000, 0x3F808000, 0x3F818000, 0x3F7FFFFF], dtype=np.uint32)
x = np.concatenate(edges + [random_bits, in_range, special_bits.view(np.float32)])
x = np.concatenate([x, -x]).astype(np.float32)
with np.errstate(over="ignore", invalid="ignore"):
    f16 = x.astype(np.float16).view(np.uint16)
bf16 = gguf.quants.quantize(x, gguf.GGMLQuantizationType.BF16).view(np.uint16).reshape(-1)
with open(out, "wb") as f:
    f.write(table.view(np.uint32).astype("<u4").tobytes())
    f.write(np.array([x.size], dtype="<u8").tobytes())
    f.write(x.view(np.uint32).astype("<u4").tobytes())
    f.write(f16.astype("<u2").tobytes())
    f.write(bf16.astype("<u2").tobytes())
)PY";

struct Reference {
  std::vector<uint32_t> f16_to_f32_bits;  // [65536]
  std::vector<uint32_t> inputs;           // [n] fp32 bits
  std::vector<uint16_t> f16;              // [n]
  std::vector<uint16_t> bf16;             // [n]
};

const Reference& reference() {
  static const Reference ref = [] {
    Reference r;
    test::TempDir dir;
    const auto out = dir / "half_reference.bin";
    const auto res = test::run_command({test::python().string(), "-c", kReferenceScript, out.string()});
    if (res.exit_code != 0) throw std::runtime_error("reference script failed:\n" + res.output);
    const std::string bytes = test::read_file(out);
    size_t pos = 0;
    auto take = [&](void* dst, size_t n) {
      if (pos + n > bytes.size()) throw std::runtime_error("reference file truncated");
      std::memcpy(dst, bytes.data() + pos, n);
      pos += n;
    };
    r.f16_to_f32_bits.resize(65536);
    take(r.f16_to_f32_bits.data(), 65536 * sizeof(uint32_t));
    uint64_t n = 0;
    take(&n, sizeof n);
    r.inputs.resize(n);
    r.f16.resize(n);
    r.bf16.resize(n);
    take(r.inputs.data(), n * sizeof(uint32_t));
    take(r.f16.data(), n * sizeof(uint16_t));
    take(r.bf16.data(), n * sizeof(uint16_t));
    if (pos != bytes.size()) throw std::runtime_error("reference file has trailing bytes");
    return r;
  }();
  return ref;
}

bool is_nan_f32(uint32_t bits) { return (bits & 0x7fffffffu) > 0x7f800000u; }
bool is_nan_f16(uint16_t bits) { return (bits & 0x7fffu) > 0x7c00u; }
bool is_nan_bf16(uint16_t bits) { return (bits & 0x7fffu) > 0x7f80u; }

class HalfTest : public ::testing::Test {
 protected:
  void SetUp() override { GPTQD_REQUIRE_FILE(test::python()); }
};

TEST_F(HalfTest, EveryF16BitPatternMatchesNumpy) {
  const Reference& ref = reference();
  int mismatches = 0;
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint32_t got = std::bit_cast<uint32_t>(f16_to_f32(static_cast<uint16_t>(h)));
    // numpy keeps NaN payloads (and signalling NaNs) too, so even NaNs compare bit for bit.
    if (got != ref.f16_to_f32_bits[h] && ++mismatches <= 10) {
      ADD_FAILURE() << std::hex << "f16 0x" << h << " -> 0x" << got << ", numpy 0x" << ref.f16_to_f32_bits[h];
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST_F(HalfTest, F32ToF16RoundsToNearestEvenLikeNumpy) {
  const Reference& ref = reference();
  ASSERT_GT(ref.inputs.size(), 2'000'000u);
  int mismatches = 0;
  for (size_t i = 0; i < ref.inputs.size(); ++i) {
    const uint32_t in = ref.inputs[i];
    const uint16_t got = f32_to_f16(std::bit_cast<float>(in));
    const uint16_t want = ref.f16[i];
    bool ok = got == want;
    // NaN payloads are implementation-defined (numpy truncates them, ggml and half.h return a
    // quiet NaN): any NaN of the same sign is right.
    if (is_nan_f32(in)) ok = is_nan_f16(got) && (got & 0x8000u) == (want & 0x8000u);
    if (!ok && ++mismatches <= 10) {
      ADD_FAILURE() << std::hex << "f32 0x" << in << " (" << std::bit_cast<float>(in) << ") -> 0x" << got
                    << ", numpy 0x" << want;
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Half, F16RoundTripsThroughF32) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const auto bits = static_cast<uint16_t>(h);
    const uint16_t back = f32_to_f16(f16_to_f32(bits));
    if (is_nan_f16(bits)) {
      EXPECT_TRUE(is_nan_f16(back)) << std::hex << h;
    } else {
      ASSERT_EQ(back, bits) << std::hex << h;
    }
  }
}

TEST(Half, F16EdgeCases) {
  EXPECT_EQ(f32_to_f16(65504.0f), 0x7bffu);
  EXPECT_EQ(f32_to_f16(65519.996f), 0x7bffu);
  EXPECT_EQ(f32_to_f16(65520.0f), 0x7c00u);  // the tie rounds to even, which is infinity
  EXPECT_EQ(f32_to_f16(-1e10f), 0xfc00u);
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -24)), 0x0001u);  // smallest subnormal
  EXPECT_EQ(f32_to_f16(std::ldexp(1.0f, -25)), 0x0000u);  // tie between 0 and 2^-24 -> 0
  EXPECT_EQ(f32_to_f16(std::ldexp(1.5f, -24)), 0x0002u);  // tie between 1 and 2 units -> 2
  EXPECT_EQ(f32_to_f16(std::ldexp(2.5f, -24)), 0x0002u);  // tie between 2 and 3 units -> 2
  EXPECT_EQ(f32_to_f16(-0.0f), 0x8000u);
  EXPECT_EQ(f32_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3c00u);  // tie -> even mantissa
  EXPECT_EQ(f32_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02u);
  EXPECT_EQ(std::bit_cast<uint32_t>(f16_to_f32(0x0001)), 0x33800000u);
  EXPECT_EQ(f16_to_f32(0x7bff), 65504.0f);
  EXPECT_TRUE(std::isinf(f16_to_f32(0xfc00)));
  EXPECT_TRUE(std::isnan(f16_to_f32(0x7e00)));
}

// Independent bf16 reference: the nearer of the two bf16 neighbours, ties to the even one; the
// value past the largest finite bf16 is 2^128, so values from its midpoint up round to infinity.
uint16_t bf16_nearest_even(uint32_t bits) {
  const uint32_t sign = bits & 0x80000000u;
  const uint32_t abs = bits & 0x7fffffffu;
  if (abs > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);
  const uint32_t lo = abs & 0xffff0000u;
  if (lo == abs) return static_cast<uint16_t>((sign | abs) >> 16);
  const uint32_t hi = lo + 0x10000u;
  auto value = [](uint32_t b) {
    return b == 0x7f800000u ? std::ldexp(1.0, 128) : static_cast<double>(std::bit_cast<float>(b));
  };
  const double x = std::bit_cast<float>(abs);
  const double d_lo = x - value(lo);
  const double d_hi = value(hi) - x;
  uint32_t pick = d_lo < d_hi ? lo : d_hi < d_lo ? hi : (((lo >> 16) & 1u) == 0 ? lo : hi);
  return static_cast<uint16_t>((sign | pick) >> 16);
}

TEST_F(HalfTest, F32ToBf16MatchesGgufPackage) {
  const Reference& ref = reference();
  int mismatches = 0;
  for (size_t i = 0; i < ref.inputs.size(); ++i) {
    const uint16_t got = f32_to_bf16(std::bit_cast<float>(ref.inputs[i]));
    if (got != ref.bf16[i] && ++mismatches <= 10) {
      ADD_FAILURE() << std::hex << "f32 0x" << ref.inputs[i] << " -> bf16 0x" << got << ", gguf 0x" << ref.bf16[i];
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Half, F32ToBf16MatchesNearestEvenDefinition) {
  // Every upper half with the low halves that decide rounding (0, just below/at/above the tie,
  // all ones) plus random ones: 65536 * 12 inputs.
  std::mt19937 mt(7);
  auto rnd = [&mt] { return static_cast<uint32_t>(mt() & 0xffffu); };
  int mismatches = 0;
  for (uint32_t upper = 0; upper < 65536; ++upper) {
    const uint32_t lows[] = {0x0000, 0x0001, 0x7fff, 0x8000, 0x8001, 0xffff,
                             rnd(), rnd(), rnd(), rnd(), rnd(), rnd()};
    for (uint32_t low : lows) {
      const uint32_t bits = (upper << 16) | low;
      const uint16_t got = f32_to_bf16(std::bit_cast<float>(bits));
      const uint16_t want = bf16_nearest_even(bits);
      if (got != want && ++mismatches <= 10) {
        ADD_FAILURE() << std::hex << "f32 0x" << bits << " -> bf16 0x" << got << ", want 0x" << want;
      }
    }
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(Half, Bf16ToF32IsTheUpperHalf) {
  for (uint32_t b = 0; b < 65536; ++b) {
    ASSERT_EQ(std::bit_cast<uint32_t>(bf16_to_f32(static_cast<uint16_t>(b))), b << 16);
    if (!is_nan_bf16(static_cast<uint16_t>(b))) {
      ASSERT_EQ(f32_to_bf16(bf16_to_f32(static_cast<uint16_t>(b))), b);
    }
  }
  EXPECT_TRUE(is_nan_bf16(f32_to_bf16(std::bit_cast<float>(0x7f800001u))));  // no NaN -> inf
  EXPECT_EQ(f32_to_bf16(std::bit_cast<float>(0x7f7fffffu)), 0x7f80u);       // FLT_MAX -> inf
}

}  // namespace
}  // namespace gptqd::kernels::cpu
