// SPDX-License-Identifier: Apache-2.0
// `GET /api/gpu` and the kernel plan of `POST /api/show` (daemon layer): the machine's CPU and
// CUDA devices as the start-up probe found them, and for the loaded GPTQ models and a few common
// configurations, which INT4 kernel the dispatch table (kernels/dispatch.h) picks and why every
// other candidate was rejected.
#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>

#include "daemon/async_util.h"
#include "daemon/daemon.h"
#include "daemon/handler_support.h"
#include "daemon/log.h"
#include "engine/json_strict.h"
#include "engine/kernel_plan.h"
#include "kernels/dispatch.h"

namespace gptqd::daemon::handlers {

using boost::asio::awaitable;
using nlohmann::json;

namespace {

// How long `GET /api/gpu` waits for a probe still running before it answers "probing".
constexpr auto kProbeWait = std::chrono::seconds(2);
// The M values of the common table: decode, the GEMV kernel's edge, a prefill chunk.
constexpr int64_t kCommonM[] = {1, 16, 512};

// 12040 -> "12.4"; null when unknown.
json cuda_version(int v) {
  if (v <= 0) return nullptr;
  return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10);
}

json linear_json(const kernels::LinearDesc& l) {
  return {{"quantization", kernels::describe_quantization(l)},
          {"bits", l.bits},
          {"group_size", l.group_size},
          {"act_order", l.act_order},
          {"sym", l.sym},
          {"K", l.K},
          {"N", l.N}};
}

// The decision for one M: what runs, why, what would run with every kernel built, and every
// candidate with its verdict.
json choice_json(const kernels::DeviceDesc& device, const kernels::LinearDesc& l, int64_t m,
                 const kernels::Choice& c) {
  json candidates = json::array();
  std::string reason;
  for (const auto& cand : c.candidates) {
    if (cand.chosen) reason = cand.reason;
    candidates.push_back({{"kernel", kernels::kernel_name(cand.kernel)},
                          {"chosen", cand.chosen},
                          {"eligible", cand.eligible},
                          {"built", cand.built},
                          {"reason", cand.reason}});
  }
  return {{"m", m},
          {"kernel", kernels::kernel_name(c.kernel)},
          {"runs_on", kernels::to_string(c.runs_on)},
          {"reason", reason},
          {"intended", kernels::kernel_name(kernels::pick_kernel(device, l, m, kernels::kAllKernels))},
          {"candidates", std::move(candidates)}};
}

std::string device_label(const kernels::DeviceDesc& d) {
  return d.kind == kernels::DeviceKind::cuda ? "cuda:" + std::to_string(d.index) : std::string("cpu");
}

// The device models run on. This gptqd serves on the CPU only (the CUDA backend is a later issue).
const kernels::DeviceDesc& serving_device() { return kernels::host_cpu_device(); }

json plan_json(const std::vector<engine::PlannedLinear>& linears, const kernels::DeviceDesc& device) {
  json out = json::array();
  for (const auto& p : engine::plan_linears(linears, device)) {
    json l = linear_json(p.linear.desc);
    l["names"] = p.linear.names;
    l["decode"] = choice_json(device, p.linear.desc, engine::kPlanDecodeM, p.decode);
    l["prefill"] = choice_json(device, p.linear.desc, engine::kPlanPrefillM, p.prefill);
    out.push_back(std::move(l));
  }
  return out;
}

bool is_gptq_tag(const RegistryTag& t) { return t.format == "safetensors" && t.dtype.starts_with("GPTQ-"); }

// (logical name, blob path) of the config files of a tag.
using ConfigFiles = std::vector<std::pair<std::string, std::filesystem::path>>;
ConfigFiles config_files(Daemon& d, const RegistryTag& t) {
  ConfigFiles files;
  for (const auto& f : t.files) {
    if (f.name == "config.json" || f.name == "quantize_config.json") {
      files.emplace_back(f.name, d.blobs().blob_path(f.digest));
    }
  }
  return files;
}

// Blocking: the GPTQ linears a tag's config.json and quantize_config.json describe.
std::vector<engine::PlannedLinear> read_linears(const ConfigFiles& files) {
  json config, quantize;
  bool has_config = false, has_quantize = false;
  for (const auto& [name, path] : files) {
    json j = engine::parse_json_strict(read_whole_file(path), name);
    if (name == "config.json") config = std::move(j), has_config = true;
    if (name == "quantize_config.json") quantize = std::move(j), has_quantize = true;
  }
  if (!has_config) fail(ErrorCode::invalid_model, "the model has no config.json");
  const engine::ModelConfig c = engine::ModelConfig::from_hf_json(config, "config.json");
  const auto gptq = engine::find_gptq_config(config, has_quantize ? &quantize : nullptr);
  if (!gptq) return {};
  return engine::gptq_linears(c, *gptq);
}

// The plan of one tag on the serving device, or {"error"} when its configs cannot be read (a
// report, not a reason to fail the request).
json tag_plan_json(const std::string& ref, const std::vector<engine::PlannedLinear>& linears, const std::string& error) {
  const kernels::DeviceDesc& device = serving_device();
  json out = {{"model", ref},
              {"device", device_label(device)},
              {"device_name", device.name},
              {"decode_m", engine::kPlanDecodeM},
              {"prefill_m", engine::kPlanPrefillM}};
  if (!error.empty()) {
    out["error"] = error;
  } else {
    out["linears"] = plan_json(linears, device);
  }
  return out;
}

struct TagLinears {
  std::string ref;
  std::vector<engine::PlannedLinear> linears;
  std::string error;
};

std::vector<TagLinears> read_all(const std::vector<std::pair<std::string, ConfigFiles>>& tags) {
  std::vector<TagLinears> out;
  for (const auto& [ref, files] : tags) {
    TagLinears t{ref, {}, {}};
    try {
      t.linears = read_linears(files);
    } catch (const std::exception& e) {
      t.error = e.what();
    }
    out.push_back(std::move(t));
  }
  return out;
}

json cpu_json() {
  const kernels::DeviceDesc& host = kernels::host_cpu_device();
  const kernels::LinearDesc& usual = engine::common_linear_configs().front().desc;
  return {{"model", host.host.model_name},
          {"logical_cpus", host.host.logical_cpus},
          {"features", host.host.names()},
          {"decode_kernel", kernels::kernel_name(kernels::pick_kernel(host, usual, engine::kPlanDecodeM))},
          {"prefill_kernel", kernels::kernel_name(kernels::pick_kernel(host, usual, engine::kPlanPrefillM))}};
}

json cuda_json(const GpuProbe& probe) {
#if defined(GPTQD_HAVE_CUDA)
  const bool compiled = true;
#else
  const bool compiled = false;
#endif
  json out = {{"state", "done"},
              {"compiled", compiled},
              {"runtime_version", nullptr},
              {"driver_version", nullptr},
              {"driver_library", nullptr},
              {"visible_devices", nullptr},
              {"error", nullptr},
              {"devices", json::array()}};
  if (probe.state != GpuProbe::State::done) {
    if (const char* v = std::getenv("CUDA_VISIBLE_DEVICES")) out["visible_devices"] = v;
    if (probe.state == GpuProbe::State::not_probed) {
      out["state"] = "not-probed";
      out["error"] = "not probed: " + probe.not_probed_reason;
    } else {
      const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count() -
                      probe.started_at_ms;
      out["state"] = "probing";
      out["error"] = cat("the CUDA probe has not answered yet (", ms, " ms); ask again");
    }
    return out;
  }
  const auto& r = probe.result;
  out["compiled"] = r.compiled_with_cuda;
  out["runtime_version"] = cuda_version(r.runtime_version);
  out["driver_version"] = cuda_version(r.driver_version);
  if (!r.driver_library.empty()) out["driver_library"] = r.driver_library;
  if (r.visible_devices_set) out["visible_devices"] = r.visible_devices;
  if (!r.error.empty()) out["error"] = r.error;
  for (const auto& g : r.devices) {
    out["devices"].push_back({{"index", g.index},
                              {"name", g.name},
                              {"uuid", g.uuid},
                              {"compute_capability", std::to_string(g.cc_major) + "." + std::to_string(g.cc_minor)},
                              {"sm", g.cc_major * 10 + g.cc_minor},
                              {"sm_count", g.sm_count},
                              {"memory_total", g.total_memory_bytes},
                              {"memory_free", g.free_memory_bytes}});
  }
  return out;
}

// The common configurations x M on one device.
json common_json(const kernels::DeviceDesc& device) {
  json rows = json::array();
  for (const auto& cfg : engine::common_linear_configs()) {
    for (int64_t m : kCommonM) {
      json row = choice_json(device, cfg.desc, m, kernels::choose_kernel(device, cfg.desc, m));
      row["config"] = cfg.label;
      row["note"] = cfg.note;
      row["linear"] = linear_json(cfg.desc);
      rows.push_back(std::move(row));
    }
  }
  json out = {{"device", device_label(device)}, {"name", device.name}, {"rows", std::move(rows)}};
  if (device.kind == kernels::DeviceKind::cuda) {
    out["compute_capability"] = std::to_string(device.cc_major) + "." + std::to_string(device.cc_minor);
  }
  return out;
}

json kernels_json() {
  json out = json::array();
  for (int i = 0; i < kernels::kKernelCount; ++i) {
    const auto k = static_cast<kernels::KernelId>(i);
    out.push_back({{"name", kernels::kernel_name(k)},
                   {"description", kernels::kernel_description(k)},
                   {"built", kernels::kernel_built(k)}});
  }
  return out;
}

}  // namespace

