// SPDX-License-Identifier: Apache-2.0
// The device worker thread: model loading and unloading, fair stepping of tasks (daemon layer).
#include "daemon/device_worker.h"

#include <algorithm>
#include <chrono>
#include <ctime>

#include "daemon/fault.h"
#include "daemon/log.h"
#include "engine/memory_plan.h"

namespace gptqd::daemon {
namespace {

int64_t now_s() { return static_cast<int64_t>(std::time(nullptr)); }

size_t common_prefix(const std::vector<int32_t>& a, const std::vector<int32_t>& b) {
  size_t n = 0;
  while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
  return n;
}

}  // namespace

// ---- WorkerModel ----

std::unique_ptr<engine::Session> WorkerModel::take_session(const std::vector<int32_t>& prompt, int64_t n_ctx,
                                                           uint64_t memory_available) {
  size_t best = idle_.size(), best_len = 0;
  for (size_t i = 0; i < idle_.size(); ++i) {
    if (idle_[i]->n_ctx() != n_ctx) continue;
    const size_t len = common_prefix(idle_[i]->tokens(), prompt);
    if (best == idle_.size() || len > best_len) best = i, best_len = len;
  }
  if (best < idle_.size()) {
    auto s = std::move(idle_[best]);
    idle_.erase(idle_.begin() + static_cast<std::ptrdiff_t>(best));
    return s;
  }
  if (memory_available > 0) {
    // The weights are already in memory: only the KV cache is new (its scratch is sized lazily
    // and small next to it).
    engine::MemoryPlan plan = engine::plan_memory(model_->config(), 0, n_ctx, 1);
    plan.workspace_bytes = 0;
    uint64_t freed = 0;
    while (plan.total() > memory_available + freed && !idle_.empty()) {
      freed += idle_.front()->cache_bytes();  // the oldest idle cache makes room
      idle_.erase(idle_.begin());
    }
    if (std::string why = engine::memory_misfit(plan, memory_available + freed, "the KV cache", "system memory");
        !why.empty()) {
      fail(ErrorCode::no_space, why);
    }
  }
  return std::make_unique<engine::Session>(*model_, n_ctx);
}

void WorkerModel::give_back(std::unique_ptr<engine::Session> session) {
  idle_.push_back(std::move(session));
  constexpr size_t kMaxIdle = 4;
  if (idle_.size() > kMaxIdle) idle_.erase(idle_.begin());  // the oldest goes
}

uint64_t WorkerModel::size_bytes() const {
  uint64_t n = model_->weights_bytes();
  for (const auto& s : idle_) n += s->cache_bytes();
  return n;
}

// ---- DeviceWorker ----

DeviceWorker::DeviceWorker(std::string device, int n_threads, DeviceLimits limits)
    : device_(std::move(device)), n_threads_(n_threads), limits_(limits), thread_([this] { run(); }) {}

DeviceWorker::~DeviceWorker() { shutdown(); }

bool DeviceWorker::submit(std::shared_ptr<Task> task, std::string* why) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      *why = "the daemon is shutting down";
      return false;
    }
    // Only requests that must wait for a slot count against max_queued; one that a free slot
    // of its model will take at once is never refused (so max_queued 0 still serves).
    const size_t max_active = static_cast<size_t>(limits_.max_active_per_model);
    auto n_waiting = [max_active](const Slot& s) {
      const size_t room = max_active - std::min(s.active.size(), max_active);
      return s.queued.size() > room ? s.queued.size() - room : size_t{0};
    };
    Slot& slot = slots_[task->model().ref];
    const bool must_wait = slot.active.size() + slot.queued.size() >= max_active;
    size_t waiting = 0;
    for (const auto& [ref, s] : slots_) waiting += n_waiting(s);
    if (must_wait && waiting >= static_cast<size_t>(limits_.max_queued)) {
      *why = cat("the request queue is full (", limits_.max_queued, " waiting); retry shortly");
      return false;
    }
    slot.queued.push_back(std::move(task));
    ++n_queued_;
  }
  wake_.notify_one();
  return true;
}

std::vector<LoadedModelStatus> DeviceWorker::status() {
  std::lock_guard lock(mutex_);
  return status_;
}

void DeviceWorker::request_stop() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
}

void DeviceWorker::shutdown() {
  request_stop();
  if (thread_.joinable()) thread_.join();
}

