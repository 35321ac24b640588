// SPDX-License-Identifier: Apache-2.0
// GgufFile and ModelConfig::from_gguf on GGUF files forged byte by byte: a valid file, each broken
// rule with the message it must give, and the real SmolLM2 GGUF (tests).
#include "engine/gguf.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "engine/error.h"
#include "engine/model_config.h"
#include "tests/support/test_env.h"

namespace gptqd::engine {
namespace {

namespace kcpu = kernels::cpu;
using VT = GgufValueType;

// Little-endian byte writer.
struct Bytes {
  std::vector<std::byte> b;

  template <typename T>
  Bytes& put(T v) {
    const auto* p = reinterpret_cast<const std::byte*>(&v);
    b.insert(b.end(), p, p + sizeof(T));
    return *this;
  }
  Bytes& u8(uint8_t v) { return put(v); }
  Bytes& u32(uint32_t v) { return put(v); }
  Bytes& u64(uint64_t v) { return put(v); }
  Bytes& type(VT t) { return u32(static_cast<uint32_t>(t)); }
  Bytes& raw(std::string_view s) {
    for (char c : s) b.push_back(static_cast<std::byte>(c));
    return *this;
  }
  Bytes& str(std::string_view s) { return u64(s.size()).raw(s); }
  Bytes& pad_to(uint64_t alignment) {
    while (b.size() % alignment != 0) b.push_back(std::byte{0});
    return *this;
  }
};

// One metadata entry: the key, then whatever `write` emits (value type + value).
struct Kv {
  std::string key;
  std::function<void(Bytes&)> write;
};

template <typename T>
Kv scalar(std::string key, VT t, T v) {
  return {std::move(key), [t, v](Bytes& o) { o.type(t).put(v); }};
}
Kv string_kv(std::string key, std::string v) {
  return {std::move(key), [v](Bytes& o) { o.type(VT::string).str(v); }};
}
template <typename T>
Kv array_kv(std::string key, VT elem, std::vector<T> items) {
  return {std::move(key), [elem, items](Bytes& o) {
            o.type(VT::array).type(elem).u64(items.size());
            for (const T& x : items) o.put(x);
          }};
}
Kv string_array_kv(std::string key, std::vector<std::string> items) {
  return {std::move(key), [items](Bytes& o) {
            o.type(VT::array).type(VT::string).u64(items.size());
            for (const auto& s : items) o.str(s);
          }};
}

struct TensorSpec {
  TensorSpec(std::string name_, std::vector<uint64_t> ne_, uint32_t type_, std::optional<uint64_t> offset_ = {})
      : name(std::move(name_)), ne(std::move(ne_)), type(type_), offset(offset_) {}
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = 0;
  std::optional<uint64_t> offset;  // relative to the data section; default: packed, aligned
  std::optional<uint32_t> n_dims;  // default ne.size()
};

// A GGUF file assembled from parts; each field can be bent to break one rule.
struct Forge {
  uint32_t magic = 0x46554747;
  uint32_t version = 3;
  std::optional<uint64_t> n_tensors, n_kv;
  std::vector<Kv> kvs;
  std::vector<TensorSpec> tensors;
  uint64_t alignment = 32;
  int64_t truncate_data_by = 0;

  Bytes build() const {
    Bytes o;
    o.u32(magic).u32(version).u64(n_tensors.value_or(tensors.size())).u64(n_kv.value_or(kvs.size()));
    for (const Kv& kv : kvs) {
      o.str(kv.key);
      kv.write(o);
    }
    uint64_t next = 0, data_bytes = 0;
    for (const TensorSpec& t : tensors) {
      o.str(t.name).u32(t.n_dims.value_or(static_cast<uint32_t>(t.ne.size())));
      for (uint64_t d : t.ne) o.u64(d);
      o.u32(t.type);
      const uint64_t off = t.offset.value_or(next);
      o.u64(off);
      const uint64_t n = byte_size(t);
      data_bytes = std::max(data_bytes, off + n);
      next = (off + n + alignment - 1) / alignment * alignment;
    }
    o.pad_to(alignment);
    const int64_t n_data = std::max<int64_t>(0, static_cast<int64_t>(data_bytes) - truncate_data_by);
    for (int64_t i = 0; i < n_data; ++i) o.u8(static_cast<uint8_t>(i * 7 + 1));
    return o;
  }

