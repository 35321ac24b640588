// SPDX-License-Identifier: Apache-2.0
// GGML block formats -> fp32, scalar and bit-exact with ggml's dequantize_row_* (kernels layer).
#include "kernels/cpu/ggml_dequant.h"

#include <array>
#include <cstring>

#include "kernels/cpu/half.h"

namespace gptqd::kernels::cpu {
namespace {

constexpr uint32_t kQK = 32;    // elements per block of the legacy formats
constexpr uint32_t kQK_K = 256; // elements per super-block of the K formats

// Indexed by the on-disk type number; name == nullptr marks a number ggml never used or retired.
constexpr std::array<GgmlTypeTraits, 36> kTraits = [] {
  std::array<GgmlTypeTraits, 36> t{};
  auto set = [&t](GgmlType type, const char* name, uint32_t elems, uint32_t bytes, bool deq) {
    t[static_cast<uint32_t>(type)] = GgmlTypeTraits{name, elems, bytes, deq};
  };
  set(GgmlType::F32, "F32", 1, 4, true);
  set(GgmlType::F16, "F16", 1, 2, true);
  set(GgmlType::Q4_0, "Q4_0", kQK, 2 + 16, true);
  set(GgmlType::Q4_1, "Q4_1", kQK, 2 + 2 + 16, true);
  set(GgmlType::Q5_0, "Q5_0", kQK, 2 + 4 + 16, true);
  set(GgmlType::Q5_1, "Q5_1", kQK, 2 + 2 + 4 + 16, true);
  set(GgmlType::Q8_0, "Q8_0", kQK, 2 + 32, true);
  set(GgmlType::Q8_1, "Q8_1", kQK, 4 + 4 + 32, false);
  set(GgmlType::Q2_K, "Q2_K", kQK_K, 2 + 2 + kQK_K / 16 + kQK_K / 4, true);
  set(GgmlType::Q3_K, "Q3_K", kQK_K, 2 + kQK_K / 4 + kQK_K / 8 + 12, true);
  set(GgmlType::Q4_K, "Q4_K", kQK_K, 2 + 2 + 12 + kQK_K / 2, true);
  set(GgmlType::Q5_K, "Q5_K", kQK_K, 2 + 2 + 12 + kQK_K / 8 + kQK_K / 2, true);
  set(GgmlType::Q6_K, "Q6_K", kQK_K, 2 + kQK_K / 2 + kQK_K / 4 + kQK_K / 16, true);
  set(GgmlType::Q8_K, "Q8_K", kQK_K, 4 + kQK_K + kQK_K / 8, false);
  set(GgmlType::IQ2_XXS, "IQ2_XXS", kQK_K, 2 + kQK_K / 4, false);
  set(GgmlType::IQ2_XS, "IQ2_XS", kQK_K, 2 + kQK_K / 4 + kQK_K / 32, false);
  set(GgmlType::IQ3_XXS, "IQ3_XXS", kQK_K, 2 + kQK_K / 4 + kQK_K / 8, false);
  set(GgmlType::IQ1_S, "IQ1_S", kQK_K, 2 + kQK_K / 8 + kQK_K / 16, false);
  set(GgmlType::IQ4_NL, "IQ4_NL", kQK, 2 + 16, false);
  set(GgmlType::IQ3_S, "IQ3_S", kQK_K, 2 + kQK_K / 4 + kQK_K / 8 + kQK_K / 32 + 4, false);
  set(GgmlType::IQ2_S, "IQ2_S", kQK_K, 2 + kQK_K / 4 + kQK_K / 16, false);
  set(GgmlType::IQ4_XS, "IQ4_XS", kQK_K, 2 + 2 + kQK_K / 2 + kQK_K / 64, false);
  set(GgmlType::I8, "I8", 1, 1, false);
  set(GgmlType::I16, "I16", 1, 2, false);
  set(GgmlType::I32, "I32", 1, 4, false);
  set(GgmlType::I64, "I64", 1, 8, false);
  set(GgmlType::F64, "F64", 1, 8, false);
  set(GgmlType::IQ1_M, "IQ1_M", kQK_K, kQK_K / 8 + kQK_K / 16 + kQK_K / 32, false);
  set(GgmlType::BF16, "BF16", 1, 2, true);
  set(GgmlType::TQ1_0, "TQ1_0", kQK_K, 2 + 4 * 13, false);
  set(GgmlType::TQ2_0, "TQ2_0", kQK_K, 2 + 64, false);
  return t;
}();

// GGUF is little-endian; block fields are read byte by byte because blocks are not aligned.
inline uint16_t load_u16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t load_u32(const uint8_t* p) {
  return static_cast<uint32_t>(p[0]) | (static_cast<uint32_t>(p[1]) << 8) |
         (static_cast<uint32_t>(p[2]) << 16) | (static_cast<uint32_t>(p[3]) << 24);
}
inline float load_f16(const uint8_t* p) { return f16_to_f32(load_u16(p)); }

// Rounding note for every `a * q - b` / `a * q + b` below: ggml's reference rounds the product
// and the sum separately (no FMA). ISO C++ mode (-std=c++20, not gnu++20) keeps GCC from
// contracting them, which the reference test checks bit for bit.

// block_q4_0 {f16 d; u8 qs[16]}: low nibbles are elements 0..15, high nibbles 16..31.
void dequant_q4_0(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 18, y += kQK) {
    const float d = load_f16(x);
    const uint8_t* qs = x + 2;
    for (uint32_t j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>((qs[j] & 0x0f) - 8) * d;
      y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) - 8) * d;
    }
  }
}

