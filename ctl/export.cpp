// SPDX-License-Identifier: Apache-2.0
// `gptqctl export NAME:TAG DIR`: copies a model's files out of the daemon's blob store into a
// plain folder, each one streamed to DIR/<name>.partial, checked against its sha256 and size,
// fsynced and renamed into place (ctl layer).
#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <memory>
#include <regex>
#include <set>
#include <utility>

#include "ctl/commands.h"
#include "ctl/render.h"

namespace gptqd::ctl {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

[[noreturn]] void fail_errno(const std::string& what, const fs::path& path) {
  throw CtlError(kExitFailed, what + " " + printable(path.string()) + ": " + std::strerror(errno));
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

std::string hex_of(const unsigned char* p, unsigned n) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) {
    s += digits[p[i] >> 4];
    s += digits[p[i] & 15];
  }
  return s;
}

// Streams one blob into `partial` while hashing it; checks size and digest, fsyncs.
void fetch_blob(Context& ctx, const protocol::FileEntry& f, const fs::path& partial, ProgressRenderer& progress) {
  Fd fd(::open(partial.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) fail_errno("cannot create", partial);
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> sha(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!sha || EVP_DigestInit_ex(sha.get(), EVP_sha256(), nullptr) != 1) throw CtlError(kExitFailed, "sha256 init failed");
  const std::string status = "exporting " + f.name;
  uint64_t n = 0;
  int shown_permille = -1;
  auto report = [&] {
    const int permille = f.size_bytes ? static_cast<int>(n * 1000 / f.size_bytes) : 1000;
    if (permille == shown_permille) return;  // at most a thousand redraws per file
    shown_permille = permille;
    progress.on_event(json{{"status", status}, {"total", f.size_bytes}, {"completed", n}});
  };
  report();
  HttpResult r = ctx.client.download("/api/blobs/" + f.digest, [&](std::string_view data) {
    n += data.size();
    if (n > f.size_bytes) {
      throw CtlError(kExitFailed, "gptqd sent more than the " + with_commas(f.size_bytes) + " bytes of " + printable(f.name));
    }
    EVP_DigestUpdate(sha.get(), data.data(), data.size());
    while (!data.empty()) {
      const ssize_t w = ::write(fd.get(), data.data(), data.size());
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) fail_errno("cannot write", partial);
      data.remove_prefix(static_cast<size_t>(w));
    }
    report();
  });
  if (r.status != 200) throw CtlError(kExitFailed, "cannot fetch " + printable(f.name) + ": " + error_message(r));
  if (n != f.size_bytes) {
    throw CtlError(kExitFailed, printable(f.name) + " is " + with_commas(n) + " bytes, the manifest says " +
                                    with_commas(f.size_bytes));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_DigestFinal_ex(sha.get(), md, &len);
  const std::string digest = "sha256:" + hex_of(md, len);
  if (digest != f.digest) {
    throw CtlError(kExitFailed, printable(f.name) + " does not match its digest: expected " + f.digest + ", got " + digest);
  }
  if (::fsync(fd.get()) != 0) fail_errno("cannot fsync", partial);
  if (::close(fd.release()) != 0) fail_errno("cannot close", partial);
}

void fsync_dir(const fs::path& dir) {
  Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (fd.get() < 0 || ::fsync(fd.get()) != 0) fail_errno("cannot fsync", dir);
}

}  // namespace

bool is_plain_file_name(std::string_view name, std::string* why) {
  auto no = [&](const char* reason) {
    if (why) *why = reason;
    return false;
  };
  if (name.empty()) return no("it is empty");
  if (name == "." || name == "..") return no("it names a directory");
  if (name.find('/') != std::string_view::npos) return no("it contains '/'");
  if (name.find('\0') != std::string_view::npos) return no("it contains a NUL byte");
  if (name.size() > 255) return no("it is longer than 255 bytes");
  if (name.size() >= 8 && name.substr(name.size() - 8) == ".partial") return no("export uses *.partial for its own files");
  return true;
}

int cmd_export(Context& ctx, const ExportArgs& args) {
  const std::string ref = checked_ref(args.model);
  json shown = call(ctx, "POST", "/api/show", protocol::ModelRequest{ref}.to_json().dump());
  protocol::ModelEntry model = protocol::ModelEntry::from_json(shown);
  if (model.files.empty()) throw CtlError(kExitFailed, printable(model.ref()) + " lists no files");

  // The manifest decides the names created in DIR: check every one before touching the disk.
  static const std::regex kDigest("sha256:[0-9a-f]{64}");
  std::set<std::string> names;
  uint64_t total = 0;
  for (const auto& f : model.files) {
    std::string why;
    if (!is_plain_file_name(f.name, &why)) {
      throw CtlError(kExitFailed, "refusing to export a file named '" + printable(f.name) + "': " + why);
    }
    if (!names.insert(f.name).second) throw CtlError(kExitFailed, "the manifest lists '" + printable(f.name) + "' twice");
    if (!std::regex_match(f.digest, kDigest)) {
      throw CtlError(kExitFailed, "'" + printable(f.name) + "' has a malformed digest '" + printable(f.digest) + "'");
    }
    total += f.size_bytes;
  }

  const fs::path dir(args.dir);
  std::error_code ec;
  if (fs::exists(dir, ec)) {
    if (!fs::is_directory(dir, ec)) throw CtlError(kExitFailed, printable(args.dir) + " exists and is not a directory");
    if (!fs::is_empty(dir, ec) && !args.force) {
      throw CtlError(kExitFailed, printable(args.dir) + " is not empty; pass --force to write into it (files of the same "
                                                         "name are replaced)");
    }
  } else if (!fs::create_directories(dir, ec) && ec) {
    throw CtlError(kExitFailed, "cannot create " + printable(args.dir) + ": " + ec.message());
  }
  if (auto space = fs::space(dir, ec); !ec && space.available < total) {
    throw CtlError(kExitFailed, "not enough space in " + printable(args.dir) + ": the files take " + human_bytes(total) +
                                    ", " + human_bytes(space.available) + " is free");
  }

  install_interrupt_handler();
  ProgressRenderer progress(ctx.err, ctx.tty);
  fs::path partial;
  auto remove_partial = [&] {
    progress.finish();
    if (!partial.empty()) fs::remove(partial, ec);
  };
  try {
    for (const auto& f : model.files) {
      partial = dir / (f.name + ".partial");
      fetch_blob(ctx, f, partial, progress);
      if (::rename(partial.c_str(), (dir / f.name).c_str()) != 0) fail_errno("cannot rename", partial);
      partial.clear();
    }
    fsync_dir(dir);
  } catch (const Interrupted&) {
    remove_partial();
    take_interrupt();
    throw CtlError(130, "export interrupted; removed the partial file");
  } catch (...) {
    remove_partial();
    throw;
  }
  progress.finish();

  if (ctx.json) {
    json files = json::array();
    for (const auto& f : model.files) files.push_back({{"name", f.name}, {"digest", f.digest}, {"size", f.size_bytes}});
    json out = {{"model", model.ref()}, {"dir", fs::absolute(dir, ec).lexically_normal().string()}, {"files", files},
                {"size", total}};
    print(ctx, out.dump() + "\n");
  } else {
    print(ctx, "exported " + printable(model.ref()) + " (" + std::to_string(model.files.size()) +
                   (model.files.size() == 1 ? " file, " : " files, ") + human_bytes(total) + ") to " +
                   printable(args.dir) + "\n");
  }
  return kExitOk;
}

}  // namespace gptqd::ctl
