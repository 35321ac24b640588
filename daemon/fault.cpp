// SPDX-License-Identifier: Apache-2.0
// Fault-injection points (daemon layer).
#include "daemon/fault.h"

#include <csignal>
#include <cstdlib>
#include <string>

#include "daemon/log.h"
#include "engine/error.h"

namespace gptqd::daemon {

void fault_point(std::string_view name) {
  static const std::string armed = [] {
    const char* v = std::getenv("GPTQD_FAULT_POINT");
    return std::string(v ? v : "");
  }();
  if (armed.empty() || armed != name) return;
  log_warn("fault point ", name, " reached: killing the daemon (GPTQD_FAULT_POINT)");
  std::raise(SIGKILL);
}

void fault_disk_full(std::string_view name) {
  static const std::string armed = [] {
    const char* v = std::getenv("GPTQD_FAULT_DISK_FULL");
    return std::string(v ? v : "");
  }();
  if (armed.empty() || armed != name) return;
  log_warn("fault point ", name, " reached: failing with ENOSPC (GPTQD_FAULT_DISK_FULL)");
  fail(ErrorCode::no_space, "no space left on device (injected at ", name, ")");
}

}  // namespace gptqd::daemon
