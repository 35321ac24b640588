// SPDX-License-Identifier: Apache-2.0
// GPUs and kernels through a real gptqd: the start-up CUDA probe against a fake driver (two GPUs,
// a hanging driver, --device cpu, CUDA_VISIBLE_DEVICES=""), `GET /api/gpu` and `gptqctl gpu`,
// and the kernel plan of a GPTQ model in `/api/show`, `gptqctl show` and for a loaded model
// (e2e tests); plus engine::gptq_linears on real shapes.
#include <gtest/gtest.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>

#include "engine/kernel_plan.h"
#include "kernels/dispatch.h"
#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::test {
namespace {

using nlohmann::json;

const std::string kTwoGpus = "NVIDIA H100 80GB HBM3,9.0,132,81559,80000;Tesla T4,7.5,40,15360,15000";

std::vector<std::string> fake_cuda_env(const std::string& spec) {
  return {std::string("GPTQD_LIBCUDA=") + GPTQD_FAKE_LIBCUDA, "GPTQD_FAKE_CUDA=" + spec};
}

json get_gpu(const DaemonProcess& d) {
  HttpReply r = http_request(d.socket(), "GET", "/api/gpu");
  EXPECT_EQ(r.status, 200) << r.body;
  return json::parse(r.body);
}

// The common-table entry of `device` ("cpu", "cuda:0").
json common_of(const json& doc, const std::string& device) {
  for (const auto& d : doc["common"]) {
    if (d["device"] == device) return d;
  }
  ADD_FAILURE() << "no common table for " << device << ": " << doc["common"].dump();
  return json::object();
}

json row_of(const json& table, const std::string& config, int m) {
  for (const auto& r : table["rows"]) {
    if (r["config"] == config && r["m"] == m) return r;
  }
  ADD_FAILURE() << "no row " << config << " M=" << m;
  return json::object();
}

json candidate_of(const json& choice, const std::string& kernel) {
  for (const auto& c : choice["candidates"]) {
    if (c["kernel"] == kernel) return c;
  }
  ADD_FAILURE() << kernel << " is not a candidate of " << choice.dump();
  return json::object();
}

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

const char* kUsual = "4-bit g128 sym K=4096 N=4096";

// ---- the probe -----------------------------------------------------------------------------------

TEST(GpuProbe, TwoFakeGpusAndTheirKernels) {
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start(fake_cuda_env(kTwoGpus))) << d.log();
  const json doc = get_gpu(d);
  EXPECT_EQ(doc["device"], "cpu");
  EXPECT_TRUE(doc["cpu"]["features"].is_array());
  EXPECT_GT(doc["cpu"]["logical_cpus"].get<int>(), 0);

  const json& cuda = doc["cuda"];
  EXPECT_EQ(cuda["state"], "done");
  EXPECT_TRUE(cuda["error"].is_null()) << cuda.dump();
  EXPECT_TRUE(cuda["visible_devices"].is_null());
  EXPECT_TRUE(contains(cuda["driver_library"].get<std::string>(), "fake_libcuda")) << cuda.dump();
  EXPECT_TRUE(cuda["driver_version"].is_string()) << cuda.dump();
  ASSERT_EQ(cuda["devices"].size(), 2u) << cuda.dump();
  const json& h100 = cuda["devices"][0];
  EXPECT_EQ(h100["index"], 0);
  EXPECT_EQ(h100["name"], "NVIDIA H100 80GB HBM3");
  EXPECT_EQ(h100["compute_capability"], "9.0");
  EXPECT_EQ(h100["sm_count"], 132);
  EXPECT_EQ(h100["memory_total"], uint64_t{81559} << 20);
  EXPECT_EQ(h100["memory_free"], uint64_t{80000} << 20);
  const json& t4 = cuda["devices"][1];
  EXPECT_EQ(t4["name"], "Tesla T4");
  EXPECT_EQ(t4["compute_capability"], "7.5");
  EXPECT_EQ(t4["sm_count"], 40);

