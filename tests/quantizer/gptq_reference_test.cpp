// SPDX-License-Identifier: Apache-2.0
// The GPTQ solver against the independent numpy implementation tests/reference/gptq_reference.py
// (written from the same spec): random layers over every bits x sym x group size x act-order x
// static-groups combination, and real SmolLM2 layer-0 q_proj / down_proj weights with a Hessian
// from wikitext-2 activations (quantizer tests, label reference).
//
// Where the two sides differ is the inverse-Hessian chain: ours is fp32 LAPACK (potrf, potri,
// potrf) as the spec asks, while numpy.linalg computes on float32 input in float64 and rounds the
// result. On a well-conditioned H that changes nothing or a code or two; on a real, ill-conditioned
// one a code near a rounding boundary may flip and, through the error feedback, move later codes
// and later group ranges. The bounds below are set from measurements (noted where they are used).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "engine/backend.h"
#include "engine/gguf.h"
#include "engine/model_source.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "engine/weights.h"
#include "quantizer/gptq.h"
#include "tests/quantizer/gptq_test_util.h"
#include "tests/support/test_env.h"

namespace gptqd::quantizer {
namespace {

namespace fs = std::filesystem;
using engine::StDtype;
using test_util::Problem;

struct RefResult {
  std::vector<int32_t> codes;   // [N, K]
  std::vector<float> scales;    // [N, G]
  std::vector<int32_t> zeros;   // [N, G]
  std::vector<int32_t> g_idx;   // [K]
  std::vector<float> Q;         // [N, K]
  std::vector<int32_t> perm;    // [K]
  double loss = 0;
};

template <typename T>
std::span<const std::byte> bytes_of(const std::vector<T>& v) {
  return std::as_bytes(std::span<const T>(v));
}

template <typename T>
void read_tensor(const engine::SafetensorsFile& f, const char* name, StDtype dtype, std::vector<int64_t> shape,
                 std::vector<T>& out) {
  const engine::StTensor* t = f.find(name);
  ASSERT_NE(t, nullptr) << name;
  ASSERT_EQ(t->dtype, dtype) << name;
  ASSERT_EQ(t->shape, shape) << name;
  out.resize(t->n_elements);
  std::memcpy(out.data(), t->bytes.data(), t->bytes.size());
}

void run_reference(const Problem& p, const QuantizeOptions& o, RefResult& r) {
  test::TempDir dir;
  const std::vector<engine::StWriteTensor> in = {
      {"W", StDtype::F32, {p.N, p.K}, bytes_of(p.W)},
      {"H", StDtype::F32, {p.K, p.K}, bytes_of(p.H)},
  };
  engine::write_safetensors(dir / "in.safetensors", in);
  const nlohmann::json cfg = {{"bits", o.bits},       {"group_size", o.group_size},       {"sym", o.sym},
                              {"desc_act", o.desc_act}, {"static_groups", o.static_groups}, {"damp_percent", o.damp_percent},
                              {"block_size", o.block_size}, {"method", "gptq"}};
  const test::CommandResult run = test::run_command(
      {test::python().string(), (test::source_dir() / "tests" / "reference" / "gptq_reference.py").string(), "--input",
       (dir / "in.safetensors").string(), "--output", (dir / "out.safetensors").string(), "--config", cfg.dump()},
      // numpy's threaded OpenBLAS crawls on a small shared machine; the cases are small.
      {"OPENBLAS_NUM_THREADS=1"});
  ASSERT_EQ(run.exit_code, 0) << run.output;
  const auto f = engine::SafetensorsFile::open(dir / "out.safetensors");
  const int64_t G = o.n_groups(p.K);
  read_tensor(f, "codes", StDtype::I32, {p.N, p.K}, r.codes);
  read_tensor(f, "scales", StDtype::F32, {p.N, G}, r.scales);
  read_tensor(f, "zeros", StDtype::I32, {p.N, G}, r.zeros);
  read_tensor(f, "g_idx", StDtype::I32, {p.K}, r.g_idx);
  read_tensor(f, "Q", StDtype::F32, {p.N, p.K}, r.Q);
  read_tensor(f, "perm", StDtype::I32, {p.K}, r.perm);
  std::vector<double> loss;
  read_tensor(f, "loss", StDtype::F64, {1}, loss);
  if (!loss.empty()) r.loss = loss[0];
}

struct Agreement {
  double codes = 0;           // fraction of identical codes
  double scales = 0;          // fraction of scales within 1e-6 relative
  double scale_max_rel = 0;   // largest relative scale difference
  double first_group_max_rel = 0;  // the same over the first group solved (no error feedback yet)
  double zeros = 0;           // fraction of identical zero points
  double recon_rel = 0;       // |objective(ours) - objective(ref)| / objective(ref)
  double loss_rel = 0;
};

Agreement compare(const Problem& p, const QuantizeOptions& o, const RefResult& ref, const std::string& tag) {
  Agreement a;
  const PreparedHessian h = prepare_hessian(p.H, p.K, o);
  EXPECT_TRUE(h.ok()) << tag;
  EXPECT_EQ(h.damp_attempts, 1) << tag;
  const QuantizedLinear q = gptq_quantize(p.W, p.N, p.K, h, o);
  EXPECT_EQ(h.perm, ref.perm) << tag;
  EXPECT_EQ(q.g_idx, ref.g_idx) << tag;
  if (q.codes.size() != ref.codes.size() || q.scales.size() != ref.scales.size()) {
    ADD_FAILURE() << tag << ": shapes differ";
    return a;
  }
  size_t same = 0;
  for (size_t i = 0; i < q.codes.size(); ++i) same += q.codes[i] == ref.codes[i];
  a.codes = static_cast<double>(same) / static_cast<double>(q.codes.size());
  size_t scales_close = 0, zeros_same = 0;
  for (size_t i = 0; i < q.scales.size(); ++i) {
    const double rel = std::fabs(static_cast<double>(q.scales[i]) - ref.scales[i]) / std::fabs(ref.scales[i]);
    a.scale_max_rel = std::max(a.scale_max_rel, rel);
    scales_close += rel <= 1e-6;
    if (i % static_cast<size_t>(q.n_groups()) == 0) a.first_group_max_rel = std::max(a.first_group_max_rel, rel);
    zeros_same += q.zeros[i] == ref.zeros[i];
  }
  a.scales = static_cast<double>(scales_close) / static_cast<double>(q.scales.size());
  a.zeros = static_cast<double>(zeros_same) / static_cast<double>(q.zeros.size());
  const double ours = test_util::recon_error(p, dequantize(q, false));
  const double theirs = test_util::recon_error(p, ref.Q);
  a.recon_rel = std::fabs(ours - theirs) / theirs;
  a.loss_rel = std::fabs(q.loss - ref.loss) / ref.loss;
  std::cout << "[ gptq-ref ] " << tag << ": codes " << a.codes << ", scales " << a.scales << " (max rel diff "
            << a.scale_max_rel << ", first group " << a.first_group_max_rel << "), zeros " << a.zeros << ", objective rel diff " << a.recon_rel
            << ", loss rel diff " << a.loss_rel << "\n";
  return a;
}

std::string describe(const QuantizeOptions& o) {
  return "bits=" + std::to_string(o.bits) + (o.sym ? " sym" : " asym") + " gs=" + std::to_string(o.group_size) +
         (o.desc_act ? " act-order" : "") + (o.static_groups ? " static" : "");
}

// Folds `a` into the worst agreement seen so far.
void keep_worst(Agreement& worst, const Agreement& a) {
  worst.codes = std::min(worst.codes, a.codes);
  worst.scales = std::min(worst.scales, a.scales);
  worst.scale_max_rel = std::max(worst.scale_max_rel, a.scale_max_rel);
  worst.first_group_max_rel = std::max(worst.first_group_max_rel, a.first_group_max_rel);
  worst.zeros = std::min(worst.zeros, a.zeros);
  worst.recon_rel = std::max(worst.recon_rel, a.recon_rel);
  worst.loss_rel = std::max(worst.loss_rel, a.loss_rel);
}

TEST(GptqReference, RandomLayersEveryConfiguration) {
  GPTQD_REQUIRE_FILE(test::python());
  // K = 320: three blocks (the last partial), groups that straddle blocks (100) and partial last
  // groups (128, 100); feature 5 is dead.
  const Problem p = test_util::random_problem(48, 320, 1234, /*dead_feature=*/5);
  Agreement worst{1, 1, 0, 0, 1, 0, 0};
  int cases = 0;
  for (int bits : {2, 3, 4, 8}) {
    for (bool sym : {true, false}) {
      for (int gs : {32, 128, -1, 100}) {
        for (int mode = 0; mode < 4; ++mode) {
          QuantizeOptions o;
          o.bits = bits;
          o.sym = sym;
          o.group_size = gs;
          o.desc_act = mode & 1;
          o.static_groups = mode & 2;
          if (gs == -1 && o.static_groups) continue;  // static groups need gs > 0
          const std::string tag = describe(o);
          RefResult ref;
          run_reference(p, o, ref);
          if (HasFatalFailure()) return;
          const Agreement a = compare(p, o, ref, tag);
          // Measured: 109 of 112 cases identical; the worst flips 5 of 15360 codes (objective
          // 7.8e-5 apart); scales within 7.7e-7 relative, zero points identical.
          EXPECT_GE(a.codes, 0.999) << tag;
          EXPECT_GE(a.scales, 0.999) << tag;
          EXPECT_GE(a.zeros, 0.999) << tag;
          EXPECT_LT(a.recon_rel, 1e-4) << tag;
          EXPECT_LT(a.loss_rel, 1e-4) << tag;
          keep_worst(worst, a);
          ++cases;
        }
      }
    }
  }
  std::cout << "[ gptq-ref ] " << cases << " cases; worst: codes " << worst.codes << ", scales " << worst.scales
            << " (max rel diff " << worst.scale_max_rel << "), zeros " << worst.zeros << ", objective rel diff "
            << worst.recon_rel << ", loss rel diff " << worst.loss_rel << "\n";
}

// Layer 0 of SmolLM2-135M with the first 4096 wikitext-2 validation tokens. q_proj sees
// rms_norm(embedding) exactly; for down_proj the attention residual is left out (its input is
// silu(gate(x)) * up(x) of x = ffn_norm(embedding)): a realistic H, not the exact one.
class GptqReferenceSmolLM2 : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const fs::path corpus = test::shared_data_dir() / "wikitext-2-raw" / "wiki.valid.raw";
    if (!fs::exists(test::test_model_path()) || !fs::exists(corpus)) return;
    const engine::ModelInfo info = engine::inspect_model_source(test::test_model_path());
    const engine::LlamaWeights weights = engine::load_weights(info, /*keep_f16=*/false);
    const auto tokenizer = engine::load_tokenizer(engine::GgufFile::open(test::test_model_path().string()));
    const engine::ModelConfig& c = info.config;
    const int64_t D = c.hidden_size, I = c.intermediate_size;

