// SPDX-License-Identifier: Apache-2.0
// BpeTokenizer: one BPE for every non-SentencePiece-library vocabulary (engine layer) — HF
// tokenizer.json (byte-level GPT-2/Llama-3/Qwen2 style and SentencePiece-style with byte
// fallback), GGUF tokenizer.ggml.model "gpt2" and "llama" (merge by score, as llama.cpp's
// llm_tokenizer_spm), and GPT-2 vocab + merges files. The merge loop is the HF `Word::merge_all`
// one: a min-heap of (rank, position) over adjacent symbol pairs.
#include "engine/bpe_tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/unistr.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <set>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/json_strict.h"

namespace gptqd::engine::tokenizer_detail {
namespace {

// Unicode NFC through ICU (Qwen2's tokenizer.json normalizes with it). The input is valid UTF-8
// here: invalid bytes were replaced before normalization.
std::string nfc(const std::string& text) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) fail(ErrorCode::internal, "ICU NFC normalizer unavailable: ", u_errorName(status));
  const icu::UnicodeString in = icu::UnicodeString::fromUTF8(text);
  if (n->isNormalized(in, status) && U_SUCCESS(status)) return text;
  status = U_ZERO_ERROR;
  icu::UnicodeString out = n->normalize(in, status);
  if (U_FAILURE(status)) fail(ErrorCode::internal, "NFC normalization failed: ", u_errorName(status));
  std::string result;
  out.toUTF8String(result);
  return result;
}

}  // namespace

namespace {

using nlohmann::json;

constexpr std::string_view kUnkSurface = " \xE2\x81\x87 ";  // " ⁇ ", SentencePiece's text for <unk>
constexpr size_t kMaxCachedWordBytes = 256;
constexpr size_t kMaxCacheEntries = 1u << 16;

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

bool starts_with(std::string_view s, std::string_view prefix) { return s.substr(0, prefix.size()) == prefix; }

std::string byte_piece(uint8_t b) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return std::string("<0x") + kHex[b >> 4] + kHex[b & 15] + ">";
}

// Code point -> byte for the GPT-2 table; -1 for code points the table does not produce.
const std::array<int16_t, 324>& unicode_to_byte() {
  static const auto table = [] {
    std::array<int16_t, 324> t{};
    t.fill(-1);
    for (int b = 0; b < 256; ++b) t[byte_to_unicode()[static_cast<size_t>(b)]] = static_cast<int16_t>(b);
    return t;
  }();
  return table;
}

// A byte-level token string back to bytes; nullopt when a character is not in the table.
std::optional<std::string> byte_level_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_valid_length(s, i);
    if (n == 0) return std::nullopt;
    uint32_t cp = static_cast<uint8_t>(s[i]);
    if (n == 2) cp = ((cp & 0x1F) << 6) | (static_cast<uint8_t>(s[i + 1]) & 0x3F);
    if (n > 2 || cp >= unicode_to_byte().size() || unicode_to_byte()[cp] < 0) return std::nullopt;
    out += static_cast<char>(unicode_to_byte()[cp]);
    i += n;
  }
  return out;
}

std::string byte_level_encode(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size() * 2);
  for (const char c : bytes) utf8_append(out, byte_to_unicode()[static_cast<uint8_t>(c)]);
  return out;
}

// PCRE2's \s (with UCP) also matches U+180E; Oniguruma (the HF `tokenizers` engine) and the
// Unicode White_Space property do not. Spell \s and \S out so both engines agree.
constexpr std::string_view kWhiteSpaceClass =
    "\\t-\\r \\x{85}\\x{a0}\\x{1680}\\x{2000}-\\x{200a}\\x{2028}\\x{2029}\\x{202f}\\x{205f}\\x{3000}";

std::string rewrite_whitespace_escapes(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[i + 1];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpaceClass) : cat("[", kWhiteSpaceClass, "]");
      } else if (e == 'S' && !in_class) {
        out += cat("[^", kWhiteSpaceClass, "]");
      } else {
        out += c;
        out += e;
      }
      ++i;
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out += c;
      // A ']' right after '[' or '[^' is a literal.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out += pattern[++i];
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out += pattern[++i];
      continue;
    }
    if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

// Per-thread PCRE2 state: one match-data block, a match context with limits and a JIT stack.
struct PcreThreadState {
  pcre2_match_data* match_data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* jit_stack = pcre2_jit_stack_create(32 * 1024, 1024 * 1024, nullptr);
  PcreThreadState() {
    pcre2_set_match_limit(context, 10'000'000);
    pcre2_set_heap_limit(context, 64 * 1024);  // KiB
    if (jit_stack != nullptr) pcre2_jit_stack_assign(context, nullptr, jit_stack);
  }
  ~PcreThreadState() {
    pcre2_match_data_free(match_data);
    pcre2_match_context_free(context);
    if (jit_stack != nullptr) pcre2_jit_stack_free(jit_stack);
  }
  PcreThreadState(const PcreThreadState&) = delete;
  PcreThreadState& operator=(const PcreThreadState&) = delete;
};

PcreThreadState& pcre_state() {
  thread_local PcreThreadState state;
  return state;
}

}  // namespace

const std::array<uint32_t, 256>& byte_to_unicode() {
  static const auto table = [] {
    std::array<uint32_t, 256> t{};
    uint32_t n = 0;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
      t[b] = printable ? b : 256 + n++;
    }
    return t;
  }();
  return table;
}

// ---- Regex ---------------------------------------------------------------------------------
Regex::Regex(const std::string& pattern, std::string_view where, bool literal) : pattern_(pattern) {
  if (pattern.empty()) fail(ErrorCode::invalid_model, where, ": empty regex");
  if (!utf8_is_valid(pattern)) fail(ErrorCode::invalid_model, where, ": the pattern is not valid UTF-8");
  const std::string rewritten = literal ? pattern : rewrite_whitespace_escapes(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                                   literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP, &error, &offset,
                                   nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof message);
    fail(ErrorCode::invalid_model, where, ": regex \"", pattern, "\" does not compile: ",
         reinterpret_cast<const char*>(message));
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>& out) const {
  PcreThreadState& st = pcre_state();
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t pos = 0;
  while (pos < text.size()) {
    const int rc = pcre2_match(code, subject, text.size(), pos, PCRE2_NO_UTF_CHECK, st.match_data, st.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_HEAPLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
          rc == PCRE2_ERROR_JIT_STACKLIMIT) {
        fail(ErrorCode::invalid_argument, "the tokenizer's pre-tokenizer regex \"", pattern_,
             "\" gave up on this input (it backtracks without bound)");
      }
      PCRE2_UCHAR message[256];
      pcre2_get_error_message(rc, message, sizeof message);
      fail(ErrorCode::internal, "regex \"", pattern_, "\": ", reinterpret_cast<const char*>(message));
    }
    const PCRE2_SIZE* ovector = pcre2_get_ovector_pointer(st.match_data);
    const size_t start = ovector[0], end = ovector[1];
    if (end <= start) {
      // Empty match: as Oniguruma's iterator, go on one character later.
      if (start >= text.size()) break;
      pos = start + utf8_char_length(text, start);
      continue;
    }
    out.emplace_back(start, end);
    pos = end;
  }
}

