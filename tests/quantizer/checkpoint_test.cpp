// SPDX-License-Identifier: Apache-2.0
// The GPTQ checkpoint writer on tiny HF models: what inspect_model_source and load_weights read
// back from it at every bit width, group size and format, sharding, side files, and each refusal
// with the partial folder removed (quantizer tests).
#include "quantizer/checkpoint.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/json_strict.h"
#include "engine/model_source.h"
#include "engine/safetensors.h"
#include "kernels/cpu/half.h"
#include "quantizer/pack.h"
#include "tests/quantizer/checkpoint_test_util.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::quantizer {
namespace {

namespace fs = std::filesystem;
namespace cpu = kernels::cpu;
using engine::StDtype;
using nlohmann::json;
using test_util::QuantCase;

json read_json(const fs::path& p) { return engine::parse_json_strict(test::read_file(p), p.filename().string()); }

std::set<std::string> dir_names(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

// The tiny model with every linear dimension a multiple of 32 (3-bit packing needs it).
test::TinyShape shape_3bit() {
  test::TinyShape s;
  s.n_kv_heads = 4;  // KV = 32
  return s;
}

struct Written {
  engine::ModelInfo source;
  std::map<std::string, QuantizedLinear> linears;
  CheckpointSpec spec;
};

// Writes a tiny source to dir/src and its checkpoint to dir/out.
Written write_case(const test::TempDir& dir, const QuantCase& qc, const test::TinyHfOptions& opts = {},
                   uint64_t max_shard_bytes = 4'000'000'000) {
  test::write_tiny_hf_model(dir / "src", opts);
  Written w;
  w.source = engine::inspect_model_source(dir / "src");
  w.linears = test_util::random_linears(w.source.config, qc, opts.seed);
  w.spec.config = test_util::config_for(qc);
  w.spec.max_shard_bytes = max_shard_bytes;
  write_gptq_checkpoint(w.source, test_util::source_of(w.linears), w.spec, dir / "out");
  return w;
}

void expect_linears_match(const engine::ModelInfo& out, const std::map<std::string, QuantizedLinear>& linears) {
  const auto got = test_util::engine_linears(out);
  ASSERT_EQ(got.size(), linears.size());
  for (const auto& [prefix, q] : linears) {
    SCOPED_TRACE(prefix);
    const std::vector<float> want = test_util::expected_dequant(q);
    const std::vector<float>& have = got.at(prefix);
    ASSERT_EQ(have.size(), want.size());
    size_t n_bad = 0;
    for (size_t i = 0; i < want.size(); ++i) n_bad += have[i] != want[i] ? 1 : 0;
    EXPECT_EQ(n_bad, 0u) << "first: engine " << have[0] << " expected " << want[0];
  }
}

// Every tensor that is not a quantized linear is in `out` as F16 with the source's fp16 bits.
void expect_dense_copied(const fs::path& src, const fs::path& out) {
  const auto s = engine::SafetensorsSet::open_dir(src);
  const auto o = engine::SafetensorsSet::open_dir(out);
  size_t n = 0;
  for (const engine::StTensor* t : s.all()) {
    if (t->name.ends_with("_proj.weight")) {
      EXPECT_EQ(o.find(t->name), nullptr) << t->name;
      continue;
    }
    SCOPED_TRACE(t->name);
    const engine::StTensor* c = o.find(t->name);
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->dtype, StDtype::F16);
    EXPECT_EQ(c->shape, t->shape);
    ASSERT_EQ(c->bytes.size(), t->bytes.size());
    EXPECT_EQ(std::memcmp(c->bytes.data(), t->bytes.data(), t->bytes.size()), 0);
    ++n;
  }
  EXPECT_GT(n, 0u);
}

// ---- round trips -------------------------------------------------------------------------------

struct RoundTripCase {
  const char* name;
  QuantCase q;
};

class CheckpointRoundTrip : public ::testing::TestWithParam<RoundTripCase> {};

TEST_P(CheckpointRoundTrip, EngineReadsExactlyTheDequantizedCodes) {
  const QuantCase qc = GetParam().q;
  test::TempDir dir;
  test::TinyHfOptions opts;
  opts.shape = shape_3bit();
  opts.seed = static_cast<uint32_t>(qc.bits * 100 + qc.group_size + (qc.sym ? 7 : 0));
  const Written w = write_case(dir, qc, opts);

  const engine::ModelInfo out = engine::inspect_model_source(dir / "out");
  ASSERT_TRUE(out.gptq.has_value());
  EXPECT_EQ(out.gptq->bits, qc.bits);
  EXPECT_EQ(out.gptq->group_size, qc.group_size);
  EXPECT_EQ(out.gptq->sym, qc.sym);
  EXPECT_EQ(out.gptq->desc_act, qc.desc_act);
  EXPECT_EQ(out.gptq->checkpoint_format, qc.sym ? "gptq" : "gptq_v2");
  EXPECT_EQ(out.config.n_layers, w.source.config.n_layers);
  EXPECT_EQ(out.config.hidden_size, w.source.config.hidden_size);
  EXPECT_EQ(out.n_params, w.source.n_params);

  expect_linears_match(out, w.linears);
  expect_dense_copied(dir / "src", dir / "out");

  EXPECT_EQ(dir_names(dir / "out"), (std::set<std::string>{"config.json", "model.safetensors", "quantize_config.json",
                                                            "tokenizer.json", "tokenizer_config.json"}));
  const json quant = w.spec.config.to_json();
  EXPECT_EQ(read_json(dir / "out" / "quantize_config.json"), quant);
  json config = read_json(dir / "out" / "config.json");
  EXPECT_EQ(config["quantization_config"], quant);
  EXPECT_EQ(config["quantization_config"]["quant_method"], "gptq");
  EXPECT_EQ(config["torch_dtype"], "float16");
  json src_config = read_json(dir / "src" / "config.json");
  config.erase("quantization_config");
  EXPECT_EQ(config, src_config);  // nothing else changed (the tiny source is already float16)

  const auto file = engine::SafetensorsFile::open(dir / "out" / "model.safetensors");
  const std::map<std::string, std::string> want_meta = {
      {"format", "pt"},
      {"quantizer", "gptqd"},
      {"gptq_bits", std::to_string(qc.bits)},
      {"gptq_group_size", std::to_string(qc.group_size)},
      {"gptq_desc_act", qc.desc_act ? "True" : "False"},
      {"gptq_damp_percent", "0.01"},
      {"gptq_checkpoint_format", qc.sym ? "gptq" : "gptq_v2"},
      {"gptq_quant_method", "gptq"},
  };
  EXPECT_EQ(file.metadata(), want_meta);
}

INSTANTIATE_TEST_SUITE_P(
    AllWidths, CheckpointRoundTrip,
    ::testing::Values(RoundTripCase{"b4_g16_sym", {4, 16, true, false}},
                      RoundTripCase{"b4_gall_sym", {4, -1, true, false}},
                      RoundTripCase{"b4_g24_sym_act", {4, 24, true, true}},     // 24 divides neither 32 nor 64
                      RoundTripCase{"b4_g16_asym_act", {4, 16, false, true}},
                      RoundTripCase{"b2_g16_asym", {2, 16, false, false}},
                      RoundTripCase{"b2_gall_sym", {2, -1, true, false}},
                      RoundTripCase{"b3_g32_sym", {3, 32, true, false}},
                      RoundTripCase{"b3_g24_asym_act", {3, 24, false, true}},
                      RoundTripCase{"b8_g24_asym", {8, 24, false, false}},
                      RoundTripCase{"b8_gall_sym_act", {8, -1, true, true}}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

TEST(Checkpoint, SymmetricV1ZerosAreTheConstantWords) {
  // gptq-reference.md B.5: every qzeros word of a symmetric v1 checkpoint is a known constant.
  const std::map<int, std::vector<uint32_t>> words = {
      {2, {0x55555555u}}, {3, {0xDB6DB6DBu, 0xB6DB6DB6u, 0x6DB6DB6Du}}, {4, {0x77777777u}}, {8, {0x7F7F7F7Fu}}};
  for (const auto& [bits, want] : words) {
    SCOPED_TRACE(bits);
    test::TempDir dir;
    test::TinyHfOptions opts;
    opts.shape = shape_3bit();
    write_case(dir, QuantCase{bits, 16, true, false}, opts);
    const auto set = engine::SafetensorsSet::open_dir(dir / "out");
    const engine::StTensor* qz = set.find("model.layers.1.mlp.down_proj.qzeros");
    ASSERT_NE(qz, nullptr);
    std::vector<uint32_t> v(qz->bytes.size() / 4);
    std::memcpy(v.data(), qz->bytes.data(), qz->bytes.size());
    for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(v[i], want[i % want.size()]) << "word " << i;
  }
}

TEST(Checkpoint, V2StoresZerosAsIsAndV1MinusOne) {
  for (bool sym : {true, false}) {
    SCOPED_TRACE(sym ? "v1" : "v2");
    test::TempDir dir;
    const Written w = write_case(dir, QuantCase{4, 16, sym, false});
    const std::string p = "model.layers.0.self_attn.q_proj";
    const QuantizedLinear& q = w.linears.at(p);
    const auto set = engine::SafetensorsSet::open_dir(dir / "out");
    const engine::StTensor* qz = set.find(p + ".qzeros");
    ASSERT_NE(qz, nullptr);
    const int64_t G = q.n_groups();
    ASSERT_EQ(qz->shape, (std::vector<int64_t>{G, q.N * 4 / 32}));
    std::vector<int32_t> words(qz->bytes.size() / 4);
    std::memcpy(words.data(), qz->bytes.data(), qz->bytes.size());
    const std::vector<uint8_t> stored = unpack_qzeros(words, G, q.N, 4);
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t n = 0; n < q.N; ++n) {
        const int zero = q.zeros[static_cast<size_t>(n * G + g)];
        EXPECT_EQ(stored[static_cast<size_t>(g * q.N + n)], sym ? zero - 1 : zero);
      }
    }
    // scales [G, N] fp16 = the solver's [N, G] transposed.
    const engine::StTensor* sc = set.find(p + ".scales");
    ASSERT_NE(sc, nullptr);
    const std::vector<float> scales = engine::st_to_f32(*sc);
    EXPECT_EQ(scales[static_cast<size_t>(1 * q.N + 3)],
              cpu::f16_to_f32(cpu::f32_to_f16(q.scales[static_cast<size_t>(3 * G + 1)])));
  }
}

TEST(Checkpoint, CallsTheLinearSourceOncePerPrefixInLayerOrder) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  const auto source = engine::inspect_model_source(dir / "src");
  const QuantCase qc;
  const auto linears = test_util::random_linears(source.config, qc, 3);
  std::vector<std::string> calls;
  CheckpointSpec spec;
  spec.config = test_util::config_for(qc);
  spec.max_shard_bytes = 4096;  // sharded too: the order must not depend on it
  write_gptq_checkpoint(
      source,
      [&](const std::string& p) {
        calls.push_back(p);
        return linears.at(p);
      },
      spec, dir / "out");
  EXPECT_EQ(calls, llama_linear_prefixes(source.config.n_layers));
}

