// SPDX-License-Identifier: Apache-2.0
// Batched decoding (issue 10, the CPU part): forward_batch of several sessions gives each the
// logits its own forward gives, greedy generation through decode_batch -- with requests joining
// and leaving mid-way -- gives exactly the tokens of separate generation, and a prompt fed in
// chunks gives the same result as in one piece. On the real SmolLM2-135M GGUF and a tiny GPTQ
// model (the INT4 kernels), so both weight paths are covered.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/generate.h"
#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::engine {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<LlamaModel> load(const fs::path& path) {
  LoadOptions o;
  o.n_threads = 2;
  return LlamaModel::load(inspect_model_source(path).files, o);
}

struct Models {
  std::unique_ptr<LlamaModel> smol, gptq;
  fs::path dir;
};

Models& models() {
  static Models m = [] {
    Models r;
    if (fs::exists(test::test_model_path())) r.smol = load(test::test_model_path());
    r.dir = fs::temp_directory_path() / ("gptqd-batch-test-" + std::to_string(::getpid()));
    fs::create_directories(r.dir);
    test::write_tiny_hf_model(r.dir / "gptq", test::tiny_gptq_options());
    r.gptq = load(r.dir / "gptq");
    return r;
  }();
  return m;
}

std::vector<const LlamaModel*> all_models() {
  std::vector<const LlamaModel*> v;
  if (models().smol) {
    v.push_back(models().smol.get());
  } else if (test::under_ci()) {
    ADD_FAILURE() << "the test model is missing: " << test::test_model_path();
  }
  v.push_back(models().gptq.get());
  return v;
}

std::vector<int32_t> prompt_of(const LlamaModel& m, const std::string& text) {
  std::vector<int32_t> ids = m.tokenizer().encode(text, false);
  if (ids.empty()) ids.push_back(1);
  // Tiny models have small vocabularies: keep ids inside.
  for (auto& id : ids) id %= static_cast<int32_t>(m.config().vocab_size);
  return ids;
}

GenerateOptions greedy(int64_t max_tokens) {
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = max_tokens;
  return o;
}

const std::vector<std::string> kPrompts = {
    "The capital of France is",
    "Once upon a time, in a small village by the sea, there lived an old fisherman who",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "Water boils at",
};

TEST(BatchDecode, LogitsMatchOneSessionAtATime) {
  for (const LlamaModel* m : all_models()) {
    SCOPED_TRACE(m->config().architecture);
    std::vector<std::unique_ptr<Session>> a, b;
    std::vector<Session*> batch;
    std::vector<int32_t> next;
    std::vector<float> logits;
    for (const std::string& p : kPrompts) {
      a.push_back(std::make_unique<Session>(*m, 128));
      b.push_back(std::make_unique<Session>(*m, 128));
      const std::vector<int32_t> ids = prompt_of(*m, p);
      m->forward(*a.back(), ids, false, logits);  // different lengths: different positions
      m->forward(*b.back(), ids, false, logits);
      batch.push_back(a.back().get());
      next.push_back(ids.front());
    }
    BatchScratch scratch;
    std::vector<float> batched;
    m->forward_batch(batch, next, scratch, batched);
    const size_t V = static_cast<size_t>(m->config().vocab_size);
    ASSERT_EQ(batched.size(), kPrompts.size() * V);
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      m->forward(*b[i], std::span<const int32_t>(&next[i], 1), false, logits);
      EXPECT_EQ(a[i]->pos(), b[i]->pos());
      EXPECT_EQ(a[i]->tokens(), b[i]->tokens());
      double diff = 0, norm = 0;
      for (size_t v = 0; v < V; ++v) {
        diff = std::max<double>(diff, std::fabs(batched[i * V + v] - logits[v]));
        norm = std::max<double>(norm, std::fabs(logits[v]));
      }
      // Same operations per row; only a kernel that sums several rows in another order (sgemm
      // instead of sgemv) may differ, in the last bits.
      EXPECT_LE(diff, 1e-4 * norm + 1e-5) << "session " << i;
    }
  }
}

