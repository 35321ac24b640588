// SPDX-License-Identifier: Apache-2.0
// A real gptqd on a temp socket: routes, malformed and oversized requests, limits, and the
// socket/state-directory life cycle (daemon integration tests; reliability.md B01-B06, D09, F01).
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"

namespace gptqd::test {
namespace {

using nlohmann::json;

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    daemon_ = std::make_unique<DaemonProcess>(dir_.path());
    ASSERT_TRUE(daemon_->start({}, extra_args())) << daemon_->log();
  }
  virtual std::vector<std::string> extra_args() { return {}; }
  void expect_alive() {
    HttpReply r = http_request(daemon_->socket(), "GET", "/api/health");
    EXPECT_EQ(r.status, 200) << "daemon no longer answers; log:\n" << daemon_->log();
  }
  HttpReply raw(const std::string& bytes) { return parse_reply(raw_exchange(daemon_->socket(), bytes)); }
  std::string error_of(const HttpReply& r) {
    json j = json::parse(r.body, nullptr, false);
    return j.is_object() && j.contains("error") ? j["error"].get<std::string>() : "(no error field: " + r.body + ")";
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(HttpServerTest, BasicRoutes) {
  HttpReply v = http_request(daemon_->socket(), "GET", "/api/version");
  ASSERT_EQ(v.status, 200) << v.raw;
  EXPECT_EQ(json::parse(v.body)["version"], "0.1.0");
  HttpReply h = http_request(daemon_->socket(), "GET", "/api/health");
  ASSERT_EQ(h.status, 200);
  json hj = json::parse(h.body);
  EXPECT_EQ(hj["status"], "ok");
  EXPECT_EQ(hj["pid"], daemon_->pid());
  EXPECT_EQ(hj["models"], 0);
  HttpReply t = http_request(daemon_->socket(), "GET", "/api/tags");
  ASSERT_EQ(t.status, 200);
  EXPECT_EQ(json::parse(t.body), json::parse(R"({"models":[]})"));
  HttpReply root = http_request(daemon_->socket(), "GET", "/");
  EXPECT_EQ(root.status, 200);
  EXPECT_EQ(root.body, "gptqd is running\n");
}

TEST_F(HttpServerTest, UnknownRouteAndWrongMethod) {
  HttpReply r = http_request(daemon_->socket(), "GET", "/api/nope");
  EXPECT_EQ(r.status, 404);
  EXPECT_NE(error_of(r).find("no such endpoint: GET /api/nope"), std::string::npos);
  r = http_request(daemon_->socket(), "POST", "/api/tags", "{}");
  EXPECT_EQ(r.status, 405);
  EXPECT_NE(r.headers.find("Allow: GET"), std::string::npos) << r.headers;
}

TEST_F(HttpServerTest, MalformedHttpGets400AndTheDaemonStaysUp) {
  const char* cases[] = {
      "GARBAGE\r\n\r\n",
      "GET / HTTP/1.1\r\nHost x\r\n\r\n",                                   // header without colon
      "POST /api/show HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
      "POST /api/show HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
      "POST /api/show HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  // bad chunk size
  };
  for (const char* c : cases) {
    HttpReply r = raw(c);
    EXPECT_EQ(r.status, 400) << "request: " << c << "\nreply: " << r.raw;
    if (r.status == 400) {
      EXPECT_NE(error_of(r).find("malformed HTTP request"), std::string::npos) << r.body;
    }
  }
  std::string nul_header("GET / HTTP/1.1\r\nX: a\0b\r\n\r\n", 27);
  EXPECT_EQ(raw(nul_header).status, 400);
  expect_alive();
}

// Found by fuzz_http_request (reliability.md B01): Beast took Content-Length when the
// Transfer-Encoding was not chunked; an ambiguous length must be a 400, not a guess.
TEST_F(HttpServerTest, AmbiguousBodyLengthGets400) {
  const char* cases[] = {
      "POST /api/show HTTP/1.1\r\nTransfer-Encoding: chdddd\r\nContent-Length: 2\r\n\r\n{}",
      "POST /api/show HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n{}",
      "POST /api/show HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      // Found by fuzz_http_request: two Content-Lengths Beast reads as equal ("2", "02").
      "POST /api/show HTTP/1.1\r\nContent-Length: 2\r\nContent-Length:02\r\n\r\n{}",
  };
  for (const char* c : cases) {
    HttpReply r = raw(c);
    EXPECT_EQ(r.status, 400) << "request: " << c << "\nreply: " << r.raw;
    EXPECT_NE(error_of(r).find("malformed HTTP request"), std::string::npos) << r.body;
  }
  expect_alive();
}

TEST_F(HttpServerTest, OversizedHeaderGets431) {
  std::string req = "GET /api/health HTTP/1.1\r\nX-Big: " + std::string(64 * 1024, 'a') + "\r\n\r\n";
  HttpReply r = raw(req);
  EXPECT_EQ(r.status, 431) << r.raw.substr(0, 300);
  expect_alive();
}

TEST_F(HttpServerTest, OversizedBodyGets413BeforeItIsSent) {
  // Only the headers are sent: the daemon must answer from Content-Length alone.
  std::string req = "POST /api/show HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 2147483648\r\n\r\n";
  auto start = std::chrono::steady_clock::now();
  HttpReply r = raw(req);
  EXPECT_EQ(r.status, 413) << r.raw;
  EXPECT_NE(error_of(r).find("exceeds"), std::string::npos);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(3));
  // A real 9 MiB body (over the 8 MiB default) too.
  HttpReply big = http_request(daemon_->socket(), "POST", "/api/show", std::string(9u << 20, ' '));
  EXPECT_EQ(big.status, 413);
  expect_alive();
}

TEST_F(HttpServerTest, BadJsonBodies) {
  struct Case {
    std::string body;
    std::string message;
  } cases[] = {
      {"", "request body is empty"},
      {"{\"model\":", "invalid JSON"},
      {"[1,2]", "must be a JSON object"},
      {"{\"model\":\"a\",\"model\":\"b\"}", "duplicate key \"model\""},
      {std::string(100000, '['), "nesting deeper than 64"},
      {"{\"model\":\"\xff\xfe\"}", "invalid JSON"},
      {"{\"model\":\"\\ud800\"}", "invalid JSON"},
      {"{\"model\":42}", "\"model\" must be a string"},
      {"{\"model\":\"../../etc/passwd\"}", "invalid model name"},
      {"{\"model\":\"good\\u0000../x\"}", "invalid model name"},
  };
  for (const auto& c : cases) {
    HttpReply r = http_request(daemon_->socket(), "POST", "/api/show", c.body);
    EXPECT_EQ(r.status, 400) << c.body.substr(0, 60) << " -> " << r.raw.substr(0, 300);
    EXPECT_NE(error_of(r).find(c.message), std::string::npos) << error_of(r);
  }
  expect_alive();
}

TEST_F(HttpServerTest, PipelinedRequestsOnOneConnection) {
  std::string two = "GET /api/version HTTP/1.1\r\nHost: x\r\n\r\nGET /api/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  std::string out = raw_exchange(daemon_->socket(), two);
  EXPECT_EQ(out.find("HTTP/1.1 200"), 0u) << out;
  EXPECT_NE(out.find("HTTP/1.1 200", 10), std::string::npos) << out;
  EXPECT_NE(out.find("\"status\":\"ok\""), std::string::npos) << out;
}

TEST_F(HttpServerTest, ExpectContinueIsHonoured) {
  std::string body = R"({"model":"absent"})";
  std::string req = "POST /api/show HTTP/1.1\r\nHost: x\r\nConnection: close\r\nExpect: 100-continue\r\n"
                    "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
  std::string out = raw_exchange(daemon_->socket(), req);
  EXPECT_EQ(out.find("HTTP/1.1 100 Continue"), 0u) << out;
  EXPECT_NE(out.find("HTTP/1.1 404"), std::string::npos) << out;
}

TEST_F(HttpServerTest, SocketIsMode0660) {
  struct stat st {};
  ASSERT_EQ(::lstat(daemon_->socket().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 0777, 0660u);
}

TEST_F(HttpServerTest, SigtermExitsZeroAndRemovesTheSocket) {
  EXPECT_EQ(daemon_->stop(SIGTERM), 0) << daemon_->log();
  EXPECT_FALSE(std::filesystem::exists(daemon_->socket()));
  EXPECT_NE(daemon_->log().find("stopped"), std::string::npos);
}

TEST_F(HttpServerTest, StaleSocketIsReplacedLiveOneIsRefused) {
  // A second daemon on the same socket (other state) must refuse: someone is listening.
  TempDir other;
  auto r = run_command({gptqd_binary().string(), "--foreground", "--state-dir", (other / "state").string(), "--socket",
                        daemon_->socket().string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("another gptqd is listening on"), std::string::npos) << r.output;
  expect_alive();

  // kill -9 leaves the socket file behind; the next start replaces it.
  EXPECT_EQ(daemon_->stop(SIGKILL), 128 + SIGKILL);
  ASSERT_TRUE(std::filesystem::exists(daemon_->socket()));
  ASSERT_TRUE(daemon_->start()) << daemon_->log();
  EXPECT_NE(daemon_->log().find("replacing stale socket"), std::string::npos);
  expect_alive();
}

TEST_F(HttpServerTest, SecondDaemonOnTheSameStateIsRefused) {
  auto r = run_command({gptqd_binary().string(), "--foreground", "--state-dir", daemon_->state_dir().string(), "--socket",
                        (dir_ / "other.sock").string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("is using the state directory"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("pid " + std::to_string(daemon_->pid())), std::string::npos) << r.output;
  expect_alive();
}

TEST_F(HttpServerTest, RegistryRoutesNeedAdminRights) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to act as another uid";
  // A daemon whose socket anyone may open, serving group nogroup (65534): nobody, a member, may
  // read, not delete; a uid outside the group may not even read.
  daemon_->stop(SIGTERM);
  TempDir other;
  DaemonProcess open_daemon(other.path());
  ASSERT_TRUE(open_daemon.start({}, {"--socket-mode", "0666", "--user-group", "nogroup"})) << open_daemon.log();
  std::string sock = open_daemon.socket().string();
  ::chmod(other.path().c_str(), 0755);
  auto as = [&](const std::string& gid, std::vector<std::string> args) {
    std::vector<std::string> argv = {"setpriv", "--reuid=65534", "--regid=" + gid, "--clear-groups",
                                     gptqctl_binary().string(), "--socket", sock};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv);
  };
  auto list = as("65534", {"list"});
  EXPECT_EQ(list.exit_code, 0) << list.output;
  auto rm = as("65534", {"rm", "whatever"});
  EXPECT_EQ(rm.exit_code, 1) << rm.output;
  EXPECT_NE(rm.output.find("uid 65534 (nobody) may not do that"), std::string::npos) << rm.output;
  auto outsider = as("1", {"list"});
  EXPECT_EQ(outsider.exit_code, 1) << outsider.output;
  EXPECT_NE(outsider.output.find("may not use gptqd"), std::string::npos) << outsider.output;
}

class LimitsTest : public HttpServerTest {
 protected:
  std::vector<std::string> extra_args() override {
    return {"--idle-timeout-ms", "300", "--max-connections", "2"};
  }
};

// Reads until EOF or `ms`; returns what came and whether the peer closed.
std::pair<std::string, bool> read_until_close(int fd, int ms) {
  std::string out;
  char buf[4096];
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count());
    if (::poll(&p, 1, std::max(left, 1)) <= 0) continue;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) return {out, true};
    out.append(buf, static_cast<size_t>(n));
  }
  return {out, false};
}

