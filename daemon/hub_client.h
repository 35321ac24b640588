// SPDX-License-Identifier: Apache-2.0
// HubClient: the Hugging Face Hub's HTTP API as huggingface_hub uses it (daemon layer, libcurl).
// Repo info at a revision (branch, tag or commit, resolved to the commit sha), the file list with
// sizes, git blob ids and LFS sha256, and resumable, verified downloads of single files into a
// partial file. HF_ENDPOINT and HF_TOKEN (or the token file) are read as huggingface_hub reads
// them; the token goes only into the Authorization header of requests to the endpoint's host
// (libcurl drops custom Authorization headers on redirects to other hosts), never into a log, an
// error message or the registry.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace gptqd::daemon {

enum class RepoKind { model, dataset };

struct HubSettings {
  std::string endpoint = "https://huggingface.co";  // no trailing slash
  std::string token;                                // empty: anonymous
  int connect_timeout_s = 30;
  int stall_timeout_s = 60;   // a transfer below 1 byte/s for this long is a network error
  int max_attempts = 5;       // per file: a network error resumes from the partial's size
  int retry_delay_ms = 1000;  // doubled after each failed attempt

  // HF_ENDPOINT (default https://huggingface.co); the token from HF_TOKEN, else the file
  // HF_TOKEN_PATH, else $HF_HOME/token, with HF_HOME defaulting to $XDG_CACHE_HOME/huggingface or
  // ~/.cache/huggingface — huggingface_hub's order. Whitespace around the token is dropped.
  static HubSettings from_environment();
};

// "org/name", "org/name@rev", "datasets/org/name[@rev]". The revision defaults to "main".
struct HubRepoRef {
  RepoKind kind = RepoKind::model;
  std::string repo_id;  // "org/name"
  std::string revision = "main";
  // Error(invalid_argument) naming what is wrong.
  static HubRepoRef parse(std::string_view text);
  std::string display() const;  // "org/name@rev" or "datasets/org/name@rev"
};

struct HubFile {
  std::string path;        // "model-00001-of-00002.safetensors", "sub/x.json"; validated
  uint64_t size = 0;
  std::string blob_id;     // git blob sha1 (hex): the ETag of a non-LFS file
  std::string lfs_sha256;  // hex, empty for files stored in git
};

struct HubRepoInfo {
  std::string repo_id;
  std::string sha;  // the commit the revision resolved to
  std::vector<HubFile> files;
};

// Rejects file names a server must never make us write: empty, absolute, "..", ".", empty
// segments, backslashes, control characters, longer than 1024 bytes. Error(invalid_model).
void check_repo_file_name(std::string_view name);

class HubClient {
 public:
  explicit HubClient(HubSettings settings);

  // GET /api/{models,datasets}/{repo}/revision/{rev}?blobs=true. Errors: not_found (repo or
  // revision), permission_denied (gated or private: says whether a token was sent, never the
  // token), io (network, 5xx), invalid_model (a reply that breaks the API's shape or a file name
  // check_repo_file_name refuses).
  HubRepoInfo repo_info(const HubRepoRef& ref) const;

  // Downloads `file` of commit `sha` into `partial`: appends from the partial's current size
  // with an HTTP Range request (a fresh download when it is empty or missing), following the
  // Hub's redirect to its CDN. Network errors and 5xx retry up to max_attempts, each resuming.
  // When all bytes are there, checks the size and the content against the LFS sha256 (or the
  // git blob id) and returns the sha256 hex; a mismatch deletes the partial and throws
  // Error(invalid_model) saying so. `progress(done, total)` is called as bytes arrive; returning
  // false cancels (Error(cancelled), the partial kept for a later resume).
  using Progress = std::function<bool(uint64_t done, uint64_t total)>;
  std::string download(const HubRepoRef& ref, const std::string& sha, const HubFile& file,
                       const std::filesystem::path& partial, const Progress& progress = {}) const;

  const HubSettings& settings() const { return settings_; }

 private:
  HubSettings settings_;
};

}  // namespace gptqd::daemon
