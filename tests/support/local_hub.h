// SPDX-License-Identifier: Apache-2.0
// The local Hub (tests/support/hub_server.py) as a test fixture: a python process on a loopback
// port serving a folder of repos, with helpers to lay out repos and read the served-bytes stats
// (test support).
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <string>

namespace gptqd::test {

class LocalHub {
 public:
  // Starts the server on `root` (created if needed); url() is empty when it did not start.
  explicit LocalHub(std::filesystem::path root);
  ~LocalHub();
  LocalHub(const LocalHub&) = delete;
  LocalHub& operator=(const LocalHub&) = delete;

  const std::string& url() const { return url_; }
  const std::filesystem::path& root() const { return root_; }

  // <root>/<models|datasets>/<repo>/commits/<sha>: where a commit's files go.
  std::filesystem::path commit_dir(const std::string& repo, const std::string& sha, bool dataset = false) const;
  // refs.json of a repo: branches and tags to commit shas.
  void set_refs(const std::string& repo, const std::map<std::string, std::string>& branches,
                const std::map<std::string, std::string>& tags = {}, bool dataset = false);
  // repo.json: {"gated", "tokens", "extra_siblings"}.
  void set_repo_json(const std::string& repo, const nlohmann::json& j, bool dataset = false);

  void faults(const nlohmann::json& list);  // writes faults.json ([] clears)
  nlohmann::json stats() const;             // GET /__stats
  void reset();                             // POST /__reset
  // Bytes served so far for request paths containing `needle`.
  uint64_t bytes_served(const std::string& needle) const;

 private:
  std::filesystem::path root_;
  pid_t pid_ = -1;
  std::string url_;
};

// sha256 of a file as lower-case hex.
std::string file_sha256(const std::filesystem::path& p);

}  // namespace gptqd::test
