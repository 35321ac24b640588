// SPDX-License-Identifier: Apache-2.0
// gptqd's life cycle: state directory, start-up recovery, serving, graceful shutdown (daemon layer).
#include "daemon/daemon.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <set>
#include <thread>
#include <vector>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/post.hpp>

#include "daemon/dbus_service.h"
#include "daemon/handlers.h"
#include "daemon/hub_pull.h"
#include "daemon/log.h"
#include "daemon/service_manager.h"
#include "engine/error.h"

namespace gptqd::daemon {
namespace {

constexpr auto kShutdownGrace = std::chrono::seconds(10);
constexpr int kCudaProbeTimeoutMs = 10000;
constexpr int64_t kPartialMaxAgeS = 30 * 24 * 3600;

int64_t steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// "NVIDIA H100 80GB HBM3 (sm90, 132 SMs, 85.5 GB)" for the start-up log.
std::string describe_gpu(const kernels::cuda::CudaDeviceInfo& g) {
  char mem[32];
  std::snprintf(mem, sizeof mem, "%.1f GB", static_cast<double>(g.total_memory_bytes) / 1e9);
  return cat("cuda:", g.index, " ", g.name, " (sm", g.cc_major * 10 + g.cc_minor, ", ", g.sm_count, " SMs, ", mem, ")");
}

// mkdir -p with mode 0750 for the directories we create.
void make_dirs(const std::filesystem::path& dir) {
  std::filesystem::path cur;
  for (const auto& part : dir) {
    cur /= part;
    if (::mkdir(cur.c_str(), 0750) != 0 && errno != EEXIST) {
      fail(ErrorCode::io, "cannot create ", cur.string(), ": ", std::strerror(errno));
    }
  }
}

// The state directory holds everything gptqd trusts; like sshd's StrictModes, refuse one that
// another user owns or that others may write.
void check_state_dir(const std::filesystem::path& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) fail(ErrorCode::io, "cannot inspect ", dir.string(), ": ", std::strerror(errno));
  if (S_ISLNK(st.st_mode)) fail(ErrorCode::io, "state directory ", dir.string(), " is a symlink; point --state-dir at the real directory");
  if (!S_ISDIR(st.st_mode)) fail(ErrorCode::io, "state directory ", dir.string(), " is not a directory");
  if (st.st_uid != ::geteuid()) {
    fail(ErrorCode::io, "state directory ", dir.string(), " belongs to uid ", st.st_uid, ", not to uid ", ::geteuid(),
         " which runs gptqd");
  }
  if (st.st_mode & (S_IWGRP | S_IWOTH)) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    fail(ErrorCode::io, "state directory ", dir.string(), " has mode ", mode,
         "; others may write it — run: chmod go-w ", dir.string());
  }
}

}  // namespace

Daemon::Daemon(DaemonConfig cfg) : cfg_(std::move(cfg)), pool_(cfg_.io_workers) {}

