// SPDX-License-Identifier: Apache-2.0
// GptqConfig over real AutoGPTQ checkpoint metadata, and the tensor shape rules of a GPTQ linear
// (engine tests). Assets: shared/data/gptq-configs (see its PROVENANCE.md).
#include "engine/gptq_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>

#include "engine/error.h"
#include "engine/json_strict.h"
#include "engine/safetensors.h"
#include "tests/support/test_env.h"

namespace gptqd::engine {
namespace {

using ::testing::HasSubstr;
using nlohmann::json;
namespace fs = std::filesystem;

fs::path configs_dir() { return test::shared_data_dir() / "gptq-configs"; }

json read_json(const fs::path& p) { return parse_json_strict(test::read_file(p), p.filename().string()); }

template <typename F>
std::string error_of(F&& f, ErrorCode code = ErrorCode::invalid_model) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

std::string from_json_error(const std::string& text, ErrorCode code = ErrorCode::invalid_model) {
  return error_of([&] { GptqConfig::from_json(json::parse(text), "quantize_config.json"); }, code);
}

TEST(GptqConfigReal, Llama2Chat13B4BitGroup128) {
  const fs::path dir = configs_dir() / "TheBloke-Llama-2-13B-chat-GPTQ";
  GPTQD_REQUIRE_FILE(dir / "quantize_config.json");
  json config = read_json(dir / "config.json");
  json quantize = read_json(dir / "quantize_config.json");
  std::optional<GptqConfig> c = find_gptq_config(config, &quantize);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->bits, 4);
  EXPECT_EQ(c->group_size, 128);
  EXPECT_FALSE(c->desc_act);
  EXPECT_TRUE(c->sym);
  EXPECT_TRUE(c->true_sequential);
  EXPECT_DOUBLE_EQ(c->damp_percent, 0.01);
  EXPECT_EQ(c->checkpoint_format, "gptq");
  EXPECT_FALSE(c->lm_head);
  EXPECT_EQ(c->n_groups(5120), 40);
  EXPECT_EQ(c->n_groups(13824), 108);
  // Either file alone says the same.
  auto only_config = find_gptq_config(config, nullptr);
  ASSERT_TRUE(only_config);
  EXPECT_EQ(only_config->to_json(), c->to_json());
  auto only_quantize = find_gptq_config(json::object(), &quantize);
  ASSERT_TRUE(only_quantize);
  EXPECT_EQ(only_quantize->to_json(), c->to_json());
}

TEST(GptqConfigReal, Genz70b3BitOneGroupActOrder) {
  const fs::path dir = configs_dir() / "TheBloke-Genz-70b-GPTQ";
  GPTQD_REQUIRE_FILE(dir / "quantize_config.json");
  json config = read_json(dir / "config.json");
  json quantize = read_json(dir / "quantize_config.json");
  std::optional<GptqConfig> c = find_gptq_config(config, &quantize);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->bits, 3);
  EXPECT_EQ(c->group_size, -1);
  EXPECT_TRUE(c->desc_act);
  EXPECT_DOUBLE_EQ(c->damp_percent, 0.1);
  EXPECT_EQ(c->n_groups(8192), 1);
  EXPECT_EQ(c->n_groups(28672), 1);

  // A 70B layer: q_proj 8192 -> 8192, k_proj 8192 -> 1024, down_proj 28672 -> 8192.
  std::map<std::string, TensorMeta> tensors = {
      {"model.layers.0.self_attn.k_proj.qweight", {"I32", {768, 1024}}},
      {"model.layers.0.self_attn.k_proj.qzeros", {"I32", {1, 96}}},
      {"model.layers.0.self_attn.k_proj.scales", {"F16", {1, 1024}}},
      {"model.layers.0.self_attn.k_proj.g_idx", {"I32", {8192}}},
      {"model.layers.0.mlp.down_proj.qweight", {"I32", {2688, 8192}}},
      {"model.layers.0.mlp.down_proj.qzeros", {"I32", {1, 768}}},
      {"model.layers.0.mlp.down_proj.scales", {"F16", {1, 8192}}},
      {"model.layers.0.mlp.down_proj.g_idx", {"I32", {28672}}},
  };
  auto lookup = [&](const std::string& name) -> std::optional<TensorMeta> {
    auto it = tensors.find(name);
    return it == tensors.end() ? std::nullopt : std::optional<TensorMeta>(it->second);
  };
  EXPECT_NO_THROW(check_gptq_linear(*c, "model.layers.0.self_attn.k_proj", 8192, 1024, false, lookup));
  EXPECT_NO_THROW(check_gptq_linear(*c, "model.layers.0.mlp.down_proj", 28672, 8192, false, lookup));
}

