// SPDX-License-Identifier: Apache-2.0
// The layer-by-layer driver and calibration sampling (unit tests on a tiny model): windows are
// seeded slices; LayerPass agrees with the engine's forward; each stage's Hessian comes from
// activations of the already quantized earlier stages (true-sequential), checked against an
// independent re-computation; a resumed run writes the same bytes; RTN equals rtn_quantize.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "engine/error.h"
#include "engine/layer_pass.h"
#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "quantizer/calibration.h"
#include "quantizer/driver.h"
#include "quantizer/gptq.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::test {
namespace {

namespace fs = std::filesystem;
using quantizer::LayerDriver;
using quantizer::QuantizedLinear;

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::unique_ptr<engine::LlamaModel> load_tiny(const fs::path& dir) {
  write_tiny_hf_model(dir);
  engine::ModelInfo info = engine::inspect_model_source(dir);
  engine::LoadOptions lo;
  lo.n_threads = 2;
  return engine::LlamaModel::load(info.files, lo);
}

std::vector<std::vector<int32_t>> windows_for(const engine::LlamaModel& m, int64_t n, int64_t seqlen) {
  const std::string text = read_file(shared_data_dir() / "wikitext-2-raw" / "wiki.valid.raw").substr(0, 200000);
  std::vector<int32_t> tokens = quantizer::tokenize_corpus(m.tokenizer(), text);
  return quantizer::sample_windows(tokens, n, seqlen, 0);
}

// Runs a driver to its end.
void run(LayerDriver& d) {
  int guard = 0;
  while (d.step()) ASSERT_LT(++guard, 1000000);
}

TEST(CalibrationTest, WindowsAreSeededSlicesOfTheText) {
  std::vector<int32_t> tokens(1000);
  for (size_t i = 0; i < tokens.size(); ++i) tokens[i] = static_cast<int32_t>(i);
  auto a = quantizer::sample_windows(tokens, 16, 100, 0);
  auto b = quantizer::sample_windows(tokens, 16, 100, 0);
  auto c = quantizer::sample_windows(tokens, 16, 100, 1);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  ASSERT_EQ(a.size(), 16u);
  std::set<int32_t> starts;
  for (const auto& w : a) {
    ASSERT_EQ(w.size(), 100u);
    EXPECT_LE(w.front(), 1000 - 100 - 1);  // the reference's randint(0, L - seqlen - 1)
    for (size_t i = 1; i < w.size(); ++i) EXPECT_EQ(w[i], w[i - 1] + 1);
    starts.insert(w.front());
  }
  EXPECT_GT(starts.size(), 8u);
  // Exactly long enough (seqlen + 1 tokens) works; shorter is a clear error, never a shrink.
  EXPECT_NO_THROW(quantizer::sample_windows(std::span(tokens).first(101), 2, 100, 0));
  try {
    quantizer::sample_windows(std::span(tokens).first(100), 2, 100, 0);
    FAIL() << "accepted a text shorter than seqlen + 1";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
    EXPECT_NE(std::string(e.what()).find("has 100 tokens"), std::string::npos) << e.what();
  }
  EXPECT_THROW(quantizer::sample_windows(tokens, 0, 100, 0), Error);
  EXPECT_THROW(quantizer::sample_windows(tokens, 1, 1, 0), Error);
}

TEST(LayerPassTest, AgreesWithTheEngineForward) {
  TempDir dir;
  auto model = load_tiny(dir.path() / "m");
  const engine::ModelConfig& c = model->config();
  std::vector<int32_t> tokens = {256, 72, 101, 108, 108, 111, 32, 260, 259, 100, 50, 51};
  const int64_t T = static_cast<int64_t>(tokens.size());
  engine::Session session(*model, 64);
  std::vector<float> logits;
  model->forward(session, tokens, true, logits);

  engine::LayerPass pass(*model);
  std::vector<float> x(static_cast<size_t>(T * c.hidden_size));
  pass.embed(tokens.data(), T, x.data());
  for (const auto& L : model->weights().layers) pass.run(L, x.data(), T, x.data());
  std::vector<float> h(x.size()), out(static_cast<size_t>(T * c.vocab_size));
  model->backend().rms_norm(x.data(), model->weights().norm.data(), T, c.hidden_size,
                            static_cast<float>(c.rms_norm_eps), h.data());
  model->backend().matmul(model->weights().output(), h.data(), T, out.data());
  ASSERT_EQ(out.size(), logits.size());
  for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], logits[i], 1e-4) << i;
}

// The Hessian of the linears fed by `input` over every window, accumulated independently.
std::vector<float> hessian_of(const std::vector<std::vector<float>>& inputs, int64_t T, int64_t K) {
  quantizer::HessianAccumulator acc(K);
  for (const auto& x : inputs) acc.add(x.data(), T);
  return acc.hessian();
}

