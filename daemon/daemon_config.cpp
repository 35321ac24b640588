// SPDX-License-Identifier: Apache-2.0
// gptqd's settings: flags, the JSON config file and the environment, checked once (daemon layer).
// One table (kSettings) names every setting an operator may change; the JSON keys, the flags, the
// checks and the error messages all come from it.
#include "daemon/daemon_config.h"

#include <sys/un.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <regex>
#include <variant>
#include <vector>

#include "daemon/protocol.h"
#include "engine/error.h"
#include "engine/json_strict.h"
#include "kernels/cuda/cuda_probe.h"

namespace gptqd::daemon {
namespace {
namespace fs = std::filesystem;
using nlohmann::json;

constexpr size_t kMaxConfigBytes = 1u << 20;  // a config file is a few hundred bytes
constexpr size_t kMaxStringChars = 4096;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

// systemd may list several directories separated by ':'; the first is ours.
std::string first_of_list(const std::string& s) { return s.substr(0, s.find(':')); }

// What a value must look like, in JSON and on the command line.
enum class Rule {
  text,        // any string
  group,       // a group name
  device,      // auto | cpu | cuda:N
  dbus,        // auto | none | system | session | a D-Bus address
  url,         // "" or an http(s) URL
  path,        // a file or directory; absolute in the config file
  octal_mode,  // "0660"
  count,       // an integer in [min, max]
  duration,    // "5m", "1h30m", seconds, or negative for "never unload"
};

using Field = std::variant<std::string DaemonConfig::*, fs::path DaemonConfig::*, uint32_t DaemonConfig::*,
                           uint64_t DaemonConfig::*, int64_t DaemonConfig::*>;

struct Setting {
  std::string_view key;  // the JSON key; the flag is "--" + key with '-' for '_'
  Field field;
  Rule rule;
  std::string_view help;
  uint64_t min = 0;  // Rule::count only
  uint64_t max = 0;
};

// Every setting of the config file, in the order `gptqd --help` and systemd/README.md list them.
const Setting kSettings[] = {
    {"state_dir", &DaemonConfig::state_dir, Rule::path,
     "State directory [default: $STATE_DIRECTORY, $XDG_DATA_HOME/gptqd or ~/.local/share/gptqd]"},
    {"socket", &DaemonConfig::socket_path, Rule::path,
     "Unix socket path [default: $RUNTIME_DIRECTORY/gptqd.sock, $XDG_RUNTIME_DIR/gptqd.sock or /tmp/gptqd-UID/gptqd.sock]"},
    {"socket_mode", &DaemonConfig::socket_mode, Rule::octal_mode, "Permissions of the socket file (octal)"},
    {"device", &DaemonConfig::device, Rule::device, "Compute device: auto, cpu or cuda:N"},
    {"admin_group", &DaemonConfig::admin_group, Rule::group, "Group whose members may pull and delete models"},
    {"user_group", &DaemonConfig::user_group, Rule::group, "Group whose members may use the daemon (read, generate)"},
    {"dbus", &DaemonConfig::dbus, Rule::dbus, "D-Bus: auto, none, system, session or a bus address"},
    {"hub_endpoint", &DaemonConfig::hub_endpoint, Rule::url, "Hugging Face Hub URL [default: $HF_ENDPOINT or https://huggingface.co]"},
    {"hub_token_file", &DaemonConfig::hub_token_file, Rule::path, "File with the Hub token when HF_TOKEN is unset [default: $HF_TOKEN_PATH]"},
    {"max_body_bytes", &DaemonConfig::max_body_bytes, Rule::count, "Largest request body", 1024, 1ull << 30},
    {"max_header_bytes", &DaemonConfig::max_header_bytes, Rule::count, "Largest request header block", 1024, 1u << 20},
    {"idle_timeout_ms", &DaemonConfig::idle_timeout_ms, Rule::count, "Close connections idle this long", 100, UINT32_MAX},
    {"header_timeout_ms", &DaemonConfig::header_timeout_ms, Rule::count,
     "Close connections whose request headers take longer than this (slowloris)", 100, UINT32_MAX},
    {"write_timeout_ms", &DaemonConfig::write_timeout_ms, Rule::count, "Drop clients that do not read for this long", 100, UINT32_MAX},
    {"max_connections", &DaemonConfig::max_connections, Rule::count, "Concurrent connections before 503", 1, 65536},
    {"max_connections_per_uid", &DaemonConfig::max_connections_per_uid, Rule::count,
     "Concurrent connections of one user (uid) before 503", 1, 65536},
    {"max_requests_per_connection", &DaemonConfig::max_requests_per_connection, Rule::count,
     "Requests served on one connection before it is closed", 1, UINT32_MAX},
    {"max_json_depth", &DaemonConfig::max_json_depth, Rule::count, "Deepest nesting of a JSON request body", 2, 512},
    {"max_messages", &DaemonConfig::max_messages, Rule::count, "Chat messages in one request", 1, 1u << 20},
    {"max_stop_strings", &DaemonConfig::max_stop_strings, Rule::count, "Stop strings in one request", 0, 13},
    {"max_stop_bytes", &DaemonConfig::max_stop_bytes, Rule::count, "Bytes of one stop string", 1, 256},
    {"max_generation_ms", &DaemonConfig::max_generation_ms, Rule::count,
     "Stop a generation (queue wait included) after this long (0: no limit)", 0, UINT32_MAX},
    {"device_step_timeout_s", &DaemonConfig::device_step_timeout_s, Rule::count,
     "A device step running longer means the worker is stuck: unhealthy, exit 1 so systemd restarts gptqd (0: never)",
     0, 86400},
    {"io_workers", &DaemonConfig::io_workers, Rule::count, "Threads for blocking work", 1, 64},
    {"threads", &DaemonConfig::threads, Rule::count, "Compute threads on the CPU (0: one per core)", 0, 1024},
    {"parallel", &DaemonConfig::parallel, Rule::count, "Requests served at once per model (interleaved)", 1, 64},
    {"max_queue", &DaemonConfig::max_queue, Rule::count, "Requests that may wait for the device before 503", 0, 4096},
    {"max_loaded_models", &DaemonConfig::max_loaded_models, Rule::count, "Models kept loaded at once", 1, 64},
    {"keep_alive", &DaemonConfig::keep_alive_s, Rule::duration,
     "How long an unused model stays loaded when a request does not say (5m, 1h, seconds; -1: forever)"},
};

const Setting& setting(std::string_view key) {
  for (const Setting& s : kSettings) {
    if (s.key == key) return s;
  }
  fail(ErrorCode::internal, "no setting named ", key);
}

std::string flag_of(const Setting& s) {
  std::string f = "--" + std::string(s.key);
  std::replace(f.begin(), f.end(), '_', '-');
  return f;
}

template <typename T>
T& member(DaemonConfig& cfg, const Setting& s) {
  return cfg.*std::get<T DaemonConfig::*>(s.field);
}

std::string rule_text(const Setting& s, bool in_file) {
  switch (s.rule) {
    case Rule::text: return "a string";
    case Rule::group: return "a group name (letters, digits, '_', '.', '-'; at most 32)";
    case Rule::device: return "auto, cpu or cuda:N";
    case Rule::dbus: return "auto, none, system, session or a D-Bus address such as unix:path=/run/dbus/system_bus_socket";
    case Rule::url: return "an http:// or https:// URL";
    case Rule::path: return in_file ? "an absolute path" : "a path";
    case Rule::octal_mode: return "an octal mode as a string, such as \"0660\"";
    case Rule::count: return cat("an integer between ", s.min, " and ", s.max);
    case Rule::duration: return "a duration such as \"5m\" or \"1h30m\", a number of seconds, or -1 (never unload)";
  }
  return "valid";
}

// The value as the message shows it: JSON, cut short.
std::string shown(const json& v) {
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  return s.size() > 64 ? s.substr(0, 61) + "..." : s;
}

bool text_ok(Rule rule, const std::string& v) {
  static const std::regex kGroup("[A-Za-z_][A-Za-z0-9_.-]{0,31}");
  static const std::regex kDevice("auto|cpu|cuda:[0-9]{1,2}");
  static const std::regex kDbusAddress("[a-z-]+:[!-~]*");
  switch (rule) {
    case Rule::group: return std::regex_match(v, kGroup);
    case Rule::device: return std::regex_match(v, kDevice);
    case Rule::dbus:
      return v == "auto" || v == "none" || v == "system" || v == "session" || std::regex_match(v, kDbusAddress);
    case Rule::url:
      return (v.starts_with("http://") && v.size() > 7) || (v.starts_with("https://") && v.size() > 8);
    default: return true;
  }
}

// Sets one setting from a JSON value; `name` is how messages call it ("max_queue" in a file,
// --max-queue on the command line, HF_ENDPOINT in the environment).
void apply_value(DaemonConfig& cfg, const Setting& s, const json& v, std::string_view name, bool in_file) {
  auto bad = [&]() { fail(ErrorCode::invalid_argument, name, " must be ", rule_text(s, in_file), ", not ", shown(v)); };
  switch (s.rule) {
    case Rule::count: {
      if (!v.is_number_unsigned()) bad();
      const uint64_t n = v.get<uint64_t>();
      if (n < s.min || n > s.max) bad();
      if (std::holds_alternative<uint32_t DaemonConfig::*>(s.field)) {
        member<uint32_t>(cfg, s) = static_cast<uint32_t>(n);
      } else {
        member<uint64_t>(cfg, s) = n;
      }
      return;
    }
    case Rule::duration: {
      std::optional<int64_t> seconds;
      try {
        if (!v.is_boolean()) seconds = protocol::parse_keep_alive(v);
      } catch (const std::exception&) {
        seconds.reset();
      }
      if (!seconds) bad();
      member<int64_t>(cfg, s) = *seconds;
      return;
    }
    default: break;
  }
  if (!v.is_string()) bad();
  std::string text = v.get<std::string>();
  if (text.size() > kMaxStringChars) {
    fail(ErrorCode::invalid_argument, name, " must be at most ", kMaxStringChars, " characters long");
  }
  switch (s.rule) {
    case Rule::path:
      if (text.empty() || (in_file && !fs::path(text).is_absolute())) bad();
      member<fs::path>(cfg, s) = text;
      return;
    case Rule::octal_mode:
      if (!std::regex_match(text, std::regex("0?[0-7]{3}"))) bad();
      member<uint32_t>(cfg, s) = static_cast<uint32_t>(std::stoul(text, nullptr, 8));
      return;
    case Rule::url:
      while (!text.empty() && text.back() == '/') text.pop_back();
      if (!text.empty() && !text_ok(s.rule, text)) bad();  // "" means the default Hub
      break;
    default:
      if (!text_ok(s.rule, text)) bad();
      break;
  }
  member<std::string>(cfg, s) = std::move(text);
}

// The current value of a setting as JSON, for finalize() to check it again.
json current_value(DaemonConfig& cfg, const Setting& s) {
  switch (s.rule) {
    case Rule::count:
      return std::holds_alternative<uint32_t DaemonConfig::*>(s.field) ? json(member<uint32_t>(cfg, s))
                                                                      : json(member<uint64_t>(cfg, s));
    case Rule::duration: return json(member<int64_t>(cfg, s) < 0 ? int64_t{-1} : member<int64_t>(cfg, s));
    case Rule::octal_mode: {
      char buf[16];
      std::snprintf(buf, sizeof buf, "0%o", member<uint32_t>(cfg, s));
      return json(buf);
    }
    case Rule::path: return json(member<fs::path>(cfg, s).string());
    default: return json(member<std::string>(cfg, s));
  }
}

// The placeholder --help shows for the value.
const char* type_name(const Setting& s) {
  switch (s.rule) {
    case Rule::count: return "N";
    case Rule::path: return "PATH";
    case Rule::octal_mode: return "MODE";
    case Rule::duration: return "DURATION";
    case Rule::url: return "URL";
    case Rule::group: return "GROUP";
    default: return "TEXT";
  }
}

// The default shown by --help, or "" for none worth showing.
std::string default_text(const Setting& s) {
  DaemonConfig defaults;
  if (s.rule == Rule::path) return "";
  const json v = current_value(defaults, s);
  return v.is_string() ? v.get<std::string>() : v.dump();
}

// Flags arrive as text; integers become JSON numbers so that one apply_value checks both sources.
json flag_value(const Setting& s, const std::string& text) {
  if (s.rule == Rule::count) {
    uint64_t n = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), n);
    if (r.ec == std::errc() && r.ptr == text.data() + text.size() && !text.empty()) return json(n);
  }
  return json(text);
}

