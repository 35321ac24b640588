// SPDX-License-Identifier: Apache-2.0
// SQLite registry: schema, models/tags/files, default tags, blob references, jobs, refusal of
// damaged or newer databases (daemon tests).
#include "daemon/registry.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <fstream>

#include "engine/error.h"
#include "tests/support/test_env.h"

namespace gptqd::daemon {
namespace {

RegistryTag make_tag(const std::string& name, const std::string& tag, std::vector<RegistryFile> files) {
  RegistryTag t;
  t.name = name;
  t.tag = tag;
  t.format = "gguf";
  t.architecture = "llama";
  t.n_params = 1000;
  t.dtype = "Q4_1";
  t.source_kind = "gguf-file";
  t.source = "/src/" + name;
  t.config_json = R"({"n_layers":2})";
  for (const auto& f : files) t.size_bytes += f.size_bytes;
  t.digest = "sha256:manifest-" + name + "-" + tag;
  t.files = std::move(files);
  return t;
}

std::string digest(char c) { return "sha256:" + std::string(64, c); }

TEST(Registry, CreatesSchemaWithWalAndForeignKeys) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  EXPECT_EQ(reg->schema_version(), Registry::kSchemaVersion);
  reg.reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "registry.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* s = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &s, nullptr);
  ASSERT_EQ(sqlite3_step(s), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(s, 0)), "wal");
  sqlite3_finalize(s);
  for (const char* table : {"models", "tags", "files", "blobs", "jobs"}) {
    std::string sql = std::string("SELECT COUNT(*) FROM ") + table;
    ASSERT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &s, nullptr), SQLITE_OK) << table;
    sqlite3_finalize(s);
  }
  sqlite3_close(db);
  // Reopening keeps the data and does not migrate again.
  auto again = Registry::open(dir / "registry.db");
  EXPECT_EQ(again->schema_version(), Registry::kSchemaVersion);
}

TEST(Registry, AddFindListRemove) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  reg->add(make_tag("m", "q4_1", {{"m.gguf", digest('a'), 100}}));
  auto found = reg->find("m", "");
  ASSERT_TRUE(found);
  EXPECT_EQ(found->tag, "q4_1");
  EXPECT_TRUE(found->is_default);
  ASSERT_EQ(found->files.size(), 1u);
  EXPECT_EQ(found->files[0].digest, digest('a'));
  EXPECT_EQ(found->files[0].size_bytes, 100u);
  EXPECT_EQ(found->size_bytes, 100u);
  EXPECT_TRUE(reg->find("m", "q4_1"));
  EXPECT_FALSE(reg->find("m", "fp16"));
  EXPECT_FALSE(reg->find("other", ""));

  // A second tag is not the default; NAME still resolves to the first.
  reg->add(make_tag("m", "fp16", {{"config.json", digest('b'), 5}, {"model.safetensors", digest('c'), 50}}));
  EXPECT_EQ(reg->find("m", "")->tag, "q4_1");
  EXPECT_FALSE(reg->find("m", "fp16")->is_default);
  EXPECT_EQ(reg->list().size(), 2u);
  EXPECT_EQ(reg->blob_digests().size(), 3u);

  // Same name:tag again is a conflict and changes nothing.
  try {
    reg->add(make_tag("m", "fp16", {{"x", digest('d'), 1}}));
    FAIL() << "duplicate name:tag accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::conflict);
  }
  EXPECT_EQ(reg->blob_digests().size(), 3u);

  // Removing the default promotes the remaining tag.
  auto freed = reg->remove("m", "");
  EXPECT_EQ(freed, std::vector<std::string>{digest('a')});
  auto def = reg->find("m", "");
  ASSERT_TRUE(def);
  EXPECT_EQ(def->tag, "fp16");
  EXPECT_TRUE(def->is_default);

  auto freed2 = reg->remove("m", "fp16");
  EXPECT_EQ(freed2.size(), 2u);
  EXPECT_TRUE(reg->list().empty());
  EXPECT_TRUE(reg->blob_digests().empty());
  try {
    reg->remove("m", "fp16");
    FAIL() << "removing a missing model succeeded";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::not_found);
  }
}

