// SPDX-License-Identifier: Apache-2.0
// Clients that hang up at every stage of a response (e2e tests; reliability.md D07): during the
// prefill (before the first token), right after the first chunk and in the middle of the stream,
// on /api/generate, /api/chat and /v1/chat/completions; during an unstreamed answer and an
// unstreamed /api/eval; in the middle of a pull's progress stream. Each time the work is
// cancelled, the daemon stays healthy, its open file descriptors return to where they were and
// the next request is served. A client that only half-closes is not a hang-up.
// (serving_test's ClientDisconnectCancelsTheGeneration is the plain /api/generate first-token case.)
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const char* kModel = "smollm2-135m-instruct";

size_t open_fds(pid_t pid) {
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd")) ++n;
  return n;
}

size_t count_of(const std::string& haystack, const std::string& needle) {
  size_t n = 0;
  for (size_t at = haystack.find(needle); at != std::string::npos; at = haystack.find(needle, at + 1)) ++n;
  return n;
}

enum class Stage { prefill, first_chunk, mid_stream };

struct Route {
  const char* path;
  const char* chunk_marker;  // appears once per streamed piece
};

class DisconnectTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(test_model_path())) return;
    dir_ = new TempDir();
    daemon_ = new DaemonProcess(dir_->path());
    if (!daemon_->start({}, {"--threads", "2"})) return;
    pulled_ = daemon_->ctl({"pull", test_model_path().string()}).exit_code == 0;
  }
  static void TearDownTestSuite() {
    delete daemon_;
    delete dir_;
    daemon_ = nullptr;
    dir_ = nullptr;
  }
  void SetUp() override {
    GPTQD_REQUIRE_FILE(test_model_path());
    ASSERT_TRUE(daemon_ && daemon_->running()) << (daemon_ ? daemon_->log() : "");
    ASSERT_TRUE(pulled_) << daemon_->log();
    // Warm: the model loaded and one request served, so the baseline holds the model's files.
    ASSERT_EQ(next_request_works(), true);
    baseline_fds_ = open_fds(daemon_->pid());
  }

  static bool next_request_works() {
    json req = {{"model", kModel}, {"prompt", "1, 2, 3,"}, {"raw", true}, {"stream", false},
                {"options", {{"temperature", 0}, {"num_predict", 3}}}};
    HttpReply r = http_request(daemon_->socket(), "POST", "/api/generate", req.dump());
    return r.status == 200 && json::parse(r.body).value("eval_count", 0) == 3;
  }

  // A body for `path` that streams for a long time; `long_prompt` makes the prefill take a while.
  static json body_for(const std::string& path, bool long_prompt) {
    std::string text = "Count from 1 to 1000, separated by commas.";
    if (long_prompt) {
      std::string filler;
      // About 1,000 tokens: four 256-token prefill chunks, seconds here. The daemon watches the
      // socket while nothing is written and stops the prefill at the next chunk boundary.
      for (int i = 0; i < 100; ++i) filler += "The quick brown fox jumps over the lazy dog. ";
      text = filler + text;
    }
    if (path == "/api/generate") {
      return {{"model", kModel}, {"prompt", text}, {"options", {{"temperature", 0}, {"num_predict", 500}}}};
    }
    json messages = json::array({{{"role", "user"}, {"content", text}}});
    if (path == "/api/chat") {
      return {{"model", kModel}, {"messages", messages}, {"options", {{"temperature", 0}, {"num_predict", 500}}}};
    }
    return {{"model", kModel}, {"messages", messages}, {"stream", true}, {"temperature", 0}, {"max_tokens", 500}};
  }

  // Connects and sends one POST; the connected fd, or -1.
  static int send_post(const std::string& path, const std::string& body, const std::string& extra_headers = "") {
    const int fd = connect_unix(daemon_->socket());
    if (fd < 0) return -1;
    const std::string req = "POST " + path + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" +
                            extra_headers + "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
      ::close(fd);
      return -1;
    }
    return fd;
  }

  // Sends a streamed request, hangs up at `stage`, then checks what a hang-up must leave behind.
  void hang_up(const Route& route, Stage stage) {
    const size_t cancels_before = count_of(daemon_->log(), "cancelled after");
    const std::string body = body_for(route.path, stage == Stage::prefill).dump();
    const int fd = send_post(route.path, body);
    ASSERT_GE(fd, 0);
    const size_t want = stage == Stage::prefill ? 0 : stage == Stage::first_chunk ? 1 : 12;
    std::string got;
    char buf[4096];
    while (count_of(got, route.chunk_marker) < want) {
      pollfd p{fd, POLLIN, 0};
      ASSERT_GT(::poll(&p, 1, 30000), 0) << "no chunk within 30 s: " << got;
      ssize_t n = ::recv(fd, buf, sizeof buf, 0);
      ASSERT_GT(n, 0) << got;
      got.append(buf, static_cast<size_t>(n));
    }
    if (stage == Stage::prefill) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    EXPECT_EQ(count_of(got, "\"done\":true") + count_of(got, "[DONE]"), 0u) << "the stream ended before the hang-up";
    ::close(fd);

    // Cancelled within a step or so of its first token, not run to its 500 tokens.
    bool cancelled = false;
    for (int i = 0; i < 1200 && !cancelled; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      cancelled = count_of(daemon_->log(), "cancelled after") > cancels_before;
    }
    EXPECT_TRUE(cancelled) << daemon_->log();
    if (cancelled && stage == Stage::prefill) {
      EXPECT_EQ(last_cancel_tokens(), 0) << "a hang-up during the prefill stops it before any token\n" << daemon_->log();
    }
    json ps;
    for (int i = 0; i < 100; ++i) {
      ps = json::parse(http_request(daemon_->socket(), "GET", "/api/ps").body);
      if (!ps["models"].empty() && ps["models"][0]["active"] == 0) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_EQ(ps["models"][0]["active"], 0) << ps.dump();
    EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/health").status, 200);
    EXPECT_TRUE(next_request_works()) << daemon_->log();
    expect_fds_back();
  }

  // The token count of the newest "cancelled after N token(s): the client hung up" line, or -1.
  static int last_cancel_tokens() {
    const std::string log = daemon_->log();
    const size_t at = log.rfind("cancelled after ");
    if (at == std::string::npos) return -1;
    const size_t eol = log.find('\n', at);
    if (log.substr(at, eol - at).find(": the client hung up") == std::string::npos) return -1;
    return std::stoi(log.substr(at + 16));
  }

  void expect_fds_back() {
    size_t now = 0;
    for (int i = 0; i < 100; ++i) {
      now = open_fds(daemon_->pid());
      if (now <= baseline_fds_) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_LE(now, baseline_fds_) << "open fds: " << baseline_fds_ << " before, " << now << " after";
  }

  static TempDir* dir_;
  static DaemonProcess* daemon_;
  static bool pulled_;
  size_t baseline_fds_ = 0;
};

TempDir* DisconnectTest::dir_ = nullptr;
DaemonProcess* DisconnectTest::daemon_ = nullptr;
bool DisconnectTest::pulled_ = false;

const Route kGenerate{"/api/generate", "\"response\""};
const Route kChat{"/api/chat", "\"message\""};
const Route kOpenAi{"/v1/chat/completions", "data: {"};

TEST_F(DisconnectTest, GenerateDuringThePrefill) { hang_up(kGenerate, Stage::prefill); }
TEST_F(DisconnectTest, GenerateMidStream) { hang_up(kGenerate, Stage::mid_stream); }
TEST_F(DisconnectTest, ChatDuringThePrefill) { hang_up(kChat, Stage::prefill); }
TEST_F(DisconnectTest, ChatAfterTheFirstChunk) { hang_up(kChat, Stage::first_chunk); }
TEST_F(DisconnectTest, ChatMidStream) { hang_up(kChat, Stage::mid_stream); }
TEST_F(DisconnectTest, OpenAiDuringThePrefill) { hang_up(kOpenAi, Stage::prefill); }
TEST_F(DisconnectTest, OpenAiAfterTheFirstChunk) { hang_up(kOpenAi, Stage::first_chunk); }
TEST_F(DisconnectTest, OpenAiMidStream) { hang_up(kOpenAi, Stage::mid_stream); }

// An unstreamed request writes nothing until its answer is complete, so only the watch on the
// socket can see the hang-up: the generation stops within moments, far short of its 500 tokens.
TEST_F(DisconnectTest, GenerateNotStreamed) {
  const size_t cancels_before = count_of(daemon_->log(), "cancelled after");
  json body = body_for("/api/generate", false);
  body["stream"] = false;
  const int fd = send_post("/api/generate", body.dump());
  ASSERT_GE(fd, 0);
  // Into the decode: wait until the model is active on this request, then a little more.
  for (int i = 0; i < 200; ++i) {
    json ps = json::parse(http_request(daemon_->socket(), "GET", "/api/ps").body);
    if (!ps["models"].empty() && ps["models"][0]["active"] == 1) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::close(fd);
  const auto hung_up_at = std::chrono::steady_clock::now();
  bool cancelled = false;
  while (!cancelled && std::chrono::steady_clock::now() - hung_up_at < std::chrono::seconds(30)) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    cancelled = count_of(daemon_->log(), "cancelled after") > cancels_before;
  }
  const double waited_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - hung_up_at).count();
  ASSERT_TRUE(cancelled) << "the unstreamed generation ran on after the hang-up\n" << daemon_->log();
  EXPECT_LT(waited_s, 5.0) << "noticed " << waited_s << " s after the hang-up";
  const int tokens = last_cancel_tokens();
  EXPECT_GE(tokens, 0) << daemon_->log();
  EXPECT_LT(tokens, 500) << daemon_->log();
  EXPECT_TRUE(next_request_works()) << daemon_->log();
  expect_fds_back();
}

