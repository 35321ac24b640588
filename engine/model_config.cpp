// SPDX-License-Identifier: Apache-2.0
// ModelConfig from HF config.json, its range checks and its JSON view (engine layer).
// from_gguf lives in gguf_model_config.cpp.
#include "engine/model_config.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "engine/error.h"
#include "engine/json_strict.h"

namespace gptqd::engine {
namespace {

using nlohmann::json;

constexpr std::string_view kSupported[] = {"llama", "mistral", "qwen2"};
constexpr std::string_view kSupportedList = "llama, mistral, qwen2";

// Caps well above every released Llama-family model, low enough that products cannot overflow.
constexpr int64_t kMaxVocab = int64_t{1} << 22;
constexpr int64_t kMaxHidden = int64_t{1} << 17;
constexpr int64_t kMaxIntermediate = int64_t{1} << 20;
constexpr int64_t kMaxLayers = 1024;
constexpr int64_t kMaxHeads = 1024;
constexpr int64_t kMaxHeadDim = 2048;
constexpr int64_t kMaxContext = int64_t{1} << 24;

std::string describe(const json& v) {
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 40) + "...";
  return cat(json_type_name(v), " ", text);
}

// Reads typed keys of one JSON object; `where` names the file, `prefix` the enclosing key.
class Reader {
 public:
  Reader(const json& j, std::string_view where, std::string prefix = "")
      : j_(j), where_(where), prefix_(std::move(prefix)) {}

  // Present and not null.
  bool has(const char* key) const { return j_.contains(key) && !j_[key].is_null(); }
  const json& at(const char* key) const { return j_[key]; }

  [[noreturn]] void fail_key(const char* key, const auto&... rest) const {
    fail(ErrorCode::invalid_model, where_, ": ", prefix_, key, ": ", rest...);
  }
  [[noreturn]] void fail_type(const char* key, std::string_view expected) const {
    fail_key(key, "expected ", expected, ", found ", describe(j_[key]));
  }

  void require(const char* key) const {
    if (!has(key)) fail(ErrorCode::invalid_model, where_, ": missing required key \"", prefix_, key, "\"");
  }

  int64_t integer(const char* key) const {
    const json& v = j_[key];
    if (v.is_number_integer() && !v.is_number_unsigned()) return v.get<int64_t>();
    if (v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t(std::numeric_limits<int64_t>::max())) {
      return static_cast<int64_t>(v.get<uint64_t>());
    }
    fail_type(key, "an integer");
  }
  int64_t positive(const char* key) const {
    if (!j_[key].is_number_integer() || integer(key) <= 0) fail_type(key, "a positive integer");
    return integer(key);
  }
  int64_t non_negative(const char* key) const {
    if (!j_[key].is_number_integer() || integer(key) < 0) fail_type(key, "a non-negative integer");
    return integer(key);
  }
  double number(const char* key) const {
    const json& v = j_[key];
    if (!v.is_number()) fail_type(key, "a number");
    const double d = v.get<double>();
    if (!std::isfinite(d)) fail_type(key, "a finite number");
    return d;
  }
  bool boolean(const char* key) const {
    if (!j_[key].is_boolean()) fail_type(key, "a boolean");
    return j_[key].get<bool>();
  }
  const std::string& string(const char* key) const {
    if (!j_[key].is_string()) fail_type(key, "a string");
    return j_[key].get_ref<const std::string&>();
  }

  int64_t positive_required(const char* key) const {
    require(key);
    return positive(key);
  }

 private:
  const json& j_;
  std::string_view where_;
  std::string prefix_;
};

RopeScaling read_rope_scaling(const Reader& r, std::string_view where) {
  RopeScaling out;
  if (!r.has("rope_scaling")) return out;
  const json& rs = r.at("rope_scaling");
  if (!rs.is_object()) r.fail_type("rope_scaling", "an object or null");
  Reader s(rs, where, "rope_scaling.");
  std::string type;
  if (s.has("rope_type")) type = s.string("rope_type");
  if (s.has("type")) {
    const std::string& legacy = s.string("type");
    if (!type.empty() && legacy != type) {
      s.fail_key("type", "\"", legacy, "\" disagrees with rope_type \"", type, "\"");
    }
    type = legacy;
  }
  if (type.empty()) {
    fail(ErrorCode::invalid_model, where, ": missing required key \"rope_scaling.rope_type\"");
  }
  if (type == "default") return out;  // HF's name for "no scaling"
  if (type == "linear") {
    out.type = RopeScalingType::linear;
    s.require("factor");
    out.factor = s.number("factor");
    return out;
  }
  if (type == "llama3") {
    out.type = RopeScalingType::llama3;
    for (const char* key : {"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}) {
      s.require(key);
    }
    out.factor = s.number("factor");
    out.low_freq_factor = s.number("low_freq_factor");
    out.high_freq_factor = s.number("high_freq_factor");
    out.original_max_position_embeddings = s.positive("original_max_position_embeddings");
    return out;
  }
  fail(ErrorCode::unsupported, where, ": rope_scaling type \"", type,
       "\" is not supported (supported: linear, llama3, or null)");
}

template <typename... Args>
[[noreturn]] void fail_range(std::string_view where, const Args&... args) {
  fail(ErrorCode::invalid_model, where, ": ", args...);
}

int64_t checked_mul(std::string_view where, const char* what, int64_t a, int64_t b) {
  int64_t out = 0;
  if (__builtin_mul_overflow(a, b, &out)) fail_range(where, what, " = ", a, " * ", b, " overflows 64 bits");
  return out;
}

void check_range(std::string_view where, const char* key, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo || v > hi) fail_range(where, key, " = ", v, " is out of range [", lo, ", ", hi, "]");
}

}  // namespace

