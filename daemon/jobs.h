// SPDX-License-Identifier: Apache-2.0
// JobManager: quantize jobs from request to registered tag (daemon layer, io thread only).
// It resolves the request (source model, calibration and evaluation text), records the job in
// SQLite, submits a QuantizeTask to the device worker, keeps each live job's progress for
// GET /api/jobs, fans its events out to followers, records every finished layer, and at the
// end imports the checkpoint as a new tag with its quality report. At start it resumes the
// jobs a previous daemon left queued or running.
#pragma once

#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "daemon/async_util.h"
#include "daemon/protocol.h"
#include "daemon/quantize_task.h"
#include "daemon/registry.h"

namespace gptqd::daemon {

class Daemon;

class JobManager {
 public:
  explicit JobManager(Daemon& d);

  // Validates and starts a job; returns its id. Error(not_found | invalid_argument | unsupported |
  // conflict | permission_denied) with a message for the client. `admin`: may read files by path.
  boost::asio::awaitable<int64_t> start_quantize(protocol::QuantizeRequest r, bool admin);
  // Resumes the quantize jobs left queued or running (called once, at start).
  boost::asio::awaitable<void> resume_all();

  // The job as JSON (detailed: params, per-layer reports). nullopt when unknown.
  std::optional<nlohmann::json> job_json(int64_t id, bool detailed);
  nlohmann::json list_json();
  // Cancels a queued or running job. Error(not_found) / Error(conflict) when already finished.
  void cancel(int64_t id);
  // Events of a live job (NDJSON objects), ending with done/error/cancelled; nullptr when the
  // job is not live (finished: the caller sends its final state).
  std::shared_ptr<AsyncQueue<nlohmann::json>> follow(int64_t id);
  void unfollow(int64_t id, const std::shared_ptr<AsyncQueue<nlohmann::json>>& queue);
  // Quantize jobs queued or running in this process.
  size_t n_live() const { return live_.size(); }
  // NAME:TAG refs a live job reads (its source) or will write (its target).
  bool uses_model(const std::string& name, const std::string& tag) const;
  // One observer (D-Bus) sees every event of every job as followers do, the final one included
  // (done/error/cancelled, with the registry already showing the final state). io thread; must
  // not throw. nullptr removes it.
  void set_observer(std::function<void(int64_t id, const nlohmann::json& event)> observer) {
    observer_ = std::move(observer);
  }

 private:
  struct Live {
    int64_t id = 0;
    std::string source, target;  // NAME:TAG
    std::shared_ptr<QuantizeTask> task;
    nlohmann::json progress;     // the last progress event
    std::chrono::steady_clock::time_point started;
    double start_fraction = 0;   // where this run started (a resume starts mid-way), for the ETA
    std::vector<std::shared_ptr<AsyncQueue<nlohmann::json>>> followers;
    bool finishing = false;      // the checkpoint is being registered
  };

  boost::asio::awaitable<void> launch(int64_t id, protocol::QuantizeRequest r, RegistryTag source, bool admin,
                                      bool resume);
  void on_event(int64_t id, QuantizeEvent ev);
  boost::asio::awaitable<void> finish(int64_t id, nlohmann::json quality);
  void end(int64_t id, const std::string& state, const std::string& error, nlohmann::json final_event);
  // The daemon stops under a live job: followers are told, the registry keeps it queued/running
  // (resume_all picks it up at the next start).
  void suspend(int64_t id);
  void broadcast(Live& job, const nlohmann::json& ev);
  std::filesystem::path job_dir(int64_t id) const;
  std::filesystem::path out_dir(int64_t id) const;
  void remove_scratch(int64_t id);

  Daemon& d_;
  std::map<int64_t, std::shared_ptr<Live>> live_;
  std::function<void(int64_t id, const nlohmann::json& event)> observer_;
};

}  // namespace gptqd::daemon