TEST(GptqConfigReal, QwenVlChatInt4ConfigsAndShardIndex) {
  const fs::path dir = configs_dir() / "Qwen-VL-Chat-Int4";
  GPTQD_REQUIRE_FILE(dir / "model.safetensors.index.json");
  json config = read_json(dir / "config.json");
  json quantize = read_json(dir / "quantize_config.json");
  std::optional<GptqConfig> c = find_gptq_config(config, &quantize);
  ASSERT_TRUE(c);
  EXPECT_EQ(c->bits, 4);
  EXPECT_EQ(c->group_size, 128);
  EXPECT_FALSE(c->static_groups);

  // The real index: 1461 tensors in 5 shards; 160 quantized linears, each with all four tensors.
  json index = read_json(dir / "model.safetensors.index.json");
  const json& weight_map = index["weight_map"];
  EXPECT_EQ(weight_map.size(), 1461u);
  EXPECT_EQ(index["metadata"]["total_size"], 9731786240ull);
  std::map<std::string, std::vector<std::string>> by_shard;
  size_t n_linears = 0;
  for (const auto& [name, shard] : weight_map.items()) {
    by_shard[shard.get<std::string>()].push_back(name);
    if (name.ends_with(".qweight")) {
      ++n_linears;
      const std::string prefix = name.substr(0, name.size() - std::string(".qweight").size());
      for (const char* suffix : {".qzeros", ".scales", ".g_idx"}) {
        EXPECT_TRUE(weight_map.contains(prefix + suffix)) << prefix << suffix;
      }
    }
  }
  EXPECT_EQ(n_linears, 160u);
  ASSERT_EQ(by_shard.size(), 5u);

  // Stub shards with the index's tensor names: the set opens them through the real index.
  test::TempDir tmp;
  FileMap files = {{"model.safetensors.index.json", dir / "model.safetensors.index.json"}};
  const std::vector<std::byte> two_bytes(2);
  for (const auto& [shard, names] : by_shard) {
    EXPECT_THAT(shard, ::testing::MatchesRegex("model-0000[1-5]-of-00005\\.safetensors"));
    std::vector<StWriteTensor> stubs;
    for (const std::string& name : names) stubs.push_back({name, StDtype::F16, {1}, two_bytes});
    write_safetensors(tmp / shard, stubs);
    files.emplace(shard, tmp / shard);
  }
  SafetensorsSet set = SafetensorsSet::open(files);
  EXPECT_EQ(set.all().size(), 1461u);
  EXPECT_NE(set.find("transformer.h.0.attn.c_attn.qweight"), nullptr);

  // Drop one shard from the folder: the index names it.
  files.erase("model-00003-of-00005.safetensors");
  EXPECT_THAT(error_of([&] { SafetensorsSet::open(files); }), HasSubstr("model-00003-of-00005.safetensors"));
}

TEST(GptqConfigFind, NeitherFileSaysGptq) {
  EXPECT_FALSE(find_gptq_config(json::parse(R"({"model_type": "llama"})"), nullptr));
  EXPECT_FALSE(find_gptq_config(json::parse(R"({"quantization_config": null})"), nullptr));
}

