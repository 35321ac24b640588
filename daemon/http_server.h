// SPDX-License-Identifier: Apache-2.0
// HttpServer: HTTP/1.1 on a Unix stream socket with Boost.Beast (daemon layer). One coroutine per
// connection reads a request, hands it to the dispatcher and writes the answer, full or
// streamed (chunked). Limits: header and body size, idle, header and write timeouts, connection
// count in total and per uid, requests per connection (docs/api.md, "Limits").
#pragma once

#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <sys/types.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/core/basic_stream.hpp>
#include <boost/beast/http.hpp>
#include <functional>
#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "daemon/daemon_config.h"

namespace gptqd::daemon {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;

using Stream = beast::basic_stream<asio::local::stream_protocol>;

// Who is on the other end of the socket (SO_PEERCRED).
struct PeerCred {
  pid_t pid = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  std::vector<gid_t> groups;  // primary first, then supplementary (SO_PEERGROUPS)
};

struct Request {
  http::verb method = http::verb::unknown;
  std::string method_name;   // "GET"
  std::string path;          // target without the query
  std::string query;         // after '?', undecoded
  std::string body;
  PeerCred peer;
  uint32_t max_json_depth = 64;  // the daemon's max_json_depth, for the handlers' JSON parser
};

// Writes the one response of a request: either send()/send_json()/send_error() once, or
// begin_stream(), then write_chunk()s, then end_stream().
class ResponseWriter {
 public:
  ResponseWriter(Stream& stream, unsigned version, bool keep_alive, const DaemonConfig& cfg)
      : stream_(stream), version_(version), keep_alive_(keep_alive), cfg_(cfg) {}
  ~ResponseWriter();
  ResponseWriter(const ResponseWriter&) = delete;
  ResponseWriter& operator=(const ResponseWriter&) = delete;

  // Calls `on_hangup` (on the io thread, at most once) if the client closes its end of the
  // connection while this response is being produced, so long work stops at once instead of at
  // its next write, which for a prompt being processed or an unstreamed answer can be many
  // seconds away (reliability.md D07). Only a full close counts: a client that shut down just
  // its sending side (shutdown(SHUT_WR)) may still be reading, and one that pipelined its next
  // request is still there; either ends the watch. The watch ends with the response.
  void watch_hangup(std::function<void()> on_hangup);

  asio::awaitable<void> send(http::status status, std::string body, std::string_view content_type,
                             std::string_view allow = {});
  asio::awaitable<void> send_json(http::status status, const nlohmann::json& body);
  asio::awaitable<void> send_error(http::status status, const std::string& message);

  // 200 with Transfer-Encoding: chunked. False when the client is already gone.
  asio::awaitable<bool> begin_stream(std::string_view content_type);
  // One chunk; false when the client is gone or stopped reading for write_timeout_ms.
  asio::awaitable<bool> write_chunk(std::string data);
  asio::awaitable<void> end_stream();

  bool started() const { return started_; }
  bool client_gone() const { return client_gone_; }
  bool keep_alive() const { return keep_alive_ && !client_gone_; }

 private:
  Stream& stream_;
  unsigned version_;
  bool keep_alive_;
  const DaemonConfig& cfg_;
  bool started_ = false;
  bool streaming_ = false;
  bool client_gone_ = false;
  struct HangupWatch {
    bool active = true;
    std::function<void()> on_hangup;
  };
  std::shared_ptr<HangupWatch> watch_;
};

// reliability.md B01: a request whose body length is ambiguous is refused (400), never guessed at:
// Transfer-Encoding together with Content-Length, a Transfer-Encoding that does not end in
// "chunked" (Beast would fall back to Content-Length, a request-smuggling desync), or more than
// one Content-Length (Beast accepts "2" and "02" as the same; a proxy in front might not).
inline bool has_ambiguous_length(const http::request_parser<http::string_body>& parser) {
  const auto& h = parser.get();
  if (h.count(http::field::content_length) > 1) return true;
  return h.count(http::field::transfer_encoding) > 0 &&
         (h.count(http::field::content_length) > 0 || !parser.chunked());
}

using Dispatcher = std::function<asio::awaitable<void>(Request&, ResponseWriter&)>;

class HttpServer {
 public:
  HttpServer(asio::io_context& io, const DaemonConfig& cfg, Dispatcher dispatch);
  ~HttpServer();

  // Takes the listening socket systemd passed (socket activation), or binds its own: a stale
  // file from a dead daemon is replaced, a live listener is an error ("another gptqd is
  // listening"); the file gets cfg.socket_mode before any client can connect.
  void listen();
  // Where clients connect, and whether systemd owns the socket (then stop() leaves the file).
  const std::string& path() const { return path_; }
  bool activated() const { return activated_; }
  // Starts accepting (a coroutine on the io_context).
  void start();
  // Stops accepting, removes the socket file and closes connections that wait for a request.
  // Connections busy with a request finish it.
  void stop();
  // Closes every connection, busy ones too (end of the shutdown grace period).
  void close_all();
  size_t n_connections() const { return connections_.size(); }

 private:
  struct Connection {
    Stream* stream = nullptr;
    uid_t uid = static_cast<uid_t>(-1);
    bool busy = false;
  };
  asio::awaitable<void> accept_loop();
  asio::awaitable<void> serve(Stream stream, PeerCred peer);
  asio::awaitable<void> refuse_busy(Stream stream, std::string message);
  size_t n_connections_of(uid_t uid) const;

  asio::io_context& io_;
  const DaemonConfig& cfg_;
  Dispatcher dispatch_;
  std::unique_ptr<asio::local::stream_protocol::acceptor> acceptor_;
  std::list<Connection> connections_;
  bool stopping_ = false;
  bool own_socket_file_ = false;
  bool activated_ = false;
  std::string path_;
};

}  // namespace gptqd::daemon
