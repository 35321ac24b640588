// SPDX-License-Identifier: Apache-2.0
// Sampler (greedy, penalties, top-k/top-p/min-p survivors, temperature, seeded draws against the
// expected distribution, option validation) and StopMatcher (tests).
#include "engine/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "engine/error.h"

namespace gptqd::engine {
namespace {

// Options with every filter and penalty off, at temperature 1.
SamplingOptions plain() {
  SamplingOptions o;
  o.temperature = 1.0;
  o.top_k = 0;
  o.top_p = 1.0;
  o.min_p = 0.0;
  o.repeat_penalty = 1.0;
  o.repeat_last_n = 64;
  o.presence_penalty = 0.0;
  o.frequency_penalty = 0.0;
  o.seed = 1234;
  return o;
}

std::vector<float> log_probs(const std::vector<double>& probs) {
  std::vector<float> out;
  for (double p : probs) out.push_back(static_cast<float>(std::log(p)));
  return out;
}

int32_t sample_once(const SamplingOptions& o, std::vector<float> logits, const std::vector<int32_t>& history = {}) {
  Sampler s(o, static_cast<int32_t>(logits.size()));
  return s.sample(logits, history);
}

// Token counts over n draws from one sampler (the logits are copied fresh for every draw).
std::map<int32_t, int> draw_counts(const SamplingOptions& o, const std::vector<float>& logits, int n) {
  Sampler s(o, static_cast<int32_t>(logits.size()));
  std::map<int32_t, int> counts;
  for (int i = 0; i < n; ++i) {
    std::vector<float> scratch = logits;
    ++counts[s.sample(scratch, {})];
  }
  return counts;
}

std::set<int32_t> survivors(const SamplingOptions& o, const std::vector<float>& logits, int n = 4000) {
  std::set<int32_t> out;
  for (const auto& [id, count] : draw_counts(o, logits, n)) out.insert(id);
  return out;
}

// Pearson's chi-square of observed counts against expected probabilities.
double chi_square(const std::map<int32_t, int>& counts, const std::vector<double>& expected, int n) {
  double chi2 = 0.0;
  for (size_t i = 0; i < expected.size(); ++i) {
    const double e = expected[i] * n;
    const auto it = counts.find(static_cast<int32_t>(i));
    const double obs = it == counts.end() ? 0.0 : it->second;
    if (e == 0.0) {
      EXPECT_EQ(obs, 0.0) << "token " << i << " has probability 0 but was drawn";
      continue;
    }
    chi2 += (obs - e) * (obs - e) / e;
  }
  return chi2;
}

std::vector<double> softmax(const std::vector<double>& logits, double temperature) {
  double max = -std::numeric_limits<double>::infinity();
  for (double l : logits) max = std::max(max, l);
  std::vector<double> p;
  double sum = 0.0;
  for (double l : logits) {
    p.push_back(std::exp((l - max) / temperature));
    sum += p.back();
  }
  for (double& x : p) x /= sum;
  return p;
}

// ---- greedy ----

TEST(SamplerGreedy, PicksTheLargestLogit) {
  SamplingOptions o = plain();
  o.temperature = 0.0;
  EXPECT_EQ(sample_once(o, {0.1f, 2.5f, -1.0f, 2.4f}), 1);
  EXPECT_EQ(sample_once(o, {-5.0f, -4.0f, -3.0f}), 2);
}

TEST(SamplerGreedy, TiesGoToTheLowestId) {
  SamplingOptions o = plain();
  o.temperature = 0.0;
  EXPECT_EQ(sample_once(o, {1.0f, 3.0f, 3.0f, 3.0f}), 1);
  EXPECT_EQ(sample_once(o, {7.0f, 7.0f}), 0);
}

TEST(SamplerGreedy, NanIsNeverPicked) {
  SamplingOptions o = plain();
  o.temperature = 0.0;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(sample_once(o, {nan, -1.0f, 0.5f}), 2);
}

TEST(SamplerGreedy, IgnoresFiltersAndSeed) {
  SamplingOptions o = plain();
  o.temperature = 0.0;
  o.top_k = 1;
  o.top_p = 0.1;
  for (uint64_t seed : {0u, 1u, 99u}) {
    o.seed = seed;
    EXPECT_EQ(sample_once(o, {0.0f, 0.1f, 0.05f}), 1);
  }
}

TEST(SamplerGreedy, AllNegativeInfinityFallsBackToTheFirstToken) {
  SamplingOptions o = plain();
  const float ninf = -std::numeric_limits<float>::infinity();
  EXPECT_EQ(sample_once(o, {ninf, ninf, ninf}), 0);
  o.top_k = 2;
  EXPECT_EQ(sample_once(o, {ninf, ninf, ninf}), 0);
}

// ---- penalties (greedy, with a competitor just above or below the penalized value) ----

// Greedy pick between token 0 (penalized by `history`) and token 1 at `competitor`.
int32_t pick(SamplingOptions o, float logit0, float competitor, const std::vector<int32_t>& history) {
  o.temperature = 0.0;
  return sample_once(o, {logit0, competitor, -100.0f, -100.0f}, history);
}

TEST(SamplerPenalties, RepeatPenaltyDividesPositiveAndMultipliesNegative) {
  SamplingOptions o = plain();
  o.repeat_penalty = 2.0;
  // 3.0 -> 1.5
  EXPECT_EQ(pick(o, 3.0f, 1.49f, {0}), 0);
  EXPECT_EQ(pick(o, 3.0f, 1.51f, {0}), 1);
  // -1.0 -> -2.0
  EXPECT_EQ(pick(o, -1.0f, -2.01f, {0}), 0);
  EXPECT_EQ(pick(o, -1.0f, -1.99f, {0}), 1);
  // Penalty below 1 boosts: 3.0 / 0.5 = 6.0
  o.repeat_penalty = 0.5;
  EXPECT_EQ(pick(o, 3.0f, 5.99f, {0}), 0);
  EXPECT_EQ(pick(o, 3.0f, 6.01f, {0}), 1);
}

TEST(SamplerPenalties, RepeatPenaltyAppliesOncePerDistinctToken) {
  SamplingOptions o = plain();
  o.repeat_penalty = 2.0;
  // Seen three times, still 4.0 -> 2.0 (not 0.5).
  EXPECT_EQ(pick(o, 4.0f, 1.99f, {0, 0, 0}), 0);
  EXPECT_EQ(pick(o, 4.0f, 2.01f, {0, 0, 0}), 1);
}

TEST(SamplerPenalties, FrequencyPenaltyScalesWithCount) {
  SamplingOptions o = plain();
  o.frequency_penalty = 0.5;
  // Seen 3 times: 2.0 - 1.5 = 0.5
  EXPECT_EQ(pick(o, 2.0f, 0.49f, {0, 3, 0, 0}), 0);
  EXPECT_EQ(pick(o, 2.0f, 0.51f, {0, 3, 0, 0}), 1);
  // Negative values reward repetition: 2.0 + 3 * 0.5 = 3.5
  o.frequency_penalty = -0.5;
  EXPECT_EQ(pick(o, 2.0f, 3.49f, {0, 0, 0}), 0);
  EXPECT_EQ(pick(o, 2.0f, 3.51f, {0, 0, 0}), 1);
}

TEST(SamplerPenalties, PresencePenaltyIsSubtractedOnce) {
  SamplingOptions o = plain();
  o.presence_penalty = 0.75;
  // 2.0 - 0.75 = 1.25, however often it was seen
  EXPECT_EQ(pick(o, 2.0f, 1.24f, {0, 0, 0, 0}), 0);
  EXPECT_EQ(pick(o, 2.0f, 1.26f, {0, 0, 0, 0}), 1);
}

TEST(SamplerPenalties, AllThreeCombineInLlamaCppOrder) {
  SamplingOptions o = plain();
  o.repeat_penalty = 2.0;
  o.frequency_penalty = 0.25;
  o.presence_penalty = 0.5;
  // Seen twice: 5.0 / 2 - 2 * 0.25 - 0.5 = 1.5
  EXPECT_EQ(pick(o, 5.0f, 1.49f, {0, 0}), 0);
  EXPECT_EQ(pick(o, 5.0f, 1.51f, {0, 0}), 1);
}

TEST(SamplerPenalties, OnlyTheLastRepeatLastNTokensCount) {
  SamplingOptions o = plain();
  o.repeat_penalty = 2.0;
  o.repeat_last_n = 2;
  // Token 0 is outside the window of the last 2: unpenalized.
  EXPECT_EQ(pick(o, 3.0f, 2.9f, {0, 2, 3}), 0);
  // Inside it: penalized.
  EXPECT_EQ(pick(o, 3.0f, 2.9f, {2, 3, 0}), 1);
  // -1: the whole history.
  o.repeat_last_n = -1;
  EXPECT_EQ(pick(o, 3.0f, 2.9f, {0, 2, 3, 2, 3, 2, 3}), 1);
  // 0: off.
  o.repeat_last_n = 0;
  EXPECT_EQ(pick(o, 3.0f, 2.9f, {0, 0, 0}), 0);
}

TEST(SamplerPenalties, RepeatedCallsStartFromCleanCounts) {
  SamplingOptions o = plain();
  o.temperature = 0.0;
  o.frequency_penalty = 1.0;
  Sampler s(o, 3);
  for (int i = 0; i < 5; ++i) {
    std::vector<float> logits = {2.0f, 1.1f, 0.0f};
    EXPECT_EQ(s.sample(logits, std::vector<int32_t>{0}), 1) << "call " << i;  // 2.0 - 1.0 = 1.0 < 1.1
    logits = {2.0f, 1.1f, 0.0f};
    EXPECT_EQ(s.sample(logits, std::vector<int32_t>{1}), 0) << "call " << i;
  }
}

TEST(SamplerPenalties, HistoryOutsideTheVocabularyIsAnError) {
  SamplingOptions o = plain();
  o.repeat_penalty = 1.1;
  Sampler s(o, 4);
  std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f};
  try {
    s.sample(logits, std::vector<int32_t>{1, 4});
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
    EXPECT_NE(std::string(e.what()).find("token 4"), std::string::npos) << e.what();
  }
}

// ---- filters alone, survivors found by drawing ----

const std::vector<double> kProbs = {0.5, 0.3, 0.15, 0.05};

TEST(SamplerFilters, TopKKeepsTheKBest) {
  SamplingOptions o = plain();
  o.top_k = 2;
  EXPECT_EQ(survivors(o, {1.0f, 5.0f, 3.0f, 4.5f, 2.0f}), (std::set<int32_t>{1, 3}));
  o.top_k = 1;
  EXPECT_EQ(survivors(o, {1.0f, 5.0f, 3.0f, 4.5f, 2.0f}), (std::set<int32_t>{1}));
  o.top_k = 3;
  EXPECT_EQ(survivors(o, {1.0f, 5.0f, 3.0f, 4.5f, 2.0f}), (std::set<int32_t>{1, 2, 3}));
}

TEST(SamplerFilters, TopKTiesKeepTheLowestIds) {
  SamplingOptions o = plain();
  o.top_k = 2;
  EXPECT_EQ(survivors(o, {1.0f, 2.0f, 2.0f, 2.0f, 2.0f}), (std::set<int32_t>{1, 2}));
}

TEST(SamplerFilters, TopKAtOrAboveVocabIsOff) {
  SamplingOptions o = plain();
  o.top_k = 4;
  EXPECT_EQ(survivors(o, log_probs({0.25, 0.25, 0.25, 0.25})), (std::set<int32_t>{0, 1, 2, 3}));
  o.top_k = 100;
  EXPECT_EQ(survivors(o, log_probs({0.25, 0.25, 0.25, 0.25})), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(SamplerFilters, TopPKeepsTheSmallestSetReachingP) {
  SamplingOptions o = plain();
  const auto logits = log_probs(kProbs);
  o.top_p = 0.75;  // 0.5 < 0.75 <= 0.8
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0, 1}));
  o.top_p = 0.85;  // 0.8 < 0.85 <= 0.95
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0, 1, 2}));
  o.top_p = 0.4;  // the first token alone already reaches it
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0}));
  o.top_p = 1e-9;  // at least one token
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0}));
  o.top_p = 1.0;
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(SamplerFilters, TopPWorksOnUnsortedLogits) {
  SamplingOptions o = plain();
  o.top_p = 0.75;
  // Same distribution, ids shuffled: 3 -> 0.5, 0 -> 0.3, 2 -> 0.15, 1 -> 0.05.
  EXPECT_EQ(survivors(o, log_probs({0.3, 0.05, 0.15, 0.5})), (std::set<int32_t>{0, 3}));
}

