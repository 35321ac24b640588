// SPDX-License-Identifier: Apache-2.0
// Backend: the ~6 operations the Llama forward pass needs, chosen once at load (engine layer).
// The model code calls these and never asks which device it runs on. This issue builds the CPU
// backend (fp32, BLAS for the matmuls, threads for the rest); CUDA comes later.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cpu/gptq_gemm.h"
#include "kernels/dispatch.h"

namespace gptqd::engine {

// One GPTQ linear of a stacked matrix, in the CPU kernels' layout (repacked once at load).
struct GptqPart {
  int64_t row_offset = 0;  // its first output row in the stacked matrix
  kernels::LinearDesc desc;  // what the dispatch table decides on
  kernels::cpu::GptqPackedLinear packed;
};

// A weight matrix W [rows, cols]: y = x W^T maps cols inputs to rows outputs. Exactly one
// representation is set: fp32 rows, fp16 rows (kept fp16 so that decode reads half the bytes), or
// GPTQ parts stacked along the rows (q, k, v -> qkv), which stay packed (a quarter of fp16 at
// 4 bits) and run through the INT4 kernels the dispatch table picks.
struct DenseMatrix {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<float> data;         // [rows, cols] fp32
  std::vector<uint16_t> data_f16;  // [rows, cols] fp16 bits
  std::vector<GptqPart> gptq;      // parts covering rows [0, rows) in order
  bool is_f16() const { return !data_f16.empty(); }
  bool is_gptq() const { return !gptq.empty(); }
  bool empty() const { return data.empty() && data_f16.empty() && gptq.empty(); }
  uint64_t size_bytes() const;
  void row(int64_t r, float* out) const;  // out [cols] = fp32(W[r, :])
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual int n_threads() const = 0;

  // y [n, w.rows] = x [n, w.cols] · W^T
  virtual void matmul(const DenseMatrix& w, const float* x, int64_t n, float* y) = 0;
  // y [n, dim] = rms_norm(x [n, dim]) * weight [dim]
  virtual void rms_norm(const float* x, const float* weight, int64_t n, int64_t dim, float eps, float* y) = 0;
  // RoPE on the first n_heads heads of every row of x [n, row_stride]; inv_freq [head_dim/2].
  virtual void rope(float* x, int64_t n, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                    const int32_t* positions, const float* inv_freq) = 0;
  // Causal GQA attention of q [n, q_stride] (positions pos0..) over the caches
  // [pos0 + n, kv_stride] into out [n, n_heads * head_dim].
  virtual void attention(const float* q, int64_t q_stride, const float* k_cache, const float* v_cache,
                         int64_t kv_stride, int64_t n, int64_t pos0, int64_t n_heads, int64_t n_kv_heads,
                         int64_t head_dim, float* out) = 0;
  // out [n, I] = silu(gate_up[:, :I]) * gate_up[:, I:]
  virtual void silu_mul(const float* gate_up, int64_t n, int64_t I, float* out) = 0;
  // x [count] += y [count]
  virtual void add(float* x, const float* y, int64_t count) = 0;
};

// "cpu" (or "auto" without a GPU backend). n_threads <= 0: one per hardware thread.
// Error(unsupported) for devices this build cannot drive.
std::unique_ptr<Backend> make_backend(const std::string& device, int n_threads);

}  // namespace gptqd::engine