// block_q4_1 {f16 d; f16 m; u8 qs[16]}: y = q * d + m.
void dequant_q4_1(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 20, y += kQK) {
    const float d = load_f16(x);
    const float m = load_f16(x + 2);
    const uint8_t* qs = x + 4;
    for (uint32_t j = 0; j < kQK / 2; ++j) {
      y[j] = static_cast<float>(qs[j] & 0x0f) * d + m;
      y[j + kQK / 2] = static_cast<float>(qs[j] >> 4) * d + m;
    }
  }
}

// block_q5_0 {f16 d; u8 qh[4]; u8 qs[16]}: bit j of qh is the fifth bit of element j.
void dequant_q5_0(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 22, y += kQK) {
    const float d = load_f16(x);
    const uint32_t qh = load_u32(x + 2);
    const uint8_t* qs = x + 6;
    for (uint32_t j = 0; j < kQK / 2; ++j) {
      const int xh0 = static_cast<int>(((qh >> j) << 4) & 0x10);
      const int xh1 = static_cast<int>((qh >> (j + 12)) & 0x10);
      y[j] = static_cast<float>(((qs[j] & 0x0f) | xh0) - 16) * d;
      y[j + kQK / 2] = static_cast<float>(((qs[j] >> 4) | xh1) - 16) * d;
    }
  }
}

// block_q5_1 {f16 d; f16 m; u8 qh[4]; u8 qs[16]}: y = q * d + m.
void dequant_q5_1(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 24, y += kQK) {
    const float d = load_f16(x);
    const float m = load_f16(x + 2);
    const uint32_t qh = load_u32(x + 4);
    const uint8_t* qs = x + 8;
    for (uint32_t j = 0; j < kQK / 2; ++j) {
      const int xh0 = static_cast<int>(((qh >> j) << 4) & 0x10);
      const int xh1 = static_cast<int>((qh >> (j + 12)) & 0x10);
      y[j] = static_cast<float>((qs[j] & 0x0f) | xh0) * d + m;
      y[j + kQK / 2] = static_cast<float>((qs[j] >> 4) | xh1) * d + m;
    }
  }
}

// block_q8_0 {f16 d; i8 qs[32]}.
void dequant_q8_0(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 34, y += kQK) {
    const float d = load_f16(x);
    for (uint32_t j = 0; j < kQK; ++j) y[j] = static_cast<float>(static_cast<int8_t>(x[2 + j])) * d;
  }
}