TEST(SamplerFilters, MinPKeepsTokensAtLeastMinPTimesTheBest) {
  SamplingOptions o = plain();
  const auto logits = log_probs(kProbs);
  o.min_p = 0.25;  // >= 0.125
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0, 1, 2}));
  o.min_p = 0.5;  // >= 0.25
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0, 1}));
  o.min_p = 1.0;  // only the best
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0}));
  o.min_p = 0.05;  // >= 0.025: everything
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0, 1, 2, 3}));
}

TEST(SamplerFilters, TopPIsTakenOverTheTopKSet) {
  // 0.4/0.3/0.2/0.1: over top_k = 2 the first is 4/7 > 0.5, so top_p = 0.5 keeps it alone;
  // over the whole vocabulary 0.4 < 0.5 and it keeps two.
  SamplingOptions o = plain();
  const auto logits = log_probs({0.4, 0.3, 0.2, 0.1});
  o.top_p = 0.5;
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0, 1}));
  o.top_k = 2;
  EXPECT_EQ(survivors(o, logits), (std::set<int32_t>{0}));
}

TEST(SamplerFilters, TemperatureDoesNotChangeWhichTokensSurvive) {
  // Filters run at temperature 1 (llama.cpp's order): at a high temperature top_p still keeps {0, 1}.
  SamplingOptions o = plain();
  o.top_p = 0.75;
  o.temperature = 5.0;
  EXPECT_EQ(survivors(o, log_probs(kProbs)), (std::set<int32_t>{0, 1}));
}

