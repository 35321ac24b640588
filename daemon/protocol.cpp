// SPDX-License-Identifier: Apache-2.0
// JSON mapping of the socket API and the model-name rules (daemon layer, shared with gptqctl).
#include "daemon/protocol.h"

#include <unistd.h>

#include <algorithm>
#include <type_traits>
#include <limits>
#include <climits>
#include <cctype>
#include <cstdlib>
#include <cmath>
#include <cstdio>
#include <ctime>

namespace gptqd::protocol {
namespace {

using nlohmann::json;

bool name_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}
bool alnum(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

bool check_part(std::string_view s, size_t max_len, const char* what, std::string* why) {
  auto set_why = [&](const std::string& msg) {
    if (why) *why = msg;
    return false;
  };
  if (s.empty()) return set_why(std::string(what) + " is empty");
  if (s.size() > max_len) return set_why(std::string(what) + " is longer than " + std::to_string(max_len) + " characters");
  for (char c : s) {
    if (!name_char(c)) {
      std::string shown = (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) >= 0x7f)
                              ? "a control or non-ASCII byte"
                              : "'" + std::string(1, c) + "'";
      return set_why(std::string(what) + " may only contain a-z, 0-9, '.', '_' and '-' (found " + shown + ")");
    }
  }
  if (!alnum(s.front()) || !alnum(s.back())) {
    return set_why(std::string(what) + " must start and end with a letter or digit");
  }
  if (s.find("--") != std::string_view::npos || s.find("..") != std::string_view::npos) {
    return set_why(std::string(what) + " may not contain \"--\" or \"..\"");
  }
  return true;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Reads an optional field of the right JSON type; a wrong type names the field.
std::string opt_string(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  if (!it->is_string()) throw RequestError(std::string("field \"") + key + "\" must be a string");
  return it->get<std::string>();
}

bool opt_bool(const json& j, const char* key, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) throw RequestError(std::string("field \"") + key + "\" must be true or false");
  return it->get<bool>();
}

void require_object(const json& j) {
  if (!j.is_object()) throw RequestError("request body must be a JSON object");
}

// Typed readers for request fields: a wrong type names the field and what was found.
std::string type_name(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "something else";
  }
}

[[noreturn]] void bad_type(const std::string& field, const char* want, const json& v) {
  throw RequestError("\"" + field + "\" must be " + want + ", found " + type_name(v));
}

std::optional<double> opt_number(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) bad_type(where + key, "a number", *it);
  double v = it->get<double>();
  if (!std::isfinite(v)) throw RequestError("\"" + where + key + "\" must be finite");
  return v;
}

std::optional<int64_t> opt_int(const json& j, const char* key, const std::string& where) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (it->is_number_unsigned()) {
    if (it->get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)) throw RequestError("\"" + where + key + "\" is too large");
    return static_cast<int64_t>(it->get<uint64_t>());
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    double v = it->get<double>();
    if (std::isfinite(v) && v == std::floor(v) && std::abs(v) < 9.0e15) return static_cast<int64_t>(v);
  }
  bad_type(where + key, "an integer", *it);
}

std::vector<std::string> string_or_list(const json& v, const std::string& field) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array()) {
    for (const auto& e : v) {
      if (!e.is_string()) bad_type(field + "[]", "a string", e);
      out.push_back(e.get<std::string>());
    }
  } else {
    bad_type(field, "a string or a list of strings", v);
  }
  return out;
}

std::vector<ChatMessageJson> parse_messages(const json& j, const char* key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) throw RequestError(std::string("field \"") + key + "\" is required");
  if (!it->is_array()) bad_type(key, "a list of messages", *it);
  if (it->empty()) throw RequestError(std::string("\"") + key + "\" is empty; send at least one message");
  std::vector<ChatMessageJson> out;
  for (size_t i = 0; i < it->size(); ++i) {
    const json& m = (*it)[i];
    const std::string where = std::string(key) + "[" + std::to_string(i) + "]";
    if (!m.is_object()) bad_type(where, "an object with role and content", m);
    ChatMessageJson msg;
    auto role = m.find("role");
    if (role == m.end() || !role->is_string()) throw RequestError("\"" + where + ".role\" must be a string");
    msg.role = role->get<std::string>();
    auto content = m.find("content");
    if (content == m.end() || content->is_null()) {
      msg.content.clear();
    } else if (content->is_string()) {
      msg.content = content->get<std::string>();
    } else if (content->is_array()) {
      // OpenAI content parts: text only.
      for (const auto& part : *content) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string()) {
          throw RequestError("\"" + where + ".content\" parts must be {\"type\": \"text\", \"text\": ...}; "
                             "images and other parts are not supported");
        }
        msg.content += part["text"].get<std::string>();
      }
    } else {
      bad_type(where + ".content", "a string", *content);
    }
    if (m.contains("images") && !m["images"].is_null()) {
      throw RequestError("\"" + where + ".images\": images are not supported by gptqd's text models");
    }
    out.push_back(std::move(msg));
  }
  return out;
}

