// SPDX-License-Identifier: Apache-2.0
// LlamaModel: loading and the forward pass, written once against the Backend (engine layer).
#include "engine/llama_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/memory_plan.h"

namespace gptqd::engine {
namespace {

// Tokens per forward chunk: bounds scratch memory (and the logits of all_positions) while
// keeping matmuls large enough for BLAS to be efficient.
constexpr int64_t kChunk = kForwardChunkTokens;

// RoPE inverse frequencies theta^(-2j/d), with the model's scaling (HF's
// _compute_llama3_parameters for llama3, position/factor for linear, GGUF rope_freqs factors).
std::vector<float> rope_inv_freq(const ModelConfig& c, const std::vector<float>& freq_factors) {
  const int64_t half = c.head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int64_t j = 0; j < half; ++j) {
    double f = std::pow(c.rope_theta, -2.0 * static_cast<double>(j) / static_cast<double>(c.head_dim));
    const RopeScaling& rs = c.rope_scaling;
    if (rs.type == RopeScalingType::linear) {
      f /= rs.factor;
    } else if (rs.type == RopeScalingType::llama3) {
      const double old_ctx = static_cast<double>(rs.original_max_position_embeddings);
      const double low_wavelen = old_ctx / rs.low_freq_factor;
      const double high_wavelen = old_ctx / rs.high_freq_factor;
      const double wavelen = 2.0 * std::numbers::pi / f;
      if (wavelen > low_wavelen) {
        f /= rs.factor;
      } else if (wavelen >= high_wavelen) {
        const double smooth = (old_ctx / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
        f = (1.0 - smooth) * f / rs.factor + smooth * f;
      }
    }
    if (!freq_factors.empty()) f /= freq_factors[static_cast<size_t>(j)];
    inv[static_cast<size_t>(j)] = static_cast<float>(f);
  }
  return inv;
}

void ensure(std::vector<float>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(static_cast<size_t>(n));
}

}  // namespace

std::unique_ptr<LlamaModel> LlamaModel::load(const std::vector<SourceFile>& files, const LoadOptions& options) {
  std::unique_ptr<LlamaModel> m(new LlamaModel());
  m->info_ = inspect_model_files(files, files.empty() ? std::string("model") : files.front().name);
  if (options.memory_available > 0) {
    const MemoryPlan plan =
        plan_memory(m->info_.config, estimate_weights_bytes(m->info_, options.keep_f16), /*n_ctx=*/0, /*sequences=*/0);
    if (std::string why = memory_misfit(plan, options.memory_available, "the model", "system memory"); !why.empty()) {
      fail(ErrorCode::no_space, why);
    }
  }
  if (m->info_.format == ModelFormat::gguf) {
    GgufFile g = GgufFile::open(m->info_.files.front().path.string());
    m->tokenizer_ = load_tokenizer(g);
  } else {
    m->tokenizer_ = load_tokenizer(m->info_.files);
  }
  if (m->tokenizer_->vocab_size() > m->info_.config.vocab_size) {
    fail(ErrorCode::invalid_model, "the tokenizer has ", m->tokenizer_->vocab_size(), " tokens but the model only ",
         m->info_.config.vocab_size, " embeddings");
  }
  m->weights_ = load_weights(m->info_, options.keep_f16);
  m->inv_freq_ = rope_inv_freq(m->info_.config, m->weights_.rope_freq_factors);
  m->backend_ = make_backend(options.device, options.n_threads);
  return m;
}

void LlamaModel::forward(Session& s, std::span<const int32_t> tokens, bool all_positions,
                         std::vector<float>& logits) const {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t V = info_.config.vocab_size;
  if (n == 0) fail(ErrorCode::invalid_argument, "no tokens to process");
  if (s.pos_ + n > s.n_ctx_) {
    fail(ErrorCode::invalid_argument, "the context is full: ", s.pos_, " + ", n, " tokens exceed num_ctx ", s.n_ctx_);
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= V) fail(ErrorCode::invalid_argument, "token id ", t, " is outside the vocabulary [0, ", V, ")");
  }
  logits.resize(static_cast<size_t>((all_positions ? n : 1) * V));
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t len = std::min(kChunk, n - begin);
    const bool last = begin + len == n;
    float* out = all_positions ? logits.data() + begin * V : (last ? logits.data() : nullptr);
    forward_chunk(s, tokens.subspan(static_cast<size_t>(begin), static_cast<size_t>(len)), all_positions, out);
  }
}