// An unstreamed perplexity evaluation: the hang-up stops it at the next window, and its job says
// so, instead of it running through every window of the dataset.
TEST_F(DisconnectTest, EvalNotStreamed) {
  const fs::path wiki = shared_data_dir() / "wikitext-2-raw" / "wiki.test.raw";
  GPTQD_REQUIRE_FILE(wiki);
  auto add = daemon_->ctl({"dataset", "add", "wiki-disconnect", wiki.string()});
  ASSERT_EQ(add.exit_code, 0) << add.output;
  const json body = {{"model", kModel}, {"dataset", "wiki-disconnect"}, {"seqlen", 256}, {"max_windows", 1000}, {"stream", false}};
  const int fd = send_post("/api/eval", body.dump());
  ASSERT_GE(fd, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ::close(fd);
  std::string state;
  for (int i = 0; i < 250 && state != "cancelled"; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    const json jobs = json::parse(http_request(daemon_->socket(), "GET", "/api/jobs").body);
    for (const auto& j : jobs["jobs"]) {
      if (j["kind"] == "eval") state = j["state"].get<std::string>();
    }
  }
  EXPECT_EQ(state, "cancelled") << "the evaluation ran on for 5 s after the hang-up\n" << daemon_->log();
  EXPECT_TRUE(next_request_works()) << daemon_->log();
  expect_fds_back();
}

// A client that only shuts down its sending side after the request (shutdown(SHUT_WR)) is still
// reading: its unstreamed answer comes whole, not cancelled.
TEST_F(DisconnectTest, HalfCloseIsNotAHangUp) {
  json req = {{"model", kModel}, {"prompt", "1, 2, 3,"}, {"raw", true}, {"stream", false},
              {"options", {{"temperature", 0}, {"num_predict", 20}}}};
  const int fd = send_post("/api/generate", req.dump(), "Connection: close\r\n");
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::shutdown(fd, SHUT_WR), 0);
  std::string got;
  char buf[4096];
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    ASSERT_GT(::poll(&p, 1, 60000), 0) << "no answer within 60 s: " << got;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  ASSERT_EQ(got.rfind("HTTP/1.1 200", 0), 0u) << got;
  const json answer = json::parse(got.substr(got.find("\r\n\r\n") + 4));
  EXPECT_EQ(answer["done_reason"], "length") << answer.dump();
  EXPECT_EQ(answer["eval_count"], 20) << answer.dump();
}

// A pull's progress stream: the client leaves mid-copy, the pull is cancelled (its job says so),
// nothing of it stays, and the descriptors it held (source, partial) are closed.
TEST_F(DisconnectTest, PullMidStream) {
  {
    StreamingRequest pull(daemon_->socket(), "/api/pull", json{{"model", test_model_path().string()}, {"name", "copy"}}.dump());
    ASSERT_TRUE(pull.wait_for("\"completed\":")) << pull.received();
  }
  bool cancelled = false;
  for (int i = 0; i < 200 && !cancelled; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    cancelled = http_request(daemon_->socket(), "GET", "/api/jobs").body.find("\"cancelled\"") != std::string::npos;
  }
  EXPECT_TRUE(cancelled) << daemon_->log();
  EXPECT_EQ(http_request(daemon_->socket(), "POST", "/api/show", json{{"model", "copy"}}.dump()).status, 404);
  EXPECT_TRUE(list_dir(daemon_->state_dir() / "tmp").empty());
  EXPECT_TRUE(next_request_works()) << daemon_->log();
  expect_fds_back();
}

}  // namespace
}  // namespace gptqd::test