json messages_to_json(const std::vector<ChatMessageJson>& messages) {
  json out = json::array();
  for (const auto& m : messages) out.push_back({{"role", m.role}, {"content", m.content}});
  return out;
}

}  // namespace

bool is_valid_name(std::string_view name, std::string* why) { return check_part(name, 96, "model name", why); }
bool is_valid_tag(std::string_view tag, std::string* why) { return check_part(tag, 64, "tag", why); }

std::optional<ModelRef> parse_model_ref(std::string_view text, std::string* why) {
  std::string s = lower(text);
  ModelRef ref;
  auto colon = s.find(':');
  if (colon == std::string::npos) {
    ref.name = s;
  } else {
    ref.name = s.substr(0, colon);
    ref.tag = s.substr(colon + 1);
    if (ref.tag.empty()) {
      if (why) *why = "tag after ':' is empty";
      return std::nullopt;
    }
    if (!is_valid_tag(ref.tag, why)) return std::nullopt;
  }
  if (!is_valid_name(ref.name, why)) return std::nullopt;
  return ref;
}

std::filesystem::path default_socket_path() {
  if (const char* rt = std::getenv("RUNTIME_DIRECTORY"); rt && *rt) {
    // systemd may list several directories separated by ':'; the first is ours.
    std::string first(rt);
    return std::filesystem::path(first.substr(0, first.find(':'))) / "gptqd.sock";
  }
  if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg) return std::filesystem::path(xdg) / "gptqd.sock";
  return std::filesystem::path("/tmp") / ("gptqd-" + std::to_string(::getuid())) / "gptqd.sock";
}

std::string format_param_count(uint64_t n) {
  char buf[32];
  auto fmt = [&](double v, const char* unit) {
    if (v >= 100) std::snprintf(buf, sizeof buf, "%.0f%s", v, unit);
    else if (v >= 10) std::snprintf(buf, sizeof buf, "%.1f%s", v, unit);
    else std::snprintf(buf, sizeof buf, "%.2f%s", v, unit);
    std::string s = buf;
    // "1.10B" -> "1.1B", "7.00B" -> "7B"
    auto dot = s.find('.');
    if (dot != std::string::npos) {
      size_t end = s.size() - std::string_view(unit).size();
      size_t cut = end;
      while (cut > dot + 1 && s[cut - 1] == '0') --cut;
      if (cut == dot + 1) cut = dot;
      s = s.substr(0, cut) + unit;
    }
    return s;
  };
  if (n >= 1000000000ull) return fmt(static_cast<double>(n) / 1e9, "B");
  if (n >= 1000000ull) return fmt(static_cast<double>(n) / 1e6, "M");
  if (n >= 1000ull) return fmt(static_cast<double>(n) / 1e3, "K");
  return std::to_string(n);
}

PullRequest PullRequest::from_json(const json& j) {
  require_object(j);
  PullRequest r;
  r.source = opt_string(j, "model");
  if (r.source.empty()) r.source = opt_string(j, "source");
  if (r.source.empty()) throw RequestError("field \"model\" (what to pull: a .gguf file, a model folder or org/repo) is required");
  r.name = opt_string(j, "name");
  r.revision = opt_string(j, "revision");
  r.stream = opt_bool(j, "stream", true);
  return r;
}

json PullRequest::to_json() const {
  json j = {{"model", source}, {"stream", stream}};
  if (!name.empty()) j["name"] = name;
  if (!revision.empty()) j["revision"] = revision;
  return j;
}

ModelRequest ModelRequest::from_json(const json& j) {
  require_object(j);
  ModelRequest r;
  r.model = opt_string(j, "model");
  if (r.model.empty()) r.model = opt_string(j, "name");
  if (r.model.empty()) throw RequestError("field \"model\" (NAME or NAME:TAG) is required");
  return r;
}

