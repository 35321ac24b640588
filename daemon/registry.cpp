// SPDX-License-Identifier: Apache-2.0
// SQLite registry: schema, migrations and queries (daemon layer).
#include "daemon/registry.h"

#include <sqlite3.h>

#include <ctime>

#include "daemon/fault.h"
#include "engine/error.h"

namespace gptqd::daemon {
namespace {

// Each entry migrates from version i to i + 1, inside one transaction.
const char* const kMigrations[] = {
    R"sql(
CREATE TABLE models (
  id          INTEGER PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,
  created_at  INTEGER NOT NULL
);
CREATE TABLE tags (
  id            INTEGER PRIMARY KEY,
  model_id      INTEGER NOT NULL REFERENCES models(id) ON DELETE CASCADE,
  tag           TEXT NOT NULL,
  is_default    INTEGER NOT NULL DEFAULT 0,
  format        TEXT NOT NULL,
  architecture  TEXT NOT NULL,
  n_params      INTEGER NOT NULL,
  dtype         TEXT NOT NULL,
  source_kind   TEXT NOT NULL,
  source        TEXT NOT NULL,
  config_json   TEXT NOT NULL,
  size_bytes    INTEGER NOT NULL,
  digest        TEXT NOT NULL,
  created_at    INTEGER NOT NULL,
  UNIQUE (model_id, tag)
);
CREATE TABLE blobs (
  digest      TEXT PRIMARY KEY,
  size_bytes  INTEGER NOT NULL,
  created_at  INTEGER NOT NULL
);
CREATE TABLE files (
  tag_id     INTEGER NOT NULL REFERENCES tags(id) ON DELETE CASCADE,
  name       TEXT NOT NULL,
  digest     TEXT NOT NULL REFERENCES blobs(digest),
  PRIMARY KEY (tag_id, name)
);
CREATE INDEX files_by_digest ON files(digest);
CREATE TABLE jobs (
  id           INTEGER PRIMARY KEY,
  kind         TEXT NOT NULL,
  state        TEXT NOT NULL,
  target       TEXT NOT NULL,
  params_json  TEXT NOT NULL,
  error        TEXT NOT NULL DEFAULT '',
  created_at   INTEGER NOT NULL,
  updated_at   INTEGER NOT NULL
);
)sql",
    // v2: datasets for evaluation and calibration.
    R"sql(
CREATE TABLE datasets (
  id          INTEGER PRIMARY KEY,
  name        TEXT NOT NULL UNIQUE,
  created_at  INTEGER NOT NULL
);
CREATE TABLE dataset_files (
  dataset_id  INTEGER NOT NULL REFERENCES datasets(id) ON DELETE CASCADE,
  position    INTEGER NOT NULL,
  name        TEXT NOT NULL,
  digest      TEXT NOT NULL REFERENCES blobs(digest),
  PRIMARY KEY (dataset_id, position)
);
CREATE INDEX dataset_files_by_digest ON dataset_files(digest);
)sql",
    // v3: quantization jobs (finished layers, for resume) and the quality of quantized tags.
    R"sql(
ALTER TABLE tags ADD COLUMN state TEXT NOT NULL DEFAULT 'ready';
ALTER TABLE tags ADD COLUMN quality_json TEXT NOT NULL DEFAULT '';
CREATE TABLE job_layers (
  job_id       INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
  layer        INTEGER NOT NULL,
  report_json  TEXT NOT NULL,
  finished_at  INTEGER NOT NULL,
  PRIMARY KEY (job_id, layer)
);
)sql",
    // v4: Hub and URL downloads in progress: each partial under tmp/hub/ and how far it got.
    R"sql(
CREATE TABLE downloads (
  key         TEXT PRIMARY KEY,
  source      TEXT NOT NULL,
  size        INTEGER NOT NULL,
  state_json  TEXT NOT NULL,
  updated_at  INTEGER NOT NULL
);
)sql",
};
constexpr int kNumMigrations = sizeof(kMigrations) / sizeof(kMigrations[0]);
static_assert(kNumMigrations == Registry::kSchemaVersion);

int64_t now_s() { return static_cast<int64_t>(std::time(nullptr)); }

}  // namespace