Daemon::~Daemon() {
  {
    std::lock_guard lock(gpu_probe_mailbox_->mutex);
    gpu_probe_mailbox_->daemon = nullptr;
  }
  for (auto& c : cancels_) c->store(true);
  if (worker_) worker_->shutdown();
  pool_.join();
  signals_.reset();
  grace_timer_.reset();
  status_timer_.reset();
  server_.reset();
  registry_.reset();
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

Caller Daemon::caller_of(const PeerCred& peer) { return Caller{peer.uid, peer.groups}; }

bool Daemon::is_admin(const PeerCred& peer) const { return daemon::may_admin(caller_of(peer), cfg_.admin_group); }

bool Daemon::may_use(const PeerCred& peer) const {
  return daemon::may_use(caller_of(peer), cfg_.user_group, cfg_.admin_group);
}

void Daemon::open_state() {
  make_dirs(cfg_.state_dir);
  check_state_dir(cfg_.state_dir);

  // One daemon per state directory: the lock dies with its process, so a kill -9 leaves no
  // stale lock behind.
  const auto lock_path = cfg_.state_dir / "gptqd.lock";
  lock_fd_ = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0640);
  if (lock_fd_ < 0) fail(ErrorCode::io, "cannot open ", lock_path.string(), ": ", std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    char pid[32] = {};
    [[maybe_unused]] ssize_t n = ::pread(lock_fd_, pid, sizeof pid - 1, 0);
    fail(ErrorCode::conflict, "another gptqd (pid ", std::strtol(pid, nullptr, 10), ") is using the state directory ",
         cfg_.state_dir.string());
  }
  std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) == 0) {
    [[maybe_unused]] ssize_t n = ::pwrite(lock_fd_, pid.data(), pid.size(), 0);
  }

  registry_ = Registry::open(cfg_.state_dir / "registry.db");
  blobs_ = std::make_unique<BlobStore>(cfg_.state_dir);

  // Recovery: work a dead daemon left half done.
  if (int n = registry_->fail_running_jobs("interrupted: the daemon stopped while this job ran"); n > 0) {
    log_warn("marked ", n, " interrupted job(s) as failed");
  }
  // Hub downloads resume from their partials; one untouched for kPartialMaxAgeS, or whose
  // partial is gone, is forgotten.
  std::set<std::string> keep_partials;
  for (const auto& dl : registry_->downloads()) {
    std::error_code ec;
    const bool exists = std::filesystem::is_regular_file(blobs_->partial_path(dl.key), ec);
    if (!exists || std::time(nullptr) - dl.updated_at > kPartialMaxAgeS) {
      registry_->remove_download(dl.key);
      log_info("forgot the interrupted download of ", dl.source, exists ? " (untouched for 30 days)" : " (its partial is gone)");
      continue;
    }
    keep_partials.insert(blobs_->partial_path(dl.key).filename().string());
    log_info("keeping the partial download of ", dl.source, " for a resume");
  }
  for (const auto& removed : blobs_->sweep(registry_->blob_digests(), keep_partials)) {
    log_info("removed leftover ", removed, " (from an interrupted import)");
  }
  hub_ = std::make_unique<HubPulls>(*this);
}

void Daemon::start_gpu_probe() {
  if (cfg_.device == "cpu") {
    gpu_probe_.state = GpuProbe::State::not_probed;
    gpu_probe_.not_probed_reason = "--device cpu";
    return;
  }
  kernels::cuda::CudaProbeOptions options;
  options.timeout_ms = kCudaProbeTimeoutMs;
  // Hidden: tests make a hanging fake driver time out quickly.
  if (const char* v = std::getenv("GPTQD_CUDA_PROBE_TIMEOUT_MS"); v && std::atoi(v) > 0) options.timeout_ms = std::atoi(v);
  gpu_probe_.state = GpuProbe::State::probing;
  gpu_probe_.started_at_ms = steady_ms();
  gpu_probe_mailbox_->daemon = this;
  try {
    std::thread([mailbox = gpu_probe_mailbox_, options] {
      kernels::cuda::CudaProbeResult r = kernels::cuda::probe_cuda(options);
      std::lock_guard lock(mailbox->mutex);
      if (Daemon* d = mailbox->daemon) {
        asio::post(d->io_, [d, r = std::move(r)]() mutable { d->on_gpu_probed(std::move(r)); });
      }
    }).detach();
  } catch (const std::exception& e) {
    kernels::cuda::CudaProbeResult r;
    r.error = cat("could not start the CUDA probe: ", e.what());
    log_warn("ignoring: ", r.error);
    on_gpu_probed(std::move(r));
  }
}

void Daemon::on_gpu_probed(kernels::cuda::CudaProbeResult result) {
  gpu_probe_.result = std::move(result);
  gpu_probe_.state = GpuProbe::State::done;
  const auto& r = gpu_probe_.result;
  if (r.devices.empty()) {
    log_info("CUDA: no devices (", r.error, "); serving on the CPU");
    return;
  }
  for (const auto& g : r.devices) log_info("CUDA: ", describe_gpu(g));
  log_info("serving on the CPU: this gptqd has no CUDA backend yet (gptqctl gpu shows the kernels it would use)");
}

