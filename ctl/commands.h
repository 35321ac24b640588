// SPDX-License-Identifier: Apache-2.0
// gptqctl's subcommands: each maps its arguments to one request and renders the answer (ctl layer).
#pragma once

#include <cstdint>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "ctl/client.h"
#include "daemon/protocol.h"

namespace CLI {
class App;
}

namespace gptqd::ctl {

struct Context {
  Client client;
  bool json = false;      // --json: print the daemon's JSON (NDJSON for streams) instead of text
  bool tty = false;       // stderr is a terminal: progress bars
  FILE* out = stdout;
  FILE* err = stderr;
};

struct PullArgs {
  std::string source;
  std::string name;
  std::string revision;
};

// `dataset pull SOURCE [FILE...]`: SOURCE is a Hub dataset repo ("org/name[@rev]",
// "datasets/org/name[@rev]", with FILEs inside it) or one http(s) URL (no FILE; --sha256 optional).
struct DatasetPullArgs {
  std::string source;
  std::vector<std::string> files;
  std::string name;
  std::string revision;
  std::string sha256;
};
// The request the arguments send; CtlError(kExitUsage) naming what is wrong.
protocol::DatasetPullRequest make_dataset_pull_request(const DatasetPullArgs& args);

// Sampling flags of `run`; unset ones take the daemon's defaults.
struct RunArgs {
  std::string model;
  std::string prompt;                   // empty: interactive chat (or stdin when it is not a TTY)
  std::string system;
  bool raw = false;
  bool verbose = false;
  nlohmann::json options = nlohmann::json::object();  // Ollama "options" built from the flags
};

struct EvalArgs {
  std::string model;
  std::string dataset = "wikitext2";    // registered NAME or a file path
  int64_t seqlen = 2048;
  int64_t max_windows = 0;
};

// `quantize`: the flags are bound straight to `request`, so its defaults are the command's.
struct QuantizeArgs {
  protocol::QuantizeRequest request;
  bool detach = false;                  // print the job ID and return instead of following it
};
void add_quantize_options(CLI::App& cmd, QuantizeArgs& args);
// The request a parsed command line sends: model and tag checked, --calib/--eval resolved with
// resolve_dataset_arg, the rest checked by the daemon's own parser. CtlError(kExitUsage) when bad.
protocol::QuantizeRequest make_quantize_request(const QuantizeArgs& args);

struct ExportArgs {
  std::string model;
  std::string dir;
  bool force = false;                   // write into a non-empty DIR (same-name files are replaced)
};

// Each returns the process exit code or throws CtlError.
int cmd_run(Context& ctx, const RunArgs& args);
int cmd_eval(Context& ctx, const EvalArgs& args);
int cmd_dataset_add(Context& ctx, const std::string& name, const std::vector<std::string>& files);
int cmd_dataset_list(Context& ctx);
int cmd_dataset_pull(Context& ctx, const DatasetPullArgs& args);
int cmd_ps(Context& ctx);
// `gpu`: devices and the INT4 kernels; `verbose` adds the rejections of the common table.
int cmd_gpu(Context& ctx, bool verbose);
int cmd_status(Context& ctx);
int cmd_pull(Context& ctx, const PullArgs& args);
int cmd_list(Context& ctx);
int cmd_show(Context& ctx, const std::string& model);
int cmd_rm(Context& ctx, const std::string& model);
// Without --detach, follows the job; Ctrl-C detaches (the job keeps running) and returns 0.
int cmd_quantize(Context& ctx, const QuantizeArgs& args);
int cmd_jobs(Context& ctx);
int cmd_job_show(Context& ctx, int64_t id, bool follow);
int cmd_cancel(Context& ctx, int64_t id);
int cmd_export(Context& ctx, const ExportArgs& args);

// Resolves what the user typed as a pull source: an existing path becomes absolute; org/repo
// stays as it is; anything else is a CtlError naming it.
std::string resolve_pull_source(const std::string& source);

// Resolves a --calib/--eval value: an existing file becomes its absolute path; a value with a '/'
// that names no file is a CtlError; anything else is a registered dataset's name, sent as it is.
std::string resolve_dataset_arg(const std::string& value);

// A file name `export` may create inside DIR: not empty, ".", ".." or "*.partial" (the name of
// its own temporary files), no '/' or NUL, at most 255 bytes. Sets `why` when it is not.
bool is_plain_file_name(std::string_view name, std::string* why);

// ---- shared by the cmd_* files ----
void print(Context& ctx, const std::string& s);
// --json: prints the document and says so.
bool print_json(Context& ctx, const nlohmann::json& j);
// The body as JSON, or a CtlError quoting it.
nlohmann::json parse_json_or_fail(const HttpResult& r);
// One request whose 200 answer is a JSON document; any other status is a CtlError.
nlohmann::json call(Context& ctx, const std::string& method, const std::string& target, const std::string& body = {});
// Client-side check of a NAME[:TAG] so a typo fails before any request; the daemon checks again.
std::string checked_ref(const std::string& text);

}  // namespace gptqd::ctl
