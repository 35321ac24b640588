// SPDX-License-Identifier: Apache-2.0
// Sampler: turns a logits row into the next token — penalties, top-k, top-p, min-p,
// temperature, seeded draw — in llama.cpp's default order (engine layer).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace gptqd::engine {

// Defaults are Ollama's. Every field is range-checked by validate().
struct SamplingOptions {
  double temperature = 0.8;        // 0: greedy (argmax after penalties)
  int top_k = 40;                  // <= 0: off
  double top_p = 0.9;              // (0, 1]; 1: off
  double min_p = 0.0;              // [0, 1]; 0: off
  double repeat_penalty = 1.1;     // > 0; 1: off
  int repeat_last_n = 64;          // tokens of history the penalties look at; 0: off, -1: all
  double presence_penalty = 0.0;   // subtracted once from every token seen in the window
  double frequency_penalty = 0.0;  // subtracted per occurrence in the window
  uint64_t seed = 0;               // same seed + same request = same tokens

  // Error(invalid_argument) naming the option and its allowed range (NaN and inf rejected).
  void validate() const;
};

class Sampler {
 public:
  Sampler(const SamplingOptions& options, int32_t vocab_size);

  // Picks the next token. `logits` [vocab_size] is modified in place (scratch); `history` is
  // every token so far (prompt and generated), the penalties use its last repeat_last_n.
  int32_t sample(std::span<float> logits, std::span<const int32_t> history);

 private:
  SamplingOptions options_;
  int32_t vocab_size_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // scratch: (logit or prob, id)
  bool candidates_sorted_ = false;                     // candidates_ is best first
  std::vector<uint32_t> counts_;  // scratch [vocab_size]: occurrences in the penalty window; all 0 between calls
  std::vector<float> weights_;    // scratch [vocab_size]: exp(logit - max) of this call's candidates, by id

  bool penalties_active() const;
  void apply_penalties(std::span<float> logits, std::span<const int32_t> history);
  void select_top_k(std::span<const float> logits, size_t k);  // candidates_ = the k best, best first
  size_t top_p_cut(double target);  // length of the best-first prefix weighing >= target; orders as needed
};

// Holds back generated text that could be the start of a stop string, so a stop string split
// across tokens is matched and never emitted.
class StopMatcher {
 public:
  explicit StopMatcher(std::vector<std::string> stops);
  // Appends `text`; returns what may be emitted now. After a match, stopped() is true and the
  // returned text ends right before the stop string.
  std::string push(std::string_view text);
  // End of generation without a match: whatever is held back.
  std::string flush();
  bool stopped() const { return stopped_; }

 private:
  std::vector<std::string> stops_;
  std::string held_;
  bool stopped_ = false;
};

}  // namespace gptqd::engine
