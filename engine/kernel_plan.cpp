// SPDX-License-Identifier: Apache-2.0
// A GPTQ model's linears and the kernels that run them (engine layer).
#include "engine/kernel_plan.h"

namespace gptqd::engine {

std::vector<PlannedLinear> gptq_linears(const ModelConfig& c, const GptqConfig& gptq) {
  const int64_t q_dim = c.n_heads * c.head_dim, kv_dim = c.n_kv_heads * c.head_dim;
  const struct {
    const char* name;
    int64_t K, N;
  } shapes[] = {
      {"q_proj", c.hidden_size, q_dim},          {"k_proj", c.hidden_size, kv_dim},
      {"v_proj", c.hidden_size, kv_dim},         {"o_proj", q_dim, c.hidden_size},
      {"gate_proj", c.hidden_size, c.intermediate_size}, {"up_proj", c.hidden_size, c.intermediate_size},
      {"down_proj", c.intermediate_size, c.hidden_size},
  };
  std::vector<PlannedLinear> out;
  for (const auto& s : shapes) {
    kernels::LinearDesc d;
    d.bits = gptq.bits;
    d.group_size = gptq.group_size;
    d.act_order = gptq.desc_act;
    d.sym = gptq.sym;
    d.K = s.K;
    d.N = s.N;
    bool merged = false;
    for (auto& p : out) {
      if (p.desc.K == d.K && p.desc.N == d.N) {  // the GPTQ parameters are the model's, shared
        p.names += std::string(", ") + s.name;
        merged = true;
        break;
      }
    }
    if (!merged) out.push_back(PlannedLinear{s.name, d});
  }
  return out;
}

std::vector<PlannedLinear> gptq_linears(const ModelInfo& info) {
  if (!info.gptq) return {};
  return gptq_linears(info.config, *info.gptq);
}

std::vector<LinearPlan> plan_linears(const std::vector<PlannedLinear>& linears, const kernels::DeviceDesc& device,
                                     kernels::KernelSet built) {
  std::vector<LinearPlan> out;
  out.reserve(linears.size());
  for (const auto& l : linears) {
    out.push_back(LinearPlan{l, kernels::choose_kernel(device, l.desc, kPlanDecodeM, built),
                             kernels::choose_kernel(device, l.desc, kPlanPrefillM, built)});
  }
  return out;
}

const std::vector<CommonConfig>& common_linear_configs() {
  static const std::vector<CommonConfig> configs = [] {
    auto make = [](int bits, int64_t group, bool act_order, bool sym, int64_t K, int64_t N, const char* note) {
      kernels::LinearDesc d;
      d.bits = bits;
      d.group_size = group;
      d.act_order = act_order;
      d.sym = sym;
      d.K = K;
      d.N = N;
      return CommonConfig{kernels::describe_quantization(d) + " K=" + std::to_string(K) + " N=" + std::to_string(N),
                          note, d};
    };
    return std::vector<CommonConfig>{
        make(4, 128, false, true, 4096, 4096, "the usual GPTQ checkpoint"),
        make(4, 128, true, true, 4096, 4096, "act-order"),
        make(4, -1, false, true, 4096, 4096, "one group per row"),
        make(4, 32, false, true, 4096, 4096, "small groups"),
        make(4, 128, false, false, 4096, 4096, "zero points (gptq_v2)"),
        make(8, 128, false, true, 4096, 4096, "8-bit"),
        make(3, 128, false, true, 4096, 4096, "3-bit"),
        make(4, 96, false, true, 4096, 4096, "a group size that does not divide K"),
        make(4, 128, false, true, 576, 1536, "SmolLM2-135M gate/up"),
        make(4, 128, false, true, 10944, 2048, "K=10944: not a multiple of 128"),
    };
  }();
  return configs;
}

}  // namespace gptqd::engine