json ModelRequest::to_json() const { return json{{"model", model}}; }

GenOptions GenOptions::from_json(const json& j, const std::string& where) {
  GenOptions o;
  if (j.is_null()) return o;
  if (!j.is_object()) bad_type(where.substr(0, where.size() - 1), "an object", j);
  static const char* const kKnown[] = {"temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n",
                                       "presence_penalty", "frequency_penalty", "seed", "stop", "num_predict",
                                       "num_ctx"};
  // Ollama options that have no meaning here; accepted so existing clients keep working.
  static const char* const kIgnored[] = {"num_thread", "num_gpu", "main_gpu", "num_batch", "num_keep", "mirostat",
                                         "mirostat_eta", "mirostat_tau", "tfs_z", "typical_p", "penalize_newline",
                                         "numa", "low_vram", "f16_kv", "use_mmap", "use_mlock", "vocab_only",
                                         "logits_all", "embedding_only", "rope_frequency_base",
                                         "rope_frequency_scale"};
  for (const auto& [key, value] : j.items()) {
    bool known = std::find(std::begin(kKnown), std::end(kKnown), key) != std::end(kKnown) ||
                 std::find(std::begin(kIgnored), std::end(kIgnored), key) != std::end(kIgnored);
    if (!known) throw RequestError("unknown option \"" + where + key + "\"");
  }
  o.temperature = opt_number(j, "temperature", where);
  o.top_p = opt_number(j, "top_p", where);
  o.min_p = opt_number(j, "min_p", where);
  o.repeat_penalty = opt_number(j, "repeat_penalty", where);
  o.presence_penalty = opt_number(j, "presence_penalty", where);
  o.frequency_penalty = opt_number(j, "frequency_penalty", where);
  o.top_k = opt_int(j, "top_k", where);
  o.repeat_last_n = opt_int(j, "repeat_last_n", where);
  o.num_predict = opt_int(j, "num_predict", where);
  o.num_ctx = opt_int(j, "num_ctx", where);
  if (auto seed = opt_int(j, "seed", where)) {
    // Ollama uses -1 for "random"; any other negative value is an error.
    if (*seed < -1) throw RequestError("\"" + where + "seed\" must be >= 0 (or -1 for random)");
    if (*seed >= 0) o.seed = static_cast<uint64_t>(*seed);
  }
  if (auto it = j.find("stop"); it != j.end() && !it->is_null()) o.stop = string_or_list(*it, where + "stop");
  return o;
}

json GenOptions::to_json() const {
  json j = json::object();
  auto put = [&](const char* k, const auto& v) {
    if (v) j[k] = *v;
  };
  put("temperature", temperature);
  put("top_p", top_p);
  put("min_p", min_p);
  put("repeat_penalty", repeat_penalty);
  put("presence_penalty", presence_penalty);
  put("frequency_penalty", frequency_penalty);
  put("top_k", top_k);
  put("repeat_last_n", repeat_last_n);
  put("num_predict", num_predict);
  put("num_ctx", num_ctx);
  put("seed", seed);
  put("stop", stop);
  return j;
}

std::optional<int64_t> parse_keep_alive(const json& j) {
  if (j.is_null()) return std::nullopt;
  if (j.is_number()) {
    double v = j.get<double>();
    if (!std::isfinite(v)) throw RequestError("\"keep_alive\" must be finite");
    if (v > 1e12) throw RequestError("\"keep_alive\" is too long (at most 1e12 seconds; a negative value keeps the model loaded forever)");
    return v < 0 ? -1 : static_cast<int64_t>(v);
  }
  if (!j.is_string()) bad_type("keep_alive", "a duration such as \"5m\" or a number of seconds", j);
  const std::string s = j.get<std::string>();
  if (s.empty()) return std::nullopt;
  if (s[0] == '-') return -1;
  // Go-style durations: a sequence of <number><unit> with units h, m, s, ms; a bare number is seconds.
  int64_t total_ms = 0;
  size_t i = 0;
  bool any = false;
  while (i < s.size()) {
    size_t start = i;
    while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
    if (start == i) throw RequestError("\"keep_alive\" is not a duration: '" + s + "'");
    double v = 0;
    try {
      size_t used = 0;
      v = std::stod(s.substr(start, i - start), &used);
      if (used != i - start || !std::isfinite(v)) throw std::invalid_argument("partial");
    } catch (const std::exception&) {  // ".", "1.2.3", out of range
      throw RequestError("\"keep_alive\" is not a duration: '" + s + "'");
    }
    std::string unit;
    while (i < s.size() && std::isalpha(static_cast<unsigned char>(s[i]))) unit += s[i++];
    double ms;
    if (unit.empty() || unit == "s") ms = v * 1000;
    else if (unit == "ms") ms = v;
    else if (unit == "m") ms = v * 60000;
    else if (unit == "h") ms = v * 3600000;
    else throw RequestError("\"keep_alive\" has an unknown unit '" + unit + "' (use h, m, s or ms)");
    if (ms > 1e15 || static_cast<double>(total_ms) + ms > 1e15) throw RequestError("\"keep_alive\" is too long");
    total_ms += static_cast<int64_t>(ms);
    any = true;
  }
  if (!any) throw RequestError("\"keep_alive\" is not a duration: '" + s + "'");
  return total_ms / 1000;
}