ModelConfig ModelConfig::from_hf_json(const json& j, std::string_view where) {
  if (!j.is_object()) fail(ErrorCode::invalid_model, where, ": expected a JSON object, found ", describe(j));
  Reader r(j, where);

  ModelConfig c;
  r.require("model_type");
  c.architecture = r.string("model_type");
  if (std::find(std::begin(kSupported), std::end(kSupported), c.architecture) == std::end(kSupported)) {
    fail(ErrorCode::unsupported, where, ": model_type \"", c.architecture, "\" is not supported (supported: ",
         kSupportedList, ")");
  }
  const bool is_qwen2 = c.architecture == "qwen2";
  const bool is_mistral = c.architecture == "mistral";

  c.vocab_size = r.positive_required("vocab_size");
  c.hidden_size = r.positive_required("hidden_size");
  c.intermediate_size = r.positive_required("intermediate_size");
  c.n_layers = r.positive_required("num_hidden_layers");
  c.n_heads = r.positive_required("num_attention_heads");
  c.max_position_embeddings = r.positive_required("max_position_embeddings");
  r.require("rms_norm_eps");
  c.rms_norm_eps = r.number("rms_norm_eps");

  c.n_kv_heads = r.has("num_key_value_heads") ? r.positive("num_key_value_heads") : c.n_heads;
  if (r.has("head_dim")) {
    c.head_dim = r.positive("head_dim");
  } else {
    if (c.hidden_size % c.n_heads != 0) {
      fail_range(where, "hidden_size ", c.hidden_size, " is not a multiple of num_attention_heads ", c.n_heads,
                 " and head_dim is not given");
    }
    c.head_dim = c.hidden_size / c.n_heads;
  }
  if (r.has("rope_theta")) c.rope_theta = r.number("rope_theta");
  c.rope_scaling = read_rope_scaling(r, where);
  if (r.has("tie_word_embeddings")) c.tie_word_embeddings = r.boolean("tie_word_embeddings");

  if (r.has("hidden_act") && r.string("hidden_act") != "silu") {
    fail(ErrorCode::unsupported, where, ": hidden_act \"", r.string("hidden_act"), "\" is not supported (only silu)");
  }
  if (is_qwen2) {
    c.attention_bias = true;  // Qwen2 always has q/k/v biases and no o_proj bias
  } else {
    // Llama's attention_bias also puts a bias on o_proj, which the engine does not model.
    if (r.has("attention_bias") && r.boolean("attention_bias")) {
      fail(ErrorCode::unsupported, where, ": attention_bias = true (biases on q/k/v/o) is not supported for ",
           c.architecture);
    }
    if (r.has("mlp_bias") && r.boolean("mlp_bias")) {
      fail(ErrorCode::unsupported, where, ": mlp_bias = true is not supported");
    }
  }
  if (is_mistral && r.has("sliding_window")) c.sliding_window = r.non_negative("sliding_window");
  if (is_qwen2 && r.has("use_sliding_window") && r.boolean("use_sliding_window") && r.has("sliding_window")) {
    c.sliding_window = r.non_negative("sliding_window");
  }

  if (r.has("bos_token_id")) c.bos_token_id = r.non_negative("bos_token_id");
  if (r.has("eos_token_id")) {
    const json& eos = r.at("eos_token_id");
    if (eos.is_array()) {
      for (const json& id : eos) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0) {
          r.fail_type("eos_token_id", "a non-negative integer or a list of them");
        }
        c.eos_token_ids.push_back(id.get<int64_t>());
      }
    } else {
      if (!eos.is_number_integer() || eos.get<int64_t>() < 0) {
        r.fail_type("eos_token_id", "a non-negative integer or a list of them");
      }
      c.eos_token_ids.push_back(eos.get<int64_t>());
    }
  }
  // transformers >= 4.56 writes "dtype" where older versions wrote "torch_dtype".
  const char* dtype_key = r.has("torch_dtype") ? "torch_dtype" : "dtype";
  if (r.has(dtype_key)) c.torch_dtype = r.string(dtype_key);
  // auto_map / trust_remote_code are ignored on purpose: gptqd never runs model code.

  c.validate(where);
  return c;
}

