// SPDX-License-Identifier: Apache-2.0
// stderr logging with journald priorities (daemon layer).
#include "daemon/log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>
#include <string>

namespace gptqd::daemon {
namespace {
std::mutex g_mutex;
int g_fd = 2;
// stderr is the journal when JOURNAL_STREAM names its device and inode (systemd sets it for the
// service; a child that inherited the variable but writes elsewhere keeps plain lines).
bool journald() {
  static const bool yes = [] {
    const char* js = std::getenv("JOURNAL_STREAM");
    if (!js) return false;
    unsigned long long dev = 0, ino = 0;
    if (std::sscanf(js, "%llu:%llu", &dev, &ino) != 2) return false;
    struct stat st {};
    return ::fstat(2, &st) == 0 && static_cast<unsigned long long>(st.st_dev) == dev &&
           static_cast<unsigned long long>(st.st_ino) == ino;
  }();
  return yes;
}
const char* level_name(LogLevel l) {
  switch (l) {
    case LogLevel::error: return "error";
    case LogLevel::warning: return "warning";
    case LogLevel::notice: return "notice";
    case LogLevel::info: return "info";
    case LogLevel::debug: return "debug";
  }
  return "info";
}
}  // namespace

void log_to_file(const char* path) {
  int fd = ::open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (fd < 0) return;
  std::lock_guard lock(g_mutex);
  g_fd = fd;
}

void log_line(LogLevel level, std::string_view message) {
  std::string line;
  if (journald() && g_fd == 2) {
    line = "<" + std::to_string(static_cast<int>(level)) + ">";
  } else {
    char ts[40];
    std::timespec now{};
    std::timespec_get(&now, TIME_UTC);
    std::tm tm{};
    ::gmtime_r(&now.tv_sec, &tm);
    std::size_t n = std::strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    std::snprintf(ts + n, sizeof ts - n, ".%03ldZ", now.tv_nsec / 1000000);
    line = std::string(ts) + " gptqd[" + std::to_string(::getpid()) + "] " + level_name(level) + ": ";
  }
  // One write per line, control characters escaped so a model name cannot forge log lines.
  for (char c : message) {
    if (c == '\n') line += "\\n";
    else if (static_cast<unsigned char>(c) < 0x20 && c != '\t') line += '?';
    else line += c;
  }
  line += '\n';
  std::lock_guard lock(g_mutex);
  [[maybe_unused]] ssize_t rc = ::write(g_fd, line.data(), line.size());
}

}  // namespace gptqd::daemon