TEST(LayerDriverTest, EachStageSeesTheEarlierStagesQuantized) {
  TempDir dir;
  auto model = load_tiny(dir.path() / "m");
  const engine::ModelConfig& c = model->config();
  auto windows = windows_for(*model, 6, 48);
  quantizer::QuantizeOptions opt;
  opt.group_size = 16;
  const fs::path job = dir.path() / "job";
  fs::create_directories(job);
  LayerDriver d(*model, windows, quantizer::Method::gptq, opt, job, 0);
  run(d);
  EXPECT_EQ(d.progress().stage, "done");
  EXPECT_DOUBLE_EQ(d.progress().fraction, 1.0);
  ASSERT_TRUE(fs::exists(LayerDriver::layer_file(job, 1)));

  // Recompute layer 0 by hand: q from attn_norm(embeddings) of the source; o from attention
  // with the QUANTIZED q/k/v as the driver wrote them.
  const int64_t T = 48, H = c.hidden_size, Q = c.n_heads * c.head_dim, KV = c.n_kv_heads * c.head_dim;
  engine::LayerPass pass(*model);
  engine::LayerWeights L = model->weights().layers[0];
  auto to_f32 = [](engine::DenseMatrix& m) {
    if (!m.is_f16()) return;
    m.data.resize(static_cast<size_t>(m.rows * m.cols));
    for (int64_t r = 0; r < m.rows; ++r) m.row(r, m.data.data() + r * m.cols);
    m.data_f16.clear();
  };
  to_f32(L.qkv);
  to_f32(L.o);
  std::vector<std::vector<float>> xs, hs;
  for (const auto& w : windows) {
    std::vector<float> x(static_cast<size_t>(T * H)), h(static_cast<size_t>(T * H));
    pass.embed(w.data(), T, x.data());
    pass.attn_input(L, x.data(), T, h.data());
    xs.push_back(std::move(x));
    hs.push_back(std::move(h));
  }
  const std::vector<float> Hq = hessian_of(hs, T, H);
  QuantizedLinear q_written = LayerDriver::read_linear(job, 0, "self_attn.q_proj");
  std::span<const float> Wq(L.qkv.data.data(), static_cast<size_t>(Q * H));
  QuantizedLinear q_expected = quantizer::gptq_quantize(Wq, Q, H, quantizer::prepare_hessian(Hq, H, opt), opt);
  EXPECT_EQ(q_written.codes, q_expected.codes);
  EXPECT_EQ(q_written.scales, q_expected.scales);

  auto attention_inputs = [&](const engine::LayerWeights& layer) {
    std::vector<std::vector<float>> as;
    for (const auto& h : hs) {
      std::vector<float> a(static_cast<size_t>(T * Q));
      pass.attention(layer, h.data(), T, a.data());
      as.push_back(std::move(a));
    }
    return hessian_of(as, T, Q);
  };
  engine::LayerWeights Lq = L;
  int64_t row = 0;
  for (const char* name : {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}) {
    std::vector<float> w = quantizer::dequantize(LayerDriver::read_linear(job, 0, name), true);
    std::copy(w.begin(), w.end(), Lq.qkv.data.begin() + row * H);
    row += static_cast<int64_t>(w.size()) / H;
  }
  ASSERT_EQ(row, Q + 2 * KV);
  std::span<const float> Wo(L.o.data.data(), L.o.data.size());
  QuantizedLinear o_written = LayerDriver::read_linear(job, 0, "self_attn.o_proj");
  QuantizedLinear o_seq = quantizer::gptq_quantize(Wo, H, Q, quantizer::prepare_hessian(attention_inputs(Lq), Q, opt), opt);
  QuantizedLinear o_src = quantizer::gptq_quantize(Wo, H, Q, quantizer::prepare_hessian(attention_inputs(L), Q, opt), opt);
  EXPECT_EQ(o_written.codes, o_seq.codes) << "o_proj must be solved on activations of the quantized q/k/v";
  EXPECT_NE(o_written.codes, o_src.codes) << "the test cannot tell sequential from parallel capture";

  auto result = LayerDriver::read_layer_result(job, 1);
  ASSERT_EQ(result.linears.size(), 7u);
  EXPECT_EQ(result.linears[6].name, "mlp.down_proj");
  EXPECT_EQ(result.linears[6].in_features, c.intermediate_size);
  for (const auto& l : result.linears) EXPECT_GT(l.weight_error, 0.0);
}

