// SPDX-License-Identifier: Apache-2.0
// Private to the tokenizer sources (engine layer): the shared tokenizer base with its setters,
// added-token splitting, UTF-8 helpers, the PCRE2 regex wrapper and BpeTokenizer, the one BPE
// used for HF tokenizer.json, GGUF "gpt2"/"llama" vocabularies and vocab+merges files.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer.h"

namespace gptqd::engine::tokenizer_detail {

// Caps on what a tokenizer file may declare (reliability.md A15); real vocabularies are below
// 300k tokens and 500k merges, real pieces below a few hundred bytes.
inline constexpr uint64_t kMaxTokenizerFileBytes = 64ull << 20;
inline constexpr size_t kMaxVocabSize = 1u << 20;
inline constexpr size_t kMaxMerges = 1u << 22;
inline constexpr size_t kMaxPieceBytes = 4096;
inline constexpr size_t kMaxAddedTokens = 1u << 16;

// ---- UTF-8 -----------------------------------------------------------------------------------

// Length of the well-formed UTF-8 sequence starting at s[pos], or 0 when it is not well formed
// (bad lead byte, bad or missing continuation, overlong, surrogate, > U+10FFFF).
size_t utf8_valid_length(std::string_view s, size_t pos);
// How many bytes from s[pos] correctly begin a sequence (0: not a lead byte); `needed` receives
// the length that sequence needs. k < needed at the end of `s` means "unfinished".
size_t utf8_prefix_length(std::string_view s, size_t pos, size_t* needed);
// Length of the character starting at s[pos] for splitting purposes: the valid length, else 1.
inline size_t utf8_char_length(std::string_view s, size_t pos) {
  const size_t n = utf8_valid_length(s, pos);
  return n == 0 ? 1 : n;
}
bool utf8_is_valid(std::string_view s);
// Replaces every maximal ill-formed subpart with U+FFFD (what Python's errors="replace" does).
std::string utf8_sanitize(std::string_view s);
// SentencePiece's word-boundary mark "▁" (U+2581).
inline constexpr std::string_view kMetaspace = "\xE2\x96\x81";
// "<0x0A>" -> 0x0A; -1 when `piece` is not of that form.
int parse_byte_piece(std::string_view piece);
// Every occurrence of `from` (non-empty) replaced by `to`.
std::string replace_all(std::string s, std::string_view from, std::string_view to);
void utf8_append(std::string& out, uint32_t cp);

// ---- Token types (GGUF numbering, also used for the other sources) ------------------------------
enum class TokenType : uint8_t {
  undefined = 0, normal = 1, unknown = 2, control = 3, user_defined = 4, unused = 5, byte = 6,
};

// ---- Added (special) tokens ------------------------------------------------------------------
struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;  // matched only with parse_special; a control token (decodes to "")
  bool lstrip = false;   // the match swallows whitespace on its left
  bool rstrip = false;   // ... and on its right
};

// Splits text on added-token contents, leftmost-longest (as the HF AddedVocabulary does).
class AddedTokenSplitter {
 public:
  struct Piece {
    std::string_view text;  // a text segment (id == -1), never empty
    int32_t id = -1;        // or an added token
  };
  AddedTokenSplitter() = default;
  explicit AddedTokenSplitter(std::vector<AddedToken> tokens);
  void split(std::string_view text, bool parse_special, std::vector<Piece>& out) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Byte trie: edges_ maps (node << 8 | byte) -> child node; terminal_[node] = index in tokens_.
  std::vector<AddedToken> tokens_;
  std::unordered_map<uint64_t, int32_t> edges_;
  std::vector<int32_t> terminal_;
  std::array<bool, 256> first_byte_{};
};

