// SPDX-License-Identifier: Apache-2.0
// LayerDriver: GPTQ (or RTN) over a whole Llama-family model, one decoder layer at a time, in
// small steps a scheduler can interleave with other work (gptq-reference.md A.1, A.10)
// (quantizer layer).
//
// Per layer, in true-sequential order, each stage's Hessian comes from activations produced
// with the earlier stages already quantized:
//   q,k,v  <- attn_norm(x)                 o        <- attention(qkv(.))
//   gate,up <- ffn_norm(x + o(.))          down     <- silu(gate(.)) * up(.)
// then the quantized layer runs forward to make the next layer's inputs. Memory: the inputs,
// attention outputs and mid-layer residuals of ONE layer for all samples, plus one layer's
// weights in fp32.
//
// Each finished layer is written atomically to <job_dir>/layer-NNNNN.safetensors (codes, fp32
// scales, zeros, g_idx and the per-linear report). A driver built with n_done_layers > 0 replays
// those layers' quantized weights forward to rebuild the inputs of the next one, so a resumed run
// is bit-identical to an uninterrupted one (same seed, same threads).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "engine/layer_pass.h"
#include "engine/llama_model.h"
#include "quantizer/checkpoint.h"
#include "quantizer/gptq.h"

namespace gptqd::quantizer {

enum class Method { gptq, rtn };
const char* to_string(Method m);

struct LinearReport {
  std::string name;          // "self_attn.q_proj"
  int64_t out_features = 0, in_features = 0;
  double loss = 0;           // GPTQ's sum (w-q)^2/d^2/2 (0 for RTN)
  double weight_error = 0;   // relative Frobenius error |W - Q| / |W|
  double damp_percent = 0;
  int damp_attempts = 0;
  bool rtn_fallback = false;
  int64_t n_dead = 0;
  double seconds = 0;
  nlohmann::json to_json() const;
  static LinearReport from_json(const nlohmann::json& j);
};

struct LayerResult {
  int64_t layer = 0;
  std::vector<LinearReport> linears;
  double seconds = 0;
};

struct DriverProgress {
  int64_t layer = 0;            // the layer being worked on (n_layers when done)
  int64_t n_layers = 0;
  std::string stage;            // "embed", "replay", "qkv", "o", "gate_up", "down", "forward", "write", "done"
  int64_t done = 0, total = 0;  // units (samples or linears) of this stage
  double fraction = 0;          // of the whole job, 0..1
};

class LayerDriver {
 public:
  // calibration: windows of equal length (ignored for RTN). n_done_layers: layers whose files
  // already exist in job_dir (a resume). Error(invalid_argument) for inconsistent input.
  LayerDriver(const engine::LlamaModel& source, std::vector<std::vector<int32_t>> calibration, Method method,
              const QuantizeOptions& options, std::filesystem::path job_dir, int64_t n_done_layers);
  ~LayerDriver();

  // One bounded unit of work (one sample through one stage, one linear's solve, one layer's
  // write). Returns false once every layer is written.
  bool step();
  // A layer whose file was written by the last step(), once.
  std::optional<LayerResult> take_finished_layer();
  DriverProgress progress() const;

  static std::filesystem::path layer_file(const std::filesystem::path& job_dir, int64_t layer);
  // The quantized linear `name` of `layer` from its file. Error(invalid_model) when the file is
  // missing or does not match.
  static QuantizedLinear read_linear(const std::filesystem::path& job_dir, int64_t layer, const std::string& name);
  static LayerResult read_layer_result(const std::filesystem::path& job_dir, int64_t layer);

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace gptqd::quantizer