// One prepared statement with bound parameters; finalized when it goes out of scope.
class Registry::Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) : db_(db) {
    if (sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt_, nullptr) != SQLITE_OK) {
      fail(ErrorCode::internal, "registry: cannot prepare statement: ", sqlite3_errmsg(db));
    }
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  Stmt& reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
    return *this;
  }
  Stmt& bind(int i, int64_t v) {
    check(sqlite3_bind_int64(stmt_, i, v));
    return *this;
  }
  Stmt& bind(int i, const std::string& v) {
    check(sqlite3_bind_text(stmt_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT));
    return *this;
  }
  // True while a row is available; false when done. Errors throw.
  bool step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    check(rc);
    return false;
  }
  void run() {
    while (step()) {
    }
  }
  int64_t i64(int col) { return sqlite3_column_int64(stmt_, col); }
  std::string text(int col) {
    const unsigned char* p = sqlite3_column_text(stmt_, col);
    return p ? std::string(reinterpret_cast<const char*>(p), static_cast<size_t>(sqlite3_column_bytes(stmt_, col)))
             : std::string();
  }

 private:
  void check(int rc) {
    if (rc == SQLITE_OK || rc == SQLITE_ROW || rc == SQLITE_DONE) return;
    ErrorCode code = (rc == SQLITE_FULL) ? ErrorCode::no_space
                     : (rc == SQLITE_CONSTRAINT) ? ErrorCode::conflict
                                                 : ErrorCode::io;
    std::string msg = sqlite3_errmsg(db_);
    sqlite3_reset(stmt_);
    fail(code, "registry: ", msg);
  }
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
};

namespace {
// Commits on success, rolls back on an exception.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) { exec("BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    exec("COMMIT");
    done_ = true;
  }

 private:
  void exec(const char* sql) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
    if (rc != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      fail(rc == SQLITE_FULL ? ErrorCode::no_space : ErrorCode::io, "registry: ", sql, " failed: ", msg);
    }
  }
  sqlite3* db_;
  bool done_ = false;
};
}  // namespace

std::unique_ptr<Registry> Registry::open(const std::filesystem::path& db_path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(db_path.c_str(), &db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOFOLLOW | SQLITE_OPEN_EXRESCODE,
                           nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    fail(ErrorCode::io, "cannot open the registry ", db_path.string(), ": ", msg);
  }
  std::unique_ptr<Registry> reg(new Registry(db));
  sqlite3_extended_result_codes(db, 0);
  try {
    reg->exec("PRAGMA busy_timeout = 5000");
    reg->exec("PRAGMA journal_mode = WAL");
    reg->exec("PRAGMA synchronous = FULL");
    reg->exec("PRAGMA foreign_keys = ON");
    Stmt check(db, "PRAGMA quick_check");
    if (check.step() && check.text(0) != "ok") {
      fail(ErrorCode::io, "the registry ", db_path.string(), " is damaged (", check.text(0),
           "); gptqd will not modify it — restore it from a backup or move it aside");
    }
    reg->migrate();
  } catch (const Error& e) {
    throw Error(e.code(), cat(e.what(), " [", db_path.string(), "]"));
  }
  return reg;
}

Registry::~Registry() { sqlite3_close(db_); }

void Registry::exec(const char* sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    fail(rc == SQLITE_FULL ? ErrorCode::no_space : ErrorCode::io, "registry: ", msg);
  }
}

int Registry::schema_version() {
  Stmt s(db_, "PRAGMA user_version");
  return s.step() ? static_cast<int>(s.i64(0)) : 0;
}

void Registry::migrate() {
  int version = schema_version();
  if (version > kSchemaVersion) {
    fail(ErrorCode::io, "registry schema version ", version, " is newer than this gptqd understands (",
         kSchemaVersion, "); upgrade gptqd");
  }
  for (; version < kSchemaVersion; ++version) {
    Transaction tx(db_);
    exec(kMigrations[version]);
    exec(cat("PRAGMA user_version = ", version + 1).c_str());
    tx.commit();
  }
}

RegistryTag Registry::read_tag_row(Stmt& s) {
  RegistryTag t;
  t.id = s.i64(0);
  t.name = s.text(1);
  t.tag = s.text(2);
  t.is_default = s.i64(3) != 0;
  t.format = s.text(4);
  t.architecture = s.text(5);
  t.n_params = static_cast<uint64_t>(s.i64(6));
  t.dtype = s.text(7);
  t.source_kind = s.text(8);
  t.source = s.text(9);
  t.config_json = s.text(10);
  t.size_bytes = static_cast<uint64_t>(s.i64(11));
  t.digest = s.text(12);
  t.created_at = s.i64(13);
  t.state = s.text(14);
  t.quality_json = s.text(15);
  return t;
}

