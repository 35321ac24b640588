// SPDX-License-Identifier: Apache-2.0
// Terminal rendering for gptqctl (ctl layer).
#include "ctl/render.h"

#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
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

// ---- progress of pulls and copies ------------------------------------------------------------

namespace {

// Columns `s` takes on a terminal. Any non-ASCII character counts as two, so that a line measured
// here never wraps (a wrapped line would throw off the cursor-up of the next redraw).
size_t columns(std::string_view s) {
  size_t n = 0;
  for (unsigned char c : s) {
    if (c < 0x80) ++n;
    else if ((c & 0xc0) == 0xc0) n += 2;  // lead bytes only
  }
  return n;
}

size_t char_len(unsigned char lead) { return lead < 0x80 ? 1 : lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : 2; }

// The longest prefix (suffix) of `s` made of whole characters that fits in `max` columns.
std::string_view head_columns(std::string_view s, size_t max) {
  size_t used = 0, i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const size_t w = c < 0x80 ? 1 : 2;
    if (used + w > max) break;
    used += w;
    i = std::min(s.size(), i + char_len(c));
  }
  return s.substr(0, i);
}

std::string_view tail_columns(std::string_view s, size_t max) {
  size_t used = 0, i = s.size();
  while (i > 0) {
    size_t start = i - 1;
    while (start > 0 && (static_cast<unsigned char>(s[start]) & 0xc0) == 0x80) --start;
    const size_t w = static_cast<unsigned char>(s[start]) < 0x80 ? 1 : 2;
    if (used + w > max) break;
    used += w;
    i = start;
  }
  return s.substr(i);
}

// `s` in at most `max` columns, cut in the middle ("model-000...safetensors") so that both the
// start and the extension of a file name stay visible.
std::string fit_middle(const std::string& s, size_t max) {
  if (columns(s) <= max) return s;
  if (max <= 3) return std::string(head_columns(s, max));
  const size_t keep = max - 3, head = keep / 2;
  return std::string(head_columns(s, head)) + "..." + std::string(tail_columns(s, keep - head));
}

// `s` in at most `max` columns, cut at the end.
std::string fit_end(const std::string& s, size_t max) {
  if (columns(s) <= max) return s;
  if (max <= 3) return std::string(head_columns(s, max));
  return std::string(head_columns(s, max - 3)) + "...";
}

std::string pad_right(std::string s, size_t width) {
  const size_t c = columns(s);
  if (c < width) s.append(width - c, ' ');
  return s;
}

std::string pad_left(const std::string& s, size_t width) {
  const size_t c = columns(s);
  return c < width ? std::string(width - c, ' ') + s : s;
}

std::string rate_text(std::optional<double> bytes_per_s) {
  if (!bytes_per_s || !std::isfinite(*bytes_per_s) || *bytes_per_s < 0) return "";
  return human_bytes(static_cast<uint64_t>(std::llround(*bytes_per_s))) + "/s";
}

// "ETA 3m12s" for `remaining` bytes at `rate` bytes/s; "" when the rate is unknown or zero.
std::string eta_for(uint64_t remaining, std::optional<double> rate) {
  if (!rate || !(*rate > 0)) return "";
  return "ETA " + format_duration(static_cast<double>(remaining) / *rate);
}

// Bytes a progress event counts ("total", "completed"); absent when missing or not a number,
// 0 when negative.
std::optional<uint64_t> byte_count(const json& ev, const char* key) {
  const auto v = number(ev, key);
  if (!v) return std::nullopt;
  return *v <= 0 ? 0 : static_cast<uint64_t>(std::min(*v, 1.8e19));
}

// One bar line of the frame, before layout.
struct BarRow {
  std::string label;
  double fraction = 0;         // 0..1
  bool known = true;           // false: the size is unknown, no percent
  std::string bytes, rate, eta;
};

constexpr size_t kMinLabel = 8, kMinBar = 10, kMaxBar = 30;

