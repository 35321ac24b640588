// SPDX-License-Identifier: Apache-2.0
// Sampler and StopMatcher: penalties -> top-k -> top-p -> min-p -> temperature -> seeded draw, in
// llama.cpp's default order; stop strings held back across pieces (engine layer).
#include "engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <string_view>
#include <utility>

#include "engine/error.h"

namespace gptqd::engine {
namespace {

constexpr size_t kMaxStops = 16;
constexpr size_t kMaxStopBytes = 256;

using Candidate = std::pair<float, int32_t>;  // (logit, id)

// A strict total order: higher logit first, then lower id. With a total order every selection
// algorithm (heap, nth_element, sort) keeps the same set in the same order, so draws do not
// depend on how the candidates were found.
bool better(const Candidate& a, const Candidate& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

// NaN never compares, so it would break the order above; a NaN logit can never be picked.
float sanitized(float logit) { return std::isnan(logit) ? -std::numeric_limits<float>::infinity() : logit; }

void check_range(const char* name, double value, double lo, bool lo_open, double hi, bool hi_open) {
  const bool ok = std::isfinite(value) && (lo_open ? value > lo : value >= lo) && (hi_open ? value < hi : value <= hi);
  if (ok) return;
  std::string range = cat(lo_open ? "(" : "[", lo, ", ");
  range += std::isinf(hi) ? std::string("inf)") : cat(hi, hi_open ? ")" : "]");
  fail(ErrorCode::invalid_argument, "sampling option ", name, " = ", value, " is out of range: must be finite and in ",
       range);
}

// Greedy: the best logit, ties to the lowest id.
int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  float best_logit = sanitized(logits[0]);
  for (size_t i = 1; i < logits.size(); ++i) {
    const float l = sanitized(logits[i]);
    if (l > best_logit) {  // strict: ties keep the lowest id
      best_logit = l;
      best = static_cast<int32_t>(i);
    }
  }
  return best;
}

}  // namespace

void SamplingOptions::validate() const {
  constexpr double inf = std::numeric_limits<double>::infinity();
  check_range("temperature", temperature, 0.0, false, inf, true);
  if (top_k < 0) {
    fail(ErrorCode::invalid_argument, "sampling option top_k = ", top_k, " is out of range: must be >= 0 (0: off)");
  }
  check_range("top_p", top_p, 0.0, true, 1.0, false);
  check_range("min_p", min_p, 0.0, false, 1.0, false);
  check_range("repeat_penalty", repeat_penalty, 0.0, true, inf, true);
  if (repeat_last_n < -1) {
    fail(ErrorCode::invalid_argument, "sampling option repeat_last_n = ", repeat_last_n,
         " is out of range: must be >= -1 (-1: all tokens, 0: off)");
  }
  check_range("presence_penalty", presence_penalty, -2.0, false, 2.0, false);
  check_range("frequency_penalty", frequency_penalty, -2.0, false, 2.0, false);
}

Sampler::Sampler(const SamplingOptions& options, int32_t vocab_size)
    : options_(options), vocab_size_(vocab_size), rng_(options.seed) {
  options_.validate();
  if (vocab_size <= 0) fail(ErrorCode::invalid_argument, "sampler vocab_size must be > 0, got ", vocab_size);
  candidates_.reserve(static_cast<size_t>(vocab_size));
  if (options_.temperature > 0.0) weights_.assign(static_cast<size_t>(vocab_size), 0.0f);
  if (penalties_active()) counts_.assign(static_cast<size_t>(vocab_size), 0);
}

bool Sampler::penalties_active() const {
  return options_.repeat_last_n != 0 &&
         (options_.repeat_penalty != 1.0 || options_.frequency_penalty != 0.0 || options_.presence_penalty != 0.0);
}

void Sampler::apply_penalties(std::span<float> logits, std::span<const int32_t> history) {
  if (!penalties_active() || history.empty()) return;
  size_t window = history.size();
  if (options_.repeat_last_n > 0) window = std::min(window, static_cast<size_t>(options_.repeat_last_n));
  const std::span<const int32_t> recent = history.last(window);
  for (int32_t t : recent) {
    if (t < 0 || t >= vocab_size_) {
      fail(ErrorCode::internal, "sampler history holds token ", t, " outside the vocabulary [0, ", vocab_size_, ")");
    }
  }
  for (int32_t t : recent) ++counts_[static_cast<size_t>(t)];
  const auto repeat = static_cast<float>(options_.repeat_penalty);
  const auto frequency = static_cast<float>(options_.frequency_penalty);
  const auto presence = static_cast<float>(options_.presence_penalty);
  for (int32_t t : recent) {
    uint32_t& count = counts_[static_cast<size_t>(t)];
    if (count == 0) continue;  // already penalized: once per distinct token
    float& logit = logits[static_cast<size_t>(t)];
    logit = logit > 0.0f ? logit / repeat : logit * repeat;
    logit -= static_cast<float>(count) * frequency + presence;
    count = 0;
  }
}

void Sampler::select_top_k(std::span<const float> logits, size_t k) {
  // A heap of the k best seen so far whose front is the worst of them: one compare per logit,
  // and no full sort of a 150k vocabulary.
  candidates_.clear();
  for (size_t i = 0; i < logits.size(); ++i) {
    const Candidate c{sanitized(logits[i]), static_cast<int32_t>(i)};
    if (candidates_.size() < k) {
      candidates_.push_back(c);
      std::push_heap(candidates_.begin(), candidates_.end(), better);
    } else if (better(c, candidates_.front())) {
      std::pop_heap(candidates_.begin(), candidates_.end(), better);
      candidates_.back() = c;
      std::push_heap(candidates_.begin(), candidates_.end(), better);
    }
  }
  std::sort_heap(candidates_.begin(), candidates_.end(), better);  // best first
}

size_t Sampler::top_p_cut(double target) {
  // The smallest best-first prefix whose weight reaches `target`.
  auto weight = [&](const Candidate& c) { return static_cast<double>(weights_[static_cast<size_t>(c.second)]); };
  auto walk = [&](size_t from, size_t to, double acc) {
    for (size_t i = from; i < to; ++i) {
      acc += weight(candidates_[i]);
      if (acc >= target) return i + 1;
    }
    return to;
  };
  if (candidates_sorted_) return walk(0, candidates_.size(), 0.0);

  // Unsorted (top_k off): never sort the vocabulary. Real distributions are peaked, so first try
  // the few tokens above a weight threshold: they are a best-first prefix (weight is monotone in
  // the logit), and when they already reach the target the answer lies among them.
  auto at = [&](size_t i) { return candidates_.begin() + static_cast<std::ptrdiff_t>(i); };
  for (const float threshold : {1e-2f, 1e-4f}) {
    double mass = 0.0;
    size_t count = 0;
    for (const Candidate& c : candidates_) {
      const float w = weights_[static_cast<size_t>(c.second)];
      if (w >= threshold) {
        mass += static_cast<double>(w);
        ++count;
      }
    }
    if (mass < target) continue;
    if (count > candidates_.size() / 8) break;  // a flat distribution: sorting would cost more
    std::partition(candidates_.begin(), candidates_.end(),
                   [&](const Candidate& c) { return weights_[static_cast<size_t>(c.second)] >= threshold; });
    std::sort(candidates_.begin(), at(count), better);
    return walk(0, count, 0.0);
  }
  // Flat distributions: select by mass. Invariant: [0, lo) holds the lo best candidates, weighing
  // acc < target; the answer lies in (lo, hi].
  size_t lo = 0;
  size_t hi = candidates_.size();
  double acc = 0.0;
  while (hi - lo > 64) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(at(lo), at(mid), at(hi), better);  // [lo, mid) = the best of [lo, hi)
    double left = 0.0;
    for (size_t i = lo; i < mid; ++i) left += weight(candidates_[i]);
    if (acc + left >= target) {
      hi = mid;
    } else {
      acc += left;
      lo = mid;
    }
  }
  std::sort(at(lo), at(hi), better);  // [lo, hi) holds exactly ranks lo..hi-1
  return walk(lo, hi, acc);
}

