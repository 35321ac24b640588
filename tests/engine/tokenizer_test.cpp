// SPDX-License-Identifier: Apache-2.0
// Unit tests of the tokenizers on hand-built vocabularies: byte-level and SentencePiece-style
// tokenizer.json, special-token parsing, byte fallback, the stream decoder, HF config files,
// GGUF metadata and the rejection of malformed files (tests).
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <thread>
#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::engine {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using Ids = std::vector<int32_t>;

// ---- helpers -------------------------------------------------------------------------------

std::string utf8(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

// GPT-2's byte -> printable character table.
std::string byte_char(int b) {
  static const std::vector<uint32_t> table = [] {
    std::vector<uint32_t> t(256);
    uint32_t n = 0;
    for (uint32_t x = 0; x < 256; ++x) {
      const bool printable = (x >= 33 && x <= 126) || (x >= 161 && x <= 172) || (x >= 174 && x <= 255);
      t[x] = printable ? x : 256 + n++;
    }
    return t;
  }();
  return utf8(table[static_cast<size_t>(b)]);
}

const std::string G = byte_char(' ');  // "Ġ"

// Byte-level BPE: ids 0..255 are the bytes; merges build "he", "ll", "hell", "hello", "Ġw",
// "Ġwo", "Ġwor" (ids 256..262); then <|im_start|> 263, <|im_end|> 264 (special) and
// <tool> 265 (added, not special).
json byte_level_json() {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {G, "w"}, {G + "w", "o"}, {G + "wo", "r"}};
  json jm = json::array();
  int id = 256;
  for (const auto& [a, b] : merges) {
    vocab[a + b] = id++;
    jm.push_back(a + " " + b);
  }
  auto added = [](int i, const std::string& content, bool special) {
    return json{{"id", i}, {"content", content}, {"special", special}, {"lstrip", false}, {"rstrip", false},
                {"normalized", false}, {"single_word", false}};
  };
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array({added(263, "<|im_start|>", true), added(264, "<|im_end|>", true),
                                    added(265, "<tool>", false)})},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}}},
      {"post_processor", nullptr},
      {"decoder", {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", false}, {"byte_fallback", false}, {"vocab", vocab},
        {"merges", jm}}}};
}

const std::string kSp = "\xE2\x96\x81";  // "▁"

