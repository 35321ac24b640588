// SPDX-License-Identifier: Apache-2.0
// HubClient against a faithful local Hub (tests/support/hub_server.py: the Hub's endpoints and
// header names, the redirect to a CDN path, LFS metadata, revisions, gated repos, and injected
// faults): revisions, verified downloads, resume after a dropped connection and from a partial
// left by an earlier run (asserted on the bytes the server sent), checksum failures, 5xx and
// stalls, gated repos with and without a token (which never shows up in an error), unknown repos
// and revisions, path traversal in a listed file name, and the HF_* environment.
#include "daemon/hub_client.h"

#include <curl/curl.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "engine/error.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

extern char** environ;

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

// A plain GET (or an empty POST) with libcurl, for the server's control endpoints.
std::string request(const std::string& url, bool post) {
  std::string body;
  CURL* c = curl_easy_init();
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  if (post) curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, +[](char* d, size_t s, size_t n, void* u) {
    static_cast<std::string*>(u)->append(d, s * n);
    return s * n;
  });
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
  const CURLcode rc = curl_easy_perform(c);
  curl_easy_cleanup(c);
  EXPECT_EQ(rc, CURLE_OK) << url;
  return body;
}

// The local Hub: a python process on a loopback port, serving `root`.
class HubServer {
 public:
  explicit HubServer(const fs::path& root) : root_(root) {
    const fs::path port_file = root / "port";
    const std::string py = test::python().string(), script = (test::source_dir() / "tests/support/hub_server.py").string();
    const std::string root_s = root.string(), port_s = port_file.string();
    std::vector<char*> argv{const_cast<char*>(py.c_str()), const_cast<char*>(script.c_str()),
                            const_cast<char*>("--root"), const_cast<char*>(root_s.c_str()),
                            const_cast<char*>("--port-file"), const_cast<char*>(port_s.c_str()), nullptr};
    if (posix_spawn(&pid_, py.c_str(), nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
    for (int i = 0; i < 200 && pid_ > 0 && !fs::exists(port_file); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (fs::exists(port_file)) url_ = "http://127.0.0.1:" + test::read_file(port_file);
    while (!url_.empty() && (url_.back() == '\n' || url_.back() == ' ')) url_.pop_back();
  }
  ~HubServer() {
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }
  const std::string& url() const { return url_; }
  void faults(const json& list) { test::write_file(root_ / "faults.json", list.dump()); }
  json stats() const { return json::parse(request(url_ + "/__stats", false)); }
  void reset() { request(url_ + "/__reset", true); }

 private:
  fs::path root_;
  pid_t pid_ = -1;
  std::string url_;
};

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

  test::TempDir dir_;
  std::unique_ptr<HubServer> server_;
  std::string big_;
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
