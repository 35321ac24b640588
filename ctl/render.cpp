// SPDX-License-Identifier: Apache-2.0
// Terminal rendering for gptqctl (ctl layer).
#include "ctl/render.h"

#include <algorithm>
#include <cmath>
#include <optional>

#include "daemon/protocol.h"

namespace gptqd::ctl {
namespace {

// "[=====>    ]" content: `frac` of `width` filled.
std::string bar_text(double frac, int width) {
  const int filled = static_cast<int>(frac * width);
  std::string bar(static_cast<size_t>(filled), '=');
  if (filled < width) bar += '>' + std::string(static_cast<size_t>(width - filled - 1), ' ');
  return bar;
}

using nlohmann::json;

// Event and job fields, read defensively: a missing, null or mistyped field is "absent".
std::optional<double> number(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return std::nullopt;
  const double v = it->get<double>();
  if (!std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<int64_t> integer(const json& j, const char* key) {
  if (!j.is_object()) return std::nullopt;
  auto it = j.find(key);
  if (it == j.end()) return std::nullopt;
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float() && std::isfinite(it->get<double>())) return static_cast<int64_t>(it->get<double>());
  return std::nullopt;
}

bool flag(const json& j, const char* key) {
  if (!j.is_object()) return false;
  auto it = j.find(key);
  return it != j.end() && it->is_boolean() && it->get<bool>();
}

// The field as printable text ("" when absent or null; non-strings as their JSON).
std::string text(const json& j, const char* key) {
  if (!j.is_object()) return {};
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return {};
  return printable(it->is_string() ? it->get<std::string>() : it->dump());
}

std::string fixed(double v, int digits) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", digits, v);
  return buf;
}

std::string general(double v, int digits = 6) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*g", digits, v);
  return buf;
}

// Stages that work on one decoder layer (the event's "layer" is then meaningful).
bool is_layer_stage(const std::string& stage) {
  return stage == "qkv" || stage == "o" || stage == "gate_up" || stage == "down" || stage == "forward" ||
         stage == "write" || stage == "rtn" || stage == "replay";
}

std::string stage_label(const std::string& stage) {
  if (stage == "embed") return "embedding the calibration samples";
  if (stage == "checkpoint") return "writing the GPTQ checkpoint";
  if (stage == "eval-source") return "perplexity of the source model";
  if (stage == "eval-result") return "perplexity of the result";
  if (stage == "smoke") return "smoke test";
  if (stage == "register") return "registering the model";
  if (stage == "queued") return "waiting for the device";
  if (stage == "done") return "all layers quantized";
  if (stage.empty()) return "working";
  return printable(stage);
}

// "layer 12/30" (or "replaying layer 3/30") inside the layers; "" otherwise.
std::string layer_text(const json& p) {
  const std::string stage = text(p, "stage");
  const auto layer = integer(p, "layer"), n_layers = integer(p, "n_layers");
  if (!is_layer_stage(stage) || !layer || !n_layers || *n_layers <= 0 || *layer < 0 || *layer >= *n_layers) return "";
  return std::string(stage == "replay" ? "replaying layer " : "layer ") + std::to_string(*layer + 1) + "/" +
         std::to_string(*n_layers);
}

std::optional<int> percent(const json& p) {
  const auto f = number(p, "fraction");
  if (!f) return std::nullopt;
  return static_cast<int>(std::floor(std::clamp(*f, 0.0, 1.0) * 100));
}

std::string eta_text(const json& p) {
  const auto eta = number(p, "eta_s");
  return eta && *eta >= 0 ? "ETA " + format_duration(*eta) : std::string();
}

std::string time_text(const json& j, const char* key) {
  if (auto t = integer(j, key)) return protocol::rfc3339_utc(*t);
  const std::string s = text(j, key);
  return s.empty() ? "-" : s;
}

// At most `max` bytes, cut on a UTF-8 character boundary, "..." marking a cut.
std::string clip(const std::string& s, size_t max) {
  if (s.size() <= max) return s;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
  return s.substr(0, cut) + "...";
}

// "layer 12/30 quantized in 4.2 s: mean weight error 0.0213, max loss 0.312".
std::string layer_done_line(const json& ev, const json& last_progress) {
  std::string line = "layer ";
  const auto layer = integer(ev, "layer");
  line += layer ? std::to_string(*layer + 1) : std::string("?");
  if (auto n = integer(last_progress, "n_layers"); n && *n > 0) line += "/" + std::to_string(*n);
  line += " quantized";
  if (auto s = number(ev, "seconds")) line += " in " + fixed(*s, 1) + " s";
  const json linears = ev.contains("linears") && ev["linears"].is_array() ? ev["linears"] : json::array();
  if (linears.empty()) return line;
  double sum_err = 0, max_loss = 0;
  int n_err = 0, n_fallback = 0;
  for (const auto& l : linears) {
    if (auto e = number(l, "weight_error")) sum_err += *e, ++n_err;
    if (auto loss = number(l, "loss")) max_loss = std::max(max_loss, *loss);
    if (flag(l, "rtn_fallback")) ++n_fallback;
  }
  line += ":";
  if (n_err > 0) line += " mean weight error " + fixed(sum_err / n_err, 4) + ",";
  if (max_loss > 0) line += " max loss " + general(max_loss, 4) + ",";  // RTN has no loss
  line.pop_back();
  if (n_fallback > 0) line += ", " + std::to_string(n_fallback) + " RTN fallback(s)";
  return line;
}

}  // namespace

