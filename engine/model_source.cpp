// SPDX-License-Identifier: Apache-2.0
// Model sources: file selection, config and tensor-schema validation of GGUF files and HF
// folders (engine layer).
#include "engine/model_source.h"

#include <algorithm>
#include <array>
#include <cctype>
#include <map>
#include <set>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/json_strict.h"
#include "engine/mapped_file.h"
#include "engine/safetensors.h"

namespace gptqd::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t kMaxConfigJsonBytes = 16ull << 20;     // config.json and friends
constexpr uint64_t kMaxTokenizerJsonBytes = 64ull << 20;  // tokenizer.json (Qwen2's is ~7 MB)

// Files of an HF folder gptqd stores; everything else (pickles, ONNX, images) is left behind.
const std::set<std::string, std::less<>> kHfSideFiles = {
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer.model",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "quantize_config.json", "chat_template.jinja", "chat_template.json",
    "model.safetensors.index.json", "README.md", "LICENSE", "LICENSE.txt", "LICENSE.md", "NOTICE",
};
const std::set<std::string, std::less<>> kJsonFiles = {
    "config.json", "generation_config.json", "tokenizer_config.json", "special_tokens_map.json",
    "added_tokens.json", "vocab.json", "quantize_config.json", "chat_template.json",
    "model.safetensors.index.json",
};

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}