// ---- BpeTokenizer --------------------------------------------------------------------------
BpeTokenizer::BpeTokenizer(BpeConfig c)
    : pieces_(std::move(c.pieces)),
      types_(std::move(c.types)),
      merges_(std::move(c.merges)),
      normalizers_(std::move(c.normalizers)),
      pre_tokenizers_(std::move(c.pre_tokenizers)),
      byte_level_(c.byte_level),
      ignore_merges_(c.ignore_merges),
      byte_fallback_(c.byte_fallback),
      fuse_unk_(c.fuse_unk),
      unk_id_(c.unk_id) {
  const size_t n = pieces_.size();
  types_.resize(n, TokenType::normal);
  piece_ids_.reserve(n);
  for (size_t id = 0; id < n; ++id) {
    if (!pieces_[id].empty()) piece_ids_[pieces_[id]] = static_cast<int32_t>(id);
  }
  control_.assign(n, false);
  for (size_t id = 0; id < n; ++id) control_[id] = types_[id] == TokenType::control;
  std::vector<bool> added_text(n, false);
  for (const AddedToken& t : c.added) {
    if (t.special) control_[static_cast<size_t>(t.id)] = true;
    else added_text[static_cast<size_t>(t.id)] = true;
  }
  added_ = AddedTokenSplitter(std::move(c.added));

  token_bytes_.resize(n);
  for (size_t id = 0; id < n; ++id) {
    const std::string& p = pieces_[id];
    const TokenType type = types_[id];
    if (control_[id] || type == TokenType::unused || p.empty()) continue;
    if (added_text[id] || type == TokenType::user_defined) {
      token_bytes_[id] = c.decode_byte_level ? p : replace_all(p, kMetaspace, " ");
      continue;
    }
    if (type == TokenType::unknown) {
      token_bytes_[id] = std::string(kUnkSurface);
      continue;
    }
    if (c.decode_byte_level) {
      // As the HF ByteLevel decoder: a token with a character outside the table stays as it is.
      token_bytes_[id] = byte_level_decode(p).value_or(p);
      continue;
    }
    if (c.decode_byte_fallback) {
      if (const int b = parse_byte_piece(p); b >= 0) {
        token_bytes_[id] = std::string(1, static_cast<char>(b));
        continue;
      }
    }
    std::string s = p;
    for (const auto& [from, to] : c.decode_replace) s = replace_all(std::move(s), from, to);
    token_bytes_[id] = std::move(s);
  }
  set_kind(c.kind);
  set_decode_strips_leading_space(c.decode_strip_leading_space);

  // SentencePiece-style vocabularies see the whole text as one word. When no piece has a "▁"
  // after another character (Llama 2's have "▁" only as a leading run), no merge can join a
  // character to a following "▁", so cutting the text before every "▁" run gives the same ids
  // while keeping the merge heap small and the word cache useful.
  if (!byte_level_ && !ignore_merges_ && pre_tokenizers_.empty() && piece_ids_.contains(kMetaspace)) {
    split_at_metaspace_ = std::none_of(pieces_.begin(), pieces_.end(), [](const std::string& p) {
      for (size_t pos = p.find(kMetaspace); pos != std::string::npos; pos = p.find(kMetaspace, pos + 1)) {
        if (pos > 0 && (pos < kMetaspace.size() ||
                        p.compare(pos - kMetaspace.size(), kMetaspace.size(), kMetaspace) != 0)) {
          return true;
        }
      }
      return false;
    });
  }

  for (int b = 0; b < 256; ++b) {
    const auto fb = piece_ids_.find(byte_piece(static_cast<uint8_t>(b)));
    byte_fallback_id_[static_cast<size_t>(b)] = fb == piece_ids_.end() ? -1 : fb->second;
    std::string ch;
    utf8_append(ch, byte_to_unicode()[static_cast<size_t>(b)]);
    const auto sym = piece_ids_.find(ch);
    byte_symbol_id_[static_cast<size_t>(b)] = sym == piece_ids_.end() ? -1 : sym->second;
  }
}

std::string BpeTokenizer::token_bytes(int32_t id) const {
  check_id(id);
  return token_bytes_[static_cast<size_t>(id)];
}

std::string BpeTokenizer::piece(int32_t id) const {
  check_id(id);
  return pieces_[static_cast<size_t>(id)];
}

std::optional<int32_t> BpeTokenizer::find_piece(std::string_view p) const {
  const auto it = piece_ids_.find(p);
  if (it == piece_ids_.end()) return std::nullopt;
  return it->second;
}

bool BpeTokenizer::is_control(int32_t id) const {
  check_id(id);
  return control_[static_cast<size_t>(id)];
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text, bool parse_special) const {
  std::string clean;
  if (!utf8_is_valid(text)) clean = utf8_sanitize(text), text = clean;
  std::vector<AddedTokenSplitter::Piece> pieces;
  added_.split(text, parse_special, pieces);
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 1);
  for (const auto& piece : pieces) {
    if (piece.id >= 0) {
      out.push_back(piece.id);
    } else {
      encode_segment(piece.text, piece.text.data() == text.data(), out);
    }
  }
  return out;
}

void BpeTokenizer::encode_segment(std::string_view text, bool at_start, std::vector<int32_t>& out) const {
  std::string s(text);
  for (const NormalizerStep& step : normalizers_) {
    if (step.kind == NormalizerStep::Kind::prepend) {
      if (!s.empty()) s.insert(0, step.to);
    } else if (step.kind == NormalizerStep::Kind::nfc) {
      s = nfc(s);
    } else {
      s = replace_all(std::move(s), step.from, step.to);
    }
  }
  if (s.empty()) return;
  if (pre_tokenizers_.empty()) {
    if (!split_at_metaspace_) {
      encode_word(s, out);
      return;
    }
    const std::string_view text_view(s);
    size_t word_start = 0;
    for (size_t pos = s.find(kMetaspace, 1); pos != std::string::npos; pos = s.find(kMetaspace, pos + 1)) {
      if (pos >= kMetaspace.size() && s.compare(pos - kMetaspace.size(), kMetaspace.size(), kMetaspace) == 0) continue;
      encode_word(text_view.substr(word_start, pos - word_start), out);
      word_start = pos;
    }
    encode_word(text_view.substr(word_start), out);
    return;
  }
  std::vector<std::string> words;
  pre_tokenize(s, at_start, words);
  for (const std::string& w : words) encode_word(w, out);
}

namespace {

using Behavior = PreTokenizerStep::Behavior;

// Splits `piece` at the given matches the way HF NormalizedString::split does, appending the
// non-empty results.
void split_by_matches(const std::string& piece, const std::vector<std::pair<size_t, size_t>>& matches,
                      Behavior behavior, bool invert, std::vector<std::string>& out) {
  struct Span {
    size_t start, end;
    bool is_match;
  };
  std::vector<Span> spans;
  size_t prev = 0;
  for (const auto& [s, e] : matches) {
    if (prev != s) spans.push_back({prev, s, invert});
    spans.push_back({s, e, !invert});
    prev = e;
  }
  if (prev != piece.size()) spans.push_back({prev, piece.size(), invert});

  std::vector<Span> kept;  // is_match reused as "remove"
  bool previous_match = false;
  switch (behavior) {
    case Behavior::isolated:
      for (const Span& sp : spans) kept.push_back({sp.start, sp.end, false});
      break;
    case Behavior::removed:
      kept = spans;
      break;
    case Behavior::contiguous:
      for (const Span& sp : spans) {
        if (sp.is_match == previous_match && !kept.empty()) kept.back().end = sp.end;
        else kept.push_back({sp.start, sp.end, false});
        previous_match = sp.is_match;
      }
      break;
    case Behavior::merged_with_previous:
      for (const Span& sp : spans) {
        if (sp.is_match && !previous_match && !kept.empty()) kept.back().end = sp.end;
        else kept.push_back({sp.start, sp.end, false});
        previous_match = sp.is_match;
      }
      break;
    case Behavior::merged_with_next:
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) {
        if (it->is_match && !previous_match && !kept.empty()) kept.back().start = it->start;
        else kept.push_back({it->start, it->end, false});
        previous_match = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
  }
  for (const Span& sp : kept) {
    if (!sp.is_match && sp.end > sp.start) out.push_back(piece.substr(sp.start, sp.end - sp.start));
  }
}

}  // namespace