  // The serving CPU and both GPUs get a common table.
  ASSERT_EQ(doc["common"].size(), 3u);
  EXPECT_EQ(doc["common"][0]["device"], "cpu");

  // H100: the tensor-core kernel qualifies but is not in this build; the host CPU runs it.
  const json h = row_of(common_of(doc, "cuda:0"), kUsual, 1);
  EXPECT_EQ(h["runs_on"], "cpu");
  EXPECT_EQ(h["intended"], "cuda-tensor-core");
  const json tc = candidate_of(h, "cuda-tensor-core");
  EXPECT_EQ(tc["eligible"], true);
  EXPECT_EQ(tc["built"], false);
  EXPECT_EQ(tc["chosen"], false);
  EXPECT_TRUE(contains(tc["reason"], "conditions hold, but this gptqd cannot run the CUDA kernels yet (no GPU backend)")) << tc;
  EXPECT_EQ(row_of(common_of(doc, "cuda:0"), kUsual, 512)["intended"], "cuda-tensor-core");

  // T4: sm75 has no tensor-core kernel; GEMV for decode, dequantize + cuBLAS for prefill.
  const json t = row_of(common_of(doc, "cuda:1"), kUsual, 1);
  EXPECT_EQ(candidate_of(t, "cuda-tensor-core")["eligible"], false);
  EXPECT_EQ(candidate_of(t, "cuda-tensor-core")["reason"], "tensor-core kernel needs sm80, device is sm75");
  EXPECT_EQ(t["intended"], "cuda-gemv");
  EXPECT_EQ(row_of(common_of(doc, "cuda:1"), kUsual, 512)["intended"], "cuda-dequant-gemm");

  // K=10944 is no multiple of 128: the GEMV kernel, which takes a partial last group.
  const json odd = row_of(common_of(doc, "cuda:0"), "4-bit g128 sym K=10944 N=2048", 1);
  EXPECT_EQ(candidate_of(odd, "cuda-tensor-core")["reason"], "tensor-core kernel needs K % 128 == 0, K=10944");
  EXPECT_EQ(odd["intended"], "cuda-gemv");
  const json g96 = row_of(common_of(doc, "cuda:0"), "4-bit g96 sym K=4096 N=4096", 1);
  EXPECT_EQ(candidate_of(g96, "cuda-tensor-core")["reason"],
            "tensor-core kernel needs group size -1, 32, 64 or 128, this linear has 96");
  EXPECT_EQ(g96["intended"], "cuda-gemv");

  // The CPU table agrees with this machine's dispatch.
  const auto& host = kernels::host_cpu_device();
  const auto& usual = engine::common_linear_configs().front();
  EXPECT_EQ(usual.label, kUsual);
  EXPECT_EQ(row_of(common_of(doc, "cpu"), kUsual, 1)["kernel"],
            kernels::kernel_name(kernels::pick_kernel(host, usual.desc, 1)));
  EXPECT_EQ(doc["cpu"]["decode_kernel"], kernels::kernel_name(kernels::pick_kernel(host, usual.desc, 1)));

  // gptqctl gpu: devices, the table; -v: the rejections.
  auto r = d.ctl({"gpu"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "CPU: ")) << r.output;
  EXPECT_TRUE(contains(r.output, "CUDA: 2 GPUs")) << r.output;
  EXPECT_TRUE(contains(r.output, "NVIDIA H100 80GB HBM3")) << r.output;
  EXPECT_TRUE(contains(r.output, "Tesla T4")) << r.output;
  EXPECT_TRUE(contains(r.output, "sm90 (9.0)")) << r.output;
  EXPECT_TRUE(contains(r.output, "132 SMs")) << r.output;
  EXPECT_TRUE(contains(r.output, "Common configurations on cuda:0")) << r.output;
  EXPECT_TRUE(contains(r.output, "cuda-tensor-core")) << r.output;
  EXPECT_FALSE(contains(r.output, "rejected: ")) << r.output;
  auto v = d.ctl({"gpu", "-v"});
  ASSERT_EQ(v.exit_code, 0) << v.output;
  EXPECT_TRUE(contains(v.output, "rejected: cuda-tensor-core: tensor-core kernel needs sm80, device is sm75")) << v.output;
  EXPECT_TRUE(contains(v.output, "rejected: cuda-tensor-core: conditions hold, but this gptqd cannot run the CUDA kernels yet")) << v.output;
  auto j = d.ctl({"gpu", "--json"});
  ASSERT_EQ(j.exit_code, 0) << j.output;
  EXPECT_EQ(json::parse(j.output)["cuda"]["devices"].size(), 2u);
  EXPECT_TRUE(contains(d.log(), "CUDA: cuda:0 NVIDIA H100 80GB HBM3 (sm90")) << d.log();
}

