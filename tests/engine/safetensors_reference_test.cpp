// SPDX-License-Identifier: Apache-2.0
// safetensors against the reference `safetensors` Python package, both directions (engine tests,
// label "reference"; the Python side is tests/reference/safetensors_reference.py).
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "engine/error.h"
#include "engine/json_strict.h"
#include "engine/safetensors.h"
#include "kernels/cpu/half.h"
#include "tests/support/test_env.h"

namespace gptqd::engine {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;
namespace cpu = kernels::cpu;

fs::path script() { return test::source_dir() / "tests" / "reference" / "safetensors_reference.py"; }

template <typename T>
T load(const std::byte* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// Element `i` of `t` as JSON (floats as doubles, integers exactly, BOOL as a boolean).
json element(const StTensor& t, size_t i) {
  const std::byte* p = t.bytes.data() + i * st_dtype_size(t.dtype);
  switch (t.dtype) {
    case StDtype::BOOL: return load<uint8_t>(p) != 0;
    case StDtype::U8: return load<uint8_t>(p);
    case StDtype::I8: return load<int8_t>(p);
    case StDtype::I16: return load<int16_t>(p);
    case StDtype::U16: return load<uint16_t>(p);
    case StDtype::F16: return static_cast<double>(cpu::f16_to_f32(load<uint16_t>(p)));
    case StDtype::BF16: return static_cast<double>(cpu::bf16_to_f32(load<uint16_t>(p)));
    case StDtype::I32: return load<int32_t>(p);
    case StDtype::U32: return load<uint32_t>(p);
    case StDtype::F32: return static_cast<double>(load<float>(p));
    case StDtype::F64: return load<double>(p);
    case StDtype::I64: return load<int64_t>(p);
    case StDtype::U64: return load<uint64_t>(p);
    default: ADD_FAILURE() << "unexpected dtype " << to_string(t.dtype); return nullptr;
  }
}

TEST(SafetensorsReference, ReadsWhatThePythonPackageWrites) {
  GPTQD_REQUIRE_FILE(test::python());
  test::TempDir dir;
  auto run = test::run_command({test::python().string(), script().string(), "write", dir.path().string()});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const json sidecar = parse_json_strict(test::read_file(dir / "py.json"), "py.json");

  size_t n_tensors = 0;
  for (const auto& [fname, spec] : sidecar.items()) {
    SafetensorsFile f = SafetensorsFile::open(dir / fname);
    std::map<std::string, std::string> want_meta = spec["metadata"].get<std::map<std::string, std::string>>();
    EXPECT_EQ(f.metadata(), want_meta) << fname;
    EXPECT_EQ(f.tensors().size(), spec["tensors"].size()) << fname;
    for (const auto& [name, want] : spec["tensors"].items()) {
      SCOPED_TRACE(fname + ":" + name);
      const StTensor* t = f.find(name);
      ASSERT_NE(t, nullptr);
      EXPECT_EQ(to_string(t->dtype), want["dtype"].get<std::string>());
      EXPECT_EQ(t->shape, want["shape"].get<std::vector<int64_t>>());
      ASSERT_EQ(t->n_elements, want["values"].size());
      for (size_t i = 0; i < t->n_elements; ++i) EXPECT_EQ(element(*t, i), want["values"][i]) << "element " << i;
      if (t->dtype == StDtype::F16 || t->dtype == StDtype::BF16 || t->dtype == StDtype::F32) {
        std::vector<float> f32 = st_to_f32(*t);
        for (size_t i = 0; i < f32.size(); ++i) EXPECT_EQ(f32[i], want["values"][i].get<double>());
      }
      ++n_tensors;
    }
  }
  EXPECT_EQ(n_tensors, 17u);

  // The two files together are a valid unsharded set (no index, names unique).
  SafetensorsSet set = SafetensorsSet::open_dir(dir.path());
  EXPECT_EQ(set.all().size(), n_tensors);
  const int64_t shape[] = {7, 3};
  EXPECT_NO_THROW(set.get("model.embed_tokens.weight", StDtype::F16, shape));
}

// Builds one tensor for write_safetensors and its sidecar entry.
struct Built {
  std::string name;
  StDtype dtype;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
  json values = json::array();
};

template <typename T>
Built make(std::string name, StDtype dtype, std::vector<int64_t> shape, const std::vector<T>& values) {
  Built b{std::move(name), dtype, std::move(shape), std::vector<std::byte>(values.size() * sizeof(T)), json::array()};
  if (!values.empty()) std::memcpy(b.data.data(), values.data(), b.data.size());
  for (T v : values) b.values.push_back(v);
  return b;
}

Built make_half(std::string name, StDtype dtype, std::vector<int64_t> shape, const std::vector<float>& values) {
  std::vector<uint16_t> bits;
  for (float v : values) bits.push_back(dtype == StDtype::F16 ? cpu::f32_to_f16(v) : cpu::f32_to_bf16(v));
  Built b = make(std::move(name), dtype, std::move(shape), bits);
  b.values = json::array();
  for (float v : values) b.values.push_back(static_cast<double>(v));
  return b;
}

Built make_bool(std::string name, std::vector<int64_t> shape, const std::vector<uint8_t>& values) {
  Built b = make(std::move(name), StDtype::BOOL, std::move(shape), values);
  b.values = json::array();
  for (uint8_t v : values) b.values.push_back(v != 0);
  return b;
}

json write_file_and_spec(const fs::path& path, const std::vector<Built>& built,
                         const std::map<std::string, std::string>& metadata) {
  std::vector<StWriteTensor> tensors;
  json spec = {{"metadata", metadata}, {"tensors", json::object()}};
  for (const Built& b : built) {
    tensors.push_back({b.name, b.dtype, b.shape, b.data});
    spec["tensors"][b.name] = {{"dtype", to_string(b.dtype)}, {"shape", b.shape}, {"values", b.values}};
  }
  write_safetensors(path, tensors, metadata);
  return spec;
}

TEST(SafetensorsReference, PythonPackageReadsWhatGptqdWrites) {
  GPTQD_REQUIRE_FILE(test::python());
  test::TempDir dir;
  std::vector<int32_t> qweight;
  for (int64_t i = 0; i < 24; ++i) qweight.push_back(static_cast<int32_t>(int64_t{INT32_MIN} + 178956970 * i));
  std::vector<float> embed;
  for (int i = 0; i < 21; ++i) embed.push_back(-2.0f + 0.25f * static_cast<float>(i));

  const std::vector<Built> main = {
      make_half("model.embed_tokens.weight", StDtype::F16, {7, 3}, embed),
      make<float>("model.norm.weight", StDtype::F32, {5}, {1.0f, 1.125f, -0.1f, 3e-8f, 65504.0f}),
      make<float>("lm_head.weight", StDtype::F32, {0, 3}, {}),
      make<float>("scalar", StDtype::F32, {}, {42.5f}),
      make<int32_t>("model.layers.0.mlp.down_proj.qweight", StDtype::I32, {4, 6}, qweight),
      make<int32_t>("model.layers.0.mlp.down_proj.g_idx", StDtype::I32, {8}, {0, 0, 0, 0, 1, 1, 1, 1}),
      make<int64_t>("i64", StDtype::I64, {3}, {-5'000'000'000'000, INT64_MIN, INT64_MAX}),
      make<double>("f64", StDtype::F64, {2}, {3.25, -1e300}),
      make<uint8_t>("u8", StDtype::U8, {3}, {0, 128, 255}),
      make<int8_t>("i8", StDtype::I8, {3}, {-128, 0, 127}),
      make<int16_t>("i16", StDtype::I16, {3}, {-32768, 1, 32767}),
      make<uint16_t>("u16", StDtype::U16, {2}, {1, 65535}),
      make<uint32_t>("u32", StDtype::U32, {2}, {7, 4'000'000'007u}),
      make<uint64_t>("u64", StDtype::U64, {2}, {1, UINT64_MAX}),
      make_bool("flags", {3}, {1, 0, 1}),
  };
  const std::vector<Built> halves = {
      make_half("b.bf16", StDtype::BF16, {2, 4}, {-1.5f, -1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 3.0f, 65536.0f}),
      make_half("a.f16", StDtype::F16, {3}, {0.5f, -0.25f, 2.0f}),
  };
  const std::vector<Built> layout = {
      make<double>("d", StDtype::F64, {1}, {1.0}),          make<float>("b.w", StDtype::F32, {3}, {1, 2, 3}),
      make<float>("a.w", StDtype::F32, {1}, {4}),           make_half("h", StDtype::F16, {3}, {1, 2, 3}),
      make<uint8_t>("u", StDtype::U8, {5}, {1, 2, 3, 4, 5}),
  };
  json sidecar;
  sidecar["cpp.safetensors"] =
      write_file_and_spec(dir / "cpp.safetensors", main, {{"format", "pt"}, {"note", "written by gptqd \xC3\xA9"}});
  sidecar["cpp_bf16.safetensors"] = write_file_and_spec(dir / "cpp_bf16.safetensors", halves, {{"format", "pt"}});
  write_file_and_spec(dir / "cpp_layout.safetensors", layout, {});
  test::write_file(dir / "cpp.json", sidecar.dump());

  auto run = test::run_command({test::python().string(), script().string(), "check", dir.path().string()});
  EXPECT_EQ(run.exit_code, 0) << run.output;
  EXPECT_NE(run.output.find("ok"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace gptqd::engine
