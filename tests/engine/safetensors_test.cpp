// SPDX-License-Identifier: Apache-2.0
// safetensors reader/writer: every bad-input rule of gptq-reference.md B.10 and reliability.md
// A01-A07, sharded sets, and writer round trips (engine tests). Files are built byte by byte here.
#include "engine/safetensors.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "engine/error.h"
#include "kernels/cpu/half.h"
#include "tests/support/test_env.h"

namespace gptqd::engine {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// [u64 header length][header][data]; `n_header` overrides the length field.
std::string st_bytes(const std::string& header, const std::string& data, std::optional<uint64_t> n_header = {}) {
  const uint64_t n = n_header.value_or(header.size());
  std::string out(8, '\0');
  std::memcpy(out.data(), &n, 8);
  return out + header + data;
}

std::vector<std::byte> to_bytes(const std::string& s) {
  std::vector<std::byte> out(s.size());
  if (!s.empty()) std::memcpy(out.data(), s.data(), s.size());
  return out;
}

SafetensorsFile parse(const std::string& bytes) {
  return SafetensorsFile::parse(MappedFile::from_bytes(to_bytes(bytes), "test.safetensors"));
}

// The message of the Error that `f` throws; a failure when it throws nothing or another code.
template <typename F>
std::string error_of(F&& f, ErrorCode code = ErrorCode::invalid_model) {
  try {
    f();
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    return e.what();
  }
  ADD_FAILURE() << "no error";
  return {};
}

std::string parse_error(const std::string& bytes, ErrorCode code = ErrorCode::invalid_model) {
  return error_of([&] { parse(bytes); }, code);
}

// One F32 [2] tensor "a" at [0, 8] plus 8 data bytes.
const std::string kGoodHeader = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
const std::string kGoodData(8, '\x01');

TEST(SafetensorsRead, ParsesAValidFile) {
  std::string header =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[2,3],"data_offsets":[0,12]},)"
      R"("b":{"dtype":"I32","shape":[],"data_offsets":[12,16]}})";
  std::string data(16, '\0');
  for (int i = 0; i < 16; ++i) data[static_cast<size_t>(i)] = static_cast<char>(i);
  SafetensorsFile f = parse(st_bytes(header, data));
  EXPECT_EQ(f.name(), "test.safetensors");
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  const StTensor* w = f.find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, StDtype::F16);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(w->n_elements, 6u);
  EXPECT_EQ(w->bytes.size(), 12u);
  EXPECT_EQ(static_cast<int>(w->bytes[11]), 11);
  const StTensor* b = f.find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(b->shape.empty());  // scalar: one element
  EXPECT_EQ(b->n_elements, 1u);
  EXPECT_EQ(static_cast<int>(b->bytes[0]), 12);
  EXPECT_EQ(f.tensors()[0].name, "w");  // sorted by offset
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(SafetensorsRead, HeaderMayEndWithSpaces) {
  EXPECT_NO_THROW(parse(st_bytes(kGoodHeader + "      ", kGoodData)));
}

TEST(SafetensorsRead, EmptyHeaderObjectWithNoDataIsValid) {
  EXPECT_TRUE(parse(st_bytes("{}", "")).tensors().empty());
}

TEST(SafetensorsRead, TruncatedBelowEightBytes) {
  EXPECT_THAT(parse_error(""), HasSubstr("header too small"));
  EXPECT_THAT(parse_error(std::string("\x10\0\0\0", 4)), HasSubstr("header too small"));
}

TEST(SafetensorsRead, AbsurdHeaderLengths) {
  const std::string file = st_bytes(kGoodHeader, kGoodData);
  for (uint64_t n : {~uint64_t{0}, uint64_t{1} << 63, uint64_t{100'000'001}}) {
    std::string msg = parse_error(st_bytes(kGoodHeader, kGoodData, n));
    EXPECT_THAT(msg, HasSubstr("test.safetensors"));
    EXPECT_THAT(msg, HasSubstr("header too large"));
  }
  EXPECT_THAT(parse_error(st_bytes(kGoodHeader, kGoodData, file.size() + 1000)), HasSubstr("invalid header length"));
  EXPECT_THAT(parse_error(st_bytes(kGoodHeader, kGoodData, file.size())), HasSubstr("invalid header length"));
  EXPECT_THAT(parse_error(st_bytes(kGoodHeader, kGoodData, file.size() - 7)), HasSubstr("invalid header length"));
}