TEST(Checkpoint, LlamaLinearPrefixes) {
  const auto p = llama_linear_prefixes(2);
  ASSERT_EQ(p.size(), 14u);
  EXPECT_EQ(p[0], "model.layers.0.self_attn.q_proj");
  EXPECT_EQ(p[3], "model.layers.0.self_attn.o_proj");
  EXPECT_EQ(p[4], "model.layers.0.mlp.gate_proj");
  EXPECT_EQ(p[6], "model.layers.0.mlp.down_proj");
  EXPECT_EQ(p[7], "model.layers.1.self_attn.q_proj");
  EXPECT_EQ(p[13], "model.layers.1.mlp.down_proj");
  EXPECT_TRUE(llama_linear_prefixes(0).empty());
}

// ---- sources of other shapes -------------------------------------------------------------------

TEST(Checkpoint, Qwen2BiasesAreWrittenFp16NextToTheirLinear) {
  test::TempDir dir;
  test::TinyHfOptions opts;
  opts.family = "qwen2";
  opts.tie_embeddings = true;
  const Written w = write_case(dir, QuantCase{4, 16, true, false}, opts, 6000);
  const auto out = engine::inspect_model_source(dir / "out");
  ASSERT_TRUE(out.gptq.has_value());
  EXPECT_TRUE(out.config.attention_bias);
  EXPECT_TRUE(out.config.tie_word_embeddings);
  expect_linears_match(out, w.linears);
  expect_dense_copied(dir / "src", dir / "out");

  const auto set = engine::SafetensorsSet::open_dir(dir / "out");
  EXPECT_EQ(set.find("lm_head.weight"), nullptr);
  const json index = read_json(dir / "out" / "model.safetensors.index.json");
  for (const char* proj : {"q_proj", "k_proj", "v_proj"}) {
    const std::string p = std::string("model.layers.1.self_attn.") + proj;
    const engine::StTensor* b = set.find(p + ".bias");
    ASSERT_NE(b, nullptr) << p;
    EXPECT_EQ(b->dtype, StDtype::F16);
    EXPECT_EQ(index["weight_map"][p + ".bias"], index["weight_map"][p + ".qweight"]);
  }
  EXPECT_EQ(set.find("model.layers.0.self_attn.o_proj.bias"), nullptr);
  // The engine adds the biases as it read them.
  const engine::LlamaWeights lw = engine::load_weights(out, false);
  const engine::LlamaWeights src = engine::load_weights(w.source, false);
  EXPECT_EQ(lw.layers[1].qkv_bias, src.layers[1].qkv_bias);
}

