// SPDX-License-Identifier: Apache-2.0
// HubClient against a faithful local Hub (tests/support/hub_server.py: the Hub's endpoints and
// header names, the redirect to a CDN path, LFS metadata, revisions, gated repos, and injected
// faults): revisions, verified downloads, resume after a dropped connection and from a partial
// left by an earlier run (asserted on the bytes the server sent), checksum failures, 5xx and
// stalls, gated repos with and without a token (which never shows up in an error), unknown repos
// and revisions, path traversal in a listed file name, and the HF_* environment. With a
// DownloadState: parallel ranges (asserted on the Range headers and bytes the server saw),
// checkpoints that resume after a network failure or a cancel without refetching a durable byte,
// stale or malformed states, corruption in one range, a server that ignores Range, and plain
// URLs that never get the token.
#include "daemon/hub_client.h"

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <thread>
#include <tuple>

#include "engine/error.h"
#include "tests/support/local_hub.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"


namespace gptqd::daemon {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kMain = "1111111111111111111111111111111111111111";
const std::string kOld = "2222222222222222222222222222222222222222";

std::string sha256_hex(const std::string& data) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_Digest(data.data(), data.size(), d, &n, EVP_sha256(), nullptr);
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += digits[d[i] >> 4];
    out += digits[d[i] & 15];
  }
  return out;
}

// write_file, creating the folders on the way.
void put(const fs::path& p, const std::string& content) {
  fs::create_directories(p.parent_path());
  test::write_file(p, content);
}

// The local Hub: a python process on a loopback port, serving the fixture's folder.
using HubServer = test::LocalHub;

class HubClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // org/tiny: main = a tiny Llama (config, tokenizer, safetensors) plus a 300 KB random LFS
    // file; tag v1 = an older commit with one file.
    const fs::path repo = dir_ / "models" / "org" / "tiny";
    test::write_tiny_hf_model(repo / "commits" / kMain);
    std::mt19937 rng(7);
    big_.resize(300'000);
    for (auto& ch : big_) ch = static_cast<char>(rng());
    put(repo / "commits" / kMain / "extra.safetensors", big_);
    put(repo / "commits" / kOld / "config.json", "{\"old\": true}\n");
    put(repo / "refs.json", json{{"branches", {{"main", kMain}}}, {"tags", {{"v1", kOld}}}}.dump());
    // org/gated: needs the token hf_good.
    const fs::path gated = dir_ / "models" / "org" / "gated";
    put(gated / "commits" / kMain / "config.json", "{}\n");
    put(gated / "refs.json", json{{"branches", {{"main", kMain}}}, {"tags", json::object()}}.dump());
    put(gated / "repo.json", json{{"gated", true}, {"tokens", {"hf_good"}}}.dump());
    // org/evil: lists a file name that climbs out of the target folder.
    const fs::path evil = dir_ / "models" / "org" / "evil";
    put(evil / "commits" / kMain / "config.json", "{}\n");
    put(evil / "refs.json", json{{"branches", {{"main", kMain}}}, {"tags", json::object()}}.dump());
    put(evil / "repo.json", json{{"extra_siblings", {{{"rfilename", "../../evil.txt"}, {"size", 3}}}}}.dump());
    // org/big: one ~3 MiB LFS file whose size does not divide by 4 (the last range is shorter).
    const fs::path big = dir_ / "models" / "org" / "big";
    huge_.resize((3u << 20) + 5);
    for (auto& ch : huge_) ch = static_cast<char>(rng());
    put(big / "commits" / kMain / "big.safetensors", huge_);
    put(big / "refs.json", json{{"branches", {{"main", kMain}}}, {"tags", json::object()}}.dump());
    server_ = std::make_unique<HubServer>(dir_.path());
    ASSERT_FALSE(server_->url().empty()) << "the local Hub did not start";
  }

  HubSettings settings(const std::string& token = "") const {
    HubSettings s;
    s.endpoint = server_->url();
    s.token = token;
    s.retry_delay_ms = 10;
    s.stall_timeout_s = 2;
    return s;
  }

  // Files of 256 KiB and more download as 4 ranges.
  HubSettings parallel_settings(const std::string& token = "") const {
    HubSettings s = settings(token);
    s.parallel_min_bytes = 256 << 10;
    s.parallel_parts = 4;
    return s;
  }

  const HubFile& file(const HubRepoInfo& info, const std::string& name) {
    for (const auto& f : info.files) {
      if (f.path == name) return f;
    }
    ADD_FAILURE() << "no " << name;
    static HubFile none;
    return none;
  }

  // Bytes the server sent for request paths containing `needle`.
  uint64_t served(const std::string& needle) const {
    uint64_t n = 0;
    const json stats = server_->stats();  // a named local: items() of a temporary would dangle
    for (const auto& [path, bytes] : stats["bytes_served"].items()) {
      if (path.find(needle) != std::string::npos) n += bytes.get<uint64_t>();
    }
    return n;
  }

  // The Range headers of the GETs the server answered for /cdn/ paths (null: none sent).
  std::vector<json> cdn_ranges() const {
    std::vector<json> out;
    const json stats = server_->stats();
    for (const auto& r : stats["requests"]) {
      if (r["method"] == "GET" && r["path"].get<std::string>().rfind("/cdn/", 0) == 0) out.push_back(r["range"]);
    }
    return out;
  }

  // Clears the server's counters once the connections an aborted download left have settled
  // (a server thread may still be pushing bytes into a socket the client closed).
  void settle_and_reset() {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    server_->reset();
  }

  // Every byte the state counts is in the partial: ranges of ceil(size / n) bytes.
  void expect_durable_prefixes(const DownloadState& st, const fs::path& partial, const std::string& want) {
    const std::string have = test::read_file(partial);
    ASSERT_EQ(have.size(), want.size());
    const size_t n = st.done.size(), len = (want.size() + n - 1) / n;
    for (size_t i = 0; i < n; ++i) {
      const size_t begin = std::min(i * len, want.size());
      EXPECT_EQ(have.compare(begin, st.done[i], want, begin, st.done[i]), 0) << "range " << i;
    }
  }

  test::TempDir dir_;
  std::unique_ptr<HubServer> server_;
  std::string big_;
  std::string huge_;
};

