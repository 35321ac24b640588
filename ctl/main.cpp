// SPDX-License-Identifier: Apache-2.0
// gptqctl's entry point: argument parsing, the subcommand table and exit codes (ctl layer).
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>

#include "ctl/client.h"
#include "ctl/commands.h"
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
  auto* pull = app.add_subcommand("pull", "Register a model: a .gguf file, a Hugging Face model folder (or org/repo)");
  pull->add_option("source", pull_args.source, "FILE.gguf | MODEL_FOLDER | org/repo[@rev]")->required();
  pull->add_option("--name", pull_args.name, "Register as NAME or NAME:TAG");
  pull->add_option("--revision", pull_args.revision, "Hub revision (branch, tag or commit)");
  auto* list = app.add_subcommand("list", "List the registered models");
  app.add_subcommand("ls", "Alias of list")->group("");
  std::string model;
  auto* show = app.add_subcommand("show", "Details of a model: config, files and digests");
  show->add_option("model", model, "NAME[:TAG]")->required();
  auto* rm = app.add_subcommand("rm", "Remove a model and the files no other model uses");
  rm->add_option("model", model, "NAME[:TAG]")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : kExitUsage;
  }

  if (socket.empty()) {
    const char* env = std::getenv("GPTQD_SOCKET");
    socket = (env && *env) ? std::string(env) : gptqd::protocol::default_socket_path().string();
  }
  Context ctx{Client(socket), json, ::isatty(STDERR_FILENO) == 1, stdout, stderr};
  try {
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