TEST(Checkpoint, F32AndBf16SourceTensorsBecomeFp16) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "f16");
  fs::create_directories(dir / "src");
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(dir / "f16" / f, dir / "src" / f);
  }
  // Re-store the tiny model: norms as BF16, everything else as F32.
  std::map<std::string, std::vector<uint16_t>> want;  // tensor -> fp16 bits after conversion
  {
    const auto in = engine::SafetensorsFile::open(dir / "f16" / "model.safetensors");
    std::vector<std::vector<std::byte>> data;
    std::vector<engine::StWriteTensor> out;
    for (const engine::StTensor& t : in.tensors()) {
      const std::vector<float> f = engine::st_to_f32(t);
      const bool bf16 = t.name.ends_with("norm.weight");
      std::vector<std::byte> bytes;
      if (bf16) {
        std::vector<uint16_t> b(f.size());
        for (size_t i = 0; i < f.size(); ++i) b[i] = cpu::f32_to_bf16(f[i]);
        for (uint16_t x : b) want[t.name].push_back(cpu::f32_to_f16(cpu::bf16_to_f32(x)));
        bytes.resize(b.size() * 2);
        std::memcpy(bytes.data(), b.data(), bytes.size());
      } else {
        for (float x : f) want[t.name].push_back(cpu::f32_to_f16(x));
        bytes.resize(f.size() * 4);
        std::memcpy(bytes.data(), f.data(), bytes.size());
      }
      data.push_back(std::move(bytes));
      out.push_back({t.name, bf16 ? StDtype::BF16 : StDtype::F32, t.shape, {}});
    }
    for (size_t i = 0; i < out.size(); ++i) out[i].data = data[i];
    engine::write_safetensors(dir / "src" / "model.safetensors", out, {{"format", "pt"}});
  }
  const auto source = engine::inspect_model_source(dir / "src");
  EXPECT_EQ(source.dtype, "F32");
  const QuantCase qc;
  const auto linears = test_util::random_linears(source.config, qc, 9);
  CheckpointSpec spec;
  spec.config = test_util::config_for(qc);
  write_gptq_checkpoint(source, test_util::source_of(linears), spec, dir / "out");

  const auto out = engine::inspect_model_source(dir / "out");
  expect_linears_match(out, linears);
  // F32 holds the fp16 original exactly, so those tensors come back bit-identical; BF16 norms
  // come back as fp16(bf16) values.
  const auto set = engine::SafetensorsSet::open_dir(dir / "out");
  size_t n_checked = 0;
  for (const auto& [name, bits] : want) {
    if (name.ends_with("_proj.weight")) continue;
    SCOPED_TRACE(name);
    const engine::StTensor* t = set.find(name);
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->dtype, StDtype::F16);
    std::vector<uint16_t> have(t->n_elements);
    ASSERT_EQ(t->bytes.size(), have.size() * 2);
    std::memcpy(have.data(), t->bytes.data(), t->bytes.size());
    EXPECT_EQ(have, bits);
    ++n_checked;
  }
  EXPECT_EQ(n_checked, 3u + 2u * 2u);
  const auto f16 = engine::SafetensorsSet::open_dir(dir / "f16");
  const engine::StTensor* embed = f16.find("model.embed_tokens.weight");
  ASSERT_NE(embed, nullptr);
  EXPECT_EQ(std::memcmp(set.find(embed->name)->bytes.data(), embed->bytes.data(), embed->bytes.size()), 0);
}

