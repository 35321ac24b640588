// SPDX-License-Identifier: Apache-2.0
// The CPU backend: OpenBLAS for every matmul, kernels/cpu for the rest, split over a small
// pool of threads (engine layer).
#include <cblas.h>

#include <algorithm>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>

#include "engine/backend.h"
#include "engine/error.h"
#include "kernels/cpu/cpu_kernels.h"

extern "C" void openblas_set_num_threads(int num_threads);

namespace gptqd::engine {
namespace {

namespace kcpu = kernels::cpu;

void check(kernels::KernelStatus s, const char* op) {
  if (s != kernels::KernelStatus::ok) fail(ErrorCode::internal, op, " kernel failed: ", kernels::to_string(s));
}

// Runs fn(begin, end) over [0, n) split across the workers and the calling thread; blocks until
// all parts are done. One job at a time (the backend belongs to one device worker).
class ThreadPool {
 public:
  explicit ThreadPool(int n_threads) {
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { run(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stop_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
  }
  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    const int parts = static_cast<int>(std::min<int64_t>(size(), n));
    if (parts <= 1) {
      if (n > 0) fn(0, n);
      return;
    }
    {
      std::lock_guard lock(mutex_);
      job_ = &fn;
      n_ = n;
      parts_ = parts;
      pending_ = parts - 1;
      ++generation_;
    }
    wake_.notify_all();
    fn(0, n / parts);  // part 0 on the calling thread
    std::unique_lock lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void run(int index) {
    uint64_t seen = 0;
    for (;;) {
      const std::function<void(int64_t, int64_t)>* job;
      int64_t n;
      int parts;
      {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stop_ || generation_ != seen; });
        if (stop_) return;
        seen = generation_;
        job = job_;
        n = n_;
        parts = parts_;
      }
      if (index < parts) {
        (*job)(n * index / parts, n * (index + 1) / parts);
        std::lock_guard lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool stop_ = false;
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int n_threads) : n_threads_(n_threads), pool_(n_threads) { openblas_set_num_threads(n_threads); }

  std::string name() const override { return "cpu"; }
  int n_threads() const override { return n_threads_; }

  void matmul(const DenseMatrix& w, const float* x, int64_t n, float* y) override {
    const auto rows = static_cast<blasint>(w.rows), cols = static_cast<blasint>(w.cols);
    if (n == 1) {
      cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, w.data.data(), cols, x, 1, 0.0f, y, 1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n), rows, cols, 1.0f, x, cols,
                  w.data.data(), cols, 0.0f, y, rows);
    }
  }

  void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* y) override {
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      check(kcpu::rms_norm(x + b * dim, weight, e - b, dim, eps, y + b * dim), "rms_norm");
    });
  }

  void rope(float* x, int64_t n, int64_t row_stride, int64_t n_heads, int64_t head_dim, const int32_t* positions,
            const float* inv_freq) override {
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      check(kcpu::rope(x + b * row_stride, e - b, row_stride, n_heads, head_dim, positions + b, inv_freq), "rope");
    });
  }

  void attention(const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int64_t kv_stride,
                 int64_t n, int64_t pos0, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float* out) override {
    const int64_t out_stride = n_heads * head_dim;
    pool_.parallel_for(n_heads, [&](int64_t b, int64_t e) {
      std::vector<float> scratch(static_cast<size_t>(pos0 + n));
      check(kcpu::attention(q, q_stride, k_cache, v_cache, kv_stride, n, pos0, n_heads, n_kv_heads, head_dim, b, e,
                            scratch.data(), out, out_stride),
            "attention");
    });
  }

  void silu_mul(const float* gate_up, int64_t n, int64_t I, float* out) override {
    pool_.parallel_for(n, [&](int64_t b, int64_t e) {
      check(kcpu::silu_mul(gate_up + b * 2 * I, e - b, I, out + b * I), "silu_mul");
    });
  }

  void add(float* x, const float* y, int64_t count) override {
    for (int64_t i = 0; i < count; ++i) x[i] += y[i];
  }

 private:
  int n_threads_;
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_backend(const std::string& device, int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (device == "cpu" || device == "auto") return std::make_unique<CpuBackend>(n_threads);
  fail(ErrorCode::unsupported, "device '", device, "' is not available in this build; use cpu");
}

}  // namespace gptqd::engine