TEST(GptqConfigFind, DisagreementNamesTheFieldAndBothValues) {
  const json base = json::parse(R"({"bits": 4, "group_size": 128, "desc_act": false, "sym": true})");
  struct Case {
    const char* field;
    json value;
    const char* expected;
  };
  for (const Case& c : {Case{"bits", 3, "disagree on bits: 4 vs 3"},
                        Case{"group_size", -1, "disagree on group_size: 128 vs -1"},
                        Case{"desc_act", true, "disagree on desc_act: false vs true"},
                        Case{"sym", false, "disagree on sym: true vs false"},
                        Case{"checkpoint_format", "gptq_v2", "disagree on checkpoint_format: gptq vs gptq_v2"}}) {
    json config = {{"quantization_config", base}};
    config["quantization_config"][c.field] = c.value;
    config["quantization_config"]["quant_method"] = "gptq";
    std::string msg = error_of([&] { find_gptq_config(config, &base); });
    EXPECT_THAT(msg, HasSubstr(c.expected));
    EXPECT_THAT(msg, HasSubstr("quantize_config.json"));
    EXPECT_THAT(msg, HasSubstr("config.json quantization_config"));
  }
  // damp_percent and true_sequential do not change the checkpoint: no error.
  json config = {{"quantization_config", base}};
  config["quantization_config"]["damp_percent"] = 0.1;
  EXPECT_NO_THROW(find_gptq_config(config, &base));
}

TEST(GptqConfigFind, OtherQuantMethodsAreUnsupportedAndNamed) {
  for (const char* method : {"awq", "bitsandbytes", "exl2", "marlin"}) {
    json config = {{"quantization_config", {{"quant_method", method}, {"bits", 4}, {"group_size", 128}}}};
    std::string msg = error_of([&] { find_gptq_config(config, nullptr); }, ErrorCode::unsupported);
    EXPECT_THAT(msg, HasSubstr(cat("quant_method \"", method, "\" is not supported")));
  }
  json upper = {{"quantization_config", {{"quant_method", "GPTQ"}, {"bits", 4}, {"group_size", 128}}}};
  EXPECT_TRUE(find_gptq_config(upper, nullptr));
  json not_object = {{"quantization_config", "gptq"}};
  EXPECT_THAT(error_of([&] { find_gptq_config(not_object, nullptr); }), HasSubstr("quantization_config: expected"));
}

TEST(GptqConfigFromJson, TypesAndRanges) {
  EXPECT_THAT(from_json_error(R"({"group_size": 128})"), HasSubstr("missing required key \"bits\""));
  EXPECT_THAT(from_json_error(R"({"bits": 4})"), HasSubstr("missing required key \"group_size\""));
  EXPECT_THAT(from_json_error(R"({"bits": "4", "group_size": 128})"),
              HasSubstr("bits: expected an integer, found string \"4\""));
  EXPECT_THAT(from_json_error(R"({"bits": 4.0, "group_size": 128})"), HasSubstr("bits: expected an integer"));
  EXPECT_THAT(from_json_error(R"({"bits": 5, "group_size": 128})", ErrorCode::unsupported),
              HasSubstr("bits = 5 is not supported"));
  EXPECT_THAT(from_json_error(R"({"bits": 4294967300, "group_size": 128})"), HasSubstr("bits: expected an integer"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 0})"), HasSubstr("group_size = 0"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": -2})"), HasSubstr("group_size = -2"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "desc_act": "false"})"),
              HasSubstr("desc_act: expected a boolean, found string"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "sym": 1})"), HasSubstr("sym: expected a boolean"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "damp_percent": "0.01"})"),
              HasSubstr("damp_percent: expected a number in (0, 1)"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "damp_percent": 1.5})"), HasSubstr("damp_percent"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "meta": []})"), HasSubstr("meta: expected an object"));
  EXPECT_THAT(from_json_error("[4]"), HasSubstr("expected a JSON object"));
}

