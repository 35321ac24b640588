// SPDX-License-Identifier: Apache-2.0
// JobManager: quantize jobs on the io thread (daemon layer).
#include "daemon/jobs.h"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <cmath>
#include <set>

#include "daemon/daemon.h"
#include "daemon/fault.h"
#include "daemon/handler_support.h"
#include "daemon/importer.h"
#include "daemon/log.h"
#include "engine/error.h"
#include "quantizer/driver.h"

namespace gptqd::daemon {

using nlohmann::json;
using boost::asio::awaitable;
namespace asio = boost::asio;

namespace {

bool is_live_state(const std::string& s) { return s == "queued" || s == "running"; }

json layer_json(const quantizer::LayerResult& r) {
  json linears = json::array();
  for (const auto& l : r.linears) linears.push_back(l.to_json());
  return json{{"layer", r.layer}, {"seconds", r.seconds}, {"linears", std::move(linears)}};
}

}  // namespace

JobManager::JobManager(Daemon& d) : d_(d) {}

std::filesystem::path JobManager::job_dir(int64_t id) const {
  return d_.config().state_dir / "jobs" / std::to_string(id);
}

std::filesystem::path JobManager::out_dir(int64_t id) const {
  return d_.blobs().tmp_dir() / ("job-" + std::to_string(id) + "-out");
}

void JobManager::remove_scratch(int64_t id) {
  std::error_code ec;
  std::filesystem::remove_all(job_dir(id), ec);
  std::filesystem::remove_all(out_dir(id), ec);
}

awaitable<int64_t> JobManager::start_quantize(protocol::QuantizeRequest r, bool admin) {
  RegistryTag source = handlers::find_or_404(d_, handlers::parse_ref(r.model));
  const std::string source_ref = source.name + ":" + source.tag;
  if (source.format != "safetensors") {
    fail(ErrorCode::unsupported, "model ", source_ref, " is ", source.format, " (", source.dtype,
         "); GPTQ quantization needs a Hugging Face safetensors model (config.json + *.safetensors + tokenizer) — "
         "pull the model's HF folder");
  }
  if (source.dtype.rfind("GPTQ", 0) == 0) {
    fail(ErrorCode::invalid_argument, "model ", source_ref, " is already quantized (", source.dtype,
         "); quantize its full-precision source instead");
  }
  if (r.device != "auto" && r.device != "cpu") {
    fail(ErrorCode::unsupported, "device '", r.device, "': this gptqd quantizes on the CPU only (use --device cpu)");
  }
  const std::string tag = r.tag.empty() ? r.default_tag() : r.tag;
  std::string why;
  if (!protocol::is_valid_tag(tag, &why)) fail(ErrorCode::invalid_argument, "invalid tag '", tag, "': ", why);
  r.tag = tag;
  const std::string target = source.name + ":" + tag;
  if (d_.registry().find(source.name, tag)) {
    fail(ErrorCode::conflict, "model ", target, " already exists; remove it (gptqctl rm ", target,
         ") or choose another --tag");
  }
  for (const auto& [id, job] : live_) {
    if (job->target == target) fail(ErrorCode::conflict, "job ", id, " is already producing ", target);
  }
  if (r.method == "gptq" && r.calib.empty()) {
    fail(ErrorCode::invalid_argument,
         "GPTQ needs calibration text: --calib DATASET|FILE (register text with `gptqctl dataset add NAME FILE`)");
  }
  if (r.calib.empty() && r.eval.empty() && r.eval_windows > 0) {
    fail(ErrorCode::invalid_argument, "the quality report needs text: --eval DATASET|FILE (or --eval-windows 0)");
  }
  // Resolve the datasets now, so a wrong name fails the request rather than the job.
  if (!r.calib.empty()) handlers::dataset_files(d_, r.calib, admin);
  if (!r.eval.empty()) handlers::dataset_files(d_, r.eval, admin);

  json params = {{"request", r.to_json()}, {"source", source_ref}, {"admin", admin}};
  const int64_t id = d_.registry().add_job("quantize", target, params.dump(), "queued");
  log_info("quantize job ", id, ": ", source_ref, " -> ", target, " (", r.method, ", ", r.bits, " bits, group ",
           r.group_size, r.desc_act ? ", act-order" : "", ")");
  co_await launch(id, std::move(r), std::move(source), admin, false);
  co_return id;
}

awaitable<void> JobManager::resume_all() {
  std::set<std::string> keep;
  for (const RegistryJob& j : d_.registry().jobs()) {
    if (j.kind != "quantize" || !is_live_state(j.state)) continue;
    try {
      json params = json::parse(j.params_json);
      protocol::QuantizeRequest r = protocol::QuantizeRequest::from_json(params.at("request"));
      protocol::ModelRef ref = handlers::parse_ref(params.at("source").get<std::string>());
      auto source = d_.registry().find(ref.name, ref.tag);
      if (!source) fail(ErrorCode::not_found, "its source model ", ref.str(), " was removed");
      keep.insert(std::to_string(j.id));
      log_info("resuming quantize job ", j.id, " (", j.target, ")");
      co_await launch(j.id, std::move(r), std::move(*source), params.value("admin", false), true);
    } catch (const std::exception& e) {
      log_warn("cannot resume quantize job ", j.id, ": ", e.what());
      d_.registry().finish_job(j.id, "failed", std::string("cannot resume: ") + e.what());
      remove_scratch(j.id);
    }
  }
  // Scratch of jobs that are not live any more (finished while their cleanup was interrupted).
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(d_.config().state_dir / "jobs", ec)) {
    if (!keep.contains(e.path().filename().string())) {
      log_info("removing leftover job scratch ", e.path().string());
      std::filesystem::remove_all(e.path(), ec);
    }
  }
}

