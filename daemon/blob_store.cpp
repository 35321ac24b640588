// SPDX-License-Identifier: Apache-2.0
// Content-addressed blob store with crash-safe staging (daemon layer).
#include "daemon/blob_store.h"

#include <fcntl.h>
#include <openssl/evp.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <vector>

#include "engine/error.h"

namespace gptqd::daemon {
namespace {

namespace fs = std::filesystem;

constexpr size_t kCopyChunkBytes = 4u << 20;
constexpr uint64_t kFreeSpaceMarginBytes = 64ull << 20;

[[noreturn]] void fail_errno(int err, const std::string& what) {
  fail(err == ENOSPC || err == EDQUOT ? ErrorCode::no_space : ErrorCode::io, what, ": ", std::strerror(err));
}

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

void fsync_dir(const fs::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.fd < 0) fail_errno(errno, "cannot open " + dir.string());
  if (::fsync(fd.fd) != 0) fail_errno(errno, "fsync of " + dir.string() + " failed");
}

std::string random_hex(size_t n_bytes) {
  std::vector<unsigned char> buf(n_bytes);
  size_t got = 0;
  while (got < n_bytes) {
    ssize_t r = ::getrandom(buf.data() + got, n_bytes - got, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno(errno, "getrandom failed");
    }
    got += static_cast<size_t>(r);
  }
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned char c : buf) out += hex[c >> 4], out += hex[c & 15];
  return out;
}

bool valid_digest(const std::string& digest) {
  if (digest.size() != 7 + 64 || digest.rfind("sha256:", 0) != 0) return false;
  for (size_t i = 7; i < digest.size(); ++i) {
    char c = digest[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

void make_dir(const fs::path& p) {
  if (::mkdir(p.c_str(), 0750) != 0 && errno != EEXIST) fail_errno(errno, "cannot create " + p.string());
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    fail(ErrorCode::io, p.string(), " exists but is not a directory");
  }
}

using EvpCtx = std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)>;

}  // namespace

std::string hex_of(const unsigned char* bytes, size_t n) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (size_t i = 0; i < n; ++i) out += hex[bytes[i] >> 4], out += hex[bytes[i] & 15];
  return out;
}

std::string sha256_digest(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  return "sha256:" + hex_of(md, len);
}

BlobStore::BlobStore(fs::path state_dir)
    : blobs_dir_(state_dir / "blobs"), tmp_dir_(state_dir / "tmp"), partials_dir_(tmp_dir_ / "hub") {
  make_dir(blobs_dir_);
  make_dir(tmp_dir_);
}

void BlobStore::ensure_partials_dir() { make_dir(partials_dir_); }

fs::path BlobStore::blob_path(const std::string& digest) const {
  if (!valid_digest(digest)) fail(ErrorCode::internal, "malformed digest '", digest, "'");
  return blobs_dir_ / ("sha256-" + digest.substr(7));
}

StagedFile BlobStore::stage(const std::string& name, const fs::path& src,
                            const std::function<bool(uint64_t)>& on_progress) {
  Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.fd < 0) fail_errno(errno, "cannot open " + src.string());
  StagedFile staged;
  staged.name = name;
  staged.tmp_path = tmp_dir_ / (random_hex(12) + ".partial");
  Fd out(::open(staged.tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0640));
  if (out.fd < 0) fail_errno(errno, "cannot create " + staged.tmp_path.string());
  try {
    EvpCtx ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) fail(ErrorCode::internal, "sha256 init failed");
    std::vector<char> buf(kCopyChunkBytes);
    uint64_t done = 0;
    if (on_progress && !on_progress(0)) fail(ErrorCode::cancelled, "import cancelled");
    for (;;) {
      ssize_t n = ::read(in.fd, buf.data(), buf.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        fail_errno(errno, "read of " + src.string() + " failed");
      }
      if (n == 0) break;
      EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(n));
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::write(out.fd, buf.data() + off, static_cast<size_t>(n - off));
        if (w < 0) {
          if (errno == EINTR) continue;
          fail_errno(errno, "write of " + staged.tmp_path.string() + " failed");
        }
        off += w;
      }
      done += static_cast<uint64_t>(n);
      if (on_progress && !on_progress(done)) fail(ErrorCode::cancelled, "import cancelled");
    }
    if (::fsync(out.fd) != 0) fail_errno(errno, "fsync of " + staged.tmp_path.string() + " failed");
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    EVP_DigestFinal_ex(ctx.get(), md, &len);
    staged.digest = "sha256:" + hex_of(md, len);
    staged.size_bytes = done;
  } catch (...) {
    ::unlink(staged.tmp_path.c_str());
    throw;
  }
  return staged;
}