std::string printable(std::string_view text, bool keep_layout) {
  std::string out;
  size_t i = 0;
  auto hex = [&](unsigned char c) {
    static const char* digits = "0123456789abcdef";
    out += "\\x";
    out += digits[c >> 4];
    out += digits[c & 15];
  };
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if ((c < 0x20 || c == 0x7f) && !(keep_layout && (c == '\n' || c == '\t'))) {
      hex(c);
      ++i;
      continue;
    }
    if (c < 0x80) {
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    // Copy a well-formed UTF-8 sequence (no overlongs, surrogates or C1 controls); escape the rest.
    size_t len = (c >= 0xc2 && c <= 0xdf) ? 2 : (c >= 0xe0 && c <= 0xef) ? 3 : (c >= 0xf0 && c <= 0xf4) ? 4 : 0;
    bool ok = len > 0 && i + len <= text.size();
    for (size_t k = 1; ok && k < len; ++k) ok = (static_cast<unsigned char>(text[i + k]) & 0xc0) == 0x80;
    if (ok && len == 2 && c == 0xc2 && static_cast<unsigned char>(text[i + 1]) < 0xa0) ok = false;  // C1
    if (ok && len == 3) {
      unsigned char c1 = static_cast<unsigned char>(text[i + 1]);
      if ((c == 0xe0 && c1 < 0xa0) || (c == 0xed && c1 >= 0xa0)) ok = false;
    }
    if (ok && len == 4) {
      unsigned char c1 = static_cast<unsigned char>(text[i + 1]);
      if ((c == 0xf0 && c1 < 0x90) || (c == 0xf4 && c1 >= 0x90)) ok = false;
    }
    if (!ok) {
      hex(c);
      ++i;
      continue;
    }
    out.append(text.substr(i, len));
    i += len;
  }
  return out;
}

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1000 && u < 4) v /= 1000, ++u;
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(n));
  else std::snprintf(buf, sizeof buf, v >= 100 ? "%.0f %s" : "%.1f %s", v, units[u]);
  return buf;
}

std::string with_commas(uint64_t n) {
  std::string digits = std::to_string(n), out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out += ',';
    out += digits[i];
  }
  return out;
}

std::string format_table(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& row : rows) {
    if (width.size() < row.size()) width.resize(row.size(), 0);
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  }
  std::string out;
  for (const auto& row : rows) {
    std::string line;
    for (size_t c = 0; c < row.size(); ++c) {
      line += row[c];
      if (c + 1 < row.size()) line += std::string(width[c] - row[c].size() + 2, ' ');
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
  }
  return out;
}

