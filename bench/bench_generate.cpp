// SPDX-License-Identifier: Apache-2.0
// Generation speed of the engine: prompt processing and decode tokens/s for one model and a
// thread count, median of several runs (bench). The same measurement as bench/llamacpp_speed.py
// makes with llama.cpp, so the two can be put side by side (docs/performance.md).
//
//   bench_generate MODEL(.gguf|folder) [--threads N] [--prompt-tokens 512] [--decode-tokens 128] [--runs 3]
//                  [--batch 4]
//
// --batch N adds the continuous-batching measurement: N sequences (prompts of 64 tokens) decoded
// together by forward_batch, against the same N taking turns one token at a time (what the
// device worker did before batching); aggregate tokens/s of both.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <vector>

#include "engine/llama_model.h"

namespace {

using gptqd::engine::LlamaModel;
using gptqd::engine::Session;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_generate: prompt and decode tokens/s of the gptqd engine"};
  std::string model_path;
  int threads = 2, prompt_tokens = 512, decode_tokens = 128, runs = 3, batch = 0;
  app.add_option("model", model_path, "A .gguf file or a Hugging Face model folder")->required();
  app.add_option("--threads", threads, "Compute threads")->capture_default_str();
  app.add_option("--prompt-tokens", prompt_tokens, "Prompt length")->capture_default_str();
  app.add_option("--decode-tokens", decode_tokens, "Tokens generated one at a time")->capture_default_str();
  app.add_option("--runs", runs, "Repetitions (the median is reported)")->capture_default_str();
  app.add_option("--batch", batch, "Also measure N sequences decoded together vs taking turns")->check(CLI::Range(0, 64));
  CLI11_PARSE(app, argc, argv);
  if (batch > 0 && prompt_tokens < batch + 64) {
    std::fprintf(stderr, "bench_generate: --batch %d needs --prompt-tokens >= %d\n", batch, batch + 64);
    return 2;
  }

  try {
    gptqd::engine::LoadOptions o;
    o.n_threads = threads;
    auto t0 = std::chrono::steady_clock::now();
    auto model = LlamaModel::load(gptqd::engine::inspect_model_source(model_path).files, o);
    const double load_s = seconds_since(t0);
    const auto V = model->config().vocab_size;
    // A fixed, valid token sequence (ids spread over the vocabulary, no specials needed).
    std::vector<int32_t> prompt(static_cast<size_t>(prompt_tokens));
    for (size_t i = 0; i < prompt.size(); ++i) prompt[i] = static_cast<int32_t>((i * 7919 + 13) % static_cast<size_t>(V));

    std::vector<double> pp, tg;
    std::vector<float> logits;
    for (int r = 0; r < runs; ++r) {
      Session s(*model, prompt_tokens + decode_tokens + 1);
      t0 = std::chrono::steady_clock::now();
      model->forward(s, prompt, false, logits);
      pp.push_back(prompt_tokens / seconds_since(t0));
      t0 = std::chrono::steady_clock::now();
      for (int i = 0; i < decode_tokens; ++i) {
        const int32_t next = static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
        model->forward(s, std::span<const int32_t>(&next, 1), false, logits);
      }
      tg.push_back(decode_tokens / seconds_since(t0));
    }
    std::printf("model    %s\n", model_path.c_str());
    std::printf("weights  %.1f MiB in memory (%s, %s), loaded in %.2f s\n",
                static_cast<double>(model->weights_bytes()) / (1 << 20), model->info().dtype.c_str(),
                model->backend().name().c_str(), load_s);
    std::printf("threads  %d\n\n", threads);
    std::printf("| test | tokens | tokens/s (median of %d) |\n|---|---:|---:|\n", runs);
    std::printf("| prompt (pp%d) | %d | %.1f |\n", prompt_tokens, prompt_tokens, median(pp));
    std::printf("| decode (tg%d) | %d | %.1f |\n", decode_tokens, decode_tokens, median(tg));
    if (batch > 0) {
      // N sequences of 64-token prompts; then decode_tokens steps of all N, batched or in turns.
      std::vector<double> batched, turns;
      for (int r = 0; r < runs; ++r) {
        for (bool together : {true, false}) {
          std::vector<std::unique_ptr<Session>> ss;
          std::vector<Session*> ptrs;
          std::vector<int32_t> next(static_cast<size_t>(batch));
          for (int b = 0; b < batch; ++b) {
            ss.push_back(std::make_unique<Session>(*model, 64 + decode_tokens + 1));
            std::vector<int32_t> p(prompt.begin() + b, prompt.begin() + b + 64);
            model->forward(*ss.back(), p, false, logits);
            next[static_cast<size_t>(b)] =
                static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
            ptrs.push_back(ss.back().get());
          }
          gptqd::engine::BatchScratch scratch;
          std::vector<float> out;
          t0 = std::chrono::steady_clock::now();
          for (int i = 0; i < decode_tokens; ++i) {
            if (together) {
              model->forward_batch(ptrs, next, scratch, out);
            } else {
              for (int b = 0; b < batch; ++b) {
                model->forward(*ptrs[static_cast<size_t>(b)], std::span<const int32_t>(&next[static_cast<size_t>(b)], 1),
                               false, out);
              }
            }
          }
          (together ? batched : turns).push_back(static_cast<double>(batch) * decode_tokens / seconds_since(t0));
        }
      }
      std::printf("| decode, %d sequences batched | %d x %d | %.1f |\n", batch, batch, decode_tokens, median(batched));
      std::printf("| decode, %d sequences taking turns | %d x %d | %.1f |\n", batch, batch, decode_tokens, median(turns));
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_generate: %s\n", e.what());
    return 1;
  }
  return 0;
}
