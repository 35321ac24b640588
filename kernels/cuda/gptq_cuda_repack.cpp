// SPDX-License-Identifier: Apache-2.0
// Host repack into the CUDA kernels' layouts (kernels layer). See gptq_cuda_repack.h.
#include "kernels/cuda/gptq_cuda_repack.h"

#include <algorithm>
#include <numeric>

#include "kernels/cpu/gptq_gemm_internal.h"
#include "kernels/cpu/half.h"
#include "kernels/cuda/gptq_cuda_layout.h"

namespace gptqd::kernels::cuda {
namespace {

using cpu::GptqTensors;
using cpu::detail::packed_code;

std::string num(int64_t v) { return std::to_string(v); }

// The common checks: sizes the checkpoint packing can hold and g_idx in range.
std::string basic_reason(const GptqTensors& w) {
  if (w.bits != 2 && w.bits != 3 && w.bits != 4 && w.bits != 8) return "bits must be 2, 3, 4 or 8, not " + num(w.bits);
  if (!w.qweight || !w.qzeros || !w.scales || !w.g_idx) return "a tensor is missing";
  if (w.K <= 0 || w.N <= 0 || w.n_groups <= 0) return "empty shape";
  if (w.K % 32 != 0) return "K=" + num(w.K) + " is not a multiple of 32";
  if (w.N % 32 != 0 && (w.bits == 3 || w.N % (32 / w.bits) != 0)) return "N=" + num(w.N) + " does not fill whole qzeros words";
  for (int64_t k = 0; k < w.K; ++k) {
    if (w.g_idx[k] < 0 || w.g_idx[k] >= w.n_groups) {
      return "g_idx[" + num(k) + "]=" + num(w.g_idx[k]) + " is outside [0, " + num(w.n_groups) + ")";
    }
  }
  return {};
}

uint32_t code_at(const GptqTensors& w, int64_t k, int64_t n) {
  return packed_code(w.qweight + n, w.N, k, w.bits);
}

int64_t zero_at(const GptqTensors& w, int64_t g, int64_t n) {
  // qzeros packs along N with the same scheme as qweight along K.
  return static_cast<int64_t>(packed_code(w.qzeros + g * (w.N * w.bits / 32), 1, n, w.bits)) + w.zero_offset;
}

std::vector<int32_t> sorted_g_idx(const GptqTensors& w, const std::vector<int32_t>& perm) {
  std::vector<int32_t> g(static_cast<size_t>(w.K));
  for (int64_t k = 0; k < w.K; ++k) g[static_cast<size_t>(k)] = w.g_idx[perm.empty() ? k : perm[static_cast<size_t>(k)]];
  return g;
}

}  // namespace

std::vector<int32_t> sort_permutation(const int32_t* g_idx, int64_t K) {
  if (std::is_sorted(g_idx, g_idx + K)) return {};
  std::vector<int32_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  std::stable_sort(perm.begin(), perm.end(), [&](int32_t a, int32_t b) { return g_idx[a] < g_idx[b]; });
  return perm;
}

std::string tc_unsupported_reason(const GptqTensors& w) {
  if (std::string r = basic_reason(w); !r.empty()) return r;
  if (w.bits != 4) return "the tensor-core kernel is 4-bit only, this linear is " + num(w.bits) + "-bit";
  if (w.K % layout::kTcStageK != 0) return "the tensor-core kernel needs K % 128 == 0, K=" + num(w.K);
  if (w.N % layout::kTcSlabN != 0) return "the tensor-core kernel needs N % 64 == 0, N=" + num(w.N);
  // Groups in sorted order must be equal, contiguous and whole 16-row tiles (the kernel finds a
  // tile's group by division), and one of the sizes the kernel stages: 32, 64, 128 or K.
  const std::vector<int32_t> g = sorted_g_idx(w, sort_permutation(w.g_idx, w.K));
  const int64_t gs = w.n_groups == 1 ? w.K : w.K / w.n_groups;
  if (w.K % w.n_groups != 0 || (gs != w.K && gs != 32 && gs != 64 && gs != 128)) {
    return "the tensor-core kernel needs group size 32, 64, 128 or one group; K=" + num(w.K) + " in " +
           num(w.n_groups) + " groups";
  }
  for (int64_t k = 0; k < w.K; ++k) {
    if (g[static_cast<size_t>(k)] != k / gs) {
      return "the tensor-core kernel needs groups of exactly " + num(gs) + " rows; sorted row " + num(k) + " is in group " +
             num(g[static_cast<size_t>(k)]);
    }
  }
  for (int64_t gi = 0; gi < w.n_groups; ++gi) {
    for (int64_t n = 0; n < w.N; ++n) {
      if (const int64_t z = zero_at(w, gi, n); z != 8) {
        return "the tensor-core kernel is symmetric-only (zero point 8), group " + num(gi) + " column " + num(n) +
               " has zero point " + num(z);
      }
    }
  }
  return {};
}

std::string gemv_unsupported_reason(const GptqTensors& w) {
  if (std::string r = basic_reason(w); !r.empty()) return r;
  if (w.N % 4 != 0) return "the GEMV kernel needs N % 4 == 0, N=" + num(w.N);
  const std::vector<int32_t> g = sorted_g_idx(w, sort_permutation(w.g_idx, w.K));
  for (int64_t k = 0; k < w.K; ++k) {
    if (g[static_cast<size_t>(k)] != g[static_cast<size_t>(k - k % layout::kGemvUnitK)]) {
      return "the GEMV kernel needs every 32 sorted rows in one group; row " + num(k) + " starts group " +
             num(g[static_cast<size_t>(k)]) + " mid-unit";
    }
  }
  return {};
}

KernelStatus repack_tc(const GptqTensors& w, TcLinear* out, std::string* why) {
  if (std::string r = tc_unsupported_reason(w); !r.empty()) {
    const bool shape = !basic_reason(w).empty();
    if (why) *why = std::move(r);
    return shape ? KernelStatus::bad_shape : KernelStatus::unsupported;
  }
  TcLinear l;
  l.K = w.K;
  l.N = w.N;
  l.n_groups = w.n_groups;
  l.group_size = w.K / w.n_groups;
  l.perm = sort_permutation(w.g_idx, w.K);
  l.words.assign(static_cast<size_t>(w.K / 16 * w.N / 64 * layout::kTcWordsPerSlab), 0u);
  for (int64_t k = 0; k < w.K; ++k) {
    const int64_t src = l.perm.empty() ? k : l.perm[static_cast<size_t>(k)];
    for (int64_t n = 0; n < w.N; ++n) {
      l.words[static_cast<size_t>(layout::tc_word_index(k, n, w.N))] |= code_at(w, src, n) << (4 * layout::tc_nibble(k, n));
    }
  }
  l.scales.assign(w.scales, w.scales + w.n_groups * w.N);
  *out = std::move(l);
  return KernelStatus::ok;
}

KernelStatus repack_gemv(const GptqTensors& w, GemvLinear* out, std::string* why) {
  if (std::string r = gemv_unsupported_reason(w); !r.empty()) {
    const bool shape = !basic_reason(w).empty();
    if (why) *why = std::move(r);
    return shape ? KernelStatus::bad_shape : KernelStatus::unsupported;
  }
  GemvLinear l;
  l.K = w.K;
  l.N = w.N;
  l.n_groups = w.n_groups;
  l.bits = w.bits;
  l.perm = sort_permutation(w.g_idx, w.K);
  l.qweight.assign(static_cast<size_t>(w.K / 32 * w.bits * w.N), 0u);
  for (int64_t k = 0; k < w.K; ++k) {
    const int64_t src = l.perm.empty() ? k : l.perm[static_cast<size_t>(k)];
    const int64_t unit = k / 32, bit = w.bits * (k % 32), word = bit / 32, off = bit % 32;
    uint32_t* row = l.qweight.data() + (unit * w.bits + word) * w.N;
    for (int64_t n = 0; n < w.N; ++n) {
      const uint32_t q = code_at(w, src, n);
      row[n] |= q << off;
      if (off + w.bits > 32) row[w.N + n] |= q >> (32 - off);
    }
  }
  l.scales.assign(w.scales, w.scales + w.n_groups * w.N);
  l.zeros.resize(static_cast<size_t>(w.n_groups * w.N));
  for (int64_t g = 0; g < w.n_groups; ++g) {
    for (int64_t n = 0; n < w.N; ++n) {
      l.zeros[static_cast<size_t>(g * w.N + n)] = cpu::f32_to_f16(static_cast<float>(zero_at(w, g, n)));
    }
  }
  const std::vector<int32_t> g = sorted_g_idx(w, l.perm);
  l.unit_group.resize(static_cast<size_t>(w.K / 32));
  for (int64_t u = 0; u < w.K / 32; ++u) l.unit_group[static_cast<size_t>(u)] = g[static_cast<size_t>(u * 32)];
  *out = std::move(l);
  return KernelStatus::ok;
}

std::vector<uint8_t> unpack_tc_codes(const TcLinear& l) {
  std::vector<uint8_t> codes(static_cast<size_t>(l.K * l.N));
  for (int64_t k = 0; k < l.K; ++k) {
    const int64_t dst = l.perm.empty() ? k : l.perm[static_cast<size_t>(k)];
    for (int64_t n = 0; n < l.N; ++n) {
      const uint32_t word = l.words[static_cast<size_t>(layout::tc_word_index(k, n, l.N))];
      codes[static_cast<size_t>(dst * l.N + n)] = static_cast<uint8_t>((word >> (4 * layout::tc_nibble(k, n))) & 15u);
    }
  }
  return codes;
}

std::vector<uint8_t> unpack_gemv_codes(const GemvLinear& l) {
  std::vector<uint8_t> codes(static_cast<size_t>(l.K * l.N));
  for (int64_t k = 0; k < l.K; ++k) {
    const int64_t dst = l.perm.empty() ? k : l.perm[static_cast<size_t>(k)];
    for (int64_t n = 0; n < l.N; ++n) {
      codes[static_cast<size_t>(dst * l.N + n)] = static_cast<uint8_t>(layout::gemv_code(l.qweight.data(), l.N, k, n, l.bits));
    }
  }
  return codes;
}

}  // namespace gptqd::kernels::cuda
