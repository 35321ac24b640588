// SPDX-License-Identifier: Apache-2.0
// LayerDriver: the layer-by-layer GPTQ state machine (quantizer layer).
#include "quantizer/driver.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <map>
#include <span>

#include "engine/error.h"
#include "engine/safetensors.h"

namespace gptqd::quantizer {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// The phases of one layer, in order. RTN uses solve_all and write only.
enum class Phase { embed, replay, capture_qkv, solve_qkv, capture_o, solve_o, capture_gate_up, solve_gate_up,
                   capture_down, solve_down, forward, solve_all, write, done };

const char* stage_name(Phase p) {
  switch (p) {
    case Phase::embed: return "embed";
    case Phase::replay: return "replay";
    case Phase::capture_qkv: case Phase::solve_qkv: return "qkv";
    case Phase::capture_o: case Phase::solve_o: return "o";
    case Phase::capture_gate_up: case Phase::solve_gate_up: return "gate_up";
    case Phase::capture_down: case Phase::solve_down: return "down";
    case Phase::forward: return "forward";
    case Phase::solve_all: return "rtn";
    case Phase::write: return "write";
    case Phase::done: return "done";
  }
  return "?";
}

// Which rows of which fused engine matrix hold a linear.
struct LinearSlot {
  engine::DenseMatrix* matrix;
  int64_t row0;
  int64_t rows;
};

void to_f32(engine::DenseMatrix& m) {
  if (!m.is_f16()) return;
  std::vector<float> data(static_cast<size_t>(m.rows * m.cols));
  for (int64_t r = 0; r < m.rows; ++r) m.row(r, data.data() + r * m.cols);
  m.data = std::move(data);
  m.data_f16.clear();
  m.data_f16.shrink_to_fit();
}

std::string meta_or_throw(const engine::SafetensorsFile& f, const std::string& key, const std::filesystem::path& p) {
  auto it = f.metadata().find(key);
  if (it == f.metadata().end()) fail(ErrorCode::invalid_model, p.string(), ": no \"", key, "\" in __metadata__");
  return it->second;
}

}  // namespace

const char* to_string(Method m) { return m == Method::gptq ? "gptq" : "rtn"; }

nlohmann::json LinearReport::to_json() const {
  return {{"name", name},
          {"out_features", out_features},
          {"in_features", in_features},
          {"loss", loss},
          {"weight_error", weight_error},
          {"damp_percent", damp_percent},
          {"damp_attempts", damp_attempts},
          {"rtn_fallback", rtn_fallback},
          {"dead_columns", n_dead},
          {"seconds", seconds}};
}

LinearReport LinearReport::from_json(const nlohmann::json& j) {
  LinearReport r;
  r.name = j.at("name").get<std::string>();
  r.out_features = j.at("out_features").get<int64_t>();
  r.in_features = j.at("in_features").get<int64_t>();
  r.loss = j.at("loss").get<double>();
  r.weight_error = j.at("weight_error").get<double>();
  r.damp_percent = j.at("damp_percent").get<double>();
  r.damp_attempts = j.at("damp_attempts").get<int>();
  r.rtn_fallback = j.at("rtn_fallback").get<bool>();
  r.n_dead = j.at("dead_columns").get<int64_t>();
  r.seconds = j.at("seconds").get<double>();
  return r;
}

struct LayerDriver::State {
  State(const engine::LlamaModel& m) : model(m), pass(m) {}

  const engine::LlamaModel& model;
  engine::LayerPass pass;
  std::vector<std::vector<int32_t>> calib;
  Method method = Method::gptq;
  QuantizeOptions opt;
  std::filesystem::path job_dir;
  int64_t n_layers = 0, n_done = 0;
  int64_t S = 0, T = 0, H = 0, Q = 0, KV = 0, I = 0;

  std::vector<float> inps, attn, mid, h, act;  // [S,T,H] [S,T,Q] [S,T,H] [T,H] [T,I]

  Phase phase = Phase::embed;
  int64_t layer = 0;     // current layer (or the layer being replayed)
  int64_t unit = 0;      // sample or linear index within the phase
  engine::LayerWeights L;  // fp32 working copy of the current layer
  std::optional<HessianAccumulator> acc;
  PreparedHessian prepared;
  std::map<std::string, QuantizedLinear> results;
  std::vector<LinearReport> reports;
  Clock::time_point layer_t0;
  std::optional<LayerResult> finished;