void BpeTokenizer::pre_tokenize(std::string& text, bool at_start, std::vector<std::string>& words) const {
  std::vector<std::string> current, next;
  current.push_back(std::move(text));
  std::vector<std::pair<size_t, size_t>> matches;
  for (const PreTokenizerStep& step : pre_tokenizers_) {
    next.clear();
    for (size_t i = 0; i < current.size(); ++i) {
      std::string& piece = current[i];
      switch (step.kind) {
        case PreTokenizerStep::Kind::split:
          matches.clear();
          step.regex->find_all(piece, matches);
          split_by_matches(piece, matches, step.behavior, step.invert, next);
          break;
        case PreTokenizerStep::Kind::byte_level:
          if (step.add_prefix_space && !starts_with(piece, " ")) piece.insert(0, " ");
          if (step.regex) {
            matches.clear();
            step.regex->find_all(piece, matches);
            split_by_matches(piece, matches, Behavior::isolated, false, next);
          } else {
            next.push_back(std::move(piece));
          }
          break;
        case PreTokenizerStep::Kind::metaspace: {
          std::string s = replace_all(std::move(piece), " ", step.replacement);
          const bool prepend =
              !starts_with(s, step.replacement) &&
              (step.prepend == PreTokenizerStep::Prepend::always ||
               (step.prepend == PreTokenizerStep::Prepend::first && at_start && i == 0));
          if (prepend) s.insert(0, step.replacement);
          if (!step.metaspace_split) {
            next.push_back(std::move(s));
            break;
          }
          matches.clear();
          for (size_t pos = 0; (pos = s.find(step.replacement, pos)) != std::string::npos; pos += step.replacement.size()) {
            matches.emplace_back(pos, pos + step.replacement.size());
          }
          split_by_matches(s, matches, Behavior::merged_with_next, false, next);
          break;
        }
      }
    }
    std::swap(current, next);
  }
  words = std::move(current);
}

void BpeTokenizer::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto it = byte_level_ ? piece_ids_.find(byte_level_encode(word)) : piece_ids_.find(word);
    if (it != piece_ids_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (const auto it = cache_.find(word); it != cache_.end()) {
      out.insert(out.end(), it->second.begin(), it->second.end());
      return;
    }
  }
  thread_local std::vector<int32_t> ids;
  ids.clear();
  initial_symbols(word, ids);
  merge(ids);
  out.insert(out.end(), ids.begin(), ids.end());
  if (cacheable) {
    std::lock_guard lock(cache_mutex_);
    if (cache_.size() >= kMaxCacheEntries) cache_.clear();
    cache_.emplace(std::string(word), ids);
  }
}

// The word's characters as symbols (HF BPE::merge_word): a character that is not a token becomes
// its <0xXX> byte tokens with byte fallback, else <unk> (fused with a preceding <unk> when
// fuse_unk), else it is dropped. In byte-level mode the characters are the bytes' table letters.
void BpeTokenizer::initial_symbols(std::string_view word, std::vector<int32_t>& ids) const {
  bool unk_pending = false;
  auto unknown = [&](std::string_view ch) {
    if (byte_fallback_) {
      bool all = true;
      for (const char b : ch) all = all && byte_fallback_id_[static_cast<uint8_t>(b)] >= 0;
      if (all) {
        for (const char b : ch) ids.push_back(byte_fallback_id_[static_cast<uint8_t>(b)]);
        return;
      }
    }
    if (unk_id_ < 0) return;
    if (unk_pending && !fuse_unk_) ids.push_back(unk_id_);
    unk_pending = true;
  };
  auto known = [&](int32_t id) {
    if (unk_pending) ids.push_back(unk_id_), unk_pending = false;
    ids.push_back(id);
  };
  if (byte_level_) {
    for (const char c : word) {
      const int32_t id = byte_symbol_id_[static_cast<uint8_t>(c)];
      if (id >= 0) {
        known(id);
      } else {
        std::string ch;
        utf8_append(ch, byte_to_unicode()[static_cast<uint8_t>(c)]);
        unknown(ch);
      }
    }
  } else {
    for (size_t i = 0; i < word.size();) {
      const size_t n = utf8_char_length(word, i);
      const std::string_view ch = word.substr(i, n);
      if (const auto it = piece_ids_.find(ch); it != piece_ids_.end()) known(it->second);
      else unknown(ch);
      i += n;
    }
  }
  if (unk_pending) ids.push_back(unk_id_);
}

void BpeTokenizer::merge(std::vector<int32_t>& ids) const {
  const size_t n = ids.size();
  if (n < 2 || merges_.empty()) return;
  struct Symbol {
    int32_t id;  // -1: merged into its left neighbour
    int32_t prev, next;
  };
  struct Candidate {
    int32_t rank, pos, new_id;
  };
  // std heaps keep the largest on top: "larger" = lower rank, then lower position.
  auto after = [](const Candidate& a, const Candidate& b) { return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos; };
  thread_local std::vector<Symbol> symbols;
  thread_local std::vector<Candidate> heap;
  symbols.resize(n);
  heap.clear();
  auto find = [&](int32_t left, int32_t right) -> const std::pair<int32_t, int32_t>* {
    const auto it = merges_.find(pair_key(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i < n; ++i) {
    symbols[i] = {ids[i], static_cast<int32_t>(i) - 1, i + 1 == n ? -1 : static_cast<int32_t>(i + 1)};
    if (i + 1 < n) {
      if (const auto* m = find(ids[i], ids[i + 1])) heap.push_back({m->first, static_cast<int32_t>(i), m->second});
    }
  }
  std::make_heap(heap.begin(), heap.end(), after);
  auto push = [&](Candidate c) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end(), after);
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end(), after);
    const Candidate top = heap.back();
    heap.pop_back();
    Symbol& s = symbols[static_cast<size_t>(top.pos)];
    if (s.id < 0 || s.next < 0) continue;
    Symbol& right = symbols[static_cast<size_t>(s.next)];
    // A stale entry: the pair at this position is no longer the one it was queued for.
    const auto* current = find(s.id, right.id);
    if (current == nullptr || current->second != top.new_id) continue;
    s.id = top.new_id;
    s.next = right.next;
    right.id = -1;
    if (s.next >= 0) symbols[static_cast<size_t>(s.next)].prev = top.pos;
    if (s.prev >= 0) {
      if (const auto* m = find(symbols[static_cast<size_t>(s.prev)].id, s.id)) push({m->first, s.prev, m->second});
    }
    if (s.next >= 0) {
      if (const auto* m = find(s.id, symbols[static_cast<size_t>(s.next)].id)) push({m->first, top.pos, m->second});
    }
  }
  ids.clear();
  for (int32_t i = 0; i >= 0; i = symbols[static_cast<size_t>(i)].next) ids.push_back(symbols[static_cast<size_t>(i)].id);
}

