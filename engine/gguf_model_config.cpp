// SPDX-License-Identifier: Apache-2.0
// ModelConfig::from_gguf: the decoder shape and variant flags from GGUF metadata and the tensor
// list (engine layer). Ranges and consistency are checked by ModelConfig::validate.
#include <cstdint>
#include <limits>
#include <string>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/model_config.h"

namespace gptqd::engine {
namespace {

int64_t to_int64(const GgufFile& gguf, const std::string& key, uint64_t v) {
  if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    fail(ErrorCode::invalid_model, gguf.name(), ": metadata key '", key, "' = ", v, " is out of range");
  }
  return static_cast<int64_t>(v);
}

int64_t get_int(const GgufFile& gguf, const std::string& key) { return to_int64(gguf, key, gguf.get_uint(key)); }

int64_t get_int_or(const GgufFile& gguf, const std::string& key, int64_t fallback) {
  const auto v = gguf.get_uint_opt(key);
  return v ? to_int64(gguf, key, *v) : fallback;
}

}  // namespace

ModelConfig ModelConfig::from_gguf(const GgufFile& gguf) {
  const std::string arch = gguf.get_string("general.architecture");
  if (arch != "llama" && arch != "mistral" && arch != "qwen2") {
    fail(ErrorCode::unsupported, "unsupported architecture '", arch, "' in ", gguf.name(),
         "; gptqd runs llama, mistral and qwen2 models");
  }
  auto key = [&arch](const char* suffix) { return arch + "." + suffix; };

  ModelConfig cfg;
  cfg.architecture = arch;
  cfg.n_layers = get_int(gguf, key("block_count"));
  cfg.max_position_embeddings = get_int(gguf, key("context_length"));
  cfg.hidden_size = get_int(gguf, key("embedding_length"));
  cfg.intermediate_size = get_int(gguf, key("feed_forward_length"));
  cfg.n_heads = get_int(gguf, key("attention.head_count"));
  cfg.n_kv_heads = get_int_or(gguf, key("attention.head_count_kv"), cfg.n_heads);
  cfg.rms_norm_eps = gguf.get_float(key("attention.layer_norm_rms_epsilon"));
  cfg.rope_theta = gguf.get_float_opt(key("rope.freq_base")).value_or(10000.0);
  cfg.head_dim = get_int_or(gguf, key("attention.key_length"), cfg.n_heads > 0 ? cfg.hidden_size / cfg.n_heads : 0);
  if (const auto value_length = gguf.get_uint_opt(key("attention.value_length"));
      value_length && *value_length != static_cast<uint64_t>(cfg.head_dim)) {
    fail(ErrorCode::unsupported, gguf.name(), ": '", key("attention.value_length"), "' = ", *value_length,
         " differs from the key head size ", cfg.head_dim, "; gptqd needs equal key and value head sizes");
  }

  if (const auto vocab = gguf.get_uint_opt(key("vocab_size"))) {
    cfg.vocab_size = to_int64(gguf, key("vocab_size"), *vocab);
  } else if (const GgufValue* tokens = gguf.find("tokenizer.ggml.tokens");
             tokens != nullptr && tokens->type == GgufValueType::array) {
    cfg.vocab_size = static_cast<int64_t>(std::get<std::vector<GgufValue>>(tokens->value).size());
  } else {
    fail(ErrorCode::invalid_model, gguf.name(), ": missing metadata key '", key("vocab_size"),
         "' (and no 'tokenizer.ggml.tokens' array to count the vocabulary from)");
  }

  const std::string scaling = gguf.get_string_opt(key("rope.scaling.type")).value_or("none");
  if (scaling == "linear") {
    cfg.rope_scaling.type = RopeScalingType::linear;
    cfg.rope_scaling.factor = gguf.get_float(key("rope.scaling.factor"));
  } else if (scaling != "none") {
    fail(ErrorCode::unsupported, gguf.name(), ": rope scaling type '", scaling, "' (", key("rope.scaling.type"),
         ") is not supported; gptqd supports none and linear for GGUF models");
  } else if (const auto scale_linear = gguf.get_float_opt(key("rope.scale_linear")); scale_linear && *scale_linear != 1.0) {
    // Older converters wrote linear scaling as this single key.
    cfg.rope_scaling.type = RopeScalingType::linear;
    cfg.rope_scaling.factor = *scale_linear;
  }
  // TODO(engine): Llama 3.1+ GGUFs carry llama3 rope scaling only as the precomputed per-dimension
  // divisors in the `rope_freqs.weight` tensor; factor/low/high/original_max cannot be recovered
  // exactly from it, so the type stays `none` here and the engine must apply that tensor.

  cfg.tie_word_embeddings = gguf.find_tensor("output.weight") == nullptr;
  cfg.attention_bias = gguf.find_tensor("blk.0.attn_q.bias") != nullptr;

  if (const auto bos = gguf.get_uint_opt("tokenizer.ggml.bos_token_id")) {
    cfg.bos_token_id = to_int64(gguf, "tokenizer.ggml.bos_token_id", *bos);
  }
  if (const auto eos = gguf.get_uint_opt("tokenizer.ggml.eos_token_id")) {
    cfg.eos_token_ids.push_back(to_int64(gguf, "tokenizer.ggml.eos_token_id", *eos));
  }
  // End-of-turn ends generation too (Llama 3 instruct: <|eot_id|>), as llama.cpp does.
  if (const auto eot = gguf.get_uint_opt("tokenizer.ggml.eot_token_id")) {
    const int64_t id = to_int64(gguf, "tokenizer.ggml.eot_token_id", *eot);
    if (cfg.eos_token_ids.empty() || cfg.eos_token_ids.front() != id) cfg.eos_token_ids.push_back(id);
  }
  cfg.torch_dtype = "";

  cfg.validate(gguf.name());
  return cfg;
}

}  // namespace gptqd::engine
