// SPDX-License-Identifier: Apache-2.0
// MappedFile: a read-only view of a whole file (mmap) or of owned bytes (tests, fuzzers) (engine layer).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace gptqd::engine {

class MappedFile {
 public:
  // Maps `path` read-only. Throws Error(not_found | io) naming the path.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);
  // Wraps bytes already in memory; `name` stands in for the path in error messages.
  static std::shared_ptr<const MappedFile> from_bytes(std::vector<std::byte> bytes, std::string name);

  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();

  std::span<const std::byte> bytes() const { return {data_, size_bytes_}; }
  uint64_t size_bytes() const { return size_bytes_; }
  const std::string& name() const { return name_; }  // the path, or the name given to from_bytes

 private:
  MappedFile() = default;
  const std::byte* data_ = nullptr;
  uint64_t size_bytes_ = 0;
  bool mapped_ = false;
  std::vector<std::byte> owned_;
  std::string name_;
};

}  // namespace gptqd::engine