TEST(Checkpoint, ShardedSourceAndSideFiles) {
  test::TempDir dir;
  test::TinyHfOptions opts;
  opts.n_shards = 3;
  test::write_tiny_hf_model(dir / "src", opts);
  const std::map<std::string, std::string> side = {
      {"generation_config.json", "{\"bos_token_id\": 256, \"eos_token_id\": 257}\n"},
      {"special_tokens_map.json", "{\"bos_token\": \"<s>\"}\n"},
      {"chat_template.jinja", "{% for m in messages %}{{ m.content }}{% endfor %}"},
      {"README.md", "# tiny\n"},
  };
  for (const auto& [name, text] : side) test::write_file(dir / "src" / name, text);
  test::write_file(dir / "src" / "pytorch_model.bin", "pickle");  // never loaded, never copied
  const auto source = engine::inspect_model_source(dir / "src");
  const QuantCase qc{8, 32, false, false};
  const auto linears = test_util::random_linears(source.config, qc, 5);
  CheckpointSpec spec;
  spec.config = test_util::config_for(qc);
  write_gptq_checkpoint(source, test_util::source_of(linears), spec, dir / "out");

  std::set<std::string> want = {"config.json", "model.safetensors", "quantize_config.json", "tokenizer.json",
                                "tokenizer_config.json"};
  for (const auto& [name, text] : side) {
    want.insert(name);
    EXPECT_EQ(test::read_file(dir / "out" / name), text) << name;
  }
  EXPECT_EQ(dir_names(dir / "out"), want);
  EXPECT_EQ(test::read_file(dir / "out" / "tokenizer.json"), test::read_file(dir / "src" / "tokenizer.json"));
  const auto out = engine::inspect_model_source(dir / "out");
  expect_linears_match(out, linears);
  expect_dense_copied(dir / "src", dir / "out");
}

