// SPDX-License-Identifier: Apache-2.0
// The CPU backend: OpenBLAS for every matmul, kernels/cpu for the rest, split over a small
// pool of threads (engine layer).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <atomic>
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
// all parts are done. One job at a time (the backend belongs to one device worker). A decode step
// issues a few hundred tiny jobs, so workers spin briefly before sleeping: waking a sleeping
// thread costs tens of microseconds, more than many of the jobs themselves.
class ThreadPool {
 public:
  explicit ThreadPool(int n_threads) {
    for (int i = 1; i < n_threads; ++i) workers_.emplace_back([this, i] { run(i); });
  }
  ~ThreadPool() {
    {
      std::lock_guard lock(mutex_);
      stop_.store(true);
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
    job_ = &fn;
    n_ = n;
    parts_ = parts;
    pending_.store(parts - 1, std::memory_order_relaxed);
    {
      std::lock_guard lock(mutex_);  // orders the job fields before the new generation
      generation_.fetch_add(1, std::memory_order_release);
    }
    wake_.notify_all();
    fn(0, n / parts);  // part 0 on the calling thread
    while (pending_.load(std::memory_order_acquire) != 0) pause();
  }

 private:
  static void pause() {
#if defined(__x86_64__)
    __builtin_ia32_pause();
#endif
  }

  void run(int index) {
    uint64_t seen = 0;
    for (;;) {
      // Spin a little (~50 µs) for the next job, then sleep.
      uint64_t gen = generation_.load(std::memory_order_acquire);
      for (int spin = 0; gen == seen && spin < 20000 && !stop_.load(std::memory_order_relaxed); ++spin) {
        pause();
        gen = generation_.load(std::memory_order_acquire);
      }
      if (gen == seen) {
        std::unique_lock lock(mutex_);
        wake_.wait(lock, [&] { return stop_.load() || generation_.load() != seen; });
        if (stop_.load()) return;
        gen = generation_.load(std::memory_order_acquire);
      }
      seen = gen;
      if (index < parts_) {
        (*job_)(n_ * index / parts_, n_ * (index + 1) / parts_);
        pending_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t n_ = 0;
  int parts_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
};

class CpuBackend final : public Backend {
 private:
  static constexpr int64_t kBlasTiles = 4;   // 64 output columns per dequantize + sgemm unit
  static constexpr int64_t kBlasK = 512;     // rows of k per dequantized tile (128 KiB of fp32)

  static kcpu::CpuIsa isa_of(kernels::KernelId id) {
    switch (id) {
      case kernels::KernelId::cpu_avx512: return kcpu::CpuIsa::avx512;
      case kernels::KernelId::cpu_avx2: return kcpu::CpuIsa::avx2;
      default: return kcpu::CpuIsa::scalar;
    }
  }

  struct PartInput {
    kernels::KernelId kernel = kernels::KernelId::cpu_scalar;
    kcpu::CpuIsa isa = kcpu::CpuIsa::scalar;
    const float* x = nullptr;  // the input in kernel order: the caller's x, or xp when permuted
    std::vector<float> xp;     // [n, K] permuted input (act-order parts)
    std::vector<float> xsum;   // [n, n_groups]
  };
  struct Unit {
    size_t part;
    int64_t t0, t1;
  };

 public:
  explicit CpuBackend(int n_threads) : n_threads_(n_threads), pool_(n_threads) { openblas_set_num_threads(1); }

  std::string name() const override { return "cpu"; }
  int n_threads() const override { return n_threads_; }

  // y [n, rows] = x [n, cols] · W^T. Every thread takes a slice of W's rows (so of y's columns)
  // and runs single-threaded BLAS on it: one pool for all parallelism, no second set of BLAS
  // threads competing for the cores.
  void matmul(const DenseMatrix& w, const float* x, int64_t n, float* y) override {
    if (w.is_gptq()) {
      matmul_gptq(w, x, n, y);
      return;
    }
    const auto cols = static_cast<blasint>(w.cols);
    pool_.parallel_for(w.rows, [&](int64_t r0, int64_t r1) {
      const auto rows = static_cast<blasint>(r1 - r0);
      if (w.is_f16()) {
        if (n == 1) {
          check(kcpu::gemv_f16(w.data_f16.data(), x, w.cols, r0, r1, y), "gemv_f16");
          return;
        }
        // fp16 rows are converted a tile at a time; the conversion is amortized over n inputs.
        constexpr int64_t kTileRows = 128;
        thread_local std::vector<float> tile;
        tile.resize(static_cast<size_t>(kTileRows * w.cols));
        for (int64_t t0 = r0; t0 < r1; t0 += kTileRows) {
          const int64_t t1 = std::min(r1, t0 + kTileRows);
          check(kcpu::convert_f16_rows(w.data_f16.data(), w.cols, t0, t1, tile.data()), "convert_f16_rows");
          cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n), static_cast<blasint>(t1 - t0),
                      cols, 1.0f, x, cols, tile.data(), cols, 0.0f, y + t0, static_cast<blasint>(w.rows));
        }
        return;
      }
      const float* wr = w.data.data() + r0 * w.cols;
      if (n == 1) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, rows, cols, 1.0f, wr, cols, x, 1, 0.0f, y + r0, 1);
      } else {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n), rows, cols, 1.0f, x, cols, wr,
                    cols, 0.0f, y + r0, static_cast<blasint>(w.rows));
      }
    });
  }

  // GPTQ parts run through the kernel the dispatch table picks for (this CPU, the part, n):
  // the direct INT4 kernel for decode and small n (tiles of 16 output columns split over the
  // threads), or dequantized tiles + BLAS for large n. Inputs are permuted (act-order) and summed
  // per group once per part, before the threads start.
  void matmul_gptq(const DenseMatrix& w, const float* x, int64_t n, float* y) {
    const kernels::DeviceDesc& cpu = kernels::host_cpu_device();
    const size_t n_parts = w.gptq.size();
    inputs_.resize(std::max(inputs_.size(), n_parts));
    units_.clear();
    for (size_t i = 0; i < n_parts; ++i) {
      const GptqPart& part = w.gptq[i];
      const kcpu::GptqPackedLinear& p = part.packed;
      PartInput& in = inputs_[i];
      in.kernel = kernels::pick_kernel(cpu, part.desc, n);
      // The vector ISA of the direct kernel this CPU would run at n = 1 also dequantizes tiles.
      in.isa = isa_of(in.kernel == kernels::KernelId::cpu_dequant_blas ? kernels::pick_kernel(cpu, part.desc, 1)
                                                                        : in.kernel);
      in.xsum.resize(static_cast<size_t>(n * p.n_groups));
      in.x = x;
      if (!p.perm.empty()) {
        in.xp.resize(static_cast<size_t>(n * p.K));
        in.x = in.xp.data();
      }
      check(kcpu::gptq_prepare_input(p, x, p.K, n, p.perm.empty() ? nullptr : in.xp.data(), in.xsum.data()),
            "gptq_prepare_input");
      // Work units: single tiles for the direct kernel, blocks of tiles for dequantize + BLAS.
      const int64_t step = in.kernel == kernels::KernelId::cpu_dequant_blas ? kBlasTiles : 1;
      for (int64_t t = 0; t < p.n_tiles; t += step) units_.push_back({i, t, std::min(p.n_tiles, t + step)});
    }
    pool_.parallel_for(static_cast<int64_t>(units_.size()), [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) {
        const Unit& unit = units_[static_cast<size_t>(u)];
        const GptqPart& part = w.gptq[unit.part];
        const PartInput& in = inputs_[unit.part];
        float* yp = y + part.row_offset;
        if (in.kernel != kernels::KernelId::cpu_dequant_blas) {
          // Consecutive units of one part go to the kernel in one call.
          int64_t end = u + 1;
          while (end < u1 && units_[static_cast<size_t>(end)].part == unit.part) ++end;
          check(kcpu::gptq_gemm_direct(part.packed, in.isa, in.x, in.xsum.data(), n, unit.t0,
                                       units_[static_cast<size_t>(end - 1)].t1, yp, w.rows),
                "gptq_gemm_direct");
          u = end - 1;
          continue;
        }
        dequant_gemm(part.packed, in, n, unit.t0, unit.t1, yp, w.rows);
      }
    });
  }

  // y[:, 16*t0 ..) for tiles [t0, t1): dequantize kBlasK rows of k at a time, sgemm them in.
  static void dequant_gemm(const kcpu::GptqPackedLinear& p, const PartInput& in, int64_t n, int64_t t0, int64_t t1,
                           float* y, int64_t ldy) {
    const int64_t width = (t1 - t0) * kcpu::kGptqTile;
    const int64_t cols = std::min(p.N, t1 * kcpu::kGptqTile) - t0 * kcpu::kGptqTile;
    thread_local std::vector<float> tile;
    tile.resize(static_cast<size_t>(kBlasK * width));
    for (int64_t k0 = 0; k0 < p.K; k0 += kBlasK) {
      const int64_t k1 = std::min(p.K, k0 + kBlasK);
      check(kcpu::gptq_dequantize_tiles(p, in.isa, t0, t1, k0, k1, tile.data(), width), "gptq_dequantize_tiles");
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(cols),
                  static_cast<blasint>(k1 - k0), 1.0f, in.x + k0, static_cast<blasint>(p.K), tile.data(),
                  static_cast<blasint>(width), k0 == 0 ? 0.0f : 1.0f, y + t0 * kcpu::kGptqTile,
                  static_cast<blasint>(ldy));
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

  // Attention per head as two BLAS products around a masked softmax: S = Q_h K_g^T, O_h = P V_g.
  // (kernels::cpu::attention is the scalar reference this is tested against.)
  void attention(const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int64_t kv_stride,
                 int64_t n, int64_t pos0, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, float* out) override {
    const int64_t out_stride = n_heads * head_dim;
    const int64_t n_keys = pos0 + n;
    const int64_t group = n_heads / n_kv_heads;
    const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
    pool_.parallel_for(n_heads, [&](int64_t h0, int64_t h1) {
      thread_local std::vector<float> scores;
      scores.resize(static_cast<size_t>(n * n_keys));
      for (int64_t h = h0; h < h1; ++h) {
        const int64_t g = h / group;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, static_cast<blasint>(n), static_cast<blasint>(n_keys),
                    static_cast<blasint>(head_dim), scale, q + h * head_dim, static_cast<blasint>(q_stride),
                    k_cache + g * head_dim, static_cast<blasint>(kv_stride), 0.0f, scores.data(),
                    static_cast<blasint>(n_keys));
        for (int64_t i = 0; i < n; ++i) {
          float* row = scores.data() + i * n_keys;
          const int64_t visible = pos0 + i + 1;  // causal
          float max_score = -INFINITY;
          for (int64_t t = 0; t < visible; ++t) max_score = std::max(max_score, row[t]);
          float sum = 0.0f;
          for (int64_t t = 0; t < visible; ++t) {
            row[t] = std::exp(row[t] - max_score);
            sum += row[t];
          }
          const float inv = 1.0f / sum;
          for (int64_t t = 0; t < visible; ++t) row[t] *= inv;
          for (int64_t t = visible; t < n_keys; ++t) row[t] = 0.0f;
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(n), static_cast<blasint>(head_dim),
                    static_cast<blasint>(n_keys), 1.0f, scores.data(), static_cast<blasint>(n_keys),
                    v_cache + g * head_dim, static_cast<blasint>(kv_stride), 0.0f, out + h * head_dim,
                    static_cast<blasint>(out_stride));
      }
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
  std::vector<PartInput> inputs_;  // per part of the current matmul, reused across calls
  std::vector<Unit> units_;
};

}  // namespace

void DenseMatrix::row(int64_t r, float* out) const {
  if (is_gptq()) {
    for (const GptqPart& p : gptq) {
      if (r >= p.row_offset && r < p.row_offset + p.packed.N) {
        check(kcpu::gptq_unpack_rows(p.packed, r - p.row_offset, r - p.row_offset + 1, out), "gptq_unpack_rows");
        return;
      }
    }
    fail(ErrorCode::internal, "row ", r, " is outside the GPTQ parts");
  }
  if (is_f16()) {
    check(kcpu::convert_f16_rows(data_f16.data(), cols, r, r + 1, out), "convert_f16_rows");
  } else {
    std::copy(data.begin() + r * cols, data.begin() + (r + 1) * cols, out);
  }
}

std::unique_ptr<Backend> make_backend(const std::string& device, int n_threads) {
  if (n_threads <= 0) n_threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  if (device == "cpu" || device == "auto") return std::make_unique<CpuBackend>(n_threads);
  fail(ErrorCode::unsupported, "device '", device, "' is not available in this build; use cpu");
}

}  // namespace gptqd::engine
