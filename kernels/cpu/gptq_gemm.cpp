// SPDX-License-Identifier: Apache-2.0
// GPTQ x fp32 on the CPU: the scalar oracle on checkpoint tensors, the load-time repack into the
// kernel layout, and the portable (scalar) versions of the kernels; the SIMD versions live in
// gptq_gemm_avx2.cpp / gptq_gemm_avx512.cpp (kernels layer).
#include <algorithm>
#include <cstring>

#include "kernels/cpu/gptq_gemm.h"
#include "kernels/cpu/gptq_gemm_internal.h"
#include "kernels/cpu/half.h"

namespace gptqd::kernels::cpu {
namespace {

using detail::codes_per_unit;
using detail::packed_code;
using detail::words_per_unit;

bool valid_bits(int bits) { return bits == 2 || bits == 3 || bits == 4 || bits == 8; }

// The shape checks every entry point shares: sizes the packing can hold, g_idx in range.
KernelStatus check_tensors(const GptqTensors& w) {
  if (!valid_bits(w.bits)) return KernelStatus::unsupported;
  const int64_t unit = codes_per_unit(w.bits);
  // qweight packs along K (whole units); qzeros along N (whole units too).
  if (w.K <= 0 || w.N <= 0 || w.n_groups <= 0 || w.K % unit != 0 || w.N % unit != 0) return KernelStatus::bad_shape;
  if (!w.qweight || !w.qzeros || !w.scales || !w.g_idx) return KernelStatus::bad_shape;
  for (int64_t k = 0; k < w.K; ++k) {
    if (w.g_idx[k] < 0 || w.g_idx[k] >= w.n_groups) return KernelStatus::bad_shape;
  }
  return KernelStatus::ok;
}

// Code `q` (k in kernel order) of column j of tile t into the tile's words.
void put_code(uint32_t* tile_words, int bits, int64_t k, int64_t j, uint32_t q) {
  if (bits == 3) {
    const int64_t t = k / 32, bit = 3 * (k % 32), word = bit / 32, off = bit % 32;
    tile_words[(3 * t + word) * kGptqTile + j] |= q << off;
    if (off > 29) tile_words[(3 * t + word + 1) * kGptqTile + j] |= q >> (32 - off);
    return;
  }
  const int per_word = 32 / bits;
  tile_words[(k / per_word) * kGptqTile + j] |= q << (bits * (k % per_word));
}

// Code of column j at k (kernel order) from the tile's words.
uint32_t get_code(const uint32_t* tile_words, int bits, int64_t k, int64_t j) {
  return packed_code(reinterpret_cast<const int32_t*>(tile_words) + j, kGptqTile, k, bits);
}

// The portable direct kernel: one tile, one input row at a time.
void direct_scalar(const GptqPackedLinear& w, const float* xp, const float* xsum, int64_t M, int64_t t0, int64_t t1,
                   float* y, int64_t ldy) {
  const int64_t G = w.n_groups;
  for (int64_t t = t0; t < t1; ++t) {
    const uint32_t* words = w.words.data() + t * w.words_per_column * kGptqTile;
    const int64_t n_valid = std::min<int64_t>(kGptqTile, w.N - t * kGptqTile);
    for (int64_t m = 0; m < M; ++m) {
      const float* x = xp + m * w.K;
      float acc[kGptqTile] = {};
      for (int64_t g = 0; g < G; ++g) {
        float accq[kGptqTile] = {};
        for (int64_t k = w.group_begin[g]; k < w.group_begin[g + 1]; ++k) {
          for (int64_t j = 0; j < kGptqTile; ++j) accq[j] += static_cast<float>(get_code(words, w.bits, k, j)) * x[k];
        }
        const float sx = xsum[m * G + g];
        for (int64_t j = 0; j < kGptqTile; ++j) {
          const size_t at = static_cast<size_t>((t * G + g) * kGptqTile + j);
          acc[j] += f16_to_f32(w.scales[at]) * (accq[j] - f16_to_f32(w.zeros[at]) * sx);
        }
      }
      std::memcpy(y + m * ldy + t * kGptqTile, acc, static_cast<size_t>(n_valid) * sizeof(float));
    }
  }
}

void dequant_scalar(const GptqPackedLinear& w, int64_t t0, int64_t t1, int64_t k0, int64_t k1, float* out,
                    int64_t ldo) {
  const int64_t G = w.n_groups;
  for (int64_t t = t0; t < t1; ++t) {
    const uint32_t* words = w.words.data() + t * w.words_per_column * kGptqTile;
    int64_t g = std::upper_bound(w.group_begin.begin(), w.group_begin.end(), k0) - w.group_begin.begin() - 1;
    for (int64_t k = k0; k < k1; ++k) {
      while (k >= w.group_begin[g + 1]) ++g;
      float* o = out + (k - k0) * ldo + (t - t0) * kGptqTile;
      for (int64_t j = 0; j < kGptqTile; ++j) {
        const size_t at = static_cast<size_t>((t * G + g) * kGptqTile + j);
        o[j] = f16_to_f32(w.scales[at]) *
               (static_cast<float>(get_code(words, w.bits, k, j)) - f16_to_f32(w.zeros[at]));
      }
    }
  }
}

bool valid_range(const GptqPackedLinear& w, int64_t t0, int64_t t1) {
  return 0 <= t0 && t0 <= t1 && t1 <= w.n_tiles && !w.words.empty();
}

}  // namespace

KernelStatus gptq_gemm_reference(const GptqTensors& w, const float* x, int64_t ldx, int64_t M, float* y, int64_t ldy) {
  if (KernelStatus s = check_tensors(w); s != KernelStatus::ok) return s;
  if (M < 0 || ldx < w.K || ldy < w.N) return KernelStatus::bad_shape;
  const int64_t zero_cols = w.N * w.bits / 32;
  for (int64_t n = 0; n < w.N; ++n) {
    for (int64_t m = 0; m < M; ++m) {
      float acc = 0.0f;
      for (int64_t k = 0; k < w.K; ++k) {
        const int64_t g = w.g_idx[k];
        const auto q = static_cast<int32_t>(packed_code(w.qweight + n, w.N, k, w.bits));
        const auto z = static_cast<int32_t>(packed_code(w.qzeros + g * zero_cols, 1, n, w.bits)) + w.zero_offset;
        acc += x[m * ldx + k] * (f16_to_f32(w.scales[g * w.N + n]) * static_cast<float>(q - z));
      }
      y[m * ldy + n] = acc;
    }
  }
  return KernelStatus::ok;
}

uint64_t GptqPackedLinear::size_bytes() const {
  return words.size() * sizeof(uint32_t) + (scales.size() + zeros.size()) * sizeof(uint16_t) +
         perm.size() * sizeof(int32_t) + group_begin.size() * sizeof(int64_t);
}

KernelStatus gptq_repack(const GptqTensors& w, GptqPackedLinear* out) {
  if (KernelStatus s = check_tensors(w); s != KernelStatus::ok) return s;
  GptqPackedLinear p;
  p.K = w.K;
  p.N = w.N;
  p.n_groups = w.n_groups;
  p.bits = w.bits;
  p.n_tiles = (w.N + kGptqTile - 1) / kGptqTile;
  p.words_per_column = w.K / codes_per_unit(w.bits) * words_per_unit(w.bits);
  const int64_t G = w.n_groups;

  // Group ranges after a stable counting sort of k by g_idx: group g is [begin[g], begin[g+1]).
  p.group_begin.assign(static_cast<size_t>(G + 1), 0);
  for (int64_t k = 0; k < w.K; ++k) ++p.group_begin[static_cast<size_t>(w.g_idx[k] + 1)];
  for (int64_t g = 0; g < G; ++g) p.group_begin[static_cast<size_t>(g + 1)] += p.group_begin[static_cast<size_t>(g)];
  const bool sorted = std::is_sorted(w.g_idx, w.g_idx + w.K);
  if (!sorted) {
    p.perm.resize(static_cast<size_t>(w.K));
    std::vector<int64_t> next(p.group_begin.begin(), p.group_begin.end() - 1);
    for (int64_t k = 0; k < w.K; ++k) p.perm[static_cast<size_t>(next[static_cast<size_t>(w.g_idx[k])]++)] = static_cast<int32_t>(k);
  }

  p.words.assign(static_cast<size_t>(p.n_tiles * p.words_per_column * kGptqTile), 0u);
  p.scales.assign(static_cast<size_t>(p.n_tiles * G * kGptqTile), 0);  // fp16 +0: padding columns give 0
  p.zeros.assign(p.scales.size(), 0);
  const int64_t zero_cols = w.N * w.bits / 32;
  for (int64_t n = 0; n < w.N; ++n) {
    const int64_t t = n / kGptqTile, j = n % kGptqTile;
    uint32_t* tile_words = p.words.data() + t * p.words_per_column * kGptqTile;
    if (sorted) {
      // Same k order as the checkpoint: the column's words carry over unchanged.
      for (int64_t r = 0; r < p.words_per_column; ++r) {
        tile_words[r * kGptqTile + j] = static_cast<uint32_t>(w.qweight[r * w.N + n]);
      }
    } else {
      for (int64_t k = 0; k < w.K; ++k) {
        put_code(tile_words, w.bits, k, j, packed_code(w.qweight + n, w.N, p.perm[static_cast<size_t>(k)], w.bits));
      }
    }
    for (int64_t g = 0; g < G; ++g) {
      const size_t at = static_cast<size_t>((t * G + g) * kGptqTile + j);
      p.scales[at] = w.scales[g * w.N + n];
      const auto z = static_cast<int32_t>(packed_code(w.qzeros + g * zero_cols, 1, n, w.bits)) + w.zero_offset;
      p.zeros[at] = f32_to_f16(static_cast<float>(z));  // |z| <= 256: exact in fp16
    }
  }
  *out = std::move(p);
  return KernelStatus::ok;
}

KernelStatus gptq_prepare_input(const GptqPackedLinear& w, const float* x, int64_t ldx, int64_t M, float* xp,
                                float* xsum) {
  if (M < 0 || ldx < w.K || (!w.perm.empty() && !xp)) return KernelStatus::bad_shape;
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * ldx;
    float* dst = xp ? xp + m * w.K : nullptr;
    if (dst) {
      if (w.perm.empty()) {
        std::memcpy(dst, xr, static_cast<size_t>(w.K) * sizeof(float));
      } else {
        for (int64_t k = 0; k < w.K; ++k) dst[k] = xr[w.perm[static_cast<size_t>(k)]];
      }
    }
    const float* src = dst ? dst : xr;
    for (int64_t g = 0; g < w.n_groups; ++g) {
      float s = 0.0f;
      for (int64_t k = w.group_begin[g]; k < w.group_begin[g + 1]; ++k) s += src[k];
      xsum[m * w.n_groups + g] = s;
    }
  }
  return KernelStatus::ok;
}

