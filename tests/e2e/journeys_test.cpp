// SPDX-License-Identifier: Apache-2.0
// The pull journey through a real gptqd and gptqctl: the SmolLM2 GGUF, an HF folder written from
// its dequantized weights, sharded and GPTQ folders, dedup, rm — and every bad input leaving the
// registry exactly as it was (e2e tests).
#include <gtest/gtest.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/safetensors.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

// sha256 of a file by an implementation that is not ours (coreutils).
std::string sha256sum(const fs::path& p) {
  auto r = run_command({"sha256sum", p.string()});
  return "sha256:" + r.output.substr(0, 64);
}

class JourneyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<DaemonProcess>(dir_ / "d");
    fs::create_directories(dir_ / "d");
    ASSERT_TRUE(daemon_->start()) << daemon_->log();
  }

  CommandResult ctl(std::vector<std::string> args) { return daemon_->ctl(args); }
  json tags() { return json::parse(ctl({"--json", "list"}).output); }

  // Everything that must not change when a request fails: the API's view, the database rows,
  // and the blob and tmp directories.
  struct Snapshot {
    json tags;
    std::string db_dump;
    std::vector<std::string> blobs, tmp;
    bool operator==(const Snapshot&) const = default;
  };
  Snapshot snapshot() {
    Snapshot s;
    s.tags = tags();
    auto dump = run_command({"sqlite3", (daemon_->state_dir() / "registry.db").string(), ".dump"});
    s.db_dump = dump.output;
    s.blobs = list_dir(daemon_->state_dir() / "blobs");
    s.tmp = list_dir(daemon_->state_dir() / "tmp");
    return s;
  }

  // Pulls `source`, expects failure with `message` in the output and no change anywhere.
  void expect_rejected(const fs::path& source, const std::string& message) {
    Snapshot before = snapshot();
    auto r = ctl({"pull", source.string()});
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find(message), std::string::npos) << "expected '" << message << "' in: " << r.output;
    EXPECT_EQ(r.output.find('\n'), r.output.size() - 1) << "the error should be one line: " << r.output;
    Snapshot after = snapshot();
    EXPECT_TRUE(before == after) << "the registry changed after a rejected pull of " << source;
    EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/health").status, 200) << daemon_->log();
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(JourneyTest, SmolLM2GgufPullListShowRm) {
  const fs::path gguf = test_model_path();
  GPTQD_REQUIRE_FILE(gguf);
  auto pull = ctl({"pull", gguf.string()});
  ASSERT_EQ(pull.exit_code, 0) << pull.output << daemon_->log();
  EXPECT_NE(pull.output.find("pulled smollm2-135m-instruct:q4_1 (llama, 135M params, Q4_1, 98.4 MB)"), std::string::npos)
      << pull.output;

  auto list = ctl({"list"});
  ASSERT_EQ(list.exit_code, 0);
  for (const char* field : {"NAME", "smollm2-135m-instruct", "q4_1 (default)", "llama", "135M", "Q4_1", "98.4 MB"}) {
    EXPECT_NE(list.output.find(field), std::string::npos) << field << " missing in\n" << list.output;
  }
  EXPECT_NE(list.output.find(gguf.string()), std::string::npos) << list.output;

  const std::string digest = sha256sum(gguf);
  auto show = ctl({"show", "smollm2-135m-instruct"});
  ASSERT_EQ(show.exit_code, 0) << show.output;
  for (std::string field : {std::string("smollm2-135m-instruct:q4_1 (default tag)"), std::string("Architecture  llama"),
                            std::string("134,515,008 (135M)"), std::string("Dtype         Q4_1"),
                            std::string("98,362,432 bytes"), std::string("(gguf-file)"), digest,
                            std::string("SmolLM2-135M-Instruct.Q4_1.gguf"), std::string("layers 30, hidden 576, heads 9/3 kv")}) {
    EXPECT_NE(show.output.find(field), std::string::npos) << field << " missing in\n" << show.output;
  }
  json shown = json::parse(ctl({"--json", "show", "smollm2-135m-instruct:q4_1"}).output);
  EXPECT_EQ(shown["n_params"], 134515008);
  EXPECT_EQ(shown["files"][0]["digest"], digest);
  EXPECT_EQ(shown["model_info"]["n_layers"], 30);
  EXPECT_EQ(shown["model_info"]["tie_word_embeddings"], true);

  // The blob store holds exactly that file under its digest.
  EXPECT_EQ(list_dir(daemon_->state_dir() / "blobs"), std::vector<std::string>{"sha256-" + digest.substr(7)});
  EXPECT_EQ(read_file(daemon_->state_dir() / "blobs" / ("sha256-" + digest.substr(7))).size(), 98362432u);

  auto rm = ctl({"rm", "smollm2-135m-instruct:q4_1"});
  ASSERT_EQ(rm.exit_code, 0) << rm.output;
  EXPECT_NE(rm.output.find("freed 98.4 MB"), std::string::npos) << rm.output;
  EXPECT_TRUE(list_dir(daemon_->state_dir() / "blobs").empty());
  EXPECT_EQ(tags()["models"].size(), 0u);
  auto again = ctl({"show", "smollm2-135m-instruct"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.output.find("not found"), std::string::npos);
}

TEST_F(JourneyTest, HfFolderWrittenFromTheGgufWeights) {
  const fs::path gguf = test_model_path();
  GPTQD_REQUIRE_FILE(gguf);
  const fs::path folder = dir_ / "SmolLM2-135M-Instruct-fp16";
  auto conv = run_command({python().string(), (source_dir() / "tests/reference/gguf_to_hf.py").string(), gguf.string(),
                           folder.string(), "--dtype", "float16"});
  ASSERT_EQ(conv.exit_code, 0) << conv.output;

  auto pull = ctl({"pull", folder.string()});
  ASSERT_EQ(pull.exit_code, 0) << pull.output << daemon_->log();
  EXPECT_NE(pull.output.find("pulled smollm2-135m-instruct-fp16:fp16 (llama, 135M params, F16"), std::string::npos)
      << pull.output;
  json shown = json::parse(ctl({"--json", "show", "smollm2-135m-instruct-fp16"}).output);
  EXPECT_EQ(shown["details"]["format"], "safetensors");
  EXPECT_EQ(shown["source_kind"], "hf-folder");
  EXPECT_EQ(shown["n_params"], 134515008) << "same weights as the GGUF, so the same count";
  EXPECT_EQ(shown["model_info"]["hidden_size"], 576);
  // Every stored file is the source file, byte for byte (digests from coreutils).
  std::set<std::string> names;
  uint64_t total = 0;
  for (const auto& f : shown["files"]) {
    const std::string name = f["name"];
    names.insert(name);
    EXPECT_EQ(f["digest"], sha256sum(folder / name)) << name;
    total += f["size"].get<uint64_t>();
  }
  EXPECT_TRUE(names.contains("config.json"));
  EXPECT_TRUE(names.contains("model.safetensors"));
  EXPECT_TRUE(names.contains("tokenizer.json"));
  EXPECT_EQ(shown["size"], total);
  // 135M fp16 parameters: the weights file is 2 bytes per parameter plus its header.
  auto st = engine::SafetensorsFile::open(folder / "model.safetensors");
  uint64_t n = 0;
  for (const auto& t : st.tensors()) n += t.n_elements;
  EXPECT_EQ(n, 134515008u);
}

TEST_F(JourneyTest, ShardedAndGptqFolders) {
  write_tiny_hf_model(dir_ / "tiny-sharded", tiny_sharded_options(3));
  write_tiny_hf_model(dir_ / "tiny-gptq", tiny_gptq_options());
  auto a = ctl({"pull", (dir_ / "tiny-sharded").string()});
  ASSERT_EQ(a.exit_code, 0) << a.output;
  auto b = ctl({"pull", (dir_ / "tiny-gptq").string()});
  ASSERT_EQ(b.exit_code, 0) << b.output;
  EXPECT_NE(b.output.find("pulled tiny-gptq:gptq-4b-g16"), std::string::npos) << b.output;
  json sharded = json::parse(ctl({"--json", "show", "tiny-sharded:fp16"}).output);
  std::set<std::string> names;
  for (const auto& f : sharded["files"]) names.insert(f["name"].get<std::string>());
  EXPECT_TRUE(names.contains("model.safetensors.index.json"));
  EXPECT_TRUE(names.contains("model-00003-of-00003.safetensors"));
  json gptq = json::parse(ctl({"--json", "show", "tiny-gptq"}).output);
  EXPECT_EQ(gptq["dtype"], "GPTQ-4bit-g16");
  EXPECT_EQ(gptq["n_params"], sharded["n_params"]) << "packed weights count as unpacked parameters";
}

TEST_F(JourneyTest, SameFileTwiceIsStoredOnce) {
  write_tiny_gguf(dir_ / "tiny.gguf");
  ASSERT_EQ(ctl({"pull", (dir_ / "tiny.gguf").string()}).exit_code, 0);
  auto dup = ctl({"pull", (dir_ / "tiny.gguf").string()});
  EXPECT_EQ(dup.exit_code, 1);
  EXPECT_NE(dup.output.find("already exists"), std::string::npos) << dup.output;
  ASSERT_EQ(ctl({"pull", (dir_ / "tiny.gguf").string(), "--name", "copy:v2"}).exit_code, 0);
  EXPECT_EQ(tags()["models"].size(), 2u);
  EXPECT_EQ(list_dir(daemon_->state_dir() / "blobs").size(), 1u);
  ASSERT_EQ(ctl({"rm", "tiny"}).exit_code, 0);
  EXPECT_EQ(list_dir(daemon_->state_dir() / "blobs").size(), 1u) << "copy:v2 still uses the blob";
  ASSERT_EQ(ctl({"rm", "copy:v2"}).exit_code, 0);
  EXPECT_TRUE(list_dir(daemon_->state_dir() / "blobs").empty());
}

// ---- bad input: each a clear error, the registry unchanged ----------------------------------------

class BadInputTest : public JourneyTest {
 protected:
  void SetUp() override {
    JourneyTest::SetUp();
    // A model already registered: a failed pull must not disturb it.
    write_tiny_gguf(dir_ / "keep.gguf");
    ASSERT_EQ(ctl({"pull", (dir_ / "keep.gguf").string()}).exit_code, 0);
  }
  fs::path tiny_folder(const std::string& name, TinyHfOptions o = {}) {
    fs::path p = dir_ / name;
    write_tiny_hf_model(p, o);
    return p;
  }
  // Reads, edits and rewrites a safetensors header, keeping the data bytes.
  void edit_header(const fs::path& file, const std::function<void(json&)>& edit) {
    std::string bytes = read_file(file);
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    json header = json::parse(bytes.substr(8, n));
    edit(header);
    std::string text = header.dump();
    text.resize(n, ' ');  // same length, so the data stays where it was
    ASSERT_LE(header.dump().size(), n) << "edited header grew";
    bytes.replace(8, n, text);
    write_file(file, bytes);
  }
};

TEST_F(BadInputTest, TruncatedSafetensors) {
  fs::path p = tiny_folder("trunc");
  fs::resize_file(p / "model.safetensors", fs::file_size(p / "model.safetensors") - 100);
  expect_rejected(p, "the file is truncated");
}

TEST_F(BadInputTest, HeaderLengthPastEof) {
  fs::path p = tiny_folder("hdr");
  std::string bytes = read_file(p / "model.safetensors");
  uint64_t n = bytes.size() + 1000;
  std::memcpy(bytes.data(), &n, 8);
  write_file(p / "model.safetensors", bytes);
  expect_rejected(p, "invalid header length");
}

TEST_F(BadInputTest, OverlappingOffsets) {
  fs::path p = tiny_folder("overlap");
  edit_header(p / "model.safetensors", [](json& h) {
    // Two norms of the same size: point the second at the first's bytes.
    h["model.layers.0.post_attention_layernorm.weight"]["data_offsets"] =
        h["model.layers.0.input_layernorm.weight"]["data_offsets"];
  });
  expect_rejected(p, "overlap");
}

TEST_F(BadInputTest, DtypeDisagreesWithTheByteSpan) {
  fs::path p = tiny_folder("dtype");
  edit_header(p / "model.safetensors", [](json& h) { h["model.norm.weight"]["dtype"] = "F32"; });
  expect_rejected(p, "model.norm.weight");
}

TEST_F(BadInputTest, TensorShapeDisagreesWithConfig) {
  fs::path p = tiny_folder("shape");
  json cfg = json::parse(read_file(p / "config.json"));
  cfg["intermediate_size"] = 48;
  write_file(p / "config.json", cfg.dump());
  expect_rejected(p, "model.layers.0.mlp.gate_proj.weight: expected shape [48, 32], found [64, 32]");
}

TEST_F(BadInputTest, ConfigMissingFields) {
  fs::path p = tiny_folder("cfg");
  json cfg = json::parse(read_file(p / "config.json"));
  cfg.erase("num_hidden_layers");
  write_file(p / "config.json", cfg.dump());
  expect_rejected(p, "num_hidden_layers");
}

TEST_F(BadInputTest, UnsupportedArchitecture) {
  fs::path p = tiny_folder("arch");
  json cfg = json::parse(read_file(p / "config.json"));
  cfg["model_type"] = "gpt2";
  write_file(p / "config.json", cfg.dump());
  expect_rejected(p, "gpt2");
}

TEST_F(BadInputTest, GptqConfigDisagreesWithTensors) {
  fs::path p = tiny_folder("gptq-bad", tiny_gptq_options());
  for (const char* f : {"quantize_config.json", "config.json"}) {
    json j = json::parse(read_file(p / f));
    if (j.contains("quantization_config")) j["quantization_config"]["bits"] = 8;
    else j["bits"] = 8;
    write_file(p / f, j.dump());
  }
  // 8-bit codes of a 32-input linear need 8 rows; the 4-bit tensors have 4.
  expect_rejected(p, "model.layers.0.self_attn.q_proj.qweight: expected I32 [8, 32]");
}

TEST_F(BadInputTest, GgufWithAbsurdCounts) {
  write_tiny_gguf(dir_ / "absurd.gguf");
  std::string bytes = read_file(dir_ / "absurd.gguf");
  uint64_t n = uint64_t{1} << 63;
  std::memcpy(bytes.data() + 8, &n, 8);  // n_tensors
  write_file(dir_ / "absurd.gguf", bytes);
  expect_rejected(dir_ / "absurd.gguf", "absurd.gguf");
}

TEST_F(BadInputTest, GgufWithOutOfBoundsOffset) {
  write_tiny_gguf(dir_ / "oob.gguf");
  std::string bytes = read_file(dir_ / "oob.gguf");
  // The last tensor info ends right before the padding to the data section: find its offset field
  // by searching for the last tensor's name.
  const std::string last = "blk.1.ffn_down.weight";
  size_t at = bytes.rfind(last);
  ASSERT_NE(at, std::string::npos);
  size_t offset_field = at + last.size() + 4 + 2 * 8 + 4;  // name, n_dims, 2 dims, type
  uint64_t far = uint64_t{1} << 40;
  std::memcpy(bytes.data() + offset_field, &far, 8);
  write_file(dir_ / "oob.gguf", bytes);
  expect_rejected(dir_ / "oob.gguf", "blk.1.ffn_down.weight");
}

TEST_F(BadInputTest, PathsThatAreNotModels) {
  write_file(dir_ / "notes.txt", "hello");
  expect_rejected(dir_ / "notes.txt", "is not a model");
  fs::create_directories(dir_ / "empty");
  expect_rejected(dir_ / "empty", "is not a model");
  fs::create_directories(dir_ / "pickles");
  write_file(dir_ / "pickles" / "pytorch_model.bin", "\x80\x02}q\x00.");
  write_file(dir_ / "pickles" / "config.json", "{}");
  expect_rejected(dir_ / "pickles", "pickle");
  write_file(dir_ / "fake.gguf", "GGUF");
  expect_rejected(dir_ / "fake.gguf", "fake.gguf");
  // Not even on disk: gptqctl says so itself.
  auto r = ctl({"pull", (dir_ / "missing.gguf").string()});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("no such file or directory"), std::string::npos) << r.output;
}

