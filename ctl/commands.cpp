// SPDX-License-Identifier: Apache-2.0
// gptqctl subcommands (ctl layer).
#include "ctl/commands.h"

#include <algorithm>
#include <cctype>
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

namespace {

// Follows the NDJSON stream of a pull (of a model or a dataset) to its "done" event, which it
// returns. --json prints the events as they come; otherwise they are rendered on stderr. An
// "error" event, a refusal, Ctrl-C or a stream that stops early is a CtlError naming `what`.
json follow_pull(Context& ctx, const std::string& target, const json& body, const std::string& what) {
  ProgressRenderer progress(ctx.err, ctx.tty);
  std::string error;
  json done;
  install_interrupt_handler();
  HttpResult r;
  try {
    r = ctx.client.stream("POST", target, body.dump(), [&](const json& ev) {
      if (ctx.json) {
        print(ctx, ev.dump() + "\n");
        std::fflush(ctx.out);
      }
      const bool object = ev.is_object();
      const std::string event = object && ev.contains("event") && ev["event"].is_string() ? ev["event"].get<std::string>() : "";
      if (event == "error" || (object && ev.contains("error"))) {
        const json e = ev.value("error", json());
        error = e.is_string() ? e.get<std::string>() : e.dump();
        if (error.empty() || error == "null") error = "unknown error";
      } else if (event == "done") {
        done = ev;
      } else if (!ctx.json) {
        progress.on_event(ev);
      }
    });
  } catch (const Interrupted&) {
    progress.finish();
    take_interrupt();
    throw CtlError(130, what + " interrupted (gptqd stops it when its client goes away)");
  }
  progress.finish();
  if (r.status != 200) throw CtlError(kExitFailed, error_message(r));
  if (!error.empty()) throw CtlError(kExitFailed, what + " failed: " + error);
  if (done.is_null()) throw CtlError(kExitFailed, "the " + what + " ended without a result (did the daemon stop?)");
  return done;
}

// Strings and numbers of a "done" event, read defensively.
std::string done_text(const json& done, const char* key) {
  if (!done.contains(key) || done[key].is_null()) return "";
  return printable(done[key].is_string() ? done[key].get<std::string>() : done[key].dump());
}

uint64_t done_count(const json& done, const char* key) {
  if (!done.contains(key)) return 0;
  const json& v = done[key];
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer()) return v.get<int64_t>() < 0 ? 0 : static_cast<uint64_t>(v.get<int64_t>());
  if (v.is_number_float() && v.get<double>() >= 0 && v.get<double>() < 1.8e19) return static_cast<uint64_t>(v.get<double>());
  return 0;
}

bool is_url(const std::string& s) {
  auto starts = [&](std::string_view prefix) {
    return s.size() >= prefix.size() && std::equal(prefix.begin(), prefix.end(), s.begin(), [](char a, char b) {
             return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
           });
  };
  return starts("http://") || starts("https://");
}

}  // namespace

int cmd_pull(Context& ctx, const PullArgs& args) {
  protocol::PullRequest req;
  req.source = resolve_pull_source(args.source);
  if (!args.name.empty()) req.name = checked_ref(args.name);
  req.revision = args.revision;
  req.stream = true;
  const json done = follow_pull(ctx, "/api/pull", req.to_json(), "pull");
  if (!ctx.json) {
    print(ctx, "pulled " + done_text(done, "model") + " (" + done_text(done, "architecture") + ", " +
                   protocol::format_param_count(done_count(done, "n_params")) + " params, " + done_text(done, "dtype") +
                   ", " + human_bytes(done_count(done, "size")) + ")\n");
  }
  return kExitOk;
}