TEST_F(HubClientTest, RevisionsResolveToCommitsWithTheirFiles) {
  HubClient hub(settings());
  const HubRepoInfo main = hub.repo_info(HubRepoRef::parse("org/tiny"));
  EXPECT_EQ(main.sha, kMain);
  EXPECT_EQ(main.repo_id, "org/tiny");
  const HubFile& big = file(main, "extra.safetensors");
  EXPECT_EQ(big.size, big_.size());
  EXPECT_EQ(big.lfs_sha256, sha256_hex(big_));  // LFS metadata, checked independently
  const HubFile& config = file(main, "config.json");
  EXPECT_TRUE(config.lfs_sha256.empty());
  EXPECT_EQ(config.blob_id.size(), 40u);
  EXPECT_EQ(hub.repo_info(HubRepoRef::parse("org/tiny@v1")).sha, kOld);
  EXPECT_EQ(hub.repo_info(HubRepoRef::parse("org/tiny@" + kOld)).files.size(), 1u);
}

TEST_F(HubClientTest, DownloadsAreVerifiedAndByteExact) {
  HubClient hub(settings());
  const HubRepoRef ref = HubRepoRef::parse("org/tiny");
  const HubRepoInfo info = hub.repo_info(ref);
  for (const HubFile& f : info.files) {
    const fs::path out = dir_ / "dl" / f.path;
    fs::create_directories(out.parent_path());
    uint64_t last = 0;
    const std::string sha = hub.download(ref, info.sha, f, out, [&](uint64_t done, uint64_t total) {
      EXPECT_LE(done, total);
      last = done;
      return true;
    });
    const std::string want = test::read_file(dir_ / "models/org/tiny/commits" / kMain / f.path);
    EXPECT_EQ(test::read_file(out), want) << f.path;
    EXPECT_EQ(sha, sha256_hex(want)) << f.path;
  }
  // The LFS files came through the redirect to the CDN path, each exactly once.
  uint64_t lfs_bytes = 0;
  for (const HubFile& f : info.files) lfs_bytes += f.lfs_sha256.empty() ? 0 : f.size;
  EXPECT_GE(lfs_bytes, big_.size());
  EXPECT_EQ(served("/cdn/"), lfs_bytes);
}

TEST_F(HubClientTest, ADroppedConnectionResumesWhereItStopped) {
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "drop_after"}, {"bytes", 100000}, {"times", 1}}}));
  HubClient hub(settings());
  const HubRepoRef ref = HubRepoRef::parse("org/tiny");
  const HubRepoInfo info = hub.repo_info(ref);
  const fs::path out = dir_ / "extra.partial";
  hub.download(ref, info.sha, file(info, "extra.safetensors"), out);
  EXPECT_EQ(test::read_file(out), big_);
  // 100000 bytes, then the rest from a Range request: nothing sent twice.
  EXPECT_EQ(served("/cdn/"), big_.size());
  bool ranged = false;
  const json stats = server_->stats();
  for (const auto& r : stats["requests"]) {
    if (r["path"].get<std::string>().rfind("/cdn/", 0) == 0 && r["range"].is_string()) {
      EXPECT_EQ(r["range"], "bytes=100000-");
      ranged = true;
    }
  }
  EXPECT_TRUE(ranged);
}

