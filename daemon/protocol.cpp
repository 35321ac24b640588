// SPDX-License-Identifier: Apache-2.0
// JSON mapping of the socket API and the model-name rules (daemon layer, shared with gptqctl).
#include "daemon/protocol.h"

#include <unistd.h>

#include <algorithm>
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
  if (detailed) {
    j["model_info"] = config;
    json files_json = json::array();
    for (const auto& f : files) files_json.push_back({{"name", f.name}, {"digest", f.digest}, {"size", f.size_bytes}});
    j["files"] = std::move(files_json);
  }
  return j;
}

ModelEntry ModelEntry::from_json(const json& j) {
  ModelEntry e;
  std::string ref = j.value("model", j.value("name", std::string()));
  auto colon = ref.find(':');
  e.name = ref.substr(0, colon);
  e.tag = j.value("tag", colon == std::string::npos ? std::string() : ref.substr(colon + 1));
  e.is_default = j.value("default", false);
  e.size_bytes = j.value("size", uint64_t{0});
  e.digest = j.value("digest", std::string());
  e.created_at = j.value("created_at", int64_t{0});
  e.architecture = j.value("architecture", std::string());
  e.n_params = j.value("n_params", uint64_t{0});
  e.dtype = j.value("dtype", std::string());
  e.source = j.value("source", std::string());
  e.source_kind = j.value("source_kind", std::string());
  if (auto d = j.find("details"); d != j.end() && d->is_object()) e.format = d->value("format", std::string());
  if (auto c = j.find("model_info"); c != j.end()) e.config = *c;
  if (auto fs = j.find("files"); fs != j.end() && fs->is_array()) {
    for (const auto& f : *fs) {
      e.files.push_back(FileEntry{f.value("name", std::string()), f.value("digest", std::string()),
                                  f.value("size", uint64_t{0})});
    }
  }
  return e;
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
