// SPDX-License-Identifier: Apache-2.0
// gptqctl pull ORG/NAME through a real daemon against the local Hub (tests/support/hub_server.py):
// the registered files are the Hub's bytes, revisions resolve to commits, gated repos need the
// token (which never shows), kill -9 mid-download resumes from the partial, bad checksums and
// traversal names register nothing, pickles are refused before a byte of them moves, a full disk
// fails cleanly, two clients share one download, datasets come from repos and URLs (e2e).
#include <gtest/gtest.h>

#include <sqlite3.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/local_hub.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::DaemonProcess;

const std::string kA = "a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1";
const std::string kB = "b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2";

// About 8 MB of weights: big enough to interrupt a download of it half way.
test::TinyHfOptions medium_model(uint32_t seed) {
  test::TinyHfOptions o;
  o.shape.hidden = 256;
  o.shape.intermediate = 1024;
  o.shape.n_layers = 4;
  o.shape.n_heads = 4;
  o.shape.n_kv_heads = 2;
  o.shape.head_dim = 64;
  o.seed = seed;
  return o;
}

class HubPullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    hub_ = std::make_unique<test::LocalHub>(dir_ / "hub");
    ASSERT_FALSE(hub_->url().empty()) << "the local Hub did not start";
    test::write_tiny_hf_model(hub_->commit_dir("org/tiny", kA), medium_model(1));
    test::write_tiny_hf_model(hub_->commit_dir("org/tiny", kB), medium_model(2));
    hub_->set_refs("org/tiny", {{"main", kA}}, {{"v1", kB}});
    fs::create_directories(dir_ / "d");
    daemon_ = std::make_unique<DaemonProcess>(dir_ / "d");
    fs::create_directories(dir_ / "hf-home");
  }

  std::vector<std::string> hub_env(const std::string& token = "") const {
    std::vector<std::string> env = {"HF_ENDPOINT=" + hub_->url(), "HF_HOME=" + (dir_ / "hf-home").string()};
    if (!token.empty()) env.push_back("HF_TOKEN=" + token);
    return env;
  }
  void start(const std::string& token = "", std::vector<std::string> extra_env = {}) {
    std::vector<std::string> env = hub_env(token);
    env.insert(env.end(), extra_env.begin(), extra_env.end());
    ASSERT_TRUE(daemon_->start(env)) << daemon_->log();
  }
  json show(const std::string& model) const {
    auto r = test::http_request(daemon_->socket(), "POST", "/api/show", json{{"model", model}}.dump());
    return r.status == 200 ? json::parse(r.body) : json();
  }
  size_t n_models() const {
    auto r = test::http_request(daemon_->socket(), "GET", "/api/tags");
    return json::parse(r.body)["models"].size();
  }
  // Each registered file's digest is the sha256 of the Hub's file of that name.
  void expect_files_match(const json& shown, const fs::path& commit) const {
    ASSERT_TRUE(shown.contains("files")) << shown.dump();
    size_t n = 0;
    for (const auto& f : shown["files"]) {
      const std::string name = f["name"];
      EXPECT_EQ(f["digest"], "sha256:" + test::file_sha256(commit / name)) << name;
      ++n;
    }
    EXPECT_GE(n, 4u);
  }
  std::vector<std::string> partials() const {
    const fs::path p = daemon_->state_dir() / "tmp" / "hub";
    return fs::exists(p) ? test::list_dir(p) : std::vector<std::string>{};
  }

  test::TempDir dir_;
  std::unique_ptr<test::LocalHub> hub_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(HubPullTest, PullsAModelAtItsCommitAndKnowsWhenItIsUpToDate) {
  start();
  auto r = daemon_->ctl({"pull", "org/tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_NE(r.output.find("pulled tiny:fp16"), std::string::npos) << r.output;
  json shown = show("tiny:fp16");
  EXPECT_EQ(shown["source"], "org/tiny@" + kA);
  EXPECT_EQ(shown["source_kind"], "hf-hub");
  expect_files_match(shown, hub_->commit_dir("org/tiny", kA));
  EXPECT_TRUE(partials().empty());
  // Generation works on what came down.
  auto gen = test::http_request(daemon_->socket(), "POST", "/api/generate",
                                json{{"model", "tiny:fp16"}, {"prompt", "the"}, {"stream", false},
                                     {"options", {{"num_predict", 3}, {"temperature", 0}, {"num_ctx", 64}}}}.dump());
  EXPECT_EQ(gen.status, 200) << gen.body;

  // The same commit again: nothing fetched but the repo info.
  hub_->reset();
  r = daemon_->ctl({"pull", "org/tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(hub_->bytes_served("safetensors"), 0u);
  EXPECT_EQ(n_models(), 1u);
}

// The real model: SmolLM2-135M-Instruct as the HF folder tests/reference/gguf_to_hf.py writes from
// the test GGUF (fp16 safetensors, tokenizer.json, configs), served as org/SmolLM2-135M-Instruct.
TEST_F(HubPullTest, PullsSmolLM2AsAnHfRepo) {
  if (!fs::exists(test::test_model_path()) || !fs::exists(test::python())) {
    if (test::under_ci()) FAIL() << "the test model or the Python venv is missing (scripts/fetch-test-model.sh)";
    GTEST_SKIP() << "no test model";
  }
  const fs::path commit = hub_->commit_dir("HuggingFaceTB/SmolLM2-135M-Instruct", kA);
  auto conv = test::run_command({test::python().string(), (test::source_dir() / "tests/reference/gguf_to_hf.py").string(),
                                 test::test_model_path().string(), commit.string(), "--shards", "2"});
  ASSERT_EQ(conv.exit_code, 0) << conv.output;
  hub_->set_refs("HuggingFaceTB/SmolLM2-135M-Instruct", {{"main", kA}});
  start("", {"GPTQD_HUB_PARALLEL_MIN_BYTES=33554432"});
  auto r = daemon_->ctl({"pull", "HuggingFaceTB/SmolLM2-135M-Instruct"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  json shown = show("smollm2-135m-instruct:fp16");
  ASSERT_FALSE(shown.is_null()) << r.output;
  EXPECT_EQ(shown["architecture"], "llama");
  EXPECT_EQ(shown["dtype"], "F16");
  EXPECT_GT(shown["n_params"].get<uint64_t>(), 130'000'000u);
  expect_files_match(shown, commit);
  // Each shard went down in parallel ranges.
  int ranged = 0;
  const json stats = hub_->stats();
  for (const auto& req : stats["requests"]) {
    if (req["path"].get<std::string>().find(".safetensors") != std::string::npos && req["range"].is_string()) ++ranged;
  }
  EXPECT_GE(ranged, 8) << stats.dump();
}

TEST_F(HubPullTest, RevisionsByBranchTagAndShaAreResolvedAndStored) {
  start();
  auto r = daemon_->ctl({"pull", "org/tiny@v1", "--name", "tiny:v1"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_EQ(show("tiny:v1")["source"], "org/tiny@" + kB);
  expect_files_match(show("tiny:v1"), hub_->commit_dir("org/tiny", kB));
  r = daemon_->ctl({"pull", "org/tiny", "--revision", kA, "--name", "tiny:by-sha"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(show("tiny:by-sha")["source"], "org/tiny@" + kA);
  r = daemon_->ctl({"pull", "org/tiny@main", "--name", "tiny:main"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(show("tiny:main")["source"], "org/tiny@" + kA);
  // Files shared between tags are one blob; the two commits' weights differ.
  EXPECT_NE(show("tiny:v1")["digest"], show("tiny:main")["digest"]);

  r = daemon_->ctl({"pull", "org/tiny@no-such-branch"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no-such-branch"), std::string::npos) << r.output;
  r = daemon_->ctl({"pull", "org/nothing-here"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("org/nothing-here"), std::string::npos) << r.output;
}

TEST_F(HubPullTest, AGptqRepoBecomesAGptqTag) {
  test::write_tiny_hf_model(hub_->commit_dir("org/tiny-gptq", kA), test::tiny_gptq_options());
  hub_->set_refs("org/tiny-gptq", {{"main", kA}});
  start();
  auto r = daemon_->ctl({"pull", "org/tiny-gptq"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  json shown = show("tiny-gptq:gptq-4b-g16");
  ASSERT_FALSE(shown.is_null()) << r.output;
  EXPECT_EQ(shown["dtype"], "GPTQ-4bit-g16");
  expect_files_match(shown, hub_->commit_dir("org/tiny-gptq", kA));
}

TEST_F(HubPullTest, KillDashNineMidDownloadResumesFromThePartial) {
  const fs::path weights = hub_->commit_dir("org/tiny", kA) / "model.safetensors";
  const uint64_t size = fs::file_size(weights);
  const uint64_t first = 3u << 20;
  ASSERT_GT(size, first + (1u << 20));
  hub_->faults(json::array({{{"path", "model\\.safetensors"}, {"kind", "stall"}, {"bytes", first}, {"seconds", 120}}}));
  start();
  {
    test::StreamingRequest pull(daemon_->socket(), "/api/pull", json{{"model", "org/tiny"}}.dump());
    ASSERT_TRUE(pull.wait_for("\"completed\":" + std::to_string(first), std::chrono::seconds(60))) << pull.received();
    // Past a checkpoint (one a second) of the stalled download, then the power cord.
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    EXPECT_EQ(daemon_->stop(SIGKILL), 128 + SIGKILL);
  }
  // Content-addressed by the LFS sha256; the small files fetched before it are partials too.
  const std::string partial = "lfs-" + test::file_sha256(weights) + ".partial";
  auto has_partial = [&] {
    auto p = partials();
    return std::find(p.begin(), p.end(), partial) != p.end();
  };
  ASSERT_TRUE(has_partial()) << "the partial is kept under tmp/hub";
  hub_->faults(json::array());
  hub_->reset();
  start();
  EXPECT_TRUE(has_partial()) << "the restart kept the partial\n" << daemon_->log();
  auto r = daemon_->ctl({"pull", "org/tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  // Only the rest of the file moved the second time.
  const uint64_t served = hub_->bytes_served("model.safetensors");
  EXPECT_EQ(served, size - first) << "served " << served << " of " << size;
  expect_files_match(show("tiny:fp16"), hub_->commit_dir("org/tiny", kA));
  EXPECT_TRUE(partials().empty());
}

// The same with the weights in four parallel ranges, one of which stalls: the three others are
// done, and only what the stalled one lacks moves after the restart.
TEST_F(HubPullTest, ParallelRangesResumeAfterKillDashNineToo) {
  const fs::path weights = hub_->commit_dir("org/tiny", kA) / "model.safetensors";
  const uint64_t size = fs::file_size(weights);
  const uint64_t part = (size + 3) / 4, first = 256u << 10;
  hub_->faults(json::array({{{"path", "model\\.safetensors"}, {"kind", "stall"}, {"bytes", first}, {"seconds", 120}}}));
  const std::vector<std::string> env = {"GPTQD_HUB_PARALLEL_MIN_BYTES=1048576", "GPTQD_HUB_PARALLEL_PARTS=4"};
  start("", env);
  {
    test::StreamingRequest pull(daemon_->socket(), "/api/pull", json{{"model", "org/tiny"}}.dump());
    ASSERT_TRUE(pull.wait_for("\"completed\":" + std::to_string(3 * part + first), std::chrono::seconds(60))) << pull.received();
    std::this_thread::sleep_for(std::chrono::milliseconds(2500));
    EXPECT_EQ(daemon_->stop(SIGKILL), 128 + SIGKILL);
  }
  hub_->faults(json::array());
  hub_->reset();
  start("", env);
  auto r = daemon_->ctl({"pull", "org/tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_EQ(hub_->bytes_served("model.safetensors"), part - first);
  expect_files_match(show("tiny:fp16"), hub_->commit_dir("org/tiny", kA));
}

// Ctrl-C in gptqctl (the client hanging up) cancels the pull; the next one resumes.
TEST_F(HubPullTest, AClientThatHangsUpCancelsAndTheNextPullResumes) {
  const fs::path weights = hub_->commit_dir("org/tiny", kA) / "model.safetensors";
  const uint64_t size = fs::file_size(weights);
  const uint64_t first = 2u << 20;
  hub_->faults(json::array({{{"path", "model\\.safetensors"}, {"kind", "stall"}, {"bytes", first}, {"seconds", 30}}}));
  start();
  {
    test::StreamingRequest pull(daemon_->socket(), "/api/pull", json{{"model", "org/tiny"}}.dump());
    ASSERT_TRUE(pull.wait_for("\"completed\":" + std::to_string(first), std::chrono::seconds(60))) << pull.received();
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  }
  // The stalled download notices within a few seconds (a heartbeat event finds the socket closed).
  bool cancelled = false;
  for (int i = 0; i < 100 && !cancelled; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto jobs = test::http_request(daemon_->socket(), "GET", "/api/jobs");
    cancelled = jobs.body.find("\"cancelled\"") != std::string::npos;
  }
  ASSERT_TRUE(cancelled) << daemon_->log();
  hub_->faults(json::array());
  hub_->reset();
  auto r = daemon_->ctl({"pull", "org/tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_EQ(hub_->bytes_served("model.safetensors"), size - first);
  expect_files_match(show("tiny:fp16"), hub_->commit_dir("org/tiny", kA));
}

// A blob the store has (same sha256) is not fetched again, whichever model it came with.
TEST_F(HubPullTest, BlobsTheStoreHasAreNotFetchedAgain) {
  start();
  auto r = daemon_->ctl({"pull", "org/tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  hub_->reset();
  r = daemon_->ctl({"pull", "org/tiny", "--name", "copy"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_EQ(hub_->bytes_served("model.safetensors"), 0u);
  EXPECT_EQ(show("copy")["files"], show("tiny:fp16")["files"]);
}

TEST_F(HubPullTest, AWrongChecksumRegistersNothingAndDeletesThePartial) {
  hub_->faults(json::array({{{"path", "model\\.safetensors"}, {"kind", "wrong_byte"}, {"offset", 1000}, {"times", -1}}}));
  start();
  auto r = daemon_->ctl({"pull", "org/tiny"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("checksum"), std::string::npos) << r.output;
  EXPECT_EQ(n_models(), 0u);
  EXPECT_TRUE(partials().empty());
  // A clean Hub again: the pull works.
  hub_->faults(json::array());
  r = daemon_->ctl({"pull", "org/tiny"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST_F(HubPullTest, GatedReposNeedTheTokenWhichNeverShows) {
  test::write_tiny_hf_model(hub_->commit_dir("org/gated", kA));
  hub_->set_refs("org/gated", {{"main", kA}});
  hub_->set_repo_json("org/gated", {{"gated", true}, {"tokens", {"hf_good_token"}}});
  start();
  auto r = daemon_->ctl({"pull", "org/gated"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("HF_TOKEN"), std::string::npos) << r.output;
  daemon_->stop();
  start("hf_wrong_secret_value");
  r = daemon_->ctl({"pull", "org/gated"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_EQ(r.output.find("hf_wrong_secret_value"), std::string::npos) << r.output;
  daemon_->stop();
  start("hf_good_token");
  r = daemon_->ctl({"pull", "org/gated"});
  EXPECT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_EQ(n_models(), 1u);
  daemon_->stop();
  const std::string log = daemon_->log();
  EXPECT_EQ(log.find("hf_good_token"), std::string::npos);
  EXPECT_EQ(log.find("hf_wrong_secret_value"), std::string::npos);
  // Nor in the registry.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2((daemon_->state_dir() / "registry.db").c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  std::string dump;
  for (const char* sql : {"SELECT params_json || error FROM jobs", "SELECT source || config_json FROM tags"}) {
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, sql, -1, &st, nullptr), SQLITE_OK) << sql;
    while (sqlite3_step(st) == SQLITE_ROW) dump += reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
  }
  sqlite3_close(db);
  EXPECT_EQ(dump.find("hf_"), std::string::npos) << dump;
}

// The daemon's own configuration names the Hub and the token file when the environment does not.
TEST_F(HubPullTest, TheConfiguredEndpointAndTokenFileServeWhenTheEnvironmentIsSilent) {
  test::write_tiny_hf_model(hub_->commit_dir("org/gated", kA));
  hub_->set_refs("org/gated", {{"main", kA}});
  hub_->set_repo_json("org/gated", {{"gated", true}, {"tokens", {"hf_from_file"}}});
  test::write_file(dir_ / "token", "hf_from_file\n");
  ASSERT_TRUE(daemon_->start({"HF_HOME=" + (dir_ / "hf-home").string()},
                             {"--hub-endpoint", hub_->url(), "--hub-token-file", (dir_ / "token").string()}))
      << daemon_->log();
  auto r = daemon_->ctl({"pull", "org/gated"});
  EXPECT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_EQ(n_models(), 1u);
}

TEST_F(HubPullTest, PickleOnlyReposAreRefusedBeforeAByteOfThem) {
  const fs::path c = hub_->commit_dir("org/pickle", kA);
  test::write_tiny_hf_model(c);
  fs::rename(c / "model.safetensors", c / "pytorch_model.bin");
  hub_->set_refs("org/pickle", {{"main", kA}});
  start();
  auto r = daemon_->ctl({"pull", "org/pickle"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("pickle"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pytorch_model.bin"), std::string::npos) << r.output;
  EXPECT_EQ(hub_->bytes_served(".bin"), 0u);
  EXPECT_EQ(n_models(), 0u);

  // With a safetensors copy beside it, the pickle is skipped, not fetched.
  test::write_tiny_hf_model(hub_->commit_dir("org/both", kA));
  test::write_file(hub_->commit_dir("org/both", kA) / "pytorch_model.bin", "not really a pickle");
  hub_->set_refs("org/both", {{"main", kA}});
  r = daemon_->ctl({"pull", "org/both"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(hub_->bytes_served(".bin"), 0u);
}

TEST_F(HubPullTest, ATraversalNameFromTheServerIsRefused) {
  test::write_tiny_hf_model(hub_->commit_dir("org/evil", kA));
  hub_->set_refs("org/evil", {{"main", kA}});
  hub_->set_repo_json("org/evil", {{"extra_siblings", {{{"rfilename", "../../x.json"}, {"size", 3}}}}});
  start();
  auto r = daemon_->ctl({"pull", "org/evil"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("../../x.json"), std::string::npos) << r.output;
  EXPECT_EQ(n_models(), 0u);
  EXPECT_FALSE(fs::exists(daemon_->state_dir() / "x.json"));
  EXPECT_FALSE(fs::exists(daemon_->state_dir().parent_path() / "x.json"));
  EXPECT_EQ(hub_->bytes_served("/resolve/"), 0u);
}

TEST_F(HubPullTest, TwoClientsShareOneDownload) {
  hub_->faults(json::array({{{"path", "model\\.safetensors"}, {"kind", "stall"}, {"bytes", 1 << 20}, {"seconds", 2}}}));
  start();
  test::StreamingRequest a(daemon_->socket(), "/api/pull", json{{"model", "org/tiny"}}.dump());
  ASSERT_TRUE(a.wait_for("\"completed\":", std::chrono::seconds(60))) << a.received();
  test::StreamingRequest b(daemon_->socket(), "/api/pull", json{{"model", "org/tiny"}}.dump());
  ASSERT_TRUE(a.wait_for("\"status\":\"success\"", std::chrono::seconds(120))) << a.received();
  ASSERT_TRUE(b.wait_for("\"status\":\"success\"", std::chrono::seconds(120))) << b.received();
  EXPECT_NE(b.received().find("already in progress"), std::string::npos) << b.received();
  const uint64_t size = fs::file_size(hub_->commit_dir("org/tiny", kA) / "model.safetensors");
  EXPECT_EQ(hub_->bytes_served("model.safetensors"), size);
  EXPECT_EQ(n_models(), 1u);
}

TEST_F(HubPullTest, ProgressStreamHasOllamasShapeAndAPlan) {
  start();
  auto r = test::http_request(daemon_->socket(), "POST", "/api/pull", json{{"model", "org/tiny"}}.dump());
  ASSERT_EQ(r.status, 200) << r.body;
  auto events = test::ndjson(r.body);
  ASSERT_GE(events.size(), 3u);
  bool plan = false, file = false;
  for (const auto& ev : events) {
    ASSERT_TRUE(ev.contains("status")) << ev.dump();
    if (ev.contains("files")) {
      plan = true;
      EXPECT_EQ(ev["total"].get<uint64_t>(), [&] {
        uint64_t t = 0;
        for (const auto& f : ev["files"]) t += f["total"].get<uint64_t>();
        return t;
      }());
    }
    if (ev.value("file", "") == "model.safetensors" && ev.value("completed", 0) == ev.value("total", -1)) {
      file = true;
      EXPECT_EQ(ev["digest"], "sha256:" + test::file_sha256(hub_->commit_dir("org/tiny", kA) / "model.safetensors"));
    }
  }
  EXPECT_TRUE(plan);
  EXPECT_TRUE(file);
  EXPECT_EQ(events.back()["status"], "success");
  EXPECT_EQ(events.back()["revision"], kA);
}

TEST_F(HubPullTest, AFullDiskFailsCleanly) {
  // A real full disk: the state directory on a 48 MiB tmpfs in a mount namespace of its own.
  auto probe = test::run_command({"/usr/bin/unshare", "-rm", "true"});
  if (probe.exit_code != 0) GTEST_SKIP() << "no unprivileged mount namespaces here: " << probe.output;
  fs::create_directories(daemon_->state_dir());
  daemon_->set_wrapper({"/usr/bin/unshare", "-rm", "/bin/sh", "-c",
                        "mount -t tmpfs -o size=48m,mode=0750 tmpfs \"$0\" && exec \"$@\"", daemon_->state_dir().string()});
  start();
  auto r = daemon_->ctl({"pull", "org/tiny"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("not enough free space"), std::string::npos) << r.output;
  EXPECT_EQ(hub_->bytes_served("model.safetensors"), 0u) << "checked before the weights";
  EXPECT_EQ(n_models(), 0u);
  auto health = test::http_request(daemon_->socket(), "GET", "/api/health");
  EXPECT_EQ(health.status, 200);
  daemon_->stop();

  // ENOSPC in the middle of the download (injected where the bytes are written).
  daemon_->set_wrapper({});
  start("", {"GPTQD_FAULT_DISK_FULL=hub.download"});
  r = daemon_->ctl({"pull", "org/tiny"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("no space"), std::string::npos) << r.output;
  EXPECT_EQ(n_models(), 0u);
  health = test::http_request(daemon_->socket(), "GET", "/api/health");
  EXPECT_EQ(health.status, 200);
}

TEST_F(HubPullTest, DatasetsComeFromHubReposAndUrls) {
  const fs::path c = hub_->commit_dir("org/corpus", kA, /*dataset=*/true);
  fs::create_directories(c / "sub");
  test::write_file(c / "train.txt", "The quick brown fox.\n\nJumps over the lazy dog.\n");
  test::write_file(c / "sub" / "valid.jsonl", "{\"text\": \"one\"}\n{\"text\": \"two\"}\n");
  hub_->set_refs("org/corpus", {{"main", kA}}, {}, /*dataset=*/true);
  start();
  auto r = daemon_->ctl({"dataset", "pull", "org/corpus", "train.txt", "sub/valid.jsonl"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  auto list = test::http_request(daemon_->socket(), "GET", "/api/datasets");
  json ds = json::parse(list.body)["datasets"];
  ASSERT_EQ(ds.size(), 1u) << list.body;
  EXPECT_EQ(ds[0]["name"], "corpus");
  ASSERT_EQ(ds[0]["files"].size(), 2u);
  for (const auto& f : ds[0]["files"]) {
    const fs::path src = f["name"] == "train.txt" ? c / "train.txt" : c / "sub" / "valid.jsonl";
    EXPECT_EQ(f["digest"], "sha256:" + test::file_sha256(src));
  }
  r = daemon_->ctl({"dataset", "pull", "org/corpus", "missing.txt", "--name", "other"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("missing.txt"), std::string::npos) << r.output;

  // A plain URL (the Hub's resolve path serves the file itself), with and without a checksum.
  const std::string url = hub_->url() + "/datasets/org/corpus/resolve/main/train.txt";
  r = daemon_->ctl({"dataset", "pull", url, "--name", "by-url", "--sha256", test::file_sha256(c / "train.txt")});
  EXPECT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  r = daemon_->ctl({"dataset", "pull", url, "--name", "bad-sum", "--sha256", std::string(64, '0')});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("sha256"), std::string::npos) << r.output;
  list = test::http_request(daemon_->socket(), "GET", "/api/datasets");
  EXPECT_EQ(json::parse(list.body)["datasets"].size(), 2u) << list.body;
  EXPECT_TRUE(partials().empty());
}

TEST_F(HubPullTest, BadRequestsSayWhatIsWrong) {
  start();
  auto r = test::http_request(daemon_->socket(), "POST", "/api/pull", json{{"model", "org/tiny@"}, {"stream", false}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  r = test::http_request(daemon_->socket(), "POST", "/api/pull",
                         json{{"model", "org/tiny@main"}, {"revision", "v1"}, {"stream", false}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(r.body.find("two revisions"), std::string::npos) << r.body;
  r = test::http_request(daemon_->socket(), "POST", "/api/pull", json{{"model", "datasets/org/corpus"}, {"stream", false}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  r = test::http_request(daemon_->socket(), "POST", "/api/datasets/pull",
                         json{{"source", "https://user:pw@example.invalid/x.txt"}, {"stream", false}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_EQ(r.body.find("pw"), std::string::npos) << r.body;
  r = test::http_request(daemon_->socket(), "POST", "/api/datasets/pull", json{{"source", "org/corpus"}, {"stream", false}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
  r = test::http_request(daemon_->socket(), "POST", "/api/datasets/pull",
                         json{{"source", "org/corpus"}, {"files", {"../etc/passwd"}}, {"stream", false}}.dump());
  EXPECT_EQ(r.status, 400) << r.body;
}

}  // namespace
}  // namespace gptqd