// ---- Regex (PCRE2, UTF + UCP, JIT when available) ----------------------------------------------
class Regex {
 public:
  // Throws Error(invalid_model) naming `where` and PCRE2's message when the pattern is invalid.
  // `literal`: the pattern is a plain string to find, not a regex.
  Regex(const std::string& pattern, std::string_view where, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // Appends the [start, end) byte ranges of all non-overlapping matches in `text` (valid UTF-8).
  // Throws Error(invalid_argument) when PCRE2 gives up (match or backtracking limit: a pattern
  // that backtracks catastrophically on this input).
  void find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const;
  const std::string& pattern() const { return pattern_; }

 private:
  std::string pattern_;
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

// ---- The shared base: the protected fields of Tokenizer, settable by the loaders ---------------
class TokenizerBase : public Tokenizer {
 public:
  void set_bos_id(int32_t id) { bos_id_ = id; }
  void set_eos_ids(std::vector<int32_t> ids) { eos_ids_ = std::move(ids); }
  void set_add_bos(bool v) { add_bos_ = v; }
  void set_chat_template(std::string t) { chat_template_ = std::move(t); }
  void set_kind(std::string k) { kind_ = std::move(k); }
  void set_decode_strips_leading_space(bool v) { decode_strips_leading_space_ = v; }
  // Fails with Error(invalid_argument) when id is not a token id of this vocabulary.
  void check_id(int32_t id) const;
};

// ---- BpeTokenizer ------------------------------------------------------------------------------

// One pre-tokenizer step, applied to every piece the previous steps produced.
struct PreTokenizerStep {
  enum class Kind { split, byte_level, metaspace };
  enum class Behavior { isolated, removed, merged_with_previous, merged_with_next, contiguous };
  Kind kind = Kind::split;
  std::shared_ptr<const Regex> regex;  // split; byte_level with use_regex (the GPT-2 pattern)
  Behavior behavior = Behavior::isolated;
  bool invert = false;
  bool add_prefix_space = false;  // byte_level
  std::string replacement;        // metaspace: usually "▁"
  enum class Prepend { always, first, never } prepend = Prepend::always;  // metaspace
  bool metaspace_split = true;
};

struct NormalizerStep {
  enum class Kind { prepend, replace, nfc };
  Kind kind = Kind::prepend;
  std::string from;  // replace: the literal pattern
  std::string to;    // prepend: the prefix; replace: the replacement
};

struct BpeConfig {
  std::vector<std::string> pieces;  // id -> piece as stored ("" where no entry names the id)
  std::vector<TokenType> types;     // id -> type
  std::vector<AddedToken> added;    // split out of the text before the model sees it
  // (left id, right id) -> (rank, merged id); lower rank merges first, ties leftmost first.
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;
  std::vector<NormalizerStep> normalizers;
  std::vector<PreTokenizerStep> pre_tokenizers;
  bool byte_level = false;      // symbols are bytes written with the GPT-2 byte-to-unicode table
  bool ignore_merges = false;   // a word that is a whole token is taken as is
  bool byte_fallback = false;   // unknown characters -> <0xXX> tokens
  bool fuse_unk = false;
  int32_t unk_id = -1;
  // Decoding: token id -> bytes is derived from these.
  bool decode_byte_level = false;                               // GPT-2 table back to bytes
  std::vector<std::pair<std::string, std::string>> decode_replace;  // applied to the piece
  bool decode_byte_fallback = false;                            // "<0xXX>" -> the byte
  bool decode_strip_leading_space = false;
  std::string kind;
};

class BpeTokenizer final : public TokenizerBase {
 public:
  explicit BpeTokenizer(BpeConfig config);

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const override;
  std::string token_bytes(int32_t id) const override;
  int32_t vocab_size() const override { return static_cast<int32_t>(pieces_.size()); }
  std::string piece(int32_t id) const override;
  std::optional<int32_t> find_piece(std::string_view piece) const override;
  bool is_control(int32_t id) const override;

 private:
  struct StringHash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
  };
  using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

  void encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const;
  void pre_tokenize(std::string& text, bool at_start, std::vector<std::string>& words) const;
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  void initial_symbols(std::string_view word, std::vector<int32_t>& ids) const;
  void merge(std::vector<int32_t>& ids) const;

  std::vector<std::string> pieces_;
  std::vector<TokenType> types_;
  std::vector<std::string> token_bytes_;
  std::vector<bool> control_;
  PieceMap piece_ids_;
  AddedTokenSplitter added_;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges_;
  std::vector<NormalizerStep> normalizers_;
  std::vector<PreTokenizerStep> pre_tokenizers_;
  bool byte_level_ = false;
  bool ignore_merges_ = false;
  bool byte_fallback_ = false;
  bool fuse_unk_ = false;
  bool split_at_metaspace_ = false;  // see the constructor
  int32_t unk_id_ = -1;
  std::array<int32_t, 256> byte_symbol_id_{};    // byte-level: id of the byte's one-char token
  std::array<int32_t, 256> byte_fallback_id_{};  // id of "<0xXX>", -1 when absent

  // Word -> ids cache for short pre-tokenized words (shared by concurrent encodes).
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, StringHash, std::equal_to<>> cache_;
};

// The GPT-2 byte-to-unicode table: byte b is written as the code point byte_to_unicode()[b].
const std::array<uint32_t, 256>& byte_to_unicode();

// ---- Loaders (each validates its input and names the entry at fault) ---------------------------

// HF tokenizer.json (model.type "BPE"); `where` names the file in messages. Sets bos/add_bos from
// the post-processor template when it starts with a special token.
std::unique_ptr<TokenizerBase> load_tokenizer_json(const nlohmann::json& j, const std::string& where);
// GGUF tokenizer.ggml.model "gpt2" or "llama" (llama.cpp's rules, see the .cpp).
std::unique_ptr<TokenizerBase> load_gguf_bpe(const GgufFile& gguf);
// GPT-2 style vocab.json/encoder.json + merges.txt/vocab.bpe, with a llama.cpp pre-tokenizer name;
// `special_tokens` are appended as control tokens after the vocabulary.
std::unique_ptr<TokenizerBase> load_vocab_merges(const std::filesystem::path& vocab_json,
                                                 const std::filesystem::path& merges_txt, std::string_view pre,
                                                 const std::vector<std::string>& special_tokens);

// Reads a whole file, failing with Error(invalid_model) when it is larger than `max_bytes`.
std::string read_file_capped(const std::filesystem::path& path, std::string_view name, uint64_t max_bytes);

}  // namespace gptqd::engine::tokenizer_detail