void DeviceWorker::publish_status() {
  // Caller holds mutex_.
  status_.clear();
  for (const auto& [ref, slot] : slots_) {
    if (!slot.loaded) continue;
    LoadedModelStatus st;
    st.ref = ref;
    st.digest = slot.loaded->handle().digest;
    st.size_bytes = slot.loaded->size_bytes();
    st.expires_at = slot.keep_alive_s < 0 ? 0 : slot.last_used + slot.keep_alive_s;
    st.active = static_cast<int>(slot.active.size());
    st.queued = static_cast<int>(slot.queued.size());
    status_.push_back(st);
  }
}

// Loads (or reloads, when the registry entry changed) the slot's model. Called with `lock` held;
// releases it while loading so submissions are never blocked for seconds.
int64_t DeviceWorker::steady_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t DeviceWorker::busy_ms() const {
  const int64_t at = step_started_ms_.load(std::memory_order_relaxed);
  return at == 0 ? 0 : std::max<int64_t>(1, steady_ms() - at);
}

bool DeviceWorker::ensure_loaded(const std::string& ref, Slot& slot, std::unique_lock<std::mutex>& lock) {
  const ModelHandle handle = slot.active.front()->model();
  if (slot.loaded && slot.loaded->handle().digest == handle.digest) return false;
  // Make room: unload the least recently used idle models beyond the limit.
  for (;;) {
    int n_loaded = 0;
    Slot* lru = nullptr;
    for (auto& [other_ref, other] : slots_) {
      if (!other.loaded || &other == &slot) continue;
      ++n_loaded;
      if (other.active.empty() && other.queued.empty() && (!lru || other.last_used < lru->last_used)) lru = &other;
    }
    if (n_loaded < limits_.max_loaded_models || !lru) break;
    log_info("unloading ", lru->loaded->handle().ref, " to make room for ", ref);
    lru->loaded.reset();
  }
  slot.loaded.reset();
  lock.unlock();
  std::unique_ptr<WorkerModel> loaded;
  std::string error;
  ErrorCode code = ErrorCode::internal;
  auto t0 = std::chrono::steady_clock::now();
  try {
    engine::LoadOptions o;
    o.device = device_;
    o.n_threads = n_threads_;
    o.memory_available = engine::available_system_memory();
    auto model = timed_step([&] { return engine::LlamaModel::load(handle.files, o); });
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    loaded = std::make_unique<WorkerModel>(handle, std::move(model), ms);
    log_info("loaded ", ref, " on ", device_, " in ", static_cast<int64_t>(ms), " ms (",
             loaded->model().weights_bytes() >> 20, " MiB of weights)");
  } catch (const Error& e) {
    error = e.what(), code = e.code();
  } catch (const std::exception& e) {
    error = e.what();
  }
  lock.lock();
  if (!loaded) {
    log_warn("cannot load ", ref, ": ", error);
    for (auto& t : slot.active) t->abort(code, "cannot load model " + ref + ": " + error);
    for (auto& t : slot.queued) t->abort(code, "cannot load model " + ref + ": " + error);
    n_queued_ -= static_cast<int>(slot.queued.size());
    slot.active.clear();
    slot.queued.clear();
    slot.fresh.clear();
    return false;
  }
  slot.loaded = std::move(loaded);
  slot.fresh.assign(slot.active.begin(), slot.active.end());
  slot.last_used = now_s();
  publish_status();  // /api/ps shows the model as soon as it is loaded
  return true;
}

void DeviceWorker::unload_expired(int64_t now) {
  // Caller holds mutex_.
  for (auto it = slots_.begin(); it != slots_.end();) {
    Slot& s = it->second;
    const bool idle = s.active.empty() && s.queued.empty();
    if (idle && s.loaded && s.keep_alive_s >= 0 && now >= s.last_used + s.keep_alive_s) {
      log_info("unloading ", it->first, " (keep_alive ", s.keep_alive_s, " s passed)");
      s.loaded.reset();
    }
    if (idle && !s.loaded) {
      it = slots_.erase(it);
    } else {
      ++it;
    }
  }
}

void DeviceWorker::fail_device(const std::string& reason) {
  broken_ = true;
  stopping_ = true;
  const std::string msg = "the compute device failed and cannot recover (" + reason + "); gptqd restarts";
  for (auto& [ref, slot] : slots_) {
    for (auto& t : slot.active) t->abort(ErrorCode::internal, msg);
    for (auto& t : slot.queued) t->abort(ErrorCode::internal, msg);
    n_queued_ -= static_cast<int>(slot.queued.size());
    slot.active.clear();
    slot.queued.clear();
    slot.fresh.clear();
  }
  if (on_fatal_) on_fatal_(reason);
}

