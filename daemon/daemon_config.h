// SPDX-License-Identifier: Apache-2.0
// DaemonConfig: everything gptqd reads at start, from arguments, an optional config file and
// the environment, validated once (daemon layer).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

namespace gptqd::daemon {

struct DaemonConfig {
  std::filesystem::path state_dir;    // registry.db, blobs/, tmp/, jobs/
  std::filesystem::path socket_path;  // the Unix socket
  bool foreground = false;            // false: detach once the socket is ready
  std::string device = "auto";        // auto | cpu | cuda:N
  std::string admin_group = "gptq-admin";  // members may pull and delete (besides root and the daemon's user)
  uint32_t socket_mode = 0660;
  uint64_t max_body_bytes = 8ull << 20;     // request bodies; larger ones get 413
  uint32_t max_header_bytes = 16u << 10;    // request line + headers; larger ones get 431
  uint32_t idle_timeout_ms = 30000;         // a connection idle (or sending a request) this long is closed
  uint32_t write_timeout_ms = 30000;        // a client that does not read a response this long is dropped
  uint32_t max_connections = 128;           // beyond this, new connections get 503 at once
  uint32_t io_workers = 2;                  // threads for blocking work (imports, hashing)
  uint32_t threads = 0;                     // compute threads on the CPU device; 0 = one per core
  uint32_t parallel = 4;                    // requests interleaved per model
  uint32_t max_queue = 16;                  // requests waiting for the device; beyond: 503
  uint32_t max_loaded_models = 2;           // models kept loaded at once

  // Parses argv. Returns nullopt when the process should exit with `exit_code` (--help,
  // --version, a usage error already printed to stderr).
  static std::optional<DaemonConfig> from_args(int argc, char** argv, int* exit_code);
  // Fills defaults from the environment and checks ranges; throws gptqd::Error(invalid_argument).
  void finalize();
};

}  // namespace gptqd::daemon