  float* sample(std::vector<float>& buf, int64_t s, int64_t width) { return buf.data() + s * T * width; }

  LinearSlot slot(const std::string& name) {
    if (name == "self_attn.q_proj") return {&L.qkv, 0, Q};
    if (name == "self_attn.k_proj") return {&L.qkv, Q, KV};
    if (name == "self_attn.v_proj") return {&L.qkv, Q + KV, KV};
    if (name == "self_attn.o_proj") return {&L.o, 0, H};
    if (name == "mlp.gate_proj") return {&L.gate_up, 0, I};
    if (name == "mlp.up_proj") return {&L.gate_up, I, I};
    return {&L.down, 0, H};
  }

  // The working copy of layer `li` in fp32, with every linear already quantized in job_dir
  // when `quantized` (a replay), else the source's weights.
  void load_layer(int64_t li, bool quantized) {
    L = model.weights().layers[static_cast<size_t>(li)];
    to_f32(L.qkv);
    to_f32(L.o);
    to_f32(L.gate_up);
    to_f32(L.down);
    if (!quantized) return;
    for (const std::string& name : llama_linear_names()) {
      QuantizedLinear q = read_linear(job_dir, li, name);
      store(name, q, dequantize(q, /*fp16_scales=*/true));
    }
  }

  // Replaces the linear's rows with `w`, its dequantized weights with fp16 scales (what an engine
  // loading the checkpoint computes), so later stages and layers see the deployed weights.
  void store(const std::string& name, const QuantizedLinear& q, const std::vector<float>& w) {
    LinearSlot sl = slot(name);
    if (q.N != sl.rows || q.K != sl.matrix->cols) {
      fail(ErrorCode::invalid_model, "layer ", layer, " ", name, ": quantized shape [", q.N, ", ", q.K,
           "] does not match the model's [", sl.rows, ", ", sl.matrix->cols, "]");
    }
    std::memcpy(sl.matrix->data.data() + sl.row0 * sl.matrix->cols, w.data(), w.size() * sizeof(float));
  }

  void solve(const std::string& name) {
    const auto t0 = Clock::now();
    LinearSlot sl = slot(name);
    const int64_t K = sl.matrix->cols;
    std::span<const float> W(sl.matrix->data.data() + sl.row0 * K, static_cast<size_t>(sl.rows * K));
    QuantizedLinear q;
    try {
      q = method == Method::gptq ? gptq_quantize(W, sl.rows, K, prepared, opt) : rtn_quantize(W, sl.rows, K, opt);
    } catch (const Error& e) {
      fail(e.code(), "layer ", layer, " ", name, ": ", e.what());  // e.g. NaN weights in the source
    }
    LinearReport r;
    r.name = name;
    r.out_features = sl.rows;
    r.in_features = K;
    r.loss = q.loss;
    r.damp_percent = q.damp_percent_used;
    r.damp_attempts = q.damp_attempts;
    r.rtn_fallback = q.rtn_fallback;
    r.n_dead = q.n_dead;
    const std::vector<float> deq = dequantize(q, /*fp16_scales=*/true);
    double num = 0, den = 0;
    for (size_t i = 0; i < deq.size(); ++i) {
      const double d = static_cast<double>(W[i]) - deq[i];
      num += d * d;
      den += static_cast<double>(W[i]) * W[i];
    }
    r.weight_error = den > 0 ? std::sqrt(num / den) : 0.0;
    store(name, q, deq);
    r.seconds = seconds_since(t0);
    reports.push_back(r);
    results[name] = std::move(q);
  }

