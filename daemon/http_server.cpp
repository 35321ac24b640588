// SPDX-License-Identifier: Apache-2.0
// Unix-socket HTTP/1.1 server: accept loop, per-connection coroutine, limits (daemon layer).
#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include "daemon/http_server.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <algorithm>
#include <boost/beast/core/flat_buffer.hpp>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "daemon/authz.h"
#include "daemon/log.h"
#include "daemon/service_manager.h"
#include "engine/error.h"

namespace gptqd::daemon {
namespace {

using asio::use_awaitable;
using boost::system::error_code;
using local = asio::local::stream_protocol;

PeerCred peer_of(local::socket& sock) {
  PeerCred peer;
  struct ucred cred {};
  socklen_t len = sizeof cred;
  if (::getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return peer;
  peer.pid = cred.pid;
  peer.uid = cred.uid;
  peer.gid = cred.gid;
  peer.groups.push_back(cred.gid);
  // SO_PEERCRED has no supplementary groups; SO_PEERGROUPS (Linux 4.13) has the ones the peer
  // held when it connected. Without it, the user database says which groups the uid is in.
  std::vector<gid_t> groups(64);
  socklen_t glen = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
  int rc = ::getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
  if (rc != 0 && errno == ERANGE) {
    groups.resize(glen / sizeof(gid_t));
    rc = ::getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &glen);
  }
  if (rc == 0) {
    groups.resize(glen / sizeof(gid_t));
    for (gid_t g : groups) {
      if (std::find(peer.groups.begin(), peer.groups.end(), g) == peer.groups.end()) peer.groups.push_back(g);
    }
  } else {
    peer.groups = groups_of_user(cred.uid, cred.gid);
  }
  return peer;
}

// A write that failed: the client is gone, or stopped reading for write_timeout_ms (logged once,
// so an operator sees why a stream ended).
void note_write_error(const error_code& ec, const DaemonConfig& cfg) {
  if (ec == beast::error::timeout) {
    log_info("dropped a client that read nothing for ", cfg.write_timeout_ms, " ms (write_timeout_ms)");
  }
}

bool is_disconnect(const error_code& ec) {
  return ec == http::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
         ec == asio::error::broken_pipe || ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor;
}

// Is something accepting connections on `path`? (A stale file from a dead daemon refuses.)
bool socket_is_live(const std::string& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  bool live = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
  ::close(fd);
  return live;
}

// The socket's directory: created 0700 when missing; must be a real directory.
void prepare_socket_dir(const std::filesystem::path& dir) {
  struct stat st {};
  if (::lstat(dir.c_str(), &st) != 0) {
    if (errno != ENOENT) fail(ErrorCode::io, "cannot inspect ", dir.string(), ": ", std::strerror(errno));
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      fail(ErrorCode::io, "cannot create the socket directory ", dir.string(), ": ", std::strerror(errno));
    }
    if (::lstat(dir.c_str(), &st) != 0) fail(ErrorCode::io, "cannot inspect ", dir.string());
  }
  if (!S_ISDIR(st.st_mode)) fail(ErrorCode::io, "socket directory ", dir.string(), " is not a directory");
  // A directory under a shared /tmp must be ours, or another user could swap the socket.
  if (dir.string().rfind("/tmp/", 0) == 0 && st.st_uid != ::geteuid()) {
    fail(ErrorCode::io, "socket directory ", dir.string(), " belongs to uid ", st.st_uid,
         ", not to this user; remove it or pass --socket");
  }
}

}  // namespace

// ---- ResponseWriter -----------------------------------------------------------------------------

ResponseWriter::~ResponseWriter() {
  if (watch_ && watch_->active) {
    watch_->active = false;
    // The connection's only pending operation now is the watch's wait (the handler has returned,
    // so nothing is being written): cancel it before the next request is read.
    error_code ec;
    stream_.socket().cancel(ec);
  }
}

void ResponseWriter::watch_hangup(std::function<void()> on_hangup) {
  if (watch_ || client_gone_) return;
  watch_ = std::make_shared<HangupWatch>(HangupWatch{true, std::move(on_hangup)});
  local::socket& sock = stream_.socket();
  sock.async_wait(local::socket::wait_read, [&sock, watch = watch_](const error_code& ec) {
    if (ec || !watch->active) return;  // cancelled with the response or the connection
    watch->active = false;
    // Readable: a hang-up, a half-close or the next pipelined request. A Unix stream socket
    // reports POLLHUP only when the peer closed both directions.
    pollfd p{sock.native_handle(), POLLIN | POLLRDHUP, 0};
    if (::poll(&p, 1, 0) == 1 && (p.revents & (POLLHUP | POLLERR)) != 0) watch->on_hangup();
  });
}