void ProgressRenderer::on_event(const nlohmann::json& ev) {
  const std::string status = printable(ev.value("status", std::string()));
  const uint64_t total = ev.value("total", uint64_t{0});
  const uint64_t completed = ev.value("completed", uint64_t{0});
  const bool has_bytes = ev.contains("completed") && total > 0;
  if (!tty_) {
    // Plain lines: one per status change, plus the end of each file.
    if (status != last_status_) {
      std::fprintf(out_, "%s\n", status.c_str());
      last_status_ = status;
    } else if (has_bytes && completed == total) {
      std::fprintf(out_, "%s: done (%s)\n", status.c_str(), human_bytes(total).c_str());
    }
    std::fflush(out_);
    return;
  }
  if (status != last_status_ && bar_open_) {
    std::fputc('\n', out_);
    bar_open_ = false;
  }
  last_status_ = status;
  if (has_bytes) {
    const double frac = std::min(1.0, static_cast<double>(completed) / static_cast<double>(total));
    const std::string bar = bar_text(frac, 30);
    std::fprintf(out_, "\r\x1b[K%s [%s] %3d%% %s/%s", status.c_str(), bar.c_str(), static_cast<int>(frac * 100),
                 human_bytes(completed).c_str(), human_bytes(total).c_str());
    bar_open_ = true;
  } else {
    std::fprintf(out_, "%s\n", status.c_str());
  }
  std::fflush(out_);
}

void ProgressRenderer::finish() {
  if (bar_open_) std::fputc('\n', out_);
  bar_open_ = false;
  std::fflush(out_);
}


std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const long long t = std::llround(seconds);
  char buf[48];
  if (t < 60) std::snprintf(buf, sizeof buf, "%llds", t);
  else if (t < 3600) std::snprintf(buf, sizeof buf, "%lldm%02llds", t / 60, t % 60);
  else std::snprintf(buf, sizeof buf, "%lldh%02lldm", t / 3600, (t % 3600) / 60);
  return buf;
}

std::string format_job_progress(const json& p) {
  if (!p.is_object()) return "";
  std::string s = layer_text(p);
  if (s.empty()) s = text(p, "stage");
  if (s.empty()) s = "working";
  if (auto pct = percent(p)) s += " (" + std::to_string(*pct) + "%)";
  if (auto eta = eta_text(p); !eta.empty()) s += " " + eta;
  return s;
}

std::string format_jobs_table(const json& doc) {
  std::vector<std::vector<std::string>> rows = {{"ID", "KIND", "STATE", "TARGET", "PROGRESS", "UPDATED"}};
  const json jobs = doc.is_object() && doc.contains("jobs") && doc["jobs"].is_array() ? doc["jobs"] : json::array();
  for (const auto& job : jobs) {
    std::string progress = format_job_progress(job.is_object() ? job.value("progress", json()) : json());
    if (progress.empty()) {
      const json q = job.is_object() ? job.value("quality", json()) : json();
      if (auto ratio = number(q, "ratio")) progress = "perplexity x" + fixed(*ratio, 3);
    }
    rows.push_back({text(job, "id"), text(job, "kind"), text(job, "state"), text(job, "target"),
                    progress.empty() ? "-" : progress, time_text(job, "updated_at")});
  }
  if (rows.size() == 1) return "no jobs yet; start one with: gptqctl quantize NAME[:TAG] --calib DATASET\n";
  return format_table(rows);
}