TEST(GptqConfigFromJson, SynonymsAndFormats) {
  GptqConfig awq_names = GptqConfig::from_json(json::parse(R"({"w_bit": 8, "q_group_size": 64})"), "q.json");
  EXPECT_EQ(awq_names.bits, 8);
  EXPECT_EQ(awq_names.group_size, 64);
  EXPECT_THAT(from_json_error(R"({"bits": 4, "w_bit": 8, "group_size": 128})"), HasSubstr("disagrees with w_bit"));
  EXPECT_EQ(GptqConfig::from_json(json::parse(R"({"bits": 2, "group_size": 32, "checkpoint_format": "gptq_v2"})"),
                                  "q.json")
                .checkpoint_format,
            "gptq_v2");
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "checkpoint_format": "marlin"})",
                              ErrorCode::unsupported),
              HasSubstr("\"marlin\" is not supported"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "is_marlin_format": true})", ErrorCode::unsupported),
              HasSubstr("is_marlin_format"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "checkpoint_format": "gptq_p"})",
                              ErrorCode::unsupported),
              HasSubstr("\"gptq_p\" is not supported"));
  EXPECT_NO_THROW(GptqConfig::from_json(json::parse(R"({"bits": 4, "group_size": 128, "is_marlin_format": false})"),
                                        "q.json"));
}

TEST(GptqConfigFromJson, GptqModelConfigWithMetaAndDynamic) {
  // Shape of GPTQModel v4's quantization_config (ModelCloud/GPTQModel#1680).
  GptqConfig c = GptqConfig::from_json(json::parse(R"({
      "bits": 4, "checkpoint_format": "gptq", "desc_act": false,
      "dynamic": {"-:.*.mlp.gate.*": {}}, "group_size": 128, "hyb_act": false, "lm_head": false,
      "meta": {"damp_auto_increment": 0.01, "damp_percent": 0.05, "mse": 0.0,
               "quantizer": ["gptqmodel:4.0.0-dev"], "static_groups": true, "true_sequential": false,
               "uri": "https://github.com/modelcloud/gptqmodel", "v2": false, "v2_alpha": 0.25},
      "pack_dtype": "int32", "quant_method": "gptq", "sym": true, "format": "gptq"})"),
                                       "config.json quantization_config");
  EXPECT_EQ(c.bits, 4);
  EXPECT_DOUBLE_EQ(c.damp_percent, 0.05);
  EXPECT_TRUE(c.static_groups);
  EXPECT_FALSE(c.true_sequential);
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "meta": {"static_groups": "yes"}})"),
              HasSubstr("meta.static_groups: expected a boolean"));
  EXPECT_THAT(from_json_error(R"({"bits": 4, "group_size": 128, "dynamic": {"+:.*down.*": {"bits": 8}}})",
                              ErrorCode::unsupported),
              HasSubstr("dynamic per-module override \"+:.*down.*\""));
  GptqConfig v2 = GptqConfig::from_json(json::parse(R"({"bits": 4, "group_size": 128, "format": "gptq_v2"})"), "q");
  EXPECT_EQ(v2.checkpoint_format, "gptq_v2");
}

TEST(GptqConfigToJson, AutoGptqKeySetAndRoundTrip) {
  GptqConfig c;
  c.bits = 3;
  c.group_size = -1;
  c.desc_act = true;
  c.damp_percent = 0.1;
  json j = c.to_json();
  std::set<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.insert(k);
  EXPECT_EQ(keys, (std::set<std::string>{"bits", "group_size", "damp_percent", "desc_act", "static_groups", "sym",
                                         "true_sequential", "model_name_or_path", "model_file_base_name",
                                         "quant_method", "checkpoint_format"}));
  EXPECT_EQ(j["quant_method"], "gptq");
  EXPECT_EQ(j["checkpoint_format"], "gptq");
  EXPECT_TRUE(j["model_name_or_path"].is_null());
  GptqConfig back = GptqConfig::from_json(j, "quantize_config.json");
  EXPECT_EQ(back.to_json(), j);
  // What we write agrees with itself when written to both files.
  json config = {{"quantization_config", j}};
  EXPECT_TRUE(find_gptq_config(config, &j));
}

TEST(GptqConfigGroups, CeilForAPartialLastGroup) {
  GptqConfig c;
  c.group_size = 128;
  EXPECT_EQ(c.n_groups(4096), 32);
  EXPECT_EQ(c.n_groups(4097), 33);
  EXPECT_EQ(c.n_groups(1000), 8);
  EXPECT_EQ(c.n_groups(1), 1);
  EXPECT_EQ(c.n_groups(0), 0);
  c.group_size = -1;
  EXPECT_EQ(c.n_groups(28672), 1);
  EXPECT_THROW(c.n_groups(-1), Error);
}

