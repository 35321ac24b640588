// SPDX-License-Identifier: Apache-2.0
// Perplexity, GPTQ-paper protocol (engine layer).
#include "engine/perplexity.h"

#include <algorithm>
#include <cmath>

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/memory_plan.h"
#include "engine/session.h"

namespace gptqd::engine {

namespace {
bool valid_utf8(std::string_view s, size_t* bad_at) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t len = c < 0x80 ? 1 : (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3 : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
    if (len == 0 || i + len > s.size()) {
      *bad_at = i;
      return false;
    }
    for (size_t k = 1; k < len; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) {
        *bad_at = i;
        return false;
      }
    }
    i += len;
  }
  return true;
}
}  // namespace

std::vector<std::string> dataset_rows(std::string_view name, std::string_view content) {
  size_t bad = 0;
  if (!valid_utf8(content, &bad)) fail(ErrorCode::invalid_argument, name, ": not UTF-8 text (invalid byte at offset ", bad, ")");
  std::vector<std::string> rows;
  if (name.ends_with(".jsonl")) {
    size_t start = 0, line_no = 0;
    while (start < content.size()) {
      size_t nl = content.find('\n', start);
      std::string_view line = content.substr(start, nl == std::string_view::npos ? std::string_view::npos : nl - start);
      ++line_no;
      start = nl == std::string_view::npos ? content.size() : nl + 1;
      if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;
      nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (!j.is_object() || !j.contains("text") || !j["text"].is_string()) {
        fail(ErrorCode::invalid_argument, name, " line ", line_no, ": expected a JSON object with a string \"text\" field");
      }
      rows.push_back(j["text"].get<std::string>());
    }
    return rows;
  }
  size_t start = 0;
  while (start < content.size()) {
    size_t nl = content.find('\n', start);
    const bool has_nl = nl != std::string_view::npos;
    std::string_view line = content.substr(start, has_nl ? nl - start : std::string_view::npos);
    const bool blank = line.find_first_not_of(" \t\r\f\v") == std::string_view::npos;
    rows.push_back(blank ? std::string() : std::string(line) + "\n");
    if (!has_nl) break;
    start = nl + 1;
  }
  return rows;
}

std::string join_rows(const std::vector<std::string>& rows) {
  std::string out;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i) out += "\n\n";
    out += rows[i];
  }
  return out;
}

std::string join_rows_for_perplexity(std::string_view text) {
  return join_rows(dataset_rows("text", text));
}

namespace {
int64_t count_windows(int64_t n_text, int64_t seqlen, int64_t max_windows) {
  if (seqlen < 2) fail(ErrorCode::invalid_argument, "seqlen must be at least 2, not ", seqlen);
  int64_t n = n_text / seqlen;
  if (n == 0) {
    fail(ErrorCode::invalid_argument, "the text has ", n_text, " tokens, fewer than one window of seqlen ", seqlen,
         "; use a longer text or a smaller seqlen");
  }
  return max_windows > 0 ? std::min(n, max_windows) : n;
}
}  // namespace

PerplexityEvaluator::PerplexityEvaluator(const LlamaModel& model, std::vector<int32_t> tokens, int64_t seqlen,
                                         int64_t max_windows)
    : model_(model),
      tokens_(std::move(tokens)),
      seqlen_(seqlen),
      n_windows_(count_windows(static_cast<int64_t>(tokens_.size()), seqlen, max_windows)),
      session_(model, seqlen) {
  result_.seqlen = seqlen;
  result_.n_text_tokens = static_cast<int64_t>(tokens_.size());
}

double PerplexityEvaluator::perplexity_so_far() const {
  return windows_done() == 0 ? 0.0 : std::exp(sum_nll_ / static_cast<double>(windows_done()));
}

bool PerplexityEvaluator::step() {
  const int64_t w = windows_done();
  if (w >= n_windows_) return false;
  const int64_t V = model_.config().vocab_size;
  session_.truncate(0);
  auto window = std::span<const int32_t>(tokens_).subspan(static_cast<size_t>(w * seqlen_), static_cast<size_t>(seqlen_));
  // Fed in chunks so the all-positions logits stay small; position t predicts token t+1.
  constexpr int64_t kChunk = kForwardChunkTokens;
  double nll = 0;
  for (int64_t begin = 0; begin < seqlen_; begin += kChunk) {
    const int64_t len = std::min(kChunk, seqlen_ - begin);
    model_.forward(session_, window.subspan(static_cast<size_t>(begin), static_cast<size_t>(len)), true, logits_);
    for (int64_t i = 0; i < len && begin + i + 1 < seqlen_; ++i) {
      const float* row = logits_.data() + i * V;
      double max_logit = row[0];
      for (int64_t v = 1; v < V; ++v) max_logit = std::max(max_logit, static_cast<double>(row[v]));
      double sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += std::exp(static_cast<double>(row[v]) - max_logit);
      const int32_t target = window[static_cast<size_t>(begin + i + 1)];
      nll += (max_logit + std::log(sum)) - static_cast<double>(row[target]);
    }
  }
  nll /= static_cast<double>(seqlen_ - 1);
  result_.window_nll.push_back(nll);
  sum_nll_ += nll;
  if (windows_done() == n_windows_) {
    result_.n_windows = n_windows_;
    result_.n_tokens = n_windows_ * seqlen_;
    result_.perplexity = perplexity_so_far();
    return false;
  }
  return true;
}

PerplexityResult evaluate_perplexity(const LlamaModel& model, std::span<const int32_t> tokens, int64_t seqlen,
                                     int64_t max_windows, const PerplexityProgress& progress) {
  PerplexityEvaluator ev(model, std::vector<int32_t>(tokens.begin(), tokens.end()), seqlen, max_windows);
  bool more = true;
  while (more) {
    more = ev.step();
    if (progress && !progress(ev.windows_done(), ev.windows_total(), ev.perplexity_so_far())) {
      fail(ErrorCode::cancelled, "evaluation cancelled");
    }
  }
  return ev.result();
}

}  // namespace gptqd::engine
