// SPDX-License-Identifier: Apache-2.0
// Reader benchmarks (bench): GGML dequantization throughput per type on a 4096x4096 tensor, and
// the cost of opening and validating the real SmolLM2 GGUF. Figures: docs/performance.md.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "engine/gguf.h"
#include "engine/model_source.h"
#include "kernels/cpu/ggml_dequant.h"
#include "kernels/cpu/half.h"

namespace {

namespace cpu = gptqd::kernels::cpu;
namespace fs = std::filesystem;
using cpu::GgmlType;

constexpr int64_t kRows = 4096, kCols = 4096;  // one Llama-7B/8B-sized attention projection
constexpr int64_t kElements = kRows * kCols;

// Byte offsets of the fp16 scale fields inside one block (the layouts in ggml_dequant.cpp).
std::vector<size_t> f16_fields(GgmlType type) {
  switch (type) {
    case GgmlType::Q4_0: return {0};       // {f16 d; u8 qs[16]}
    case GgmlType::Q4_1: return {0, 2};    // {f16 d; f16 m; u8 qs[16]}
    case GgmlType::Q8_0: return {0};       // {f16 d; i8 qs[32]}
    case GgmlType::Q4_K: return {0, 2};    // {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}
    case GgmlType::Q6_K: return {208};     // {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}
    case GgmlType::F16: return {0};        // one value per "block"
    default: return {};
  }
}

// kElements worth of `type` blocks: random quants and scales drawn like real weights' (small,
// finite fp16), so no block dequantizes through NaN/Inf or denormal slow paths.
std::vector<uint8_t> random_blocks(GgmlType type) {
  const cpu::GgmlTypeTraits* traits = cpu::ggml_type_traits(static_cast<uint32_t>(type));
  const size_t n_blocks = static_cast<size_t>(kElements / traits->block_elems);
  std::vector<uint8_t> bytes(n_blocks * traits->block_bytes);
  std::mt19937 rng(1234 + static_cast<uint32_t>(type));
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto& b : bytes) b = static_cast<uint8_t>(byte(rng));
  std::normal_distribution<float> scale(0.0f, type == GgmlType::F16 ? 0.05f : 0.002f);
  for (size_t i = 0; i < n_blocks; ++i) {
    for (size_t offset : f16_fields(type)) {
      const uint16_t h = cpu::f32_to_f16(scale(rng));
      std::memcpy(&bytes[i * traits->block_bytes + offset], &h, sizeof h);
    }
  }
  return bytes;
}

void BM_Dequantize(benchmark::State& state, GgmlType type) {
  const auto id = static_cast<uint32_t>(type);
  const std::vector<uint8_t> src = random_blocks(type);
  std::vector<float> dst(static_cast<size_t>(kElements));
  for (auto _ : state) {
    const auto status = cpu::dequantize_ggml(id, src.data(), kElements, dst.data());
    if (status != gptqd::kernels::KernelStatus::ok) {
      state.SkipWithError("dequantize_ggml did not return ok");
      break;
    }
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  const auto iterations = static_cast<int64_t>(state.iterations());
  state.SetItemsProcessed(iterations * kElements);
  state.SetBytesProcessed(iterations * kElements * static_cast<int64_t>(sizeof(float)));  // fp32 written
  state.counters["in_bytes_per_second"] = benchmark::Counter(static_cast<double>(iterations) *
                                                                 static_cast<double>(src.size()),
                                                             benchmark::Counter::kIsRate);
}
BENCHMARK_CAPTURE(BM_Dequantize, Q4_0, GgmlType::Q4_0)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequantize, Q4_1, GgmlType::Q4_1)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequantize, Q8_0, GgmlType::Q8_0)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequantize, Q4_K, GgmlType::Q4_K)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequantize, Q6_K, GgmlType::Q6_K)->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Dequantize, F16, GgmlType::F16)->Unit(benchmark::kMillisecond);

// Where the tests find the SmolLM2 GGUF (tests/support/test_env.cpp, test_model_path()).
fs::path smollm2_gguf_path() {
  if (const char* p = std::getenv("GPTQD_TEST_MODEL"); p && *p) return p;
  const char* cache = std::getenv("GPTQD_TEST_CACHE");
  const char* home = std::getenv("HOME");
  fs::path dir = (cache && *cache) ? fs::path(cache) : fs::path(home && *home ? home : "/root") / ".cache/gptqd-test";
  return dir / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

// mmap + header parse + validation of every metadata entry and tensor info (the page cache is warm
// after the first iteration, so this is the CPU cost, not the disk's).
void BM_GgufOpen(benchmark::State& state) {
  const fs::path path = smollm2_gguf_path();
  if (!fs::exists(path)) {
    state.SkipWithError(("missing " + path.string() + " (scripts/fetch-test-model.sh)").c_str());
    return;
  }
  for (auto _ : state) {
    gptqd::engine::GgufFile g = gptqd::engine::GgufFile::open(path.string());
    benchmark::DoNotOptimize(g.tensors().data());
  }
}
BENCHMARK(BM_GgufOpen)->Unit(benchmark::kMillisecond);

// GgufFile::open plus ModelConfig and the full tensor-schema check, as the daemon's importer runs it.
void BM_InspectGguf(benchmark::State& state) {
  const fs::path path = smollm2_gguf_path();
  if (!fs::exists(path)) {
    state.SkipWithError(("missing " + path.string() + " (scripts/fetch-test-model.sh)").c_str());
    return;
  }
  for (auto _ : state) {
    gptqd::engine::ModelInfo info = gptqd::engine::inspect_model_source(path);
    benchmark::DoNotOptimize(info.n_params);
  }
}
BENCHMARK(BM_InspectGguf)->Unit(benchmark::kMillisecond);

}  // namespace