// SentencePiece-style BPE as Llama 2's tokenizer.json: <unk> 0, <s> 1, </s> 2, <0x00>..<0xFF>
// 3..258, then "▁" 259, "a" 260, "b" 261, "▁a" 262, "ab" 263, "▁ab" 264, "c" 265.
json spm_json() {
  json vocab = json::object();
  vocab["<unk>"] = 0;
  vocab["<s>"] = 1;
  vocab["</s>"] = 2;
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 3 + b;
  }
  vocab[kSp] = 259;
  vocab["a"] = 260;
  vocab["b"] = 261;
  vocab[kSp + "a"] = 262;
  vocab["ab"] = 263;
  vocab[kSp + "ab"] = 264;
  vocab["c"] = 265;
  auto added = [](int i, const std::string& content) {
    return json{{"id", i}, {"content", content}, {"special", true}, {"lstrip", false}, {"rstrip", false},
                {"normalized", false}, {"single_word", false}};
  };
  return json{
      {"version", "1.0"},
      {"added_tokens", json::array({added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")})},
      {"normalizer",
       {{"type", "Sequence"},
        {"normalizers", json::array({json{{"type", "Prepend"}, {"prepend", kSp}},
                                     json{{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSp}}})}}},
      {"pre_tokenizer", nullptr},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({json{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}},
                                json{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}}},
      {"decoder",
       {{"type", "Sequence"},
        {"decoders", json::array({json{{"type", "Replace"}, {"pattern", {{"String", kSp}}}, {"content", " "}},
                                  json{{"type", "ByteFallback"}}, json{{"type", "Fuse"}},
                                  json{{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}})}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"}, {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr}, {"fuse_unk", true}, {"byte_fallback", true}, {"vocab", vocab},
        {"merges", json::array({kSp + " a", "a b", kSp + "a b"})}}}};
}

class TokenizerTest : public ::testing::Test {
 protected:
  SourceFile write(const std::string& name, const std::string& content) {
    const fs::path p = dir_ / name;
    test::write_file(p, content);
    return SourceFile{name, p, static_cast<uint64_t>(content.size())};
  }
  std::unique_ptr<Tokenizer> load_json(const json& j, std::vector<SourceFile> extra = {}) {
    extra.push_back(write("tokenizer.json", j.dump()));
    return load_tokenizer(extra);
  }
  // Loads `j` and returns the Error it must throw.
  Error load_error(const json& j) {
    try {
      load_json(j);
    } catch (const Error& e) {
      return e;
    }
    ADD_FAILURE() << "loading did not throw";
    return Error(ErrorCode::internal, "");
  }
  std::unique_ptr<Tokenizer> byte_level() { return load_json(byte_level_json()); }
  std::unique_ptr<Tokenizer> spm() { return load_json(spm_json()); }

  test::TempDir dir_;
};

// ---- byte-level BPE ------------------------------------------------------------------------

TEST_F(TokenizerTest, ByteLevelMergesAndDecodes) {
  auto tok = byte_level();
  EXPECT_EQ(tok->kind(), "bpe-byte-level");
  EXPECT_EQ(tok->vocab_size(), 266);
  EXPECT_EQ(tok->encode("hello", false), (Ids{259}));
  // "Ġwor" then "l", "d"; the regex splits " world" off as its own word.
  EXPECT_EQ(tok->encode("hello world", false), (Ids{259, 262, 'l', 'd'}));
  EXPECT_EQ(tok->token_bytes(262), " wor");
  EXPECT_EQ(tok->token_bytes(' '), " ");
  EXPECT_EQ(tok->piece(262), G + "wor");
  EXPECT_EQ(tok->find_piece(G + "wor"), 262);
  EXPECT_FALSE(tok->find_piece("nope").has_value());
  const std::string text = "h\xC3\xA9llo \xF0\x9F\x98\x80 \xE4\xB8\xAD\xE6\x96\x87\n\tok";
  EXPECT_EQ(tok->decode(tok->encode(text, false)), text);
  EXPECT_EQ(tok->bos_id(), -1);
  EXPECT_FALSE(tok->add_bos());
}

TEST_F(TokenizerTest, SpecialTokensOnlyWithParseSpecial) {
  auto tok = byte_level();
  const Ids with = tok->encode("<|im_start|>user", true);
  EXPECT_EQ(with.front(), 263);
  const Ids without = tok->encode("<|im_start|>user", false);
  EXPECT_EQ(std::count(without.begin(), without.end(), 263), 0);
  EXPECT_EQ(tok->decode(without), "<|im_start|>user");  // the text survives as text
  EXPECT_TRUE(tok->is_control(263));
  EXPECT_EQ(tok->token_bytes(263), "");
  EXPECT_EQ(tok->decode(with), "user");  // control tokens are skipped
  // Non-special added tokens are always matched and decode to their text.
  EXPECT_EQ(tok->encode("a<tool>b", false), (Ids{'a', 265, 'b'}));
  EXPECT_FALSE(tok->is_control(265));
  EXPECT_EQ(tok->decode(Ids{'a', 265, 'b'}), "a<tool>b");
  // Leftmost-longest: "<|im_end|>" inside other text.
  EXPECT_EQ(tok->encode("x<|im_end|><|im_end|>", true), (Ids{'x', 264, 264}));
}

TEST_F(TokenizerTest, MergesAsPairsEqualMergesAsStrings) {
  json j = byte_level_json();
  json pairs = json::array();
  for (const auto& m : j["model"]["merges"]) {
    const std::string s = m;
    pairs.push_back(json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)}));
  }
  j["model"]["merges"] = pairs;
  auto a = load_json(j);
  auto b = byte_level();
  for (const char* text : {"hello world", "hellohello  wo", "hhelllo"}) EXPECT_EQ(a->encode(text, false), b->encode(text, false));
}

TEST_F(TokenizerTest, IgnoreMergesTakesWholeWords) {
  // "hlo" is a token but no merge path reaches it.
  json j = byte_level_json();
  j["model"]["vocab"]["hlo"] = 266;
  EXPECT_EQ(load_json(j)->encode("hlo", false), (Ids{'h', 'l', 'o'}));
  j["model"]["ignore_merges"] = true;
  EXPECT_EQ(load_json(j)->encode("hlo", false), (Ids{266}));
}