void LlamaModel::prefill(Session& s, std::span<const int32_t> tokens) const {
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t V = info_.config.vocab_size;
  if (s.pos_ + n > s.n_ctx_) {
    fail(ErrorCode::invalid_argument, "the context is full: ", s.pos_, " + ", n, " tokens exceed num_ctx ", s.n_ctx_);
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= V) fail(ErrorCode::invalid_argument, "token id ", t, " is outside the vocabulary [0, ", V, ")");
  }
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t len = std::min(kChunk, n - begin);
    forward_chunk(s, tokens.subspan(static_cast<size_t>(begin), static_cast<size_t>(len)), false, nullptr);
  }
}

void LlamaModel::qkv_rows(const LayerWeights& L, int64_t n, const int32_t* positions, const Rows& r) const {
  const ModelConfig& c = info_.config;
  Backend& be = *backend_;
  const int64_t H = c.hidden_size, Q = c.n_heads * c.head_dim, QKV = Q + 2 * c.n_kv_heads * c.head_dim;
  be.rms_norm(r.x, L.attn_norm.data(), n, H, static_cast<float>(c.rms_norm_eps), r.h);
  be.matmul(L.qkv, r.h, n, r.qkv);
  if (!L.qkv_bias.empty()) {
    for (int64_t i = 0; i < n; ++i) be.add(r.qkv + i * QKV, L.qkv_bias.data(), QKV);
  }
  // q at columns [0, Q), k at [Q, Q+KV), v at [Q+KV, QKV).
  be.rope(r.qkv, n, QKV, c.n_heads, c.head_dim, positions, inv_freq_.data());
  be.rope(r.qkv + Q, n, QKV, c.n_kv_heads, c.head_dim, positions, inv_freq_.data());
}

void LlamaModel::mlp_rows(const LayerWeights& L, int64_t n, const Rows& r) const {
  const ModelConfig& c = info_.config;
  Backend& be = *backend_;
  const int64_t H = c.hidden_size, I = c.intermediate_size;
  be.matmul(L.o, r.attn, n, r.tmp);
  be.add(r.x, r.tmp, n * H);
  be.rms_norm(r.x, L.ffn_norm.data(), n, H, static_cast<float>(c.rms_norm_eps), r.h);
  be.matmul(L.gate_up, r.h, n, r.gate_up);
  be.silu_mul(r.gate_up, n, I, r.act);
  be.matmul(L.down, r.act, n, r.tmp);
  be.add(r.x, r.tmp, n * H);
}

void LlamaModel::forward_batch(std::span<Session* const> sessions, std::span<const int32_t> tokens, BatchScratch& b,
                               std::vector<float>& logits) const {
  const ModelConfig& c = info_.config;
  const int64_t n = static_cast<int64_t>(sessions.size());
  const int64_t V = c.vocab_size;
  if (n == 0 || tokens.size() != sessions.size()) {
    fail(ErrorCode::invalid_argument, "a batch needs one token per session (", tokens.size(), " tokens, ", n, " sessions)");
  }
  for (int64_t i = 0; i < n; ++i) {
    const Session* s = sessions[static_cast<size_t>(i)];
    if (s->pos_ + 1 > s->n_ctx_) fail(ErrorCode::invalid_argument, "the context is full: ", s->pos_, " tokens of num_ctx ", s->n_ctx_);
    if (std::find(sessions.begin(), sessions.begin() + i, s) != sessions.begin() + i) {
      fail(ErrorCode::invalid_argument, "a session appears twice in one batch");
    }
    const int32_t t = tokens[static_cast<size_t>(i)];
    if (t < 0 || t >= V) fail(ErrorCode::invalid_argument, "token id ", t, " is outside the vocabulary [0, ", V, ")");
  }
  Backend& be = *backend_;
  const int64_t H = c.hidden_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim,
                I = c.intermediate_size, QKV = Q + 2 * KV;
  const float eps = static_cast<float>(c.rms_norm_eps);
  ensure(b.x, n * H);
  ensure(b.h, n * H);
  ensure(b.qkv, n * QKV);
  ensure(b.attn, n * Q);
  ensure(b.gate_up, n * 2 * I);
  ensure(b.act, n * I);
  ensure(b.tmp, n * H);
  b.positions.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) {
    b.positions[static_cast<size_t>(i)] = static_cast<int32_t>(sessions[static_cast<size_t>(i)]->pos_);
    weights_.embed.row(tokens[static_cast<size_t>(i)], b.x.data() + i * H);
  }
  const Rows rows{b.x.data(), b.h.data(), b.qkv.data(), b.attn.data(), b.gate_up.data(), b.act.data(), b.tmp.data()};
  for (size_t li = 0; li < weights_.layers.size(); ++li) {
    const LayerWeights& L = weights_.layers[li];
    qkv_rows(L, n, b.positions.data(), rows);
    // Each row's k and v go into its own session's cache; attention is per session (its own
    // length), the one part of the step that is not shared.
    for (int64_t i = 0; i < n; ++i) {
      Session& s = *sessions[static_cast<size_t>(i)];
      const float* row = b.qkv.data() + i * QKV;
      float* k_cache = s.k_cache_[li].data();
      float* v_cache = s.v_cache_[li].data();
      std::memcpy(k_cache + s.pos_ * KV, row + Q, static_cast<size_t>(KV) * sizeof(float));
      std::memcpy(v_cache + s.pos_ * KV, row + Q + KV, static_cast<size_t>(KV) * sizeof(float));
      be.attention(row, QKV, k_cache, v_cache, KV, 1, s.pos_, c.n_heads, c.n_kv_heads, c.head_dim,
                   b.attn.data() + i * Q);
    }
    mlp_rows(L, n, rows);
  }
  for (int64_t i = 0; i < n; ++i) {
    Session& s = *sessions[static_cast<size_t>(i)];
    ++s.pos_;
    s.tokens_.push_back(tokens[static_cast<size_t>(i)]);
  }
  logits.resize(static_cast<size_t>(n * V));
  be.rms_norm(b.x.data(), weights_.norm.data(), n, H, eps, b.h.data());
  be.matmul(weights_.output(), b.h.data(), n, logits.data());
}

