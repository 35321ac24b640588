// SPDX-License-Identifier: Apache-2.0
// The CUDA GPTQ kernels (kernels layer): y [M, N] fp16 = x [M, K] fp16 . W^T, fp32 accumulation,
// with W a GPTQ linear repacked by gptq_cuda_repack.h and uploaded here. Three kernels, picked by
// the dispatch table (kernels/dispatch.h), each a host function that checks its arguments,
// launches on the given stream and returns a KernelStatus (device_error when a launch fails):
//   tc_gemm       sm80+ tensor cores (mma.sync m16n8k16, ldmatrix, 4-stage cp.async pipeline,
//                 dequantization in registers), 4-bit symmetric, any M, split-K with an fp32
//                 reduction that is ordered (deterministic);
//   gemv          sm75+ M <= 16, 2/3/4/8-bit, any zero point, dequantization in registers;
//   dequant_gemm  sm75+ any M: dequantize to fp16, then cublasGemmEx (the large-M path of the
//                 GEMV layout).
// Act-order linears carry a permutation; the kernels read x through it.
//
// The planning functions below are plain arithmetic, shared with the CPU tests.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "kernels/cuda/gptq_cuda_repack.h"
#include "kernels/status.h"

namespace gptqd::kernels::cuda {

// Device copies of the repacked layouts (non-owning views; upload/release manage them).
struct DeviceTcLinear {
  int64_t K = 0, N = 0, n_groups = 0, group_size = 0;
  const uint32_t* words = nullptr;
  const uint16_t* scales = nullptr;
  const int32_t* perm = nullptr;  // null when not act-order
};

struct DeviceGemvLinear {
  int64_t K = 0, N = 0, n_groups = 0;
  int bits = 4;
  const uint32_t* qweight = nullptr;
  const uint16_t* scales = nullptr;
  const uint16_t* zeros = nullptr;
  const int32_t* unit_group = nullptr;
  const int32_t* perm = nullptr;
};

// cudaMalloc + copy; device_error (and nothing left allocated) when the device refuses.
KernelStatus upload(const TcLinear& host, DeviceTcLinear* dev);
KernelStatus upload(const GemvLinear& host, DeviceGemvLinear* dev);
void release(DeviceTcLinear* dev);
void release(DeviceGemvLinear* dev);

struct Launch {
  cudaStream_t stream = nullptr;
  int sm_count = 1;  // of the device, for the split-K plan
};

// --- plans: how a call is cut into blocks, and the workspace it needs ------------------------------

constexpr size_t kWorkspaceAlign = 256;
inline size_t align_up(size_t v) { return (v + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

struct TcPlan {
  int m_blocks = 1;          // 16-row mma blocks per thread block: 1, 2 or 4
  int64_t row_blocks = 0;    // grid.y
  int64_t slabs = 0;         // grid.x: 64-column slabs
  int64_t splits = 1;        // grid.z: split-K
  int64_t chunks_per_split = 0;  // 128-row k chunks per split
  size_t perm_bytes = 0;     // x permuted (act-order)
  size_t partial_bytes = 0;  // fp32 partial sums [splits][M][N] when splits > 1
  size_t workspace_bytes() const { return perm_bytes + partial_bytes; }
};

inline TcPlan plan_tc(int64_t M, int64_t K, int64_t N, bool act_order, int sm_count) {
  TcPlan p;
  p.m_blocks = M <= 16 ? 1 : M <= 32 ? 2 : 4;
  p.row_blocks = (M + 16 * p.m_blocks - 1) / (16 * p.m_blocks);
  p.slabs = N / 64;
  const int64_t chunks = K / 128;
  // About 4 resident blocks per SM hide the memory latency; split K until the grid has them, but
  // keep at least 2 chunks per split so the pipeline has something to overlap.
  const int64_t blocks = std::max<int64_t>(1, p.row_blocks * p.slabs);
  const int64_t want = (4 * static_cast<int64_t>(std::max(sm_count, 1)) + blocks - 1) / blocks;
  const int64_t splits = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, chunks / 2));
  p.chunks_per_split = (chunks + splits - 1) / splits;
  p.splits = (chunks + p.chunks_per_split - 1) / p.chunks_per_split;  // no empty split
  p.perm_bytes = act_order ? align_up(static_cast<size_t>(M * K) * 2) : 0;
  p.partial_bytes = p.splits > 1 ? align_up(static_cast<size_t>(p.splits * M * N) * 4) : 0;
  return p;
}

constexpr int64_t kGemvMaxM = 16;

struct GemvPlan {
  int m_tile = 1;              // rows computed per thread: 1, 4 or 16
  int64_t col_blocks = 0;      // grid.x: 128 columns each
  int64_t splits = 1;          // grid.y
  int64_t units_per_split = 0; // 32-row units of k per split
  size_t partial_bytes = 0;
  size_t workspace_bytes() const { return partial_bytes; }
};

inline GemvPlan plan_gemv(int64_t M, int64_t K, int64_t N, int sm_count) {
  GemvPlan p;
  p.m_tile = M <= 1 ? 1 : M <= 4 ? 4 : 16;
  p.col_blocks = (N + 127) / 128;
  const int64_t units = K / 32;
  const int64_t max_units = 8192 / p.m_tile / 32;  // x slice in shared memory: 32 KiB of fp32
  const int64_t want = (4 * static_cast<int64_t>(std::max(sm_count, 1)) + p.col_blocks - 1) / p.col_blocks;
  const int64_t splits = std::clamp<int64_t>(std::max(want, (units + max_units - 1) / max_units), 1, units);
  p.units_per_split = (units + splits - 1) / splits;
  p.splits = (units + p.units_per_split - 1) / p.units_per_split;
  p.partial_bytes = p.splits > 1 ? align_up(static_cast<size_t>(p.splits * M * N) * 4) : 0;
  return p;
}

inline size_t dequant_gemm_workspace_bytes(int64_t M, int64_t K, int64_t N, bool act_order) {
  return align_up(static_cast<size_t>(K * N) * 2) + (act_order ? align_up(static_cast<size_t>(M * K) * 2) : 0);
}

// --- the kernels ----------------------------------------------------------------------------------
// x, y: fp16 device pointers, rows of K and N (contiguous). workspace: device memory of at least
// the plan's workspace_bytes() (may be null when that is 0). bad_shape for sizes the kernel does
// not take (M outside its range, a too small workspace), device_error when a launch fails.

KernelStatus tc_gemm(const DeviceTcLinear& w, const uint16_t* x, int64_t M, uint16_t* y, void* workspace,
                     size_t workspace_bytes, const Launch& launch);

KernelStatus gemv(const DeviceGemvLinear& w, const uint16_t* x, int64_t M, uint16_t* y, void* workspace,
                  size_t workspace_bytes, const Launch& launch);

KernelStatus dequant_gemm(const DeviceGemvLinear& w, cublasHandle_t blas, const uint16_t* x, int64_t M, uint16_t* y,
                          void* workspace, size_t workspace_bytes, const Launch& launch);

}  // namespace gptqd::kernels::cuda
