// SPDX-License-Identifier: Apache-2.0
// DeviceWorker: the one thread that owns a compute device and the models loaded on it (daemon
// layer). Requests arrive as Tasks from the io thread; the worker loads models on first use,
// runs every active task one step at a time in turn (fair: a long generation cannot starve a
// short one; the one-token decode steps of a model's tasks run as one batch, and long prompts
// are fed in chunks so a newcomer does not stall the others), keeps a few KV-cache sessions per model for prompt-prefix reuse, and unloads a
// model once its keep_alive has passed without use.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/error.h"
#include "engine/generate.h"
#include "engine/llama_model.h"
#include "engine/model_source.h"

namespace gptqd::daemon {

// What to load: a registry entry resolved to blob paths.
struct ModelHandle {
  std::string ref;                          // "name:tag"
  std::string digest;                       // manifest digest: a re-pulled model reloads
  std::vector<engine::SourceFile> files;    // logical names -> blob paths
};

// A model as the worker holds it, with idle sessions whose caches may serve a new prompt.
class WorkerModel {
 public:
  WorkerModel(ModelHandle handle, std::unique_ptr<engine::LlamaModel> model, double load_ms)
      : handle_(std::move(handle)), model_(std::move(model)), load_ms_(load_ms) {}
  const ModelHandle& handle() const { return handle_; }
  const engine::LlamaModel& model() const { return *model_; }
  double load_ms() const { return load_ms_; }
  // The idle session of size n_ctx that shares the longest prefix with `prompt`, or a new one.
  // A new one must fit in `memory_available` bytes (0: no check): idle sessions are dropped to
  // make room first; if it still does not fit, Error(no_space) says how much num_ctx would.
  std::unique_ptr<engine::Session> take_session(const std::vector<int32_t>& prompt, int64_t n_ctx,
                                                uint64_t memory_available = 0);
  void give_back(std::unique_ptr<engine::Session> session);
  uint64_t size_bytes() const;
  engine::BatchScratch& batch_scratch() { return batch_scratch_; }

 private:
  ModelHandle handle_;
  std::unique_ptr<engine::LlamaModel> model_;
  std::vector<std::unique_ptr<engine::Session>> idle_;
  engine::BatchScratch batch_scratch_;  // the worker thread's, for batched decode steps
  double load_ms_;
};

// One request's work on the device. Implementations report through callbacks of their own;
// they must not throw from step() (errors become their own error event).
class Task {
 public:
  explicit Task(ModelHandle model, int64_t keep_alive_s) : model_(std::move(model)), keep_alive_s_(keep_alive_s) {}
  virtual ~Task() = default;
  const ModelHandle& model() const { return model_; }
  int64_t keep_alive_s() const { return keep_alive_s_; }  // < 0: keep loaded forever
  // One unit of work with the model loaded; `fresh_load` is true when the model was loaded for
  // this task. Returns false once finished.
  virtual bool step(WorkerModel& m, bool fresh_load) = 0;
  // The task will never run: the model failed to load or the worker stops.
  virtual void abort(ErrorCode code, const std::string& message) = 0;
  // Continuous batching: the task's generator when its next step is a one-token decode that the
  // worker may run together with the other tasks of the same model (engine::decode_batch), else
  // null. After such a batched step the worker calls after_batched_step instead of step; it
  // returns false once the task is finished.
  virtual engine::Generator* batchable() { return nullptr; }
  virtual bool after_batched_step(WorkerModel& /*m*/) { return true; }
  // Set from any thread; the task sees it at its next step.
  std::atomic<bool> cancel{false};

 private:
  ModelHandle model_;
  int64_t keep_alive_s_;
};

struct DeviceLimits {
  int max_loaded_models = 2;        // least recently used idle model goes first
  int max_active_per_model = 4;     // tasks interleaved at once on one model
  int max_queued = 16;              // waiting tasks, all models together; beyond: 503
  int max_idle_sessions = 4;        // per model, for prompt-cache reuse
};

struct LoadedModelStatus {
  std::string ref;
  std::string digest;
  uint64_t size_bytes = 0;
  int64_t expires_at = 0;           // unix seconds; 0 = never
  int active = 0;
  int queued = 0;
};

class DeviceWorker {
 public:
  DeviceWorker(std::string device, int n_threads, DeviceLimits limits);
  ~DeviceWorker();  // stops: queued and active tasks are aborted

  // Thread-safe. False with `why` when the queue is full or the worker stops.
  bool submit(std::shared_ptr<Task> task, std::string* why);
  std::vector<LoadedModelStatus> status();
  // Asks the worker to stop after its current step and abort every task; does not wait.
  void request_stop();
  // request_stop() and join the thread (also done by the destructor). One thread at a time.
  void shutdown();
  const std::string& device() const { return device_; }
  // How long the step running now (a task step, a batched decode, a model load) has taken, in
  // milliseconds; 0 when the worker is between steps. Any thread (the io thread's watchdog).
  int64_t busy_ms() const;
  // Called once, on the worker thread, when the device fails for good (engine::DeviceFault):
  // every task has been aborted and the worker takes no more. Set before the first submit.
  void set_on_fatal(std::function<void(std::string reason)> fn) { on_fatal_ = std::move(fn); }

 private:
  struct Slot {
    std::unique_ptr<WorkerModel> loaded;
    std::deque<std::shared_ptr<Task>> queued;
    std::list<std::shared_ptr<Task>> active;
    std::vector<std::shared_ptr<Task>> fresh;  // active tasks whose model was loaded for them
    int64_t last_used = 0;                      // unix seconds
    int64_t keep_alive_s = 300;
  };
  void run();
  bool ensure_loaded(const std::string& ref, Slot& slot, std::unique_lock<std::mutex>& lock);
  void unload_expired(int64_t now);
  void publish_status();

  std::string device_;
  int n_threads_;
  DeviceLimits limits_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::map<std::string, Slot> slots_;   // by model ref
  int n_queued_ = 0;
  bool stopping_ = false;
  bool broken_ = false;
  std::function<void(std::string)> on_fatal_;
  std::atomic<int64_t> step_started_ms_{0};  // steady-clock ms when the current step began; 0: idle
  // Marks a step's start and end around `fn` (any step the watchdog should see).
  template <typename Fn>
  auto timed_step(Fn&& fn) {
    struct Stamp {
      std::atomic<int64_t>& at;
      ~Stamp() { at.store(0, std::memory_order_relaxed); }
    } stamp{step_started_ms_};
    step_started_ms_.store(steady_ms(), std::memory_order_relaxed);
    return fn();
  }
  static int64_t steady_ms();
  // Aborts every task, marks the worker broken and reports `reason` (mutex held).
  void fail_device(const std::string& reason);
  std::vector<LoadedModelStatus> status_;
  std::thread thread_;
};

}  // namespace gptqd::daemon
