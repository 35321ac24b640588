// SPDX-License-Identifier: Apache-2.0
// Quantize jobs through a real gptqd (e2e tests): the whole journey to a registered, servable,
// exportable GPTQ tag with its quality report; resume after kill -9 giving the same bytes as an
// uninterrupted run; cancel in each phase; bad input; a full disk during the write; a result that
// fails its quality check; the source protected while a job reads it; other models served
// meanwhile.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <future>
#include <nlohmann/json.hpp>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::string error_of(const HttpReply& r) {
  json j = json::parse(r.body, nullptr, false);
  return j.is_object() ? j.value("error", r.body) : r.body;
}

class QuantizeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "d");
    daemon_ = std::make_unique<DaemonProcess>(dir_ / "d");
  }

  // Starts the daemon, pulls a tiny HF model as tiny:fp16 and registers wiki.valid.raw as "valid".
  void start_with_model(const std::vector<std::string>& env = {}) {
    ASSERT_TRUE(daemon_->start(env, {"--threads", "2"})) << daemon_->log();
    write_tiny_hf_model(dir_ / "tiny");
    auto r = daemon_->ctl({"pull", (dir_ / "tiny").string(), "--name", "tiny"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const fs::path valid = shared_data_dir() / "wikitext-2-raw" / "wiki.valid.raw";
    r = daemon_->ctl({"dataset", "add", "valid", valid.string()});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  HttpReply post(const std::string& route, const json& body,
                 std::chrono::milliseconds timeout = std::chrono::seconds(120)) {
    return http_request(daemon_->socket(), "POST", route, body.dump(), timeout);
  }

  // A small, quick GPTQ request on tiny:fp16.
  static json request(const std::string& tag) {
    return json{{"model", "tiny:fp16"}, {"calib", "valid"},     {"samples", 8},       {"seqlen", 64},
                {"group_size", 16},     {"eval_windows", 2},    {"eval_seqlen", 64},  {"tag", tag}};
  }

  // Runs a job to its end (streaming) and returns its events.
  std::vector<json> run_job(json req) {
    req["stream"] = true;
    HttpReply r = post("/api/quantize", req, std::chrono::seconds(300));
    EXPECT_EQ(r.status, 200) << r.body;
    return ndjson(r.body);
  }

  json job(int64_t id) {
    return json::parse(http_request(daemon_->socket(), "GET", "/api/jobs/" + std::to_string(id)).body);
  }

  json show(const std::string& model) { return json::parse(post("/api/show", {{"model", model}}).body); }

  std::string file_digest(const json& entry, const std::string& name) {
    for (const auto& f : entry["files"]) {
      if (f["name"] == name) return f["digest"];
    }
    return "";
  }

  // Waits until the job's state is not queued/running.
  json wait_job_end(int64_t id, std::chrono::seconds timeout = std::chrono::seconds(300)) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    json j;
    while (std::chrono::steady_clock::now() < deadline) {
      j = job(id);
      if (j["state"] != "queued" && j["state"] != "running") return j;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return j;
  }

  // No scratch of job `id` is left: jobs/<id>/ and tmp/job-<id>-out.
  void expect_no_scratch(int64_t id) {
    EXPECT_FALSE(fs::exists(daemon_->state_dir() / "jobs" / std::to_string(id)));
    EXPECT_FALSE(fs::exists(daemon_->state_dir() / "tmp" / ("job-" + std::to_string(id) + "-out")));
  }

  TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(QuantizeTest, JourneyToAServableExportableGptqTag) {
  start_with_model();
  std::vector<json> events = run_job(request(""));
  ASSERT_GE(events.size(), 3u);
  EXPECT_EQ(events.front()["event"], "queued");
  const int64_t id = events.front()["job"];
  EXPECT_EQ(events.front()["model"], "tiny:gptq-4b-g16");
  int layers = 0, progress = 0;
  for (const auto& e : events) {
    if (e["event"] == "layer") {
      EXPECT_EQ(e["layer"], layers);
      EXPECT_EQ(e["linears"].size(), 7u);
      for (const auto& l : e["linears"]) {
        EXPECT_GE(l["loss"].get<double>(), 0.0);
        EXPECT_GT(l["weight_error"].get<double>(), 0.0);
        EXPECT_LT(l["weight_error"].get<double>(), 0.5);
      }
      ++layers;
    }
    if (e["event"] == "progress") {
      ++progress;
      EXPECT_GE(e["fraction"].get<double>(), 0.0);
      EXPECT_LE(e["fraction"].get<double>(), 1.0);
    }
  }
  EXPECT_EQ(layers, 2);
  EXPECT_GT(progress, 0);
  const json& done = events.back();
  ASSERT_EQ(done["event"], "done") << done.dump();
  const json& q = done["quality"];
  EXPECT_GT(q["source_ppl"].get<double>(), 1.0);
  EXPECT_GT(q["result_ppl"].get<double>(), 1.0);
  EXPECT_EQ(q["eval_windows"], 2);
  EXPECT_EQ(q["linears"], 14);
  EXPECT_FALSE(q["smoke_output"].get<std::string>().empty());

  // Registered as a standard GPTQ checkpoint with its report.
  json entry = show("tiny:gptq-4b-g16");
  EXPECT_EQ(entry["dtype"], "GPTQ-4bit-g16");
  EXPECT_EQ(entry["source_kind"], "quantized");
  EXPECT_EQ(entry["quality"]["layers"].size(), 2u);
  for (const char* f : {"config.json", "quantize_config.json", "model.safetensors", "tokenizer.json"}) {
    EXPECT_FALSE(file_digest(entry, f).empty()) << f;
  }
  json j = job(id);
  EXPECT_EQ(j["state"], "done");
  EXPECT_EQ(j["layers"].size(), 2u);
  EXPECT_EQ(j["params"]["bits"], 4);
  expect_no_scratch(id);

  // Servable: the engine runs the checkpoint.
  HttpReply gen = post("/api/generate", {{"model", "tiny:gptq-4b-g16"}, {"prompt", "the"}, {"raw", true},
                                         {"stream", false}, {"options", {{"num_predict", 4}, {"temperature", 0}, {"num_ctx", 64}}},
                                         {"allow_failed_quality", true}});
  EXPECT_EQ(gen.status, 200) << gen.body;

  // A blob downloads byte for byte.
  const std::string digest = file_digest(entry, "quantize_config.json");
  HttpReply blob = http_request(daemon_->socket(), "GET", "/api/blobs/" + digest);
  ASSERT_EQ(blob.status, 200);
  json qc = json::parse(blob.body);
  EXPECT_EQ(qc["bits"], 4);
  EXPECT_EQ(qc["group_size"], 16);
  EXPECT_EQ(qc["quant_method"], "gptq");
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/blobs/sha256:" + std::string(64, '0')).status, 404);
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/blobs/../../etc/passwd").status, 400);
}

TEST_F(QuantizeTest, GptqctlQuantizeJobsShowExportAndCancel) {
  start_with_model();
  auto r = daemon_->ctl({"quantize", "tiny:fp16", "--calib", "valid", "--samples", "8", "--seqlen", "64",
                         "--group-size", "16", "--act-order", "--eval-windows", "2", "--eval-seqlen", "64",
                         "--max-ppl-ratio", "1000"});
  ASSERT_EQ(r.exit_code, 0) << r.output << daemon_->log();
  EXPECT_NE(r.output.find("tiny:gptq-4b-g16-act"), std::string::npos) << r.output;

  json jobs = json::parse(daemon_->ctl({"--json", "jobs"}).output);
  ASSERT_EQ(jobs["jobs"].size(), 2u) << jobs.dump();  // the pull, then the quantize job
  EXPECT_EQ(jobs["jobs"][1]["kind"], "quantize");
  EXPECT_EQ(jobs["jobs"][1]["state"], "done");
  const std::string id = std::to_string(jobs["jobs"][1]["id"].get<int64_t>());
  r = daemon_->ctl({"jobs", "show", id});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("self_attn.q_proj"), std::string::npos) << r.output;
  r = daemon_->ctl({"show", "tiny:gptq-4b-g16-act"});
  EXPECT_NE(r.output.find("erplexity"), std::string::npos) << r.output;

  // The exported folder is a checkpoint an independent reader accepts: desc_act with a
  // non-trivial g_idx, v1 symmetric zeros, the shapes of gptq-reference.md Part B.
  const fs::path out = dir_ / "export";
  r = daemon_->ctl({"export", "tiny:gptq-4b-g16-act", out.string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(list_dir(out), (std::vector<std::string>{"config.json", "model.safetensors", "quantize_config.json",
                                                      "tokenizer.json", "tokenizer_config.json"}));
  auto check = run_command({python().string(), (source_dir() / "tests/reference/gptq_checkpoint_reference.py").string(),
                            out.string(), (dir_ / "deq.safetensors").string()});
  ASSERT_EQ(check.exit_code, 0) << check.output;
  json summary = json::parse(check.output);
  EXPECT_EQ(summary["linears"], 14);
  EXPECT_EQ(summary["bits"], 4);

  // Detached, then cancelled; bad flags are usage errors.
  r = daemon_->ctl({"quantize", "tiny:fp16", "--calib", "valid", "--samples", "256", "--seqlen", "128",
                    "--tag", "detached", "--detach"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const size_t at = r.output.find("job ");
  ASSERT_NE(at, std::string::npos) << r.output;
  const std::string detached = r.output.substr(at + 4, r.output.find(':', at) - at - 4);
  r = daemon_->ctl({"cancel", detached});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(wait_job_end(std::stoll(detached))["state"], "cancelled");
  EXPECT_EQ(daemon_->ctl({"quantize", "tiny:fp16", "--bits", "5"}).exit_code, 2);
}

TEST_F(QuantizeTest, ResumeAfterKillNineIsIdenticalToAnUninterruptedRun) {
  start_with_model({"GPTQD_FAULT_POINT=quantize.after_layer.0"});
  json req = request("resumed");
  HttpReply r = post("/api/quantize", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const int64_t id = json::parse(r.body)["job"];
  ASSERT_NE(daemon_->wait_exit(std::chrono::seconds(120)), -1) << "the fault point never fired: " << daemon_->log();
  EXPECT_TRUE(fs::exists(daemon_->state_dir() / "jobs" / std::to_string(id) / "layer-00000.safetensors"));

  ASSERT_TRUE(daemon_->start({}, {"--threads", "2"})) << daemon_->log();
  json j = wait_job_end(id);
  ASSERT_EQ(j["state"], "done") << j.dump() << daemon_->log();
  EXPECT_NE(daemon_->log().find("resuming quantize job " + std::to_string(id)), std::string::npos);
  expect_no_scratch(id);

  std::vector<json> events = run_job(request("uninterrupted"));
  ASSERT_EQ(events.back()["event"], "done") << events.back().dump();
  json a = show("tiny:resumed"), b = show("tiny:uninterrupted");
  EXPECT_EQ(file_digest(a, "model.safetensors"), file_digest(b, "model.safetensors"));
  EXPECT_FALSE(file_digest(a, "model.safetensors").empty());
  EXPECT_EQ(a["quality"]["result_ppl"], b["quality"]["result_ppl"]);
}

TEST_F(QuantizeTest, SigtermStopsTheJobAndTheNextStartResumesIt) {
  start_with_model();
  json req = request("after-restart");
  req["samples"] = 256;  // long enough that the stop lands in the middle
  req["seqlen"] = 128;
  req["eval_windows"] = 16;
  req["stream"] = true;
  StreamingRequest stream(daemon_->socket(), "/api/quantize", req.dump());
  ASSERT_TRUE(stream.wait_for("\"event\":\"layer\"")) << stream.received();
  const std::string& got = stream.received();
  const size_t at = got.find("\"job\":") + 6;
  const int64_t id = std::stoll(got.substr(at, got.find_first_of(",}", at) - at));
  EXPECT_EQ(daemon_->stop(SIGTERM), 0) << daemon_->log();
  // The follower was told, and the job is still on the books.
  EXPECT_TRUE(stream.wait_for("resumes when it starts again", std::chrono::seconds(5))) << stream.received();

  ASSERT_TRUE(daemon_->start({}, {"--threads", "2"})) << daemon_->log();
  json j = wait_job_end(id);
  EXPECT_EQ(j["state"], "done") << j.dump() << daemon_->log();
  EXPECT_EQ(j["layers"].size(), 2u);
  EXPECT_EQ(show("tiny:after-restart")["dtype"], "GPTQ-4bit-g16");
}

TEST_F(QuantizeTest, AFollowerHangingUpDoesNotCancelTheJob) {
  start_with_model();
  json req = request("hung-up");
  req["samples"] = 128;
  req["stream"] = true;
  int64_t id = -1;
  {
    StreamingRequest stream(daemon_->socket(), "/api/quantize", req.dump());
    ASSERT_TRUE(stream.wait_for("\"stage\":\"qkv\"")) << stream.received();
    const std::string& got = stream.received();
    const size_t at = got.find("\"job\":") + 6;
    id = std::stoll(got.substr(at, got.find_first_of(",}", at) - at));
  }  // hangs up mid-job, as gptqctl does on Ctrl-C
  EXPECT_EQ(wait_job_end(id)["state"], "done") << daemon_->log();
  EXPECT_EQ(show("tiny:hung-up")["dtype"], "GPTQ-4bit-g16");
}

TEST_F(QuantizeTest, CancelInEachPhaseLeavesNothingBehind) {
  ASSERT_TRUE(daemon_->start({}, {"--threads", "2"})) << daemon_->log();
  // A larger tiny model, so that each phase lasts long enough to be caught.
  TinyHfOptions big;
  big.shape.hidden = 128;
  big.shape.intermediate = 256;
  big.shape.n_layers = 4;
  big.shape.head_dim = 32;
  big.shape.context = 512;
  write_tiny_hf_model(dir_ / "big", big);
  ASSERT_EQ(daemon_->ctl({"pull", (dir_ / "big").string(), "--name", "big"}).exit_code, 0);
  const fs::path valid = shared_data_dir() / "wikitext-2-raw" / "wiki.valid.raw";
  ASSERT_EQ(daemon_->ctl({"dataset", "add", "valid", valid.string()}).exit_code, 0);

  for (const std::string phase : {"\"stage\":\"embed\"", "\"stage\":\"o\"", "\"stage\":\"eval-source\"",
                                  "\"stage\":\"eval-result\""}) {
    json req = request("");
    req["model"] = "big:fp16";
    req["samples"] = 64;
    req["seqlen"] = 256;
    req["eval_windows"] = 24;
    req["eval_seqlen"] = 256;
    req["stream"] = true;
    req["tag"] = "cancelled";
    StreamingRequest stream(daemon_->socket(), "/api/quantize", req.dump());
    ASSERT_TRUE(stream.wait_for("\"job\":")) << stream.received();
    ASSERT_TRUE(stream.wait_for(phase)) << "never saw " << phase << ": " << stream.received();
    const std::string& got = stream.received();
    const size_t at = got.find("\"job\":") + 6;
    const int64_t id = std::stoll(got.substr(at, got.find_first_of(",}", at) - at));
    HttpReply c = http_request(daemon_->socket(), "DELETE", "/api/jobs/" + std::to_string(id));
    EXPECT_EQ(c.status, 200) << c.body;
    EXPECT_TRUE(stream.wait_for("\"event\":\"cancelled\"")) << phase << ": " << stream.received().substr(
        stream.received().size() > 600 ? stream.received().size() - 600 : 0);
    EXPECT_EQ(wait_job_end(id)["state"], "cancelled") << phase;
    EXPECT_EQ(post("/api/show", {{"model", "big:cancelled"}}).status, 404);
    expect_no_scratch(id);
    // Cancelling again: it already ended.
    EXPECT_EQ(http_request(daemon_->socket(), "DELETE", "/api/jobs/" + std::to_string(id)).status, 409);
  }
  EXPECT_EQ(http_request(daemon_->socket(), "DELETE", "/api/jobs/999").status, 404);
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/jobs/abc").status, 400);
}

TEST_F(QuantizeTest, BadInputIsRefusedWithAClearMessage) {
  start_with_model();
  auto refused = [&](json change, int status, const std::string& needle) {
    json req = request("bad");
    for (auto& [k, v] : change.items()) req[k] = v;
    HttpReply r = post("/api/quantize", req);
    EXPECT_EQ(r.status, status) << change.dump() << " -> " << r.body;
    EXPECT_NE(error_of(r).find(needle), std::string::npos) << change.dump() << " -> " << r.body;
  };
  refused({{"bits", 5}}, 400, "supported: 2, 3, 4, 8");
  refused({{"group_size", 0}}, 400, "group_size");
  refused({{"damp_percent", 1.5}}, 400, "damp_percent");
  refused({{"method", "awq"}}, 400, "method");
  refused({{"model", "nosuch"}}, 404, "not found");
  refused({{"calib", "nosuch"}}, 404, "dataset 'nosuch' not found");
  refused({{"calib", nullptr}}, 400, "calibration");
  refused({{"device", "cuda:0"}}, 400, "CPU");

  // An already quantized model, and a GGUF.
  write_tiny_hf_model(dir_ / "tinyq", tiny_gptq_options());
  ASSERT_EQ(daemon_->ctl({"pull", (dir_ / "tinyq").string(), "--name", "tinyq"}).exit_code, 0);
  refused({{"model", "tinyq"}}, 400, "already quantized");
  write_tiny_gguf(dir_ / "tiny.gguf");
  ASSERT_EQ(daemon_->ctl({"pull", (dir_ / "tiny.gguf").string(), "--name", "tinygguf"}).exit_code, 0);
  refused({{"model", "tinygguf"}}, 400, "safetensors");

  // A tag that exists.
  refused({{"tag", "fp16"}}, 409, "already exists");

  // Too little calibration text: the job fails and says why; nothing is registered.
  const fs::path small = dir_ / "small.txt";
  std::ofstream(small) << "just a few words of text\n";
  ASSERT_EQ(daemon_->ctl({"dataset", "add", "small", small.string()}).exit_code, 0);
  json req = request("short");
  req["calib"] = "small";
  req["eval"] = "valid";
  std::vector<json> events = run_job(req);
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "error");
  EXPECT_NE(events.back().value("error", "").find("calibration text has"), std::string::npos) << events.back().dump();
  EXPECT_EQ(post("/api/show", {{"model", "tiny:short"}}).status, 404);
  expect_no_scratch(events.front()["job"]);
}

TEST_F(QuantizeTest, FullDiskDuringTheWriteFailsCleanly) {
  start_with_model({"GPTQD_FAULT_DISK_FULL=quantize.checkpoint"});
  std::vector<json> events = run_job(request("full"));
  ASSERT_FALSE(events.empty());
  EXPECT_EQ(events.back()["event"], "error");
  EXPECT_NE(events.back().value("error", "").find("no space left"), std::string::npos) << events.back().dump();
  const int64_t id = events.front()["job"];
  EXPECT_EQ(job(id)["state"], "failed");
  EXPECT_EQ(post("/api/show", {{"model", "tiny:full"}}).status, 404);
  expect_no_scratch(id);
  // Only the source's blobs are left.
  json tags = json::parse(daemon_->ctl({"--json", "list"}).output);
  EXPECT_EQ(tags["models"].size(), 1u);
}

TEST_F(QuantizeTest, AResultThatFailsItsQualityCheckIsKeptButNotServed) {
  start_with_model();
  json req = request("q2");
  req["bits"] = 2;
  req["max_ppl_ratio"] = 1.0;
  std::vector<json> events = run_job(req);
  ASSERT_EQ(events.back()["event"], "done") << events.back().dump();
  const json& q = events.back()["quality"];
  ASSERT_GT(q["ratio"].get<double>(), 1.0) << "2-bit should lose some perplexity: " << q.dump();
  EXPECT_EQ(events.back()["state"], "failed-quality");
  EXPECT_NE(q.value("reason", "").find("perplexity rose"), std::string::npos);
  json entry = show("tiny:q2");
  EXPECT_EQ(entry["state"], "failed-quality");
  json gen = {{"model", "tiny:q2"}, {"prompt", "the"}, {"raw", true}, {"stream", false},
              {"options", {{"num_predict", 2}, {"num_ctx", 64}}}};
  HttpReply refused = post("/api/generate", gen);
  EXPECT_EQ(refused.status, 409);
  EXPECT_NE(error_of(refused).find("quality"), std::string::npos);
  gen["allow_failed_quality"] = true;
  EXPECT_EQ(post("/api/generate", gen).status, 200);
}

TEST_F(QuantizeTest, SourceIsProtectedAndOtherModelsAreServedWhileAJobRuns) {
  start_with_model();
  TinyHfOptions other;
  other.seed = 7;
  write_tiny_hf_model(dir_ / "other", other);
  ASSERT_EQ(daemon_->ctl({"pull", (dir_ / "other").string(), "--name", "other"}).exit_code, 0);
  json req = request("busy");
  req["samples"] = 64;
  req["seqlen"] = 128;
  req["eval_windows"] = 8;
  HttpReply r = post("/api/quantize", req);
  ASSERT_EQ(r.status, 200) << r.body;
  const int64_t id = json::parse(r.body)["job"];

  HttpReply del = http_request(daemon_->socket(), "DELETE", "/api/delete", json{{"model", "tiny:fp16"}}.dump());
  EXPECT_EQ(del.status, 409) << del.body;
  EXPECT_NE(error_of(del).find("quantize job"), std::string::npos);

  HttpReply gen = post("/api/generate", {{"model", "other"}, {"prompt", "the"}, {"raw", true}, {"stream", false},
                                         {"options", {{"num_predict", 8}, {"num_ctx", 64}}}});
  EXPECT_EQ(gen.status, 200) << gen.body;
  EXPECT_EQ(job(id)["state"], "running") << "the job ended before the generation: make it longer";
  EXPECT_EQ(wait_job_end(id)["state"], "done");
}

}  // namespace
}  // namespace gptqd::test
