// SPDX-License-Identifier: Apache-2.0
// GPTQ code packing (gptq-reference.md B.3-B.5) (quantizer layer).
// Every width, 3-bit included, is the same scheme: the codes of one column, in order, form a
// little-endian bit stream cut into 32-bit words (a 3-bit code may straddle two words).
#include "quantizer/pack.h"

#include <bit>

#include "engine/error.h"

namespace gptqd::quantizer {
namespace {

void check_bits(int bits) {
  if (bits != 2 && bits != 3 && bits != 4 && bits != 8) {
    fail(ErrorCode::invalid_argument, "pack: bits = ", bits, " (supported: 2, 3, 4, 8)");
  }
}

// Codes per packing unit along the packed dimension: one word for 2/4/8 bits, three for 3 bits.
int64_t block(int bits) { return bits == 3 ? 32 : 32 / bits; }

// Checks sizes and returns rows * cols (the element count).
size_t checked_count(const char* what, int64_t rows, int64_t cols) {
  int64_t n = 0;
  constexpr int64_t kMaxDim = int64_t{1} << 40;
  if (rows < 0 || cols < 0 || rows > kMaxDim || cols > kMaxDim || __builtin_mul_overflow(rows, cols, &n)) {
    fail(ErrorCode::invalid_argument, what, ": invalid size [", rows, ", ", cols, "]");
  }
  return static_cast<size_t>(n);
}

void check_multiple(const char* what, const char* dim_name, int64_t dim, int bits) {
  if (dim % block(bits) != 0) {
    fail(ErrorCode::invalid_argument, what, ": ", dim_name, " = ", dim, " is not a multiple of ", block(bits),
         " (", bits, "-bit packing)");
  }
}

// codes: [L, M] with L along the packed dimension -> words [L*bits/32, M]. For qweight the
// stream runs down a column (L = K, M = N); qzeros packs along a row, done by transposed strides.
std::vector<int32_t> pack_stream(std::span<const uint8_t> codes, int64_t L, int64_t M, int bits, bool along_rows,
                                 const char* what) {
  const int64_t rows = along_rows ? L : M;
  const int64_t cols = along_rows ? M : L;
  const size_t n = checked_count(what, rows, cols);
  if (codes.size() != n) {
    fail(ErrorCode::invalid_argument, what, ": got ", codes.size(), " codes for [", rows, ", ", cols, "]");
  }
  const int64_t n_words = L * bits / 32;
  std::vector<uint32_t> words(static_cast<size_t>(n_words * M), 0u);
  const uint32_t maxq = (1u << bits) - 1u;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const uint32_t q = codes[static_cast<size_t>(r * cols + c)];
      if (q > maxq) {
        fail(ErrorCode::invalid_argument, what, ": code ", q, " at [", r, ", ", c, "] does not fit in ", bits,
             " bits");
      }
      const int64_t l = along_rows ? r : c;     // position in the stream
      const int64_t m = along_rows ? c : r;     // which stream
      const int64_t bit = l * bits;
      const int64_t w = bit / 32;
      const int shift = static_cast<int>(bit % 32);
      // Word (w, m) lives at [w, m] for qweight ([K*b/32, N]) and [m, w] for qzeros ([G, N*b/32]).
      auto word = [&](int64_t wi) -> uint32_t& {
        return words[static_cast<size_t>(along_rows ? wi * M + m : m * n_words + wi)];
      };
      word(w) |= q << shift;
      if (shift + bits > 32) word(w + 1) |= q >> (32 - shift);
    }
  }
  std::vector<int32_t> out(words.size());
  for (size_t i = 0; i < words.size(); ++i) out[i] = std::bit_cast<int32_t>(words[i]);
  return out;
}

std::vector<uint8_t> unpack_stream(std::span<const int32_t> packed, int64_t L, int64_t M, int bits,
                                   bool along_rows, const char* what) {
  const int64_t rows = along_rows ? L : M;
  const int64_t cols = along_rows ? M : L;
  const size_t n = checked_count(what, rows, cols);
  const int64_t n_words = L * bits / 32;
  if (packed.size() != static_cast<size_t>(n_words * M)) {
    fail(ErrorCode::invalid_argument, what, ": got ", packed.size(), " words, expected ", n_words * M);
  }
  std::vector<uint8_t> out(n);
  const uint32_t maxq = (1u << bits) - 1u;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t l = along_rows ? r : c;
      const int64_t m = along_rows ? c : r;
      const int64_t bit = l * bits;
      const int64_t w = bit / 32;
      const int shift = static_cast<int>(bit % 32);
      auto word = [&](int64_t wi) {
        return std::bit_cast<uint32_t>(packed[static_cast<size_t>(along_rows ? wi * M + m : m * n_words + wi)]);
      };
      uint32_t q = word(w) >> shift;
      if (shift + bits > 32) q |= word(w + 1) << (32 - shift);
      out[static_cast<size_t>(r * cols + c)] = static_cast<uint8_t>(q & maxq);
    }
  }
  return out;
}

}  // namespace

std::vector<int32_t> pack_qweight(std::span<const uint8_t> codes, int64_t K, int64_t N, int bits) {
  check_bits(bits);
  checked_count("pack_qweight", K, N);
  check_multiple("pack_qweight", "K", K, bits);
  return pack_stream(codes, K, N, bits, /*along_rows=*/true, "pack_qweight");
}

std::vector<uint8_t> unpack_qweight(std::span<const int32_t> qweight, int64_t K, int64_t N, int bits) {
  check_bits(bits);
  checked_count("unpack_qweight", K, N);
  check_multiple("unpack_qweight", "K", K, bits);
  return unpack_stream(qweight, K, N, bits, /*along_rows=*/true, "unpack_qweight");
}

std::vector<int32_t> pack_qzeros(std::span<const uint8_t> zeros, int64_t G, int64_t N, int bits) {
  check_bits(bits);
  checked_count("pack_qzeros", G, N);
  check_multiple("pack_qzeros", "N", N, bits);
  return pack_stream(zeros, N, G, bits, /*along_rows=*/false, "pack_qzeros");
}

std::vector<uint8_t> unpack_qzeros(std::span<const int32_t> qzeros, int64_t G, int64_t N, int bits) {
  check_bits(bits);
  checked_count("unpack_qzeros", G, N);
  check_multiple("unpack_qzeros", "N", N, bits);
  return unpack_stream(qzeros, N, G, bits, /*along_rows=*/false, "unpack_qzeros");
}

}  // namespace gptqd::quantizer
