// SPDX-License-Identifier: Apache-2.0
// `gptqctl run`: one prompt, a piped stdin, or an interactive chat with history and /commands
// (ctl layer). Ctrl-C stops the answer being generated, not the session.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <sstream>

#include "ctl/commands.h"
#include "ctl/render.h"
#include "daemon/protocol.h"

namespace gptqd::ctl {
namespace {

using nlohmann::json;

struct Answer {
  std::string text;
  json final;          // the last (done) object
  bool interrupted = false;
};

// Streams one request to stdout; returns the answer. `chat` picks the field the text is in.
Answer stream_answer(Context& ctx, const std::string& route, const json& body, bool chat) {
  Answer a;
  HttpResult r;
  try {
    r = ctx.client.stream("POST", route, body.dump(), [&](const json& ev) {
      if (ev.contains("error")) {
        throw CtlError(kExitFailed, ev["error"].is_string() ? ev["error"].get<std::string>() : ev["error"].dump());
      }
      std::string piece = chat ? ev.value("message", json::object()).value("content", "") : ev.value("response", "");
      if (!piece.empty()) {
        // Generated text goes out as it comes; terminal escapes in it are shown, not run.
        const std::string shown = ::isatty(STDOUT_FILENO) ? printable(piece, /*keep_layout=*/true) : piece;
        std::fputs(shown.c_str(), ctx.out);
        std::fflush(ctx.out);
        a.text += piece;
      }
      if (ev.value("done", false)) a.final = ev;
    });
  } catch (const Interrupted&) {
    a.interrupted = true;
    return a;
  }
  if (r.status != 200) throw CtlError(kExitFailed, error_message(r));
  return a;
}

void print_stats(Context& ctx, const json& f) {
  if (!f.is_object()) return;
  auto ms = [&](const char* k) { return f.value(k, int64_t{0}) / 1e6; };
  const int64_t n_prompt = f.value("prompt_eval_count", int64_t{0}), n_eval = f.value("eval_count", int64_t{0});
  const double prompt_ms = ms("prompt_eval_duration"), eval_ms = ms("eval_duration");
  std::fprintf(ctx.err, "total duration:       %.1f ms\n", ms("total_duration"));
  std::fprintf(ctx.err, "load duration:        %.1f ms\n", ms("load_duration"));
  std::fprintf(ctx.err, "prompt eval count:    %lld token(s)\n", static_cast<long long>(n_prompt));
  std::fprintf(ctx.err, "prompt eval duration: %.1f ms\n", prompt_ms);
  std::fprintf(ctx.err, "prompt eval rate:     %.2f tokens/s\n", prompt_ms > 0 ? n_prompt / (prompt_ms / 1000) : 0.0);
  std::fprintf(ctx.err, "eval count:           %lld token(s)\n", static_cast<long long>(n_eval));
  std::fprintf(ctx.err, "eval duration:        %.1f ms\n", eval_ms);
  std::fprintf(ctx.err, "eval rate:            %.2f tokens/s\n", eval_ms > 0 ? n_eval / (eval_ms / 1000) : 0.0);
  std::fprintf(ctx.err, "done reason:          %s\n", printable(f.value("done_reason", "")).c_str());
}

// "/set temperature 0.2" and friends: the option name and its JSON value, or an error message.
std::string apply_set(const std::string& line, json& options, std::string& system) {
  std::istringstream in(line);
  std::string cmd, key;
  in >> cmd >> key;
  std::string value;
  std::getline(in, value);
  value.erase(0, value.find_first_not_of(' '));
  if (key == "system") {
    system = value;
    return "system prompt set";
  }
  static const char* const kFloat[] = {"temperature", "top_p", "min_p", "repeat_penalty", "presence_penalty",
                                       "frequency_penalty"};
  static const char* const kInt[] = {"top_k", "repeat_last_n", "seed", "num_predict", "num_ctx"};
  try {
    for (const char* k : kFloat) {
      if (key == k) {
        size_t used = 0;
        double v = std::stod(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
        options[k] = v;
        return "set " + key + " to " + value;
      }
    }
    for (const char* k : kInt) {
      if (key == k || (key == "max_tokens" && std::string(k) == "num_predict")) {
        size_t used = 0;
        long long v = std::stoll(value, &used);
        if (used != value.size()) throw std::invalid_argument(value);
        options[k] = v;
        return "set " + std::string(k) + " to " + value;
      }
    }
  } catch (const std::exception&) {
    return "'" + value + "' is not a valid value for " + key;
  }
  return "unknown setting '" + key + "'; try temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n, "
         "presence_penalty, frequency_penalty, seed, num_predict, num_ctx, system";
}

const char* kHelp =
    "  /bye              leave\n"
    "  /clear            forget the conversation so far\n"
    "  /set KEY VALUE    temperature, top_k, top_p, min_p, repeat_penalty, repeat_last_n,\n"
    "                    presence_penalty, frequency_penalty, seed, num_predict, num_ctx, system TEXT\n"
    "  /help             this list\n"
    "  Ctrl-C stops the answer being written; Ctrl-D leaves.\n";

int interactive(Context& ctx, const RunArgs& args) {
  json options = args.options;
  std::string system = args.system;
  json history = json::array();
  std::fprintf(ctx.err, ">>> chatting with %s — /help for commands, /bye to leave\n", printable(args.model).c_str());
  for (;;) {
    std::fputs(">>> ", ctx.out);
    std::fflush(ctx.out);
    std::string line;
    if (!std::getline(std::cin, line)) {
      if (take_interrupt()) {  // Ctrl-C at the prompt
        std::cin.clear();
        std::fputs("\n(use /bye or Ctrl-D to leave)\n", ctx.out);
        continue;
      }
      std::fputc('\n', ctx.out);
      return kExitOk;
    }
    if (line.empty()) continue;
    if (line == "/bye" || line == "/exit") return kExitOk;
    if (line == "/help" || line == "/?") {
      std::fputs(kHelp, ctx.out);
      continue;
    }
    if (line == "/clear") {
      history = json::array();
      std::fputs("conversation cleared\n", ctx.out);
      continue;
    }
    if (line.rfind("/set", 0) == 0) {
      std::fprintf(ctx.out, "%s\n", apply_set(line, options, system).c_str());
      continue;
    }
    if (line[0] == '/') {
      std::fprintf(ctx.out, "unknown command %s; /help lists them\n", printable(line).c_str());
      continue;
    }
    history.push_back({{"role", "user"}, {"content", line}});
    json messages = json::array();
    if (!system.empty()) messages.push_back({{"role", "system"}, {"content", system}});
    for (const auto& m : history) messages.push_back(m);
    json body = {{"model", args.model}, {"messages", messages}, {"stream", true}, {"options", options}};
    Answer a;
    try {
      a = stream_answer(ctx, "/api/chat", body, true);
    } catch (const CtlError& e) {
      history.erase(history.end() - 1);
      std::fprintf(ctx.err, "\nerror: %s\n", printable(e.what()).c_str());
      if (e.exit_code == kExitUnreachable) return e.exit_code;
      continue;
    }
    std::fputc('\n', ctx.out);
    if (a.interrupted) {
      take_interrupt();
      std::fputs("(stopped)\n", ctx.err);
    }
    history.push_back({{"role", "assistant"}, {"content", a.text}});
    if (args.verbose && !a.interrupted) print_stats(ctx, a.final);
  }
}

}  // namespace

int cmd_run(Context& ctx, const RunArgs& args) {
  std::string why;
  if (!protocol::parse_model_ref(args.model, &why)) {
    throw CtlError(kExitUsage, "invalid model name '" + printable(args.model) + "': " + why);
  }
  install_interrupt_handler();
  std::string prompt = args.prompt;
  if (!::isatty(STDIN_FILENO)) {
    // Piped input is the prompt (after the PROMPT argument, if any), as with Ollama.
    std::ostringstream ss;
    ss << std::cin.rdbuf();
    std::string piped = ss.str();
    if (!piped.empty()) prompt = prompt.empty() ? piped : prompt + "\n\n" + piped;
  }
  if (prompt.empty()) {
    if (!::isatty(STDIN_FILENO)) throw CtlError(kExitUsage, "no prompt: pass one as an argument or on stdin");
    return interactive(ctx, args);
  }
  json body = {{"model", args.model}, {"prompt", prompt}, {"stream", true}, {"options", args.options}};
  if (!args.system.empty()) body["system"] = args.system;
  if (args.raw) body["raw"] = true;
  Answer a = stream_answer(ctx, "/api/generate", body, false);
  std::fputc('\n', ctx.out);
  std::fflush(ctx.out);
  if (a.interrupted) return 130;
  if (args.verbose) print_stats(ctx, a.final);
  return kExitOk;
}

}  // namespace gptqd::ctl
