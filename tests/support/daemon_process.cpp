// SPDX-License-Identifier: Apache-2.0
// Spawning gptqd for integration tests and raw HTTP over Unix sockets (test support).
#include "tests/support/daemon_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <thread>

extern char** environ;

namespace gptqd::test {
int connect_unix(const std::filesystem::path& path) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

namespace {

std::string dechunk(const std::string& body) {
  std::string out;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find("\r\n", pos);
    if (eol == std::string::npos) break;
    size_t n = std::stoul(body.substr(pos, eol - pos), nullptr, 16);
    if (n == 0) break;
    out += body.substr(eol + 2, n);
    pos = eol + 2 + n + 2;
  }
  return out;
}

}  // namespace

std::filesystem::path gptqd_binary() { return binary_dir() / "daemon" / "gptqd"; }
std::filesystem::path gptqctl_binary() { return binary_dir() / "ctl" / "gptqctl"; }

DaemonProcess::DaemonProcess(std::filesystem::path dir)
    : dir_(std::move(dir)), state_dir_(dir_ / "state"), socket_(dir_ / "gptqd.sock"), log_path_(dir_ / "gptqd.log") {}

DaemonProcess::~DaemonProcess() {
  if (pid_ > 0) stop(SIGKILL);
}

bool DaemonProcess::start(const std::vector<std::string>& env, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {gptqd_binary().string(), "--foreground", "--state-dir", state_dir_.string(),
                                   "--socket", socket_.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  argv.insert(argv.begin(), wrapper_.begin(), wrapper_.end());
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  // A machine-wide /etc/gptqd/gptqd.json must not leak into tests: an empty config of their own.
  const auto empty_config = dir_ / "empty-config.json";
  if (!std::filesystem::exists(empty_config)) write_file(empty_config, "{}\n");
  envs.push_back("GPTQD_CONFIG=" + empty_config.string());
  envs.insert(envs.end(), env.begin(), env.end());
  std::vector<char*> cargv, cenv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : envs) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 2, log_path_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
  posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  int rc = ::posix_spawn(&pid_, cargv[0], &actions, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) {
    pid_ = -1;
    return false;
  }
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(15);
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return false;  // exited during start-up
    }
    int fd = connect_unix(socket_);
    if (fd >= 0) {
      ::close(fd);
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop(SIGKILL);
  return false;
}

int DaemonProcess::wait_exit(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return -1;
}

int DaemonProcess::stop(int sig, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  ::kill(pid_, sig);
  int rc = wait_exit(timeout);
  if (rc < 0) {
    ::kill(pid_, SIGKILL);
    rc = wait_exit(std::chrono::seconds(5));
  }
  return rc;
}

std::string DaemonProcess::log() const {
  try {
    return read_file(log_path_);
  } catch (...) {
    return {};
  }
}

CommandResult DaemonProcess::ctl(const std::vector<std::string>& args, const std::string* stdin_text) const {
  std::vector<std::string> argv = {gptqctl_binary().string(), "--socket", socket_.string()};
  argv.insert(argv.end(), args.begin(), args.end());
  return run_command(argv, {}, stdin_text);
}

std::string raw_exchange(const std::filesystem::path& socket, const std::string& bytes, std::chrono::milliseconds timeout) {
  int fd = connect_unix(socket);
  if (fd < 0) return {};
  size_t sent = 0;
  while (sent < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + sent, bytes.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server may answer and close before reading everything
    sent += static_cast<size_t>(n);
  }
  std::string out;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[65536];
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

HttpReply parse_reply(const std::string& raw) {
  HttpReply r;
  r.raw = raw;
  if (raw.rfind("HTTP/1.", 0) != 0 || raw.size() < 12) return r;
  r.status = std::stoi(raw.substr(9, 3));
  size_t end = raw.find("\r\n\r\n");
  if (end == std::string::npos) return r;
  r.headers = raw.substr(0, end);
  r.body = raw.substr(end + 4);
  std::string lower = r.headers;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  if (lower.find("transfer-encoding: chunked") != std::string::npos) r.body = dechunk(r.body);
  return r;
}

HttpReply http_request(const std::filesystem::path& socket, const std::string& method, const std::string& target,
                       const std::string& body, std::chrono::milliseconds timeout) {
  std::string req = method + " " + target + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n";
  if (!body.empty() || method == "POST" || method == "DELETE") {
    req += "Content-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) + "\r\n";
  }
  req += "\r\n" + body;
  return parse_reply(raw_exchange(socket, req, timeout));
}

std::vector<std::string> list_dir(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

StreamingRequest::StreamingRequest(const std::filesystem::path& socket, const std::string& target,
                                   const std::string& json_body) {
  fd_ = connect_unix(socket);
  if (fd_ < 0) return;
  std::string req = "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " +
                    std::to_string(json_body.size()) + "\r\n\r\n" + json_body;
  ::send(fd_, req.data(), req.size(), MSG_NOSIGNAL);
}

StreamingRequest::~StreamingRequest() {
  if (fd_ >= 0) ::close(fd_);
}

bool StreamingRequest::wait_for(const std::string& marker, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  while (received_.find(marker) == std::string::npos) {
    if (fd_ < 0 || std::chrono::steady_clock::now() > deadline) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 50) <= 0) continue;
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) return received_.find(marker) != std::string::npos;
    received_.append(buf, static_cast<size_t>(n));
  }
  return true;
}

std::vector<nlohmann::json> ndjson(const std::string& body) {
  std::vector<nlohmann::json> out;
  size_t start = 0;
  while (start < body.size()) {
    const size_t nl = body.find('\n', start);
    std::string line = body.substr(start, nl == std::string::npos ? std::string::npos : nl - start);
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
    if (nl == std::string::npos) break;
    start = nl + 1;
  }
  return out;
}

}  // namespace gptqd::test