TEST(SamplerFilters, PenaltiesComeBeforeTopK) {
  // Token 0 is best until its repeat penalty pushes it out of the top 1.
  SamplingOptions o = plain();
  o.top_k = 1;
  o.repeat_penalty = 4.0;
  Sampler s(o, 3);
  std::vector<float> logits = {2.0f, 1.0f, 0.0f};
  EXPECT_EQ(s.sample(logits, std::vector<int32_t>{0}), 1);
}

// ---- distribution and determinism ----

TEST(SamplerDistribution, DrawsFollowTheSoftmax) {
  // Fixed seed, so the statistic is a fixed number: it must sit under the 0.1% critical value.
  const std::vector<double> probs = {0.1, 0.2, 0.3, 0.25, 0.15};
  const int n = 40000;
  for (int top_k : {0, 5}) {  // the unsorted full-vocabulary path and the sorted top-k path
    SamplingOptions o = plain();
    o.top_k = top_k;
    const double chi2 = chi_square(draw_counts(o, log_probs(probs), n), probs, n);
    EXPECT_LT(chi2, 18.47) << "top_k " << top_k << " (4 degrees of freedom, p = 0.001)";
  }
}

TEST(SamplerDistribution, TemperatureReshapesTheDistribution) {
  const std::vector<double> logits = {1.0, 2.0, 0.5, 1.5, -1.0};
  std::vector<float> f(logits.begin(), logits.end());
  const int n = 40000;
  for (double t : {0.5, 1.0, 2.0}) {
    SamplingOptions o = plain();
    o.temperature = t;
    o.seed = 7;
    const double chi2 = chi_square(draw_counts(o, f, n), softmax(logits, t), n);
    EXPECT_LT(chi2, 18.47) << "temperature " << t;
  }
}

