// SPDX-License-Identifier: Apache-2.0
// The GPTQ kernels on AVX-512: one 16-lane register per tile of 16 output columns (kernels
// layer). Only called when cpu_features reports avx512f/bw/vl, fma and f16c.
#if defined(__x86_64__)
// GCC 12's avx512fintrin.h builds some results from _mm512_undefined_*(), which
// -Wmaybe-uninitialized reports at every inlined use (GCC bug 105593).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>

#include "kernels/cpu/gptq_gemm_internal.h"

namespace gptqd::kernels::cpu::detail {
namespace {

#define TGT_OP __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"), always_inline))
#define TGT __attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")))

struct F {
  __m512 v;
};
struct I {
  __m512i v;
};
constexpr int kMaxRows = 8;  // 8 rows x (1 total + 1 group accumulator) + operands fit 32 registers

TGT_OP inline I load_words(const uint32_t* p) { return {_mm512_loadu_si512(p)}; }
TGT_OP inline I splat_i(uint32_t v) { return {_mm512_set1_epi32(static_cast<int>(v))}; }
TGT_OP inline I srl(I a, int s) { return {_mm512_srli_epi32(a.v, static_cast<unsigned>(s))}; }
TGT_OP inline I sll(I a, int s) { return {_mm512_slli_epi32(a.v, static_cast<unsigned>(s))}; }
TGT_OP inline I and_(I a, I b) { return {_mm512_and_si512(a.v, b.v)}; }
TGT_OP inline I or_(I a, I b) { return {_mm512_or_si512(a.v, b.v)}; }
TGT_OP inline F cvt(I a) { return {_mm512_cvtepi32_ps(a.v)}; }
TGT_OP inline F zero() { return {_mm512_setzero_ps()}; }
TGT_OP inline F splat(float f) { return {_mm512_set1_ps(f)}; }
TGT_OP inline F add(F a, F b) { return {_mm512_add_ps(a.v, b.v)}; }
TGT_OP inline F sub(F a, F b) { return {_mm512_sub_ps(a.v, b.v)}; }
TGT_OP inline F mul(F a, F b) { return {_mm512_mul_ps(a.v, b.v)}; }
TGT_OP inline F fma(F a, F b, F c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
TGT_OP inline F fnma(F a, F b, F c) { return {_mm512_fnmadd_ps(a.v, b.v, c.v)}; }  // c - a*b
TGT_OP inline F load_h(const uint16_t* p) {
  return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
}
// f = as_float(1.0f | (v & field)): with the code in the mantissa's top bits, 1 + q / 2^bits.
constexpr bool kFloatCodes = true;
TGT_OP inline F float_code(I v, I field) {
  return {_mm512_castsi512_ps(_mm512_ternarylogic_epi32(v.v, field.v, _mm512_set1_epi32(0x3F800000), 0xEA))};
}
TGT_OP inline void store(float* p, F a) { _mm512_storeu_ps(p, a.v); }
TGT_OP inline void store_n(float* p, F a, int n) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1u), a.v);
}

#include "kernels/cpu/gptq_gemm_simd.inc"

#undef TGT
#undef TGT_OP

}  // namespace

__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))) KernelStatus gptq_direct_avx512(
    const GptqPackedLinear& w, const float* xp, const float* xsum, int64_t M, int64_t t0, int64_t t1, float* y,
    int64_t ldy) {
  return direct(w, xp, xsum, M, t0, t1, y, ldy);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))) KernelStatus gptq_dequant_avx512(
    const GptqPackedLinear& w, int64_t t0, int64_t t1, int64_t k0, int64_t k1, float* out, int64_t ldo) {
  return dequant(w, t0, t1, k0, k1, out, ldo);
}

}  // namespace gptqd::kernels::cpu::detail
#endif
