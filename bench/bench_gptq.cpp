// SPDX-License-Identifier: Apache-2.0
// GPTQ solver benchmarks (bench): Hessian accumulation (2048 tokens per add) and the full solve
// of one linear (prepare_hessian + gptq_quantize, 4-bit g128) at SmolLM2-135M and Llama-7B shapes.
// BLAS runs with its default thread count (set OPENBLAS_NUM_THREADS to pin it), hence real time.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <random>
#include <vector>

#include "quantizer/gptq.h"

namespace {

namespace q = gptqd::quantizer;

constexpr int64_t kTokens = 2048;  // one calibration sample of the usual length

std::vector<float> random_values(int64_t count, float stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, stddev);
  std::vector<float> v(static_cast<size_t>(count));
  for (auto& x : v) x = normal(rng);
  return v;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// args: K
void BM_HessianAdd(benchmark::State& state) {
  const int64_t K = state.range(0);
  const std::vector<float> x = random_values(kTokens * K, 1.0f, 1);
  q::HessianAccumulator acc(K);
  for (auto _ : state) {
    acc.add(x.data(), kTokens);
    benchmark::ClobberMemory();
  }
  state.SetItemsProcessed(state.iterations() * kTokens);  // tokens
  // ssyrk does K(K+1)/2 dot products of length kTokens.
  state.counters["GFLOP"] = benchmark::Counter(static_cast<double>(state.iterations()) * kTokens * K * (K + 1) / 1e9,
                                                 benchmark::Counter::kIsRate);
}
BENCHMARK(BM_HessianAdd)->Arg(576)->Arg(1536)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_HessianAdd)->Arg(4096)->Arg(11008)->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

// args: N, K. H from kTokens random tokens (rank-deficient when K > kTokens: the damping makes it
// positive-definite, as it does for real layers with few calibration tokens).
void BM_Solve(benchmark::State& state) {
  const int64_t N = state.range(0), K = state.range(1);
  q::HessianAccumulator acc(K);
  acc.add(random_values(kTokens * K, 1.0f, 2).data(), kTokens);
  const std::vector<float> H = acc.hessian();
  const std::vector<float> W = random_values(N * K, 0.02f, 3);
  q::QuantizeOptions opt;  // 4-bit, g128, sym
  double prepare_s = 0, quantize_s = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<float> h = H;
    state.ResumeTiming();
    auto t0 = std::chrono::steady_clock::now();
    const q::PreparedHessian prepared = q::prepare_hessian(std::move(h), K, opt);
    prepare_s += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    q::QuantizedLinear out = q::gptq_quantize(W, N, K, prepared, opt);
    quantize_s += seconds_since(t0);
    if (!prepared.ok()) state.SkipWithError("the Cholesky chain failed");
    benchmark::DoNotOptimize(out.codes.data());
  }
  const auto iters = static_cast<double>(state.iterations());
  state.counters["prepare_s"] = prepare_s / iters;
  state.counters["quantize_s"] = quantize_s / iters;
}
BENCHMARK(BM_Solve)->Args({576, 576})->Args({1536, 576})->Args({576, 1536})->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Solve)->Args({4096, 4096})->Args({4096, 11008})->Iterations(1)->UseRealTime()->Unit(benchmark::kMillisecond);

}  // namespace