awaitable<void> JobManager::launch(int64_t id, protocol::QuantizeRequest r, RegistryTag source, bool admin,
                                   bool resume) {
  auto live = std::make_shared<Live>();
  live->id = id;
  live->source = source.name + ":" + source.tag;
  live->target = source.name + ":" + r.tag;
  live->started = std::chrono::steady_clock::now();
  live->progress = json{{"event", "progress"}, {"job", id}, {"stage", "queued"}, {"fraction", 0.0}};
  live_[id] = live;

  QuantizeSpec spec;
  spec.job_id = id;
  spec.job_dir = job_dir(id);
  spec.out_dir = out_dir(id);
  spec.n_threads = static_cast<int>(d_.config().threads);
  try {
    // Layers recorded in the registry whose files are still there, from 0 without a gap.
    int64_t n_done = 0;
    if (resume) {
      for (const auto& [layer, report] : d_.registry().job_layers(id)) {
        if (layer != n_done || !std::filesystem::exists(quantizer::LayerDriver::layer_file(spec.job_dir, layer))) break;
        ++n_done;
      }
    }
    spec.n_done_layers = n_done;
    std::filesystem::create_directories(spec.job_dir);
    std::error_code ec;
    std::filesystem::remove_all(spec.out_dir, ec);
    handlers::DatasetFiles calib, eval;
    if (!r.calib.empty()) calib = handlers::dataset_files(d_, r.calib, admin);
    if (!r.eval.empty()) eval = handlers::dataset_files(d_, r.eval, admin);
    auto read = [calib, eval] {
      return std::make_pair(calib.empty() ? std::string() : handlers::dataset_text(calib),
                            eval.empty() ? std::string() : handlers::dataset_text(eval));
    };
    auto texts = co_await run_blocking(d_.pool(), std::move(read));
    spec.calib_text = std::move(texts.first);
    spec.eval_text = std::move(texts.second);
    if (n_done > 0) {
      live->start_fraction = 0.85 * static_cast<double>(n_done) /
                             static_cast<double>(json::parse(source.config_json).value("n_layers", int64_t{1}));
    }
    spec.request = std::move(r);
  } catch (const std::exception& e) {
    // Anything (a missing file, a full disk creating jobs/<id>) ends the job here, never leaves it queued.
    end(id, "failed", e.what(), json{{"event", "error"}, {"job", id}, {"error", e.what()}});
    remove_scratch(id);
    throw;
  }

  auto exec = co_await asio::this_coro::executor;
  auto emit = [this, exec, id](QuantizeEvent ev) {
    asio::post(exec, [this, id, ev = std::move(ev)]() mutable { on_event(id, std::move(ev)); });
  };
  live->task = std::make_shared<QuantizeTask>(handlers::model_handle(d_, source), std::move(spec), emit);
  std::string why;
  if (!d_.worker().submit(live->task, &why)) {
    end(id, "failed", why, json{{"event", "error"}, {"job", id}, {"error", why}});
    remove_scratch(id);
    fail(ErrorCode::busy, why);
  }
}

void JobManager::broadcast(Live& job, const json& ev) {
  for (auto& f : job.followers) f->push(ev);
  if (observer_) observer_(job.id, ev);
}

