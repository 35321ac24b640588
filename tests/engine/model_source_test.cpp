// SPDX-License-Identifier: Apache-2.0
// inspect_model_source on tiny HF folders (dense, GPTQ, sharded), tiny and real GGUFs, the HF folder
// tests/reference/gguf_to_hf.py makes from the real GGUF, and each kind of bad source with the
// file, tensor or key its message must name (engine tests, label "reference").
#include "engine/model_source.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/safetensors.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// Logical parameters of the tiny Llama, counted from its shape (untied lm_head, no biases):
//   embed V*H + lm_head V*H + final norm H
//   + per layer: 2 norms 2H + q H*Q + k,v 2*H*KV + o Q*H + gate,up,down 3*H*I
// with Q = n_heads * head_dim and KV = n_kv_heads * head_dim.
uint64_t tiny_n_params(const test::TinyShape& s) {
  const int64_t H = s.hidden, V = s.vocab, I = s.intermediate, Q = s.n_heads * s.head_dim,
                KV = s.n_kv_heads * s.head_dim;
  const int64_t per_layer = 2 * H + H * Q + 2 * H * KV + Q * H + 3 * H * I;
  return static_cast<uint64_t>(2 * V * H + H + s.n_layers * per_layer);
}

test::TinyHfOptions gptq_options() {
  test::TinyHfOptions o;
  o.gptq = true;
  return o;
}

test::TinyHfOptions sharded_options(int n_shards) {
  test::TinyHfOptions o;
  o.n_shards = n_shards;
  return o;
}

// Sum of the sizes of the regular files directly in `dir` (following symlinks).
uint64_t dir_size_bytes(const fs::path& dir) {
  uint64_t n = 0;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file()) n += fs::file_size(e.path());
  }
  return n;
}

std::vector<std::string> file_names(const ModelInfo& info) {
  std::vector<std::string> names;
  for (const auto& f : info.files) names.push_back(f.name);
  return names;
}

struct Failure {
  ErrorCode code = ErrorCode::internal;
  std::string message;
};

// The Error that inspecting `source` throws; a test failure when it does not throw one.
Failure inspect_failure(const fs::path& source) {
  try {
    ModelInfo info = inspect_model_source(source);
    ADD_FAILURE() << "inspect_model_source(" << source << ") accepted the source (dtype " << info.dtype << ")";
  } catch (const Error& e) {
    return Failure{e.code(), e.what()};
  }
  return {};
}

void expect_mentions(const Failure& f, std::initializer_list<std::string_view> parts) {
  for (std::string_view part : parts) {
    EXPECT_NE(f.message.find(part), std::string::npos) << "'" << part << "' not in: " << f.message;
  }
}

json read_json(const fs::path& p) { return json::parse(test::read_file(p)); }
void write_json(const fs::path& p, const json& j) { test::write_file(p, j.dump(2) + "\n"); }

// Rewrites the safetensors file at `path` with its tensors passed through `edit` first.
void rewrite_safetensors(const fs::path& path, const std::function<void(std::vector<StWriteTensor>&)>& edit) {
  SafetensorsFile f = SafetensorsFile::open(path);  // stays mapped while the new file is written
  std::vector<StWriteTensor> tensors;
  for (const StTensor& t : f.tensors()) tensors.push_back(StWriteTensor{t.name, t.dtype, t.shape, t.bytes});
  edit(tensors);
  write_safetensors(path, tensors, f.metadata());
}

// ---- tiny HF folders --------------------------------------------------------------------------