TEST(SafetensorsRead, HeaderMustBeAJsonObject) {
  EXPECT_THAT(parse_error(st_bytes("", "")), HasSubstr("starting with '{'"));
  EXPECT_THAT(parse_error(st_bytes(" " + kGoodHeader, kGoodData)), HasSubstr("starting with '{'"));
  EXPECT_THAT(parse_error(st_bytes("[1,2]", "")), HasSubstr("starting with '{'"));
  EXPECT_THAT(parse_error(st_bytes("{\"a\": ", "")), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error(st_bytes("{}{}", "")), HasSubstr("invalid JSON"));
  EXPECT_THAT(parse_error(st_bytes("{\"\xff\":1}", "")), HasSubstr("invalid JSON"));  // not UTF-8
}

TEST(SafetensorsRead, DuplicateTensorKeyIsNamed) {
  std::string header = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  std::string msg = parse_error(st_bytes(header, std::string(8, 'x')));
  EXPECT_THAT(msg, HasSubstr("duplicate key \"a\""));
  EXPECT_THAT(msg, HasSubstr("test.safetensors"));
}

TEST(SafetensorsRead, MetadataMustMapStringsToStrings) {
  std::string msg = parse_error(st_bytes(R"({"__metadata__":{"format":"pt","n":3}})", ""));
  EXPECT_THAT(msg, HasSubstr("__metadata__ value \"n\" must be a string"));
  EXPECT_THAT(parse_error(st_bytes(R"({"__metadata__":{"x":{"y":"z"}}})", "")), HasSubstr("must be a string"));
  EXPECT_THAT(parse_error(st_bytes(R"({"__metadata__":["pt"]})", "")), HasSubstr("__metadata__ must be an object"));
}

TEST(SafetensorsRead, TrailingBytesAfterTheLastTensorArePolyglot) {
  std::string msg = parse_error(st_bytes(kGoodHeader, kGoodData + std::string("PK\x03\x04zipzipzip", 13)));
  EXPECT_THAT(msg, HasSubstr("13 trailing bytes"));
  EXPECT_THAT(parse_error(st_bytes("{}", "x")), HasSubstr("1 trailing bytes"));
}

TEST(SafetensorsRead, DataOffsetsAbuse) {
  auto with_offsets = [](const std::string& offsets, const std::string& shape = "[2]") {
    return st_bytes(R"({"a":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":)" + offsets + "}}", kGoodData);
  };
  EXPECT_THAT(parse_error(with_offsets("[8,0]")), HasSubstr("begin 8 > end 0"));
  EXPECT_THAT(parse_error(with_offsets("[8,16]")), HasSubstr("past the end of the data"));
  EXPECT_THAT(parse_error(with_offsets("[-8,0]")), HasSubstr("non-negative integers"));
  EXPECT_THAT(parse_error(with_offsets("[0,-8]")), HasSubstr("non-negative integers"));
  EXPECT_THAT(parse_error(with_offsets("[0.0,8.0]")), HasSubstr("non-negative integers"));
  EXPECT_THAT(parse_error(with_offsets("[0,8.5]")), HasSubstr("non-negative integers"));
  EXPECT_THAT(parse_error(with_offsets(R"(["0","8"])")), HasSubstr("non-negative integers"));
  EXPECT_THAT(parse_error(with_offsets("[0]")), HasSubstr("array of two integers"));
  EXPECT_THAT(parse_error(with_offsets("[0,8,8]")), HasSubstr("array of two integers"));
  EXPECT_THAT(parse_error(with_offsets("{\"b\":0}")), HasSubstr("array of two integers"));
  // 2^64 does not fit an integer (a parser turns it into a float); 2^53 + 1 is exact but out of bounds.
  EXPECT_THAT(parse_error(with_offsets("[0,18446744073709551616]")), HasSubstr("non-negative integers"));
  EXPECT_THAT(parse_error(with_offsets("[9007199254740993,9007199254741001]")), HasSubstr("past the end"));
  EXPECT_THAT(parse_error(with_offsets("[18446744073709551608,18446744073709551615]", "[0]")),
              HasSubstr("span"));
}

TEST(SafetensorsRead, OverlapAndGapAreNamed) {
  std::string overlap = R"({"a":{"dtype":"U8","shape":[6],"data_offsets":[0,6]},)"
                        R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  std::string msg = parse_error(st_bytes(overlap, std::string(8, 'x')));
  EXPECT_THAT(msg, HasSubstr("tensor \"b\""));
  EXPECT_THAT(msg, HasSubstr("overlap tensor \"a\""));

  std::string gap = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                    R"("b":{"dtype":"U8","shape":[2],"data_offsets":[6,8]}})";
  msg = parse_error(st_bytes(gap, std::string(8, 'x')));
  EXPECT_THAT(msg, HasSubstr("tensor \"b\""));
  EXPECT_THAT(msg, HasSubstr("gap of 2 bytes"));

  std::string late_start = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  EXPECT_THAT(parse_error(st_bytes(late_start, std::string(8, 'x'))), HasSubstr("gap of 4 bytes"));

  std::string same = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                     R"("b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})";
  EXPECT_THAT(parse_error(st_bytes(same, std::string(8, 'x'))), HasSubstr("overlap"));
}