TEST_F(LimitsTest, IdleConnectionsAreClosed) {
  int fd = connect_unix(daemon_->socket());
  ASSERT_GE(fd, 0);
  ::send(fd, "GET /api/he", 11, MSG_NOSIGNAL);  // a slowloris that never finishes
  auto [out, closed] = read_until_close(fd, 3000);
  EXPECT_TRUE(closed) << "a half-sent request kept its connection past the idle timeout";
  ::close(fd);
  expect_alive();
}

TEST_F(LimitsTest, ConnectionsBeyondTheCapGet503) {
  int a = connect_unix(daemon_->socket());
  int b = connect_unix(daemon_->socket());
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  HttpReply r = http_request(daemon_->socket(), "GET", "/api/health");
  EXPECT_EQ(r.status, 503) << r.raw;
  EXPECT_NE(r.headers.find("Retry-After"), std::string::npos);
  EXPECT_NE(error_of(r).find("at most 2 at once (max_connections)"), std::string::npos) << r.body;
  ::close(a);
  ::close(b);
  // Once the idle ones are gone, requests are served again.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  expect_alive();
}

// Each limit of docs/api.md ("Limits") at its boundary: the limit passes, one more is refused with
// the right status and a message naming the key (reliability.md B02, B03, B05, E01).
class BoundaryTest : public HttpServerTest {
 protected:
  std::vector<std::string> extra_args() override {
    return {"--max-header-bytes", "2048", "--max-body-bytes", "4096", "--max-json-depth", "8",
            "--max-requests-per-connection", "3", "--header-timeout-ms", "600", "--max-connections-per-uid", "3"};
  }
  // A GET whose request line and headers (up to and including the blank line) are `n` bytes.
  static std::string get_of_size(size_t n) {
    const std::string head = "GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: ";
    const std::string tail = "\r\n\r\n";
    return head + std::string(n - head.size() - tail.size(), 'a') + tail;
  }
};

