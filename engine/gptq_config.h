// SPDX-License-Identifier: Apache-2.0
// GptqConfig: GPTQ quantization metadata (quantize_config.json / config.json
// "quantization_config") and the shape rules of GPTQ-packed linears (engine layer).
#pragma once

#include <cstdint>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace gptqd::engine {

struct GptqConfig {
  int bits = 4;                         // 2, 3, 4 or 8
  int group_size = 128;                 // > 0, or -1 for one group over the whole input dim
  bool desc_act = false;                // act-order (g_idx not monotone)
  bool sym = true;
  bool static_groups = false;
  bool true_sequential = true;
  double damp_percent = 0.01;
  std::string checkpoint_format = "gptq";  // "gptq" (v1, zero-1 stored) or "gptq_v2"
  bool lm_head = false;                 // lm_head quantized too (gptqd rejects this for now)

  // Reads one config object; `where` names it in errors ("quantize_config.json"). Accepts the AG
  // synonyms w_bit/q_group_size. quant_method, when present, must be "gptq".
  static GptqConfig from_json(const nlohmann::json& j, std::string_view where);
  // The AutoGPTQ key set (gptq-reference.md B.8), for quantize_config.json and config.json.
  nlohmann::json to_json() const;

  // Number of groups along an input dimension of `in_features`.
  int64_t n_groups(int64_t in_features) const;
};

// Finds the GPTQ config of a checkpoint: quantize_config.json (if given) and/or config.json's
// "quantization_config". nullopt when neither says GPTQ; Error(invalid_model) when both exist and
// disagree on bits/group_size/desc_act/sym/checkpoint_format; Error(unsupported) for another
// quant_method (awq, bitsandbytes, ...).
std::optional<GptqConfig> find_gptq_config(const nlohmann::json& config_json,
                                           const nlohmann::json* quantize_config_json);

// What a checker needs to know about a tensor; nullopt when it does not exist.
struct TensorMeta {
  std::string dtype;                    // safetensors dtype string ("I32", "F16", ...)
  std::vector<int64_t> shape;
};
using TensorMetaLookup = std::function<std::optional<TensorMeta>(const std::string& name)>;

// Checks `<prefix>.qweight/.qzeros/.scales/.g_idx` (and `.bias` when `has_bias`) of one linear
// with `in_features` (K) inputs and `out_features` (N) outputs against `cfg`
// (gptq-reference.md B.2). A mismatch is Error(invalid_model) naming the tensor, the expected and
// the actual shape/dtype.
void check_gptq_linear(const GptqConfig& cfg, const std::string& prefix, int64_t in_features,
                       int64_t out_features, bool has_bias, const TensorMetaLookup& lookup);

}  // namespace gptqd::engine
