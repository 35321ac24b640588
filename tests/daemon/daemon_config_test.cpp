// SPDX-License-Identifier: Apache-2.0
// gptqd's JSON config file, flags and environment: every key, strict errors, precedence (unit).
#include "daemon/daemon_config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "engine/error.h"
#include "tests/support/test_env.h"

namespace gptqd::daemon {
namespace {
namespace fs = std::filesystem;
using test::TempDir;
using test::write_file;

// The variables from_args reads; each test starts with none of them set.
const char* const kEnvVars[] = {"GPTQD_CONFIG", "STATE_DIRECTORY", "RUNTIME_DIRECTORY", "HF_ENDPOINT", "HF_TOKEN_PATH"};

struct Parsed {
  std::optional<DaemonConfig> cfg;
  int exit_code = 0;
  std::string out;  // stdout (--help)
  std::string err;  // stderr (errors)
};

class DaemonConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const char* name : kEnvVars) {
      if (const char* v = std::getenv(name)) saved_[name] = v;
      ::unsetenv(name);
    }
  }
  void TearDown() override {
    for (const char* name : kEnvVars) {
      if (auto it = saved_.find(name); it != saved_.end()) {
        ::setenv(name, it->second.c_str(), 1);
      } else {
        ::unsetenv(name);
      }
    }
  }

  // gptqd ARGS..., with the default config file at `default_file` (nonexistent unless a test writes it).
  Parsed parse(std::vector<std::string> args) {
    args.insert(args.begin(), "gptqd");
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    Parsed p;
    ::testing::internal::CaptureStdout();
    ::testing::internal::CaptureStderr();
    p.cfg = DaemonConfig::from_args(static_cast<int>(args.size()), argv.data(), &p.exit_code, default_file());
    p.err = ::testing::internal::GetCapturedStderr();
    p.out = ::testing::internal::GetCapturedStdout();
    return p;
  }

  // Writes `json` to a file in the temp dir and returns its path.
  fs::path config(const std::string& json, const std::string& name = "gptqd.json") {
    const fs::path p = dir_ / name;
    write_file(p, json);
    return p;
  }

  // The message apply_file throws for `json`, or "" when it is accepted.
  std::string file_error(const std::string& json) {
    DaemonConfig cfg;
    try {
      cfg.apply_file(config(json));
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
      return e.what();
    }
    return "";
  }

  fs::path default_file() const { return dir_ / "etc" / "gptqd.json"; }

  TempDir dir_;
  std::map<std::string, std::string> saved_;
};

TEST_F(DaemonConfigTest, EveryKeyFromTheFile) {
  const fs::path file = config(R"({
    "state_dir": "/srv/gptqd",
    "socket": "/run/x/gptqd.sock",
    "socket_mode": "0600",
    "device": "cpu",
    "admin_group": "llm-admins",
    "user_group": "llm-users",
    "dbus": "none",
    "hub_endpoint": "https://hub.example.org/",
    "hub_token_file": "/etc/gptqd/hub-token",
    "max_body_bytes": 1048576,
    "max_header_bytes": 8192,
    "idle_timeout_ms": 5000,
    "write_timeout_ms": 6000,
    "header_timeout_ms": 7000,
    "max_connections": 64,
    "max_connections_per_uid": 9,
    "max_requests_per_connection": 10,
    "max_json_depth": 11,
    "max_messages": 12,
    "max_stop_strings": 13,
    "max_stop_bytes": 14,
    "max_generation_ms": 15000,
    "device_step_timeout_s": 16,
    "io_workers": 3,
    "threads": 8,
    "parallel": 2,
    "max_queue": 32,
    "max_loaded_models": 1,
    "keep_alive": "10m"
  })");
  Parsed p = parse({"--config", file.string()});
  ASSERT_TRUE(p.cfg) << p.err;
  const DaemonConfig& c = *p.cfg;
  EXPECT_EQ(c.config_file, file);
  EXPECT_EQ(c.state_dir, "/srv/gptqd");
  EXPECT_EQ(c.socket_path, "/run/x/gptqd.sock");
  EXPECT_EQ(c.socket_mode, 0600u);
  EXPECT_EQ(c.device, "cpu");
  EXPECT_EQ(c.admin_group, "llm-admins");
  EXPECT_EQ(c.user_group, "llm-users");
  EXPECT_EQ(c.dbus, "none");
  EXPECT_EQ(c.hub_endpoint, "https://hub.example.org");  // trailing '/' dropped
  EXPECT_EQ(c.hub_token_file, "/etc/gptqd/hub-token");
  EXPECT_EQ(c.max_body_bytes, 1048576u);
  EXPECT_EQ(c.max_header_bytes, 8192u);
  EXPECT_EQ(c.idle_timeout_ms, 5000u);
  EXPECT_EQ(c.write_timeout_ms, 6000u);
  EXPECT_EQ(c.header_timeout_ms, 7000u);
  EXPECT_EQ(c.max_connections, 64u);
  EXPECT_EQ(c.max_connections_per_uid, 9u);
  EXPECT_EQ(c.max_requests_per_connection, 10u);
  EXPECT_EQ(c.max_json_depth, 11u);
  EXPECT_EQ(c.max_messages, 12u);
  EXPECT_EQ(c.max_stop_strings, 13u);
  EXPECT_EQ(c.max_stop_bytes, 14u);
  EXPECT_EQ(c.max_generation_ms, 15000u);
  EXPECT_EQ(c.device_step_timeout_s, 16u);
  EXPECT_EQ(c.io_workers, 3u);
  EXPECT_EQ(c.threads, 8u);
  EXPECT_EQ(c.parallel, 2u);
  EXPECT_EQ(c.max_queue, 32u);
  EXPECT_EQ(c.max_loaded_models, 1u);
  EXPECT_EQ(c.keep_alive_s, 600);
  EXPECT_FALSE(c.foreground);
}

