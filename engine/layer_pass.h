// SPDX-License-Identifier: Apache-2.0
// LayerPass: one decoder layer of a LlamaModel run piece by piece over one whole sequence, with
// weights the caller supplies (engine layer). The quantizer uses it to capture the input of each
// linear group and to run layers whose weights it has just replaced; serving uses
// LlamaModel::forward. Positions are 0 .. T-1 and no KV cache is kept.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/llama_model.h"

namespace gptqd::engine {

class LayerPass {
 public:
  explicit LayerPass(const LlamaModel& model) : model_(model) {}

  // The four linear inputs of a Llama layer, in the order a forward pass produces them.
  // h [T, hidden] = attn_norm(x): the input of q, k and v.
  void attn_input(const LayerWeights& L, const float* x, int64_t T, float* h);
  // attn [T, n_heads*head_dim] = causal attention over qkv(h) (+ bias, RoPE): the input of o.
  void attention(const LayerWeights& L, const float* h, int64_t T, float* attn);
  // mid [T, hidden] = x + o(attn).
  void attn_residual(const LayerWeights& L, const float* x, const float* attn, int64_t T, float* mid);
  // h2 [T, hidden] = ffn_norm(mid): the input of gate and up.
  void mlp_input(const LayerWeights& L, const float* mid, int64_t T, float* h2);
  // act [T, intermediate] = silu(gate(h2)) * up(h2): the input of down.
  void mlp_act(const LayerWeights& L, const float* h2, int64_t T, float* act);
  // out [T, hidden] = mid + down(act). out may alias mid.
  void mlp_residual(const LayerWeights& L, const float* mid, const float* act, int64_t T, float* out);

  // The whole layer: out [T, hidden] = layer(x). out may alias x.
  void run(const LayerWeights& L, const float* x, int64_t T, float* out);

  // Embedding rows of `tokens` into x [T, hidden].
  void embed(const int32_t* tokens, int64_t T, float* x) const;

 private:
  const LlamaModel& model_;
  std::vector<float> qkv_, h_, attn_, mid_, act_, gate_up_, tmp_;
  std::vector<int32_t> positions_;
};

}  // namespace gptqd::engine