TEST(SamplerDistribution, ExtremeTemperaturesStayWellDefined) {
  // A tiny temperature is greedy in effect; a huge one is uniform over the kept set.
  SamplingOptions o = plain();
  o.temperature = 1e-300;
  EXPECT_EQ(survivors(o, {0.5f, 2.0f, 1.0f}, 200), (std::set<int32_t>{1}));
  o.temperature = 1e300;
  EXPECT_EQ(survivors(o, {0.5f, 2.0f, 1.0f}, 200), (std::set<int32_t>{0, 1, 2}));
  o.temperature = 1e-300;
  o.top_k = 2;
  EXPECT_EQ(survivors(o, {0.5f, 2.0f, 1.0f}, 200), (std::set<int32_t>{1}));
}

TEST(SamplerDistribution, FilteredDrawsFollowTheRenormalizedDistribution) {
  // top_p = 0.85 over 0.5/0.3/0.15/0.05 keeps three, renormalized to 0.5/0.3/0.15 over 0.95.
  SamplingOptions o = plain();
  o.top_p = 0.85;
  const int n = 40000;
  const double chi2 = chi_square(draw_counts(o, log_probs(kProbs), n), {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0.0}, n);
  EXPECT_LT(chi2, 13.82) << "2 degrees of freedom, p = 0.001";
}

TEST(SamplerDeterminism, SameSeedSameTokens) {
  std::mt19937 gen(42);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::vector<float> logits(1000);
  for (float& l : logits) l = normal(gen);
  SamplingOptions o;  // Ollama's defaults: penalties, top_k 40, top_p 0.9
  o.seed = 2024;
  std::vector<int32_t> a, b;
  for (auto* out : {&a, &b}) {
    Sampler s(o, static_cast<int32_t>(logits.size()));
    std::vector<int32_t> history = {1, 2, 3};
    for (int i = 0; i < 200; ++i) {
      std::vector<float> scratch = logits;
      const int32_t t = s.sample(scratch, history);
      history.push_back(t);
      out->push_back(t);
    }
  }
  EXPECT_EQ(a, b);
}