std::string shape_str(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

std::string ne_str(const std::vector<uint64_t>& ne) {
  std::string s = "[";
  for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
  return s + "]";
}

// n_heads * head_dim etc., with the product range already guaranteed by ModelConfig::validate.
int64_t q_dim(const ModelConfig& c) { return c.n_heads * c.head_dim; }
int64_t kv_dim(const ModelConfig& c) { return c.n_kv_heads * c.head_dim; }

json read_json_file(const SourceFile& f, uint64_t max_bytes) {
  if (f.size_bytes > max_bytes) {
    fail(ErrorCode::invalid_model, f.name, " is ", f.size_bytes, " bytes; the limit for this file is ",
         max_bytes, " bytes");
  }
  auto mapped = MappedFile::open(f.path);
  auto bytes = mapped->bytes();
  std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  try {
    return parse_json_strict(text, f.name);
  } catch (const Error& e) {
    throw Error(ErrorCode::invalid_model, e.what());
  }
}

// ---- GGUF ----------------------------------------------------------------------------------

std::string gguf_file_type_name(const GgufFile& g) {
  // llama_ftype values written by llama.cpp's quantize tool.
  static const std::map<uint64_t, const char*> kFileTypes = {
      {0, "F32"},    {1, "F16"},     {2, "Q4_0"},    {3, "Q4_1"},    {7, "Q8_0"},
      {8, "Q5_0"},   {9, "Q5_1"},    {10, "Q2_K"},   {11, "Q3_K_S"}, {12, "Q3_K_M"},
      {13, "Q3_K_L"}, {14, "Q4_K_S"}, {15, "Q4_K_M"}, {16, "Q5_K_S"}, {17, "Q5_K_M"},
      {18, "Q6_K"},  {32, "BF16"},
  };
  if (auto ft = g.get_uint_opt("general.file_type")) {
    if (auto it = kFileTypes.find(*ft); it != kFileTypes.end()) return it->second;
  }
  // Otherwise the type holding the most bytes.
  std::map<uint32_t, uint64_t> bytes_by_type;
  for (const auto& t : g.tensors()) bytes_by_type[t.type] += t.n_bytes;
  uint32_t best = 0;
  uint64_t best_bytes = 0;
  for (auto [type, n] : bytes_by_type) {
    if (n > best_bytes) best = type, best_bytes = n;
  }
  const auto* traits = kernels::cpu::ggml_type_traits(best);
  return traits ? traits->name : "unknown";
}

void expect_gguf_tensor(const GgufFile& g, const std::string& name, std::vector<uint64_t> ne) {
  const GgufTensorInfo* t = g.find_tensor(name);
  if (!t) fail(ErrorCode::invalid_model, g.name(), ": tensor '", name, "' is missing (expected shape ", ne_str(ne), ")");
  if (t->ne != ne) {
    fail(ErrorCode::invalid_model, g.name(), ": tensor '", name, "': expected shape ", ne_str(ne), ", found ",
         ne_str(t->ne));
  }
  const auto* traits = kernels::cpu::ggml_type_traits(t->type);
  if (!traits || !traits->can_dequantize) {
    fail(ErrorCode::unsupported, g.name(), ": tensor '", name, "' has type ", traits ? traits->name : "unknown",
         ", which gptqd cannot load yet");
  }
}

ModelInfo inspect_gguf(std::vector<SourceFile> files) {
  const SourceFile& f = files.front();
  GgufFile g = GgufFile::open(f.path.string());
  ModelInfo info;
  info.format = ModelFormat::gguf;
  info.config = ModelConfig::from_gguf(g);
  const ModelConfig& c = info.config;
  const auto H = static_cast<uint64_t>(c.hidden_size), V = static_cast<uint64_t>(c.vocab_size),
             I = static_cast<uint64_t>(c.intermediate_size), Q = static_cast<uint64_t>(q_dim(c)),
             KV = static_cast<uint64_t>(kv_dim(c));
  expect_gguf_tensor(g, "token_embd.weight", {H, V});
  expect_gguf_tensor(g, "output_norm.weight", {H});
  if (!c.tie_word_embeddings) expect_gguf_tensor(g, "output.weight", {H, V});
  for (int64_t i = 0; i < c.n_layers; ++i) {
    const std::string p = cat("blk.", i, ".");
    expect_gguf_tensor(g, p + "attn_norm.weight", {H});
    expect_gguf_tensor(g, p + "attn_q.weight", {H, Q});
    expect_gguf_tensor(g, p + "attn_k.weight", {H, KV});
    expect_gguf_tensor(g, p + "attn_v.weight", {H, KV});
    expect_gguf_tensor(g, p + "attn_output.weight", {Q, H});
    expect_gguf_tensor(g, p + "ffn_norm.weight", {H});
    expect_gguf_tensor(g, p + "ffn_gate.weight", {H, I});
    expect_gguf_tensor(g, p + "ffn_up.weight", {H, I});
    expect_gguf_tensor(g, p + "ffn_down.weight", {I, H});
    if (c.attention_bias) {
      expect_gguf_tensor(g, p + "attn_q.bias", {Q});
      expect_gguf_tensor(g, p + "attn_k.bias", {KV});
      expect_gguf_tensor(g, p + "attn_v.bias", {KV});
    }
  }
  for (const auto& t : g.tensors()) info.n_params += t.n_elements;
  info.dtype = gguf_file_type_name(g);
  info.files = std::move(files);
  return info;
}

// ---- HF folders (safetensors, optionally GPTQ) ----------------------------------------------

struct HfChecker {
  const SafetensorsSet& set;
  const ModelConfig& c;
  const std::optional<GptqConfig>& gptq;
  std::set<std::string> quantized_prefixes;  // linears stored GPTQ-packed

  void dense(const std::string& name, std::vector<int64_t> shape) const {
    const StTensor* t = set.find(name);
    if (!t) fail(ErrorCode::invalid_model, "tensor ", name, " is missing (expected shape ", shape_str(shape), ")");
    if (t->dtype != StDtype::F16 && t->dtype != StDtype::BF16 && t->dtype != StDtype::F32) {
      fail(ErrorCode::unsupported, "tensor ", name, " has dtype ", to_string(t->dtype),
           "; gptqd loads F16, BF16 and F32 weights");
    }
    if (t->shape != shape) {
      fail(ErrorCode::invalid_model, "tensor ", name, ": expected shape ", shape_str(shape), ", found ",
           shape_str(t->shape));
    }
  }

  // A linear y = x W^T with W [out, in]: dense `.weight`, or GPTQ-packed when a qweight exists.
  void linear(const std::string& prefix, int64_t in, int64_t out, bool has_bias) {
    if (gptq && set.find(prefix + ".qweight")) {
      TensorMetaLookup lookup = [this](const std::string& n) -> std::optional<TensorMeta> {
        const StTensor* t = set.find(n);
        if (!t) return std::nullopt;
        return TensorMeta{std::string(to_string(t->dtype)), t->shape};
      };
      check_gptq_linear(*gptq, prefix, in, out, has_bias, lookup);
      quantized_prefixes.insert(prefix);
      return;
    }
    dense(prefix + ".weight", {out, in});
    if (has_bias) dense(prefix + ".bias", {out});
  }

  void check_all() {
    const int64_t H = c.hidden_size, V = c.vocab_size, I = c.intermediate_size;
    dense("model.embed_tokens.weight", {V, H});
    dense("model.norm.weight", {H});
    if (!c.tie_word_embeddings) dense("lm_head.weight", {V, H});
    for (int64_t i = 0; i < c.n_layers; ++i) {
      const std::string p = cat("model.layers.", i, ".");
      dense(p + "input_layernorm.weight", {H});
      dense(p + "post_attention_layernorm.weight", {H});
      linear(p + "self_attn.q_proj", H, q_dim(c), c.attention_bias);
      linear(p + "self_attn.k_proj", H, kv_dim(c), c.attention_bias);
      linear(p + "self_attn.v_proj", H, kv_dim(c), c.attention_bias);
      linear(p + "self_attn.o_proj", q_dim(c), H, false);
      linear(p + "mlp.gate_proj", H, I, false);
      linear(p + "mlp.up_proj", H, I, false);
      linear(p + "mlp.down_proj", I, H, false);
    }
    if (gptq && quantized_prefixes.empty()) {
      fail(ErrorCode::invalid_model, "the config says GPTQ but no linear has a qweight tensor");
    }
  }
};

std::string dense_dtype_label(const SafetensorsSet& set) {
  std::map<StDtype, uint64_t> bytes;
  for (const StTensor* t : set.all()) {
    if (t->dtype == StDtype::F16 || t->dtype == StDtype::BF16 || t->dtype == StDtype::F32) {
      bytes[t->dtype] += t->data_end - t->data_begin;
    }
  }
  StDtype best = StDtype::F32;
  uint64_t best_bytes = 0;
  for (auto [d, n] : bytes) {
    if (n > best_bytes) best = d, best_bytes = n;
  }
  return std::string(to_string(best));
}

ModelInfo inspect_hf(std::vector<SourceFile> files, const std::string& display_name) {
  std::map<std::string, const SourceFile*, std::less<>> by_name;
  for (const auto& f : files) by_name[f.name] = &f;

  auto config_it = by_name.find("config.json");
  if (config_it == by_name.end()) fail(ErrorCode::invalid_model, display_name, ": no config.json");
  if (!by_name.contains("tokenizer.json") && !by_name.contains("tokenizer.model")) {
    fail(ErrorCode::invalid_model, display_name, ": no tokenizer (neither tokenizer.json nor tokenizer.model)");
  }
  // Every JSON side file must at least be well-formed strict JSON.
  json config_json, quantize_json;
  bool has_quantize_json = false;
  for (const auto& f : files) {
    if (kJsonFiles.contains(f.name)) {
      json j = read_json_file(f, kMaxConfigJsonBytes);
      if (!j.is_object()) fail(ErrorCode::invalid_model, f.name, ": expected a JSON object, found ", json_type_name(j));
      if (f.name == "config.json") config_json = std::move(j);
      if (f.name == "quantize_config.json") quantize_json = std::move(j), has_quantize_json = true;
    } else if (f.name == "tokenizer.json") {
      json j = read_json_file(f, kMaxTokenizerJsonBytes);
      if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) {
        fail(ErrorCode::invalid_model, "tokenizer.json: expected an object with a \"model\" object");
      }
    }
  }

  ModelInfo info;
  info.format = ModelFormat::safetensors;
  info.config = ModelConfig::from_hf_json(config_json, "config.json");
  info.gptq = find_gptq_config(config_json, has_quantize_json ? &quantize_json : nullptr);

  FileMap st_files;
  for (const auto& f : files) {
    if (ends_with(f.name, ".safetensors") || f.name == "model.safetensors.index.json") st_files[f.name] = f.path;
  }
  SafetensorsSet set = SafetensorsSet::open(st_files);
  HfChecker checker{set, info.config, info.gptq, {}};
  checker.check_all();

  for (const StTensor* t : set.all()) {
    const std::string& n = t->name;
    auto suffix_of = [&](std::string_view s) { return ends_with(n, s); };
    if (info.gptq && (suffix_of(".qzeros") || suffix_of(".scales") || suffix_of(".g_idx"))) continue;
    if (info.gptq && suffix_of(".qweight")) {
      // qweight [K*bits/32, N] holds K*N codes (3-bit: 32 codes per 3 words, exact).
      info.n_params += t->n_elements * 32 / static_cast<uint64_t>(info.gptq->bits);
      continue;
    }
    info.n_params += t->n_elements;
  }
  if (info.gptq) {
    info.dtype = cat("GPTQ-", info.gptq->bits, "bit");
    if (info.gptq->group_size > 0) info.dtype += cat("-g", info.gptq->group_size);
    if (info.gptq->desc_act) info.dtype += "-act";
  } else {
    info.dtype = dense_dtype_label(set);
  }
  info.files = std::move(files);
  return info;
}


