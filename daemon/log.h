// SPDX-License-Identifier: Apache-2.0
// The only logging in the tree: one line per event on stderr, with syslog priority prefixes
// when journald reads it (JOURNAL_STREAM) and a timestamp otherwise (daemon layer).
#pragma once

#include <string_view>

#include "engine/error.h"

namespace gptqd::daemon {

enum class LogLevel { error = 3, warning = 4, notice = 5, info = 6, debug = 7 };

void log_line(LogLevel level, std::string_view message);
// Redirects log lines to a file (background mode); stderr when never called.
void log_to_file(const char* path);

template <typename... Args>
void log_info(const Args&... args) { log_line(LogLevel::info, cat(args...)); }
template <typename... Args>
void log_warn(const Args&... args) { log_line(LogLevel::warning, cat(args...)); }
template <typename... Args>
void log_error(const Args&... args) { log_line(LogLevel::error, cat(args...)); }

}  // namespace gptqd::daemon