  void write_layer() {
    std::vector<engine::StWriteTensor> tensors;
    nlohmann::json report = nlohmann::json::array();
    auto bytes = [](const auto& v) {
      return std::as_bytes(std::span(v.data(), v.size()));
    };
    for (const std::string& name : llama_linear_names()) {
      const QuantizedLinear& q = results.at(name);
      const int64_t G = q.n_groups();
      tensors.push_back({name + ".codes", engine::StDtype::U8, {q.N, q.K}, bytes(q.codes)});
      tensors.push_back({name + ".scales", engine::StDtype::F32, {q.N, G}, bytes(q.scales)});
      tensors.push_back({name + ".zeros", engine::StDtype::U8, {q.N, G}, bytes(q.zeros)});
      tensors.push_back({name + ".g_idx", engine::StDtype::I32, {q.K}, bytes(q.g_idx)});
    }
    for (const LinearReport& r : reports) report.push_back(r.to_json());
    const double secs = seconds_since(layer_t0);
    std::map<std::string, std::string> meta = {{"layer", std::to_string(layer)},
                                               {"method", to_string(method)},
                                               {"bits", std::to_string(opt.bits)},
                                               {"group_size", std::to_string(opt.group_size)},
                                               {"seconds", std::to_string(secs)},
                                               {"linears", report.dump()}};
    engine::write_safetensors(layer_file(job_dir, layer), tensors, meta);
    finished = LayerResult{layer, reports, secs};
    results.clear();
    reports.clear();
  }

  void begin_layer(int64_t li) {
    layer = li;
    unit = 0;
    layer_t0 = Clock::now();
    if (li >= n_layers) {
      phase = Phase::done;
      return;
    }
    load_layer(li, false);
    phase = method == Method::gptq ? Phase::capture_qkv : Phase::solve_all;
  }

  void start_capture(int64_t K) {
    acc.emplace(K, model.backend().n_threads());
    unit = 0;
  }

  void finish_capture(Phase next) {
    prepared = prepare_hessian(acc->hessian(), acc->K(), opt);
    acc.reset();
    phase = next;
    unit = 0;
  }

  bool step() {
    switch (phase) {
      case Phase::embed: {
        pass.embed(calib[static_cast<size_t>(unit)].data(), T, sample(inps, unit, H));
        if (++unit == S) {
          unit = 0;
          layer = 0;
          if (n_done > 0) {
            phase = Phase::replay;
            load_layer(0, true);
          } else {
            begin_layer(0);
            start_capture(H);
          }
        }
        return true;
      }
      case Phase::replay: {
        float* x = sample(inps, unit, H);
        pass.run(L, x, T, x);
        if (++unit == S) {
          unit = 0;
          if (++layer < n_done) {
            load_layer(layer, true);
          } else {
            begin_layer(n_done);
            if (phase == Phase::capture_qkv) start_capture(H);
          }
        }
        return phase != Phase::done;
      }
      case Phase::capture_qkv: {
        pass.attn_input(L, sample(inps, unit, H), T, h.data());
        acc->add(h.data(), T);
        if (++unit == S) finish_capture(Phase::solve_qkv);
        return true;
      }
      case Phase::solve_qkv: {
        static const char* names[] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"};
        solve(names[unit]);
        if (++unit == 3) {
          phase = Phase::capture_o;
          start_capture(Q);
        }
        return true;
      }
      case Phase::capture_o: {
        pass.attn_input(L, sample(inps, unit, H), T, h.data());
        float* a = sample(attn, unit, Q);
        pass.attention(L, h.data(), T, a);
        acc->add(a, T);
        if (++unit == S) finish_capture(Phase::solve_o);
        return true;
      }
      case Phase::solve_o: {
        solve("self_attn.o_proj");
        phase = Phase::capture_gate_up;
        start_capture(H);
        return true;
      }
      case Phase::capture_gate_up: {
        float* m = sample(mid, unit, H);
        pass.attn_residual(L, sample(inps, unit, H), sample(attn, unit, Q), T, m);
        pass.mlp_input(L, m, T, h.data());
        acc->add(h.data(), T);
        if (++unit == S) finish_capture(Phase::solve_gate_up);
        return true;
      }
      case Phase::solve_gate_up: {
        solve(unit == 0 ? "mlp.gate_proj" : "mlp.up_proj");
        if (++unit == 2) {
          phase = Phase::capture_down;
          start_capture(I);
        }
        return true;
      }
      case Phase::capture_down: {
        pass.mlp_input(L, sample(mid, unit, H), T, h.data());
        pass.mlp_act(L, h.data(), T, act.data());
        acc->add(act.data(), T);
        if (++unit == S) finish_capture(Phase::solve_down);
        return true;
      }
      case Phase::solve_down: {
        solve("mlp.down_proj");
        phase = Phase::forward;
        unit = 0;
        return true;
      }
      case Phase::forward: {
        // The same calls, in the same order, as LayerPass::run makes from attn_residual on, so a
        // replay of this layer from its file gives bit-identical outputs.
        const float* m = sample(mid, unit, H);
        pass.mlp_input(L, m, T, h.data());
        pass.mlp_act(L, h.data(), T, act.data());
        pass.mlp_residual(L, m, act.data(), T, sample(inps, unit, H));
        if (++unit == S) {
          phase = Phase::write;
          unit = 0;
        }
        return true;
      }
      case Phase::solve_all: {
        solve(llama_linear_names()[static_cast<size_t>(unit)]);
        if (++unit == static_cast<int64_t>(llama_linear_names().size())) {
          phase = Phase::write;
          unit = 0;
        }
        return true;
      }
      case Phase::write: {
        write_layer();
        begin_layer(layer + 1);
        if (phase == Phase::capture_qkv) start_capture(H);
        return phase != Phase::done;
      }
      case Phase::done:
        return false;
    }
    return false;
  }