// "SmolLM2-135M-Instruct.Q4_1.gguf" -> "smollm2-135m-instruct": the quantization label is the tag.
std::string name_from_gguf_file(const std::string& file_name) {
  std::string stem = file_name.substr(0, file_name.size() - std::string_view(".gguf").size());
  static const std::array<std::string_view, 24> kLabels = {
      "f32", "f16", "fp16", "bf16", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k_s", "q3_k_m",
      "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k", "q3_k", "q4_k", "q5_k", "iq4_xs", "iq4_nl", "fp32"};
  std::string lower = stem;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char ch) { return std::tolower(ch); });
  for (std::string_view label : kLabels) {
    // "<name><sep><label>" with sep one of . - _ and a non-empty name before it.
    if (lower.size() < label.size() + 2 || !ends_with(lower, label)) continue;
    const size_t sep = lower.size() - label.size() - 1;
    if (lower[sep] == '.' || lower[sep] == '-' || lower[sep] == '_') return sanitize_model_name(stem.substr(0, sep));
  }
  return sanitize_model_name(stem);
}

// An HF cache snapshot ".../models--org--name/snapshots/<commit>" is named after the repo.
std::string name_from_folder(const fs::path& dir) {
  fs::path p = dir;
  if (p.filename().empty()) p = p.parent_path();
  if (p.parent_path().filename() == "snapshots") {
    std::string repo_dir = p.parent_path().parent_path().filename().string();
    if (repo_dir.rfind("models--", 0) == 0) {
      auto pos = repo_dir.rfind("--");
      return sanitize_model_name(repo_dir.substr(pos + 2));
    }
  }
  return sanitize_model_name(p.filename().string());
}

}  // namespace

