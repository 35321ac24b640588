// SPDX-License-Identifier: Apache-2.0
// Shared by the libFuzzer harnesses: what counts as a clean rejection. A gptqd::Error (other than
// ErrorCode::internal, which marks a broken invariant) or a protocol::RequestError is the parser
// doing its job; any other exception escapes, terminates, and libFuzzer reports it as a crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/error.h"

namespace gptqd::fuzz {

inline std::vector<std::byte> to_bytes(const uint8_t* data, size_t size) {
  const auto* p = reinterpret_cast<const std::byte*>(data);
  return std::vector<std::byte>(p, p + size);
}

inline std::string_view to_text(const uint8_t* data, size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Runs `body`; a clean rejection returns, an internal error aborts with its message.
template <typename F>
void expect_clean(F&& body) {
  try {
    body();
  } catch (const gptqd::Error& e) {
    if (e.code() == gptqd::ErrorCode::internal) {
      std::fprintf(stderr, "internal error from a parser: %s\n", e.what());
      std::abort();
    }
    if (std::string_view(e.what()).empty()) {
      std::fprintf(stderr, "a parser threw an Error without a message\n");
      std::abort();
    }
  }
}

}  // namespace gptqd::fuzz
