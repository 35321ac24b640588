// SPDX-License-Identifier: Apache-2.0
// Crash-safe file writes (engine layer): content goes to `path`.partial, is fsynced, then renamed
// over `path`, so a crash leaves either the old file or the whole new one. Errors are
// Error(no_space) for ENOSPC/EDQUOT, else Error(io), naming the path and the failing step.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>

namespace gptqd::engine {

// Writes all `n` bytes to `fd`, retrying on EINTR; returns 0 or the errno.
int write_all(int fd, const void* data, size_t n);

[[noreturn]] void fail_write(const std::filesystem::path& target, const char* what, int err);

// `fill(fd)` writes the content and returns 0 or an errno. On any failure the partial file is
// removed. The directory is not fsynced: call fsync_dir once after a batch of files.
void write_file_atomic(const std::filesystem::path& path, const std::function<int(int fd)>& fill);

void fsync_dir(const std::filesystem::path& dir);

}  // namespace gptqd::engine
