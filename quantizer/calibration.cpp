// SPDX-License-Identifier: Apache-2.0
// Calibration windows (quantizer layer).
#include "quantizer/calibration.h"

#include <cstdint>

#include "engine/error.h"

namespace gptqd::quantizer {
namespace {

// SplitMix64 (Steele, Lea, Flood 2014): tiny, fully specified, identical everywhere — unlike
// std::uniform_int_distribution, whose mapping differs between standard libraries.
uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Uniform in [0, n) without modulo bias: draws above the last whole multiple of n are redrawn.
uint64_t uniform_below(uint64_t& state, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  for (;;) {
    const uint64_t x = splitmix64(state);
    if (x < limit) return x % n;
  }
}

}  // namespace

std::vector<int32_t> tokenize_corpus(const engine::Tokenizer& tokenizer, std::string_view text) {
  std::vector<int32_t> ids = tokenizer.encode(text, /*parse_special=*/false);
  if (tokenizer.add_bos() && tokenizer.bos_id() >= 0) ids.insert(ids.begin(), tokenizer.bos_id());
  return ids;
}

std::vector<std::vector<int32_t>> sample_windows(std::span<const int32_t> tokens, int64_t n_samples, int64_t seqlen,
                                                 uint64_t seed) {
  if (n_samples < 1) fail(ErrorCode::invalid_argument, "samples must be at least 1 (got ", n_samples, ")");
  if (seqlen < 2) fail(ErrorCode::invalid_argument, "seqlen must be at least 2 (got ", seqlen, ")");
  const int64_t L = static_cast<int64_t>(tokens.size());
  if (L < seqlen + 1) {
    fail(ErrorCode::invalid_argument, "the calibration text has ", L, " tokens; windows of seqlen ", seqlen,
         " need at least ", seqlen + 1, " — give more text or a smaller --seqlen");
  }
  uint64_t state = seed;
  std::vector<std::vector<int32_t>> out;
  out.reserve(static_cast<size_t>(n_samples));
  for (int64_t s = 0; s < n_samples; ++s) {
    const auto i = static_cast<int64_t>(uniform_below(state, static_cast<uint64_t>(L - seqlen)));
    out.emplace_back(tokens.begin() + i, tokens.begin() + i + seqlen);
  }
  return out;
}

}  // namespace gptqd::quantizer
