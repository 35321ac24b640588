// SPDX-License-Identifier: Apache-2.0
// ModelConfig::from_hf_json over real config.json texts and every bad-input rule (engine tests).
#include "engine/model_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>

#include "engine/error.h"
#include "engine/json_strict.h"
#include "tests/support/test_env.h"

namespace gptqd::engine {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;

// Verbatim from the Hugging Face repos (TinyLlama/TinyLlama-1.1B-Chat-v1.0,
// meta-llama/Llama-3.1-8B-Instruct, mistralai/Mistral-7B-v0.1, Qwen/Qwen2-0.5B-Instruct,
// HuggingFaceTB/SmolLM2-135M-Instruct).
const char* kTinyLlama = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "bos_token_id": 1, "eos_token_id": 2,
  "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 5632,
  "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 22, "num_key_value_heads": 4, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": null, "rope_theta": 10000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.35.0", "use_cache": true, "vocab_size": 32000})";

const char* kLlama31 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "pretraining_tp": 1, "rms_norm_eps": 1e-05,
  "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "rope_theta": 500000.0, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.43.0.dev0", "use_cache": true, "vocab_size": 128256})";

const char* kMistral = R"({
  "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
  "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
  "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
  "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
  "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16",
  "transformers_version": "4.34.0.dev0", "use_cache": true, "vocab_size": 32000})";

const char* kQwen2 = R"({
  "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
  "eos_token_id": 151645, "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02,
  "intermediate_size": 4864, "max_position_embeddings": 32768, "max_window_layers": 24,
  "model_type": "qwen2", "num_attention_heads": 14, "num_hidden_layers": 24, "num_key_value_heads": 2,
  "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "tie_word_embeddings": true,
  "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true,
  "use_sliding_window": false, "vocab_size": 151936})";

const char* kSmolLM2 = R"({
  "architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
  "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576,
  "initializer_range": 0.041666666666666664, "intermediate_size": 1536, "is_llama_config": true,
  "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama", "num_attention_heads": 9,
  "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "pretraining_tp": 1,
  "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000,
  "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.42.3",
  "transformers.js_config": {"kv_cache_dtype": {"q4f16": "float16", "fp16": "float16"}},
  "use_cache": true, "vocab_size": 49152})";

json parsed(const char* text) { return parse_json_strict(text, "config.json"); }

ModelConfig from(const json& j) { return ModelConfig::from_hf_json(j, "config.json"); }

std::string error_of(const json& j, ErrorCode code = ErrorCode::invalid_model) {
  try {
    from(j);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << j.dump();
  return {};
}

// `base` with `key` set to the JSON `value_text` (or removed when value_text is empty).
json with(const char* base, const std::string& key, const std::string& value_text) {
  json j = parsed(base);
  if (value_text.empty()) {
    j.erase(key);
  } else {
    j[key] = json::parse(value_text);
  }
  return j;
}

TEST(ModelConfigHf, TinyLlama) {
  ModelConfig c = from(parsed(kTinyLlama));
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.vocab_size, 32000);
  EXPECT_EQ(c.hidden_size, 2048);
  EXPECT_EQ(c.intermediate_size, 5632);
  EXPECT_EQ(c.n_layers, 22);
  EXPECT_EQ(c.n_heads, 32);
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-5);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::none);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.sliding_window, 0);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_EQ(c.torch_dtype, "bfloat16");
}

TEST(ModelConfigHf, Llama31WithLlama3RopeScaling) {
  ModelConfig c = from(parsed(kLlama31));
  EXPECT_EQ(c.vocab_size, 128256);
  EXPECT_EQ(c.n_kv_heads, 8);
  EXPECT_EQ(c.head_dim, 128);
  EXPECT_EQ(c.max_position_embeddings, 131072);
  EXPECT_DOUBLE_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::llama3);
  EXPECT_DOUBLE_EQ(c.rope_scaling.factor, 8.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.low_freq_factor, 1.0);
  EXPECT_DOUBLE_EQ(c.rope_scaling.high_freq_factor, 4.0);
  EXPECT_EQ(c.rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_EQ(c.bos_token_id, 128000);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{128001, 128008, 128009}));
}

TEST(ModelConfigHf, MistralKeepsItsSlidingWindow) {
  ModelConfig c = from(parsed(kMistral));
  EXPECT_EQ(c.architecture, "mistral");
  EXPECT_EQ(c.sliding_window, 4096);
  EXPECT_EQ(c.n_kv_heads, 8);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(from(with(kMistral, "sliding_window", "null")).sliding_window, 0);  // Mistral v0.2+
}