const char* to_string(ModelFormat f) {
  switch (f) {
    case ModelFormat::safetensors: return "safetensors";
    case ModelFormat::gguf: return "gguf";
  }
  return "unknown";
}

std::string tag_for_dtype(const ModelInfo& info) {
  if (info.gptq) {
    std::string tag = cat("gptq-", info.gptq->bits, "b");
    if (info.gptq->group_size > 0) tag += cat("-g", info.gptq->group_size);
    if (info.gptq->desc_act) tag += "-act";
    return tag;
  }
  if (info.dtype == "F16") return "fp16";
  if (info.dtype == "F32") return "fp32";
  if (info.dtype == "BF16") return "bf16";
  return sanitize_model_name(info.dtype);
}

bool is_hf_side_file(std::string_view name) { return kHfSideFiles.contains(name); }

bool is_pickle_name(std::string_view name) {
  return ends_with(name, ".bin") || ends_with(name, ".pt") || ends_with(name, ".pth") ||
         ends_with(name, ".ckpt") || ends_with(name, ".pkl");
}

std::string sanitize_model_name(std::string_view text) {
  std::string out;
  for (unsigned char ch : text) {
    char c = static_cast<char>(std::tolower(ch));
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
    if (!ok) c = '-';
    if (c == '-' && !out.empty() && out.back() == '-') continue;
    if (c == '.' && !out.empty() && out.back() == '.') continue;
    out.push_back(c);
  }
  while (!out.empty() && (out.front() == '-' || out.front() == '.' || out.front() == '_')) out.erase(out.begin());
  while (!out.empty() && (out.back() == '-' || out.back() == '.' || out.back() == '_')) out.pop_back();
  if (out.size() > 96) out.resize(96);
  return out;
}

