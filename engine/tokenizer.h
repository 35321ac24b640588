// SPDX-License-Identifier: Apache-2.0
// Tokenizer: text <-> token ids for every vocabulary gptqd loads — SentencePiece models
// (tokenizer.model, through libsentencepiece), Hugging Face tokenizer.json BPE (byte-level
// GPT-2/Llama-3/Qwen2 style, and SentencePiece-style with byte fallback as in Llama 2), and GGUF
// tokenizer.ggml.* metadata mapped onto the same classes (engine layer).
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model_source.h"

namespace gptqd::engine {

class GgufFile;

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Text -> ids, without BOS/EOS (callers add BOS with add_bos()). With `parse_special`, the
  // text of special/added tokens ("<|im_start|>", "<s>") becomes their ids, as chat templates
  // need; without it such text is encoded as ordinary characters (user content must never be
  // able to inject control tokens).
  virtual std::vector<int32_t> encode(std::string_view text, bool parse_special) const = 0;

  // The bytes one token stands for when it is generated: "▁Paris" -> " Paris", "<0x0A>" -> "\n",
  // byte-level "Ġ" -> " ". May be part of a UTF-8 sequence. Control tokens (BOS/EOS/...) give "".
  virtual std::string token_bytes(int32_t id) const = 0;

  // Full decode with the model's decoder rules (e.g. the leading space a SentencePiece dummy
  // prefix added is removed); control tokens are skipped.
  virtual std::string decode(std::span<const int32_t> ids) const;

  virtual int32_t vocab_size() const = 0;
  // The piece string of an id as stored in the vocabulary ("▁Paris", "Ġworld", "<|im_end|>").
  virtual std::string piece(int32_t id) const = 0;
  // The id of a piece (exact match), e.g. to find "<|im_end|>".
  virtual std::optional<int32_t> find_piece(std::string_view piece) const = 0;
  virtual bool is_control(int32_t id) const = 0;

  int32_t bos_id() const { return bos_id_; }          // -1 = none
  const std::vector<int32_t>& eos_ids() const { return eos_ids_; }  // generation stops at any
  bool is_eos(int32_t id) const;
  bool add_bos() const { return add_bos_; }            // prompts start with BOS by default
  const std::string& chat_template() const { return chat_template_; }  // "" when the model has none
  const std::string& kind() const { return kind_; }    // "sentencepiece" | "bpe" | "bpe-byte-level"

 protected:
  int32_t bos_id_ = -1;
  std::vector<int32_t> eos_ids_;
  bool add_bos_ = false;
  std::string chat_template_;
  std::string kind_;
  bool decode_strips_leading_space_ = false;  // decode() drops one leading ' ' (SPM dummy prefix)
};

// The tokenizer of an HF-format model: tokenizer.json if present, else tokenizer.model; BOS/EOS,
// add_bos and chat_template from tokenizer_config.json / config.json / generation_config.json.
// `files` are the model's files by logical name (as the registry stores them).
// Throws Error(invalid_model) naming the file and the problem, Error(unsupported) for tokenizer
// types gptqd does not implement (naming the type).
std::unique_ptr<Tokenizer> load_tokenizer(const std::vector<SourceFile>& files);

// The tokenizer described by GGUF metadata (tokenizer.ggml.model = "gpt2" or "llama", tokens,
// merges / scores, token types, bos/eos, add_bos_token, tokenizer.chat_template).
std::unique_ptr<Tokenizer> load_tokenizer(const GgufFile& gguf);

// A byte-level BPE from GPT-2 style files: `vocab_json` maps byte-level token strings to ids
// (vocab.json / encoder.json), `merges_txt` holds one "left right" pair per line in priority order
// (merges.txt / vocab.bpe; a "#version" first line is skipped). `pre` is a llama.cpp
// tokenizer.ggml.pre name choosing the pre-tokenizer regex ("gpt2", "llama3", "qwen2", "smollm",
// "default"). `special_tokens` become control tokens with ids right after the vocabulary (as
// Llama 3's 256 specials follow its 128000 tokens); they are split out only with parse_special.
// No BOS/EOS/add_bos: the caller knows them from the model's other files.
std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::filesystem::path& vocab_json,
                                              const std::filesystem::path& merges_txt, std::string_view pre,
                                              const std::vector<std::string>& special_tokens = {});

// Incremental decoding for streaming: push ids as they are generated, get text that is always
// valid UTF-8 (bytes of an incomplete sequence are held back until it completes; finish()
// flushes what is left, replacing an invalid tail with U+FFFD).
class TokenStreamDecoder {
 public:
  explicit TokenStreamDecoder(const Tokenizer& tokenizer) : tokenizer_(tokenizer) {}
  std::string push(int32_t id);
  std::string finish();

 private:
  const Tokenizer& tokenizer_;
  std::string pending_;
};

}  // namespace gptqd::engine