TEST(Registry, SharedBlobsStayUntilTheLastReference) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  reg->add(make_tag("a", "t", {{"w.gguf", digest('a'), 100}}));
  reg->add(make_tag("b", "t", {{"w.gguf", digest('a'), 100}, {"extra", digest('e'), 1}}));
  EXPECT_EQ(reg->blob_digests().size(), 2u);
  EXPECT_EQ(reg->remove("a", "t"), std::vector<std::string>{});  // still used by b
  EXPECT_EQ(reg->blob_digests().size(), 2u);
  auto freed = reg->remove("b", "t");
  std::sort(freed.begin(), freed.end());
  EXPECT_EQ(freed, (std::vector<std::string>{digest('a'), digest('e')}));
}

TEST(Registry, JobsAndRecovery) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  int64_t a = reg->add_job("pull", "m:t", "{}");
  int64_t b = reg->add_job("pull", "n:t", "{}");
  reg->finish_job(a, "done", "");
  EXPECT_EQ(reg->fail_running_jobs("interrupted"), 1);
  auto jobs = reg->jobs();
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].state, "done");
  EXPECT_EQ(jobs[1].id, b);
  EXPECT_EQ(jobs[1].state, "failed");
  EXPECT_EQ(jobs[1].error, "interrupted");
}

TEST(Registry, QuantizeJobsSurviveRecoveryWithTheirLayers) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  int64_t q = reg->add_job("quantize", "m:gptq", R"({"source":"m:t"})", "queued");
  int64_t r = reg->add_job("quantize", "m:gptq2", "{}");
  reg->add_job_layer(r, 0, R"({"layer":0})");
  reg->add_job_layer(r, 1, R"({"layer":1})");
  reg->add_job_layer(r, 1, R"({"layer":1,"again":true})");  // a replayed layer replaces its row
  EXPECT_EQ(reg->fail_running_jobs("interrupted"), 0) << "quantize jobs resume, they do not fail";
  EXPECT_EQ(reg->job(q)->state, "queued");
  EXPECT_EQ(reg->job(r)->state, "running");
  auto layers = reg->job_layers(r);
  ASSERT_EQ(layers.size(), 2u);
  EXPECT_EQ(layers[1].first, 1);
  EXPECT_EQ(layers[1].second, R"({"layer":1,"again":true})");
  EXPECT_TRUE(reg->job_layers(q).empty());
  EXPECT_FALSE(reg->job(999));
}

TEST(Registry, TagsCarryTheirQualityState) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  reg->add(make_tag("m", "t", {{"f", digest('a'), 1}}));
  RegistryTag q = make_tag("m", "gptq", {{"g", digest('b'), 1}});
  q.state = "failed-quality";
  q.quality_json = R"({"ratio":2.5})";
  reg->add(q);
  EXPECT_EQ(reg->find("m", "t")->state, "ready");
  EXPECT_EQ(reg->find("m", "gptq")->state, "failed-quality");
  EXPECT_EQ(reg->find("m", "gptq")->quality_json, R"({"ratio":2.5})");
  reg->set_tag_quality("m", "gptq", "ready", "{}");
  EXPECT_EQ(reg->find("m", "gptq")->state, "ready");
  EXPECT_EQ(reg->list().size(), 2u);
}

TEST(Registry, RefusesANewerSchema) {
  test::TempDir dir;
  Registry::open(dir / "registry.db").reset();
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "registry.db").c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  try {
    Registry::open(dir / "registry.db");
    FAIL() << "a schema from the future was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("newer than this gptqd"), std::string::npos) << e.what();
  }
}

// reliability.md D10: a damaged registry is refused, never recreated or deleted.
TEST(Registry, RefusesADamagedDatabaseAndLeavesItAlone) {
  test::TempDir dir;
  {
    auto reg = Registry::open(dir / "registry.db");
    for (int i = 0; i < 50; ++i) reg->add(make_tag("m" + std::to_string(i), "t", {{"f", digest('a'), 1}}));
  }
  // Corrupt bytes in the middle of the file (past the header page).
  auto path = dir / "registry.db";
  auto size = std::filesystem::file_size(path);
  ASSERT_GT(size, 8192u);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4096 + 100);
    std::string junk(2000, '\xa5');
    f.write(junk.data(), static_cast<std::streamsize>(junk.size()));
  }
  const std::string before = test::read_file(path);
  EXPECT_THROW(Registry::open(path), Error);
  EXPECT_EQ(test::read_file(path), before);
  // Not a database at all.
  test::write_file(dir / "junk.db", std::string(8192, 'x'));
  EXPECT_THROW(Registry::open(dir / "junk.db"), Error);
  EXPECT_EQ(test::read_file(dir / "junk.db"), std::string(8192, 'x'));
}