#define GPTQD_TAG_COLUMNS                                                                           \
  "t.id, m.name, t.tag, t.is_default, t.format, t.architecture, t.n_params, t.dtype, t.source_kind, " \
  "t.source, t.config_json, t.size_bytes, t.digest, t.created_at, t.state, t.quality_json"

std::vector<RegistryFile> Registry::files_of(int64_t tag_id) {
  Stmt s(db_, "SELECT f.name, f.digest, b.size_bytes FROM files f JOIN blobs b ON b.digest = f.digest "
                    "WHERE f.tag_id = ? ORDER BY f.name");
  s.bind(1, tag_id);
  std::vector<RegistryFile> files;
  while (s.step()) files.push_back(RegistryFile{s.text(0), s.text(1), static_cast<uint64_t>(s.i64(2))});
  return files;
}

std::vector<RegistryTag> Registry::list() {
  std::vector<RegistryTag> tags;
  {
    Stmt s(db_, "SELECT " GPTQD_TAG_COLUMNS " FROM tags t JOIN models m ON m.id = t.model_id "
                      "ORDER BY m.name, t.tag");
    while (s.step()) tags.push_back(read_tag_row(s));
  }
  for (auto& t : tags) t.files = files_of(t.id);
  return tags;
}

std::optional<RegistryTag> Registry::find(const std::string& name, const std::string& tag) {
  std::optional<RegistryTag> found;
  if (tag.empty()) {
    Stmt s(db_, "SELECT " GPTQD_TAG_COLUMNS " FROM tags t JOIN models m ON m.id = t.model_id "
                      "WHERE m.name = ? AND t.is_default = 1");
    s.bind(1, name);
    if (s.step()) found = read_tag_row(s);
  } else {
    Stmt s(db_, "SELECT " GPTQD_TAG_COLUMNS " FROM tags t JOIN models m ON m.id = t.model_id "
                      "WHERE m.name = ? AND t.tag = ?");
    s.bind(1, name).bind(2, tag);
    if (s.step()) found = read_tag_row(s);
  }
  if (found) found->files = files_of(found->id);
  return found;
}

void Registry::add(const RegistryTag& t) {
  Transaction tx(db_);
  const int64_t now = t.created_at ? t.created_at : now_s();
  Stmt(db_, "INSERT OR IGNORE INTO models(name, created_at) VALUES (?, ?)").bind(1, t.name).bind(2, now).run();
  int64_t model_id = 0;
  {
    Stmt s(db_, "SELECT id FROM models WHERE name = ?");
    s.bind(1, t.name);
    if (!s.step()) fail(ErrorCode::internal, "registry: model row vanished");
    model_id = s.i64(0);
  }
  {
    Stmt s(db_, "SELECT 1 FROM tags WHERE model_id = ? AND tag = ?");
    s.bind(1, model_id).bind(2, t.tag);
    if (s.step()) fail(ErrorCode::conflict, "model ", t.name, ":", t.tag, " already exists");
  }
  bool first = false;
  {
    Stmt s(db_, "SELECT COUNT(*) FROM tags WHERE model_id = ?");
    s.bind(1, model_id);
    first = s.step() && s.i64(0) == 0;
  }
  Stmt(db_, "INSERT INTO tags(model_id, tag, is_default, format, architecture, n_params, dtype, source_kind, "
          "source, config_json, size_bytes, digest, created_at, state, quality_json) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)")
      .bind(1, model_id).bind(2, t.tag).bind(3, int64_t{first ? 1 : 0}).bind(4, t.format).bind(5, t.architecture)
      .bind(6, static_cast<int64_t>(t.n_params)).bind(7, t.dtype).bind(8, t.source_kind).bind(9, t.source)
      .bind(10, t.config_json).bind(11, static_cast<int64_t>(t.size_bytes)).bind(12, t.digest).bind(13, now)
      .bind(14, t.state).bind(15, t.quality_json).run();
  const int64_t tag_id = sqlite3_last_insert_rowid(db_);
  for (const auto& f : t.files) {
    Stmt(db_, "INSERT OR IGNORE INTO blobs(digest, size_bytes, created_at) VALUES (?, ?, ?)")
        .bind(1, f.digest).bind(2, static_cast<int64_t>(f.size_bytes)).bind(3, now).run();
    Stmt(db_, "INSERT INTO files(tag_id, name, digest) VALUES (?, ?, ?)").bind(1, tag_id).bind(2, f.name)
        .bind(3, f.digest).run();
  }
  // As a COMMIT whose sync fails: the transaction rolls back and the caller sees an I/O error.
  fault_eio("registry.add", "registry.db");
  tx.commit();
}

