// SPDX-License-Identifier: Apache-2.0
// Helpers shared by the handlers (daemon layer).
#include "daemon/handler_support.h"

#include "daemon/log.h"

#include <fstream>
#include <sstream>

#include "daemon/daemon.h"
#include "engine/json_strict.h"
#include "engine/perplexity.h"

namespace gptqd::daemon::handlers {

using nlohmann::json;
using protocol::ModelEntry;
using protocol::ModelRef;

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
  try {
    return engine::parse_json_strict(req.body, "request body", static_cast<int>(req.max_json_depth));
  } catch (const Error& e) {
    if (std::string_view(e.what()).find("nesting deeper than") == std::string_view::npos) throw;
    fail(e.code(), e.what(), " (max_json_depth); flatten the request");
  }
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
  e.state = t.state;
  if (!t.quality_json.empty()) e.quality = json::parse(t.quality_json, nullptr, /*allow_exceptions=*/false);
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

// Releases what a failed or finished import holds: pins, and blobs no registry row references.
void release_import(Daemon& d, const ImportOutcome& out, bool committed, bool commit_failed) {
  if (commit_failed) {
    // The registry's COMMIT itself failed (an I/O error): SQLite may have written the
    // transaction to its write-ahead log before the sync failed, and a crash recovery would then
    // apply it. Deleting the blobs now could leave rows without files; kept, they are at worst
    // unreferenced until the next start's sweep reconciles them with the recovered registry.
    for (size_t i = 0; i < out.n_published; ++i) d.blobs().unpin(out.staged[i].digest);
    if (out.n_published > 0) {
      log_warn("keeping ", out.n_published, " blob(s) of an import whose registry commit failed until the next start");
    }
    return;
  }
  std::set<std::string> known;
  if (!committed) known = d.registry().blob_digests();
  for (size_t i = 0; i < out.n_published; ++i) {
    const std::string& digest = out.staged[i].digest;
    d.blobs().unpin(digest);
    if (!committed && !known.contains(digest)) d.blobs().remove_unless_pinned(digest);
  }
}

RegistryTag tag_from_import(const ImportOutcome& out, const ModelRef& ref, const std::string& source_kind,
                            const std::string& source) {
  const engine::ModelInfo& info = out.info;
  RegistryTag t;
  t.name = ref.name;
  t.tag = ref.tag;
  t.format = engine::to_string(info.format);
  t.architecture = info.config.architecture;
  t.n_params = info.n_params;
  t.dtype = info.dtype;
  t.source_kind = source_kind;
  t.source = source;
  t.config_json = info.config.to_json().dump();
  t.size_bytes = info.size_bytes;
  std::vector<protocol::FileEntry> manifest;
  for (const auto& s : out.staged) {
    t.files.push_back(RegistryFile{s.name, s.digest, s.size_bytes});
    manifest.push_back(protocol::FileEntry{s.name, s.digest, s.size_bytes});
  }
  t.digest = sha256_digest(protocol::manifest_text(manifest));
  return t;
}

DatasetFiles dataset_files(Daemon& d, const std::string& dataset, bool admin) {
  DatasetFiles files;
  if (!dataset.empty() && dataset.front() == '/') {
    if (!admin) {
      fail(ErrorCode::permission_denied, "reading a file by path needs admin rights; register it with `gptqctl dataset add`");
    }
    std::error_code ec;
    if (!std::filesystem::is_regular_file(dataset, ec)) fail(ErrorCode::not_found, "no such file: ", dataset);
    files.emplace_back(std::filesystem::path(dataset).filename().string(), dataset);
    return files;
  }
  auto ds = d.registry().find_dataset(dataset);
  if (!ds) {
    fail(ErrorCode::not_found, "dataset '", dataset, "' not found; register it with `gptqctl dataset add ", dataset,
         " FILE...`");
  }
  for (const auto& f : ds->files) files.emplace_back(f.name, d.blobs().blob_path(f.digest));
  return files;
}

std::string dataset_text(const DatasetFiles& files) {
  std::vector<std::string> rows;
  for (const auto& [name, path] : files) {
    auto part = engine::dataset_rows(name, read_whole_file(path));
    rows.insert(rows.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
  }
  return engine::join_rows(rows);
}

std::string read_whole_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) fail(ErrorCode::io, "cannot read ", p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace gptqd::daemon::handlers