TEST(SamplerDeterminism, KnownDrawsForAFixedSeed) {
  // Pins the draw itself (mt19937_64's output, 53-bit uniform, cumulative walk), so a change in
  // any of them shows up here rather than as a silent change of every seeded completion.
  SamplingOptions o = plain();
  o.seed = 42;
  Sampler s(o, 4);
  std::vector<int32_t> got;
  for (int i = 0; i < 12; ++i) {
    std::vector<float> logits = {0.0f, 0.0f, 0.0f, 0.0f};
    got.push_back(s.sample(logits, {}));
  }
  std::mt19937_64 rng(42);
  std::vector<int32_t> expected;
  for (int i = 0; i < 12; ++i) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;
    expected.push_back(static_cast<int32_t>(u * 4.0));
  }
  EXPECT_EQ(got, expected);
}

TEST(SamplerDeterminism, DifferentSeedsDrawDifferently) {
  const std::vector<float> flat(1000, 0.0f);
  std::set<std::vector<int32_t>> sequences;
  for (uint64_t seed : {0u, 1u, 2u, 3u, 4u}) {
    SamplingOptions o = plain();
    o.seed = seed;
    Sampler s(o, 1000);
    std::vector<int32_t> seq;
    for (int i = 0; i < 20; ++i) {
      std::vector<float> scratch = flat;
      seq.push_back(s.sample(scratch, {}));
    }
    sequences.insert(seq);
  }
  EXPECT_EQ(sequences.size(), 5u);
}

TEST(SamplerDeterminism, FlatDistributionUsesTheWholeVocabulary) {
  SamplingOptions o = plain();
  const std::vector<float> flat(16, 1.0f);
  EXPECT_EQ(survivors(o, flat, 2000).size(), 16u);
}

// ---- a real vocabulary size against a naive reference ----

using Ranked = std::vector<std::pair<float, int32_t>>;

