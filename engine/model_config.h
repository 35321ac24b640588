// SPDX-License-Identifier: Apache-2.0
// ModelConfig: the shape and variant flags of a Llama-family decoder, from HF config.json or from
// GGUF metadata, validated once at the boundary (engine layer). Variants are fields, not classes.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace gptqd::engine {

class GgufFile;

enum class RopeScalingType { none, linear, llama3 };

struct RopeScaling {
  RopeScalingType type = RopeScalingType::none;
  double factor = 1.0;                               // linear and llama3
  double low_freq_factor = 1.0;                      // llama3
  double high_freq_factor = 4.0;                     // llama3
  int64_t original_max_position_embeddings = 8192;   // llama3
};

struct ModelConfig {
  // Family as the source names it: "llama" (Llama 2/3, TinyLlama, SmolLM2), "mistral", "qwen2".
  std::string architecture;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;          // d_model
  int64_t intermediate_size = 0;    // SwiGLU hidden width
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;           // GQA: n_heads % n_kv_heads == 0
  int64_t head_dim = 0;             // usually hidden_size / n_heads, may be set explicitly
  int64_t max_position_embeddings = 0;  // context length the model was trained for
  double rms_norm_eps = 1e-5;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false; // lm_head shares the embedding matrix
  bool attention_bias = false;      // q/k/v projections have a bias (Qwen2)
  int64_t sliding_window = 0;       // Mistral; 0 = none (informational for now)
  int64_t bos_token_id = -1;        // -1 = none
  std::vector<int64_t> eos_token_ids;
  std::string torch_dtype;          // "float16" | "bfloat16" | "float32" | "" when the source has none

  // Reads an HF config.json object. `where` names the file in errors ("config.json").
  // Throws Error(unsupported) naming `model_type` for architectures gptqd does not run, and
  // Error(invalid_model) naming the key for missing or out-of-range fields.
  static ModelConfig from_hf_json(const nlohmann::json& j, std::string_view where);

  // Reads GGUF metadata (`general.architecture`, `<arch>.block_count`, ...). Tie detection needs
  // the tensor list: no `output.weight` tensor means tied embeddings.
  static ModelConfig from_gguf(const GgufFile& gguf);

  // Range and consistency checks with checked arithmetic; both factories call it.
  void validate(std::string_view where) const;

  nlohmann::json to_json() const;
};

}  // namespace gptqd::engine
