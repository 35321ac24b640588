// SPDX-License-Identifier: Apache-2.0
// Serving through a real gptqd: Ollama /api/generate and /api/chat over raw HTTP, the official
// `openai` Python client over the Unix socket, gptqctl run and eval, datasets, several clients at
// once, cancellation by disconnect, keep_alive, the queue limit, and bad requests (e2e tests).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

const char* kModel = "smollm2-135m-instruct";

// One daemon with SmolLM2 for the whole suite (loading it once keeps the suite fast).
class ServingTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(test_model_path())) return;
    dir_ = new TempDir();
    daemon_ = new DaemonProcess(dir_->path());
    if (!daemon_->start({}, {"--threads", "2"})) return;
    auto r = daemon_->ctl({"pull", test_model_path().string()});
    pulled_ = r.exit_code == 0;
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
  static std::string error_of(const HttpReply& r) {
    json j = json::parse(r.body, nullptr, false);
    if (j.is_object() && j.contains("error")) {
      return j["error"].is_string() ? j["error"].get<std::string>() : j["error"].value("message", "");
    }
    return "(no error field in: " + r.body.substr(0, 200) + ")";
  }

  static TempDir* dir_;
  static DaemonProcess* daemon_;
  static bool pulled_;
};

TempDir* ServingTest::dir_ = nullptr;
DaemonProcess* ServingTest::daemon_ = nullptr;
bool ServingTest::pulled_ = false;

json greedy(int num_predict) { return json{{"temperature", 0}, {"num_predict", num_predict}}; }