// Every token, best first (ties: lower id first).
Ranked ranked(const std::vector<float>& logits) {
  Ranked c;
  for (size_t i = 0; i < logits.size(); ++i) c.emplace_back(logits[i], static_cast<int32_t>(i));
  std::sort(c.begin(), c.end(),
            [](auto& a, auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  return c;
}

// The survivors by the book: from the fully sorted vocabulary, top_k, softmax, top_p prefix, min_p.
std::set<int32_t> reference_survivors(Ranked c, int top_k, double top_p, double min_p) {
  if (top_k > 0 && static_cast<size_t>(top_k) < c.size()) c.resize(static_cast<size_t>(top_k));
  double sum = 0.0;
  for (auto& x : c) sum += std::exp(static_cast<double>(x.first) - static_cast<double>(c[0].first));
  size_t keep = c.size();
  double cum = 0.0;
  for (size_t i = 0; i < c.size(); ++i) {
    cum += std::exp(static_cast<double>(c[i].first) - static_cast<double>(c[0].first)) / sum;
    if (cum >= top_p) {
      keep = i + 1;
      break;
    }
  }
  std::set<int32_t> out;
  for (size_t i = 0; i < keep; ++i) {
    if (std::exp(static_cast<double>(c[i].first) - static_cast<double>(c[0].first)) >= min_p) out.insert(c[i].second);
  }
  return out;
}

// Logits over a 151936-token vocabulary (Qwen2's): normal noise of the given spread, plus a few
// strong candidates when `peaked`, as real logits have.
std::vector<float> large_logits(float spread, bool peaked, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> normal(0.0f, spread);
  std::vector<float> logits(151936);
  for (float& l : logits) l = normal(gen);
  if (peaked) {
    for (int i = 0; i < 12; ++i) logits[gen() % logits.size()] = 14.0f + static_cast<float>(i) * 0.3f;
  }
  return logits;
}

TEST(SamplerLargeVocab, SurvivorsMatchANaiveFullSort) {
  struct Case {
    int top_k;
    double top_p, min_p;
  };
  const std::vector<Case> cases = {{40, 0.9, 0.0}, {0, 0.3, 0.0}, {0, 0.9, 0.0}, {0, 0.95, 0.0},   {0, 0.99, 0.0},
                                   {0, 1.0, 0.05}, {5, 1.0, 0.0}, {0, 0.5, 0.1}, {1000, 0.95, 0.0}};
  // With spread 3 and spikes, top_p 0.3/0.9 are settled by the 1e-2 weight threshold, 0.95 by
  // the 1e-4 one and 0.99 by mass selection; spread 0.5 without spikes always needs the latter.
  for (const auto& [spread, peaked] : {std::pair{3.0f, true}, std::pair{0.5f, false}}) {
    const std::vector<float> logits = large_logits(spread, peaked, 3);
    const Ranked sorted = ranked(logits);
    const auto n_vocab = static_cast<int32_t>(logits.size());
    for (const Case& c : cases) {
      SamplingOptions o = plain();
      o.top_k = c.top_k;
      o.top_p = c.top_p;
      o.min_p = c.min_p;
      const std::set<int32_t> expected = reference_survivors(sorted, c.top_k, c.top_p, c.min_p);
      ASSERT_FALSE(expected.empty());
      Sampler s(o, n_vocab);
      std::set<int32_t> seen;
      for (int i = 0; i < 30; ++i) {
        std::vector<float> scratch = logits;
        seen.insert(s.sample(scratch, {}));
      }
      for (int32_t t : seen) {
        EXPECT_TRUE(expected.count(t)) << "token " << t << " drawn but filtered out (top_k " << c.top_k << ", top_p "
                                       << c.top_p << ", min_p " << c.min_p << ", spread " << spread << ")";
      }
      const int32_t best = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
      if (peaked) {
        EXPECT_TRUE(seen.count(best)) << "the best token was never drawn";
      }
    }
  }
}

TEST(SamplerLargeVocab, TopPKeepsExactlyTheReferenceSet) {
  // Every kept token is likely enough to be drawn, so the drawn set must equal the reference set:
  // nothing extra and nothing missing, for the weight-threshold path (spikes over noise) and
  // for mass selection (a flat distribution of 600 tokens).
  struct Case {
    float spread;
    int spikes;
    double top_p;
    int draws;
  };
  for (const Case& c : {Case{0.2f, 0, 0.5, 8000}, Case{0.2f, 0, 0.2, 4000}, Case{1.0f, 24, 0.9, 3000}}) {
    std::mt19937 gen(11);
    std::normal_distribution<float> normal(0.0f, c.spread);
    std::vector<float> logits(600);
    for (float& l : logits) l = normal(gen);
    for (int i = 0; i < c.spikes; ++i) logits[static_cast<size_t>(i * 23 + 5)] = 12.0f + 0.05f * static_cast<float>(i);
    SamplingOptions o = plain();
    o.top_p = c.top_p;
    const std::set<int32_t> expected = reference_survivors(ranked(logits), 0, c.top_p, 0.0);
    ASSERT_LT(expected.size(), 450u);
    ASSERT_GE(expected.size(), 10u);
    EXPECT_EQ(survivors(o, logits, c.draws), expected) << "spread " << c.spread << ", top_p " << c.top_p;
  }
}

TEST(SamplerLargeVocab, DefaultOptionsAreFast) {
  const int32_t n_vocab = 151936;
  std::mt19937 gen(5);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> logits(static_cast<size_t>(n_vocab));
  for (float& l : logits) l = normal(gen);
  SamplingOptions o;  // top_k 40, top_p 0.9, repeat penalty over 64 tokens
  Sampler s(o, n_vocab);
  std::vector<int32_t> history(64);
  for (size_t i = 0; i < history.size(); ++i) history[i] = static_cast<int32_t>(i * 997 % n_vocab);
  const int n = 50;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    std::vector<float> scratch = logits;
    s.sample(scratch, history);
  }
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / n;
  RecordProperty("ms_per_sample", std::to_string(ms));
  // Generous: a full sort per token would be several ms even in a debug build with sanitizers
  // off; this guards against that, not against noise.
  EXPECT_LT(ms, 20.0);
}

// ---- validation ----

void expect_invalid(const SamplingOptions& o, const std::vector<std::string>& fragments) {
  try {
    o.validate();
    FAIL() << "expected Error for " << fragments.front();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    for (const std::string& f : fragments) EXPECT_NE(std::string(e.what()).find(f), std::string::npos) << e.what();
  }
}

TEST(SamplingOptionsValidate, DefaultsAndEdgesAreValid) {
  SamplingOptions o;
  EXPECT_NO_THROW(o.validate());
  o.temperature = 0.0;
  o.top_k = 0;
  o.top_p = 1.0;
  o.min_p = 1.0;
  o.repeat_last_n = -1;
  o.presence_penalty = -2.0;
  o.frequency_penalty = 2.0;
  EXPECT_NO_THROW(o.validate());
  o.min_p = 0.0;
  o.repeat_last_n = 0;
  o.temperature = 100.0;
  EXPECT_NO_THROW(o.validate());
}

TEST(SamplingOptionsValidate, RejectsNanInfAndOutOfRange) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  auto with = [](auto set) {
    SamplingOptions o;
    set(o);
    return o;
  };
  expect_invalid(with([&](SamplingOptions& o) { o.temperature = nan; }), {"temperature", "nan", "[0, inf)"});
  expect_invalid(with([&](SamplingOptions& o) { o.temperature = -0.5; }), {"temperature", "-0.5", "[0, inf)"});
  expect_invalid(with([&](SamplingOptions& o) { o.temperature = inf; }), {"temperature", "inf", "finite"});
  expect_invalid(with([&](SamplingOptions& o) { o.top_k = -1; }), {"top_k", "-1", ">= 0"});
  expect_invalid(with([&](SamplingOptions& o) { o.top_p = 0.0; }), {"top_p", "= 0 ", "(0, 1]"});
  expect_invalid(with([&](SamplingOptions& o) { o.top_p = 1.5; }), {"top_p", "1.5", "(0, 1]"});
  expect_invalid(with([&](SamplingOptions& o) { o.top_p = nan; }), {"top_p", "nan"});
  expect_invalid(with([&](SamplingOptions& o) { o.min_p = -0.1; }), {"min_p", "-0.1", "[0, 1]"});
  expect_invalid(with([&](SamplingOptions& o) { o.min_p = 1.01; }), {"min_p", "1.01", "[0, 1]"});
  expect_invalid(with([&](SamplingOptions& o) { o.repeat_penalty = 0.0; }), {"repeat_penalty", "(0, inf)"});
  expect_invalid(with([&](SamplingOptions& o) { o.repeat_penalty = -1.0; }), {"repeat_penalty", "-1"});
  expect_invalid(with([&](SamplingOptions& o) { o.repeat_penalty = nan; }), {"repeat_penalty", "nan"});
  expect_invalid(with([&](SamplingOptions& o) { o.repeat_last_n = -2; }), {"repeat_last_n", "-2", ">= -1"});
  expect_invalid(with([&](SamplingOptions& o) { o.presence_penalty = 2.5; }), {"presence_penalty", "2.5", "[-2, 2]"});
  expect_invalid(with([&](SamplingOptions& o) { o.presence_penalty = -inf; }), {"presence_penalty", "-inf"});
  expect_invalid(with([&](SamplingOptions& o) { o.frequency_penalty = nan; }), {"frequency_penalty", "nan", "[-2, 2]"});
  expect_invalid(with([&](SamplingOptions& o) { o.frequency_penalty = -2.01; }), {"frequency_penalty", "-2.01"});
}