GenerateRequest GenerateRequest::from_json(const json& j) {
  require_object(j);
  GenerateRequest r;
  r.model = opt_string(j, "model");
  if (r.model.empty()) throw RequestError("field \"model\" is required");
  r.prompt = opt_string(j, "prompt");
  r.system = opt_string(j, "system");
  r.raw = opt_bool(j, "raw", false);
  r.stream = opt_bool(j, "stream", true);
  r.truncate = opt_bool(j, "truncate", false);
  r.allow_failed_quality = opt_bool(j, "allow_failed_quality", false);
  if (auto it = j.find("keep_alive"); it != j.end()) r.keep_alive = parse_keep_alive(*it);
  if (auto it = j.find("options"); it != j.end()) r.options = GenOptions::from_json(*it, "options.");
  if (j.contains("images") && !j["images"].is_null()) throw RequestError("\"images\" are not supported by gptqd's text models");
  if (j.contains("format") && !j["format"].is_null() && !(j["format"].is_string() && j["format"].get<std::string>().empty())) {
    throw RequestError("\"format\" (structured output) is not supported yet");
  }
  if (j.contains("template") && j["template"].is_string() && !j["template"].get<std::string>().empty()) {
    throw RequestError("custom \"template\" strings are not supported; gptqd uses the model's own chat template");
  }
  return r;
}

json GenerateRequest::to_json() const {
  json j = {{"model", model}, {"prompt", prompt}, {"stream", stream}, {"options", options.to_json()}};
  if (!system.empty()) j["system"] = system;
  if (raw) j["raw"] = true;
  if (keep_alive) j["keep_alive"] = *keep_alive;
  return j;
}

ChatRequest ChatRequest::from_json(const json& j) {
  require_object(j);
  ChatRequest r;
  r.model = opt_string(j, "model");
  if (r.model.empty()) throw RequestError("field \"model\" is required");
  r.messages = parse_messages(j, "messages");
  r.stream = opt_bool(j, "stream", true);
  r.truncate = opt_bool(j, "truncate", false);
  r.allow_failed_quality = opt_bool(j, "allow_failed_quality", false);
  if (auto it = j.find("keep_alive"); it != j.end()) r.keep_alive = parse_keep_alive(*it);
  if (auto it = j.find("options"); it != j.end()) r.options = GenOptions::from_json(*it, "options.");
  if (j.contains("tools") && !j["tools"].is_null() && !(j["tools"].is_array() && j["tools"].empty())) {
    throw RequestError("\"tools\" (function calling) is not supported yet");
  }
  if (j.contains("format") && !j["format"].is_null() && !(j["format"].is_string() && j["format"].get<std::string>().empty())) {
    throw RequestError("\"format\" (structured output) is not supported yet");
  }
  return r;
}

json ChatRequest::to_json() const {
  json j = {{"model", model}, {"messages", messages_to_json(messages)}, {"stream", stream}, {"options", options.to_json()}};
  if (keep_alive) j["keep_alive"] = *keep_alive;
  return j;
}

