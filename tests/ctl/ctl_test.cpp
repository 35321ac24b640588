// SPDX-License-Identifier: Apache-2.0
// gptqctl pieces that need no daemon: terminal escaping, sizes, tables, progress rendering,
// pull-source resolution, and the exit code when no daemon listens (ctl tests).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "ctl/client.h"
#include "ctl/commands.h"
#include "ctl/render.h"
#include "tests/support/test_env.h"

namespace gptqd::ctl {
namespace {

TEST(Render, PrintableEscapesControlsAndBadUtf8) {
  EXPECT_EQ(printable("plain"), "plain");
  EXPECT_EQ(printable("a\x1b[2Jb"), "a\\x1b[2Jb");
  EXPECT_EQ(printable("line\nbreak\r"), "line\\x0abreak\\x0d");
  EXPECT_EQ(printable("caf\xc3\xa9"), "caf\xc3\xa9");         // é kept
  EXPECT_EQ(printable("\xe4\xb8\xad"), "\xe4\xb8\xad");       // 中 kept
  EXPECT_EQ(printable("\xf0\x9f\x98\x80"), "\xf0\x9f\x98\x80");  // emoji kept
  EXPECT_EQ(printable("\xc2\x9b"), "\\xc2\\x9b");             // C1 CSI escaped
  EXPECT_EQ(printable("\xff"), "\\xff");
  EXPECT_EQ(printable("\xc0\xaf"), "\\xc0\\xaf");             // overlong '/'
  EXPECT_EQ(printable("\xed\xa0\x80"), "\\xed\\xa0\\x80");    // surrogate
  EXPECT_EQ(printable("\xe4\xb8"), "\\xe4\\xb8");             // truncated
}

TEST(Render, Sizes) {
  EXPECT_EQ(human_bytes(0), "0 B");
  EXPECT_EQ(human_bytes(999), "999 B");
  EXPECT_EQ(human_bytes(98362432), "98.4 MB");
  EXPECT_EQ(human_bytes(269060096), "269 MB");
  EXPECT_EQ(human_bytes(4368438272), "4.4 GB");
  EXPECT_EQ(with_commas(134515008), "134,515,008");
  EXPECT_EQ(with_commas(999), "999");
  EXPECT_EQ(with_commas(1000), "1,000");
}

TEST(Render, TableAlignsColumns) {
  EXPECT_EQ(format_table({{"NAME", "SIZE"}, {"a-long-name", "1 B"}, {"b", "22 kB"}}),
            "NAME         SIZE\n"
            "a-long-name  1 B\n"
            "b            22 kB\n");
}

std::string render_plain(const std::vector<nlohmann::json>& events) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  ProgressRenderer r(f, /*tty=*/false);
  for (const auto& e : events) r.on_event(e);
  r.finish();
  std::fclose(f);
  std::string out(buf, len);
  std::free(buf);
  return out;
}

TEST(Render, PlainProgressPrintsStatusChangesOnly) {
  using nlohmann::json;
  std::string out = render_plain({
      json{{"status", "pulling m:t"}},
      json{{"status", "copying a.gguf"}, {"total", 100}, {"completed", 0}},
      json{{"status", "copying a.gguf"}, {"total", 100}, {"completed", 50}},
      json{{"status", "copying a.gguf"}, {"total", 100}, {"completed", 100}},
      json{{"status", "verifying"}},
      json{{"status", "evil\x1b]0;title\x07"}},
  });
  EXPECT_EQ(out,
            "pulling m:t\n"
            "copying a.gguf\n"
            "copying a.gguf: done (100 B)\n"
            "verifying\n"
            "evil\\x1b]0;title\\x07\n");
}

TEST(Commands, ResolvePullSource) {
  test::TempDir dir;
  test::write_file(dir / "m.gguf", "x");
  auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  EXPECT_EQ(resolve_pull_source("m.gguf"), (dir / "m.gguf").string());
  EXPECT_EQ(resolve_pull_source("./m.gguf"), (dir / "m.gguf").string());
  std::filesystem::current_path(cwd);
  EXPECT_EQ(resolve_pull_source("HuggingFaceTB/SmolLM2-135M-Instruct"), "HuggingFaceTB/SmolLM2-135M-Instruct");
  EXPECT_EQ(resolve_pull_source("org/repo@main"), "org/repo@main");
  try {
    resolve_pull_source("missing-file.gguf");
    FAIL() << "a missing file resolved";
  } catch (const CtlError& e) {
    EXPECT_EQ(e.exit_code, kExitFailed);
    EXPECT_NE(std::string(e.what()).find("no such file or directory: missing-file.gguf"), std::string::npos);
  }
  EXPECT_THROW(resolve_pull_source(""), CtlError);
  EXPECT_THROW(resolve_pull_source("../../not/a/repo/at/all"), CtlError);
}

TEST(Client, NoDaemonIsExitCode3WithAHint) {
  test::TempDir dir;
  Client c(dir / "nobody.sock");
  try {
    c.request("GET", "/api/health");
    FAIL() << "connected to nothing";
  } catch (const CtlError& e) {
    EXPECT_EQ(e.exit_code, kExitUnreachable);
    EXPECT_NE(std::string(e.what()).find("is gptqd running?"), std::string::npos) << e.what();
  }
}

TEST(ErrorMessage, PrefersTheErrorField) {
  EXPECT_EQ(error_message(HttpResult{404, R"({"error":"model 'x' not found"})"}), "model 'x' not found");
  EXPECT_EQ(error_message(HttpResult{502, "upstream\n"}), "HTTP 502: upstream");
  EXPECT_EQ(error_message(HttpResult{500, ""}), "HTTP 500");
}

}  // namespace
}  // namespace gptqd::ctl
