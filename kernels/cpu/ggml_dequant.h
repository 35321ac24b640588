// SPDX-License-Identifier: Apache-2.0
// GGML tensor types and their dequantization to fp32 (kernels layer): plain pointers in, status out.
#pragma once

#include <cstdint>

#include "kernels/status.h"

namespace gptqd::kernels::cpu {

// Values are the on-disk ggml_type numbers used by GGUF.
enum class GgmlType : uint32_t {
  F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q5_0 = 6, Q5_1 = 7, Q8_0 = 8, Q8_1 = 9,
  Q2_K = 10, Q3_K = 11, Q4_K = 12, Q5_K = 13, Q6_K = 14, Q8_K = 15,
  IQ2_XXS = 16, IQ2_XS = 17, IQ3_XXS = 18, IQ1_S = 19, IQ4_NL = 20, IQ3_S = 21, IQ2_S = 22,
  IQ4_XS = 23, I8 = 24, I16 = 25, I32 = 26, I64 = 27, F64 = 28, IQ1_M = 29, BF16 = 30,
  TQ1_0 = 34, TQ2_0 = 35,
};

struct GgmlTypeTraits {
  const char* name;          // "Q4_K"
  uint32_t block_elems;      // elements per block (1 for plain types)
  uint32_t block_bytes;      // bytes per block
  bool can_dequantize;       // dequantize_ggml supports it
};

// Traits of a raw type number, or nullptr when gptqd does not know the type at all.
const GgmlTypeTraits* ggml_type_traits(uint32_t type);

// Dequantizes `n_elements` values of `type` from `src` (n_elements / block_elems whole blocks)
// into `dst`. bad_shape when n_elements is not a whole number of blocks; unsupported when the
// type cannot be dequantized.
KernelStatus dequantize_ggml(uint32_t type, const void* src, int64_t n_elements, float* dst);

}  // namespace gptqd::kernels::cpu