TEST(ModelSource, TinyDenseFolder) {
  test::TempDir tmp;
  const fs::path dir = tmp / "My Model_v1";
  test::write_tiny_hf_model(dir);

  ModelInfo info = inspect_model_source(dir);
  EXPECT_EQ(info.format, ModelFormat::safetensors);
  EXPECT_STREQ(to_string(info.format), "safetensors");
  EXPECT_EQ(info.config.architecture, "llama");
  EXPECT_EQ(info.config.n_layers, 2);
  EXPECT_FALSE(info.gptq.has_value());
  EXPECT_EQ(info.dtype, "F16");
  EXPECT_EQ(info.suggested_tag, "fp16");
  EXPECT_EQ(info.n_params, tiny_n_params({}));
  EXPECT_EQ(info.n_params, 36000u);  // the formula at the default TinyShape (vocab 272), worked by hand
  EXPECT_EQ(file_names(info), (std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.json",
                                                        "tokenizer_config.json"}));
  for (const auto& f : info.files) {
    EXPECT_EQ(f.path, dir / f.name);
    EXPECT_EQ(f.size_bytes, fs::file_size(dir / f.name)) << f.name;
  }
  EXPECT_EQ(info.size_bytes, dir_size_bytes(dir));
  EXPECT_EQ(info.suggested_name, "my-model_v1");
}

TEST(ModelSource, LeavesUnknownAndPickleFilesBehind) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  test::write_file(dir / "pytorch_model.bin", "not loaded");
  test::write_file(dir / "notes.txt", "not stored");
  fs::create_directories(dir / "onnx");

  ModelInfo info = inspect_model_source(dir);
  EXPECT_EQ(file_names(info), (std::vector<std::string>{"config.json", "model.safetensors", "tokenizer.json",
                                                        "tokenizer_config.json"}));
  EXPECT_EQ(info.size_bytes, dir_size_bytes(dir) - fs::file_size(dir / "pytorch_model.bin") -
                                 fs::file_size(dir / "notes.txt"));
}

TEST(ModelSource, HfCacheSnapshotIsNamedAfterTheRepo) {
  // models--Org--Some.Model/{blobs/<sha>, snapshots/<commit>/<name> -> ../../blobs/<sha>}, as the
  // huggingface_hub cache lays them out.
  test::TempDir tmp;
  const fs::path repo = tmp / "models--Org--Some.Model";
  const fs::path built = tmp / "built";
  test::write_tiny_hf_model(built);
  const fs::path snapshot = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567";
  fs::create_directories(repo / "blobs");
  fs::create_directories(snapshot);
  int i = 0;
  for (const auto& e : fs::directory_iterator(built)) {
    const std::string blob = "blob" + std::to_string(i++);
    fs::copy_file(e.path(), repo / "blobs" / blob);
    fs::create_symlink(fs::path("../../blobs") / blob, snapshot / e.path().filename());
  }

  ModelInfo info = inspect_model_source(snapshot);
  EXPECT_EQ(info.suggested_name, "some.model");
  EXPECT_EQ(info.n_params, tiny_n_params({}));
  EXPECT_EQ(info.size_bytes, dir_size_bytes(built));  // sizes of the blobs, not of the links
  // A trailing slash names the same folder.
  EXPECT_EQ(inspect_model_source(snapshot.string() + "/").suggested_name, "some.model");
}

TEST(ModelSource, SanitizesNames) {
  EXPECT_EQ(sanitize_model_name("My Model_v1"), "my-model_v1");
  EXPECT_EQ(sanitize_model_name("  A//B  "), "a-b");
  EXPECT_EQ(sanitize_model_name("..x..y.."), "x.y");
  EXPECT_EQ(sanitize_model_name("---"), "");
  EXPECT_EQ(sanitize_model_name(std::string(200, 'a')).size(), 96u);
}

