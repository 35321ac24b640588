// SPDX-License-Identifier: Apache-2.0
// Shared by the GPTQ kernel files: code unpacking and the per-ISA entry points (kernels layer,
// internal).
#pragma once

#include <cstdint>

#include "kernels/cpu/gptq_gemm.h"

namespace gptqd::kernels::cpu::detail {

// Code `i` of a column packed along the row direction (gptq-reference.md B.3/B.4): `words`
// points at the column's first word, consecutive words of the column are `stride` apart.
inline uint32_t packed_code(const int32_t* words, int64_t stride, int64_t i, int bits) {
  if (bits == 3) {
    // 32 codes in 3 words: code j of block t sits at bit 3j of the 96-bit value w0|w1<<32|w2<<64.
    const int64_t t = i / 32, j = i % 32;
    const int64_t bit = 3 * j, word = bit / 32, off = bit % 32;
    uint32_t v = static_cast<uint32_t>(words[(3 * t + word) * stride]) >> off;
    if (off > 29) v |= static_cast<uint32_t>(words[(3 * t + word + 1) * stride]) << (32 - off);
    return v & 7u;
  }
  const int per_word = 32 / bits;
  const uint32_t word = static_cast<uint32_t>(words[(i / per_word) * stride]);
  return (word >> (bits * (i % per_word))) & ((1u << bits) - 1u);
}

// Codes per packing unit (one word, or three words for 3-bit) and words per unit.
constexpr int codes_per_unit(int bits) { return bits == 3 ? 32 : 32 / bits; }
constexpr int words_per_unit(int bits) { return bits == 3 ? 3 : 1; }

#if defined(__x86_64__)
KernelStatus gptq_direct_avx2(const GptqPackedLinear& w, const float* xp, const float* xsum, int64_t M, int64_t t0,
                              int64_t t1, float* y, int64_t ldy);
KernelStatus gptq_direct_avx512(const GptqPackedLinear& w, const float* xp, const float* xsum, int64_t M, int64_t t0,
                                int64_t t1, float* y, int64_t ldy);
KernelStatus gptq_dequant_avx2(const GptqPackedLinear& w, int64_t t0, int64_t t1, int64_t k0, int64_t k1, float* out,
                               int64_t ldo);
KernelStatus gptq_dequant_avx512(const GptqPackedLinear& w, int64_t t0, int64_t t1, int64_t k0, int64_t k1, float* out,
                                 int64_t ldo);
#endif

}  // namespace gptqd::kernels::cpu::detail