KernelStatus gptq_gemm_direct(const GptqPackedLinear& w, CpuIsa isa, const float* xp, const float* xsum, int64_t M,
                              int64_t t0, int64_t t1, float* y, int64_t ldy) {
  if (!valid_range(w, t0, t1) || M < 0 || ldy < w.N) return KernelStatus::bad_shape;
  switch (isa) {
#if defined(__x86_64__)
    case CpuIsa::avx512: return detail::gptq_direct_avx512(w, xp, xsum, M, t0, t1, y, ldy);
    case CpuIsa::avx2: return detail::gptq_direct_avx2(w, xp, xsum, M, t0, t1, y, ldy);
#else
    case CpuIsa::avx512:
    case CpuIsa::avx2: return KernelStatus::unsupported;
#endif
    case CpuIsa::scalar: direct_scalar(w, xp, xsum, M, t0, t1, y, ldy); return KernelStatus::ok;
  }
  return KernelStatus::unsupported;
}

KernelStatus gptq_dequantize_tiles(const GptqPackedLinear& w, CpuIsa isa, int64_t t0, int64_t t1, int64_t k0,
                                   int64_t k1, float* out, int64_t ldo) {
  if (!valid_range(w, t0, t1) || k0 < 0 || k0 > k1 || k1 > w.K || ldo < (t1 - t0) * kGptqTile) {
    return KernelStatus::bad_shape;
  }
  switch (isa) {
#if defined(__x86_64__)
    case CpuIsa::avx512: return detail::gptq_dequant_avx512(w, t0, t1, k0, k1, out, ldo);
    case CpuIsa::avx2: return detail::gptq_dequant_avx2(w, t0, t1, k0, k1, out, ldo);
#else
    case CpuIsa::avx512:
    case CpuIsa::avx2: return KernelStatus::unsupported;
#endif
    case CpuIsa::scalar: dequant_scalar(w, t0, t1, k0, k1, out, ldo); return KernelStatus::ok;
  }
  return KernelStatus::unsupported;
}

KernelStatus gptq_unpack_rows(const GptqPackedLinear& w, int64_t n0, int64_t n1, float* out) {
  if (n0 < 0 || n0 > n1 || n1 > w.N || w.words.empty()) return KernelStatus::bad_shape;
  const int64_t G = w.n_groups;
  for (int64_t n = n0; n < n1; ++n) {
    const int64_t t = n / kGptqTile, j = n % kGptqTile;
    const uint32_t* words = w.words.data() + t * w.words_per_column * kGptqTile;
    float* row = out + (n - n0) * w.K;
    for (int64_t g = 0; g < G; ++g) {
      const size_t at = static_cast<size_t>((t * G + g) * kGptqTile + j);
      const float s = f16_to_f32(w.scales[at]), z = f16_to_f32(w.zeros[at]);
      for (int64_t k = w.group_begin[g]; k < w.group_begin[g + 1]; ++k) {
        const int64_t orig = w.perm.empty() ? k : w.perm[static_cast<size_t>(k)];
        row[orig] = s * (static_cast<float>(get_code(words, w.bits, k, j)) - z);
      }
    }
  }
  return KernelStatus::ok;
}

}  // namespace gptqd::kernels::cpu
