// SPDX-License-Identifier: Apache-2.0
// Tokenizer parity with references nobody here wrote (tests, label `reference`): llama.cpp's
// vocab test vectors, published Llama 2 / Llama 3 / stories260K facts, and the `tokenizers` and
// `sentencepiece` Python packages on all of wikitext-2 test and a list of nasty strings
// (tests/reference/tokenizer_reference.py computes their side).
#include <gtest/gtest.h>

#include <chrono>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

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

fs::path data(const std::string& rel) { return test::shared_data_dir() / rel; }

// Loads a tokenizer.json or a SentencePiece model (whatever its file name) as an HF folder would.
std::unique_ptr<Tokenizer> load_file(const fs::path& p) {
  const std::string name = p.extension() == ".json" ? "tokenizer.json" : "tokenizer.model";
  return load_tokenizer(std::vector<SourceFile>{SourceFile{name, p, fs::file_size(p)}});
}

// JSON text of a string for messages, whatever bytes it holds.
std::string quoted(const std::string& s, size_t max_bytes = 60) {
  return json(s.substr(0, max_bytes)).dump(-1, ' ', false, json::error_handler_t::replace);
}

// Llama 3's 256 special tokens, ids 128000.. (meta-llama/llama-models models/llama3/tokenizer.py).
std::vector<std::string> llama3_special_tokens() {
  std::vector<std::string> t = {"<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                                "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|step_id|>",
                                "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>",
                                "<|python_tag|>", "<|image|>"};
  for (int i = 2; i <= 245; ++i) t.push_back("<|reserved_special_token_" + std::to_string(i) + "|>");
  return t;
}

std::unique_ptr<Tokenizer> load_llama3() {
  return load_bpe_tokenizer(data("llama3-tokenizer/encoder.json"), data("llama3-tokenizer/vocab.bpe"), "llama3",
                            llama3_special_tokens());
}

// ---- llama.cpp vectors ---------------------------------------------------------------------

struct VocabTest {
  std::vector<std::string> inputs;
  std::vector<Ids> expected;
};

// .inp: inputs each followed by "\n__ggml_vocab_test__\n"; .out: one line of " id id ..." each.
VocabTest read_vocab_test(const fs::path& dir) {
  VocabTest t;
  const std::string inp = test::read_file(dir / "llamacpp-vocab-test.inp");
  const std::string sep = "\n__ggml_vocab_test__\n";
  for (size_t pos = 0; pos < inp.size();) {
    const size_t end = inp.find(sep, pos);
    if (end == std::string::npos) break;
    t.inputs.push_back(inp.substr(pos, end - pos));
    pos = end + sep.size();
  }
  std::istringstream out(test::read_file(dir / "llamacpp-vocab-test.out"));
  for (std::string line; std::getline(out, line);) {
    std::istringstream ids(line);
    Ids v;
    for (int32_t id = 0; ids >> id;) v.push_back(id);
    t.expected.push_back(std::move(v));
  }
  return t;
}

std::string show(const Ids& ids) {
  std::string s = "[";
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? " " : "") + std::to_string(ids[i]);
  return s + "]";
}

void expect_vectors(const Tokenizer& tok, const VocabTest& t) {
  ASSERT_EQ(t.inputs.size(), 46u);
  ASSERT_EQ(t.expected.size(), t.inputs.size());
  for (size_t i = 0; i < t.inputs.size(); ++i) {
    EXPECT_EQ(show(tok.encode(t.inputs[i], false)), show(t.expected[i])) << "input " << i << ": " << quoted(t.inputs[i], 1000);
  }
}

class TokenizerReferenceTest : public ::testing::Test {
 protected:
  // The Llama 2 vocabulary as GGUF "llama" metadata, written by the gguf package.
  fs::path llama2_gguf() {
    const fs::path out = dir_ / "llama2-vocab.gguf";
    const auto r = test::run_command({test::python().string(),
                                      (test::source_dir() / "tests/reference/tokenizer_reference.py").string(),
                                      "spm-gguf", data("llama2-tokenizer/tokenizer.model").string(), out.string()});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return out;
  }
  test::TempDir dir_;
};

TEST_F(TokenizerReferenceTest, Llama2VectorsSentencePieceModel) {
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.model"));
  auto tok = load_file(data("llama2-tokenizer/tokenizer.model"));
  EXPECT_EQ(tok->kind(), "sentencepiece");
  expect_vectors(*tok, read_vocab_test(data("llama2-tokenizer")));
}

