// SPDX-License-Identifier: Apache-2.0
// gptqd::Error: the one exception type that engine/ and quantizer/ throw (engine layer).
// The daemon maps `code` to an HTTP status; `what()` is a message a person can act on.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>

namespace gptqd {

enum class ErrorCode {
  invalid_argument,   // a request or option is malformed or out of range
  invalid_model,      // a model file, config or tokenizer breaks a format rule
  unsupported,        // well-formed but not something gptqd runs (architecture, dtype, format)
  not_found,          // a named model, file or job does not exist
  conflict,           // the target already exists / is busy
  io,                 // the operating system refused (open, read, write, fsync, rename)
  no_space,           // ENOSPC, or a pre-check found too little free disk space or memory
  permission_denied,  // the caller may not do this
  cancelled,          // the caller or shutdown cancelled the work
  busy,               // a queue or limit is full right now; retrying later may work
  internal,           // a bug: an invariant did not hold
};

std::string_view to_string(ErrorCode code) noexcept;

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, std::string message) : std::runtime_error(std::move(message)), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

// The compute device is in a state no request can recover from (a sticky CUDA error: the
// context is lost until the process restarts). Whoever catches it stops using the device and
// ends the process with a failure, so the service manager starts a fresh one.
class DeviceFault : public Error {
 public:
  explicit DeviceFault(std::string message) : Error(ErrorCode::internal, std::move(message)) {}
};

// Concatenates anything that streams: cat("layer ", i, " has shape ", shape).
template <typename... Args>
std::string cat(const Args&... args) {
  std::ostringstream out;
  (out << ... << args);
  return out.str();
}

template <typename... Args>
[[noreturn]] void fail(ErrorCode code, const Args&... args) {
  throw Error(code, cat(args...));
}

}  // namespace gptqd