// block_q2_K {u8 scales[16]; u8 qs[64]; f16 d; f16 dmin}: 16 groups of 16; scale byte = min<<4 | sc.
void dequant_q2_k(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 84) {
    const uint8_t* scales = x;
    const uint8_t* q = x + 16;
    const float d = load_f16(x + 80);
    const float min = load_f16(x + 82);
    int is = 0;
    for (uint32_t n = 0; n < kQK_K; n += 128, q += 32) {
      for (int shift = 0; shift < 8; shift += 2) {
        for (int half = 0; half < 2; ++half) {
          const uint8_t sc = scales[is++];
          const float dl = d * static_cast<float>(sc & 0x0f);
          const float ml = min * static_cast<float>(sc >> 4);
          for (int l = 0; l < 16; ++l) {
            *y++ = dl * static_cast<float>((q[l + 16 * half] >> shift) & 3) - ml;
          }
        }
      }
    }
  }
}

// block_q3_K {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d}: 6-bit signed scales (offset 32);
// a clear hmask bit subtracts 4 from the 2-bit value.
void dequant_q3_k(const uint8_t* x, int64_t n_blocks, float* y) {
  constexpr uint32_t kmask1 = 0x03030303;
  constexpr uint32_t kmask2 = 0x0f0f0f0f;
  for (int64_t i = 0; i < n_blocks; ++i, x += 110) {
    const uint8_t* hm = x;
    const uint8_t* q = x + 32;
    const float d_all = load_f16(x + 108);
    uint32_t aux[4] = {load_u32(x + 96), load_u32(x + 100), load_u32(x + 104), 0};
    const uint32_t tmp = aux[2];
    aux[2] = ((aux[0] >> 4) & kmask2) | (((tmp >> 4) & kmask1) << 4);
    aux[3] = ((aux[1] >> 4) & kmask2) | (((tmp >> 6) & kmask1) << 4);
    aux[0] = (aux[0] & kmask2) | (((tmp >> 0) & kmask1) << 4);
    aux[1] = (aux[1] & kmask2) | (((tmp >> 2) & kmask1) << 4);
    int8_t scales[16];
    for (int k = 0; k < 16; ++k) scales[k] = static_cast<int8_t>((aux[k / 4] >> (8 * (k % 4))) & 0xff);
    int is = 0;
    uint8_t m = 1;
    for (uint32_t n = 0; n < kQK_K; n += 128, q += 32) {
      for (int shift = 0; shift < 8; shift += 2, m = static_cast<uint8_t>(m << 1)) {
        for (int half = 0; half < 2; ++half) {
          const float dl = d_all * static_cast<float>(scales[is++] - 32);
          for (int l = 0; l < 16; ++l) {
            const int idx = l + 16 * half;
            const int v = ((q[idx] >> shift) & 3) - ((hm[idx] & m) ? 0 : 4);
            *y++ = dl * static_cast<float>(v);
          }
        }
      }
    }
  }
}

