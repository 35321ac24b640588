// SPDX-License-Identifier: Apache-2.0
// The GPTQ checkpoint writer: a standard AutoGPTQ/GPTQModel "gptq" folder (gptq-reference.md
// Part B) from a source HF model and its quantized linears (quantizer layer).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "engine/gptq_config.h"
#include "engine/model_source.h"
#include "quantizer/gptq.h"

namespace gptqd::quantizer {

struct CheckpointSpec {
  engine::GptqConfig config;                 // written to quantize_config.json and config.json
  uint64_t max_shard_bytes = 4'000'000'000;  // tensor bytes per shard ("4GB", GPTQModel's default)
  std::string quantizer_name = "gptqd";      // recorded in the safetensors __metadata__
};

// Produces the quantized linear with module path `prefix` ("model.layers.3.mlp.down_proj"), e.g.
// by reading it back from a per-layer job file. Called once per prefix, in layer order.
using LinearSource = std::function<QuantizedLinear(const std::string& prefix)>;

// The linears GPTQ quantizes in a Llama-family layer, in checkpoint order: self_attn.q_proj,
// k_proj, v_proj, o_proj, mlp.gate_proj, up_proj, down_proj.
const std::vector<std::string>& llama_linear_names();
// The module path of a linear: "model.layers.<layer>.<name>".
std::string linear_prefix(int64_t layer, const std::string& name);
// Every linear's module path in layer order and, within a layer, in llama_linear_names() order.
std::vector<std::string> llama_linear_prefixes(int64_t n_layers);

// Writes the checkpoint into `out_dir` (created; must not exist or be empty):
//  - the quantized linears as qweight/qzeros/scales/g_idx (+ the source's bias, fp16); zeros are
//    stored minus one when config.checkpoint_format is "gptq" (v1), as is for "gptq_v2";
//  - every other tensor of the source (embeddings, norms, lm_head) in fp16 under its own name;
//  - model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json when
//    the tensors exceed max_shard_bytes; __metadata__ {"format": "pt", ...};
//  - config.json = the source's with "quantization_config" and torch_dtype float16;
//    quantize_config.json; the source's tokenizer and generation files copied as they are.
// `source` must be an HF safetensors model (not GGUF, not already quantized):
// Error(unsupported) otherwise. Error(no_space | io) from the file system; on any error the
// partially written folder is removed.
void write_gptq_checkpoint(const engine::ModelInfo& source, const LinearSource& linears, const CheckpointSpec& spec,
                           const std::filesystem::path& out_dir);

}  // namespace gptqd::quantizer
