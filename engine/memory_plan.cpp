// SPDX-License-Identifier: Apache-2.0
// Memory planning (engine layer). See memory_plan.h.
#include "engine/memory_plan.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace gptqd::engine {
namespace {

constexpr int64_t kChunkTokens = kForwardChunkTokens;
// A context is suggested in whole multiples of this.
constexpr int64_t kCtxStep = 256;

// The first number in `path` (a cgroup file), or 0 ("max", missing, unreadable).
uint64_t read_number(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word.empty() || word[0] < '0' || word[0] > '9') return 0;
  return std::strtoull(word.c_str(), nullptr, 10);
}

uint64_t meminfo_available() {
  std::ifstream in("/proc/meminfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("MemAvailable:", 0) == 0) {
      std::istringstream is(line.substr(13));
      uint64_t kib = 0;
      is >> kib;
      return kib * 1024;
    }
  }
  return 0;
}

// memory.max - memory.current of this process's cgroup (v2), or 0 when unlimited/unknown.
uint64_t cgroup_room() {
  std::ifstream in("/proc/self/cgroup");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("0::", 0) != 0) continue;
    const std::string dir = "/sys/fs/cgroup" + line.substr(3);
    const uint64_t max = read_number(dir + "/memory.max");
    if (max == 0) return 0;
    const uint64_t current = read_number(dir + "/memory.current");
    return max > current ? max - current : 1;
  }
  return 0;
}

}  // namespace

MemoryPlan plan_memory(const ModelConfig& c, uint64_t weights_bytes, int64_t n_ctx, int64_t sequences,
                       int kv_value_bytes) {
  MemoryPlan p;
  p.weights_bytes = weights_bytes;
  p.kv_bytes_per_token =
      static_cast<uint64_t>(c.n_layers * 2 * c.n_kv_heads * c.head_dim) * static_cast<uint64_t>(kv_value_bytes);
  p.n_ctx = n_ctx;
  p.sequences = sequences;
  const int64_t H = c.hidden_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim,
                I = c.intermediate_size;
  // x, h, tmp [T, H]; qkv [T, Q + 2 KV]; attn [T, Q]; gate_up [T, 2I]; act [T, I]; logits [V].
  p.workspace_bytes = static_cast<uint64_t>(kChunkTokens * (3 * H + Q + 2 * KV + Q + 3 * I) + c.vocab_size) * 4;
  return p;
}

std::string human_bytes(uint64_t b) {
  char buf[32];
  if (b >= (uint64_t{1} << 30)) std::snprintf(buf, sizeof buf, "%.1f GiB", static_cast<double>(b) / (1 << 30));
  else if (b >= (uint64_t{1} << 20)) std::snprintf(buf, sizeof buf, "%.0f MiB", static_cast<double>(b) / (1 << 20));
  else std::snprintf(buf, sizeof buf, "%.0f KiB", static_cast<double>(b) / 1024);
  return buf;
}

std::string memory_misfit(const MemoryPlan& p, uint64_t available, std::string_view what, std::string_view where) {
  if (p.total() <= available) return {};
  std::string s = std::string(what) + " needs " + human_bytes(p.total()) + " (weights " + human_bytes(p.weights_bytes);
  if (p.sequences > 0 && p.n_ctx > 0) {
    s += ", KV cache " + human_bytes(p.kv_bytes()) + " for num_ctx " + std::to_string(p.n_ctx);
    if (p.sequences > 1) s += " x " + std::to_string(p.sequences) + " sequences";
  }
  s += ", scratch " + human_bytes(p.workspace_bytes) + ") but only " + human_bytes(available) + " of " +
       std::string(where) + " is available";
  const uint64_t fixed = p.weights_bytes + p.workspace_bytes;
  if (fixed >= available || p.kv_bytes_per_token == 0 || p.n_ctx == 0 || p.sequences == 0) {
    return s + "; the weights alone do not fit: free memory (unload other models, stop other programs) or use a "
               "smaller or more quantized model";
  }
  const uint64_t room = available - fixed;
  const int64_t ctx = static_cast<int64_t>(room / (p.kv_bytes_per_token * static_cast<uint64_t>(p.sequences))) /
                      kCtxStep * kCtxStep;
  if (ctx >= kCtxStep) {
    s += "; num_ctx " + std::to_string(std::min(ctx, p.n_ctx)) + " would fit";
  } else {
    s += "; even num_ctx " + std::to_string(kCtxStep) + " would not fit";
  }
  if (p.sequences > 1) {
    const int64_t seqs = static_cast<int64_t>(room / (p.kv_bytes_per_token * static_cast<uint64_t>(p.n_ctx)));
    if (seqs >= 1) s += ", or " + std::to_string(seqs) + " parallel sequence" + (seqs == 1 ? "" : "s") + " at num_ctx " + std::to_string(p.n_ctx);
  }
  return s;
}

uint64_t available_system_memory() {
  if (const char* v = std::getenv("GPTQD_MEMORY_AVAILABLE"); v && *v >= '0' && *v <= '9') {
    return std::strtoull(v, nullptr, 10);
  }
  uint64_t avail = meminfo_available();
  if (const uint64_t room = cgroup_room(); room > 0 && (avail == 0 || room < avail)) avail = room;
  return avail;
}

}  // namespace gptqd::engine
