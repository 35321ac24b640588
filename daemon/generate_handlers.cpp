// SPDX-License-Identifier: Apache-2.0
// Handlers of generation (Ollama /api/generate and /api/chat, OpenAI /v1/completions and
// /v1/chat/completions), /api/ps, /v1/models, perplexity evaluation and datasets (daemon layer).
// One coroutine shape serves all four generation routes; a Renderer supplies each one's JSON.
#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <ctime>
#include <fstream>
#include <sstream>

#include "daemon/async_util.h"
#include "daemon/daemon.h"
#include "daemon/gen_options.h"
#include "daemon/generation_task.h"
#include "daemon/handler_support.h"
#include "daemon/log.h"
#include "engine/perplexity.h"

namespace gptqd::daemon::handlers {
namespace {

using asio::awaitable;
using nlohmann::json;

constexpr int64_t kDefaultNumCtx = 2048;

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string created_at() {
  const int64_t ns = now_ns();
  std::string s = protocol::rfc3339_utc(ns / 1000000000);
  char frac[16];
  std::snprintf(frac, sizeof frac, ".%06lldZ", static_cast<long long>((ns / 1000) % 1000000));
  return s.substr(0, s.size() - 1) + frac;
}

std::string random_id(const char* prefix) {
  static uint64_t counter = 0;
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%llx%04llx", prefix, static_cast<unsigned long long>(std::time(nullptr)),
                static_cast<unsigned long long>(++counter & 0xffff));
  return buf;
}

// Ollama options -> engine options; no seed: a different draw each time, as without a seed in Ollama.
engine::GenerateOptions to_engine(const protocol::GenOptions& o) {
  return to_engine_options(o, static_cast<uint64_t>(now_ns()) * 0x9e3779b97f4a7c15ull);
}

int64_t num_ctx_of(const protocol::GenOptions& o) {
  const int64_t n = o.num_ctx.value_or(kDefaultNumCtx);
  if (n < 16 || n > (int64_t{1} << 20)) fail(ErrorCode::invalid_argument, "num_ctx must be between 16 and 1048576, not ", n);
  return n;
}

std::vector<engine::ChatMessage> to_engine(const std::vector<protocol::ChatMessageJson>& messages) {
  std::vector<engine::ChatMessage> out;
  for (const auto& m : messages) out.push_back({m.role, m.content});
  return out;
}

// The request limits of docs/api.md ("Limits") that the daemon's config sets; checked before the
// engine's own (fixed, larger or equal) caps.
void check_request_limits(const DaemonConfig& c, const protocol::GenOptions& o, size_t n_messages) {
  if (n_messages > c.max_messages) {
    fail(ErrorCode::invalid_argument, "too many messages: ", n_messages, " (max_messages is ", c.max_messages,
         "); send a shorter conversation");
  }
  if (!o.stop) return;
  if (o.stop->size() > c.max_stop_strings) {
    fail(ErrorCode::invalid_argument, "too many stop strings: ", o.stop->size(), " (max_stop_strings is ",
         c.max_stop_strings, ")");
  }
  for (size_t i = 0; i < o.stop->size(); ++i) {
    if ((*o.stop)[i].size() > c.max_stop_bytes) {
      fail(ErrorCode::invalid_argument, "stop string ", i, " is ", (*o.stop)[i].size(), " bytes (max_stop_bytes is ",
           c.max_stop_bytes, ")");
    }
  }
}

struct Finished {
  engine::GenerateStats stats;
  double load_ms = 0;
  double total_ms = 0;
  int64_t n_prompt = 0;
};

// How one route shapes its responses.
class Renderer {
 public:
  virtual ~Renderer() = default;
  virtual std::string_view stream_type() const = 0;
  virtual std::string stream_start() { return {}; }
  virtual std::string stream_piece(const std::string& text) = 0;
  virtual std::string stream_done(const Finished& f) = 0;
  virtual std::string stream_error(const std::string& message) = 0;
  virtual json full(const std::string& text, const Finished& f) = 0;
  virtual json error_body(const std::string& message, http::status status) {
    (void)status;
    return json{{"error", message}};
  }
};

// ---- Ollama ----

class OllamaRenderer : public Renderer {
 public:
  OllamaRenderer(std::string model, bool chat) : model_(std::move(model)), chat_(chat) {}
  std::string_view stream_type() const override { return protocol::kNdjsonType; }
  std::string stream_piece(const std::string& text) override { return line(chunk(text)); }
  std::string stream_done(const Finished& f) override { return line(final_object("", f)); }
  std::string stream_error(const std::string& message) override { return line(json{{"error", message}}); }
  json full(const std::string& text, const Finished& f) override { return final_object(text, f); }