  static uint64_t byte_size(const TensorSpec& t) {
    const kcpu::GgmlTypeTraits* tr = kcpu::ggml_type_traits(t.type);
    if (tr == nullptr || t.ne.empty()) return 0;
    uint64_t n = 1;
    for (uint64_t d : t.ne) {
      if (__builtin_mul_overflow(n, d, &n)) return 0;
    }
    return n / tr->block_elems * tr->block_bytes;
  }
};

constexpr uint32_t F32 = static_cast<uint32_t>(kcpu::GgmlType::F32);
constexpr uint32_t Q8_0 = static_cast<uint32_t>(kcpu::GgmlType::Q8_0);
constexpr uint32_t Q4_0 = static_cast<uint32_t>(kcpu::GgmlType::Q4_0);

GgufFile parse(const Bytes& bytes) {
  return GgufFile::parse(MappedFile::from_bytes(bytes.b, "model.gguf"));
}

// Parsing must fail with `code` and a message that starts with the file name and contains every
// fragment.
void expect_error(const Bytes& bytes, ErrorCode code, std::initializer_list<std::string_view> fragments) {
  try {
    parse(bytes);
    ADD_FAILURE() << "parsed without error; expected " << to_string(code);
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("model.gguf", 0), 0u) << msg;
    for (std::string_view f : fragments) EXPECT_NE(msg.find(f), std::string::npos) << "'" << f << "' not in: " << msg;
  }
}

void expect_error(const Forge& forge, ErrorCode code, std::initializer_list<std::string_view> fragments) {
  expect_error(forge.build(), code, fragments);
}

Forge minimal() {
  Forge f;
  f.kvs.push_back(string_kv("general.architecture", "llama"));
  f.tensors.push_back({"a.weight", {4, 2}, F32});
  return f;
}

// ---- the valid file ----

TEST(GgufParse, ValidFileWithEveryValueType) {
  Forge f;
  f.alignment = 64;
  f.kvs = {
      scalar<uint32_t>("general.alignment", VT::uint32, 64),
      scalar<uint8_t>("t.u8", VT::uint8, 200),
      scalar<int8_t>("t.i8", VT::int8, -100),
      scalar<uint16_t>("t.u16", VT::uint16, 60000),
      scalar<int16_t>("t.i16", VT::int16, -30000),
      scalar<uint32_t>("t.u32", VT::uint32, 4000000000u),
      scalar<int32_t>("t.i32", VT::int32, -2000000000),
      scalar<float>("t.f32", VT::float32, 0.1f),
      scalar<uint8_t>("t.bool", VT::boolean, 1),
      string_kv("t.str", std::string("h\xc3\xa9llo\0x", 8)),
      scalar<uint64_t>("t.u64", VT::uint64, UINT64_MAX),
      scalar<int64_t>("t.i64", VT::int64, INT64_MIN),
      scalar<double>("t.f64", VT::float64, -2.5e300),
      array_kv<int32_t>("t.ints", VT::int32, {1, -2, 3}),
      array_kv<float>("t.floats", VT::float32, {0.5f, -1.0f}),
      string_array_kv("t.strs", {"a", "", "ccc"}),
      array_kv<uint8_t>("t.empty", VT::uint8, {}),
      {"t.nested", [](Bytes& o) {
         o.type(VT::array).type(VT::array).u64(2);
         o.type(VT::uint16).u64(2).put<uint16_t>(7).put<uint16_t>(8);
         o.type(VT::string).u64(1).str("x");
       }},
  };
  f.tensors = {{"f32.weight", {4, 2}, F32}, {"q8.weight", {32, 1}, Q8_0}};
  const Bytes bytes = f.build();
  const GgufFile g = parse(bytes);

  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.alignment(), 64u);
  EXPECT_EQ(g.name(), "model.gguf");
  ASSERT_EQ(g.metadata().size(), f.kvs.size());
  EXPECT_EQ(g.metadata()[1].first, "t.u8");
  EXPECT_EQ(g.get_uint("t.u8"), 200u);
  EXPECT_EQ(std::get<int64_t>(g.find("t.i8")->value), -100);
  EXPECT_EQ(g.get_uint("t.u16"), 60000u);
  EXPECT_EQ(std::get<int64_t>(g.find("t.i16")->value), -30000);
  EXPECT_EQ(g.get_uint("t.u32"), 4000000000u);
  EXPECT_EQ(g.find("t.i32")->type, VT::int32);
  EXPECT_EQ(g.get_float("t.f32"), static_cast<double>(0.1f));
  EXPECT_EQ(g.get_bool_opt("t.bool"), true);
  EXPECT_EQ(g.get_string("t.str"), std::string("h\xc3\xa9llo\0x", 8));
  EXPECT_EQ(g.get_uint("t.u64"), UINT64_MAX);
  EXPECT_EQ(std::get<int64_t>(g.find("t.i64")->value), INT64_MIN);
  EXPECT_EQ(g.get_float("t.f64"), -2.5e300);
  EXPECT_EQ(g.get_int_array("t.ints"), (std::vector<int64_t>{1, -2, 3}));
  EXPECT_EQ(g.get_float_array("t.floats"), (std::vector<double>{0.5, -1.0}));
  EXPECT_EQ(g.get_string_array("t.strs"), (std::vector<std::string>{"a", "", "ccc"}));
  EXPECT_TRUE(g.get_int_array("t.empty").empty());
  const GgufValue* nested = g.find("t.nested");
  ASSERT_NE(nested, nullptr);
  EXPECT_EQ(nested->type, VT::array);
  EXPECT_EQ(nested->elem_type, VT::array);
  const auto& outer = std::get<std::vector<GgufValue>>(nested->value);
  ASSERT_EQ(outer.size(), 2u);
  EXPECT_EQ(outer[0].elem_type, VT::uint16);
  EXPECT_EQ(std::get<uint64_t>(std::get<std::vector<GgufValue>>(outer[0].value)[1].value), 8u);
  EXPECT_EQ(std::get<std::string>(std::get<std::vector<GgufValue>>(outer[1].value)[0].value), "x");

