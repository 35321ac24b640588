// SPDX-License-Identifier: Apache-2.0
// The daemon's side of systemd's service protocol (daemon layer, sd-daemon): the listening
// socket systemd may pass (socket activation), readiness/status/stopping notifications and the
// watchdog. Every call is a no-op outside systemd (no LISTEN_FDS, no NOTIFY_SOCKET).
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace gptqd::daemon {

// The listening Unix stream socket systemd passed (LISTEN_FDS / LISTEN_PID, checked with
// sd_listen_fds and sd_is_socket_unix), or -1 when there is none. The LISTEN_* variables are
// removed so children do not inherit them. Error(invalid_argument) when systemd passed more than
// one socket or one that is not a listening Unix stream socket (a unit file mistake).
int activated_socket();

// sd_notify(0, state): "READY=1", "STATUS=...", "STOPPING=1", "WATCHDOG=1". False when there
// is no notify socket (or sending failed).
bool notify(const std::string& state);

// How often to send WATCHDOG=1 (half of WatchdogSec), or nullopt when the watchdog is off.
std::optional<std::chrono::microseconds> watchdog_ping_interval();

}  // namespace gptqd::daemon
