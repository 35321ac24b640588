// SPDX-License-Identifier: Apache-2.0
// QuantizeTask: calibration, the layer driver, the checkpoint and the quality report, step by
// step on the device worker (daemon layer).
#include "daemon/quantize_task.h"

#include <algorithm>
#include <cmath>
#include <map>

#include "daemon/fault.h"
#include "engine/error.h"
#include "engine/generate.h"
#include "engine/session.h"
#include "quantizer/calibration.h"
#include "quantizer/checkpoint.h"

namespace gptqd::daemon {
namespace {

using json = nlohmann::json;

// The share of the whole job each phase is given in the progress fraction.
constexpr double kLayersShare = 0.85;
constexpr double kCheckpointShare = 0.03;  // then the evaluations share the rest

constexpr const char* kSmokePrompt = "The capital of France is";
constexpr int64_t kSmokeTokens = 16;

engine::GptqConfig gptq_config(const protocol::QuantizeRequest& r) {
  engine::GptqConfig c;
  c.bits = r.bits;
  c.group_size = static_cast<int>(r.group_size);
  c.desc_act = r.desc_act && r.method == "gptq";
  c.sym = r.sym;
  c.static_groups = r.static_groups;
  c.true_sequential = true;
  c.damp_percent = r.damp_percent;
  // v1 cannot store an asymmetric zero of 0 (it would be -1): asymmetric checkpoints are v2
  // (gptq-reference.md B.5).
  c.checkpoint_format = r.sym ? "gptq" : "gptq_v2";
  return c;
}

std::string greedy(const engine::LlamaModel& model) {
  const engine::Tokenizer& tok = model.tokenizer();
  std::vector<int32_t> prompt = tok.encode(kSmokePrompt, false);
  if (tok.add_bos() && tok.bos_id() >= 0) prompt.insert(prompt.begin(), tok.bos_id());
  engine::Session session(model, static_cast<int64_t>(prompt.size()) + kSmokeTokens + 1);
  engine::GenerateOptions opt;
  opt.sampling.temperature = 0;
  opt.max_tokens = kSmokeTokens;
  std::string out;
  engine::generate(model, session, prompt, opt, [&out](std::string_view piece) {
    out += piece;
    return true;
  });
  return out;
}

quantizer::QuantizeOptions quantize_options(const protocol::QuantizeRequest& r) {
  quantizer::QuantizeOptions o;
  o.bits = r.bits;
  o.group_size = static_cast<int>(r.group_size);
  o.sym = r.sym;
  o.desc_act = r.desc_act;
  o.static_groups = r.static_groups;
  o.damp_percent = r.damp_percent;
  return o;
}

}  // namespace

QuantizeTask::QuantizeTask(ModelHandle source, QuantizeSpec spec, std::function<void(QuantizeEvent)> emit)
    // keep_alive 0: the source model is unloaded once the job no longer needs it.
    : Task(std::move(source), 0), spec_(std::move(spec)), emit_(std::move(emit)) {}

void QuantizeTask::abort(ErrorCode code, const std::string& message) {
  if (finished_) return;
  finished_ = true;
  QuantizeEvent ev;
  ev.kind = QuantizeEvent::Kind::error;
  ev.code = code;
  ev.error = message;
  emit_(std::move(ev));
}

void QuantizeTask::emit_progress(const std::string& stage, int64_t done, int64_t total, double fraction, bool force) {
  const auto now = std::chrono::steady_clock::now();
  if (!force && stage == last_stage_ && now - last_progress_ < std::chrono::milliseconds(250)) return;
  last_progress_ = now;
  last_stage_ = stage;
  QuantizeEvent ev;
  ev.kind = QuantizeEvent::Kind::progress;
  if (driver_) ev.progress = driver_->progress();
  ev.progress.stage = stage;
  ev.progress.done = done;
  ev.progress.total = total;
  ev.progress.fraction = fraction;
  emit_(std::move(ev));
}

void QuantizeTask::prepare(const engine::LlamaModel& source) {
  const protocol::QuantizeRequest& r = spec_.request;
  const engine::Tokenizer& tok = source.tokenizer();
  std::vector<int32_t> calib;
  if (!spec_.calib_text.empty()) {
    calib = quantizer::tokenize_corpus(tok, spec_.calib_text);
    spec_.calib_text.clear();
    spec_.calib_text.shrink_to_fit();
  }
  if (r.eval_windows > 0) {
    if (!spec_.eval_text.empty()) {
      eval_tokens_ = quantizer::tokenize_corpus(tok, spec_.eval_text);
      spec_.eval_text.clear();
      spec_.eval_text.shrink_to_fit();
    } else {
      // Hold out the tail of the calibration text; windows are drawn from the rest only.
      const int64_t hold = r.eval_windows * r.eval_seqlen;
      const int64_t need = hold + (r.method == "gptq" ? r.seqlen + 1 : 0);
      if (static_cast<int64_t>(calib.size()) < need) {
        fail(ErrorCode::invalid_argument, "the calibration text has ", calib.size(), " tokens, not enough to hold out ",
             r.eval_windows, " evaluation window(s) of ", r.eval_seqlen, " tokens",
             r.method == "gptq" ? " and still draw calibration windows" : "",
             "; pass an evaluation set (--eval DATASET|FILE), fewer --eval-windows, or more text");
      }
      eval_tokens_.assign(calib.end() - hold, calib.end());
      calib.resize(calib.size() - static_cast<size_t>(hold));
    }
    if (static_cast<int64_t>(eval_tokens_.size()) < r.eval_seqlen) {
      fail(ErrorCode::invalid_argument, "the evaluation text has ", eval_tokens_.size(), " tokens, fewer than one window of ",
           r.eval_seqlen, "; pass a smaller --eval-seqlen or more text");
    }
  }
  std::vector<std::vector<int32_t>> windows;
  quantizer::Method method = quantizer::Method::rtn;
  if (r.method == "gptq") {
    method = quantizer::Method::gptq;
    if (calib.empty()) fail(ErrorCode::invalid_argument, "GPTQ needs calibration text (--calib DATASET|FILE)");
    windows = quantizer::sample_windows(calib, r.samples, r.seqlen, r.seed);
  }
  for (int64_t l = 0; l < spec_.n_done_layers; ++l) {
    auto done = quantizer::LayerDriver::read_layer_result(spec_.job_dir, l);
    linears_.insert(linears_.end(), done.linears.begin(), done.linears.end());
  }
  driver_ = std::make_unique<quantizer::LayerDriver>(source, std::move(windows), method, quantize_options(r),
                                                     spec_.job_dir, spec_.n_done_layers);
}

bool QuantizeTask::step(WorkerModel& m, bool /*fresh_load*/) {
  if (finished_) return false;
  const engine::LlamaModel& source = m.model();
  const protocol::QuantizeRequest& r = spec_.request;
  try {
    if (cancel.load()) fail(ErrorCode::cancelled, "job ", spec_.job_id, " was cancelled");
    switch (phase_) {
      case Phase::prepare: {
        prepare(source);
        phase_ = Phase::layers;
        emit_progress(spec_.n_done_layers > 0 ? "replay" : "embed", 0, 0,
                      kLayersShare * static_cast<double>(spec_.n_done_layers) /
                          static_cast<double>(source.weights().layers.size()),
                      true);
        return true;
      }
      case Phase::layers: {
        const bool more = driver_->step();
        if (auto done = driver_->take_finished_layer()) {
          linears_.insert(linears_.end(), done->linears.begin(), done->linears.end());
          QuantizeEvent ev;
          ev.kind = QuantizeEvent::Kind::layer;
          ev.layer = std::move(*done);
          emit_(std::move(ev));
        }
        const quantizer::DriverProgress p = driver_->progress();
        emit_progress(p.stage, p.done, p.total, kLayersShare * p.fraction, false);
        if (!more) phase_ = Phase::checkpoint;
        return true;
      }
      case Phase::checkpoint: {
        emit_progress("checkpoint", 0, 1, kLayersShare, true);
        quantizer::CheckpointSpec cs;
        cs.config = gptq_config(r);
        const std::filesystem::path job_dir = spec_.job_dir;
        std::map<std::string, std::pair<int64_t, std::string>> where;  // prefix -> (layer, name)
        for (int64_t l = 0; l < static_cast<int64_t>(source.weights().layers.size()); ++l) {
          for (const std::string& name : quantizer::llama_linear_names()) where[quantizer::linear_prefix(l, name)] = {l, name};
        }
        auto linears = [&job_dir, &where](const std::string& prefix) {
          const auto& [layer, name] = where.at(prefix);
          return quantizer::LayerDriver::read_linear(job_dir, layer, name);
        };
        quantizer::write_gptq_checkpoint(source.info(), linears, cs, spec_.out_dir);
        fault_disk_full("quantize.checkpoint");
        fault_eio("quantize.checkpoint", spec_.out_dir / "model.safetensors");
        phase_ = r.eval_windows > 0 ? Phase::eval_source : Phase::load_result;
        return true;
      }
      case Phase::eval_source:
      case Phase::eval_result: {
        const bool src = phase_ == Phase::eval_source;
        if (!evaluator_) {
          evaluator_ = std::make_unique<engine::PerplexityEvaluator>(src ? source : *result_, eval_tokens_, r.eval_seqlen,
                                                                     r.eval_windows);
        }
        const bool more = evaluator_->step();
        const double base = kLayersShare + kCheckpointShare;
        const double half = (1.0 - base) / 2.0;
        const double f = static_cast<double>(evaluator_->windows_done()) /
                         static_cast<double>(std::max<int64_t>(1, evaluator_->windows_total()));
        emit_progress(src ? "eval-source" : "eval-result", evaluator_->windows_done(), evaluator_->windows_total(),
                      base + half * (src ? f : 1.0 + f), !more);
        if (!more) {
          (src ? source_ppl_ : result_ppl_) = evaluator_->result();
          evaluator_.reset();
          phase_ = src ? Phase::load_result : Phase::smoke;
        }
        return true;
      }
      case Phase::load_result: {
        engine::LoadOptions lo;
        lo.n_threads = spec_.n_threads;
        result_ = engine::LlamaModel::load(engine::inspect_model_source(spec_.out_dir).files, lo);
        phase_ = r.eval_windows > 0 ? Phase::eval_result : Phase::smoke;
        return true;
      }
      case Phase::smoke: {
        emit_progress("smoke", 0, 1, 0.99, true);
        smoke_source_ = greedy(source);
        smoke_result_ = greedy(*result_);
        QuantizeEvent ev;
        ev.kind = QuantizeEvent::Kind::done;
        ev.quality = quality_report();
        result_.reset();
        finished_ = true;
        phase_ = Phase::finished;
        emit_(std::move(ev));
        return false;
      }
      case Phase::finished:
        return false;
    }
  } catch (const Error& e) {
    abort(e.code(), e.what());
  } catch (const std::exception& e) {
    abort(ErrorCode::internal, std::string("internal error: ") + e.what());
  }
  return false;
}

json QuantizeTask::quality_report() {
  const protocol::QuantizeRequest& r = spec_.request;
  json q;
  q["method"] = r.method;
  q["bits"] = r.bits;
  q["group_size"] = r.group_size;
  q["desc_act"] = r.desc_act;
  q["sym"] = r.sym;
  q["static_groups"] = r.static_groups;
  q["damp_percent"] = r.damp_percent;
  q["calib"] = r.calib;
  q["samples"] = r.samples;
  q["seqlen"] = r.seqlen;
  q["seed"] = r.seed;
  q["eval_dataset"] = r.eval.empty() ? (r.calib.empty() ? std::string() : "held-out tail of " + r.calib) : r.eval;
  q["eval_windows"] = r.eval_windows;
  q["eval_seqlen"] = r.eval_seqlen;
  std::string state = "ready";
  std::string reason;
  if (source_ppl_ && result_ppl_) {
    const double s = source_ppl_->perplexity, t = result_ppl_->perplexity;
    q["source_ppl"] = s;
    q["result_ppl"] = std::isfinite(t) ? json(t) : json(nullptr);
    q["eval_windows"] = result_ppl_->n_windows;
    const double ratio = t / s;
    q["ratio"] = std::isfinite(ratio) ? json(ratio) : json(nullptr);
    if (!std::isfinite(t)) {
      state = "failed-quality";
      reason = "the result's perplexity is not a number";
    } else if (ratio > r.max_ppl_ratio) {
      state = "failed-quality";
      reason = "perplexity rose from " + std::to_string(s) + " to " + std::to_string(t) + " (x" + std::to_string(ratio) +
               ", limit x" + std::to_string(r.max_ppl_ratio) + ")";
    }
  }
  q["max_ppl_ratio"] = r.max_ppl_ratio;
  q["smoke_prompt"] = kSmokePrompt;
  q["smoke_source"] = smoke_source_;
  q["smoke_output"] = smoke_result_;
  double sum_err = 0, max_err = 0, total_loss = 0;
  int retries = 0, fallbacks = 0;
  json per_linear = json::array();
  for (const auto& l : linears_) {
    sum_err += l.weight_error;
    max_err = std::max(max_err, l.weight_error);
    total_loss += l.loss;
    retries += l.damp_attempts > 1 ? 1 : 0;
    fallbacks += l.rtn_fallback ? 1 : 0;
  }
  q["linears"] = linears_.size();
  q["mean_weight_error"] = linears_.empty() ? 0.0 : sum_err / static_cast<double>(linears_.size());
  q["max_weight_error"] = max_err;
  q["total_loss"] = total_loss;
  q["damp_retries"] = retries;
  q["rtn_fallbacks"] = fallbacks;
  q["state"] = state;
  if (!reason.empty()) q["reason"] = reason;
  return q;
}

}  // namespace gptqd::daemon