void BlobStore::publish(StagedFile& f) {
  if (f.in_store) return;  // pinned by pin_existing
  const fs::path final_path = blob_path(f.digest);
  std::lock_guard lock(mutex_);
  ++pins_[f.digest];
  struct stat st {};
  if (::lstat(final_path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
      static_cast<uint64_t>(st.st_size) == f.size_bytes) {
    ::unlink(f.tmp_path.c_str());  // same content is already stored
    return;
  }
  try {
    if (::chmod(f.tmp_path.c_str(), 0444) != 0) fail_errno(errno, "chmod of " + f.tmp_path.string() + " failed");
    if (::rename(f.tmp_path.c_str(), final_path.c_str()) != 0) {
      fail_errno(errno, "rename into " + final_path.string() + " failed");
    }
    fsync_dir(blobs_dir_);
  } catch (...) {
    if (--pins_[f.digest] <= 0) pins_.erase(f.digest);
    throw;
  }
}

std::optional<StagedFile> BlobStore::pin_existing(const std::string& name, const std::string& digest,
                                                  uint64_t size_bytes) {
  const fs::path p = blob_path(digest);
  std::lock_guard lock(mutex_);
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) != size_bytes) {
    return std::nullopt;
  }
  ++pins_[digest];
  return StagedFile{name, p, digest, size_bytes, true};
}

void BlobStore::unpin(const std::string& digest) {
  std::lock_guard lock(mutex_);
  auto it = pins_.find(digest);
  if (it != pins_.end() && --it->second <= 0) pins_.erase(it);
}

bool BlobStore::remove_unless_pinned(const std::string& digest) {
  const fs::path p = blob_path(digest);
  std::lock_guard lock(mutex_);
  if (pins_.contains(digest)) return false;
  return ::unlink(p.c_str()) == 0 || errno == ENOENT;
}

void BlobStore::discard(const StagedFile& f) {
  if (!f.in_store && !f.tmp_path.empty()) ::unlink(f.tmp_path.c_str());
}

std::vector<std::string> BlobStore::sweep(const std::set<std::string>& known_digests,
                                         const std::set<std::string>& keep_partials) {
  std::vector<std::string> removed;
  std::lock_guard lock(mutex_);
  bool kept_partials = false;
  std::error_code dir_ec;
  if (fs::is_directory(partials_dir_, dir_ec)) {
    for (const auto& entry : fs::directory_iterator(partials_dir_)) {
      const std::string fname = entry.path().filename().string();
      if (keep_partials.contains(fname) && entry.is_regular_file()) {
        kept_partials = true;
        continue;
      }
      std::error_code ec;
      fs::remove_all(entry.path(), ec);
      removed.push_back("tmp/hub/" + fname);
    }
  }
  for (const auto& entry : fs::directory_iterator(tmp_dir_)) {
    if (kept_partials && entry.path() == partials_dir_) continue;
    std::error_code ec;
    fs::remove_all(entry.path(), ec);
    if (entry.path() != partials_dir_) removed.push_back("tmp/" + entry.path().filename().string());
  }
  for (const auto& entry : fs::directory_iterator(blobs_dir_)) {
    std::string fname = entry.path().filename().string();
    std::string digest = fname.rfind("sha256-", 0) == 0 ? "sha256:" + fname.substr(7) : std::string();
    if (!digest.empty() && known_digests.contains(digest)) continue;
    std::error_code ec;
    fs::remove_all(entry.path(), ec);
    removed.push_back("blobs/" + fname);
  }
  if (!removed.empty()) fsync_dir(blobs_dir_);
  return removed;
}

void BlobStore::check_free_space(uint64_t need_bytes) const {
  struct statvfs vfs {};
  if (::statvfs(tmp_dir_.c_str(), &vfs) != 0) return;  // cannot tell: let the writes decide
  uint64_t free_bytes = static_cast<uint64_t>(vfs.f_bavail) * vfs.f_frsize;
  if (free_bytes < need_bytes + kFreeSpaceMarginBytes) {
    fail(ErrorCode::no_space, "not enough free space in ", tmp_dir_.parent_path().string(), ": need ",
         need_bytes + kFreeSpaceMarginBytes, " bytes (", need_bytes, " + a ", kFreeSpaceMarginBytes,
         "-byte margin), have ", free_bytes);
  }
}

}  // namespace gptqd::daemon
