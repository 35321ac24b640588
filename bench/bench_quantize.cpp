// SPDX-License-Identifier: Apache-2.0
// Whole-model quantization time on the CPU: the layer driver over a real model, timed per layer
// and per stage (captures, solves, the forward that makes the next layer's inputs, the layer
// write), as gptqd's quantize job runs it minus the daemon (bench).
//
//   bench_quantize MODEL(.gguf|folder) --calib wiki.valid.raw [--samples 32] [--seqlen 512]
//                  [--threads 2] [--bits 4] [--group-size 128] [--act-order] [--method gptq|rtn]
//                  [--out DIR]   (also write the GPTQ checkpoint, e.g. for bench_generate)
#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "engine/llama_model.h"
#include "engine/model_source.h"
#include "engine/perplexity.h"
#include "quantizer/calibration.h"
#include "quantizer/checkpoint.h"
#include "quantizer/driver.h"

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_quantize: per-layer and per-stage time of a whole-model GPTQ run"};
  std::string model_path, calib_path, method = "gptq";
  int threads = 2, bits = 4, group_size = 128;
  int64_t samples = 32, seqlen = 512;
  bool act_order = false;
  app.add_option("model", model_path, "A .gguf file or a Hugging Face model folder")->required();
  app.add_option("--calib", calib_path, "Calibration text file")->required();
  app.add_option("--samples", samples)->capture_default_str();
  app.add_option("--seqlen", seqlen)->capture_default_str();
  app.add_option("--threads", threads)->capture_default_str();
  app.add_option("--bits", bits)->capture_default_str();
  app.add_option("--group-size", group_size)->capture_default_str();
  app.add_flag("--act-order", act_order);
  std::string out_dir;
  app.add_option("--out", out_dir, "Write the GPTQ checkpoint to this (new) folder");
  app.add_option("--method", method)->check(CLI::IsMember({"gptq", "rtn"}))->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  gptqd::engine::ModelInfo info = gptqd::engine::inspect_model_source(model_path);
  gptqd::engine::LoadOptions lo;
  lo.n_threads = threads;
  auto t0 = Clock::now();
  auto model = gptqd::engine::LlamaModel::load(info.files, lo);
  std::printf("load: %.2f s\n", seconds_since(t0));

  std::ifstream in(calib_path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  t0 = Clock::now();
  const std::string joined = gptqd::engine::join_rows_for_perplexity(text.str());
  std::vector<int32_t> tokens = gptqd::quantizer::tokenize_corpus(model->tokenizer(), joined);
  auto windows = gptqd::quantizer::sample_windows(tokens, samples, seqlen, 0);
  std::printf("tokenize + sample: %.2f s (%zu tokens)\n", seconds_since(t0), tokens.size());

  gptqd::quantizer::QuantizeOptions opt;
  opt.bits = bits;
  opt.group_size = group_size;
  opt.desc_act = act_order;
  const std::filesystem::path job = std::filesystem::temp_directory_path() / "gptqd-bench-quantize";
  std::filesystem::remove_all(job);
  std::filesystem::create_directories(job);
  gptqd::quantizer::LayerDriver driver(*model, std::move(windows),
                                       method == "gptq" ? gptqd::quantizer::Method::gptq : gptqd::quantizer::Method::rtn,
                                       opt, job, 0);
  // Time of each step, charged to the stage it ran in.
  std::map<std::string, double> by_stage;
  std::vector<double> per_layer;
  auto layer_t0 = Clock::now();
  const auto total_t0 = Clock::now();
  for (;;) {
    const gptqd::quantizer::DriverProgress p = driver.progress();
    std::string stage = p.stage;
    if (stage == "qkv" || stage == "o" || stage == "gate_up" || stage == "down") {
      stage += p.total == samples ? " capture" : " solve";
    }
    const auto s0 = Clock::now();
    const bool more = driver.step();
    by_stage[stage] += seconds_since(s0);
    if (driver.take_finished_layer()) {
      per_layer.push_back(seconds_since(layer_t0));
      layer_t0 = Clock::now();
    }
    if (!more) break;
  }
  const double total = seconds_since(total_t0);
  std::printf("\n| layer | seconds |\n|---:|---:|\n");
  for (size_t i = 0; i < per_layer.size(); ++i) std::printf("| %zu | %.2f |\n", i, per_layer[i]);
  std::printf("\n| stage | seconds | share |\n|---|---:|---:|\n");
  for (const auto& [stage, s] : by_stage) std::printf("| %s | %.2f | %.1f%% |\n", stage.c_str(), s, 100 * s / total);
  std::printf("\ntotal: %.2f s for %zu layers (%s, %lld x %lld tokens, %d threads)\n", total, per_layer.size(),
              method.c_str(), static_cast<long long>(samples), static_cast<long long>(seqlen), threads);
  if (!out_dir.empty()) {
    t0 = Clock::now();
    gptqd::quantizer::CheckpointSpec cs;
    cs.config.bits = bits;
    cs.config.group_size = group_size;
    cs.config.desc_act = act_order;
    std::map<std::string, std::pair<int64_t, std::string>> where;  // prefix -> (layer, name)
    for (int64_t l = 0; l < static_cast<int64_t>(per_layer.size()); ++l) {
      for (const std::string& name : gptqd::quantizer::llama_linear_names()) {
        where[gptqd::quantizer::linear_prefix(l, name)] = {l, name};
      }
    }
    auto linears = [&job, &where](const std::string& prefix) {
      const auto& [layer, name] = where.at(prefix);
      return gptqd::quantizer::LayerDriver::read_linear(job, layer, name);
    };
    gptqd::quantizer::write_gptq_checkpoint(info, linears, cs, out_dir);
    std::printf("checkpoint: %s (%.2f s)\n", out_dir.c_str(), seconds_since(t0));
  }
  std::filesystem::remove_all(job);
  return 0;
}