TEST(SafetensorsRead, OffsetsInAnyOrderAreSorted) {
  std::string header = R"({"z":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                       R"("a":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})";
  SafetensorsFile f = parse(st_bytes(header, "01234567"));
  ASSERT_EQ(f.tensors().size(), 2u);
  EXPECT_EQ(f.tensors()[0].name, "z");
  EXPECT_EQ(static_cast<char>(f.find("a")->bytes[0]), '4');
}

// Policy: zero-size tensors are allowed at tensor boundaries, never inside another tensor.
TEST(SafetensorsRead, ZeroSizeTensorPolicy) {
  std::string boundary = R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},)"
                         R"("e0":{"dtype":"F32","shape":[0,3],"data_offsets":[0,0]},)"
                         R"("e4":{"dtype":"F16","shape":[5,0],"data_offsets":[4,4]},)"
                         R"("b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]},)"
                         R"("e8":{"dtype":"U8","shape":[0],"data_offsets":[8,8]}})";
  SafetensorsFile f = parse(st_bytes(boundary, std::string(8, 'x')));
  ASSERT_EQ(f.tensors().size(), 5u);
  EXPECT_EQ(f.find("e4")->n_elements, 0u);
  EXPECT_TRUE(f.find("e4")->bytes.empty());

  std::string inside = R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},)"
                       R"("e":{"dtype":"U8","shape":[0],"data_offsets":[3,3]}})";
  std::string msg = parse_error(st_bytes(inside, std::string(8, 'x')));
  EXPECT_THAT(msg, HasSubstr("tensor \"e\""));
  EXPECT_THAT(msg, HasSubstr("overlap"));

  std::string zero_with_bytes = R"({"e":{"dtype":"U8","shape":[0],"data_offsets":[0,8]}})";
  EXPECT_THAT(parse_error(st_bytes(zero_with_bytes, std::string(8, 'x'))), HasSubstr("needs 0"));
  // The same file gives the same answer every time.
  EXPECT_EQ(parse_error(st_bytes(inside, std::string(8, 'x'))), msg);
}

TEST(SafetensorsRead, UnknownAndUnsupportedDtypes) {
  auto with_dtype = [](const std::string& dtype) {
    return st_bytes(R"({"a":{"dtype":")" + dtype + R"(","shape":[2],"data_offsets":[0,8]}})", kGoodData);
  };
  std::string msg = parse_error(with_dtype("bf16"));
  EXPECT_THAT(msg, HasSubstr("unknown dtype \"bf16\""));
  EXPECT_THAT(msg, HasSubstr("tensor \"a\""));
  EXPECT_THAT(parse_error(with_dtype("Q4_0")), HasSubstr("unknown dtype"));
  EXPECT_THAT(parse_error(with_dtype("F4"), ErrorCode::unsupported), HasSubstr("dtype F4 is not supported"));
  EXPECT_THAT(parse_error(with_dtype("F8_E8M0"), ErrorCode::unsupported), HasSubstr("not supported"));
  EXPECT_THAT(parse_error(st_bytes(R"({"a":{"dtype":16,"shape":[2],"data_offsets":[0,8]}})", kGoodData)),
              HasSubstr("dtype must be a string"));
}

TEST(SafetensorsRead, DtypeShapeAndSizeMustAgree) {
  std::string msg = parse_error(st_bytes(R"({"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,8]}})", kGoodData));
  EXPECT_THAT(msg, HasSubstr("tensor \"a\""));
  EXPECT_THAT(msg, HasSubstr("span 8 bytes but F32 [2, 2] needs 16"));
  EXPECT_THAT(parse_error(st_bytes(R"({"a":{"dtype":"F16","shape":[2],"data_offsets":[0,8]}})", kGoodData)),
              HasSubstr("needs 4"));
}

