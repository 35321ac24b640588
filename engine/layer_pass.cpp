// SPDX-License-Identifier: Apache-2.0
// LayerPass: the pieces of one Llama decoder layer, written against the Backend like
// LlamaModel::forward_chunk (engine layer).
#include "engine/layer_pass.h"

#include <algorithm>
#include <cstring>

#include "engine/error.h"

namespace gptqd::engine {
namespace {

void ensure(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

void LayerPass::attn_input(const LayerWeights& L, const float* x, int64_t T, float* h) {
  const ModelConfig& c = model_.config();
  model_.backend().rms_norm(x, L.attn_norm.data(), T, c.hidden_size, static_cast<float>(c.rms_norm_eps), h);
}

void LayerPass::attention(const LayerWeights& L, const float* h, int64_t T, float* attn) {
  const ModelConfig& c = model_.config();
  Backend& be = model_.backend();
  const int64_t Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim, QKV = Q + 2 * KV;
  if (L.qkv.rows != QKV) fail(ErrorCode::internal, "LayerPass: qkv has ", L.qkv.rows, " rows, expected ", QKV);
  ensure(qkv_, T * QKV);
  positions_.resize(static_cast<size_t>(T));
  for (int64_t i = 0; i < T; ++i) positions_[static_cast<size_t>(i)] = static_cast<int32_t>(i);
  be.matmul(L.qkv, h, T, qkv_.data());
  if (!L.qkv_bias.empty()) {
    for (int64_t i = 0; i < T; ++i) be.add(qkv_.data() + i * QKV, L.qkv_bias.data(), QKV);
  }
  const float* inv_freq = model_.inv_freq().data();
  be.rope(qkv_.data(), T, QKV, c.n_heads, c.head_dim, positions_.data(), inv_freq);
  be.rope(qkv_.data() + Q, T, QKV, c.n_kv_heads, c.head_dim, positions_.data(), inv_freq);
  // k and v are read in place from the qkv rows: stride QKV plays the role of the cache stride.
  be.attention(qkv_.data(), QKV, qkv_.data() + Q, qkv_.data() + Q + KV, QKV, T, 0, c.n_heads, c.n_kv_heads,
               c.head_dim, attn);
}

void LayerPass::attn_residual(const LayerWeights& L, const float* x, const float* attn, int64_t T, float* mid) {
  const int64_t H = model_.config().hidden_size;
  Backend& be = model_.backend();
  ensure(tmp_, T * H);
  be.matmul(L.o, attn, T, tmp_.data());
  if (mid != x) std::memcpy(mid, x, static_cast<size_t>(T * H) * sizeof(float));
  be.add(mid, tmp_.data(), T * H);
}

void LayerPass::mlp_input(const LayerWeights& L, const float* mid, int64_t T, float* h2) {
  const ModelConfig& c = model_.config();
  model_.backend().rms_norm(mid, L.ffn_norm.data(), T, c.hidden_size, static_cast<float>(c.rms_norm_eps), h2);
}

void LayerPass::mlp_act(const LayerWeights& L, const float* h2, int64_t T, float* act) {
  const int64_t I = model_.config().intermediate_size;
  Backend& be = model_.backend();
  ensure(gate_up_, T * 2 * I);
  be.matmul(L.gate_up, h2, T, gate_up_.data());
  be.silu_mul(gate_up_.data(), T, I, act);
}

void LayerPass::mlp_residual(const LayerWeights& L, const float* mid, const float* act, int64_t T, float* out) {
  const int64_t H = model_.config().hidden_size;
  Backend& be = model_.backend();
  ensure(tmp_, T * H);
  be.matmul(L.down, act, T, tmp_.data());
  if (out != mid) std::memcpy(out, mid, static_cast<size_t>(T * H) * sizeof(float));
  be.add(out, tmp_.data(), T * H);
}

void LayerPass::run(const LayerWeights& L, const float* x, int64_t T, float* out) {
  const ModelConfig& c = model_.config();
  const int64_t H = c.hidden_size, Q = c.n_heads * c.head_dim, I = c.intermediate_size;
  ensure(h_, T * H);
  ensure(attn_, T * Q);
  ensure(mid_, T * H);
  ensure(act_, T * I);
  attn_input(L, x, T, h_.data());
  attention(L, h_.data(), T, attn_.data());
  attn_residual(L, x, attn_.data(), T, mid_.data());
  mlp_input(L, mid_.data(), T, h_.data());
  mlp_act(L, h_.data(), T, act_.data());
  mlp_residual(L, mid_.data(), act_.data(), T, out);
}

void LayerPass::embed(const int32_t* tokens, int64_t T, float* x) const {
  const ModelConfig& c = model_.config();
  const LlamaWeights& w = model_.weights();
  for (int64_t i = 0; i < T; ++i) {
    if (tokens[i] < 0 || tokens[i] >= c.vocab_size) {
      fail(ErrorCode::invalid_argument, "token id ", tokens[i], " is outside the vocabulary [0, ", c.vocab_size, ")");
    }
    w.embed.row(tokens[i], x + i * c.hidden_size);
  }
}

}  // namespace gptqd::engine
