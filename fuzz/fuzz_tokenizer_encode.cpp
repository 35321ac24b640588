// SPDX-License-Identifier: Apache-2.0
// Fuzzes encoding and decoding with real vocabularies, loaded once: Llama 2's tokenizer.json
// (SentencePiece-style BPE with byte fallback, from $GPTQD_SHARED_DATA, default ../shared/data)
// and the test model's GGUF tokenizer (byte-level BPE, $GPTQD_TEST_MODEL). Input: the text.
#include <cstdlib>
#include <filesystem>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "fuzz/tokenizer_checks.h"

using namespace gptqd;
namespace fs = std::filesystem;

namespace {

std::vector<std::unique_ptr<engine::Tokenizer>> load_all() {
  std::vector<std::unique_ptr<engine::Tokenizer>> out;
  const char* shared = std::getenv("GPTQD_SHARED_DATA");
  const fs::path llama2 = fs::path(shared ? shared : "../shared/data") / "llama2-tokenizer" / "tokenizer.json";
  if (fs::exists(llama2)) {
    out.push_back(engine::load_tokenizer({engine::SourceFile{"tokenizer.json", llama2, fs::file_size(llama2)}}));
  } else {
    std::fprintf(stderr, "fuzz_tokenizer_encode: %s not found, skipping it\n", llama2.c_str());
  }
  if (const char* model = std::getenv("GPTQD_TEST_MODEL"); model && fs::exists(model)) {
    out.push_back(engine::load_tokenizer(engine::GgufFile::open(model)));
  } else {
    std::fprintf(stderr, "fuzz_tokenizer_encode: GPTQD_TEST_MODEL not set or missing, skipping the GGUF tokenizer\n");
  }
  if (out.empty()) {
    std::fprintf(stderr, "fuzz_tokenizer_encode: no tokenizer to fuzz\n");
    std::exit(1);
  }
  return out;
}

std::vector<std::unique_ptr<engine::Tokenizer>> tokenizers;

}  // namespace

// Loading takes seconds under ASan: done here, outside the per-input timeout.
extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  tokenizers = load_all();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::to_text(data, size);
  for (const auto& tok : tokenizers) {
    fuzz::expect_clean([&] { fuzz::exercise_tokenizer(*tok, text); });
  }
  return 0;
}