// The 12 scale bytes of Q4_K/Q5_K hold eight 6-bit (scale, min) pairs.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* d, uint8_t* m) {
  if (j < 4) {
    *d = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *d = static_cast<uint8_t>((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// block_q4_K {f16 d; f16 dmin; u8 scales[12]; u8 qs[128]}: 8 groups of 32.
void dequant_q4_k(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 144) {
    const float d = load_f16(x);
    const float min = load_f16(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* q = x + 16;
    for (int is = 0; is < 8; is += 2, q += 32) {
      uint8_t sc, m;
      get_scale_min_k4(is, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = min * static_cast<float>(m);
      get_scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) *y++ = d1 * static_cast<float>(q[l] & 0x0f) - m1;
      for (int l = 0; l < 32; ++l) *y++ = d2 * static_cast<float>(q[l] >> 4) - m2;
    }
  }
}

// block_q5_K {f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]}.
void dequant_q5_k(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 176) {
    const float d = load_f16(x);
    const float min = load_f16(x + 2);
    const uint8_t* scales = x + 4;
    const uint8_t* qh = x + 16;
    const uint8_t* ql = x + 48;
    uint8_t u1 = 1, u2 = 2;
    for (int is = 0; is < 8; is += 2, ql += 32) {
      uint8_t sc, m;
      get_scale_min_k4(is, scales, &sc, &m);
      const float d1 = d * static_cast<float>(sc);
      const float m1 = min * static_cast<float>(m);
      get_scale_min_k4(is + 1, scales, &sc, &m);
      const float d2 = d * static_cast<float>(sc);
      const float m2 = min * static_cast<float>(m);
      for (int l = 0; l < 32; ++l) {
        *y++ = d1 * static_cast<float>((ql[l] & 0x0f) + ((qh[l] & u1) ? 16 : 0)) - m1;
      }
      for (int l = 0; l < 32; ++l) {
        *y++ = d2 * static_cast<float>((ql[l] >> 4) + ((qh[l] & u2) ? 16 : 0)) - m2;
      }
      u1 = static_cast<uint8_t>(u1 << 2);
      u2 = static_cast<uint8_t>(u2 << 2);
    }
  }
}

// block_q6_K {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d}: y = (d * scale) * (q - 32).
void dequant_q6_k(const uint8_t* x, int64_t n_blocks, float* y) {
  for (int64_t i = 0; i < n_blocks; ++i, x += 210) {
    const uint8_t* ql = x;
    const uint8_t* qh = x + 128;
    const int8_t* sc = reinterpret_cast<const int8_t*>(x + 192);
    const float d = load_f16(x + 208);
    for (uint32_t n = 0; n < kQK_K; n += 128, y += 128, ql += 64, qh += 32, sc += 8) {
      for (int l = 0; l < 32; ++l) {
        const int is = l / 16;
        const int q1 = ((ql[l] & 0x0f) | (((qh[l] >> 0) & 3) << 4)) - 32;
        const int q2 = ((ql[l + 32] & 0x0f) | (((qh[l] >> 2) & 3) << 4)) - 32;
        const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        const int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * static_cast<float>(sc[is]) * static_cast<float>(q1);
        y[l + 32] = d * static_cast<float>(sc[is + 2]) * static_cast<float>(q2);
        y[l + 64] = d * static_cast<float>(sc[is + 4]) * static_cast<float>(q3);
        y[l + 96] = d * static_cast<float>(sc[is + 6]) * static_cast<float>(q4);
      }
    }
  }
}

}  // namespace

const GgmlTypeTraits* ggml_type_traits(uint32_t type) {
  if (type >= kTraits.size() || kTraits[type].name == nullptr) return nullptr;
  return &kTraits[type];
}

KernelStatus dequantize_ggml(uint32_t type, const void* src, int64_t n_elements, float* dst) {
  const GgmlTypeTraits* traits = ggml_type_traits(type);
  if (traits == nullptr || !traits->can_dequantize) return KernelStatus::unsupported;
  if (n_elements < 0 || n_elements % traits->block_elems != 0) return KernelStatus::bad_shape;
  if (n_elements == 0) return KernelStatus::ok;
  if (src == nullptr || dst == nullptr) return KernelStatus::bad_shape;
  const auto* x = static_cast<const uint8_t*>(src);
  const int64_t n_blocks = n_elements / traits->block_elems;
  switch (static_cast<GgmlType>(type)) {
    case GgmlType::F32:
      std::memcpy(dst, x, static_cast<size_t>(n_elements) * sizeof(float));
      break;
    case GgmlType::F16:
      for (int64_t i = 0; i < n_elements; ++i) dst[i] = load_f16(x + 2 * i);
      break;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n_elements; ++i) dst[i] = bf16_to_f32(load_u16(x + 2 * i));
      break;
    case GgmlType::Q4_0: dequant_q4_0(x, n_blocks, dst); break;
    case GgmlType::Q4_1: dequant_q4_1(x, n_blocks, dst); break;
    case GgmlType::Q5_0: dequant_q5_0(x, n_blocks, dst); break;
    case GgmlType::Q5_1: dequant_q5_1(x, n_blocks, dst); break;
    case GgmlType::Q8_0: dequant_q8_0(x, n_blocks, dst); break;
    case GgmlType::Q2_K: dequant_q2_k(x, n_blocks, dst); break;
    case GgmlType::Q3_K: dequant_q3_k(x, n_blocks, dst); break;
    case GgmlType::Q4_K: dequant_q4_k(x, n_blocks, dst); break;
    case GgmlType::Q5_K: dequant_q5_k(x, n_blocks, dst); break;
    case GgmlType::Q6_K: dequant_q6_k(x, n_blocks, dst); break;
    default: return KernelStatus::unsupported;
  }
  return KernelStatus::ok;
}

}  // namespace gptqd::kernels::cpu