TEST(ModelSource, TinyGptqFolder) {
  test::TempDir tmp;
  const fs::path dir = tmp / "tiny-gptq";
  test::write_tiny_hf_model(dir, gptq_options());

  ModelInfo info = inspect_model_source(dir);
  EXPECT_EQ(info.format, ModelFormat::safetensors);
  ASSERT_TRUE(info.gptq.has_value());
  EXPECT_EQ(info.gptq->bits, 4);
  EXPECT_EQ(info.gptq->group_size, 16);
  EXPECT_FALSE(info.gptq->desc_act);
  EXPECT_EQ(info.dtype, "GPTQ-4bit-g16");
  EXPECT_EQ(info.suggested_tag, "gptq-4b-g16");
  // qweight [K/8, N] counts as the K*N weights it packs; scales, qzeros and g_idx are not parameters.
  EXPECT_EQ(info.n_params, tiny_n_params({}));
  EXPECT_EQ(file_names(info), (std::vector<std::string>{"config.json", "model.safetensors", "quantize_config.json",
                                                        "tokenizer.json", "tokenizer_config.json"}));
  EXPECT_EQ(info.size_bytes, dir_size_bytes(dir));
  EXPECT_EQ(info.suggested_name, "tiny-gptq");
}

TEST(ModelSource, ShardedFolderInspectsLikeOneFile) {
  test::TempDir tmp;
  test::write_tiny_hf_model(tmp / "one");
  test::write_tiny_hf_model(tmp / "three", sharded_options(3));

  ModelInfo one = inspect_model_source(tmp / "one");
  ModelInfo three = inspect_model_source(tmp / "three");
  EXPECT_EQ(three.n_params, one.n_params);
  EXPECT_EQ(three.dtype, one.dtype);
  EXPECT_EQ(three.suggested_tag, one.suggested_tag);
  EXPECT_EQ(three.config.to_json(), one.config.to_json());
  EXPECT_EQ(file_names(three),
            (std::vector<std::string>{"config.json", "model-00001-of-00003.safetensors",
                                      "model-00002-of-00003.safetensors", "model-00003-of-00003.safetensors",
                                      "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json"}));
  EXPECT_EQ(three.size_bytes, dir_size_bytes(tmp / "three"));
}

// ---- GGUF ---------------------------------------------------------------------------------------

TEST(ModelSource, TinyGguf) {
  test::TempDir tmp;
  const fs::path path = tmp / "SmolLM2-135M-Instruct.Q4_1.gguf";
  test::write_tiny_gguf(path);

  ModelInfo info = inspect_model_source(path);
  EXPECT_EQ(info.format, ModelFormat::gguf);
  EXPECT_STREQ(to_string(info.format), "gguf");
  EXPECT_EQ(info.config.architecture, "llama");
  EXPECT_EQ(info.config.n_layers, 2);
  EXPECT_FALSE(info.config.tie_word_embeddings);
  EXPECT_FALSE(info.gptq.has_value());
  EXPECT_EQ(info.n_params, tiny_n_params({}));
  // No general.file_type: the label is the type holding the most bytes (all tensors are F32).
  EXPECT_EQ(info.dtype, "F32");
  EXPECT_EQ(info.suggested_tag, "fp32");
  ASSERT_EQ(info.files.size(), 1u);
  EXPECT_EQ(info.files[0].name, "SmolLM2-135M-Instruct.Q4_1.gguf");
  EXPECT_EQ(info.files[0].path, path);
  EXPECT_EQ(info.size_bytes, fs::file_size(path));
  EXPECT_EQ(info.files[0].size_bytes, info.size_bytes);
  // The quantization label is the tag's business, not the name's.
  EXPECT_EQ(info.suggested_name, "smollm2-135m-instruct");
}

TEST(ModelSource, GgufNamesDropTheQuantizationLabel) {
  test::TempDir tmp;
  const std::pair<const char*, const char*> cases[] = {
      {"SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct"},
      {"foo-Q4_K_M.gguf", "foo"},
      {"bar.gguf", "bar"},
      {"Llama-3.2-1B-Instruct-bf16.gguf", "llama-3.2-1b-instruct"},
      {"model_f16.gguf", "model"},
      {"Q8_0.gguf", "q8_0"},  // nothing would be left: keep the label
  };
  for (const auto& [file, name] : cases) {
    test::write_tiny_gguf(tmp / file);
    EXPECT_EQ(inspect_model_source(tmp / file).suggested_name, name) << file;
  }
}

