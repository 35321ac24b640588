// SPDX-License-Identifier: Apache-2.0
// Weight loading: safetensors (F16/BF16/F32, GPTQ dequantized) and GGUF (dequantized, q/k rows
// un-permuted) into one fp32 layout (engine layer).
#include "engine/weights.h"

#include <algorithm>
#include <cstring>
#include <optional>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/safetensors.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/half.h"

namespace gptqd::engine {
namespace {

// One matrix as loaded: fp16 bits when the file stores fp16 (and we keep it), GPTQ-packed when
// it is a GPTQ linear (and we keep it packed), else fp32.
struct Loaded {
  std::vector<float> f32;
  std::vector<uint16_t> f16;
  std::optional<GptqPart> gptq;
};

// Stacks matrices of equal width (q, k, v -> qkv). The result is fp16 only if every part is, GPTQ
// only if every part is; a mix becomes fp32 (the dense rows of GPTQ parts unpacked exactly).
DenseMatrix stack(std::vector<Loaded> parts, const std::vector<int64_t>& n_rows, int64_t cols) {
  DenseMatrix m;
  m.cols = cols;
  if (std::all_of(parts.begin(), parts.end(), [](const Loaded& p) { return p.gptq.has_value(); })) {
    for (size_t i = 0; i < parts.size(); ++i) {
      GptqPart part = std::move(*parts[i].gptq);
      part.row_offset = m.rows;
      m.gptq.push_back(std::move(part));
      m.rows += n_rows[i];
    }
    return m;
  }
  for (Loaded& p : parts) {
    if (!p.gptq) continue;
    p.f32.resize(static_cast<size_t>(p.gptq->packed.N * cols));
    const auto s = kernels::cpu::gptq_unpack_rows(p.gptq->packed, 0, p.gptq->packed.N, p.f32.data());
    if (s != kernels::KernelStatus::ok) fail(ErrorCode::internal, "cannot unpack GPTQ rows: ", kernels::to_string(s));
    p.gptq.reset();
  }
  const bool all_f16 = std::all_of(parts.begin(), parts.end(), [](const Loaded& p) { return !p.f16.empty(); });
  for (size_t i = 0; i < parts.size(); ++i) {
    Loaded& p = parts[i];
    if (all_f16) {
      m.data_f16.insert(m.data_f16.end(), p.f16.begin(), p.f16.end());
    } else if (!p.f16.empty()) {
      for (uint16_t h : p.f16) m.data.push_back(kernels::cpu::f16_to_f32(h));
    } else {
      m.data.insert(m.data.end(), p.f32.begin(), p.f32.end());
    }
    m.rows += n_rows[i];
  }
  return m;
}

DenseMatrix single(Loaded part, int64_t rows, int64_t cols) {
  std::vector<Loaded> parts;
  parts.push_back(std::move(part));
  return stack(std::move(parts), {rows}, cols);
}

// ---- safetensors ----

struct StLoader {
  const SafetensorsSet& set;
  const ModelInfo& info;
  bool keep_f16;

  std::vector<float> vec(const std::string& name) const {
    const StTensor* t = set.find(name);
    if (!t) fail(ErrorCode::invalid_model, "tensor ", name, " is missing");
    return st_to_f32(*t);
  }

  Loaded matrix(const std::string& name) const {
    const StTensor* t = set.find(name);
    if (!t) fail(ErrorCode::invalid_model, "tensor ", name, " is missing");
    Loaded l;
    if (keep_f16 && t->dtype == StDtype::F16) {
      l.f16.resize(t->bytes.size() / 2);
      std::memcpy(l.f16.data(), t->bytes.data(), t->bytes.size());
    } else {
      l.f32 = st_to_f32(*t);
    }
    return l;
  }

