// SPDX-License-Identifier: Apache-2.0
// A random GPTQ linear in checkpoint layout for kernel tests, with its codes kept so that the
// expected values come from the definition (gptq-reference.md B.7), not from any kernel.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/gptq_gemm.h"
#include "kernels/cpu/half.h"
#include "quantizer/pack.h"

namespace gptqd::test {

struct LinearCase {
  int64_t K = 128, N = 64;
  int bits = 4;
  int64_t group_size = 128;  // -1: one group
  bool act_order = false;
  bool sym = true;  // every zero point 2^(bits-1) (v1 stores it minus one)
  std::string describe() const {
    return std::to_string(K) + "x" + std::to_string(N) + " " + std::to_string(bits) + "-bit g" +
           std::to_string(group_size) + (act_order ? " act-order" : "") + (sym ? " sym" : " asym");
  }
};

struct TestLinear {
  LinearCase c;
  int64_t G = 0;
  std::vector<uint8_t> codes;     // [K, N]
  std::vector<uint8_t> zeros;     // [G, N] as stored (v1: zero - 1)
  std::vector<uint16_t> scales;   // [G, N] fp16
  std::vector<int32_t> g_idx, qweight, qzeros;

  kernels::cpu::GptqTensors view() const {
    return {qweight.data(), qzeros.data(), scales.data(), g_idx.data(), c.K, c.N, G, c.bits, 1};
  }
  double scale(int64_t g, int64_t n) const { return kernels::cpu::f16_to_f32(scales[static_cast<size_t>(g * c.N + n)]); }
  double zero(int64_t g, int64_t n) const { return zeros[static_cast<size_t>(g * c.N + n)] + 1.0; }
  double weight(int64_t n, int64_t k) const {
    const int64_t g = g_idx[static_cast<size_t>(k)];
    return scale(g, n) * (codes[static_cast<size_t>(k * c.N + n)] - zero(g, n));
  }
};

inline TestLinear make_test_linear(const LinearCase& c, std::mt19937_64& rng) {
  TestLinear l;
  l.c = c;
  const int64_t gs = c.group_size < 0 ? c.K : c.group_size;
  l.G = (c.K + gs - 1) / gs;
  const int maxq = (1 << c.bits) - 1;
  std::uniform_int_distribution<int> code(0, maxq);
  l.codes.resize(static_cast<size_t>(c.K * c.N));
  for (auto& q : l.codes) q = static_cast<uint8_t>(code(rng));
  std::uniform_int_distribution<int> zero(0, maxq - 1);
  l.zeros.resize(static_cast<size_t>(l.G * c.N));
  for (auto& z : l.zeros) z = static_cast<uint8_t>(c.sym ? (1 << (c.bits - 1)) - 1 : zero(rng));
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  l.scales.resize(static_cast<size_t>(l.G * c.N));
  for (auto& s : l.scales) s = kernels::cpu::f32_to_f16(scale(rng));
  std::vector<int32_t> order(static_cast<size_t>(c.K));
  std::iota(order.begin(), order.end(), 0);
  if (c.act_order) std::shuffle(order.begin(), order.end(), rng);
  l.g_idx.resize(static_cast<size_t>(c.K));
  for (int64_t i = 0; i < c.K; ++i) l.g_idx[static_cast<size_t>(order[static_cast<size_t>(i)])] = static_cast<int32_t>(i / gs);
  l.qweight = quantizer::pack_qweight(l.codes, c.K, c.N, c.bits);
  l.qzeros = quantizer::pack_qzeros(l.zeros, l.G, c.N, c.bits);
  return l;
}

// fp16-representable activations (the CUDA kernels take fp16), N(0, 1).
inline std::vector<float> random_half_x(int64_t M, int64_t K, std::mt19937_64& rng) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(M * K));
  for (auto& v : x) v = kernels::cpu::f16_to_f32(kernels::cpu::f32_to_f16(d(rng)));
  return x;
}

}  // namespace gptqd::test
