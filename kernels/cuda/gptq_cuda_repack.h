// SPDX-License-Identifier: Apache-2.0
// Host-side repacking of a GPTQ linear (checkpoint layout, gptq-reference.md B.2-B.7) into the
// layouts of the CUDA kernels (gptq_cuda_layout.h), done once at load (kernels layer). Plain C++:
// it runs and is tested on any machine; uploading the result is gptq_cuda.h's business.
//
// Act-order: both layouts store k in the order of argsort(g_idx) (stable), so every group is one
// contiguous range; the kernels read the activations through `perm` (x'[k] = x[perm[k]]).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/cpu/gptq_gemm.h"
#include "kernels/status.h"

namespace gptqd::kernels::cuda {

// The tensor-core kernel's weights: 4-bit, symmetric (every zero point 8), K % 128 == 0,
// N % 64 == 0, every group a whole number of 16-row tiles (group size 32, 64, 128, or one group).
struct TcLinear {
  int64_t K = 0, N = 0, n_groups = 0;
  int64_t group_size = 0;        // k rows per group in sorted order; K when there is one group
  std::vector<uint32_t> words;   // [K/16][N/64][32][4] (layout::tc_word_index)
  std::vector<uint16_t> scales;  // [n_groups][N] fp16, group g covers sorted k [g*gs, (g+1)*gs)
  std::vector<int32_t> perm;     // [K] or empty when g_idx is already in order
};

// The GEMV and dequantize kernels' weights: 2/3/4/8-bit, any zero point, K % 32 == 0,
// N % 4 == 0, every 32-row unit of sorted k inside one group.
struct GemvLinear {
  int64_t K = 0, N = 0, n_groups = 0;
  int bits = 4;
  std::vector<uint32_t> qweight;     // [K*bits/32][N], sorted k order, checkpoint packing
  std::vector<uint16_t> scales;      // [n_groups][N] fp16
  std::vector<uint16_t> zeros;       // [n_groups][N] fp16 of the zero point, offset applied (exact: <= 256)
  std::vector<int32_t> unit_group;   // [K/32] group of each 32-row unit of sorted k
  std::vector<int32_t> perm;         // [K] or empty when g_idx is already in order
};

// Why a linear does not fit a layout, in words ("zero point 7 at group 3, column 12: the
// tensor-core kernel is symmetric-only"); empty when it fits.
std::string tc_unsupported_reason(const cpu::GptqTensors& w);
std::string gemv_unsupported_reason(const cpu::GptqTensors& w);

// Builds a layout; bad_shape / unsupported (with the reason above) when the linear does not fit.
KernelStatus repack_tc(const cpu::GptqTensors& w, TcLinear* out, std::string* why = nullptr);
KernelStatus repack_gemv(const cpu::GptqTensors& w, GemvLinear* out, std::string* why = nullptr);

// The inverses, for tests and for code that needs the codes back: codes [K][N] in the
// ORIGINAL k order (perm undone), and the zero point per [group][N] as the kernel sees it.
std::vector<uint8_t> unpack_tc_codes(const TcLinear& l);
std::vector<uint8_t> unpack_gemv_codes(const GemvLinear& l);

// argsort(g_idx), stable; empty when g_idx is already non-decreasing.
std::vector<int32_t> sort_permutation(const int32_t* g_idx, int64_t K);

}  // namespace gptqd::kernels::cuda