  // A linear's W [out, in], from `.weight`, or from the GPTQ tensors: repacked for the INT4
  // kernels (keep_f16), or dequantized to fp32.
  Loaded linear(const std::string& prefix, int64_t in, int64_t out) const {
    if (!info.gptq || !set.find(prefix + ".qweight")) return matrix(prefix + ".weight");
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
    const int zero_offset = g.checkpoint_format == "gptq_v2" ? 0 : 1;
    if (keep_f16) {
      const kernels::cpu::GptqTensors t{qw.data(), qz.data(), sc.data(), gi.data(), in, out, g.n_groups(in), g.bits,
                                        zero_offset};
      GptqPart part;
      part.desc = kernels::LinearDesc{g.bits, g.group_size, g.desc_act, g.sym, in, out};
      auto s = kernels::cpu::gptq_repack(t, &part.packed);
      if (s != kernels::KernelStatus::ok) {
        fail(ErrorCode::invalid_model, prefix, ": cannot load GPTQ weights (", kernels::to_string(s),
             "; g_idx must lie in [0, ", g.n_groups(in), "))");
      }
      Loaded l;
      l.gptq = std::move(part);
      return l;
    }
    std::vector<float> w(static_cast<size_t>(in * out));
    auto s = kernels::cpu::dequantize_gptq(qw.data(), qz.data(), sc.data(), gi.data(), in, out, g.n_groups(in), g.bits,
                                           zero_offset, w.data());
    if (s != kernels::KernelStatus::ok) {
      fail(ErrorCode::invalid_model, prefix, ": cannot dequantize GPTQ weights (", kernels::to_string(s),
           "; g_idx must lie in [0, ", g.n_groups(in), "))");
    }
    return Loaded{std::move(w), {}, std::nullopt};
  }
};

LlamaWeights load_safetensors(const ModelInfo& info, bool keep_f16) {
  FileMap files;
  for (const auto& f : info.files) {
    if (f.name.ends_with(".safetensors") || f.name == "model.safetensors.index.json") files[f.name] = f.path;
  }
  SafetensorsSet set = SafetensorsSet::open(files);
  StLoader L{set, info, keep_f16};
  const ModelConfig& c = info.config;
  const int64_t H = c.hidden_size, I = c.intermediate_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
  LlamaWeights w;
  w.embed = single(L.matrix("model.embed_tokens.weight"), c.vocab_size, H);
  w.norm = L.vec("model.norm.weight");
  if (!c.tie_word_embeddings) w.lm_head = single(L.matrix("lm_head.weight"), c.vocab_size, H);
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = cat("model.layers.", i, ".");
    LayerWeights l;
    l.attn_norm = L.vec(p + "input_layernorm.weight");
    l.ffn_norm = L.vec(p + "post_attention_layernorm.weight");
    {
      std::vector<Loaded> parts;
      parts.push_back(L.linear(p + "self_attn.q_proj", H, Q));
      parts.push_back(L.linear(p + "self_attn.k_proj", H, KV));
      parts.push_back(L.linear(p + "self_attn.v_proj", H, KV));
      l.qkv = stack(std::move(parts), {Q, KV, KV}, H);
    }
    if (c.attention_bias) {
      for (const char* b : {"q_proj", "k_proj", "v_proj"}) {
        auto bias = L.vec(p + "self_attn." + b + ".bias");
        l.qkv_bias.insert(l.qkv_bias.end(), bias.begin(), bias.end());
      }
    }
    l.o = single(L.linear(p + "self_attn.o_proj", Q, H), H, Q);
    {
      std::vector<Loaded> parts;
      parts.push_back(L.linear(p + "mlp.gate_proj", H, I));
      parts.push_back(L.linear(p + "mlp.up_proj", H, I));
      l.gate_up = stack(std::move(parts), {I, I}, H);
    }
    l.down = single(L.linear(p + "mlp.down_proj", I, H), H, I);
    w.layers.push_back(std::move(l));
  }
  return w;
}

// ---- GGUF ----

// llama.cpp's converter interleaves the two RoPE halves of each q/k head (HF row j*hd/2 + i
// becomes GGUF row 2i + j); undo it so every model uses the rotate_half layout.
template <typename T>
std::vector<T> unpermute_rows(const std::vector<T>& w, int64_t n_heads, int64_t head_dim, int64_t cols) {
  std::vector<T> out(w.size());
  const int64_t half = head_dim / 2;
  for (int64_t h = 0; h < n_heads; ++h) {
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        const int64_t src = h * head_dim + 2 * i + j, dst = h * head_dim + j * half + i;
        std::memcpy(out.data() + dst * cols, w.data() + src * cols, static_cast<size_t>(cols) * sizeof(T));
      }
    }
  }
  return out;
}

std::vector<float> unpermute_bias(const std::vector<float>& b, int64_t n_heads, int64_t head_dim) {
  return unpermute_rows(b, n_heads, head_dim, 1);
}

Loaded unpermute(Loaded m, int64_t n_heads, int64_t head_dim, int64_t cols) {
  if (!m.f16.empty()) m.f16 = unpermute_rows(m.f16, n_heads, head_dim, cols);
  else m.f32 = unpermute_rows(m.f32, n_heads, head_dim, cols);
  return m;
}