TEST_F(HubClientTest, APartialFromAnEarlierRunIsResumedNotRestarted) {
  HubClient hub(settings());
  const HubRepoRef ref = HubRepoRef::parse("org/tiny");
  const HubRepoInfo info = hub.repo_info(ref);
  const fs::path out = dir_ / "extra.partial";
  test::write_file(out, big_.substr(0, 250000));  // what a killed daemon left behind
  server_->reset();
  hub.download(ref, info.sha, file(info, "extra.safetensors"), out);
  EXPECT_EQ(test::read_file(out), big_);
  EXPECT_EQ(served("/cdn/"), big_.size() - 250000);
}

TEST_F(HubClientTest, AWrongByteFailsTheChecksumAndDeletesThePartial) {
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "wrong_byte"}, {"offset", 12345}, {"times", -1}}}));
  HubClient hub(settings());
  const HubRepoRef ref = HubRepoRef::parse("org/tiny");
  const HubRepoInfo info = hub.repo_info(ref);
  const fs::path out = dir_ / "extra.partial";
  try {
    hub.download(ref, info.sha, file(info, "extra.safetensors"), out);
    FAIL() << "a corrupted download was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_model);
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(HubClientTest, MoreBytesThanTheListedSizeAreRefused) {
  HubClient hub(settings());
  const HubRepoRef ref = HubRepoRef::parse("org/tiny");
  const HubRepoInfo info = hub.repo_info(ref);
  // The file grows after the listing: the server now sends more than the Hub said it has.
  put(dir_ / "models/org/tiny/commits" / kMain / "config.json", std::string(100000, 'x'));
  const fs::path out = dir_ / "config.partial";
  try {
    hub.download(ref, info.sha, file(info, "config.json"), out);
    FAIL() << "a file longer than listed was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_model);
    EXPECT_NE(std::string(e.what()).find("sent more than"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
}

TEST_F(HubClientTest, ServerErrorsAndStallsAreRetried) {
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "status"}, {"status", 500}, {"times", 2}},
                               {{"path", "config.json"}, {"kind", "stall"}, {"seconds", 30}, {"times", 1}}}));
  HubClient hub(settings());
  const HubRepoRef ref = HubRepoRef::parse("org/tiny");
  const HubRepoInfo info = hub.repo_info(ref);
  hub.download(ref, info.sha, file(info, "extra.safetensors"), dir_ / "a");
  EXPECT_EQ(test::read_file(dir_ / "a"), big_);
  const auto t0 = std::chrono::steady_clock::now();
  hub.download(ref, info.sha, file(info, "config.json"), dir_ / "b");  // stalled once: 2 s timeout, retry
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
  // Out of attempts: an io error that says the partial is kept.
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "status"}, {"status", 503}, {"times", -1}}}));
  HubSettings s = settings();
  s.max_attempts = 2;
  try {
    HubClient(s).download(ref, info.sha, file(info, "extra.safetensors"), dir_ / "c");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::io);
    EXPECT_NE(std::string(e.what()).find("resumes"), std::string::npos) << e.what();
  }
}

TEST_F(HubClientTest, GatedReposNeedAToken) {
  const HubRepoRef ref = HubRepoRef::parse("org/gated");
  try {
    HubClient(settings()).repo_info(ref);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::permission_denied);
    EXPECT_NE(std::string(e.what()).find("HF_TOKEN"), std::string::npos) << e.what();
  }
  try {
    HubClient(settings("hf_secret_wrong")).repo_info(ref);
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::permission_denied);
    EXPECT_NE(std::string(e.what()).find("no access"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("hf_secret_wrong"), std::string::npos) << "the token leaked: " << e.what();
  }
  HubClient hub(settings("hf_good"));
  const HubRepoInfo info = hub.repo_info(ref);
  hub.download(ref, info.sha, file(info, "config.json"), dir_ / "gated-config");
  EXPECT_EQ(test::read_file(dir_ / "gated-config"), "{}\n");
}

