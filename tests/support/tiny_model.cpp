// SPDX-License-Identifier: Apache-2.0
// Tiny deterministic Llama models on disk (test support).
#include "tests/support/tiny_model.h"

#include <cstring>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <vector>

#include "engine/safetensors.h"
#include "kernels/cpu/half.h"
#include "quantizer/pack.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

struct HostTensor {
  std::string name;
  engine::StDtype dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

std::vector<float> random_floats(std::mt19937& rng, size_t n, float scale) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

template <typename T>
std::vector<std::byte> as_bytes(const std::vector<T>& v) {
  std::vector<std::byte> out(v.size() * sizeof(T));
  std::memcpy(out.data(), v.data(), out.size());
  return out;
}

HostTensor f16_tensor(std::mt19937& rng, const std::string& name, std::vector<int64_t> shape, float scale) {
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  std::vector<uint16_t> h;
  for (float x : random_floats(rng, n, scale)) h.push_back(kernels::cpu::f32_to_f16(x));
  return HostTensor{name, engine::StDtype::F16, std::move(shape), as_bytes(h)};
}

HostTensor ones_f16(const std::string& name, int64_t n) {
  std::vector<uint16_t> h(static_cast<size_t>(n), kernels::cpu::f32_to_f16(1.0f));
  return HostTensor{name, engine::StDtype::F16, {n}, as_bytes(h)};
}

// GPTQ, group size 16, symmetric v1 (stored zero 2^(bits-1) - 1) linear with K inputs, N outputs;
// act-order: g_idx from a random permutation of the columns.
void add_gptq_linear(std::vector<HostTensor>& out, std::mt19937& rng, const std::string& prefix, int64_t K, int64_t N,
                     int bits, bool act_order) {
  const int64_t group = 16, G = (K + group - 1) / group;
  std::uniform_int_distribution<int> code(0, (1 << bits) - 1);
  std::vector<uint8_t> codes(static_cast<size_t>(K * N));
  for (auto& c : codes) c = static_cast<uint8_t>(code(rng));
  std::vector<uint8_t> zeros(static_cast<size_t>(G * N), static_cast<uint8_t>((1 << (bits - 1)) - 1));
  std::vector<uint16_t> scales;
  for (float x : random_floats(rng, static_cast<size_t>(G * N), 0.01f)) scales.push_back(kernels::cpu::f32_to_f16(std::abs(x) + 1e-3f));
  std::vector<int32_t> order(static_cast<size_t>(K));
  std::iota(order.begin(), order.end(), 0);
  if (act_order) std::shuffle(order.begin(), order.end(), rng);
  std::vector<int32_t> g_idx(static_cast<size_t>(K));
  for (int64_t p = 0; p < K; ++p) g_idx[static_cast<size_t>(order[static_cast<size_t>(p)])] = static_cast<int32_t>(p / group);
  out.push_back({prefix + ".qweight", engine::StDtype::I32, {K * bits / 32, N}, as_bytes(quantizer::pack_qweight(codes, K, N, bits))});
  out.push_back({prefix + ".qzeros", engine::StDtype::I32, {G, N * bits / 32}, as_bytes(quantizer::pack_qzeros(zeros, G, N, bits))});
  out.push_back({prefix + ".scales", engine::StDtype::F16, {G, N}, as_bytes(scales)});
  out.push_back({prefix + ".g_idx", engine::StDtype::I32, {K}, as_bytes(g_idx)});
}

void write_json(const fs::path& p, const json& j) {
  std::ofstream out(p);
  out << j.dump(2) << "\n";
  if (!out) throw std::runtime_error("cannot write " + p.string());
}

// ---- GGUF byte builder ----
struct GgufBytes {
  std::vector<uint8_t> b;
  void u32(uint32_t v) { raw(&v, 4); }
  void u64(uint64_t v) { raw(&v, 8); }
  void f32(float v) { raw(&v, 4); }
  void raw(const void* p, size_t n) {
    auto* c = static_cast<const uint8_t*>(p);
    b.insert(b.end(), c, c + n);
  }
  void str(const std::string& s) {
    u64(s.size());
    raw(s.data(), s.size());
  }
  void kv_u32(const std::string& k, uint32_t v) { str(k), u32(4), u32(v); }
  void kv_f32(const std::string& k, float v) { str(k), u32(6), f32(v); }
  void kv_str(const std::string& k, const std::string& v) { str(k), u32(8), str(v); }
  void kv_i32_array(const std::string& k, const std::vector<int32_t>& v) {
    str(k), u32(9), u32(5), u64(v.size());
    for (int32_t x : v) raw(&x, 4);
  }
  void kv_str_array(const std::string& k, const std::vector<std::string>& v) {
    str(k), u32(9), u32(8), u64(v.size());
    for (const auto& s : v) str(s);
  }
  void pad(size_t align) {
    while (b.size() % align) b.push_back(0);
  }
};

std::vector<std::string> tiny_pieces(int64_t vocab) {
  std::vector<std::string> pieces;
  for (int b = 0; b < 256; ++b) pieces.push_back(byte_to_unicode(static_cast<unsigned char>(b)));
  for (const char* p : {"<s>", "</s>", "he", "\xc4\xa0t", "\xc4\xa0the"}) pieces.emplace_back(p);
  for (int64_t i = static_cast<int64_t>(pieces.size()); i < vocab; ++i) pieces.push_back("<filler" + std::to_string(i) + ">");
  return pieces;
}
const std::vector<std::string> kTinyMerges = {"h e", "\xc4\xa0 t", "\xc4\xa0t he"};

}  // namespace

