// SPDX-License-Identifier: Apache-2.0
// Which INT4 kernel runs each quantized linear of a GPTQ model on a device (engine layer): the
// model's linears as dispatch-table descriptions, merged where they are alike, and the table's
// answer for decode (M = 1) and prefill (M = kPlanPrefillM). Plain structs; the daemon turns them
// into `GET /api/gpu` and `POST /api/show` JSON.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/gptq_config.h"
#include "engine/model_config.h"
#include "engine/model_source.h"
#include "kernels/dispatch.h"

namespace gptqd::engine {

constexpr int64_t kPlanDecodeM = 1;     // one token per step
constexpr int64_t kPlanPrefillM = 512;  // a prompt chunk

// Linears of every decoder layer that share one description (all layers are alike).
struct PlannedLinear {
  std::string names;         // HF names joined by ", " in layer order: "k_proj, v_proj"
  kernels::LinearDesc desc;  // K = in_features, N = out_features
};

// q_proj [hidden -> n_heads*head_dim], k_proj/v_proj [hidden -> n_kv_heads*head_dim],
// o_proj [n_heads*head_dim -> hidden], gate_proj/up_proj [hidden -> intermediate],
// down_proj [intermediate -> hidden], with the GPTQ parameters of `gptq`; identical ones merged.
std::vector<PlannedLinear> gptq_linears(const ModelConfig& config, const GptqConfig& gptq);
// The same for an inspected model; empty when it is not a GPTQ checkpoint.
std::vector<PlannedLinear> gptq_linears(const ModelInfo& info);

struct LinearPlan {
  PlannedLinear linear;
  kernels::Choice decode;   // M = kPlanDecodeM
  kernels::Choice prefill;  // M = kPlanPrefillM
};

// The dispatch table's answer for each linear on `device`, with the kernels of `built`.
std::vector<LinearPlan> plan_linears(const std::vector<PlannedLinear>& linears, const kernels::DeviceDesc& device,
                                     kernels::KernelSet built = kernels::built_kernels());

// Configurations worth explaining on any machine: the usual GPTQ settings at K = N = 4096, and
// real shapes that tile badly (SmolLM2's K=576, the K=10944 of vLLM's "not divisible by
// min_thread_k = 128" reports).
struct CommonConfig {
  std::string label;  // "4-bit g128 sym K=4096 N=4096"
  std::string note;   // what the row shows ("act-order", "SmolLM2-135M gate/up"), or ""
  kernels::LinearDesc desc;
};
const std::vector<CommonConfig>& common_linear_configs();

}  // namespace gptqd::engine
