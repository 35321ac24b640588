// SPDX-License-Identifier: Apache-2.0
// Fuzzes GgufFile::parse (header, metadata, tensor infos) on a whole in-memory file, then what the
// loaders read from an accepted file: every typed getter, ModelConfig::from_gguf, the GGUF
// tokenizer (and one encode/decode), and dequantization of every small tensor.
#include "engine/gguf.h"
#include "engine/mapped_file.h"
#include "engine/model_config.h"
#include "engine/tokenizer.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;

namespace {

template <typename F>
void ignore_errors(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::internal) throw;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean([&] {
    auto file = engine::MappedFile::from_bytes(fuzz::to_bytes(data, size), "fuzz.gguf");
    const engine::GgufFile g = engine::GgufFile::parse(file);
    for (const auto& kv : g.metadata()) {
      const std::string& key = kv.first;
      ignore_errors([&] { (void)g.get_uint_opt(key); });
      ignore_errors([&] { (void)g.get_float_opt(key); });
      ignore_errors([&] { (void)g.get_string_opt(key); });
      ignore_errors([&] { (void)g.get_bool_opt(key); });
      ignore_errors([&] { (void)g.get_string_array(key); });
      ignore_errors([&] { (void)g.get_int_array(key); });
      ignore_errors([&] { (void)g.get_float_array(key); });
    }
    for (const engine::GgufTensorInfo& t : g.tensors()) {
      if (g.find_tensor(t.name) != &t) std::abort();
      if (g.tensor_bytes(t).size() != t.n_bytes) std::abort();
      if (t.n_elements <= (1u << 18)) {
        ignore_errors([&] { (void)g.dequantize(t); });
      }
    }
    ignore_errors([&] { (void)engine::ModelConfig::from_gguf(g); });
    ignore_errors([&] {
      auto tok = engine::load_tokenizer(g);
      std::vector<int32_t> ids = tok->encode("Hello world, <s> 123 \xC3\xA9\xE2\x96\x81 !", true);
      (void)tok->decode(ids);
      engine::TokenStreamDecoder stream(*tok);
      for (int32_t id : ids) (void)stream.push(id);
      (void)stream.finish();
    });
  });
  return 0;
}
