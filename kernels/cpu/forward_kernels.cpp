// SPDX-License-Identifier: Apache-2.0
// Scalar CPU kernels of the Llama forward pass: RMSNorm, RoPE, causal GQA attention, SwiGLU
// (kernels layer). Clear loops the compiler vectorizes; the matmuls go to BLAS in the backend.
#include <cmath>

#include "kernels/cpu/cpu_kernels.h"

namespace gptqd::kernels::cpu {

KernelStatus rms_norm(const float* x, const float* w, int64_t n_rows, int64_t dim, float eps, float* y) {
  if (n_rows < 0 || dim <= 0) return KernelStatus::bad_shape;
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* xr = x + r * dim;
    float* yr = y + r * dim;
    double sum = 0.0;  // why double: 4096+ squares summed in float lose digits the reference keeps
    for (int64_t i = 0; i < dim; ++i) sum += static_cast<double>(xr[i]) * xr[i];
    const float scale = static_cast<float>(1.0 / std::sqrt(sum / static_cast<double>(dim) + eps));
    for (int64_t i = 0; i < dim; ++i) yr[i] = xr[i] * scale * w[i];
  }
  return KernelStatus::ok;
}

KernelStatus rope(float* x, int64_t n_rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                  const int32_t* positions, const float* inv_freq) {
  if (head_dim <= 0 || head_dim % 2 != 0 || n_heads * head_dim > row_stride) return KernelStatus::bad_shape;
  const int64_t half = head_dim / 2;
  for (int64_t r = 0; r < n_rows; ++r) {
    const double p = positions[r];
    for (int64_t j = 0; j < half; ++j) {
      // Angles in double: positions up to 128k times frequencies near 1 need the digits.
      const double angle = p * static_cast<double>(inv_freq[j]);
      const float c = static_cast<float>(std::cos(angle));
      const float s = static_cast<float>(std::sin(angle));
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = x + r * row_stride + h * head_dim;
        const float a = v[j], b = v[j + half];
        v[j] = a * c - b * s;
        v[j + half] = b * c + a * s;
      }
    }
  }
  return KernelStatus::ok;
}

KernelStatus attention(const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int64_t kv_stride,
                       int64_t n, int64_t pos0, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t h_begin,
                       int64_t h_end, float* scratch, float* out, int64_t out_stride) {
  if (n_kv_heads <= 0 || n_heads % n_kv_heads != 0 || h_begin < 0 || h_end > n_heads) return KernelStatus::bad_shape;
  const int64_t group = n_heads / n_kv_heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(head_dim));
  for (int64_t h = h_begin; h < h_end; ++h) {
    const int64_t g = h / group;
    for (int64_t i = 0; i < n; ++i) {
      const float* qi = q + i * q_stride + h * head_dim;
      const int64_t n_keys = pos0 + i + 1;  // causal: keys up to and including this position
      float max_score = -INFINITY;
      for (int64_t t = 0; t < n_keys; ++t) {
        const float* kt = k_cache + t * kv_stride + g * head_dim;
        float dot = 0.0f;
        for (int64_t d = 0; d < head_dim; ++d) dot += qi[d] * kt[d];
        scratch[t] = dot * scale;
        if (scratch[t] > max_score) max_score = scratch[t];
      }
      float sum = 0.0f;
      for (int64_t t = 0; t < n_keys; ++t) {
        scratch[t] = std::exp(scratch[t] - max_score);
        sum += scratch[t];
      }
      const float inv_sum = 1.0f / sum;
      float* oi = out + i * out_stride + h * head_dim;
      for (int64_t d = 0; d < head_dim; ++d) oi[d] = 0.0f;
      for (int64_t t = 0; t < n_keys; ++t) {
        const float w = scratch[t] * inv_sum;
        const float* vt = v_cache + t * kv_stride + g * head_dim;
        for (int64_t d = 0; d < head_dim; ++d) oi[d] += w * vt[d];
      }
    }
  }
  return KernelStatus::ok;
}

KernelStatus silu_mul(const float* gate_up, int64_t n_rows, int64_t I, float* out) {
  if (I <= 0) return KernelStatus::bad_shape;
  for (int64_t r = 0; r < n_rows; ++r) {
    const float* gate = gate_up + r * 2 * I;
    const float* up = gate + I;
    float* o = out + r * I;
    for (int64_t j = 0; j < I; ++j) o[j] = gate[j] / (1.0f + std::exp(-gate[j])) * up[j];
  }
  return KernelStatus::ok;
}

}  // namespace gptqd::kernels::cpu