TEST(BatchDecode, GreedyTokensEqualSeparateGenerationWithJoinsAndLeaves) {
  for (const LlamaModel* m : all_models()) {
    SCOPED_TRACE(m->config().architecture);
    const std::vector<int64_t> max_tokens = {12, 20, 5, 16, 9};  // they leave at different steps
    std::vector<std::vector<int32_t>> want;
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      Session s(*m, 128);
      want.push_back(generate(*m, s, prompt_of(*m, kPrompts[i]), greedy(max_tokens[i]), [](std::string_view) {
                       return true;
                     }).tokens);
    }
    std::vector<std::unique_ptr<Session>> sessions;
    std::vector<std::unique_ptr<Generator>> gens;
    std::vector<Generator*> active;
    BatchScratch scratch;
    size_t joined = 0, max_batch = 0;
    for (int step = 0; step < 200; ++step) {
      // A newcomer every third step: prefilled on its own (in chunks of 3), then decoded with the rest.
      if (step % 3 == 0 && joined < kPrompts.size()) {
        sessions.push_back(std::make_unique<Session>(*m, 128));
        GenerateOptions o = greedy(max_tokens[joined]);
        o.prefill_chunk = 3;
        gens.push_back(std::make_unique<Generator>(*m, *sessions.back(), prompt_of(*m, kPrompts[joined]), o,
                                                   [](std::string_view) { return true; }));
        active.push_back(gens.back().get());
        ++joined;
      }
      for (Generator* g : active) {
        if (!g->wants_decode()) g->step();  // prefill chunks
      }
      max_batch = std::max(max_batch, decode_batch(*m, active, scratch));
      std::erase_if(active, [](Generator* g) { return g->done(); });
      if (active.empty() && joined == kPrompts.size()) break;
    }
    ASSERT_TRUE(active.empty());
    EXPECT_GE(max_batch, 3u) << "requests never overlapped";
    int64_t peak = 0;
    for (const auto& g : gens) peak = std::max(peak, g->stats().batch_peak);
    EXPECT_EQ(peak, static_cast<int64_t>(max_batch));
    for (size_t i = 0; i < kPrompts.size(); ++i) {
      EXPECT_EQ(gens[i]->stats().tokens, want[i]) << "request " << i;
      EXPECT_EQ(gens[i]->stats().done_reason, want[i].size() == static_cast<size_t>(max_tokens[i]) ? "length" : "stop");
    }
  }
}

TEST(BatchDecode, ChunkedPrefillEqualsOnePiece) {
  for (const LlamaModel* m : all_models()) {
    SCOPED_TRACE(m->config().architecture);
    const std::vector<int32_t> prompt = prompt_of(*m, kPrompts[1]);
    Session whole(*m, 128), chunked(*m, 128);
    const std::vector<int32_t> want = generate(*m, whole, prompt, greedy(8), [](std::string_view) { return true; }).tokens;
    GenerateOptions o = greedy(8);
    o.prefill_chunk = 4;
    Generator g(*m, chunked, prompt, o, [](std::string_view) { return true; });
    int prefill_steps = 0;
    while (!g.wants_decode() && g.step()) ++prefill_steps;
      EXPECT_EQ(prefill_steps, static_cast<int>((prompt.size() + 3) / 4));  // the last chunk also samples
    while (g.step()) {
    }
    EXPECT_EQ(g.stats().tokens, want);
    EXPECT_EQ(g.stats().n_prompt, static_cast<int64_t>(prompt.size()));
  }
}

TEST(BatchDecode, RefusesBadBatchesWithoutTouchingTheSessions) {
  const LlamaModel& m = *models().gptq;
  Session a(m, 8), b(m, 8);
  std::vector<float> logits;
  m.forward(a, std::vector<int32_t>{1, 2}, false, logits);
  m.forward(b, std::vector<int32_t>{1, 2, 3, 4, 5, 6, 7, 8}, false, logits);  // full
  BatchScratch scratch;
  auto expect_invalid = [&](std::vector<Session*> s, std::vector<int32_t> t, const std::string& what) {
    try {
      m.forward_batch(s, t, scratch, logits);
      ADD_FAILURE() << "no error for " << what;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument) << what;
      EXPECT_NE(std::string(e.what()).find(what), std::string::npos) << e.what();
    }
  };
  expect_invalid({&a, &a}, {1, 2}, "twice");
  expect_invalid({&a}, {static_cast<int32_t>(m.config().vocab_size)}, "outside the vocabulary");
  expect_invalid({&a, &b}, {1, 2}, "context is full");
  expect_invalid({&a}, {1, 2}, "one token per session");
  EXPECT_EQ(a.pos(), 2);
  EXPECT_EQ(b.pos(), 8);
}

}  // namespace
}  // namespace gptqd::engine