// ---- Shared building blocks for the loaders ------------------------------------------------
namespace {

const std::shared_ptr<const Regex>& gpt2_regex() {
  static const auto re = std::make_shared<const Regex>(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)", "the GPT-2 pre-tokenizer");
  return re;
}

// llama.cpp's pre-tokenizer regexes by tokenizer.ggml.pre name (llama-vocab.cpp): each regex
// splits the pieces the previous one produced, keeping matches and gaps as pieces.
struct PrePreset {
  std::vector<std::string> regexes;
  bool ignore_merges = false;
  bool add_bos = false;
};

constexpr const char* kGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S))";
constexpr const char* kLlama3Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr const char* kQwen2Regex =
    R"((?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

constexpr const char* kSupportedPre = "default, gpt2, smollm, llama3 (llama-bpe), qwen2";

std::optional<PrePreset> pre_preset(std::string_view name) {
  if (name == "default") return PrePreset{{R"([\p{P}\$\+<=>\^~\|]+)", kGpt2Regex, R"(\p{N}+)", "[0-9][0-9][0-9]"}};
  if (name == "gpt2" || name == "gpt-2" || name == "phi-2") return PrePreset{{kGpt2Regex}};
  if (name == "smollm" || name == "starcoder" || name == "refact") return PrePreset{{R"(\p{N})", kGpt2Regex}};
  if (name == "llama3" || name == "llama-v3" || name == "llama-bpe") return PrePreset{{kLlama3Regex}, true, true};
  if (name == "qwen2" || name == "deepseek-r1-qwen") return PrePreset{{kQwen2Regex}};
  return std::nullopt;
}

std::vector<PreTokenizerStep> preset_steps(const PrePreset& preset, std::string_view name) {
  std::vector<PreTokenizerStep> steps;
  for (const std::string& r : preset.regexes) {
    PreTokenizerStep s;
    s.kind = PreTokenizerStep::Kind::split;
    s.regex = std::make_shared<const Regex>(r, cat("pre-tokenizer \"", name, "\""));
    steps.push_back(std::move(s));
  }
  return steps;
}

// Vocabulary under construction: piece <-> id with the checks every source shares.
struct VocabBuilder {
  std::string where;
  std::vector<std::string> pieces;
  std::vector<TokenType> types;
  std::vector<bool> assigned;
  std::unordered_map<std::string, int32_t> ids;

  void add(const std::string& piece, int64_t id, TokenType type, const std::string& entry) {
    if (id < 0 || id >= static_cast<int64_t>(kMaxVocabSize)) {
      fail(ErrorCode::invalid_model, where, ": ", entry, ": id ", id, " is out of range [0, ", kMaxVocabSize, ")");
    }
    if (piece.size() > kMaxPieceBytes) {
      fail(ErrorCode::invalid_model, where, ": ", entry, ": the piece is ", piece.size(), " bytes; the limit is ",
           kMaxPieceBytes);
    }
    const auto i = static_cast<size_t>(id);
    if (i >= pieces.size()) pieces.resize(i + 1), types.resize(i + 1, TokenType::unused), assigned.resize(i + 1);
    if (assigned[i]) {
      fail(ErrorCode::invalid_model, where, ": ", entry, ": id ", id, " is already used by \"", pieces[i], "\"");
    }
    const auto [it, inserted] = ids.emplace(piece, static_cast<int32_t>(id));
    if (!inserted && !piece.empty()) {
      fail(ErrorCode::invalid_model, where, ": ", entry, ": the piece \"", piece, "\" already has id ", it->second);
    }
    pieces[i] = piece;
    types[i] = type;
    assigned[i] = true;
  }

  int32_t id_of(std::string_view piece) const {
    const auto it = ids.find(std::string(piece));
    return it == ids.end() ? -1 : it->second;
  }
};

// Merges under construction: "left right" -> rank (the later duplicate wins, as in HF).
struct MergeBuilder {
  std::string where;
  const VocabBuilder& vocab;
  std::unordered_map<uint64_t, std::pair<int32_t, int32_t>> merges;

  void add(std::string_view left, std::string_view right, size_t index, const std::string& entry) {
    const int32_t a = vocab.id_of(left), b = vocab.id_of(right);
    const std::string merged = cat(left, right);
    const int32_t m = vocab.id_of(merged);
    auto bad = [&](std::string_view what) {
      fail(ErrorCode::invalid_model, where, ": ", entry, " (\"", left, " ", right, "\"): ", what,
           " is not in the vocabulary");
    };
    if (a < 0) bad(cat("\"", left, "\""));
    if (b < 0) bad(cat("\"", right, "\""));
    if (m < 0) bad(cat("the merged token \"", merged, "\""));
    merges[pair_key(a, b)] = {static_cast<int32_t>(index), m};
  }
};

const json* get(const json& obj, const char* key) {
  const auto it = obj.find(key);
  return it == obj.end() || it->is_null() ? nullptr : &*it;
}

std::string get_string(const json& obj, const char* key, const std::string& where, std::optional<std::string> def = {}) {
  const json* v = get(obj, key);
  if (v == nullptr) {
    if (def) return *def;
    fail(ErrorCode::invalid_model, where, ": missing \"", key, "\"");
  }
  if (!v->is_string()) fail(ErrorCode::invalid_model, where, ".", key, " must be a string, found ", json_type_name(*v));
  return v->get<std::string>();
}

bool get_bool(const json& obj, const char* key, const std::string& where, bool def) {
  const json* v = get(obj, key);
  if (v == nullptr) return def;
  if (!v->is_boolean()) fail(ErrorCode::invalid_model, where, ".", key, " must be a bool, found ", json_type_name(*v));
  return v->get<bool>();
}

int64_t get_int(const json& obj, const char* key, const std::string& where) {
  const json* v = get(obj, key);
  if (v == nullptr) fail(ErrorCode::invalid_model, where, ": missing \"", key, "\"");
  if (!v->is_number_integer()) {
    fail(ErrorCode::invalid_model, where, ".", key, " must be an integer, found ", json_type_name(*v));
  }
  return v->get<int64_t>();
}

void require_object(const json& v, const std::string& where) {
  if (!v.is_object()) fail(ErrorCode::invalid_model, where, " must be an object, found ", json_type_name(v));
}