  EXPECT_EQ(g.find("missing"), nullptr);
  EXPECT_EQ(g.get_uint_opt("missing"), std::nullopt);
  EXPECT_EQ(g.get_string_opt("missing"), std::nullopt);

  ASSERT_EQ(g.tensors().size(), 2u);
  const GgufTensorInfo* t = g.find_tensor("f32.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->ne, (std::vector<uint64_t>{4, 2}));
  EXPECT_EQ(t->n_elements, 8u);
  EXPECT_EQ(t->n_bytes, 32u);
  EXPECT_EQ(t->offset % 64, 0u);
  // Data bytes are i*7+1 from the start of the data section.
  const auto data = g.tensor_bytes(*t);
  EXPECT_EQ(static_cast<uint8_t>(data[0]), 1);
  EXPECT_EQ(static_cast<uint8_t>(data[1]), 8);
  const std::vector<float> vals = g.dequantize(*t);
  float want0;
  std::memcpy(&want0, data.data(), 4);
  EXPECT_EQ(std::bit_cast<uint32_t>(vals[0]), std::bit_cast<uint32_t>(want0));

  const GgufTensorInfo* q = g.find_tensor("q8.weight");
  ASSERT_NE(q, nullptr);
  EXPECT_EQ(q->offset, t->offset + 64);  // 32 bytes, padded to the 64-byte alignment
  EXPECT_EQ(q->n_bytes, 34u);
  EXPECT_EQ(g.dequantize(*q).size(), 32u);
  EXPECT_EQ(g.find_tensor("nope"), nullptr);
}

TEST(GgufParse, Version2AndDefaultAlignment) {
  Forge f = minimal();
  f.version = 2;
  const GgufFile g = parse(f.build());
  EXPECT_EQ(g.version(), 2u);
  EXPECT_EQ(g.alignment(), 32u);
  EXPECT_EQ(g.tensors()[0].offset % 32, 0u);
}

TEST(GgufParse, NoTensorsIsValid) {
  Forge f;
  f.kvs.push_back(string_kv("general.architecture", "llama"));
  EXPECT_TRUE(parse(f.build()).tensors().empty());
}

TEST(GgufParse, TypedGettersNameTheKey) {
  Forge f = minimal();
  f.kvs.push_back(scalar<int32_t>("neg", VT::int32, -1));
  f.kvs.push_back(array_kv<uint64_t>("big", VT::uint64, {UINT64_MAX}));
  const GgufFile g = parse(f.build());
  auto expect_throw = [](const std::function<void()>& fn, std::string_view fragment) {
    try {
      fn();
      ADD_FAILURE() << "no error";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_model);
      EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
    }
  };
  expect_throw([&] { g.get_uint("general.architecture"); }, "'general.architecture' is a string, expected an integer");
  expect_throw([&] { g.get_uint("llama.block_count"); }, "missing metadata key 'llama.block_count'");
  expect_throw([&] { g.get_uint("neg"); }, "'neg' is -1, must not be negative");
  expect_throw([&] { g.get_float("neg"); }, "expected a float");
  expect_throw([&] { g.get_string_array("big"); }, "'big' is an array of uint64, expected an array of strings");
  expect_throw([&] { g.get_int_array("big"); }, "out of range");
  expect_throw([&] { g.get_bool_opt("neg"); }, "expected a bool");
}

// ---- header ----