asio::awaitable<void> ResponseWriter::send(http::status status, std::string body, std::string_view content_type,
                                           std::string_view allow) {
  if (started_) co_return;
  started_ = true;
  http::response<http::string_body> res{status, version_};
  res.set(http::field::server, "gptqd/" GPTQD_VERSION);
  res.set(http::field::content_type, content_type);
  if (!allow.empty()) res.set(http::field::allow, allow);
  if (status == http::status::service_unavailable) res.set(http::field::retry_after, "1");
  res.keep_alive(keep_alive_);
  res.body() = std::move(body);
  res.prepare_payload();
  stream_.expires_after(std::chrono::milliseconds(cfg_.write_timeout_ms));
  error_code ec;
  co_await http::async_write(stream_, res, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    client_gone_ = true;
    note_write_error(ec, cfg_);
  }
}

asio::awaitable<void> ResponseWriter::send_json(http::status status, const nlohmann::json& body) {
  co_await send(status, body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n",
                "application/json");
}

asio::awaitable<void> ResponseWriter::send_error(http::status status, const std::string& message) {
  nlohmann::json body = {{"error", message}};  // (built outside co_await: GCC 12 coroutine bug)
  co_await send_json(status, body);
}

asio::awaitable<bool> ResponseWriter::begin_stream(std::string_view content_type) {
  if (started_) co_return false;
  started_ = true;
  streaming_ = true;
  http::response<http::empty_body> res{http::status::ok, version_};
  res.set(http::field::server, "gptqd/" GPTQD_VERSION);
  res.set(http::field::content_type, content_type);
  res.set(http::field::cache_control, "no-cache");
  res.keep_alive(keep_alive_);
  res.chunked(true);
  http::response_serializer<http::empty_body> sr{res};
  stream_.expires_after(std::chrono::milliseconds(cfg_.write_timeout_ms));
  error_code ec;
  co_await http::async_write_header(stream_, sr, asio::redirect_error(use_awaitable, ec));
  if (ec) {
    client_gone_ = true;
    note_write_error(ec, cfg_);
  }
  co_return !client_gone_;
}

asio::awaitable<bool> ResponseWriter::write_chunk(std::string data) {
  if (!streaming_ || client_gone_) co_return false;
  if (data.empty()) co_return true;  // an empty chunk would end the body
  stream_.expires_after(std::chrono::milliseconds(cfg_.write_timeout_ms));
  error_code ec;
  co_await asio::async_write(stream_, http::make_chunk(asio::buffer(data)), asio::redirect_error(use_awaitable, ec));
  if (ec) {
    client_gone_ = true;
    note_write_error(ec, cfg_);
  }
  co_return !client_gone_;
}

asio::awaitable<void> ResponseWriter::end_stream() {
  if (!streaming_ || client_gone_) co_return;
  streaming_ = false;
  stream_.expires_after(std::chrono::milliseconds(cfg_.write_timeout_ms));
  error_code ec;
  co_await asio::async_write(stream_, http::make_chunk_last(), asio::redirect_error(use_awaitable, ec));
  if (ec) {
    client_gone_ = true;
    note_write_error(ec, cfg_);
  }
}

// ---- HttpServer ---------------------------------------------------------------------------------

HttpServer::HttpServer(asio::io_context& io, const DaemonConfig& cfg, Dispatcher dispatch)
    : io_(io), cfg_(cfg), dispatch_(std::move(dispatch)) {}

HttpServer::~HttpServer() {
  if (own_socket_file_) ::unlink(cfg_.socket_path.c_str());
}