// One or two edits away, or the same with '-' for '_': "did you mean".
std::string suggestion(const std::string& key) {
  auto distance = [](std::string_view a, std::string_view b) {
    std::vector<size_t> row(b.size() + 1);
    for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (size_t i = 1; i <= a.size(); ++i) {
      size_t diag = row[0];
      row[0] = i;
      for (size_t j = 1; j <= b.size(); ++j) {
        const size_t up = row[j];
        row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
        diag = up;
      }
    }
    return row[b.size()];
  };
  std::string snake = key;
  std::replace(snake.begin(), snake.end(), '-', '_');
  for (const Setting& s : kSettings) {
    if (s.key == snake || distance(key, s.key) <= 2) return cat(" (did you mean \"", s.key, "\"?)");
  }
  return "";
}

// What systemd (StateDirectory=, RuntimeDirectory=) and the operator set in the environment;
// it overrides the config file and is overridden by flags.
void apply_environment(DaemonConfig& cfg) {
  if (std::string v = env("STATE_DIRECTORY"); !v.empty()) cfg.state_dir = first_of_list(v);
  if (std::string v = env("RUNTIME_DIRECTORY"); !v.empty()) cfg.socket_path = fs::path(first_of_list(v)) / "gptqd.sock";
  if (std::string v = env("HF_ENDPOINT"); !v.empty()) {
    v.erase(0, v.find_first_not_of(" \t\r\n"));
    v.erase(v.find_last_not_of(" \t\r\n") + 1);
    if (!v.empty()) apply_value(cfg, setting("hub_endpoint"), json(v), "HF_ENDPOINT", false);
  }
  if (std::string v = env("HF_TOKEN_PATH"); !v.empty()) cfg.hub_token_file = v;
}