TEST(GgufParse, RejectsBrokenHeaders) {
  expect_error(Bytes{}, ErrorCode::invalid_model, {"empty"});
  expect_error(Bytes{}.raw("GG"), ErrorCode::invalid_model, {"too short for the GGUF magic"});
  expect_error(Bytes{}.raw("GGUF"), ErrorCode::invalid_model, {"truncated GGUF header", "4 bytes"});
  expect_error(Bytes{}.raw("GGML").u32(3).u64(0).u64(0), ErrorCode::invalid_model, {"not a GGUF file"});
  expect_error(Bytes{}.raw("GGUF").u32(3).u64(0), ErrorCode::invalid_model, {"truncated GGUF header"});
  Forge v1 = minimal();
  v1.version = 1;
  expect_error(v1, ErrorCode::unsupported, {"GGUF version 1 is not supported"});
  Forge v999 = minimal();
  v999.version = 999;
  expect_error(v999, ErrorCode::unsupported, {"GGUF version 999 is not supported"});
  for (uint32_t v : {2u, 3u}) {
    Forge be = minimal();
    be.version = __builtin_bswap32(v);
    expect_error(be, ErrorCode::unsupported, {"big-endian"});
  }
}

TEST(GgufParse, RejectsImpossibleCounts) {
  const uint64_t just_over_size_max = SIZE_MAX / sizeof(GgufTensorInfo) + 1;
  for (uint64_t n : {uint64_t{1} << 63, UINT64_MAX, just_over_size_max, (uint64_t{1} << 20) + 1}) {
    Forge t = minimal();
    t.n_tensors = n;
    expect_error(t, ErrorCode::invalid_model, {"n_tensors = ", std::to_string(n), "exceeds the limit"});
    Forge k = minimal();
    k.n_kv = n;
    expect_error(k, ErrorCode::invalid_model, {"n_kv = ", std::to_string(n), "exceeds the limit"});
  }
  // Under the caps but more than the remaining bytes could hold.
  Forge t = minimal();
  t.n_tensors = 1000;
  expect_error(t, ErrorCode::invalid_model, {"n_tensors = 1000", "cannot fit"});
  Forge k = minimal();
  k.n_kv = 100000;
  expect_error(k, ErrorCode::invalid_model, {"n_kv = 100000", "cannot fit"});
}

TEST(GgufParse, SparseFourGigabyteFileWithOnlyAHeader) {
  test::TempDir dir;
  const auto path = dir / "sparse.gguf";
  const Bytes header = Bytes{}.raw("GGUF").u32(3).u64(0).u64(1 << 20);
  {
    std::ofstream out(path, std::ios::binary);
    out.write(reinterpret_cast<const char*>(header.b.data()), static_cast<std::streamsize>(header.b.size()));
  }
  std::filesystem::resize_file(path, uint64_t{4} << 30);
  try {
    GgufFile::open(path.string());
    ADD_FAILURE() << "parsed";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_model);
    EXPECT_NE(std::string(e.what()).find("metadata key #0 is empty"), std::string::npos) << e.what();
  }
}

// ---- metadata ----

