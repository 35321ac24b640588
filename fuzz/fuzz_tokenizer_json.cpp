// SPDX-License-Identifier: Apache-2.0
// Fuzzes tokenizer.json loading and encoding. Input: tokenizer.json, NUL, the text to encode
// (and optionally NUL, tokenizer_config.json: then both are written to a scratch folder and
// loaded through load_tokenizer(files), which also reads BOS/EOS and the chat template).
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/bpe_tokenizer.h"
#include "engine/json_strict.h"
#include "fuzz/tokenizer_checks.h"

using namespace gptqd;
namespace fs = std::filesystem;

namespace {

// Never destroyed: the atexit cleanup below still needs it.
const fs::path& scratch_dir() {
  static const fs::path* dir = [] {
    const fs::path base = fs::exists("/dev/shm") ? fs::path("/dev/shm") : fs::temp_directory_path();
    auto* d = new fs::path(base / ("gptqd-fuzz-tokenizer-" + std::to_string(::getpid())));
    fs::create_directories(*d);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(scratch_dir(), ec);
    });
    return d;
  }();
  return *dir;
}

engine::SourceFile write(const std::string& name, std::string_view content) {
  const fs::path p = scratch_dir() / name;
  std::ofstream(p, std::ios::binary | std::ios::trunc).write(content.data(), static_cast<std::streamsize>(content.size()));
  return {name, p, content.size()};
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all = fuzz::to_text(data, size);
  const size_t nul1 = all.find('\0');
  const std::string_view json_text = all.substr(0, nul1);
  std::string_view text, config_text;
  bool has_config = false;
  if (nul1 != std::string_view::npos) {
    text = all.substr(nul1 + 1);
    const size_t nul2 = text.find('\0');
    if (nul2 != std::string_view::npos) {
      config_text = text.substr(nul2 + 1);
      text = text.substr(0, nul2);
      has_config = true;
    }
  }
  fuzz::expect_clean([&] {
    std::unique_ptr<engine::Tokenizer> tok;
    if (has_config) {
      tok = engine::load_tokenizer({write("tokenizer.json", json_text), write("tokenizer_config.json", config_text)});
    } else {
      tok = engine::tokenizer_detail::load_tokenizer_json(engine::parse_json_strict(json_text, "tokenizer.json"),
                                                          "tokenizer.json");
    }
    fuzz::exercise_tokenizer(*tok, text);
  });
  return 0;
}
