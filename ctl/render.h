// SPDX-License-Identifier: Apache-2.0
// Rendering for gptqctl: progress bars on a TTY, plain lines otherwise, tables, sizes, and
// escaping of anything a model file could smuggle onto a terminal (ctl layer).
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace gptqd::ctl {

// Replaces control characters (ESC, CR, ...) and invalid UTF-8 with visible escapes.
// `keep_layout` leaves '\n' and '\t' alone (for generated text).
std::string printable(std::string_view text, bool keep_layout = false);

std::string human_bytes(uint64_t n);         // "98.4 MB" (decimal units, as disk tools print)
std::string with_commas(uint64_t n);         // "134,515,008"

// Left-aligned columns separated by two spaces; the last column is not padded.
std::string format_table(const std::vector<std::vector<std::string>>& rows);

// Renders NDJSON progress events of one long operation (pull today; quantize later).
class ProgressRenderer {
 public:
  explicit ProgressRenderer(FILE* out, bool tty) : out_(out), tty_(tty) {}
  void on_event(const nlohmann::json& ev);
  void finish();  // ends a pending bar line

 private:
  FILE* out_;
  bool tty_;
  std::string last_status_;
  bool bar_open_ = false;
};

}  // namespace gptqd::ctl