// {"String": "▁"} or {"Regex": "..."}: returns (is_regex, text).
std::pair<bool, std::string> get_pattern(const json& obj, const std::string& where) {
  const json* p = get(obj, "pattern");
  if (p == nullptr || !p->is_object() || p->size() != 1) {
    fail(ErrorCode::invalid_model, where, ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
  const auto it = p->begin();
  const std::string& kind = it.key();
  const json& value = it.value();
  if ((kind != "String" && kind != "Regex") || !value.is_string()) {
    fail(ErrorCode::invalid_model, where, ".pattern must be {\"String\": ...} or {\"Regex\": ...}");
  }
  return {kind == "Regex", value.get<std::string>()};
}

std::string type_of(const json& obj, const std::string& where) {
  require_object(obj, where);
  return get_string(obj, "type", where);
}

void parse_normalizer(const json& n, const std::string& where, std::vector<NormalizerStep>& out) {
  const std::string type = type_of(n, where);
  if (type == "Sequence") {
    const json* list = get(n, "normalizers");
    if (list == nullptr || !list->is_array()) fail(ErrorCode::invalid_model, where, ".normalizers must be an array");
    for (size_t i = 0; i < list->size(); ++i) parse_normalizer((*list)[i], cat(where, ".normalizers[", i, "]"), out);
  } else if (type == "Prepend") {
    out.push_back({NormalizerStep::Kind::prepend, "", get_string(n, "prepend", where)});
  } else if (type == "NFC") {
    out.push_back({NormalizerStep::Kind::nfc, "", ""});
  } else if (type == "Replace") {
    const auto [is_regex, pattern] = get_pattern(n, where);
    if (is_regex) fail(ErrorCode::unsupported, where, ": normalizer Replace with a Regex pattern is not supported");
    if (pattern.empty()) fail(ErrorCode::invalid_model, where, ": Replace with an empty pattern");
    out.push_back({NormalizerStep::Kind::replace, pattern, get_string(n, "content", where)});
  } else {
    fail(ErrorCode::unsupported, where, ": normalizer type \"", type,
         "\" is not supported (supported: Sequence, Prepend, Replace, NFC)");
  }
}

PreTokenizerStep::Behavior parse_behavior(const std::string& b, const std::string& where) {
  using B = PreTokenizerStep::Behavior;
  if (b == "Isolated") return B::isolated;
  if (b == "Removed") return B::removed;
  if (b == "MergedWithPrevious") return B::merged_with_previous;
  if (b == "MergedWithNext") return B::merged_with_next;
  if (b == "Contiguous") return B::contiguous;
  fail(ErrorCode::unsupported, where, ": split behavior \"", b, "\" is not supported");
}

struct MetaspaceOptions {
  std::string replacement;
  PreTokenizerStep::Prepend prepend = PreTokenizerStep::Prepend::always;
  bool split = true;
};

MetaspaceOptions parse_metaspace(const json& p, const std::string& where) {
  MetaspaceOptions m;
  m.replacement = get_string(p, "replacement", where, std::string(kMetaspace));
  if (m.replacement.empty()) fail(ErrorCode::invalid_model, where, ".replacement is empty");
  if (get(p, "prepend_scheme") != nullptr) {
    const std::string scheme = get_string(p, "prepend_scheme", where);
    if (scheme == "always") m.prepend = PreTokenizerStep::Prepend::always;
    else if (scheme == "first") m.prepend = PreTokenizerStep::Prepend::first;
    else if (scheme == "never") m.prepend = PreTokenizerStep::Prepend::never;
    else fail(ErrorCode::unsupported, where, ": prepend_scheme \"", scheme, "\" is not supported");
  } else {
    m.prepend = get_bool(p, "add_prefix_space", where, true) ? PreTokenizerStep::Prepend::always
                                                               : PreTokenizerStep::Prepend::never;
  }
  m.split = get_bool(p, "split", where, true);
  return m;
}

void parse_pre_tokenizer(const json& p, const std::string& where, std::vector<PreTokenizerStep>& out,
                         bool& byte_level) {
  const std::string type = type_of(p, where);
  PreTokenizerStep step;
  if (type == "Sequence") {
    const json* list = get(p, "pretokenizers");
    if (list == nullptr || !list->is_array()) fail(ErrorCode::invalid_model, where, ".pretokenizers must be an array");
    for (size_t i = 0; i < list->size(); ++i) {
      parse_pre_tokenizer((*list)[i], cat(where, ".pretokenizers[", i, "]"), out, byte_level);
    }
    return;
  }
  if (type == "Split") {
    const auto [is_regex, pattern] = get_pattern(p, where);
    step.kind = PreTokenizerStep::Kind::split;
    step.regex = std::make_shared<const Regex>(pattern, where, /*literal=*/!is_regex);
    step.behavior = parse_behavior(get_string(p, "behavior", where, std::string("Isolated")), where);
    step.invert = get_bool(p, "invert", where, false);
  } else if (type == "ByteLevel") {
    step.kind = PreTokenizerStep::Kind::byte_level;
    step.add_prefix_space = get_bool(p, "add_prefix_space", where, true);
    if (get_bool(p, "use_regex", where, true)) step.regex = gpt2_regex();
    byte_level = true;
  } else if (type == "Digits") {
    step.kind = PreTokenizerStep::Kind::split;
    const bool individual = get_bool(p, "individual_digits", where, false);
    static const auto digit = std::make_shared<const Regex>(R"(\p{N})", "the Digits pre-tokenizer");
    step.regex = digit;
    step.behavior = individual ? PreTokenizerStep::Behavior::isolated : PreTokenizerStep::Behavior::contiguous;
  } else if (type == "Metaspace") {
    const MetaspaceOptions m = parse_metaspace(p, where);
    step.kind = PreTokenizerStep::Kind::metaspace;
    step.replacement = m.replacement;
    step.prepend = m.prepend;
    step.metaspace_split = m.split;
  } else {
    fail(ErrorCode::unsupported, where, ": pre-tokenizer type \"", type,
         "\" is not supported (supported: Sequence, Split, ByteLevel, Digits, Metaspace)");
  }
  out.push_back(std::move(step));
}

void parse_decoder(const json& d, const std::string& where, BpeConfig& c) {
  const std::string type = type_of(d, where);
  if (type == "Sequence") {
    const json* list = get(d, "decoders");
    if (list == nullptr || !list->is_array()) fail(ErrorCode::invalid_model, where, ".decoders must be an array");
    for (size_t i = 0; i < list->size(); ++i) parse_decoder((*list)[i], cat(where, ".decoders[", i, "]"), c);
  } else if (type == "ByteLevel") {
    c.decode_byte_level = true;
  } else if (type == "Replace") {
    const auto [is_regex, pattern] = get_pattern(d, where);
    if (is_regex) fail(ErrorCode::unsupported, where, ": decoder Replace with a Regex pattern is not supported");
    c.decode_replace.emplace_back(pattern, get_string(d, "content", where));
  } else if (type == "ByteFallback") {
    c.decode_byte_fallback = true;
  } else if (type == "Fuse") {
    // Joining the tokens is what decode() does anyway.
  } else if (type == "Strip") {
    const std::string content = get_string(d, "content", where, std::string(" "));
    const int64_t start = get(d, "start") ? get_int(d, "start", where) : 0;
    const int64_t stop = get(d, "stop") ? get_int(d, "stop", where) : 0;
    if (content != " " || start < 0 || start > 1 || stop != 0) {
      fail(ErrorCode::unsupported, where, ": decoder Strip is supported only as content \" \", start 0 or 1, stop 0");
    }
    c.decode_strip_leading_space = start == 1;
  } else if (type == "Metaspace") {
    const MetaspaceOptions m = parse_metaspace(d, where);
    c.decode_replace.emplace_back(m.replacement, " ");
    c.decode_strip_leading_space = m.prepend != PreTokenizerStep::Prepend::never;
  } else {
    fail(ErrorCode::unsupported, where, ": decoder type \"", type,
         "\" is not supported (supported: Sequence, ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace)");
  }
}

// The first special token of a TemplateProcessing "single" template (the BOS it adds), if any.
std::optional<std::string> template_bos(const json& p) {
  if (!p.is_object()) return std::nullopt;
  const auto type = p.find("type");
  if (type == p.end() || !type->is_string()) return std::nullopt;
  if (*type == "Sequence") {
    const auto list = p.find("processors");
    if (list == p.end() || !list->is_array()) return std::nullopt;
    for (const json& q : *list) {
      if (auto bos = template_bos(q)) return bos;
    }
    return std::nullopt;
  }
  if (*type != "TemplateProcessing") return std::nullopt;
  const auto single = p.find("single");
  if (single == p.end() || !single->is_array() || single->empty()) return std::nullopt;
  const json& first = (*single)[0];
  if (!first.is_object() || !first.contains("SpecialToken")) return std::nullopt;
  const json& st = first["SpecialToken"];
  if (!st.is_object() || !st.contains("id") || !st["id"].is_string()) return std::nullopt;
  return st["id"].get<std::string>();
}

std::unique_ptr<TokenizerBase> finish(BpeConfig c, VocabBuilder& vocab) {
  c.pieces = std::move(vocab.pieces);
  c.types = std::move(vocab.types);
  return std::make_unique<BpeTokenizer>(std::move(c));
}

}  // namespace

// ---- HF tokenizer.json ---------------------------------------------------------------------
std::unique_ptr<TokenizerBase> load_tokenizer_json(const json& j, const std::string& file) {
  require_object(j, file);
  const json* model = get(j, "model");
  if (model == nullptr) fail(ErrorCode::invalid_model, file, ": missing \"model\"");
  const std::string mw = file + ": model";
  require_object(*model, mw);
  const std::string type = get_string(*model, "type", mw, std::string("BPE"));
  if (type != "BPE") {
    fail(ErrorCode::unsupported, file, ": model type \"", type, "\" is not supported (gptqd implements BPE)");
  }
  if (const json* d = get(*model, "dropout"); d != nullptr && !(d->is_number() && d->get<double>() == 0.0)) {
    fail(ErrorCode::unsupported, mw, ".dropout: BPE dropout is not supported");
  }
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"}) {
    if (!get_string(*model, key, mw, std::string()).empty()) {
      fail(ErrorCode::unsupported, mw, ".", key, " is not supported");
    }
  }

  VocabBuilder vocab{file, {}, {}, {}, {}};
  const json* v = get(*model, "vocab");
  if (v == nullptr || !v->is_object()) fail(ErrorCode::invalid_model, mw, ".vocab must be an object");
  if (v->size() > kMaxVocabSize) {
    fail(ErrorCode::invalid_model, mw, ".vocab has ", v->size(), " entries; the limit is ", kMaxVocabSize);
  }
  vocab.ids.reserve(v->size());
  for (const auto& [piece, id] : v->items()) {
    const std::string entry = cat("model.vocab[\"", piece, "\"]");
    if (!id.is_number_integer()) {
      fail(ErrorCode::invalid_model, file, ": ", entry, " must be an integer id, found ", json_type_name(id));
    }
    vocab.add(piece, id.get<int64_t>(), TokenType::normal, entry);
  }

  BpeConfig c;
  c.byte_fallback = get_bool(*model, "byte_fallback", mw, false);
  c.fuse_unk = get_bool(*model, "fuse_unk", mw, false);
  c.ignore_merges = get_bool(*model, "ignore_merges", mw, false);
  if (const json* unk = get(*model, "unk_token")) {
    if (!unk->is_string()) fail(ErrorCode::invalid_model, mw, ".unk_token must be a string");
    c.unk_id = vocab.id_of(unk->get<std::string>());
    if (c.unk_id < 0) {
      fail(ErrorCode::invalid_model, mw, ".unk_token \"", unk->get<std::string>(), "\" is not in model.vocab");
    }
  }

  // added_tokens: checked against the vocabulary; new ones extend it. Matched on the raw text
  // whatever their "normalized" flag says; lstrip/rstrip take ASCII whitespace; single_word is
  // not applied; a non-special one decodes to its content as written.
  if (const json* added = get(j, "added_tokens")) {
    if (!added->is_array()) fail(ErrorCode::invalid_model, file, ": added_tokens must be an array");
    if (added->size() > kMaxAddedTokens) {
      fail(ErrorCode::invalid_model, file, ": added_tokens has ", added->size(), " entries; the limit is ",
           kMaxAddedTokens);
    }
    std::set<int64_t> seen;
    for (size_t i = 0; i < added->size(); ++i) {
      const json& t = (*added)[i];
      const std::string aw = cat(file, ": added_tokens[", i, "]");
      require_object(t, aw);
      AddedToken a;
      const int64_t id = get_int(t, "id", aw);
      a.content = get_string(t, "content", aw);
      a.special = get_bool(t, "special", aw, false);
      a.lstrip = get_bool(t, "lstrip", aw, false);
      a.rstrip = get_bool(t, "rstrip", aw, false);
      if (id < 0 || id >= static_cast<int64_t>(kMaxVocabSize)) {
        fail(ErrorCode::invalid_model, aw, ": id ", id, " is out of range [0, ", kMaxVocabSize, ")");
      }
      if (a.content.empty()) fail(ErrorCode::invalid_model, aw, ": empty content");
      if (!seen.insert(id).second) fail(ErrorCode::invalid_model, aw, ": id ", id, " appears twice in added_tokens");
      a.id = static_cast<int32_t>(id);
      const auto idx = static_cast<size_t>(id);
      if (idx < vocab.assigned.size() && vocab.assigned[idx]) {
        if (vocab.pieces[idx] != a.content) {
          fail(ErrorCode::invalid_model, aw, ": id ", id, " is \"", vocab.pieces[idx],
               "\" in model.vocab but the added token says \"", a.content, "\"");
        }
      } else {
        vocab.add(a.content, id, a.special ? TokenType::control : TokenType::user_defined, cat("added_tokens[", i, "]"));
      }
      if (a.special) vocab.types[idx] = TokenType::control;
      c.added.push_back(std::move(a));
    }
  }

  // Merges: "a b" strings or ["a", "b"] pairs.
  const json* merges = get(*model, "merges");
  if (merges != nullptr) {
    if (!merges->is_array()) fail(ErrorCode::invalid_model, mw, ".merges must be an array");
    if (merges->size() > kMaxMerges) {
      fail(ErrorCode::invalid_model, mw, ".merges has ", merges->size(), " entries; the limit is ", kMaxMerges);
    }
    MergeBuilder mb{file, vocab, {}};
    mb.merges.reserve(merges->size());
    for (size_t i = 0; i < merges->size(); ++i) {
      const json& m = (*merges)[i];
      const std::string entry = cat("model.merges[", i, "]");
      if (m.is_string()) {
        const std::string& s = m.get_ref<const std::string&>();
        const size_t space = s.find(' ');
        if (space == std::string::npos) {
          fail(ErrorCode::invalid_model, file, ": ", entry, " \"", s, "\" is not two tokens separated by a space");
        }
        mb.add(std::string_view(s).substr(0, space), std::string_view(s).substr(space + 1), i, entry);
      } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
        mb.add(m[0].get_ref<const std::string&>(), m[1].get_ref<const std::string&>(), i, entry);
      } else {
        fail(ErrorCode::invalid_model, file, ": ", entry, " must be \"a b\" or [\"a\", \"b\"]");
      }
    }
    c.merges = std::move(mb.merges);
  }

  if (const json* n = get(j, "normalizer")) parse_normalizer(*n, file + ": normalizer", c.normalizers);
  if (const json* p = get(j, "pre_tokenizer")) parse_pre_tokenizer(*p, file + ": pre_tokenizer", c.pre_tokenizers, c.byte_level);
  if (const json* d = get(j, "decoder")) parse_decoder(*d, file + ": decoder", c);
  c.kind = c.byte_level ? "bpe-byte-level" : "bpe";

  std::optional<int32_t> bos;
  if (const json* p = get(j, "post_processor")) {
    if (const auto text = template_bos(*p)) {
      const int32_t id = vocab.id_of(*text);
      if (id < 0) fail(ErrorCode::invalid_model, file, ": post_processor adds \"", *text, "\", which is not a token");
      bos = id;
    }
  }
  auto tok = finish(std::move(c), vocab);
  if (bos) {
    tok->set_bos_id(*bos);
    tok->set_add_bos(true);
  }
  return tok;
}