TEST(SamplerConstruction, ValidatesOptionsAndSizes) {
  SamplingOptions o;
  o.top_p = 2.0;
  EXPECT_THROW(Sampler(o, 10), Error);
  EXPECT_THROW(Sampler(SamplingOptions{}, 0), Error);
  Sampler s(SamplingOptions{}, 4);
  std::vector<float> wrong(5, 0.0f);
  try {
    s.sample(wrong, {});
    FAIL() << "expected Error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::internal);
  }
}

// ---- StopMatcher ----

// Feeds the pieces, returns the concatenated output (plus flush() when it did not stop).
std::string feed(StopMatcher& m, const std::vector<std::string>& pieces) {
  std::string out;
  for (const std::string& p : pieces) out += m.push(p);
  if (!m.stopped()) out += m.flush();
  return out;
}

TEST(StopMatcher, NoStopsPassesEverythingThrough) {
  StopMatcher m({});
  EXPECT_EQ(m.push("hello"), "hello");
  EXPECT_EQ(m.push(""), "");
  EXPECT_EQ(m.flush(), "");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, StopSplitAcrossPushes) {
  StopMatcher m({"</answer>"});
  EXPECT_EQ(m.push("The result is 4<"), "The result is 4");
  EXPECT_EQ(m.push("/ans"), "");
  EXPECT_FALSE(m.stopped());
  EXPECT_EQ(m.push("wer> trailing"), "");
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(m.push("more"), "");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, StopInsideOnePush) {
  StopMatcher m({"STOP"});
  EXPECT_EQ(m.push("abcSTOPdef"), "abc");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, StopAtTheVeryStart) {
  StopMatcher m({"<|im_end|>"});
  EXPECT_EQ(m.push("<|im_end|>"), "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, OverlappingPrefix) {
  {
    StopMatcher m({"ab"});
    EXPECT_EQ(m.push("aab"), "a");
    EXPECT_TRUE(m.stopped());
  }
  {
    StopMatcher m({"ab"});
    EXPECT_EQ(m.push("a"), "");
    EXPECT_EQ(m.push("a"), "a");
    EXPECT_EQ(m.push("b"), "");
    EXPECT_TRUE(m.stopped());
  }
  {
    // "aab" held as a prefix of "aaab" until the next byte decides.
    StopMatcher m({"aaab"});
    EXPECT_EQ(m.push("xaa"), "x");
    EXPECT_EQ(m.push("a"), "");
    EXPECT_EQ(m.push("a"), "a");  // "aaaa": only the last three can still start a match
    EXPECT_EQ(m.push("b"), "");
    EXPECT_TRUE(m.stopped());
  }
}

TEST(StopMatcher, MultipleStops) {
  StopMatcher m({"STOP", "END", "<|eot_id|>"});
  EXPECT_EQ(feed(m, {"xxEN", "xxS", "TO", "P yy"}), "xxENxx");
  EXPECT_TRUE(m.stopped());
  StopMatcher n({"STOP", "END"});
  EXPECT_EQ(feed(n, {"one E", "ND two STOP"}), "one ");
}

TEST(StopMatcher, EarliestMatchWins) {
  StopMatcher m({"bc", "abcd"});
  EXPECT_EQ(m.push("xabcd"), "x");
  EXPECT_TRUE(m.stopped());
  StopMatcher n({"cd", "b"});
  EXPECT_EQ(n.push("abcd"), "a");
}

TEST(StopMatcher, NoFalseHoldback) {
  StopMatcher m({"abc"});
  EXPECT_EQ(m.push("xab"), "x");
  EXPECT_EQ(m.push("d"), "abd");  // "abd" can no longer start "abc": released at once
  EXPECT_EQ(m.push("zzz"), "zzz");
  EXPECT_EQ(m.push("a"), "");
  EXPECT_EQ(m.flush(), "a");
  EXPECT_FALSE(m.stopped());
}

TEST(StopMatcher, FlushReturnsTheHeldText) {
  StopMatcher m({"<|im_end|>"});
  EXPECT_EQ(m.push("done <|im"), "done ");
  EXPECT_EQ(m.flush(), "<|im");
  EXPECT_EQ(m.flush(), "");
}

TEST(StopMatcher, ByteAtATime) {
  const std::string text = "the answer is 42<|eot_id|>ignored";
  StopMatcher m({"<|eot_id|>", "<|eom_id|>"});
  std::string out;
  for (char c : text) out += m.push(std::string(1, c));
  EXPECT_TRUE(m.stopped());
  EXPECT_EQ(out, "the answer is 42");
}

TEST(StopMatcher, Utf8PiecesStayWhole) {
  StopMatcher m({"日本語"});
  EXPECT_EQ(m.push("今日は日本"), "今日は");
  EXPECT_EQ(m.push("です"), "日本です");
  EXPECT_EQ(m.push("日本語"), "");
  EXPECT_TRUE(m.stopped());
}

TEST(StopMatcher, ConstructorLimits) {
  auto code_of = [](std::vector<std::string> stops) {
    try {
      StopMatcher m(std::move(stops));
    } catch (const Error& e) {
      return std::optional<ErrorCode>(e.code());
    }
    return std::optional<ErrorCode>();
  };
  EXPECT_EQ(code_of({"ok", ""}), ErrorCode::invalid_argument);
  EXPECT_EQ(code_of(std::vector<std::string>(17, "x")), ErrorCode::invalid_argument);
  EXPECT_EQ(code_of({std::string(257, 'x')}), ErrorCode::invalid_argument);
  EXPECT_EQ(code_of(std::vector<std::string>(16, "x")), std::nullopt);
  EXPECT_EQ(code_of({std::string(256, 'x')}), std::nullopt);
  try {
    StopMatcher m({"a", ""});
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("stop string 1 is empty"), std::string::npos) << e.what();
  }
}

TEST(StopMatcher, LongStopHeldAcrossManyPushes) {
  const std::string stop(256, 'z');
  StopMatcher m({stop});
  std::string out;
  for (int i = 0; i < 255; ++i) out += m.push("z");
  EXPECT_EQ(out, "");
  EXPECT_EQ(m.push("y"), std::string(255, 'z') + "y");
  for (int i = 0; i < 256; ++i) out += m.push("z");
  EXPECT_TRUE(m.stopped());
}

}  // namespace
}  // namespace gptqd::engine