TEST(SafetensorsRead, BadShapes) {
  auto with_shape = [](const std::string& shape) {
    return st_bytes(R"({"a":{"dtype":"F32","shape":)" + shape + R"(,"data_offsets":[0,8]}})", kGoodData);
  };
  EXPECT_THAT(parse_error(with_shape("[-2]")), HasSubstr("shape entries must be non-negative integers"));
  EXPECT_THAT(parse_error(with_shape("[2.0]")), HasSubstr("shape entries must be non-negative integers"));
  EXPECT_THAT(parse_error(with_shape(R"(["2"])")), HasSubstr("shape entries must be non-negative integers"));
  EXPECT_THAT(parse_error(with_shape("2")), HasSubstr("shape must be an array"));
  EXPECT_THAT(parse_error(with_shape("[4294967296,4294967296,4294967296]")), HasSubstr("overflows"));
  EXPECT_THAT(parse_error(with_shape("[4611686018427387904]")), HasSubstr("overflows"));  // 2^62 * 4 bytes
  EXPECT_THAT(parse_error(with_shape("[9223372036854775808]")), HasSubstr("too large"));
}

TEST(SafetensorsRead, EntryKeysAreExact) {
  EXPECT_THAT(parse_error(st_bytes(R"({"a":{"dtype":"F32","shape":[2]}})", kGoodData)),
              HasSubstr("missing key \"data_offsets\""));
  EXPECT_THAT(
      parse_error(st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", kGoodData)),
      HasSubstr("unexpected key \"x\""));
  EXPECT_THAT(parse_error(st_bytes(R"({"a":[0,8]})", kGoodData)), HasSubstr("entry must be an object"));
}

TEST(SafetensorsRead, TruncatedDataSuggestsDownloadingAgain) {
  std::string header = R"({"a":{"dtype":"U8","shape":[100],"data_offsets":[0,100]}})";
  for (size_t keep : {size_t{50}, size_t{99}}) {
    std::string msg = parse_error(st_bytes(header, std::string(keep, 'x')));
    EXPECT_THAT(msg, HasSubstr("truncated"));
    EXPECT_THAT(msg, HasSubstr("download it again"));
  }
}

TEST(SafetensorsRead, PickleAndZipGetTheirOwnMessage) {
  const std::string expected = "pickle/zip weights are not supported; convert to safetensors";
  std::string zip = std::string("PK\x03\x04\x14\x00\x00\x00\x08\x00", 10) + std::string(100, 'z');
  std::string msg = parse_error(zip, ErrorCode::unsupported);
  EXPECT_THAT(msg, HasSubstr(expected));
  EXPECT_THAT(msg, HasSubstr("test.safetensors"));
  std::string pickle = std::string("\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 14) + "rest";
  EXPECT_THAT(parse_error(pickle, ErrorCode::unsupported), HasSubstr(expected));
  EXPECT_THAT(parse_error(std::string("\x80\x04", 2), ErrorCode::unsupported), HasSubstr(expected));
  EXPECT_THAT(parse_error(std::string("PK\x03\x04", 4), ErrorCode::unsupported), HasSubstr(expected));
}

TEST(SafetensorsRead, HeaderLengthWithLowByte0x80IsNotMistakenForPickle) {
  std::string header = kGoodHeader;
  header.resize(0x280, ' ');  // length 640: the file starts with 0x80 0x02, like a pickle
  SafetensorsFile f = parse(st_bytes(header, kGoodData));
  EXPECT_NE(f.find("a"), nullptr);
}

TEST(SafetensorsRead, RandomByteMutationsOnlyEverThrowGptqdErrors) {
  const std::string header = R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F16","shape":[2,3],)"
                             R"("data_offsets":[0,12]},"b":{"dtype":"I32","shape":[1],"data_offsets":[12,16]}})";
  const std::string good = st_bytes(header, std::string(16, '\x05'));
  uint32_t state = 12345;
  auto next = [&] { return state = state * 1664525u + 1013904223u; };
  size_t n_ok = 0, n_rejected = 0;
  for (int iter = 0; iter < 5000; ++iter) {
    std::string bytes = good;
    const int n_flips = 1 + static_cast<int>(next() % 4);
    for (int i = 0; i < n_flips; ++i) {
      const size_t pos = next() % bytes.size();
      bytes[pos] = static_cast<char>(next() % 3 == 0 ? "{}[]\",:0123456789-.e\" "[next() % 22] : next());
    }
    if (next() % 8 == 0) bytes.resize(next() % bytes.size());
    try {
      parse(bytes);
      ++n_ok;
    } catch (const Error&) {
      ++n_rejected;
    }
  }
  EXPECT_EQ(n_ok + n_rejected, 5000u);
  EXPECT_GT(n_rejected, 4000u);
}

// ---- writer ----------------------------------------------------------------------------------

std::vector<std::byte> pattern_bytes(size_t n, int seed) {
  std::vector<std::byte> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = static_cast<std::byte>((i * 31 + static_cast<size_t>(seed)) & 0xff);
  return out;
}

TEST(SafetensorsWrite, RoundTripWithAlignmentAndPadding) {
  test::TempDir dir;
  const fs::path path = dir / "model.safetensors";
  auto u8 = pattern_bytes(3, 1), f16 = pattern_bytes(2 * 5, 2), f32 = pattern_bytes(4 * 3, 3),
       i64 = pattern_bytes(8 * 2, 4), bf16 = pattern_bytes(2 * 7, 5), i32 = pattern_bytes(4 * 6, 6);
  std::vector<StWriteTensor> tensors = {
      {"u8", StDtype::U8, {3}, u8},          {"b.f16", StDtype::F16, {5}, f16},
      {"a.f32", StDtype::F32, {3}, f32},      {"i64", StDtype::I64, {2, 1}, i64},
      {"a.bf16", StDtype::BF16, {7}, bf16},   {"q.i32", StDtype::I32, {2, 3}, i32},
      {"empty", StDtype::F32, {0, 4}, {}},
  };
  write_safetensors(path, tensors, {{"format", "pt"}});
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.partial"));

  const std::string raw = test::read_file(path);
  uint64_t n_header = 0;
  std::memcpy(&n_header, raw.data(), 8);
  EXPECT_EQ(n_header % 8, 0u);
  const std::string header = raw.substr(8, n_header);
  EXPECT_EQ(header.front(), '{');
  const size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - 1 - last, 8u);

  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.metadata().at("format"), "pt");
  std::vector<std::string> order;
  for (const StTensor& t : f.tensors()) {
    order.push_back(t.name);
    EXPECT_EQ(t.data_begin % st_dtype_size(t.dtype), 0u) << t.name;
    EXPECT_EQ(reinterpret_cast<uintptr_t>(t.bytes.data()) % st_dtype_size(t.dtype), 0u) << t.name;
  }
  // Descending alignment, then name; the zero-size F32 sorts among the 4-byte tensors.
  EXPECT_EQ(order, (std::vector<std::string>{"i64", "a.f32", "empty", "q.i32", "a.bf16", "b.f16", "u8"}));
  for (const StWriteTensor& t : tensors) {
    const StTensor* r = f.find(t.name);
    ASSERT_NE(r, nullptr) << t.name;
    EXPECT_EQ(r->dtype, t.dtype);
    EXPECT_EQ(r->shape, t.shape);
    ASSERT_EQ(r->bytes.size(), t.data.size());
    EXPECT_TRUE(std::equal(r->bytes.begin(), r->bytes.end(), t.data.begin())) << t.name;
  }
}

