// SPDX-License-Identifier: Apache-2.0
// Daemon: the state gptqd owns and its life cycle — state directory lock, registry, blob store,
// worker pool, HTTP server, signals (daemon layer). All members are touched only on the
// io_context thread, except the thread pool's own work.
#pragma once

#include <atomic>
#include <chrono>
#include <boost/asio/io_context.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/thread_pool.hpp>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>

#include "daemon/authz.h"
#include "daemon/blob_store.h"
#include "daemon/daemon_config.h"
#include "daemon/device_worker.h"
#include "daemon/http_server.h"
#include "daemon/jobs.h"
#include "daemon/registry.h"
#include "kernels/cuda/cuda_probe.h"

namespace gptqd::daemon {

// What the daemon knows about the machine's GPUs (io thread only). The CUDA probe runs on its own
// thread once the socket listens, so a missing, broken or hanging driver never delays the start.
struct GpuProbe {
  enum class State { not_probed, probing, done };
  State state = State::not_probed;
  std::string not_probed_reason;         // "--device cpu"
  int64_t started_at_ms = 0;             // steady clock, for "probing for 2 s"
  kernels::cuda::CudaProbeResult result;  // valid when done
};

class HubPulls;
class DbusService;

class Daemon {
 public:
  explicit Daemon(DaemonConfig cfg);
  ~Daemon();

  // Opens the state (lock, registry, start-up sweep), binds the socket, calls `on_ready` and
  // serves until SIGTERM/SIGINT. Returns the process exit code. Start-up failures throw.
  int run(const std::function<void()>& on_ready);

  const DaemonConfig& config() const { return cfg_; }
  asio::io_context& io() { return io_; }
  asio::thread_pool& pool() { return pool_; }
  Registry& registry() { return *registry_; }
  BlobStore& blobs() { return *blobs_; }
  DeviceWorker& worker() { return *worker_; }
  JobManager& jobs() { return *jobs_; }
  HubPulls& hub() { return *hub_; }
  int64_t started_at() const { return started_at_; }
  bool stopping() const { return stopping_; }
  const GpuProbe& gpu_probe() const { return gpu_probe_; }
  // Non-empty once the device failed for good: GET /api/health answers 503 and the process
  // exits with status 1 after its drain.
  const std::string& unhealthy() const { return unhealthy_; }
  void mark_unhealthy(const std::string& reason);

  // Work that must stop at shutdown registers its cancel flag here (io thread only).
  void track(const std::shared_ptr<std::atomic<bool>>& cancel) { cancels_.insert(cancel); }
  void untrack(const std::shared_ptr<std::atomic<bool>>& cancel) { cancels_.erase(cancel); }
  // NAME:TAG refs with a pull in flight (io thread only).
  std::set<std::string>& pulls_in_flight() { return pulls_in_flight_; }

  // True when `peer` may change the registry: root, the daemon's own user, or a member of
  // cfg.admin_group (daemon/authz.h).
  bool is_admin(const PeerCred& peer) const;
  // True when `peer` may use the daemon at all (read, generate): the above, or a member of
  // cfg.user_group.
  bool may_use(const PeerCred& peer) const;
  static Caller caller_of(const PeerCred& peer);

 private:
  void open_state();
  void begin_shutdown(const char* why);
  void poll_shutdown(std::chrono::steady_clock::time_point deadline, bool forced);
  void start_gpu_probe();
  void start_watchdog();
  void tick(std::chrono::microseconds period, bool watchdog);
  std::string status_line();
  void on_gpu_probed(kernels::cuda::CudaProbeResult result);

  DaemonConfig cfg_;
  asio::io_context io_{1};
  asio::thread_pool pool_;
  int lock_fd_ = -1;
  std::unique_ptr<Registry> registry_;
  std::unique_ptr<BlobStore> blobs_;
  std::unique_ptr<DeviceWorker> worker_;
  std::unique_ptr<JobManager> jobs_;
  std::unique_ptr<HubPulls> hub_;
  std::unique_ptr<HttpServer> server_;
  std::unique_ptr<DbusService> dbus_;  // after jobs_: it observes JobManager, so it goes first
  std::unique_ptr<asio::signal_set> signals_;
  std::unique_ptr<asio::steady_timer> grace_timer_;
  std::unique_ptr<asio::steady_timer> status_timer_;
  std::string last_status_;
  std::string unhealthy_;
  bool worker_hung_ = false;  // the device worker is stuck in a step: it cannot be joined
  std::set<std::shared_ptr<std::atomic<bool>>> cancels_;
  std::set<std::string> pulls_in_flight_;
  int64_t started_at_ = 0;
  bool stopping_ = false;
  GpuProbe gpu_probe_;
  // Shared with the detached probe thread, which posts its result only while `daemon` is set:
  // a wedged driver must not hold up a shutdown either.
  struct GpuProbeMailbox {
    std::mutex mutex;
    Daemon* daemon = nullptr;
  };
  std::shared_ptr<GpuProbeMailbox> gpu_probe_mailbox_ = std::make_shared<GpuProbeMailbox>();
};

}  // namespace gptqd::daemon