protocol::DatasetPullRequest make_dataset_pull_request(const DatasetPullArgs& args) {
  auto usage = [](const std::string& why) { return CtlError(kExitUsage, why); };
  protocol::DatasetPullRequest req;
  req.source = args.source;
  req.files = args.files;
  req.name = args.name;
  req.revision = args.revision;
  req.stream = true;
  if (args.source.empty()) throw usage("dataset pull needs a SOURCE: a Hub dataset repo org/name[@rev] or an http(s) URL");
  std::string why;
  if (!args.name.empty() && !protocol::is_valid_name(args.name, &why)) {
    throw usage("invalid dataset name '" + printable(args.name) + "': " + why);
  }
  if (is_url(args.source)) {
    const size_t host = args.source.find("://") + 3;
    const bool bad_char = std::any_of(args.source.begin(), args.source.end(), [](char c) {
      return static_cast<unsigned char>(c) <= 0x20 || c == 0x7f;
    });
    if (host >= args.source.size() || args.source[host] == '/' || bad_char) {
      throw usage("invalid URL '" + printable(args.source) + "' (expected http(s)://HOST/PATH, without spaces)");
    }
    if (!args.files.empty()) {
      throw usage("a URL is one file: FILE arguments are for a Hub dataset repo (got " + printable(args.files[0]) + ")");
    }
    if (!args.revision.empty()) throw usage("--revision is for a Hub dataset repo, not a URL");
    if (!args.sha256.empty()) {
      if (args.sha256.size() != 64 || args.sha256.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos) {
        throw usage("--sha256 must be 64 hex digits (got '" + printable(args.sha256) + "')");
      }
      req.sha256 = args.sha256;
      std::transform(req.sha256.begin(), req.sha256.end(), req.sha256.begin(),
                     [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    }
    return req;
  }

  static const std::regex kRepo(
      "(datasets/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}(@([A-Za-z0-9._/-]+))?");
  std::smatch m;
  if (!std::regex_match(args.source, m, kRepo)) {
    throw usage("invalid SOURCE '" + printable(args.source) +
                "': expected a Hub dataset repo org/name[@rev] (or datasets/org/name[@rev]) or an http(s) URL");
  }
  if (m[3].matched && !args.revision.empty() && m[3].str() != args.revision) {
    throw usage("two revisions: '@" + printable(m[3].str()) + "' in SOURCE and --revision " + printable(args.revision));
  }
  if (!args.sha256.empty()) {
    throw usage("--sha256 is for a URL; files of a Hub repo are checked against the digests the Hub lists");
  }
  if (args.files.empty()) {
    throw usage("a Hub dataset repo needs the FILE(s) to fetch, e.g. gptqctl dataset pull " + printable(args.source) +
                " train.txt");
  }
  for (const auto& f : args.files) {
    std::string bad;
    if (f.empty()) bad = "it is empty";
    else if (f.front() == '/') bad = "it is absolute; give the path inside the repo";
    else if (std::any_of(f.begin(), f.end(), [](char c) { return static_cast<unsigned char>(c) < 0x20 || c == 0x7f; }))
      bad = "it contains a control character";
    else if (f.find('\\') != std::string::npos)
      bad = "it contains '\\' (the Hub's paths use '/')";
    else {
      size_t start = 0;
      while (bad.empty() && start <= f.size()) {
        const size_t end = std::min(f.find('/', start), f.size());
        const std::string_view seg(f.data() + start, end - start);
        if (seg == "..") bad = "it has a '..' segment";
        else if (seg.empty() || seg == ".") bad = "it has an empty or '.' segment";
        start = end + 1;
      }
    }
    if (!bad.empty()) throw usage("invalid FILE '" + printable(f) + "': " + bad);
  }
  return req;
}

int cmd_dataset_pull(Context& ctx, const DatasetPullArgs& args) {
  const protocol::DatasetPullRequest req = make_dataset_pull_request(args);
  const json done = follow_pull(ctx, "/api/datasets/pull", req.to_json(), "dataset pull");
  if (!ctx.json) {
    const uint64_t n = done_count(done, "files");
    print(ctx, "pulled dataset " + done_text(done, "dataset") + " (" + std::to_string(n) + " file(s), " +
                   human_bytes(done_count(done, "size")) + ")\n");
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
