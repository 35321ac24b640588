// SPDX-License-Identifier: Apache-2.0
// Private to the tokenizer sources (engine layer): a SentencePiece model (tokenizer.model) through
// libsentencepiece.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "engine/bpe_tokenizer.h"

namespace gptqd::engine::tokenizer_detail {

// `model_bytes` is the serialized ModelProto; `where` names it in messages. `tokenizer_config`
// (may be null) contributes added_tokens_decoder entries beyond the model's pieces. BOS/EOS come
// from the model; add_bos is on when the model has a BOS piece.
std::unique_ptr<TokenizerBase> load_sentencepiece(std::string_view model_bytes, const std::string& where,
                                                  const nlohmann::json* tokenizer_config,
                                                  const std::string& config_name);

}  // namespace gptqd::engine::tokenizer_detail
