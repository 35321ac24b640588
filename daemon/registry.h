// SPDX-License-Identifier: Apache-2.0
// Registry: the SQLite database of models, tags, files (name -> blob digest), blobs and jobs
// (daemon layer). WAL, foreign keys, a versioned schema with migrations, prepared statements
// only. Used from the io thread alone, so it needs no locks.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <utility>
#include <string>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace gptqd::daemon {

struct RegistryFile {
  std::string name;        // file name inside the model folder
  std::string digest;      // "sha256:<hex>"
  uint64_t size_bytes = 0;
};

// One name:tag with its manifest.
struct RegistryTag {
  int64_t id = 0;
  std::string name;
  std::string tag;
  bool is_default = false;
  std::string format;        // "gguf" | "safetensors"
  std::string architecture;
  uint64_t n_params = 0;
  std::string dtype;
  std::string source_kind;   // "gguf-file" | "hf-folder" | "hf-hub" | "quantized"
  std::string source;
  std::string config_json;   // ModelConfig::to_json() text
  uint64_t size_bytes = 0;
  std::string digest;        // manifest digest
  int64_t created_at = 0;
  std::string state = "ready"; // "ready" | "failed-quality" (kept for inspection, served only on request)
  std::string quality_json;  // the quantization quality report ("" for pulled models)
  std::vector<RegistryFile> files;  // sorted by name
};

struct RegistryJob {
  int64_t id = 0;
  std::string kind;          // "pull" | "quantize" | "eval"
  std::string state;         // "queued" | "running" | "done" | "failed" | "cancelled"
  std::string target;        // NAME:TAG the job produces
  std::string params_json;
  std::string error;
  int64_t created_at = 0;
  int64_t updated_at = 0;
};

struct RegistryDataset {
  int64_t id = 0;
  std::string name;
  int64_t created_at = 0;
  std::vector<RegistryFile> files;  // in the order they were added
};

// A download in progress (Hub or URL): its partial is tmp/hub/<key>.partial.
struct RegistryDownload {
  std::string key;           // "lfs-<sha256>", "git-<blob sha1>", "url-<sha256 of the URL>"
  std::string source;        // "org/name@<sha>:<file>" or the URL, for the log (never a token)
  uint64_t size = 0;         // the file's size
  std::string state_json;    // HubClient DownloadState: bytes durable per range
  int64_t updated_at = 0;
};

class Registry {
 public:
  static constexpr int kSchemaVersion = 4;

  // Opens (creating if needed) and migrates the database. Refuses, with Error(io), a database
  // from a newer gptqd or one that fails its integrity check; never recreates or deletes it.
  static std::unique_ptr<Registry> open(const std::filesystem::path& db_path);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  int schema_version();

  std::vector<RegistryTag> list();
  // `tag` empty: the name's default tag.
  std::optional<RegistryTag> find(const std::string& name, const std::string& tag);

  // Adds name:tag and its files in one transaction, inserting blob rows that are new. The first
  // tag of a name becomes its default. Error(conflict) when name:tag exists.
  void add(const RegistryTag& t);

  // Removes name:tag in one transaction. When it was the default, the oldest remaining tag
  // becomes the default; the name goes when its last tag does. Returns the digests no tag
  // references any more (their blob rows are deleted in the same transaction).
  std::vector<std::string> remove(const std::string& name, const std::string& tag);

  std::set<std::string> blob_digests();

  // Datasets (text files for evaluation and calibration). Error(conflict) when NAME exists.
  void add_dataset(const std::string& name, const std::vector<RegistryFile>& files);
  std::optional<RegistryDataset> find_dataset(const std::string& name);
  std::vector<RegistryDataset> datasets();

  int64_t add_job(const std::string& kind, const std::string& target, const std::string& params_json,
                  const std::string& state = "running");
  // Sets a job's state (and error), e.g. queued -> running -> done.
  void finish_job(int64_t id, const std::string& state, const std::string& error);
  // Jobs left "running" by a daemon that died, except quantize jobs (they resume): marked failed
  // with `reason`. Returns how many.
  int fail_running_jobs(const std::string& reason);
  std::vector<RegistryJob> jobs();
  std::optional<RegistryJob> job(int64_t id);
  // A finished layer of a quantize job (its per-linear report), recorded once its file is durable.
  void add_job_layer(int64_t job_id, int64_t layer, const std::string& report_json);
  std::vector<std::pair<int64_t, std::string>> job_layers(int64_t job_id);  // by layer

  // Downloads in progress (upsert by key), so a restart resumes them.
  void put_download(const RegistryDownload& dl);
  void remove_download(const std::string& key);
  std::vector<RegistryDownload> downloads();

  void set_tag_quality(const std::string& name, const std::string& tag, const std::string& state,
                       const std::string& quality_json);

 private:
  explicit Registry(sqlite3* db) : db_(db) {}
  class Stmt;
  void exec(const char* sql);
  void migrate();
  std::vector<RegistryFile> files_of(int64_t tag_id);
  RegistryTag read_tag_row(Stmt& s);

  sqlite3* db_;
};

}  // namespace gptqd::daemon