void Daemon::begin_shutdown(const char* why) {
  if (stopping_) return;
  stopping_ = true;
  notify(cat("STOPPING=1\nSTATUS=stopping (", why, "): finishing ", server_->n_connections(), " connection(s)"));
  if (status_timer_) status_timer_->cancel();
  // A stop for another reason than a signal leaves the signal wait pending; it must not keep
  // io_.run() alive (the signals stay caught, so a second SIGTERM does not kill mid-drain).
  if (signals_) signals_->cancel();
  log_info("stopping (", why, "): no new connections; cancelling ", cancels_.size(), " job(s)");
  server_->stop();
  if (dbus_) dbus_->stop();  // its waits would keep io_.run() going
  for (auto& c : cancels_) c->store(true);
  // The worker aborts its tasks; their error events let the waiting connections finish.
  worker_->request_stop();
  // io_.run() returns by itself once every connection and job has wound down; a 20 ms poll
  // watches for that and, after the grace period, closes busy connections under their feet.
  grace_timer_ = std::make_unique<asio::steady_timer>(io_);
  poll_shutdown(std::chrono::steady_clock::now() + kShutdownGrace, false);
}

void Daemon::mark_unhealthy(const std::string& reason) {
  if (!unhealthy_.empty()) return;
  unhealthy_ = reason;
  log_error("unhealthy: ", reason);
  notify(cat("STATUS=unhealthy: ", reason));
  begin_shutdown("unhealthy");
}

std::string Daemon::status_line() {
  size_t loaded = 0, active = 0;
  for (const auto& m : worker_->status()) {
    ++loaded;
    active += static_cast<size_t>(m.active);
  }
  // Live counts, not a registry scan: this runs every few seconds.
  return cat("serving: ", loaded, " model(s) loaded, ", active, " request(s) generating, ", jobs_->n_live(), " job(s) running, ",
             hub_->sessions().size(), " Hub pull(s)");
}

// WATCHDOG=1 from the io thread itself: a loop that stops serving stops the pings, and systemd
// restarts the daemon. The same tick refreshes STATUS= when it changed.
void Daemon::start_watchdog() {
  const auto interval = watchdog_ping_interval();
  status_timer_ = std::make_unique<asio::steady_timer>(io_);
  const auto period = interval ? std::min<std::chrono::microseconds>(*interval, std::chrono::seconds(5))
                               : std::chrono::microseconds(std::chrono::seconds(5));
  if (interval) log_info("systemd watchdog: a ping every ", interval->count() / 1000, " ms");
  tick(period, interval.has_value());
}

void Daemon::tick(std::chrono::microseconds period, bool watchdog) {
  if (stopping_) return;
  // A device step that never returns (a wedged driver, a hung load) stops nothing on this
  // thread, so the pings alone would not tell systemd: the worker's step clock does.
  const int64_t busy_ms = worker_->busy_ms();
  if (cfg_.device_step_timeout_s > 0 && busy_ms > int64_t{cfg_.device_step_timeout_s} * 1000) {
    worker_hung_ = true;
    mark_unhealthy(cat("the device worker has been in one step for ", busy_ms / 1000, " s (device_step_timeout_s is ",
                       cfg_.device_step_timeout_s, "): it is stuck"));
    return;
  }
  std::string state;
  if (watchdog) state = "WATCHDOG=1";
  std::string status = status_line();
  if (status != last_status_) {
    state += cat(state.empty() ? "" : "\n", "STATUS=", status);
    last_status_ = std::move(status);
  }
  if (!state.empty()) notify(state);
  status_timer_->expires_after(period);
  status_timer_->async_wait([this, period, watchdog](const boost::system::error_code& ec) {
    if (!ec) tick(period, watchdog);
  });
}