TEST_F(HubClientTest, UnknownReposAndRevisionsAreNotFound) {
  HubClient hub(settings());
  try {
    hub.repo_info(HubRepoRef::parse("org/nope"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::not_found);
    EXPECT_NE(std::string(e.what()).find("org/nope"), std::string::npos) << e.what();
  }
  try {
    hub.repo_info(HubRepoRef::parse("org/tiny@no-such-branch"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::not_found);
    EXPECT_NE(std::string(e.what()).find("has no revision 'no-such-branch'"), std::string::npos) << e.what();
  }
}

TEST_F(HubClientTest, PathTraversalInAListedNameIsRefused) {
  try {
    HubClient(settings()).repo_info(HubRepoRef::parse("org/evil"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_model);
    EXPECT_NE(std::string(e.what()).find("../../evil.txt"), std::string::npos) << e.what();
  }
}

TEST_F(HubClientTest, LargeFilesDownloadAsParallelRangesFetchingEachByteOnce) {
  HubClient hub(parallel_settings());
  const HubRepoRef ref = HubRepoRef::parse("org/big");
  const HubRepoInfo info = hub.repo_info(ref);
  const HubFile& f = file(info, "big.safetensors");
  ASSERT_EQ(f.size, huge_.size());
  DownloadState st;
  std::vector<DownloadState> checkpoints;
  DownloadOptions opts;
  opts.state = &st;
  opts.checkpoint = [&](const DownloadState& s) { checkpoints.push_back(s); };
  const fs::path out = dir_ / "big.partial";
  server_->reset();
  EXPECT_EQ(hub.download(ref, info.sha, f, out, {}, opts), sha256_hex(huge_));
  EXPECT_EQ(test::read_file(out), huge_);
  // Four ranges of ceil(size / 4) bytes, each asked for once, the last one open-ended.
  const uint64_t len = (huge_.size() + 3) / 4;
  const std::set<json> want{cat("bytes=0-", len - 1), cat("bytes=", len, "-", 2 * len - 1),
                            cat("bytes=", 2 * len, "-", 3 * len - 1), cat("bytes=", 3 * len, "-")};
  const std::vector<json> got = cdn_ranges();
  EXPECT_EQ(got.size(), 4u);
  EXPECT_EQ(std::set<json>(got.begin(), got.end()), want);
  EXPECT_EQ(served("/cdn/"), huge_.size());
  EXPECT_EQ(st.done.size(), 4u);
  EXPECT_EQ(st.completed(), huge_.size());
  ASSERT_FALSE(checkpoints.empty());
  EXPECT_EQ(checkpoints.back().done, st.done);  // the last checkpoint is the finished state
  // Without a state, even a big file is one plain stream.
  server_->reset();
  hub.download(ref, info.sha, f, dir_ / "stateless.partial");
  EXPECT_EQ(test::read_file(dir_ / "stateless.partial"), huge_);
  const std::vector<json> one = cdn_ranges();
  ASSERT_EQ(one.size(), 1u);
  EXPECT_TRUE(one[0].is_null());
  // A small file with a state is one range.
  DownloadState small;
  opts.state = &small;
  const HubRepoRef tiny = HubRepoRef::parse("org/tiny");
  const HubRepoInfo tiny_info = hub.repo_info(tiny);
  hub.download(tiny, tiny_info.sha, file(tiny_info, "config.json"), dir_ / "config.partial", {}, opts);
  EXPECT_EQ(test::read_file(dir_ / "config.partial"), test::read_file(dir_ / "models/org/tiny/commits" / kMain / "config.json"));
  EXPECT_EQ(small.done.size(), 1u);
}

TEST_F(HubClientTest, ACheckpointedStateResumesAfterANetworkFailureWithoutRefetching) {
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "drop_after"}, {"bytes", 100000}, {"times", 1}}}));
  HubSettings once = parallel_settings();
  once.max_attempts = 1;
  const HubRepoRef ref = HubRepoRef::parse("org/big");
  const HubRepoInfo info = HubClient(once).repo_info(ref);
  const HubFile& f = file(info, "big.safetensors");
  const fs::path out = dir_ / "big.partial";
  DownloadState st;
  DownloadState last;
  int n_checkpoints = 0;
  DownloadOptions opts;
  opts.state = &st;
  opts.checkpoint = [&](const DownloadState& s) {
    last = s;
    ++n_checkpoints;
  };
  try {
    HubClient(once).download(ref, info.sha, f, out, {}, opts);
    FAIL() << "a dropped connection with max_attempts=1 did not fail";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::io) << e.what();
    EXPECT_NE(std::string(e.what()).find("resumes"), std::string::npos) << e.what();
  }
  EXPECT_GE(n_checkpoints, 1);
  EXPECT_EQ(last.done, st.done);  // *state is what was last checkpointed
  ASSERT_EQ(last.done.size(), 4u);
  EXPECT_GT(last.completed(), 0u);
  EXPECT_LT(last.completed(), huge_.size());
  expect_durable_prefixes(last, out, huge_);
  // What a restarted daemon does: the stored JSON, the same partial. Only the missing bytes move.
  DownloadState resumed = DownloadState::from_json(last.to_json());
  const uint64_t kept = resumed.completed();
  settle_and_reset();
  opts.state = &resumed;
  EXPECT_EQ(HubClient(parallel_settings()).download(ref, info.sha, f, out, {}, opts), sha256_hex(huge_));
  EXPECT_EQ(test::read_file(out), huge_);
  EXPECT_EQ(served("/cdn/"), huge_.size() - kept);
  EXPECT_EQ(resumed.completed(), huge_.size());
}

