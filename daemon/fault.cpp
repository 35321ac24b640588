// SPDX-License-Identifier: Apache-2.0
// Fault-injection points (daemon layer).
#include "daemon/fault.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <cerrno>
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

// GPTQD_FAULT_EIO fires once per process.
bool take_eio(std::string_view name) {
  static std::atomic<bool> fired{false};
  return armed("GPTQD_FAULT_EIO", name) && !fired.exchange(true);
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

void fault_device_hang(std::string_view name) {
  if (!armed("GPTQD_FAULT_DEVICE_HANG", name)) return;
  log_warn("fault point ", name, " reached: the device step hangs (GPTQD_FAULT_DEVICE_HANG)");
  for (;;) std::this_thread::sleep_for(std::chrono::hours(1));
}

int fault_fsync(std::string_view name, int fd) {
  if (!take_eio(name)) return ::fsync(fd);
  log_warn("fault point ", name, " reached: fsync fails with EIO (GPTQD_FAULT_EIO)");
  errno = EIO;
  return -1;
}

void fault_eio(std::string_view name, const std::filesystem::path& file) {
  if (!take_eio(name)) return;
  log_warn("fault point ", name, " reached: fsync fails with EIO (GPTQD_FAULT_EIO)");
  fail(ErrorCode::io, "cannot write ", file.string(), ": fsync: Input/output error (injected at ", name, ")");
}

}  // namespace gptqd::daemon