// ---- the real SmolLM2 GGUF and the HF folder converted from it ------------------------------------

// Parameters of the real GGUF, counted by the gguf Python package (the reference reader).
uint64_t gguf_package_n_params(const fs::path& gguf) {
  auto run = test::run_command({test::python().string(), "-c",
                                "import sys, gguf; r = gguf.GGUFReader(sys.argv[1]); "
                                "print(sum(int(t.n_elements) for t in r.tensors))",
                                gguf.string()});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  return run.exit_code == 0 ? std::stoull(run.output) : 0;
}

TEST(ModelSource, RealSmolLM2Gguf) {
  GPTQD_REQUIRE_FILE(test::test_model_path());
  GPTQD_REQUIRE_FILE(test::python());
  const fs::path path = test::test_model_path();
  ModelInfo info = inspect_model_source(path);
  EXPECT_EQ(info.format, ModelFormat::gguf);
  EXPECT_EQ(info.config.architecture, "llama");
  EXPECT_EQ(info.config.n_layers, 30);
  EXPECT_TRUE(info.config.tie_word_embeddings);
  EXPECT_EQ(info.dtype, "Q4_1");
  EXPECT_EQ(info.suggested_tag, "q4_1");
  EXPECT_EQ(info.suggested_name, "smollm2-135m-instruct");
  EXPECT_EQ(info.size_bytes, fs::file_size(path));
  // 134,515,008 as the gguf package counts it (gguf_package_n_params); hard-coded too so that a
  // different asset is noticed.
  EXPECT_EQ(info.n_params, 134'515'008u);
  EXPECT_EQ(info.n_params, gguf_package_n_params(path));
}

class RealModelSource : public ::testing::Test {
 protected:
  // gguf_to_hf.py takes a few seconds per folder: convert once for the whole suite.
  static void SetUpTestSuite() {
    if (!fs::exists(test::test_model_path()) || !fs::exists(test::python())) return;
    tmp_ = std::make_unique<test::TempDir>();
    const fs::path script = test::source_dir() / "tests" / "reference" / "gguf_to_hf.py";
    for (const auto& [dir, shards] : {std::pair{"hf", "1"}, std::pair{"hf-2", "2"}}) {
      auto run = test::run_command({test::python().string(), script.string(), test::test_model_path().string(),
                                    (tmp_->path() / dir).string(), "--dtype", "float16", "--shards", shards});
      if (run.exit_code != 0) {
        conversion_error_ += std::string("gguf_to_hf.py --shards ") + shards + ": " + run.output;
      }
    }
  }
  static void TearDownTestSuite() { tmp_.reset(); }

  void SetUp() override {
    GPTQD_REQUIRE_FILE(test::test_model_path());
    GPTQD_REQUIRE_FILE(test::python());
    ASSERT_TRUE(tmp_ && conversion_error_.empty()) << conversion_error_;
  }

  static fs::path hf_dir(const char* name) { return tmp_->path() / name; }

  static std::unique_ptr<test::TempDir> tmp_;
  static std::string conversion_error_;
};
std::unique_ptr<test::TempDir> RealModelSource::tmp_;
std::string RealModelSource::conversion_error_;