TEST_F(HubClientTest, AStateThatDoesNotMatchThePartialStartsOver) {
  HubClient hub(parallel_settings());
  const HubRepoRef ref = HubRepoRef::parse("org/big");
  const HubRepoInfo info = hub.repo_info(ref);
  const HubFile& f = file(info, "big.safetensors");
  const fs::path out = dir_ / "big.partial";
  const uint64_t len = (huge_.size() + 3) / 4;
  // The partial is gone (cleaned up by hand): the state's counts mean nothing.
  DownloadState st{{len, 0, 5, 0}};
  DownloadOptions opts;
  opts.state = &st;
  server_->reset();
  hub.download(ref, info.sha, f, out, {}, opts);
  EXPECT_EQ(test::read_file(out), huge_);
  EXPECT_EQ(served("/cdn/"), huge_.size());
  // A partial shorter than the file (left by a stateless download) is not trusted either.
  test::write_file(out, huge_.substr(0, 1000));
  st = DownloadState{{1000}};
  server_->reset();
  hub.download(ref, info.sha, f, out, {}, opts);
  EXPECT_EQ(test::read_file(out), huge_);
  EXPECT_EQ(served("/cdn/"), huge_.size());
  // Nor is a state whose counts do not fit the file's ranges.
  st = DownloadState{{len + 1, 0, 0, 0}};
  server_->reset();
  hub.download(ref, info.sha, f, out, {}, opts);
  EXPECT_EQ(test::read_file(out), huge_);
  EXPECT_EQ(served("/cdn/"), huge_.size());
  // A state that says everything is there goes straight to the checksum.
  server_->reset();
  EXPECT_EQ(hub.download(ref, info.sha, f, out, {}, opts), sha256_hex(huge_));
  EXPECT_EQ(served("/cdn/"), 0u);
}

TEST_F(HubClientTest, CancellingThroughProgressCheckpointsAndResumes) {
  // One range stalls after 64 KiB, so the cancel finds the download half done.
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "stall"}, {"seconds", 5}, {"bytes", 65536}, {"times", 1}}}));
  HubClient hub(parallel_settings());
  const HubRepoRef ref = HubRepoRef::parse("org/big");
  const HubRepoInfo info = hub.repo_info(ref);
  const HubFile& f = file(info, "big.safetensors");
  const fs::path out = dir_ / "big.partial";
  DownloadState st;
  DownloadState last;
  int n_checkpoints = 0;
  DownloadOptions opts;
  opts.state = &st;
  opts.checkpoint = [&](const DownloadState& s) {
    last = s;
    ++n_checkpoints;
  };
  const auto caller = std::this_thread::get_id();
  bool on_caller = true;
  const auto t0 = std::chrono::steady_clock::now();
  try {
    hub.download(ref, info.sha, f, out, [&](uint64_t done, uint64_t total) {
      on_caller = on_caller && std::this_thread::get_id() == caller;
      EXPECT_EQ(total, huge_.size());
      return done < 3 * huge_.size() / 4;  // three ranges in: cancel
    }, opts);
    FAIL() << "the cancel was ignored";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::cancelled) << e.what();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));  // did not wait out the stall
  EXPECT_TRUE(on_caller);
  EXPECT_GE(n_checkpoints, 1);
  EXPECT_EQ(last.done, st.done);
  EXPECT_GE(last.completed(), 3 * huge_.size() / 4);
  EXPECT_LT(last.completed(), huge_.size());
  expect_durable_prefixes(last, out, huge_);
  const uint64_t kept = last.completed();
  settle_and_reset();
  EXPECT_EQ(hub.download(ref, info.sha, f, out, {}, opts), sha256_hex(huge_));
  EXPECT_EQ(test::read_file(out), huge_);
  EXPECT_EQ(served("/cdn/"), huge_.size() - kept);
}

TEST_F(HubClientTest, AWrongByteInOneRangeDeletesThePartialAndClearsTheState) {
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "wrong_byte"}, {"offset", 1000000}, {"times", -1}}}));
  HubClient hub(parallel_settings());
  const HubRepoRef ref = HubRepoRef::parse("org/big");
  const HubRepoInfo info = hub.repo_info(ref);
  const fs::path out = dir_ / "big.partial";
  DownloadState st;
  DownloadState last{{1}};
  DownloadOptions opts;
  opts.state = &st;
  opts.checkpoint = [&](const DownloadState& s) { last = s; };
  try {
    hub.download(ref, info.sha, file(info, "big.safetensors"), out, {}, opts);
    FAIL() << "a corrupted range was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_model);
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(st.done.empty());
  EXPECT_TRUE(last.done.empty());  // the stored state is cleared too
}

TEST_F(HubClientTest, AClientErrorOnOneRangeFailsTheDownload) {
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "status"}, {"status", 403}, {"times", 1}}}));
  HubClient hub(parallel_settings());
  const HubRepoRef ref = HubRepoRef::parse("org/big");
  const HubRepoInfo info = hub.repo_info(ref);
  DownloadState st;
  DownloadOptions opts;
  opts.state = &st;
  try {
    hub.download(ref, info.sha, file(info, "big.safetensors"), dir_ / "big.partial", {}, opts);
    FAIL() << "a 403 on one range was ignored";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::permission_denied) << e.what();
  }
  EXPECT_EQ(st.done.size(), 4u);  // kept for a later pull
  expect_durable_prefixes(st, dir_ / "big.partial", huge_);
}