void HttpServer::listen() {
  if (const int fd = activated_socket(); fd >= 0) {
    acceptor_ = std::make_unique<local::acceptor>(io_);
    error_code ec;
    acceptor_->assign(local(), fd, ec);
    if (ec) fail(ErrorCode::io, "cannot use the socket systemd passed: ", ec.message());
    ::fcntl(fd, F_SETFD, FD_CLOEXEC);
    activated_ = true;
    path_ = acceptor_->local_endpoint(ec).path();
    if (path_.empty()) path_ = "(socket from systemd)";
    return;
  }
  const std::string path = cfg_.socket_path.string();
  path_ = path;
  prepare_socket_dir(cfg_.socket_path.parent_path());
  struct stat st {};
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      fail(ErrorCode::io, path, " exists and is not a socket; remove it or choose another --socket");
    }
    if (socket_is_live(path)) {
      fail(ErrorCode::conflict, "another gptqd is listening on ", path, " (stop it first, or use another --socket)");
    }
    log_info("replacing stale socket ", path, " left by a daemon that is gone");
    ::unlink(path.c_str());
  }
  acceptor_ = std::make_unique<local::acceptor>(io_);
  error_code ec;
  acceptor_->open(local(), ec);
  if (ec) fail(ErrorCode::io, "cannot create a Unix socket: ", ec.message());
  // Why the umask: the socket must never exist, even briefly, with looser permissions.
  mode_t old_mask = ::umask(static_cast<mode_t>(0777 & ~cfg_.socket_mode));
  acceptor_->bind(local::endpoint(path), ec);
  ::umask(old_mask);
  if (ec) fail(ErrorCode::io, "cannot bind ", path, ": ", ec.message());
  own_socket_file_ = true;
  ::chmod(path.c_str(), static_cast<mode_t>(cfg_.socket_mode));
  acceptor_->listen(asio::socket_base::max_listen_connections, ec);
  if (ec) fail(ErrorCode::io, "cannot listen on ", path, ": ", ec.message());
}

void HttpServer::start() {
  asio::co_spawn(io_, accept_loop(), [](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& ex) {
      log_error("accept loop ended: ", ex.what());
    }
  });
}

void HttpServer::stop() {
  if (stopping_) return;
  stopping_ = true;
  if (acceptor_) {
    error_code ec;
    acceptor_->close(ec);
  }
  if (own_socket_file_) {
    ::unlink(cfg_.socket_path.c_str());
    own_socket_file_ = false;
  }
  for (auto& c : connections_) {
    error_code ec;
    if (!c.busy) c.stream->socket().close(ec);
  }
}

void HttpServer::close_all() {
  for (auto& c : connections_) {
    error_code ec;
    c.stream->socket().close(ec);
  }
}

asio::awaitable<void> HttpServer::accept_loop() {
  while (!stopping_) {
    error_code ec;
    local::socket sock = co_await acceptor_->async_accept(asio::redirect_error(use_awaitable, ec));
    if (ec) {
      if (ec == asio::error::operation_aborted || stopping_) break;
      // EMFILE/ENFILE: back off instead of spinning on accept().
      log_warn("accept failed: ", ec.message(), "; retrying in 100 ms");
      asio::steady_timer t(io_, std::chrono::milliseconds(100));
      co_await t.async_wait(asio::redirect_error(use_awaitable, ec));
      continue;
    }
    PeerCred peer = peer_of(sock);
    Stream stream(std::move(sock));
    auto on_done = [](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        log_error("connection ended by an error: ", ex.what());
      }
    };
    if (connections_.size() >= cfg_.max_connections) {
      std::string message = cat("too many connections: the daemon serves at most ", cfg_.max_connections,
                                " at once (max_connections); retry shortly");
      asio::co_spawn(io_, refuse_busy(std::move(stream), std::move(message)), on_done);
    } else if (n_connections_of(peer.uid) >= cfg_.max_connections_per_uid) {
      std::string message = cat("too many connections from uid ", peer.uid, ": at most ", cfg_.max_connections_per_uid,
                                " per user (max_connections_per_uid); close some and retry");
      asio::co_spawn(io_, refuse_busy(std::move(stream), std::move(message)), on_done);
    } else {
      asio::co_spawn(io_, serve(std::move(stream), peer), on_done);
    }
  }
}

size_t HttpServer::n_connections_of(uid_t uid) const {
  return static_cast<size_t>(
      std::count_if(connections_.begin(), connections_.end(), [uid](const Connection& c) { return c.uid == uid; }));
}

asio::awaitable<void> HttpServer::refuse_busy(Stream stream, std::string message) {
  // Read nothing: answer 503 at once and close, so an overloaded daemon stays responsive.
  ResponseWriter w(stream, 11, false, cfg_);
  co_await w.send_error(http::status::service_unavailable, message);
  error_code ec;
  stream.socket().shutdown(local::socket::shutdown_send, ec);
}