TEST_F(DaemonConfigTest, EmptyObjectKeepsTheDefaults) {
  Parsed p = parse({"--config", config("{}").string()});
  ASSERT_TRUE(p.cfg) << p.err;
  const DaemonConfig defaults;
  EXPECT_EQ(p.cfg->max_queue, defaults.max_queue);
  EXPECT_EQ(p.cfg->socket_mode, defaults.socket_mode);
  EXPECT_EQ(p.cfg->keep_alive_s, 300);
  EXPECT_TRUE(p.cfg->state_dir.empty());  // finalize() fills it
}

TEST_F(DaemonConfigTest, EveryKeyAsAFlag) {
  Parsed p = parse({"--foreground", "--state-dir", "/s", "--socket", "/r/g.sock", "--socket-mode", "0640",
                    "--device", "auto", "--admin-group", "a", "--user-group", "u", "--dbus", "unix:path=/run/bus",
                    "--hub-endpoint", "http://127.0.0.1:8080", "--hub-token-file", "tok", "--max-body-bytes", "2048",
                    "--max-header-bytes", "4096", "--idle-timeout-ms", "100", "--write-timeout-ms", "200",
                    "--max-connections", "1", "--io-workers", "64", "--threads", "0", "--parallel", "64",
                    "--max-queue", "0", "--max-loaded-models", "64", "--keep-alive", "-1", "--header-timeout-ms",
                    "100", "--max-connections-per-uid", "1", "--max-requests-per-connection", "1", "--max-json-depth",
                    "2", "--max-messages", "1", "--max-stop-strings", "0", "--max-stop-bytes", "1",
                    "--max-generation-ms", "0", "--device-step-timeout-s", "0"});
  ASSERT_TRUE(p.cfg) << p.err;
  const DaemonConfig& c = *p.cfg;
  EXPECT_TRUE(c.foreground);
  EXPECT_TRUE(c.config_file.empty());
  EXPECT_EQ(c.state_dir, "/s");
  EXPECT_EQ(c.socket_path, "/r/g.sock");
  EXPECT_EQ(c.socket_mode, 0640u);
  EXPECT_EQ(c.dbus, "unix:path=/run/bus");
  EXPECT_EQ(c.hub_endpoint, "http://127.0.0.1:8080");
  EXPECT_EQ(c.hub_token_file, "tok");  // relative on the command line; finalize() makes it absolute
  EXPECT_EQ(c.max_body_bytes, 2048u);
  EXPECT_EQ(c.max_header_bytes, 4096u);
  EXPECT_EQ(c.idle_timeout_ms, 100u);
  EXPECT_EQ(c.write_timeout_ms, 200u);
  EXPECT_EQ(c.max_connections, 1u);
  EXPECT_EQ(c.io_workers, 64u);
  EXPECT_EQ(c.threads, 0u);
  EXPECT_EQ(c.parallel, 64u);
  EXPECT_EQ(c.max_queue, 0u);
  EXPECT_EQ(c.max_loaded_models, 64u);
  EXPECT_EQ(c.keep_alive_s, -1);
  EXPECT_EQ(c.header_timeout_ms, 100u);
  EXPECT_EQ(c.max_connections_per_uid, 1u);
  EXPECT_EQ(c.max_requests_per_connection, 1u);
  EXPECT_EQ(c.max_json_depth, 2u);
  EXPECT_EQ(c.max_messages, 1u);
  EXPECT_EQ(c.max_stop_strings, 0u);
  EXPECT_EQ(c.max_stop_bytes, 1u);
  EXPECT_EQ(c.max_generation_ms, 0u);
  EXPECT_EQ(c.device_step_timeout_s, 0u);
}