TEST(ModelConfigHf, Qwen2HasQkvBiasAndTiedEmbeddings) {
  ModelConfig c = from(parsed(kQwen2));
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_TRUE(c.attention_bias);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, 1e-6);
  EXPECT_DOUBLE_EQ(c.rope_theta, 1e6);
  EXPECT_EQ(c.sliding_window, 0);  // use_sliding_window: false
  EXPECT_EQ(from(with(kQwen2, "use_sliding_window", "true")).sliding_window, 32768);
}

TEST(ModelConfigHf, SmolLM2) {
  ModelConfig c = from(parsed(kSmolLM2));
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_DOUBLE_EQ(c.rope_theta, 100000.0);  // an integer in the file
  EXPECT_TRUE(c.tie_word_embeddings);
}

TEST(ModelConfigHf, RealGptqCheckpointConfigs) {
  const auto dir = test::shared_data_dir() / "gptq-configs";
  GPTQD_REQUIRE_FILE(dir / "TheBloke-Genz-70b-GPTQ" / "config.json");
  ModelConfig llama2 =
      from(parse_json_strict(test::read_file(dir / "TheBloke-Llama-2-13B-chat-GPTQ" / "config.json"), "config.json"));
  EXPECT_EQ(llama2.hidden_size, 5120);
  EXPECT_EQ(llama2.n_layers, 40);
  EXPECT_EQ(llama2.n_kv_heads, 40);
  EXPECT_EQ(llama2.torch_dtype, "float16");
  ModelConfig genz =
      from(parse_json_strict(test::read_file(dir / "TheBloke-Genz-70b-GPTQ" / "config.json"), "config.json"));
  EXPECT_EQ(genz.n_layers, 80);
  EXPECT_EQ(genz.n_heads, 64);
  EXPECT_EQ(genz.n_kv_heads, 8);
  EXPECT_EQ(genz.intermediate_size, 28672);
  // Qwen-VL is remote code ("qwen"): named, and its auto_map is never followed.
  json qwen_vl = parse_json_strict(test::read_file(dir / "Qwen-VL-Chat-Int4" / "config.json"), "config.json");
  std::string msg = error_of(qwen_vl, ErrorCode::unsupported);
  EXPECT_THAT(msg, HasSubstr("model_type \"qwen\""));
  EXPECT_THAT(msg, HasSubstr("llama, mistral, qwen2"));
}

TEST(ModelConfigHf, DefaultsWhenOptionalKeysAreAbsent) {
  json j = parsed(kTinyLlama);
  for (const char* key : {"num_key_value_heads", "rope_theta", "rope_scaling", "tie_word_embeddings",
                          "attention_bias", "bos_token_id", "eos_token_id", "torch_dtype", "hidden_act"}) {
    j.erase(key);
  }
  ModelConfig c = from(j);
  EXPECT_EQ(c.n_kv_heads, 32);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_DOUBLE_EQ(c.rope_theta, 10000.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, -1);
  EXPECT_TRUE(c.eos_token_ids.empty());
  EXPECT_EQ(c.torch_dtype, "");
}

TEST(ModelConfigHf, ExplicitHeadDim) {
  // Mistral-Nemo style: hidden 5120, 32 heads, head_dim 128 (not 160).
  json j = parsed(kMistral);
  j["hidden_size"] = 5120;
  j["head_dim"] = 128;
  EXPECT_EQ(from(j).head_dim, 128);
  j.erase("head_dim");
  j["num_attention_heads"] = 48;
  j["num_key_value_heads"] = 8;
  EXPECT_THAT(error_of(j), HasSubstr("not a multiple of num_attention_heads 48"));
}

TEST(ModelConfigHf, NewerTransformersDtypeKey) {
  json j = with(kTinyLlama, "torch_dtype", "");
  j["dtype"] = "float16";
  EXPECT_EQ(from(j).torch_dtype, "float16");
}

TEST(ModelConfigHf, RemoteCodeKeysAreIgnored) {
  json j = parsed(kTinyLlama);
  j["auto_map"] = {{"AutoModelForCausalLM", "modeling_evil.Model"}};
  j["trust_remote_code"] = true;
  EXPECT_EQ(from(j).hidden_size, 2048);
}

TEST(ModelConfigHf, UnsupportedModelTypeIsNamed) {
  for (const char* type : {"gemma", "phi3", "LLAMA"}) {
    std::string msg = error_of(with(kTinyLlama, "model_type", cat("\"", type, "\"")), ErrorCode::unsupported);
    EXPECT_THAT(msg, HasSubstr(cat("model_type \"", type, "\" is not supported")));
    EXPECT_THAT(msg, HasSubstr("supported: llama, mistral, qwen2"));
  }
}