std::vector<std::string> Registry::remove(const std::string& name, const std::string& tag) {
  Transaction tx(db_);
  std::optional<RegistryTag> t = find(name, tag);
  if (!t) {
    fail(ErrorCode::not_found, "model ", tag.empty() ? name : name + ":" + tag, " not found");
  }
  std::vector<std::string> candidates;
  for (const auto& f : t->files) candidates.push_back(f.digest);
  Stmt(db_, "DELETE FROM tags WHERE id = ?").bind(1, t->id).run();
  int64_t model_id = 0;
  {
    Stmt s(db_, "SELECT id FROM models WHERE name = ?");
    s.bind(1, name);
    if (s.step()) model_id = s.i64(0);
  }
  int64_t remaining = 0;
  {
    Stmt s(db_, "SELECT COUNT(*) FROM tags WHERE model_id = ?");
    s.bind(1, model_id);
    if (s.step()) remaining = s.i64(0);
  }
  if (remaining == 0) {
    Stmt(db_, "DELETE FROM models WHERE id = ?").bind(1, model_id).run();
  } else if (t->is_default) {
    Stmt(db_, "UPDATE tags SET is_default = 1 WHERE id = (SELECT id FROM tags WHERE model_id = ? "
            "ORDER BY created_at, id LIMIT 1)")
        .bind(1, model_id).run();
  }
  std::vector<std::string> unreferenced;
  for (const auto& digest : candidates) {
    Stmt s(db_, "SELECT 1 FROM files WHERE digest = ?1 UNION ALL SELECT 1 FROM dataset_files WHERE digest = ?1 LIMIT 1");
    s.bind(1, digest);
    if (!s.step()) {
      Stmt(db_, "DELETE FROM blobs WHERE digest = ?").bind(1, digest).run();
      unreferenced.push_back(digest);
    }
  }
  tx.commit();
  return unreferenced;
}

std::set<std::string> Registry::blob_digests() {
  std::set<std::string> out;
  Stmt s(db_, "SELECT digest FROM blobs");
  while (s.step()) out.insert(s.text(0));
  return out;
}

void Registry::add_dataset(const std::string& name, const std::vector<RegistryFile>& files) {
  Transaction tx(db_);
  const int64_t now = now_s();
  {
    Stmt s(db_, "SELECT 1 FROM datasets WHERE name = ?");
    s.bind(1, name);
    if (s.step()) fail(ErrorCode::conflict, "dataset ", name, " already exists");
  }
  Stmt(db_, "INSERT INTO datasets(name, created_at) VALUES (?, ?)").bind(1, name).bind(2, now).run();
  const int64_t id = sqlite3_last_insert_rowid(db_);
  int64_t position = 0;
  for (const auto& f : files) {
    Stmt(db_, "INSERT OR IGNORE INTO blobs(digest, size_bytes, created_at) VALUES (?, ?, ?)")
        .bind(1, f.digest).bind(2, static_cast<int64_t>(f.size_bytes)).bind(3, now).run();
    Stmt(db_, "INSERT INTO dataset_files(dataset_id, position, name, digest) VALUES (?, ?, ?, ?)")
        .bind(1, id).bind(2, position++).bind(3, f.name).bind(4, f.digest).run();
  }
  tx.commit();
}

std::optional<RegistryDataset> Registry::find_dataset(const std::string& name) {
  RegistryDataset d;
  {
    Stmt s(db_, "SELECT id, name, created_at FROM datasets WHERE name = ?");
    s.bind(1, name);
    if (!s.step()) return std::nullopt;
    d.id = s.i64(0);
    d.name = s.text(1);
    d.created_at = s.i64(2);
  }
  Stmt s(db_, "SELECT f.name, f.digest, b.size_bytes FROM dataset_files f JOIN blobs b ON b.digest = f.digest "
              "WHERE f.dataset_id = ? ORDER BY f.position");
  s.bind(1, d.id);
  while (s.step()) d.files.push_back(RegistryFile{s.text(0), s.text(1), static_cast<uint64_t>(s.i64(2))});
  return d;
}