// ---- check_gptq_linear -----------------------------------------------------------------------

class CheckLinear : public ::testing::Test {
 protected:
  // The tensors of one linear as a GPTQ writer would store them.
  void put_linear(const std::string& prefix, int64_t K, int64_t N, int bits, int64_t G, bool bias) {
    tensors_[prefix + ".qweight"] = {"I32", {K * bits / 32, N}};
    tensors_[prefix + ".qzeros"] = {"I32", {G, N * bits / 32}};
    tensors_[prefix + ".scales"] = {"F16", {G, N}};
    tensors_[prefix + ".g_idx"] = {"I32", {K}};
    if (bias) tensors_[prefix + ".bias"] = {"F16", {N}};
  }
  TensorMetaLookup lookup() {
    return [this](const std::string& name) -> std::optional<TensorMeta> {
      auto it = tensors_.find(name);
      return it == tensors_.end() ? std::nullopt : std::optional<TensorMeta>(it->second);
    };
  }
  std::string check_error(const GptqConfig& cfg, const std::string& prefix, int64_t K, int64_t N, bool bias = false) {
    return error_of([&] { check_gptq_linear(cfg, prefix, K, N, bias, lookup()); });
  }
  static GptqConfig config(int bits, int group_size) {
    GptqConfig c;
    c.bits = bits;
    c.group_size = group_size;
    return c;
  }
  std::map<std::string, TensorMeta> tensors_;
};

TEST_F(CheckLinear, GoodFourBitLinear) {
  put_linear("model.layers.3.mlp.down_proj", 1536, 576, 4, 12, false);
  EXPECT_NO_THROW(check_gptq_linear(config(4, 128), "model.layers.3.mlp.down_proj", 1536, 576, false, lookup()));
}

TEST_F(CheckLinear, EachMismatchNamesTensorExpectedAndActual) {
  const std::string p = "model.layers.3.mlp.down_proj";
  const GptqConfig c = config(4, 128);
  put_linear(p, 1536, 576, 4, 12, false);
  tensors_[p + ".qweight"].shape = {96, 576};
  EXPECT_THAT(check_error(c, p, 1536, 576),
              HasSubstr("model.layers.3.mlp.down_proj.qweight: expected I32 [192, 576] for bits=4 in_features=1536 "
                        "out_features=576, found I32 [96, 576]"));

  put_linear(p, 1536, 576, 4, 12, false);
  tensors_[p + ".qzeros"].shape = {12, 576};
  EXPECT_THAT(check_error(c, p, 1536, 576),
              HasSubstr(p + ".qzeros: expected I32 [12, 72] for bits=4 group_size=128 in_features=1536 "
                            "out_features=576, found I32 [12, 576]"));

  put_linear(p, 1536, 576, 4, 12, false);
  tensors_[p + ".scales"] = {"BF16", {12, 576}};
  EXPECT_THAT(check_error(c, p, 1536, 576), HasSubstr(p + ".scales: expected F16 [12, 576]"));
  EXPECT_THAT(check_error(c, p, 1536, 576), HasSubstr("found BF16 [12, 576]"));

  put_linear(p, 1536, 576, 4, 12, false);
  tensors_[p + ".scales"].shape = {576, 12};  // old GPTQ-for-LLaMa transposed layout: not reshaped
  EXPECT_THAT(check_error(c, p, 1536, 576), HasSubstr("found F16 [576, 12]"));

  put_linear(p, 1536, 576, 4, 12, false);
  tensors_[p + ".g_idx"] = {"I64", {1536}};
  EXPECT_THAT(check_error(c, p, 1536, 576), HasSubstr(p + ".g_idx: expected I32 [1536]"));

  put_linear(p, 1536, 576, 4, 12, false);
  tensors_.erase(p + ".g_idx");
  EXPECT_THAT(check_error(c, p, 1536, 576), HasSubstr(p + ".g_idx: missing (expected I32 [1536]"));

  put_linear(p, 1536, 576, 4, 12, false);
  EXPECT_THAT(check_error(c, p, 1536, 576, /*bias=*/true), HasSubstr(p + ".bias: missing (expected F16 [576]"));
  tensors_[p + ".bias"] = {"F16", {1, 576}};
  EXPECT_THAT(check_error(c, p, 1536, 576, true), HasSubstr(p + ".bias: expected F16 [576]"));
  tensors_[p + ".bias"] = {"F16", {576}};
  EXPECT_NO_THROW(check_gptq_linear(c, p, 1536, 576, true, lookup()));
}

