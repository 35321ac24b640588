// SPDX-License-Identifier: Apache-2.0
// GPTQ-packed weights x fp32 activations on the CPU (kernels layer).
//
//   y[m, n] = sum_k x[m, k] * scales[g, n] * (q[k, n] - z[g, n]),   g = g_idx[k]
//
// gptq_gemm_reference works on the checkpoint tensors as they are (gptq-reference.md B.2-B.7)
// and is the oracle of every other kernel, CPU and CUDA. The fast kernels work on a
// GptqPackedLinear, the layout gptq_repack builds once at load: act-order rows permuted so that
// every group is one contiguous range of k (the activations are permuted once per call, never a
// g_idx lookup per weight), and output columns in tiles of 16 whose packed words sit together.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/status.h"

namespace gptqd::kernels::cpu {

// One GPTQ linear in checkpoint layout. qweight [K*bits/32, N] (3-bit: 3K/32 rows), qzeros
// [n_groups, N*bits/32], scales [n_groups, N] fp16 bits, g_idx [K] in [0, n_groups).
// zero_offset: 1 for checkpoint_format "gptq" (v1), 0 for "gptq_v2".
struct GptqTensors {
  const int32_t* qweight = nullptr;
  const int32_t* qzeros = nullptr;
  const uint16_t* scales = nullptr;
  const int32_t* g_idx = nullptr;
  int64_t K = 0;
  int64_t N = 0;
  int64_t n_groups = 0;
  int bits = 4;
  int zero_offset = 1;
};

// The scalar oracle: y [M, N] (row stride ldy >= N) from x [M, K] (row stride ldx >= K).
// (q - z) in integers, times the fp32 scale, accumulated in fp32 in k order.
KernelStatus gptq_gemm_reference(const GptqTensors& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy);

constexpr int64_t kGptqTile = 16;  // output columns per tile

struct GptqPackedLinear {
  int64_t K = 0, N = 0, n_groups = 0;
  int bits = 4;
  int64_t n_tiles = 0;           // ceil(N / 16); the last tile's missing columns are zero
  int64_t words_per_column = 0;  // K*bits/32 (3-bit: 3K/32)
  std::vector<uint32_t> words;   // [n_tiles][words_per_column][16] codes along k, as in qweight
  std::vector<uint16_t> scales;  // [n_tiles][n_groups][16] fp16 bits
  std::vector<uint16_t> zeros;   // [n_tiles][n_groups][16] fp16 of the zero point (offset applied)
  std::vector<int32_t> perm;     // [K] x'[k] = x[perm[k]]; empty when g_idx is already sorted
  std::vector<int64_t> group_begin;  // [n_groups + 1] k range of group g: [group_begin[g], group_begin[g+1])
  uint64_t size_bytes() const;
};

// Builds the kernel layout. bad_shape for a g_idx entry out of range or sizes the packing cannot
// hold, unsupported for bits other than 2, 3, 4, 8.
KernelStatus gptq_repack(const GptqTensors& w, GptqPackedLinear* out);

// Which instruction set a kernel call uses (the dispatch table picks it from the CPU features).
enum class CpuIsa { scalar, avx2, avx512 };

// Per-call input preparation, shared by the kernels below: xp [M, K] = x permuted by perm and
// xsum [M, n_groups] = the sum of xp over each group. When perm is empty xp may be null (the
// kernels then read x itself, which must have row stride K); otherwise it gets a copy.
KernelStatus gptq_prepare_input(const GptqPackedLinear& w, const float* x, int64_t ldx, int64_t M, float* xp,
                                float* xsum);

// The direct kernel (decode and small M): y[m, 16*t0 .. min(N, 16*t1)) for tiles [t0, t1).
// xp, xsum from gptq_prepare_input; y row stride ldy >= N.
KernelStatus gptq_gemm_direct(const GptqPackedLinear& w, CpuIsa isa, const float* xp, const float* xsum, int64_t M,
                              int64_t t0, int64_t t1, float* y, int64_t ldy);

// Dequantizes tiles [t0, t1) over k in [k0, k1) (permuted order) to out [k1-k0, ldo] fp32,
// tile t at columns 16*(t-t0)..; for the dequantize + BLAS path of large M.
KernelStatus gptq_dequantize_tiles(const GptqPackedLinear& w, CpuIsa isa, int64_t t0, int64_t t1, int64_t k0,
                                   int64_t k1, float* out, int64_t ldo);

// W [N, K] fp32 in the original (unpermuted) k order, from the kernel layout: the memory-hungry
// path for code that needs dense rows.
KernelStatus gptq_unpack_rows(const GptqPackedLinear& w, int64_t n0, int64_t n1, float* out);

}  // namespace gptqd::kernels::cpu