LlamaWeights load_gguf(const ModelInfo& info, bool keep_f16) {
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
  // A matrix: F16 tensors stay fp16; every other type is dequantized to fp32.
  auto m = [&](const std::string& name) {
    const GgufTensorInfo* info_t = g.find_tensor(name);
    if (!info_t) fail(ErrorCode::invalid_model, g.name(), ": tensor '", name, "' is missing");
    Loaded l;
    if (keep_f16 && info_t->type == static_cast<uint32_t>(kernels::cpu::GgmlType::F16)) {
      auto bytes = g.tensor_bytes(*info_t);
      l.f16.resize(bytes.size() / 2);
      std::memcpy(l.f16.data(), bytes.data(), bytes.size());
    } else {
      l.f32 = g.dequantize(*info_t);
    }
    return l;
  };
  LlamaWeights w;
  w.embed = single(m("token_embd.weight"), c.vocab_size, H);
  w.norm = t("output_norm.weight");
  if (!c.tie_word_embeddings) w.lm_head = single(m("output.weight"), c.vocab_size, H);
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
    Loaded q = m(p + "attn_q.weight"), k = m(p + "attn_k.weight");
    if (permuted) {
      q = unpermute(std::move(q), c.n_heads, c.head_dim, H);
      k = unpermute(std::move(k), c.n_kv_heads, c.head_dim, H);
    }
    {
      std::vector<Loaded> parts;
      parts.push_back(std::move(q));
      parts.push_back(std::move(k));
      parts.push_back(m(p + "attn_v.weight"));
      l.qkv = stack(std::move(parts), {Q, KV, KV}, H);
    }
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
    l.o = single(m(p + "attn_output.weight"), H, Q);
    {
      std::vector<Loaded> parts;
      parts.push_back(m(p + "ffn_gate.weight"));
      parts.push_back(m(p + "ffn_up.weight"));
      l.gate_up = stack(std::move(parts), {I, I}, H);
    }
    l.down = single(m(p + "ffn_down.weight"), H, I);
    w.layers.push_back(std::move(l));
  }
  return w;
}

}  // namespace

uint64_t estimate_weights_bytes(const ModelInfo& info, bool keep_f16) {
  uint64_t total = 0;
  if (info.format == ModelFormat::gguf) {
    const GgufFile g = GgufFile::open(info.files.front().path.string());
    for (const GgufTensorInfo& t : g.tensors()) {
      // Vectors (norms, biases, rope factors) become fp32; matrices stay fp16 when stored so.
      const bool matrix = t.ne.size() >= 2;
      const bool f16 = keep_f16 && matrix && t.type == static_cast<uint32_t>(kernels::cpu::GgmlType::F16);
      total += t.n_elements * (f16 ? 2 : 4);
    }
    return total;
  }
  FileMap files;
  for (const auto& f : info.files) {
    if (f.name.ends_with(".safetensors") || f.name == "model.safetensors.index.json") files[f.name] = f.path;
  }
  const SafetensorsSet set = SafetensorsSet::open(files);
  for (const StTensor* t : set.all()) {
    const std::string_view name = t->name;
    if (info.gptq && (name.ends_with(".qzeros") || name.ends_with(".scales") || name.ends_with(".g_idx"))) continue;
    if (info.gptq && name.ends_with(".qweight") && t->shape.size() == 2) {
      const GptqConfig& q = *info.gptq;
      const int64_t N = t->shape[1];
      const int64_t K = t->shape[0] * 32 / q.bits;
      if (!keep_f16) {
        total += static_cast<uint64_t>(K * N) * 4;
        continue;
      }
      // gptq_repack: the codes as packed (columns in tiles of 16), fp16 scale and zero per group
      // and column, the act-order permutation and the group ranges.
      const int64_t G = q.n_groups(K), cols = (N + 15) / 16 * 16;
      total += static_cast<uint64_t>(t->shape[0] * cols) * 4 + static_cast<uint64_t>(G * cols) * 4 +
               (q.desc_act ? static_cast<uint64_t>(K) * 4 : 0) + static_cast<uint64_t>(G + 1) * 8;
      continue;
    }
    if (name.ends_with("rotary_emb.inv_freq")) continue;  // recomputed, never loaded
    const bool f16 = keep_f16 && t->shape.size() >= 2 && t->dtype == StDtype::F16;
    total += t->n_elements * (f16 ? 2 : 4);
  }
  return total;
}

uint64_t DenseMatrix::size_bytes() const {
  uint64_t n = data.size() * sizeof(float) + data_f16.size() * sizeof(uint16_t);
  for (const GptqPart& p : gptq) n += p.packed.size_bytes();
  return n;
}

uint64_t LlamaWeights::size_bytes() const {
  uint64_t n = embed.size_bytes() + lm_head.size_bytes() + (norm.size() + rope_freq_factors.size()) * sizeof(float);
  for (const auto& l : layers) {
    n += l.qkv.size_bytes() + l.o.size_bytes() + l.gate_up.size_bytes() + l.down.size_bytes() +
         (l.attn_norm.size() + l.qkv_bias.size() + l.ffn_norm.size()) * sizeof(float);
  }
  return n;
}

LlamaWeights load_weights(const ModelInfo& info, bool keep_f16) {
  return info.format == ModelFormat::gguf ? load_gguf(info, keep_f16) : load_safetensors(info, keep_f16);
}

}  // namespace gptqd::engine
