// SPDX-License-Identifier: Apache-2.0
// A private dbus-daemon for tests (test support): its own configuration and socket in a
// directory, any uid may connect (so tests can call it as another user), gone with the object.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>

namespace gptqd::test {

class PrivateBus {
 public:
  // Does not start anything; `dir` receives bus.conf, the socket "bus" and dbus-daemon's log.
  explicit PrivateBus(std::filesystem::path dir);
  ~PrivateBus();  // SIGTERM, then SIGKILL
  PrivateBus(const PrivateBus&) = delete;
  PrivateBus& operator=(const PrivateBus&) = delete;

  // Starts `dbus-daemon --nofork` and waits until its socket accepts. False (see log()) when
  // dbus-daemon is missing or does not come up within `timeout`.
  bool start(std::chrono::milliseconds timeout = std::chrono::seconds(10));
  // "unix:path=<dir>/bus"
  std::string address() const { return "unix:path=" + (dir_ / "bus").string(); }
  std::string log() const;

 private:
  std::filesystem::path dir_;
  pid_t pid_ = -1;
};

// The absolute path of a program on $PATH, or "" when it is not installed.
std::string find_program(const std::string& name);

}  // namespace gptqd::test