TEST_F(RealModelSource, ConvertedHfFolderMatchesTheGguf) {
  ModelInfo gguf = inspect_model_source(test::test_model_path());
  for (const char* name : {"hf", "hf-2"}) {
    SCOPED_TRACE(name);
    ModelInfo hf = inspect_model_source(hf_dir(name));
    EXPECT_EQ(hf.format, ModelFormat::safetensors);
    EXPECT_EQ(hf.config.architecture, "llama");
    EXPECT_EQ(hf.config.n_layers, 30);
    EXPECT_EQ(hf.config.hidden_size, gguf.config.hidden_size);
    EXPECT_EQ(hf.config.n_kv_heads, gguf.config.n_kv_heads);
    EXPECT_EQ(hf.config.vocab_size, gguf.config.vocab_size);
    EXPECT_TRUE(hf.config.tie_word_embeddings);
    EXPECT_EQ(hf.n_params, gguf.n_params);
    EXPECT_EQ(hf.dtype, "F16");
    EXPECT_EQ(hf.suggested_tag, "fp16");
    EXPECT_FALSE(hf.gptq.has_value());
    EXPECT_EQ(hf.size_bytes, dir_size_bytes(hf_dir(name)));
  }
  std::vector<std::string> two = file_names(inspect_model_source(hf_dir("hf-2")));
  EXPECT_EQ(std::count(two.begin(), two.end(), "model-00001-of-00002.safetensors"), 1);
  EXPECT_EQ(std::count(two.begin(), two.end(), "model-00002-of-00002.safetensors"), 1);
  EXPECT_EQ(std::count(two.begin(), two.end(), "model.safetensors.index.json"), 1);
}

// ---- bad sources ----------------------------------------------------------------------------------

TEST(ModelSourceRejects, MissingPath) {
  test::TempDir tmp;
  Failure f = inspect_failure(tmp / "no-such-model");
  EXPECT_EQ(f.code, ErrorCode::invalid_argument);
  expect_mentions(f, {"no-such-model", "no such file"});
}

TEST(ModelSourceRejects, PlainTextFile) {
  test::TempDir tmp;
  test::write_file(tmp / "notes.txt", "hello\n");
  Failure f = inspect_failure(tmp / "notes.txt");
  EXPECT_EQ(f.code, ErrorCode::invalid_argument);
  expect_mentions(f, {"notes.txt", ".gguf"});
}

TEST(ModelSourceRejects, TextFileNamedGguf) {
  test::TempDir tmp;
  test::write_file(tmp / "fake.gguf", "hello, this is not a GGUF file\n");
  Failure f = inspect_failure(tmp / "fake.gguf");
  expect_mentions(f, {"fake.gguf"});
}

TEST(ModelSourceRejects, PickleOnlyFolder) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  fs::remove(dir / "model.safetensors");
  test::write_file(dir / "pytorch_model.bin", std::string("\x80\x02", 2) + "pickle bytes");
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::unsupported);
  expect_mentions(f, {"pytorch_model.bin", "pickle", "safetensors"});
}

TEST(ModelSourceRejects, FolderWithoutTokenizer) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  fs::remove(dir / "tokenizer.json");
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"tokenizer.json", "tokenizer.model"});
}

TEST(ModelSourceRejects, EmptyFolder) {
  test::TempDir tmp;
  fs::create_directories(tmp / "empty");
  Failure f = inspect_failure(tmp / "empty");
  EXPECT_EQ(f.code, ErrorCode::invalid_argument);
  expect_mentions(f, {"empty", "safetensors"});
}

TEST(ModelSourceRejects, EmptyJsonSideFile) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  test::write_file(dir / "generation_config.json", "");
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"generation_config.json"});
}

TEST(ModelSourceRejects, TokenizerJsonWithoutModel) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  write_json(dir / "tokenizer.json", json{{"version", "1.0"}});
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"tokenizer.json", "model"});
}

TEST(ModelSourceRejects, ConfigWithoutLayerCount) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  json config = read_json(dir / "config.json");
  config.erase("num_hidden_layers");
  write_json(dir / "config.json", config);
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"config.json", "num_hidden_layers"});
}

TEST(ModelSourceRejects, UnsupportedModelType) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  json config = read_json(dir / "config.json");
  config["model_type"] = "gpt2";
  write_json(dir / "config.json", config);
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::unsupported);
  expect_mentions(f, {"config.json", "model_type", "gpt2"});
}