TEST_F(BadInputTest, MalformedHttpAndOversizedBody) {
  Snapshot before = snapshot();
  HttpReply bad = parse_reply(raw_exchange(daemon_->socket(), "POST /api/pull HTTP/1.1\r\nContent-Length: x\r\n\r\n"));
  EXPECT_EQ(bad.status, 400);
  HttpReply big = http_request(daemon_->socket(), "POST", "/api/pull",
                               R"({"model":")" + std::string(9u << 20, 'a') + R"("})");
  EXPECT_EQ(big.status, 413);
  HttpReply wrong = http_request(daemon_->socket(), "POST", "/api/pull", R"({"model": ["/x"]})");
  EXPECT_EQ(wrong.status, 400);
  HttpReply rel = http_request(daemon_->socket(), "POST", "/api/pull", R"({"model": "relative/x.gguf"})");
  EXPECT_EQ(rel.status, 400);
  HttpReply badname = http_request(daemon_->socket(), "POST", "/api/pull",
                                   json{{"model", (dir_ / "keep.gguf").string()}, {"name", "../../etc"}}.dump());
  EXPECT_EQ(badname.status, 400);
  EXPECT_NE(badname.body.find("invalid model name"), std::string::npos) << badname.body;
  EXPECT_TRUE(before == snapshot());
}

}  // namespace
}  // namespace gptqd::test