TEST(SafetensorsWrite, MetadataOnlyWhenNonEmptyAndOverwritesAtomically) {
  test::TempDir dir;
  const fs::path path = dir / "x.safetensors";
  test::write_file(path, "old contents");
  auto data = pattern_bytes(4, 9);
  std::vector<StWriteTensor> tensors = {{"t", StDtype::U8, {4}, data}};
  write_safetensors(path, tensors);
  const std::string raw = test::read_file(path);
  EXPECT_EQ(raw.find("__metadata__"), std::string::npos);
  EXPECT_TRUE(SafetensorsFile::open(path).metadata().empty());
  EXPECT_EQ(SafetensorsFile::open(path).tensors().size(), 1u);
}

TEST(SafetensorsWrite, RejectsBadInput) {
  test::TempDir dir;
  auto data = pattern_bytes(8, 1);
  std::vector<StWriteTensor> wrong_size = {{"t", StDtype::F32, {3}, data}};
  EXPECT_THAT(error_of([&] { write_safetensors(dir / "a.safetensors", wrong_size); }, ErrorCode::invalid_argument),
              HasSubstr("needs 12 bytes, got 8"));
  std::vector<StWriteTensor> dup = {{"t", StDtype::U8, {8}, data}, {"t", StDtype::U8, {8}, data}};
  EXPECT_THAT(error_of([&] { write_safetensors(dir / "a.safetensors", dup); }, ErrorCode::invalid_argument),
              HasSubstr("duplicate tensor name \"t\""));
  std::vector<StWriteTensor> negative = {{"t", StDtype::U8, {-8}, data}};
  EXPECT_THAT(error_of([&] { write_safetensors(dir / "a.safetensors", negative); }, ErrorCode::invalid_argument),
              HasSubstr("invalid shape"));
  std::vector<StWriteTensor> reserved = {{"__metadata__", StDtype::U8, {8}, data}};
  error_of([&] { write_safetensors(dir / "a.safetensors", reserved); }, ErrorCode::invalid_argument);
  EXPECT_FALSE(fs::exists(dir / "a.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "a.safetensors.partial"));

  std::vector<StWriteTensor> good = {{"t", StDtype::U8, {8}, data}};
  EXPECT_THAT(error_of([&] { write_safetensors(dir / "no-such-dir" / "a.safetensors", good); }, ErrorCode::io),
              HasSubstr("no-such-dir"));
}

TEST(SafetensorsWrite, RenameFailureRemovesThePartialFile) {
  test::TempDir dir;
  fs::create_directory(dir / "taken.safetensors");  // a non-empty directory cannot be renamed over
  test::write_file(dir / "taken.safetensors" / "keep", "x");
  auto data = pattern_bytes(8, 1);
  std::vector<StWriteTensor> good = {{"t", StDtype::U8, {8}, data}};
  error_of([&] { write_safetensors(dir / "taken.safetensors", good); }, ErrorCode::io);
  EXPECT_FALSE(fs::exists(dir / "taken.safetensors.partial"));
}

TEST(SafetensorsConvert, ToF32FromEveryFloatDtypeWithoutAlignment) {
  test::TempDir dir;
  const std::vector<float> values = {1.0f, -2.5f, 0.0f, 65504.0f, 3.140625f};
  std::vector<uint16_t> f16, bf16;
  for (float v : values) {
    f16.push_back(kernels::cpu::f32_to_f16(v));
    bf16.push_back(kernels::cpu::f32_to_bf16(v));
  }
  // A 1-byte tensor first puts the F16 data at an odd offset (another writer's layout).
  std::string header = R"({"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("h":{"dtype":"F16","shape":[5],"data_offsets":[1,11]},)"
                       R"("b":{"dtype":"BF16","shape":[5],"data_offsets":[11,21]},)"
                       R"("f":{"dtype":"F32","shape":[5],"data_offsets":[21,41]},)"
                       R"("i":{"dtype":"I32","shape":[1],"data_offsets":[41,45]}})";
  std::string data(45, '\0');
  std::memcpy(data.data() + 1, f16.data(), 10);
  std::memcpy(data.data() + 11, bf16.data(), 10);
  std::memcpy(data.data() + 21, values.data(), 20);
  SafetensorsFile f = parse(st_bytes(header, data));
  EXPECT_EQ(st_to_f32(*f.find("h")), values);
  EXPECT_EQ(st_to_f32(*f.find("f")), values);
  auto b = st_to_f32(*f.find("b"));
  ASSERT_EQ(b.size(), values.size());
  for (size_t i = 0; i < b.size(); ++i) EXPECT_NEAR(b[i], values[i], std::abs(values[i]) / 128.0f);
  EXPECT_THAT(error_of([&] { st_to_f32(*f.find("i")); }, ErrorCode::unsupported), HasSubstr("I32"));
}

TEST(SafetensorsDtype, NamesSizesAndParsing) {
  EXPECT_EQ(to_string(StDtype::BF16), "BF16");
  EXPECT_EQ(parse_st_dtype("F8_E4M3"), StDtype::F8_E4M3);
  EXPECT_EQ(parse_st_dtype("f16"), std::nullopt);
  EXPECT_EQ(parse_st_dtype("F4"), std::nullopt);
  EXPECT_EQ(st_dtype_size(StDtype::BOOL), 1u);
  EXPECT_EQ(st_dtype_size(StDtype::F16), 2u);
  EXPECT_EQ(st_dtype_size(StDtype::U32), 4u);
  EXPECT_EQ(st_dtype_size(StDtype::U64), 8u);
  for (StDtype d : {StDtype::BOOL, StDtype::U8, StDtype::I8, StDtype::F8_E5M2, StDtype::F8_E4M3, StDtype::I16,
                    StDtype::U16, StDtype::F16, StDtype::BF16, StDtype::I32, StDtype::U32, StDtype::F32,
                    StDtype::F64, StDtype::I64, StDtype::U64}) {
    EXPECT_EQ(parse_st_dtype(to_string(d)), d);
  }
}

// ---- sharded sets ----------------------------------------------------------------------------

void write_shard(const fs::path& path, const std::vector<std::string>& names) {
  std::vector<std::vector<std::byte>> data;
  std::vector<StWriteTensor> tensors;
  for (const std::string& n : names) data.push_back(pattern_bytes(4, static_cast<int>(n.size())));
  for (size_t i = 0; i < names.size(); ++i) tensors.push_back({names[i], StDtype::F16, {2}, data[i]});
  write_safetensors(path, tensors, {{"format", "pt"}});
}

void write_index(const fs::path& dir, const std::string& weight_map) {
  test::write_file(dir / "model.safetensors.index.json",
                   R"({"metadata": {"total_size": 16}, "weight_map": )" + weight_map + "}");
}

std::string set_error(const fs::path& dir) {
  return error_of([&] { SafetensorsSet::open_dir(dir); });
}

TEST(SafetensorsSetTest, ShardedWithIndex) {
  test::TempDir dir;
  write_shard(dir / "model-00001-of-00002.safetensors", {"model.embed_tokens.weight", "model.norm.weight"});
  write_shard(dir / "model-00002-of-00002.safetensors", {"lm_head.weight", "model.layers.0.q.weight"});
  // A stray file that the index does not reference is never opened.
  test::write_file(dir / "consolidated.safetensors", "not even safetensors");
  test::write_file(dir / "config.json", "{}");
  write_index(dir.path(), R"({"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                       "model.norm.weight": "model-00001-of-00002.safetensors",
                       "lm_head.weight": "model-00002-of-00002.safetensors",
                       "model.layers.0.q.weight": "model-00002-of-00002.safetensors"})");
  SafetensorsSet set = SafetensorsSet::open_dir(dir.path());
  EXPECT_EQ(set.files().size(), 2u);
  std::vector<std::string> names;
  for (const StTensor* t : set.all()) names.push_back(t->name);
  EXPECT_EQ(names, (std::vector<std::string>{"lm_head.weight", "model.embed_tokens.weight",
                                             "model.layers.0.q.weight", "model.norm.weight"}));
  const int64_t shape[] = {2};
  EXPECT_EQ(set.get("model.norm.weight", StDtype::F16, shape).bytes.size(), 4u);
  EXPECT_EQ(set.find("nope"), nullptr);
}

TEST(SafetensorsSetTest, OpenDirFollowsSymlinksLikeTheHfCache) {
  test::TempDir dir;
  fs::create_directories(dir / "blobs");
  fs::create_directories(dir / "snapshots" / "abc");
  write_shard(dir / "blobs" / "0123abcd", {"w"});
  fs::create_symlink("../../blobs/0123abcd", dir / "snapshots" / "abc" / "model.safetensors");
  fs::create_symlink("../../blobs/missing", dir / "snapshots" / "abc" / "broken.safetensors");
  fs::create_directory(dir / "snapshots" / "abc" / "sub.safetensors");
  SafetensorsSet set = SafetensorsSet::open_dir(dir / "snapshots" / "abc");
  ASSERT_EQ(set.files().size(), 1u);
  EXPECT_NE(set.find("w"), nullptr);
}

TEST(SafetensorsSetTest, WithoutIndexEveryShardIsReadAndNamesMustBeUnique) {
  test::TempDir dir;
  write_shard(dir / "a.safetensors", {"x", "y"});
  write_shard(dir / "b.safetensors", {"z"});
  EXPECT_EQ(SafetensorsSet::open_dir(dir.path()).all().size(), 3u);
  write_shard(dir / "c.safetensors", {"y"});
  std::string msg = set_error(dir.path());
  EXPECT_THAT(msg, HasSubstr("tensor \"y\" is in two files"));
  EXPECT_THAT(msg, HasSubstr("a.safetensors"));
  EXPECT_THAT(msg, HasSubstr("c.safetensors"));
}

TEST(SafetensorsSetTest, EmptyFolderOrMissingFolder) {
  test::TempDir dir;
  test::write_file(dir / "config.json", "{}");
  EXPECT_THAT(set_error(dir.path()), HasSubstr("no *.safetensors"));
  EXPECT_THAT(error_of([&] { SafetensorsSet::open_dir(dir / "nope"); }, ErrorCode::not_found), HasSubstr("nope"));
}

TEST(SafetensorsSetTest, IndexPathsMustBePlainFileNames) {
  test::TempDir dir;
  fs::create_directories(dir / "snap");
  write_shard(dir / "outside.safetensors", {"w"});
  write_shard(dir / "snap" / "model.safetensors", {"w"});
  for (const std::string& shard : std::vector<std::string>{"../outside.safetensors", "../../x.safetensors",
                                                           (dir / "outside.safetensors").string(),
                                                           "sub/model.safetensors", ".."}) {
    write_index(dir / "snap", R"({"w": ")" + shard + R"("})");
    std::string msg = set_error(dir / "snap");
    EXPECT_THAT(msg, HasSubstr("not a plain file name")) << shard;
    EXPECT_THAT(msg, HasSubstr(shard));
  }
}

TEST(SafetensorsSetTest, IndexNamesAMissingShard) {
  test::TempDir dir;
  write_shard(dir / "model-00001-of-00002.safetensors", {"a"});
  write_index(dir.path(), R"({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})");
  std::string msg = set_error(dir.path());
  EXPECT_THAT(msg, HasSubstr("model-00002-of-00002.safetensors"));
  EXPECT_THAT(msg, HasSubstr("not in the model folder"));
}

TEST(SafetensorsSetTest, TensorInTwoShards) {
  test::TempDir dir;
  write_shard(dir / "s1.safetensors", {"a"});
  write_shard(dir / "s2.safetensors", {"a", "b"});
  write_index(dir.path(), R"({"a": "s1.safetensors", "b": "s2.safetensors"})");
  std::string msg = set_error(dir.path());
  EXPECT_THAT(msg, HasSubstr("tensor \"a\" is in two files"));
}

TEST(SafetensorsSetTest, TensorMissingFromTheIndex) {
  test::TempDir dir;
  write_shard(dir / "s1.safetensors", {"a", "extra"});
  write_index(dir.path(), R"({"a": "s1.safetensors"})");
  std::string msg = set_error(dir.path());
  EXPECT_THAT(msg, HasSubstr("tensor \"extra\""));
  EXPECT_THAT(msg, HasSubstr("not listed in model.safetensors.index.json"));
}

TEST(SafetensorsSetTest, IndexedTensorMissingFromItsShard) {
  test::TempDir dir;
  write_shard(dir / "s1.safetensors", {"a"});
  write_shard(dir / "s2.safetensors", {"b"});
  write_index(dir.path(), R"({"a": "s1.safetensors", "b": "s1.safetensors"})");
  EXPECT_THAT(set_error(dir.path()), HasSubstr("tensor \"b\" is mapped to s1.safetensors but that shard does not"));
}

TEST(SafetensorsSetTest, MalformedIndex) {
  test::TempDir dir;
  write_shard(dir / "s1.safetensors", {"a"});
  test::write_file(dir / "model.safetensors.index.json", R"({"metadata": {}})");
  EXPECT_THAT(set_error(dir.path()), HasSubstr("weight_map"));
  write_index(dir.path(), R"({"a": 1})");
  EXPECT_THAT(set_error(dir.path()), HasSubstr("must be a file name"));
  test::write_file(dir / "model.safetensors.index.json",
                   R"({"weight_map": {"a": "s1.safetensors", "a": "s1.safetensors"}})");
  EXPECT_THAT(set_error(dir.path()), HasSubstr("duplicate key \"a\""));
  test::write_file(dir / "model.safetensors.index.json", "[]");
  EXPECT_THAT(set_error(dir.path()), HasSubstr("must be a JSON object"));
}

TEST(SafetensorsSetTest, OpenTakesALogicalFileMap) {
  test::TempDir dir;
  write_shard(dir / "blob1", {"a"});
  write_shard(dir / "blob2", {"b"});
  test::write_file(dir / "index-blob", R"({"weight_map": {"a": "m-1.safetensors", "b": "m-2.safetensors"}})");
  FileMap files = {{"m-1.safetensors", dir / "blob1"},
                   {"m-2.safetensors", dir / "blob2"},
                   {"model.safetensors.index.json", dir / "index-blob"}};
  SafetensorsSet set = SafetensorsSet::open(files);
  EXPECT_NE(set.find("a"), nullptr);
  EXPECT_NE(set.find("b"), nullptr);
}

TEST(SafetensorsSetTest, GetNamesExpectedAndActual) {
  test::TempDir dir;
  std::vector<std::byte> data(576 * 192 * 2);
  std::vector<StWriteTensor> tensors = {
      {"model.layers.0.self_attn.q_proj.weight", StDtype::F16, {576, 192}, data}};
  write_safetensors(dir / "model.safetensors", tensors);
  SafetensorsSet set = SafetensorsSet::open_dir(dir.path());
  const int64_t want[] = {576, 576};
  std::string msg = error_of([&] { set.get("model.layers.0.self_attn.q_proj.weight", StDtype::F16, want); });
  EXPECT_THAT(msg, HasSubstr("tensor model.layers.0.self_attn.q_proj.weight: expected F16 [576, 576], found F16 "
                             "[576, 192]"));
  const int64_t right[] = {576, 192};
  msg = error_of([&] { set.get("model.layers.0.self_attn.q_proj.weight", StDtype::BF16, right); });
  EXPECT_THAT(msg, HasSubstr("expected BF16 [576, 192], found F16 [576, 192]"));
  msg = error_of([&] { set.get("model.norm.weight", StDtype::F16, std::span<const int64_t>(right, 1)); });
  EXPECT_THAT(msg, HasSubstr("tensor model.norm.weight: missing (expected F16 [576])"));
  EXPECT_NO_THROW(set.get("model.layers.0.self_attn.q_proj.weight", StDtype::F16, right));
}

}  // namespace
}  // namespace gptqd::engine