TEST(GpuProbe, HangingDriverDoesNotDelayTheStart) {
  TempDir dir;
  DaemonProcess d(dir.path());
  auto env = fake_cuda_env("hang");
  env.push_back("GPTQD_CUDA_PROBE_TIMEOUT_MS=500");
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(d.start(env)) << d.log();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
  EXPECT_EQ(http_request(d.socket(), "GET", "/api/health").status, 200);
  const auto t1 = std::chrono::steady_clock::now();
  const json doc = get_gpu(d);
  EXPECT_LT(std::chrono::steady_clock::now() - t1, std::chrono::seconds(4));
  const json& cuda = doc["cuda"];
  EXPECT_TRUE(cuda["devices"].empty());
  // Either the probe timed out already, or it is still running; both answer at once.
  const std::string error = cuda["error"].get<std::string>();
  EXPECT_TRUE(contains(error, "did not answer") || contains(error, "not answered yet")) << cuda.dump();
  // The CPU still serves and its table is there.
  ASSERT_EQ(doc["common"].size(), 1u);
  EXPECT_EQ(doc["common"][0]["device"], "cpu");
  auto r = d.ctl({"gpu"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "CUDA: no GPU")) << r.output;
  EXPECT_EQ(d.stop(), 0) << d.log();
}

TEST(GpuProbe, HangingDriverDoesNotDelayTheStop) {
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start(fake_cuda_env("hang"))) << d.log();  // the default 10 s probe timeout
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(d.stop(), 0) << d.log();
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(5));
}

TEST(GpuProbe, DeviceCpuDoesNotTouchTheDriver) {
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start(fake_cuda_env(kTwoGpus), {"--device", "cpu"})) << d.log();
  const json doc = get_gpu(d);
  EXPECT_EQ(doc["cuda"]["state"], "not-probed");
  EXPECT_EQ(doc["cuda"]["error"], "not probed: --device cpu");
  EXPECT_TRUE(doc["cuda"]["devices"].empty());
  EXPECT_TRUE(doc["cuda"]["driver_library"].is_null());
  EXPECT_EQ(doc["common"].size(), 1u);
  auto r = d.ctl({"gpu"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "CUDA: no GPU: not probed: --device cpu")) << r.output;
}

TEST(GpuProbe, EmptyCudaVisibleDevicesHidesEveryGpu) {
  TempDir dir;
  DaemonProcess d(dir.path());
  auto env = fake_cuda_env(kTwoGpus);
  env.push_back("CUDA_VISIBLE_DEVICES=");
  ASSERT_TRUE(d.start(env)) << d.log();
  const json doc = get_gpu(d);
  EXPECT_TRUE(doc["cuda"]["devices"].empty());
  EXPECT_EQ(doc["cuda"]["visible_devices"], "");
  EXPECT_TRUE(contains(doc["cuda"]["error"].get<std::string>(), "CUDA_VISIBLE_DEVICES")) << doc["cuda"].dump();
  auto r = d.ctl({"gpu"});
  EXPECT_TRUE(contains(r.output, "CUDA_VISIBLE_DEVICES=\"\"")) << r.output;
}

