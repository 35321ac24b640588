// SPDX-License-Identifier: Apache-2.0
// Integer-code packing in the standard GPTQ layout (gptq-reference.md B.3-B.5) (quantizer layer).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace gptqd::quantizer {

// codes: [K, N] row-major unsigned codes < 2^bits (q[k, n]). Returns qweight [K*bits/32, N]
// (int32 view of uint32 words), first feature in the least-significant bits; 3-bit uses the
// 32-codes-in-3-words scheme. K must be a multiple of 32/bits (32 for 3-bit).
std::vector<int32_t> pack_qweight(std::span<const uint8_t> codes, int64_t K, int64_t N, int bits);
std::vector<uint8_t> unpack_qweight(std::span<const int32_t> qweight, int64_t K, int64_t N, int bits);

// zeros: [G, N] stored zero codes (already minus one for v1). Returns qzeros [G, N*bits/32].
std::vector<int32_t> pack_qzeros(std::span<const uint8_t> zeros, int64_t G, int64_t N, int bits);
std::vector<uint8_t> unpack_qzeros(std::span<const int32_t> qzeros, int64_t G, int64_t N, int bits);

}  // namespace gptqd::quantizer
