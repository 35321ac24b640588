// SPDX-License-Identifier: Apache-2.0
// GgufFile against the `gguf` Python package (tests/reference/gguf_reference.py): metadata, tensor
// infos and dequantized values of a synthetic file with every type, and of the real SmolLM2 GGUF.
#include <gtest/gtest.h>

#include <bit>
#include <cctype>
#include <cstdint>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/gguf.h"
#include "engine/mapped_file.h"
#include "tests/support/test_env.h"

namespace gptqd::engine {
namespace {

namespace kcpu = kernels::cpu;
using nlohmann::json;

std::filesystem::path script() { return test::source_dir() / "tests" / "reference" / "gguf_reference.py"; }

void run_script(const std::vector<std::string>& args) {
  std::vector<std::string> argv = {test::python().string(), script().string()};
  argv.insert(argv.end(), args.begin(), args.end());
  const test::CommandResult r = test::run_command(argv);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

// The type names GGUFReader lists for a field: the value type, then for a non-empty array the
// types of its first element (recursively), as in GGUFReader._get_field_parts.
std::vector<std::string> reader_types(const GgufValue& v) {
  std::string name = to_string(v.type);
  if (v.type == GgufValueType::boolean) name = "bool";
  for (char& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  std::vector<std::string> out = {name};
  if (v.type == GgufValueType::array) {
    const auto& items = std::get<std::vector<GgufValue>>(v.value);
    if (!items.empty()) {
      const auto inner = reader_types(items.front());
      out.insert(out.end(), inner.begin(), inner.end());
    }
  }
  return out;
}

// GGUFReader flattens nested arrays into one list of leaves.
void flatten(const GgufValue& v, std::vector<const GgufValue*>& out) {
  if (v.type != GgufValueType::array) {
    out.push_back(&v);
    return;
  }
  for (const GgufValue& item : std::get<std::vector<GgufValue>>(v.value)) flatten(item, out);
}

bool scalar_equals(const GgufValue& v, const json& j) {
  if (const auto* u = std::get_if<uint64_t>(&v.value)) return j.is_number_unsigned() && j.get<uint64_t>() == *u;
  if (const auto* i = std::get_if<int64_t>(&v.value)) return j.is_number_integer() && j.get<int64_t>() == *i;
  if (const auto* d = std::get_if<double>(&v.value)) return j.is_number() && j.get<double>() == *d;
  if (const auto* b = std::get_if<bool>(&v.value)) return j.is_boolean() && j.get<bool>() == *b;
  if (const auto* s = std::get_if<std::string>(&v.value)) return j.is_string() && j.get<std::string>() == *s;
  return false;
}

void expect_metadata_matches(const GgufFile& g, const json& ref) {
  const auto& ours = g.metadata();
  ASSERT_EQ(ours.size(), ref.at("metadata").size());
  for (size_t i = 0; i < ours.size(); ++i) {
    const auto& [key, value] = ours[i];
    const json& r = ref.at("metadata")[i];
    ASSERT_EQ(key, r.at("key").get<std::string>()) << "entry " << i;
    EXPECT_EQ(reader_types(value), r.at("types").get<std::vector<std::string>>()) << key;
    if (value.type == GgufValueType::array) {
      std::vector<const GgufValue*> leaves;
      flatten(value, leaves);
      const json& items = r.at("value");
      ASSERT_EQ(leaves.size(), items.size()) << key;
      int mismatches = 0;
      for (size_t k = 0; k < leaves.size(); ++k) {
        if (!scalar_equals(*leaves[k], items[k]) && ++mismatches <= 3) {
          ADD_FAILURE() << key << "[" << k << "] differs from GGUFReader's " << items[k].dump();
        }
      }
    } else {
      EXPECT_TRUE(scalar_equals(value, r.at("value"))) << key << " differs from GGUFReader's " << r.at("value").dump();
    }
  }
}

void expect_tensor_infos_match(const GgufFile& g, const json& ref) {
  EXPECT_EQ(g.version(), ref.at("version").get<uint32_t>());
  EXPECT_EQ(g.alignment(), ref.at("alignment").get<uint64_t>());
  const json& tensors = ref.at("tensors");
  ASSERT_EQ(g.tensors().size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    const GgufTensorInfo& t = g.tensors()[i];
    const json& r = tensors[i];
    ASSERT_EQ(t.name, r.at("name").get<std::string>());
    EXPECT_EQ(t.type, r.at("type").get<uint32_t>()) << t.name;
    EXPECT_EQ(t.ne, r.at("ne").get<std::vector<uint64_t>>()) << t.name;
    EXPECT_EQ(t.offset, r.at("offset").get<uint64_t>()) << t.name;
    EXPECT_EQ(t.n_elements, r.at("n_elements").get<uint64_t>()) << t.name;
    EXPECT_EQ(t.n_bytes, r.at("n_bytes").get<uint64_t>()) << t.name;
  }
}

// Bit-exact, no tolerance: ggml, gguf.quants and our kernel all compute each value with the same
// float32 operations in the same order (a product, then a separate sum; no FMA), and fp16 -> fp32
// is exact. NaN bit patterns (from the all-bits F16/BF16 tensors) must match too.
void expect_dequantized_values_match(const GgufFile& g, const std::filesystem::path& f32_path) {
  const auto ref = MappedFile::open(f32_path);
  const std::byte* p = ref->bytes().data();
  uint64_t pos = 0;
  const uint64_t size = ref->size_bytes();
  auto take = [&](void* dst, uint64_t n) {
    if (n > size - pos) throw std::runtime_error("reference file truncated");
    std::memcpy(dst, p + pos, n);
    pos += n;
  };
  for (const GgufTensorInfo& t : g.tensors()) {
    uint32_t name_len = 0;
    take(&name_len, 4);
    std::string name(name_len, '\0');
    take(name.data(), name_len);
    uint64_t count = 0;
    take(&count, 8);
    ASSERT_EQ(name, t.name);
    ASSERT_EQ(count, t.n_elements) << t.name;
    ASSERT_LE(count * 4, size - pos) << t.name;
    const std::vector<float> ours = g.dequantize(t);
    const std::byte* want = p + pos;
    pos += count * 4;
    if (std::memcmp(ours.data(), want, count * 4) == 0) continue;
    int shown = 0;
    for (uint64_t k = 0; k < count && shown < 5; ++k) {
      float w;
      std::memcpy(&w, want + 4 * k, 4);
      if (std::bit_cast<uint32_t>(w) != std::bit_cast<uint32_t>(ours[k])) {
        ADD_FAILURE() << t.name << " (" << kcpu::ggml_type_traits(t.type)->name << ") element " << k << ": ours "
                      << ours[k] << ", gguf " << w;
        ++shown;
      }
    }
  }
  EXPECT_EQ(pos, size) << "the reference has more tensors than the file";
}

class GgufReference : public ::testing::Test {
 protected:
  void SetUp() override {
    GPTQD_REQUIRE_FILE(test::python());
    GPTQD_REQUIRE_FILE(script());
  }
  test::TempDir dir_;
};

TEST_F(GgufReference, SyntheticFileWithEveryTypeMatchesGgufPackage) {
  const std::string gguf_path = (dir_ / "synthetic.gguf").string();
  const std::string prefix = (dir_ / "synthetic").string();
  run_script({"synthetic", gguf_path});
  run_script({"dump", gguf_path, prefix});
  const json ref = json::parse(test::read_file(prefix + ".json"));
  const GgufFile g = GgufFile::open(gguf_path);

  std::set<std::string> types;
  for (const GgufTensorInfo& t : g.tensors()) types.insert(kcpu::ggml_type_traits(t.type)->name);
  EXPECT_EQ(types, (std::set<std::string>{"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K",
                                          "Q3_K", "Q4_K", "Q5_K", "Q6_K"}));
  std::set<GgufValueType> value_types;
  for (const auto& [key, v] : g.metadata()) value_types.insert(v.type);
  EXPECT_EQ(value_types.size(), 13u);

  expect_tensor_infos_match(g, ref);
  expect_metadata_matches(g, ref);
  expect_dequantized_values_match(g, prefix + ".f32");
}

TEST_F(GgufReference, SmolLM2MatchesGgufPackage) {
  const auto model = test::test_model_path();
  GPTQD_REQUIRE_FILE(model);
  const std::string prefix = (dir_ / "smollm2").string();
  run_script({"dump", model.string(), prefix});
  const json ref = json::parse(test::read_file(prefix + ".json"));
  const GgufFile g = GgufFile::open(model.string());
  expect_tensor_infos_match(g, ref);
  expect_metadata_matches(g, ref);
  expect_dequantized_values_match(g, prefix + ".f32");
}

}  // namespace
}  // namespace gptqd::engine
