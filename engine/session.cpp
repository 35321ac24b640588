// SPDX-License-Identifier: Apache-2.0
// Session: KV cache and scratch of one conversation (engine layer).
#include "engine/session.h"

#include "engine/error.h"
#include "engine/llama_model.h"

namespace gptqd::engine {

Session::Session(const LlamaModel& model, int64_t n_ctx) : n_ctx_(n_ctx) {
  const ModelConfig& c = model.config();
  if (n_ctx <= 0 || n_ctx > c.max_position_embeddings) {
    fail(ErrorCode::invalid_argument, "num_ctx ", n_ctx, " is out of range: this model supports 1 to ",
         c.max_position_embeddings, " tokens");
  }
  kv_dim_ = c.n_kv_heads * c.head_dim;
  k_cache_.resize(static_cast<size_t>(c.n_layers));
  v_cache_.resize(static_cast<size_t>(c.n_layers));
  for (auto& k : k_cache_) k.resize(static_cast<size_t>(n_ctx * kv_dim_));
  for (auto& v : v_cache_) v.resize(static_cast<size_t>(n_ctx * kv_dim_));
}

void Session::truncate(int64_t pos) {
  if (pos < 0 || pos > pos_) fail(ErrorCode::internal, "truncate to ", pos, " outside [0, ", pos_, "]");
  pos_ = pos;
  tokens_.resize(static_cast<size_t>(pos));
}

uint64_t Session::cache_bytes() const {
  return 2 * k_cache_.size() * static_cast<uint64_t>(n_ctx_ * kv_dim_) * sizeof(float);
}

}  // namespace gptqd::engine
