// SPDX-License-Identifier: Apache-2.0
// Crash-safe file writes (engine layer).
#include "engine/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "engine/error.h"

namespace gptqd::engine {

int write_all(int fd, const void* data, size_t n) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, std::min<size_t>(n, 1u << 30));
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += w;
    n -= static_cast<size_t>(w);
  }
  return 0;
}

void fail_write(const std::filesystem::path& target, const char* what, int err) {
  fail(err == ENOSPC || err == EDQUOT ? ErrorCode::no_space : ErrorCode::io, "cannot write ", target.string(), ": ",
       what, ": ", std::strerror(err));
}

void write_file_atomic(const std::filesystem::path& path, const std::function<int(int fd)>& fill) {
  const std::filesystem::path partial = path.string() + ".partial";
  int fd = ::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail_write(path, "open", errno);
  auto abandon = [&](const char* what, int err) {
    if (fd >= 0) ::close(fd);
    ::unlink(partial.c_str());
    fail_write(path, what, err);
  };
  if (int err = fill(fd)) abandon("write", err);
  if (::fsync(fd) != 0) abandon("fsync", errno);
  const int close_rc = ::close(fd);
  fd = -1;
  if (close_rc != 0) abandon("close", errno);
  if (::rename(partial.c_str(), path.c_str()) != 0) abandon("rename", errno);
}

void fsync_dir(const std::filesystem::path& dir) {
  const std::filesystem::path d = dir.empty() ? std::filesystem::path(".") : dir;
  const int fd = ::open(d.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail_write(d, "open directory", errno);
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  if (rc != 0) fail_write(d, "fsync directory", err);
}

}  // namespace gptqd::engine