TEST(ModelSourceRejects, MissingTensor) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  rewrite_safetensors(dir / "model.safetensors", [](std::vector<StWriteTensor>& t) {
    std::erase_if(t, [](const StWriteTensor& x) { return x.name == "model.layers.1.mlp.down_proj.weight"; });
  });
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"model.layers.1.mlp.down_proj.weight", "missing", "[32, 64]"});
}

TEST(ModelSourceRejects, TensorWithWrongShape) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  // up_proj is [I, H] = [64, 32]; store the same bytes as [32, 64] (a transposed export).
  rewrite_safetensors(dir / "model.safetensors", [](std::vector<StWriteTensor>& t) {
    for (auto& x : t) {
      if (x.name == "model.layers.1.mlp.up_proj.weight") x.shape = {32, 64};
    }
  });
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"model.layers.1.mlp.up_proj.weight", "expected shape [64, 32]", "found [32, 64]"});
}

TEST(ModelSourceRejects, GptqBitsDisagreeWithTensors) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir, gptq_options());
  json quantize = read_json(dir / "quantize_config.json");
  quantize["bits"] = 8;
  write_json(dir / "quantize_config.json", quantize);
  json config = read_json(dir / "config.json");
  config["quantization_config"]["bits"] = 8;
  write_json(dir / "config.json", config);
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  // 8-bit packs 4 codes per int32: qweight [K/4, N] = [8, 32]; the 4-bit file holds [K/8, N] = [4, 32].
  expect_mentions(f, {"model.layers.0.self_attn.q_proj.qweight", "bits=8", "I32 [8, 32]", "found I32 [4, 32]"});
}

TEST(ModelSourceRejects, QuantizeConfigDisagreesWithConfigJson) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir, gptq_options());
  json quantize = read_json(dir / "quantize_config.json");
  quantize["group_size"] = 32;
  write_json(dir / "quantize_config.json", quantize);
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"quantize_config.json", "config.json quantization_config", "group_size", "32", "16"});
}

TEST(ModelSourceRejects, TruncatedSafetensors) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir);
  fs::resize_file(dir / "model.safetensors", fs::file_size(dir / "model.safetensors") - 100);
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"model.safetensors", "truncated"});
}

TEST(ModelSourceRejects, TruncatedShard) {
  test::TempDir tmp;
  const fs::path dir = tmp / "m";
  test::write_tiny_hf_model(dir, sharded_options(3));
  const fs::path shard = dir / "model-00002-of-00003.safetensors";
  fs::resize_file(shard, fs::file_size(shard) / 2);
  Failure f = inspect_failure(dir);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"model-00002-of-00003.safetensors", "truncated"});
}

TEST(ModelSourceRejects, GgufWithFewerLayersThanItsMetadataSays) {
  test::TempDir tmp;
  const fs::path path = tmp / "tiny.gguf";
  test::write_tiny_gguf(path);  // 2 layers
  // Patch the u32 value of llama.block_count: key string, then value type 4 (uint32), then 2 -> 3.
  std::string bytes = test::read_file(path);
  const std::string key = "llama.block_count";
  const size_t at = bytes.find(key);
  ASSERT_NE(at, std::string::npos);
  uint32_t type = 0, value = 0;
  std::memcpy(&type, bytes.data() + at + key.size(), 4);
  std::memcpy(&value, bytes.data() + at + key.size() + 4, 4);
  ASSERT_EQ(type, 4u);
  ASSERT_EQ(value, 2u);
  value = 3;
  std::memcpy(bytes.data() + at + key.size() + 4, &value, 4);
  test::write_file(path, bytes);

  Failure f = inspect_failure(path);
  EXPECT_EQ(f.code, ErrorCode::invalid_model);
  expect_mentions(f, {"tiny.gguf", "blk.2.attn_norm.weight", "missing"});
}

}  // namespace
}  // namespace gptqd::engine