// Every limit of docs/api.md ("Limits"): its default, its smallest and largest value, and one
// past each end refused with the key's range.
TEST_F(DaemonConfigTest, LimitDefaultsAndBoundaries) {
  const DaemonConfig d;
  EXPECT_EQ(d.max_header_bytes, 16384u);
  EXPECT_EQ(d.max_body_bytes, 8388608u);
  EXPECT_EQ(d.idle_timeout_ms, 30000u);
  EXPECT_EQ(d.header_timeout_ms, 10000u);
  EXPECT_EQ(d.write_timeout_ms, 30000u);
  EXPECT_EQ(d.max_connections, 128u);
  EXPECT_EQ(d.max_connections_per_uid, 64u);
  EXPECT_EQ(d.max_requests_per_connection, 1000u);
  EXPECT_EQ(d.max_json_depth, 64u);
  EXPECT_EQ(d.max_messages, 1024u);
  EXPECT_EQ(d.max_stop_strings, 13u);
  EXPECT_EQ(d.max_stop_bytes, 256u);
  EXPECT_EQ(d.max_generation_ms, 0u);
  EXPECT_EQ(d.device_step_timeout_s, 1800u);
  EXPECT_EQ(d.max_queue, 16u);
  struct Case {
    const char* key;
    uint64_t min, max;
  } cases[] = {
      {"header_timeout_ms", 100, 4294967295ull}, {"max_connections_per_uid", 1, 65536},
      {"max_requests_per_connection", 1, 4294967295ull}, {"max_json_depth", 2, 512},
      {"max_messages", 1, 1048576}, {"max_stop_strings", 0, 13}, {"max_stop_bytes", 1, 256},
      {"max_generation_ms", 0, 4294967295ull}, {"max_header_bytes", 1024, 1048576},
      {"max_body_bytes", 1024, 1073741824}, {"device_step_timeout_s", 0, 86400},
  };
  const fs::path f = dir_ / "gptqd.json";
  for (const Case& c : cases) {
    const std::string range = "an integer between " + std::to_string(c.min) + " and " + std::to_string(c.max);
    for (uint64_t ok : {c.min, c.max}) {
      Parsed p = parse({"--config", config("{\"" + std::string(c.key) + "\": " + std::to_string(ok) + "}").string()});
      EXPECT_TRUE(p.cfg) << c.key << " = " << ok << ": " << p.err;
    }
    const uint64_t above = c.max + 1;
    EXPECT_EQ(file_error("{\"" + std::string(c.key) + "\": " + std::to_string(above) + "}"),
              f.string() + ": \"" + c.key + "\" must be " + range + ", not " + std::to_string(above));
    if (c.min > 0) {
      EXPECT_EQ(file_error("{\"" + std::string(c.key) + "\": " + std::to_string(c.min - 1) + "}"),
                f.string() + ": \"" + c.key + "\" must be " + range + ", not " + std::to_string(c.min - 1));
    }
  }
}

