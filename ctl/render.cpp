// SPDX-License-Identifier: Apache-2.0
// Terminal rendering for gptqctl (ctl layer).
#include "ctl/render.h"

#include <algorithm>

namespace gptqd::ctl {

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
    constexpr int kWidth = 30;
    const double frac = std::min(1.0, static_cast<double>(completed) / static_cast<double>(total));
    const int filled = static_cast<int>(frac * kWidth);
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
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

}  // namespace gptqd::ctl