TEST_F(HubClientTest, AServerThatIgnoresRangeStillGivesTheExactFile) {
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "no_range"}, {"times", -1}}}));
  HubClient hub(parallel_settings());
  const HubRepoRef ref = HubRepoRef::parse("org/big");
  const HubRepoInfo info = hub.repo_info(ref);
  const HubFile& f = file(info, "big.safetensors");
  DownloadState st;
  DownloadOptions opts;
  opts.state = &st;
  const fs::path out = dir_ / "big.partial";
  EXPECT_EQ(hub.download(ref, info.sha, f, out, {}, opts), sha256_hex(huge_));
  EXPECT_EQ(test::read_file(out), huge_);
  EXPECT_EQ(st.done, std::vector<uint64_t>{huge_.size()});  // fell back to one stream
  EXPECT_TRUE(cdn_ranges().back().is_null());                // from byte 0, without a Range
  // Resuming one stream there restarts at byte 0, with a state or without.
  st = DownloadState{{1000}};
  hub.download(ref, info.sha, f, out, {}, opts);
  EXPECT_EQ(test::read_file(out), huge_);
  test::write_file(out, huge_.substr(0, 1000));
  hub.download(ref, info.sha, f, out);
  EXPECT_EQ(test::read_file(out), huge_);
}

TEST_F(HubClientTest, PlainUrlsDownloadVerifiedAndWithoutTheToken) {
  HubClient hub(parallel_settings("hf_good"));
  const std::string sha = sha256_hex(huge_);
  const std::string url = server_->url() + "/cdn/" + sha + "/big.safetensors?expires=secret123";
  server_->reset();
  // No state: one stream; the size from a HEAD.
  UrlDownload r = hub.download_url(url, dir_ / "u1");
  EXPECT_EQ(r.sha256, sha);
  EXPECT_EQ(r.size, huge_.size());
  EXPECT_EQ(test::read_file(dir_ / "u1"), huge_);
  EXPECT_EQ(served("/cdn/"), huge_.size());
  // With a state and the expected sha256 (in upper case): parallel ranges.
  DownloadState st;
  DownloadOptions opts;
  opts.state = &st;
  std::string upper = sha;
  for (auto& ch : upper) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  r = hub.download_url(url, dir_ / "u2", upper, {}, opts);
  EXPECT_EQ(r.sha256, sha);
  EXPECT_EQ(test::read_file(dir_ / "u2"), huge_);
  EXPECT_EQ(st.done.size(), 4u);
  EXPECT_EQ(served("/cdn/"), 2 * huge_.size());
  // A wrong expected sha256: the partial goes.
  st = {};
  try {
    hub.download_url(url, dir_ / "u3", std::string(64, '0'), {}, opts);
    FAIL() << "a wrong sha256 was accepted";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_model);
    EXPECT_NE(std::string(e.what()).find("checksum"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("secret123"), std::string::npos) << "the query leaked: " << e.what();
  }
  EXPECT_FALSE(fs::exists(dir_ / "u3"));
  EXPECT_TRUE(st.done.empty());
  // A missing object is not_found; the message has no query either.
  try {
    hub.download_url(server_->url() + "/cdn/" + std::string(64, 'a') + "/x.bin?sig=secret123", dir_ / "u4");
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::not_found) << e.what();
    EXPECT_EQ(std::string(e.what()).find("secret123"), std::string::npos) << "the query leaked: " << e.what();
  }
  // A server that refuses HEAD (a presigned GET URL does): the size from a one-byte GET.
  server_->faults(json::array({{{"path", "^/cdn/"}, {"kind", "status"}, {"status", 403}, {"times", 1}}}));
  r = hub.download_url(url, dir_ / "u6");
  EXPECT_EQ(r.size, huge_.size());
  EXPECT_EQ(test::read_file(dir_ / "u6"), huge_);
  bool probed = false;
  for (const json& range : cdn_ranges()) probed = probed || range == "bytes=0-0";
  EXPECT_TRUE(probed);
  EXPECT_THROW(hub.download_url("ftp://example.com/x", dir_ / "u5"), Error);
  EXPECT_THROW(hub.download_url(url, dir_ / "u5", "not-hex"), Error);
  // The same host as the Hub, a token configured: still never sent.
  const json stats = server_->stats();
  int n_head = 0;
  for (const auto& req : stats["requests"]) {
    EXPECT_FALSE(req["authorization"].get<bool>()) << req.dump();
    n_head += req["method"] == "HEAD";
  }
  EXPECT_GE(n_head, 1);
  EXPECT_GE(stats["requests"].size(), 8u);
}