// ---- GGUF ----------------------------------------------------------------------------------
std::unique_ptr<TokenizerBase> load_gguf_bpe(const GgufFile& g) {
  const std::string file = g.name();
  const std::string model = g.get_string("tokenizer.ggml.model");
  if (model != "gpt2" && model != "llama") {
    fail(ErrorCode::unsupported, file, ": tokenizer.ggml.model \"", model,
         "\" is not supported (supported: gpt2, llama)");
  }
  const GgufValue* tokens_value = g.find("tokenizer.ggml.tokens");
  if (tokens_value != nullptr && tokens_value->type == GgufValueType::array) {
    const auto n = std::get<std::vector<GgufValue>>(tokens_value->value).size();
    if (n == 0 || n > kMaxVocabSize) {
      fail(ErrorCode::invalid_model, file, ": tokenizer.ggml.tokens has ", n, " entries; gptqd accepts 1 to ",
           kMaxVocabSize);
    }
  }
  const std::vector<std::string> tokens = g.get_string_array("tokenizer.ggml.tokens");
  const size_t n = tokens.size();
  if (n == 0 || n > kMaxVocabSize) {
    fail(ErrorCode::invalid_model, file, ": tokenizer.ggml.tokens has ", n, " entries; gptqd accepts 1 to ",
         kMaxVocabSize);
  }
  std::vector<int64_t> types(n, static_cast<int64_t>(TokenType::normal));
  if (g.find("tokenizer.ggml.token_type") != nullptr) {
    types = g.get_int_array("tokenizer.ggml.token_type");
    if (types.size() != n) {
      fail(ErrorCode::invalid_model, file, ": tokenizer.ggml.token_type has ", types.size(), " entries for ", n,
           " tokens");
    }
  }
  VocabBuilder vocab{file, {}, {}, {}, {}};
  vocab.ids.reserve(n);
  BpeConfig c;
  for (size_t i = 0; i < n; ++i) {
    const int64_t t = types[i];
    if (t < 0 || t > static_cast<int64_t>(TokenType::byte)) {
      fail(ErrorCode::invalid_model, file, ": tokenizer.ggml.token_type[", i, "] = ", t, " is not a token type (0-6)");
    }
    auto type = static_cast<TokenType>(t);
    if (type == TokenType::undefined) type = TokenType::normal;
    const std::string entry = cat("tokenizer.ggml.tokens[", i, "]");
    // Duplicate pieces exist in some converted vocabularies: ids stay unique and, as in
    // llama.cpp, a lookup by text finds the last one.
    if (tokens[i].size() > kMaxPieceBytes) {
      fail(ErrorCode::invalid_model, file, ": ", entry, " is ", tokens[i].size(), " bytes; the limit is ",
           kMaxPieceBytes);
    }
    vocab.pieces.push_back(tokens[i]);
    vocab.types.push_back(type);
    vocab.assigned.push_back(true);
    vocab.ids[tokens[i]] = static_cast<int32_t>(i);
    if ((type == TokenType::control || type == TokenType::unknown || type == TokenType::user_defined) &&
        !tokens[i].empty()) {
      c.added.push_back({static_cast<int32_t>(i), tokens[i], type != TokenType::user_defined, false, false});
    }
  }
  auto token_id = [&](const char* key) -> std::optional<int32_t> {
    const auto v = g.get_uint_opt(key);
    if (!v) return std::nullopt;
    if (*v >= n) fail(ErrorCode::invalid_model, file, ": ", key, " = ", *v, " is not a token id (", n, " tokens)");
    return static_cast<int32_t>(*v);
  };

  bool add_bos = false;
  if (model == "gpt2") {
    const std::string pre = g.get_string_opt("tokenizer.ggml.pre").value_or("default");
    const auto preset = pre_preset(pre);
    if (!preset) {
      fail(ErrorCode::unsupported, file, ": tokenizer.ggml.pre \"", pre, "\" is not supported (supported: ",
           kSupportedPre, ")");
    }
    c.pre_tokenizers = preset_steps(*preset, pre);
    c.ignore_merges = preset->ignore_merges;
    add_bos = preset->add_bos;
    c.byte_level = true;
    c.decode_byte_level = true;
    c.kind = "bpe-byte-level";
    if (g.find("tokenizer.ggml.merges") != nullptr) {
      const GgufValue* mv = g.find("tokenizer.ggml.merges");
      if (mv->type == GgufValueType::array && std::get<std::vector<GgufValue>>(mv->value).size() > kMaxMerges) {
        fail(ErrorCode::invalid_model, file, ": tokenizer.ggml.merges has more than ", kMaxMerges, " entries");
      }
      const std::vector<std::string> merges = g.get_string_array("tokenizer.ggml.merges");
      MergeBuilder mb{file, vocab, {}};
      mb.merges.reserve(merges.size());
      for (size_t i = 0; i < merges.size(); ++i) {
        const std::string entry = cat("tokenizer.ggml.merges[", i, "]");
        const size_t space = merges[i].find(' ', 1);
        if (space == std::string::npos) {
          fail(ErrorCode::invalid_model, file, ": ", entry, " \"", merges[i], "\" is not two tokens separated by a space");
        }
        mb.add(std::string_view(merges[i]).substr(0, space), std::string_view(merges[i]).substr(space + 1), i, entry);
      }
      c.merges = std::move(mb.merges);
    }
  } else {
    // SentencePiece vocabulary: merge adjacent symbols into the highest-scoring normal piece,
    // leftmost first on ties (llm_tokenizer_spm). As pair ranks: pieces sorted by score.
    std::vector<double> scores(n, 0.0);
    if (g.find("tokenizer.ggml.scores") != nullptr) {
      scores = g.get_float_array("tokenizer.ggml.scores");
      if (scores.size() != n) {
        fail(ErrorCode::invalid_model, file, ": tokenizer.ggml.scores has ", scores.size(), " entries for ", n,
             " tokens");
      }
    }
    std::vector<int32_t> order;
    for (size_t i = 0; i < n; ++i) {
      if (vocab.types[i] == TokenType::normal) order.push_back(static_cast<int32_t>(i));
    }
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
      return scores[static_cast<size_t>(a)] > scores[static_cast<size_t>(b)];
    });
    std::vector<int32_t> rank(n, -1);
    for (size_t k = 0; k < order.size(); ++k) {
      const bool tie = k > 0 && scores[static_cast<size_t>(order[k])] == scores[static_cast<size_t>(order[k - 1])];
      rank[static_cast<size_t>(order[k])] = tie ? rank[static_cast<size_t>(order[k - 1])] : static_cast<int32_t>(k);
    }
    auto normal_id = [&](std::string_view s) {
      const int32_t id = vocab.id_of(s);
      return id >= 0 && vocab.types[static_cast<size_t>(id)] == TokenType::normal ? id : -1;
    };
    for (const int32_t id : order) {
      const std::string& p = vocab.pieces[static_cast<size_t>(id)];
      for (size_t cut = utf8_char_length(p, 0); cut < p.size(); cut += utf8_char_length(p, cut)) {
        const int32_t a = normal_id(std::string_view(p).substr(0, cut));
        const int32_t b = normal_id(std::string_view(p).substr(cut));
        if (a >= 0 && b >= 0) c.merges[pair_key(a, b)] = {rank[static_cast<size_t>(id)], id};
      }
    }
    const bool space_prefix = g.get_bool_opt("tokenizer.ggml.add_space_prefix").value_or(true);
    if (space_prefix) c.normalizers.push_back({NormalizerStep::Kind::prepend, "", std::string(kMetaspace)});
    c.normalizers.push_back({NormalizerStep::Kind::replace, " ", std::string(kMetaspace)});
    c.byte_fallback = true;
    c.decode_byte_fallback = true;
    c.decode_replace.emplace_back(std::string(kMetaspace), " ");
    c.decode_strip_leading_space = space_prefix;
    add_bos = true;
    c.kind = "bpe";
  }
  if (const auto unk = token_id("tokenizer.ggml.unknown_token_id")) {
    c.unk_id = *unk;
  } else {
    for (size_t i = 0; i < n; ++i) {
      if (vocab.types[i] == TokenType::unknown) {
        c.unk_id = static_cast<int32_t>(i);
        break;
      }
    }
  }

  auto tok = finish(std::move(c), vocab);
  const auto bos = token_id("tokenizer.ggml.bos_token_id");
  tok->set_bos_id(bos.value_or(-1));
  std::vector<int32_t> eos;
  for (const char* key : {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
    if (const auto id = token_id(key); id && std::find(eos.begin(), eos.end(), *id) == eos.end()) eos.push_back(*id);
  }
  // As llama.cpp: control tokens that end a turn in known chat formats also stop generation.
  for (const char* text : {"<|eot_id|>", "<|eom_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"}) {
    const auto id = tok->find_piece(text);
    if (id && tok->is_control(*id) && std::find(eos.begin(), eos.end(), *id) == eos.end()) eos.push_back(*id);
  }
  tok->set_eos_ids(std::move(eos));
  tok->set_add_bos(g.get_bool_opt("tokenizer.ggml.add_bos_token").value_or(add_bos) && bos.has_value());
  tok->set_chat_template(g.get_string_opt("tokenizer.chat_template").value_or(""));
  return tok;
}