void Daemon::poll_shutdown(std::chrono::steady_clock::time_point deadline, bool forced) {
  if (server_->n_connections() == 0 && cancels_.empty()) return;  // nothing left: run() returns
  if (forced && worker_hung_) {
    io_.stop();  // requests and jobs waiting on the stuck worker would never wind down
    return;
  }
  if (!forced && std::chrono::steady_clock::now() >= deadline) {
    log_warn("shutdown grace period over: closing ", server_->n_connections(), " busy connection(s)");
    server_->close_all();
    forced = true;
  }
  grace_timer_->expires_after(std::chrono::milliseconds(20));
  grace_timer_->async_wait([this, deadline, forced](const boost::system::error_code& ec) {
    if (!ec) poll_shutdown(deadline, forced);
  });
}

int Daemon::run(const std::function<void()>& on_ready) {
  started_at_ = static_cast<int64_t>(std::time(nullptr));
  std::signal(SIGPIPE, SIG_IGN);
  open_state();
  DeviceLimits limits;
  limits.max_loaded_models = static_cast<int>(cfg_.max_loaded_models);
  limits.max_active_per_model = static_cast<int>(cfg_.parallel);
  limits.max_queued = static_cast<int>(cfg_.max_queue);
  worker_ = std::make_unique<DeviceWorker>(cfg_.device == "auto" ? "cpu" : cfg_.device, static_cast<int>(cfg_.threads),
                                           limits);
  // A device that fails for good (a sticky CUDA error) is not papered over: the daemon says it is
  // unhealthy, stops, and exits non-zero so that systemd starts a fresh process.
  worker_->set_on_fatal([this](std::string reason) {
    asio::post(io_, [this, reason = std::move(reason)] { mark_unhealthy(reason); });
  });
  jobs_ = std::make_unique<JobManager>(*this);
  // Before the socket listens: a SIGTERM from then on is a clean stop, never the default death.
  signals_ = std::make_unique<asio::signal_set>(io_, SIGTERM, SIGINT);
  signals_->async_wait([this](const boost::system::error_code& ec, int sig) {
    if (!ec) begin_shutdown(sig == SIGTERM ? "SIGTERM" : "SIGINT");
  });
  server_ = std::make_unique<HttpServer>(io_, cfg_, make_dispatcher(*this));
  server_->listen();
  server_->start();
  dbus_ = std::make_unique<DbusService>(*this);
  dbus_->start();  // an explicit --dbus that fails ends the start; auto only warns
  start_gpu_probe();
  asio::co_spawn(io_, jobs_->resume_all(), [](std::exception_ptr e) {
    if (e) log_error("resuming quantize jobs failed");
  });

  log_info("gptqd ", GPTQD_VERSION, " listening on ", server_->path(), server_->activated() ? " (from systemd)" : "",
           ", state in ", cfg_.state_dir.string());
  if (on_ready) on_ready();
  // Ready only now: the registry is open and the socket accepts.
  notify(cat("READY=1\nSTATUS=", status_line()));
  start_watchdog();
  io_.run();  // returns when nothing is left: see begin_shutdown()
  if (worker_hung_) {
    // Its thread will never return to be joined, nor let the destructors finish: leave now, with
    // the registry already consistent (every commit is its own transaction).
    log_error("stopped: unhealthy (", unhealthy_, "); exiting with status 1 without waiting for the stuck device worker");
    std::fflush(nullptr);
    std::_Exit(1);
  }
  worker_->shutdown();
  pool_.join();
  dbus_.reset();
  jobs_.reset();
  signals_.reset();
  grace_timer_.reset();
  status_timer_.reset();
  server_.reset();
  if (!unhealthy_.empty()) {
    log_error("stopped: unhealthy (", unhealthy_, "); exiting with status 1 so that the service manager restarts gptqd");
    return 1;
  }
  log_info("stopped");
  return 0;
}

}  // namespace gptqd::daemon
