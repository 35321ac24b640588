// SPDX-License-Identifier: Apache-2.0
// gptqd's command line and config file (daemon layer).
#include "daemon/daemon_config.h"

#include <sys/un.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <iostream>
#include <regex>

#include "daemon/protocol.h"
#include "engine/error.h"
#include "kernels/cuda/cuda_probe.h"

namespace gptqd::daemon {
namespace {
std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
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

std::optional<DaemonConfig> DaemonConfig::from_args(int argc, char** argv, int* exit_code) {
  DaemonConfig cfg;
  CLI::App app{"gptqd: keeps, quantizes (GPTQ) and serves LLMs over a Unix socket"};
  app.set_version_flag("--version", std::string("gptqd ") + GPTQD_VERSION);
  app.set_config("--config", "", "Read options from this TOML/INI file (command-line options win)");
  std::string state_dir, socket_path, socket_mode = "0660";
  app.add_flag("--foreground", cfg.foreground, "Stay in the foreground (systemd, containers, debugging)");
  app.add_option("--state-dir", state_dir, "State directory [default: $STATE_DIRECTORY, $XDG_DATA_HOME/gptqd or ~/.local/share/gptqd]");
  app.add_option("--socket", socket_path, "Unix socket path [default: $RUNTIME_DIRECTORY/gptqd.sock, $XDG_RUNTIME_DIR/gptqd.sock or /tmp/gptqd-UID/gptqd.sock]");
  app.add_option("--device", cfg.device, "Compute device: auto, cpu or cuda:N")->capture_default_str();
  app.add_option("--admin-group", cfg.admin_group, "Group whose members may pull and delete models")->capture_default_str();
  app.add_option("--socket-mode", socket_mode, "Permissions of the socket file (octal)")->capture_default_str();
  app.add_option("--max-body-bytes", cfg.max_body_bytes, "Largest request body")->capture_default_str();
  app.add_option("--max-header-bytes", cfg.max_header_bytes, "Largest request header block")->capture_default_str();
  app.add_option("--idle-timeout-ms", cfg.idle_timeout_ms, "Close connections idle this long")->capture_default_str();
  app.add_option("--write-timeout-ms", cfg.write_timeout_ms, "Drop clients that do not read for this long")->capture_default_str();
  app.add_option("--max-connections", cfg.max_connections, "Concurrent connections before 503")->capture_default_str();
  app.add_option("--io-workers", cfg.io_workers, "Threads for blocking work")->capture_default_str();
  app.add_option("--threads", cfg.threads, "Compute threads on the CPU (0: one per core)")->capture_default_str();
  app.add_option("--parallel", cfg.parallel, "Requests served at once per model (interleaved)")->capture_default_str();
  app.add_option("--max-queue", cfg.max_queue, "Requests that may wait for the device before 503")->capture_default_str();
  app.add_option("--max-loaded-models", cfg.max_loaded_models, "Models kept loaded at once")->capture_default_str();
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    *exit_code = app.exit(e);
    return std::nullopt;
  }
  cfg.state_dir = state_dir;
  cfg.socket_path = socket_path;
  if (!std::regex_match(socket_mode, std::regex("0?[0-7]{3}"))) {
    std::cerr << "gptqd: --socket-mode must be an octal mode such as 0660, not '" << socket_mode << "'\n";
    *exit_code = 2;
    return std::nullopt;
  }
  cfg.socket_mode = static_cast<uint32_t>(std::stoul(socket_mode, nullptr, 8));
  return cfg;
}

void DaemonConfig::finalize() {
  if (state_dir.empty()) {
    std::string sd = env("STATE_DIRECTORY");
    if (!sd.empty()) {
      state_dir = sd.substr(0, sd.find(':'));
    } else if (std::string xdg = env("XDG_DATA_HOME"); !xdg.empty()) {
      state_dir = std::filesystem::path(xdg) / "gptqd";
    } else if (std::string home = env("HOME"); !home.empty()) {
      state_dir = std::filesystem::path(home) / ".local" / "share" / "gptqd";
    } else {
      fail(ErrorCode::invalid_argument, "no state directory: pass --state-dir (HOME is not set)");
    }
  }
  state_dir = std::filesystem::absolute(state_dir).lexically_normal();
  if (socket_path.empty()) socket_path = protocol::default_socket_path();
  socket_path = std::filesystem::absolute(socket_path).lexically_normal();
  if (socket_path.string().size() >= sizeof(sockaddr_un{}.sun_path)) {
    fail(ErrorCode::invalid_argument, "socket path ", socket_path.string(), " is longer than ",
         sizeof(sockaddr_un{}.sun_path) - 1, " bytes, the limit of a Unix socket address");
  }
  if (!std::regex_match(device, std::regex("auto|cpu|cuda:[0-9]{1,2}"))) {
    fail(ErrorCode::invalid_argument, "--device must be auto, cpu or cuda:N, not '", device, "'");
  }
  if (max_body_bytes < 1024 || max_body_bytes > (1ull << 30)) {
    fail(ErrorCode::invalid_argument, "--max-body-bytes must be between 1024 and 1073741824");
  }
  if (max_header_bytes < 1024 || max_header_bytes > (1u << 20)) {
    fail(ErrorCode::invalid_argument, "--max-header-bytes must be between 1024 and 1048576");
  }
  if (idle_timeout_ms < 100 || write_timeout_ms < 100) {
    fail(ErrorCode::invalid_argument, "timeouts must be at least 100 ms");
  }
  if (max_connections < 1 || max_connections > 65536) {
    fail(ErrorCode::invalid_argument, "--max-connections must be between 1 and 65536");
  }
  if (io_workers < 1 || io_workers > 64) fail(ErrorCode::invalid_argument, "--io-workers must be between 1 and 64");
  if (threads > 1024) fail(ErrorCode::invalid_argument, "--threads must be at most 1024");
  if (parallel < 1 || parallel > 64) fail(ErrorCode::invalid_argument, "--parallel must be between 1 and 64");
  if (max_queue > 4096) fail(ErrorCode::invalid_argument, "--max-queue must be at most 4096");
  if (max_loaded_models < 1 || max_loaded_models > 64) {
    fail(ErrorCode::invalid_argument, "--max-loaded-models must be between 1 and 64");
  }
  if (device.rfind("cuda", 0) == 0) {
    fail(ErrorCode::unsupported, "--device ", device, ": this gptqd runs models on the CPU only (the CUDA backend is "
         "not built yet; ", probe_summary(), "); use --device cpu or auto");
  }
}

}  // namespace gptqd::daemon
