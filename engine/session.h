// SPDX-License-Identifier: Apache-2.0
// Session: the mutable side of one conversation with a model — KV cache, position, scratch
// activations (engine layer). One session per request; the model itself stays immutable.
#pragma once

#include <cstdint>
#include <vector>

namespace gptqd::engine {

class LlamaModel;

class Session {
 public:
  // A KV cache for n_ctx positions (<= the model's trained context); Error(invalid_argument)
  // otherwise.
  Session(const LlamaModel& model, int64_t n_ctx);

  int64_t n_ctx() const { return n_ctx_; }
  int64_t pos() const { return pos_; }          // tokens already in the cache
  const std::vector<int32_t>& tokens() const { return tokens_; }  // the ids at positions [0, pos)
  // Forgets tokens from `pos` on (0: start over); later tokens are recomputed when fed again.
  void truncate(int64_t pos);
  uint64_t cache_bytes() const;

 private:
  friend class LlamaModel;
  int64_t n_ctx_;
  int64_t pos_ = 0;
  int64_t kv_dim_;
  std::vector<int32_t> tokens_;
  std::vector<std::vector<float>> k_cache_;  // [n_layers][n_ctx, kv_dim]
  std::vector<std::vector<float>> v_cache_;  // [n_layers][n_ctx, kv_dim]
  // Scratch for one chunk of up to kChunk tokens (sized on first use).
  std::vector<float> x_, h_, qkv_, attn_, gate_up_, act_, tmp_;
  std::vector<int32_t> positions_;
};

}  // namespace gptqd::engine