OpenAiRequest OpenAiRequest::from_json(const json& j, bool chat) {
  require_object(j);
  OpenAiRequest r;
  r.chat = chat;
  r.model = opt_string(j, "model");
  if (r.model.empty()) throw RequestError("field \"model\" is required");
  if (chat) {
    r.messages = parse_messages(j, "messages");
  } else {
    auto it = j.find("prompt");
    if (it == j.end() || it->is_null()) throw RequestError("field \"prompt\" is required");
    auto parts = string_or_list(*it, "prompt");
    if (parts.size() != 1) throw RequestError("\"prompt\" must be one string (batches of prompts are not supported)");
    r.prompt = parts.front();
  }
  r.stream = opt_bool(j, "stream", false);
  r.allow_failed_quality = opt_bool(j, "allow_failed_quality", false);
  if (auto n = opt_int(j, "n", ""); n && *n != 1) throw RequestError("\"n\" must be 1 (several choices are not supported)");
  std::optional<int64_t> max_tokens = opt_int(j, "max_completion_tokens", "");
  if (!max_tokens) max_tokens = opt_int(j, "max_tokens", "");
  if (max_tokens && *max_tokens < 0) throw RequestError("\"max_tokens\" must be >= 0, not " + std::to_string(*max_tokens));
  r.options.num_predict = max_tokens;
  // OpenAI's defaults, not Ollama's: temperature 1, top_p 1, no top-k, no repetition penalty.
  r.options.temperature = opt_number(j, "temperature", "").value_or(1.0);
  if (*r.options.temperature < 0 || *r.options.temperature > 2) {
    throw RequestError("\"temperature\" must be between 0 and 2");
  }
  r.options.top_p = opt_number(j, "top_p", "").value_or(1.0);
  r.options.top_k = 0;
  r.options.presence_penalty = opt_number(j, "presence_penalty", "");
  r.options.frequency_penalty = opt_number(j, "frequency_penalty", "");
  // OpenAI applies no repetition penalty beyond these two.
  r.options.repeat_penalty = 1.0;
  if (auto seed = opt_int(j, "seed", "")) {
    if (*seed < 0) throw RequestError("\"seed\" must be >= 0");
    r.options.seed = static_cast<uint64_t>(*seed);
  }
  if (auto it = j.find("stop"); it != j.end() && !it->is_null()) r.options.stop = string_or_list(*it, "stop");
  if (j.contains("tools") && !j["tools"].is_null() && !(j["tools"].is_array() && j["tools"].empty())) {
    throw RequestError("\"tools\" (function calling) is not supported yet");
  }
  if (j.contains("logprobs") && j["logprobs"].is_boolean() && j["logprobs"].get<bool>()) {
    throw RequestError("\"logprobs\" is not supported yet");
  }
  return r;
}

EvalRequest EvalRequest::from_json(const json& j) {
  require_object(j);
  EvalRequest r;
  r.model = opt_string(j, "model");
  if (r.model.empty()) throw RequestError("field \"model\" is required");
  if (auto d = opt_string(j, "dataset"); !d.empty()) r.dataset = d;
  if (auto v = opt_int(j, "seqlen", "")) r.seqlen = *v;
  if (auto v = opt_int(j, "max_windows", "")) r.max_windows = *v;
  if (r.seqlen < 2 || r.seqlen > (1 << 20)) throw RequestError("\"seqlen\" must be between 2 and 1048576");
  if (r.max_windows < 0) throw RequestError("\"max_windows\" must be >= 0 (0: all windows)");
  r.stream = opt_bool(j, "stream", true);
  return r;
}

json EvalRequest::to_json() const {
  return json{{"model", model}, {"dataset", dataset}, {"seqlen", seqlen}, {"max_windows", max_windows}, {"stream", stream}};
}

