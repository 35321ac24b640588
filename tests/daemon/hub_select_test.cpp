// SPDX-License-Identifier: Apache-2.0
// Which files of a Hub model repo a pull fetches, and the partials' keys (unit).
#include <gtest/gtest.h>

#include <algorithm>

#include "daemon/hub_pull.h"
#include "engine/error.h"

namespace gptqd::daemon {
namespace {

HubFile file(const std::string& path, bool lfs = false) {
  HubFile f;
  f.path = path;
  f.size = 10;
  f.blob_id = std::string(40, 'b');
  if (lfs) f.lfs_sha256 = std::string(64, 'a');
  return f;
}

std::vector<std::string> names(const std::vector<HubFile>& files) {
  std::vector<std::string> out;
  for (const auto& f : files) out.push_back(f.path);
  return out;
}

ErrorCode code_of(const std::vector<HubFile>& listed, std::string* message, const std::set<std::string>* shards = nullptr) {
  try {
    select_model_files(listed, "org/x@main", shards);
  } catch (const Error& e) {
    *message = e.what();
    return e.code();
  }
  return ErrorCode::internal;
}

TEST(HubSelect, TakesConfigTokenizerAndSafetensorsSmallFilesFirst) {
  auto got = select_model_files({file("model.safetensors", true), file("config.json"), file("tokenizer.json"),
                                 file("pytorch_model.bin", true), file(".gitattributes"), file("onnx/model.onnx", true),
                                 file("sub/config.json"), file("quantize_config.json"), file("README.md")},
                                "org/x@main");
  EXPECT_EQ(names(got), (std::vector<std::string>{"config.json", "tokenizer.json", "quantize_config.json", "README.md",
                                                  "model.safetensors"}));
}

TEST(HubSelect, TheIndexDecidesWhichShards) {
  const std::set<std::string> shards = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
  auto got = select_model_files({file("config.json"), file("model.safetensors.index.json"), file("consolidated.safetensors", true),
                                 file("model-00001-of-00002.safetensors", true), file("model-00002-of-00002.safetensors", true)},
                                "org/x@main", &shards);
  EXPECT_EQ(names(got), (std::vector<std::string>{"config.json", "model.safetensors.index.json",
                                                  "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"}));
  std::string msg;
  const std::set<std::string> missing = {"model-00003-of-00003.safetensors"};
  EXPECT_EQ(code_of({file("config.json"), file("model.safetensors.index.json")}, &msg, &missing), ErrorCode::invalid_model);
  EXPECT_NE(msg.find("model-00003-of-00003.safetensors"), std::string::npos) << msg;
}

TEST(HubSelect, RefusesPicklesGgufAndReposThatAreNotModels) {
  std::string msg;
  EXPECT_EQ(code_of({file("config.json"), file("pytorch_model.bin", true), file("training_args.bin")}, &msg), ErrorCode::unsupported);
  EXPECT_NE(msg.find("pickle"), std::string::npos) << msg;
  EXPECT_NE(msg.find("pytorch_model.bin"), std::string::npos) << msg;
  EXPECT_NE(msg.find("safetensors"), std::string::npos) << msg;
  EXPECT_EQ(code_of({file("x.Q4_K_M.gguf", true), file("README.md")}, &msg), ErrorCode::unsupported);
  EXPECT_NE(msg.find("gptqctl pull FILE.gguf"), std::string::npos) << msg;
  EXPECT_EQ(code_of({file("model.safetensors", true)}, &msg), ErrorCode::invalid_model);
  EXPECT_NE(msg.find("config.json"), std::string::npos) << msg;
  EXPECT_EQ(code_of({file("config.json")}, &msg), ErrorCode::invalid_model);
  EXPECT_NE(msg.find("no .safetensors"), std::string::npos) << msg;
}

TEST(HubSelect, KeysAreContentAddressed) {
  HubFile lfs = file("model.safetensors", true);
  EXPECT_EQ(download_key(lfs, "ignored"), "lfs-" + std::string(64, 'a'));
  HubFile git = file("config.json");
  EXPECT_EQ(download_key(git, "ignored"), "git-" + std::string(40, 'b'));
  HubFile bare;
  bare.path = "x";
  EXPECT_EQ(download_key(bare, "a").substr(0, 3), "id-");
  EXPECT_NE(download_key(bare, "a"), download_key(bare, "b"));
}

}  // namespace
}  // namespace gptqd::daemon
