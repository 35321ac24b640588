// SPDX-License-Identifier: Apache-2.0
// The checkpoint writer against an independent numpy reader of the GPTQ format
// (tests/reference/gptq_checkpoint_reference.py): it must accept every checkpoint we write and
// dequantize each linear exactly as the engine does (quantizer tests, label "reference").
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "engine/json_strict.h"
#include "engine/model_source.h"
#include "engine/safetensors.h"
#include "quantizer/checkpoint.h"
#include "tests/quantizer/checkpoint_test_util.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::quantizer {
namespace {

namespace fs = std::filesystem;
using test_util::QuantCase;

fs::path script() { return test::source_dir() / "tests" / "reference" / "gptq_checkpoint_reference.py"; }

struct ReferenceCase {
  const char* name;
  QuantCase q;
  const char* family;        // "llama" or "qwen2" (q/k/v biases)
  uint64_t max_shard_bytes;  // small: several shards + index
};

class CheckpointReference : public ::testing::TestWithParam<ReferenceCase> {};

TEST_P(CheckpointReference, NumpyReaderAgreesWithTheEngine) {
  GPTQD_REQUIRE_FILE(test::python());
  GPTQD_REQUIRE_FILE(script());
  const ReferenceCase& rc = GetParam();
  test::TempDir dir;
  test::TinyHfOptions opts;
  opts.shape.n_kv_heads = 4;  // every dimension a multiple of 32, for 3-bit
  opts.family = rc.family;
  opts.seed = 11;
  test::write_tiny_hf_model(dir / "src", opts);
  const engine::ModelInfo source = engine::inspect_model_source(dir / "src");
  const auto linears = test_util::random_linears(source.config, rc.q, 21);
  CheckpointSpec spec;
  spec.config = test_util::config_for(rc.q);
  spec.max_shard_bytes = rc.max_shard_bytes;
  write_gptq_checkpoint(source, test_util::source_of(linears), spec, dir / "out");
  const bool sharded = fs::exists(dir / "out" / "model.safetensors.index.json");
  EXPECT_EQ(sharded, rc.max_shard_bytes < 100'000);

  const auto run = test::run_command(
      {test::python().string(), script().string(), (dir / "out").string(), (dir / "ref.safetensors").string()});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto summary = engine::parse_json_strict(run.output, "reference summary");
  EXPECT_EQ(summary["linears"], linears.size());
  EXPECT_EQ(summary["bits"], rc.q.bits);
  EXPECT_EQ(summary["group_size"], rc.q.group_size);
  EXPECT_EQ(summary["format"], rc.q.sym ? "gptq" : "gptq_v2");

  const auto ref = engine::SafetensorsFile::open(dir / "ref.safetensors");
  const auto engine_w = test_util::engine_linears(engine::inspect_model_source(dir / "out"));
  ASSERT_EQ(ref.tensors().size(), engine_w.size());
  for (const auto& [prefix, have] : engine_w) {
    SCOPED_TRACE(prefix);
    const engine::StTensor* t = ref.find(prefix + ".weight");
    ASSERT_NE(t, nullptr);
    ASSERT_EQ(t->dtype, engine::StDtype::F32);
    const QuantizedLinear& q = linears.at(prefix);
    ASSERT_EQ(t->shape, (std::vector<int64_t>{q.N, q.K}));
    const std::vector<float> want = engine::st_to_f32(*t);
    ASSERT_EQ(have.size(), want.size());
    size_t n_bad = 0;
    for (size_t i = 0; i < want.size(); ++i) n_bad += have[i] != want[i] ? 1 : 0;
    EXPECT_EQ(n_bad, 0u);
    EXPECT_EQ(want, test_util::expected_dequant(q));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Formats, CheckpointReference,
    ::testing::Values(ReferenceCase{"b4_g16_sym_v1", {4, 16, true, false}, "llama", 4'000'000'000},
                      ReferenceCase{"b4_g24_sym_act_sharded", {4, 24, true, true}, "qwen2", 6000},
                      ReferenceCase{"b3_g32_sym_v1", {3, 32, true, false}, "llama", 4'000'000'000},
                      ReferenceCase{"b3_g24_asym_act_v2_sharded", {3, 24, false, true}, "llama", 1},
                      ReferenceCase{"b2_gall_asym_v2", {2, -1, false, false}, "qwen2", 4'000'000'000},
                      ReferenceCase{"b8_g16_asym_v2_sharded", {8, 16, false, false}, "llama", 20000},
                      ReferenceCase{"b8_gall_sym_act", {8, -1, true, true}, "llama", 4'000'000'000}),
    [](const auto& param_info) { return std::string(param_info.param.name); });

}  // namespace
}  // namespace gptqd::quantizer
