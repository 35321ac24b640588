// SPDX-License-Identifier: Apache-2.0
// gptqctl's entry point: argument parsing, the subcommand table and exit codes (ctl layer).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <optional>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/service.h"
#include "ctl/render.h"
#include "daemon/protocol.h"

int main(int argc, char** argv) {
  using namespace gptqd::ctl;
  CLI::App app{"gptqctl: the command-line client of gptqd"};
  app.set_version_flag("--version", std::string("gptqctl ") + GPTQD_VERSION);
  app.require_subcommand(1);
  std::string socket;
  bool json = false;
  app.add_option("--socket", socket, "gptqd's socket [default: $GPTQD_SOCKET, else the daemon's default]");
  app.add_flag("--json", json, "Print JSON (NDJSON for progress streams)");

  auto* status = app.add_subcommand("status", "Exit 0 when the daemon answers; print its version and uptime");
  PullArgs pull_args;
  auto* pull = app.add_subcommand("pull", "Register a model: a .gguf file, a Hugging Face model folder, or a repo the "
                                          "daemon downloads from the Hugging Face Hub (org/repo[@rev])");
  pull->add_option("source", pull_args.source,
                   "FILE.gguf | MODEL_FOLDER | org/repo[@rev] (a Hub model repo, downloaded by gptqd)")
      ->required();
  pull->add_option("--name", pull_args.name, "Register as NAME or NAME:TAG");
  pull->add_option("--revision", pull_args.revision, "Hub revision (branch, tag or commit) of org/repo");
  pull->footer("Examples:\n"
               "  gptqctl pull HuggingFaceTB/SmolLM2-135M-Instruct\n"
               "  gptqctl pull org/repo@v1.0 --name mymodel:fp16\n"
               "  gptqctl pull ./Llama-3.2-1B-Instruct\n"
               "A private or gated repo needs HF_TOKEN in gptqd's environment: the daemon reads it, gptqctl does not.");
  auto* list = app.add_subcommand("list", "List the registered models");
  app.add_subcommand("ls", "Alias of list")->group("");
  std::string model;
  auto* show = app.add_subcommand("show", "Details of a model: config, files and digests");
  show->add_option("model", model, "NAME[:TAG]")->required();
  auto* rm = app.add_subcommand("rm", "Remove a model and the files no other model uses");
  rm->add_option("model", model, "NAME[:TAG]")->required();

  RunArgs run_args;
  std::optional<double> temperature, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty;
  std::optional<int64_t> top_k, seed, max_tokens, repeat_last_n, num_ctx;
  std::vector<std::string> stops;
  auto* run = app.add_subcommand("run", "Generate: one PROMPT, a piped stdin, or an interactive chat");
  run->add_option("model", run_args.model, "NAME[:TAG]")->required();
  run->add_option("prompt", run_args.prompt, "The prompt (omit for an interactive chat)");
  run->add_option("--system", run_args.system, "System prompt");
  run->add_option("--temperature", temperature, "Sampling temperature (0: greedy)");
  run->add_option("--top-k", top_k, "Keep the K most likely tokens (0: off)");
  run->add_option("--top-p", top_p, "Nucleus sampling mass");
  run->add_option("--min-p", min_p, "Drop tokens below this fraction of the top probability");
  run->add_option("--repeat-penalty", repeat_penalty, "Penalty for repeated tokens (1: off)");
  run->add_option("--repeat-last-n", repeat_last_n, "Tokens the penalties look back over");
  run->add_option("--presence-penalty", presence_penalty, "OpenAI-style presence penalty");
  run->add_option("--frequency-penalty", frequency_penalty, "OpenAI-style frequency penalty");
  run->add_option("--seed", seed, "Random seed (same seed + same request = same text)");
  run->add_option("--max-tokens", max_tokens, "Stop after N tokens");
  run->add_option("--num-ctx", num_ctx, "Context size in tokens");
  run->add_option("--stop", stops, "Stop at this text (repeatable)");
  run->add_flag("--raw", run_args.raw, "Send the prompt as is, without the chat template");
  run->add_flag("--verbose", run_args.verbose, "Print timings and tokens/s after each answer");

  EvalArgs eval_args;
  auto* eval = app.add_subcommand("eval", "Perplexity of a model on a dataset (GPTQ paper protocol)");
  eval->add_option("model", eval_args.model, "NAME[:TAG]")->required();
  eval->add_option("--dataset", eval_args.dataset, "Registered dataset NAME or a text/JSONL FILE")->capture_default_str();
  eval->add_option("--seqlen", eval_args.seqlen, "Window length in tokens")->capture_default_str();
  eval->add_option("--max-windows", eval_args.max_windows, "Evaluate at most N windows (0: all)")->capture_default_str();

  auto* dataset = app.add_subcommand("dataset", "Text datasets for evaluation and calibration");
  dataset->require_subcommand(1);
  std::string dataset_name;
  std::vector<std::string> dataset_files;
  auto* dataset_add = dataset->add_subcommand("add", "Register text files (plain text, or JSONL with a \"text\" field)");
  dataset_add->add_option("name", dataset_name, "NAME")->required();
  dataset_add->add_option("files", dataset_files, "FILE...")->required();
  auto* dataset_list = dataset->add_subcommand("list", "List the registered datasets");
  DatasetPullArgs dataset_pull_args;
  auto* dataset_pull = dataset->add_subcommand(
      "pull", "Download text/JSONL files from a Hugging Face Hub dataset repo, or one file from an http(s) URL, "
              "and register them (gptqd downloads them)");
  dataset_pull->add_option("source", dataset_pull_args.source,
                           "org/name[@rev] or datasets/org/name[@rev] (a Hub dataset repo), or an http(s) URL")
      ->required();
  dataset_pull->add_option("files", dataset_pull_args.files,
                           "FILE... paths inside the repo (at least one for a repo, none for a URL)");
  dataset_pull->add_option("--name", dataset_pull_args.name, "Register as NAME [default: from the repo or the URL]");
  dataset_pull->add_option("--revision", dataset_pull_args.revision, "Hub revision (branch, tag or commit) of the repo");
  dataset_pull->add_option("--sha256", dataset_pull_args.sha256, "URL only: the file's expected sha256 (64 hex digits)");
  dataset_pull->footer("Examples:\n  gptqctl dataset pull org/corpus train.txt valid.jsonl --name corpus\n"
                       "  gptqctl dataset pull https://example.com/data/eval.txt --sha256 <64 hex digits>\n"
                       "A private or gated repo needs HF_TOKEN in gptqd's environment: the daemon reads it, gptqctl "
                       "does not.");

  auto* ps = app.add_subcommand("ps", "Models loaded on the device");
  bool gpu_verbose = false;
  auto* gpu = app.add_subcommand("gpu", "CPU and GPUs, and which INT4 kernel runs each GPTQ linear, and why");
  gpu->add_flag("--verbose,-v", gpu_verbose, "Also list why each other kernel was rejected in the common table");
  gpu->add_flag("--json", json, "Print the daemon's JSON");

  QuantizeArgs quantize_args;
  auto* quantize = app.add_subcommand("quantize", "Quantize a model (GPTQ or RTN) into a new tag, as a daemon job; "
                                                  "Ctrl-C detaches, the job keeps running");
  add_quantize_options(*quantize, quantize_args);
  int64_t job_id = 0;
  bool follow = false;
  const CLI::Validator job_id_check(
      [](std::string& v) {
        return !v.empty() && v.size() < 19 && v.find_first_not_of("0123456789") == std::string::npos && std::stoll(v) > 0
                   ? std::string()
                   : v + " is not a job ID (a positive number; see gptqctl jobs)";
      },
      "ID");
  auto* jobs = app.add_subcommand("jobs", "List the jobs; `jobs show ID` details one");
  auto* jobs_show = jobs->add_subcommand("show", "A job's state, parameters, quality report and per-layer losses");
  jobs_show->add_option("id", job_id, "Job ID")->required()->check(job_id_check);
  jobs_show->add_flag("--follow,-f", follow, "Follow its progress to the end (Ctrl-C detaches)");
  auto* cancel = app.add_subcommand("cancel", "Cancel a queued or running job");
  cancel->add_option("id", job_id, "Job ID")->required()->check(job_id_check);
  ExportArgs export_args;
  auto* export_cmd = app.add_subcommand("export", "Copy a model's files (e.g. a GPTQ checkpoint) into a folder, checked "
                                                  "against their sha256");
  export_cmd->add_option("model", export_args.model, "NAME[:TAG]")->required();
  export_cmd->add_option("dir", export_args.dir, "DIR (created when missing)")->required();
  export_cmd->add_flag("--force", export_args.force, "Write into a non-empty DIR (files of the same name are replaced)");

  std::string service_action;
  bool service_user = false;
  auto* service = app.add_subcommand("service", "Start, stop, restart, enable or disable gptqd under systemd, or show "
                                                "its status (talks to systemd, not to gptqd)");
  service->add_option("action", service_action, "start | stop | restart | status | enable | disable")
      ->required()
      ->check(CLI::IsMember(gptqd::ctl::service_actions()));
  service->add_flag("--user", service_user, "The user's units (systemctl --user) instead of the system's");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }

  if (socket.empty()) {
    const char* env = std::getenv("GPTQD_SOCKET");
    socket = (env && *env) ? std::string(env) : gptqd::protocol::default_socket_path().string();
    // No daemon of the user's own: the system service's socket (gptqd.socket), when there is one.
    std::error_code ec;
    if (!(env && *env) && !std::filesystem::exists(socket, ec) && std::filesystem::exists("/run/gptqd/gptqd.sock", ec)) {
      socket = "/run/gptqd/gptqd.sock";
    }
  }
  Context ctx{Client(socket), json, ::isatty(STDERR_FILENO) == 1, stdout, stderr};
  auto put = [&](const char* key, const auto& v) {
    if (v) run_args.options[key] = *v;
  };
  put("temperature", temperature);
  put("top_k", top_k);
  put("top_p", top_p);
  put("min_p", min_p);
  put("repeat_penalty", repeat_penalty);
  put("repeat_last_n", repeat_last_n);
  put("presence_penalty", presence_penalty);
  put("frequency_penalty", frequency_penalty);
  put("seed", seed);
  put("num_predict", max_tokens);
  put("num_ctx", num_ctx);
  if (!stops.empty()) run_args.options["stop"] = stops;
  try {
    if (service->parsed()) return gptqd::ctl::cmd_service(service_action, service_user, stdout);
    if (run->parsed()) return cmd_run(ctx, run_args);
    if (eval->parsed()) return cmd_eval(ctx, eval_args);
    if (dataset_add->parsed()) return cmd_dataset_add(ctx, dataset_name, dataset_files);
    if (dataset_list->parsed()) return cmd_dataset_list(ctx);
    if (dataset_pull->parsed()) return cmd_dataset_pull(ctx, dataset_pull_args);
    if (ps->parsed()) return cmd_ps(ctx);
    if (gpu->parsed()) return cmd_gpu(ctx, gpu_verbose);
    if (quantize->parsed()) return cmd_quantize(ctx, quantize_args);
    if (jobs_show->parsed()) return cmd_job_show(ctx, job_id, follow);
    if (jobs->parsed()) return cmd_jobs(ctx);
    if (cancel->parsed()) return cmd_cancel(ctx, job_id);
    if (export_cmd->parsed()) return cmd_export(ctx, export_args);
    if (status->parsed()) return cmd_status(ctx);
    if (pull->parsed()) return cmd_pull(ctx, pull_args);
    if (list->parsed() || app.got_subcommand("ls")) return cmd_list(ctx);
    if (show->parsed()) return cmd_show(ctx, model);
    if (rm->parsed()) return cmd_rm(ctx, model);
  } catch (const CtlError& e) {
    std::fprintf(stderr, "gptqctl: %s\n", printable(e.what()).c_str());
    return e.exit_code;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "gptqctl: %s\n", printable(e.what()).c_str());
    return kExitFailed;
  }
  return kExitUsage;
}