TEST_F(TokenizerReferenceTest, Llama2VectorsTokenizerJson) {
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.json"));
  auto tok = load_file(data("llama2-tokenizer/tokenizer.json"));
  EXPECT_EQ(tok->kind(), "bpe");
  expect_vectors(*tok, read_vocab_test(data("llama2-tokenizer")));
}

TEST_F(TokenizerReferenceTest, Llama2VectorsGgufLlamaVocabulary) {
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.model"));
  GPTQD_REQUIRE_FILE(test::python());
  auto tok = load_tokenizer(GgufFile::open(llama2_gguf().string()));
  expect_vectors(*tok, read_vocab_test(data("llama2-tokenizer")));
  // ... and the same ids as libsentencepiece on the same inputs, decoded the same way.
  auto sp = load_file(data("llama2-tokenizer/tokenizer.model"));
  for (const std::string& text : read_vocab_test(data("llama2-tokenizer")).inputs) {
    const Ids ids = sp->encode(text, false);
    EXPECT_EQ(tok->encode(text, false), ids) << quoted(text);
    EXPECT_EQ(tok->decode(ids), sp->decode(ids)) << quoted(text);
  }
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), (Ids{2}));
  EXPECT_TRUE(tok->add_bos());
}

TEST_F(TokenizerReferenceTest, Llama3VectorsByteLevelVocabulary) {
  GPTQD_REQUIRE_FILE(data("llama3-tokenizer/encoder.json"));
  GPTQD_REQUIRE_FILE(data("llama3-tokenizer/vocab.bpe"));
  auto tok = load_llama3();
  EXPECT_EQ(tok->kind(), "bpe-byte-level");
  EXPECT_EQ(tok->vocab_size(), 128256);
  expect_vectors(*tok, read_vocab_test(data("llama3-tokenizer")));
}

// ---- published facts -----------------------------------------------------------------------

TEST_F(TokenizerReferenceTest, Llama2PublishedFacts) {
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.model"));
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.json"));
  GPTQD_REQUIRE_FILE(test::python());
  std::vector<std::unique_ptr<Tokenizer>> toks;
  toks.push_back(load_file(data("llama2-tokenizer/tokenizer.model")));
  toks.push_back(load_file(data("llama2-tokenizer/tokenizer.json")));
  toks.push_back(load_tokenizer(GgufFile::open(llama2_gguf().string())));
  // karpathy/llama2.c test.c and pytorch-labs/tokenizers test_sentencepiece.cpp (with BOS).
  const std::vector<std::pair<std::string, Ids>> facts = {
      {"", {1}},
      {"Hello world!", {1, 15043, 3186, 29991}},
      {"I believe the meaning of life is", {1, 306, 4658, 278, 6593, 310, 2834, 338}},
      {"Simply put, the theory of relativity states that ",
       {1, 3439, 17632, 1925, 29892, 278, 6368, 310, 14215, 537, 5922, 393, 29871}},
      {"A brief message congratulating the team on the launch:\n\n        Hi everyone,\n\n        I just ",
       {1, 319, 11473, 2643, 378, 629, 271, 18099, 278, 3815, 373, 278, 6826, 29901, 13, 13, 4706, 6324, 14332, 29892,
        13, 13, 4706, 306, 925, 29871}},
      {"Translate English to French:\n\n        sea otter => loutre de mer\n        peppermint => menthe poivrée\n"
       "        plush girafe => girafe peluche\n        cheese =>",
       {1, 4103, 9632, 4223, 304, 5176, 29901, 13, 13, 4706, 7205, 4932, 357, 1149, 301, 449, 276, 316, 2778, 13,
        4706, 1236, 407, 837, 524, 1149, 6042, 354, 772, 440, 29878, 1318, 13, 4706, 715, 1878, 330, 3055, 1725, 1149,
        330, 3055, 1725, 4639, 28754, 13, 4706, 923, 968, 1149}},
  };
  for (const auto& tok : toks) {
    SCOPED_TRACE(tok->kind());
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_TRUE(tok->add_bos());
    for (const auto& [text, want] : facts) {
      Ids ids = {tok->bos_id()};
      const Ids body = tok->encode(text, false);
      ids.insert(ids.end(), body.begin(), body.end());
      EXPECT_EQ(ids, want) << text;
      EXPECT_EQ(tok->decode(ids), text);
    }
    // Decoding 15043, 3186, 29991 after their predecessors gives "Hello", " world", "!".
    const Ids ids = {1, 15043, 3186, 29991};
    std::vector<std::string> steps;
    for (size_t n = 2; n <= ids.size(); ++n) {
      steps.push_back(tok->decode(std::span(ids).first(n)).substr(tok->decode(std::span(ids).first(n - 1)).size()));
    }
    EXPECT_EQ(steps, (std::vector<std::string>{"Hello", " world", "!"}));
    EXPECT_EQ(tok->encode("<s>", true), (Ids{1}));
    EXPECT_NE(tok->encode("<s>", false), (Ids{1}));
  }
}