TEST(HubNames, DownloadStateRoundTripsThroughJson) {
  const DownloadState st{{786434, 0, 5, 18446744073709551615ull}};
  EXPECT_EQ(st.to_json(), "{\"done\":[786434,0,5,18446744073709551615]}");
  EXPECT_EQ(DownloadState::from_json(st.to_json()).done, st.done);
  EXPECT_EQ(DownloadState{}.completed(), 0u);
  EXPECT_EQ((DownloadState{{1, 2, 3}}.completed()), 6u);
  EXPECT_TRUE(DownloadState::from_json(DownloadState{}.to_json()).done.empty());
  std::string many = "{\"done\":[0";
  for (int i = 0; i < 64; ++i) many += ",0";
  many += "]}";
  for (const std::string& bad : std::vector<std::string>{"", "{", "null", "[]", "{\"done\":5}", "{\"done\":[-1]}", "{\"done\":[1.5]}",
                                "{\"done\":[1,\"2\"]}", "{\"done\":[null]}", "{\"other\":[1]}", "{\"done\":[1]} trailing", many}) {
    EXPECT_TRUE(DownloadState::from_json(bad).done.empty()) << bad;
  }
}

// The repo-info reply, parsed without a server (the shapes huggingface_hub gets from the Hub).
TEST(HubRepoInfoReply, FilesWithSizesIdsAndLfs) {
  const std::string sha(40, 'a');
  const json reply = {{"id", "org/tiny"},
                      {"sha", "ABCDEF0123456789ABCDEF0123456789ABCDEF01"},
                      {"siblings",
                       {{{"rfilename", "config.json"}, {"size", 12}, {"blobId", std::string(40, 'B')}},
                        {{"rfilename", "sub/model.safetensors"},
                         {"size", 134},
                         {"blobId", sha},
                         {"lfs", {{"sha256", std::string(64, 'C')}, {"size", 1ull << 40}, {"pointerSize", 134}}}}}}};
  const HubRepoInfo info = parse_repo_info(reply.dump(), HubRepoRef::parse("org/tiny"));
  EXPECT_EQ(info.repo_id, "org/tiny");
  EXPECT_EQ(info.sha, "abcdef0123456789abcdef0123456789abcdef01") << "ids are compared with lowercase digests";
  ASSERT_EQ(info.files.size(), 2u);
  EXPECT_EQ(info.files[0].path, "config.json");
  EXPECT_EQ(info.files[0].size, 12u);
  EXPECT_EQ(info.files[0].blob_id, std::string(40, 'b'));
  EXPECT_EQ(info.files[1].size, 1ull << 40) << "an LFS file's size is the object's, not the pointer's";
  EXPECT_EQ(info.files[1].lfs_sha256, std::string(64, 'c'));
}

