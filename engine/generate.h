// SPDX-License-Identifier: Apache-2.0
// Generation: prefill the prompt, then sample token by token until EOS, a stop string, the
// token limit or the end of the context, streaming text through a callback that says "keep
// going" (engine layer). Step-wise, so a scheduler can interleave several requests.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"
#include "engine/llama_model.h"
#include "engine/sampler.h"

namespace gptqd::engine {

struct GenerateOptions {
  SamplingOptions sampling;
  int64_t max_tokens = -1;            // num_predict: -1 = until EOS, a stop string or a full context
  std::vector<std::string> stop;      // stop strings, matched across token boundaries, never emitted
  int64_t prefill_chunk = 0;          // prompt tokens per step (0: the whole prompt in one step), so a
                                      // scheduler can run other requests between the chunks of a long one

  // Error(invalid_argument) naming the option. Inline: the request fuzzer runs it without the
  // rest of the engine.
  void validate() const {
    sampling.validate();
    if (max_tokens < -1) fail(ErrorCode::invalid_argument, "num_predict must be -1 (no limit) or >= 0, not ", max_tokens);
    StopMatcher check(stop);  // validates the stop strings
  }
};

struct GenerateStats {
  int64_t n_prompt = 0;               // prompt tokens
  int64_t n_prompt_cached = 0;        // of which reused from the session's cache
  int64_t n_generated = 0;
  double prompt_ms = 0;               // prefill time
  double decode_ms = 0;               // time spent generating after the prefill
  std::string done_reason;            // "stop" (EOS or stop string), "length", "cancelled"
  std::vector<int32_t> tokens;        // the generated ids (EOS not included)
  int64_t batch_peak = 1;             // the most requests decoded together with this one (decode_batch)
};

// Receives generated text (always whole UTF-8 characters); returns false to cancel.
using OnPiece = std::function<bool(std::string_view text)>;

class Generator {
 public:
  // The session keeps its cache across requests: the longest common prefix of its tokens and
  // `prompt` is reused, the rest recomputed. Error(invalid_argument) when the prompt does not fit
  // the session's context (the caller decides whether to truncate) or is empty.
  Generator(const LlamaModel& model, Session& session, std::vector<int32_t> prompt, GenerateOptions options,
            OnPiece on_piece);

  // One unit of work: the prompt (or its next prefill_chunk tokens), then one token per call.
  // False once done.
  bool step();
  // Whether the next step is a one-token decode, which decode_batch can share with others.
  bool wants_decode() const { return prefilled_ && !done_ && !cancelled_; }
  // That step with logits computed elsewhere (decode_batch): the token fed was decode_token(),
  // `forward_ms` the time its forward took.
  bool step_with_logits(std::span<const float> logits, double forward_ms, int64_t batch_size = 1);
  int32_t decode_token() const { return stats_.tokens.back(); }
  Session& session() const { return session_; }
  const LlamaModel& model() const { return model_; }
  bool done() const { return done_; }
  // Stops at the next step with done_reason "cancelled".
  void cancel() { cancelled_ = true; }
  const GenerateStats& stats() const { return stats_; }

 private:
  void finish(const char* reason);
  bool emit(const std::string& text);
  bool after_forward();  // sample from logits_, emit, decide whether to go on

  const LlamaModel& model_;
  Session& session_;
  std::vector<int32_t> prompt_;
  GenerateOptions options_;
  OnPiece on_piece_;
  Sampler sampler_;
  TokenStreamDecoder decoder_;
  StopMatcher stop_;
  std::vector<float> logits_;
  std::vector<int32_t> history_;
  GenerateStats stats_;
  bool prefilled_ = false;
  bool prefill_started_ = false;
  size_t prefill_pos_ = 0;  // prompt tokens already in the session
  bool done_ = false;
  bool cancelled_ = false;
};

// One decode step for every generator in `batch` that wants one (wants_decode), as a single
// forward_batch of their sessions; the others are left alone. All must share `model`. Returns how
// many stepped. Batched and one-by-one decoding run the same operations per row; they can differ
// in the last bits where a kernel sums differently for several rows (BLAS sgemm vs sgemv).
size_t decode_batch(const LlamaModel& model, std::span<Generator* const> batch, BatchScratch& scratch);

// Runs a Generator to the end.
GenerateStats generate(const LlamaModel& model, Session& session, std::vector<int32_t> prompt,
                       const GenerateOptions& options, const OnPiece& on_piece);

}  // namespace gptqd::engine
