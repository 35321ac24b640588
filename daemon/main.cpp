// SPDX-License-Identifier: Apache-2.0
// gptqd's entry point: parse the configuration, detach unless --foreground, run the daemon
// (daemon layer). Only start-up failures end the process with a non-zero status.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <string>

#include "daemon/daemon.h"
#include "daemon/daemon_config.h"
#include "daemon/log.h"
#include "engine/error.h"

namespace {

using gptqd::daemon::Daemon;
using gptqd::daemon::DaemonConfig;

int run_daemon(const DaemonConfig& cfg, int ready_fd) {
  try {
    Daemon daemon(cfg);
    return daemon.run([ready_fd] {
      if (ready_fd >= 0) {
        [[maybe_unused]] ssize_t n = ::write(ready_fd, "1", 1);
        ::close(ready_fd);
      }
    });
  } catch (const std::exception& e) {
    std::string msg = e.what();
    gptqd::daemon::log_error("cannot start: ", msg);
    if (ready_fd >= 0) {
      std::string line = "0" + msg;
      [[maybe_unused]] ssize_t n = ::write(ready_fd, line.data(), line.size());
    } else {
      std::cerr << "gptqd: " << msg << "\n";
    }
    return 1;
  }
}

// Classic detach with a readiness pipe: the parent exits 0 only once the socket is listening,
// or prints the child's start-up error and exits 1. Systemd runs gptqd with --foreground.
int detach_and_run(const DaemonConfig& cfg) {
  std::error_code ec;
  std::filesystem::create_directories(cfg.state_dir, ec);
  const std::string log_path = (cfg.state_dir / "gptqd.log").string();
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) {
    std::cerr << "gptqd: pipe: " << std::strerror(errno) << "\n";
    return 1;
  }
  pid_t pid = ::fork();
  if (pid < 0) {
    std::cerr << "gptqd: fork: " << std::strerror(errno) << "\n";
    return 1;
  }
  if (pid > 0) {
    ::close(pipefd[1]);
    std::string msg;
    char buf[512];
    ssize_t n;
    while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) msg.append(buf, static_cast<size_t>(n));
    if (!msg.empty() && msg[0] == '1') {
      std::cout << "gptqd: listening on " << cfg.socket_path.string() << " (pid " << pid << ", log " << log_path << ")\n";
      return 0;
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    std::cerr << "gptqd: " << (msg.size() > 1 ? msg.substr(1) : "exited during start-up, see " + log_path) << "\n";
    return 1;
  }
  ::close(pipefd[0]);
  ::setsid();
  int devnull = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (devnull >= 0) {
    ::dup2(devnull, 0);
    ::dup2(devnull, 1);
  }
  int logfd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
  if (logfd >= 0) ::dup2(logfd, 2);
  std::exit(run_daemon(cfg, pipefd[1]));
}

}  // namespace

int main(int argc, char** argv) {
  int exit_code = 0;
  auto cfg = DaemonConfig::from_args(argc, argv, &exit_code);
  if (!cfg) return exit_code;
  try {
    cfg->finalize();
  } catch (const gptqd::Error& e) {
    std::cerr << "gptqd: " << e.what() << "\n";
    return 2;
  }
  // Under systemd (or any supervisor that gave us a notify socket) never detach.
  if (cfg->foreground || std::getenv("NOTIFY_SOCKET") || std::getenv("INVOCATION_ID")) return run_daemon(*cfg, -1);
  return detach_and_run(*cfg);
}