TEST(Checkpoint, ConfigKeepsAnExistingDtypeKeyInStep) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  json config = read_json(dir / "src" / "config.json");
  config["torch_dtype"] = "bfloat16";
  config["dtype"] = "bfloat16";
  test::write_file(dir / "src" / "config.json", config.dump(2));
  const auto source = engine::inspect_model_source(dir / "src");
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 2);
  const CheckpointSpec spec = test_util::spec_for(QuantCase{});
  write_gptq_checkpoint(source, test_util::source_of(linears), spec, dir / "out");
  const json written = read_json(dir / "out" / "config.json");
  EXPECT_EQ(written["torch_dtype"], "float16");
  EXPECT_EQ(written["dtype"], "float16");
}

// ---- sharding ----------------------------------------------------------------------------------

TEST(Checkpoint, ShardsFillInOrderAndTheIndexCoversEveryTensor) {
  for (uint64_t max_shard : {uint64_t{1}, uint64_t{5000}, uint64_t{20000}}) {
    SCOPED_TRACE(max_shard);
    test::TempDir dir;
    const QuantCase qc{4, 16, true, false};
    const Written w = write_case(dir, qc, {}, max_shard);
    const json index = read_json(dir / "out" / "model.safetensors.index.json");
    ASSERT_TRUE(index["weight_map"].is_object());

    std::set<std::string> shard_files;
    for (const auto& e : fs::directory_iterator(dir / "out")) {
      const std::string n = e.path().filename().string();
      if (n.ends_with(".safetensors")) shard_files.insert(n);
    }
    ASSERT_GT(shard_files.size(), 1u);
    EXPECT_FALSE(fs::exists(dir / "out" / "model.safetensors"));
    char last[64];
    std::snprintf(last, sizeof last, "model-%05zu-of-%05zu.safetensors", shard_files.size(), shard_files.size());
    EXPECT_TRUE(shard_files.contains(last)) << last;

    uint64_t total = 0;
    size_t n_tensors = 0;
    std::map<std::string, std::string> tensor_shard;
    for (const std::string& f : shard_files) {
      const auto sf = engine::SafetensorsFile::open(dir / "out" / f);
      EXPECT_EQ(sf.metadata().at("format"), "pt");
      uint64_t bytes = 0;
      std::set<std::string> units;  // linear prefixes or plain tensor names
      for (const auto& t : sf.tensors()) {
        EXPECT_EQ(index["weight_map"][t.name], f) << t.name;
        tensor_shard[t.name] = f;
        bytes += t.data_end - t.data_begin;
        const auto dot = t.name.rfind('.');
        units.insert(t.name.find("_proj.") != std::string::npos ? t.name.substr(0, dot) : t.name);
        ++n_tensors;
      }
      total += bytes;
      if (units.size() > 1) {  // only a lone oversize unit may exceed the limit
        EXPECT_LE(bytes, max_shard) << f;
      }
    }
    EXPECT_EQ(index["weight_map"].size(), n_tensors);
    EXPECT_EQ(index["metadata"]["total_size"].get<uint64_t>(), total);
    // All tensors of one linear share a shard.
    for (const auto& [prefix, q] : w.linears) {
      for (const char* s : {".qzeros", ".scales", ".g_idx"}) {
        EXPECT_EQ(tensor_shard.at(prefix + s), tensor_shard.at(prefix + ".qweight")) << prefix << s;
      }
    }
    // Shards follow the model order: embeddings in the first, layer 1's down_proj after layer 0's.
    EXPECT_EQ(tensor_shard.at("model.embed_tokens.weight"), *shard_files.begin());
    EXPECT_LE(tensor_shard.at("model.layers.0.mlp.down_proj.qweight"),
              tensor_shard.at("model.layers.1.mlp.down_proj.qweight"));
    if (max_shard == 1) {  // every unit alone: embed, norm, lm_head + per layer 2 norms, 7 linears
      EXPECT_EQ(shard_files.size(), 3u + 2u * (2u + 7u));
    }

    const auto out = engine::inspect_model_source(dir / "out");
    expect_linears_match(out, w.linears);
    expect_dense_copied(dir / "src", dir / "out");
  }
}

