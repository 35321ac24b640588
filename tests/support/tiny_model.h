// SPDX-License-Identifier: Apache-2.0
// Deterministic tiny Llama models written to disk for tests (test support): an HF folder
// (dense fp16 or GPTQ 4-bit) and a GGUF file, small enough to import in milliseconds.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

namespace gptqd::test {

// The tiny tokenizer is GPT-2 byte-level BPE: ids 0-255 are the bytes, 256 "<s>" (BOS),
// 257 "</s>" (EOS), 258 "he", 259 "Ġt", 260 "Ġthe", then filler pieces up to `vocab`.
constexpr int64_t kTinyBos = 256;
constexpr int64_t kTinyEos = 257;

struct TinyShape {
  int64_t vocab = 272;
  int64_t hidden = 32;
  int64_t intermediate = 64;
  int64_t n_layers = 2;
  int64_t n_heads = 4;
  int64_t n_kv_heads = 2;
  int64_t head_dim = 8;
  int64_t context = 128;
};

// config.json of the tiny model (model_type llama, fp16).
nlohmann::json tiny_hf_config(const TinyShape& s = {});

// The tokenizer.json text of the tiny model (valid for the `tokenizers` package).
nlohmann::json tiny_tokenizer_json(int64_t vocab);
// GPT-2's byte -> printable code point map, as UTF-8 strings ("Ġ" for ' ').
std::string byte_to_unicode(unsigned char b);

struct TinyHfOptions {
  TinyShape shape;
  std::string family = "llama";  // "qwen2": model_type qwen2 with q/k/v biases
  bool tie_embeddings = false;   // no lm_head.weight; the embeddings are the output layer
  bool llama3_rope = false;      // rope_scaling {"rope_type": "llama3", factor 8, ...}
  bool gptq = false;          // linears as GPTQ, group size 16, symmetric v1 (+ quantize_config.json)
  int gptq_bits = 4;          // 2, 4 or 8
  bool gptq_act_order = false;  // desc_act: g_idx from a random column permutation
  int n_shards = 1;           // > 1: model-0000i-of-0000n.safetensors + index
  uint32_t seed = 1;          // changes the weights (and so the digests)
};

inline TinyHfOptions tiny_gptq_options() {
  TinyHfOptions o;
  o.gptq = true;
  return o;
}
inline TinyHfOptions tiny_sharded_options(int n_shards) {
  TinyHfOptions o;
  o.n_shards = n_shards;
  return o;
}

// Writes config.json, model*.safetensors, tokenizer.json, tokenizer_config.json into `dir`.
void write_tiny_hf_model(const std::filesystem::path& dir, const TinyHfOptions& options = {});

// Writes a tiny llama GGUF v3 (all tensors F32) to `path`.
void write_tiny_gguf(const std::filesystem::path& path, const TinyShape& s = {}, uint32_t seed = 1);

}  // namespace gptqd::test
