// SPDX-License-Identifier: Apache-2.0
// Fuzzes SafetensorsSet::open with a fuzzed model.safetensors.index.json next to two valid shards
// (written once at start-up with write_safetensors): weight_map names, paths, duplicates, shards
// that are missing or do not hold the tensor.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/safetensors.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;
namespace fs = std::filesystem;

namespace {

struct Folder {
  fs::path dir;
  engine::FileMap files;
};

Folder make_folder() {
  Folder f;
  const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
  f.dir = base / ("gptqd-fuzz-index-" + std::to_string(::getpid()));
  fs::create_directories(f.dir);
  const std::vector<float> four = {1.0f, 2.0f, 3.0f, 4.0f};
  const std::span<const std::byte> bytes = std::as_bytes(std::span(four));
  const std::vector<engine::StWriteTensor> shard1 = {
      {"model.embed_tokens.weight", engine::StDtype::F32, {2, 2}, bytes},
      {"model.norm.weight", engine::StDtype::F32, {4}, bytes}};
  const std::vector<engine::StWriteTensor> shard2 = {{"lm_head.weight", engine::StDtype::F32, {1, 4}, bytes}};
  const std::string s1 = "model-00001-of-00002.safetensors", s2 = "model-00002-of-00002.safetensors";
  engine::write_safetensors(f.dir / s1, shard1);
  engine::write_safetensors(f.dir / s2, shard2);
  std::ofstream(f.dir / "config.json") << "{}";
  f.files = {{s1, f.dir / s1}, {s2, f.dir / s2}, {"config.json", f.dir / "config.json"},
             {"model.safetensors.index.json", f.dir / "model.safetensors.index.json"}};
  return f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Folder folder = make_folder();
  static const bool cleanup = [] {
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(folder.dir, ec);
    });
    return true;
  }();
  (void)cleanup;
  {
    std::ofstream out(folder.files.at("model.safetensors.index.json"), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  }
  fuzz::expect_clean([&] {
    engine::SafetensorsSet set = engine::SafetensorsSet::open(folder.files);
    for (const engine::StTensor* t : set.all()) {
      if (set.find(t->name) != t) std::abort();
    }
  });
  return 0;
}
