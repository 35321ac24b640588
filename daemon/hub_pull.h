// SPDX-License-Identifier: Apache-2.0
// Pulls from the Hugging Face Hub and plain URLs into the registry (daemon layer): which files of
// a repo to fetch, partials under tmp/hub/ whose progress the registry records (so a restart, a
// Ctrl-C or a network error resumes them), verified downloads published into blobs/, and pulls
// of the same repo shared between the clients that ask for it.
//
// Threads: HubPulls' session map is io-thread only; its download states and file locks are
// shared with the download threads (one per pull, see run_on_thread) under a mutex.
#pragma once

#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "daemon/hub_client.h"
#include "daemon/http_server.h"
#include "daemon/protocol.h"
#include "engine/error.h"

namespace gptqd::daemon {

class Daemon;
template <typename T>
class AsyncQueue;

// Which files of a Hub model repo gptqd downloads: config.json, generation_config.json,
// tokenizer files, quantize_config.json, README/LICENSE, and the top-level *.safetensors (only
// the shards `index_shards` names when the repo has model.safetensors.index.json and the caller
// read it). Error(unsupported) for a repo whose weights are pickles only (it says why and what
// to do instead) or GGUF only; Error(invalid_model) without config.json or without weights.
std::vector<HubFile> select_model_files(const std::vector<HubFile>& listed, const std::string& repo_display,
                                        const std::set<std::string>* index_shards = nullptr);

// The partial's key: "lfs-<sha256>" for LFS files, "git-<blob id>" for files in git, else
// "id-" + sha256 of `fallback_id`. Content-addressed, so two pulls of the same bytes share one
// partial.
std::string download_key(const HubFile& f, const std::string& fallback_id);

// One pull that several clients may follow (io thread only).
struct PullSession {
  std::string key;                                           // "org/name@rev NAME" as asked
  std::vector<std::shared_ptr<AsyncQueue<nlohmann::json>>> followers;
  size_t n_connected = 0;                                    // followers still reading
  nlohmann::json plan;                                       // replayed to a late follower
  std::shared_ptr<std::atomic<bool>> cancel = std::make_shared<std::atomic<bool>>(false);
  nlohmann::json final_event;                                // done or error
  ErrorCode final_code = ErrorCode::internal;
  bool ok = false;
};

class HubPulls {
 public:
  // Loads the downloads in progress from the registry (io thread, at start-up).
  explicit HubPulls(Daemon& d);

  // ---- any thread -------------------------------------------------------------------------------
  // The durable state of a download (DownloadState JSON, "" when unknown).
  std::string state_of(const std::string& key);
  // Records a checkpoint: in memory now, in the registry through the io thread.
  void save_state(const std::string& key, const std::string& source, uint64_t size, const std::string& state_json);
  // Forgets a download (its partial was published or deleted).
  void forget(const std::string& key);
  // Waits until no other pull downloads `key` (calling `on_wait` once if it has to), then holds
  // it until the returned object goes. Error(cancelled) when `cancel` is set while waiting.
  class FileLock {
   public:
    FileLock(HubPulls* owner, std::string key) : owner_(owner), key_(std::move(key)) {}
    FileLock(FileLock&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), key_(std::move(o.key_)) {}
    FileLock(const FileLock&) = delete;
    FileLock& operator=(const FileLock&) = delete;
    FileLock& operator=(FileLock&& o) noexcept {
      if (this != &o) {
        release();
        owner_ = std::exchange(o.owner_, nullptr);
        key_ = std::move(o.key_);
      }
      return *this;
    }
    ~FileLock() { release(); }

   private:
    void release() noexcept;
    HubPulls* owner_;
    std::string key_;
  };
  FileLock lock_file(const std::string& key, const std::atomic<bool>& cancel, const std::function<void()>& on_wait);

  // ---- io thread --------------------------------------------------------------------------------
  std::map<std::string, std::shared_ptr<PullSession>>& sessions() { return sessions_; }

 private:
  Daemon& d_;
  std::mutex mutex_;
  std::condition_variable released_;
  std::map<std::string, std::string> states_;  // key -> DownloadState JSON
  std::set<std::string> locked_;
  std::map<std::string, std::shared_ptr<PullSession>> sessions_;
};

// POST /api/pull of a Hub repo ("org/name[@rev]"): joins the pull of the same repo, revision
// and name in flight, or starts it.
boost::asio::awaitable<void> pull_from_hub(Daemon& d, const protocol::PullRequest& r, ResponseWriter& w);

// POST /api/datasets/pull.
boost::asio::awaitable<void> handle_dataset_pull(Daemon& d, Request& req, ResponseWriter& w);

}  // namespace gptqd::daemon