// ---- vocab.json + merges.txt ---------------------------------------------------------------
std::unique_ptr<TokenizerBase> load_vocab_merges(const std::filesystem::path& vocab_json,
                                                 const std::filesystem::path& merges_txt, std::string_view pre,
                                                 const std::vector<std::string>& special_tokens) {
  const std::string vname = vocab_json.filename().string(), mname = merges_txt.filename().string();
  const auto preset = pre_preset(pre);
  if (!preset) fail(ErrorCode::unsupported, "pre-tokenizer \"", pre, "\" is not supported (supported: ", kSupportedPre, ")");
  json j;
  try {
    j = parse_json_strict(read_file_capped(vocab_json, vname, kMaxTokenizerFileBytes), vname);
  } catch (const Error& e) {
    if (e.code() != ErrorCode::invalid_argument) throw;
    throw Error(ErrorCode::invalid_model, e.what());
  }
  if (!j.is_object()) fail(ErrorCode::invalid_model, vname, ": expected an object of token -> id");
  if (j.size() > kMaxVocabSize) {
    fail(ErrorCode::invalid_model, vname, ": ", j.size(), " entries; the limit is ", kMaxVocabSize);
  }
  VocabBuilder vocab{vname, {}, {}, {}, {}};
  vocab.ids.reserve(j.size() + special_tokens.size());
  for (const auto& [piece, id] : j.items()) {
    const std::string entry = cat("[\"", piece, "\"]");
    if (!id.is_number_integer()) fail(ErrorCode::invalid_model, vname, ": ", entry, " must be an integer id");
    vocab.add(piece, id.get<int64_t>(), TokenType::normal, entry);
  }
  BpeConfig c;
  const auto first_special = static_cast<int64_t>(vocab.pieces.size());
  for (size_t i = 0; i < special_tokens.size(); ++i) {
    const int64_t id = first_special + static_cast<int64_t>(i);
    vocab.add(special_tokens[i], id, TokenType::control, cat("special token ", i));
    c.added.push_back({static_cast<int32_t>(id), special_tokens[i], true, false, false});
  }

  const std::string text = read_file_capped(merges_txt, mname, kMaxTokenizerFileBytes);
  MergeBuilder mb{mname, vocab, {}};
  size_t line_no = 0, index = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && starts_with(line, "#version"))) continue;
    if (index >= kMaxMerges) fail(ErrorCode::invalid_model, mname, ": more than ", kMaxMerges, " merges");
    const size_t space = line.find(' ');
    const std::string entry = cat("line ", line_no);
    if (space == std::string_view::npos) {
      fail(ErrorCode::invalid_model, mname, ": ", entry, " \"", line, "\" is not two tokens separated by a space");
    }
    mb.add(line.substr(0, space), line.substr(space + 1), index++, entry);
  }
  c.merges = std::move(mb.merges);
  c.pre_tokenizers = preset_steps(*preset, pre);
  c.ignore_merges = preset->ignore_merges;
  c.byte_level = true;
  c.decode_byte_level = true;
  c.kind = "bpe-byte-level";
  return finish(std::move(c), vocab);
}

std::string replace_all(std::string s, std::string_view from, std::string_view to) {
  if (from.empty() || s.find(from) == std::string::npos) return s;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string::npos; pos = hit + from.size()) {
    out.append(s, pos, hit - pos);
    out += to;
  }
  out.append(s, pos, std::string::npos);
  return out;
}

// "<0x0A>" -> 0x0A; -1 when `piece` is not of that form.
int parse_byte_piece(std::string_view piece) {
  if (piece.size() != 6 || piece.substr(0, 3) != "<0x" || piece[5] != '>') return -1;
  int v = 0;
  for (const char c : piece.substr(3, 2)) {
    v <<= 4;
    if (c >= '0' && c <= '9') v |= c - '0';
    else if (c >= 'A' && c <= 'F') v |= c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') v |= c - 'a' + 10;
    else return -1;
  }
  return v;
}

}  // namespace gptqd::engine::tokenizer_detail
