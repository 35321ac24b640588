// SPDX-License-Identifier: Apache-2.0
// GPTQ metadata (quantize_config.json, config.json "quantization_config") and the tensor shape
// rules of a GPTQ-packed linear (engine layer). Format: gptq-reference.md B.2 and B.8.
#include "engine/gptq_config.h"

#include <algorithm>
#include <cctype>
#include <cmath>

#include "engine/error.h"
#include "engine/json_strict.h"

namespace gptqd::engine {
namespace {

using nlohmann::json;

constexpr int64_t kMaxFeatures = int64_t{1} << 31;

std::string describe(const json& v) {
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 40) + "...";
  return cat(json_type_name(v), " ", text);
}

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

bool present(const json& j, const char* key) { return j.contains(key) && !j[key].is_null(); }

[[noreturn]] void fail_type(std::string_view where, std::string_view key, std::string_view expected, const json& v) {
  fail(ErrorCode::invalid_model, where, ": ", key, ": expected ", expected, ", found ", describe(v));
}

int64_t read_int(std::string_view where, const char* key, const json& v) {
  const bool in_range = v.is_number_unsigned() ? v.get<uint64_t>() <= uint64_t{1} << 31
                                               : v.is_number_integer() && v.get<int64_t>() >= -(int64_t{1} << 31);
  if (!v.is_number_integer() || !in_range) fail_type(where, key, "an integer", v);
  return v.get<int64_t>();
}

bool read_bool(std::string_view where, const char* key, const json& v) {
  if (!v.is_boolean()) fail_type(where, key, "a boolean", v);
  return v.get<bool>();
}

// `key` or its synonym (AutoGPTQ's w_bit / q_group_size); both present must agree.
const json* key_or_synonym(const json& j, std::string_view where, const char* key, const char* synonym) {
  const bool has_key = present(j, key), has_syn = present(j, synonym);
  if (has_key && has_syn && j[key] != j[synonym]) {
    fail(ErrorCode::invalid_model, where, ": ", key, " = ", j[key].dump(), " disagrees with ", synonym, " = ",
         j[synonym].dump());
  }
  if (has_key) return &j[key];
  if (has_syn) return &j[synonym];
  return nullptr;
}

void check_quant_method(const json& j, std::string_view where) {
  if (!present(j, "quant_method")) return;
  if (!j["quant_method"].is_string()) fail_type(where, "quant_method", "a string", j["quant_method"]);
  const std::string method = j["quant_method"].get<std::string>();
  if (lower(method) != "gptq") {
    fail(ErrorCode::unsupported, where, ": quant_method \"", method,
         "\" is not supported (gptqd loads GPTQ checkpoints: quant_method \"gptq\")");
  }
}

void check_bits_group(const GptqConfig& c, std::string_view where) {
  if (c.bits != 2 && c.bits != 3 && c.bits != 4 && c.bits != 8) {
    fail(ErrorCode::invalid_argument, where, ": bits = ", c.bits, " (supported: 2, 3, 4, 8)");
  }
  if (c.group_size <= 0 && c.group_size != -1) {
    fail(ErrorCode::invalid_argument, where, ": group_size = ", c.group_size, " (must be > 0 or -1)");
  }
}

std::string shape_string(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

}  // namespace

GptqConfig GptqConfig::from_json(const json& j, std::string_view where) {
  if (!j.is_object()) fail(ErrorCode::invalid_model, where, ": expected a JSON object, found ", describe(j));
  check_quant_method(j, where);
  if (present(j, "is_marlin_format") && read_bool(where, "is_marlin_format", j["is_marlin_format"])) {
    fail(ErrorCode::unsupported, where, ": the marlin checkpoint format (is_marlin_format) is not supported");
  }
  const json empty = json::object();
  const json* meta = &empty;
  if (present(j, "meta")) {
    if (!j["meta"].is_object()) fail_type(where, "meta", "an object", j["meta"]);
    meta = &j["meta"];
  }

  GptqConfig c;
  const json* bits = key_or_synonym(j, where, "bits", "w_bit");
  if (!bits) fail(ErrorCode::invalid_model, where, ": missing required key \"bits\"");
  c.bits = static_cast<int>(read_int(where, "bits", *bits));
  const json* group = key_or_synonym(j, where, "group_size", "q_group_size");
  if (!group) fail(ErrorCode::invalid_model, where, ": missing required key \"group_size\"");
  c.group_size = static_cast<int>(read_int(where, "group_size", *group));
  if (c.bits != 2 && c.bits != 3 && c.bits != 4 && c.bits != 8) {
    fail(ErrorCode::unsupported, where, ": bits = ", c.bits, " is not supported (supported: 2, 3, 4, 8)");
  }
  if (c.group_size <= 0 && c.group_size != -1) {
    fail(ErrorCode::invalid_model, where, ": group_size = ", c.group_size, " (must be > 0 or -1)");
  }

  if (present(j, "desc_act")) c.desc_act = read_bool(where, "desc_act", j["desc_act"]);
  if (present(j, "sym")) c.sym = read_bool(where, "sym", j["sym"]);
  if (present(j, "lm_head")) c.lm_head = read_bool(where, "lm_head", j["lm_head"]);
  // GPTQModel moves the non-inference fields into "meta".
  for (const char* key : {"static_groups", "true_sequential", "damp_percent"}) {
    const json& src = present(j, key) ? j : *meta;
    if (!present(src, key)) continue;
    const std::string name = &src == meta ? cat("meta.", key) : std::string(key);
    const json& v = src[key];
    if (std::string_view(key) == "damp_percent") {
      if (!v.is_number() || !(v.get<double>() > 0.0 && v.get<double>() < 1.0)) {
        fail_type(where, name, "a number in (0, 1)", v);
      }
      c.damp_percent = v.get<double>();
    } else if (std::string_view(key) == "static_groups") {
      c.static_groups = read_bool(where, name.c_str(), v);
    } else {
      c.true_sequential = read_bool(where, name.c_str(), v);
    }
  }

  // GPTQModel also writes the same value under "format".
  const char* format_key = present(j, "checkpoint_format") ? "checkpoint_format" : "format";
  if (present(j, format_key)) {
    if (!j[format_key].is_string()) fail_type(where, format_key, "a string", j[format_key]);
    const std::string format = j[format_key].get<std::string>();
    if (format == "marlin") {
      fail(ErrorCode::unsupported, where, ": ", format_key, " \"marlin\" is not supported (use \"gptq\")");
    }
    if (format != "gptq" && format != "gptq_v2") {
      fail(ErrorCode::unsupported, where, ": ", format_key, " \"", format,
           "\" is not supported (supported: gptq, gptq_v2)");
    }
    c.checkpoint_format = format;
  }

  // GPTQModel per-module overrides: "-:regex" leaves a module unquantized (the tensor checks then
  // find a dense weight); "+:regex" / "regex" changes bits or groups per module, which gptqd does not do.
  if (present(j, "dynamic")) {
    if (!j["dynamic"].is_object()) fail_type(where, "dynamic", "an object", j["dynamic"]);
    for (const auto& [pattern, value] : j["dynamic"].items()) {
      if (!pattern.starts_with("-:")) {
        fail(ErrorCode::unsupported, where, ": dynamic per-module override \"", pattern, "\" is not supported");
      }
    }
  }
  return c;
}

json GptqConfig::to_json() const {
  json j = {
      {"bits", bits},
      {"group_size", group_size},
      {"damp_percent", damp_percent},
      {"desc_act", desc_act},
      {"static_groups", static_groups},
      {"sym", sym},
      {"true_sequential", true_sequential},
      {"model_name_or_path", nullptr},
      {"model_file_base_name", "model"},
      {"quant_method", "gptq"},
      {"checkpoint_format", checkpoint_format},
  };
  if (lm_head) j["lm_head"] = true;
  return j;
}

int64_t GptqConfig::n_groups(int64_t in_features) const {
  if (in_features < 0) fail(ErrorCode::invalid_argument, "n_groups: in_features = ", in_features, " is negative");
  if (group_size == -1) return 1;
  if (group_size <= 0) fail(ErrorCode::invalid_argument, "n_groups: group_size = ", group_size);
  return (in_features + group_size - 1) / group_size;
}

std::optional<GptqConfig> find_gptq_config(const json& config_json, const json* quantize_config_json) {
  constexpr std::string_view kConfigWhere = "config.json quantization_config";
  constexpr std::string_view kQuantizeWhere = "quantize_config.json";
  std::optional<GptqConfig> from_config;
  if (config_json.is_object() && present(config_json, "quantization_config")) {
    const json& qc = config_json["quantization_config"];
    if (!qc.is_object()) fail_type("config.json", "quantization_config", "an object", qc);
    from_config = GptqConfig::from_json(qc, kConfigWhere);
  }
  std::optional<GptqConfig> from_quantize;
  if (quantize_config_json) from_quantize = GptqConfig::from_json(*quantize_config_json, kQuantizeWhere);

  if (from_config && from_quantize) {
    const GptqConfig& a = *from_quantize;
    const GptqConfig& b = *from_config;
    auto disagree = [&](const char* field, const auto& va, const auto& vb) {
      fail(ErrorCode::invalid_model, kQuantizeWhere, " and ", kConfigWhere, " disagree on ", field, ": ", va,
           " vs ", vb);
    };
    auto text = [](bool v) { return v ? "true" : "false"; };
    if (a.bits != b.bits) disagree("bits", a.bits, b.bits);
    if (a.group_size != b.group_size) disagree("group_size", a.group_size, b.group_size);
    if (a.desc_act != b.desc_act) disagree("desc_act", text(a.desc_act), text(b.desc_act));
    if (a.sym != b.sym) disagree("sym", text(a.sym), text(b.sym));
    if (a.checkpoint_format != b.checkpoint_format) {
      disagree("checkpoint_format", a.checkpoint_format, b.checkpoint_format);
    }
  }
  return from_quantize ? from_quantize : from_config;
}

void check_gptq_linear(const GptqConfig& cfg, const std::string& prefix, int64_t in_features,
                       int64_t out_features, bool has_bias, const TensorMetaLookup& lookup) {
  check_bits_group(cfg, prefix);
  const int64_t K = in_features, N = out_features;
  if (K <= 0 || K > kMaxFeatures || N <= 0 || N > kMaxFeatures) {
    fail(ErrorCode::invalid_model, prefix, ": in_features = ", K, ", out_features = ", N, " are out of range");
  }
  // Codes of 32/bits features share a word; 3-bit packs 32 features into 3 words.
  const int64_t align = cfg.bits == 3 ? 32 : 32 / cfg.bits;
  if (K % align != 0) {
    fail(ErrorCode::invalid_model, prefix, ": in_features = ", K, " is not a multiple of ", align,
         ", which ", cfg.bits, "-bit qweight packing requires");
  }
  if (N % align != 0) {
    fail(ErrorCode::invalid_model, prefix, ": out_features = ", N, " is not a multiple of ", align,
         ", which ", cfg.bits, "-bit qzeros packing requires");
  }
  const int64_t G = cfg.n_groups(K);
  const std::string dims = cat("in_features=", K, " out_features=", N);
  const std::string base = cat("bits=", cfg.bits, " ", dims);
  const std::string grouped = cat("bits=", cfg.bits, " group_size=", cfg.group_size, " ", dims);

  auto check = [&](const char* suffix, const char* dtype, std::vector<int64_t> shape, const std::string& context) {
    const std::string name = prefix + suffix;
    std::optional<TensorMeta> meta = lookup(name);
    const std::string expected = cat(dtype, " ", shape_string(shape));
    if (!meta) fail(ErrorCode::invalid_model, name, ": missing (expected ", expected, " for ", context, ")");
    if (meta->dtype != dtype || meta->shape != shape) {
      fail(ErrorCode::invalid_model, name, ": expected ", expected, " for ", context, ", found ", meta->dtype, " ",
           shape_string(meta->shape));
    }
  };
  check(".qweight", "I32", {K * cfg.bits / 32, N}, base);
  check(".qzeros", "I32", {G, N * cfg.bits / 32}, grouped);
  check(".scales", "F16", {G, N}, grouped);
  check(".g_idx", "I32", {K}, base);
  if (has_bias) check(".bias", "F16", {N}, base);
}

}  // namespace gptqd::engine