TEST_F(BoundaryTest, HeaderBytes) {
  // Beast counts the header block up to and including the blank line's CRLF.
  HttpReply at = raw(get_of_size(2048));
  EXPECT_EQ(at.status, 200) << at.raw.substr(0, 300);
  HttpReply over = raw(get_of_size(2049));
  EXPECT_EQ(over.status, 431) << over.raw.substr(0, 300);
  EXPECT_NE(error_of(over).find("request headers exceed 2048 bytes (max_header_bytes)"), std::string::npos) << over.body;
  expect_alive();
}

TEST_F(BoundaryTest, BodyBytes) {
  auto body_of = [](size_t n) {
    std::string b = R"({"model":"absent"})";
    return b + std::string(n - b.size(), ' ');
  };
  HttpReply at = http_request(daemon_->socket(), "POST", "/api/show", body_of(4096));
  EXPECT_EQ(at.status, 404) << at.raw.substr(0, 300);
  HttpReply over = http_request(daemon_->socket(), "POST", "/api/show", body_of(4097));
  EXPECT_EQ(over.status, 413) << over.raw.substr(0, 300);
  EXPECT_NE(error_of(over).find("request body exceeds 4096 bytes (max_body_bytes)"), std::string::npos) << over.body;
  expect_alive();
}

