// SPDX-License-Identifier: Apache-2.0
// The GPTQ solver and the round-to-nearest baseline for one linear layer (gptq-reference.md
// Part A, sections A.2-A.8) (quantizer layer). Cholesky, triangular work and GEMM go through
// LAPACKE/CBLAS; nothing here knows about models, files or threads beyond BLAS's own.
//
// Conventions: W is the PyTorch weight [N, K] row-major (N = out_features "rows", K =
// in_features "columns"); H is [K, K]; codes and parameters are always returned in the ORIGINAL
// column order, whatever order the solve used.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace gptqd::quantizer {

struct QuantizeOptions {
  int bits = 4;               // 2, 3, 4 or 8
  int group_size = 128;       // > 0, or -1 for one group spanning K; need not divide K
  bool sym = true;
  bool desc_act = false;      // act-order: solve columns by descending diag(H)
  bool static_groups = false; // group parameters fixed before the solve (only with group_size > 0)
  double damp_percent = 0.01; // of mean(diag(H)); 0 < damp_percent < 1
  int block_size = 128;       // lazy-batch block (B)

  // Error(invalid_argument) naming the bad field.
  void validate() const;
  int maxq() const { return (1 << bits) - 1; }
  // ceil(K / group_size), or 1 when group_size is -1.
  int64_t n_groups(int64_t K) const;
};

// Accumulates sum_tokens x x^T in fp32 (BLAS syrk/gemm on the lower triangle) for one linear
// input. With n_threads > 1 the lower triangle is cut into column blocks of equal area, one per
// thread (BLAS itself is kept single-threaded by the engine); each sum keeps its token order.
class HessianAccumulator {
 public:
  explicit HessianAccumulator(int64_t K, int n_threads = 1);
  // x: [n_rows, K] row-major fp32 activations, every row one token.
  void add(const float* x, int64_t n_rows);
  int64_t K() const { return K_; }
  int64_t n_tokens() const { return n_; }
  // H = (2 / n_tokens) * sum x x^T, full symmetric [K, K] row-major (gptq-reference.md A.2, the
  // "sum then scale" form). Error(invalid_argument) when no token was added.
  std::vector<float> hessian() const;

 private:
  int64_t K_;
  int n_threads_;
  int64_t n_ = 0;
  std::vector<float> sum_;  // [K, K], lower triangle valid (row-major)
};

// H after dead-column handling, act-order permutation and dampening, factored for the solve.
struct PreparedHessian {
  int64_t K = 0;
  std::vector<uint8_t> dead;    // [K] 1 where diag(H) == 0 exactly (original order)
  std::vector<int32_t> perm;    // [K] solve order -> original column (identity without act-order)
  std::vector<float> U;         // [K, K] row-major upper Cholesky factor of inv(H) (permuted),
                                // U^T U = inv(H); empty when every damping attempt failed
  double damp_percent_used = 0; // the fraction of mean(diag) finally added; 0 when all failed
  int damp_attempts = 1;        // 1 = the requested damping worked; 0 = H not finite, not tried
  bool ok() const { return !U.empty(); }
};

// A.3 steps 2, 4, 5 and A.4. `H` is consumed. When the Cholesky chain fails the damping is raised
// by 0.01 (GPTQModel's damp_auto_increment) while below 1, then a diagonal floor is tried
// (A.4 "Failure handling"); when all fail U is empty and gptq_quantize falls back to RTN with the
// same group parameters.
PreparedHessian prepare_hessian(std::vector<float> H, int64_t K, const QuantizeOptions& opt);

// One quantized linear in the checkpoint's terms, original column order.
struct QuantizedLinear {
  int64_t N = 0, K = 0;
  int bits = 4;
  int group_size = 128;          // as given (-1 allowed)
  bool sym = true;
  std::vector<uint8_t> codes;    // [N, K]: unsigned code of W[n, k], < 2^bits
  std::vector<float> scales;     // [N, G] fp32 (the checkpoint stores fp16)
  std::vector<uint8_t> zeros;    // [N, G] integer zero points in [0, maxq] (NOT minus one)
  std::vector<int32_t> g_idx;    // [K] group of input feature k, in [0, G)
  int64_t n_groups() const { return K == 0 ? 0 : static_cast<int64_t>(scales.size()) / N; }

  // Diagnostics.
  double loss = 0;               // sum over all weights of (w - q)^2 / d^2 / 2 (A.5), 0 for RTN
  double damp_percent_used = 0;
  int damp_attempts = 0;         // 0 for RTN
  bool rtn_fallback = false;     // the Cholesky chain failed: quantized without error feedback
  int64_t n_dead = 0;
};

// GPTQ (A.3 steps 1-3, A.5-A.8) of W [N, K] fp32 with a prepared Hessian of the same K.
QuantizedLinear gptq_quantize(std::span<const float> W, int64_t N, int64_t K, const PreparedHessian& h,
                              const QuantizeOptions& opt);

// Round-to-nearest with the same quantizer and groups (act-order does not apply; g_idx = k / gs).
QuantizedLinear rtn_quantize(std::span<const float> W, int64_t N, int64_t K, const QuantizeOptions& opt);

// W [N, K] = scale * (code - zero) (B.7). fp16_scales: scales are first rounded to fp16, as a
// checkpoint stores them (what an engine will compute from it).
std::vector<float> dequantize(const QuantizedLinear& q, bool fp16_scales);

}  // namespace gptqd::quantizer