// ---- refusals ----------------------------------------------------------------------------------

struct Failure {
  ErrorCode code = ErrorCode::internal;
  std::string message;
};

Failure write_failure(const engine::ModelInfo& source, const LinearSource& linears, const CheckpointSpec& spec,
                      const fs::path& out) {
  try {
    write_gptq_checkpoint(source, linears, spec, out);
    ADD_FAILURE() << "write_gptq_checkpoint succeeded";
  } catch (const Error& e) {
    return Failure{e.code(), e.what()};
  }
  return {};
}

TEST(CheckpointErrors, GgufSourceIsUnsupported) {
  test::TempDir dir;
  test::write_tiny_gguf(dir / "tiny.gguf");
  const auto source = engine::inspect_model_source(dir / "tiny.gguf");
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 1);
  const Failure f = write_failure(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "out");
  EXPECT_EQ(f.code, ErrorCode::unsupported);
  EXPECT_NE(f.message.find("safetensors"), std::string::npos) << f.message;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(CheckpointErrors, AlreadyQuantizedSourceIsUnsupported) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src", test::tiny_gptq_options());
  const auto source = engine::inspect_model_source(dir / "src");
  ASSERT_TRUE(source.gptq.has_value());
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 1);
  const Failure f = write_failure(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "out");
  EXPECT_EQ(f.code, ErrorCode::unsupported);
  EXPECT_NE(f.message.find("already GPTQ"), std::string::npos) << f.message;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(CheckpointErrors, NonEmptyOutDirIsAConflictAndLeftAlone) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  const auto source = engine::inspect_model_source(dir / "src");
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 1);
  fs::create_directories(dir / "out");
  test::write_file(dir / "out" / "keep.txt", "mine");
  const Failure f = write_failure(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "out");
  EXPECT_EQ(f.code, ErrorCode::conflict);
  EXPECT_EQ(dir_names(dir / "out"), std::set<std::string>{"keep.txt"});
  // A file in the way is a conflict too.
  test::write_file(dir / "file", "x");
  EXPECT_EQ(write_failure(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "file").code,
            ErrorCode::conflict);
  // An existing empty folder is fine.
  fs::create_directories(dir / "empty");
  write_gptq_checkpoint(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "empty");
  EXPECT_TRUE(fs::exists(dir / "empty" / "model.safetensors"));
}

