// SPDX-License-Identifier: Apache-2.0
// Device-side work of generation and evaluation requests (daemon layer).
#include "daemon/generation_task.h"

#include "daemon/log.h"

#include <algorithm>

#include "engine/error.h"
#include "engine/memory_plan.h"

namespace gptqd::daemon {

std::vector<int32_t> build_prompt(const engine::LlamaModel& model, const GenerationSpec& spec,
                                  std::vector<std::string>* extra_stops) {
  const engine::Tokenizer& tok = model.tokenizer();
  const bool templated = spec.chat || (!spec.raw && !tok.chat_template().empty());
  std::vector<int32_t> ids;
  if (templated) {
    if (tok.chat_template().empty()) {
      fail(ErrorCode::invalid_argument, "this model ships no chat template; use /api/generate with \"raw\": true");
    }
    engine::ChatTemplate tmpl = engine::ChatTemplate::detect(tok.chat_template());
    std::vector<engine::ChatMessage> messages = spec.messages;
    if (!spec.chat) {
      if (!spec.system.empty()) messages.push_back({"system", spec.system});
      messages.push_back({"user", spec.prompt});
    }
    const std::string bos = tok.bos_id() >= 0 ? tok.piece(tok.bos_id()) : std::string();
    const std::string eos = tok.eos_ids().empty() ? std::string() : tok.piece(tok.eos_ids().front());
    // The template writes BOS itself where the model wants it (as HF's apply_chat_template does).
    ids = tok.encode(tmpl.render(messages, true, bos, eos), /*parse_special=*/true);
    *extra_stops = tmpl.stop_strings();
  } else {
    // Raw prompts may spell special tokens, as with Ollama's and llama.cpp's raw mode.
    std::string text = spec.system.empty() ? spec.prompt : spec.system + "\n\n" + spec.prompt;
    ids = tok.encode(text, /*parse_special=*/spec.raw);
    if (tok.add_bos() && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());
  }
  return ids;
}

// ---- GenerationTask ----

GenerationTask::GenerationTask(ModelHandle model, int64_t keep_alive_s, GenerationSpec spec,
                               std::function<void(GenerationEvent)> emit)
    : Task(std::move(model), keep_alive_s), spec_(std::move(spec)), emit_(std::move(emit)) {}

void GenerationTask::fail_with(ErrorCode code, const std::string& message) {
  if (finished_) return;
  finished_ = true;
  GenerationEvent ev;
  ev.kind = GenerationEvent::Kind::error;
  ev.code = code;
  ev.text = message;
  emit_(std::move(ev));
}

void GenerationTask::abort(ErrorCode code, const std::string& message) { fail_with(code, message); }

void GenerationTask::start(WorkerModel& m, bool fresh_load) {
  model_ = &m;
  GenerationEvent started;
  started.kind = GenerationEvent::Kind::started;
  started.load_ms = fresh_load ? m.load_ms() : 0.0;
  if (!spec_.chat && spec_.prompt.empty() && spec_.system.empty()) {
    // An empty /api/generate prompt only loads the model (Ollama's behaviour).
    emit_(std::move(started));
    GenerationEvent done;
    done.kind = GenerationEvent::Kind::done;
    done.stats.done_reason = "load";
    emit_(std::move(done));
    finished_ = true;
    return;
  }
  std::vector<std::string> extra_stops;
  std::vector<int32_t> prompt = build_prompt(m.model(), spec_, &extra_stops);
  const auto n_ctx = spec_.num_ctx;
  if (static_cast<int64_t>(prompt.size()) >= n_ctx) {
    if (!spec_.truncate) {
      fail(ErrorCode::invalid_argument, "the prompt has ", prompt.size(), " tokens but the context is ", n_ctx,
           " (num_ctx); shorten it, raise num_ctx, or ask for truncation");
    }
    // Keep BOS and the newest tokens, leaving room to answer.
    const int64_t reserve = std::clamp<int64_t>(spec_.options.max_tokens > 0 ? spec_.options.max_tokens : n_ctx / 4, 1,
                                                n_ctx / 2);
    const int64_t keep = n_ctx - reserve;
    const bool bos = m.model().tokenizer().bos_id() >= 0 && prompt.front() == m.model().tokenizer().bos_id();
    std::vector<int32_t> cut;
    if (bos) cut.push_back(prompt.front());
    cut.insert(cut.end(), prompt.end() - (keep - (bos ? 1 : 0)), prompt.end());
    prompt = std::move(cut);
  }
  engine::GenerateOptions options = spec_.options;
  options.prefill_chunk = kPrefillChunk;
  for (auto& s : extra_stops) {
    if (std::find(options.stop.begin(), options.stop.end(), s) == options.stop.end()) options.stop.push_back(s);
  }
  started.n_prompt = static_cast<int64_t>(prompt.size());
  session_ = m.take_session(prompt, n_ctx, engine::available_system_memory());
  auto on_piece = [this](std::string_view text) {
    GenerationEvent ev;
    ev.kind = GenerationEvent::Kind::piece;
    ev.text = std::string(text);
    emit_(std::move(ev));
    return !cancel.load();
  };
  generator_ = std::make_unique<engine::Generator>(m.model(), *session_, std::move(prompt), std::move(options), on_piece);
  emit_(std::move(started));
}

bool GenerationTask::step(WorkerModel& m, bool fresh_load) {
  if (finished_) return false;
  if (!generator_ && cancel.load()) {
    // Cancelled while it waited in the queue: no prompt processing for nobody.
    fail_with(ErrorCode::cancelled, "the request was cancelled before it started");
    return false;
  }
  try {
    if (!generator_) {
      start(m, fresh_load);
      if (finished_) return false;
    }
    if (cancel.load()) generator_->cancel();
    if (generator_->step()) return true;
    report_done();
  } catch (const Error& e) {
    fail_with(e.code(), e.what());
  } catch (const std::exception& e) {
    fail_with(ErrorCode::internal, std::string("internal error: ") + e.what());
  }
  if (session_) m.give_back(std::move(session_));
  return false;
}

engine::Generator* GenerationTask::batchable() {
  if (finished_ || !generator_ || cancel.load()) return nullptr;  // a cancel takes the plain step
  return generator_->wants_decode() ? generator_.get() : nullptr;
}

bool GenerationTask::after_batched_step(WorkerModel& m) {
  if (finished_) return false;
  if (!generator_->done()) return true;
  try {
    report_done();
  } catch (const std::exception& e) {
    fail_with(ErrorCode::internal, std::string("internal error: ") + e.what());
  }
  if (session_) m.give_back(std::move(session_));
  return false;
}

void GenerationTask::report_done() {
  GenerationEvent done;
  done.kind = GenerationEvent::Kind::done;
  done.stats = generator_->stats();
  if (done.stats.batch_peak > 1) {
    log_info("generation with ", model().ref, ": ", done.stats.n_generated, " token(s), decoded in batches of up to ",
             done.stats.batch_peak);
  }
  finished_ = true;
  emit_(std::move(done));
}

// ---- EvalTask ----

EvalTask::EvalTask(ModelHandle model, int64_t keep_alive_s, EvalSpec spec, std::function<void(EvalEvent)> emit)
    : Task(std::move(model), keep_alive_s), spec_(std::move(spec)), emit_(std::move(emit)) {}

void EvalTask::abort(ErrorCode code, const std::string& message) {
  if (finished_) return;
  finished_ = true;
  EvalEvent ev;
  ev.kind = EvalEvent::Kind::error;
  ev.code = code;
  ev.error = message;
  emit_(std::move(ev));
}

bool EvalTask::step(WorkerModel& m, bool /*fresh_load*/) {
  if (finished_) return false;
  try {
    if (cancel.load()) fail(ErrorCode::cancelled, "evaluation cancelled");
    if (!evaluator_) {
      const engine::Tokenizer& tok = m.model().tokenizer();
      std::vector<int32_t> ids = tok.encode(spec_.text, /*parse_special=*/false);
      if (tok.add_bos() && tok.bos_id() >= 0) ids.insert(ids.begin(), tok.bos_id());  // once, at the very start
      spec_.text.clear();
      spec_.text.shrink_to_fit();
      evaluator_ = std::make_unique<engine::PerplexityEvaluator>(m.model(), std::move(ids), spec_.seqlen,
                                                                 spec_.max_windows);
    }
    const bool more = evaluator_->step();
    EvalEvent ev;
    ev.windows_done = evaluator_->windows_done();
    ev.windows_total = evaluator_->windows_total();
    ev.perplexity = evaluator_->perplexity_so_far();
    if (more) {
      ev.kind = EvalEvent::Kind::progress;
      emit_(std::move(ev));
      return true;
    }
    ev.kind = EvalEvent::Kind::done;
    ev.result = evaluator_->result();
    finished_ = true;
    emit_(std::move(ev));
  } catch (const Error& e) {
    abort(e.code(), e.what());
  } catch (const std::exception& e) {
    abort(ErrorCode::internal, std::string("internal error: ") + e.what());
  }
  return false;
}

}  // namespace gptqd::daemon