TEST_F(TokenizerReferenceTest, Llama3PublishedFacts) {
  GPTQD_REQUIRE_FILE(data("llama3-tokenizer/encoder.json"));
  auto tok = load_llama3();
  EXPECT_EQ(tok->find_piece("<|begin_of_text|>"), 128000);
  EXPECT_EQ(tok->find_piece("<|end_of_text|>"), 128001);
  EXPECT_EQ(tok->find_piece("<|eot_id|>"), 128009);
  EXPECT_EQ(tok->find_piece("<|reserved_special_token_245|>"), 128255);
  // pytorch-labs/tokenizers test_tiktoken.cpp: "hello world" with BOS.
  EXPECT_EQ(tok->encode("<|begin_of_text|>hello world", true), (Ids{128000, 15339, 1917}));
  EXPECT_EQ(tok->token_bytes(15339), "hello");
  EXPECT_EQ(tok->token_bytes(1917), " world");
  // meta-llama/llama-models test_tokenizer.py.
  EXPECT_EQ(tok->encode("<|begin_of_text|>This is a test sentence.<|end_of_text|>", true),
            (Ids{128000, 2028, 374, 264, 1296, 11914, 13, 128001}));
  EXPECT_EQ(tok->decode(Ids{128000, 2028, 374, 264, 1296, 11914, 13, 128001}), "This is a test sentence.");
  EXPECT_EQ(tok->encode("<|start_header_id|>user<|end_header_id|>\n\nThis is a test sentence.<|eot_id|>", true),
            (Ids{128006, 882, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009}));
  EXPECT_EQ(tok->encode("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nThis is a test sentence."
                        "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nThis is a response.<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n",
                        true),
            (Ids{128000, 128006, 9125, 128007, 271, 2028, 374, 264, 1296, 11914, 13, 128009, 128006, 882, 128007, 271,
                 2028, 374, 264, 2077, 13, 128009, 128006, 78191, 128007, 271}));
  // User text cannot inject control tokens.
  const Ids plain = tok->encode("<|eot_id|>", false);
  EXPECT_EQ(std::count(plain.begin(), plain.end(), 128009), 0);
  EXPECT_EQ(tok->decode(plain), "<|eot_id|>");
}

