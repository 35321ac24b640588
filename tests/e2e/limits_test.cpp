// SPDX-License-Identifier: Apache-2.0
// The request limits that need a model, each at its boundary through a real gptqd: prompt tokens
// versus the context, stop strings, chat messages, the generation queue, slow readers and the
// generation deadline (e2e tests; docs/api.md "Limits"; reliability.md B04, B07, B08, E01).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const char* kModel = "smollm2-135m-instruct";

std::string error_of(const HttpReply& r) {
  json j = json::parse(r.body, nullptr, false);
  if (j.is_object() && j.contains("error")) {
    return j["error"].is_string() ? j["error"].get<std::string>() : j["error"].value("message", "");
  }
  return "(no error field in: " + r.body.substr(0, 200) + ")";
}

// One daemon with SmolLM2, one request at a time and one waiting.
class LimitsE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(test_model_path())) return;
    dir_ = new TempDir();
    daemon_ = new DaemonProcess(dir_->path());
    if (!daemon_->start({}, {"--threads", "2", "--parallel", "1", "--max-queue", "1", "--max-messages", "4",
                             "--write-timeout-ms", "1000"})) {
      return;
    }
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
  }
  static HttpReply post(const std::string& route, const json& body) {
    return http_request(daemon_->socket(), "POST", route, body.dump());
  }
  static json ps_model() {
    HttpReply r = http_request(daemon_->socket(), "GET", "/api/ps");
    json j = json::parse(r.body, nullptr, false);
    return j.is_object() && !j["models"].empty() ? j["models"][0] : json::object();
  }
  // Polls /api/ps until `pred` holds (true) or 60 s pass.
  template <typename Pred>
  static bool wait_ps(Pred pred) {
    for (int i = 0; i < 1200; ++i) {
      if (pred(ps_model())) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  static bool idle() {
    return wait_ps([](const json& m) { return m.value("active", 0) == 0 && m.value("queued", 0) == 0; });
  }

  static TempDir* dir_;
  static DaemonProcess* daemon_;
  static bool pulled_;
};

TempDir* LimitsE2eTest::dir_ = nullptr;
DaemonProcess* LimitsE2eTest::daemon_ = nullptr;
bool LimitsE2eTest::pulled_ = false;

json one_token() { return json{{"temperature", 0}, {"num_predict", 1}}; }

TEST_F(LimitsE2eTest, PromptTokensVersusContext) {
  std::string prompt;
  for (int i = 0; i < 40; ++i) prompt += "word ";
  json body = {{"model", kModel}, {"prompt", prompt}, {"raw", true}, {"stream", false}, {"options", one_token()}};
  body["options"]["num_ctx"] = 16;
  HttpReply r = post("/api/generate", body);
  ASSERT_EQ(r.status, 400) << r.body;
  std::smatch m;
  const std::string e = error_of(r);
  ASSERT_TRUE(std::regex_search(e, m, std::regex("the prompt has ([0-9]+) tokens but the context is 16"))) << e;
  const int n = std::stoi(m[1]);
  ASSERT_GT(n, 16);
  // The prompt plus one token to generate fit: served.
  body["options"]["num_ctx"] = n + 1;
  r = post("/api/generate", body);
  EXPECT_EQ(r.status, 200) << r.body;
  // A context of exactly the prompt leaves no room: 400 naming both sizes, streaming or not.
  body["options"]["num_ctx"] = n;
  for (bool stream : {false, true}) {
    body["stream"] = stream;
    r = post("/api/generate", body);
    EXPECT_EQ(r.status, 400) << r.body;
    EXPECT_NE(error_of(r).find("the prompt has " + std::to_string(n) + " tokens but the context is " +
                                   std::to_string(n) + " (num_ctx)"),
              std::string::npos)
        << r.body;
  }
}

// 13 stop strings: the engine takes 16, and a chat template adds up to 3 of its own (chatml's
// <|im_end|> and <|im_start|> here), so 13 must pass with the template.
TEST_F(LimitsE2eTest, StopStrings) {
  json stops = json::array();
  for (int i = 0; i < 13; ++i) stops.push_back("stop" + std::to_string(i));
  json body = {{"model", kModel}, {"prompt", "Hi"}, {"stream", false}, {"options", one_token()}};
  body["options"]["stop"] = stops;
  HttpReply r = post("/api/generate", body);
  EXPECT_EQ(r.status, 200) << r.body;
  body["options"]["stop"].push_back("one more");
  r = post("/api/generate", body);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(error_of(r).find("too many stop strings: 14 (max_stop_strings is 13)"), std::string::npos) << r.body;
  json oa = {{"model", kModel}, {"prompt", "Hi"}, {"max_tokens", 1}, {"stop", body["options"]["stop"]}};
  r = post("/v1/completions", oa);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(error_of(r).find("(max_stop_strings is 13)"), std::string::npos) << r.body;

  body["options"]["stop"] = json::array({std::string(256, 'x')});
  r = post("/api/generate", body);
  EXPECT_EQ(r.status, 200) << r.body;
  body["options"]["stop"] = json::array({"fine", std::string(257, 'x')});
  r = post("/api/generate", body);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(error_of(r).find("stop string 1 is 257 bytes (max_stop_bytes is 256)"), std::string::npos) << r.body;
}

TEST_F(LimitsE2eTest, Messages) {
  json messages = json::array();
  for (int i = 0; i < 4; ++i) messages.push_back({{"role", i % 2 ? "assistant" : "user"}, {"content", "hi"}});
  json body = {{"model", kModel}, {"messages", messages}, {"stream", false}, {"options", one_token()}};
  HttpReply r = post("/api/chat", body);
  EXPECT_EQ(r.status, 200) << r.body;
  body["messages"].push_back({{"role", "user"}, {"content", "hi"}});
  r = post("/api/chat", body);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(error_of(r).find("too many messages: 5 (max_messages is 4)"), std::string::npos) << r.body;
  json oa = {{"model", kModel}, {"messages", body["messages"]}, {"max_tokens", 1}};
  r = post("/v1/chat/completions", oa);
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(error_of(r).find("(max_messages is 4)"), std::string::npos) << r.body;
}

TEST_F(LimitsE2eTest, FullQueueIsAFast503WithRetryAfter) {
  ASSERT_TRUE(idle());
  json body = {{"model", kModel}, {"prompt", "Count from 1 to 500: 1, 2, 3,"}, {"raw", true}, {"stream", true},
               {"options", {{"temperature", 0}, {"num_predict", 400}}}};
  // One running (parallel 1) ...
  auto running = std::make_unique<StreamingRequest>(daemon_->socket(), "/api/generate", body.dump());
  ASSERT_TRUE(running->wait_for("\"done\":false")) << running->received() << daemon_->log();
  // ... and one waiting: the queue is at its limit (max_queue 1) and accepted it.
  auto waiting = std::make_unique<StreamingRequest>(daemon_->socket(), "/api/generate", body.dump());
  ASSERT_TRUE(wait_ps([](const json& m) { return m.value("queued", 0) == 1; })) << ps_model().dump();
  // One more: refused at once.
  const auto start = std::chrono::steady_clock::now();
  HttpReply r = post("/api/generate", body);
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_EQ(r.status, 503) << r.body;
  EXPECT_NE(r.headers.find("Retry-After: 1"), std::string::npos) << r.headers;
  EXPECT_NE(error_of(r).find("queue is full"), std::string::npos) << r.body;
  EXPECT_NE(error_of(r).find("(max_queue is 1)"), std::string::npos) << r.body;
  EXPECT_LT(took, std::chrono::seconds(1));
  running.reset();
  waiting.reset();
  EXPECT_TRUE(idle()) << ps_model().dump();
}

TEST_F(LimitsE2eTest, SlowReaderIsCutAtTheWriteTimeout) {
  // A 98 MB blob to a client that reads nothing: the daemon's send buffer fills, and after
  // write_timeout_ms (1 s) without progress the daemon drops the client.
  HttpReply show = post("/api/show", json{{"model", kModel}});
  ASSERT_EQ(show.status, 200) << show.body;
  std::string digest;
  const json shown = json::parse(show.body);
  for (const auto& f : shown["files"]) digest = f["digest"].get<std::string>();
  ASSERT_FALSE(digest.empty()) << show.body;
  int fd = connect_unix(daemon_->socket());
  ASSERT_GE(fd, 0);
  int rcvbuf = 4096;
  ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  const std::string req = "GET /api/blobs/" + digest + " HTTP/1.1\r\nHost: x\r\n\r\n";
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  const auto start = std::chrono::steady_clock::now();
  std::string log;
  for (int i = 0; i < 300 && log.find("(write_timeout_ms)") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    log = daemon_->log();
  }
  const auto took = std::chrono::steady_clock::now() - start;
  EXPECT_NE(log.find("dropped a client that read nothing for 1000 ms (write_timeout_ms)"), std::string::npos) << log;
  EXPECT_GE(took, std::chrono::milliseconds(900));
  EXPECT_LT(took, std::chrono::seconds(10));
  // The connection is closed: after what was buffered, EOF.
  bool eof = false;
  char buf[65536];
  for (int i = 0; i < 10000 && !eof; ++i) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 1000) <= 0) break;
    eof = ::recv(fd, buf, sizeof buf, 0) <= 0;
  }
  EXPECT_TRUE(eof) << "the daemon kept the slow reader's connection";
  ::close(fd);

  // A generation whose client never reads: its slot is freed and the next request is served.
  json body = {{"model", kModel}, {"prompt", "Count from 1 to 500: 1, 2, 3,"}, {"raw", true}, {"stream", true},
               {"options", {{"temperature", 0}, {"num_predict", 32}}}};
  {
    StreamingRequest never_read(daemon_->socket(), "/api/generate", body.dump());
    ASSERT_TRUE(wait_ps([](const json& m) { return m.value("active", 0) == 1; })) << ps_model().dump();
    EXPECT_TRUE(idle()) << ps_model().dump();
    HttpReply next = post("/api/generate", json{{"model", kModel}, {"prompt", "Hi"}, {"stream", false}, {"options", one_token()}});
    EXPECT_EQ(next.status, 200) << next.body;
  }
}