TEST(GgufParse, RejectsBrokenMetadata) {
  {
    // Key length 2^40 (the key itself is written by hand).
    Bytes o;
    o.raw("GGUF").u32(3).u64(0).u64(1).u64(uint64_t{1} << 40).raw("abcdefgh").type(VT::uint8).u8(1);
    expect_error(o, ErrorCode::invalid_model, {"metadata key #0 is 1099511627776 bytes long", "limit of 65535"});
    Bytes past;
    past.raw("GGUF").u32(3).u64(0).u64(1).u64(5000).raw("abcdefghijklmnopqrstuvwxyz");
    expect_error(past, ErrorCode::invalid_model, {"truncated file", "metadata key #0", "needs 5000 bytes"});
  }
  Forge empty_key = minimal();
  empty_key.kvs.push_back(scalar<uint8_t>("", VT::uint8, 1));
  expect_error(empty_key, ErrorCode::invalid_model, {"metadata key #1 is empty"});

  Forge str_past = minimal();
  str_past.kvs.push_back({"general.name", [](Bytes& o) { o.type(VT::string).u64(1 << 20).raw("short"); }});
  expect_error(str_past, ErrorCode::invalid_model, {"truncated file", "metadata key 'general.name'", "1048576"});

  Forge str_huge = minimal();
  str_huge.kvs.push_back({"general.name", [](Bytes& o) { o.type(VT::string).u64(uint64_t{1} << 40); }});
  expect_error(str_huge, ErrorCode::invalid_model, {"'general.name' is 1099511627776 bytes long", "limit of 67108864"});

  Forge arr = minimal();
  arr.kvs.push_back({"tokenizer.ggml.tokens", [](Bytes& o) { o.type(VT::array).type(VT::string).u64(uint64_t{1} << 62); }});
  expect_error(arr, ErrorCode::invalid_model, {"'tokenizer.ggml.tokens' claims 4611686018427387904 elements"});

  Forge deep = minimal();
  deep.kvs.push_back({"deep", [](Bytes& o) {
                        o.type(VT::array).type(VT::array).u64(1);  // depth 1
                        o.type(VT::array).u64(1);                  // depth 2
                        o.type(VT::uint8).u64(1).u8(0);            // depth 3
                      }});
  expect_error(deep, ErrorCode::invalid_model, {"'deep' nests arrays deeper than 2 levels"});

  Forge very_deep = minimal();
  very_deep.kvs.push_back({"deep", [](Bytes& o) {
                             o.type(VT::array);
                             for (int i = 0; i < 10000; ++i) o.type(VT::array).u64(1);
                             o.type(VT::uint8).u64(0);
                           }});
  expect_error(very_deep, ErrorCode::invalid_model, {"nests arrays deeper than 2 levels"});

  Forge unknown = minimal();
  unknown.kvs.push_back({"weird", [](Bytes& o) { o.u32(13).u32(0); }});
  expect_error(unknown, ErrorCode::invalid_model, {"metadata key 'weird' has unknown value type 13"});

  Forge unknown_elem = minimal();
  unknown_elem.kvs.push_back({"weird", [](Bytes& o) { o.type(VT::array).u32(99).u64(0); }});
  expect_error(unknown_elem, ErrorCode::invalid_model, {"'weird' is an array of unknown value type 99"});

  Forge bad_bool = minimal();
  bad_bool.kvs.push_back(scalar<uint8_t>("flag", VT::boolean, 2));
  expect_error(bad_bool, ErrorCode::invalid_model, {"'flag' is a bool stored as 2"});

  Forge escapes = minimal();
  escapes.kvs.push_back({"evil\x1b[2J" + std::string(300, 'k'), [](Bytes& o) { o.u32(77); }});
  expect_error(escapes, ErrorCode::invalid_model, {"metadata key 'evil\\x1b[2Jkkk", "... (308 bytes)' has unknown value type 77"});

  Forge dup = minimal();
  dup.kvs.push_back(string_kv("general.architecture", "qwen2"));
  expect_error(dup, ErrorCode::invalid_model, {"duplicate metadata key 'general.architecture'"});

  Bytes cut;
  cut.raw("GGUF").u32(3).u64(0).u64(1).str("cut").type(VT::uint64).u32(0);
  expect_error(cut, ErrorCode::invalid_model, {"truncated file: metadata key 'cut' at offset 39 needs 8 bytes"});
}

TEST(GgufParse, CapsTheTotalNumberOfArrayElements) {
  // Two arrays of 2^22 + 1 one-byte elements: each fits the file, together they pass the 2^23 cap.
  Forge f = minimal();
  const std::vector<uint8_t> items((uint64_t{1} << 22) + 1, 0);
  f.kvs.push_back(array_kv<uint8_t>("a1", VT::uint8, items));
  f.kvs.push_back(array_kv<uint8_t>("a2", VT::uint8, items));
  expect_error(f, ErrorCode::invalid_model, {"'a2' has 4194305 elements", "at most 8388608"});
}

TEST(GgufParse, RejectsBadAlignment) {
  for (uint32_t a : {0u, 3u, 4u, 24u, 0x80000000u, 1u << 17}) {
    Forge f = minimal();
    f.kvs.push_back(scalar<uint32_t>("general.alignment", VT::uint32, a));
    expect_error(f, ErrorCode::invalid_model, {"'general.alignment' = ", std::to_string(a), "power of two"});
  }
  Forge as_string = minimal();
  as_string.kvs.push_back(string_kv("general.alignment", "32"));
  expect_error(as_string, ErrorCode::invalid_model, {"'general.alignment' must be a uint32, not string"});
  Forge as_i32 = minimal();
  as_i32.kvs.push_back(scalar<int32_t>("general.alignment", VT::int32, 32));
  expect_error(as_i32, ErrorCode::invalid_model, {"'general.alignment' must be a uint32, not int32"});
}

// ---- tensor infos ----