std::vector<std::vector<std::string>> quality_rows(const json& q) {
  std::vector<std::vector<std::string>> rows;
  if (!q.is_object()) return rows;
  if (auto src = number(q, "source_ppl")) {
    std::string s = fixed(*src, 4) + " -> ";
    const auto result = number(q, "result_ppl");
    s += result ? fixed(*result, 4) : std::string("not a number");
    std::vector<std::string> notes;
    if (auto ratio = number(q, "ratio")) notes.push_back("ratio " + fixed(*ratio, 3));
    if (auto limit = number(q, "max_ppl_ratio")) notes.push_back("limit " + general(*limit));
    if (!notes.empty()) s += " (" + notes[0] + (notes.size() > 1 ? ", " + notes[1] : "") + ")";
    rows.push_back({"Perplexity", s});
    std::string on = text(q, "eval_dataset");
    if (on.empty()) on = "held-out text";
    const auto windows = integer(q, "eval_windows"), seqlen = integer(q, "eval_seqlen");
    if (windows) on += ", " + std::to_string(*windows) + " window(s)";
    if (windows && seqlen) on += " of " + std::to_string(*seqlen) + " tokens";
    rows.push_back({"Evaluated on", on});
  } else if (auto windows = integer(q, "eval_windows"); windows && *windows == 0) {
    rows.push_back({"Perplexity", "not measured (eval windows 0)"});
  }
  if (auto mean = number(q, "mean_weight_error")) {
    std::string s = "mean " + fixed(*mean, 4);
    if (auto max = number(q, "max_weight_error")) s += ", max " + fixed(*max, 4);
    if (auto n = integer(q, "linears")) s += " over " + std::to_string(*n) + " linears";
    if (auto n = integer(q, "rtn_fallbacks"); n && *n > 0) s += ", " + std::to_string(*n) + " RTN fallback(s)";
    if (auto n = integer(q, "damp_retries"); n && *n > 0) s += ", damping raised for " + std::to_string(*n);
    rows.push_back({"Weight error", s});
  }
  if (q.contains("smoke_output") && q["smoke_output"].is_string()) {
    const std::string prompt = q.value("smoke_prompt", json()).is_string() ? q["smoke_prompt"].get<std::string>() : "";
    rows.push_back({"Smoke test", "\"" + printable(clip(prompt, 60)) + "\" -> \"" +
                                      printable(clip(q["smoke_output"].get<std::string>(), 80)) + "\""});
  }
  if (std::string state = text(q, "state"); !state.empty()) {
    if (std::string reason = text(q, "reason"); !reason.empty()) state += " (" + reason + ")";
    rows.push_back({"State", state});
  }
  return rows;
}

namespace {

std::string params_summary(const json& p) {
  std::string s = text(p, "method");
  if (auto bits = integer(p, "bits")) s += (s.empty() ? "" : ", ") + std::to_string(*bits) + "-bit";
  if (auto g = integer(p, "group_size")) s += ", group size " + std::to_string(*g) + (*g == -1 ? " (per row)" : "");
  if (flag(p, "desc_act")) s += ", act-order";
  if (p.contains("sym") && p["sym"].is_boolean()) s += p["sym"].get<bool>() ? ", symmetric" : ", asymmetric";
  if (flag(p, "static_groups")) s += ", static groups";
  if (auto d = number(p, "damp_percent")) s += ", damp " + general(*d);
  return s;
}

}  // namespace

