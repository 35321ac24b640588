// SPDX-License-Identifier: Apache-2.0
// Fault-injection points (daemon layer).
#include "daemon/fault.h"

#include <csignal>
#include <cstdlib>

#include "daemon/log.h"
#include "engine/error.h"

namespace gptqd::daemon {
namespace {

// A point fires when the environment variable `var` equals its name (points are rare: one getenv).
bool armed(const char* var, std::string_view name) {
  const char* v = std::getenv(var);
  return v && *v && name == v;
}

}  // namespace

void fault_point(std::string_view name) {
  if (!armed("GPTQD_FAULT_POINT", name)) return;
  log_warn("fault point ", name, " reached: killing the daemon (GPTQD_FAULT_POINT)");
  std::raise(SIGKILL);
}

void fault_disk_full(std::string_view name) {
  if (!armed("GPTQD_FAULT_DISK_FULL", name)) return;
  log_warn("fault point ", name, " reached: failing with ENOSPC (GPTQD_FAULT_DISK_FULL)");
  fail(ErrorCode::no_space, "no space left on device (injected at ", name, ")");
}

void fault_device(std::string_view name) {
  if (!armed("GPTQD_FAULT_DEVICE", name)) return;
  log_warn("fault point ", name, " reached: the device fails for good (GPTQD_FAULT_DEVICE)");
  throw DeviceFault(cat("the device reported an unrecoverable error (injected at ", name, ")"));
}

}  // namespace gptqd::daemon
