// SPDX-License-Identifier: Apache-2.0
// Memory planning (engine layer): what a model needs in memory -- weights, KV cache for a context
// and a number of sequences, scratch -- compared with what is available before anything is
// allocated, so a model that does not fit is refused with the numbers and the nearest setting
// that would fit, instead of an out-of-memory kill halfway through a load or a request. The CPU
// backend plans against system memory; a GPU backend plans the same way against device memory.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/model_config.h"

namespace gptqd::engine {

// The most tokens the forward pass runs at once: longer prompts go through in chunks of this
// many, and the activation scratch (and so the plan's workspace) is sized for one chunk. The
// daemon feeds prompts one such chunk per step, between other requests' tokens.
inline constexpr int64_t kForwardChunkTokens = 256;

struct MemoryPlan {
  uint64_t weights_bytes = 0;
  uint64_t kv_bytes_per_token = 0;  // one sequence, all layers, K and V
  int64_t n_ctx = 0;
  int64_t sequences = 0;            // KV caches of n_ctx tokens
  uint64_t workspace_bytes = 0;     // activations of one prefill chunk and the logits
  uint64_t kv_bytes() const { return kv_bytes_per_token * static_cast<uint64_t>(n_ctx * sequences); }
  uint64_t total() const { return weights_bytes + kv_bytes() + workspace_bytes; }
};

// kv_value_bytes: 4 for the CPU backend's fp32 caches.
MemoryPlan plan_memory(const ModelConfig& c, uint64_t weights_bytes, int64_t n_ctx, int64_t sequences,
                       int kv_value_bytes = 4);

// Empty when `plan` fits in `available` bytes. Otherwise one sentence for the user: what needs
// how much, what is available, and the nearest setting that fits (a shorter num_ctx, fewer
// sequences, or that the weights alone are too big). `what` names the model, `where` the memory
// ("system memory", "GPU memory").
std::string memory_misfit(const MemoryPlan& plan, uint64_t available, std::string_view what, std::string_view where);

// The memory a new allocation can count on: MemAvailable from /proc/meminfo, lowered to the
// cgroup's memory.max minus memory.current when that is smaller (a systemd MemoryMax=).
// GPTQD_MEMORY_AVAILABLE=<bytes> overrides it (tests; an operator's own cap). 0 when unknown.
uint64_t available_system_memory();

// "1.5 GiB", "312 MiB", "12 KiB".
std::string human_bytes(uint64_t bytes);

}  // namespace gptqd::engine
