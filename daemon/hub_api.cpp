// SPDX-License-Identifier: Apache-2.0
// The Hub's answers as data (daemon layer, no network): repo references, the repo-info reply,
// file names a reply may make gptqd write, and the stored download state. Kept apart from
// hub_client.cpp (libcurl) so that fuzz/fuzz_hub_json.cpp can run these parsers on their own.
#include "daemon/hub_client.h"

#include <algorithm>
#include <cctype>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>

#include "engine/error.h"
#include "engine/json_strict.h"

namespace gptqd::daemon {
namespace {

using nlohmann::json;

// A byte count from the Hub: a non-negative integer, never a float or a negative number cast.
uint64_t byte_count(const json& v, const std::string& what) {
  if (!v.is_number_unsigned()) fail(ErrorCode::invalid_model, what, " is not a byte count: ", v.dump());
  return v.get<uint64_t>();
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return s;
}

}  // namespace

bool is_hex(std::string_view s, size_t len) {
  return s.size() == len && std::all_of(s.begin(), s.end(), [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)); });
}

uint64_t DownloadState::completed() const { return std::accumulate(done.begin(), done.end(), uint64_t{0}); }

std::string DownloadState::to_json() const { return json{{"done", done}}.dump(); }

DownloadState DownloadState::from_json(std::string_view text) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return {};
  const auto it = j.find("done");
  if (it == j.end() || !it->is_array() || it->size() > kMaxDownloadRanges) return {};
  DownloadState s;
  for (const json& v : *it) {
    if (!v.is_number_unsigned()) return {};
    s.done.push_back(v.get<uint64_t>());
  }
  return s;
}

HubRepoRef HubRepoRef::parse(std::string_view text) {
  HubRepoRef r;
  std::string t(text);
  if (t.rfind("datasets/", 0) == 0) {
    r.kind = RepoKind::dataset;
    t = t.substr(9);
  } else if (t.rfind("models/", 0) == 0) {
    t = t.substr(7);
  }
  if (const auto at = t.find('@'); at != std::string::npos) {
    r.revision = t.substr(at + 1);
    t = t.substr(0, at);
    if (r.revision.empty()) fail(ErrorCode::invalid_argument, "'", text, "': the revision after '@' is empty");
  }
  const auto slash = t.find('/');
  auto valid = [](const std::string& part) {
    return !part.empty() && part.size() <= 96 && part != "." && part != ".." &&
           std::all_of(part.begin(), part.end(), [](char ch) {
             return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.';
           });
  };
  if (slash == std::string::npos || !valid(t.substr(0, slash)) || !valid(t.substr(slash + 1))) {
    fail(ErrorCode::invalid_argument, "'", text, "' is not a Hub repo: use ORG/NAME, ORG/NAME@REVISION or datasets/ORG/NAME");
  }
  if (r.revision.size() > 256 || r.revision.find_first_of(" \t\r\n") != std::string::npos || r.revision.find("..") != std::string::npos) {
    fail(ErrorCode::invalid_argument, "'", text, "': '", r.revision, "' is not a valid revision");
  }
  r.repo_id = t;
  return r;
}

std::string HubRepoRef::display() const {
  return cat(kind == RepoKind::dataset ? "datasets/" : "", repo_id, "@", revision);
}

void check_repo_file_name(std::string_view name) {
  auto bad = [&](const char* why) { fail(ErrorCode::invalid_model, "the Hub listed a file name gptqd will not write (", why, "): '", std::string(name.substr(0, 200)), "'"); };
  if (name.empty() || name.size() > 1024) bad("empty or too long");
  if (name.front() == '/') bad("absolute path");
  for (char ch : name) {
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) bad("control character");
    if (ch == '\\') bad("backslash");
  }
  size_t start = 0;
  for (;;) {
    const size_t slash = name.find('/', start);
    const std::string_view seg = name.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (seg.empty()) bad("empty path segment");
    if (seg == "." || seg == "..") bad("'.' or '..' segment");
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
}

HubRepoInfo parse_repo_info(std::string_view body, const HubRepoRef& ref) {
  const std::string where = cat("the Hub's reply for ", ref.display());
  json j;
  try {
    j = engine::parse_json_strict(body, where);
  } catch (const Error& e) {
    fail(ErrorCode::invalid_model, e.what());
  }
  HubRepoInfo info;
  try {
    info.repo_id = j.at("id").get<std::string>();
    info.sha = lower(j.at("sha").get<std::string>());
    if (!is_hex(info.sha, 40)) fail(ErrorCode::invalid_model, "no commit sha");
    // Every listed file must be one gptqd can write beside the others: each name once, and no
    // name that is also another one's directory ("a" and "a/b").
    std::map<std::string, bool> seen;  // path -> is a directory of another
    for (const json& s : j.at("siblings")) {
      HubFile f;
      f.path = s.at("rfilename").get<std::string>();
      check_repo_file_name(f.path);
      if (s.contains("size")) f.size = byte_count(s.at("size"), cat("the size of ", f.path));
      if (s.contains("blobId")) {
        f.blob_id = lower(s.at("blobId").get<std::string>());
        if (!is_hex(f.blob_id, 40)) fail(ErrorCode::invalid_model, "bad git blob id for ", f.path);
      }
      if (s.contains("lfs") && s.at("lfs").is_object()) {
        f.lfs_sha256 = lower(s.at("lfs").at("sha256").get<std::string>());
        f.size = byte_count(s.at("lfs").at("size"), cat("the LFS size of ", f.path));
        if (!is_hex(f.lfs_sha256, 64)) fail(ErrorCode::invalid_model, "bad LFS sha256 for ", f.path);
      }
      const auto [it, fresh] = seen.emplace(f.path, false);
      if (!fresh) fail(ErrorCode::invalid_model, "it lists ", f.path, it->second ? " as a file and as a directory" : " twice");
      for (size_t slash = f.path.find('/'); slash != std::string::npos; slash = f.path.find('/', slash + 1)) {
        const auto [dir, new_dir] = seen.emplace(f.path.substr(0, slash), true);
        if (!new_dir && !dir->second) fail(ErrorCode::invalid_model, "it lists ", dir->first, " as a file and as a directory");
      }
      info.files.push_back(std::move(f));
    }
  } catch (const Error& e) {
    fail(ErrorCode::invalid_model, where, ": ", e.what());
  } catch (const std::exception& e) {
    fail(ErrorCode::invalid_model, where, " is not what its API returns: ", e.what());
  }
  return info;
}

}  // namespace gptqd::daemon
