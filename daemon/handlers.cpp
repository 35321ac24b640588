// SPDX-License-Identifier: Apache-2.0
// Route table and handlers of the socket API (daemon layer).
//
//   GET    /                 "gptqd is running" (liveness for humans and curl)
//   GET    /api/version      {"version"}
//   GET    /api/health       {"status", "version", "uptime_s", "models", "pid"}
//   GET    /api/tags         {"models": [ModelEntry...]}
//   POST   /api/show         {"model"} -> ModelEntry with config and files (+ kernel plan of GPTQ)
//   DELETE /api/delete       {"model"} -> {"status", "model", "freed_bytes"}        (admin)
//   POST   /api/pull         {"model": SOURCE (path or ORG/NAME[@REV]), "name"?, "revision"?, "stream"?}
//                            -> NDJSON events                                             (admin)
//   POST   /api/generate     Ollama generate (NDJSON stream or one object)
//   POST   /api/chat         Ollama chat (NDJSON stream or one object)
//   GET    /api/ps           models loaded on the device
//   POST   /api/eval         perplexity job: {"model", "dataset", "seqlen", "max_windows"} -> NDJSON
//   GET    /api/datasets     registered datasets
//   POST   /api/datasets     {"name", "files": [abs paths]}                           (admin)
//   POST   /api/datasets/pull {"source": ORG/NAME | URL, "files"?, "name"?, ...} -> NDJSON (admin)
//   POST   /api/quantize     QuantizeRequest -> {"job", ...} or, with "stream", NDJSON   (admin)
//   GET    /api/jobs         {"jobs": [...]};  GET /api/jobs/{id}[?stream=true]: one job / its events
//   DELETE /api/jobs/{id}    cancel                                                   (admin)
//   GET    /api/blobs/{digest}  the bytes of a registered file (gptqctl export)
//   GET    /api/gpu          CPU + CUDA devices, and which INT4 kernel runs what, and why
//   POST   /v1/chat/completions, POST /v1/completions (SSE when "stream"), GET /v1/models
#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include "daemon/handlers.h"

#include <unistd.h>

#include <ctime>
#include <filesystem>
#include <string_view>

#include "daemon/async_util.h"
#include "daemon/handler_support.h"
#include "daemon/blob_store.h"
#include "daemon/daemon.h"
#include "daemon/hub_pull.h"
#include "daemon/importer.h"
#include "daemon/log.h"
#include "daemon/protocol.h"
#include "engine/error.h"
#include "engine/json_strict.h"
#include "engine/model_source.h"