TEST_F(CheckLinear, WrongBitsIsCaughtByShape) {
  put_linear("l", 4096, 4096, 4, 32, false);
  EXPECT_THAT(check_error(config(8, 128), "l", 4096, 4096), HasSubstr("l.qweight: expected I32 [1024, 4096]"));
  EXPECT_THAT(check_error(config(4, 64), "l", 4096, 4096), HasSubstr("l.qzeros: expected I32 [64, 512]"));
}

TEST_F(CheckLinear, PartialLastGroup) {
  // K = 1000, group 128: 7 full groups and one of 104.
  put_linear("q", 1000, 64, 4, 8, false);
  EXPECT_NO_THROW(check_gptq_linear(config(4, 128), "q", 1000, 64, false, lookup()));
  put_linear("q", 1000, 64, 4, 7, false);
  EXPECT_THAT(check_error(config(4, 128), "q", 1000, 64), HasSubstr("q.qzeros: expected I32 [8, 8]"));
}

TEST_F(CheckLinear, ThreeBitAndOtherWidths) {
  put_linear("m3", 4096, 4096, 3, 32, false);
  EXPECT_EQ(tensors_["m3.qweight"].shape, (std::vector<int64_t>{384, 4096}));
  EXPECT_EQ(tensors_["m3.qzeros"].shape, (std::vector<int64_t>{32, 384}));
  EXPECT_NO_THROW(check_gptq_linear(config(3, 128), "m3", 4096, 4096, false, lookup()));
  put_linear("m2", 2048, 256, 2, 16, true);
  EXPECT_NO_THROW(check_gptq_linear(config(2, 128), "m2", 2048, 256, true, lookup()));
  put_linear("m8", 896, 128, 8, 7, true);
  EXPECT_NO_THROW(check_gptq_linear(config(8, 128), "m8", 896, 128, true, lookup()));
}

TEST_F(CheckLinear, GroupSizeMinusOneIsOneGroup) {
  put_linear("g", 8192, 1024, 3, 1, false);
  EXPECT_NO_THROW(check_gptq_linear(config(3, -1), "g", 8192, 1024, false, lookup()));
  put_linear("g", 8192, 1024, 3, 64, false);
  EXPECT_THAT(check_error(config(3, -1), "g", 8192, 1024),
              HasSubstr("g.qzeros: expected I32 [1, 96] for bits=3 group_size=-1"));
}

TEST_F(CheckLinear, PackingDivisibility) {
  EXPECT_THAT(check_error(config(4, 128), "x", 1001, 64), HasSubstr("x: in_features = 1001 is not a multiple of 8"));
  EXPECT_THAT(check_error(config(3, 128), "x", 4080, 64), HasSubstr("not a multiple of 32"));
  EXPECT_THAT(check_error(config(3, 128), "x", 4096, 48), HasSubstr("out_features = 48 is not a multiple of 32"));
  EXPECT_THAT(check_error(config(2, 128), "x", 4096, 8), HasSubstr("not a multiple of 16"));
  EXPECT_THAT(check_error(config(4, 128), "x", 0, 64), HasSubstr("out of range"));
  EXPECT_EQ(error_of([&] { check_gptq_linear(config(5, 128), "x", 64, 64, false, lookup()); },
                     ErrorCode::invalid_argument)
                .empty(),
            false);
}

}  // namespace
}  // namespace gptqd::engine