TEST_F(DaemonConfigTest, KeepAliveSpellings) {
  const std::pair<const char*, int64_t> cases[] = {
      {R"("5m")", 300}, {R"("1h30m")", 5400}, {R"("45s")", 45}, {"30", 30}, {"0", 0}, {"-1", -1}, {R"("-1")", -1}};
  for (const auto& [value, seconds] : cases) {
    DaemonConfig cfg;
    cfg.apply_json(std::string(R"({"keep_alive": )") + value + "}", "t.json");
    EXPECT_EQ(cfg.keep_alive_s, seconds) << value;
  }
}

TEST_F(DaemonConfigTest, WrongTypesAndRangesNameTheFileAndTheKey) {
  const fs::path f = dir_ / "gptqd.json";
  const std::string where = f.string() + ": ";
  const std::pair<std::string, std::string> cases[] = {
      {R"({"max_queue": "x"})", R"("max_queue" must be an integer between 0 and 4096, not "x")"},
      {R"({"max_queue": 4097})", R"("max_queue" must be an integer between 0 and 4096, not 4097)"},
      {R"({"max_queue": -1})", R"("max_queue" must be an integer between 0 and 4096, not -1)"},
      {R"({"max_queue": 1.5})", R"("max_queue" must be an integer between 0 and 4096, not 1.5)"},
      {R"({"max_queue": true})", R"("max_queue" must be an integer between 0 and 4096, not true)"},
      {R"({"max_queue": null})", R"("max_queue" must be an integer between 0 and 4096, not null)"},
      {R"({"max_body_bytes": 1023})", R"("max_body_bytes" must be an integer between 1024 and 1073741824, not 1023)"},
      {R"({"max_connections": 0})", R"("max_connections" must be an integer between 1 and 65536, not 0)"},
      {R"({"io_workers": 65})", R"("io_workers" must be an integer between 1 and 64, not 65)"},
      {R"({"idle_timeout_ms": 99})", R"("idle_timeout_ms" must be an integer between 100 and 4294967295, not 99)"},
      {R"({"write_timeout_ms": 4294967296})",
       R"("write_timeout_ms" must be an integer between 100 and 4294967295, not 4294967296)"},
      {R"({"device": 3})", R"("device" must be auto, cpu or cuda:N, not 3)"},
      {R"({"device": "gpu"})", R"("device" must be auto, cpu or cuda:N, not "gpu")"},
      {R"({"socket_mode": 432})", R"("socket_mode" must be an octal mode as a string, such as "0660", not 432)"},
      {R"({"socket_mode": "0999"})", R"("socket_mode" must be an octal mode as a string, such as "0660", not "0999")"},
      {R"({"state_dir": "var/lib/gptqd"})", R"("state_dir" must be an absolute path, not "var/lib/gptqd")"},
      {R"({"socket": ""})", R"("socket" must be an absolute path, not "")"},
      {R"({"hub_token_file": ["a"]})", R"("hub_token_file" must be an absolute path, not ["a"])"},
      {R"({"hub_endpoint": "ftp://x"})", R"("hub_endpoint" must be an http:// or https:// URL, not "ftp://x")"},
      {R"({"admin_group": "two words"})",
       R"("admin_group" must be a group name (letters, digits, '_', '.', '-'; at most 32), not "two words")"},
      {R"({"user_group": ""})",
       R"("user_group" must be a group name (letters, digits, '_', '.', '-'; at most 32), not "")"},
      {R"({"dbus": "bus"})",
       R"("dbus" must be auto, none, system, session or a D-Bus address such as unix:path=/run/dbus/system_bus_socket, not "bus")"},
      {R"({"keep_alive": "5 parsecs"})",
       R"("keep_alive" must be a duration such as "5m" or "1h30m", a number of seconds, or -1 (never unload), not "5 parsecs")"},
      {R"({"keep_alive": false})",
       R"("keep_alive" must be a duration such as "5m" or "1h30m", a number of seconds, or -1 (never unload), not false)"},
      {R"({"keep_alive": "."})",
       R"("keep_alive" must be a duration such as "5m" or "1h30m", a number of seconds, or -1 (never unload), not ".")"},
  };
  for (const auto& [json, message] : cases) {
    EXPECT_EQ(file_error(json), where + message) << json;
  }
}

TEST_F(DaemonConfigTest, UnknownKeysAreRefusedWithASuggestion) {
  const std::string where = (dir_ / "gptqd.json").string();
  EXPECT_EQ(file_error(R"({"max_queu": 3})"),
            where + R"(: unknown key "max_queu" (did you mean "max_queue"?); the keys are listed in systemd/README.md and `gptqd --help`)");
  EXPECT_NE(file_error(R"({"max-connections": 3})").find(R"(did you mean "max_connections"?)"), std::string::npos);
  const std::string e = file_error(R"({"foreground": true})");
  EXPECT_NE(e.find(R"(unknown key "foreground";)"), std::string::npos) << e;
  EXPECT_NE(file_error(R"({"max_queue": 3, "": 1})").find(R"(unknown key "")"), std::string::npos);
}

TEST_F(DaemonConfigTest, MalformedJsonNamesTheFileAndTheLine) {
  const std::string where = (dir_ / "gptqd.json").string();
  std::string e = file_error("{\n  \"max_queue\": 3,\n  oops\n}\n");
  EXPECT_EQ(e.rfind(where + ": invalid JSON: ", 0), 0u) << e;
  EXPECT_NE(e.find("line 3"), std::string::npos) << e;

  e = file_error(R"({"max_queue": 3, "max_queue": 4})");
  EXPECT_NE(e.find(R"(duplicate key "max_queue")"), std::string::npos) << e;

  e = file_error("");
  EXPECT_EQ(e.rfind(where + ": invalid JSON: ", 0), 0u) << e;

  e = file_error("// a comment\n{}");
  EXPECT_EQ(e.rfind(where + ": invalid JSON: ", 0), 0u) << e;

  EXPECT_EQ(file_error("[1, 2]"), where + R"(: the config must be a JSON object such as {"max_queue": 32}, not array)");
  EXPECT_EQ(file_error(R"({"max_queue": 3} {})").rfind(where + ": invalid JSON: ", 0), 0u);
  EXPECT_NE(file_error(R"({"max_queue": {"a": {"b": {"c": {"d": {"e": {"f": {"g": {}}}}}}}}})").find("nesting deeper"),
            std::string::npos);
}

TEST_F(DaemonConfigTest, UnreadableFiles) {
  DaemonConfig cfg;
  const fs::path missing = dir_ / "missing.json";
  try {
    cfg.apply_file(missing);
    FAIL() << "a missing file was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot read the config file " + missing.string() + ": No such file or directory");
  }
  try {
    cfg.apply_file(dir_.path());
    FAIL() << "a directory was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), dir_.path().string() + ": the config file is not a regular file");
  }
  const fs::path big = config("{\"max_queue\": 3" + std::string(2u << 20, ' ') + "}", "big.json");
  try {
    cfg.apply_file(big);
    FAIL() << "a 2 MiB file was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), big.string() + ": the config file is larger than 1048576 bytes");
  }
}