TEST_F(BoundaryTest, JsonDepth) {
  // The object is level 1; seven arrays inside make 8.
  auto nested = [](int levels) {
    return R"({"model":"absent","x":)" + std::string(levels - 1, '[') + std::string(levels - 1, ']') + "}";
  };
  HttpReply at = http_request(daemon_->socket(), "POST", "/api/show", nested(8));
  EXPECT_EQ(at.status, 404) << at.raw.substr(0, 300);
  HttpReply over = http_request(daemon_->socket(), "POST", "/api/show", nested(9));
  EXPECT_EQ(over.status, 400) << over.raw.substr(0, 300);
  EXPECT_NE(error_of(over).find("nesting deeper than 8 levels"), std::string::npos) << over.body;
  EXPECT_NE(error_of(over).find("(max_json_depth)"), std::string::npos) << over.body;
  expect_alive();
}

TEST_F(BoundaryTest, RequestsPerConnection) {
  // Four pipelined requests: three answers, the third with Connection: close, then the daemon
  // closes; the fourth is never read.
  std::string four;
  for (int i = 0; i < 4; ++i) four += "GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n";
  const std::string out = raw_exchange(daemon_->socket(), four, std::chrono::seconds(5));
  size_t n = 0;
  for (size_t at = out.find("HTTP/1.1 200"); at != std::string::npos; at = out.find("HTTP/1.1 200", at + 1)) ++n;
  EXPECT_EQ(n, 3u) << out;
  const size_t last = out.rfind("HTTP/1.1 200");
  EXPECT_NE(out.find("Connection: close", last), std::string::npos) << out;
  EXPECT_EQ(out.substr(0, last).find("Connection: close"), std::string::npos) << out;
  expect_alive();
}

TEST_F(BoundaryTest, HeaderTimeoutClosesSlowloris) {
  // Headers completed in pieces within 600 ms are served ...
  int ok = connect_unix(daemon_->socket());
  ASSERT_GE(ok, 0);
  const std::string req = "GET /api/version HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  for (size_t i = 0; i < req.size(); i += 16) {
    ::send(ok, req.data() + i, std::min<size_t>(16, req.size() - i), MSG_NOSIGNAL);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  auto [answer, answered] = read_until_close(ok, 5000);
  ::close(ok);
  EXPECT_TRUE(answered);
  EXPECT_EQ(answer.find("HTTP/1.1 200"), 0u) << answer;

  // ... a slowloris (one header byte every 200 ms) is closed at header_timeout_ms, long before
  // idle_timeout_ms (30 s).
  int slow = connect_unix(daemon_->socket());
  ASSERT_GE(slow, 0);
  const auto start = std::chrono::steady_clock::now();
  ::send(slow, "GET / HTTP/1.1\r\n", 16, MSG_NOSIGNAL);
  bool closed = false;
  for (int i = 0; i < 50 && !closed; ++i) {
    ::send(slow, "X", 1, MSG_NOSIGNAL);
    closed = read_until_close(slow, 200).second;
  }
  const auto took = std::chrono::steady_clock::now() - start;
  ::close(slow);
  EXPECT_TRUE(closed) << "a slowloris kept its connection";
  EXPECT_GE(took, std::chrono::milliseconds(500));
  EXPECT_LT(took, std::chrono::milliseconds(3000));
  std::string log;
  for (int i = 0; i < 100 && log.find("(header_timeout_ms)") == std::string::npos; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    log = daemon_->log();
  }
  EXPECT_NE(log.find("took longer than 600 ms (header_timeout_ms)"), std::string::npos) << log;
  expect_alive();
}