TEST(GgufParse, RejectsBadTensorShapes) {
  for (uint32_t n_dims : {0u, 5u}) {
    Forge f = minimal();
    f.tensors[0].n_dims = n_dims;
    f.tensors[0].ne.assign(n_dims, 1);
    expect_error(f, ErrorCode::invalid_model, {"tensor 'a.weight': n_dims = ", std::to_string(n_dims), "between 1 and 4"});
  }
  Forge dim0 = minimal();
  dim0.tensors[0].ne = {4, 0};
  expect_error(dim0, ErrorCode::invalid_model, {"tensor 'a.weight': ne[1] is 0"});

  Forge overflow = minimal();
  overflow.tensors[0].ne = {uint64_t{1} << 32, uint64_t{1} << 32};
  expect_error(overflow, ErrorCode::invalid_model, {"tensor 'a.weight': the element count overflows"});
  Forge over_int64 = minimal();
  over_int64.tensors[0].ne = {uint64_t{1} << 62, 2};
  expect_error(over_int64, ErrorCode::invalid_model, {"the element count overflows"});

  Forge partial = minimal();
  partial.tensors[0] = {"q.weight", {16, 2}, Q4_0};
  expect_error(partial, ErrorCode::invalid_model, {"tensor 'q.weight': ne[0] = 16 is not a multiple of the Q4_0 block size 32"});

  for (uint32_t type : {4u, 99u, 0xffffffffu}) {
    Forge f = minimal();
    f.tensors[0].type = type;
    expect_error(f, ErrorCode::unsupported, {"tensor 'a.weight' has unknown ggml type ", std::to_string(type)});
  }

  Forge empty_name = minimal();
  empty_name.tensors[0].name = "";
  expect_error(empty_name, ErrorCode::invalid_model, {"tensor #0 has an empty name"});

  Bytes cut;
  cut.raw("GGUF").u32(3).u64(1).u64(0).str("t").u32(4).u64(4).u64(4).u64(4);
  expect_error(cut, ErrorCode::invalid_model, {"truncated file: tensor 't' ne[3]"});
}

TEST(GgufParse, RejectsBadTensorPlacement) {
  Forge misaligned = minimal();
  misaligned.tensors[0].offset = 16;
  expect_error(misaligned, ErrorCode::invalid_model, {"tensor 'a.weight': data offset 16 is not a multiple of the alignment 32"});

  Forge past_eof = minimal();
  past_eof.truncate_data_by = 1;
  expect_error(past_eof, ErrorCode::invalid_model, {"tensor 'a.weight': data [", ") ends past the end of the file (size "});

  Forge far = minimal();
  far.tensors[0].offset = uint64_t{1} << 40;
  far.truncate_data_by = int64_t{1} << 40;  // keep the file small
  expect_error(far, ErrorCode::invalid_model, {"ends past the end of the file"});

  Forge wrap = minimal();
  wrap.tensors[0].offset = UINT64_MAX - 31;
  expect_error(wrap, ErrorCode::invalid_model, {"tensor 'a.weight': data offset 18446744073709551584 + 32 bytes overflows"});

  Forge overlap = minimal();
  overlap.tensors.push_back({"b.weight", {4}, F32, 0});
  expect_error(overlap, ErrorCode::invalid_model, {"tensors 'a.weight' [", "and 'b.weight' [", "overlap"});

  Forge dup = minimal();
  dup.tensors.push_back({"a.weight", {4}, F32});
  expect_error(dup, ErrorCode::invalid_model, {"duplicate tensor name 'a.weight'"});
}

TEST(GgufParse, DequantizeRejectsTypesItCannotRead) {
  Forge f = minimal();
  f.tensors.push_back({"iq.weight", {256}, static_cast<uint32_t>(kcpu::GgmlType::IQ2_XXS)});
  const GgufFile g = parse(f.build());
  try {
    g.dequantize(*g.find_tensor("iq.weight"));
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::unsupported);
    EXPECT_NE(std::string(e.what()).find("tensor 'iq.weight' has type IQ2_XXS"), std::string::npos) << e.what();
  }
}