// One chunk: x = embed(tokens); per layer attention and SwiGLU MLP with pre-norms and
// residuals; final norm; logits for the last row (or all rows). Shapes in the comments use
// n = chunk length, H = hidden, Q = n_heads*head_dim, KV = n_kv_heads*head_dim, I = intermediate.
void LlamaModel::forward_chunk(Session& s, std::span<const int32_t> tokens, bool all_positions, float* logits) const {
  const ModelConfig& c = info_.config;
  Backend& be = *backend_;
  const int64_t n = static_cast<int64_t>(tokens.size());
  const int64_t H = c.hidden_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim,
                I = c.intermediate_size, QKV = Q + 2 * KV;
  const int64_t pos0 = s.pos_;
  const float eps = static_cast<float>(c.rms_norm_eps);

  ensure(s.x_, n * H);           // residual stream [n, H]
  ensure(s.h_, n * H);           // normed input [n, H]
  ensure(s.qkv_, n * QKV);       // [n, Q + 2*KV]
  ensure(s.attn_, n * Q);        // [n, Q]
  ensure(s.gate_up_, n * 2 * I); // [n, 2*I]
  ensure(s.act_, n * I);         // [n, I]
  ensure(s.tmp_, n * H);         // [n, H]
  s.positions_.resize(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) s.positions_[static_cast<size_t>(i)] = static_cast<int32_t>(pos0 + i);

  for (int64_t i = 0; i < n; ++i) weights_.embed.row(tokens[static_cast<size_t>(i)], s.x_.data() + i * H);

  const Rows rows{s.x_.data(), s.h_.data(), s.qkv_.data(), s.attn_.data(), s.gate_up_.data(), s.act_.data(), s.tmp_.data()};
  for (size_t li = 0; li < weights_.layers.size(); ++li) {
    const LayerWeights& L = weights_.layers[li];
    float* k_cache = s.k_cache_[li].data();
    float* v_cache = s.v_cache_[li].data();
    qkv_rows(L, n, s.positions_.data(), rows);
    for (int64_t i = 0; i < n; ++i) {
      const float* row = s.qkv_.data() + i * QKV;
      std::memcpy(k_cache + (pos0 + i) * KV, row + Q, static_cast<size_t>(KV) * sizeof(float));
      std::memcpy(v_cache + (pos0 + i) * KV, row + Q + KV, static_cast<size_t>(KV) * sizeof(float));
    }
    be.attention(s.qkv_.data(), QKV, k_cache, v_cache, KV, n, pos0, c.n_heads, c.n_kv_heads, c.head_dim,
                 s.attn_.data());
    mlp_rows(L, n, rows);
  }
  s.pos_ = pos0 + n;
  s.tokens_.insert(s.tokens_.end(), tokens.begin(), tokens.end());

  if (!logits) return;
  if (all_positions) {
    be.rms_norm(s.x_.data(), weights_.norm.data(), n, H, eps, s.h_.data());
    be.matmul(weights_.output(), s.h_.data(), n, logits);
  } else {
    be.rms_norm(s.x_.data() + (n - 1) * H, weights_.norm.data(), 1, H, eps, s.h_.data());
    be.matmul(weights_.output(), s.h_.data(), 1, logits);
  }
}

}  // namespace gptqd::engine