TEST(GpuProbe, VisibleDevicesSelectsOneGpu) {
  TempDir dir;
  DaemonProcess d(dir.path());
  auto env = fake_cuda_env(kTwoGpus);
  env.push_back("CUDA_VISIBLE_DEVICES=1");
  ASSERT_TRUE(d.start(env)) << d.log();
  const json doc = get_gpu(d);
  ASSERT_EQ(doc["cuda"]["devices"].size(), 1u) << doc["cuda"].dump();
  EXPECT_EQ(doc["cuda"]["devices"][0]["name"], "Tesla T4");
  EXPECT_EQ(doc["cuda"]["visible_devices"], "1");
}

TEST(GpuProbe, DriverErrorIsReportedAndTheDaemonServes) {
  TempDir dir;
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start(fake_cuda_env("error:100"))) << d.log();
  const json doc = get_gpu(d);
  EXPECT_TRUE(doc["cuda"]["devices"].empty());
  EXPECT_FALSE(doc["cuda"]["error"].get<std::string>().empty());
  EXPECT_EQ(http_request(d.socket(), "GET", "/api/tags").status, 200);
}

TEST(GpuProbe, DeviceCudaIsRefusedWithWhatTheProbeFound) {
  TempDir dir;
  auto r = run_command({gptqd_binary().string(), "--foreground", "--device", "cuda:0", "--state-dir",
                        (dir.path() / "state").string(), "--socket", (dir.path() / "s.sock").string()},
                       fake_cuda_env(kTwoGpus));
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "CPU only")) << r.output;
  EXPECT_TRUE(contains(r.output, "cuda:0 NVIDIA H100 80GB HBM3 (sm90)")) << r.output;
}

// ---- a GPTQ model's plan --------------------------------------------------------------------------

TEST(GpuKernels, GptqModelShowsItsKernels) {
  TempDir dir;
  write_tiny_hf_model(dir / "tiny-gptq", tiny_gptq_options());
  DaemonProcess d(dir.path());
  ASSERT_TRUE(d.start(fake_cuda_env(kTwoGpus))) << d.log();
  auto pulled = d.ctl({"pull", (dir / "tiny-gptq").string()});
  ASSERT_EQ(pulled.exit_code, 0) << pulled.output;
  const std::string model = "tiny-gptq:gptq-4b-g16";

  // /api/show: the linears of the tiny shape (hidden 32, 4 heads x 8, 2 kv heads, ffn 64), merged.
  HttpReply shown = http_request(d.socket(), "POST", "/api/show", json{{"model", model}}.dump());
  ASSERT_EQ(shown.status, 200) << shown.body;
  const json plan = json::parse(shown.body)["kernels"];
  ASSERT_TRUE(plan.is_object()) << shown.body;
  EXPECT_EQ(plan["device"], "cpu");
  ASSERT_EQ(plan["linears"].size(), 4u) << plan.dump();
  EXPECT_EQ(plan["linears"][0]["names"], "q_proj, o_proj");
  EXPECT_EQ(plan["linears"][1]["names"], "k_proj, v_proj");
  EXPECT_EQ(plan["linears"][1]["N"], 16);
  EXPECT_EQ(plan["linears"][2]["names"], "gate_proj, up_proj");
  EXPECT_EQ(plan["linears"][3]["names"], "down_proj");
  EXPECT_EQ(plan["linears"][3]["K"], 64);
  EXPECT_EQ(plan["linears"][3]["group_size"], 16);
  kernels::LinearDesc down;
  down.bits = 4;
  down.group_size = 16;
  down.K = 64;
  down.N = 32;
  const auto& host = kernels::host_cpu_device();
  // What the table (unit-tested on its own in dispatch_test) decides for this machine's CPU.
  const std::string decode = kernels::kernel_name(kernels::pick_kernel(host, down, 1));
  const std::string prefill = kernels::kernel_name(kernels::pick_kernel(host, down, 512));
  EXPECT_EQ(plan["linears"][3]["decode"]["kernel"], decode);
  EXPECT_EQ(plan["linears"][3]["prefill"]["kernel"], prefill);
  EXPECT_EQ(plan["linears"][3]["prefill"]["m"], 512);

  auto r = d.ctl({"show", model});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "Kernel")) << r.output;
  EXPECT_TRUE(contains(r.output, "down_proj (4-bit g16 sym, K=64 N=32): " + decode + " for decode, " + prefill))
      << r.output;

  // A model that is not GPTQ has no plan.
  write_tiny_hf_model(dir / "tiny-dense");
  ASSERT_EQ(d.ctl({"pull", (dir / "tiny-dense").string()}).exit_code, 0);
  HttpReply dense = http_request(d.socket(), "POST", "/api/show", json{{"model", "tiny-dense"}}.dump());
  EXPECT_FALSE(json::parse(dense.body).contains("kernels"));

  // Loaded, it appears in /api/gpu with the reasons of every candidate.
  HttpReply load = http_request(d.socket(), "POST", "/api/generate", json{{"model", model}, {"stream", false}}.dump());
  ASSERT_EQ(load.status, 200) << load.body << d.log();
  const json doc = get_gpu(d);
  ASSERT_EQ(doc["models"].size(), 1u) << doc["models"].dump();
  EXPECT_EQ(doc["models"][0]["model"], model);
  EXPECT_EQ(doc["models"][0]["linears"].size(), 4u);
  auto g = d.ctl({"gpu"});
  ASSERT_EQ(g.exit_code, 0) << g.output;
  EXPECT_TRUE(contains(g.output, "Model " + model + " on cpu")) << g.output;
  EXPECT_TRUE(contains(g.output, "rejected: cpu-dequant-blas: M=1 is in the direct kernels' range (M <= 8)"))
      << g.output;
}

