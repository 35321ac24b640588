// SPDX-License-Identifier: Apache-2.0
// Handlers of quantize jobs and blob downloads (daemon layer).
#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <boost/asio/this_coro.hpp>
#include <cctype>
#include <fstream>

#include "daemon/async_util.h"
#include "daemon/daemon.h"
#include "daemon/handler_support.h"
#include "daemon/jobs.h"
#include "daemon/log.h"

namespace gptqd::daemon::handlers {

using boost::asio::awaitable;
using nlohmann::json;

namespace {

int64_t job_id_of(const Request& req) {
  const std::string_view id = std::string_view(req.path).substr(std::string_view("/api/jobs/").size());
  int64_t v = 0;
  if (id.empty() || id.size() > 18) fail(ErrorCode::invalid_argument, "invalid job id '", id, "'");
  for (char c : id) {
    if (!std::isdigit(static_cast<unsigned char>(c))) fail(ErrorCode::invalid_argument, "invalid job id '", id, "'");
    v = v * 10 + (c - '0');
  }
  return v;
}

bool query_flag(const Request& req, std::string_view key) {
  std::string_view q = req.query;
  while (!q.empty()) {
    const size_t amp = q.find('&');
    std::string_view kv = q.substr(0, amp);
    if (kv == key || kv == std::string(key) + "=true" || kv == std::string(key) + "=1") return true;
    if (amp == std::string_view::npos) break;
    q.remove_prefix(amp + 1);
  }
  return false;
}

// The last event of a job that is not live any more.
json final_event(const json& job) {
  const std::string state = job.value("state", "");
  if (state == "done") {
    return json{{"event", "done"}, {"job", job["id"]}, {"status", "success"}, {"model", job["target"]},
                {"state", job["quality"].is_object() ? job["quality"].value("state", "ready") : "ready"},
                {"quality", job["quality"]}};
  }
  if (state == "cancelled") return json{{"event", "cancelled"}, {"job", job["id"]}, {"error", job["error"]}};
  std::string error = job.value("error", "");
  if (error.empty()) error = "job " + std::to_string(job["id"].get<int64_t>()) + " is " + state + " but not running";
  return json{{"event", "error"}, {"job", job["id"]}, {"error", error}};
}

// Streams a job's events until it ends. A client that goes away only stops following: the job
// keeps running (Ctrl-C in gptqctl detaches).
awaitable<void> stream_job(Daemon& d, int64_t id, ResponseWriter& w, const json* first) {
  auto queue = d.jobs().follow(id);
  co_await w.begin_stream(protocol::kNdjsonType);
  if (first && !co_await w.write_chunk(first->dump() + "\n")) {
    if (queue) d.jobs().unfollow(id, queue);
    co_return;
  }
  if (!queue) {
    json last = final_event(*d.jobs().job_json(id, false));
    co_await w.write_chunk(last.dump() + "\n");
    co_await w.end_stream();
    co_return;
  }
  while (auto ev = co_await queue->pop()) {
    std::string line = ev->dump() + "\n";
    if (!co_await w.write_chunk(std::move(line))) {
      d.jobs().unfollow(id, queue);
      co_return;
    }
  }
  co_await w.end_stream();
}

}  // namespace

awaitable<void> handle_quantize(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = parse_request<protocol::QuantizeRequest>(req);
  const bool stream = r.stream;
  const int64_t id = co_await d.jobs().start_quantize(std::move(r), d.is_admin(req.peer));
  json job = *d.jobs().job_json(id, false);
  json first = {{"event", "queued"}, {"job", id}, {"model", job["target"]}, {"source", job["source"]},
                {"status", "queued"}};
  if (!stream) {
    co_await w.send_json(http::status::ok, first);
    co_return;
  }
  co_await stream_job(d, id, w, &first);
}

awaitable<void> handle_jobs(Daemon& d, Request& /*req*/, ResponseWriter& w) {
  json body = d.jobs().list_json();
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_job(Daemon& d, Request& req, ResponseWriter& w) {
  const int64_t id = job_id_of(req);
  auto job = d.jobs().job_json(id, true);
  if (!job) fail(ErrorCode::not_found, "job ", id, " not found; `gptqctl jobs` lists them");
  if (query_flag(req, "stream") || query_flag(req, "follow")) {
    co_await stream_job(d, id, w, nullptr);
    co_return;
  }
  co_await w.send_json(http::status::ok, *job);
}

awaitable<void> handle_job_cancel(Daemon& d, Request& req, ResponseWriter& w) {
  const int64_t id = job_id_of(req);
  d.jobs().cancel(id);
  json body = {{"status", "cancelled"}, {"job", id}};
  co_await w.send_json(http::status::ok, body);
}

awaitable<void> handle_blob(Daemon& d, Request& req, ResponseWriter& w) {
  const std::string digest = req.path.substr(std::string_view("/api/blobs/").size());
  bool valid = digest.size() == 71 && digest.starts_with("sha256:");
  for (size_t i = 7; valid && i < digest.size(); ++i) {
    valid = std::isxdigit(static_cast<unsigned char>(digest[i])) && !std::isupper(static_cast<unsigned char>(digest[i]));
  }
  if (!valid) fail(ErrorCode::invalid_argument, "invalid digest '", digest, "' (expected sha256:<64 lower-case hex>)");
  if (!d.registry().blob_digests().contains(digest)) fail(ErrorCode::not_found, "no blob ", digest);
  std::ifstream in(d.blobs().blob_path(digest), std::ios::binary);
  if (!in) fail(ErrorCode::io, "cannot read blob ", digest);
  co_await w.begin_stream("application/octet-stream");
  std::string buf(1 << 20, '\0');
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const std::streamsize n = in.gcount();
    if (n <= 0) break;
    if (!co_await w.write_chunk(buf.substr(0, static_cast<size_t>(n)))) co_return;
  }
  co_await w.end_stream();
}

}  // namespace gptqd::daemon::handlers