kernels::DeviceDesc gpu_desc(const kernels::cuda::CudaDeviceInfo& g) {
  kernels::DeviceDesc d;
  d.kind = kernels::DeviceKind::cuda;
  d.index = g.index;
  d.name = g.name;
  d.cc_major = g.cc_major;
  d.cc_minor = g.cc_minor;
  d.host = kernels::host_cpu_device().host;
  return d;
}


awaitable<json> kernel_plan_json(Daemon& d, const RegistryTag& t) {
  if (!is_gptq_tag(t)) co_return json();
  std::vector<std::pair<std::string, ConfigFiles>> tags = {{t.name + ":" + t.tag, config_files(d, t)}};
  auto read = [tags] { return read_all(tags); };
  std::vector<TagLinears> read_back = co_await run_blocking(d.pool(), std::move(read));
  const TagLinears& tl = read_back.front();
  if (!tl.error.empty()) log_warn("ignoring: cannot plan the kernels of ", tl.ref, ": ", tl.error);
  co_return tag_plan_json(tl.ref, tl.linears, tl.error);
}

awaitable<void> handle_gpu(Daemon& d, Request&, ResponseWriter& w) {
  // A probe started at start-up usually answers in milliseconds; wait a little for it.
  auto exec = co_await asio::this_coro::executor;
  asio::steady_timer timer(exec);
  const auto deadline = std::chrono::steady_clock::now() + kProbeWait;
  while (d.gpu_probe().state == GpuProbe::State::probing && std::chrono::steady_clock::now() < deadline) {
    timer.expires_after(std::chrono::milliseconds(20));
    boost::system::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  }

  // The loaded models that are GPTQ checkpoints (as /api/ps lists them).
  std::vector<std::pair<std::string, ConfigFiles>> tags;
  for (const auto& st : d.worker().status()) {
    const auto colon = st.ref.find(':');
    auto tag = d.registry().find(st.ref.substr(0, colon), st.ref.substr(colon + 1));
    if (tag && is_gptq_tag(*tag)) tags.emplace_back(st.ref, config_files(d, *tag));
  }
  auto read = [tags] { return read_all(tags); };
  std::vector<TagLinears> loaded = co_await run_blocking(d.pool(), std::move(read));

  const GpuProbe& probe = d.gpu_probe();
  json models = json::array();
  for (const auto& tl : loaded) models.push_back(tag_plan_json(tl.ref, tl.linears, tl.error));
  json common = json::array();
  common.push_back(common_json(kernels::host_cpu_device()));
  if (probe.state == GpuProbe::State::done) {
    for (const auto& g : probe.result.devices) common.push_back(common_json(gpu_desc(g)));
  }
  json body = {{"device", d.worker().device()},
               {"cpu", cpu_json()},
               {"cuda", cuda_json(probe)},
               {"kernels", kernels_json()},
               {"models", std::move(models)},
               {"common", std::move(common)}};
  co_await w.send_json(http::status::ok, body);
}

}  // namespace gptqd::daemon::handlers
