// SPDX-License-Identifier: Apache-2.0
// Fuzzes the HF config files: the input is config.json, optionally followed by a NUL byte and
// quantize_config.json. Runs ModelConfig::from_hf_json, GptqConfig::from_json on both,
// find_gptq_config, and checks that an accepted GptqConfig survives to_json -> from_json.
#include <cstring>

#include "engine/gptq_config.h"
#include "engine/json_strict.h"
#include "engine/model_config.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;
using nlohmann::json;

namespace {

template <typename F>
void ignore_errors(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    if (e.code() == ErrorCode::internal) throw;
  }
}

void check_gptq_round_trip(const engine::GptqConfig& c) {
  const engine::GptqConfig back = engine::GptqConfig::from_json(c.to_json(), "round trip");
  if (back.bits != c.bits || back.group_size != c.group_size || back.desc_act != c.desc_act || back.sym != c.sym ||
      back.checkpoint_format != c.checkpoint_format) {
    std::fprintf(stderr, "GptqConfig changed in a to_json/from_json round trip: %s\n", c.to_json().dump().c_str());
    std::abort();
  }
  (void)c.n_groups(4096);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all = fuzz::to_text(data, size);
  const size_t nul = all.find('\0');
  const std::string_view config_text = all.substr(0, nul);
  const std::optional<std::string_view> quantize_text =
      nul == std::string_view::npos ? std::nullopt : std::optional(all.substr(nul + 1));

  fuzz::expect_clean([&] {
    const json config = engine::parse_json_strict(config_text, "config.json");
    ignore_errors([&] {
      engine::ModelConfig c = engine::ModelConfig::from_hf_json(config, "config.json");
      c.validate("config.json");
      (void)c.to_json().dump();
    });
    ignore_errors([&] { check_gptq_round_trip(engine::GptqConfig::from_json(config, "quantize_config.json")); });
    json quantize;
    if (quantize_text) {
      quantize = engine::parse_json_strict(*quantize_text, "quantize_config.json");
      ignore_errors([&] { check_gptq_round_trip(engine::GptqConfig::from_json(quantize, "quantize_config.json")); });
    }
    const auto found = engine::find_gptq_config(config, quantize_text ? &quantize : nullptr);
    if (found) check_gptq_round_trip(*found);
  });
  return 0;
}