TEST(ModelConfigHf, EachMissingRequiredKeyIsNamed) {
  for (const char* key : {"model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                          "num_attention_heads", "max_position_embeddings", "rms_norm_eps"}) {
    std::string msg = error_of(with(kTinyLlama, key, ""));
    EXPECT_THAT(msg, HasSubstr("config.json"));
    EXPECT_THAT(msg, HasSubstr(cat("missing required key \"", key, "\"")));
    EXPECT_THAT(error_of(with(kTinyLlama, key, "null")), HasSubstr(cat("\"", key, "\"")));
  }
}

TEST(ModelConfigHf, WrongTypesNameKeyExpectedAndActual) {
  std::string msg = error_of(with(kTinyLlama, "hidden_size", "\"2048\""));
  EXPECT_THAT(msg, HasSubstr("config.json: hidden_size: expected a positive integer, found string \"2048\""));
  EXPECT_THAT(error_of(with(kTinyLlama, "hidden_size", "2048.0")), HasSubstr("found number 2048.0"));
  EXPECT_THAT(error_of(with(kTinyLlama, "hidden_size", "-2048")), HasSubstr("found integer -2048"));
  EXPECT_THAT(error_of(with(kTinyLlama, "num_hidden_layers", "0")),
              HasSubstr("num_hidden_layers: expected a positive"));
  EXPECT_THAT(error_of(with(kTinyLlama, "vocab_size", "true")), HasSubstr("found boolean true"));
  EXPECT_THAT(error_of(with(kTinyLlama, "vocab_size", "1e20")), HasSubstr("vocab_size: expected a positive integer"));
  EXPECT_THAT(error_of(with(kTinyLlama, "hidden_size", "9223372036854775808")), HasSubstr("hidden_size: expected"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rms_norm_eps", "\"1e-5\"")), HasSubstr("rms_norm_eps: expected a number"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_theta", "[10000]")), HasSubstr("rope_theta: expected a number"));
  EXPECT_THAT(error_of(with(kTinyLlama, "tie_word_embeddings", "\"false\"")),
              HasSubstr("tie_word_embeddings: expected a boolean"));
  EXPECT_THAT(error_of(with(kTinyLlama, "model_type", "[\"llama\"]")), HasSubstr("model_type: expected a string"));
  EXPECT_THAT(error_of(with(kTinyLlama, "eos_token_id", "\"</s>\"")), HasSubstr("eos_token_id: expected"));
  EXPECT_THAT(error_of(with(kTinyLlama, "eos_token_id", "[2, -1]")), HasSubstr("eos_token_id: expected"));
  EXPECT_THAT(error_of(with(kTinyLlama, "bos_token_id", "1.5")), HasSubstr("bos_token_id: expected"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_scaling", "\"llama3\"")), HasSubstr("rope_scaling: expected an object"));
  EXPECT_THAT(error_of(parsed("[1, 2]")), HasSubstr("expected a JSON object"));
}

TEST(ModelConfigHf, HeadsMustDivideByKvHeads) {
  std::string msg = error_of(with(kTinyLlama, "num_key_value_heads", "5"));
  EXPECT_THAT(msg, HasSubstr("num_attention_heads 32 is not a multiple of num_key_value_heads 5"));
  EXPECT_THAT(error_of(with(kTinyLlama, "num_key_value_heads", "64")), HasSubstr("num_key_value_heads = 64"));
}

TEST(ModelConfigHf, AbsurdSizesHitTheCaps) {
  EXPECT_THAT(error_of(with(kTinyLlama, "hidden_size", "2147483648")), HasSubstr("hidden_size = 2147483648"));
  EXPECT_THAT(error_of(with(kTinyLlama, "num_hidden_layers", "1000000000")), HasSubstr("num_hidden_layers"));
  EXPECT_THAT(error_of(with(kTinyLlama, "vocab_size", "1099511627776")), HasSubstr("vocab_size"));
  EXPECT_THAT(error_of(with(kTinyLlama, "intermediate_size", "4611686018427387904")), HasSubstr("intermediate_size"));
  EXPECT_THAT(error_of(with(kTinyLlama, "max_position_embeddings", "1099511627776")),
              HasSubstr("max_position_embeddings"));
  EXPECT_THAT(error_of(with(kTinyLlama, "num_attention_heads", "4096")), HasSubstr("num_attention_heads"));
  json wide = with(kTinyLlama, "head_dim", "2048");  // 1024 heads * 2048 > the hidden-size cap
  wide["num_attention_heads"] = 1024;
  EXPECT_THAT(error_of(wide), HasSubstr("num_attention_heads * head_dim"));
  EXPECT_THAT(error_of(with(kTinyLlama, "head_dim", "63")), HasSubstr("must be even"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rms_norm_eps", "0")), HasSubstr("rms_norm_eps"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rms_norm_eps", "-1e-5")), HasSubstr("rms_norm_eps"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_theta", "-10000")), HasSubstr("rope_theta"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_theta", "0")), HasSubstr("rope_theta"));
  EXPECT_THAT(error_of(with(kTinyLlama, "eos_token_id", "32000")), HasSubstr("outside the vocabulary"));
  EXPECT_THAT(error_of(with(kTinyLlama, "bos_token_id", "99999")), HasSubstr("outside the vocabulary"));
}

