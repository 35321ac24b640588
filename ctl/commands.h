// SPDX-License-Identifier: Apache-2.0
// gptqctl's subcommands: each maps its arguments to one request and renders the answer (ctl layer).
#pragma once

#include <cstdio>
#include <string>

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

// Each returns the process exit code or throws CtlError.
int cmd_status(Context& ctx);
int cmd_pull(Context& ctx, const PullArgs& args);
int cmd_list(Context& ctx);
int cmd_show(Context& ctx, const std::string& model);
int cmd_rm(Context& ctx, const std::string& model);

// Resolves what the user typed as a pull source: an existing path becomes absolute; org/repo
// stays as it is; anything else is a CtlError naming it.
std::string resolve_pull_source(const std::string& source);

}  // namespace gptqd::ctl