  DriverProgress progress() const {
    DriverProgress p;
    p.layer = phase == Phase::replay ? n_done : layer;
    p.n_layers = n_layers;
    p.stage = stage_name(phase);
    switch (phase) {
      case Phase::solve_qkv: p.total = 3; break;
      case Phase::solve_gate_up: p.total = 2; break;
      case Phase::solve_o: case Phase::solve_down: case Phase::write: p.total = 1; break;
      case Phase::solve_all: p.total = static_cast<int64_t>(llama_linear_names().size()); break;
      case Phase::done: p.total = 0; break;
      default: p.total = S;
    }
    p.done = unit;
    // Within a GPTQ layer: the 9 phases from capture_qkv to forward count evenly, a tenth each;
    // the last tenth is the write.
    double within = 0;
    if (phase == Phase::done) {
      p.fraction = 1;
      return p;
    }
    if (method == Method::gptq && phase >= Phase::capture_qkv && phase <= Phase::forward) {
      const int idx = static_cast<int>(phase) - static_cast<int>(Phase::capture_qkv);
      within = (idx + (p.total > 0 ? static_cast<double>(p.done) / static_cast<double>(p.total) : 0)) / 10.0;
    } else if (phase == Phase::solve_all) {
      within = static_cast<double>(p.done) / static_cast<double>(p.total);
    } else if (phase == Phase::write) {
      within = 0.95;
    }
    if (phase == Phase::embed || phase == Phase::replay) {
      p.fraction = static_cast<double>(n_done) / static_cast<double>(n_layers);
    } else {
      p.fraction = (static_cast<double>(layer) + within) / static_cast<double>(n_layers);
    }
    return p;
  }
};

LayerDriver::LayerDriver(const engine::LlamaModel& source, std::vector<std::vector<int32_t>> calibration,
                         Method method, const QuantizeOptions& options, std::filesystem::path job_dir,
                         int64_t n_done_layers)
    : s_(std::make_unique<State>(source)) {
  options.validate();
  State& s = *s_;
  const engine::ModelConfig& c = source.config();
  s.method = method;
  s.opt = options;
  s.job_dir = std::move(job_dir);
  s.n_layers = static_cast<int64_t>(source.weights().layers.size());
  if (n_done_layers < 0 || n_done_layers > s.n_layers) {
    fail(ErrorCode::invalid_argument, "resume point ", n_done_layers, " is outside [0, ", s.n_layers, "]");
  }
  s.n_done = n_done_layers;
  s.H = c.hidden_size;
  s.Q = c.n_heads * c.head_dim;
  s.KV = c.n_kv_heads * c.head_dim;
  s.I = c.intermediate_size;
  if (method == Method::rtn) {
    s.begin_layer(n_done_layers);
    return;
  }
  if (calibration.empty()) fail(ErrorCode::invalid_argument, "GPTQ needs calibration samples");
  s.T = static_cast<int64_t>(calibration.front().size());
  for (const auto& w : calibration) {
    if (static_cast<int64_t>(w.size()) != s.T || s.T < 1) {
      fail(ErrorCode::invalid_argument, "calibration windows must all have the same, non-zero length");
    }
  }
  s.S = static_cast<int64_t>(calibration.size());
  s.calib = std::move(calibration);
  if (n_done_layers == s.n_layers) {
    s.phase = Phase::done;
    s.layer = s.n_layers;
    return;
  }
  s.inps.resize(static_cast<size_t>(s.S * s.T * s.H));
  s.attn.resize(static_cast<size_t>(s.S * s.T * s.Q));
  s.mid.resize(static_cast<size_t>(s.S * s.T * s.H));
  s.h.resize(static_cast<size_t>(s.T * s.H));
  s.act.resize(static_cast<size_t>(s.T * s.I));
  s.phase = Phase::embed;
}