// The rows laid out in `width` usable columns, their columns aligned: "label  [bar] pct  bytes
// rate  eta". When the line does not fit, the rate goes first, then the ETA, then the bytes,
// then the bar; the label is cut in the middle.
std::vector<std::string> layout_bars(const std::vector<BarRow>& rows, size_t width) {
  size_t label_w = 0, bytes_w = 0, rate_w = 0, eta_w = 0;
  for (const auto& r : rows) {
    label_w = std::max(label_w, columns(r.label));
    bytes_w = std::max(bytes_w, columns(r.bytes));
    rate_w = std::max(rate_w, columns(r.rate));
    eta_w = std::max(eta_w, columns(r.eta));
  }
  // Room for the usual "1.5 GB/4.4 GB" and "12.3 MB/s", so that columns stay put between frames.
  if (bytes_w) bytes_w = std::max<size_t>(bytes_w, 13);
  if (rate_w) rate_w = std::max<size_t>(rate_w, 9);
  struct Tier {
    bool bytes, rate, eta;
  };
  const Tier tiers[] = {{true, true, true}, {true, false, true}, {true, false, false}, {false, false, false}};
  auto tail_width = [&](const Tier& t) {
    return 4 + (t.bytes && bytes_w ? 2 + bytes_w : 0) + (t.rate && rate_w ? 2 + rate_w : 0) +
           (t.eta && eta_w ? 2 + eta_w : 0);
  };
  std::optional<Tier> tier;
  size_t bar_w = 0;
  for (const auto& t : tiers) {
    const size_t fixed = tail_width(t) + 5;  // "  [" "] " around the bar
    if (width >= fixed + std::min(label_w, kMinLabel) + kMinBar) {
      tier = t;
      const size_t rest = width - fixed;
      label_w = std::min(label_w, rest - kMinBar);
      bar_w = std::min(kMaxBar, rest - label_w);
      break;
    }
  }
  std::vector<std::string> lines;
  for (const auto& r : rows) {
    const int pct = static_cast<int>(std::floor(std::clamp(r.fraction, 0.0, 1.0) * 100));
    char pct_buf[8];
    std::snprintf(pct_buf, sizeof pct_buf, "%3d%%", pct);
    const std::string pct_text = r.known ? pct_buf : "    ";
    std::string line;
    if (!tier) {  // too narrow for a bar: label and percent
      line = (width > 5 ? pad_right(fit_middle(r.label, width - 5), width - 5) + " " : std::string()) + pct_text;
    } else {
      line = pad_right(fit_middle(r.label, label_w), label_w) + "  [" +
             bar_text(r.known ? std::clamp(r.fraction, 0.0, 1.0) : 0.0, static_cast<int>(bar_w)) + "] " + pct_text;
      if (tier->bytes && bytes_w) line += "  " + pad_left(r.bytes, bytes_w);
      if (tier->rate && rate_w) line += "  " + pad_left(r.rate, rate_w);
      if (tier->eta && eta_w) line += "  " + pad_right(r.eta, eta_w);
    }
    while (!line.empty() && line.back() == ' ') line.pop_back();
    lines.push_back(std::string(head_columns(line, width)));
  }
  return lines;
}

int terminal_width(FILE* f) {
  const int fd = f ? ::fileno(f) : -1;
  struct winsize ws {};
  if (fd >= 0 && ::ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  return 80;
}

}  // namespace

void ProgressRenderer::RateWindow::add(double t_s, uint64_t bytes) {
  // A count that went back (a restarted file) or a clock that did starts the window over.
  if (!samples_.empty() && (bytes < samples_.back().second || t_s < samples_.back().first)) samples_.clear();
  samples_.emplace_back(t_s, bytes);
  // Keep the newest sample at or before the window's start, so the window spans all of it.
  while (samples_.size() > 2 && (samples_[1].first <= t_s - kRateWindowS || samples_.size() > 1000)) {
    samples_.pop_front();
  }
}

