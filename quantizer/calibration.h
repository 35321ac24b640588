// SPDX-License-Identifier: Apache-2.0
// Calibration data for GPTQ (gptq-reference.md A.11): a text tokenized once, then random windows
// of seqlen tokens drawn with a seeded generator of our own (so a seed means the same windows on
// every machine and after a restart) (quantizer layer).
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "engine/tokenizer.h"

namespace gptqd::quantizer {

// The text encoded once, with the model's BOS at the very start when it wants one (as the
// reference tokenizes its joined corpus).
std::vector<int32_t> tokenize_corpus(const engine::Tokenizer& tokenizer, std::string_view text);

// n_samples windows [i, i + seqlen) with i uniform in [0, tokens.size() - seqlen - 1] (the
// reference's randint bounds), from a SplitMix64 stream seeded with `seed`. Error(invalid_argument)
// when n_samples < 1, seqlen < 2, or the text is too short (fewer than seqlen + 1 tokens) — never
// a silent shrink.
std::vector<std::vector<int32_t>> sample_windows(std::span<const int32_t> tokens, int64_t n_samples, int64_t seqlen,
                                                 uint64_t seed);

}  // namespace gptqd::quantizer
