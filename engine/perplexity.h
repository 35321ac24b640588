// SPDX-License-Identifier: Apache-2.0
// Perplexity with the GPTQ paper's protocol (gptq-reference.md A.12): the text tokenized once,
// non-overlapping windows of seqlen tokens evaluated independently, mean next-token NLL per
// window, ppl = exp(mean over windows) (engine layer).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/llama_model.h"

namespace gptqd::engine {

// The evaluation string of a line-based corpus, as the HF wikitext loader builds it: each line
// is a row with its trailing "\n" (blank or whitespace-only lines become ""), rows joined with
// "\n\n".
std::string join_rows_for_perplexity(std::string_view text);

// Rows of a dataset file: JSONL (one object per line with a string "text") when `name` ends in
// .jsonl, else the lines of a plain text file (as join_rows_for_perplexity reads them).
// Error(invalid_argument) naming the file and line for bad JSONL or invalid UTF-8.
std::vector<std::string> dataset_rows(std::string_view name, std::string_view content);
// rows joined with "\n\n" (the GPTQ paper's evaluation string).
std::string join_rows(const std::vector<std::string>& rows);

struct PerplexityResult {
  double perplexity = 0;
  int64_t n_windows = 0;
  int64_t seqlen = 0;
  int64_t n_tokens = 0;                // n_windows * seqlen tokens run through the model
  int64_t n_text_tokens = 0;           // tokens in the whole text (before windowing)
  std::vector<double> window_nll;      // mean NLL of each window (seqlen - 1 predictions)
};

// Step-wise evaluation (one window per step), so a scheduler can interleave it with other work.
class PerplexityEvaluator {
 public:
  // Error(invalid_argument) when fewer than seqlen tokens exist or seqlen < 2.
  PerplexityEvaluator(const LlamaModel& model, std::vector<int32_t> tokens, int64_t seqlen, int64_t max_windows);
  // Evaluates the next window; false once all are done.
  bool step();
  int64_t windows_done() const { return static_cast<int64_t>(result_.window_nll.size()); }
  int64_t windows_total() const { return n_windows_; }
  double perplexity_so_far() const;
  // The final figures (valid after step() returned false).
  const PerplexityResult& result() const { return result_; }

 private:
  const LlamaModel& model_;
  std::vector<int32_t> tokens_;
  int64_t seqlen_;
  int64_t n_windows_;
  Session session_;
  std::vector<float> logits_;
  double sum_nll_ = 0;
  PerplexityResult result_;
};

// Called after each window with (windows done, windows total, perplexity so far); false cancels
// (Error(cancelled)).
using PerplexityProgress = std::function<bool(int64_t done, int64_t total, double ppl_so_far)>;

// Evaluates `tokens` (already including a BOS at the very start if the model wants one).
// max_windows <= 0: all windows. Error(invalid_argument) when fewer than seqlen tokens exist.
PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens, int64_t seqlen,
                                     int64_t max_windows, const PerplexityProgress& progress = nullptr);

}  // namespace gptqd::engine
