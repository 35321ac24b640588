// SPDX-License-Identifier: Apache-2.0
// A real gptqd on a temp socket for integration tests, plus raw HTTP over Unix sockets
// (test support).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/test_env.h"

namespace gptqd::test {

std::filesystem::path gptqd_binary();
std::filesystem::path gptqctl_binary();

class DaemonProcess {
 public:
  // Does not start anything; `dir` holds state/ and the socket.
  explicit DaemonProcess(std::filesystem::path dir);
  ~DaemonProcess();  // SIGKILL if still running

  // Starts `gptqd --foreground` and waits until the socket accepts connections. `env` is added
  // to the environment ("K=V"); `args` are extra arguments. False (with log()) on failure.
  bool start(const std::vector<std::string>& env = {}, const std::vector<std::string>& args = {});
  // Runs gptqd through `prefix` (an absolute program path and its arguments), e.g. unshare(1).
  void set_wrapper(std::vector<std::string> prefix) { wrapper_ = std::move(prefix); }
  // Sends `sig` and waits for the process; returns its exit status (128 + signal when killed).
  int stop(int sig = 15, std::chrono::milliseconds timeout = std::chrono::seconds(20));
  // Waits for the process to exit by itself (e.g. after a fault point); -1 on timeout.
  int wait_exit(std::chrono::milliseconds timeout);
  bool running() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }

  const std::filesystem::path& state_dir() const { return state_dir_; }
  const std::filesystem::path& socket() const { return socket_; }
  std::string log() const;  // stderr of every run so far

  // gptqctl --socket <socket> args... (stdin from `stdin_text` when given)
  CommandResult ctl(const std::vector<std::string>& args, const std::string* stdin_text = nullptr) const;

 private:
  std::filesystem::path dir_, state_dir_, socket_, log_path_;
  pid_t pid_ = -1;
  std::vector<std::string> wrapper_;
};

struct HttpReply {
  int status = 0;              // 0 when no status line came back
  std::string headers;
  std::string body;            // de-chunked
  std::string raw;
};

// A connected Unix stream socket, or -1.
int connect_unix(const std::filesystem::path& path);

// Sends `bytes` on a fresh connection and reads until the peer closes (or `timeout`).
std::string raw_exchange(const std::filesystem::path& socket, const std::string& bytes,
                         std::chrono::milliseconds timeout = std::chrono::seconds(10));
HttpReply parse_reply(const std::string& raw);
// One request with "Connection: close".
HttpReply http_request(const std::filesystem::path& socket, const std::string& method, const std::string& target,
                       const std::string& body = {}, std::chrono::milliseconds timeout = std::chrono::seconds(60));

// A POST whose (streamed) response is read as it arrives, on a connection that stays open until
// the object is destroyed (closing it = the client hanging up).
class StreamingRequest {
 public:
  StreamingRequest(const std::filesystem::path& socket, const std::string& target, const std::string& json_body);
  ~StreamingRequest();
  StreamingRequest(const StreamingRequest&) = delete;
  StreamingRequest& operator=(const StreamingRequest&) = delete;
  // Reads until `marker` has arrived (true), or the peer closed / the time ran out (false).
  bool wait_for(const std::string& marker, std::chrono::milliseconds timeout = std::chrono::seconds(120));
  const std::string& received() const { return received_; }

 private:
  int fd_ = -1;
  std::string received_;
};

// The JSON objects of an NDJSON body, one per non-empty line.
std::vector<nlohmann::json> ndjson(const std::string& body);

// Sorted file names in a directory ("" entries never).
std::vector<std::string> list_dir(const std::filesystem::path& dir);

}  // namespace gptqd::test