// Every prefix of a valid file and a few thousand random corruptions either parse or throw
// gptqd::Error; never anything else (run under ASan this also proves no out-of-bounds read).
TEST(GgufParse, TruncationsAndCorruptionsFailCleanly) {
  Forge f;
  f.kvs = {scalar<uint32_t>("general.alignment", VT::uint32, 32), string_kv("general.architecture", "llama"),
           array_kv<int32_t>("ints", VT::int32, {1, 2, 3}), string_array_kv("strs", {"a", "bb"}),
           {"nested", [](Bytes& o) { o.type(VT::array).type(VT::array).u64(1).type(VT::uint8).u64(2).u8(1).u8(2); }}};
  f.tensors = {{"a", {4, 2}, F32}, {"b", {32}, Q8_0}, {"c", {32}, Q4_0}};
  const Bytes valid = f.build();
  auto try_parse = [](const Bytes& b) {
    try {
      const GgufFile g = parse(b);
      for (const GgufTensorInfo& t : g.tensors()) {
        if (kcpu::ggml_type_traits(t.type)->can_dequantize) g.dequantize(t);
      }
      return true;
    } catch (const Error&) {
      return false;
    }
  };
  ASSERT_TRUE(try_parse(valid));
  for (size_t n = 0; n < valid.b.size(); ++n) {
    Bytes prefix;
    prefix.b.assign(valid.b.begin(), valid.b.begin() + static_cast<std::ptrdiff_t>(n));
    EXPECT_FALSE(try_parse(prefix)) << "prefix of " << n << " bytes parsed";
  }
  uint64_t state = 0x9e3779b97f4a7c15u;
  auto next = [&state] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  for (int round = 0; round < 5000; ++round) {
    Bytes b = valid;
    const int n_flips = 1 + static_cast<int>(next() % 4);
    for (int k = 0; k < n_flips; ++k) {
      const size_t at = next() % b.b.size();
      const uint64_t r = next();
      // Mostly random bytes; sometimes 0xff runs that turn lengths and counts into huge numbers.
      b.b[at] = static_cast<std::byte>(r % 3 == 0 ? 0xff : (r >> 8) & 0xff);
    }
    try_parse(b);
  }
}

// ---- ModelConfig::from_gguf ----

Forge llama_like(const std::string& arch) {
  Forge f;
  f.kvs = {
      string_kv("general.architecture", arch),
      scalar<uint32_t>(arch + ".block_count", VT::uint32, 2),
      scalar<uint32_t>(arch + ".context_length", VT::uint32, 2048),
      scalar<uint32_t>(arch + ".embedding_length", VT::uint32, 64),
      scalar<uint32_t>(arch + ".feed_forward_length", VT::uint32, 128),
      scalar<uint32_t>(arch + ".attention.head_count", VT::uint32, 4),
      scalar<uint32_t>(arch + ".attention.head_count_kv", VT::uint32, 2),
      scalar<float>(arch + ".attention.layer_norm_rms_epsilon", VT::float32, 1e-6f),
      scalar<float>(arch + ".rope.freq_base", VT::float32, 500000.0f),
      string_array_kv("tokenizer.ggml.tokens", std::vector<std::string>(100, "t")),
      scalar<uint32_t>("tokenizer.ggml.bos_token_id", VT::uint32, 1),
      scalar<uint32_t>("tokenizer.ggml.eos_token_id", VT::uint32, 2),
  };
  f.tensors = {{"token_embd.weight", {64, 100}, F32}, {"blk.0.attn_q.weight", {64, 64}, F32}};
  return f;
}

ModelConfig config_of(const Forge& f) { return ModelConfig::from_gguf(parse(f.build())); }

TEST(GgufModelConfig, ReadsLlamaMetadata) {
  const ModelConfig c = config_of(llama_like("llama"));
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 2);
  EXPECT_EQ(c.max_position_embeddings, 2048);
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 128);
  EXPECT_EQ(c.n_heads, 4);
  EXPECT_EQ(c.n_kv_heads, 2);
  EXPECT_EQ(c.head_dim, 16);
  EXPECT_EQ(c.vocab_size, 100);  // from the token list: no llama.vocab_size key
  EXPECT_DOUBLE_EQ(c.rms_norm_eps, static_cast<double>(1e-6f));
  EXPECT_EQ(c.rope_theta, 500000.0);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::none);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_EQ(c.torch_dtype, "");
}

TEST(GgufModelConfig, DefaultsAndOptionalKeys) {
  Forge f = llama_like("mistral");
  std::erase_if(f.kvs, [](const Kv& kv) {
    return kv.key == "mistral.attention.head_count_kv" || kv.key == "mistral.rope.freq_base";
  });
  f.kvs.push_back(scalar<uint32_t>("mistral.vocab_size", VT::uint32, 90));
  f.kvs.push_back(scalar<uint32_t>("mistral.attention.key_length", VT::uint32, 32));
  f.kvs.push_back(string_kv("mistral.rope.scaling.type", "linear"));
  f.kvs.push_back(scalar<float>("mistral.rope.scaling.factor", VT::float32, 4.0f));
  f.kvs.push_back(scalar<uint32_t>("tokenizer.ggml.eot_token_id", VT::uint32, 3));
  f.tensors.push_back({"output.weight", {64, 100}, F32});
  const ModelConfig c = config_of(f);
  EXPECT_EQ(c.architecture, "mistral");
  EXPECT_EQ(c.n_kv_heads, 4);
  EXPECT_EQ(c.rope_theta, 10000.0);
  EXPECT_EQ(c.vocab_size, 90);
  EXPECT_EQ(c.head_dim, 32);
  EXPECT_EQ(c.rope_scaling.type, RopeScalingType::linear);
  EXPECT_EQ(c.rope_scaling.factor, 4.0);
  EXPECT_FALSE(c.tie_word_embeddings);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 3}));
}

