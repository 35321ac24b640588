// SPDX-License-Identifier: Apache-2.0
// Content-addressed blob store: hashing, dedup, pins against concurrent deletes, start-up sweep
// (daemon tests).
#include "daemon/blob_store.h"

#include <gtest/gtest.h>
#include <sys/stat.h>

#include "engine/error.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"

namespace gptqd::daemon {
namespace {

// sha256("abc"), FIPS 180-2 appendix B.1.
const std::string kAbcDigest = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

TEST(BlobStore, Sha256KnownAnswers) {
  EXPECT_EQ(sha256_digest("abc"), kAbcDigest);
  EXPECT_EQ(sha256_digest(""), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(BlobStore, StagePublishAndDedup) {
  test::TempDir dir;
  BlobStore store(dir.path());
  test::write_file(dir / "src.txt", "abc");
  StagedFile f = store.stage("a.txt", dir / "src.txt", nullptr);
  EXPECT_EQ(f.digest, kAbcDigest);
  EXPECT_EQ(f.size_bytes, 3u);
  EXPECT_EQ(f.tmp_path.parent_path(), dir / "tmp");
  EXPECT_TRUE(std::filesystem::exists(f.tmp_path));
  store.publish(f);
  const auto blob = store.blob_path(kAbcDigest);
  EXPECT_EQ(test::read_file(blob), "abc");
  EXPECT_FALSE(std::filesystem::exists(f.tmp_path));
  struct stat st {};
  ASSERT_EQ(::stat(blob.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0444u) << "blobs are immutable";

  // The same content again: the staged copy is dropped, the blob stays.
  StagedFile g = store.stage("b.txt", dir / "src.txt", nullptr);
  store.publish(g);
  EXPECT_FALSE(std::filesystem::exists(g.tmp_path));
  EXPECT_EQ(test::list_dir(dir / "blobs").size(), 1u);
  EXPECT_TRUE(test::list_dir(dir / "tmp").empty());
}

TEST(BlobStore, PinnedBlobsSurviveDeletes) {
  test::TempDir dir;
  BlobStore store(dir.path());
  test::write_file(dir / "src", "abc");
  StagedFile f = store.stage("x", dir / "src", nullptr);
  store.publish(f);  // pinned by the import in flight
  EXPECT_FALSE(store.remove_unless_pinned(kAbcDigest));
  EXPECT_TRUE(std::filesystem::exists(store.blob_path(kAbcDigest)));
  store.unpin(kAbcDigest);
  EXPECT_TRUE(store.remove_unless_pinned(kAbcDigest));
  EXPECT_FALSE(std::filesystem::exists(store.blob_path(kAbcDigest)));
}

TEST(BlobStore, CancelRemovesThePartial) {
  test::TempDir dir;
  BlobStore store(dir.path());
  test::write_file(dir / "src", std::string(10u << 20, 'z'));
  int calls = 0;
  try {
    store.stage("big", dir / "src", [&](uint64_t) { return ++calls < 2; });
    FAIL() << "cancelled stage returned";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::cancelled);
  }
  EXPECT_TRUE(test::list_dir(dir / "tmp").empty());
}

TEST(BlobStore, MissingSourceIsAnError) {
  test::TempDir dir;
  BlobStore store(dir.path());
  EXPECT_THROW(store.stage("x", dir / "nope", nullptr), Error);
  EXPECT_TRUE(test::list_dir(dir / "tmp").empty());
}

TEST(BlobStore, SweepRemovesPartialsAndOrphansOnly) {
  test::TempDir dir;
  BlobStore store(dir.path());
  test::write_file(dir / "src", "abc");
  StagedFile kept = store.stage("x", dir / "src", nullptr);
  store.publish(kept);
  store.unpin(kept.digest);
  test::write_file(dir / "src2", "orphan");
  StagedFile orphan = store.stage("y", dir / "src2", nullptr);
  store.publish(orphan);
  store.unpin(orphan.digest);
  test::write_file(dir / "tmp" / "dead.partial", "half");
  auto removed = store.sweep({kAbcDigest});
  EXPECT_EQ(removed.size(), 2u);
  EXPECT_EQ(test::list_dir(dir / "blobs"), std::vector<std::string>{"sha256-" + kAbcDigest.substr(7)});
  EXPECT_TRUE(test::list_dir(dir / "tmp").empty());
}

TEST(BlobStore, SweepKeepsTheHubPartialsTheRegistryNames) {
  test::TempDir dir;
  BlobStore store(dir.path());
  store.ensure_partials_dir();
  test::write_file(store.partial_path("lfs-keep"), "half of a file");
  test::write_file(store.partial_path("lfs-stray"), "nobody's");
  test::write_file(dir / "tmp" / "dead.partial", "half");
  auto removed = store.sweep({}, {"lfs-keep.partial"});
  EXPECT_EQ(removed, (std::vector<std::string>{"tmp/hub/lfs-stray.partial", "tmp/dead.partial"}));
  EXPECT_EQ(test::list_dir(dir / "tmp"), std::vector<std::string>{"hub"});
  EXPECT_EQ(test::list_dir(dir / "tmp" / "hub"), std::vector<std::string>{"lfs-keep.partial"});
  // Nothing to keep: tmp/ ends up empty, hub/ included.
  store.sweep({}, {});
  EXPECT_TRUE(test::list_dir(dir / "tmp").empty());
}

TEST(BlobStore, PinExistingTakesOnlyABlobOfThatSizeAndPublishLeavesItAlone) {
  test::TempDir dir;
  BlobStore store(dir.path());
  test::write_file(dir / "src", "abc");
  StagedFile f = store.stage("x", dir / "src", nullptr);
  store.publish(f);
  store.unpin(f.digest);
  EXPECT_FALSE(store.pin_existing("x", kAbcDigest, 4));
  EXPECT_FALSE(store.pin_existing("x", "sha256:" + std::string(64, '0'), 3));
  std::optional<StagedFile> again = store.pin_existing("copy", kAbcDigest, 3);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->in_store);
  EXPECT_EQ(again->name, "copy");
  store.publish(*again);
  BlobStore::discard(*again);
  EXPECT_TRUE(std::filesystem::exists(store.blob_path(kAbcDigest))) << "publish and discard leave a stored blob alone";
  EXPECT_FALSE(store.remove_unless_pinned(kAbcDigest)) << "pinned";
  store.unpin(kAbcDigest);
  EXPECT_TRUE(store.remove_unless_pinned(kAbcDigest));
}

TEST(BlobStore, FreeSpaceCheckNamesTheNumbers) {
  test::TempDir dir;
  BlobStore store(dir.path());
  store.check_free_space(1);
  try {
    store.check_free_space(uint64_t{1} << 60);
    FAIL() << "an exabyte fit";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::no_space);
    EXPECT_NE(std::string(e.what()).find("not enough free space"), std::string::npos);
  }
}

TEST(BlobStore, MalformedDigestIsRefused) {
  test::TempDir dir;
  BlobStore store(dir.path());
  EXPECT_THROW(store.blob_path("sha256:../../etc/passwd"), Error);
  EXPECT_THROW(store.blob_path("md5:abc"), Error);
}

}  // namespace
}  // namespace gptqd::daemon