TEST_F(ServingTest, RunAnswersTheCapitalOfFrance) {
  auto r = daemon_->ctl({"run", kModel, "What is the capital of France?", "--temperature", "0"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_NE(r.output.find("Paris"), std::string::npos) << r.output;
  // The prompt can come from stdin too.
  std::string prompt = "What is the capital of France?";
  auto piped = daemon_->ctl({"run", kModel, "--temperature", "0", "--verbose"}, &prompt);
  ASSERT_EQ(piped.exit_code, 0) << piped.output;
  EXPECT_NE(piped.output.find("Paris"), std::string::npos) << piped.output;
  EXPECT_NE(piped.output.find("eval rate:"), std::string::npos) << piped.output;
}

TEST_F(ServingTest, GenerateStreamsNdjsonAndAgreesWithNonStreaming) {
  json req = {{"model", kModel}, {"prompt", "Name the largest planet."}, {"options", greedy(20)}};
  HttpReply s = post("/api/generate", req);
  ASSERT_EQ(s.status, 200) << s.raw.substr(0, 500);
  EXPECT_NE(s.headers.find("application/x-ndjson"), std::string::npos);
  auto events = ndjson(s.body);
  ASSERT_GE(events.size(), 2u);
  std::string streamed;
  for (size_t i = 0; i + 1 < events.size(); ++i) {
    EXPECT_FALSE(events[i]["done"].get<bool>());
    streamed += events[i]["response"].get<std::string>();
  }
  const json& last = events.back();
  EXPECT_TRUE(last["done"].get<bool>());
  EXPECT_EQ(last["model"], kModel);
  EXPECT_GT(last["prompt_eval_count"].get<int>(), 5);
  EXPECT_GT(last["eval_count"].get<int>(), 0);
  EXPECT_LE(last["eval_count"].get<int>(), 20);
  EXPECT_GT(last["total_duration"].get<int64_t>(), 0);
  EXPECT_TRUE(last["done_reason"] == "stop" || last["done_reason"] == "length");

  req["stream"] = false;
  HttpReply one = post("/api/generate", req);
  ASSERT_EQ(one.status, 200);
  json j = json::parse(one.body);
  EXPECT_EQ(j["response"].get<std::string>(), streamed) << "greedy: streamed and whole answers must agree";
  EXPECT_EQ(j["eval_count"], last["eval_count"]);
}

TEST_F(ServingTest, ChatKeepsTheConversation) {
  json req = {{"model", kModel},
              {"messages", json::array({{{"role", "user"}, {"content", "What is the capital of France?"}}})},
              {"stream", false},
              {"options", greedy(24)}};
  HttpReply r = post("/api/chat", req);
  ASSERT_EQ(r.status, 200) << r.body;
  json j = json::parse(r.body);
  EXPECT_EQ(j["message"]["role"], "assistant");
  const std::string answer = j["message"]["content"];
  EXPECT_NE(answer.find("Paris"), std::string::npos) << answer;
  EXPECT_EQ(answer.find("<|im_end|>"), std::string::npos) << "the template's stop text must not be emitted";
  // A second turn that extends the first reuses the cached prefix and still answers.
  req["messages"].push_back({{"role", "assistant"}, {"content", answer}});
  req["messages"].push_back({{"role", "user"}, {"content", "And of Germany?"}});
  HttpReply r2 = post("/api/chat", req);
  ASSERT_EQ(r2.status, 200) << r2.body;
  EXPECT_NE(json::parse(r2.body)["message"]["content"].get<std::string>().find("Berlin"), std::string::npos) << r2.body;
}

TEST_F(ServingTest, SameSeedSameTextStopStringsHonoured) {
  json req = {{"model", kModel}, {"prompt", "Write a short poem about the sea."}, {"stream", false},
              {"options", {{"temperature", 1.0}, {"seed", 1234}, {"num_predict", 24}}}};
  std::string a = json::parse(post("/api/generate", req).body)["response"];
  std::string b = json::parse(post("/api/generate", req).body)["response"];
  EXPECT_EQ(a, b);
  req["options"]["seed"] = 999;
  std::string c = json::parse(post("/api/generate", req).body)["response"];
  EXPECT_NE(a, c);

  json stop = {{"model", kModel}, {"prompt", "What is the capital of France?"}, {"stream", false},
               {"options", {{"temperature", 0}, {"num_predict", 24}, {"stop", json::array({"Paris"})}}}};
  json j = json::parse(post("/api/generate", stop).body);
  EXPECT_EQ(j["response"].get<std::string>().find("Paris"), std::string::npos) << j.dump();
  EXPECT_EQ(j["done_reason"], "stop");
}

TEST_F(ServingTest, OfficialOpenAiClient) {
  auto r = run_command({python().string(), (source_dir() / "tests/reference/openai_client_check.py").string(),
                        daemon_->socket().string(), std::string(kModel) + ":q4_1"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  json j = json::parse(r.output.substr(r.output.find('{')));
  EXPECT_NE(std::find(j["models"].begin(), j["models"].end(), std::string(kModel) + ":q4_1"), j["models"].end());
  EXPECT_EQ(j["chat"]["role"], "assistant");
  EXPECT_NE(j["chat"]["content"].get<std::string>().find("Paris"), std::string::npos) << j.dump();
  EXPECT_EQ(j["chat_stream"]["content"], j["chat"]["content"]) << "greedy stream and non-stream must agree";
  EXPECT_GT(j["chat_stream"]["n_chunks"].get<int>(), 1);
  EXPECT_GT(j["chat"]["usage"]["prompt_tokens"].get<int>(), 0);
  EXPECT_EQ(j["chat"]["usage"]["total_tokens"].get<int>(),
            j["chat"]["usage"]["prompt_tokens"].get<int>() + j["chat"]["usage"]["completion_tokens"].get<int>());
  // llama.cpp's greedy continuation of this prompt starts " Paris.\n\nThe answer is:" (golden file).
  EXPECT_EQ(j["completion"]["text"].get<std::string>().rfind(" Paris.", 0), 0u) << j.dump();
  EXPECT_EQ(j["completion_stream"]["text"], j["completion"]["text"]);
  EXPECT_EQ(j["completion"]["finish_reason"], "length");
  EXPECT_EQ(j["missing_model"]["status"], 404) << j.dump();
  EXPECT_EQ(j["empty_messages"]["status"], 400) << j.dump();
}

TEST_F(ServingTest, BadRequestsAreClear4xx) {
  struct Case {
    std::string route;
    json body;
    int status;
    std::string message;
  } cases[] = {
      {"/api/generate", {{"model", "no-such-model"}, {"prompt", "x"}}, 404, "not found"},
      {"/api/generate", {{"model", kModel}, {"prompt", "x"}, {"options", {{"temperature", "hot"}}}}, 400,
       "\"options.temperature\" must be a number"},
      {"/api/generate", {{"model", kModel}, {"prompt", "x"}, {"options", {{"num_predict", -5}}}}, 400, "num_predict"},
      {"/api/generate", {{"model", kModel}, {"prompt", "x"}, {"options", {{"top_p", 2}}}}, 400, "top_p"},
      {"/api/generate", {{"model", kModel}, {"prompt", "x"}, {"options", {{"bogus", 1}}}}, 400,
       "unknown option \"options.bogus\""},
      {"/api/generate", {{"model", kModel}, {"prompt", 42}}, 400, "\"prompt\" must be a string"},
      {"/api/generate", {{"model", kModel}, {"prompt", "x"}, {"images", json::array({"aGk="})}}, 400, "images"},
      {"/api/chat", {{"model", kModel}, {"messages", json::array()}}, 400, "\"messages\" is empty"},
      {"/api/chat", {{"model", kModel}, {"messages", json::array({{{"role", "wizard"}, {"content", "x"}}})}}, 400, "wizard"},
      {"/api/chat", {{"model", kModel}}, 400, "\"messages\" is required"},
      {"/v1/chat/completions", {{"model", kModel}, {"messages", json::array({{{"role", "user"}, {"content", "x"}}})}, {"n", 2}},
       400, "\"n\" must be 1"},
      {"/v1/chat/completions", {{"model", kModel}, {"messages", json::array({{{"role", "user"}, {"content", "x"}}})}, {"max_tokens", -1}},
       400, "max_tokens"},
  };
  for (const auto& c : cases) {
    HttpReply r = post(c.route, c.body);
    EXPECT_EQ(r.status, c.status) << c.route << " " << c.body.dump() << " -> " << r.body;
    EXPECT_NE(error_of(r).find(c.message), std::string::npos) << c.route << ": '" << error_of(r) << "' lacks '" << c.message << "'";
  }
  // A prompt longer than the context: an error naming both sizes, never a silent cut.
  std::string huge;
  for (int i = 0; i < 600; ++i) huge += "the quick brown fox jumps over the lazy dog ";
  HttpReply r = post("/api/generate", {{"model", kModel}, {"prompt", huge}, {"options", {{"num_ctx", 512}}}});
  EXPECT_EQ(r.status, 400) << r.body;
  EXPECT_NE(error_of(r).find("tokens but the context is 512"), std::string::npos) << error_of(r);
  // ... unless the request asks for truncation: then the oldest tokens go.
  HttpReply cut = post("/api/generate", {{"model", kModel}, {"prompt", huge}, {"raw", true}, {"truncate", true},
                                         {"stream", false}, {"options", {{"num_ctx", 512}, {"num_predict", 8}, {"temperature", 0}}}});
  ASSERT_EQ(cut.status, 200) << cut.body;
  json cj = json::parse(cut.body);
  EXPECT_LT(cj["prompt_eval_count"].get<int>(), 512);
  EXPECT_GT(cj["prompt_eval_count"].get<int>(), 256);
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/health").status, 200);
}

// The same routes through the real curl binary, streamed and not (what users type first).
TEST_F(ServingTest, CurlOverTheUnixSocket) {
  const std::string sock = daemon_->socket().string();
  json body = {{"model", kModel}, {"prompt", "What is the capital of France?"}, {"options", greedy(16)}};
  auto streamed = run_command({"curl", "-sS", "-N", "--unix-socket", sock, "http://gptqd/api/generate", "-d", body.dump()});
  ASSERT_EQ(streamed.exit_code, 0) << streamed.output;
  std::string text;
  auto events = ndjson(streamed.output);
  for (const auto& e : events) text += e.value("response", "");
  EXPECT_TRUE(events.back()["done"].get<bool>());
  EXPECT_NE(text.find("Paris"), std::string::npos) << text;
  body["stream"] = false;
  auto whole = run_command({"curl", "-sS", "--unix-socket", sock, "http://gptqd/api/generate", "-d", body.dump()});
  ASSERT_EQ(whole.exit_code, 0);
  EXPECT_EQ(json::parse(whole.output)["response"], text);

  json oa = {{"model", kModel}, {"messages", json::array({{{"role", "user"}, {"content", "What is the capital of France?"}}})},
             {"max_tokens", 16}, {"temperature", 0}, {"stream", true}};
  auto sse = run_command({"curl", "-sS", "-N", "--unix-socket", sock, "http://gptqd/v1/chat/completions", "-H",
                          "Content-Type: application/json", "-d", oa.dump()});
  ASSERT_EQ(sse.exit_code, 0);
  EXPECT_EQ(sse.output.rfind("data: {", 0), 0u) << sse.output.substr(0, 200);
  EXPECT_NE(sse.output.find("data: [DONE]\n\n"), std::string::npos);
  std::string content;
  for (size_t pos = 0; (pos = sse.output.find("data: {", pos)) != std::string::npos; ++pos) {
    json chunk = json::parse(sse.output.substr(pos + 6, sse.output.find('\n', pos) - pos - 6));
    content += chunk["choices"][0]["delta"].value("content", "");
  }
  oa["stream"] = false;
  auto one = run_command({"curl", "-sS", "--unix-socket", sock, "http://gptqd/v1/chat/completions", "-d", oa.dump()});
  EXPECT_EQ(json::parse(one.output)["choices"][0]["message"]["content"], content);
  EXPECT_NE(content.find("Paris"), std::string::npos) << content;
}

// The interactive chat behind a pseudo-terminal (util-linux `script`): two turns that depend on
// each other, /set, /clear, /bye.
TEST_F(ServingTest, InteractiveChat) {
  const std::string cmd = gptqctl_binary().string() + " --socket " + daemon_->socket().string() + " run " + kModel;
  std::string input =
      "/set temperature 0\n"
      "/set num_predict 24\n"
      "What is the capital of France?\n"
      "/set nonsense 1\n"
      "/clear\n"
      "/bye\n";
  auto r = run_command({"script", "-q", "-e", "-c", cmd, "/dev/null"}, {}, &input);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("set temperature to 0"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("Paris"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("unknown setting 'nonsense'"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("conversation cleared"), std::string::npos) << r.output;
}

TEST_F(ServingTest, SeveralClientsAreServedAtOnce) {
  std::vector<std::future<HttpReply>> replies;
  for (int i = 0; i < 3; ++i) {
    replies.push_back(std::async(std::launch::async, [i] {
      // A raw continuation that does not end by itself: every client gets exactly what it asked for.
      json req = {{"model", kModel}, {"prompt", "1, 2, 3, 4, 5, 6,"}, {"raw", true}, {"stream", false},
                  {"options", {{"temperature", 0}, {"repeat_penalty", 1.0}, {"num_predict", 30 + i}}}};
      return post("/api/generate", req);
    }));
  }
  // The daemon stays responsive while it generates.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/health").status, 200);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(500));
  json ps;
  for (int i = 0; i < 200; ++i) {  // the model appears once it is loaded
    ps = json::parse(http_request(daemon_->socket(), "GET", "/api/ps").body);
    if (!ps["models"].empty()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_EQ(ps["models"].size(), 1u);
  EXPECT_EQ(ps["models"][0]["name"], std::string(kModel) + ":q4_1");
  for (int i = 0; i < 3; ++i) {
    HttpReply r = replies[static_cast<size_t>(i)].get();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(json::parse(r.body)["eval_count"], 30 + i);
  }
}

// Continuous batching: concurrent greedy requests decode together (the log says so) and each
// gets exactly the text it gets alone.
TEST_F(ServingTest, ConcurrentRequestsAreBatchedAndAnswerAsAlone) {
  const std::vector<std::string> prompts = {"The capital of France is", "1, 2, 3, 4, 5,", "def fibonacci(n):",
                                            "Once upon a time"};
  auto request = [](const std::string& prompt) {
    json req = {{"model", kModel}, {"prompt", prompt}, {"raw", true}, {"stream", false},
                {"options", {{"temperature", 0}, {"num_predict", 24}}}};
    return post("/api/generate", req);
  };
  std::vector<std::string> alone;
  for (const auto& p : prompts) {
    HttpReply r = request(p);
    ASSERT_EQ(r.status, 200) << r.body;
    alone.push_back(json::parse(r.body)["response"]);
  }
  std::vector<std::future<HttpReply>> replies;
  for (const auto& p : prompts) replies.push_back(std::async(std::launch::async, request, p));
  for (size_t i = 0; i < prompts.size(); ++i) {
    HttpReply r = replies[i].get();
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(json::parse(r.body)["response"], alone[i]) << "prompt " << i;
  }
  bool batched = false;
  for (int i = 0; i < 100 && !batched; ++i) {
    batched = daemon_->log().find("decoded in batches of up to") != std::string::npos;
    if (!batched) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(batched) << daemon_->log();
}

TEST_F(ServingTest, ClientDisconnectCancelsTheGeneration) {
  int fd = connect_unix(daemon_->socket());
  ASSERT_GE(fd, 0);
  std::string body = json{{"model", kModel}, {"prompt", "Tell me a very long story."},
                          {"options", {{"temperature", 0}, {"num_predict", 1000}}}}.dump();
  std::string req = "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                    "\r\n\r\n" + body;
  ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string got;
  char buf[4096];
  while (got.find("\"response\"") == std::string::npos) {
    pollfd p{fd, POLLIN, 0};
    ASSERT_GT(::poll(&p, 1, 20000), 0) << "no token within 20 s";
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    ASSERT_GT(n, 0);
    got.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  bool cancelled = false;
  for (int i = 0; i < 200 && !cancelled; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    cancelled = daemon_->log().find("cancelled after") != std::string::npos;
  }
  EXPECT_TRUE(cancelled) << daemon_->log();
  auto ps = json::parse(http_request(daemon_->socket(), "GET", "/api/ps").body);
  EXPECT_EQ(ps["models"][0]["active"], 0) << ps.dump();
}

TEST_F(ServingTest, EvalOnARegisteredDataset) {
  const fs::path wiki = shared_data_dir() / "wikitext-2-raw" / "wiki.test.raw";
  GPTQD_REQUIRE_FILE(wiki);
  auto add = daemon_->ctl({"dataset", "add", "wikitext2", wiki.string()});
  ASSERT_EQ(add.exit_code, 0) << add.output;
  auto list = daemon_->ctl({"dataset", "list"});
  EXPECT_NE(list.output.find("wikitext2"), std::string::npos) << list.output;
  auto dup = daemon_->ctl({"dataset", "add", "wikitext2", wiki.string()});
  EXPECT_EQ(dup.exit_code, 1);
  EXPECT_NE(dup.output.find("already exists"), std::string::npos);

  auto r = daemon_->ctl({"--json", "eval", kModel, "--dataset", "wikitext2", "--seqlen", "512", "--max-windows", "2"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  json j = json::parse(r.output);
  EXPECT_EQ(j["windows"], 2);
  EXPECT_EQ(j["seqlen"], 512);
  EXPECT_EQ(j["tokens"], 1024);
  // llama.cpp's figures for the same two windows (tests/golden): mean NLL 3.0902490 and 3.5907354.
  const double want = std::exp((3.0902490242261775 + 3.5907353597302905) / 2);
  EXPECT_NEAR(j["perplexity"].get<double>(), want, want * 0.01) << j.dump();

  auto missing = daemon_->ctl({"eval", kModel, "--dataset", "no-such-dataset"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_NE(missing.output.find("dataset 'no-such-dataset' not found"), std::string::npos) << missing.output;
  auto tiny = daemon_->ctl({"eval", kModel, "--dataset", "wikitext2", "--seqlen", "1000000"});
  EXPECT_EQ(tiny.exit_code, 1);
  EXPECT_NE(tiny.output.find("fewer than one window"), std::string::npos) << tiny.output;
}

TEST_F(ServingTest, KeepAliveZeroUnloads) {
  json req = {{"model", kModel}, {"prompt", "Hi"}, {"stream", false}, {"keep_alive", 0}, {"options", greedy(2)}};
  ASSERT_EQ(post("/api/generate", req).status, 200);
  bool unloaded = false;
  for (int i = 0; i < 100 && !unloaded; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    unloaded = json::parse(http_request(daemon_->socket(), "GET", "/api/ps").body)["models"].empty();
  }
  EXPECT_TRUE(unloaded);
  // An empty prompt only loads the model (Ollama's convention).
  HttpReply load = post("/api/generate", {{"model", kModel}, {"stream", false}});
  ASSERT_EQ(load.status, 200) << load.body;
  EXPECT_EQ(json::parse(load.body)["done_reason"], "load");
  bool loaded = false;
  for (int i = 0; i < 100 && !loaded; ++i) {
    loaded = json::parse(http_request(daemon_->socket(), "GET", "/api/ps").body)["models"].size() == 1;
    if (!loaded) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(loaded);
}

// A daemon with room for one request at a time and one waiting: the third gets a fast 503.
// State is observed, not timed: the first request is streaming, the second shows as queued in
// /api/ps, then the third is refused; hanging up on the first two cancels them.
// Memory planning: a model whose weights do not fit in the memory available is refused before
// any weight is read, with the numbers; the daemon stays up (GPTQD_MEMORY_AVAILABLE stands in for
// a small machine).
TEST(ServingLimits, ModelLargerThanMemoryIsRefusedWithTheNumbers) {
  GPTQD_REQUIRE_FILE(test_model_path());
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start({"GPTQD_MEMORY_AVAILABLE=100000000"}, {})) << d.log();
  ASSERT_EQ(d.ctl({"pull", test_model_path().string()}).exit_code, 0) << d.log();
  HttpReply r = http_request(d.socket(), "POST", "/api/generate",
                             json{{"model", kModel}, {"prompt", "Hi"}, {"stream", false}}.dump());
  EXPECT_EQ(r.status, 507) << r.body;
  // SmolLM2's Q4_1 GGUF becomes 513 MiB of fp32 weights on the CPU.
  EXPECT_NE(r.body.find("the model needs 5"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("weights 513 MiB"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("but only 95 MiB of system memory is available"), std::string::npos) << r.body;
  EXPECT_NE(r.body.find("the weights alone do not fit"), std::string::npos) << r.body;
  EXPECT_EQ(http_request(d.socket(), "GET", "/api/health").status, 200);
  EXPECT_TRUE(json::parse(http_request(d.socket(), "GET", "/api/ps").body)["models"].empty());
}

TEST(ServingLimits, FullQueueGets503) {
  GPTQD_REQUIRE_FILE(test_model_path());
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start({}, {"--parallel", "1", "--max-queue", "1"})) << d.log();
  ASSERT_EQ(d.ctl({"pull", test_model_path().string()}).exit_code, 0);
  const std::string body = json{{"model", kModel}, {"prompt", "1, 2, 3, 4,"}, {"raw", true},
                                {"options", {{"temperature", 0}, {"repeat_penalty", 1.0}, {"num_predict", 2000}}}}.dump();
  const std::string req = "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(body.size()) +
                          "\r\n\r\n" + body;
  auto open_stream = [&] {
    int fd = connect_unix(d.socket());
    ::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
    return fd;
  };
  auto ps = [&] { return json::parse(http_request(d.socket(), "GET", "/api/ps").body); };
  int a = open_stream();
  ASSERT_GE(a, 0);
  pollfd p{a, POLLIN, 0};
  ASSERT_GT(::poll(&p, 1, 120000), 0) << "the first request never started";
  int b = open_stream();
  bool queued = false;
  for (int i = 0; i < 600 && !queued; ++i) {
    json st = ps();
    queued = !st["models"].empty() && st["models"][0]["queued"] == 1;
    if (!queued) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  ASSERT_TRUE(queued) << ps().dump();
  auto t0 = std::chrono::steady_clock::now();
  HttpReply c = http_request(d.socket(), "POST", "/api/generate", body);
  EXPECT_EQ(c.status, 503) << c.body;
  EXPECT_NE(c.body.find("queue is full"), std::string::npos) << c.body;
  EXPECT_NE(c.headers.find("Retry-After"), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  ::close(a);
  ::close(b);
  bool drained = false;
  for (int i = 0; i < 1200 && !drained; ++i) {
    json st = ps();
    drained = !st["models"].empty() && st["models"][0]["active"] == 0 && st["models"][0]["queued"] == 0;
    if (!drained) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(drained) << "hanging up did not cancel the requests: " << ps().dump();
}

}  // namespace
}  // namespace gptqd::test
