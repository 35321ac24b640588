// SPDX-License-Identifier: Apache-2.0
// BlobStore: the content-addressed files under <state>/blobs, staged through <state>/tmp with
// write -> fsync -> rename -> fsync(dir) so a crash never leaves a half file under a final name
// (daemon layer). Thread-safe: imports stage on worker threads while the io thread deletes.
#pragma once

#include <atomic>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace gptqd::daemon {

struct StagedFile {
  std::string name;                  // logical file name in the model ("config.json")
  std::filesystem::path tmp_path;    // tmp/<random>.partial, fsynced
  std::string digest;                // "sha256:<hex>"
  uint64_t size_bytes = 0;
  bool in_store = false;             // already a blob (tmp_path is its blob path, pinned): publish and
                                     // discard leave it alone
};

class BlobStore {
 public:
  // Creates <state>/blobs and <state>/tmp (mode 0750) if needed.
  explicit BlobStore(std::filesystem::path state_dir);

  std::filesystem::path blob_path(const std::string& digest) const;  // "sha256:x" -> blobs/sha256-x
  const std::filesystem::path& tmp_dir() const { return tmp_dir_; }
  // tmp/hub: downloads that survive restarts, each <key>.partial with a registry row. Created
  // by the first download (so tmp/ stays empty when nothing is in flight).
  const std::filesystem::path& partials_dir() const { return partials_dir_; }
  void ensure_partials_dir();
  std::filesystem::path partial_path(const std::string& key) const { return partials_dir_ / (key + ".partial"); }

  // Copies `src` to tmp/ while hashing it, then fsyncs. `on_progress(bytes_done)` is called
  // every few MiB; returning false cancels (Error(cancelled)). On any failure the partial file is
  // removed. ENOSPC is Error(no_space).
  StagedFile stage(const std::string& name, const std::filesystem::path& src,
                   const std::function<bool(uint64_t)>& on_progress);

  // Pins `f.digest` (so a concurrent delete keeps it) and moves the staged file into blobs/ —
  // or drops it when that blob already exists with the same size — then fsyncs blobs/.
  void publish(StagedFile& f);
  void unpin(const std::string& digest);
  // Pins `digest` when its blob exists with `size_bytes` and returns it as an in_store StagedFile
  // named `name`; nullopt (nothing pinned) when it does not.
  std::optional<StagedFile> pin_existing(const std::string& name, const std::string& digest, uint64_t size_bytes);
  // Deletes a blob file unless an import in flight pinned it. True when the file is gone.
  bool remove_unless_pinned(const std::string& digest);
  // Deletes a staged partial (best effort).
  static void discard(const StagedFile& f);

  // Start-up sweep: empties tmp/ except the partials in tmp/hub/ named in `keep_partials`
  // (file names, "<key>.partial") and deletes blob files whose digest is not in `known`.
  // Returns what it removed, for the log.
  std::vector<std::string> sweep(const std::set<std::string>& known_digests,
                                 const std::set<std::string>& keep_partials = {});

  // Error(no_space) unless the state file system has `need_bytes` plus a margin free.
  void check_free_space(uint64_t need_bytes) const;

 private:
  std::filesystem::path blobs_dir_;
  std::filesystem::path tmp_dir_;
  std::filesystem::path partials_dir_;
  std::mutex mutex_;                      // guards pins_ and the publish/remove decisions
  std::map<std::string, int> pins_;
};

// Lower-case hex of raw bytes (a digest).
std::string hex_of(const unsigned char* bytes, size_t n);
// sha256 of a byte string as "sha256:<hex>".
std::string sha256_digest(std::string_view bytes);

}  // namespace gptqd::daemon
