// SPDX-License-Identifier: Apache-2.0
// Fuzzes HTTP/1.1 request parsing as daemon/http_server.cpp does it: Beast's request_parser with
// the daemon's default header and body limits, pipelined requests read one after another from
// the same bytes, then the target split into path and query. Checks the framing rules of
// reliability.md B01 (no request may be accepted with an ambiguous length).
#include <boost/asio/buffer.hpp>
#include <boost/beast/http.hpp>
#include <string>

#include "daemon/daemon_config.h"
#include "daemon/http_server.h"
#include "fuzz/fuzz_common.h"

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

[[noreturn]] void bug(const char* what, std::string_view detail) {
  std::fprintf(stderr, "http: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const gptqd::daemon::DaemonConfig cfg;
  std::string_view rest = gptqd::fuzz::to_text(data, size);
  for (int n_requests = 0; n_requests < 16 && !rest.empty(); ++n_requests) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(cfg.max_header_bytes);
    parser.body_limit(cfg.max_body_bytes);
    parser.eager(true);
    beast::error_code ec;
    size_t used = 0;
    while (!parser.is_done()) {
      const size_t n = parser.put(boost::asio::buffer(rest.data() + used, rest.size() - used), ec);
      used += n;
      if (ec || n == 0) break;
    }
    if (ec || !parser.is_done()) return 0;  // the server answers 400/413/431 or waits for more bytes
    if (gptqd::daemon::has_ambiguous_length(parser)) return 0;  // HttpServer::serve answers 400
    rest.remove_prefix(used);

    const http::request<http::string_body>& req = parser.get();
    if (req.count(http::field::content_length) > 0 && req.count(http::field::transfer_encoding) > 0) {
      bug("accepted a request with both Content-Length and Transfer-Encoding", std::string(req.target()));
    }
    // Repeated identical Content-Length values are allowed (RFC 9112 6.3); different ones are not.
    const auto lengths = req.equal_range(http::field::content_length);
    for (auto it = lengths.first; it != lengths.second; ++it) {
      if (it->value() != lengths.first->value()) bug("accepted two different Content-Lengths", std::string(req.target()));
    }
    if (req.body().size() > cfg.max_body_bytes) bug("body over the limit", std::to_string(req.body().size()));
    // What HttpServer::serve does next.
    const std::string target(req.target());
    const size_t q = target.find('?');
    const std::string path = target.substr(0, q);
    const std::string query = q == std::string::npos ? std::string() : target.substr(q + 1);
    (void)std::string(req.method_string());
    (void)req.keep_alive();
    (void)req[http::field::expect];
    if (path.size() + query.size() + (q == std::string::npos ? 0 : 1) != target.size()) bug("target split", target);
  }
  return 0;
}
