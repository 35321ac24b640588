// SPDX-License-Identifier: Apache-2.0
// QuantizeTask: the device-side half of a quantize job (daemon layer). On the device worker, in
// small steps interleaved with other requests: calibration windows, the layer-by-layer driver
// (each finished layer durable under jobs/<id>/), the GPTQ checkpoint, then the quality report
// (perplexity of source and result on held-out text, a greedy smoke prompt). The io thread
// registers the result; this task never touches the registry.
#pragma once

#include <chrono>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "daemon/device_worker.h"
#include "daemon/protocol.h"
#include "engine/perplexity.h"
#include "quantizer/driver.h"

namespace gptqd::daemon {

struct QuantizeSpec {
  int64_t job_id = 0;
  protocol::QuantizeRequest request;        // validated
  std::string calib_text;                   // joined rows ("" for RTN without a calibration set)
  std::string eval_text;                    // "": hold out the tail of calib_text
  std::filesystem::path job_dir;            // jobs/<id>/: finished layers
  std::filesystem::path out_dir;            // tmp/job-<id>-out: the checkpoint (must not exist)
  int64_t n_done_layers = 0;                // resume point
  int n_threads = 0;                        // for loading the result model
};

struct QuantizeEvent {
  enum class Kind { progress, layer, done, error };
  Kind kind = Kind::progress;
  quantizer::DriverProgress progress;       // progress ("stage" also checkpoint, eval-source, ...)
  quantizer::LayerResult layer;             // layer
  nlohmann::json quality;                   // done: the report, incl. "state"
  std::string error;                        // error
  ErrorCode code = ErrorCode::internal;
};

class QuantizeTask final : public Task {
 public:
  QuantizeTask(ModelHandle source, QuantizeSpec spec, std::function<void(QuantizeEvent)> emit);
  bool step(WorkerModel& m, bool fresh_load) override;
  void abort(ErrorCode code, const std::string& message) override;
  int64_t job_id() const { return spec_.job_id; }

 private:
  enum class Phase { prepare, layers, checkpoint, eval_source, load_result, eval_result, smoke, finished };
  void prepare(const engine::LlamaModel& source);
  void emit_progress(const std::string& stage, int64_t done, int64_t total, double fraction, bool force);
  nlohmann::json quality_report();

  QuantizeSpec spec_;
  std::function<void(QuantizeEvent)> emit_;
  Phase phase_ = Phase::prepare;
  std::unique_ptr<quantizer::LayerDriver> driver_;
  std::vector<int32_t> eval_tokens_;
  std::unique_ptr<engine::PerplexityEvaluator> evaluator_;
  std::optional<engine::PerplexityResult> source_ppl_, result_ppl_;
  std::unique_ptr<engine::LlamaModel> result_;
  std::vector<quantizer::LinearReport> linears_;  // every layer's, for the report
  std::string smoke_source_, smoke_result_;
  std::chrono::steady_clock::time_point last_progress_{};
  std::string last_stage_;
  bool finished_ = false;
};

}  // namespace gptqd::daemon