 private:
  static std::string line(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n"; }
  json chunk(const std::string& text) const {
    json j = {{"model", model_}, {"created_at", created_at()}, {"done", false}};
    if (chat_) j["message"] = {{"role", "assistant"}, {"content", text}};
    else j["response"] = text;
    return j;
  }
  json final_object(const std::string& text, const Finished& f) const {
    json j = chunk(text);
    const auto ns = [](double ms) { return static_cast<int64_t>(ms * 1e6); };
    j["done"] = true;
    j["done_reason"] = f.stats.done_reason;
    j["total_duration"] = ns(f.total_ms);
    j["load_duration"] = ns(f.load_ms);
    j["prompt_eval_count"] = f.n_prompt;
    j["prompt_eval_duration"] = ns(f.stats.prompt_ms);
    j["eval_count"] = f.stats.n_generated;
    j["eval_duration"] = ns(f.stats.decode_ms);
    return j;
  }
  std::string model_;
  bool chat_;
};

// ---- OpenAI ----

class OpenAiRenderer : public Renderer {
 public:
  OpenAiRenderer(std::string model, bool chat)
      : model_(std::move(model)), chat_(chat), id_(random_id(chat ? "chatcmpl" : "cmpl")), created_(std::time(nullptr)) {}
  std::string_view stream_type() const override { return "text/event-stream"; }
  std::string stream_start() override { return chat_ ? sse(chunk(json{{"role", "assistant"}, {"content", ""}}, nullptr)) : ""; }
  std::string stream_piece(const std::string& text) override {
    return sse(chat_ ? chunk(json{{"content", text}}, nullptr) : text_chunk(text, nullptr));
  }
  std::string stream_done(const Finished& f) override {
    json last = chat_ ? chunk(json::object(), finish_reason(f)) : text_chunk("", finish_reason(f));
    last["usage"] = usage(f);
    return sse(last) + "data: [DONE]\n\n";
  }
  std::string stream_error(const std::string& message) override {
    return sse(json{{"error", {{"message", message}, {"type", "server_error"}}}}) + "data: [DONE]\n\n";
  }
  json full(const std::string& text, const Finished& f) override {
    json choice = {{"index", 0}, {"finish_reason", finish_reason(f)}};
    if (chat_) choice["message"] = {{"role", "assistant"}, {"content", text}};
    else choice["text"] = text, choice["logprobs"] = nullptr;
    return json{{"id", id_},
                {"object", chat_ ? "chat.completion" : "text_completion"},
                {"created", created_},
                {"model", model_},
                {"system_fingerprint", "gptqd-" GPTQD_VERSION},
                {"choices", json::array({choice})},
                {"usage", usage(f)}};
  }
  json error_body(const std::string& message, http::status status) override {
    const char* type = status == http::status::not_found ? "not_found_error"
                       : static_cast<int>(status) < 500 ? "invalid_request_error"
                                                        : "server_error";
    return json{{"error", {{"message", message}, {"type", type}, {"param", nullptr}, {"code", nullptr}}}};
  }