std::string byte_to_unicode(unsigned char b) {
  // Printable Latin-1 bytes map to themselves; the rest to U+0100.. in byte order.
  auto printable = [](int c) { return (c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) || (c >= 0xae && c <= 0xff); };
  int cp = b;
  if (!printable(b)) {
    int n = 0;
    for (int c = 0; c < b; ++c) n += printable(c) ? 0 : 1;
    cp = 256 + n;
  }
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else {
    out += static_cast<char>(0xc0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return out;
}

json tiny_tokenizer_json(int64_t vocab) {
  json v = json::object();
  std::vector<std::string> pieces = tiny_pieces(vocab);
  for (size_t i = 0; i < pieces.size(); ++i) v[pieces[i]] = i;
  json added = json::array();
  for (int64_t id : {kTinyBos, kTinyEos}) {
    added.push_back(json{{"id", id}, {"content", pieces[static_cast<size_t>(id)]}, {"single_word", false},
                         {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
  }
  return json{{"version", "1.0"},
              {"truncation", nullptr},
              {"padding", nullptr},
              {"added_tokens", added},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
              {"post_processor", nullptr},
              {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
              {"model",
               {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", v},
                {"merges", kTinyMerges}}}};
}

json tiny_hf_config(const TinyShape& s) {
  return json{{"architectures", json::array({"LlamaForCausalLM"})},
              {"model_type", "llama"},
              {"vocab_size", s.vocab},
              {"hidden_size", s.hidden},
              {"intermediate_size", s.intermediate},
              {"num_hidden_layers", s.n_layers},
              {"num_attention_heads", s.n_heads},
              {"num_key_value_heads", s.n_kv_heads},
              {"head_dim", s.head_dim},
              {"max_position_embeddings", s.context},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"tie_word_embeddings", false},
              {"hidden_act", "silu"},
              {"bos_token_id", kTinyBos},
              {"eos_token_id", kTinyEos},
              {"torch_dtype", "float16"}};
}

void write_tiny_hf_model(const fs::path& dir, const TinyHfOptions& o) {
  fs::create_directories(dir);
  const TinyShape& s = o.shape;
  std::mt19937 rng(o.seed);
  std::vector<HostTensor> t;
  const int64_t H = s.hidden, Q = s.n_heads * s.head_dim, KV = s.n_kv_heads * s.head_dim, I = s.intermediate;
  t.push_back(f16_tensor(rng, "model.embed_tokens.weight", {s.vocab, H}, 0.5f));
  t.push_back(f16_tensor(rng, "model.norm.weight", {H}, 0.1f));
  for (size_t i = 0; i < static_cast<size_t>(H); ++i) {  // norms near 1, not exactly 1
    auto* h = reinterpret_cast<uint16_t*>(t.back().data.data());
    h[i] = kernels::cpu::f32_to_f16(1.0f + kernels::cpu::f16_to_f32(h[i]));
  }
  if (!o.tie_embeddings) t.push_back(f16_tensor(rng, "lm_head.weight", {s.vocab, H}, 0.1f));
  for (int64_t i = 0; i < s.n_layers; ++i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    t.push_back(ones_f16(p + "input_layernorm.weight", H));
    t.push_back(ones_f16(p + "post_attention_layernorm.weight", H));
    struct Lin {
      const char* name;
      int64_t in, out;
    } lins[] = {{"self_attn.q_proj", H, Q}, {"self_attn.k_proj", H, KV}, {"self_attn.v_proj", H, KV},
                {"self_attn.o_proj", Q, H}, {"mlp.gate_proj", H, I},     {"mlp.up_proj", H, I},
                {"mlp.down_proj", I, H}};
    for (const auto& l : lins) {
      if (o.gptq) add_gptq_linear(t, rng, p + l.name, l.in, l.out, o.gptq_bits, o.gptq_act_order);
      else t.push_back(f16_tensor(rng, p + l.name + ".weight", {l.out, l.in}, 0.2f));
      if (o.family == "qwen2" && l.name[10] != 'o' && std::string(l.name).rfind("self_attn", 0) == 0) {
        t.push_back(f16_tensor(rng, p + l.name + ".bias", {l.out}, 0.1f));
      }
    }
  }

  json config = tiny_hf_config(s);
  if (o.family != "llama") config["model_type"] = o.family;
  if (o.family == "qwen2") config["architectures"] = json::array({"Qwen2ForCausalLM"});
  config["tie_word_embeddings"] = o.tie_embeddings;
  if (o.llama3_rope) {
    config["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}, {"low_freq_factor", 1.0},
                              {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 32}};
    config["rope_theta"] = 500000.0;
  }
  if (o.gptq) {
    json q = {{"bits", o.gptq_bits}, {"group_size", 16},         {"damp_percent", 0.01}, {"desc_act", o.gptq_act_order},
              {"static_groups", false}, {"sym", true},           {"true_sequential", true},
              {"model_name_or_path", ""}, {"model_file_base_name", "model"}, {"quant_method", "gptq"},
              {"checkpoint_format", "gptq"}};
    config["quantization_config"] = q;
    write_json(dir / "quantize_config.json", q);
  }
  write_json(dir / "config.json", config);
  write_json(dir / "tokenizer.json", tiny_tokenizer_json(s.vocab));
  write_json(dir / "tokenizer_config.json", json{{"bos_token", "<s>"}, {"eos_token", "</s>"}});

  const int n = std::max(1, o.n_shards);
  json weight_map = json::object();
  uint64_t total = 0;
  for (int shard = 0; shard < n; ++shard) {
    char name[64];
    if (n == 1) std::snprintf(name, sizeof name, "model.safetensors");
    else std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", shard + 1, n);
    std::vector<engine::StWriteTensor> w;
    for (size_t i = static_cast<size_t>(shard); i < t.size(); i += static_cast<size_t>(n)) {
      w.push_back(engine::StWriteTensor{t[i].name, t[i].dtype, t[i].shape, t[i].data});
      weight_map[t[i].name] = name;
      total += t[i].data.size();
    }
    engine::write_safetensors(dir / name, w, {{"format", "pt"}});
  }
  if (n > 1) write_json(dir / "model.safetensors.index.json", json{{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}});
}

void write_tiny_gguf(const fs::path& path, const TinyShape& s, uint32_t seed) {
  std::mt19937 rng(seed);
  struct T {
    std::string name;
    std::vector<uint64_t> ne;  // ggml order
    std::vector<float> data;
  };
  std::vector<T> tensors;
  const auto H = static_cast<uint64_t>(s.hidden), V = static_cast<uint64_t>(s.vocab),
             I = static_cast<uint64_t>(s.intermediate), Q = static_cast<uint64_t>(s.n_heads * s.head_dim),
             KV = static_cast<uint64_t>(s.n_kv_heads * s.head_dim);
  auto add = [&](const std::string& name, std::vector<uint64_t> ne, float scale) {
    size_t n = 1;
    for (auto d : ne) n *= d;
    tensors.push_back(T{name, ne, scale == 0 ? std::vector<float>(n, 1.0f) : random_floats(rng, n, scale)});
  };
  add("token_embd.weight", {H, V}, 0.02f);
  add("output_norm.weight", {H}, 0);
  add("output.weight", {H, V}, 0.02f);
  for (int64_t i = 0; i < s.n_layers; ++i) {
    const std::string p = "blk." + std::to_string(i) + ".";
    add(p + "attn_norm.weight", {H}, 0);
    add(p + "attn_q.weight", {H, Q}, 0.05f);
    add(p + "attn_k.weight", {H, KV}, 0.05f);
    add(p + "attn_v.weight", {H, KV}, 0.05f);
    add(p + "attn_output.weight", {Q, H}, 0.05f);
    add(p + "ffn_norm.weight", {H}, 0);
    add(p + "ffn_gate.weight", {H, I}, 0.05f);
    add(p + "ffn_up.weight", {H, I}, 0.05f);
    add(p + "ffn_down.weight", {I, H}, 0.05f);
  }
  const std::vector<std::string> vocab = tiny_pieces(s.vocab);

  GgufBytes g;
  g.u32(0x46554747);  // "GGUF"
  g.u32(3);
  g.u64(tensors.size());
  g.u64(17);
  g.kv_str("general.architecture", "llama");
  g.kv_str("general.name", "tiny");
  g.kv_u32("llama.block_count", static_cast<uint32_t>(s.n_layers));
  g.kv_u32("llama.context_length", static_cast<uint32_t>(s.context));
  g.kv_u32("llama.embedding_length", static_cast<uint32_t>(s.hidden));
  g.kv_u32("llama.feed_forward_length", static_cast<uint32_t>(s.intermediate));
  g.kv_u32("llama.attention.head_count", static_cast<uint32_t>(s.n_heads));
  g.kv_u32("llama.attention.head_count_kv", static_cast<uint32_t>(s.n_kv_heads));
  g.kv_f32("llama.rope.freq_base", 10000.0f);
  g.kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5f);
  g.kv_str("tokenizer.ggml.model", "gpt2");
  g.kv_str("tokenizer.ggml.pre", "default");
  g.kv_str_array("tokenizer.ggml.tokens", vocab);
  g.kv_str_array("tokenizer.ggml.merges", kTinyMerges);
  std::vector<int32_t> types(vocab.size(), 1);  // normal
  types[kTinyBos] = types[kTinyEos] = 3;         // control
  g.kv_i32_array("tokenizer.ggml.token_type", types);
  g.kv_u32("tokenizer.ggml.bos_token_id", static_cast<uint32_t>(kTinyBos));
  g.kv_u32("tokenizer.ggml.eos_token_id", static_cast<uint32_t>(kTinyEos));
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    g.str(t.name);
    g.u32(static_cast<uint32_t>(t.ne.size()));
    for (auto d : t.ne) g.u64(d);
    g.u32(0);  // F32
    g.u64(offset);
    offset += t.data.size() * 4;
    offset = (offset + 31) / 32 * 32;
  }
  g.pad(32);
  for (const auto& t : tensors) {
    g.raw(t.data.data(), t.data.size() * 4);
    g.pad(32);
  }
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(g.b.data()), static_cast<std::streamsize>(g.b.size()));
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

}  // namespace gptqd::test
