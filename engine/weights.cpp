// SPDX-License-Identifier: Apache-2.0
// Weight loading: safetensors (F16/BF16/F32, GPTQ dequantized) and GGUF (dequantized, q/k rows
// un-permuted) into one fp32 layout (engine layer).
#include "engine/weights.h"

#include <cstring>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "kernels/cpu/cpu_kernels.h"

namespace gptqd::engine {
namespace {

void append_rows(DenseMatrix& m, const std::vector<float>& rows, int64_t n_rows, int64_t cols) {
  if (m.cols == 0) m.cols = cols;
  if (m.cols != cols) fail(ErrorCode::internal, "stacked matrices disagree on their width");
  m.data.insert(m.data.end(), rows.begin(), rows.end());
  m.rows += n_rows;
}

// ---- safetensors ----

struct StLoader {
  const SafetensorsSet& set;
  const ModelInfo& info;

  std::vector<float> vec(const std::string& name) const {
    const StTensor* t = set.find(name);
    if (!t) fail(ErrorCode::invalid_model, "tensor ", name, " is missing");
    return st_to_f32(*t);
  }

  // A linear's W [out, in] as fp32, from `.weight` or from the GPTQ tensors.
  std::vector<float> linear(const std::string& prefix, int64_t in, int64_t out) const {
    if (!info.gptq || !set.find(prefix + ".qweight")) return vec(prefix + ".weight");
    const GptqConfig& g = *info.gptq;
    const StTensor& qweight = *set.find(prefix + ".qweight");
    const StTensor& qzeros = *set.find(prefix + ".qzeros");
    const StTensor& scales = *set.find(prefix + ".scales");
    const StTensor& g_idx = *set.find(prefix + ".g_idx");
    // The tensors may sit unaligned in the mapping: copy to aligned buffers.
    auto ints = [](const StTensor& t) {
      std::vector<int32_t> v(t.bytes.size() / 4);
      std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
      return v;
    };
    std::vector<uint16_t> sc(scales.bytes.size() / 2);
    std::memcpy(sc.data(), scales.bytes.data(), scales.bytes.size());
    std::vector<int32_t> qw = ints(qweight), qz = ints(qzeros), gi = ints(g_idx);
    std::vector<float> w(static_cast<size_t>(in * out));
    const int zero_offset = g.checkpoint_format == "gptq_v2" ? 0 : 1;
    auto s = kernels::cpu::dequantize_gptq(qw.data(), qz.data(), sc.data(), gi.data(), in, out, g.n_groups(in), g.bits,
                                           zero_offset, w.data());
    if (s != kernels::KernelStatus::ok) {
      fail(ErrorCode::invalid_model, prefix, ": cannot dequantize GPTQ weights (", kernels::to_string(s),
           "; g_idx must lie in [0, ", g.n_groups(in), "))");
    }
    return w;
  }
};

LlamaWeights load_safetensors(const ModelInfo& info) {
  FileMap files;
  for (const auto& f : info.files) {
    if (f.name.ends_with(".safetensors") || f.name == "model.safetensors.index.json") files[f.name] = f.path;
  }
  SafetensorsSet set = SafetensorsSet::open(files);
  StLoader L{set, info};
  const ModelConfig& c = info.config;
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
  LlamaWeights w;
  w.embed = DenseMatrix{c.vocab_size, H, L.vec("model.embed_tokens.weight")};
  w.norm = L.vec("model.norm.weight");
  if (!c.tie_word_embeddings) w.lm_head = DenseMatrix{c.vocab_size, H, L.vec("lm_head.weight")};
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = cat("model.layers.", i, ".");
    LayerWeights l;
    l.attn_norm = L.vec(p + "input_layernorm.weight");
    l.ffn_norm = L.vec(p + "post_attention_layernorm.weight");
    append_rows(l.qkv, L.linear(p + "self_attn.q_proj", H, Q), Q, H);
    append_rows(l.qkv, L.linear(p + "self_attn.k_proj", H, KV), KV, H);
    append_rows(l.qkv, L.linear(p + "self_attn.v_proj", H, KV), KV, H);
    if (c.attention_bias) {
      for (const char* b : {"q_proj", "k_proj", "v_proj"}) {
        auto bias = L.vec(p + "self_attn." + b + ".bias");
        l.qkv_bias.insert(l.qkv_bias.end(), bias.begin(), bias.end());
      }
    }
    l.o = DenseMatrix{H, Q, L.linear(p + "self_attn.o_proj", Q, H)};
    append_rows(l.gate_up, L.linear(p + "mlp.gate_proj", H, I), I, H);
    append_rows(l.gate_up, L.linear(p + "mlp.up_proj", H, I), I, H);
    l.down = DenseMatrix{H, I, L.linear(p + "mlp.down_proj", I, H)};
    w.layers.push_back(std::move(l));
  }
  return w;
}

// ---- GGUF ----

// llama.cpp's converter interleaves the two RoPE halves of each q/k head (HF row j*hd/2 + i
// becomes GGUF row 2i + j); undo it so every model uses the rotate_half layout.
std::vector<float> unpermute_rows(const std::vector<float>& w, int64_t n_heads, int64_t head_dim, int64_t cols) {
  std::vector<float> out(w.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t src = h * head_dim + 2 * i + j, dst = h * head_dim + j * half + i;
        std::memcpy(out.data() + dst * cols, w.data() + src * cols, static_cast<size_t>(cols) * sizeof(float));
      }
    }
  }
  return out;
}

