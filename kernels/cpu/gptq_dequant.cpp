// SPDX-License-Identifier: Apache-2.0
// GPTQ checkpoint dequantization to fp32 (kernels layer): how GPTQ models load when the engine is
// asked for dense fp32 weights (LoadOptions::keep_f16 = false; the quantizer's tests), and an
// exact check of gptq_unpack_rows.
#include <cstddef>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/gptq_gemm_internal.h"
#include "kernels/cpu/half.h"

namespace gptqd::kernels::cpu {
using detail::packed_code;

KernelStatus dequantize_gptq(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales,
                             const int32_t* g_idx, int64_t K, int64_t N, int64_t n_groups, int bits, int zero_offset,
                             float* out) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) return KernelStatus::unsupported;
  const int64_t block = bits == 3 ? 32 : 32 / bits;
  if (K <= 0 || N <= 0 || n_groups <= 0 || K % block != 0 || N % block != 0) return KernelStatus::bad_shape;
  for (int64_t k = 0; k < K; ++k) {
    if (g_idx[k] < 0 || g_idx[k] >= n_groups) return KernelStatus::bad_shape;
  }
  const int64_t zero_cols = N * bits / 32;
  // Zeros unpacked once per group: [n_groups, N].
  std::vector<int32_t> zeros(static_cast<size_t>(n_groups * N));
  for (int64_t g = 0; g < n_groups; ++g) {
    for (int64_t n = 0; n < N; ++n) {
      zeros[static_cast<size_t>(g * N + n)] =
          static_cast<int32_t>(packed_code(qzeros + g * zero_cols, 1, n, bits)) + zero_offset;
    }
  }
  for (int64_t n = 0; n < N; ++n) {
    float* row = out + n * K;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t g = g_idx[k];
      const int32_t q = static_cast<int32_t>(packed_code(qweight + n, N, k, bits));
      row[k] = f16_to_f32(scales[g * N + n]) * static_cast<float>(q - zeros[static_cast<size_t>(g * N + n)]);
    }
  }
  return KernelStatus::ok;
}

}  // namespace gptqd::kernels::cpu
