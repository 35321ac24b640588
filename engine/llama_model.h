// SPDX-License-Identifier: Apache-2.0
// LlamaModel: an immutable, loaded Llama-family decoder — config, weights, tokenizer and the
// backend it runs on — and the one forward pass for prefill and decode alike (engine layer).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/model_config.h"
#include "engine/model_source.h"
#include "engine/session.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"

namespace gptqd::engine {

// Load-time options (per-request options live in GenerateOptions).
struct LoadOptions {
  std::string device = "cpu";
  int n_threads = 0;  // <= 0: one per hardware thread
  bool keep_f16 = true;  // fp16 stays fp16, GPTQ stays packed (INT4 kernels); false: all dense fp32
  // Bytes of memory the weights (and one chunk of scratch) may take; 0: no check. When they would
  // not fit, load fails with Error(no_space) before reading any weight (memory_plan.h).
  uint64_t memory_available = 0;
};

// Scratch activations of a batched decode step (forward_batch); owned by whoever batches, reused
// across steps.
struct BatchScratch {
  std::vector<float> x, h, qkv, attn, gate_up, act, tmp;
  std::vector<float> logits;  // decode_batch's [B, vocab]
  std::vector<int32_t> positions;
};

class LlamaModel {
 public:
  // Loads a model from its files (a .gguf, or an HF folder's files by logical name). Validates
  // them again: this is the boundary between the registry and the engine.
  static std::unique_ptr<LlamaModel> load(const std::vector<SourceFile>& files, const LoadOptions& options);

  const ModelConfig& config() const { return info_.config; }
  const ModelInfo& info() const { return info_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  Backend& backend() const { return *backend_; }
  uint64_t weights_bytes() const { return weights_.size_bytes(); }
  // For the quantizer, which runs layers one at a time with weights of its own (LayerPass).
  const LlamaWeights& weights() const { return weights_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }

  // Runs `tokens` at positions session.pos() .. and appends them to the session's cache.
  // logits: [vocab] for the last token, or [tokens.size(), vocab] when all_positions.
  // Error(invalid_argument) when the tokens do not fit the session's context or an id is out of
  // the vocabulary.
  void forward(Session& session, std::span<const int32_t> tokens, bool all_positions, std::vector<float>& logits) const;
  // The same without computing logits (a prompt chunk whose output nobody needs).
  void prefill(Session& session, std::span<const int32_t> tokens) const;
  // One decode step of several sessions at once: token i goes to session i at its own position;
  // every matmul reads its weights once for all of them, attention runs per session. logits
  // [B, vocab]. Error(invalid_argument) for a full session, a repeated session or a bad token;
  // nothing is written then.
  void forward_batch(std::span<Session* const> sessions, std::span<const int32_t> tokens, BatchScratch& scratch,
                     std::vector<float>& logits) const;

 private:
  LlamaModel() = default;
  void forward_chunk(Session& s, std::span<const int32_t> tokens, bool all_positions, float* logits) const;
  // The activations of n rows, shared by forward_chunk (one session's chunk) and forward_batch
  // (one row per session): x, h, tmp [n, H]; qkv [n, Q + 2 KV]; attn [n, Q]; gate_up [n, 2 I];
  // act [n, I].
  struct Rows {
    float *x, *h, *qkv, *attn, *gate_up, *act, *tmp;
  };
  // A layer before attention: h = rms_norm(x); qkv = h Wqkv (+ bias); RoPE on q and k at `positions`.
  void qkv_rows(const LayerWeights& L, int64_t n, const int32_t* positions, const Rows& r) const;
  // A layer after attention: x += attn Wo; x += down(silu(gate) * up) of rms_norm(x).
  void mlp_rows(const LayerWeights& L, int64_t n, const Rows& r) const;

  ModelInfo info_;
  LlamaWeights weights_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Backend> backend_;
  std::vector<float> inv_freq_;  // [head_dim/2] RoPE frequencies with scaling applied
};

}  // namespace gptqd::engine
