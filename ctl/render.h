// SPDX-License-Identifier: Apache-2.0
// Rendering for gptqctl: progress bars on a TTY, plain lines otherwise, tables, sizes, and
// escaping of anything a model file could smuggle onto a terminal (ctl layer).
#pragma once

#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
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

// Renders the NDJSON progress events of one long operation: `pull`, `dataset pull`, and the copies
// of `export`. It reads three kinds of "progress" events:
//   - the plan: no "completed", with "n_files", "total" (bytes) and/or "files" [{"file","total"}];
//   - a file's bytes: "file" (or, from senders without it, the status names the file), "total",
//     "completed", optional "rate" (bytes/s), "skipped" (already present), "resumed";
//   - a stage: a "status" and nothing else ("verifying sha256 digest", "writing blobs", ...).
// "done" and "error" are left to the caller. Everything from the server is shown through printable().
//
// On a TTY: a frame redrawn in place (cursor up, at most ~10 times a second): the plan's status
// line, a bar per started file (name, bar, percent, bytes, rate, ETA; at most kMaxFileLines, the
// finished ones giving way first), a "total" line with a client-side rate and ETA over a smoothing
// window, and the latest stage. Otherwise plain lines: each status change, and each finished file.
class ProgressRenderer {
 public:
  struct Options {
    std::function<double()> now_s;  // monotonic seconds (tests inject a clock); default: steady_clock
    int width = 0;                  // columns; 0: the terminal's (TIOCGWINSZ on `out`), else 80
  };
  static constexpr size_t kMaxFileLines = 10;
  static constexpr double kMinRedrawS = 0.1;     // between two redraws, unless the stage changes
  static constexpr double kRateWindowS = 5.0;    // client-side rates average over this much time

  ProgressRenderer(FILE* out, bool tty) : ProgressRenderer(out, tty, Options{}) {}
  ProgressRenderer(FILE* out, bool tty, Options options);
  void on_event(const nlohmann::json& ev);
  void finish();  // draws the last frame (TTY) and starts afresh

  // The TTY frame as it would be drawn now at `width` columns, one string per line (tests).
  std::vector<std::string> frame_lines(int width) const;

  // Bytes per second over the last kRateWindowS of samples (at least two, 0.2 s apart).
  class RateWindow {
   public:
    void add(double t_s, uint64_t bytes);
    std::optional<double> rate() const;

   private:
    std::deque<std::pair<double, uint64_t>> samples_;  // (time in s, cumulative bytes), oldest first
  };

 private:
  struct File {
    std::string key;               // the "file" field, else the status
    std::string label;             // printable name
    std::string status;            // printable status of its last event
    uint64_t total = 0;            // bytes; `total_known` false while the sender gave none
    bool total_known = false;
    uint64_t completed = 0;        // bytes
    uint64_t first_completed = 0;  // bytes it already had when first seen (resumed or skipped)
    std::optional<double> server_rate;  // the last event's "rate", bytes/s
    bool skipped = false, resumed = false, done = false;
    double first_s = 0, done_s = 0;     // clock times
    RateWindow rate;
    size_t order = 0;              // its index in files_
  };

  void on_file_event(const nlohmann::json& ev, const std::string& status);
  void print_plain(const File& f, bool started, bool finished_now);
  void draw(bool force);
  double now() const;
  std::optional<double> file_rate(const File& f) const;
  uint64_t total_bytes() const;
  uint64_t completed_bytes() const;
  size_t n_files() const;
  size_t n_done() const;

  FILE* out_;
  bool tty_;
  Options options_;
  // Plain output state.
  std::string last_status_;
  // Shared state.
  std::string header_;             // the plan's status ("pulling org/name@sha")
  std::string stage_;              // the latest stage status after the plan
  uint64_t plan_bytes_ = 0;
  size_t plan_n_files_ = 0;
  std::vector<std::pair<std::string, uint64_t>> plan_files_;  // (file, total bytes)
  std::vector<File> files_;        // in the order they started
  uint64_t transferred_bytes_ = 0;  // moved while watched (not what resumed or skipped files had)
  RateWindow total_rate_;
  double first_transfer_s_ = -1, last_transfer_s_ = -1;
  // TTY state.
  size_t drawn_lines_ = 0;         // lines of the frame on screen; the cursor is below them
  double last_draw_s_ = -1;
  bool dirty_ = false;
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