void DeviceWorker::run() {
  std::unique_lock lock(mutex_);
  for (;;) {
    // Promote queued tasks while there is room.
    bool any_active = false;
    for (auto& [ref, slot] : slots_) {
      while (!slot.queued.empty() && static_cast<int>(slot.active.size()) < limits_.max_active_per_model) {
        auto t = std::move(slot.queued.front());
        slot.queued.pop_front();
        --n_queued_;
        slot.keep_alive_s = t->keep_alive_s();
        slot.active.push_back(std::move(t));
      }
      any_active = any_active || !slot.active.empty();
    }
    if (stopping_) break;
    unload_expired(now_s());
    publish_status();
    if (!any_active) {
      // Sleep until a submission, or until the next model's keep_alive expires.
      int64_t next = 0;
      for (auto& [ref, slot] : slots_) {
        if (slot.loaded && slot.keep_alive_s >= 0) {
          const int64_t at = slot.last_used + slot.keep_alive_s;
          next = next == 0 ? at : std::min(next, at);
        }
      }
      if (next == 0) {
        wake_.wait(lock);
      } else {
        wake_.wait_for(lock, std::chrono::seconds(std::max<int64_t>(1, next - now_s())));
      }
      continue;
    }
    // One round: every active task of every model takes one step.
    for (auto& [ref, slot] : slots_) {
      if (slot.active.empty()) continue;
      ensure_loaded(ref, slot, lock);
      if (!slot.loaded || stopping_) continue;
      std::vector<std::shared_ptr<Task>> round(slot.active.begin(), slot.active.end());
      WorkerModel* model = slot.loaded.get();
      lock.unlock();
      std::vector<std::shared_ptr<Task>> finished;
      std::string fatal;
      // Continuous batching: every task whose next step is one token decodes in one batch (one
      // read of the weights for all of them); the others (prefill chunks, cancels, evaluations)
      // step on their own below.
      std::vector<std::shared_ptr<Task>> batched;
      std::vector<engine::Generator*> gens;
      for (auto& t : round) {
        if (engine::Generator* g = t->batchable()) {
          batched.push_back(t);
          gens.push_back(g);
        }
      }
      if (!gens.empty()) {
        bool ran = false;
        try {
          timed_step([&] {
            fault_device("device.step");
            fault_device_hang("device.step");
            return engine::decode_batch(model->model(), gens, model->batch_scratch());
          });
          ran = true;
        } catch (const DeviceFault& e) {
          log_error("the device failed for good while serving ", ref, ": ", e.what());
          fatal = e.what();
        } catch (const std::exception& e) {
          log_error("a batched step of ", ref, " failed: ", e.what());
          for (auto& t : batched) t->abort(ErrorCode::internal, e.what());
          finished.insert(finished.end(), batched.begin(), batched.end());
        }
        if (ran) {
          for (auto& t : batched) {
            if (!t->after_batched_step(*model)) finished.push_back(t);
          }
        }
      }
      for (auto& t : round) {
        if (!fatal.empty()) break;
        if (std::find(batched.begin(), batched.end(), t) != batched.end()) continue;
        bool fresh = false;
        {
          std::lock_guard g(mutex_);
          auto f = std::find(slot.fresh.begin(), slot.fresh.end(), t);
          if (f != slot.fresh.end()) fresh = true, slot.fresh.erase(f);
        }
        bool more = false;
        try {
          more = timed_step([&] {
            fault_device("device.step");
            fault_device_hang("device.step");
            return t->step(*model, fresh);
          });
        } catch (const DeviceFault& e) {
          log_error("the device failed for good while serving ", ref, ": ", e.what());
          fatal = e.what();
          break;
        } catch (const std::exception& e) {
          log_error("task for ", ref, " failed: ", e.what());
          t->abort(ErrorCode::internal, e.what());
        }
        if (!more) finished.push_back(t);
      }
      lock.lock();
      if (!fatal.empty()) {
        fail_device(fatal);
        break;
      }
      for (auto& t : finished) slot.active.remove(t);
      slot.last_used = now_s();
      publish_status();
    }
    if (broken_) break;
  }
  // Stopping: nothing more runs.
  for (auto& [ref, slot] : slots_) {
    for (auto& t : slot.active) t->abort(ErrorCode::cancelled, "the daemon is shutting down");
    for (auto& t : slot.queued) t->abort(ErrorCode::cancelled, "the daemon is shutting down");
    slot.active.clear();
    slot.queued.clear();
    slot.loaded.reset();
  }
  status_.clear();
}

}  // namespace gptqd::daemon