TEST_F(DaemonConfigTest, MissingExplicitConfigIsAnError) {
  const fs::path missing = dir_ / "nope.json";
  Parsed p = parse({"--config", missing.string()});
  EXPECT_FALSE(p.cfg);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_EQ(p.err, "gptqd: cannot read the config file " + missing.string() + ": No such file or directory\n");

  ::setenv("GPTQD_CONFIG", missing.c_str(), 1);
  p = parse({});
  EXPECT_FALSE(p.cfg);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(p.err.find(missing.string()), std::string::npos) << p.err;

  p = parse({"--config", ""});
  EXPECT_FALSE(p.cfg);
  EXPECT_EQ(p.err, "gptqd: --config needs a file name\n");
}

TEST_F(DaemonConfigTest, ABadFileStopsStartWithExitCode2) {
  const fs::path f = config(R"({"max_queue": "x"})");
  Parsed p = parse({"--config", f.string(), "--max-queue", "3"});  // a flag does not excuse a bad file
  EXPECT_FALSE(p.cfg);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_EQ(p.err, "gptqd: " + f.string() + R"(: "max_queue" must be an integer between 0 and 4096, not "x")" + "\n");
}

TEST_F(DaemonConfigTest, TheDefaultFileIsReadOnlyWhenItExists) {
  Parsed p = parse({});
  ASSERT_TRUE(p.cfg) << p.err;
  EXPECT_TRUE(p.cfg->config_file.empty());
  EXPECT_EQ(p.cfg->max_queue, DaemonConfig{}.max_queue);

  fs::create_directories(default_file().parent_path());
  write_file(default_file(), R"({"max_queue": 7})");
  p = parse({});
  ASSERT_TRUE(p.cfg) << p.err;
  EXPECT_EQ(p.cfg->config_file, default_file());
  EXPECT_EQ(p.cfg->max_queue, 7u);

  // --config and GPTQD_CONFIG replace the default file; they do not stack on it.
  p = parse({"--config", config(R"({"parallel": 3})", "other.json").string()});
  ASSERT_TRUE(p.cfg) << p.err;
  EXPECT_EQ(p.cfg->max_queue, DaemonConfig{}.max_queue);
  EXPECT_EQ(p.cfg->parallel, 3u);

  ::setenv("GPTQD_CONFIG", config(R"({"parallel": 5})", "env.json").c_str(), 1);
  p = parse({});
  ASSERT_TRUE(p.cfg) << p.err;
  EXPECT_EQ(p.cfg->max_queue, DaemonConfig{}.max_queue);
  EXPECT_EQ(p.cfg->parallel, 5u);
  EXPECT_EQ(p.cfg->config_file, dir_ / "env.json");

  // The flag wins over the variable.
  p = parse({"--config", (dir_ / "other.json").string()});
  ASSERT_TRUE(p.cfg) << p.err;
  EXPECT_EQ(p.cfg->parallel, 3u);

  // A default file that exists but is broken stops start, like any other.
  ::unsetenv("GPTQD_CONFIG");
  write_file(default_file(), R"({"max_queue": 7,})");
  p = parse({});
  EXPECT_FALSE(p.cfg);
  EXPECT_EQ(p.exit_code, 2);
  EXPECT_NE(p.err.find(default_file().string() + ": invalid JSON"), std::string::npos) << p.err;
}