TEST_F(BoundaryTest, ConnectionsPerUid) {
  // Two idle connections and the probe make three, the limit: served. A fourth: 503.
  int a = connect_unix(daemon_->socket());
  int b = connect_unix(daemon_->socket());
  ASSERT_GE(a, 0);
  ASSERT_GE(b, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  expect_alive();
  int c = connect_unix(daemon_->socket());
  ASSERT_GE(c, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  HttpReply r = http_request(daemon_->socket(), "GET", "/api/health");
  EXPECT_EQ(r.status, 503) << r.raw;
  EXPECT_NE(r.headers.find("Retry-After: 1"), std::string::npos) << r.headers;
  EXPECT_NE(error_of(r).find("at most 3 per user (max_connections_per_uid)"), std::string::npos) << r.body;
  EXPECT_NE(error_of(r).find("too many connections from uid " + std::to_string(::getuid())), std::string::npos) << r.body;
  ::close(c);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  expect_alive();

  // Another uid is still served while this one is at its limit.
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to connect as another uid";
  c = connect_unix(daemon_->socket());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/health").status, 503);
  const std::filesystem::path sock = daemon_->socket();
  ::chmod(sock.c_str(), 0666);
  ::chmod(sock.parent_path().c_str(), 0755);
  auto other = run_command({"setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", gptqctl_binary().string(),
                            "--socket", sock.string(), "list"});
  // uid 65534 is outside the user group: a 403 proves it got past the connection cap.
  EXPECT_NE(other.output.find("may not use gptqd"), std::string::npos) << other.output;
  EXPECT_EQ(other.output.find("max_connections_per_uid"), std::string::npos) << other.output;
  ::close(a);
  ::close(b);
  ::close(c);
}

TEST(DaemonStartup, RefusesAnInsecureStateDirectory) {
  TempDir dir;
  std::filesystem::create_directories(dir / "state");
  ::chmod((dir / "state").c_str(), 0777);
  auto r = run_command({gptqd_binary().string(), "--foreground", "--state-dir", (dir / "state").string(), "--socket",
                        (dir / "s.sock").string()});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_NE(r.output.find("others may write it"), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir / "s.sock"));
  EXPECT_FALSE(std::filesystem::exists(dir / "state" / "registry.db"));
}

TEST(DaemonStartup, BadArgumentsAreUsageErrors) {
  TempDir dir;
  auto r = run_command({gptqd_binary().string(), "--foreground", "--device", "tpu:0", "--state-dir", (dir / "s").string()});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("--device must be auto, cpu or cuda:N"), std::string::npos) << r.output;
  r = run_command({gptqd_binary().string(), "--no-such-flag"});
  EXPECT_NE(r.exit_code, 0);
  r = run_command({gptqd_binary().string(), "--foreground", "--state-dir", (dir / "s").string(), "--socket",
                   "/tmp/" + std::string(120, 'x') + ".sock"});
  EXPECT_EQ(r.exit_code, 2);
  EXPECT_NE(r.output.find("longer than"), std::string::npos) << r.output;
}

TEST(DaemonStartup, DetachesAndReportsTheSocket) {
  TempDir dir;
  auto r = run_command({gptqd_binary().string(), "--state-dir", (dir / "state").string(), "--socket",
                        (dir / "s.sock").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("listening on " + (dir / "s.sock").string()), std::string::npos) << r.output;
  HttpReply h = http_request(dir / "s.sock", "GET", "/api/health");
  ASSERT_EQ(h.status, 200);
  pid_t pid = json::parse(h.body)["pid"].get<pid_t>();
  ::kill(pid, SIGTERM);
  for (int i = 0; i < 200 && std::filesystem::exists(dir / "s.sock"); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_FALSE(std::filesystem::exists(dir / "s.sock"));
  // A start-up failure is reported by the parent with a non-zero status.
  ::chmod((dir / "state").c_str(), 0777);
  auto bad = run_command({gptqd_binary().string(), "--state-dir", (dir / "state").string(), "--socket",
                          (dir / "s.sock").string()});
  EXPECT_EQ(bad.exit_code, 1);
  EXPECT_NE(bad.output.find("others may write it"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace gptqd::test
