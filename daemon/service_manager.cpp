// SPDX-License-Identifier: Apache-2.0
// systemd's service protocol through sd-daemon (daemon layer).
#include "daemon/service_manager.h"

#include <sys/socket.h>
#include <systemd/sd-daemon.h>

#include <cstring>

#include "engine/error.h"

namespace gptqd::daemon {

int activated_socket() {
  const int n = sd_listen_fds(1);
  if (n < 0) fail(ErrorCode::invalid_argument, "the sockets systemd passed cannot be read: ", std::strerror(-n));
  if (n == 0) return -1;
  if (n > 1) {
    fail(ErrorCode::invalid_argument, "systemd passed ", n, " sockets; gptqd listens on one (one ListenStream= in gptqd.socket)");
  }
  const int fd = SD_LISTEN_FDS_START;
  const int r = sd_is_socket_unix(fd, SOCK_STREAM, 1, nullptr, 0);
  if (r <= 0) {
    fail(ErrorCode::invalid_argument, "the socket systemd passed is not a listening Unix stream socket",
         r < 0 ? std::string(" (") + std::strerror(-r) + ")" : std::string(), "; gptqd.socket needs ListenStream=/path");
  }
  return fd;
}

bool notify(const std::string& state) { return sd_notify(0, state.c_str()) > 0; }

std::optional<std::chrono::microseconds> watchdog_ping_interval() {
  uint64_t usec = 0;
  if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return std::nullopt;
  return std::chrono::microseconds(usec / 2);
}

}  // namespace gptqd::daemon