TEST_F(TokenizerTest, SplitOnALiteralString) {
  json j = byte_level_json();
  j["pre_tokenizer"] = json{{"type", "Sequence"},
                            {"pretokenizers", json::array({json{{"type", "Split"}, {"pattern", {{"String", "l.l"}}}, {"behavior", "Removed"}},
                                                           json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  auto tok = load_json(j);
  // "l.l" is a literal string (Removed): "hel.lo" loses it; as a regex it would also eat "lxl".
  EXPECT_EQ(tok->encode("hel.lo", false), (Ids{256, 'o'}));
  EXPECT_EQ(tok->encode("hello", false), (Ids{259}));
  EXPECT_EQ(tok->encode("helxlo", false), (Ids{256, 'l', 'x', 'l', 'o'}));
}

TEST_F(TokenizerTest, SplitRegexAndDigitsPreTokenizers) {
  json j = byte_level_json();
  j["pre_tokenizer"] = json{
      {"type", "Sequence"},
      {"pretokenizers",
       json::array({json{{"type", "Digits"}, {"individual_digits", true}},
                    json{{"type", "Split"}, {"pattern", {{"Regex", R"(\p{N}{1,3}| ?\p{L}+|\s+)"}}},
                         {"behavior", "Isolated"}, {"invert", false}},
                    json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  auto tok = load_json(j);
  EXPECT_EQ(tok->encode("hello 123", false), (Ids{259, ' ', '1', '2', '3'}));
  EXPECT_EQ(tok->decode(tok->encode("ab 12345 \xC3\xA9", false)), "ab 12345 \xC3\xA9");
}

// ---- SentencePiece-style BPE ---------------------------------------------------------------

TEST_F(TokenizerTest, SpmStyleDummyPrefixMergesAndDecode) {
  auto tok = spm();
  EXPECT_EQ(tok->kind(), "bpe");
  EXPECT_EQ(tok->encode("ab", false), (Ids{264}));
  EXPECT_EQ(tok->encode("a b", false), (Ids{262, 259, 261}));
  EXPECT_EQ(tok->encode("", false), Ids{});
  EXPECT_EQ(tok->token_bytes(262), " a");
  EXPECT_EQ(tok->decode(Ids{264, 259, 261}), "ab b");  // the dummy-prefix space is dropped
  // The post-processor template starts with <s>: that is BOS, added by default.
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_TRUE(tok->add_bos());
}

TEST_F(TokenizerTest, SpmStyleMergesAcrossMetaspaceWhenTheVocabularyHasThem) {
  // With a piece "b▁" the text cannot be cut before "▁": "b ▁" (rank 0) merges first.
  json j = spm_json();
  j["model"]["vocab"]["b" + kSp] = 266;
  j["model"]["merges"].insert(j["model"]["merges"].begin(), "b " + kSp);
  EXPECT_EQ(load_json(j)->encode("ab ab", false), (Ids{262, 266, 263}));
  EXPECT_EQ(spm()->encode("ab ab", false), (Ids{264, 264}));
}

TEST_F(TokenizerTest, SpmStyleByteFallback) {
  auto tok = spm();
  // "é" is not a piece: its UTF-8 bytes C3 A9 become <0xC3> <0xA9>.
  EXPECT_EQ(tok->encode("\xC3\xA9", false), (Ids{259, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok->token_bytes(3 + 0x0A), "\n");
  EXPECT_EQ(tok->decode(tok->encode("ab \xC3\xA9\n\xF0\x9F\x98\x80", false)), "ab \xC3\xA9\n\xF0\x9F\x98\x80");
  // Special-token text is plain text without parse_special (byte fallback for '<', '/', ...).
  const Ids plain = tok->encode("<s>", false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 1), 0);
  EXPECT_EQ(tok->decode(plain), "<s>");
  // With it, each text segment gets its own dummy prefix (as the HF Prepend normalizer does).
  EXPECT_EQ(tok->encode("<s>ab</s>", true), (Ids{1, 264, 2}));
}

TEST_F(TokenizerTest, UnknownCharactersWithoutByteFallbackFuseIntoOneUnk) {
  json j = spm_json();
  j["model"]["byte_fallback"] = false;
  EXPECT_EQ(load_json(j)->encode("a\xC3\xA9\xC3\xA9", false), (Ids{262, 0}));
  j["model"]["fuse_unk"] = false;
  EXPECT_EQ(load_json(j)->encode("a\xC3\xA9\xC3\xA9", false), (Ids{262, 0, 0}));
}

TEST_F(TokenizerTest, LegacyMetaspacePreTokenizer) {
  json j = spm_json();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = json{{"type", "Metaspace"}, {"replacement", kSp}, {"add_prefix_space", true}};
  j["decoder"] = json{{"type", "Metaspace"}, {"replacement", kSp}, {"add_prefix_space", true}};
  auto tok = load_json(j);
  EXPECT_EQ(tok->encode("ab ab", false), (Ids{264, 264}));
  EXPECT_EQ(tok->decode(Ids{264, 264}), "ab ab");
  j["pre_tokenizer"] = json{{"type", "Metaspace"}, {"replacement", kSp}, {"prepend_scheme", "first"}, {"split", false}};
  tok = load_json(j);
  EXPECT_EQ(tok->encode("ab", false), (Ids{264}));
  EXPECT_EQ(tok->encode("<s>ab", true), (Ids{1, 263}));  // only the first segment gets "▁"
}

TEST_F(TokenizerTest, InvalidUtf8InputIsReplacedNotRead) {
  auto tok = byte_level();
  const Ids ids = tok->encode(std::string("a\xFF\xC3", 3), false);
  EXPECT_EQ(tok->decode(ids), "a\xEF\xBF\xBD\xEF\xBF\xBD");
}

// ---- ids out of range ----------------------------------------------------------------------

TEST_F(TokenizerTest, OutOfRangeIdsAreInvalidArgument) {
  auto tok = spm();
  for (const int32_t id : {-1, 266, 2147483647}) {
    try {
      (void)tok->token_bytes(id);
      ADD_FAILURE() << "token_bytes(" << id << ") did not throw";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
      EXPECT_NE(std::string(e.what()).find(std::to_string(id)), std::string::npos) << e.what();
    }
    const Ids ids = {1, id};
    EXPECT_THROW((void)tok->decode(ids), Error);
    EXPECT_THROW((void)tok->piece(id), Error);
    EXPECT_THROW((void)tok->is_control(id), Error);
  }
  TokenStreamDecoder stream(*tok);
  EXPECT_THROW((void)stream.push(-5), Error);
}

// ---- TokenStreamDecoder --------------------------------------------------------------------

TEST_F(TokenizerTest, StreamDecoderHoldsBackSplitSequences) {
  auto tok = spm();
  // 😀 = F0 9F 98 80 and 中 = E4 B8 AD, one byte-fallback token per byte.
  const std::string text = "\xF0\x9F\x98\x80\xE4\xB8\xAD";
  const Ids ids = tok->encode(text, false);
  ASSERT_EQ(ids.size(), 8u);  // "▁" + 7 bytes
  TokenStreamDecoder stream(*tok);
  std::vector<std::string> outs;
  for (const int32_t id : ids) outs.push_back(stream.push(id));
  EXPECT_EQ(outs, (std::vector<std::string>{" ", "", "", "", "\xF0\x9F\x98\x80", "", "", "\xE4\xB8\xAD"}));
  EXPECT_EQ(stream.finish(), "");
}

TEST_F(TokenizerTest, StreamDecoderByteLevelEmojiWithZwj) {
  auto tok = byte_level();
  // 👩‍💻 (woman, ZWJ, laptop) and 👍🏽 (thumbs up, skin tone): every byte its own token.
  const std::string text = "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB \xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD";
  TokenStreamDecoder stream(*tok);
  std::string joined;
  for (const int32_t id : tok->encode(text, false)) {
    const std::string piece = stream.push(id);
    // Every piece is valid UTF-8 on its own.
    json check = piece;
    EXPECT_NO_THROW((void)check.dump()) << "broken UTF-8 emitted";
    joined += piece;
  }
  joined += stream.finish();
  EXPECT_EQ(joined, text);
}

TEST_F(TokenizerTest, StreamDecoderReplacesBytesThatCanNeverBeValid) {
  auto tok = spm();
  TokenStreamDecoder stream(*tok);
  EXPECT_EQ(stream.push(3 + 0x80), "\xEF\xBF\xBD");  // a lone continuation byte
  EXPECT_EQ(stream.push(3 + 0xE4), "");              // an unfinished 3-byte sequence ...
  EXPECT_EQ(stream.push(3 + 0xB8), "");
  EXPECT_EQ(stream.push(260), "\xEF\xBF\xBD" "a");   // ... cut short by "a"
  EXPECT_EQ(stream.push(3 + 0xF0), "");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");        // an unfinished tail at the end
  EXPECT_EQ(stream.push(1), "");                     // control tokens give nothing
}

// ---- HF config files -----------------------------------------------------------------------

TEST_F(TokenizerTest, TokenizerConfigAndConfigJsonSetBosEosTemplate) {
  std::vector<SourceFile> files = {
      write("tokenizer_config.json",
            json{{"bos_token", json{{"content", "<s>"}, {"lstrip", false}}},
                 {"eos_token", "</s>"},
                 {"add_bos_token", false},
                 {"chat_template", json::array({json{{"name", "tool_use"}, {"template", "T"}},
                                                json{{"name", "default"}, {"template", "D"}}})}}
                .dump()),
      write("config.json", json{{"eos_token_id", json::array({2, 265})}, {"bos_token_id", 1}}.dump()),
      write("generation_config.json", json{{"eos_token_id", 264}}.dump()),
  };
  auto tok = load_json(spm_json(), files);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_FALSE(tok->add_bos());
  EXPECT_EQ(tok->eos_ids(), (Ids{2, 264, 265}));
  EXPECT_TRUE(tok->is_eos(265));
  EXPECT_FALSE(tok->is_eos(1));
  EXPECT_EQ(tok->chat_template(), "D");
}

TEST_F(TokenizerTest, SpecialTokensMapIsTheFallback) {
  auto tok = load_json(spm_json(), {write("special_tokens_map.json", json{{"bos_token", "<s>"}, {"eos_token", json{{"content", "</s>"}}}}.dump())});
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), (Ids{2}));
  tok = load_json(spm_json(), {write("special_tokens_map.json", json{{"eos_token", "</s>"}}.dump()),
                               write("tokenizer_config.json", json{{"eos_token", "c"}}.dump())});
  EXPECT_EQ(tok->eos_ids(), (Ids{265}));
}

TEST_F(TokenizerTest, ConcurrentEncodesAgree) {
  auto tok = byte_level();
  std::vector<std::string> texts;
  for (int i = 0; i < 200; ++i) texts.push_back("hello world " + std::to_string(i * 7919) + " <|im_end|> h\xC3\xA9llo");
  std::vector<Ids> want;
  for (const auto& t : texts) want.push_back(tok->encode(t, true));
  std::vector<std::thread> threads;
  std::atomic<int> mismatches{0};
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&] {
      for (int round = 0; round < 20; ++round) {
        for (size_t i = 0; i < texts.size(); ++i) mismatches += tok->encode(texts[i], true) != want[i];
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(mismatches.load(), 0);
}

TEST_F(TokenizerTest, ChatTemplateStringAndJinjaFile) {
  auto tok = load_json(spm_json(), {write("tokenizer_config.json", json{{"chat_template", "{{ x }}"}}.dump())});
  EXPECT_EQ(tok->chat_template(), "{{ x }}");
  tok = load_json(spm_json(), {write("tokenizer_config.json", json{{"chat_template", "{{ x }}"}}.dump()),
                               write("chat_template.jinja", "{{ y }}")});
  EXPECT_EQ(tok->chat_template(), "{{ y }}");
}

TEST_F(TokenizerTest, ConfigErrorsNameFileAndKey) {
  auto expect_error = [&](const std::string& name, const json& content, const std::string& needle) {
    try {
      load_json(spm_json(), {write(name, content.dump())});
      ADD_FAILURE() << "no error for " << content.dump();
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_model);
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
      EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
    }
  };
  expect_error("config.json", json{{"eos_token_id", 266}}, "eos_token_id");
  expect_error("generation_config.json", json{{"eos_token_id", json::array({2, -1})}}, "eos_token_id[1]");
  expect_error("tokenizer_config.json", json{{"eos_token", "<|nope|>"}}, "<|nope|>");
  expect_error("tokenizer_config.json", json{{"add_bos_token", "yes"}}, "add_bos_token");
  expect_error("tokenizer_config.json", json{{"chat_template", 5}}, "chat_template");
}

TEST_F(TokenizerTest, MissingTokenizerFiles) {
  try {
    load_tokenizer({write("config.json", "{}")});
    FAIL();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_model);
    EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos);
  }
}

TEST_F(TokenizerTest, TinyModelTokenizerLoads) {
  test::write_tiny_hf_model(dir_.path());
  std::vector<SourceFile> files;
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "config.json"}) {
    files.push_back({name, dir_ / name, fs::file_size(dir_ / name)});
  }
  auto tok = load_tokenizer(files);
  EXPECT_EQ(tok->vocab_size(), 272);
  EXPECT_EQ(tok->bos_id(), test::kTinyBos);
  EXPECT_TRUE(tok->is_eos(static_cast<int32_t>(test::kTinyEos)));
  EXPECT_EQ(tok->encode("the", false), (Ids{'t', 258}));
  EXPECT_EQ(tok->encode(" the", false), (Ids{260}));
  EXPECT_EQ(tok->decode(Ids{256, 't', 258, 260, 257}), "the the");
}

// ---- malformed tokenizer.json --------------------------------------------------------------

struct BadCase {
  const char* name;
  std::function<void(json&)> edit;
  ErrorCode code;
  std::vector<std::string> needles;  // each must appear in the message
};

TEST_F(TokenizerTest, MalformedTokenizerJsonIsRejectedWithClearMessages) {
  const std::vector<BadCase> cases = {
      {"model type", [](json& j) { j["model"]["type"] = "WordPiece"; }, ErrorCode::unsupported, {"WordPiece"}},
      {"negative id", [](json& j) { j["model"]["vocab"]["zz"] = -1; }, ErrorCode::invalid_model,
       {"model.vocab[\"zz\"]", "-1"}},
      {"huge id", [](json& j) { j["model"]["vocab"]["zz"] = 10000000; }, ErrorCode::invalid_model, {"10000000"}},
      {"id not an int", [](json& j) { j["model"]["vocab"]["zz"] = "7"; }, ErrorCode::invalid_model, {"zz", "integer"}},
      {"duplicate id", [](json& j) { j["model"]["vocab"]["zz"] = 260; }, ErrorCode::invalid_model, {"260", "zz"}},
      {"merge of unknown token", [](json& j) { j["model"]["merges"].push_back("a q"); }, ErrorCode::invalid_model,
       {"model.merges[3]", "\"q\""}},
      {"merge result unknown", [](json& j) { j["model"]["merges"].push_back("b a"); }, ErrorCode::invalid_model,
       {"model.merges[3]", "\"ba\""}},
      {"merge not a pair", [](json& j) { j["model"]["merges"].push_back("ab"); }, ErrorCode::invalid_model,
       {"model.merges[3]"}},
      {"merge wrong type", [](json& j) { j["model"]["merges"].push_back(json::array({"a"})); },
       ErrorCode::invalid_model, {"model.merges[3]"}},
      {"added id -1", [](json& j) { j["added_tokens"][1]["id"] = -1; }, ErrorCode::invalid_model,
       {"added_tokens[1]", "-1"}},
      {"added id duplicated", [](json& j) { j["added_tokens"][1]["id"] = 0; }, ErrorCode::invalid_model,
       {"added_tokens[1]"}},
      {"added id vs vocab", [](json& j) { j["added_tokens"][1]["content"] = "<S>"; }, ErrorCode::invalid_model,
       {"added_tokens[1]", "<S>"}},
      {"added id huge", [](json& j) { j["added_tokens"][1]["id"] = 2147483647; }, ErrorCode::invalid_model,
       {"added_tokens[1]"}},
      {"decoder type", [](json& j) { j["decoder"] = json{{"type", "CTC"}}; }, ErrorCode::unsupported, {"CTC"}},
      {"nested decoder type", [](json& j) { j["decoder"]["decoders"][1] = json{{"type", "WordPiece"}}; },
       ErrorCode::unsupported, {"decoders[1]", "WordPiece"}},
      {"pre-tokenizer type", [](json& j) { j["pre_tokenizer"] = json{{"type", "Whitespace"}}; },
       ErrorCode::unsupported, {"Whitespace"}},
      {"normalizer type", [](json& j) { j["normalizer"] = json{{"type", "NFKC"}}; }, ErrorCode::unsupported, {"NFKC"}},
      {"bad regex", [](json& j) { j["pre_tokenizer"] = json{{"type", "Split"}, {"pattern", {{"Regex", "(a"}}}, {"behavior", "Isolated"}}; },
       ErrorCode::invalid_model, {"(a"}},
      {"unk not in vocab", [](json& j) { j["model"]["unk_token"] = "<UNK>"; }, ErrorCode::invalid_model, {"<UNK>"}},
      {"no model", [](json& j) { j.erase("model"); }, ErrorCode::invalid_model, {"model"}},
      {"vocab not object", [](json& j) { j["model"]["vocab"] = json::array(); }, ErrorCode::invalid_model, {"vocab"}},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, ErrorCode::unsupported, {"dropout"}},
  };
  for (const BadCase& c : cases) {
    SCOPED_TRACE(c.name);
    json j = spm_json();
    c.edit(j);
    const Error e = load_error(j);
    EXPECT_EQ(e.code(), c.code) << e.what();
    for (const std::string& needle : c.needles) EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
  }
}

TEST_F(TokenizerTest, MalformedBytesAreRejected) {
  for (const std::string& content : {std::string("{\"model\": {\"type\": \"BPE\", \"vocab\": {\"\xFF\": 0}}}"),
                                     std::string("not json"), std::string(100000, '[')}) {
    try {
      load_tokenizer({write("tokenizer.json", content)});
      ADD_FAILURE() << "accepted " << content.substr(0, 40);
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_model) << e.what();
      EXPECT_NE(std::string(e.what()).find("tokenizer.json"), std::string::npos) << e.what();
    }
  }
  // A file declared larger than the cap is refused before it is read.
  SourceFile big = write("tokenizer.json", spm_json().dump());
  big.size_bytes = 200ull << 20;
  try {
    load_tokenizer({big});
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("limit"), std::string::npos) << e.what();
  }
}

