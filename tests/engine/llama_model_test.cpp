// SPDX-License-Identifier: Apache-2.0
// The CPU forward pass against an independent float64 numpy implementation (tests/reference/
// llama_numpy.py) on tiny models of every variant — GQA, tied embeddings, Qwen2 q/k/v biases,
// llama3 RoPE scaling, GPTQ weights — plus prefill == token by token, cache reuse == recompute,
// and the generation loop's stopping rules (engine tests).
#include "engine/llama_model.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "engine/error.h"
#include "engine/generate.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::engine {
namespace {

namespace fs = std::filesystem;

std::unique_ptr<LlamaModel> load_dir(const fs::path& dir) {
  LoadOptions o;
  o.n_threads = 2;
  return LlamaModel::load(inspect_model_source(dir).files, o);
}

// Reads a float64 .npy written by numpy.save (little-endian, C order).
std::vector<double> read_npy(const fs::path& p, std::vector<int64_t>* shape) {
  std::string bytes = test::read_file(p);
  EXPECT_EQ(bytes.substr(1, 5), "NUMPY");
  uint16_t header_len = 0;
  std::memcpy(&header_len, bytes.data() + 8, 2);
  std::string header = bytes.substr(10, header_len);
  EXPECT_NE(header.find("'descr': '<f8'"), std::string::npos) << header;
  auto open = header.find("'shape': (");
  auto close = header.find(')', open);
  std::string dims = header.substr(open + 10, close - open - 10);
  shape->clear();
  size_t pos = 0;
  while (pos < dims.size()) {
    size_t comma = dims.find(',', pos);
    std::string d = dims.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    if (d.find_first_not_of(' ') != std::string::npos) shape->push_back(std::stoll(d));
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  const size_t n = (bytes.size() - 10 - header_len) / 8;
  std::vector<double> v(n);
  std::memcpy(v.data(), bytes.data() + 10 + header_len, n * 8);
  return v;
}

// Relative L2 error of `got` against `want` over one row.
double rel_l2(const float* got, const double* want, int64_t n) {
  double diff = 0, norm = 0;
  for (int64_t i = 0; i < n; ++i) {
    diff += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(diff / norm);
}

std::vector<int32_t> some_ids(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(0, vocab - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = d(rng);
  return ids;
}

struct Variant {
  const char* name;
  test::TinyHfOptions options;
};

std::vector<Variant> variants() {
  std::vector<Variant> v;
  v.push_back({"llama_gqa", {}});
  test::TinyHfOptions tied;
  tied.tie_embeddings = true;
  v.push_back({"tied_embeddings", tied});
  test::TinyHfOptions qwen;
  qwen.family = "qwen2";
  v.push_back({"qwen2_qkv_bias", qwen});
  test::TinyHfOptions rope;
  rope.llama3_rope = true;
  v.push_back({"llama3_rope_scaling", rope});
  v.push_back({"gptq_4bit_g16", test::tiny_gptq_options()});
  test::TinyHfOptions act = test::tiny_gptq_options();
  act.gptq_act_order = true;
  v.push_back({"gptq_4bit_g16_act_order", act});
  test::TinyHfOptions q8 = act;
  q8.gptq_bits = 8;
  v.push_back({"gptq_8bit_g16_act_order", q8});
  test::TinyHfOptions q2 = test::tiny_gptq_options();
  q2.gptq_bits = 2;
  v.push_back({"gptq_2bit_g16", q2});
  test::TinyHfOptions mha;
  mha.shape.n_kv_heads = mha.shape.n_heads;  // plain multi-head attention
  mha.shape.n_layers = 3;
  v.push_back({"mha_3_layers", mha});
  return v;
}

class ForwardVsNumpy : public ::testing::TestWithParam<Variant> {};

// The numpy reference runs in float64; ours in fp32 with the same fp16 weights. Over two layers
// fp32 rounding leaves a relative error of order 1e-6; 1e-4 is loose enough for every BLAS
// summation order and tight enough that any wrong formula (RoPE layout, scaling, bias, GQA
// mapping, GPTQ zero offset) fails by orders of magnitude.
TEST_P(ForwardVsNumpy, LogitsMatch) {
  const Variant& v = GetParam();
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "m", v.options);
  auto model = load_dir(dir / "m");
  const int V = static_cast<int>(model->config().vocab_size);
  std::vector<int32_t> ids = some_ids(40, V, 7);
  nlohmann::json ids_json = ids;
  test::write_file(dir / "ids.json", ids_json.dump());
  auto r = test::run_command({test::python().string(), (test::source_dir() / "tests/reference/llama_numpy.py").string(),
                              (dir / "m").string(), (dir / "ids.json").string(), (dir / "ref.npy").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  std::vector<int64_t> shape;
  std::vector<double> ref = read_npy(dir / "ref.npy", &shape);
  ASSERT_EQ(shape, (std::vector<int64_t>{40, V}));

  Session s(*model, 128);
  std::vector<float> logits;
  model->forward(s, ids, true, logits);
  ASSERT_EQ(logits.size(), ref.size());
  double worst = 0;
  for (int64_t i = 0; i < 40; ++i) worst = std::max(worst, rel_l2(logits.data() + i * V, ref.data() + i * V, V));
  EXPECT_LT(worst, 1e-4) << v.name;
  // The test is only meaningful if the logits are far from trivial.
  double spread = 0;
  for (int64_t j = 0; j < V; ++j) spread = std::max(spread, std::abs(ref[static_cast<size_t>(j)]));
  EXPECT_GT(spread, 0.1) << "reference logits are degenerate";
}

INSTANTIATE_TEST_SUITE_P(Variants, ForwardVsNumpy, ::testing::ValuesIn(variants()),
                         [](const auto& param_info) { return std::string(param_info.param.name); });

// GPTQ linears kept packed (INT4 kernels: the direct kernel, or dequantized tiles + BLAS for
// prefill on CPUs without AVX-512) give the logits of the same model dequantized to fp32 at load,
// in far less memory. Only the summation differs (the kernels factor s*(sum q*x - z*sum x), and
// the AVX-512 one accumulates 1 + q/2^bits): 1e-4 relative, as in ForwardVsNumpy, leaves room
// for that and is orders of magnitude below what a wrong group, permutation or packing gives
// (single codes are the kernel tests' job: tests/kernels/gptq_gemm_test.cpp).
TEST(LlamaModel, GptqKernelsMatchDequantizedWeights) {
  for (int bits : {4, 8}) {
    SCOPED_TRACE(bits);
    test::TempDir dir;
    test::TinyHfOptions o = test::tiny_gptq_options();
    o.gptq_bits = bits;
    o.gptq_act_order = true;
    o.shape.hidden = 64;
    o.shape.intermediate = 192;
    test::write_tiny_hf_model(dir / "m", o);
    const auto files = inspect_model_source(dir / "m").files;
    LoadOptions packed_opts, dense_opts;
    packed_opts.n_threads = dense_opts.n_threads = 2;
    dense_opts.keep_f16 = false;
    auto packed = LlamaModel::load(files, packed_opts);
    auto dense = LlamaModel::load(files, dense_opts);
    const LayerWeights& pl = packed->weights().layers[0];
    const LayerWeights& dl = dense->weights().layers[0];
    ASSERT_TRUE(pl.qkv.is_gptq());
    ASSERT_EQ(pl.qkv.gptq.size(), 3u);  // q, k, v each with its own permutation
    ASSERT_FALSE(dl.qkv.is_gptq());
    // Packed: bits/8 bytes per weight plus fp16 scale and zero per 16-weight group, against 4 bytes.
    const double per_weight = static_cast<double>(pl.gate_up.size_bytes()) / static_cast<double>(pl.gate_up.rows * pl.gate_up.cols);
    EXPECT_LT(per_weight, bits / 8.0 + 0.26 + 0.05);
    EXPECT_EQ(dl.gate_up.size_bytes(), static_cast<uint64_t>(dl.gate_up.rows * dl.gate_up.cols * 4));
    // Rows unpack exactly to the dense ones.
    std::vector<float> a(static_cast<size_t>(pl.down.cols)), b(a.size());
    for (int64_t r = 0; r < pl.down.rows; ++r) {
      pl.down.row(r, a.data());
      dl.down.row(r, b.data());
      ASSERT_EQ(a, b) << "row " << r;
    }
    const int64_t V = packed->config().vocab_size;
    const std::vector<int32_t> ids = some_ids(24, static_cast<int>(V), 5);
    Session sp(*packed, 64), sd(*dense, 64);
    std::vector<float> lp, ld;
    packed->forward(sp, std::span<const int32_t>(ids).first(20), true, lp);  // prefill: M = 20
    dense->forward(sd, std::span<const int32_t>(ids).first(20), true, ld);
    for (int64_t i = 0; i < 20; ++i) {
      EXPECT_LT(rel_l2(lp.data() + i * V, std::vector<double>(ld.begin() + i * V, ld.begin() + (i + 1) * V).data(), V), 1e-4);
    }
    for (size_t i = 20; i < ids.size(); ++i) {  // decode: M = 1
      packed->forward(sp, std::span<const int32_t>(&ids[i], 1), false, lp);
      dense->forward(sd, std::span<const int32_t>(&ids[i], 1), false, ld);
      EXPECT_LT(rel_l2(lp.data(), std::vector<double>(ld.begin(), ld.end()).data(), V), 1e-4) << "token " << i;
    }
  }
}

TEST(LlamaModel, PrefillThenDecodeEqualsTokenByToken) {
  test::TempDir dir;
  test::TinyHfOptions o;
  o.shape.context = 512;
  test::write_tiny_hf_model(dir / "m", o);
  auto model = load_dir(dir / "m");
  const int64_t V = model->config().vocab_size;
  std::vector<int32_t> ids = some_ids(300, static_cast<int>(V), 3);  // > one 256-token chunk

  Session all(*model, 512);
  std::vector<float> batch;
  model->forward(all, ids, true, batch);

  // Prefill the first 100 in one call, then one token at a time.
  Session step(*model, 512);
  std::vector<float> logits;
  model->forward(step, std::span<const int32_t>(ids).first(100), true, logits);
  for (int64_t i = 0; i < 100; ++i) {
    EXPECT_LT(rel_l2(logits.data() + i * V, std::vector<double>(batch.begin() + i * V, batch.begin() + (i + 1) * V).data(), V),
              1e-5);
  }
  for (size_t i = 100; i < ids.size(); ++i) {
    model->forward(step, std::span<const int32_t>(&ids[i], 1), false, logits);
    std::vector<double> want(batch.begin() + static_cast<int64_t>(i) * V, batch.begin() + static_cast<int64_t>(i + 1) * V);
    ASSERT_LT(rel_l2(logits.data(), want.data(), V), 1e-5) << "position " << i;
  }
  EXPECT_EQ(step.pos(), 300);
  EXPECT_EQ(step.tokens(), ids);
}

TEST(LlamaModel, RejectsBadTokensAndFullContexts) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "m");
  auto model = load_dir(dir / "m");
  Session s(*model, 8);
  std::vector<float> logits;
  std::vector<int32_t> bad = {1, 100000};
  EXPECT_THROW(model->forward(s, bad, false, logits), Error);
  EXPECT_EQ(s.pos(), 0) << "a rejected call must not advance the session";
  std::vector<int32_t> nine(9, 5);
  EXPECT_THROW(model->forward(s, nine, false, logits), Error);
  EXPECT_THROW(Session(*model, 0), Error);
  EXPECT_THROW(Session(*model, 1 << 20), Error);  // beyond max_position_embeddings
}

TEST(Generate, CacheReuseEqualsRecompute) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "m");
  auto model = load_dir(dir / "m");
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.max_tokens = 12;
  auto collect = [](std::string& out) { return [&out](std::string_view t) { out += t; return true; }; };

  // First turn, then a second prompt that extends the first: the cached prefix is reused.
  std::vector<int32_t> p1 = some_ids(30, 256, 11);
  std::vector<int32_t> p2 = p1;
  for (int32_t t : some_ids(10, 256, 12)) p2.push_back(t);
  Session reused(*model, 128);
  std::string text1, text2, fresh_text;
  generate(*model, reused, p1, o, collect(text1));
  GenerateStats second = generate(*model, reused, p2, o, collect(text2));
  EXPECT_EQ(second.n_prompt_cached, 30);

  Session fresh(*model, 128);
  GenerateStats recomputed = generate(*model, fresh, p2, o, collect(fresh_text));
  EXPECT_EQ(recomputed.n_prompt_cached, 0);
  EXPECT_EQ(second.tokens, recomputed.tokens);
  EXPECT_EQ(text2, fresh_text);
}

TEST(Generate, StopsAtMaxTokensEosAndContext) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "m");
  auto model = load_dir(dir / "m");
  GenerateOptions o;
  o.sampling.temperature = 0;
  o.sampling.repeat_penalty = 1.0;
  std::string text;
  auto sink = [&text](std::string_view t) { text += t; return true; };

  o.max_tokens = 5;
  Session s1(*model, 64);
  GenerateStats st = generate(*model, s1, some_ids(8, 256, 1), o, sink);
  EXPECT_EQ(st.n_generated, 5);
  EXPECT_EQ(st.done_reason, "length");

  o.max_tokens = -1;  // until the 64-token context is full
  Session s2(*model, 64);
  st = generate(*model, s2, some_ids(8, 256, 1), o, sink);
  EXPECT_EQ(st.done_reason, "length");
  // The cache holds all 64 positions; the last token is predicted from them and needs no slot.
  EXPECT_EQ(st.n_prompt + st.n_generated, 65);
  EXPECT_EQ(s2.pos(), 64);

  o.max_tokens = 0;
  Session s3(*model, 64);
  st = generate(*model, s3, some_ids(8, 256, 1), o, sink);
  EXPECT_EQ(st.n_generated, 0);

  // A callback that says stop cancels at once.
  o.max_tokens = 50;
  Session s4(*model, 64);
  int calls = 0;
  st = generate(*model, s4, some_ids(8, 256, 1), o, [&calls](std::string_view) { return ++calls < 3; });
  EXPECT_EQ(st.done_reason, "cancelled");
  EXPECT_LE(st.n_generated, 4);

  // A prompt longer than the context is an error, never silently cut.
  Session small(*model, 16);
  EXPECT_THROW(generate(*model, small, some_ids(20, 256, 1), o, sink), Error);
}

TEST(Generate, SameSeedSameText) {
  test::TempDir dir;
  test::write_tiny_hf_model(dir / "m");
  auto model = load_dir(dir / "m");
  GenerateOptions o;
  o.sampling.temperature = 1.0;
  o.sampling.seed = 42;
  o.max_tokens = 20;
  auto run = [&](uint64_t seed) {
    o.sampling.seed = seed;
    Session s(*model, 64);
    return generate(*model, s, some_ids(5, 256, 9), o, [](std::string_view) { return true; }).tokens;
  };
  EXPECT_EQ(run(42), run(42));
  EXPECT_NE(run(42), run(43));
}

TEST(LlamaModel, LoadsTinyGguf) {
  test::TempDir dir;
  test::write_tiny_gguf(dir / "tiny.gguf");
  auto model = load_dir(dir / "tiny.gguf");
  Session s(*model, 32);
  std::vector<float> logits;
  std::vector<int32_t> ids = {1, 2, 3};
  model->forward(s, ids, false, logits);
  for (float x : logits) ASSERT_TRUE(std::isfinite(x));
  EXPECT_EQ(model->tokenizer().bos_id(), test::kTinyBos);
}

}  // namespace
}  // namespace gptqd::engine
