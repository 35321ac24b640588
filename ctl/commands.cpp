// SPDX-License-Identifier: Apache-2.0
// gptqctl subcommands (ctl layer).
#include "ctl/commands.h"

#include <filesystem>
#include <regex>

#include "ctl/render.h"
#include "daemon/protocol.h"

namespace gptqd::ctl {
namespace {

using nlohmann::json;

std::string config_summary(const json& c) {
  if (!c.is_object()) return "";
  auto num = [&](const char* k) { return c.contains(k) && c[k].is_number() ? c[k].dump() : std::string("?"); };
  std::string s = "layers " + num("n_layers") + ", hidden " + num("hidden_size") + ", heads " + num("n_heads") + "/" +
                  num("n_kv_heads") + " kv, head_dim " + num("head_dim") + ", ffn " + num("intermediate_size") +
                  ", vocab " + num("vocab_size") + ", context " + num("max_position_embeddings") + ", rope theta " +
                  num("rope_theta");
  if (c.value("tie_word_embeddings", false)) s += ", tied embeddings";
  if (c.value("attention_bias", false)) s += ", qkv bias";
  if (c.contains("rope_scaling") && c["rope_scaling"].is_object()) {
    s += ", rope scaling " + printable(c["rope_scaling"].value("type", std::string("?")));
  }
  return s;
}

}  // namespace

json parse_json_or_fail(const HttpResult& r) {
  json j = json::parse(r.body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) throw CtlError(kExitFailed, "gptqd sent a malformed response: " + r.body.substr(0, 200));
  return j;
}

bool print_json(Context& ctx, const json& j) {
  if (!ctx.json) return false;
  std::fputs((j.dump() + "\n").c_str(), ctx.out);
  return true;
}

json call(Context& ctx, const std::string& method, const std::string& target, const std::string& body) {
  HttpResult r = ctx.client.request(method, target, body);
  if (r.status != 200) throw CtlError(kExitFailed, error_message(r));
  return parse_json_or_fail(r);
}

std::string checked_ref(const std::string& text) {
  std::string why;
  if (!protocol::parse_model_ref(text, &why)) {
    throw CtlError(kExitUsage, "invalid model name '" + printable(text) + "': " + why);
  }
  return text;
}

void print(Context& ctx, const std::string& s) { std::fputs(s.c_str(), ctx.out); }

std::string resolve_pull_source(const std::string& source) {
  if (source.empty()) throw CtlError(kExitUsage, "pull needs a SOURCE: a .gguf file, a model folder or org/repo");
  std::error_code ec;
  std::filesystem::path p(source);
  if (std::filesystem::exists(p, ec)) return std::filesystem::absolute(p, ec).lexically_normal().string();
  static const std::regex kRepo("[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}(@[A-Za-z0-9._/-]+)?");
  if (std::regex_match(source, kRepo)) return source;
  throw CtlError(kExitFailed, "no such file or directory: " + printable(source) +
                                  " (expected a .gguf file, a Hugging Face model folder or org/repo)");
}

int cmd_status(Context& ctx) {
  json j = call(ctx, "GET", "/api/health");
  if (ctx.json) {
    j["socket"] = ctx.client.socket_path().string();
    print(ctx, j.dump() + "\n");
    return kExitOk;
  }
  const auto n_models = j.value("models", 0);
  print(ctx, "gptqd " + printable(j.value("version", std::string("?"))) + " is running on " +
                 printable(ctx.client.socket_path().string()) + " (pid " + std::to_string(j.value("pid", 0)) + ", up " +
                 std::to_string(j.value("uptime_s", 0)) + " s, " + std::to_string(n_models) +
                 (n_models == 1 ? " model" : " models") + ")\n");
  return kExitOk;
}

int cmd_pull(Context& ctx, const PullArgs& args) {
  protocol::PullRequest req;
  req.source = resolve_pull_source(args.source);
  if (!args.name.empty()) req.name = checked_ref(args.name);
  req.revision = args.revision;
  req.stream = true;
  ProgressRenderer progress(ctx.err, ctx.tty);
  std::string error, done_model;
  json done;
  HttpResult r = ctx.client.stream("POST", "/api/pull", req.to_json().dump(), [&](const json& ev) {
    if (ctx.json) {
      print(ctx, ev.dump() + "\n");
      std::fflush(ctx.out);
    }
    if (ev.contains("error")) {
      error = ev["error"].is_string() ? ev["error"].get<std::string>() : ev["error"].dump();
    } else if (ev.value("event", "") == "done") {
      done = ev;
    } else if (!ctx.json) {
      progress.on_event(ev);
    }
  });
  progress.finish();
  if (r.status != 200) throw CtlError(r.status == 409 ? kExitFailed : kExitFailed, error_message(r));
  if (!error.empty()) throw CtlError(kExitFailed, "pull failed: " + error);
  if (done.is_null()) throw CtlError(kExitFailed, "the pull ended without a result (did the daemon stop?)");
  if (!ctx.json) {
    print(ctx, "pulled " + printable(done.value("model", std::string())) + " (" + printable(done.value("architecture", std::string())) +
                   ", " + protocol::format_param_count(done.value("n_params", uint64_t{0})) + " params, " +
                   printable(done.value("dtype", std::string())) + ", " + human_bytes(done.value("size", uint64_t{0})) + ")\n");
  }
  return kExitOk;
}

int cmd_list(Context& ctx) {
  json j = call(ctx, "GET", "/api/tags");
  if (print_json(ctx, j)) return kExitOk;
  std::vector<std::vector<std::string>> rows = {{"NAME", "TAG", "ARCH", "PARAMS", "DTYPE", "SIZE", "SOURCE"}};
  for (const auto& m : j.value("models", json::array())) {
    protocol::ModelEntry e = protocol::ModelEntry::from_json(m);
    // A quantized tag that failed its quality check is marked; a ready one is a plain tag.
    const bool failed = m.is_object() && m.contains("state") && m["state"] == "failed-quality";
    rows.push_back({printable(e.name),
                    printable(e.tag) + (e.is_default ? " (default)" : "") + (failed ? " (failed-quality)" : ""),
                    printable(e.architecture),
                    protocol::format_param_count(e.n_params), printable(e.dtype), human_bytes(e.size_bytes),
                    printable(e.source)});
  }
  if (rows.size() == 1) {
    print(ctx, "no models yet; add one with: gptqctl pull FILE.gguf | MODEL_FOLDER\n");
    return kExitOk;
  }
  print(ctx, format_table(rows));
  return kExitOk;
}

int cmd_show(Context& ctx, const std::string& model) {
  protocol::ModelRequest req{checked_ref(model)};
  json j = call(ctx, "POST", "/api/show", req.to_json().dump());
  if (print_json(ctx, j)) return kExitOk;
  protocol::ModelEntry e = protocol::ModelEntry::from_json(j);
  std::vector<std::vector<std::string>> rows = {
      {"Model", printable(e.ref()) + (e.is_default ? " (default tag)" : "")},
      {"Architecture", printable(e.architecture)},
      {"Parameters", with_commas(e.n_params) + " (" + protocol::format_param_count(e.n_params) + ")"},
      {"Dtype", printable(e.dtype)},
      {"Format", printable(e.format)},
      {"Size on disk", with_commas(e.size_bytes) + " bytes (" + human_bytes(e.size_bytes) + ")"},
      {"Source", printable(e.source) + " (" + printable(e.source_kind) + ")"},
      {"Digest", printable(e.digest)},
      {"Added", protocol::rfc3339_utc(e.created_at)},
      {"Config", config_summary(e.config)},
  };
  // Quantized tags: the quality report of the job that made them, and their state.
  json q = j.contains("quality") && j["quality"].is_object() ? j["quality"] : json();
  if (j.contains("state") && j["state"].is_string()) {
    if (!q.is_object()) q = json::object();
    if (q.value("state", json()) != j["state"]) q.erase("reason");  // the model's state wins
    q["state"] = j["state"];
  }
  const auto quality = quality_rows(q);
  rows.insert(rows.end(), quality.begin(), quality.end());
  // GPTQ tags: the kernel each linear group gets on this machine.
  if (j.contains("kernels")) {
    const auto kernels = kernel_rows(j["kernels"]);
    rows.insert(rows.end(), kernels.begin(), kernels.end());
  }
  print(ctx, format_table(rows));
  print(ctx, "Files\n");
  std::vector<std::vector<std::string>> files;
  for (const auto& f : e.files) files.push_back({"  " + printable(f.digest), with_commas(f.size_bytes), printable(f.name)});
  print(ctx, format_table(files));
  return kExitOk;
}

int cmd_rm(Context& ctx, const std::string& model) {
  protocol::ModelRequest req{checked_ref(model)};
  json j = call(ctx, "DELETE", "/api/delete", req.to_json().dump());
  if (print_json(ctx, j)) return kExitOk;
  print(ctx, "deleted " + printable(j.value("model", model)) + " (freed " + human_bytes(j.value("freed_bytes", uint64_t{0})) +
                 ")\n");
  return kExitOk;
}

int cmd_eval(Context& ctx, const EvalArgs& args) {
  protocol::EvalRequest req;
  req.model = checked_ref(args.model);
  req.dataset = args.dataset;
  std::error_code ec;
  if (std::filesystem::exists(args.dataset, ec)) {
    req.dataset = std::filesystem::absolute(args.dataset, ec).lexically_normal().string();
  }
  req.seqlen = args.seqlen;
  req.max_windows = args.max_windows;
  req.stream = true;
  install_interrupt_handler();
  json done;
  std::string error;
  bool bar_open = false;
  HttpResult r;
  try {
    r = ctx.client.stream("POST", "/api/eval", req.to_json().dump(), [&](const json& ev) {
      if (ev.contains("error")) {
        error = ev["error"].is_string() ? ev["error"].get<std::string>() : ev["error"].dump();
      } else if (ev.value("event", "") == "done") {
        done = ev;
      } else if (!ctx.json && ev.contains("total")) {
        const auto n = ev.value("completed", 0), total = ev.value("total", 0);
        if (ctx.tty) {
          std::fprintf(ctx.err, "\r\x1b[Kevaluating: window %d/%d, perplexity so far %.4f", n, total,
                       ev.value("perplexity", 0.0));
          bar_open = true;
        } else {
          std::fprintf(ctx.err, "window %d/%d: perplexity so far %.4f\n", n, total, ev.value("perplexity", 0.0));
        }
        std::fflush(ctx.err);
      } else if (!ctx.json) {
        std::fprintf(ctx.err, "%s\n", printable(ev.value("status", std::string())).c_str());
      }
    });
  } catch (const Interrupted&) {
    if (bar_open) std::fputc('\n', ctx.err);
    throw CtlError(130, "evaluation cancelled");
  }
  if (bar_open) std::fputc('\n', ctx.err);
  if (r.status != 200) throw CtlError(kExitFailed, error_message(r));
  if (!error.empty()) throw CtlError(kExitFailed, "evaluation failed: " + error);
  if (done.is_null()) throw CtlError(kExitFailed, "the evaluation ended without a result (did the daemon stop?)");
  if (ctx.json) {
    json out = {{"perplexity", done["perplexity"]}, {"tokens", done["tokens"]}, {"windows", done["windows"]},
                {"seqlen", done["seqlen"]}};
    print(ctx, out.dump() + "\n");
  } else {
    char line[256];
    std::snprintf(line, sizeof line, "perplexity %.4f (%lld tokens in %lld window(s) of %lld; dataset %s)\n",
                  done.value("perplexity", 0.0), static_cast<long long>(done.value("tokens", 0)),
                  static_cast<long long>(done.value("windows", 0)), static_cast<long long>(done.value("seqlen", 0)),
                  printable(done.value("dataset", std::string())).c_str());
    print(ctx, line);
  }
  return kExitOk;
}

int cmd_dataset_add(Context& ctx, const std::string& name, const std::vector<std::string>& files) {
  protocol::DatasetAddRequest req;
  req.name = name;
  for (const auto& f : files) {
    std::error_code ec;
    if (!std::filesystem::is_regular_file(f, ec)) throw CtlError(kExitFailed, "no such file: " + printable(f));
    req.files.push_back(std::filesystem::absolute(f, ec).lexically_normal().string());
  }
  json j = call(ctx, "POST", "/api/datasets", req.to_json().dump());
  if (ctx.json) {
    print(ctx, j.dump() + "\n");
  } else {
    print(ctx, "added dataset " + printable(name) + " (" + std::to_string(j.value("files", 0)) + " file(s), " +
                   human_bytes(j.value("size", uint64_t{0})) + ")\n");
  }
  return kExitOk;
}

int cmd_dataset_list(Context& ctx) {
  json j = call(ctx, "GET", "/api/datasets");
  if (print_json(ctx, j)) return kExitOk;
  std::vector<std::vector<std::string>> rows = {{"NAME", "FILES", "SIZE", "ADDED"}};
  for (const auto& d : j.value("datasets", json::array())) {
    rows.push_back({printable(d.value("name", std::string())), std::to_string(d.value("files", json::array()).size()),
                    human_bytes(d.value("size", uint64_t{0})), protocol::rfc3339_utc(d.value("created_at", int64_t{0}))});
  }
  if (rows.size() == 1) {
    print(ctx, "no datasets yet; add one with: gptqctl dataset add NAME FILE...\n");
    return kExitOk;
  }
  print(ctx, format_table(rows));
  return kExitOk;
}

int cmd_ps(Context& ctx) {
  json j = call(ctx, "GET", "/api/ps");
  if (print_json(ctx, j)) return kExitOk;
  std::vector<std::vector<std::string>> rows = {{"NAME", "SIZE", "DEVICE", "ACTIVE", "QUEUED", "UNTIL"}};
  for (const auto& m : j.value("models", json::array())) {
    rows.push_back({printable(m.value("name", std::string())), human_bytes(m.value("size", uint64_t{0})),
                    printable(m.value("device", std::string())), std::to_string(m.value("active", 0)),
                    std::to_string(m.value("queued", 0)), printable(m.value("expires_at", std::string()))});
  }
  if (rows.size() == 1) {
    print(ctx, "no models loaded\n");
    return kExitOk;
  }
  print(ctx, format_table(rows));
  return kExitOk;
}

int cmd_gpu(Context& ctx, bool verbose) {
  json j = call(ctx, "GET", "/api/gpu");
  if (print_json(ctx, j)) return kExitOk;
  print(ctx, format_gpu_report(j, verbose));
  return kExitOk;
}

}  // namespace gptqd::ctl