LayerDriver::~LayerDriver() = default;

bool LayerDriver::step() { return s_->step(); }

std::optional<LayerResult> LayerDriver::take_finished_layer() {
  std::optional<LayerResult> r = std::move(s_->finished);
  s_->finished.reset();
  return r;
}

DriverProgress LayerDriver::progress() const { return s_->progress(); }

std::filesystem::path LayerDriver::layer_file(const std::filesystem::path& job_dir, int64_t layer) {
  char name[32];
  std::snprintf(name, sizeof(name), "layer-%05lld.safetensors", static_cast<long long>(layer));
  return job_dir / name;
}

QuantizedLinear LayerDriver::read_linear(const std::filesystem::path& job_dir, int64_t layer, const std::string& name) {
  const std::filesystem::path p = layer_file(job_dir, layer);
  engine::SafetensorsFile f = engine::SafetensorsFile::open(p);
  QuantizedLinear q;
  q.bits = std::stoi(meta_or_throw(f, "bits", p));
  q.group_size = std::stoi(meta_or_throw(f, "group_size", p));
  auto get = [&](const std::string& suffix, engine::StDtype dtype, size_t rank) -> const engine::StTensor& {
    const engine::StTensor* t = f.find(name + suffix);
    if (!t || t->dtype != dtype || t->shape.size() != rank) {
      fail(ErrorCode::invalid_model, p.string(), ": tensor ", name, suffix, " is missing or malformed");
    }
    return *t;
  };
  const engine::StTensor& codes = get(".codes", engine::StDtype::U8, 2);
  const engine::StTensor& scales = get(".scales", engine::StDtype::F32, 2);
  const engine::StTensor& zeros = get(".zeros", engine::StDtype::U8, 2);
  const engine::StTensor& g_idx = get(".g_idx", engine::StDtype::I32, 1);
  q.N = codes.shape[0];
  q.K = codes.shape[1];
  if (scales.shape[0] != q.N || zeros.shape != scales.shape || g_idx.shape[0] != q.K) {
    fail(ErrorCode::invalid_model, p.string(), ": the tensors of ", name, " disagree on their shapes");
  }
  auto copy = [](const engine::StTensor& t, auto& out) {
    out.resize(t.bytes.size() / sizeof(out[0]));
    std::memcpy(out.data(), t.bytes.data(), t.bytes.size());
  };
  copy(codes, q.codes);
  copy(scales, q.scales);
  copy(zeros, q.zeros);
  copy(g_idx, q.g_idx);
  return q;
}

LayerResult LayerDriver::read_layer_result(const std::filesystem::path& job_dir, int64_t layer) {
  const std::filesystem::path p = layer_file(job_dir, layer);
  engine::SafetensorsFile f = engine::SafetensorsFile::open(p);
  LayerResult r;
  r.layer = layer;
  r.seconds = std::stod(meta_or_throw(f, "seconds", p));
  try {
    for (const auto& j : nlohmann::json::parse(meta_or_throw(f, "linears", p))) {
      r.linears.push_back(LinearReport::from_json(j));
    }
  } catch (const nlohmann::json::exception& e) {
    fail(ErrorCode::invalid_model, p.string(), ": bad linear reports: ", e.what());
  }
  return r;
}

}  // namespace gptqd::quantizer
