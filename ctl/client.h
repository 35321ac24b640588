// SPDX-License-Identifier: Apache-2.0
// Client: blocking HTTP/1.1 over the daemon's Unix socket, with NDJSON streaming (ctl layer).
#pragma once

#include <filesystem>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <string_view>

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
  // The same for Server-Sent Events ("data: {...}" lines); "[DONE]" ends it.
  HttpResult stream_sse(const std::string& method, const std::string& target, const std::string& body,
                        const std::function<void(const nlohmann::json&)>& on_event);
  // GET `target` (a blob): a 200 response's body goes to `on_data` piece by piece as it arrives,
  // so it never has to fit in memory. A non-200 response is returned whole without calling it.
  HttpResult download(const std::string& target, const std::function<void(std::string_view)>& on_data);

 private:
  HttpResult stream_lines(const std::string& method, const std::string& target, const std::string& body,
                          const std::function<bool(std::string_view)>& on_line);
  // The body of a 200 response to `on_data` as it arrives; false from it ends the read.
  HttpResult stream_body(const std::string& method, const std::string& target, const std::string& body,
                         const std::function<bool(std::string_view)>& on_data);
  std::filesystem::path socket_path_;
};

// Ctrl-C handling: after install_interrupt_handler(), SIGINT shuts down the socket of the
// request in flight and the request throws Interrupted. The daemon cancels a generation or an
// evaluation whose client went away; a quantize job keeps running (the client detaches).
struct Interrupted : CtlError {
  Interrupted() : CtlError(130, "interrupted") {}
};
void install_interrupt_handler();
// True (once) when SIGINT arrived since the last call.
bool take_interrupt();

// The "error" field of a JSON error body, or the body itself.
std::string error_message(const HttpResult& r);

}  // namespace gptqd::ctl