void JobManager::on_event(int64_t id, QuantizeEvent ev) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  std::shared_ptr<Live> job = it->second;
  switch (ev.kind) {
    case QuantizeEvent::Kind::progress: {
      const auto& p = ev.progress;
      const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - job->started).count();
      json j = {{"event", "progress"}, {"job", id},       {"layer", p.layer},     {"n_layers", p.n_layers},
                {"stage", p.stage},    {"done", p.done},  {"total", p.total},     {"fraction", p.fraction},
                {"elapsed_s", elapsed}, {"eta_s", nullptr}};
      const double gained = p.fraction - job->start_fraction;
      if (gained > 0.005) j["eta_s"] = elapsed / gained * (1.0 - p.fraction);
      if (job->progress.value("stage", "") == "queued") d_.registry().finish_job(id, "running", "");
      job->progress = j;
      broadcast(*job, j);
      return;
    }
    case QuantizeEvent::Kind::layer: {
      json lj = layer_json(ev.layer);
      d_.registry().add_job_layer(id, ev.layer.layer, lj.dump());
      fault_point("quantize.after_layer." + std::to_string(ev.layer.layer));
      lj["event"] = "layer";
      lj["job"] = id;
      broadcast(*job, lj);
      return;
    }
    case QuantizeEvent::Kind::error: {
      if (d_.stopping() && ev.code == ErrorCode::cancelled && !job->task->cancel.load()) {
        suspend(id);
        return;
      }
      const bool cancelled = ev.code == ErrorCode::cancelled;
      log_warn("quantize job ", id, cancelled ? " cancelled" : " failed", ": ", ev.error);
      json last = cancelled ? json{{"event", "cancelled"}, {"job", id}, {"error", ev.error}}
                            : json{{"event", "error"}, {"job", id}, {"error", ev.error}};
      end(id, cancelled ? "cancelled" : "failed", ev.error, last);
      remove_scratch(id);
      return;
    }
    case QuantizeEvent::Kind::done: {
      job->finishing = true;
      asio::co_spawn(d_.io(), finish(id, std::move(ev.quality)), asio::detached);
      return;
    }
  }
}

awaitable<void> JobManager::finish(int64_t id, json quality) {
  std::shared_ptr<Live> job = live_.at(id);
  const protocol::ModelRef ref = handlers::parse_ref(job->target);
  json reg = {{"event", "progress"}, {"job", id}, {"stage", "register"}, {"fraction", 1.0}};
  job->progress = reg;
  broadcast(*job, reg);

  json layers = json::array();
  for (const auto& [layer, report] : d_.registry().job_layers(id)) layers.push_back(json::parse(report));
  quality["layers"] = std::move(layers);
  const std::string state = quality.value("state", "ready");

  auto cancel = std::make_shared<std::atomic<bool>>(false);
  d_.track(cancel);
  const std::filesystem::path dir = out_dir(id);
  BlobStore& store = d_.blobs();
  auto import = [dir, &store, cancel] {
    engine::ModelInfo info = engine::inspect_model_source(dir);
    return import_model(info, store, [](json) {}, *cancel);
  };
  std::string error;
  ErrorCode code = ErrorCode::internal;
  ImportOutcome outcome;
  try {
    outcome = co_await run_blocking(d_.pool(), std::move(import));
    if (outcome.error) std::rethrow_exception(outcome.error);
  } catch (const Error& e) {
    error = e.what(), code = e.code();
  } catch (const std::exception& e) {
    error = e.what();
  }
  d_.untrack(cancel);
  bool committed = false, commit_failed = false;
  if (error.empty() && job->task->cancel.load()) error = "job " + std::to_string(id) + " was cancelled", code = ErrorCode::cancelled;
  if (error.empty()) {
    RegistryTag t = handlers::tag_from_import(outcome, ref, "quantized", job->source + " (job " + std::to_string(id) + ")");
    t.state = state;
    t.quality_json = quality.dump();
    try {
      d_.registry().add(t);
      committed = true;
    } catch (const Error& e) {
      error = e.what(), code = e.code();
      commit_failed = e.code() == ErrorCode::io;
    }
  }
  handlers::release_import(d_, outcome, committed, commit_failed);
  if (!committed && d_.stopping() && !job->task->cancel.load()) {
    // The shutdown interrupted the import: the recorded layers stay, the next start redoes the rest.
    std::error_code ec;
    std::filesystem::remove_all(out_dir(id), ec);
    suspend(id);
    co_return;
  }
  if (committed) {
    log_info("quantize job ", id, " done: ", job->target, " (", state, ")");
    end(id, "done", "", json{{"event", "done"}, {"job", id}, {"status", "success"}, {"model", job->target},
                             {"state", state}, {"quality", quality}});
  } else if (code == ErrorCode::cancelled) {
    end(id, "cancelled", error, json{{"event", "cancelled"}, {"job", id}, {"error", error}});
  } else {
    log_warn("quantize job ", id, " failed to register ", job->target, ": ", error);
    end(id, "failed", error, json{{"event", "error"}, {"job", id}, {"error", error}});
  }
  remove_scratch(id);
}