TEST_F(TokenizerReferenceTest, Stories260KTokenizer) {
  GPTQD_REQUIRE_FILE(data("stories260K/tok512.model"));
  auto tok = load_file(data("stories260K/tok512.model"));
  EXPECT_EQ(tok->vocab_size(), 512);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_ids(), (Ids{2}));
  EXPECT_EQ(tok->encode("Once upon a time", false), (Ids{403, 407, 261, 378}));
  // The greedy ids of stories260K/PROVENANCE.md decode (after BOS) to the published 464 bytes.
  std::istringstream in(
      "403 407 261 378 432 383 286 261 376 298 315 421 395 317 426 338 401 396 267 337 410 408 419 292 411 322 265 282 "
      "295 433 426 385 328 432 358 394 261 370 432 352 266 268 388 426 338 391 266 267 337 335 312 432 398 312 286 267 "
      "414 270 333 415 426 13 438 310 439 419 357 336 432 313 438 310 432 278 316 439 419 298 414 267 265 282 295 433 "
      "426 436 317 286 296 418 269 279 292 416 439 413 409 416 327 263 415 294 267 400 426 338 336 432 313 442 391 267 "
      "337 335 364 420 268 388 432 398 359 280 303 439 413 272 417 264 312 426 436 13 438 310 286 296 418 269 279 292 "
      "416 439 413 409 416 327 263 415 294 267 400 426 338 336 432 313 442 439 423 262 304 420 422 432 317 426 359 279 "
      "292 416 439 413 409 416 327 263 415 294 267 400 426 436 13 438 310 279 292 416 439 413 391 267 281 421 427 311 "
      "357 432 384 358");
  Ids ids = {1};
  for (int32_t id = 0; in >> id;) ids.push_back(id);
  // PROVENANCE.md calls them "the 199 generated ids" but lists 200; all 200 decode to the text.
  ASSERT_EQ(ids.size(), 201u);
  const std::string text =
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park. One day, she saw a "
      "big, red ball. She wanted to play with it, but it was too high.\n"
      "Lily's mom said, \"Lily, let's go to the park.\" Lily was sad and didn't know what to do. She said, \"I want to "
      "play with your ball, but I can't find it.\"\n"
      "Lily was sad and didn't know what to do. She said, \"I'm sorry, Lily. I didn't know what to do.\"\n"
      "Lily didn't want to help her mom, so she";
  ASSERT_EQ(text.size(), 464u);
  EXPECT_EQ(tok->decode(ids), text);
  TokenStreamDecoder stream(*tok);
  std::string streamed;
  for (size_t i = 1; i < ids.size(); ++i) streamed += stream.push(ids[i]);
  streamed += stream.finish();
  EXPECT_EQ(streamed, " " + text);  // the first piece keeps its "▁" when streamed after a prompt
}

// ---- the `tokenizers` / `sentencepiece` packages on wikitext-2 and nasty strings --------------

