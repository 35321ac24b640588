// SPDX-License-Identifier: Apache-2.0
// SentencePieceTokenizer: tokenizer.model through libsentencepiece, with control pieces (and
// tokens added by tokenizer_config.json) split out of the text only when parse_special asks
// (engine layer).
#include "engine/sentencepiece_tokenizer.h"

#include <sentencepiece_processor.h>

#include <algorithm>
#include <map>

#include "engine/error.h"
#include "engine/json_strict.h"

namespace gptqd::engine::tokenizer_detail {
namespace {

using nlohmann::json;

class SentencePieceTokenizer final : public TokenizerBase {
 public:
  SentencePieceTokenizer(std::string_view model_bytes, const std::string& where, const json* config,
                         const std::string& config_name) {
    const auto status = sp_.LoadFromSerializedProto(model_bytes);
    if (!status.ok()) fail(ErrorCode::invalid_model, where, ": not a SentencePiece model: ", status.ToString());
    const int n = sp_.GetPieceSize();
    if (n <= 0 || static_cast<size_t>(n) > kMaxVocabSize) {
      fail(ErrorCode::invalid_model, where, ": ", n, " pieces; gptqd accepts 1 to ", kMaxVocabSize);
    }
    n_pieces_ = n;
    std::vector<AddedToken> added;
    for (int id = 0; id < n; ++id) {
      const std::string& p = sp_.IdToPiece(id);
      if (p.size() > kMaxPieceBytes) {
        fail(ErrorCode::invalid_model, where, ": piece ", id, " is ", p.size(), " bytes; the limit is ", kMaxPieceBytes);
      }
      if ((sp_.IsControl(id) || sp_.IsUnknown(id)) && !p.empty()) added.push_back({id, p, true, false, false});
    }
    if (config != nullptr) read_added_tokens(*config, config_name, added);
    added_ = AddedTokenSplitter(std::move(added));

    const int32_t total = n_pieces_ + static_cast<int32_t>(extra_.size());
    token_bytes_.resize(static_cast<size_t>(total));
    for (int id = 0; id < n; ++id) {
      const std::string& p = sp_.IdToPiece(id);
      if (sp_.IsControl(id)) continue;
      if (sp_.IsUnknown(id)) {
        token_bytes_[static_cast<size_t>(id)] = " \xE2\x81\x87 ";  // what SentencePiece decodes <unk> to
      } else if (const int b = sp_.IsByte(id) ? parse_byte_piece(p) : -1; b >= 0) {
        token_bytes_[static_cast<size_t>(id)] = std::string(1, static_cast<char>(b));
      } else {
        token_bytes_[static_cast<size_t>(id)] = replace_all(p, kMetaspace, " ");
      }
    }
    for (size_t i = 0; i < extra_.size(); ++i) {
      if (!extra_[i].special) token_bytes_[static_cast<size_t>(n_pieces_) + i] = extra_[i].content;
    }

    set_kind("sentencepiece");
    set_bos_id(sp_.bos_id() >= 0 && sp_.bos_id() < n ? sp_.bos_id() : -1);
    if (sp_.eos_id() >= 0 && sp_.eos_id() < n) set_eos_ids({sp_.eos_id()});
    set_add_bos(bos_id() >= 0);
    // The model adds a dummy-prefix "▁" when "a" encodes to a piece starting with it; decode
    // removes that space again, as SentencePiece's decoder does.
    std::vector<std::string> probe;
    const bool dummy_prefix = sp_.Encode("a", &probe).ok() && !probe.empty() &&
                              std::string_view(probe[0]).substr(0, kMetaspace.size()) == kMetaspace;
    set_decode_strips_leading_space(dummy_prefix);
  }

  std::vector<int32_t> encode(std::string_view text, bool parse_special) const override {
    std::string clean;
    if (!utf8_is_valid(text)) clean = utf8_sanitize(text), text = clean;
    std::vector<AddedTokenSplitter::Piece> pieces;
    added_.split(text, parse_special, pieces);
    std::vector<int32_t> out;
    std::vector<int> ids;
    for (const auto& piece : pieces) {
      if (piece.id >= 0) {
        out.push_back(piece.id);
        continue;
      }
      ids.clear();
      const auto status = sp_.Encode(piece.text, &ids);
      if (!status.ok()) fail(ErrorCode::internal, "SentencePiece encode failed: ", status.ToString());
      out.insert(out.end(), ids.begin(), ids.end());
    }
    return out;
  }

  std::string token_bytes(int32_t id) const override {
    check_id(id);
    return token_bytes_[static_cast<size_t>(id)];
  }

  int32_t vocab_size() const override { return static_cast<int32_t>(token_bytes_.size()); }

  std::string piece(int32_t id) const override {
    check_id(id);
    if (id < n_pieces_) return sp_.IdToPiece(id);
    return extra_[static_cast<size_t>(id - n_pieces_)].content;
  }

