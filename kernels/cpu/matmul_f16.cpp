// SPDX-License-Identifier: Apache-2.0
// fp16-weight GEMV and fp16 -> fp32 row conversion (kernels layer). Decode is bound by reading
// the weights, so keeping fp16 weights fp16 halves its cost; prefill converts row tiles and
// hands them to BLAS (in the backend).
#include <immintrin.h>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/half.h"

namespace gptqd::kernels::cpu {
namespace {

__attribute__((target("avx2,fma,f16c"))) void gemv_f16_avx2(const uint16_t* w, const float* x, int64_t cols,
                                                            int64_t r_begin, int64_t r_end, float* y) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    const uint16_t* row = w + r * cols;
    // Four independent accumulators hide the FMA latency.
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
           acc3 = _mm256_setzero_ps();
    int64_t k = 0;
    for (; k + 32 <= cols; k += 32) {
      acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))),
                             _mm256_loadu_ps(x + k), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 8))),
                             _mm256_loadu_ps(x + k + 8), acc1);
      acc2 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 16))),
                             _mm256_loadu_ps(x + k + 16), acc2);
      acc3 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k + 24))),
                             _mm256_loadu_ps(x + k + 24), acc3);
    }
    for (; k + 8 <= cols; k += 8) {
      acc0 = _mm256_fmadd_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))),
                             _mm256_loadu_ps(x + k), acc0);
    }
    const __m256 acc = _mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3));
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    float sum = _mm_cvtss_f32(s);
    for (; k < cols; ++k) sum += f16_to_f32(row[k]) * x[k];
    y[r] = sum;
  }
}

__attribute__((target("avx2,f16c"))) void convert_f16_rows_avx2(const uint16_t* w, int64_t cols, int64_t r_begin,
                                                                int64_t r_end, float* out) {
  for (int64_t r = r_begin; r < r_end; ++r) {
    const uint16_t* row = w + r * cols;
    float* o = out + (r - r_begin) * cols;
    int64_t k = 0;
    for (; k + 8 <= cols; k += 8) {
      _mm256_storeu_ps(o + k, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))));
    }
    for (; k < cols; ++k) o[k] = f16_to_f32(row[k]);
  }
}

bool detect_f16c() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

}  // namespace

bool have_f16c_path() {
  static const bool yes = detect_f16c();
  return yes;
}

KernelStatus gemv_f16_reference(const uint16_t* w, const float* x, int64_t cols, int64_t r_begin, int64_t r_end,
                                float* y) {
  if (cols <= 0 || r_begin < 0 || r_end < r_begin) return KernelStatus::bad_shape;
  for (int64_t r = r_begin; r < r_end; ++r) {
    const uint16_t* row = w + r * cols;
    float sum = 0.0f;
    for (int64_t k = 0; k < cols; ++k) sum += f16_to_f32(row[k]) * x[k];
    y[r] = sum;
  }
  return KernelStatus::ok;
}

KernelStatus gemv_f16(const uint16_t* w, const float* x, int64_t cols, int64_t r_begin, int64_t r_end, float* y) {
  if (cols <= 0 || r_begin < 0 || r_end < r_begin) return KernelStatus::bad_shape;
  if (!have_f16c_path()) return gemv_f16_reference(w, x, cols, r_begin, r_end, y);
  gemv_f16_avx2(w, x, cols, r_begin, r_end, y);
  return KernelStatus::ok;
}

KernelStatus convert_f16_rows(const uint16_t* w, int64_t cols, int64_t r_begin, int64_t r_end, float* out) {
  if (cols <= 0 || r_begin < 0 || r_end < r_begin) return KernelStatus::bad_shape;
  if (have_f16c_path()) {
    convert_f16_rows_avx2(w, cols, r_begin, r_end, out);
    return KernelStatus::ok;
  }
  for (int64_t r = r_begin; r < r_end; ++r) {
    for (int64_t k = 0; k < cols; ++k) out[(r - r_begin) * cols + k] = f16_to_f32(w[r * cols + k]);
  }
  return KernelStatus::ok;
}

}  // namespace gptqd::kernels::cpu
