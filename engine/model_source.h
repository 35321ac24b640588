// SPDX-License-Identifier: Apache-2.0
// Model sources: what a GGUF file or a Hugging Face-format folder holds, validated end to end
// before anything is stored (engine layer). The daemon's importer calls this twice: on the
// source (to fail fast) and on its staged copies (the copy is what gets registered).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/gptq_config.h"
#include "engine/model_config.h"

namespace gptqd::engine {

enum class ModelFormat { safetensors, gguf };
const char* to_string(ModelFormat f);

// One file of a model: its logical name in the model folder and where its bytes are now.
struct SourceFile {
  std::string name;               // "config.json", "model-00001-of-00002.safetensors", "x.gguf"
  std::filesystem::path path;
  uint64_t size_bytes = 0;
};

struct ModelInfo {
  ModelFormat format = ModelFormat::safetensors;
  ModelConfig config;
  std::optional<GptqConfig> gptq;  // set for GPTQ checkpoints
  uint64_t n_params = 0;           // logical parameters (GPTQ-packed weights counted unpacked)
  std::string dtype;               // "F16", "BF16", "F32", "Q4_1", "GPTQ-4bit-g128", ...
  std::vector<SourceFile> files;   // what the registry stores, sorted by name
  uint64_t size_bytes = 0;         // sum of file sizes
  std::string suggested_name;      // from the file or folder name, already a valid model name
  std::string suggested_tag;       // "fp16", "bf16", "q4_1", "gptq-4b-g128", ...
};

// Inspects a .gguf file or an HF-format folder (config.json + *.safetensors + tokenizer files).
// Throws Error(invalid_argument) when the path is neither, Error(invalid_model | unsupported)
// naming the file, tensor or key at fault.
ModelInfo inspect_model_source(const std::filesystem::path& source);

// Inspects a set of files by logical name (one .gguf, or the files of an HF folder).
ModelInfo inspect_model_files(std::vector<SourceFile> files, const std::string& display_name);

// The non-weight files an HF model folder contributes (config.json, tokenizer files, the
// safetensors index, README/LICENSE, ...), and the pickle weight names gptqd never loads.
bool is_hf_side_file(std::string_view name);
// The tag a model gets by default: "fp16", "bf16", "q4_1", "gptq-4b-g128", "gptq-4b-g128-act", ...
std::string tag_for_dtype(const ModelInfo& info);
bool is_pickle_name(std::string_view name);

// Lower-cases and maps anything outside [a-z0-9._-] to '-', collapsing runs; "" if nothing is left.
std::string sanitize_model_name(std::string_view text);

}  // namespace gptqd::engine