TEST_F(TokenizerTest, CatastrophicRegexEndsFast) {
  json j = byte_level_json();
  j["pre_tokenizer"] = json{{"type", "Sequence"},
                            {"pretokenizers", json::array({json{{"type", "Split"}, {"pattern", {{"Regex", "(a+)+$"}}}, {"behavior", "Isolated"}},
                                                           json{{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
  auto tok = load_json(j);
  const auto start = std::chrono::steady_clock::now();
  try {
    (void)tok->encode(std::string(30, 'a') + "b", false);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
  }
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(2));
}

// ---- GGUF metadata -------------------------------------------------------------------------

// A GGUF v3 file with metadata only.
class GgufWriter {
 public:
  void str(const std::string& key, const std::string& v) { kv(key, 8), string(v), ++n_; }
  void u32(const std::string& key, uint32_t v) { kv(key, 4), raw(&v, 4), ++n_; }
  void boolean(const std::string& key, bool v) {
    kv(key, 7);
    const uint8_t b = v ? 1 : 0;
    raw(&b, 1);
    ++n_;
  }
  void strs(const std::string& key, const std::vector<std::string>& v) {
    kv(key, 9), u32raw(8), u64raw(v.size());
    for (const auto& s : v) string(s);
    ++n_;
  }
  void ints(const std::string& key, const std::vector<int32_t>& v) {
    kv(key, 9), u32raw(5), u64raw(v.size());
    for (const int32_t x : v) raw(&x, 4);
    ++n_;
  }
  void floats(const std::string& key, const std::vector<float>& v) {
    kv(key, 9), u32raw(6), u64raw(v.size());
    for (const float x : v) raw(&x, 4);
    ++n_;
  }
  void save(const fs::path& p) const {
    std::string out;
    auto put = [&](const void* d, size_t n) { out.append(static_cast<const char*>(d), n); };
    const uint32_t magic = 0x46554747, version = 3;
    const uint64_t n_tensors = 0, n_kv = n_;
    put(&magic, 4), put(&version, 4), put(&n_tensors, 8), put(&n_kv, 8);
    out += body_;
    test::write_file(p, out);
  }

 private:
  void raw(const void* d, size_t n) { body_.append(static_cast<const char*>(d), n); }
  void u32raw(uint32_t v) { raw(&v, 4); }
  void u64raw(uint64_t v) { raw(&v, 8); }
  void string(const std::string& s) { u64raw(s.size()), raw(s.data(), s.size()); }
  void kv(const std::string& key, uint32_t type) { string(key), u32raw(type); }
  std::string body_;
  uint64_t n_ = 0;
};

// The byte-level test vocabulary as GGUF "gpt2" metadata.
GgufWriter gpt2_gguf(const std::string& pre) {
  const json j = byte_level_json();
  std::vector<std::string> tokens(266);
  for (const auto& [piece, id] : j["model"]["vocab"].items()) tokens[id.get<size_t>()] = piece;
  tokens[263] = "<|im_start|>", tokens[264] = "<|im_end|>", tokens[265] = "<tool>";
  std::vector<int32_t> types(266, 1);
  types[263] = types[264] = 3;
  types[265] = 4;
  std::vector<std::string> merges;
  for (const auto& m : j["model"]["merges"]) merges.push_back(m);
  GgufWriter w;
  w.str("general.architecture", "llama");
  w.str("tokenizer.ggml.model", "gpt2");
  if (!pre.empty()) w.str("tokenizer.ggml.pre", pre);
  w.strs("tokenizer.ggml.tokens", tokens);
  w.ints("tokenizer.ggml.token_type", types);
  w.strs("tokenizer.ggml.merges", merges);
  w.u32("tokenizer.ggml.bos_token_id", 263);
  w.u32("tokenizer.ggml.eos_token_id", 264);
  w.str("tokenizer.chat_template", "{{ messages }}");
  return w;
}

TEST_F(TokenizerTest, GgufGpt2Vocabulary) {
  GgufWriter w = gpt2_gguf("smollm");
  w.boolean("tokenizer.ggml.add_bos_token", true);
  w.save(dir_ / "m.gguf");
  auto tok = load_tokenizer(GgufFile::open((dir_ / "m.gguf").string()));
  EXPECT_EQ(tok->kind(), "bpe-byte-level");
  EXPECT_EQ(tok->encode("hello world 42", false), (Ids{259, 262, 'l', 'd', ' ', '4', '2'}));
  EXPECT_EQ(tok->encode("<|im_start|>hello<tool>", true), (Ids{263, 259, 265}));
  const Ids plain = tok->encode("<|im_start|>", false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 263), 0);
  EXPECT_EQ(tok->bos_id(), 263);
  EXPECT_TRUE(tok->add_bos());
  EXPECT_TRUE(tok->is_eos(264));
  EXPECT_TRUE(tok->is_control(264));
  EXPECT_EQ(tok->chat_template(), "{{ messages }}");
}

TEST_F(TokenizerTest, GgufErrorsNameTheProblem) {
  auto expect = [&](GgufWriter w, ErrorCode code, const std::string& needle) {
    w.save(dir_ / "bad.gguf");
    try {
      load_tokenizer(GgufFile::open((dir_ / "bad.gguf").string()));
      ADD_FAILURE() << "no error, expected " << needle;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), code) << e.what();
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect(gpt2_gguf("chameleon-9000"), ErrorCode::unsupported, "chameleon-9000");
  {
    GgufWriter w = gpt2_gguf("gpt2");
    w.u32("tokenizer.ggml.unknown_token_id", 5000);
    expect(w, ErrorCode::invalid_model, "tokenizer.ggml.unknown_token_id");
  }
  {
    GgufWriter w;
    w.str("tokenizer.ggml.model", "bert");
    w.strs("tokenizer.ggml.tokens", {"a"});
    expect(w, ErrorCode::unsupported, "bert");
  }
  {
    GgufWriter w;
    w.str("tokenizer.ggml.model", "gpt2");
    w.strs("tokenizer.ggml.tokens", {"a", "b"});
    w.strs("tokenizer.ggml.merges", {"a c"});
    expect(w, ErrorCode::invalid_model, "tokenizer.ggml.merges[0]");
  }
  {
    GgufWriter w;
    w.str("tokenizer.ggml.model", "gpt2");
    w.strs("tokenizer.ggml.tokens", {"a", "b"});
    w.ints("tokenizer.ggml.token_type", {1});
    expect(w, ErrorCode::invalid_model, "token_type");
  }
  {
    GgufWriter w;
    w.str("tokenizer.ggml.model", "gpt2");
    w.strs("tokenizer.ggml.tokens", {"a", "b"});
    w.ints("tokenizer.ggml.token_type", {1, 9});
    expect(w, ErrorCode::invalid_model, "token_type[1]");
  }
}

TEST_F(TokenizerTest, GgufLlamaVocabularyMergesByScore) {
  // pieces: <unk> <s> </s> <0x00>..<0xFF> then ▁ a b ▁a ab ▁ab (ids 259..264).
  std::vector<std::string> tokens = {"<unk>", "<s>", "</s>"};
  std::vector<int32_t> types = {2, 3, 3};
  std::vector<float> scores = {0, 0, 0};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    tokens.push_back(name), types.push_back(6), scores.push_back(0);
  }
  for (const auto& [p, s] : std::vector<std::pair<std::string, float>>{
           {kSp, -1}, {"a", -2}, {"b", -3}, {kSp + "a", -20}, {"ab", -10}, {kSp + "ab", -30}}) {
    tokens.push_back(p), types.push_back(1), scores.push_back(s);
  }
  GgufWriter w;
  w.str("tokenizer.ggml.model", "llama");
  w.strs("tokenizer.ggml.tokens", tokens);
  w.ints("tokenizer.ggml.token_type", types);
  w.floats("tokenizer.ggml.scores", scores);
  w.u32("tokenizer.ggml.bos_token_id", 1);
  w.u32("tokenizer.ggml.eos_token_id", 2);
  w.save(dir_ / "spm.gguf");
  auto tok = load_tokenizer(GgufFile::open((dir_ / "spm.gguf").string()));
  EXPECT_EQ(tok->encode("ab", false), (Ids{264}));
  // "▁abb": "ab" (-10) merges before "▁a" (-20), then "▁" + "ab" -> "▁ab"; "abb" is no piece.
  EXPECT_EQ(tok->encode("abb", false), (Ids{264, 261}));
  EXPECT_EQ(tok->encode("\n", false), (Ids{259, 3 + 10}));
  EXPECT_EQ(tok->encode("<s>a", true), (Ids{1, 262}));
  EXPECT_EQ(tok->decode(Ids{1, 264, 259, 261}), "ab b");
  EXPECT_TRUE(tok->add_bos());
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), (Ids{2}));
}

TEST_F(TokenizerTest, GgufPiecesWithInvalidUtf8AreHandled) {
  // A byte-level vocabulary with a broken piece, and an SPM one with a piece cut mid-character.
  GgufWriter bad;
  bad.str("tokenizer.ggml.model", "gpt2");
  bad.strs("tokenizer.ggml.tokens", {"a", "b", std::string("\xFF\xC3"), "ab"});
  bad.strs("tokenizer.ggml.merges", {"a b"});
  bad.save(dir_ / "bad-utf8.gguf");
  auto tok = load_tokenizer(GgufFile::open((dir_ / "bad-utf8.gguf").string()));
  EXPECT_EQ(tok->encode("ab", false), (Ids{3}));
  EXPECT_EQ(tok->token_bytes(2), std::string("\xFF\xC3"));   // kept as is, never read past
  EXPECT_EQ(tok->decode(Ids{3, 2}), "ab\xEF\xBF\xBD\xEF\xBF\xBD");  // decode() gives valid UTF-8
  TokenStreamDecoder stream(*tok);
  EXPECT_EQ(stream.push(2), "\xEF\xBF\xBD");
  EXPECT_EQ(stream.finish(), "\xEF\xBF\xBD");

  GgufWriter spm_bad;
  spm_bad.str("tokenizer.ggml.model", "llama");
  spm_bad.strs("tokenizer.ggml.tokens", {"<unk>", kSp, "a", std::string("a\xE2\x96"), std::string("\xE2")});
  spm_bad.ints("tokenizer.ggml.token_type", {2, 1, 1, 1, 1});
  spm_bad.floats("tokenizer.ggml.scores", {0, -1, -2, -3, -4});
  spm_bad.save(dir_ / "bad-spm.gguf");
  tok = load_tokenizer(GgufFile::open((dir_ / "bad-spm.gguf").string()));
  EXPECT_EQ(tok->encode("a a", false), (Ids{1, 2, 1, 2}));
  EXPECT_EQ(tok->encode("\xC3\xA9", false), (Ids{1, 0}));  // no byte pieces: <unk>
}

TEST_F(TokenizerTest, TinyGgufTokenizerLoads) {
  test::write_tiny_gguf(dir_ / "tiny.gguf");
  auto tok = load_tokenizer(GgufFile::open((dir_ / "tiny.gguf").string()));
  EXPECT_EQ(tok->vocab_size(), 272);
  EXPECT_EQ(tok->piece(258), "he");
  EXPECT_EQ(tok->encode(" the", false), (Ids{260}));
  EXPECT_EQ(tok->bos_id(), test::kTinyBos);
  EXPECT_TRUE(tok->is_control(static_cast<int32_t>(test::kTinyEos)));
}

// ---- vocab.json + merges.txt -----------------------------------------------------------------

TEST_F(TokenizerTest, VocabAndMergesFiles) {
  const json j = byte_level_json();
  test::write_file(dir_ / "vocab.json", j["model"]["vocab"].dump());
  std::string merges = "#version: 0.2\n";
  for (const auto& m : j["model"]["merges"]) merges += m.get<std::string>() + "\n";
  test::write_file(dir_ / "merges.txt", merges);
  auto tok = load_bpe_tokenizer(dir_ / "vocab.json", dir_ / "merges.txt", "gpt2", {"<|endoftext|>"});
  EXPECT_EQ(tok->vocab_size(), 264);
  EXPECT_EQ(tok->encode("hello world<|endoftext|>", true), (Ids{259, 262, 'l', 'd', 263}));
  EXPECT_TRUE(tok->is_control(263));
  try {
    (void)load_bpe_tokenizer(dir_ / "vocab.json", dir_ / "merges.txt", "klingon");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::unsupported);
    EXPECT_NE(std::string(e.what()).find("klingon"), std::string::npos);
  }
  test::write_file(dir_ / "merges.txt", "h e\nx y\n");
  try {
    (void)load_bpe_tokenizer(dir_ / "vocab.json", dir_ / "merges.txt", "gpt2");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("line 2"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace gptqd::engine