TEST(ModelConfigHf, RopeScalingVariants) {
  ModelConfig linear = from(with(kTinyLlama, "rope_scaling", R"({"type": "linear", "factor": 4.0})"));
  EXPECT_EQ(linear.rope_scaling.type, RopeScalingType::linear);
  EXPECT_DOUBLE_EQ(linear.rope_scaling.factor, 4.0);
  EXPECT_EQ(from(with(kTinyLlama, "rope_scaling", R"({"rope_type": "linear", "factor": 2})")).rope_scaling.factor,
            2.0);
  EXPECT_EQ(from(with(kTinyLlama, "rope_scaling", R"({"rope_type": "default"})")).rope_scaling.type,
            RopeScalingType::none);
  for (const char* type : {"dynamic", "yarn", "longrope"}) {
    std::string msg = error_of(with(kTinyLlama, "rope_scaling", cat(R"({"type": ")", type, R"(", "factor": 2.0})")),
                               ErrorCode::unsupported);
    EXPECT_THAT(msg, HasSubstr(cat("rope_scaling type \"", type, "\" is not supported")));
  }
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_scaling", R"({"type": "linear"})")),
              HasSubstr("missing required key \"rope_scaling.factor\""));
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_scaling", R"({"type": "linear", "factor": 0})")),
              HasSubstr("rope_scaling.factor"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_scaling", R"({"factor": 2.0})")), HasSubstr("rope_type"));
  EXPECT_THAT(error_of(with(kTinyLlama, "rope_scaling", R"({"type": "linear", "rope_type": "llama3", "factor": 2})")),
              HasSubstr("disagrees"));

  json l3 = parsed(kLlama31);
  l3["rope_scaling"].erase("low_freq_factor");
  EXPECT_THAT(error_of(l3), HasSubstr("missing required key \"rope_scaling.low_freq_factor\""));
  l3 = parsed(kLlama31);
  l3["rope_scaling"]["high_freq_factor"] = 1.0;
  EXPECT_THAT(error_of(l3), HasSubstr("low < high"));
  l3 = parsed(kLlama31);
  l3["rope_scaling"]["original_max_position_embeddings"] = "8192";
  EXPECT_THAT(error_of(l3), HasSubstr("rope_scaling.original_max_position_embeddings: expected a positive integer"));
}

TEST(ModelConfigHf, UnsupportedVariantsAreNamed) {
  EXPECT_THAT(error_of(with(kTinyLlama, "hidden_act", "\"gelu\""), ErrorCode::unsupported),
              HasSubstr("hidden_act \"gelu\""));
  EXPECT_THAT(error_of(with(kTinyLlama, "attention_bias", "true"), ErrorCode::unsupported),
              HasSubstr("attention_bias"));
  EXPECT_THAT(error_of(with(kTinyLlama, "mlp_bias", "true"), ErrorCode::unsupported), HasSubstr("mlp_bias"));
  EXPECT_THAT(error_of(with(kTinyLlama, "torch_dtype", "\"int8\"")),
              HasSubstr("torch_dtype: expected one of float16, bfloat16, float32, found \"int8\""));
}

TEST(ModelConfigHf, ValidateRejectsADefaultConfig) {
  ModelConfig c;
  try {
    c.validate("model.gguf");
    ADD_FAILURE() << "accepted an empty config";
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("model.gguf"));
  }
  c = from(parsed(kTinyLlama));
  EXPECT_NO_THROW(c.validate("config.json"));
  c.n_kv_heads = 0;
  EXPECT_THROW(c.validate("config.json"), Error);
}

TEST(ModelConfigHf, ToJsonHasEveryField) {
  json j = from(parsed(kLlama31)).to_json();
  for (const char* key : {"architecture", "vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads",
                          "n_kv_heads", "head_dim", "max_position_embeddings", "rms_norm_eps", "rope_theta",
                          "rope_scaling", "tie_word_embeddings", "attention_bias", "sliding_window", "bos_token_id",
                          "eos_token_ids", "torch_dtype"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["n_kv_heads"], 8);
  EXPECT_EQ(j["rope_scaling"]["type"], "llama3");
  EXPECT_EQ(j["rope_scaling"]["original_max_position_embeddings"], 8192);
  EXPECT_EQ(j["eos_token_ids"], json({128001, 128008, 128009}));
  EXPECT_TRUE(from(parsed(kTinyLlama)).to_json()["rope_scaling"].is_null());
}

}  // namespace
}  // namespace gptqd::engine