TEST_F(DaemonConfigTest, PrecedenceDefaultsFileEnvironmentFlags) {
  const fs::path f = config(R"({
    "state_dir": "/from/file", "socket": "/from/file.sock", "hub_endpoint": "https://file.example",
    "hub_token_file": "/from/file.token", "max_queue": 10, "parallel": 3
  })");
  ::setenv("STATE_DIRECTORY", "/from/env:/second", 1);
  ::setenv("RUNTIME_DIRECTORY", "/run/env", 1);
  ::setenv("HF_ENDPOINT", " https://env.example/ ", 1);
  ::setenv("HF_TOKEN_PATH", "/from/env.token", 1);

  // File over defaults; environment over file.
  Parsed p = parse({"--config", f.string()});
  ASSERT_TRUE(p.cfg) << p.err;
  EXPECT_EQ(p.cfg->max_queue, 10u);
  EXPECT_EQ(p.cfg->parallel, 3u);
  EXPECT_EQ(p.cfg->io_workers, DaemonConfig{}.io_workers);
  EXPECT_EQ(p.cfg->state_dir, "/from/env");
  EXPECT_EQ(p.cfg->socket_path, "/run/env/gptqd.sock");
  EXPECT_EQ(p.cfg->hub_endpoint, "https://env.example");
  EXPECT_EQ(p.cfg->hub_token_file, "/from/env.token");

  // Flags over everything.
  p = parse({"--config", f.string(), "--state-dir", "/from/flag", "--socket", "/from/flag.sock", "--hub-endpoint",
             "http://flag.example", "--hub-token-file", "/from/flag.token", "--max-queue", "20"});
  ASSERT_TRUE(p.cfg) << p.err;
  EXPECT_EQ(p.cfg->state_dir, "/from/flag");
  EXPECT_EQ(p.cfg->socket_path, "/from/flag.sock");
  EXPECT_EQ(p.cfg->hub_endpoint, "http://flag.example");
  EXPECT_EQ(p.cfg->hub_token_file, "/from/flag.token");
  EXPECT_EQ(p.cfg->max_queue, 20u);
  EXPECT_EQ(p.cfg->parallel, 3u);

  // A bad HF_ENDPOINT is named as such.
  ::setenv("HF_ENDPOINT", "huggingface.co", 1);
  p = parse({"--config", f.string()});
  EXPECT_FALSE(p.cfg);
  EXPECT_EQ(p.err, "gptqd: HF_ENDPOINT must be an http:// or https:// URL, not \"huggingface.co\"\n");
}