 private:
  static std::string sse(const json& j) { return "data: " + j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n\n"; }
  static json finish_reason(const Finished& f) {
    if (f.stats.done_reason == "length") return "length";
    return "stop";
  }
  static json usage(const Finished& f) {
    return json{{"prompt_tokens", f.n_prompt},
                {"completion_tokens", f.stats.n_generated},
                {"total_tokens", f.n_prompt + f.stats.n_generated}};
  }
  json chunk(json delta, json finish) const {
    return json{{"id", id_},
                {"object", "chat.completion.chunk"},
                {"created", created_},
                {"model", model_},
                {"system_fingerprint", "gptqd-" GPTQD_VERSION},
                {"choices", json::array({json{{"index", 0}, {"delta", std::move(delta)}, {"finish_reason", std::move(finish)}}})}};
  }
  json text_chunk(const std::string& text, json finish) const {
    return json{{"id", id_},
                {"object", "text_completion"},
                {"created", created_},
                {"model", model_},
                {"choices", json::array({json{{"index", 0}, {"text", text}, {"logprobs", nullptr}, {"finish_reason", std::move(finish)}}})}};
  }
  std::string model_;
  bool chat_;
  std::string id_;
  int64_t created_;
};

// Resolves the model, submits the task, relays its events. Errors before the first token
// become the route's error response; later ones end the stream.
awaitable<void> run_generation(Daemon& d, ResponseWriter& w, const std::string& model_text, GenerationSpec spec,
                               std::optional<int64_t> keep_alive, bool stream, bool allow_failed_quality, Renderer& r) {
  std::string error;
  http::status status = http::status::ok;
  try {
    RegistryTag tag = find_or_404(d, parse_ref(model_text));
    if (tag.state == "failed-quality" && !allow_failed_quality) {
      fail(ErrorCode::conflict, "model ", tag.name, ":", tag.tag,
           " failed its quantization quality check (see gptqctl show); pass \"allow_failed_quality\": true to use it anyway");
    }
    const auto t0 = std::chrono::steady_clock::now();
    auto exec = co_await asio::this_coro::executor;
    auto events = std::make_shared<AsyncQueue<GenerationEvent>>(exec);
    auto emit = [exec, events](GenerationEvent ev) {
      asio::post(exec, [events, ev = std::move(ev)]() mutable { events->push(std::move(ev)); });
    };
    auto task = std::make_shared<GenerationTask>(model_handle(d, tag), keep_alive.value_or(d.config().keep_alive_s),
                                                 std::move(spec), emit);
    std::string why;
    if (!d.worker().submit(task, &why)) {
      if (why.find("queue is full") != std::string::npos) why += cat(" (max_queue is ", d.config().max_queue, ")");
      fail(ErrorCode::busy, why);
    }
    // A client that hangs up cancels the task at once, even while its prompt is processed or
    // its unstreamed answer is generated (nothing is written then that would notice).
    auto hung_up = std::make_shared<bool>(false);
    w.watch_hangup([task, hung_up] {
      *hung_up = true;
      task->cancel = true;
    });
    // max_generation_ms: the deadline cancels the task like a client that hung up.
    const uint32_t deadline_ms = d.config().max_generation_ms;
    auto deadline_hit = std::make_shared<bool>(false);
    std::optional<asio::steady_timer> deadline;
    if (deadline_ms > 0) {
      deadline.emplace(exec, std::chrono::milliseconds(deadline_ms));
      deadline->async_wait([task, deadline_hit](const boost::system::error_code& ec) {
        if (ec) return;  // cancelled: the generation ended first
        *deadline_hit = true;
        task->cancel = true;
      });
    }
    const std::string deadline_message =
        cat("the generation ran longer than ", deadline_ms, " ms (max_generation_ms) and was stopped; ask for fewer tokens");

    std::optional<GenerationEvent> ev = co_await events->pop();
    if (ev->kind == GenerationEvent::Kind::error && *deadline_hit) {  // it ran out of time in the queue
      json body = r.error_body(deadline_message, http::status::gateway_timeout);
      co_await w.send_json(http::status::gateway_timeout, body);
      co_return;
    }
    if (ev->kind == GenerationEvent::Kind::error) fail(ev->code, ev->text);
    Finished f;
    f.load_ms = ev->load_ms;
    f.n_prompt = ev->n_prompt;
    std::string text;
    bool streaming = false;
    if (stream) {
      streaming = co_await w.begin_stream(r.stream_type());
      if (std::string first = r.stream_start(); !first.empty() && !co_await w.write_chunk(std::move(first))) task->cancel = true;
    }
    for (;;) {
      ev = co_await events->pop();
      if (ev->kind == GenerationEvent::Kind::piece) {
        if (!stream) {
          text += ev->text;
        } else if (!task->cancel.load() && !co_await w.write_chunk(r.stream_piece(ev->text))) {
          task->cancel = true;  // the client hung up: stop at the next token
        }
        continue;
      }
      if (ev->kind == GenerationEvent::Kind::error) {
        if (!w.started()) fail(ev->code, ev->text);
        std::string last = r.stream_error(*deadline_hit ? deadline_message : ev->text);
        co_await w.write_chunk(std::move(last));
        co_await w.end_stream();
        co_return;
      }
      // done
      f.stats = ev->stats;
      f.total_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      break;
    }
    if (f.stats.done_reason == "cancelled") {
      log_info("generation with ", tag.name, ":", tag.tag, " cancelled after ", f.stats.n_generated, " token(s)",
               *deadline_hit ? cat(": ran past max_generation_ms (", deadline_ms, " ms)")
               : *hung_up || w.client_gone() ? std::string(": the client hung up")
                                             : std::string());
    }
    if (*deadline_hit && f.stats.done_reason == "cancelled") {
      if (!stream) {
        json body = r.error_body(deadline_message, http::status::gateway_timeout);
        co_await w.send_json(http::status::gateway_timeout, body);
      } else if (streaming) {
        std::string last = r.stream_error(deadline_message);
        co_await w.write_chunk(std::move(last));
        co_await w.end_stream();
      }
      co_return;
    }
    if (stream) {
      if (streaming) {
        co_await w.write_chunk(r.stream_done(f));
        co_await w.end_stream();
      }
    } else {
      json body = r.full(text, f);
      co_await w.send_json(http::status::ok, body);
    }
    co_return;
  } catch (const Error& e) {
    error = e.what();
    status = status_for(e.code());
  }
  json body = r.error_body(error, status);
  co_await w.send_json(status, body);
}

}  // namespace

awaitable<void> handle_generate(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::GenerateRequest>(req);
  check_request_limits(d.config(), r.options, 0);
  GenerationSpec spec;
  spec.prompt = r.prompt;
  spec.system = r.system;
  spec.raw = r.raw;
  spec.truncate = r.truncate;
  spec.options = to_engine(r.options);
  spec.num_ctx = num_ctx_of(r.options);
  OllamaRenderer renderer(r.model, false);
  co_await run_generation(d, w, r.model, std::move(spec), r.keep_alive, r.stream, r.allow_failed_quality, renderer);
}

awaitable<void> handle_chat(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::ChatRequest>(req);
  check_request_limits(d.config(), r.options, r.messages.size());
  GenerationSpec spec;
  spec.chat = true;
  spec.messages = to_engine(r.messages);
  spec.truncate = r.truncate;
  spec.options = to_engine(r.options);
  spec.num_ctx = num_ctx_of(r.options);
  OllamaRenderer renderer(r.model, true);
  co_await run_generation(d, w, r.model, std::move(spec), r.keep_alive, r.stream, r.allow_failed_quality, renderer);
}

namespace {
awaitable<void> handle_openai(Daemon& d, Request& req, ResponseWriter& w, bool chat) {
  OpenAiRenderer errors("", chat);
  std::string error;
  try {
    json body = parse_body(req);
    protocol::OpenAiRequest r;
    try {
      r = protocol::OpenAiRequest::from_json(body, chat);
    } catch (const protocol::RequestError& e) {
      fail(ErrorCode::invalid_argument, e.what());
    }
    check_request_limits(d.config(), r.options, r.messages.size());
    GenerationSpec spec;
    spec.chat = chat;
    spec.messages = to_engine(r.messages);
    spec.prompt = r.prompt;
    spec.raw = !chat;  // completions continue the text as given, as OpenAI's legacy endpoint does
    spec.options = to_engine(r.options);
    spec.num_ctx = num_ctx_of(r.options);
    OpenAiRenderer renderer(r.model, chat);
    co_await run_generation(d, w, r.model, std::move(spec), std::nullopt, r.stream, r.allow_failed_quality, renderer);
    co_return;
  } catch (const Error& e) {
    error = e.what();
  }
  json body = errors.error_body(error, http::status::bad_request);
  co_await w.send_json(http::status::bad_request, body);
}
}  // namespace

awaitable<void> handle_openai_chat(Daemon& d, Request& req, ResponseWriter& w) { co_await handle_openai(d, req, w, true); }

awaitable<void> handle_openai_completions(Daemon& d, Request& req, ResponseWriter& w) {
  co_await handle_openai(d, req, w, false);
}

awaitable<void> handle_openai_models(Daemon& d, Request&, ResponseWriter& w) {
  json data = json::array();
  for (const auto& t : d.registry().list()) {
    data.push_back({{"id", t.name + ":" + t.tag}, {"object", "model"}, {"created", t.created_at}, {"owned_by", "gptqd"}});
  }
  json body = {{"object", "list"}, {"data", std::move(data)}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_ps(Daemon& d, Request&, ResponseWriter& w) {
  json models = json::array();
  for (const auto& st : d.worker().status()) {
    auto colon = st.ref.find(':');
    auto tag = d.registry().find(st.ref.substr(0, colon), st.ref.substr(colon + 1));
    json m = tag ? to_entry(*tag, false).to_json(false) : json{{"name", st.ref}, {"model", st.ref}};
    m["size"] = st.size_bytes;
    m["size_vram"] = 0;
    m["expires_at"] = st.expires_at == 0 ? std::string("never") : protocol::rfc3339_utc(st.expires_at);
    m["device"] = d.worker().device();
    m["active"] = st.active;
    m["queued"] = st.queued;
    models.push_back(std::move(m));
  }
  json body = {{"models", std::move(models)}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_eval(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::EvalRequest>(req);
  RegistryTag tag = find_or_404(d, parse_ref(r.model));
  auto files = dataset_files(d, r.dataset, d.is_admin(req.peer));
  auto build_text = [files] { return dataset_text(files); };
  EvalSpec spec;
  spec.text = co_await run_blocking(d.pool(), std::move(build_text));
  spec.seqlen = r.seqlen;
  spec.max_windows = r.max_windows;

  const std::string target = tag.name + ":" + tag.tag;
  const int64_t job_id = d.registry().add_job("eval", target, r.to_json().dump());
  auto exec = co_await asio::this_coro::executor;
  auto events = std::make_shared<AsyncQueue<EvalEvent>>(exec);
  auto emit = [exec, events](EvalEvent ev) {
    asio::post(exec, [events, ev = std::move(ev)]() mutable { events->push(std::move(ev)); });
  };
  auto task = std::make_shared<EvalTask>(model_handle(d, tag), d.config().keep_alive_s, std::move(spec), emit);
  std::string why;
  if (!d.worker().submit(task, &why)) {
    d.registry().finish_job(job_id, "failed", why);
    fail(ErrorCode::busy, why);
  }
  w.watch_hangup([task] { task->cancel = true; });  // stop at the next window, streamed or not
  if (r.stream) {
    json first = {{"event", "progress"}, {"status", "evaluating " + target + " on " + r.dataset}, {"job", job_id}};
    co_await w.begin_stream(protocol::kNdjsonType);
    if (!co_await w.write_chunk(first.dump() + "\n")) task->cancel = true;
  }
  for (;;) {
    std::optional<EvalEvent> ev = co_await events->pop();
    if (ev->kind == EvalEvent::Kind::progress) {
      json p = {{"event", "progress"},   {"status", "evaluating"},         {"completed", ev->windows_done},
                {"total", ev->windows_total}, {"perplexity", ev->perplexity}};
      if (r.stream && !task->cancel.load() && !co_await w.write_chunk(p.dump() + "\n")) task->cancel = true;
      continue;
    }
    if (ev->kind == EvalEvent::Kind::error) {
      d.registry().finish_job(job_id, ev->code == ErrorCode::cancelled ? "cancelled" : "failed", ev->error);
      if (!w.started()) fail(ev->code, ev->error);
      json last = {{"event", "error"}, {"error", ev->error}};
      co_await w.write_chunk(last.dump() + "\n");
      co_await w.end_stream();
      co_return;
    }
    const auto& res = ev->result;
    d.registry().finish_job(job_id, "done", "");
    log_info("eval of ", target, " on ", r.dataset, ": perplexity ", res.perplexity, " over ", res.n_windows,
             " window(s) of ", res.seqlen);
    json done = {{"event", "done"},         {"status", "success"},          {"model", target},
                 {"dataset", r.dataset},    {"perplexity", res.perplexity}, {"tokens", res.n_tokens},
                 {"windows", res.n_windows}, {"seqlen", res.seqlen},        {"text_tokens", res.n_text_tokens},
                 {"job", job_id}};
    if (r.stream) {
      co_await w.write_chunk(done.dump() + "\n");
      co_await w.end_stream();
    } else {
      co_await w.send_json(http::status::ok, done);
    }
    co_return;
  }
}

awaitable<void> handle_dataset_add(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::DatasetAddRequest>(req);
  std::string why;
  if (!protocol::is_valid_name(r.name, &why)) fail(ErrorCode::invalid_argument, "invalid dataset name '", r.name, "': ", why);
  if (d.registry().find_dataset(r.name)) fail(ErrorCode::conflict, "dataset ", r.name, " already exists");
  for (const auto& f : r.files) {
    if (f.empty() || f.front() != '/') fail(ErrorCode::invalid_argument, "dataset file '", f, "' must be an absolute path");
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec)) fail(ErrorCode::invalid_argument, "dataset file ", f, " is not a readable file");
  }
  BlobStore& store = d.blobs();
  auto files = r.files;
  // Check the text first, then copy through the blob store like a model import.
  auto stage = [files, &store] {
    std::vector<StagedFile> staged;
    try {
      for (const auto& f : files) {
        const std::string name = std::filesystem::path(f).filename().string();
        engine::dataset_rows(name, read_whole_file(f));
        staged.push_back(store.stage(name, f, nullptr));
      }
      for (auto& s : staged) store.publish(s);
    } catch (...) {
      for (auto& s : staged) BlobStore::discard(s);
      throw;
    }
    return staged;
  };
  std::vector<StagedFile> staged = co_await run_blocking(d.pool(), std::move(stage));
  std::vector<RegistryFile> rows;
  uint64_t bytes = 0;
  for (const auto& s : staged) {
    rows.push_back(RegistryFile{s.name, s.digest, s.size_bytes});
    bytes += s.size_bytes;
  }
  std::string error;
  ErrorCode code = ErrorCode::internal;
  try {
    d.registry().add_dataset(r.name, rows);
  } catch (const Error& e) {
    error = e.what(), code = e.code();
  }
  const std::set<std::string> known = error.empty() ? std::set<std::string>{} : d.registry().blob_digests();
  for (const auto& s : staged) {
    store.unpin(s.digest);
    if (!error.empty() && !known.contains(s.digest)) store.remove_unless_pinned(s.digest);
  }
  if (!error.empty()) fail(code, error);
  log_info("dataset ", r.name, " added (", staged.size(), " file(s), ", bytes, " bytes)");
  json body = {{"status", "success"}, {"name", r.name}, {"files", staged.size()}, {"size", bytes}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_dataset_list(Daemon& d, Request&, ResponseWriter& w) {
  json out = json::array();
  for (const auto& ds : d.registry().datasets()) {
    json files = json::array();
    uint64_t size = 0;
    for (const auto& f : ds.files) {
      files.push_back({{"name", f.name}, {"digest", f.digest}, {"size", f.size_bytes}});
      size += f.size_bytes;
    }
    out.push_back({{"name", ds.name}, {"created_at", ds.created_at}, {"size", size}, {"files", std::move(files)}});
  }
  json body = {{"datasets", std::move(out)}};
  co_await w.send_json(http::status::ok, body);
}

}  // namespace gptqd::daemon::handlers