std::string format_job_details(const json& job) {
  std::vector<std::vector<std::string>> rows;
  std::string id = text(job, "id");
  if (std::string kind = text(job, "kind"); !kind.empty()) id += " (" + kind + ")";
  rows.push_back({"Job", id});
  rows.push_back({"State", text(job, "state")});
  if (std::string s = text(job, "source"); !s.empty()) rows.push_back({"Source", s});
  if (std::string t = text(job, "target"); !t.empty()) rows.push_back({"Target", t});
  rows.push_back({"Created", time_text(job, "created_at")});
  rows.push_back({"Updated", time_text(job, "updated_at")});
  const json progress = job.is_object() ? job.value("progress", json()) : json();
  if (std::string p = format_job_progress(progress); !p.empty()) {
    if (!layer_text(progress).empty()) p += ", stage " + text(progress, "stage");
    rows.push_back({"Progress", p});
  }
  if (std::string e = text(job, "error"); !e.empty()) rows.push_back({"Error", e});
  const json params = job.is_object() ? job.value("params", json()) : json();
  if (params.is_object()) {
    if (std::string summary = params_summary(params); !summary.empty()) rows.push_back({"Parameters", summary});
    if (std::string calib = text(params, "calib"); !calib.empty()) {
      std::string c = calib;
      if (auto n = integer(params, "samples")) c += ": " + std::to_string(*n) + " samples";
      if (auto n = integer(params, "seqlen")) c += " x " + std::to_string(*n) + " tokens";
      if (auto n = integer(params, "seed")) c += ", seed " + std::to_string(*n);
      rows.push_back({"Calibration", c});
    }
    if (std::string d = text(params, "device"); !d.empty()) rows.push_back({"Device", d});
  }
  for (auto& row : quality_rows(job.is_object() ? job.value("quality", json()) : json())) {
    if (row[0] == "State") row[0] = "Quality";  // the job's own state is above
    rows.push_back(std::move(row));
  }
  std::string out = format_table(rows);

  const json layers = job.is_object() && job.contains("layers") && job["layers"].is_array() ? job["layers"] : json::array();
  std::vector<std::vector<std::string>> table = {{"  LAYER", "LINEAR", "LOSS", "WEIGHT_ERROR", "DAMP", "SECONDS", "NOTES"}};
  for (const auto& layer : layers) {
    const std::string index = "  " + text(layer, "layer");
    const json linears = layer.is_object() && layer.contains("linears") && layer["linears"].is_array() ? layer["linears"]
                                                                                                      : json::array();
    for (const auto& l : linears) {
      auto num = [&](const char* key, std::string (*format)(double, int), int digits) {
        auto v = number(l, key);
        return v ? format(*v, digits) : std::string("-");
      };
      std::vector<std::string> notes;
      if (flag(l, "rtn_fallback")) notes.push_back("RTN fallback");
      if (auto n = integer(l, "damp_attempts"); n && *n > 1) notes.push_back("damping raised " + std::to_string(*n - 1) + "x");
      if (auto n = integer(l, "dead_columns"); n && *n > 0) notes.push_back(std::to_string(*n) + " dead columns");
      std::string note;
      for (const auto& n : notes) note += (note.empty() ? "" : ", ") + n;
      table.push_back({index, text(l, "name"), num("loss", general, 4), num("weight_error", fixed, 4),
                       num("damp_percent", general, 6), num("seconds", fixed, 2), note});
    }
  }
  if (table.size() > 1) out += "Layers\n" + format_table(table);
  return out;
}

void JobRenderer::on_event(const json& ev) {
  const std::string kind = text(ev, "event");
  if (kind == "queued") {
    std::string line = "job " + text(ev, "job") + ": quantizing ";
    if (std::string src = text(ev, "source"); !src.empty()) line += src + " -> ";
    line += text(ev, "model");
    print_line(line);
  } else if (kind == "progress") {
    last_progress_ = ev;
    if (tty_) {
      draw_bar();
    } else {
      // One line per layer (its first event) and per stage outside the layers.
      std::string label = layer_text(ev);
      if (label.empty()) label = stage_label(text(ev, "stage"));
      if (label != last_key_) {
        last_key_ = label;
        std::string line = label;
        std::string extra;
        if (auto pct = percent(ev)) extra = std::to_string(*pct) + "%";
        if (std::string eta = eta_text(ev); !eta.empty()) extra += (extra.empty() ? "" : ", ") + eta;
        if (!extra.empty()) line += " (" + extra + ")";
        print_line(line);
      }
    }
  } else if (kind == "layer") {
    print_line(layer_done_line(ev, last_progress_));
  } else if (kind == "quality") {
    const json q = ev.contains("quality") && ev["quality"].is_object() ? ev["quality"] : ev;
    if (auto src = number(q, "source_ppl")) {
      std::string line = "perplexity of the source model: " + fixed(*src, 4);
      if (auto result = number(q, "result_ppl")) line += ", of the quantized model: " + fixed(*result, 4);
      print_line(line);
    }
  }
}

void JobRenderer::print_line(const std::string& line) {
  if (bar_open_) std::fputs("\r\x1b[K", out_);
  bar_open_ = false;
  std::fprintf(out_, "%s\n", line.c_str());
  if (tty_ && last_progress_.is_object()) draw_bar();
  std::fflush(out_);
}

