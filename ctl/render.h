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

// "45s", "3m12s", "1h02m"; "?" for a negative or non-finite value.
std::string format_duration(double seconds);

// A job's "progress" object in a few words: "layer 12/30 (41%) ETA 3m12s" during the layers
// (`layer` is 0-based, shown 1-based), "eval-source (95%)" after them; "" for null.
std::string format_job_progress(const nlohmann::json& progress);

// `jobs`: the table of GET /api/jobs's {"jobs": [...]}.
std::string format_jobs_table(const nlohmann::json& doc);
// `jobs show`: one job of GET /api/jobs/ID, with its quality report and per-linear losses.
std::string format_job_details(const nlohmann::json& job);
// Label/value rows of a quality report (perplexity before/after, weight error, smoke test, state);
// `show`, `jobs show` and `quantize` print them.
std::vector<std::vector<std::string>> quality_rows(const nlohmann::json& quality);

// `gpu`: GET /api/gpu as text: the CPU, the CUDA devices (or why there are none), the kernels of
// the loaded GPTQ models with every rejected candidate and why, and the common configurations
// (their rejections only when `verbose`).
std::string format_gpu_report(const nlohmann::json& doc, bool verbose);
// `show`: "Kernel" rows of a GPTQ tag's plan (POST /api/show "kernels"): per linear group, what
// runs for decode and prefill on the serving device.
std::vector<std::vector<std::string>> kernel_rows(const nlohmann::json& plan);

// Renders NDJSON progress events of one long operation (pull, and the copies of `export`).
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

// Renders a quantize job's events ("queued", "progress", "layer", "quality"): on a TTY one bar
// line (layer, stage, percent, ETA) with a line per finished layer above it; otherwise one plain
// line per layer or stage. "done", "error" and "cancelled" are left to the caller.
class JobRenderer {
 public:
  explicit JobRenderer(FILE* out, bool tty) : out_(out), tty_(tty) {}
  void on_event(const nlohmann::json& ev);
  void finish();  // ends a pending bar line

 private:
  void print_line(const std::string& line);  // above the bar, which is then redrawn
  void draw_bar();

  FILE* out_;
  bool tty_;
  bool bar_open_ = false;
  nlohmann::json last_progress_;
  std::string last_key_;  // plain: the layer or stage last printed
};

}  // namespace gptqd::ctl
