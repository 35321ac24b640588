// SPDX-License-Identifier: Apache-2.0
// GPTQ beats round-to-nearest on a real model (reference test, through a real gptqd): SmolLM2-135M
// from the test GGUF, dequantized to an fp16 Hugging Face folder by tests/reference/gguf_to_hf.py,
// calibrated on wikitext-2 validation and evaluated on the first windows of wikitext-2 test (the
// GPTQ paper's protocol with a fixed number of windows). At 4 and 3 bits with group size 128, the
// GPTQ result's perplexity is lower than the RTN result's. docs/quantization.md has the full table.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

TEST(QuantizeQuality, GptqBeatsRtnOnSmolLM2At4And3Bits) {
  GPTQD_REQUIRE_FILE(test_model_path());
  TempDir dir;
  const fs::path hf = dir.path() / "smollm2-f16";
  auto conv = run_command({python().string(), (source_dir() / "tests/reference/gguf_to_hf.py").string(),
                           test_model_path().string(), hf.string(), "--dtype", "float16"});
  ASSERT_EQ(conv.exit_code, 0) << conv.output;
  fs::create_directories(dir.path() / "d");
  DaemonProcess daemon(dir.path() / "d");
  ASSERT_TRUE(daemon.start({}, {"--threads", "2"})) << daemon.log();
  ASSERT_EQ(daemon.ctl({"pull", hf.string(), "--name", "smol"}).exit_code, 0);
  const fs::path wiki = shared_data_dir() / "wikitext-2-raw";
  ASSERT_EQ(daemon.ctl({"dataset", "add", "valid", (wiki / "wiki.valid.raw").string()}).exit_code, 0);
  ASSERT_EQ(daemon.ctl({"dataset", "add", "test", (wiki / "wiki.test.raw").string()}).exit_code, 0);

  auto quantize = [&](const std::string& method, int bits) {
    json req = {{"model", "smol"},    {"method", method},   {"bits", bits},         {"group_size", 128},
                {"calib", "valid"},   {"samples", 32},      {"seqlen", 512},        {"eval", "test"},
                {"eval_windows", 2},  {"eval_seqlen", 2048}, {"max_ppl_ratio", 100}, {"stream", true}};
    HttpReply r = http_request(daemon.socket(), "POST", "/api/quantize", req.dump(), std::chrono::seconds(1200));
    std::vector<json> events = ndjson(r.body);
    EXPECT_FALSE(events.empty()) << r.body;
    if (events.empty() || events.back()["event"] != "done") {
      ADD_FAILURE() << method << " " << bits << ": " << r.body.substr(r.body.size() > 500 ? r.body.size() - 500 : 0);
      return json();
    }
    return events.back()["quality"];
  };
  for (int bits : {4, 3}) {
    json rtn = quantize("rtn", bits), gptq = quantize("gptq", bits);
    ASSERT_TRUE(rtn.is_object() && gptq.is_object());
    const double source = rtn["source_ppl"];
    EXPECT_DOUBLE_EQ(gptq["source_ppl"].get<double>(), source) << "both evaluate the source on the same windows";
    EXPECT_GT(source, 5.0);
    EXPECT_LT(source, 40.0);
    const double r = rtn["result_ppl"], g = gptq["result_ppl"];
    EXPECT_LT(g, r) << bits << "-bit: GPTQ " << g << " vs RTN " << r << " (source " << source << ")";
    EXPECT_GT(g, source) << "quantization cannot be free at " << bits << " bits";
    std::printf("%d-bit g128: source %.4f, RTN %.4f, GPTQ %.4f\n", bits, source, r, g);
  }
}

}  // namespace
}  // namespace gptqd::test