    std::vector<int32_t> tokens = tokenizer->encode(test::read_file(corpus).substr(0, 40000), false);
    tokens.resize(std::min<size_t>(tokens.size(), kTokens));
    const auto T = static_cast<int64_t>(tokens.size());
    std::vector<float> x(static_cast<size_t>(T * D)), xn(x.size());
    for (int64_t t = 0; t < T; ++t) weights.embed.row(tokens[t], x.data() + t * D);
    const auto backend = engine::make_backend("cpu", 2);
    const engine::LayerWeights& L = weights.layers[0];
    const auto eps = static_cast<float>(c.rms_norm_eps);

    backend->rms_norm(x.data(), L.attn_norm.data(), T, D, eps, xn.data());
    HessianAccumulator hq(D);
    hq.add(xn.data(), T);
    q_proj_ = new Problem{c.n_heads * c.head_dim, D, rows(L.qkv, 0, c.n_heads * c.head_dim), hq.hessian()};

    backend->rms_norm(x.data(), L.ffn_norm.data(), T, D, eps, xn.data());
    std::vector<float> gate_up(static_cast<size_t>(T * 2 * I)), act(static_cast<size_t>(T * I));
    backend->matmul(L.gate_up, xn.data(), T, gate_up.data());
    backend->silu_mul(gate_up.data(), T, I, act.data());
    HessianAccumulator hd(I);
    hd.add(act.data(), T);
    down_proj_ = new Problem{D, I, rows(L.down, 0, D), hd.hessian()};
    n_tokens_ = T;
  }
  static void TearDownTestSuite() {
    delete q_proj_;
    delete down_proj_;
    q_proj_ = down_proj_ = nullptr;
  }
  void SetUp() override {
    GPTQD_REQUIRE_FILE(test::test_model_path());
    GPTQD_REQUIRE_FILE(test::shared_data_dir() / "wikitext-2-raw" / "wiki.valid.raw");
    GPTQD_REQUIRE_FILE(test::python());
    ASSERT_EQ(n_tokens_, static_cast<int64_t>(kTokens));
  }