std::vector<RegistryDataset> Registry::datasets() {
  std::vector<std::string> names;
  {
    Stmt s(db_, "SELECT name FROM datasets ORDER BY name");
    while (s.step()) names.push_back(s.text(0));
  }
  std::vector<RegistryDataset> out;
  for (const auto& n : names) out.push_back(*find_dataset(n));
  return out;
}

void Registry::put_download(const RegistryDownload& dl) {
  Stmt(db_, "INSERT INTO downloads(key, source, size, state_json, updated_at) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET source = excluded.source, size = excluded.size, "
            "state_json = excluded.state_json, updated_at = excluded.updated_at")
      .bind(1, dl.key).bind(2, dl.source).bind(3, static_cast<int64_t>(dl.size)).bind(4, dl.state_json).bind(5, now_s()).run();
}

void Registry::remove_download(const std::string& key) {
  Stmt(db_, "DELETE FROM downloads WHERE key = ?").bind(1, key).run();
}

std::vector<RegistryDownload> Registry::downloads() {
  std::vector<RegistryDownload> out;
  Stmt s(db_, "SELECT key, source, size, state_json, updated_at FROM downloads ORDER BY key");
  while (s.step()) {
    out.push_back(RegistryDownload{s.text(0), s.text(1), static_cast<uint64_t>(s.i64(2)), s.text(3), s.i64(4)});
  }
  return out;
}

int64_t Registry::add_job(const std::string& kind, const std::string& target, const std::string& params_json,
                          const std::string& state) {
  const int64_t now = now_s();
  Stmt(db_, "INSERT INTO jobs(kind, state, target, params_json, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)")
      .bind(1, kind).bind(2, state).bind(3, target).bind(4, params_json).bind(5, now).bind(6, now).run();
  return sqlite3_last_insert_rowid(db_);
}

void Registry::finish_job(int64_t id, const std::string& state, const std::string& error) {
  Stmt(db_, "UPDATE jobs SET state = ?, error = ?, updated_at = ? WHERE id = ?")
      .bind(1, state).bind(2, error).bind(3, now_s()).bind(4, id).run();
}

int Registry::fail_running_jobs(const std::string& reason) {
  Stmt(db_, "UPDATE jobs SET state = 'failed', error = ?, updated_at = ? WHERE state = 'running' AND kind != 'quantize'")
      .bind(1, reason).bind(2, now_s()).run();
  return sqlite3_changes(db_);
}

std::vector<RegistryJob> Registry::jobs() {
  std::vector<RegistryJob> out;
  Stmt s(db_, "SELECT id, kind, state, target, params_json, error, created_at, updated_at FROM jobs ORDER BY id");
  while (s.step()) {
    out.push_back(RegistryJob{s.i64(0), s.text(1), s.text(2), s.text(3), s.text(4), s.text(5), s.i64(6), s.i64(7)});
  }
  return out;
}

std::optional<RegistryJob> Registry::job(int64_t id) {
  Stmt s(db_, "SELECT id, kind, state, target, params_json, error, created_at, updated_at FROM jobs WHERE id = ?");
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return RegistryJob{s.i64(0), s.text(1), s.text(2), s.text(3), s.text(4), s.text(5), s.i64(6), s.i64(7)};
}

void Registry::add_job_layer(int64_t job_id, int64_t layer, const std::string& report_json) {
  Transaction tx(db_);
  Stmt(db_, "INSERT OR REPLACE INTO job_layers(job_id, layer, report_json, finished_at) VALUES (?, ?, ?, ?)")
      .bind(1, job_id).bind(2, layer).bind(3, report_json).bind(4, now_s()).run();
  Stmt(db_, "UPDATE jobs SET updated_at = ? WHERE id = ?").bind(1, now_s()).bind(2, job_id).run();
  tx.commit();
}

std::vector<std::pair<int64_t, std::string>> Registry::job_layers(int64_t job_id) {
  std::vector<std::pair<int64_t, std::string>> out;
  Stmt s(db_, "SELECT layer, report_json FROM job_layers WHERE job_id = ? ORDER BY layer");
  s.bind(1, job_id);
  while (s.step()) out.emplace_back(s.i64(0), s.text(1));
  return out;
}

void Registry::set_tag_quality(const std::string& name, const std::string& tag, const std::string& state,
                               const std::string& quality_json) {
  Stmt(db_, "UPDATE tags SET state = ?, quality_json = ? WHERE tag = ? AND model_id = (SELECT id FROM models WHERE name = ?)")
      .bind(1, state).bind(2, quality_json).bind(3, tag).bind(4, name).run();
}

}  // namespace gptqd::daemon