TEST(Registry, MigratesAVersion1DatabaseKeepingItsRows) {
  test::TempDir dir;
  {
    auto reg = Registry::open(dir / "registry.db");
    reg->add(make_tag("m", "t", {{"f", digest('a'), 1}}));
  }
  // Turn it back into what gptqd 0.1 schema v1 wrote.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((dir / "registry.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db,
                         "DROP TABLE downloads; DROP TABLE job_layers; ALTER TABLE tags DROP COLUMN state; "
                         "ALTER TABLE tags DROP COLUMN quality_json; DROP TABLE dataset_files; DROP TABLE datasets; "
                         "PRAGMA user_version = 1",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto reg = Registry::open(dir / "registry.db");
  EXPECT_EQ(reg->schema_version(), 4);
  ASSERT_TRUE(reg->find("m", "t"));
  EXPECT_EQ(reg->find("m", "t")->state, "ready");
  reg->add_job_layer(reg->add_job("quantize", "m:q", "{}"), 0, "{}");
  reg->add_dataset("d", {{"a.txt", digest('b'), 3}});
  EXPECT_TRUE(reg->find_dataset("d"));
  reg->put_download({"lfs-x", "o/n@s:f", 10, "{}", 0});
  EXPECT_EQ(reg->downloads().size(), 1u);
}

TEST(Registry, DownloadsAreUpsertedAndRemovedByKey) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  reg->put_download({"lfs-a", "o/n@s:model.safetensors", 100, R"({"done":[10]})", 0});
  reg->put_download({"git-b", "o/n@s:config.json", 5, R"({"done":[0]})", 0});
  reg->put_download({"lfs-a", "o/n@s:model.safetensors", 100, R"({"done":[60]})", 0});
  auto rows = reg->downloads();
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[0].key, "git-b");
  EXPECT_EQ(rows[1].key, "lfs-a");
  EXPECT_EQ(rows[1].state_json, R"({"done":[60]})");
  EXPECT_EQ(rows[1].size, 100u);
  EXPECT_GT(rows[1].updated_at, 0);
  reg->remove_download("lfs-a");
  reg.reset();
  reg = Registry::open(dir / "registry.db");  // durable across a reopen
  rows = reg->downloads();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].key, "git-b");
}

TEST(Registry, DatasetsKeepTheirBlobs) {
  test::TempDir dir;
  auto reg = Registry::open(dir / "registry.db");
  reg->add_dataset("wiki", {{"b.raw", digest('b'), 20}, {"a.raw", digest('a'), 10}});
  auto d = reg->find_dataset("wiki");
  ASSERT_TRUE(d);
  ASSERT_EQ(d->files.size(), 2u);
  EXPECT_EQ(d->files[0].name, "b.raw") << "files keep the order they were given in";
  EXPECT_EQ(d->files[1].size_bytes, 10u);
  EXPECT_EQ(reg->datasets().size(), 1u);
  try {
    reg->add_dataset("wiki", {});
    FAIL() << "duplicate dataset accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::conflict);
  }
  EXPECT_FALSE(reg->find_dataset("nope"));
  // A model sharing a blob with the dataset: removing the model keeps the blob.
  reg->add(make_tag("m", "t", {{"x", digest('a'), 10}}));
  EXPECT_TRUE(reg->remove("m", "t").empty());
  EXPECT_TRUE(reg->blob_digests().contains(digest('a')));
}

TEST(Registry, RefusesASymlinkedDatabase) {
  test::TempDir dir;
  Registry::open(dir / "real.db").reset();
  std::filesystem::create_symlink(dir / "real.db", dir / "registry.db");
  EXPECT_THROW(Registry::open(dir / "registry.db"), Error);
}

}  // namespace
}  // namespace gptqd::daemon
