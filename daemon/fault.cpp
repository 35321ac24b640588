// SPDX-License-Identifier: Apache-2.0
// Fault-injection points (daemon layer).
#include "daemon/fault.h"

#include <csignal>
#include <cstdlib>
#include <string>

#include "daemon/log.h"

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

}  // namespace gptqd::daemon