  std::optional<int32_t> find_piece(std::string_view p) const override {
    for (size_t i = 0; i < extra_.size(); ++i) {
      if (extra_[i].content == p && !extra_[i].content.empty()) return n_pieces_ + static_cast<int32_t>(i);
    }
    const int id = sp_.PieceToId(p);
    // PieceToId answers unk_id for unknown pieces; only an exact match counts.
    if (id >= 0 && id < n_pieces_ && sp_.IdToPiece(id) == p) return id;
    return std::nullopt;
  }

  bool is_control(int32_t id) const override {
    check_id(id);
    if (id < n_pieces_) return sp_.IsControl(id);
    return extra_[static_cast<size_t>(id - n_pieces_)].special;
  }

 private:
  // tokenizer_config.json "added_tokens_decoder": {"32000": {"content": "<|im_start|>",
  // "special": true, ...}}. Entries naming model pieces must agree with them; entries past the
  // model's pieces extend the vocabulary (ids without an entry decode to "").
  void read_added_tokens(const json& config, const std::string& file, std::vector<AddedToken>& added) {
    const auto it = config.find("added_tokens_decoder");
    if (it == config.end() || it->is_null()) return;
    if (!it->is_object()) {
      fail(ErrorCode::invalid_model, file, ": added_tokens_decoder must be an object, found ", json_type_name(*it));
    }
    if (it->size() > kMaxAddedTokens) {
      fail(ErrorCode::invalid_model, file, ": added_tokens_decoder has ", it->size(), " entries; the limit is ",
           kMaxAddedTokens);
    }
    std::map<int32_t, AddedToken> beyond;
    for (const auto& [key, value] : it->items()) {
      const std::string where = cat(file, ": added_tokens_decoder[\"", key, "\"]");
      size_t used = 0;
      long long id = -1;
      try {
        id = std::stoll(key, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      if (used != key.size() || id < 0 || id >= static_cast<long long>(kMaxVocabSize)) {
        fail(ErrorCode::invalid_model, where, ": the key must be a token id in [0, ", kMaxVocabSize, ")");
      }
      if (!value.is_object() || !value.contains("content") || !value["content"].is_string()) {
        fail(ErrorCode::invalid_model, where, ": expected an object with a string \"content\"");
      }
      AddedToken t;
      t.id = static_cast<int32_t>(id);
      t.content = value["content"].get<std::string>();
      // An init-capture, not [&]: clang 14 (the fuzz build) cannot capture a structured binding.
      auto flag = [&where, &entry = value](const char* name) {
        const auto f = entry.find(name);
        if (f == entry.end() || f->is_null()) return false;
        if (!f->is_boolean()) fail(ErrorCode::invalid_model, where, ".", name, " must be a bool");
        return f->get<bool>();
      };
      t.special = flag("special");
      t.lstrip = flag("lstrip");
      t.rstrip = flag("rstrip");
      if (t.content.empty() || t.content.size() > kMaxPieceBytes) {
        fail(ErrorCode::invalid_model, where, ": content must be 1 to ", kMaxPieceBytes, " bytes");
      }
      if (t.id < n_pieces_) {
        if (sp_.IdToPiece(t.id) != t.content) {
          fail(ErrorCode::invalid_model, where, ": content \"", t.content, "\" differs from the model's piece \"",
               sp_.IdToPiece(t.id), "\" with that id");
        }
        continue;  // the model's own piece: control pieces are already special
      }
      beyond.emplace(t.id, std::move(t));
    }
    if (beyond.empty()) return;
    const int32_t last = beyond.rbegin()->first;
    extra_.resize(static_cast<size_t>(last - n_pieces_ + 1));
    for (auto& [id, t] : beyond) {
      for (const auto& other : extra_) {
        if (!other.content.empty() && other.content == t.content) {
          fail(ErrorCode::invalid_model, file, ": added_tokens_decoder has \"", t.content, "\" twice");
        }
      }
      added.push_back(t);
      extra_[static_cast<size_t>(id - n_pieces_)] = std::move(t);
    }
  }

  sentencepiece::SentencePieceProcessor sp_;
  int32_t n_pieces_ = 0;
  std::vector<AddedToken> extra_;  // ids n_pieces_.. from added_tokens_decoder
  AddedTokenSplitter added_;
  std::vector<std::string> token_bytes_;
};

}  // namespace

std::unique_ptr<TokenizerBase> load_sentencepiece(std::string_view model_bytes, const std::string& where,
                                                  const json* tokenizer_config, const std::string& config_name) {
  return std::make_unique<SentencePieceTokenizer>(model_bytes, where, tokenizer_config, config_name);
}

}  // namespace gptqd::engine::tokenizer_detail
