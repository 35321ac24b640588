// SPDX-License-Identifier: Apache-2.0
// HubClient: the Hugging Face Hub's HTTP API as huggingface_hub uses it (daemon layer, libcurl).
// Repo info at a revision (branch, tag or commit, resolved to the commit sha), the file list with
// sizes, git blob ids and LFS sha256, and resumable, verified downloads of single files (from the
// Hub or a plain URL) into a partial file, big ones as parallel ranges. HF_ENDPOINT and HF_TOKEN
// (or the token file) are read as huggingface_hub reads them; the token goes only into the
// Authorization header of requests to the endpoint's host (libcurl drops custom Authorization
// headers on redirects to other hosts; plain URLs never get it), never into a log, an error
// message or the registry.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
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
  int max_attempts = 5;       // per file (per range): a network error resumes where it stopped
  int retry_delay_ms = 1000;  // doubled after each failed attempt
  uint64_t parallel_min_bytes = 64ull << 20;  // files at least this big download as parallel ranges
  int parallel_parts = 4;                      // ranges per such file (1 = never parallel; at most 64)

  // HF_ENDPOINT (default https://huggingface.co); the token from HF_TOKEN, else the file
  // HF_TOKEN_PATH, else $HF_HOME/token, with HF_HOME defaulting to $XDG_CACHE_HOME/huggingface or
  // ~/.cache/huggingface — huggingface_hub's order. Whitespace around the token is dropped.
  // GPTQD_HUB_PARALLEL_MIN_BYTES and GPTQD_HUB_PARALLEL_PARTS (1..64) set the parallel knobs;
  // a malformed value is Error(invalid_argument) naming the variable.
  // The daemon's configuration comes below the environment: `config_endpoint` when HF_ENDPOINT
  // is unset, `config_token_file` when neither HF_TOKEN nor HF_TOKEN_PATH is set.
  static HubSettings from_environment(const std::string& config_endpoint = {},
                                      const std::filesystem::path& config_token_file = {});
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

// Where a download stands. The partial file is split into done.size() equal ranges of
// ceil(size / n) bytes (the last one shorter, trailing ones possibly empty); done[i] bytes from the
// start of range i are written and fsynced, so a power loss loses nothing before them.
struct DownloadState {
  std::vector<uint64_t> done;  // empty: nothing known (a fresh download; the partial is recreated)
  uint64_t completed() const;  // sum of done
  std::string to_json() const;  // {"done":[...]}, for storing in SQLite
  // Anything malformed (not that shape, negative or non-integer counts, more than 64 ranges)
  // gives an empty state: the download starts over.
  static DownloadState from_json(std::string_view text);
};

struct DownloadOptions {
  // In/out. nullptr: resume from the partial's size as one stream. Non-null: resume exactly from
  // *state (a fresh download when it is empty, does not fit the file, or the partial is missing or
  // not the file's size); updated as the download goes.
  DownloadState* state = nullptr;
  // Called on the calling thread with the state right after the partial was fsynced: at most
  // every `checkpoint_every`, when a fresh download replaces the partial (before it is truncated),
  // and once more before download() returns or throws — never with bytes that are not durable.
  std::function<void(const DownloadState&)> checkpoint;
  std::chrono::milliseconds checkpoint_every{1000};
};

struct UrlDownload {
  std::string sha256;  // hex, of the bytes downloaded
  uint64_t size = 0;
};

// The most ranges one download is split into (and a stored DownloadState may have).
inline constexpr size_t kMaxDownloadRanges = 64;

// `s` is exactly `len` hex digits (either case).
bool is_hex(std::string_view s, size_t len);

// The body of GET /api/{models,datasets}/{repo}/revision/{rev}?blobs=true as HubRepoInfo:
// commit sha (40 hex), and per file its checked name, size, git blob id and LFS sha256 (hex ids
// lowercased). Error(invalid_model) naming `ref` for anything else: not the API's shape, a size
// that is not a non-negative integer, a bad id, a name check_repo_file_name refuses, a name
// listed twice, or a name that is also another file's directory.
HubRepoInfo parse_repo_info(std::string_view body, const HubRepoRef& ref);

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

  // Downloads `file` of commit `sha` into `partial`, following the Hub's redirect to its CDN.
  // Without opts.state: appends from the partial's current size with one HTTP Range request (a
  // fresh download when it is empty or missing). With opts.state: resumes from the state; a
  // fresh download first reserves the file's full size (posix_fallocate), and files of at least
  // parallel_min_bytes download as parallel_parts ranges at once (a thread and a connection each,
  // written in place). Each range retries network errors and 5xx up to max_attempts, resuming;
  // a 4xx on any range fails the download and stops the others; a server that answers a Range
  // request with the whole file makes the download one stream from byte 0.
  // When all bytes are there, checks the content against the LFS sha256 (or the git blob id) and
  // returns the sha256 hex; a mismatch (or a server sending more or other bytes than the listed
  // size) deletes the partial, clears the state and throws Error(invalid_model) saying so.
  // `progress(done, total)` is called on the calling thread a few times a second and once when
  // all bytes are there; returning false cancels: Error(cancelled), the state checkpointed and
  // the partial kept for a resume. A full disk is Error(no_space) naming the partial; other
  // write errors Error(io).
  using Progress = std::function<bool(uint64_t done, uint64_t total)>;
  std::string download(const HubRepoRef& ref, const std::string& sha, const HubFile& file,
                       const std::filesystem::path& partial, const Progress& progress = {},
                       const DownloadOptions& opts = {}) const;

  // The same for a plain http(s) URL (data that is not on the Hub): the size comes from a HEAD
  // (or, where HEAD is refused, a one-byte Range GET); `expected_sha256` (hex) is checked when
  // given. The Hub token is never sent, and error messages show the URL without its query.
  // Errors as download(), plus not_found / permission_denied for a 404 / 401 or 403.
  UrlDownload download_url(const std::string& url, const std::filesystem::path& partial,
                           const std::string& expected_sha256 = {}, const Progress& progress = {},
                           const DownloadOptions& opts = {}) const;

  const HubSettings& settings() const { return settings_; }

 private:
  HubSettings settings_;
};

}  // namespace gptqd::daemon
