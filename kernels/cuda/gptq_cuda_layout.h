// SPDX-License-Identifier: Apache-2.0
// The weight layouts of the CUDA GPTQ kernels, as index arithmetic that host and device code
// share (kernels layer). The host repack (gptq_cuda_repack.cpp) writes these layouts, the CUDA
// kernels read them, and the CPU tests check both directions -- unpack(repack(w)) == w, and an
// emulation of the tensor-core fragments -- so that a layout bug shows up without a GPU.
//
// Tensor-core layout ("tc", sm80+, 4-bit symmetric): mma.sync.m16n8k16 wants, in each lane of a
// warp, the B operand of a 16x8 tile as two registers of two fp16 each:
//   b0 = {B[2t][g], B[2t+1][g]},  b1 = {B[2t+8][g], B[2t+9][g]},   g = lane / 4, t = lane % 4
// (k rows, n columns of the tile). A 16x16 tile is two such n8 halves, so a lane needs 8 codes
// of it: exactly one 32-bit word. Four adjacent 16x16 tiles along n (64 columns) give one
// 16-byte word vector per lane, so a warp loads the B fragments of a 16x64 slab with one
// coalesced 512-byte read. Words: [K/16][N/64][32 lanes][4 tiles].
// Inside a word the nibbles are placed for the lop3 dequantization (gptq-reference.md D.6): the
// pair of nibbles (p, p+4) lands in the low/high fp16 lanes of one register, so pair p must be
// one operand register: p0 = b0 of n-half 0, p1 = b1 of n-half 0, p2 = b0 of n-half 1,
// p3 = b1 of n-half 1, the even k in nibble p and the odd k in nibble p+4.
//
// GEMV layout (sm75+, 2/3/4/8-bit, any zero point): the checkpoint's own qweight packing
// (gptq-reference.md B.3/B.4, [K*bits/32][N]) with act-order rows already sorted, so each
// 32-row "unit" of k is one packing unit and lies in one group.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define GPTQD_HD __host__ __device__ __forceinline__
#else
#define GPTQD_HD inline
#endif

namespace gptqd::kernels::cuda::layout {

// --- tensor-core layout --------------------------------------------------------------------------

constexpr int kTcTileK = 16;         // k rows of one mma B tile
constexpr int kTcSlabN = 64;         // columns one lane's 16-byte vector covers (4 tiles of 16)
constexpr int kTcWordsPerLane = 4;   // 4 words = 16 bytes
constexpr int kTcWordsPerSlab = 32 * kTcWordsPerLane;  // one 16x64 slab: 128 words, 512 bytes

// The word of the tc layout that holds code (k, n), and the nibble inside it.
GPTQD_HD int64_t tc_word_index(int64_t k, int64_t n, int64_t N) {
  const int64_t kb = k / kTcTileK, slab = n / kTcSlabN;
  const int kr = static_cast<int>(k % kTcTileK), nr = static_cast<int>(n % 16);
  const int tile = static_cast<int>((n % kTcSlabN) / 16);
  const int lane = (nr % 8) * 4 + (kr % 8) / 2;
  return ((kb * (N / kTcSlabN) + slab) * 32 + lane) * kTcWordsPerLane + tile;
}

GPTQD_HD int tc_nibble(int64_t k, int64_t n) {
  const int kr = static_cast<int>(k % kTcTileK), nr = static_cast<int>(n % 16);
  const int pair = (nr / 8) * 2 + kr / 8;  // which operand register: b0/b1 of n-half 0, then 1
  return pair + 4 * (kr % 2);              // even k low lane, odd k high lane
}

// The inverse, for the emulation test: which (k, n) of a 16x16 tile nibble `nib` of lane
// `lane`'s word holds (tile-relative).
GPTQD_HD void tc_nibble_position(int lane, int nib, int* kr, int* nr) {
  const int g = lane / 4, t = lane % 4;
  const int pair = nib % 4, odd = nib / 4;
  *kr = 2 * t + odd + 8 * (pair % 2);
  *nr = g + 8 * (pair / 2);
}

// Shared-memory placement of the activation tile: rows of 128 fp16 (16 chunks of 16 bytes).
// ldmatrix reads 8 rows at the same chunk, which without a swizzle all fall in the same banks;
// XOR-ing the chunk with the row's low 3 bits spreads them over all 32 banks.
constexpr int kTcStageK = 128;  // k per pipeline stage
constexpr int kTcChunksPerRow = kTcStageK * 2 / 16;
GPTQD_HD int tc_a_chunk(int row, int chunk) { return chunk ^ (row % 8); }

// --- GEMV layout ----------------------------------------------------------------------------------

constexpr int kGemvUnitK = 32;  // k values per packing unit (bits words of one column)

// Code of column n at k from a qweight-packed array (row stride N): the checkpoint's packing.
GPTQD_HD uint32_t gemv_code(const uint32_t* qweight, int64_t N, int64_t k, int64_t n, int bits) {
  const int64_t unit = k / kGemvUnitK, j = k % kGemvUnitK;
  const int64_t bit = bits * j, word = bit / 32, off = bit % 32;
  const uint32_t* w = qweight + (unit * bits + word) * N + n;
  uint32_t v = w[0] >> off;
  if (off + bits > 32) v |= w[N] << (32 - off);
  return v & ((1u << bits) - 1u);
}

}  // namespace gptqd::kernels::cuda::layout
