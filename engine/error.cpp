// SPDX-License-Identifier: Apache-2.0
// Names of error codes, used in logs and in the daemon's error mapping (engine layer).
#include "engine/error.h"

namespace gptqd {

std::string_view to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::invalid_argument: return "invalid_argument";
    case ErrorCode::invalid_model: return "invalid_model";
    case ErrorCode::unsupported: return "unsupported";
    case ErrorCode::not_found: return "not_found";
    case ErrorCode::conflict: return "conflict";
    case ErrorCode::io: return "io";
    case ErrorCode::no_space: return "no_space";
    case ErrorCode::permission_denied: return "permission_denied";
    case ErrorCode::cancelled: return "cancelled";
    case ErrorCode::busy: return "busy";
    case ErrorCode::internal: return "internal";
  }
  return "unknown";
}

}  // namespace gptqd