std::vector<float> unpermute_bias(const std::vector<float>& b, int64_t n_heads, int64_t head_dim) {
  return unpermute_rows(b, n_heads, head_dim, 1);
}

LlamaWeights load_gguf(const ModelInfo& info) {
  GgufFile g = GgufFile::open(info.files.front().path.string());
  const ModelConfig& c = info.config;
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
  // Only the "llama" converter permutes; qwen2 GGUFs keep the HF layout (llama.cpp runs them
  // with NEOX RoPE).
  const bool permuted = g.get_string("general.architecture") != "qwen2";
  auto t = [&](const std::string& name) {
    const GgufTensorInfo* info_t = g.find_tensor(name);
    if (!info_t) fail(ErrorCode::invalid_model, g.name(), ": tensor '", name, "' is missing");
    return g.dequantize(*info_t);
  };
  LlamaWeights w;
  w.embed = DenseMatrix{c.vocab_size, H, t("token_embd.weight")};
  w.norm = t("output_norm.weight");
  if (!c.tie_word_embeddings) w.lm_head = DenseMatrix{c.vocab_size, H, t("output.weight")};
  if (g.find_tensor("rope_freqs.weight")) {
    w.rope_freq_factors = t("rope_freqs.weight");
    if (static_cast<int64_t>(w.rope_freq_factors.size()) != c.head_dim / 2) {
      fail(ErrorCode::invalid_model, g.name(), ": rope_freqs.weight has ", w.rope_freq_factors.size(),
           " values, expected head_dim/2 = ", c.head_dim / 2);
    }
  }
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = cat("blk.", i, ".");
    LayerWeights l;
    l.attn_norm = t(p + "attn_norm.weight");
    l.ffn_norm = t(p + "ffn_norm.weight");
    auto q = t(p + "attn_q.weight"), k = t(p + "attn_k.weight");
    if (permuted) {
      q = unpermute_rows(q, c.n_heads, c.head_dim, H);
      k = unpermute_rows(k, c.n_kv_heads, c.head_dim, H);
    }
    append_rows(l.qkv, q, Q, H);
    append_rows(l.qkv, k, KV, H);
    append_rows(l.qkv, t(p + "attn_v.weight"), KV, H);
    if (c.attention_bias) {
      auto bq = t(p + "attn_q.bias"), bk = t(p + "attn_k.bias"), bv = t(p + "attn_v.bias");
      if (permuted) {
        bq = unpermute_bias(bq, c.n_heads, c.head_dim);
        bk = unpermute_bias(bk, c.n_kv_heads, c.head_dim);
      }
      l.qkv_bias = bq;
      l.qkv_bias.insert(l.qkv_bias.end(), bk.begin(), bk.end());
      l.qkv_bias.insert(l.qkv_bias.end(), bv.begin(), bv.end());
    }
    l.o = DenseMatrix{H, Q, t(p + "attn_output.weight")};
    append_rows(l.gate_up, t(p + "ffn_gate.weight"), I, H);
    append_rows(l.gate_up, t(p + "ffn_up.weight"), I, H);
    l.down = DenseMatrix{H, I, t(p + "ffn_down.weight")};
    w.layers.push_back(std::move(l));
  }
  return w;
}

}  // namespace

uint64_t LlamaWeights::size_bytes() const {
  uint64_t n = embed.data.size() + norm.size() + lm_head.data.size() + rope_freq_factors.size();
  for (const auto& l : layers) {
    n += l.attn_norm.size() + l.qkv.data.size() + l.qkv_bias.size() + l.o.data.size() + l.ffn_norm.size() +
         l.gate_up.data.size() + l.down.data.size();
  }
  return n * sizeof(float);
}

LlamaWeights load_weights(const ModelInfo& info) {
  return info.format == ModelFormat::gguf ? load_gguf(info) : load_safetensors(info);
}

}  // namespace gptqd::engine