QuantizeRequest QuantizeRequest::from_json(const json& j) {
  require_object(j);
  QuantizeRequest r;
  r.model = opt_string(j, "model");
  if (r.model.empty()) throw RequestError("field \"model\" is required");
  if (auto m = opt_string(j, "method"); !m.empty()) r.method = lower(m);
  if (r.method != "gptq" && r.method != "rtn") {
    throw RequestError("\"method\" must be \"gptq\" or \"rtn\", not \"" + r.method + "\"");
  }
  if (auto v = opt_int(j, "bits", "")) {
    if (*v != 2 && *v != 3 && *v != 4 && *v != 8) {
      throw RequestError("\"bits\" = " + std::to_string(*v) + " is not supported (supported: 2, 3, 4, 8)");
    }
    r.bits = static_cast<int>(*v);
  }
  if (auto v = opt_int(j, "group_size", "")) r.group_size = *v;
  if (r.group_size == 0 || r.group_size < -1 || r.group_size > (1 << 20)) {
    throw RequestError("\"group_size\" must be a positive number of input features or -1 (one group), not " +
                       std::to_string(r.group_size));
  }
  r.desc_act = opt_bool(j, "desc_act", false);
  r.sym = opt_bool(j, "sym", true);
  r.static_groups = opt_bool(j, "static_groups", false);
  if (auto v = opt_number(j, "damp_percent", "")) r.damp_percent = *v;
  if (!(r.damp_percent > 0 && r.damp_percent < 1)) {
    throw RequestError("\"damp_percent\" must be between 0 and 1 (exclusive), e.g. 0.01");
  }
  r.calib = opt_string(j, "calib");
  if (auto v = opt_int(j, "samples", "")) r.samples = *v;
  if (r.samples < 1 || r.samples > 100000) throw RequestError("\"samples\" must be between 1 and 100000");
  if (auto v = opt_int(j, "seqlen", "")) r.seqlen = *v;
  if (r.seqlen < 2 || r.seqlen > (1 << 20)) throw RequestError("\"seqlen\" must be between 2 and 1048576");
  if (auto v = opt_int(j, "seed", "")) {
    if (*v < 0) throw RequestError("\"seed\" must be >= 0");
    r.seed = static_cast<uint64_t>(*v);
  }
  r.tag = opt_string(j, "tag");
  if (auto v = opt_string(j, "device"); !v.empty()) r.device = v;
  r.eval = opt_string(j, "eval");
  if (auto v = opt_int(j, "eval_windows", "")) r.eval_windows = *v;
  if (r.eval_windows < 0 || r.eval_windows > 100000) throw RequestError("\"eval_windows\" must be between 0 and 100000");
  if (auto v = opt_int(j, "eval_seqlen", "")) r.eval_seqlen = *v;
  if (r.eval_seqlen < 2 || r.eval_seqlen > (1 << 20)) throw RequestError("\"eval_seqlen\" must be between 2 and 1048576");
  if (auto v = opt_number(j, "max_ppl_ratio", "")) r.max_ppl_ratio = *v;
  if (!(r.max_ppl_ratio >= 1)) throw RequestError("\"max_ppl_ratio\" must be >= 1");
  r.stream = opt_bool(j, "stream", false);
  return r;
}

json QuantizeRequest::to_json() const {
  return json{{"model", model},
              {"method", method},
              {"bits", bits},
              {"group_size", group_size},
              {"desc_act", desc_act},
              {"sym", sym},
              {"static_groups", static_groups},
              {"damp_percent", damp_percent},
              {"calib", calib},
              {"samples", samples},
              {"seqlen", seqlen},
              {"seed", seed},
              {"tag", tag},
              {"device", device},
              {"eval", eval},
              {"eval_windows", eval_windows},
              {"eval_seqlen", eval_seqlen},
              {"max_ppl_ratio", max_ppl_ratio},
              {"stream", stream}};
}

std::string QuantizeRequest::default_tag() const {
  std::string t = (method == "rtn" ? "rtn-" : "gptq-") + std::to_string(bits) + "b-g" +
                  std::to_string(group_size);
  if (desc_act && method == "gptq") t += "-act";
  if (!sym) t += "-asym";
  return t;
}

DatasetAddRequest DatasetAddRequest::from_json(const json& j) {
  require_object(j);
  DatasetAddRequest r;
  r.name = opt_string(j, "name");
  if (r.name.empty()) throw RequestError("field \"name\" is required");
  auto it = j.find("files");
  if (it == j.end() || !it->is_array() || it->empty()) throw RequestError("field \"files\" must be a non-empty list of paths");
  r.files = string_or_list(*it, "files");
  return r;
}

json DatasetAddRequest::to_json() const { return json{{"name", name}, {"files", files}}; }

DatasetPullRequest DatasetPullRequest::from_json(const json& j) {
  require_object(j);
  DatasetPullRequest r;
  r.source = opt_string(j, "source");
  if (r.source.empty()) throw RequestError("field \"source\" (a Hub dataset repo org/name or an http(s) URL) is required");
  if (auto it = j.find("files"); it != j.end() && !it->is_null()) r.files = string_or_list(*it, "files");
  r.name = opt_string(j, "name");
  r.revision = opt_string(j, "revision");
  r.sha256 = opt_string(j, "sha256");
  r.stream = opt_bool(j, "stream", true);
  return r;
}