std::vector<std::string> nasty_strings() {
  std::vector<std::string> s = {
      // emoji: plain, ZWJ sequences, skin tones, flags, keycaps, variation selectors
      "\xF0\x9F\x98\x80", "I \xE2\x9D\xA4\xEF\xB8\x8F tokenizers \xF0\x9F\x98\x8A\xF0\x9F\x98\x8A",
      "\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x92\xBB", "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7\xE2\x80\x8D\xF0\x9F\x91\xA6",
      "\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x91\x8B\xF0\x9F\x8F\xBF", "\xF0\x9F\x8F\xB3\xEF\xB8\x8F\xE2\x80\x8D\xF0\x9F\x8C\x88",
      "\xF0\x9F\x87\xA9\xF0\x9F\x87\xAA\xF0\x9F\x87\xAB\xF0\x9F\x87\xB7", "1\xEF\xB8\x8F\xE2\x83\xA3 #\xEF\xB8\x8F\xE2\x83\xA3",
      // CJK, Korean, Arabic, Hebrew, Thai, Devanagari
      "\xE4\xB8\xAD\xE6\x96\x87\xE5\xAD\x97\xE7\xAC\xA6\xE6\xB5\x8B\xE8\xAF\x95\xEF\xBC\x8C\xE4\xBD\xA0\xE5\xA5\xBD\xE3\x80\x82",
      "\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3\x81\xAE\xE3\x83\x86\xE3\x82\xAD\xE3\x82\xB9\xE3\x83\x88\xE3\x80\x81\xE3\x82\xAB\xE3\x82\xBF\xE3\x82\xAB\xE3\x83\x8A",
      "\xEC\x95\x88\xEB\x85\x95\xED\x95\x98\xEC\x84\xB8\xEC\x9A\x94 \xEC\x84\xB8\xEA\xB3\x84",
      "\xD9\x85\xD8\xB1\xD8\xAD\xD8\xA8\xD8\xA7 \xD8\xA8\xD8\xA7\xD9\x84\xD8\xB9\xD8\xA7\xD9\x84\xD9\x85",
      "\xD7\xA9\xD7\x9C\xD7\x95\xD7\x9D \xD7\xA2\xD7\x95\xD7\x9C\xD7\x9D",
      "\xE0\xB8\xA0\xE0\xB8\xB2\xE0\xB8\xA9\xE0\xB8\xB2\xE0\xB9\x84\xE0\xB8\x97\xE0\xB8\xA2",
      "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5\x87 \xE0\xA4\xA6\xE0\xA5\x81\xE0\xA4\xA8\xE0\xA4\xBF\xE0\xA4\xAF\xE0\xA4\xBE",
      // combining marks and NFC/NFD pairs (é, Å, 가)
      "e\xCC\x81 n\xCC\x83 Z\xCC\xA4\xCD\x94\xCD\xA7\xCC\x91" "a\xCC\x88\xCD\x96", "\xC3\xA9", "e\xCC\x81", "\xC3\x85", "A\xCC\x8A",
      "\xEA\xB0\x80", "\xE1\x84\x80\xE1\x85\xA1", "caf\xC3\xA9 vs cafe\xCC\x81",
      // whitespace runs
      "   ", "\t\t", "\n\n\n", "\r\n", "a\r\nb\r\n", " \t \n \r\n ", "word   word\t\tword", "  leading", "trailing  ",
      "\xC2\xA0", "a\xC2\xA0" "b \xC2\xA0 c", "\xE3\x80\x80wide\xE3\x80\x80", "line\xE2\x80\xA8sep", "mongolian\xE1\xA0\x8Evs",
      "zero\xE2\x80\x8Bwidth", "\xEF\xBB\xBF" "bom", "\x0B\x0C vertical", "nel\xC2\x85next",
      // digits
      "1234567890123", "3.14159 2,718 1e-10", "\xD9\xA1\xD9\xA2\xD9\xA3\xD9\xA4", "\xE2\x85\xAB \xC2\xBD \xC2\xB2",
      "year 2024: 100% of 12345 items cost $1,234.56",
      // special-token text as plain text
      "<s>", "</s>", "<unk>", "<s> hello </s>", "<|endoftext|>", "<|im_start|>user\nhi<|im_end|>", "<|begin_of_text|>",
      "<|eot_id|>", "<0x0A>", "\xE2\x96\x81", "\xE2\x96\x81\xE2\x96\x81x", "<repo_name>",
      // contractions and case
      "I'm you're he'll she'd it's WE'RE THEY'VE I'LL O'Neil 'tis", "'\xC5\xBF", "Don'T",
      // control characters
      std::string("a\0b", 3), "\x01\x02\x7F", "\x1B[31mred\x1B[0m", "\xC2\x80\xC2\x9F",
      // mixed scripts, symbols, code
      "Hello\xE4\xB8\x96\xE7\x95\x8C" "123abc", "na\xC3\xAFve caf\xC3\xA9 r\xC3\xA9sum\xC3\xA9", "\xC7\x85 \xC3\x9F \xE1\xBA\x9E \xC4\xB0stanbul \xC4\xB1",
      "\xE2\x88\x91\xE2\x88\xAB\xE2\x88\x9A\xE2\x88\x9E\xE2\x89\xA0 \xE2\x86\x92\xE2\x87\x92 \xC2\xA9\xC2\xAE\xE2\x84\xA2 \xE2\x82\xAC" "5 \xC2\xA3" "3",
      "\xEF\xBF\xBD", "\xF3\xA0\x80\x81tag", "\xF4\x8F\xBF\xBF", "\xEE\x80\x80private",
      "def f(x):\n    return x**2  # comment\n", "<html><body>&amp;</body></html>", "{\"key\": [1, 2, 3]}",
      "!!!!!!??????......", "''''''```````\"\"\"\"", "---======= ======",
  };
  // a 10,000-character word
  std::string word;
  while (word.size() < 10000) word += "pneumonoultramicroscopicsilicovolcanoconiosis";
  s.push_back(word.substr(0, 10000));
  return s;
}

std::vector<std::string> wiki_lines(const std::string& text) {
  std::vector<std::string> lines;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    lines.push_back(text.substr(pos, end - pos + (end < text.size() ? 1 : 0)));
    pos = end + 1;
  }
  return lines;
}

struct Reference {
  std::vector<Ids> plain, special;
  std::vector<std::string> decoded;
};

Reference python_reference(const test::TempDir& dir, const std::string& kind, const std::vector<fs::path>& paths,
                           const std::vector<std::string>& texts, const std::vector<std::string>& special = {}) {
  json request;
  request["paths"] = json::array();
  for (const auto& p : paths) request["paths"].push_back(p.string());
  request["texts"] = texts;
  request["special_tokens"] = special;
  test::write_file(dir / "request.json", request.dump());
  const auto r = test::run_command({test::python().string(),
                                    (test::source_dir() / "tests/reference/tokenizer_reference.py").string(), "encode",
                                    kind, (dir / "request.json").string(), (dir / "reference.json").string()});
  if (r.exit_code != 0) throw std::runtime_error("tokenizer_reference.py failed: " + r.output);
  const json out = json::parse(test::read_file(dir / "reference.json"));
  return Reference{out["plain"].get<std::vector<Ids>>(), out["special"].get<std::vector<Ids>>(),
                   out["decoded"].get<std::vector<std::string>>()};
}

