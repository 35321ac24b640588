// SPDX-License-Identifier: Apache-2.0
// The CPU kernels of the forward pass and of GPTQ weight loading (kernels layer). Plain pointers
// and sizes in, KernelStatus out; single-threaded over the range they are given — the backend
// splits work across threads. Row-major throughout; every shape is in the comment.
#pragma once

#include <cstdint>

#include "kernels/status.h"

namespace gptqd::kernels::cpu {

// y[r, :] = x[r, :] * w / sqrt(mean(x[r, :]^2) + eps) for r in [0, n_rows); x, y [n_rows, dim]
// (y may alias x), w [dim].
KernelStatus rms_norm(const float* x, const float* w, int64_t n_rows, int64_t dim, float eps, float* y);

// Rotary embedding in the Hugging Face "rotate_half" layout: in each head of `head_dim` values
// the pairs (x[j], x[j + head_dim/2]) are rotated by positions[r] * inv_freq[j].
// x [n_rows, row_stride] holds n_heads heads from column 0; inv_freq [head_dim/2].
KernelStatus rope(float* x, int64_t n_rows, int64_t row_stride, int64_t n_heads, int64_t head_dim,
                  const int32_t* positions, const float* inv_freq);

// Causal grouped-query attention for heads [h_begin, h_end) of n query rows at positions
// pos0 .. pos0+n-1 over cached keys/values at positions 0 .. pos0+n-1.
// q [n, q_stride] (head h at column h*head_dim); k_cache, v_cache [>= pos0+n, kv_stride] (kv head
// g at column g*head_dim; query head h reads kv head h / (n_heads / n_kv_heads));
// scratch [pos0 + n]; out [n, out_stride] (head h at column h*head_dim).
KernelStatus attention(const float* q, int64_t q_stride, const float* k_cache, const float* v_cache, int64_t kv_stride,
                       int64_t n, int64_t pos0, int64_t n_heads, int64_t n_kv_heads, int64_t head_dim, int64_t h_begin,
                       int64_t h_end, float* scratch, float* out, int64_t out_stride);

// out[r, j] = silu(gate_up[r, j]) * gate_up[r, I + j]; gate_up [n_rows, 2*I], out [n_rows, I].
KernelStatus silu_mul(const float* gate_up, int64_t n_rows, int64_t I, float* out);

// Dequantizes one GPTQ-packed linear (gptq-reference.md B.7) to W [N, K] row-major:
//   W[n, k] = scales[g, n] * (q[k, n] - (z[g, n] + zero_offset)),  g = g_idx[k]
// qweight [K*bits/32, N] int32 (codes packed along K, first in the low bits; 3-bit: 32 codes in
// 3 words), qzeros [n_groups, N*bits/32] int32 (packed along N), scales [n_groups, N] fp16 bits,
// g_idx [K] int32 in [0, n_groups). zero_offset: 1 for checkpoint_format "gptq" (v1), 0 for
// "gptq_v2". bad_shape for a g_idx entry out of range or sizes the packing cannot hold.
KernelStatus dequantize_gptq(const int32_t* qweight, const int32_t* qzeros, const uint16_t* scales,
                             const int32_t* g_idx, int64_t K, int64_t N, int64_t n_groups, int bits, int zero_offset,
                             float* out);

// y[r] = sum_k fp32(w[r, k]) * x[k] for rows r in [r_begin, r_end), fp32 accumulation.
// w [rows, cols] fp16 bits row-major, x [cols], y [rows]. AVX2+FMA+F16C when the CPU has them,
// else the scalar reference (gemv_f16_reference, always available for tests).
KernelStatus gemv_f16(const uint16_t* w, const float* x, int64_t cols, int64_t r_begin, int64_t r_end, float* y);
KernelStatus gemv_f16_reference(const uint16_t* w, const float* x, int64_t cols, int64_t r_begin, int64_t r_end,
                                float* y);

// out[r - r_begin, :] = fp32(w[r, :]) for r in [r_begin, r_end); w [rows, cols] fp16 bits.
KernelStatus convert_f16_rows(const uint16_t* w, int64_t cols, int64_t r_begin, int64_t r_end, float* out);

// True when gemv_f16 / convert_f16_rows use the AVX2+FMA+F16C path on this CPU.
bool have_f16c_path();

}  // namespace gptqd::kernels::cpu
