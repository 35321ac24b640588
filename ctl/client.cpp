// SPDX-License-Identifier: Apache-2.0
// Blocking Unix-socket HTTP client built on Boost.Beast (ctl layer).
#include "ctl/client.h"

#include <utility>  // before Boost 1.74's headers, which forget it

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <signal.h>
#include <sys/socket.h>

#include <atomic>

namespace gptqd::ctl {
namespace {

std::atomic<int> g_active_fd{-1};
std::atomic<bool> g_interrupted{false};

extern "C" void on_sigint(int) {
  g_interrupted.store(true);
  const int fd = g_active_fd.load();
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);  // async-signal-safe; the blocked read returns at once
}

// Registers the socket of the request in flight for on_sigint.
struct ActiveFd {
  explicit ActiveFd(int fd) { g_active_fd.store(fd); }
  ~ActiveFd() { g_active_fd.store(-1); }
};

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;

local::socket connect(asio::io_context& io, const std::filesystem::path& path) {
  local::socket sock(io);
  boost::system::error_code ec;
  sock.connect(local::endpoint(path.string()), ec);
  if (ec) {
    namespace errc = boost::system::errc;
    std::string hint;
    if (ec == errc::no_such_file_or_directory || ec == errc::connection_refused) {
      hint = " — is gptqd running? Start it with `gptqd`, or point --socket / GPTQD_SOCKET at its socket";
    } else if (ec == errc::permission_denied) {
      hint = " — this user may not open the socket; ask to be added to the daemon's group";
    }
    throw CtlError(kExitUnreachable, "cannot connect to gptqd at " + path.string() + ": " + ec.message() + hint);
  }
  return sock;
}

http::request<http::string_body> make_request(const std::string& method, const std::string& target,
                                              const std::string& body) {
  http::request<http::string_body> req{http::string_to_verb(method), target, 11};
  req.set(http::field::host, "gptqd");
  req.set(http::field::user_agent, "gptqctl/" GPTQD_VERSION);
  req.keep_alive(false);
  if (!body.empty() || method == "POST" || method == "DELETE") {
    req.set(http::field::content_type, "application/json");
    req.body() = body;
    req.prepare_payload();
  }
  return req;
}

[[noreturn]] void lost(const std::filesystem::path& path, const boost::system::error_code& ec) {
  if (g_interrupted.load()) throw Interrupted();
  throw CtlError(kExitFailed, "lost the connection to gptqd at " + path.string() + ": " + ec.message());
}

// Connects and sends one request; the caller reads the response.
local::socket send_request(asio::io_context& io, const std::filesystem::path& path, const std::string& method,
                           const std::string& target, const std::string& body) {
  local::socket sock = connect(io, path);
  boost::system::error_code ec;
  http::write(sock, make_request(method, target, body), ec);
  if (ec) lost(path, ec);
  return sock;
}

}  // namespace

HttpResult Client::request(const std::string& method, const std::string& target, const std::string& body) {
  asio::io_context io;
  local::socket sock = send_request(io, socket_path_, method, target, body);
  boost::system::error_code ec;
  beast::flat_buffer buf;
  http::response_parser<http::string_body> parser;
  parser.body_limit(256u << 20);
  http::read(sock, buf, parser, ec);
  if (ec) lost(socket_path_, ec);
  return HttpResult{static_cast<int>(parser.get().result_int()), parser.get().body()};
}

void install_interrupt_handler() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;  // no SA_RESTART: a blocked terminal read returns too
  sigaction(SIGINT, &sa, nullptr);
}

bool take_interrupt() { return g_interrupted.exchange(false); }

HttpResult Client::stream(const std::string& method, const std::string& target, const std::string& body,
                          const std::function<void(const nlohmann::json&)>& on_event) {
  return stream_lines(method, target, body, [&](std::string_view line) {
    nlohmann::json ev = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (ev.is_discarded()) throw CtlError(kExitFailed, "gptqd sent a malformed event: " + std::string(line.substr(0, 200)));
    on_event(ev);
    return true;
  });
}

HttpResult Client::stream_sse(const std::string& method, const std::string& target, const std::string& body,
                              const std::function<void(const nlohmann::json&)>& on_event) {
  return stream_lines(method, target, body, [&](std::string_view line) {
    if (line.rfind("data: ", 0) != 0) return true;  // comments, event names, blank separators
    std::string_view data = line.substr(6);
    if (data == "[DONE]") return false;
    nlohmann::json ev = nlohmann::json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (ev.is_discarded()) throw CtlError(kExitFailed, "gptqd sent a malformed event: " + std::string(data.substr(0, 200)));
    on_event(ev);
    return true;
  });
}

HttpResult Client::download(const std::string& target, const std::function<void(std::string_view)>& on_data) {
  return stream_body("GET", target, {}, [&](std::string_view data) {
    on_data(data);
    return true;
  });
}

HttpResult Client::stream_lines(const std::string& method, const std::string& target, const std::string& body,
                                const std::function<bool(std::string_view)>& on_line) {
  std::string pending;  // bytes not yet ending in '\n'
  return stream_body(method, target, body, [&](std::string_view data) {
    pending.append(data);
    size_t start = 0;
    for (size_t nl; (nl = pending.find('\n', start)) != std::string::npos; start = nl + 1) {
      std::string_view line(pending.data() + start, nl - start);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) continue;
      if (!on_line(line)) return false;
    }
    pending.erase(0, start);
    return true;
  });
}

HttpResult Client::stream_body(const std::string& method, const std::string& target, const std::string& body,
                               const std::function<bool(std::string_view)>& on_data) {
  asio::io_context io;
  local::socket sock = send_request(io, socket_path_, method, target, body);
  ActiveFd active(sock.native_handle());
  if (g_interrupted.load()) throw Interrupted();
  boost::system::error_code ec;
  beast::flat_buffer buf;
  http::response_parser<http::buffer_body> parser;
  parser.body_limit(std::uint64_t{1} << 50);  // not boost::none: Beast 1.74 then rejects any Content-Length
  http::read_header(sock, buf, parser, ec);
  if (ec) lost(socket_path_, ec);
  const int status = static_cast<int>(parser.get().result_int());
  HttpResult result{status, {}};
  char chunk[65536];
  while (!parser.is_done()) {
    parser.get().body().data = chunk;
    parser.get().body().size = sizeof chunk;
    // read_some, not read: read would wait for a full buffer or the end of the message, so a
    // stream's events would arrive in 64 KiB batches instead of as they are sent.
    http::read_some(sock, buf, parser, ec);
    if (ec == http::error::need_buffer) ec = {};
    if (ec) lost(socket_path_, ec);
    const size_t n = sizeof chunk - parser.get().body().size;
    if (status != 200) {
      result.body.append(chunk, n);
      continue;
    }
    if (n > 0 && !on_data(std::string_view(chunk, n))) return result;
  }
  if (g_interrupted.load()) throw Interrupted();
  return result;
}

std::string error_message(const HttpResult& r) {
  nlohmann::json j = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_object() && j.contains("error") && j["error"].is_string()) return j["error"].get<std::string>();
  std::string body = r.body;
  while (!body.empty() && (body.back() == '\n' || body.back() == '\r')) body.pop_back();
  return body.empty() ? "HTTP " + std::to_string(r.status) : "HTTP " + std::to_string(r.status) + ": " + body;
}

}  // namespace gptqd::ctl
