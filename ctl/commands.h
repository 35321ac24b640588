// SPDX-License-Identifier: Apache-2.0
// gptqctl's subcommands: each maps its arguments to one request and renders the answer (ctl layer).
#pragma once

#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ctl/client.h"

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

// Each returns the process exit code or throws CtlError.
int cmd_run(Context& ctx, const RunArgs& args);
int cmd_eval(Context& ctx, const EvalArgs& args);
int cmd_dataset_add(Context& ctx, const std::string& name, const std::vector<std::string>& files);
int cmd_dataset_list(Context& ctx);
int cmd_ps(Context& ctx);
int cmd_status(Context& ctx);
int cmd_pull(Context& ctx, const PullArgs& args);
int cmd_list(Context& ctx);
int cmd_show(Context& ctx, const std::string& model);
int cmd_rm(Context& ctx, const std::string& model);

// Resolves what the user typed as a pull source: an existing path becomes absolute; org/repo
// stays as it is; anything else is a CtlError naming it.
std::string resolve_pull_source(const std::string& source);

}  // namespace gptqd::ctl
