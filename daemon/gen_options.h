// SPDX-License-Identifier: Apache-2.0
// Ollama-style request options -> engine generation options, range-checked by the engine (daemon
// layer). Header-only so that the request fuzzer (fuzz/fuzz_json_body.cpp) runs exactly the
// mapping the handlers run.
#pragma once

#include <algorithm>
#include <cstdint>

#include "daemon/protocol.h"
#include "engine/error.h"
#include "engine/generate.h"

namespace gptqd::daemon {

// `default_seed` when the request names none (the handlers draw a fresh one per request, as
// Ollama does without a seed). Error(invalid_argument) naming the option that is out of range.
inline engine::GenerateOptions to_engine_options(const protocol::GenOptions& o, uint64_t default_seed) {
  engine::GenerateOptions g;
  auto& s = g.sampling;
  if (o.temperature) s.temperature = *o.temperature;
  if (o.top_k) s.top_k = static_cast<int>(std::clamp<int64_t>(*o.top_k, INT32_MIN, INT32_MAX));
  if (o.top_p) s.top_p = *o.top_p;
  if (o.min_p) s.min_p = *o.min_p;
  if (o.repeat_penalty) s.repeat_penalty = *o.repeat_penalty;
  if (o.repeat_last_n) s.repeat_last_n = static_cast<int>(std::clamp<int64_t>(*o.repeat_last_n, -2, INT32_MAX));
  if (o.presence_penalty) s.presence_penalty = *o.presence_penalty;
  if (o.frequency_penalty) s.frequency_penalty = *o.frequency_penalty;
  s.seed = o.seed ? *o.seed : default_seed;
  if (o.num_predict) {
    if (*o.num_predict < -2) fail(ErrorCode::invalid_argument, "num_predict must be -1 (no limit) or >= 0, not ", *o.num_predict);
    g.max_tokens = *o.num_predict < 0 ? -1 : *o.num_predict;
  }
  if (o.stop) g.stop = *o.stop;
  g.validate();
  return g;
}

}  // namespace gptqd::daemon