int32_t Sampler::sample(std::span<float> logits, std::span<const int32_t> history) {
  if (logits.size() != static_cast<size_t>(vocab_size_)) {
    fail(ErrorCode::internal, "sampler got ", logits.size(), " logits for a vocabulary of ", vocab_size_);
  }
  apply_penalties(logits, history);
  if (options_.temperature == 0.0) return argmax(logits);

  // Candidates: top_k's set sorted best first, or the whole vocabulary unsorted.
  const size_t n_vocab = logits.size();
  if (options_.top_k > 0 && static_cast<size_t>(options_.top_k) < n_vocab) {
    select_top_k(logits, static_cast<size_t>(options_.top_k));
    candidates_sorted_ = true;
  } else {
    candidates_.clear();
    for (size_t i = 0; i < n_vocab; ++i) candidates_.emplace_back(sanitized(logits[i]), static_cast<int32_t>(i));
    candidates_sorted_ = false;
  }

  float max_logit = -std::numeric_limits<float>::infinity();
  for (const Candidate& c : candidates_) max_logit = std::max(max_logit, c.first);
  if (std::isinf(max_logit)) return argmax(logits);  // every logit is -inf (or NaN): nothing to weigh

  // Weights at temperature 1, relative to the best (which weighs 1). top_p's probabilities are
  // over the top_k set, so its normalizer is taken before min_p removes anything.
  double sum = 0.0;
  for (const Candidate& c : candidates_) {
    const float w = std::exp(c.first - max_logit);
    weights_[static_cast<size_t>(c.second)] = w;
    sum += static_cast<double>(w);
  }
  // min_p keeps w >= min_p, a best-first prefix like top_p's: filtering first leaves the same
  // intersection and shrinks what top_p has to order.
  if (options_.min_p > 0.0) {
    const auto min_p = static_cast<float>(options_.min_p);
    std::erase_if(candidates_, [&](const Candidate& c) { return weights_[static_cast<size_t>(c.second)] < min_p; });
  }
  if (options_.top_p < 1.0) candidates_.resize(top_p_cut(options_.top_p * sum));

  // Temperature, then a draw from the renormalized distribution. The uniform variate is built
  // from the raw 64-bit output so the draw does not depend on the standard library's distributions.
  // Divided in double: a tiny temperature must send the others to 0, never the best to NaN.
  const double temperature = options_.temperature;
  double total = 0.0;
  for (Candidate& c : candidates_) {
    c.first = temperature == 1.0
                  ? weights_[static_cast<size_t>(c.second)]
                  : static_cast<float>(std::exp((static_cast<double>(c.first) - max_logit) / temperature));
    total += static_cast<double>(c.first);
  }
  const double u = static_cast<double>(rng_() >> 11) * 0x1.0p-53;  // [0, 1)
  const double r = u * total;
  double cumulative = 0.0;
  for (const Candidate& c : candidates_) {
    cumulative += static_cast<double>(c.first);
    if (r < cumulative) return c.second;
  }
  // Rounding left r at the very end: the last candidate with any weight.
  for (auto it = candidates_.rbegin(); it != candidates_.rend(); ++it) {
    if (it->first > 0.0f) return it->second;
  }
  return candidates_.front().second;
}

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  if (stops_.size() > kMaxStops) {
    fail(ErrorCode::invalid_argument, "too many stop strings: ", stops_.size(), " (at most ", kMaxStops, ")");
  }
  for (size_t i = 0; i < stops_.size(); ++i) {
    if (stops_[i].empty()) fail(ErrorCode::invalid_argument, "stop string ", i, " is empty");
    if (stops_[i].size() > kMaxStopBytes) {
      fail(ErrorCode::invalid_argument, "stop string ", i, " is ", stops_[i].size(), " bytes (at most ", kMaxStopBytes,
           ")");
    }
  }
}

std::string StopMatcher::push(std::string_view text) {
  if (stopped_) return {};
  held_.append(text);

  // The earliest complete match wins; what precedes it is the last text emitted.
  size_t match = std::string::npos;
  for (const std::string& stop : stops_) match = std::min(match, held_.find(stop));
  if (match != std::string::npos) {
    std::string out = held_.substr(0, match);
    held_.clear();
    stopped_ = true;
    return out;
  }

  // Hold back the longest suffix that is a proper prefix of some stop; emit the rest.
  size_t hold = 0;
  for (const std::string& stop : stops_) {
    const size_t longest = std::min(stop.size() - 1, held_.size());
    for (size_t len = longest; len > hold; --len) {
      if (std::string_view(held_).substr(held_.size() - len) == std::string_view(stop).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  std::string out = held_.substr(0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string out = std::move(held_);
  held_.clear();
  return stopped_ ? std::string() : out;
}

}  // namespace gptqd::engine
