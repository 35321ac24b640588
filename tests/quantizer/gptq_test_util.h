// SPDX-License-Identifier: Apache-2.0
// Shared helpers of the GPTQ solver tests (gptq_solver_test, gptq_reference_test): a random
// layer with a correlated Hessian and the layer-wise objective (quantizer tests).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "quantizer/gptq.h"

namespace gptqd::quantizer::test_util {

struct Problem {
  int64_t N = 0, K = 0;
  std::vector<float> W;  // [N, K]
  std::vector<float> H;  // [K, K]
};

// H from X [4K, K] with correlated features and uneven feature scales (so act-order reorders),
// optionally one feature that is zero on every token; W small Gaussian like real weights.
inline Problem random_problem(int64_t N, int64_t K, uint32_t seed, int64_t dead_feature = -1) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> uniform(1.0f, 4.0f);
  const int64_t T = 4 * K;
  std::vector<float> z(static_cast<size_t>(T * K)), x(static_cast<size_t>(T * K), 0.0f);
  for (auto& v : z) v = normal(rng);
  // x = z (I + 0.3 M / sqrt(K)), then per-feature scales.
  std::vector<float> mix(static_cast<size_t>(K * K));
  for (auto& v : mix) v = 0.3f * normal(rng) / std::sqrt(static_cast<float>(K));
  for (int64_t k = 0; k < K; ++k) mix[k * K + k] += 1.0f;
  std::vector<float> scale(static_cast<size_t>(K));
  for (auto& s : scale) s = uniform(rng);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t i = 0; i < K; ++i) {
      const float zi = z[t * K + i];
      for (int64_t k = 0; k < K; ++k) x[t * K + k] += zi * mix[i * K + k];
    }
    for (int64_t k = 0; k < K; ++k) x[t * K + k] *= scale[k];
    if (dead_feature >= 0) x[t * K + dead_feature] = 0.0f;
  }
  HessianAccumulator acc(K);
  acc.add(x.data(), T);
  Problem p;
  p.N = N;
  p.K = K;
  p.H = acc.hessian();
  p.W.resize(static_cast<size_t>(N * K));
  for (auto& v : p.W) v = 0.05f * normal(rng);
  return p;
}

// tr((W - Q) H (W - Q)^T) in double: the layer-wise objective GPTQ minimises.
inline double recon_error(const Problem& p, const std::vector<float>& Q) {
  double total = 0;
  std::vector<double> d(static_cast<size_t>(p.K));
  for (int64_t n = 0; n < p.N; ++n) {
    for (int64_t k = 0; k < p.K; ++k) d[k] = static_cast<double>(p.W[n * p.K + k]) - Q[n * p.K + k];
    for (int64_t r = 0; r < p.K; ++r) {
      double row = 0;
      for (int64_t c = 0; c < p.K; ++c) row += p.H[r * p.K + c] * d[c];
      total += d[r] * row;
    }
  }
  return total;
}

}  // namespace gptqd::quantizer::test_util