TEST(CheckpointErrors, WrongQuantizedLinearNamesThePrefixAndRemovesTheFolder) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  const auto source = engine::inspect_model_source(dir / "src");
  const QuantCase qc;
  CheckpointSpec spec;
  spec.config = test_util::config_for(qc);
  spec.max_shard_bytes = 4096;  // earlier shards are already on disk when layer 1 fails
  const std::string bad = "model.layers.1.mlp.up_proj";

  struct Breakage {
    const char* what;
    void (*apply)(QuantizedLinear&);
    const char* message_part;
  };
  const Breakage breakages[] = {
      {"N", [](QuantizedLinear& q) { q.N += 8; }, "N (out_features)"},
      {"K", [](QuantizedLinear& q) { q.K -= 8; }, "K (in_features)"},
      {"bits", [](QuantizedLinear& q) { q.bits = 8; }, "bits"},
      {"group_size", [](QuantizedLinear& q) { q.group_size = 32; }, "group_size"},
      {"codes", [](QuantizedLinear& q) { q.codes.pop_back(); }, "codes.size()"},
      {"scales", [](QuantizedLinear& q) { q.scales.push_back(1); }, "scales.size()"},
      {"zeros", [](QuantizedLinear& q) { q.zeros.resize(1); }, "zeros.size()"},
      {"g_idx size", [](QuantizedLinear& q) { q.g_idx.pop_back(); }, "g_idx.size()"},
      {"g_idx range", [](QuantizedLinear& q) { q.g_idx[3] = 99; }, "g_idx[3]"},
      {"g_idx without act-order", [](QuantizedLinear& q) { std::swap(q.g_idx[0], q.g_idx[31]); }, "desc_act"},
      {"code", [](QuantizedLinear& q) { q.codes[5] = 16; }, "does not fit in 4 bits"},
      {"sym zero", [](QuantizedLinear& q) { q.zeros[2] = 7; }, "symmetric zero point"},
      {"scale", [](QuantizedLinear& q) { q.scales[0] = 1e6f; }, "finite fp16"},
  };
  for (const Breakage& b : breakages) {
    SCOPED_TRACE(b.what);
    auto linears = test_util::random_linears(source.config, qc, 1);
    b.apply(linears.at(bad));
    const Failure f = write_failure(source, test_util::source_of(linears), spec, dir / "out");
    EXPECT_EQ(f.code, ErrorCode::invalid_argument);
    EXPECT_NE(f.message.find(bad), std::string::npos) << f.message;
    EXPECT_NE(f.message.find(b.message_part), std::string::npos) << f.message;
    EXPECT_FALSE(fs::exists(dir / "out"));
  }
}

TEST(CheckpointErrors, AFailingLinearSourcePropagatesAndLeavesAnExistingFolderEmpty) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  const auto source = engine::inspect_model_source(dir / "src");
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 1);
  fs::create_directories(dir / "out");
  CheckpointSpec spec = test_util::spec_for(QuantCase{});
  spec.max_shard_bytes = 4096;
  const Failure f = write_failure(
      source,
      [&](const std::string& p) -> QuantizedLinear {
        if (p == "model.layers.1.self_attn.q_proj") fail(ErrorCode::cancelled, "job cancelled");
        return linears.at(p);
      },
      spec, dir / "out");
  EXPECT_EQ(f.code, ErrorCode::cancelled);
  ASSERT_TRUE(fs::is_directory(dir / "out"));  // it was there before: emptied, not removed
  EXPECT_TRUE(fs::is_empty(dir / "out"));
}