void JobRenderer::draw_bar() {
  const json& p = last_progress_;
  std::string label = layer_text(p);
  const std::string stage = text(p, "stage");
  if (label.empty()) label = stage_label(stage);
  else if (stage != "replay") label += " " + stage;
  const auto done = integer(p, "done"), total = integer(p, "total");
  if (done && total && *total > 0) label += " " + std::to_string(*done) + "/" + std::to_string(*total);
  const double frac = std::clamp(number(p, "fraction").value_or(0.0), 0.0, 1.0);
  const std::string bar = bar_text(frac, 20);  // the longest line stays within 80 columns
  std::string eta = eta_text(p);
  std::fprintf(out_, "\r\x1b[K%s [%s] %3d%%%s%s", label.c_str(), bar.c_str(), percent(p).value_or(0),
               eta.empty() ? "" : "  ", eta.c_str());
  bar_open_ = true;
  std::fflush(out_);
}

void JobRenderer::finish() {
  if (bar_open_) std::fputc('\n', out_);
  bar_open_ = false;
  std::fflush(out_);
}

// ---- gpu and kernels ---------------------------------------------------------------------------

namespace {

// A table whose rows may carry note lines printed under them, outside the columns.
struct NotedRow {
  std::vector<std::string> cells;
  std::vector<std::string> notes;
};

std::string format_noted_table(const std::vector<NotedRow>& rows, const std::string& indent) {
  std::vector<std::vector<std::string>> plain;
  for (const auto& r : rows) plain.push_back(r.cells);
  const std::string table = format_table(plain);
  std::string out;
  size_t pos = 0;
  for (const auto& r : rows) {
    const size_t end = table.find('\n', pos);
    out += indent + table.substr(pos, end - pos + 1);
    pos = end + 1;
    for (const auto& n : r.notes) out += indent + "    " + n + "\n";
  }
  return out;
}

// "rejected: cpu-avx2: needs ..." for every candidate but the chosen one ("also eligible: ..."
// for those that could run but rank lower).
std::vector<std::string> rejection_lines(const json& choice) {
  std::vector<std::string> lines;
  if (!choice.is_object() || !choice.contains("candidates") || !choice["candidates"].is_array()) return lines;
  for (const auto& c : choice["candidates"]) {
    if (flag(c, "chosen")) continue;
    const bool could_run = flag(c, "eligible") && flag(c, "built");
    lines.push_back((could_run ? "also eligible: " : "rejected: ") + text(c, "kernel") + ": " + text(c, "reason"));
  }
  return lines;
}

// "cpu-avx2", or "cpu-avx2 (host CPU)" when a GPU's work falls back to its CPU.
std::string kernel_cell(const json& choice, bool on_gpu) {
  std::string k = text(choice, "kernel");
  if (on_gpu && text(choice, "runs_on") == "cpu") k += " (host CPU)";
  return k;
}

std::string shape_text(const json& l) { return "K=" + text(l, "K") + " N=" + text(l, "N"); }

}  // namespace