namespace gptqd::daemon {
namespace {

using asio::awaitable;
using nlohmann::json;
using protocol::ModelEntry;
using protocol::ModelRef;
using namespace handlers;

// ---- handlers ----------------------------------------------------------------------------------

awaitable<void> handle_root(Daemon&, Request&, ResponseWriter& w) {
  co_await w.send(http::status::ok, "gptqd is running\n", "text/plain; charset=utf-8");
}

awaitable<void> handle_version(Daemon&, Request&, ResponseWriter& w) {
  json body = {{"version", GPTQD_VERSION}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_health(Daemon& d, Request&, ResponseWriter& w) {
  if (!d.unhealthy().empty()) {
    json bad = {{"status", "unhealthy"}, {"error", d.unhealthy()}, {"version", GPTQD_VERSION}, {"pid", ::getpid()}};
    co_await w.send_json(http::status::service_unavailable, bad);
    co_return;
  }
  json body = {{"status", "ok"},
               {"version", GPTQD_VERSION},
               {"pid", ::getpid()},
               {"uptime_s", std::time(nullptr) - d.started_at()},
               {"models", d.registry().list().size()}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_tags(Daemon& d, Request&, ResponseWriter& w) {
  json models = json::array();
  for (const auto& t : d.registry().list()) models.push_back(to_entry(t, false).to_json(false));
  json body = {{"models", std::move(models)}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_show(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::ModelRequest>(req);
  RegistryTag t = find_or_404(d, parse_ref(r.model));
  json body = to_entry(t, true).to_json(true);
  json kernels = co_await kernel_plan_json(d, t);
  if (!kernels.is_null()) body["kernels"] = std::move(kernels);
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_delete(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::ModelRequest>(req);
  ModelRef ref = parse_ref(r.model);
  RegistryTag t = find_or_404(d, ref);
  if (d.pulls_in_flight().contains(t.name + ":" + t.tag)) {
    fail(ErrorCode::conflict, "model ", t.name, ":", t.tag, " is being pulled; try again when the pull ends");
  }
  if (d.jobs().uses_model(t.name, t.tag)) {
    fail(ErrorCode::conflict, "a quantize job uses model ", t.name, ":", t.tag,
         "; cancel it first (gptqctl jobs, gptqctl cancel ID)");
  }
  std::vector<std::string> unreferenced = d.registry().remove(t.name, t.tag);
  uint64_t freed = 0;
  for (const auto& digest : unreferenced) {
    for (const auto& f : t.files) {
      if (f.digest == digest) {
        freed += f.size_bytes;
        break;
      }
    }
    if (!d.blobs().remove_unless_pinned(digest)) {
      log_info("keeping blob ", digest, ": an import in flight uses it");
    }
  }
  log_info("deleted ", t.name, ":", t.tag, " (", unreferenced.size(), " blob(s) freed)");
  json body = {{"status", "success"}, {"model", t.name + ":" + t.tag}, {"freed_bytes", freed}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_pull(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::PullRequest>(req);
  const std::filesystem::path source(r.source);
  if (!source.is_absolute()) {
    // Not a path: ORG/NAME[@REV] on the Hugging Face Hub. What looks like a file (x/y.gguf, ./x,
    // ~/x) is a relative path gptqctl should have resolved.
    const std::string_view src = r.source;
    const bool looks_like_file = src.ends_with(".gguf") || src.ends_with(".safetensors") || src.ends_with(".json") ||
                                 src.starts_with(".") || src.starts_with("~");
    if (src.find('/') != std::string_view::npos && !looks_like_file) {
      co_await pull_from_hub(d, r, w);
      co_return;
    }
    fail(ErrorCode::invalid_argument, "source '", r.source,
         "' is neither an absolute path (gptqctl resolves relative ones) nor a Hub repo ORG/NAME");
  }
  if (!r.revision.empty()) fail(ErrorCode::invalid_argument, "\"revision\" applies to Hub pulls only, not to local paths");

  // Fail fast on the source, before anything is copied or streamed.
  auto inspect = [source] { return engine::inspect_model_source(source); };
  engine::ModelInfo pre = co_await run_blocking(d.pool(), std::move(inspect));

  ModelRef ref;
  if (!r.name.empty()) ref = parse_ref(r.name);
  if (ref.name.empty()) ref.name = pre.suggested_name;
  if (ref.tag.empty()) ref.tag = pre.suggested_tag;
  std::string why;
  if (!protocol::is_valid_name(ref.name, &why) || !protocol::is_valid_tag(ref.tag, &why)) {
    fail(ErrorCode::invalid_argument, "cannot derive a valid model name from ", source.string(), " (", why,
         "); pass one with --name");
  }
  const std::string target = ref.name + ":" + ref.tag;
  if (d.registry().find(ref.name, ref.tag)) {
    fail(ErrorCode::conflict, "model ", target, " already exists; remove it first (gptqctl rm ", target,
         ") or choose another name with --name");
  }
  if (!d.pulls_in_flight().insert(target).second) fail(ErrorCode::conflict, "model ", target, " is already being pulled");
  struct InFlight {
    Daemon& d;
    std::string target;
    ~InFlight() { d.pulls_in_flight().erase(target); }
  } in_flight{d, target};

  const std::string source_kind = pre.format == engine::ModelFormat::gguf ? "gguf-file" : "hf-folder";
  const int64_t job_id = d.registry().add_job("pull", target, json{{"source", source.string()}}.dump());
  log_info("pull ", source.string(), " -> ", target, " (job ", job_id, ", ", pre.files.size(), " file(s), ",
           pre.size_bytes, " bytes)");

  auto exec = co_await asio::this_coro::executor;
  auto events = std::make_shared<AsyncQueue<json>>(exec);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  auto outcome = std::make_shared<ImportOutcome>();
  d.track(cancel);
  BlobStore& store = d.blobs();
  asio::post(d.pool(), [pre, &store, events, cancel, outcome, exec] {
    auto progress = [events, exec](json ev) { asio::post(exec, [events, ev = std::move(ev)]() mutable { events->push(std::move(ev)); }); };
    *outcome = import_model(pre, store, progress, *cancel);
    asio::post(exec, [events] { events->close(); });
  });

  if (r.stream) {
    json first = {{"event", "progress"},
                  {"status", "pulling " + target},
                  {"model", target},
                  {"total", pre.size_bytes},
                  {"n_files", pre.files.size()}};
    co_await w.begin_stream(protocol::kNdjsonType);
    co_await w.write_chunk(first.dump() + "\n");
  }
  while (auto ev = co_await events->pop()) {
    // A client that hangs up cancels its pull, as with Ollama.
    if (r.stream && !co_await w.write_chunk(ev->dump() + "\n")) cancel->store(true);
  }
  d.untrack(cancel);

  // Back on the io thread with the worker done: commit, or clean up.
  std::string error;
  ErrorCode error_code = ErrorCode::internal;
  bool committed = false, commit_failed = false;
  if (outcome->error) {
    try {
      std::rethrow_exception(outcome->error);
    } catch (const Error& e) {
      error = e.what(), error_code = e.code();
    } catch (const std::exception& e) {
      error = e.what();
    }
  } else {
    RegistryTag t = tag_from_import(*outcome, ref, source_kind, source.string());
    try {
      d.registry().add(t);
      committed = true;
    } catch (const Error& e) {
      error = e.what(), error_code = e.code();
      commit_failed = e.code() == ErrorCode::io;
    }
  }
  release_import(d, *outcome, committed, commit_failed);
  d.registry().finish_job(job_id, committed ? "done" : (error_code == ErrorCode::cancelled ? "cancelled" : "failed"), error);

  if (committed) {
    log_info("pulled ", target, " (job ", job_id, ")");
    json done = {{"event", "done"},          {"status", "success"},          {"model", target},
                 {"n_params", outcome->info.n_params}, {"dtype", outcome->info.dtype}, {"size", outcome->info.size_bytes},
                 {"architecture", outcome->info.config.architecture}};
    if (r.stream) {
      co_await w.write_chunk(done.dump() + "\n");
      co_await w.end_stream();
    } else {
      co_await w.send_json(http::status::ok, done);
    }
  } else {
    log_warn("pull of ", target, " failed (job ", job_id, "): ", error);
    if (r.stream) {
      json last = {{"event", "error"}, {"error", error}};
      co_await w.write_chunk(last.dump() + "\n");
      co_await w.end_stream();
    } else {
      co_await w.send_error(status_for(error_code), error);
    }
  }
}

// ---- the table ---------------------------------------------------------------------------------

using HandlerFn = awaitable<void> (*)(Daemon&, Request&, ResponseWriter&);

struct Route {
  http::verb method;
  std::string_view path;
  bool admin;  // changes the registry: root, the daemon's user or the admin group only
  HandlerFn fn;
};

constexpr Route kRoutes[] = {
    {http::verb::get, "/", false, handle_root},
    {http::verb::head, "/", false, handle_root},
    {http::verb::get, "/api/version", false, handle_version},
    {http::verb::get, "/api/health", false, handle_health},
    {http::verb::get, "/api/tags", false, handle_tags},
    {http::verb::post, "/api/show", false, handle_show},
    {http::verb::delete_, "/api/delete", true, handle_delete},
    {http::verb::post, "/api/pull", true, handle_pull},
    {http::verb::post, "/api/generate", false, handle_generate},
    {http::verb::post, "/api/chat", false, handle_chat},
    {http::verb::get, "/api/ps", false, handle_ps},
    {http::verb::post, "/api/eval", false, handle_eval},
    {http::verb::get, "/api/datasets", false, handle_dataset_list},
    {http::verb::post, "/api/quantize", true, handle_quantize},
    {http::verb::get, "/api/jobs", false, handle_jobs},
    {http::verb::get, "/api/jobs/{id}", false, handle_job},
    {http::verb::delete_, "/api/jobs/{id}", true, handle_job_cancel},
    {http::verb::get, "/api/blobs/{digest}", false, handle_blob},
    {http::verb::get, "/api/gpu", false, handle_gpu},
    {http::verb::post, "/api/datasets", true, handle_dataset_add},
    {http::verb::post, "/api/datasets/pull", true, handle_dataset_pull},
    {http::verb::post, "/v1/chat/completions", false, handle_openai_chat},
    {http::verb::post, "/v1/completions", false, handle_openai_completions},
    {http::verb::get, "/v1/models", false, handle_openai_models},
};

// "/api/jobs/7" -> "/api/jobs/{id}": the route patterns with one trailing parameter.
std::string_view route_pattern(std::string_view path) {
  if (path.starts_with("/api/jobs/") && path.size() > 10) return "/api/jobs/{id}";
  if (path.starts_with("/api/blobs/") && path.size() > 11) return "/api/blobs/{digest}";
  return path;
}

awaitable<void> dispatch(Daemon& d, Request& req, ResponseWriter& w) {
  const Route* route = nullptr;
  std::string allow;
  const std::string_view pattern = route_pattern(req.path);
  for (const Route& r : kRoutes) {
    if (r.path != pattern) continue;
    allow += (allow.empty() ? "" : ", ") + std::string(http::to_string(r.method));
    if (r.method == req.method) route = &r;
  }
  if (!route) {
    if (allow.empty()) {
      co_await w.send_error(http::status::not_found, "no such endpoint: " + req.method_name + " " + req.path);
    } else {
      json body = {{"error", req.method_name + " is not allowed on " + req.path + " (allowed: " + allow + ")"}};
      co_await w.send(http::status::method_not_allowed, body.dump() + "\n", "application/json", allow);
    }
    co_return;
  }
  std::string error;
  http::status status = http::status::internal_server_error;
  try {
    // The daemon decides, whatever the socket's file mode lets through.
    if (!d.may_use(req.peer)) {
      const std::string who = describe_caller(Daemon::caller_of(req.peer));
      log_warn("refused ", req.method_name, " ", req.path, " from ", who, ": not in group ", d.config().user_group);
      fail(ErrorCode::permission_denied, who, " may not use gptqd: it serves root, its own user and the members of group ",
           d.config().user_group, " (ask an administrator: usermod -aG ", d.config().user_group, " USER, then log in again)");
    }
    if (route->admin && !d.is_admin(req.peer)) {
      const std::string who = describe_caller(Daemon::caller_of(req.peer));
      log_warn("refused ", req.method_name, " ", req.path, " from ", who, ": not an admin");
      fail(ErrorCode::permission_denied, req.method_name, " ", req.path, " changes the model registry; ", who,
           " may not do that (allowed: root, the daemon's user, group ", d.config().admin_group, ")");
    }
    co_await route->fn(d, req, w);
    co_return;
  } catch (const Error& e) {
    error = e.what();
    status = status_for(e.code());
  } catch (const std::exception& e) {
    error = std::string("internal error: ") + e.what();
    log_error(req.method_name, " ", req.path, ": ", e.what());
  }
  if (!w.started()) {
    co_await w.send_error(status, error);
  } else {
    // The stream already began: the error becomes its last event.
    json last = {{"event", "error"}, {"error", error}};
    co_await w.write_chunk(last.dump() + "\n");
    co_await w.end_stream();
  }
}

}  // namespace

Dispatcher make_dispatcher(Daemon& daemon) {
  return [&daemon](Request& req, ResponseWriter& w) { return dispatch(daemon, req, w); };
}

}  // namespace gptqd::daemon