std::optional<double> ProgressRenderer::RateWindow::rate() const {
  if (samples_.size() < 2) return std::nullopt;
  const double span = samples_.back().first - samples_.front().first;
  if (span < 0.2) return std::nullopt;  // too short to say anything
  return static_cast<double>(samples_.back().second - samples_.front().second) / span;
}

ProgressRenderer::ProgressRenderer(FILE* out, bool tty, Options options)
    : out_(out), tty_(tty), options_(std::move(options)) {}

double ProgressRenderer::now() const {
  if (options_.now_s) return options_.now_s();
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void ProgressRenderer::on_event(const json& ev) {
  if (!ev.is_object()) return;
  const std::string status = text(ev, "status");
  const bool has_file = ev.contains("file") && !ev["file"].is_null();
  if (has_file || ev.contains("completed")) return on_file_event(ev, status);

  const bool has_files = ev.contains("files") && ev["files"].is_array();
  if (has_files || ev.contains("n_files") || ev.contains("total")) {
    // The plan: what the whole operation will move.
    if (!status.empty()) header_ = status;
    plan_bytes_ = std::max(plan_bytes_, byte_count(ev, "total").value_or(0));
    if (auto n = integer(ev, "n_files"); n && *n > 0) plan_n_files_ = std::max(plan_n_files_, static_cast<size_t>(*n));
    if (has_files) {
      plan_files_.clear();
      for (const auto& f : ev["files"]) {
        if (f.is_object()) plan_files_.emplace_back(text(f, "file"), byte_count(f, "total").value_or(0));
      }
    }
    stage_.clear();
    if (!tty_) {
      if (!status.empty() && status != last_status_) std::fprintf(out_, "%s\n", status.c_str());
      last_status_ = status.empty() ? last_status_ : status;
      std::fflush(out_);
    } else {
      draw(/*force=*/true);
    }
    return;
  }

  if (status.empty()) return;
  if (!tty_) {
    if (status != last_status_) std::fprintf(out_, "%s\n", status.c_str());
    last_status_ = status;
    std::fflush(out_);
  } else if (status != stage_) {
    stage_ = status;
    draw(/*force=*/true);
  }
}

void ProgressRenderer::on_file_event(const json& ev, const std::string& status) {
  const std::string key = ev.contains("file") && !ev["file"].is_null() ? text(ev, "file") : status;
  const double t = now();
  auto it = std::find_if(files_.begin(), files_.end(), [&](const File& f) { return f.key == key; });
  const bool started = it == files_.end();
  if (started) {
    File f;
    f.key = f.label = key;
    f.first_s = t;
    f.order = files_.size();
    files_.push_back(std::move(f));
    it = files_.end() - 1;
  }
  File& f = *it;
  f.status = status.empty() ? f.label : status;
  if (auto total = byte_count(ev, "total")) f.total = *total, f.total_known = true;
  const uint64_t completed = byte_count(ev, "completed").value_or(f.completed);
  f.skipped = f.skipped || flag(ev, "skipped");
  f.resumed = f.resumed || flag(ev, "resumed");
  f.server_rate.reset();
  if (auto r = number(ev, "rate"); r && *r >= 0) f.server_rate = *r;
  if (auto n = integer(ev, "n_files"); n && *n > 0) plan_n_files_ = std::max(plan_n_files_, static_cast<size_t>(*n));

  if (started) {
    // What a resumed or skipped file already had was not moved now; a new file's first bytes were.
    f.completed = f.first_completed = f.skipped || f.resumed ? completed : 0;
    if (!f.skipped && first_transfer_s_ < 0) first_transfer_s_ = t;
  }
  if (completed > f.completed) {
    transferred_bytes_ += completed - f.completed;
    last_transfer_s_ = t;
  }
  f.completed = completed;
  if (!f.skipped) {
    f.rate.add(t, f.completed);
    total_rate_.add(t, transferred_bytes_);
  }
  const bool finished_now = !f.done && (f.skipped || (f.total_known && f.completed >= f.total));
  if (finished_now) f.done = true, f.done_s = t;

  if (!tty_) return print_plain(f, started, finished_now);
  bool force = false;
  if (!f.done && !stage_.empty()) {  // bytes are moving again: the stage is over
    stage_.clear();
    force = true;
  }
  draw(force);
}

void ProgressRenderer::print_plain(const File& f, bool started, bool finished_now) {
  // One line per status change, plus the end of each file.
  if (f.status != last_status_) {
    std::string line = f.status;
    if (f.skipped && f.total_known) {
      line += " (" + human_bytes(f.total) + ")";
    } else if (started && f.resumed && f.completed > 0) {
      line += " (resuming at " + human_bytes(f.completed) + (f.total_known ? " of " + human_bytes(f.total) : "") + ")";
    }
    std::fprintf(out_, "%s\n", line.c_str());
    last_status_ = f.status;
  }
  if (finished_now && !f.skipped) {
    std::string line = f.status + ": done (" + human_bytes(f.total);
    const double elapsed = f.done_s - f.first_s;
    if (elapsed >= 1.0 && f.completed > f.first_completed) {
      line += " in " + format_duration(elapsed) + ", " +
              rate_text(static_cast<double>(f.completed - f.first_completed) / elapsed);
    }
    std::fprintf(out_, "%s)\n", line.c_str());
  }
  std::fflush(out_);
}

std::optional<double> ProgressRenderer::file_rate(const File& f) const {
  if (f.server_rate) return f.server_rate;
  return f.rate.rate();
}

size_t ProgressRenderer::n_files() const { return std::max({plan_n_files_, plan_files_.size(), files_.size()}); }

size_t ProgressRenderer::n_done() const {
  return static_cast<size_t>(std::count_if(files_.begin(), files_.end(), [](const File& f) { return f.done; }));
}

uint64_t ProgressRenderer::total_bytes() const {
  uint64_t sum = 0;
  for (const auto& f : files_) sum += f.total_known ? f.total : f.completed;
  for (const auto& [name, bytes] : plan_files_) {
    if (std::none_of(files_.begin(), files_.end(), [&](const File& f) { return f.key == name; })) sum += bytes;
  }
  return std::max(plan_bytes_, sum);
}

uint64_t ProgressRenderer::completed_bytes() const {
  uint64_t sum = 0;
  for (const auto& f : files_) sum += f.total_known ? std::min(f.completed, f.total) : f.completed;
  return std::min(sum, total_bytes());
}

std::vector<std::string> ProgressRenderer::frame_lines(int width_cols) const {
  const size_t width = static_cast<size_t>(std::max(width_cols - 1, 1));  // the last column would wrap
  std::vector<std::string> lines;
  const size_t n = n_files(), done = n_done();
  if (!header_.empty()) {
    std::string h = header_;
    if (n > 0) h += " (" + std::to_string(done) + "/" + std::to_string(n) + (n == 1 ? " file)" : " files)");
    lines.push_back(fit_end(h, width));
  }

  // The files on screen: all of them, or the unfinished ones and the most recently finished.
  std::vector<const File*> shown;
  for (const auto& f : files_) shown.push_back(&f);
  if (shown.size() > kMaxFileLines) {
    std::vector<const File*> active, finished;
    for (const File* f : shown) (f->done ? finished : active).push_back(f);
    std::stable_sort(finished.begin(), finished.end(),
                     [](const File* a, const File* b) { return a->done_s > b->done_s; });
    if (active.size() > kMaxFileLines) active.erase(active.begin(), active.end() - kMaxFileLines);
    finished.resize(std::min(finished.size(), kMaxFileLines - active.size()));
    shown = active;
    shown.insert(shown.end(), finished.begin(), finished.end());
    std::sort(shown.begin(), shown.end(), [](const File* a, const File* b) { return a->order < b->order; });
  }

  std::vector<BarRow> rows;
  for (const File* f : shown) {
    BarRow r;
    r.label = f->label;
    r.known = f->total_known;
    r.fraction = f->total > 0 ? static_cast<double>(std::min(f->completed, f->total)) / static_cast<double>(f->total)
                              : (f->done ? 1.0 : 0.0);
    r.bytes = f->total_known ? human_bytes(std::min(f->completed, f->total)) + "/" + human_bytes(f->total)
                             : human_bytes(f->completed);
    if (f->done) {
      const double elapsed = f->done_s - f->first_s;
      if (!f->skipped && elapsed > 0 && f->completed > f->first_completed) {
        r.rate = rate_text(static_cast<double>(f->completed - f->first_completed) / elapsed);
      } else if (!f->skipped) {
        r.rate = rate_text(file_rate(*f));
      }
      r.eta = "done";
    } else {
      const auto rate = file_rate(*f);
      r.rate = rate_text(rate);
      if (f->total_known) r.eta = eta_for(f->total - std::min(f->completed, f->total), rate);
    }
    rows.push_back(std::move(r));
  }

  if (!header_.empty() || plan_bytes_ > 0 || plan_n_files_ > 0 || files_.size() > 1) {
    BarRow r;
    r.label = "total";
    const uint64_t total = total_bytes(), completed = completed_bytes();
    const bool all_done = n > 0 && done >= n;
    r.fraction = total > 0 ? static_cast<double>(completed) / static_cast<double>(total) : (all_done ? 1.0 : 0.0);
    r.bytes = human_bytes(completed) + "/" + human_bytes(total);
    if (all_done) {
      const double elapsed = last_transfer_s_ - first_transfer_s_;
      if (transferred_bytes_ > 0 && first_transfer_s_ >= 0 && elapsed > 0) {
        r.rate = rate_text(static_cast<double>(transferred_bytes_) / elapsed);
      }
      r.eta = "done";
    } else {
      // The client-side rate over the window; until it has one, what the server says per file.
      std::optional<double> rate = total_rate_.rate();
      if (!rate) {
        for (const auto& f : files_) {
          if (!f.done && f.server_rate) rate = rate.value_or(0) + *f.server_rate;
        }
      }
      r.rate = rate_text(rate);
      r.eta = eta_for(total - completed, rate);
    }
    rows.push_back(std::move(r));
  }
  for (auto& line : layout_bars(rows, width)) lines.push_back(std::move(line));
  if (!stage_.empty()) lines.push_back(fit_end(stage_, width));
  return lines;
}

void ProgressRenderer::draw(bool force) {
  const double t = now();
  if (!force && last_draw_s_ >= 0 && t - last_draw_s_ < kMinRedrawS) {
    dirty_ = true;
    return;
  }
  const std::vector<std::string> lines = frame_lines(options_.width > 0 ? options_.width : terminal_width(out_));
  if (lines.empty() && drawn_lines_ == 0) return;
  // Back to the frame's first line, then each line over the old one, erasing what is left of it.
  std::string s;
  if (drawn_lines_ > 0) s += "\x1b[" + std::to_string(drawn_lines_) + "A";
  s += "\r";
  for (const auto& line : lines) s += line + "\x1b[K\n";
  if (lines.size() < drawn_lines_) s += "\x1b[J";  // the old frame was taller
  std::fwrite(s.data(), 1, s.size(), out_);
  std::fflush(out_);
  drawn_lines_ = lines.size();
  last_draw_s_ = t;
  dirty_ = false;
}

void ProgressRenderer::finish() {
  if (tty_ && (dirty_ || drawn_lines_ > 0)) draw(/*force=*/true);
  std::fflush(out_);
  // Start afresh: a later event opens a new frame below this one.
  ProgressRenderer fresh(out_, tty_, std::move(options_));
  *this = std::move(fresh);
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
