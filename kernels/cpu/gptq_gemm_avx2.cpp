// SPDX-License-Identifier: Apache-2.0
// The GPTQ kernels on AVX2+FMA+F16C: a tile of 16 output columns is two 8-lane halves (kernels
// layer). Only called when cpu_features reports avx2, fma and f16c.
#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/gptq_gemm_internal.h"

namespace gptqd::kernels::cpu::detail {
namespace {

#define TGT_OP __attribute__((target("avx2,fma,f16c"), always_inline))
#define TGT __attribute__((target("avx2,fma,f16c")))

struct F {
  __m256 lo, hi;
};
struct I {
  __m256i lo, hi;
};
constexpr int kMaxRows = 2;  // 16 ymm registers: 2 rows x 2 halves x 2 accumulators + operands

TGT_OP inline I load_words(const uint32_t* p) {
  return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8))};
}
TGT_OP inline I splat_i(uint32_t v) {
  const __m256i s = _mm256_set1_epi32(static_cast<int>(v));
  return {s, s};
}
TGT_OP inline I srl(I a, int s) { return {_mm256_srli_epi32(a.lo, s), _mm256_srli_epi32(a.hi, s)}; }
TGT_OP inline I sll(I a, int s) { return {_mm256_slli_epi32(a.lo, s), _mm256_slli_epi32(a.hi, s)}; }
TGT_OP inline I and_(I a, I b) { return {_mm256_and_si256(a.lo, b.lo), _mm256_and_si256(a.hi, b.hi)}; }
TGT_OP inline I or_(I a, I b) { return {_mm256_or_si256(a.lo, b.lo), _mm256_or_si256(a.hi, b.hi)}; }
TGT_OP inline F cvt(I a) { return {_mm256_cvtepi32_ps(a.lo), _mm256_cvtepi32_ps(a.hi)}; }
TGT_OP inline F zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
TGT_OP inline F splat(float f) {
  const __m256 s = _mm256_set1_ps(f);
  return {s, s};
}
TGT_OP inline F add(F a, F b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
TGT_OP inline F sub(F a, F b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }
TGT_OP inline F mul(F a, F b) { return {_mm256_mul_ps(a.lo, b.lo), _mm256_mul_ps(a.hi, b.hi)}; }
TGT_OP inline F fma(F a, F b, F c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
TGT_OP inline F fnma(F a, F b, F c) {  // c - a*b
  return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)};
}
TGT_OP inline F load_h(const uint16_t* p) {
  return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))),
          _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 8)))};
}
// The convert is as cheap as an or on AVX2 (no three-input logic op): codes stay integers.
constexpr bool kFloatCodes = false;
TGT_OP inline F float_code(I, I) { return zero(); }
TGT_OP inline void store(float* p, F a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
TGT_OP inline void store_n(float* p, F a, int n) {
  alignas(32) float tmp[16];
  _mm256_store_ps(tmp, a.lo);
  _mm256_store_ps(tmp + 8, a.hi);
  for (int j = 0; j < n; ++j) p[j] = tmp[j];
}

#include "kernels/cpu/gptq_gemm_simd.inc"

#undef TGT
#undef TGT_OP

}  // namespace

__attribute__((target("avx2,fma,f16c"))) KernelStatus gptq_direct_avx2(const GptqPackedLinear& w, const float* xp,
                                                                      const float* xsum, int64_t M, int64_t t0,
                                                                      int64_t t1, float* y, int64_t ldy) {
  return direct(w, xp, xsum, M, t0, t1, y, ldy);
}

__attribute__((target("avx2,fma,f16c"))) KernelStatus gptq_dequant_avx2(const GptqPackedLinear& w, int64_t t0,
                                                                       int64_t t1, int64_t k0, int64_t k1, float* out,
                                                                       int64_t ldo) {
  return dequant(w, t0, t1, k0, k1, out, ldo);
}

}  // namespace gptqd::kernels::cpu::detail
#endif
