// SPDX-License-Identifier: Apache-2.0
// parse_json_strict: duplicate keys, depth bombs, bad UTF-8 and surrogates are refused (engine tests).
#include "engine/json_strict.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <string>

#include "engine/error.h"

namespace gptqd::engine {
namespace {

using ::testing::HasSubstr;

std::string parse_error(std::string_view text, int max_depth = 64) {
  try {
    parse_json_strict(text, "test.json", max_depth);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    return e.what();
  }
  ADD_FAILURE() << "accepted: " << text.substr(0, 80);
  return {};
}

TEST(JsonStrict, ParsesAGoodDocument) {
  auto j = parse_json_strict(R"({"a": [1, 2.5, "x", null, true], "b": {"c": {}}, "é": "\u00e9\ud83d\ude00"})",
                             "test.json");
  EXPECT_EQ(j["a"][0], 1);
  EXPECT_EQ(j["a"][1], 2.5);
  EXPECT_EQ(j["a"][2], "x");
  EXPECT_TRUE(j["a"][3].is_null());
  EXPECT_TRUE(j["b"]["c"].is_object());
  EXPECT_EQ(j["é"], "é\xF0\x9F\x98\x80");
}

TEST(JsonStrict, SameKeyInSiblingObjectsIsFine) {
  auto j = parse_json_strict(R"([{"k": 1}, {"k": 2}, {"x": {"k": 3}, "k": 4}])", "test.json");
  EXPECT_EQ(j[2]["k"], 4);
}

TEST(JsonStrict, DuplicateTopLevelKeyIsNamed) {
  std::string msg = parse_error(R"({"a": 1, "b": 2, "a": 3})");
  EXPECT_THAT(msg, HasSubstr("test.json"));
  EXPECT_THAT(msg, HasSubstr("duplicate key \"a\""));
}

TEST(JsonStrict, DuplicateKeyAtDepthIsNamedWithItsPath) {
  std::string msg = parse_error(R"({"x": [0, {"y": {"w": 1, "w": 2}}]})");
  EXPECT_THAT(msg, HasSubstr("duplicate key \"w\""));
  EXPECT_THAT(msg, HasSubstr("/x/1/y/w"));
}

TEST(JsonStrict, DepthBombIsRefusedQuickly) {
  const auto start = std::chrono::steady_clock::now();
  std::string msg = parse_error(std::string(100000, '['));
  const auto elapsed = std::chrono::steady_clock::now() - start;
  EXPECT_THAT(msg, HasSubstr("nesting deeper than 64"));
  EXPECT_LT(elapsed, std::chrono::milliseconds(500));

  std::string objects;
  for (int i = 0; i < 100000; ++i) objects += "{\"a\":";
  EXPECT_THAT(parse_error(objects), HasSubstr("nesting deeper"));
}

TEST(JsonStrict, DepthLimitIsExact) {
  EXPECT_NO_THROW(parse_json_strict("[[[1]]]", "test.json", 3));
  EXPECT_THAT(parse_error("[[[[1]]]]", 3), HasSubstr("nesting deeper than 3"));
}

TEST(JsonStrict, InvalidUtf8IsRefused) {
  EXPECT_THAT(parse_error("{\"a\": \"\xff\"}"), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error("{\"a\": \"\xC0\x80\"}"), HasSubstr("invalid JSON"));      // overlong NUL
  EXPECT_THAT(parse_error("{\"a\": \"\xED\xA0\x80\"}"), HasSubstr("invalid JSON"));  // UTF-8 surrogate
  EXPECT_THAT(parse_error("{\"a\": \"\xE2\x82\"}"), HasSubstr("invalid JSON"));      // truncated sequence
  EXPECT_THAT(parse_error("{\"\xfe\": 1}"), HasSubstr("invalid JSON"));
}

TEST(JsonStrict, LoneSurrogateEscapesAreRefused) {
  EXPECT_THAT(parse_error(R"({"a": "\ud800"})"), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error(R"({"a": "\udc00"})"), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error(R"({"a": "\ud800\u0041"})"), HasSubstr("invalid JSON"));
}

TEST(JsonStrict, SyntaxErrorsAndTrailingGarbageAreRefused) {
  EXPECT_THAT(parse_error(""), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error("{\"a\": 1,}"), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error("{\"a\": 1} x"), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error("{\"a\": 1} /* c */"), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error("{\"a\": NaN}"), HasSubstr("invalid JSON"));
}

// Found by fuzz_json_body: nlohmann's out_of_range escaped instead of Error(invalid_argument).
TEST(JsonStrict, NumberOverflowIsRefusedWithItsPath) {
  EXPECT_THAT(parse_error(R"({"options":{"temperature":1e999}})"),
              HasSubstr("number 1e999 at /options/temperature is out of range"));
  EXPECT_THAT(parse_error("[1, -2e400]"), HasSubstr("number -2e400 at /1 is out of range"));
  EXPECT_THAT(parse_error("1e999"), HasSubstr("at / is out of range"));
}

TEST(JsonStrict, TypeNames) {
  EXPECT_STREQ(json_type_name(nlohmann::json(1)), "integer");
  EXPECT_STREQ(json_type_name(nlohmann::json(-1)), "integer");
  EXPECT_STREQ(json_type_name(nlohmann::json(1.5)), "number");
  EXPECT_STREQ(json_type_name(nlohmann::json("s")), "string");
  EXPECT_STREQ(json_type_name(nlohmann::json::array()), "array");
  EXPECT_STREQ(json_type_name(nlohmann::json::object()), "object");
  EXPECT_STREQ(json_type_name(nlohmann::json(nullptr)), "null");
  EXPECT_STREQ(json_type_name(nlohmann::json(true)), "boolean");
}

}  // namespace
}  // namespace gptqd::engine
