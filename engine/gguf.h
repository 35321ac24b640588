// SPDX-License-Identifier: Apache-2.0
// GgufFile: a validated, read-only GGUF v2/v3 file — metadata, tensor infos, tensor bytes and
// dequantization to fp32 (engine layer). Every count, length and offset is checked against the
// real file before anything sized by it is allocated.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <variant>
#include <vector>

#include "engine/mapped_file.h"
#include "kernels/cpu/ggml_dequant.h"

namespace gptqd::engine {

// GGUF metadata value types (on-disk numbers).
enum class GgufValueType : uint32_t {
  uint8 = 0, int8 = 1, uint16 = 2, int16 = 3, uint32 = 4, int32 = 5, float32 = 6, boolean = 7,
  string = 8, array = 9, uint64 = 10, int64 = 11, float64 = 12,
};

const char* to_string(GgufValueType t);

struct GgufValue {
  GgufValueType type = GgufValueType::uint8;
  GgufValueType elem_type = GgufValueType::uint8;  // arrays only
  // Unsigned types -> uint64_t, signed -> int64_t, floats -> double, bool, string, array.
  std::variant<uint64_t, int64_t, double, bool, std::string, std::vector<GgufValue>> value;
};

struct GgufTensorInfo {
  std::string name;
  uint32_t type = 0;             // raw ggml type number (see kernels::cpu::GgmlType)
  std::vector<uint64_t> ne;      // ggml order: ne[0] is the fastest-varying (row length)
  uint64_t offset = 0;           // absolute byte offset in the file
  uint64_t n_elements = 0;
  uint64_t n_bytes = 0;
};

class GgufFile {
 public:
  // Maps and validates `path`. Throws Error(invalid_model) naming the file, the field and the
  // rule it broke; Error(unsupported) for GGUF v1 / big-endian files / unknown tensor types.
  static GgufFile open(const std::string& path);
  static GgufFile parse(std::shared_ptr<const MappedFile> file);

  uint32_t version() const { return version_; }
  uint64_t alignment() const { return alignment_; }
  const std::string& name() const { return file_->name(); }
  uint64_t file_size_bytes() const { return file_->size_bytes(); }

  // Metadata in file order; lookups by key.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return metadata_; }
  const GgufValue* find(std::string_view key) const;

  // Typed getters: Error(invalid_model) naming the key when it is missing (non-opt forms) or has
  // the wrong type / a negative or out-of-range value. Integer getters accept any integer type.
  uint64_t get_uint(std::string_view key) const;
  std::optional<uint64_t> get_uint_opt(std::string_view key) const;
  double get_float(std::string_view key) const;                       // float32/float64
  std::optional<double> get_float_opt(std::string_view key) const;
  std::string get_string(std::string_view key) const;
  std::optional<std::string> get_string_opt(std::string_view key) const;
  std::optional<bool> get_bool_opt(std::string_view key) const;
  std::vector<std::string> get_string_array(std::string_view key) const;
  std::vector<int64_t> get_int_array(std::string_view key) const;
  std::vector<double> get_float_array(std::string_view key) const;

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(std::string_view name) const;

  // The tensor's bytes inside the mapping (bounds were checked at parse).
  std::span<const std::byte> tensor_bytes(const GgufTensorInfo& t) const;
  // fp32 copy of the tensor in ggml order; Error(unsupported) naming tensor and type when the
  // type cannot be dequantized.
  std::vector<float> dequantize(const GgufTensorInfo& t) const;

 private:
  std::shared_ptr<const MappedFile> file_;
  uint32_t version_ = 0;
  uint64_t alignment_ = 32;
  uint64_t data_offset_ = 0;
  std::vector<std::pair<std::string, GgufValue>> metadata_;
  std::unordered_map<std::string, size_t> metadata_index_;
  std::vector<GgufTensorInfo> tensors_;
  std::unordered_map<std::string, size_t> tensor_index_;
};

}  // namespace gptqd::engine
