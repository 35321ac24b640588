// SPDX-License-Identifier: Apache-2.0
// mmap-backed read-only files (engine layer).
#include "engine/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "engine/error.h"

namespace gptqd::engine {

std::shared_ptr<const MappedFile> MappedFile::open(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    fail(err == ENOENT ? ErrorCode::not_found : ErrorCode::io, "cannot open ", path.string(), ": ",
         std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    fail(ErrorCode::io, "cannot stat ", path.string(), ": ", std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(ErrorCode::invalid_model, path.string(), " is not a regular file");
  }
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->name_ = path.string();
  file->size_bytes_ = static_cast<uint64_t>(st.st_size);
  if (file->size_bytes_ > 0) {
    void* p = ::mmap(nullptr, file->size_bytes_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      int err = errno;
      ::close(fd);
      fail(ErrorCode::io, "cannot map ", path.string(), ": ", std::strerror(err));
    }
    file->data_ = static_cast<const std::byte*>(p);
    file->mapped_ = true;
  }
  ::close(fd);
  return file;
}

std::shared_ptr<const MappedFile> MappedFile::from_bytes(std::vector<std::byte> bytes, std::string name) {
  std::shared_ptr<MappedFile> file(new MappedFile());
  file->owned_ = std::move(bytes);
  file->data_ = file->owned_.data();
  file->size_bytes_ = file->owned_.size();
  file->name_ = std::move(name);
  return file;
}

MappedFile::~MappedFile() {
  if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_bytes_);
}

}  // namespace gptqd::engine