  static std::vector<float> rows(const engine::DenseMatrix& m, int64_t r0, int64_t r1) {
    std::vector<float> out(static_cast<size_t>((r1 - r0) * m.cols));
    for (int64_t r = r0; r < r1; ++r) m.row(r, out.data() + (r - r0) * m.cols);
    return out;
  }

  static void check(const Problem& p, const char* name) {
    for (bool desc_act : {false, true}) {
      QuantizeOptions o;  // 4-bit, g128, sym
      o.desc_act = desc_act;
      const std::string tag = std::string(name) + " " + describe(o);
      RefResult ref;
      run_reference(p, o, ref);
      if (::testing::Test::HasFatalFailure()) return;
      const Agreement a = compare(p, o, ref, tag);
      // Measured: codes 99.997% / 99.986% (q_proj, without / with act-order) and 99.876% / 99.893%
      // (down_proj); objective within 3e-4. Later groups' scales inherit the flips through the
      // error feedback (up to 11% apart in a few groups); the first group has none yet.
      EXPECT_GE(a.codes, 0.998) << tag;
      EXPECT_LT(a.first_group_max_rel, 1e-6) << tag;
      EXPECT_EQ(a.zeros, 1.0) << tag;
      EXPECT_LT(a.recon_rel, 1e-3) << tag;
      EXPECT_LT(a.loss_rel, 1e-3) << tag;
    }
  }

  static constexpr size_t kTokens = 4096;
  static Problem* q_proj_;
  static Problem* down_proj_;
  static int64_t n_tokens_;
};

Problem* GptqReferenceSmolLM2::q_proj_ = nullptr;
Problem* GptqReferenceSmolLM2::down_proj_ = nullptr;
int64_t GptqReferenceSmolLM2::n_tokens_ = 0;

TEST_F(GptqReferenceSmolLM2, QProj) { check(*q_proj_, "layer0.q_proj"); }

TEST_F(GptqReferenceSmolLM2, DownProj) { check(*down_proj_, "layer0.down_proj"); }

}  // namespace
}  // namespace gptqd::quantizer