TEST(HubRepoInfoReply, MalformedRepliesAreRefusedNamingTheProblem) {
  const HubRepoRef ref = HubRepoRef::parse("org/tiny@main");
  auto reply_with = [](json siblings) {
    return json{{"id", "org/tiny"}, {"sha", std::string(40, '1')}, {"siblings", std::move(siblings)}}.dump();
  };
  auto error_of = [&](const std::string& body) {
    try {
      parse_repo_info(body, ref);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_model) << "code: " << e.what();
      EXPECT_NE(std::string(e.what()).find("org/tiny@main"), std::string::npos) << "unnamed: " << e.what();
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  const json file = {{"rfilename", "a.json"}, {"size", 1}};
  EXPECT_NE(error_of(reply_with({file, file})).find("lists a.json twice"), std::string::npos);
  EXPECT_NE(error_of(reply_with({{{"rfilename", "a"}}, {{"rfilename", "a/b.json"}}})).find("lists a as a file and as a directory"),
            std::string::npos);
  EXPECT_NE(error_of(reply_with({{{"rfilename", "a/b.json"}}, {{"rfilename", "a"}}})).find("lists a as a file and as a directory"),
            std::string::npos);
  EXPECT_EQ(error_of(reply_with({{{"rfilename", "a/b.json"}}, {{"rfilename", "a/c.json"}}})), "accepted");
  // Sizes past uint64 or below zero were cast (undefined behaviour); now they are refused.
  EXPECT_NE(error_of(reply_with({{{"rfilename", "x"}, {"size", 1.8e20}}})).find("the size of x is not a byte count"), std::string::npos);
  EXPECT_NE(error_of(reply_with({{{"rfilename", "x"}, {"size", -1}}})).find("not a byte count"), std::string::npos);
  EXPECT_NE(error_of(reply_with({{{"rfilename", "x"}, {"lfs", {{"sha256", std::string(64, 'a')}, {"size", 2.5}}}}}))
                .find("the LFS size of x is not a byte count"),
            std::string::npos);
  EXPECT_NE(error_of(reply_with({{{"rfilename", "x"}, {"blobId", "xyz"}}})).find("bad git blob id for x"), std::string::npos);
  EXPECT_NE(error_of(reply_with({{{"rfilename", "x"}, {"lfs", {{"sha256", "00"}, {"size", 2}}}}})).find("bad LFS sha256 for x"),
            std::string::npos);
  EXPECT_NE(error_of(reply_with({{{"rfilename", "../x"}}})).find("will not write"), std::string::npos);
  EXPECT_NE(error_of(json{{"id", "org/tiny"}, {"sha", "main"}, {"siblings", json::array()}}.dump()).find("no commit sha"),
            std::string::npos);
  EXPECT_NE(error_of("{\"id\": 1}").find("is not what its API returns"), std::string::npos);
  EXPECT_NE(error_of("[").find("invalid JSON"), std::string::npos);
}

TEST(HubNames, ParallelKnobsComeFromTheEnvironment) {
  auto with_env = [](const char* min_bytes, const char* parts) {
    unsetenv("GPTQD_HUB_PARALLEL_MIN_BYTES");
    unsetenv("GPTQD_HUB_PARALLEL_PARTS");
    if (min_bytes) setenv("GPTQD_HUB_PARALLEL_MIN_BYTES", min_bytes, 1);
    if (parts) setenv("GPTQD_HUB_PARALLEL_PARTS", parts, 1);
    return HubSettings::from_environment();
  };
  HubSettings s = with_env(nullptr, nullptr);
  EXPECT_EQ(s.parallel_min_bytes, 64ull << 20);
  EXPECT_EQ(s.parallel_parts, 4);
  s = with_env("262144", "8");
  EXPECT_EQ(s.parallel_min_bytes, 262144u);
  EXPECT_EQ(s.parallel_parts, 8);
  for (const auto& [min_bytes, parts, var] : std::vector<std::tuple<const char*, const char*, std::string>>{
           {"12k", nullptr, "GPTQD_HUB_PARALLEL_MIN_BYTES"}, {"-1", nullptr, "GPTQD_HUB_PARALLEL_MIN_BYTES"},
           {nullptr, "0", "GPTQD_HUB_PARALLEL_PARTS"}, {nullptr, "65", "GPTQD_HUB_PARALLEL_PARTS"},
           {nullptr, "four", "GPTQD_HUB_PARALLEL_PARTS"}}) {
    try {
      with_env(min_bytes, parts);
      ADD_FAILURE() << var << " accepted a bad value";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
      EXPECT_NE(std::string(e.what()).find(var), std::string::npos) << e.what();
    }
  }
  with_env(nullptr, nullptr);
}

TEST(HubNames, RepoRefsAndFileNames) {
  HubRepoRef r = HubRepoRef::parse("TheBloke/Llama-2-7B-Chat-GPTQ@main");
  EXPECT_EQ(r.repo_id, "TheBloke/Llama-2-7B-Chat-GPTQ");
  EXPECT_EQ(r.kind, RepoKind::model);
  r = HubRepoRef::parse("datasets/Salesforce/wikitext@refs%2Fconvert%2Fparquet");
  EXPECT_EQ(r.kind, RepoKind::dataset);
  EXPECT_EQ(r.revision, "refs%2Fconvert%2Fparquet");
  for (const char* bad : {"noslash", "a/b/c", "/a", "a/", "a/b@", "a b/c", "../x", "a/.."}) {
    EXPECT_THROW(HubRepoRef::parse(bad), Error) << bad;
  }
  check_repo_file_name("sub/dir/model.safetensors");
  for (const char* bad : {"", "/etc/passwd", "../x", "a/../../x", "a//b", "a\\b", "./a", "a/."}) {
    EXPECT_THROW(check_repo_file_name(bad), Error) << bad;
  }
}

TEST(HubNames, SettingsFollowHuggingfaceHub) {
  test::TempDir d;
  auto with_env = [](std::initializer_list<std::pair<const char*, const char*>> vars) {
    for (const char* k : {"HF_ENDPOINT", "HF_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "XDG_CACHE_HOME"}) unsetenv(k);
    for (const auto& [k, v] : vars) setenv(k, v, 1);
    return HubSettings::from_environment();
  };
  const std::string home = (d / "hfhome").string(), token_path = (d / "tok").string();
  put(d / "hfhome" / "token", "hf_from_home\n");
  put(d / "tok", "  hf_from_path \n");
  HubSettings s = with_env({});
  EXPECT_EQ(s.endpoint, "https://huggingface.co");
  s = with_env({{"HF_ENDPOINT", "http://127.0.0.1:9/"}, {"HF_HOME", home.c_str()}});
  EXPECT_EQ(s.endpoint, "http://127.0.0.1:9");
  EXPECT_EQ(s.token, "hf_from_home");
  s = with_env({{"HF_TOKEN_PATH", token_path.c_str()}, {"HF_HOME", home.c_str()}});
  EXPECT_EQ(s.token, "hf_from_path");
  s = with_env({{"HF_TOKEN", "hf_env"}, {"HF_TOKEN_PATH", token_path.c_str()}});
  EXPECT_EQ(s.token, "hf_env");
  EXPECT_THROW(with_env({{"HF_ENDPOINT", "ftp://x"}}), Error);
  with_env({});
}

}  // namespace
}  // namespace gptqd::daemon