// What the CUDA probe sees, for the refusal of --device cuda:N: "it found cuda:0 Tesla T4 (sm75)"
// or "it found no GPU: <why>". Only on that error path, with a short timeout.
std::string probe_summary() {
  kernels::cuda::CudaProbeOptions options;
  options.timeout_ms = 3000;
  const auto r = kernels::cuda::probe_cuda(options);
  if (r.devices.empty()) return "the CUDA probe found no GPU: " + r.error;
  std::string s = "the CUDA probe found ";
  for (size_t i = 0; i < r.devices.size(); ++i) {
    const auto& g = r.devices[i];
    s += cat(i ? ", " : "", "cuda:", g.index, " ", g.name, " (sm", g.cc_major * 10 + g.cc_minor, ")");
  }
  return s;
}
}  // namespace

void DaemonConfig::apply_json(std::string_view text, std::string_view where) {
  const json doc = engine::parse_json_strict(text, where, /*max_depth=*/8);
  if (!doc.is_object()) {
    fail(ErrorCode::invalid_argument, where, ": the config must be a JSON object such as {\"max_queue\": 32}, not ",
         engine::json_type_name(doc));
  }
  for (const auto& item : doc.items()) {
    const std::string& key = item.key();  // (not a structured binding: clang 14 cannot capture one)
    const json& value = item.value();
    const auto it = std::find_if(std::begin(kSettings), std::end(kSettings), [&](const Setting& s) { return s.key == key; });
    if (it == std::end(kSettings)) {
      fail(ErrorCode::invalid_argument, where, ": unknown key ", shown(json(key)), suggestion(key),
           "; the keys are listed in systemd/README.md and `gptqd --help`");
    }
    try {
      apply_value(*this, *it, value, cat('"', key, '"'), /*in_file=*/true);
    } catch (const Error& e) {
      fail(e.code(), where, ": ", e.what());
    }
  }
}