void JobManager::suspend(int64_t id) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  json last = {{"event", "error"}, {"job", id},
               {"error", "the daemon is stopping; job " + std::to_string(id) + " resumes when it starts again"}};
  broadcast(*it->second, last);
  for (auto& f : it->second->followers) f->close();
  live_.erase(it);
}

void JobManager::end(int64_t id, const std::string& state, const std::string& error, json final_event) {
  d_.registry().finish_job(id, state, error);
  auto it = live_.find(id);
  if (it == live_.end()) {
    if (observer_) observer_(id, final_event);  // broadcast() tells it for live jobs
    return;
  }
  broadcast(*it->second, final_event);
  for (auto& f : it->second->followers) f->close();
  live_.erase(it);
}

std::optional<json> JobManager::job_json(int64_t id, bool detailed) {
  auto j = d_.registry().job(id);
  if (!j) return std::nullopt;
  json params = json::parse(j->params_json, nullptr, false);
  json out = {{"id", j->id},           {"kind", j->kind},
              {"state", j->state},     {"target", j->target},
              {"created_at", j->created_at}, {"updated_at", j->updated_at},
              {"error", j->error},     {"progress", nullptr},
              {"quality", nullptr},    {"source", params.is_object() ? params.value("source", "") : ""}};
  if (auto it = live_.find(id); it != live_.end()) out["progress"] = it->second->progress;
  if (j->kind == "quantize" && j->state == "done") {
    const auto ref = protocol::parse_model_ref(j->target, nullptr);
    if (ref) {
      if (auto t = d_.registry().find(ref->name, ref->tag); t && !t->quality_json.empty()) {
        json q = json::parse(t->quality_json, nullptr, false);
        if (q.is_object()) q.erase("layers");
        out["quality"] = q;
      }
    }
  }
  if (detailed) {
    out["params"] = params.is_object() && params.contains("request") ? params["request"] : params;
    json layers = json::array();
    for (const auto& [layer, report] : d_.registry().job_layers(id)) layers.push_back(json::parse(report, nullptr, false));
    out["layers"] = std::move(layers);
  }
  return out;
}

json JobManager::list_json() {
  json jobs = json::array();
  for (const RegistryJob& j : d_.registry().jobs()) {
    if (auto one = job_json(j.id, false)) jobs.push_back(std::move(*one));
  }
  return json{{"jobs", std::move(jobs)}};
}

void JobManager::cancel(int64_t id) {
  auto j = d_.registry().job(id);
  if (!j) fail(ErrorCode::not_found, "job ", id, " not found; `gptqctl jobs` lists them");
  if (auto it = live_.find(id); it != live_.end()) {
    it->second->task->cancel.store(true);
    log_info("cancelling quantize job ", id);
    return;
  }
  if (is_live_state(j->state)) {
    // Recorded as live but not running here (its resume failed to start): just close it.
    d_.registry().finish_job(id, "cancelled", "cancelled");
    remove_scratch(id);
    return;
  }
  fail(ErrorCode::conflict, "job ", id, " already ended (", j->state, ")");
}

std::shared_ptr<AsyncQueue<json>> JobManager::follow(int64_t id) {
  auto it = live_.find(id);
  if (it == live_.end()) return nullptr;
  auto q = std::make_shared<AsyncQueue<json>>(d_.io().get_executor());
  q->push(it->second->progress);
  it->second->followers.push_back(q);
  return q;
}

void JobManager::unfollow(int64_t id, const std::shared_ptr<AsyncQueue<json>>& queue) {
  auto it = live_.find(id);
  if (it == live_.end()) return;
  std::erase(it->second->followers, queue);
}

bool JobManager::uses_model(const std::string& name, const std::string& tag) const {
  const std::string ref = name + ":" + tag;
  for (const auto& [id, job] : live_) {
    if (job->source == ref || job->target == ref) return true;
  }
  return false;
}

}  // namespace gptqd::daemon