void ModelConfig::validate(std::string_view where) const {
  if (std::find(std::begin(kSupported), std::end(kSupported), architecture) == std::end(kSupported)) {
    fail(ErrorCode::unsupported, where, ": architecture \"", architecture, "\" is not supported (supported: ",
         kSupportedList, ")");
  }
  check_range(where, "vocab_size", vocab_size, 1, kMaxVocab);
  check_range(where, "hidden_size", hidden_size, 1, kMaxHidden);
  check_range(where, "intermediate_size", intermediate_size, 1, kMaxIntermediate);
  check_range(where, "num_hidden_layers", n_layers, 1, kMaxLayers);
  check_range(where, "num_attention_heads", n_heads, 1, kMaxHeads);
  check_range(where, "num_key_value_heads", n_kv_heads, 1, n_heads);
  if (n_heads % n_kv_heads != 0) {
    fail_range(where, "num_attention_heads ", n_heads, " is not a multiple of num_key_value_heads ", n_kv_heads);
  }
  check_range(where, "head_dim", head_dim, 2, kMaxHeadDim);
  if (head_dim % 2 != 0) fail_range(where, "head_dim ", head_dim, " must be even (rotary pairs)");
  check_range(where, "max_position_embeddings", max_position_embeddings, 1, kMaxContext);

  const int64_t q_width = checked_mul(where, "num_attention_heads * head_dim", n_heads, head_dim);
  check_range(where, "num_attention_heads * head_dim", q_width, 1, kMaxHidden);
  checked_mul(where, "num_key_value_heads * head_dim", n_kv_heads, head_dim);
  checked_mul(where, "vocab_size * hidden_size", vocab_size, hidden_size);
  const int64_t mlp = checked_mul(where, "hidden_size * intermediate_size", hidden_size, intermediate_size);
  checked_mul(where, "3 * hidden_size * intermediate_size * num_hidden_layers",
              checked_mul(where, "3 * hidden_size * intermediate_size", mlp, 3), n_layers);

  if (!(rms_norm_eps > 0.0 && rms_norm_eps < 1.0)) {
    fail_range(where, "rms_norm_eps = ", rms_norm_eps, " must be in (0, 1)");
  }
  if (!(rope_theta > 0.0 && std::isfinite(rope_theta))) {
    fail_range(where, "rope_theta = ", rope_theta, " must be a positive finite number");
  }
  if (rope_scaling.type != RopeScalingType::none) {
    if (!(rope_scaling.factor > 0.0 && std::isfinite(rope_scaling.factor))) {
      fail_range(where, "rope_scaling.factor = ", rope_scaling.factor, " must be a positive finite number");
    }
  }
  if (rope_scaling.type == RopeScalingType::llama3) {
    const RopeScaling& s = rope_scaling;
    if (!(s.low_freq_factor > 0.0 && std::isfinite(s.low_freq_factor) && s.high_freq_factor > s.low_freq_factor &&
          std::isfinite(s.high_freq_factor))) {
      fail_range(where, "rope_scaling low_freq_factor = ", s.low_freq_factor, " and high_freq_factor = ",
                 s.high_freq_factor, " must be positive with low < high");
    }
    check_range(where, "rope_scaling.original_max_position_embeddings", s.original_max_position_embeddings, 1,
                kMaxContext);
  }
  if (sliding_window < 0) fail_range(where, "sliding_window = ", sliding_window, " must be >= 0");
  if (bos_token_id < -1 || bos_token_id >= vocab_size) {
    fail_range(where, "bos_token_id = ", bos_token_id, " is outside the vocabulary (", vocab_size, " tokens)");
  }
  for (int64_t id : eos_token_ids) {
    if (id < 0 || id >= vocab_size) {
      fail_range(where, "eos_token_id = ", id, " is outside the vocabulary (", vocab_size, " tokens)");
    }
  }
  if (!torch_dtype.empty() && torch_dtype != "float16" && torch_dtype != "bfloat16" && torch_dtype != "float32") {
    fail_range(where, "torch_dtype: expected one of float16, bfloat16, float32, found \"", torch_dtype, "\"");
  }
}

json ModelConfig::to_json() const {
  json rs = nullptr;
  if (rope_scaling.type == RopeScalingType::linear) {
    rs = {{"type", "linear"}, {"factor", rope_scaling.factor}};
  } else if (rope_scaling.type == RopeScalingType::llama3) {
    rs = {{"type", "llama3"},
          {"factor", rope_scaling.factor},
          {"low_freq_factor", rope_scaling.low_freq_factor},
          {"high_freq_factor", rope_scaling.high_freq_factor},
          {"original_max_position_embeddings", rope_scaling.original_max_position_embeddings}};
  }
  return {
      {"architecture", architecture},
      {"vocab_size", vocab_size},
      {"hidden_size", hidden_size},
      {"intermediate_size", intermediate_size},
      {"n_layers", n_layers},
      {"n_heads", n_heads},
      {"n_kv_heads", n_kv_heads},
      {"head_dim", head_dim},
      {"max_position_embeddings", max_position_embeddings},
      {"rms_norm_eps", rms_norm_eps},
      {"rope_theta", rope_theta},
      {"rope_scaling", rs},
      {"tie_word_embeddings", tie_word_embeddings},
      {"attention_bias", attention_bias},
      {"sliding_window", sliding_window},
      {"bos_token_id", bos_token_id},
      {"eos_token_ids", eos_token_ids},
      {"torch_dtype", torch_dtype},
  };
}

}  // namespace gptqd::engine
