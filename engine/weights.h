// SPDX-License-Identifier: Apache-2.0
// LlamaWeights: every weight of a Llama-family decoder, loaded from safetensors (fp16/bf16/fp32,
// or GPTQ kept packed for the INT4 kernels) or GGUF (dequantized at load), in one layout: Hugging
// Face rows, RoPE in the rotate_half convention (engine layer).
#pragma once

#include <cstdint>
#include <vector>

#include "engine/backend.h"
#include "engine/model_source.h"

namespace gptqd::engine {

struct LayerWeights {
  std::vector<float> attn_norm;    // [hidden]
  DenseMatrix qkv;                 // [q_dim + 2*kv_dim, hidden]: q, k, v rows stacked (one matmul)
  std::vector<float> qkv_bias;     // [q_dim + 2*kv_dim], empty without attention_bias
  DenseMatrix o;                   // [hidden, q_dim]
  std::vector<float> ffn_norm;     // [hidden]
  DenseMatrix gate_up;             // [2*intermediate, hidden]: gate rows then up rows
  DenseMatrix down;                // [hidden, intermediate]
};

struct LlamaWeights {
  DenseMatrix embed;               // [vocab, hidden]
  std::vector<float> norm;         // [hidden]
  DenseMatrix lm_head;             // [vocab, hidden]; empty when tied to embed
  std::vector<LayerWeights> layers;
  std::vector<float> rope_freq_factors;  // [head_dim/2] from GGUF rope_freqs.weight, else empty
  const DenseMatrix& output() const { return lm_head.empty() ? embed : lm_head; }
  uint64_t size_bytes() const;
};

// Loads the weights described by `info` (from inspect_model_files, so already validated).
// keep_f16: matrices stored as fp16 stay fp16 (exact; half the bytes) and GPTQ linears stay packed
// for the INT4 kernels (a quarter of fp16 at 4 bits); false: every matrix is dense fp32 (GPTQ
// dequantized at load).
LlamaWeights load_weights(const ModelInfo& info, bool keep_f16 = true);

// What load_weights(info, keep_f16).size_bytes() will be, from the file headers alone (no weight
// is read): the memory check before a load. Within a few per cent (GPTQ packing overheads are
// approximated); tested against real loads.
uint64_t estimate_weights_bytes(const ModelInfo& info, bool keep_f16 = true);

}  // namespace gptqd::engine