// ---- engine::gptq_linears ---------------------------------------------------------------------------

TEST(KernelPlan, LinearsOfRealShapes) {
  engine::ModelConfig c;
  c.hidden_size = 4096;  // Llama-2 7B: every attention linear is 4096 x 4096
  c.intermediate_size = 11008;
  c.n_heads = 32;
  c.n_kv_heads = 32;
  c.head_dim = 128;
  engine::GptqConfig g;
  g.bits = 4;
  g.group_size = 128;
  g.desc_act = true;
  auto l = engine::gptq_linears(c, g);
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[0].names, "q_proj, k_proj, v_proj, o_proj");
  EXPECT_EQ(l[1].names, "gate_proj, up_proj");
  EXPECT_EQ(l[1].desc.N, 11008);
  EXPECT_EQ(l[2].names, "down_proj");
  EXPECT_EQ(l[2].desc.K, 11008);
  EXPECT_TRUE(l[2].desc.act_order);

  c.hidden_size = 576;  // SmolLM2-135M: GQA 9 heads / 3 kv heads of 64
  c.intermediate_size = 1536;
  c.n_heads = 9;
  c.n_kv_heads = 3;
  c.head_dim = 64;
  l = engine::gptq_linears(c, g);
  ASSERT_EQ(l.size(), 4u);
  EXPECT_EQ(l[0].names, "q_proj, o_proj");
  EXPECT_EQ(l[1].names, "k_proj, v_proj");
  EXPECT_EQ(l[1].desc.N, 192);

  // On an sm90 GPU (every kernel built): gate/up with K=576 cannot use the tensor cores.
  kernels::DeviceDesc h100;
  h100.kind = kernels::DeviceKind::cuda;
  h100.cc_major = 9;
  h100.host = kernels::host_cpu_device().host;
  const auto plan = engine::plan_linears(l, h100, kernels::kAllKernels);
  // The tensor cores need K % 128: the GEMV kernel decodes (its layout takes the partial last
  // group of K=576), dequantize + cuBLAS prefills.
  EXPECT_EQ(plan[2].decode.kernel, kernels::KernelId::cuda_gemv);
  EXPECT_EQ(plan[2].decode.runs_on, kernels::DeviceKind::cuda);
  EXPECT_EQ(plan[2].prefill.kernel, kernels::KernelId::cuda_dequant_gemm);
  EXPECT_EQ(plan[3].decode.kernel, kernels::KernelId::cuda_tensor_core);  // down: K=1536, N=576
  EXPECT_TRUE(engine::gptq_linears(engine::ModelInfo{}).empty());
}

}  // namespace
}  // namespace gptqd::test
