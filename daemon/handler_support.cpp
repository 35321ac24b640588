// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the handlers (daemon layer).
#include "daemon/handler_support.h"

#include "daemon/daemon.h"
#include "engine/json_strict.h"

namespace gptqd::daemon::handlers {

using nlohmann::json;
using protocol::ModelEntry;
using protocol::ModelRef;

constexpr int kMaxJsonDepth = 64;

http::status status_for(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument:
    case ErrorCode::invalid_model:
    case ErrorCode::unsupported: return http::status::bad_request;
    case ErrorCode::not_found: return http::status::not_found;
    case ErrorCode::conflict: return http::status::conflict;
    case ErrorCode::permission_denied: return http::status::forbidden;
    case ErrorCode::no_space: return http::status::insufficient_storage;
    case ErrorCode::cancelled:
    case ErrorCode::busy: return http::status::service_unavailable;
    case ErrorCode::io:
    case ErrorCode::internal: return http::status::internal_server_error;
  }
  return http::status::internal_server_error;
}

json parse_body(const Request& req) {
  if (req.body.empty()) fail(ErrorCode::invalid_argument, "request body is empty; expected a JSON object");
  return engine::parse_json_strict(req.body, "request body", kMaxJsonDepth);
}

ModelRef parse_ref(const std::string& text) {
  std::string why;
  auto ref = protocol::parse_model_ref(text, &why);
  if (!ref) fail(ErrorCode::invalid_argument, "invalid model name '", text, "': ", why);
  return *ref;
}

ModelEntry to_entry(const RegistryTag& t, bool detailed) {
  ModelEntry e;
  e.name = t.name;
  e.tag = t.tag;
  e.is_default = t.is_default;
  e.format = t.format;
  e.architecture = t.architecture;
  e.n_params = t.n_params;
  e.dtype = t.dtype;
  e.size_bytes = t.size_bytes;
  e.source = t.source;
  e.source_kind = t.source_kind;
  e.digest = t.digest;
  e.created_at = t.created_at;
  if (detailed) {
    e.config = json::parse(t.config_json, nullptr, /*allow_exceptions=*/false);
    for (const auto& f : t.files) e.files.push_back(protocol::FileEntry{f.name, f.digest, f.size_bytes});
  }
  return e;
}

RegistryTag find_or_404(Daemon& d, const ModelRef& ref) {
  auto t = d.registry().find(ref.name, ref.tag);
  if (!t) {
    fail(ErrorCode::not_found, "model '", ref.str(), "' not found; `gptqctl list` shows the models this daemon has");
  }
  return *t;
}

ModelHandle model_handle(Daemon& d, const RegistryTag& t) {
  ModelHandle h;
  h.ref = t.name + ":" + t.tag;
  h.digest = t.digest;
  for (const auto& f : t.files) h.files.push_back(engine::SourceFile{f.name, d.blobs().blob_path(f.digest), f.size_bytes});
  return h;
}

}  // namespace gptqd::daemon::handlers
