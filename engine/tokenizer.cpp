// SPDX-License-Identifier: Apache-2.0
// Tokenizer: what every vocabulary shares — decode(), EOS sets, the UTF-8-safe stream decoder,
// added-token splitting — and the two factories that read an HF folder or GGUF metadata
// (engine layer).
#include "engine/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <map>

#include "engine/bpe_tokenizer.h"
#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/json_strict.h"
#include "engine/sentencepiece_tokenizer.h"

namespace gptqd::engine {

namespace tokenizer_detail {

// ---- UTF-8 -----------------------------------------------------------------------------------
namespace {

// Bytes a sequence starting with `b` needs (0: not a lead byte) and the range its second byte
// must fall in (Unicode Table 3-7: no overlongs, no surrogates, nothing above U+10FFFF).
int utf8_needed(uint8_t b, uint8_t& lo, uint8_t& hi) {
  lo = 0x80, hi = 0xBF;
  if (b < 0x80) return 1;
  if (b < 0xC2) return 0;
  if (b < 0xE0) return 2;
  if (b < 0xF0) {
    if (b == 0xE0) lo = 0xA0;
    if (b == 0xED) hi = 0x9F;
    return 3;
  }
  if (b < 0xF5) {
    if (b == 0xF0) lo = 0x90;
    if (b == 0xF4) hi = 0x8F;
    return 4;
  }
  return 0;
}

}  // namespace

size_t utf8_prefix_length(std::string_view s, size_t pos, size_t* needed) {
  uint8_t lo = 0, hi = 0;
  const int n = utf8_needed(static_cast<uint8_t>(s[pos]), lo, hi);
  *needed = static_cast<size_t>(n);
  if (n == 0) return 0;
  size_t k = 1;
  while (k < static_cast<size_t>(n) && pos + k < s.size()) {
    const auto c = static_cast<uint8_t>(s[pos + k]);
    if (c < lo || c > hi) break;
    lo = 0x80, hi = 0xBF;
    ++k;
  }
  return k;
}

namespace {
constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";
}  // namespace

size_t utf8_valid_length(std::string_view s, size_t pos) {
  if (pos >= s.size()) return 0;
  if (static_cast<uint8_t>(s[pos]) < 0x80) return 1;
  size_t needed = 0;
  const size_t k = utf8_prefix_length(s, pos, &needed);
  return k == needed ? k : 0;
}

bool utf8_is_valid(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const size_t n = utf8_valid_length(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string utf8_sanitize(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size();) {
    const size_t n = utf8_valid_length(s, i);
    if (n > 0) {
      out.append(s.substr(i, n));
      i += n;
      continue;
    }
    size_t needed = 0;
    i += std::max<size_t>(1, utf8_prefix_length(s, i, &needed));
    out += kReplacementChar;
  }
  return out;
}

void utf8_append(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
}

// ---- Added tokens --------------------------------------------------------------------------
AddedTokenSplitter::AddedTokenSplitter(std::vector<AddedToken> tokens) : tokens_(std::move(tokens)) {
  terminal_.push_back(-1);
  for (size_t t = 0; t < tokens_.size(); ++t) {
    const std::string& c = tokens_[t].content;
    if (c.empty()) continue;
    int32_t node = 0;
    for (const char ch : c) {
      const uint64_t key = (static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(ch);
      auto it = edges_.find(key);
      if (it == edges_.end()) {
        it = edges_.emplace(key, static_cast<int32_t>(terminal_.size())).first;
        terminal_.push_back(-1);
      }
      node = it->second;
    }
    terminal_[static_cast<size_t>(node)] = static_cast<int32_t>(t);
    first_byte_[static_cast<uint8_t>(c[0])] = true;
  }
}

namespace {
bool is_ascii_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
}  // namespace

void AddedTokenSplitter::split(std::string_view text, bool parse_special, std::vector<Piece>& out) const {
  size_t segment_start = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!first_byte_[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t best = -1;
    size_t best_end = 0;
    int32_t node = 0;
    for (size_t j = pos; j < text.size(); ++j) {
      const auto it = edges_.find((static_cast<uint64_t>(node) << 8) | static_cast<uint8_t>(text[j]));
      if (it == edges_.end()) break;
      node = it->second;
      const int32_t t = terminal_[static_cast<size_t>(node)];
      if (t >= 0 && (parse_special || !tokens_[static_cast<size_t>(t)].special)) best = t, best_end = j + 1;
    }
    if (best < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[static_cast<size_t>(best)];
    size_t start = pos, end = best_end;
    if (token.lstrip) {
      while (start > segment_start && is_ascii_space(text[start - 1])) --start;
    }
    if (token.rstrip) {
      while (end < text.size() && is_ascii_space(text[end])) ++end;
    }
    if (start > segment_start) out.push_back({text.substr(segment_start, start - segment_start), -1});
    out.push_back({{}, token.id});
    segment_start = pos = end;
  }
  if (segment_start < text.size()) out.push_back({text.substr(segment_start), -1});
}

// ---- Base helpers --------------------------------------------------------------------------
void TokenizerBase::check_id(int32_t id) const {
  if (id < 0 || id >= vocab_size()) {
    fail(ErrorCode::invalid_argument, "token id ", id, " is out of range (the vocabulary has ", vocab_size(),
         " tokens)");
  }
}

std::string read_file_capped(const std::filesystem::path& path, std::string_view name, uint64_t max_bytes) {
  std::error_code ec;
  const uint64_t size = std::filesystem::file_size(path, ec);
  if (ec) fail(ErrorCode::io, name, ": cannot read ", path.string(), ": ", ec.message());
  if (size > max_bytes) {
    fail(ErrorCode::invalid_model, name, " is ", size, " bytes; the limit for this file is ", max_bytes, " bytes");
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes(size, '\0');
  if (!in.read(bytes.data(), static_cast<std::streamsize>(size))) {
    fail(ErrorCode::io, name, ": cannot read ", path.string());
  }
  return bytes;
}

}  // namespace tokenizer_detail

using namespace tokenizer_detail;
using nlohmann::json;

// ---- Tokenizer -----------------------------------------------------------------------------
std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  for (const int32_t id : ids) {
    if (id < 0 || id >= vocab_size()) {
      fail(ErrorCode::invalid_argument, "token id ", id, " is out of range (the vocabulary has ", vocab_size(),
           " tokens)");
    }
    if (is_control(id)) continue;
    out += token_bytes(id);
  }
  if (decode_strips_leading_space_ && !out.empty() && out[0] == ' ') out.erase(0, 1);
  return utf8_is_valid(out) ? out : utf8_sanitize(out);
}

bool Tokenizer::is_eos(int32_t id) const {
  return std::find(eos_ids_.begin(), eos_ids_.end(), id) != eos_ids_.end();
}

// ---- TokenStreamDecoder --------------------------------------------------------------------
std::string TokenStreamDecoder::push(int32_t id) {
  pending_ += tokenizer_.token_bytes(id);
  std::string out;
  size_t i = 0;
  while (i < pending_.size()) {
    const size_t n = utf8_valid_length(pending_, i);
    if (n > 0) {
      out.append(pending_, i, n);
      i += n;
      continue;
    }
    // A correct but unfinished sequence at the end waits for the next token; anything else can
    // never become valid and is replaced now.
    size_t needed = 0;
    const size_t k = utf8_prefix_length(pending_, i, &needed);
    if (k > 0 && i + k == pending_.size() && k < needed) break;
    out += "\xEF\xBF\xBD";
    i += std::max<size_t>(1, k);
  }
  pending_.erase(0, i);
  return out;
}

std::string TokenStreamDecoder::finish() {
  std::string out = utf8_sanitize(pending_);
  pending_.clear();
  return out;
}

// ---- HF folders ----------------------------------------------------------------------------
namespace {

constexpr uint64_t kMaxConfigJsonBytes = 16ull << 20;

json read_json(const SourceFile& f, uint64_t max_bytes) {
  if (f.size_bytes > max_bytes) {
    fail(ErrorCode::invalid_model, f.name, " is ", f.size_bytes, " bytes; the limit for this file is ", max_bytes,
         " bytes");
  }
  const std::string text = read_file_capped(f.path, f.name, max_bytes);
  try {
    return parse_json_strict(text, f.name);
  } catch (const Error& e) {
    throw Error(ErrorCode::invalid_model, e.what());
  }
}

// bos_token / eos_token as "<s>" or {"content": "<s>", ...}; nullopt when absent or null.
std::optional<std::string> token_text(const json& config, const char* key, const std::string& file) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto c = it->find("content");
    if (c != it->end() && c->is_string()) return c->get<std::string>();
  }
  fail(ErrorCode::invalid_model, file, ": ", key, " must be a string or an object with a string \"content\", found ",
       json_type_name(*it));
}

int32_t id_of_text(const Tokenizer& tok, const std::string& text, const char* key, const std::string& file) {
  const auto id = tok.find_piece(text);
  if (!id) fail(ErrorCode::invalid_model, file, ": ", key, " \"", text, "\" is not a token of the vocabulary");
  return *id;
}

// "eos_token_id": 2 or [128001, 128008, 128009]; appends to `out`.
void read_token_ids(const json& config, const char* key, const std::string& file, int32_t vocab,
                    std::vector<int32_t>& out) {
  const auto it = config.find(key);
  if (it == config.end() || it->is_null()) return;
  auto one = [&](const json& v, const std::string& where) {
    if (!v.is_number_integer()) {
      fail(ErrorCode::invalid_model, file, ": ", where, " must be an integer, found ", json_type_name(v));
    }
    const int64_t id = v.get<int64_t>();
    if (id < 0 || id >= vocab) {
      fail(ErrorCode::invalid_model, file, ": ", where, " = ", id, " is not a token id (the vocabulary has ", vocab,
           " tokens)");
    }
    out.push_back(static_cast<int32_t>(id));
  };
  if (it->is_array()) {
    for (size_t i = 0; i < it->size(); ++i) one((*it)[i], cat(key, "[", i, "]"));
  } else {
    one(*it, key);
  }
}

std::string chat_template_of(const json& config, const std::string& file) {
  const auto it = config.find("chat_template");
  if (it == config.end() || it->is_null()) return "";
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (size_t i = 0; i < it->size(); ++i) {
      const json& e = (*it)[i];
      if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("template") ||
          !e["template"].is_string()) {
        fail(ErrorCode::invalid_model, file, ": chat_template[", i,
             "] must be an object with string \"name\" and \"template\"");
      }
      if (e["name"] == "default") return e["template"].get<std::string>();
    }
    return "";
  }
  fail(ErrorCode::invalid_model, file, ": chat_template must be a string or a list of {name, template}, found ",
       json_type_name(*it));
}

void add_unique(std::vector<int32_t>& ids, int32_t id) {
  if (std::find(ids.begin(), ids.end(), id) == ids.end()) ids.push_back(id);
}

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::vector<SourceFile>& files) {
  std::map<std::string, const SourceFile*, std::less<>> by_name;
  for (const auto& f : files) by_name[f.name] = &f;
  auto json_of = [&](const char* name) -> std::optional<json> {
    const auto it = by_name.find(name);
    if (it == by_name.end()) return std::nullopt;
    json j = read_json(*it->second, kMaxConfigJsonBytes);
    if (!j.is_object()) fail(ErrorCode::invalid_model, name, ": expected a JSON object, found ", json_type_name(j));
    return j;
  };
  const std::optional<json> tokenizer_config = json_of("tokenizer_config.json");

  std::unique_ptr<TokenizerBase> tok;
  if (const auto it = by_name.find("tokenizer.json"); it != by_name.end()) {
    const json j = read_json(*it->second, kMaxTokenizerFileBytes);
    tok = load_tokenizer_json(j, "tokenizer.json");
  } else if (const auto sp = by_name.find("tokenizer.model"); sp != by_name.end()) {
    if (sp->second->size_bytes > kMaxTokenizerFileBytes) {
      fail(ErrorCode::invalid_model, "tokenizer.model is ", sp->second->size_bytes,
           " bytes; the limit for this file is ", kMaxTokenizerFileBytes, " bytes");
    }
    const std::string bytes = read_file_capped(sp->second->path, "tokenizer.model", kMaxTokenizerFileBytes);
    tok = load_sentencepiece(bytes, "tokenizer.model",
                             tokenizer_config ? &*tokenizer_config : nullptr, "tokenizer_config.json");
  } else {
    fail(ErrorCode::invalid_model, "no tokenizer: the model has neither tokenizer.json nor tokenizer.model");
  }

  const int32_t vocab = tok->vocab_size();
  std::optional<int32_t> bos;
  std::vector<int32_t> eos;
  bool eos_given = false;
  // bos_token / eos_token: tokenizer_config.json, else the older special_tokens_map.json.
  const std::optional<json> special_map = json_of("special_tokens_map.json");
  for (const char* key : {"bos_token", "eos_token"}) {
    for (const auto& [config, file] : {std::pair{&tokenizer_config, "tokenizer_config.json"},
                                       std::pair{&special_map, "special_tokens_map.json"}}) {
      if (!*config) continue;
      const auto text = token_text(**config, key, file);
      if (!text) continue;
      const int32_t id = id_of_text(*tok, *text, key, file);
      if (std::string_view(key) == "bos_token") {
        bos = id;
      } else {
        eos.push_back(id);
        eos_given = true;
      }
      break;
    }
  }
  if (tokenizer_config) {
    const std::string file = "tokenizer_config.json";
    if (const auto it = tokenizer_config->find("add_bos_token"); it != tokenizer_config->end() && !it->is_null()) {
      if (!it->is_boolean()) {
        fail(ErrorCode::invalid_model, file, ": add_bos_token must be a bool, found ", json_type_name(*it));
      }
      tok->set_add_bos(it->get<bool>());
    }
    tok->set_chat_template(chat_template_of(*tokenizer_config, file));
  }
  for (const char* name : {"generation_config.json", "config.json"}) {
    const std::optional<json> config = json_of(name);
    if (!config) continue;
    std::vector<int32_t> ids;
    read_token_ids(*config, "eos_token_id", name, vocab, ids);
    for (const int32_t id : ids) add_unique(eos, id);
    eos_given = eos_given || !ids.empty();
    std::vector<int32_t> bos_ids;
    read_token_ids(*config, "bos_token_id", name, vocab, bos_ids);
    if (!bos && bos_ids.size() == 1) bos = bos_ids[0];
  }
  if (bos) tok->set_bos_id(*bos);
  if (eos_given) tok->set_eos_ids(std::move(eos));
  if (tok->add_bos() && tok->bos_id() < 0) tok->set_add_bos(false);

  if (const auto it = by_name.find("chat_template.jinja"); it != by_name.end()) {
    tok->set_chat_template(read_file_capped(it->second->path, "chat_template.jinja", kMaxConfigJsonBytes));
  }
  return tok;
}

std::unique_ptr<Tokenizer> load_tokenizer(const GgufFile& gguf) { return load_gguf_bpe(gguf); }

std::unique_ptr<Tokenizer> load_bpe_tokenizer(const std::filesystem::path& vocab_json,
                                              const std::filesystem::path& merges_txt, std::string_view pre,
                                              const std::vector<std::string>& special_tokens) {
  return load_vocab_merges(vocab_json, merges_txt, pre, special_tokens);
}

}  // namespace gptqd::engine
