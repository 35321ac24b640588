// SPDX-License-Identifier: Apache-2.0
// Shared helpers of the checkpoint writer tests (checkpoint_test, checkpoint_reference_test):
// random-but-valid quantized linears for a tiny model, their expected dequantization, and the
// engine's per-linear view of a loaded checkpoint (quantizer tests).
#pragma once

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "engine/model_config.h"
#include "engine/weights.h"
#include "kernels/cpu/half.h"
#include "quantizer/checkpoint.h"
#include "quantizer/gptq.h"

namespace gptqd::quantizer::test_util {

struct QuantCase {
  int bits = 4;
  int group_size = 16;
  bool sym = true;          // sym: v1 ("gptq"); asym: v2 ("gptq_v2")
  bool desc_act = false;    // act-order: g_idx from a random column permutation
};

inline engine::GptqConfig config_for(const QuantCase& c) {
  engine::GptqConfig g;
  g.bits = c.bits;
  g.group_size = c.group_size;
  g.sym = c.sym;
  g.desc_act = c.desc_act;
  g.checkpoint_format = c.sym ? "gptq" : "gptq_v2";
  return g;
}

inline CheckpointSpec spec_for(const QuantCase& c) {
  CheckpointSpec spec;
  spec.config = config_for(c);
  return spec;
}

// W [N, K] of the linear at `prefix` (a llama_linear_prefixes entry).
inline std::pair<int64_t, int64_t> linear_shape(const std::string& prefix, const engine::ModelConfig& c) {
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
  auto has = [&](const char* s) { return prefix.find(s) != std::string::npos; };
  if (has("q_proj")) return {Q, H};
  if (has("k_proj") || has("v_proj")) return {KV, H};
  if (has("o_proj")) return {H, Q};
  if (has("gate_proj") || has("up_proj")) return {I, H};
  return {H, I};  // down_proj
}

// Random codes, scales that are not fp16-exact (the writer rounds them), zeros that include 0 and
// maxq when asymmetric, and g_idx as the solver would produce it.
inline QuantizedLinear random_linear(int64_t N, int64_t K, const QuantCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  QuantizedLinear q;
  q.N = N;
  q.K = K;
  q.bits = c.bits;
  q.group_size = c.group_size;
  q.sym = c.sym;
  const int maxq = (1 << c.bits) - 1;
  const int64_t G = c.group_size == -1 ? 1 : (K + c.group_size - 1) / c.group_size;
  std::uniform_int_distribution<int> code(0, maxq);
  std::uniform_real_distribution<float> scale(1e-3f, 5e-2f);
  q.codes.resize(static_cast<size_t>(N * K));
  for (auto& v : q.codes) v = static_cast<uint8_t>(code(rng));
  q.scales.resize(static_cast<size_t>(N * G));
  for (auto& s : q.scales) s = scale(rng);
  q.zeros.resize(static_cast<size_t>(N * G));
  for (auto& z : q.zeros) z = static_cast<uint8_t>(c.sym ? (maxq + 1) / 2 : code(rng));
  if (!c.sym) {
    q.zeros[0] = 0;
    q.zeros.back() = static_cast<uint8_t>(maxq);
  }
  q.g_idx.resize(static_cast<size_t>(K));
  std::vector<int32_t> perm(static_cast<size_t>(K));
  std::iota(perm.begin(), perm.end(), 0);
  if (c.desc_act) std::shuffle(perm.begin(), perm.end(), rng);
  for (int64_t p = 0; p < K; ++p) {
    q.g_idx[static_cast<size_t>(perm[static_cast<size_t>(p)])] =
        c.group_size == -1 ? 0 : static_cast<int32_t>(p / c.group_size);
  }
  return q;
}

// W [N, K] = fp16(scale) * (code - zero), what any reader of the checkpoint must compute (B.7).
inline std::vector<float> expected_dequant(const QuantizedLinear& q) {
  const int64_t G = q.n_groups();
  std::vector<float> w(static_cast<size_t>(q.N * q.K));
  for (int64_t n = 0; n < q.N; ++n) {
    for (int64_t k = 0; k < q.K; ++k) {
      const auto gi = static_cast<size_t>(n * G + q.g_idx[static_cast<size_t>(k)]);
      const float s = kernels::cpu::f16_to_f32(kernels::cpu::f32_to_f16(q.scales[gi]));
      const int d = int{q.codes[static_cast<size_t>(n * q.K + k)]} - int{q.zeros[gi]};
      w[static_cast<size_t>(n * q.K + k)] = s * static_cast<float>(d);
    }
  }
  return w;
}

// One random linear per prefix of a model with config `c`.
inline std::map<std::string, QuantizedLinear> random_linears(const engine::ModelConfig& c, const QuantCase& qc,
                                                             uint32_t seed) {
  std::map<std::string, QuantizedLinear> out;
  uint32_t i = 0;
  for (const std::string& p : llama_linear_prefixes(c.n_layers)) {
    auto [N, K] = linear_shape(p, c);
    out[p] = random_linear(N, K, qc, seed * 1000 + i++);
  }
  return out;
}

inline LinearSource source_of(const std::map<std::string, QuantizedLinear>& linears) {
  return [&linears](const std::string& prefix) { return linears.at(prefix); };
}

// The engine's dequantized W [N, K] of every quantized linear, cut out of its stacked matrices.
inline std::map<std::string, std::vector<float>> engine_linears(const engine::ModelInfo& info) {
  const engine::LlamaWeights w = engine::load_weights(info, /*keep_f16=*/false);
  const engine::ModelConfig& c = info.config;
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
  auto rows = [](const engine::DenseMatrix& m, int64_t first, int64_t n) {
    std::vector<float> out(static_cast<size_t>(n * m.cols));
    for (int64_t r = 0; r < n; ++r) m.row(first + r, out.data() + r * m.cols);
    return out;
  };
  std::map<std::string, std::vector<float>> out;
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    const engine::LayerWeights& l = w.layers[static_cast<size_t>(i)];
    out[p + "self_attn.q_proj"] = rows(l.qkv, 0, Q);
    out[p + "self_attn.k_proj"] = rows(l.qkv, Q, KV);
    out[p + "self_attn.v_proj"] = rows(l.qkv, Q + KV, KV);
    out[p + "self_attn.o_proj"] = rows(l.o, 0, H);
    out[p + "mlp.gate_proj"] = rows(l.gate_up, 0, I);
    out[p + "mlp.up_proj"] = rows(l.gate_up, I, I);
    out[p + "mlp.down_proj"] = rows(l.down, 0, H);
  }
  return out;
}

}  // namespace gptqd::quantizer::test_util
