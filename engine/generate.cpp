// SPDX-License-Identifier: Apache-2.0
// The generation loop (engine layer).
#include "engine/generate.h"

#include <algorithm>
#include <chrono>

#include "engine/error.h"

namespace gptqd::engine {
namespace {

double ms_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Generator::Generator(const LlamaModel& model, Session& session, std::vector<int32_t> prompt, GenerateOptions options,
                     OnPiece on_piece)
    : model_(model),
      session_(session),
      prompt_(std::move(prompt)),
      options_(std::move(options)),
      on_piece_(std::move(on_piece)),
      sampler_(options_.sampling, model.config().vocab_size),
      decoder_(model.tokenizer()),
      stop_(options_.stop) {
  options_.validate();
  if (prompt_.empty()) fail(ErrorCode::invalid_argument, "the prompt is empty");
  if (static_cast<int64_t>(prompt_.size()) >= session_.n_ctx()) {
    fail(ErrorCode::invalid_argument, "the prompt has ", prompt_.size(), " tokens but the context (num_ctx) is ",
         session_.n_ctx(), "; shorten it or raise num_ctx");
  }
  stats_.n_prompt = static_cast<int64_t>(prompt_.size());
}

bool Generator::emit(const std::string& text) {
  if (text.empty()) return true;
  std::string out = stop_.push(text);
  if (!out.empty() && !on_piece_(out)) {
    cancelled_ = true;
    return false;
  }
  return !stop_.stopped();
}

void Generator::finish(const char* reason) {
  if (done_) return;
  if (std::string(reason) != "cancelled") {
    std::string tail = decoder_.finish();
    if (!tail.empty()) emit(tail);
    if (!stop_.stopped()) {
      std::string rest = stop_.flush();
      if (!rest.empty()) on_piece_(rest);
    }
  }
  stats_.done_reason = reason;
  done_ = true;
}

bool Generator::step() {
  if (done_) return false;
  if (cancelled_) {
    finish("cancelled");
    return false;
  }
  const auto t0 = std::chrono::steady_clock::now();
  if (!prefilled_) {
    if (!prefill_started_) {
      // Reuse the cached prefix; always recompute at least the last prompt token for its logits.
      const auto& cached = session_.tokens();
      size_t common = 0;
      while (common < cached.size() && common + 1 < prompt_.size() && cached[common] == prompt_[common]) ++common;
      session_.truncate(static_cast<int64_t>(common));
      stats_.n_prompt_cached = static_cast<int64_t>(common);
      prefill_pos_ = common;
      prefill_started_ = true;
    }
    const size_t remaining = prompt_.size() - prefill_pos_;
    const size_t chunk =
        options_.prefill_chunk > 0 ? std::min(remaining, static_cast<size_t>(options_.prefill_chunk)) : remaining;
    const auto part = std::span<const int32_t>(prompt_).subspan(prefill_pos_, chunk);
    if (chunk < remaining) {
      model_.prefill(session_, part);
      prefill_pos_ += chunk;
      stats_.prompt_ms += ms_since(t0);
      return true;
    }
    model_.forward(session_, part, false, logits_);
    prefill_pos_ = prompt_.size();
    history_ = prompt_;
    prefilled_ = true;
    stats_.prompt_ms += ms_since(t0);
  } else {
    const int32_t last = stats_.tokens.back();
    model_.forward(session_, std::span<const int32_t>(&last, 1), false, logits_);
    stats_.decode_ms += ms_since(t0);
  }
  return after_forward();
}

bool Generator::step_with_logits(std::span<const float> logits, double forward_ms, int64_t batch_size) {
  if (!wants_decode()) return step();
  logits_.assign(logits.begin(), logits.end());
  stats_.decode_ms += forward_ms;
  stats_.batch_peak = std::max(stats_.batch_peak, batch_size);
  return after_forward();
}

bool Generator::after_forward() {
  auto t0 = std::chrono::steady_clock::now();
  if (options_.max_tokens >= 0 && stats_.n_generated >= options_.max_tokens) {
    finish("length");
    return false;
  }
  const int32_t next = sampler_.sample(logits_, history_);
  if (model_.tokenizer().is_eos(next)) {
    stats_.decode_ms += ms_since(t0);
    finish("stop");
    return false;
  }
  history_.push_back(next);
  stats_.tokens.push_back(next);
  ++stats_.n_generated;
  const bool keep_going = emit(decoder_.push(next));
  stats_.decode_ms += ms_since(t0);
  if (cancelled_) {
    finish("cancelled");
    return false;
  }
  if (!keep_going) {
    finish("stop");
    return false;
  }
  if (options_.max_tokens >= 0 && stats_.n_generated >= options_.max_tokens) {
    finish("length");
    return false;
  }
  if (session_.pos() >= session_.n_ctx()) {
    finish("length");  // the next token would not fit
    return false;
  }
  return true;
}

size_t decode_batch(const LlamaModel& model, std::span<Generator* const> batch, BatchScratch& scratch) {
  std::vector<Generator*> ready;
  std::vector<Session*> sessions;
  std::vector<int32_t> tokens;
  for (Generator* g : batch) {
    if (!g->wants_decode()) continue;
    if (&g->model() != &model) fail(ErrorCode::internal, "decode_batch: a generator of another model");
    ready.push_back(g);
    sessions.push_back(&g->session());
    tokens.push_back(g->decode_token());
  }
  if (ready.empty()) return 0;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<float>& logits = scratch.logits;
  model.forward_batch(sessions, tokens, scratch, logits);
  const double ms = ms_since(t0);
  const size_t V = static_cast<size_t>(model.config().vocab_size);
  for (size_t i = 0; i < ready.size(); ++i) {
    ready[i]->step_with_logits(std::span<const float>(logits.data() + i * V, V), ms, static_cast<int64_t>(ready.size()));
  }
  return ready.size();
}

GenerateStats generate(const LlamaModel& model, Session& session, std::vector<int32_t> prompt,
                       const GenerateOptions& options, const OnPiece& on_piece) {
  Generator g(model, session, std::move(prompt), options, on_piece);
  while (g.step()) {
  }
  return g.stats();
}

}  // namespace gptqd::engine