// The first difference, with some context, instead of two 300,000-id dumps.
std::string first_difference(const Ids& got, const Ids& want) {
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  const size_t from = i < 5 ? 0 : i - 5;
  auto window = [&](const Ids& v) {
    return show(Ids(v.begin() + static_cast<std::ptrdiff_t>(std::min(from, v.size())),
                    v.begin() + static_cast<std::ptrdiff_t>(std::min(i + 10, v.size()))));
  };
  return cat("sizes ", got.size(), " vs ", want.size(), "; first difference at ", i, ": ours ", window(got),
             " reference ", window(want));
}

// Compares our encodes and decodes with the reference on all texts; `what` names the case.
void compare(const Tokenizer& tok, const std::vector<std::string>& texts, const Reference& ref, const std::string& what,
             bool check_special) {
  ASSERT_EQ(ref.plain.size(), texts.size());
  size_t failures = 0;
  for (size_t i = 0; i < texts.size() && failures < 10; ++i) {
    const Ids plain = tok.encode(texts[i], false);
    const std::string label = cat(what, " text ", i, " ", quoted(texts[i]));
    if (plain != ref.plain[i]) {
      ++failures;
      ADD_FAILURE() << label << " (specials as text): " << first_difference(plain, ref.plain[i]);
    }
    if (check_special) {
      const Ids special = tok.encode(texts[i], true);
      if (special != ref.special[i]) {
        ++failures;
        ADD_FAILURE() << label << " (parse_special): " << first_difference(special, ref.special[i]);
      }
    }
    const std::string decoded = tok.decode(ref.plain[i]);
    if (decoded != ref.decoded[i]) {
      ++failures;
      ADD_FAILURE() << label << " decode differs: ours " << quoted(decoded, 80) << " reference "
                    << quoted(ref.decoded[i], 80);
    }
  }
}

class PackageParityTest : public TokenizerReferenceTest {
 protected:
  void SetUp() override {
    wiki_path_ = data("wikitext-2-raw/wiki.test.raw");
    if (fs::exists(wiki_path_)) wiki_ = test::read_file(wiki_path_);
  }
  // Whole file as one string, then line by line, then the nasty strings.
  std::vector<std::string> texts() const {
    std::vector<std::string> t = {wiki_};
    for (auto& line : wiki_lines(wiki_)) t.push_back(std::move(line));
    for (auto& s : nasty_strings()) t.push_back(std::move(s));
    return t;
  }
  // Times one encode of the whole file (it must be well under a few seconds).
  void time_whole_file(const Tokenizer& tok, const std::string& what) {
    const auto start = std::chrono::steady_clock::now();
    const Ids ids = tok.encode(wiki_, false);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::cout << "[ timing   ] " << what << ": wiki.test.raw (" << wiki_.size() << " bytes) -> " << ids.size()
              << " tokens in " << s << " s\n";
    EXPECT_LT(s, 20.0);
  }
  fs::path wiki_path_;
  std::string wiki_;
};

TEST_F(PackageParityTest, Llama2TokenizerJsonMatchesTokenizersPackage) {
  GPTQD_REQUIRE_FILE(wiki_path_);
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.json"));
  GPTQD_REQUIRE_FILE(test::python());
  auto tok = load_file(data("llama2-tokenizer/tokenizer.json"));
  time_whole_file(*tok, "llama2 tokenizer.json");
  const auto t = texts();
  compare(*tok, t, python_reference(dir_, "hf-json", {data("llama2-tokenizer/tokenizer.json")}, t), "llama2-json", true);
}