// max_generation_ms: a generation that runs past it is stopped with a message naming the limit;
// one that ends in time is untouched.
TEST(GenerationDeadline, StopsAGenerationThatRunsTooLong) {
  GPTQD_REQUIRE_FILE(test_model_path());
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start({}, {"--threads", "2", "--max-generation-ms", "4000"})) << d.log();
  ASSERT_EQ(d.ctl({"pull", test_model_path().string()}).exit_code, 0) << d.log();
  auto post = [&](const json& body) { return http_request(d.socket(), "POST", "/api/generate", body.dump()); };
  // The deadline counts the model load too: on a loaded machine (ASan, parallel tests) the first
  // load can take longer than 4 s, and then that request is the one stopped. The model is loaded
  // either way, so the next try is quick.
  HttpReply load;
  for (int i = 0; i < 5; ++i) {
    load = post(json{{"model", kModel}, {"prompt", ""}, {"stream", false}});
    if (load.status != 504) break;
  }
  ASSERT_EQ(load.status, 200) << load.body;
  HttpReply in_time = post(json{{"model", kModel}, {"prompt", "Hi"}, {"stream", false}, {"options", one_token()}});
  EXPECT_EQ(in_time.status, 200) << in_time.body;

  json counting = {{"model", kModel}, {"prompt", "Count from 1 to 5000: 1, 2, 3,"}, {"raw", true}, {"stream", false},
                   {"options", {{"temperature", 0}, {"num_predict", 1900}}}};
  const auto start = std::chrono::steady_clock::now();
  HttpReply r = post(counting);
  EXPECT_EQ(r.status, 504) << r.body;
  EXPECT_NE(error_of(r).find("ran longer than 4000 ms (max_generation_ms)"), std::string::npos) << r.body;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));

  counting["stream"] = true;
  r = post(counting);
  EXPECT_EQ(r.status, 200);
  const auto lines = ndjson(r.body);
  ASSERT_FALSE(lines.empty()) << r.body;
  EXPECT_NE(lines.back().value("error", "").find("(max_generation_ms)"), std::string::npos) << r.body;
}

// max_queue 0: no request may wait, but one that finds a free slot is served.
TEST(QueueLimitZero, ServesWhenASlotIsFree) {
  GPTQD_REQUIRE_FILE(test_model_path());
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start({}, {"--threads", "2", "--max-queue", "0"})) << d.log();
  ASSERT_EQ(d.ctl({"pull", test_model_path().string()}).exit_code, 0) << d.log();
  HttpReply r = http_request(d.socket(), "POST", "/api/generate",
                             json{{"model", kModel}, {"prompt", "Hi"}, {"stream", false}, {"options", one_token()}}.dump());
  EXPECT_EQ(r.status, 200) << r.body;
}

}  // namespace
}  // namespace gptqd::test