std::string format_gpu_report(const json& doc, bool verbose) {
  std::string out;
  const json cpu = doc.value("cpu", json::object());
  std::string features;
  for (const auto& f : cpu.value("features", json::array())) {
    if (f.is_string()) features += (features.empty() ? "" : " ") + printable(f.get<std::string>());
  }
  out += "CPU: " + text(cpu, "model") + " (" + text(cpu, "logical_cpus") + " logical CPUs)\n";
  out += "  features: " + (features.empty() ? std::string("none the kernels use") : features) + "\n";
  out += "  INT4 kernels: " + text(cpu, "decode_kernel") + " for decode, " + text(cpu, "prefill_kernel") +
         " for prefill\n";

  const json cuda = doc.value("cuda", json::object());
  const json devices = cuda.value("devices", json::array());
  std::string versions;
  if (auto v = text(cuda, "driver_version"); !v.empty()) versions += "driver " + v;
  if (auto v = text(cuda, "runtime_version"); !v.empty()) versions += (versions.empty() ? "" : ", ") + std::string("runtime ") + v;
  if (cuda.contains("visible_devices") && cuda["visible_devices"].is_string()) {
    versions += (versions.empty() ? "" : ", ") + std::string("CUDA_VISIBLE_DEVICES=\"") + text(cuda, "visible_devices") + "\"";
  }
  if (devices.empty() || !devices.is_array()) {
    std::string why = text(cuda, "error");
    out += "CUDA: no GPU" + (why.empty() ? std::string() : ": " + why) + "\n";
    if (!versions.empty()) out += "  " + versions + "\n";
  } else {
    out += "CUDA: " + std::to_string(devices.size()) + (devices.size() == 1 ? " GPU" : " GPUs") +
           (versions.empty() ? std::string() : " (" + versions + ")") + "\n";
    std::vector<std::vector<std::string>> rows;
    for (const auto& g : devices) {
      const auto total = g.value("memory_total", uint64_t{0}), free = g.value("memory_free", uint64_t{0});
      rows.push_back({"  cuda:" + text(g, "index"), text(g, "name"), "sm" + text(g, "sm") + " (" + text(g, "compute_capability") + ")",
                      text(g, "sm_count") + " SMs",
                      (free ? human_bytes(free) + " free of " : std::string()) + human_bytes(total)});
    }
    out += format_table(rows);
  }
  if (cuda.contains("compiled") && cuda["compiled"].is_boolean() && !cuda["compiled"].get<bool>()) {
    out += "  (this gptqd was built without CUDA)\n";
  }
  out += "Serving on: " + text(doc, "device") + "\n";

  for (const auto& m : doc.value("models", json::array())) {
    out += "\nModel " + text(m, "model") + " on " + text(m, "device") + "\n";
    if (m.contains("error")) {
      out += "  kernels unknown: " + text(m, "error") + "\n";
      continue;
    }
    std::vector<NotedRow> rows = {{{"LINEARS", "QUANTIZATION", "SHAPE", "M", "KERNEL"}, {}}};
    for (const auto& l : m.value("linears", json::array())) {
      for (const char* phase : {"decode", "prefill"}) {
        const json c = l.value(phase, json::object());
        const bool first = std::string(phase) == "decode";
        rows.push_back({{first ? text(l, "names") : "", first ? text(l, "quantization") : "", first ? shape_text(l) : "",
                         text(c, "m"), kernel_cell(c, false)},
                        rejection_lines(c)});
      }
    }
    out += format_noted_table(rows, "  ");
  }

  for (const auto& d : doc.value("common", json::array())) {
    const bool on_gpu = text(d, "device") != "cpu";
    out += "\nCommon configurations on " + text(d, "device") + " (" + text(d, "name") +
           (on_gpu ? ", sm " + text(d, "compute_capability") : std::string()) + ")\n";
    std::vector<NotedRow> rows;
    if (on_gpu) {
      rows.push_back({{"CONFIG", "M", "KERNEL", "WITH THE CUDA KERNELS"}, {}});
    } else {
      rows.push_back({{"CONFIG", "M", "KERNEL"}, {}});
    }
    std::string last_config;
    for (const auto& r : d.value("rows", json::array())) {
      const std::string config = text(r, "config");
      NotedRow row{{config == last_config ? "" : config, text(r, "m"), kernel_cell(r, on_gpu)}, {}};
      if (on_gpu) row.cells.push_back(text(r, "intended"));
      if (verbose) row.notes = rejection_lines(r);
      last_config = config;
      rows.push_back(std::move(row));
    }
    out += format_noted_table(rows, "  ");
  }
  if (!verbose && doc.contains("common")) out += "\n(gptqctl gpu -v lists every rejected kernel and why)\n";
  return out;
}

std::vector<std::vector<std::string>> kernel_rows(const json& plan) {
  std::vector<std::vector<std::string>> rows;
  if (!plan.is_object()) return rows;
  if (plan.contains("error")) {
    rows.push_back({"Kernel", "unknown: " + text(plan, "error")});
    return rows;
  }
  const std::string device = text(plan, "device");
  for (const auto& l : plan.value("linears", json::array())) {
    const json decode = l.value("decode", json::object()), prefill = l.value("prefill", json::object());
    rows.push_back({"Kernel", text(l, "names") + " (" + text(l, "quantization") + ", " + shape_text(l) +
                                  "): " + text(decode, "kernel") + " for decode, " + text(prefill, "kernel") +
                                  " for prefill (M=" + text(prefill, "m") + ") on " + device});
  }
  return rows;
}

}  // namespace gptqd::ctl