TEST_F(PackageParityTest, Llama2SentencePieceMatchesSentencePiecePackage) {
  GPTQD_REQUIRE_FILE(wiki_path_);
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.model"));
  GPTQD_REQUIRE_FILE(test::python());
  auto tok = load_file(data("llama2-tokenizer/tokenizer.model"));
  time_whole_file(*tok, "llama2 tokenizer.model (libsentencepiece)");
  const auto t = texts();
  compare(*tok, t, python_reference(dir_, "sentencepiece", {data("llama2-tokenizer/tokenizer.model")}, t),
          "llama2-sentencepiece", false);
  // libsentencepiece knows no special-token parsing; with parse_special it must split "<s>" and
  // "</s>" out the way the tokenizer.json path (checked against `tokenizers` above) does.
  auto json_tok = load_file(data("llama2-tokenizer/tokenizer.json"));
  for (const std::string& text : nasty_strings()) {
    EXPECT_EQ(tok->encode(text, true), json_tok->encode(text, true)) << quoted(text);
  }
}

TEST_F(PackageParityTest, Llama2GgufVocabularyMatchesSentencePiecePackage) {
  GPTQD_REQUIRE_FILE(wiki_path_);
  GPTQD_REQUIRE_FILE(data("llama2-tokenizer/tokenizer.model"));
  GPTQD_REQUIRE_FILE(test::python());
  auto tok = load_tokenizer(GgufFile::open(llama2_gguf().string()));
  time_whole_file(*tok, "llama2 GGUF llama vocabulary");
  const auto t = texts();
  compare(*tok, t, python_reference(dir_, "sentencepiece", {data("llama2-tokenizer/tokenizer.model")}, t),
          "llama2-gguf", false);
}

TEST_F(PackageParityTest, Llama3VocabularyMatchesTokenizersPackage) {
  GPTQD_REQUIRE_FILE(wiki_path_);
  GPTQD_REQUIRE_FILE(data("llama3-tokenizer/encoder.json"));
  GPTQD_REQUIRE_FILE(test::python());
  auto tok = load_llama3();
  time_whole_file(*tok, "llama3 encoder.json + vocab.bpe");
  auto t = texts();
  t.push_back("<|begin_of_text|>hi<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nx<|reserved_special_token_9|>");
  compare(*tok, t,
          python_reference(dir_, "llama3-vocab",
                           {data("llama3-tokenizer/encoder.json"), data("llama3-tokenizer/vocab.bpe")}, t,
                           llama3_special_tokens()),
          "llama3", true);
}

TEST_F(PackageParityTest, SmolLm2GgufVocabularyMatchesTokenizersPackage) {
  GPTQD_REQUIRE_FILE(wiki_path_);
  GPTQD_REQUIRE_FILE(test::test_model_path());
  GPTQD_REQUIRE_FILE(test::python());
  auto tok = load_tokenizer(GgufFile::open(test::test_model_path().string()));
  EXPECT_EQ(tok->kind(), "bpe-byte-level");
  EXPECT_EQ(tok->vocab_size(), 49152);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_TRUE(tok->is_eos(2));
  EXPECT_FALSE(tok->add_bos());
  EXPECT_NE(tok->chat_template().find("<|im_start|>"), std::string::npos);
  time_whole_file(*tok, "SmolLM2 GGUF gpt2/smollm vocabulary");
  const auto t = texts();
  compare(*tok, t, python_reference(dir_, "gguf-gpt2", {test::test_model_path()}, t), "smollm2", true);
}

// Qwen2's tokenizer.json normalizes with NFC before its byte-level BPE: decomposed input must
// give the ids of the composed text, as the `tokenizers` package does.
TEST_F(TokenizerReferenceTest, NfcNormalizerMatchesTokenizersPackage) {
  GPTQD_REQUIRE_FILE(test::python());
  json tj = test::tiny_tokenizer_json(272);
  tj["normalizer"] = {{"type", "NFC"}};
  test::write_file(dir_ / "tokenizer.json", tj.dump());
  auto tok = load_file(dir_ / "tokenizer.json");
  const std::vector<std::string> texts = {
      "cafe\xcc\x81",                          // e + combining acute -> U+00E9
      "A\xcc\x8a ngstro\xcc\x88m",          // A + ring, o + diaeresis
      "\xe1\x84\x92\xe1\x85\xa1\xe1\x86\xab",  // Hangul jamo -> one syllable
      "already composed: caf\xc3\xa9",
      "the he then"};
  compare(*tok, texts, python_reference(dir_, "hf-json", {dir_ / "tokenizer.json"}, texts), "nfc", true);
  EXPECT_EQ(tok->encode("cafe\xcc\x81", false), tok->encode("caf\xc3\xa9", false));
}

}  // namespace
}  // namespace gptqd::engine
