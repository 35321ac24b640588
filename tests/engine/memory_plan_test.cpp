// SPDX-License-Identifier: Apache-2.0
// Memory planning: the weights estimate from file headers against what a real load allocates
// (SmolLM2 GGUF, tiny fp16 / fp32 / bf16 / GPTQ safetensors, with and without keep_f16), the KV
// cache against a real Session, and the misfit message's numbers and suggestions.
#include "engine/memory_plan.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cmath>
#include <cstdio>
#include <filesystem>

#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "engine/session.h"
#include "engine/weights.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::engine {
namespace {

namespace fs = std::filesystem;

void expect_estimate_close(const fs::path& source, bool keep_f16) {
  SCOPED_TRACE(source.string() + (keep_f16 ? " keep_f16" : " fp32"));
  const ModelInfo info = inspect_model_source(source);
  const uint64_t estimate = estimate_weights_bytes(info, keep_f16);
  const uint64_t actual = load_weights(info, keep_f16).size_bytes();
  std::printf("%s: estimate %llu, loaded %llu\n", source.filename().c_str(), static_cast<unsigned long long>(estimate),
              static_cast<unsigned long long>(actual));
  EXPECT_NEAR(static_cast<double>(estimate), static_cast<double>(actual), 0.02 * static_cast<double>(actual))
      << "estimate " << estimate << " actual " << actual;
}

TEST(MemoryPlan, WeightsEstimateMatchesRealLoads) {
  test::TempDir dir;
  test::TinyHfOptions f16;
  test::write_tiny_hf_model(dir.path() / "f16", f16);
  test::TinyHfOptions gptq = test::tiny_gptq_options();
  test::write_tiny_hf_model(dir.path() / "gptq", gptq);
  test::TinyHfOptions act = test::tiny_gptq_options();
  act.gptq_act_order = true;
  act.gptq_bits = 8;
  test::write_tiny_hf_model(dir.path() / "gptq8", act);
  for (bool keep : {true, false}) {
    expect_estimate_close(dir.path() / "f16", keep);
    expect_estimate_close(dir.path() / "gptq", keep);
    expect_estimate_close(dir.path() / "gptq8", keep);
  }
  if (fs::exists(test::test_model_path())) {
    expect_estimate_close(test::test_model_path(), true);
  } else if (test::under_ci()) {
    ADD_FAILURE() << "the test model is missing";
  }
}

TEST(MemoryPlan, KvCacheIsWhatASessionAllocates) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir.path() / "m", test::TinyHfOptions{});
  LoadOptions o;
  o.n_threads = 1;
  auto model = LlamaModel::load(inspect_model_source(dir.path() / "m").files, o);
  const MemoryPlan p = plan_memory(model->config(), model->weights_bytes(), 64, 1);
  Session s(*model, 64);
  EXPECT_EQ(p.kv_bytes(), s.cache_bytes());
  EXPECT_EQ(p.weights_bytes, model->weights_bytes());
  EXPECT_GT(p.workspace_bytes, 0u);
}

ModelConfig llama7b() {
  ModelConfig c;
  c.n_layers = 32;
  c.hidden_size = 4096;
  c.intermediate_size = 11008;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.head_dim = 128;
  c.vocab_size = 32000;
  return c;
}

TEST(MemoryPlan, MisfitNamesTheNumbersAndWhatWouldFit) {
  const ModelConfig c = llama7b();
  // 3.9 GB of GPTQ weights; fp32 KV: 32 layers x 2 x 4096 x 4 bytes = 1 MiB per token.
  const MemoryPlan p = plan_memory(c, 3'900'000'000ull, 4096, 2);
  EXPECT_EQ(p.kv_bytes_per_token, 1u << 20);
  EXPECT_EQ(p.kv_bytes(), 8ull << 30);
  EXPECT_EQ(memory_misfit(p, p.total(), "llama", "system memory"), "");
  const uint64_t avail = p.weights_bytes + p.workspace_bytes + (3ull << 30);  // room for 3 GiB of KV
  const std::string m = memory_misfit(p, avail, "llama:gptq", "system memory");
  EXPECT_NE(m.find("llama:gptq needs "), std::string::npos) << m;
  EXPECT_NE(m.find("KV cache 8.0 GiB for num_ctx 4096 x 2 sequences"), std::string::npos) << m;
  EXPECT_NE(m.find("of system memory is available"), std::string::npos) << m;
  EXPECT_NE(m.find("num_ctx 1536 would fit"), std::string::npos) << m;  // 3 GiB / 2 sequences / 1 MiB
  EXPECT_EQ(m.find("parallel sequence"), std::string::npos) << m;   // not even one at 4096
  const std::string weights = memory_misfit(p, 1u << 30, "llama:gptq", "system memory");
  EXPECT_NE(weights.find("the weights alone do not fit"), std::string::npos) << weights;
  const MemoryPlan one = plan_memory(c, 3'900'000'000ull, 4096, 4);
  const std::string seqs = memory_misfit(one, one.weights_bytes + one.workspace_bytes + (9ull << 30), "m", "RAM");
  EXPECT_NE(seqs.find("or 2 parallel sequences at num_ctx 4096"), std::string::npos) << seqs;
}

TEST(MemoryPlan, AvailableMemoryIsReadAndCanBeOverridden) {
  EXPECT_GT(available_system_memory(), 0u);  // /proc/meminfo exists on Linux
  ::setenv("GPTQD_MEMORY_AVAILABLE", "123456789", 1);
  EXPECT_EQ(available_system_memory(), 123456789u);
  ::unsetenv("GPTQD_MEMORY_AVAILABLE");
  EXPECT_EQ(human_bytes(1536ull << 20), "1.5 GiB");
  EXPECT_EQ(human_bytes(312ull << 20), "312 MiB");
}

}  // namespace
}  // namespace gptqd::engine