asio::awaitable<void> HttpServer::serve(Stream stream, PeerCred peer) {
  connections_.push_back(Connection{&stream, peer.uid, false});
  auto self = std::prev(connections_.end());
  struct Erase {
    std::list<Connection>& list;
    std::list<Connection>::iterator it;
    ~Erase() { list.erase(it); }
  } erase{connections_, self};

  // Pipelined requests are answered one at a time, in order: the next one is read (and the
  // socket with it) only after this one's response, so a client cannot queue work here.
  beast::flat_buffer buffer;
  for (uint32_t n_requests = 1;; ++n_requests) {
    self->busy = false;
    if (stopping_) break;
    http::request_parser<http::string_body> parser;
    parser.header_limit(cfg_.max_header_bytes);
    parser.body_limit(cfg_.max_body_bytes);
    error_code ec;
    if (buffer.size() == 0) {
      // Idle until the first byte of the next request (idle_timeout_ms) ...
      stream.expires_after(std::chrono::milliseconds(cfg_.idle_timeout_ms));
      const size_t n = co_await stream.async_read_some(buffer.prepare(1024), asio::redirect_error(use_awaitable, ec));
      buffer.commit(n);
      if (ec) break;  // closed, or idle too long
    }
    // ... then the whole header block within header_timeout_ms (slowloris), or idle_timeout_ms
    // when that is shorter.
    const bool idle_is_shorter = cfg_.idle_timeout_ms < cfg_.header_timeout_ms;
    const uint32_t header_ms = idle_is_shorter ? cfg_.idle_timeout_ms : cfg_.header_timeout_ms;
    stream.expires_after(std::chrono::milliseconds(header_ms));
    const size_t n_header =
        co_await http::async_read_header(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    if (ec == beast::error::timeout) {
      log_info("closed a connection (uid ", peer.uid, ") whose request headers took longer than ", header_ms, " ms (",
               idle_is_shorter ? "idle_timeout_ms" : "header_timeout_ms", ")");
      break;
    }
    // Beast bounds the request line and the fields separately; the limit is on both together.
    if (!ec && n_header > cfg_.max_header_bytes) ec = http::error::header_limit;
    if (!ec && has_ambiguous_length(parser)) ec = http::error::bad_transfer_encoding;
    if (!ec) {
      self->busy = true;
      auto& hdr = parser.get();
      stream.expires_after(std::chrono::milliseconds(cfg_.idle_timeout_ms));  // the whole body within this
      if (beast::iequals(hdr[http::field::expect], "100-continue") && !parser.is_done()) {
        http::response<http::empty_body> cont{http::status::continue_, hdr.version()};
        co_await http::async_write(stream, cont, asio::redirect_error(use_awaitable, ec));
      }
      if (!ec) co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    }
    if (ec) {
      if (is_disconnect(ec) || ec == beast::error::timeout) break;
      ResponseWriter w(stream, 11, false, cfg_);
      if (ec == http::error::header_limit) {
        co_await w.send_error(http::status::request_header_fields_too_large,
                              cat("request headers exceed ", cfg_.max_header_bytes,
                                  " bytes (max_header_bytes); send fewer or shorter headers"));
      } else if (ec == http::error::body_limit) {
        co_await w.send_error(http::status::payload_too_large,
                              cat("request body exceeds ", cfg_.max_body_bytes,
                                  " bytes (max_body_bytes); send a smaller body"));
      } else {
        co_await w.send_error(http::status::bad_request, "malformed HTTP request: " + ec.message());
      }
      break;
    }
    http::request<http::string_body> raw = parser.release();
    Request req;
    req.method = raw.method();
    req.method_name = std::string(raw.method_string());
    std::string target(raw.target());
    auto q = target.find('?');
    req.path = target.substr(0, q);
    if (q != std::string::npos) req.query = target.substr(q + 1);
    req.body = std::move(raw.body());
    req.peer = peer;
    req.max_json_depth = cfg_.max_json_depth;

    // The last request allowed on this connection is answered with Connection: close.
    const bool more = n_requests < cfg_.max_requests_per_connection;
    ResponseWriter w(stream, raw.version(), raw.keep_alive() && more && !stopping_, cfg_);
    co_await dispatch_(req, w);
    if (!w.started()) co_await w.send_error(http::status::internal_server_error, "the handler sent no response");
    if (!w.keep_alive()) break;
  }
  error_code ec;
  stream.socket().shutdown(local::socket::shutdown_both, ec);
}

}  // namespace gptqd::daemon