void DaemonConfig::apply_file(const fs::path& path) {
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec) fail(ErrorCode::invalid_argument, "cannot read the config file ", path.string(), ": ", ec.message());
  if (!fs::is_regular_file(st)) fail(ErrorCode::invalid_argument, path.string(), ": the config file is not a regular file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ErrorCode::invalid_argument, "cannot read the config file ", path.string(), ": ", std::strerror(errno));
  std::string text(kMaxConfigBytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (in.bad()) fail(ErrorCode::invalid_argument, "cannot read the config file ", path.string(), ": ", std::strerror(errno));
  text.resize(static_cast<size_t>(in.gcount()));
  if (text.size() > kMaxConfigBytes) {
    fail(ErrorCode::invalid_argument, path.string(), ": the config file is larger than ", kMaxConfigBytes, " bytes");
  }
  apply_json(text, path.string());
  config_file = path;
}

std::optional<DaemonConfig> DaemonConfig::from_args(int argc, char** argv, int* exit_code,
                                                    const fs::path& default_config_file) {
  CLI::App app{"gptqd: keeps, quantizes (GPTQ) and serves LLMs over a Unix socket"};
  app.set_version_flag("--version", std::string("gptqd ") + GPTQD_VERSION);
  std::string config_path;
  bool foreground = false;
  app.add_option("--config", config_path,
                 "JSON config file; flags and the environment override it [default: $GPTQD_CONFIG, else " +
                     default_config_file.string() + " when it exists]")
      ->type_name("FILE");
  app.add_flag("--foreground", foreground, "Stay in the foreground (systemd, containers, debugging)");
  std::vector<std::string> values(std::size(kSettings));
  std::vector<CLI::Option*> options;
  for (size_t i = 0; i < std::size(kSettings); ++i) {
    const Setting& s = kSettings[i];
    CLI::Option* o = app.add_option(flag_of(s), values[i], std::string(s.help))->type_name(type_name(s));
    if (std::string d = default_text(s); !d.empty()) o->default_str(d);
    options.push_back(o);
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    *exit_code = app.exit(e);
    return std::nullopt;
  }

  DaemonConfig cfg;
  try {
    fs::path file;
    if (app.count("--config") > 0) {
      if (config_path.empty()) fail(ErrorCode::invalid_argument, "--config needs a file name");
      file = config_path;
    } else if (std::string from_env = env("GPTQD_CONFIG"); !from_env.empty()) {
      file = from_env;
    } else if (std::error_code ec; !default_config_file.empty() && fs::exists(default_config_file, ec)) {
      file = default_config_file;
    }
    if (!file.empty()) cfg.apply_file(file);
    apply_environment(cfg);
    for (size_t i = 0; i < std::size(kSettings); ++i) {
      if (options[i]->count() == 0) continue;
      apply_value(cfg, kSettings[i], flag_value(kSettings[i], values[i]), flag_of(kSettings[i]), /*in_file=*/false);
    }
  } catch (const Error& e) {
    std::cerr << "gptqd: " << e.what() << "\n";
    *exit_code = 2;
    return std::nullopt;
  }
  cfg.foreground = foreground;
  return cfg;
}

void DaemonConfig::finalize() {
  if (state_dir.empty()) {
    std::string sd = env("STATE_DIRECTORY");
    if (!sd.empty()) {
      state_dir = first_of_list(sd);
    } else if (std::string xdg = env("XDG_DATA_HOME"); !xdg.empty()) {
      state_dir = fs::path(xdg) / "gptqd";
    } else if (std::string home = env("HOME"); !home.empty()) {
      state_dir = fs::path(home) / ".local" / "share" / "gptqd";
    } else {
      fail(ErrorCode::invalid_argument, "no state directory: pass --state-dir (HOME is not set)");
    }
  }
  state_dir = fs::absolute(state_dir).lexically_normal();
  if (socket_path.empty()) socket_path = protocol::default_socket_path();
  socket_path = fs::absolute(socket_path).lexically_normal();
  if (socket_path.string().size() >= sizeof(sockaddr_un{}.sun_path)) {
    fail(ErrorCode::invalid_argument, "socket path ", socket_path.string(), " is longer than ",
         sizeof(sockaddr_un{}.sun_path) - 1, " bytes, the limit of a Unix socket address");
  }
  if (!hub_token_file.empty()) hub_token_file = fs::absolute(hub_token_file).lexically_normal();
  // Values set in code (not through from_args) get the same checks as the file and the flags.
  for (const Setting& s : kSettings) {
    if (s.rule == Rule::path) continue;
    DaemonConfig scratch = *this;
    apply_value(scratch, s, current_value(*this, s), flag_of(s), /*in_file=*/false);
  }
  if (device.rfind("cuda", 0) == 0) {
    fail(ErrorCode::unsupported, "--device ", device, ": this gptqd runs models on the CPU only (the CUDA backend is "
         "not built yet; ", probe_summary(), "); use --device cpu or auto");
  }
}

}  // namespace gptqd::daemon
