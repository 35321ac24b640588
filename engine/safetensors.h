// SPDX-License-Identifier: Apache-2.0
// safetensors: validated mmap reader (single file and sharded sets) and an atomic writer
// (engine layer). The rules are those of the reference parser (see gptq-reference.md B.10).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/mapped_file.h"

namespace gptqd::engine {

enum class StDtype {
  BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, F64, I64, U64,
};

std::string_view to_string(StDtype d);
std::optional<StDtype> parse_st_dtype(std::string_view s);  // exact, case-sensitive ("F16")
size_t st_dtype_size(StDtype d);                            // bytes per element

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;         // row-major; empty = scalar
  uint64_t n_elements = 0;
  uint64_t data_begin = 0;            // offsets relative to the data buffer (after the header)
  uint64_t data_end = 0;
  std::span<const std::byte> bytes;   // inside the mapping
};

class SafetensorsFile {
 public:
  // Maps and validates the whole file; Error(invalid_model) names the file and the broken rule.
  static SafetensorsFile open(const std::filesystem::path& path);
  static SafetensorsFile parse(std::shared_ptr<const MappedFile> file);

  const std::string& name() const { return file_->name(); }
  const std::vector<StTensor>& tensors() const { return tensors_; }   // sorted by data offset
  const StTensor* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

 private:
  std::shared_ptr<const MappedFile> file_;
  std::vector<StTensor> tensors_;
  std::unordered_map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

// Logical file name as in the model folder ("model-00001-of-00002.safetensors") -> real path.
using FileMap = std::map<std::string, std::filesystem::path>;

// All tensors of a model: one model.safetensors, or shards described by
// model.safetensors.index.json (every weight_map entry must name a plain file name present in
// `files`, each tensor must live in exactly the shard the index says, and every tensor of every
// shard must be in the index), or, without an index, every *.safetensors in `files` (a tensor
// name in two files is an error).
class SafetensorsSet {
 public:
  static SafetensorsSet open(const FileMap& files);
  // Builds the FileMap from the regular files directly inside `dir`.
  static SafetensorsSet open_dir(const std::filesystem::path& dir);

  const StTensor* find(std::string_view name) const;
  // Typed lookup: Error(invalid_model) naming the tensor, the expected dtype/shape and the actual.
  const StTensor& get(std::string_view name, StDtype dtype, std::span<const int64_t> shape) const;
  // Every tensor, ordered by name.
  std::vector<const StTensor*> all() const;
  const std::vector<SafetensorsFile>& files() const { return files_; }

 private:
  std::vector<SafetensorsFile> files_;
  std::map<std::string, std::pair<size_t, size_t>, std::less<>> index_;  // name -> (file, tensor)
};

// fp32 copy of an F32/F16/BF16 tensor; Error(unsupported) for other dtypes.
std::vector<float> st_to_f32(const StTensor& t);

struct StWriteTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;
  std::span<const std::byte> data;    // exactly n_elements * dtype size bytes
};

// Writes a safetensors file atomically: `path`.partial, fsync, rename, fsync of the directory.
// Tensors are laid out by descending dtype alignment, then name (as the reference writer does);
// the header is padded with spaces to a multiple of 8 bytes. Error(invalid_argument) for a size
// mismatch or a duplicate name, Error(io | no_space) from the file system.
void write_safetensors(const std::filesystem::path& path, std::span<const StWriteTensor> tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace gptqd::engine
