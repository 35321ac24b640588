// SPDX-License-Identifier: Apache-2.0
// DaemonConfig: everything gptqd reads at start, validated once (daemon layer). Sources, later
// ones winning: the defaults below < the JSON config file < the environment systemd and the
// operator set (STATE_DIRECTORY, RUNTIME_DIRECTORY, HF_ENDPOINT, HF_TOKEN_PATH) < flags.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace gptqd::daemon {

struct DaemonConfig {
  // Read when it exists and neither --config nor GPTQD_CONFIG names another file.
  static constexpr const char* kDefaultConfigFile = "/etc/gptqd/gptqd.json";

  std::filesystem::path config_file;  // the JSON file this config came from; empty when none
  std::filesystem::path state_dir;    // registry.db, blobs/, tmp/, jobs/
  std::filesystem::path socket_path;  // the Unix socket
  bool foreground = false;            // false: detach once the socket is ready
  std::string device = "auto";        // auto | cpu | cuda:N
  std::string admin_group = "gptq-admin";  // members may pull and delete (besides root and the daemon's user)
  std::string user_group = "gptq";         // members may read and generate; everyone else is refused
                                           // (root, the daemon's user and admins always may)
  std::string dbus = "auto";               // auto | none | system | session | a D-Bus address
  std::string hub_endpoint;                // the Hub ("" = huggingface.co); HF_ENDPOINT and the flag override the file
  std::filesystem::path hub_token_file;    // the Hub token when HF_TOKEN is unset (HF_TOKEN_PATH overrides the file)
  uint32_t socket_mode = 0660;
  uint64_t max_body_bytes = 8ull << 20;     // request bodies; larger ones get 413
  uint32_t max_header_bytes = 16u << 10;    // request line + headers; larger ones get 431
  uint32_t idle_timeout_ms = 30000;         // a connection waiting this long for a request (or a body) is closed
  uint32_t header_timeout_ms = 10000;       // from a request's first byte to the end of its headers; then 408
  uint32_t write_timeout_ms = 30000;        // a client that does not read a response this long is dropped
  uint32_t max_connections = 128;           // beyond this, new connections get 503 at once
  uint32_t max_connections_per_uid = 64;    // connections of one uid (SO_PEERCRED); beyond: 503
  uint32_t max_requests_per_connection = 1000;  // then the connection closes (Connection: close)
  uint32_t max_json_depth = 64;             // nesting of a request body; deeper: 400
  uint32_t max_messages = 1024;             // chat messages in one request; more: 400
  uint32_t max_stop_strings = 13;           // stop strings in one request; more: 400 (the engine's cap is 16,
                                            // and a chat template adds up to 3)
  uint32_t max_stop_bytes = 256;            // bytes of one stop string; longer: 400 (the engine's cap is 256)
  uint32_t max_generation_ms = 0;           // one generation, queue wait included; then it is stopped (0: no limit)
  uint32_t device_step_timeout_s = 1800;    // one device step (a token, a prompt chunk, a model load, a quantized
                                            // layer) running longer means the device worker is stuck: unhealthy, exit 1
  uint32_t io_workers = 2;                  // threads for blocking work (imports, hashing)
  uint32_t threads = 0;                     // compute threads on the CPU device; 0 = one per core
  uint32_t parallel = 4;                    // requests interleaved per model
  uint32_t max_queue = 16;                  // requests waiting for the device; beyond: 503
  uint32_t max_loaded_models = 2;           // models kept loaded at once
  int64_t keep_alive_s = 300;               // a model unused this long is unloaded when a request names no
                                            // keep_alive; < 0: kept loaded (Ollama's default is 5 minutes)

  // Parses argv, reads the config file (--config, else $GPTQD_CONFIG, else `default_config_file`
  // when it exists) and the environment beneath the flags. Returns nullopt when the process should
  // exit with `exit_code` (--help, --version, or a usage or config-file error already printed to
  // stderr as "gptqd: <file>: <what is wrong>").
  static std::optional<DaemonConfig> from_args(int argc, char** argv, int* exit_code,
                                               const std::filesystem::path& default_config_file = kDefaultConfigFile);
  // Applies a JSON config document over this config. Strict: unknown keys, wrong types, values
  // out of range, duplicate keys and syntax errors throw Error(invalid_argument) naming `where`
  // (the file) and the key or the line.
  void apply_json(std::string_view text, std::string_view where);
  // Reads `path` (at most 1 MiB) and applies it with apply_json; a missing or unreadable file throws.
  void apply_file(const std::filesystem::path& path);
  // Fills what is still unset from the environment (STATE_DIRECTORY, XDG_DATA_HOME, HOME;
  // RUNTIME_DIRECTORY, XDG_RUNTIME_DIR), makes paths absolute and checks every value's range;
  // throws gptqd::Error(invalid_argument) naming the key and its flag.
  void finalize();
};

}  // namespace gptqd::daemon
