// SPDX-License-Identifier: Apache-2.0
// What the tokenizer harnesses do with a loaded tokenizer: encode `text` both ways, decode the ids
// in one go and streamed, and probe ids just outside the vocabulary (they must be refused).
#pragma once

#include <string_view>

#include "engine/tokenizer.h"
#include "fuzz/fuzz_common.h"

namespace gptqd::fuzz {

inline void exercise_tokenizer(const engine::Tokenizer& tok, std::string_view text) {
  for (bool parse_special : {false, true}) {
    const std::vector<int32_t> ids = tok.encode(text, parse_special);
    for (int32_t id : ids) {
      if (id < 0 || id >= tok.vocab_size()) {
        std::fprintf(stderr, "encode produced id %d outside the vocabulary of %d\n", id, tok.vocab_size());
        std::abort();
      }
      (void)tok.piece(id);
      (void)tok.is_control(id);
    }
    (void)tok.decode(ids);
    engine::TokenStreamDecoder stream(tok);
    std::string streamed;
    for (int32_t id : ids) streamed += stream.push(id);
    streamed += stream.finish();
  }
  for (int32_t id : {-1, tok.vocab_size(), tok.vocab_size() + 1000, INT32_MIN, INT32_MAX}) {
    try {
      (void)tok.token_bytes(id);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::internal) throw;
    }
    try {
      const int32_t one[] = {id};
      (void)tok.decode(one);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::internal) throw;
    }
  }
  if (tok.vocab_size() > 0) (void)tok.find_piece(tok.piece(0));
}

}  // namespace gptqd::fuzz