TEST(LayerDriverTest, ResumedRunWritesTheSameBytes) {
  TempDir dir;
  auto model = load_tiny(dir.path() / "m");
  auto windows = windows_for(*model, 4, 32);
  quantizer::QuantizeOptions opt;
  opt.group_size = 16;
  opt.desc_act = true;
  const fs::path a = dir.path() / "a", b = dir.path() / "b";
  fs::create_directories(a);
  fs::create_directories(b);
  {
    LayerDriver d(*model, windows, quantizer::Method::gptq, opt, a, 0);
    run(d);
  }
  fs::copy_file(LayerDriver::layer_file(a, 0), LayerDriver::layer_file(b, 0));
  LayerDriver d(*model, windows, quantizer::Method::gptq, opt, b, 1);
  EXPECT_EQ(d.progress().stage, "embed");
  int64_t finished = 0;
  while (d.step()) {
    if (auto r = d.take_finished_layer()) {
      EXPECT_EQ(r->layer, 1);
      ++finished;
    }
  }
  if (d.take_finished_layer()) ++finished;
  EXPECT_EQ(finished, 1);
  // The seconds in the metadata differ; the tensors must not.
  for (const auto& name : quantizer::llama_linear_names()) {
    QuantizedLinear x = LayerDriver::read_linear(a, 1, name), y = LayerDriver::read_linear(b, 1, name);
    EXPECT_EQ(x.codes, y.codes) << name;
    EXPECT_EQ(x.scales, y.scales) << name;
    EXPECT_EQ(x.g_idx, y.g_idx) << name;
  }
  EXPECT_THROW(LayerDriver(*model, windows, quantizer::Method::gptq, opt, b, 3), Error);
}

TEST(LayerDriverTest, NanWeightsFailNamingTheLayerAndLinear) {
  TempDir dir;
  write_tiny_hf_model(dir.path() / "m");
  // Poison the first weight of layer 1's v_proj with an fp16 NaN, in place.
  const fs::path st = dir.path() / "m" / "model.safetensors";
  std::string bytes = read_file(st);
  uint64_t n_header = 0;
  std::memcpy(&n_header, bytes.data(), 8);
  const auto header = nlohmann::json::parse(bytes.substr(8, n_header));
  const uint64_t begin = header.at("model.layers.1.self_attn.v_proj.weight").at("data_offsets")[0];
  const uint16_t nan16 = 0x7E00;
  std::memcpy(bytes.data() + 8 + n_header + begin, &nan16, 2);
  std::ofstream(st, std::ios::binary | std::ios::trunc) << bytes;

  engine::ModelInfo info = engine::inspect_model_source(dir.path() / "m");
  auto model = engine::LlamaModel::load(info.files, {});
  quantizer::QuantizeOptions opt;
  opt.group_size = 16;
  for (auto method : {quantizer::Method::gptq, quantizer::Method::rtn}) {
    LayerDriver d(*model, windows_for(*model, 2, 16), method, opt, dir.path(), 0);
    try {
      while (d.step()) {
      }
      FAIL() << "NaN weights were quantized";
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::invalid_argument);
      EXPECT_NE(std::string(e.what()).find("layer 1 self_attn.v_proj"), std::string::npos) << e.what();
    }
    EXPECT_TRUE(fs::exists(LayerDriver::layer_file(dir.path(), 0))) << "layer 0 is fine and was written";
    EXPECT_FALSE(fs::exists(LayerDriver::layer_file(dir.path(), 1)));
  }
}

TEST(LayerDriverTest, RtnNeedsNoCalibrationAndMatchesRtnQuantize) {
  TempDir dir;
  auto model = load_tiny(dir.path() / "m");
  quantizer::QuantizeOptions opt;
  opt.group_size = 16;
  opt.bits = 8;
  LayerDriver d(*model, {}, quantizer::Method::rtn, opt, dir.path(), 0);
  run(d);
  engine::LayerWeights L = model->weights().layers[1];
  std::vector<float> down(static_cast<size_t>(L.down.rows * L.down.cols));
  for (int64_t r = 0; r < L.down.rows; ++r) L.down.row(r, down.data() + r * L.down.cols);
  QuantizedLinear expected = quantizer::rtn_quantize(down, L.down.rows, L.down.cols, opt);
  QuantizedLinear written = LayerDriver::read_linear(dir.path(), 1, "mlp.down_proj");
  EXPECT_EQ(written.codes, expected.codes);
  EXPECT_EQ(written.scales, expected.scales);
  EXPECT_EQ(written.zeros, expected.zeros);
  EXPECT_THROW(LayerDriver(*model, {}, quantizer::Method::gptq, opt, dir.path(), 0), Error);
}

}  // namespace
}  // namespace gptqd::test