json DatasetPullRequest::to_json() const {
  json j = {{"source", source}, {"stream", stream}};
  if (!files.empty()) j["files"] = files;
  if (!name.empty()) j["name"] = name;
  if (!revision.empty()) j["revision"] = revision;
  if (!sha256.empty()) j["sha256"] = sha256;
  return j;
}

std::string rfc3339_utc(int64_t unix_seconds) {
  std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

json ModelEntry::to_json(bool detailed) const {
  json j = {
      {"name", ref()},
      {"model", ref()},
      {"tag", tag},
      {"default", is_default},
      {"size", size_bytes},
      {"digest", digest},
      {"modified_at", rfc3339_utc(created_at)},
      {"created_at", created_at},
      {"architecture", architecture},
      {"n_params", n_params},
      {"dtype", dtype},
      {"source", source},
      {"source_kind", source_kind},
      {"details",
       {{"format", format},
        {"family", architecture},
        {"families", json::array({architecture})},
        {"parameter_size", format_param_count(n_params)},
        {"quantization_level", dtype}}},
  };
  j["name"] = ref();
  j["state"] = state;
  if (!quality.is_null()) j["quality"] = quality;
  if (detailed) {
    j["model_info"] = config;
    json files_json = json::array();
    for (const auto& f : files) files_json.push_back({{"name", f.name}, {"digest", f.digest}, {"size", f.size_bytes}});
    j["files"] = std::move(files_json);
  }
  return j;
}

namespace {

// An integer field of an answer: a float (even a whole one) or a value past the type is refused,
// never cast (casting 1.8e20 to uint64 is undefined behaviour).
template <typename T>
T integer_field(const json& j, const char* key) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return T{0};
  if (it->is_number_unsigned()) {
    const uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<T>::max())) throw RequestError(std::string("\"") + key + "\" is too large");
    return static_cast<T>(v);
  }
  if (it->is_number_integer()) {
    const int64_t v = it->get<int64_t>();
    if (std::is_unsigned_v<T> && v < 0) throw RequestError(std::string("\"") + key + "\" must not be negative");
    return static_cast<T>(v);
  }
  throw RequestError(std::string("\"") + key + "\" must be an integer, not " + it->dump());
}

ModelEntry model_entry_fields(const json& j) {
  ModelEntry e;
  std::string ref = j.value("model", j.value("name", std::string()));
  auto colon = ref.find(':');
  e.name = ref.substr(0, colon);
  e.tag = j.value("tag", colon == std::string::npos ? std::string() : ref.substr(colon + 1));
  e.is_default = j.value("default", false);
  e.size_bytes = integer_field<uint64_t>(j, "size");
  e.digest = j.value("digest", std::string());
  e.created_at = integer_field<int64_t>(j, "created_at");
  e.architecture = j.value("architecture", std::string());
  e.n_params = integer_field<uint64_t>(j, "n_params");
  e.dtype = j.value("dtype", std::string());
  e.source = j.value("source", std::string());
  e.source_kind = j.value("source_kind", std::string());
  e.state = j.value("state", std::string("ready"));
  if (auto q = j.find("quality"); q != j.end()) e.quality = *q;
  if (auto d = j.find("details"); d != j.end() && d->is_object()) e.format = d->value("format", std::string());
  if (auto c = j.find("model_info"); c != j.end()) e.config = *c;
  if (auto fs = j.find("files"); fs != j.end() && fs->is_array()) {
    for (const auto& f : *fs) {
      if (!f.is_object()) throw RequestError("model entry: a file entry must be a JSON object");
      e.files.push_back(FileEntry{f.value("name", std::string()), f.value("digest", std::string()),
                                  integer_field<uint64_t>(f, "size")});
    }
  }
  return e;
}

}  // namespace

ModelEntry ModelEntry::from_json(const json& j) {
  if (!j.is_object()) throw RequestError(std::string("model entry must be a JSON object, found ") + j.type_name());
  try {
    return model_entry_fields(j);
  } catch (const json::exception& e) {
    // A field of the wrong type ("size": "x"): value() throws type_error.302 naming the types.
    throw RequestError(std::string("model entry: ") + e.what());
  }
}

std::string manifest_text(const std::vector<FileEntry>& files) {
  std::vector<const FileEntry*> sorted;
  for (const auto& f : files) sorted.push_back(&f);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  std::string text;
  for (const auto* f : sorted) text += f->name + " " + f->digest + " " + std::to_string(f->size_bytes) + "\n";
  return text;
}

}  // namespace gptqd::protocol