TEST(CheckpointErrors, AsymmetricV1AndBadSpecsAreRefusedBeforeWriting) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  const auto source = engine::inspect_model_source(dir / "src");
  const QuantCase asym{4, 16, false, false};
  const auto linears = test_util::random_linears(source.config, asym, 1);

  CheckpointSpec spec;
  spec.config = test_util::config_for(asym);
  spec.config.checkpoint_format = "gptq";
  Failure f = write_failure(source, test_util::source_of(linears), spec, dir / "out");
  EXPECT_EQ(f.code, ErrorCode::invalid_argument);
  EXPECT_NE(f.message.find("gptq_v2"), std::string::npos) << f.message;
  EXPECT_FALSE(fs::exists(dir / "out"));

  auto refused = [&](void (*change)(CheckpointSpec&), const char* part) {
    CheckpointSpec s;
    s.config = test_util::config_for(asym);
    change(s);
    const Failure r = write_failure(source, test_util::source_of(linears), s, dir / "out");
    EXPECT_EQ(r.code, ErrorCode::invalid_argument) << part;
    EXPECT_NE(r.message.find(part), std::string::npos) << r.message;
    EXPECT_FALSE(fs::exists(dir / "out"));
  };
  refused([](CheckpointSpec& s) { s.config.bits = 5; }, "bits");
  refused([](CheckpointSpec& s) { s.config.group_size = 0; }, "group_size");
  refused([](CheckpointSpec& s) { s.config.checkpoint_format = "marlin"; }, "checkpoint_format");
  refused([](CheckpointSpec& s) { s.config.lm_head = true; }, "lm_head");
  refused([](CheckpointSpec& s) { s.max_shard_bytes = 0; }, "max_shard_bytes");
}

TEST(CheckpointErrors, ThreeBitNeedsDimensionsDivisibleBy32) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");  // k_proj/v_proj have 16 outputs
  const auto source = engine::inspect_model_source(dir / "src");
  CheckpointSpec spec;
  spec.config = test_util::config_for(QuantCase{3, 32, true, false});
  const Failure f = write_failure(
      source, [](const std::string&) -> QuantizedLinear { throw std::logic_error("not reached"); }, spec,
      dir / "out");
  EXPECT_EQ(f.code, ErrorCode::invalid_argument);
  EXPECT_NE(f.message.find("model.layers.0.self_attn.k_proj"), std::string::npos) << f.message;
  EXPECT_NE(f.message.find("multiples of 32"), std::string::npos) << f.message;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(CheckpointErrors, Fp16OverflowInTheSourceIsRefused) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "f16");
  fs::create_directories(dir / "src");
  for (const char* f : {"config.json", "tokenizer.json", "tokenizer_config.json"}) {
    fs::copy_file(dir / "f16" / f, dir / "src" / f);
  }
  {
    const auto in = engine::SafetensorsFile::open(dir / "f16" / "model.safetensors");
    std::vector<std::vector<float>> data;
    std::vector<engine::StWriteTensor> out;
    for (const engine::StTensor& t : in.tensors()) {
      data.push_back(engine::st_to_f32(t));
      if (t.name == "model.norm.weight") data.back()[3] = 1e6f;
      out.push_back({t.name, StDtype::F32, t.shape, {}});
    }
    for (size_t i = 0; i < out.size(); ++i) out[i].data = std::as_bytes(std::span<const float>(data[i]));
    engine::write_safetensors(dir / "src" / "model.safetensors", out);
  }
  const auto source = engine::inspect_model_source(dir / "src");
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 1);
  const Failure f = write_failure(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "out");
  EXPECT_EQ(f.code, ErrorCode::unsupported);
  EXPECT_NE(f.message.find("model.norm.weight"), std::string::npos) << f.message;
  EXPECT_FALSE(fs::exists(dir / "out"));
}

TEST(CheckpointErrors, UnwritableOutDirIsAnIoError) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  const auto source = engine::inspect_model_source(dir / "src");
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 1);
  test::write_file(dir / "plain-file", "x");
  const Failure f = write_failure(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "plain-file" / "out");
  EXPECT_EQ(f.code, ErrorCode::io);
  EXPECT_NE(f.message.find("plain-file"), std::string::npos) << f.message;
}

TEST(CheckpointErrors, ReadOnlyParentIsAnIoError) {
  if (::geteuid() == 0) GTEST_SKIP() << "root ignores directory permissions";
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "src");
  const auto source = engine::inspect_model_source(dir / "src");
  const auto linears = test_util::random_linears(source.config, QuantCase{}, 1);
  fs::create_directories(dir / "ro");
  fs::permissions(dir / "ro", fs::perms::owner_read | fs::perms::owner_exec);
  const Failure g = write_failure(source, test_util::source_of(linears), test_util::spec_for(QuantCase{}), dir / "ro" / "out");
  EXPECT_EQ(g.code, ErrorCode::io);
  EXPECT_FALSE(fs::exists(dir / "ro" / "out"));
}

}  // namespace
}  // namespace gptqd::quantizer
