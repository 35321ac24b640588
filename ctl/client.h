// SPDX-License-Identifier: Apache-2.0
// Client: blocking HTTP/1.1 over the daemon's Unix socket, with NDJSON streaming (ctl layer).
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>

namespace gptqd::ctl {

// Exit codes of gptqctl (documented in the README).
enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,       // the daemon refused or the operation failed
  kExitUsage = 2,        // bad command line
  kExitUnreachable = 3,  // no daemon answers on the socket
};

// A failure with the exit code it should end gptqctl with; `what()` is the one-line reason.
struct CtlError : std::runtime_error {
  CtlError(int code, const std::string& message) : std::runtime_error(message), exit_code(code) {}
  int exit_code;
};

struct HttpResult {
  int status = 0;
  std::string body;
};

class Client {
 public:
  explicit Client(std::filesystem::path socket_path) : socket_path_(std::move(socket_path)) {}
  const std::filesystem::path& socket_path() const { return socket_path_; }

  // One request, whole response. Throws CtlError(kExitUnreachable) when nobody listens.
  HttpResult request(const std::string& method, const std::string& target, const std::string& body = {});

  // A request whose 200 response is an NDJSON stream: `on_event` gets each line as JSON. A
  // non-200 response is returned whole (status + body) without calling `on_event`.
  HttpResult stream(const std::string& method, const std::string& target, const std::string& body,
                    const std::function<void(const nlohmann::json&)>& on_event);

 private:
  std::filesystem::path socket_path_;
};

// The "error" field of a JSON error body, or the body itself.
std::string error_message(const HttpResult& r);

}  // namespace gptqd::ctl