TEST(GgufModelConfig, Qwen2BiasDetection) {
  Forge f = llama_like("qwen2");
  EXPECT_FALSE(config_of(f).attention_bias);
  f.tensors.push_back({"blk.0.attn_q.bias", {64}, F32});
  const ModelConfig c = config_of(f);
  EXPECT_EQ(c.architecture, "qwen2");
  EXPECT_TRUE(c.attention_bias);
}

void expect_config_error(const Forge& f, ErrorCode code, std::initializer_list<std::string_view> fragments) {
  try {
    config_of(f);
    ADD_FAILURE() << "no error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), code) << e.what();
    for (std::string_view s : fragments) EXPECT_NE(std::string(e.what()).find(s), std::string::npos) << e.what();
  }
}

TEST(GgufModelConfig, RejectsUnsupportedAndMissing) {
  Forge gpt2 = llama_like("llama");
  gpt2.kvs[0] = string_kv("general.architecture", "gpt2");
  expect_config_error(gpt2, ErrorCode::unsupported,
                      {"unsupported architecture 'gpt2' in model.gguf; gptqd runs llama, mistral and qwen2 models"});

  Forge no_arch = llama_like("llama");
  no_arch.kvs.erase(no_arch.kvs.begin());
  expect_config_error(no_arch, ErrorCode::invalid_model, {"missing metadata key 'general.architecture'"});

  Forge no_blocks = llama_like("llama");
  std::erase_if(no_blocks.kvs, [](const Kv& kv) { return kv.key == "llama.block_count"; });
  expect_config_error(no_blocks, ErrorCode::invalid_model, {"missing metadata key 'llama.block_count'"});

  Forge no_vocab = llama_like("llama");
  std::erase_if(no_vocab.kvs, [](const Kv& kv) { return kv.key == "tokenizer.ggml.tokens"; });
  expect_config_error(no_vocab, ErrorCode::invalid_model, {"'llama.vocab_size'"});

  Forge yarn = llama_like("llama");
  yarn.kvs.push_back(string_kv("llama.rope.scaling.type", "yarn"));
  expect_config_error(yarn, ErrorCode::unsupported, {"rope scaling type 'yarn'"});

  Forge zero_heads = llama_like("llama");
  std::erase_if(zero_heads.kvs, [](const Kv& kv) { return kv.key.starts_with("llama.attention.head_count"); });
  zero_heads.kvs.push_back(scalar<uint32_t>("llama.attention.head_count", VT::uint32, 0));
  expect_config_error(zero_heads, ErrorCode::invalid_model, {});

  Forge huge = llama_like("llama");
  std::erase_if(huge.kvs, [](const Kv& kv) { return kv.key == "llama.block_count"; });
  huge.kvs.push_back(scalar<uint64_t>("llama.block_count", VT::uint64, UINT64_MAX));
  expect_config_error(huge, ErrorCode::invalid_model, {"'llama.block_count'", "out of range"});
}

// ---- the real model ----

TEST(GgufRealModel, SmolLM2) {
  const auto path = test::test_model_path();
  GPTQD_REQUIRE_FILE(path);
  const GgufFile g = GgufFile::open(path.string());
  EXPECT_EQ(g.version(), 3u);
  EXPECT_EQ(g.tensors().size(), 272u);
  EXPECT_EQ(g.get_string("general.architecture"), "llama");
  EXPECT_EQ(g.get_string_array("tokenizer.ggml.tokens").size(), 49152u);
  const GgufTensorInfo* embd = g.find_tensor("token_embd.weight");
  ASSERT_NE(embd, nullptr);
  EXPECT_EQ(embd->ne, (std::vector<uint64_t>{576, 49152}));

  const ModelConfig c = ModelConfig::from_gguf(g);
  EXPECT_EQ(c.architecture, "llama");
  EXPECT_EQ(c.n_layers, 30);
  EXPECT_EQ(c.hidden_size, 576);
  EXPECT_EQ(c.intermediate_size, 1536);
  EXPECT_EQ(c.n_heads, 9);
  EXPECT_EQ(c.n_kv_heads, 3);
  EXPECT_EQ(c.head_dim, 64);
  EXPECT_EQ(c.vocab_size, 49152);
  EXPECT_EQ(c.max_position_embeddings, 8192);
  EXPECT_EQ(c.rope_theta, 100000.0);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_FALSE(c.attention_bias);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
}

}  // namespace
}  // namespace gptqd::engine
