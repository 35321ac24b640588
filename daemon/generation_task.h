// SPDX-License-Identifier: Apache-2.0
// GenerationTask and EvalTask: the device-side halves of /api/generate, /api/chat, the OpenAI
// routes and /api/eval (daemon layer). They build the prompt with the model's tokenizer and chat
// template, run the engine step by step on the device worker, and report events through a
// callback (which the handlers post back to the io thread).
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "daemon/device_worker.h"
#include "engine/chat_template.h"
#include "engine/generate.h"
#include "engine/memory_plan.h"
#include "engine/perplexity.h"

namespace gptqd::daemon {

struct GenerationSpec {
  bool chat = false;
  std::vector<engine::ChatMessage> messages;  // chat
  std::string prompt;                         // generate
  std::string system;                         // generate: system prompt for the template
  bool raw = false;                           // generate: no template, prompt used as is
  engine::GenerateOptions options;
  int64_t num_ctx = 2048;
  bool truncate = false;                      // drop the oldest prompt tokens instead of failing
};

struct GenerationEvent {
  enum class Kind { started, piece, done, error };
  Kind kind = Kind::piece;
  std::string text;               // piece: generated text; error: the message
  ErrorCode code = ErrorCode::internal;
  int64_t n_prompt = 0;           // started
  double load_ms = 0;             // started: time spent loading the model for this request
  engine::GenerateStats stats;    // done
};

class GenerationTask final : public Task {
 public:
  GenerationTask(ModelHandle model, int64_t keep_alive_s, GenerationSpec spec,
                 std::function<void(GenerationEvent)> emit);
  bool step(WorkerModel& m, bool fresh_load) override;
  void abort(ErrorCode code, const std::string& message) override;
  engine::Generator* batchable() override;
  bool after_batched_step(WorkerModel& m) override;

  // Prompt tokens fed per step: a newcomer's long prompt lets the others decode in between.
  static constexpr int64_t kPrefillChunk = engine::kForwardChunkTokens;

 private:
  void start(WorkerModel& m, bool fresh_load);
  void report_done();
  void fail_with(ErrorCode code, const std::string& message);

  GenerationSpec spec_;
  std::function<void(GenerationEvent)> emit_;
  std::unique_ptr<engine::Session> session_;
  std::unique_ptr<engine::Generator> generator_;
  WorkerModel* model_ = nullptr;
  bool finished_ = false;
};

// The prompt tokens of a request, as the model's tokenizer and chat template make them.
// Exposed for tests. Error(invalid_argument | unsupported) with a message for the client.
std::vector<int32_t> build_prompt(const engine::LlamaModel& model, const GenerationSpec& spec,
                                  std::vector<std::string>* extra_stops);

struct EvalSpec {
  std::string text;        // the evaluation string (rows already joined)
  int64_t seqlen = 2048;
  int64_t max_windows = 0; // 0: all
};

struct EvalEvent {
  enum class Kind { progress, done, error };
  Kind kind = Kind::progress;
  int64_t windows_done = 0, windows_total = 0;
  double perplexity = 0;   // so far, or final
  engine::PerplexityResult result;  // done
  std::string error;
  ErrorCode code = ErrorCode::internal;
};

class EvalTask final : public Task {
 public:
  EvalTask(ModelHandle model, int64_t keep_alive_s, EvalSpec spec, std::function<void(EvalEvent)> emit);
  bool step(WorkerModel& m, bool fresh_load) override;
  void abort(ErrorCode code, const std::string& message) override;

 private:
  EvalSpec spec_;
  std::function<void(EvalEvent)> emit_;
  std::unique_ptr<engine::PerplexityEvaluator> evaluator_;
  bool finished_ = false;
};

}  // namespace gptqd::daemon