TEST_F(DaemonConfigTest, BadFlagsNameTheFlag) {
  const std::pair<std::vector<std::string>, std::string> cases[] = {
      {{"--max-queue", "x"}, R"(--max-queue must be an integer between 0 and 4096, not "x")"},
      {{"--max-queue", "-1"}, R"(--max-queue must be an integer between 0 and 4096, not "-1")"},
      {{"--max-queue", "4097"}, R"(--max-queue must be an integer between 0 and 4096, not 4097)"},
      {{"--max-body-bytes", "99999999999999999999999"},
       R"(--max-body-bytes must be an integer between 1024 and 1073741824, not "99999999999999999999999")"},
      {{"--socket-mode", "rw"}, R"(--socket-mode must be an octal mode as a string, such as "0660", not "rw")"},
      {{"--device", "tpu"}, R"(--device must be auto, cpu or cuda:N, not "tpu")"},
      {{"--keep-alive", "soon"},
       R"(--keep-alive must be a duration such as "5m" or "1h30m", a number of seconds, or -1 (never unload), not "soon")"},
  };
  for (const auto& [args, message] : cases) {
    Parsed p = parse(args);
    EXPECT_FALSE(p.cfg) << args[0];
    EXPECT_EQ(p.exit_code, 2) << args[0];
    EXPECT_EQ(p.err, "gptqd: " + message + "\n");
  }
  Parsed p = parse({"--no-such-flag"});
  EXPECT_FALSE(p.cfg);
  EXPECT_NE(p.exit_code, 0);
}

TEST_F(DaemonConfigTest, HelpListsEveryKeyAsAFlag) {
  Parsed p = parse({"--help"});
  EXPECT_FALSE(p.cfg);
  EXPECT_EQ(p.exit_code, 0);
  for (const char* flag : {"--config", "--foreground", "--state-dir", "--socket", "--socket-mode", "--device",
                           "--admin-group", "--user-group", "--dbus", "--hub-endpoint", "--hub-token-file",
                           "--max-body-bytes", "--max-header-bytes", "--idle-timeout-ms", "--write-timeout-ms",
                           "--max-connections", "--io-workers", "--threads", "--parallel", "--max-queue",
                           "--max-loaded-models", "--keep-alive", "--header-timeout-ms", "--max-connections-per-uid",
                           "--max-requests-per-connection", "--max-json-depth", "--max-messages", "--max-stop-strings",
                           "--max-stop-bytes", "--max-generation-ms", "--device-step-timeout-s"}) {
    EXPECT_NE(p.out.find(flag), std::string::npos) << flag;
  }
  EXPECT_NE(p.out.find((dir_ / "etc" / "gptqd.json").string()), std::string::npos) << p.out;
}

TEST_F(DaemonConfigTest, FinalizeChecksValuesSetInCode) {
  DaemonConfig cfg;
  cfg.state_dir = dir_.path();
  cfg.socket_path = dir_ / "s.sock";
  cfg.max_queue = 5000;
  try {
    cfg.finalize();
    FAIL() << "max_queue 5000 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "--max-queue must be an integer between 0 and 4096, not 5000");
  }
  cfg.max_queue = 16;
  cfg.socket_mode = 01777;
  EXPECT_THROW(cfg.finalize(), Error);
  cfg.socket_mode = 0600;
  cfg.hub_token_file = "relative.token";
  cfg.finalize();
  EXPECT_TRUE(cfg.hub_token_file.is_absolute());
}

TEST_F(DaemonConfigTest, FinalizeTakesSystemdDirectories) {
  ::setenv("STATE_DIRECTORY", "/var/lib/gptqd", 1);
  ::setenv("RUNTIME_DIRECTORY", "/run/gptqd", 1);
  Parsed p = parse({});
  ASSERT_TRUE(p.cfg) << p.err;
  p.cfg->finalize();
  EXPECT_EQ(p.cfg->state_dir, "/var/lib/gptqd");
  EXPECT_EQ(p.cfg->socket_path, "/run/gptqd/gptqd.sock");
}

}  // namespace
}  // namespace gptqd::daemon
