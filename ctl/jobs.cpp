// SPDX-License-Identifier: Apache-2.0
// `gptqctl quantize`, `jobs`, `jobs show` and `cancel`: start a quantize job and follow its event
// stream; Ctrl-C detaches from a job, it never cancels one (ctl layer).
#include <CLI/CLI.hpp>
#include <filesystem>
#include <functional>
#include <optional>
#include <regex>

#include "ctl/commands.h"
#include "ctl/render.h"

namespace gptqd::ctl {
namespace {

using nlohmann::json;

std::string string_of(const json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || j[key].is_null()) return "";
  return j[key].is_string() ? j[key].get<std::string>() : j[key].dump();
}

int64_t job_id_of(const json& j) {
  for (const char* key : {"job", "id"}) {
    if (j.is_object() && j.contains(key) && j[key].is_number_integer()) return j[key].get<int64_t>();
  }
  return 0;
}

std::string detached_message(int64_t job) {
  if (job <= 0) return "detached: the job keeps running; list jobs with gptqctl jobs\n";
  const std::string id = std::to_string(job);
  return "detached: job " + id + " keeps running; follow it with gptqctl jobs show " + id +
         " --follow, cancel it with gptqctl cancel " + id + "\n";
}

// Follows a job's NDJSON event stream (POST /api/quantize with "stream": true, or GET
// /api/jobs/ID?stream=true) to its final event. `kind`, `job` and `source` are what is known
// beforehand.
int follow_job(Context& ctx, const std::string& method, const std::string& target, const std::string& body,
               const std::string& kind, int64_t job, std::string source) {
  install_interrupt_handler();
  JobRenderer progress(ctx.err, ctx.tty);
  json done;
  std::string error, model;
  bool cancelled = false;
  HttpResult r;
  try {
    r = ctx.client.stream(method, target, body, [&](const json& ev) {
      if (ctx.json) {
        print(ctx, ev.dump() + "\n");
        std::fflush(ctx.out);
      }
      const std::string event = string_of(ev, "event");
      if (int64_t id = job_id_of(ev); id > 0 && (event == "queued" || job == 0)) job = id;
      if (event == "queued" || event == "done") {
        if (std::string m = string_of(ev, "model"); !m.empty()) model = m;
        if (std::string s = string_of(ev, "source"); !s.empty()) source = s;
      }
      if (event == "error" || (event.empty() && ev.contains("error"))) {
        error = string_of(ev, "error");
        if (error.empty()) error = "unknown error";
      } else if (event == "done") {
        done = ev;
      } else if (event == "cancelled") {
        cancelled = true;
      } else if (!ctx.json) {
        progress.on_event(ev);
      }
    });
  } catch (const Interrupted&) {
    progress.finish();
    take_interrupt();
    std::fputs(detached_message(job).c_str(), ctx.err);
    return kExitOk;
  }
  progress.finish();
  if (r.status != 200) throw CtlError(kExitFailed, error_message(r));
  const std::string which = job > 0 ? "job " + std::to_string(job) : std::string("the job");
  if (!error.empty()) throw CtlError(kExitFailed, which + " failed: " + error);
  if (cancelled) throw CtlError(kExitFailed, which + " was cancelled");
  if (done.is_null()) {
    throw CtlError(kExitFailed, "the event stream of " + which + " ended without a result (did the daemon stop?)" +
                                    (job > 0 ? "; see gptqctl jobs show " + std::to_string(job) : std::string()));
  }
  const json quality = done.contains("quality") && done["quality"].is_object() ? done["quality"] : json();
  std::string state = string_of(done, "state");
  if (state.empty()) state = string_of(quality, "state");
  if (!ctx.json) {
    std::string head = kind == "quantize" ? "quantized "
                       : kind == "pull"   ? "pulled "
                                          : which + " finished: ";
    head += printable(model.empty() ? "?" : model);
    if (!source.empty()) head += " from " + printable(source);
    if (done.contains("elapsed_s") && done["elapsed_s"].is_number()) {
      head += " in " + format_duration(done["elapsed_s"].get<double>());
    }
    print(ctx, head + "\n");
    auto rows = quality_rows(quality);
    if (!state.empty() && (rows.empty() || rows.back()[0] != "State")) rows.push_back({"State", printable(state)});
    for (auto& row : rows) row[0] = "  " + row[0];
    print(ctx, format_table(rows));
  }
  if (state == "failed-quality") {
    std::string msg = printable(model) + " failed the quality check";
    if (std::string reason = string_of(quality, "reason"); !reason.empty()) msg += ": " + printable(reason);
    msg += "; it is registered as failed-quality (see gptqctl show " + printable(model) + ", remove it with gptqctl rm " +
           printable(model) + ")";
    throw CtlError(kExitFailed, msg);
  }
  return kExitOk;
}

// A CLI11 check whose message reads "--bits: 5 is not supported (supported: 2, 3, 4, 8)".
CLI::Validator check(std::string description, std::function<std::string(const std::string&)> why_not) {
  return CLI::Validator([why_not](std::string& v) { return why_not(v); }, std::move(description));
}

std::optional<double> to_number(const std::string& v) {
  try {
    size_t used = 0;
    const double d = std::stod(v, &used);
    if (used == v.size()) return d;
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

}  // namespace

std::string resolve_dataset_arg(const std::string& value) {
  if (value.empty()) return value;
  std::error_code ec;
  if (std::filesystem::exists(value, ec)) return std::filesystem::absolute(value, ec).lexically_normal().string();
  if (value.find('/') != std::string::npos) {
    throw CtlError(kExitFailed, "no such file: " + printable(value) + " (expected a registered dataset NAME or a FILE)");
  }
  return value;
}

void add_quantize_options(CLI::App& cmd, QuantizeArgs& args) {
  protocol::QuantizeRequest& r = args.request;
  cmd.add_option("model", r.model, "NAME[:TAG] of a safetensors (fp16/bf16/fp32) model")->required();
  cmd.add_option("--method", r.method, "gptq, or rtn (round-to-nearest: no calibration)")
      ->capture_default_str()
      ->check(check("gptq|rtn", [](const std::string& v) {
        return v == "gptq" || v == "rtn" ? std::string() : v + " is not a method (gptq or rtn)";
      }));
  cmd.add_option("--bits", r.bits, "Bits per weight: 2, 3, 4 or 8")->capture_default_str()->check(check("2|3|4|8", [](const std::string& v) {
    return v == "2" || v == "3" || v == "4" || v == "8" ? std::string() : v + " is not supported (supported: 2, 3, 4, 8)";
  }));
  cmd.add_option("--group-size", r.group_size, "Input columns sharing one scale; -1: one group per row")
      ->capture_default_str()
      ->check(check("N>0|-1", [](const std::string& v) {
        auto d = to_number(v);
        return d && (*d == -1 || *d >= 1) ? std::string() : v + " is not a group size (a positive number or -1)";
      }));
  cmd.add_flag("--act-order", r.desc_act, "Quantize columns by decreasing Hessian diagonal (desc_act)");
  cmd.add_flag("--sym,!--asym", r.sym, "Symmetric (the default), or asymmetric with zero points");
  cmd.add_option("--damp", r.damp_percent, "Dampening: this fraction of the mean Hessian diagonal is added to it")
      ->capture_default_str()
      ->check(check("0<F<1", [](const std::string& v) {
        auto d = to_number(v);
        return d && *d > 0 && *d < 1 ? std::string() : v + " is not between 0 and 1 (exclusive), e.g. 0.01";
      }));
  cmd.add_flag("--static-groups", r.static_groups, "With --act-order: group scales fixed before the reordering");
  cmd.add_option("--calib", r.calib, "Calibration text: a registered dataset NAME or a FILE");
  cmd.add_option("--samples", r.samples, "Calibration windows")->capture_default_str();
  cmd.add_option("--seqlen", r.seqlen, "Tokens per calibration window")->capture_default_str();
  cmd.add_option("--seed", r.seed, "Seed for picking the calibration windows")->capture_default_str();
  cmd.add_option("--tag", r.tag, "Tag of the result [default: gptq-<bits>b-g<group>[-act][-asym]]");
  cmd.add_option("--device", r.device, "auto, cpu or cuda:N")->capture_default_str()->check(check("auto|cpu|cuda:N", [](const std::string& v) {
    static const std::regex kDevice("auto|cpu|cuda(:[0-9]{1,3})?");
    return std::regex_match(v, kDevice) ? std::string() : v + " is not a device (auto, cpu or cuda:N)";
  }));
  cmd.add_option("--eval", r.eval, "Perplexity check on a dataset NAME or FILE [default: held-out calibration text]");
  cmd.add_option("--eval-windows", r.eval_windows, "Perplexity windows, before and after (0: skip the check)")
      ->capture_default_str();
  cmd.add_option("--eval-seqlen", r.eval_seqlen, "Tokens per perplexity window")->capture_default_str();
  cmd.add_option("--max-ppl-ratio", r.max_ppl_ratio, "Mark the result failed-quality above this perplexity ratio")
      ->capture_default_str();
  cmd.add_flag("--detach", args.detach, "Print the job ID and return; the job runs in the daemon");
}

protocol::QuantizeRequest make_quantize_request(const QuantizeArgs& args) {
  protocol::QuantizeRequest r = args.request;
  r.model = checked_ref(r.model);
  std::string why;
  if (!r.tag.empty() && !protocol::is_valid_tag(r.tag, &why)) {
    throw CtlError(kExitUsage, "invalid tag '" + printable(r.tag) + "': " + why);
  }
  r.calib = resolve_dataset_arg(r.calib);
  r.eval = resolve_dataset_arg(r.eval);
  try {
    (void)protocol::QuantizeRequest::from_json(r.to_json());
  } catch (const protocol::RequestError& e) {
    throw CtlError(kExitUsage, std::string("invalid quantize options: ") + e.what());
  }
  return r;
}

int cmd_quantize(Context& ctx, const QuantizeArgs& args) {
  protocol::QuantizeRequest req = make_quantize_request(args);
  if (!args.detach) {
    req.stream = true;
    return follow_job(ctx, "POST", "/api/quantize", req.to_json().dump(), "quantize", 0, req.model);
  }
  req.stream = false;
  HttpResult r = ctx.client.request("POST", "/api/quantize", req.to_json().dump());
  if (r.status < 200 || r.status > 299) throw CtlError(kExitFailed, error_message(r));
  json j = parse_json_or_fail(r);
  if (print_json(ctx, j)) return kExitOk;
  const int64_t job = job_id_of(j);
  if (job <= 0) throw CtlError(kExitFailed, "gptqd accepted the job but sent no job id: " + r.body.substr(0, 200));
  std::string source = string_of(j, "source"), target = string_of(j, "model");
  if (source.empty()) source = req.model;
  if (target.empty()) target = string_of(j, "target");
  const std::string id = std::to_string(job);
  print(ctx, "job " + id + ": quantizing " + printable(source) + " -> " + printable(target.empty() ? "?" : target) +
                 "; follow with gptqctl jobs show " + id + " --follow\n");
  return kExitOk;
}

int cmd_jobs(Context& ctx) {
  json j = call(ctx, "GET", "/api/jobs");
  if (print_json(ctx, j)) return kExitOk;
  print(ctx, format_jobs_table(j));
  return kExitOk;
}

int cmd_job_show(Context& ctx, int64_t id, bool follow) {
  const std::string target = "/api/jobs/" + std::to_string(id);
  json j = call(ctx, "GET", target);  // with --follow too: an unknown ID fails here, and the kind and source are known
  if (follow) return follow_job(ctx, "GET", target + "?stream=true", {}, string_of(j, "kind"), id, string_of(j, "source"));
  if (print_json(ctx, j)) return kExitOk;
  print(ctx, format_job_details(j));
  return kExitOk;
}

int cmd_cancel(Context& ctx, int64_t id) {
  json j = call(ctx, "DELETE", "/api/jobs/" + std::to_string(id));
  if (print_json(ctx, j)) return kExitOk;
  const std::string status = string_of(j, "status");
  if (status.empty() || status == "cancelled") {
    print(ctx, "cancelled job " + std::to_string(id) + "\n");
  } else {
    print(ctx, "job " + std::to_string(id) + ": " + printable(status) + "\n");
  }
  return kExitOk;
}

}  // namespace gptqd::ctl