ModelInfo inspect_model_files(std::vector<SourceFile> files, const std::string& display_name) {
  if (files.empty()) fail(ErrorCode::invalid_argument, display_name, ": no model files");
  std::sort(files.begin(), files.end(), [](const SourceFile& a, const SourceFile& b) { return a.name < b.name; });
  ModelInfo info;
  if (files.size() == 1 && ends_with(files.front().name, ".gguf")) {
    info = inspect_gguf(std::move(files));
  } else {
    info = inspect_hf(std::move(files), display_name);
  }
  for (const auto& f : info.files) info.size_bytes += f.size_bytes;
  info.suggested_tag = tag_for_dtype(info);
  return info;
}

ModelInfo inspect_model_source(const fs::path& source) {
  std::error_code ec;
  fs::file_status st = fs::status(source, ec);
  if (ec || !fs::exists(st)) fail(ErrorCode::invalid_argument, source.string(), ": no such file or directory");

  std::vector<SourceFile> files;
  std::string suggested;
  if (fs::is_regular_file(st)) {
    std::string name = source.filename().string();
    if (!ends_with(name, ".gguf")) {
      fail(ErrorCode::invalid_argument, source.string(),
           " is not a model: expected a .gguf file or a Hugging Face model folder");
    }
    files.push_back(SourceFile{name, source, fs::file_size(source)});
    suggested = name_from_gguf_file(name);
  } else if (fs::is_directory(st)) {
    bool has_safetensors = false;
    std::vector<std::string> pickles;
    for (const auto& entry : fs::directory_iterator(source)) {
      if (!entry.is_regular_file()) continue;  // follows symlinks (HF cache snapshots)
      std::string name = entry.path().filename().string();
      if (is_pickle_name(name)) pickles.push_back(name);
      bool keep = kHfSideFiles.contains(name) || ends_with(name, ".safetensors");
      if (ends_with(name, ".safetensors")) has_safetensors = true;
      if (keep) files.push_back(SourceFile{name, entry.path(), entry.file_size()});
    }
    if (!has_safetensors && !pickles.empty()) {
      std::sort(pickles.begin(), pickles.end());
      std::string listed;
      for (const auto& p : pickles) listed.append(listed.empty() ? "" : ", ").append(p);
      fail(ErrorCode::unsupported, source.string(), ": only pickle weights (", listed,
           "); gptqd never loads pickles — convert the model to safetensors");
    }
    if (!has_safetensors) {
      fail(ErrorCode::invalid_argument, source.string(),
           " is not a model: no *.safetensors files (expected a Hugging Face model folder or a .gguf file)");
    }
    suggested = name_from_folder(source);
  } else {
    fail(ErrorCode::invalid_argument, source.string(), " is not a regular file or a directory");
  }
  ModelInfo info = inspect_model_files(std::move(files), source.string());
  info.suggested_name = suggested.empty() ? "model" : suggested;
  return info;
}

}  // namespace gptqd::engine
