// SPDX-License-Identifier: Apache-2.0
// gptqctl pieces that need no daemon: terminal escaping, sizes, tables, progress rendering,
// pull-source resolution, and the exit code when no daemon listens; and the job and export
// commands against a fake daemon on a temp socket that answers with canned responses (ctl tests).
#include <gtest/gtest.h>

#include <utility>  // before Boost 1.74's headers, which forget it

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <mutex>
#include <thread>

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

// What a renderer (ProgressRenderer, JobRenderer) prints for `events`.
template <typename Renderer>
std::string render(const std::vector<nlohmann::json>& events, bool tty = false) {
  char* buf = nullptr;
  size_t len = 0;
  FILE* f = open_memstream(&buf, &len);
  {
    Renderer r(f, tty);
    for (const auto& e : events) r.on_event(e);
    r.finish();
  }
  std::fclose(f);
  std::string out(buf, len);
  std::free(buf);
  return out;
}

std::string render_plain(const std::vector<nlohmann::json>& events) { return render<ProgressRenderer>(events); }

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

// ---- pull progress ---------------------------------------------------------------------------

// A ProgressRenderer on a memstream with a clock the test sets.
class ProgressFixture {
 public:
  explicit ProgressFixture(bool tty, int width = 100) {
    file_ = open_memstream(&buf_, &len_);
    ProgressRenderer::Options options;
    options.now_s = [this] { return now_s; };
    options.width = width;
    renderer_ = std::make_unique<ProgressRenderer>(file_, tty, options);
  }
  ~ProgressFixture() {
    renderer_.reset();
    std::fclose(file_);
    std::free(buf_);
  }
  ProgressRenderer& r() { return *renderer_; }
  // Sets the clock, then feeds the event.
  void at(double t_s, const nlohmann::json& ev) {
    now_s = t_s;
    renderer_->on_event(ev);
  }
  std::string text() {
    std::fflush(file_);
    return std::string(buf_, len_);
  }
  double now_s = 0;

 private:
  char* buf_ = nullptr;
  size_t len_ = 0;
  FILE* file_;
  std::unique_ptr<ProgressRenderer> renderer_;
};

nlohmann::json file_event(const std::string& file, int index, uint64_t total, uint64_t completed, int n_files = 3) {
  return {{"event", "progress"}, {"status", "pulling " + file}, {"file", file}, {"file_index", index},
          {"n_files", n_files},  {"total", total},               {"completed", completed}};
}

nlohmann::json pull_plan() {
  return {{"event", "progress"},
          {"status", "pulling org/name@0123abc"},
          {"model", "name:tag"},
          {"total", 1000000123 + 2000},
          {"n_files", 3},
          {"files", {{{"file", "config.json"}, {"total", 123}},
                     {{"file", "model.safetensors"}, {"total", 1000000000}},
                     {{"file", "tokenizer.json"}, {"total", 2000}}}}};
}

std::string joined(const std::vector<std::string>& lines) {
  std::string s;
  for (const auto& l : lines) s += l + "\n";
  return s;
}

TEST(PullProgress, RateWindowAveragesOverTheLastSeconds) {
  ProgressRenderer::RateWindow w;
  EXPECT_FALSE(w.rate());
  w.add(0, 0);
  EXPECT_FALSE(w.rate());  // one sample says nothing
  w.add(0.1, 100);
  EXPECT_FALSE(w.rate());  // nor 0.1 s
  for (int t = 1; t <= 10; ++t) w.add(t, static_cast<uint64_t>(t) * 100);
  EXPECT_DOUBLE_EQ(*w.rate(), 100.0);
  w.add(11, 1000);  // a stall: the window (t >= 7, from the sample at 7) sees it
  w.add(12, 1000);
  EXPECT_DOUBLE_EQ(*w.rate(), 60.0);  // (1000 - 700) / 5
  w.add(13, 10);                       // the count went back (a restarted file): start over
  EXPECT_FALSE(w.rate());
}

TEST(PullProgress, TtyFrameHasABarPerFileAndASummedTotal) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/true, /*width=*/100);
  p.at(0, json{{"event", "progress"}, {"status", "resolving org/name@main"}});
  p.at(0.5, pull_plan());
  p.at(1, file_event("config.json", 1, 123, 123));
  p.at(1, file_event("model.safetensors", 2, 1000000000, 0));
  p.at(2, file_event("model.safetensors", 2, 1000000000, 100000000));
  p.at(3, file_event("model.safetensors", 2, 1000000000, 200000000));
  // model.safetensors: 100 MB/s over the last 2 s, 800 MB left: 8 s. The total sums the plan's
  // files (1,000,002,123 bytes) and has 200,000,123 of them.
  EXPECT_EQ(joined(p.r().frame_lines(100)),
            "pulling org/name@0123abc (1/3 files)\n"
            "config.json        [==============================] 100%    123 B/123 B             done\n"
            "model.safetensors  [======>                       ]  20%  200 MB/1.0 GB   100 MB/s  ETA 8s\n"
            "total              [=====>                        ]  19%  200 MB/1.0 GB   100 MB/s  ETA 8s\n");
  // A server rate wins for its file; the total keeps its own.
  json ev = file_event("model.safetensors", 2, 1000000000, 300000000);
  ev["rate"] = 50000000;
  p.at(4, ev);
  auto lines = p.r().frame_lines(100);
  EXPECT_NE(lines[2].find(" 30%  300 MB/1.0 GB  50.0 MB/s  ETA 14s"), std::string::npos) << lines[2];
  EXPECT_NE(lines[3].find(" 29%  300 MB/1.0 GB   100 MB/s  ETA 7s"), std::string::npos) << lines[3];
  // Finished: average rates, "done" everywhere.
  p.at(5, file_event("model.safetensors", 2, 1000000000, 1000000000));
  p.at(5, file_event("tokenizer.json", 3, 2000, 2000));
  p.at(6, json{{"event", "progress"}, {"status", "verifying sha256 digest"}});
  EXPECT_EQ(joined(p.r().frame_lines(100)),
            "pulling org/name@0123abc (3/3 files)\n"
            "config.json        [==============================] 100%    123 B/123 B             done\n"
            "model.safetensors  [==============================] 100%  1.0 GB/1.0 GB   250 MB/s  done\n"
            "tokenizer.json     [==============================] 100%  2.0 kB/2.0 kB             done\n"
            "total              [==============================] 100%  1.0 GB/1.0 GB   250 MB/s  done\n"
            "verifying sha256 digest\n");
}

TEST(PullProgress, TtyRedrawsInPlaceAtMostTenTimesASecond) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/true, /*width=*/80);
  p.at(0, json{{"event", "progress"}, {"status", "pulling m:t"}, {"total", 100}, {"n_files", 1}});
  p.at(0.05, file_event("a.gguf", 1, 100, 0, 1));    // too soon after the first frame
  p.at(0.06, file_event("a.gguf", 1, 100, 10, 1));   // still too soon
  p.at(0.2, file_event("a.gguf", 1, 100, 50, 1));    // drawn
  p.at(0.25, file_event("a.gguf", 1, 100, 100, 1));  // too soon; finish() draws it
  p.r().finish();
  const std::string out = p.text();
  // Frames: the plan (2 lines), 50% (3 lines) and the last (3 lines); each later one goes back up.
  size_t frames = 0;
  for (size_t pos = 0; (pos = out.find('\r', pos)) != std::string::npos; ++pos) ++frames;
  EXPECT_EQ(frames, 3u) << out;
  EXPECT_NE(out.find("\x1b[2A\r"), std::string::npos) << out;
  EXPECT_NE(out.find("\x1b[3A\r"), std::string::npos) << out;
  EXPECT_EQ(out.find(" 10%"), std::string::npos) << out;  // never drawn
  EXPECT_NE(out.find(" 50%"), std::string::npos) << out;
  EXPECT_EQ(out.substr(out.rfind("\x1b[3A")),
            "\x1b[3A\r"
            "pulling m:t (1/1 file)\x1b[K\n"
            "a.gguf  [==============================] 100%    100 B/100 B    500 B/s  done\x1b[K\n"
            "total   [==============================] 100%    100 B/100 B    500 B/s  done\x1b[K\n");
  // Each line is erased to its end; nothing is left pending.
  EXPECT_EQ(out.back(), '\n');
}

TEST(PullProgress, StageChangesRedrawAtOnceAndAShorterFrameErasesTheRest) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/true, /*width=*/80);
  p.at(0, json{{"event", "progress"}, {"status", "waiting for another pull of org/name@main"}});
  p.at(0.01, json{{"event", "progress"}, {"status", "resolving org/name@main"}});
  const std::string out = p.text();
  EXPECT_EQ(out, "\rwaiting for another pull of org/name@main\x1b[K\n\x1b[1A\rresolving org/name@main\x1b[K\n");
}

TEST(PullProgress, NarrowTerminalsCutNamesAndDropColumns) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/true);
  p.at(0, pull_plan());
  p.at(0, file_event("model-00001-of-00004.safetensors", 1, 1000000000, 0));
  p.at(2, file_event("model-00001-of-00004.safetensors", 1, 1000000000, 500000000));
  for (int width : {200, 80, 60, 40, 30, 12, 1}) {
    for (const auto& line : p.r().frame_lines(width)) {
      EXPECT_LE(line.size(), static_cast<size_t>(std::max(width - 1, 1))) << width << ": " << line;
    }
  }
  auto at = [&](int width) { return p.r().frame_lines(width)[1]; };
  EXPECT_EQ(at(200), "model-00001-of-00004.safetensors  [===============>              ]  50%  500 MB/1.0 GB   250 MB/s  ETA 2s");
  EXPECT_EQ(at(80), "model-00001....safetensors  [=====>    ]  50%  500 MB/1.0 GB   250 MB/s  ETA 2s");
  EXPECT_EQ(at(60), "model-0...tensors  [=====>    ]  50%  500 MB/1.0 GB  ETA 2s");  // no rate
  EXPECT_EQ(at(40), "model-00...fetensors  [=====>    ]  50%");                       // no bytes
  EXPECT_EQ(at(30), "mod...sors  [=====>    ]  50%");
  EXPECT_EQ(at(12), "m...rs  50%");                                                    // no bar
  // The status line is cut at its end.
  EXPECT_EQ(p.r().frame_lines(20)[0], "pulling org/name...");
}

TEST(PullProgress, SkippedAndResumedFilesAndZeroTotals) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/true, /*width=*/100);
  p.at(0, json{{"event", "progress"}, {"status", "pulling e:t"}, {"total", 0}, {"n_files", 2}});
  EXPECT_EQ(p.r().frame_lines(100)[1], "total  [>                             ]   0%        0 B/0 B");  // no division by zero
  json skipped = file_event("big.bin", 1, 5000, 5000, 2);
  skipped["status"] = "already have big.bin";
  skipped["skipped"] = true;
  p.at(1, skipped);
  json empty = file_event("empty.txt", 2, 0, 0, 2);
  p.at(2, empty);
  const auto lines = p.r().frame_lines(100);
  EXPECT_EQ(joined(lines),
            "pulling e:t (2/2 files)\n"
            "big.bin    [==============================] 100%  5.0 kB/5.0 kB  done\n"
            "empty.txt  [==============================] 100%        0 B/0 B  done\n"
            "total      [==============================] 100%  5.0 kB/5.0 kB  done\n");

  // A resumed file: its rate and the total's count only the bytes moved now.
  ProgressFixture q(/*tty=*/true, /*width=*/100);
  json resumed = file_event("w.bin", 1, 1000000, 600000);
  resumed["resumed"] = true;
  q.at(0, resumed);
  q.at(1, file_event("w.bin", 1, 1000000, 700000));
  q.at(2, file_event("w.bin", 1, 1000000, 800000));
  EXPECT_EQ(q.r().frame_lines(100)[0], "w.bin  [========================>     ]  80%  800 kB/1.0 MB   100 kB/s  ETA 2s");
}

TEST(PullProgress, AtMostTenFileLinesTheFinishedOnesGivingWayFirst) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/true, /*width=*/100);
  p.at(0, json{{"event", "progress"}, {"status", "pulling many"}, {"n_files", 12}});
  for (int i = 1; i <= 12; ++i) {
    const std::string name = "f" + std::to_string(i) + ".txt";
    p.at(i, file_event(name, i, 1000, 0));
    if (i < 12) p.at(i + 0.5, file_event(name, i, 1000, 1000));
  }
  const auto lines = p.r().frame_lines(100);
  ASSERT_EQ(lines.size(), 12u);  // status, 10 files, total
  EXPECT_EQ(lines[0], "pulling many (11/12 files)");
  EXPECT_EQ(lines[1].substr(0, 7), "f3.txt ");  // f1 and f2 finished first: gone
  EXPECT_EQ(lines[10].substr(0, 7), "f12.txt");
  EXPECT_EQ(lines[11].substr(0, 5), "total");
  EXPECT_NE(lines[11].find("11.0 kB/12.0 kB"), std::string::npos) << lines[11];
}

TEST(PullProgress, PlainPrintsStatusesAndEachFinishedFile) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/false);
  p.at(0, pull_plan());
  json skipped = file_event("config.json", 1, 123, 123);
  skipped["status"] = "already have config.json";
  skipped["skipped"] = true;
  p.at(0, skipped);
  json resumed = file_event("model.safetensors", 2, 1000000000, 400000000);
  resumed["resumed"] = true;
  p.at(0, resumed);
  p.at(1, file_event("model.safetensors", 2, 1000000000, 700000000));
  p.at(2, file_event("model.safetensors", 2, 1000000000, 1000000000));
  p.at(2, file_event("model.safetensors", 2, 1000000000, 1000000000));  // repeated: once
  p.at(2, file_event("tokenizer.json", 3, 2000, 2000));
  p.at(3, json{{"event", "progress"}, {"status", "verifying sha256 digest"}});
  p.at(3, json{{"event", "progress"}, {"status", "writing \x1b[31mblobs"}});
  p.r().finish();
  EXPECT_EQ(p.text(),
            "pulling org/name@0123abc\n"
            "already have config.json (123 B)\n"
            "pulling model.safetensors (resuming at 400 MB of 1.0 GB)\n"
            "pulling model.safetensors: done (1.0 GB in 2s, 300 MB/s)\n"
            "pulling tokenizer.json\n"
            "pulling tokenizer.json: done (2.0 kB)\n"
            "verifying sha256 digest\n"
            "writing \\x1b[31mblobs\n");
}

TEST(PullProgress, NamesFromTheServerAreEscaped) {
  using nlohmann::json;
  ProgressFixture p(/*tty=*/true, /*width=*/100);
  p.at(0, file_event("evil\x1b]0;x\x07.bin", 1, 10, 5));
  const std::string out = p.text();
  EXPECT_EQ(out.find("\x1b]"), std::string::npos) << out;
  EXPECT_NE(out.find("evil\\x1b]0;x\\x07.bin"), std::string::npos) << out;
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

// ---- quantize: the command line -------------------------------------------------------------

QuantizeArgs parse_quantize(std::vector<std::string> argv) {
  CLI::App app;
  auto* cmd = app.add_subcommand("quantize");
  QuantizeArgs args;
  add_quantize_options(*cmd, args);
  argv.insert(argv.begin(), "quantize");
  std::reverse(argv.begin(), argv.end());  // CLI11's vector form takes the arguments last first
  app.parse(argv);
  return args;
}

TEST(QuantizeArgs, DefaultsAreTheRequestStructs) {
  QuantizeArgs args = parse_quantize({"smollm2:fp16", "--calib", "wikitext2"});
  protocol::QuantizeRequest expected;
  expected.model = "smollm2:fp16";
  expected.calib = "wikitext2";
  EXPECT_EQ(args.request.to_json(), expected.to_json());
  EXPECT_FALSE(args.detach);
  protocol::QuantizeRequest sent = make_quantize_request(args);
  EXPECT_EQ(sent.to_json(), expected.to_json());
}

TEST(QuantizeArgs, EveryFlagLandsInItsField) {
  QuantizeArgs args = parse_quantize({"smollm2", "--method", "rtn", "--bits", "3", "--group-size", "-1", "--act-order",
                                      "--asym", "--damp", "0.05", "--static-groups", "--samples", "16", "--seqlen",
                                      "512", "--seed", "7", "--tag", "q3", "--device", "cuda:1", "--eval", "wikitext2",
                                      "--eval-windows", "0", "--eval-seqlen", "256", "--max-ppl-ratio", "2",
                                      "--detach"});
  const protocol::QuantizeRequest& r = args.request;
  EXPECT_EQ(r.method, "rtn");
  EXPECT_EQ(r.bits, 3);
  EXPECT_EQ(r.group_size, -1);
  EXPECT_TRUE(r.desc_act);
  EXPECT_FALSE(r.sym);
  EXPECT_DOUBLE_EQ(r.damp_percent, 0.05);
  EXPECT_TRUE(r.static_groups);
  EXPECT_EQ(r.samples, 16);
  EXPECT_EQ(r.seqlen, 512);
  EXPECT_EQ(r.seed, 7u);
  EXPECT_EQ(r.tag, "q3");
  EXPECT_EQ(r.device, "cuda:1");
  EXPECT_EQ(r.eval, "wikitext2");
  EXPECT_EQ(r.eval_windows, 0);
  EXPECT_EQ(r.eval_seqlen, 256);
  EXPECT_DOUBLE_EQ(r.max_ppl_ratio, 2.0);
  EXPECT_TRUE(args.detach);
  EXPECT_TRUE(parse_quantize({"m", "--asym", "--sym"}).request.sym);  // the last one wins
  EXPECT_EQ(parse_quantize({"m", "--group-size=-1"}).request.group_size, -1);
}

TEST(QuantizeArgs, BadValuesAreRejectedWithTheFlagsName) {
  auto why = [](std::vector<std::string> argv) -> std::string {
    try {
      parse_quantize(std::move(argv));
    } catch (const CLI::ParseError& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_EQ(why({"m", "--bits", "5"}), "--bits: 5 is not supported (supported: 2, 3, 4, 8)");
  EXPECT_EQ(why({"m", "--group-size", "0"}), "--group-size: 0 is not a group size (a positive number or -1)");
  EXPECT_EQ(why({"m", "--group-size", "-2"}), "--group-size: -2 is not a group size (a positive number or -1)");
  EXPECT_EQ(why({"m", "--method", "awq"}), "--method: awq is not a method (gptq or rtn)");
  EXPECT_EQ(why({"m", "--damp", "1"}), "--damp: 1 is not between 0 and 1 (exclusive), e.g. 0.01");
  EXPECT_EQ(why({"m", "--device", "gpu0"}), "--device: gpu0 is not a device (auto, cpu or cuda:N)");
  EXPECT_EQ(why({"m", "--bits", "8", "--device", "cuda:0", "--damp", "0.1"}), "accepted");
}

TEST(QuantizeArgs, TheBinaryExitsWithTheUsageCode) {
  const auto gptqctl = (test::binary_dir() / "ctl" / "gptqctl").string();
  GPTQD_REQUIRE_FILE(gptqctl);
  auto r = test::run_command({gptqctl, "--socket", "/nonexistent/gptqd.sock", "quantize", "m:fp16", "--bits", "5"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.output;
  EXPECT_NE(r.output.find("--bits: 5 is not supported (supported: 2, 3, 4, 8)"), std::string::npos) << r.output;
  r = test::run_command({gptqctl, "--socket", "/nonexistent/gptqd.sock", "jobs", "show", "0"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.output;
  EXPECT_NE(r.output.find("0 is not a job ID"), std::string::npos) << r.output;
}

// ---- dataset pull: the command line ------------------------------------------------------------

TEST(DatasetPullArgs, HubReposNeedFilesAndUrlsTakeNone) {
  using nlohmann::json;
  auto why = [](DatasetPullArgs a) -> std::string {
    try {
      make_dataset_pull_request(a);
    } catch (const CtlError& e) {
      EXPECT_EQ(e.exit_code, kExitUsage) << e.what();
      return e.what();
    }
    return "accepted";
  };
  auto repo = [](std::string source, std::vector<std::string> files) {
    DatasetPullArgs a;
    a.source = std::move(source);
    a.files = std::move(files);
    return a;
  };
  EXPECT_EQ(why(repo("org/corpus", {"train.txt", "sub/valid.jsonl"})), "accepted");
  EXPECT_EQ(why(repo("datasets/org/corpus@v1.0", {"train.txt"})), "accepted");
  EXPECT_EQ(why(repo("https://example.com/a.txt", {})), "accepted");
  EXPECT_EQ(why(repo("HTTP://example.com/a.txt", {})), "accepted");
  EXPECT_EQ(why(repo("", {})), "dataset pull needs a SOURCE: a Hub dataset repo org/name[@rev] or an http(s) URL");
  EXPECT_EQ(why(repo("org/corpus", {})),
            "a Hub dataset repo needs the FILE(s) to fetch, e.g. gptqctl dataset pull org/corpus train.txt");
  EXPECT_EQ(why(repo("corpus", {"a.txt"})),
            "invalid SOURCE 'corpus': expected a Hub dataset repo org/name[@rev] (or datasets/org/name[@rev]) or an "
            "http(s) URL");
  EXPECT_EQ(why(repo("ftp://example.com/a.txt", {})).substr(0, 30), "invalid SOURCE 'ftp://example.");
  EXPECT_EQ(why(repo("org/corpus", {"../secrets.txt"})), "invalid FILE '../secrets.txt': it has a '..' segment");
  EXPECT_EQ(why(repo("org/corpus", {"a/../../b.txt"})), "invalid FILE 'a/../../b.txt': it has a '..' segment");
  EXPECT_EQ(why(repo("org/corpus", {"/etc/passwd"})), "invalid FILE '/etc/passwd': it is absolute; give the path inside the repo");
  EXPECT_EQ(why(repo("org/corpus", {"a//b.txt"})), "invalid FILE 'a//b.txt': it has an empty or '.' segment");
  EXPECT_EQ(why(repo("org/corpus", {"a.txt", ""})), "invalid FILE '': it is empty");
  EXPECT_EQ(why(repo("org/corpus", {"a\x1b.txt"})), "invalid FILE 'a\\x1b.txt': it contains a control character");
  EXPECT_EQ(why(repo("org/corpus", {"a\\b.txt"})), "invalid FILE 'a\\b.txt': it contains '\\' (the Hub's paths use '/')");
  EXPECT_EQ(why(repo("org/corpus", {"a..b.txt"})), "accepted");  // ".." inside a name is no segment
  EXPECT_EQ(why(repo("https://example.com/a.txt", {"b.txt"})),
            "a URL is one file: FILE arguments are for a Hub dataset repo (got b.txt)");
  EXPECT_EQ(why(repo("https:///a.txt", {})), "invalid URL 'https:///a.txt' (expected http(s)://HOST/PATH, without spaces)");
  EXPECT_EQ(why(repo("https://", {})), "invalid URL 'https://' (expected http(s)://HOST/PATH, without spaces)");
  EXPECT_EQ(why(repo("https://a b/c", {})), "invalid URL 'https://a b/c' (expected http(s)://HOST/PATH, without spaces)");

  DatasetPullArgs a = repo("https://example.com/a.txt", {});
  a.sha256 = std::string(64, 'A');
  protocol::DatasetPullRequest r = make_dataset_pull_request(a);
  EXPECT_EQ(r.sha256, std::string(64, 'a'));  // sent lower-case
  a.sha256 = std::string(63, 'a');
  EXPECT_EQ(why(a), "--sha256 must be 64 hex digits (got '" + std::string(63, 'a') + "')");
  a.sha256 = std::string(63, 'a') + "g";
  EXPECT_NE(why(a).find("--sha256 must be 64 hex digits"), std::string::npos);
  a.sha256 = "";
  a.revision = "main";
  EXPECT_EQ(why(a), "--revision is for a Hub dataset repo, not a URL");

  DatasetPullArgs b = repo("org/corpus@v1", {"t.txt"});
  b.sha256 = std::string(64, 'a');
  EXPECT_EQ(why(b), "--sha256 is for a URL; files of a Hub repo are checked against the digests the Hub lists");
  b.sha256 = "";
  b.revision = "v2";
  EXPECT_EQ(why(b), "two revisions: '@v1' in SOURCE and --revision v2");
  b.revision = "v1";
  EXPECT_EQ(why(b), "accepted");
  b.name = "Bad Name";
  EXPECT_NE(why(b).find("invalid dataset name 'Bad Name'"), std::string::npos);

  DatasetPullArgs c = repo("datasets/org/corpus", {"train.txt", "valid.jsonl"});
  c.name = "corpus";
  c.revision = "main";
  EXPECT_EQ(make_dataset_pull_request(c).to_json(),
            (json{{"source", "datasets/org/corpus"}, {"files", {"train.txt", "valid.jsonl"}}, {"name", "corpus"},
                  {"revision", "main"}, {"stream", true}}));
}

TEST(DatasetPullArgs, TheBinaryExitsWithTheUsageCode) {
  const auto gptqctl = (test::binary_dir() / "ctl" / "gptqctl").string();
  GPTQD_REQUIRE_FILE(gptqctl);
  auto r = test::run_command({gptqctl, "--socket", "/nonexistent/gptqd.sock", "dataset", "pull", "org/corpus"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.output;
  EXPECT_NE(r.output.find("a Hub dataset repo needs the FILE(s) to fetch"), std::string::npos) << r.output;
  r = test::run_command({gptqctl, "--socket", "/nonexistent/gptqd.sock", "dataset", "pull", "https://example.com/a.txt",
                         "b.txt"});
  EXPECT_EQ(r.exit_code, kExitUsage) << r.output;
  // Valid arguments get as far as the (missing) daemon.
  r = test::run_command({gptqctl, "--socket", "/nonexistent/gptqd.sock", "dataset", "pull", "org/corpus", "train.txt",
                         "--name", "corpus"});
  EXPECT_EQ(r.exit_code, kExitUnreachable) << r.output;
}

TEST(QuantizeArgs, RequestChecksRefTagAndTheDaemonsRules) {
  auto code = [](QuantizeArgs a) {
    try {
      make_quantize_request(a);
    } catch (const CtlError& e) {
      return e.exit_code;
    }
    return 0;
  };
  QuantizeArgs a;
  a.request.model = "Bad--Name";
  EXPECT_EQ(code(a), kExitUsage);
  a.request.model = "m:fp16";
  a.request.tag = "no spaces";
  EXPECT_EQ(code(a), kExitUsage);
  a.request.tag = "";
  a.request.samples = 0;  // the daemon's own parser says no
  try {
    make_quantize_request(a);
    FAIL() << "samples 0 accepted";
  } catch (const CtlError& e) {
    EXPECT_EQ(e.exit_code, kExitUsage);
    EXPECT_NE(std::string(e.what()).find("\"samples\""), std::string::npos) << e.what();
  }
}

TEST(QuantizeArgs, CalibAndEvalAreFilesWhenTheyExistElseDatasetNames) {
  test::TempDir dir;
  test::write_file(dir / "calib.txt", "text");
  std::filesystem::create_directory(dir / "sub");
  test::write_file(dir / "sub" / "eval.jsonl", "{}");
  auto cwd = std::filesystem::current_path();
  std::filesystem::current_path(dir.path());
  EXPECT_EQ(resolve_dataset_arg("calib.txt"), (dir / "calib.txt").string());
  EXPECT_EQ(resolve_dataset_arg("./sub/../calib.txt"), (dir / "calib.txt").string());
  EXPECT_EQ(resolve_dataset_arg("sub/eval.jsonl"), (dir / "sub" / "eval.jsonl").string());
  EXPECT_EQ(resolve_dataset_arg((dir / "calib.txt").string()), (dir / "calib.txt").string());
  EXPECT_EQ(resolve_dataset_arg("wikitext2"), "wikitext2");
  EXPECT_EQ(resolve_dataset_arg(""), "");
  try {
    resolve_dataset_arg("sub/missing.txt");
    FAIL() << "a missing path resolved";
  } catch (const CtlError& e) {
    EXPECT_EQ(e.exit_code, kExitFailed);
    EXPECT_NE(std::string(e.what()).find("no such file: sub/missing.txt"), std::string::npos) << e.what();
  }
  QuantizeArgs a;
  a.request.model = "m";
  a.request.calib = "calib.txt";
  a.request.eval = "c4";
  protocol::QuantizeRequest r = make_quantize_request(a);
  std::filesystem::current_path(cwd);
  EXPECT_EQ(r.calib, (dir / "calib.txt").string());
  EXPECT_EQ(r.eval, "c4");
}

// ---- job rendering ---------------------------------------------------------------------------

TEST(Render, Durations) {
  EXPECT_EQ(format_duration(0), "0s");
  EXPECT_EQ(format_duration(59.4), "59s");
  EXPECT_EQ(format_duration(60), "1m00s");
  EXPECT_EQ(format_duration(192), "3m12s");
  EXPECT_EQ(format_duration(3599), "59m59s");
  EXPECT_EQ(format_duration(3725), "1h02m");
  EXPECT_EQ(format_duration(-1), "?");
  EXPECT_EQ(format_duration(std::nan("")), "?");
}

TEST(Render, JobProgress) {
  using nlohmann::json;
  json p = {{"layer", 11}, {"n_layers", 30}, {"stage", "qkv"}, {"done", 3}, {"total", 128}, {"fraction", 0.4123},
            {"elapsed_s", 100}, {"eta_s", 192}};
  EXPECT_EQ(format_job_progress(p), "layer 12/30 (41%) ETA 3m12s");
  p["eta_s"] = nullptr;
  EXPECT_EQ(format_job_progress(p), "layer 12/30 (41%)");
  p.erase("eta_s");
  p["stage"] = "replay";
  EXPECT_EQ(format_job_progress(p), "replaying layer 12/30 (41%)");
  EXPECT_EQ(format_job_progress(json{{"layer", 30}, {"n_layers", 30}, {"stage", "eval-source"}, {"fraction", 0.955}}),
            "eval-source (95%)");
  EXPECT_EQ(format_job_progress(json{{"stage", "embed"}, {"fraction", 0}}), "embed (0%)");
  EXPECT_EQ(format_job_progress(json()), "");
  EXPECT_EQ(format_job_progress(json{{"fraction", 1.7}}), "working (100%)");
}

TEST(Render, JobsTable) {
  using nlohmann::json;
  json doc = {{"jobs",
               {{{"id", 7}, {"kind", "quantize"}, {"state", "running"}, {"target", "smollm2:gptq-4b-g128"},
                 {"source", "smollm2:fp16"}, {"created_at", 0}, {"updated_at", 60}, {"error", nullptr},
                 {"progress", {{"layer", 11}, {"n_layers", 30}, {"stage", "down"}, {"fraction", 0.41}}},
                 {"quality", nullptr}},
                {{"id", 6}, {"kind", "quantize"}, {"state", "success"}, {"target", "smollm2:rtn-4b-g128"},
                 {"created_at", 0}, {"updated_at", "2025-01-02T03:04:05Z"}, {"progress", nullptr},
                 {"quality", {{"ratio", 1.0234}, {"state", "ready"}}}},
                {{"id", 5}, {"kind", "quantize"}, {"state", "failed\x1b[2J"}, {"target", "x:y"}}}}};
  EXPECT_EQ(format_jobs_table(doc),
            "ID  KIND      STATE          TARGET                PROGRESS           UPDATED\n"
            "7   quantize  running        smollm2:gptq-4b-g128  layer 12/30 (41%)  1970-01-01T00:01:00Z\n"
            "6   quantize  success        smollm2:rtn-4b-g128   perplexity x1.023  2025-01-02T03:04:05Z\n"
            "5   quantize  failed\\x1b[2J  x:y                   -                  -\n");
  EXPECT_EQ(format_jobs_table(json{{"jobs", json::array()}}),
            "no jobs yet; start one with: gptqctl quantize NAME[:TAG] --calib DATASET\n");
}

nlohmann::json sample_quality() {
  return {{"source_ppl", 21.6312},  {"result_ppl", 22.1034},       {"ratio", 1.02183},
          {"max_ppl_ratio", 1.5},   {"eval_dataset", "wikitext2"}, {"eval_windows", 4},
          {"eval_seqlen", 512},     {"smoke_prompt", "The capital of France is"},
          {"smoke_output", " Paris.\nIt is"},                    {"linears", 210},
          {"mean_weight_error", 0.02134}, {"max_weight_error", 0.0512}, {"rtn_fallbacks", 0},
          {"state", "ready"}};
}

TEST(Render, QualityRows) {
  using nlohmann::json;
  EXPECT_EQ(format_table(quality_rows(sample_quality())),
            "Perplexity    21.6312 -> 22.1034 (ratio 1.022, limit 1.5)\n"
            "Evaluated on  wikitext2, 4 window(s) of 512 tokens\n"
            "Weight error  mean 0.0213, max 0.0512 over 210 linears\n"
            "Smoke test    \"The capital of France is\" -> \" Paris.\\x0aIt is\"\n"
            "State         ready\n");
  json failed = {{"source_ppl", 21.6}, {"result_ppl", nullptr}, {"ratio", nullptr}, {"state", "failed-quality"},
                 {"reason", "the result's perplexity is not a number"}};
  auto rows = quality_rows(failed);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0][1], "21.6000 -> not a number");
  EXPECT_EQ(rows[2][1], "failed-quality (the result's perplexity is not a number)");
  EXPECT_EQ(quality_rows(json{{"eval_windows", 0}, {"state", "ready"}})[0][1], "not measured (eval windows 0)");
  EXPECT_TRUE(quality_rows(json()).empty());
}

TEST(Render, JobDetailsWithThePerLinearTable) {
  using nlohmann::json;
  protocol::QuantizeRequest params;
  params.model = "smollm2:fp16";
  params.calib = "wikitext2";
  params.desc_act = true;
  json job = {{"id", 7},
              {"kind", "quantize"},
              {"state", "success"},
              {"source", "smollm2:fp16"},
              {"target", "smollm2:gptq-4b-g128-act"},
              {"created_at", 0},
              {"updated_at", 3600},
              {"error", nullptr},
              {"progress", nullptr},
              {"params", params.to_json()},
              {"quality", sample_quality()},
              {"layers",
               {{{"layer", 0},
                 {"seconds", 1.5},
                 {"linears",
                  {{{"name", "self_attn.q_proj"}, {"loss", 0.01234}, {"weight_error", 0.0211}, {"damp_percent", 0.01},
                    {"damp_attempts", 1}, {"seconds", 0.25}},
                   {{"name", "mlp.down_proj"}, {"loss", 3.5}, {"weight_error", 0.05}, {"damp_percent", 0.1},
                    {"damp_attempts", 2}, {"rtn_fallback", true}, {"dead_columns", 3}, {"seconds", 0.5}}}}}}}};
  const std::string out = format_job_details(job);
  for (const char* line : {
           "Job           7 (quantize)\n",
           "State         success\n",
           "Target        smollm2:gptq-4b-g128-act\n",
           "Updated       1970-01-01T01:00:00Z\n",
           "Parameters    gptq, 4-bit, group size 128, act-order, symmetric, damp 0.01\n",
           "Calibration   wikitext2: 128 samples x 2048 tokens, seed 0\n",
           "Device        auto\n",
           "Perplexity    21.6312 -> 22.1034 (ratio 1.022, limit 1.5)\n",
           "Quality       ready\n",
           "Layers\n"
           "  LAYER  LINEAR            LOSS     WEIGHT_ERROR  DAMP  SECONDS  NOTES\n"
           "  0      self_attn.q_proj  0.01234  0.0211        0.01  0.25\n"
           "  0      mlp.down_proj     3.5      0.0500        0.1   0.50     RTN fallback, damping raised 1x, 3 dead columns\n",
       }) {
    EXPECT_NE(out.find(line), std::string::npos) << line << "missing in\n" << out;
  }
  EXPECT_EQ(out.find("Progress"), std::string::npos);
  EXPECT_EQ(out.find("Error"), std::string::npos);
}

std::string render_job_plain(const std::vector<nlohmann::json>& events) { return render<JobRenderer>(events); }

TEST(Render, PlainJobEventsPrintOneLinePerLayerAndStage) {
  using nlohmann::json;
  auto progress = [](int layer, const char* stage, double fraction, json eta) {
    return json{{"event", "progress"}, {"layer", layer}, {"n_layers", 2},      {"stage", stage},
                {"done", 1},           {"total", 4},     {"fraction", fraction}, {"eta_s", eta}};
  };
  std::string out = render_job_plain({
      json{{"event", "queued"}, {"job", 7}, {"model", "m:gptq-4b-g128"}, {"source", "m:fp16"}},
      progress(0, "embed", 0.0, nullptr),
      progress(0, "qkv", 0.01, nullptr),
      progress(0, "o", 0.2, 192),
      json{{"event", "layer"}, {"layer", 0}, {"seconds", 4.21},
           {"linears", {{{"name", "self_attn.q_proj"}, {"loss", 0.5}, {"weight_error", 0.02}},
                        {{"name", "mlp.down_proj"}, {"loss", 1.25}, {"weight_error", 0.04}, {"rtn_fallback", true}}}}},
      progress(1, "qkv", 0.45, 100),
      progress(1, "down", 0.8, 20),
      json{{"event", "layer"}, {"layer", 1}, {"seconds", 3}},
      progress(2, "checkpoint", 0.9, 5),
      progress(2, "eval-source", 0.92, 4),
      progress(2, "eval-source", 0.93, 3),
      json{{"event", "quality"}, {"source_ppl", 21.5}},
      json{{"event", "something-new"}},
  });
  EXPECT_EQ(out,
            "job 7: quantizing m:fp16 -> m:gptq-4b-g128\n"
            "embedding the calibration samples (0%)\n"
            "layer 1/2 (1%)\n"
            "layer 1/2 quantized in 4.2 s: mean weight error 0.0300, max loss 1.25, 1 RTN fallback(s)\n"
            "layer 2/2 (45%, ETA 1m40s)\n"
            "layer 2/2 quantized in 3.0 s\n"
            "writing the GPTQ checkpoint (90%, ETA 5s)\n"
            "perplexity of the source model (92%, ETA 4s)\n"
            "perplexity of the source model: 21.5000\n");
}

TEST(Render, TtyJobBarRedrawsInPlace) {
  using nlohmann::json;
  const std::string out = render<JobRenderer>(
      {json{{"event", "progress"}, {"layer", 11}, {"n_layers", 30}, {"stage", "gate_up"}, {"done", 17},
            {"total", 128}, {"fraction", 0.5}, {"eta_s", 192}},
       json{{"event", "layer"}, {"layer", 11}, {"seconds", 2}}},
      /*tty=*/true);
  const std::string bar = "layer 12/30 gate_up 17/128 [==========>         ]  50%  ETA 3m12s";
  EXPECT_EQ(out, "\r\x1b[K" + bar + "\r\x1b[Klayer 12/30 quantized in 2.0 s\n\r\x1b[K" + bar + "\n");
}

TEST(Export, PlainFileNames) {
  std::string why;
  for (const char* ok : {"model.safetensors", "config.json", "tokenizer.model", "a..b", ".hidden", "quantize_config.json"}) {
    EXPECT_TRUE(is_plain_file_name(ok, &why)) << ok;
  }
  for (const char* bad : {"", ".", "..", "../x", "a/b", "/etc/passwd", "x.partial"}) {
    EXPECT_FALSE(is_plain_file_name(bad, &why)) << bad;
  }
  EXPECT_FALSE(is_plain_file_name(std::string_view("a\0b", 3), &why));
  EXPECT_FALSE(is_plain_file_name(std::string(256, 'a'), &why));
  is_plain_file_name("../x", &why);
  EXPECT_EQ(why, "it contains '/'");
}

// ---- against a fake daemon ---------------------------------------------------------------------

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using local = asio::local::stream_protocol;
using nlohmann::json;

struct Exchange {
  std::string method, target, body;
};

// Answers each request on a Unix socket with `respond`, which writes the whole response itself
// (so it can stream, stall or hang up), one connection at a time on its own thread.
class FakeDaemon {
 public:
  using Respond = std::function<void(const Exchange&, local::socket&)>;
  FakeDaemon(std::filesystem::path path, Respond respond)
      : path_(std::move(path)), respond_(std::move(respond)), acceptor_(io_, local::endpoint(path_.string())) {
    thread_ = std::thread([this] { run(); });
  }
  ~FakeDaemon() {
    stop_ = true;
    asio::io_context io;
    local::socket poke(io);
    boost::system::error_code ec;
    poke.connect(local::endpoint(path_.string()), ec);  // wakes the blocked accept
    thread_.join();
  }
  std::vector<Exchange> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  void run() {
    for (;;) {
      local::socket sock(io_);
      boost::system::error_code ec;
      acceptor_.accept(sock, ec);
      if (ec || stop_) return;
      beast::flat_buffer buf;
      http::request<http::string_body> req;
      http::read(sock, buf, req, ec);
      if (ec) continue;
      Exchange x{std::string(req.method_string()), std::string(req.target()), req.body()};
      {
        std::lock_guard lock(mu_);
        seen_.push_back(x);
      }
      respond_(x, sock);
      sock.shutdown(local::socket::shutdown_send, ec);
    }
  }

  std::filesystem::path path_;
  Respond respond_;
  asio::io_context io_;
  local::acceptor acceptor_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::vector<Exchange> seen_;
  std::thread thread_;
};

void send(local::socket& s, int status, const std::string& body, const char* type = "application/json") {
  http::response<http::string_body> res{static_cast<http::status>(status), 11};
  res.set(http::field::content_type, type);
  res.keep_alive(false);
  res.body() = body;
  res.prepare_payload();
  boost::system::error_code ec;
  http::write(s, res, ec);
}

void send_error(local::socket& s, int status, const std::string& message) {
  send(s, status, json{{"error", message}}.dump());
}

// A chunked 200 response, one chunk per element; without `last` it stays open, as a job in progress.
void send_chunks(local::socket& s, const std::vector<std::string>& chunks, const char* type, bool last = true) {
  http::response<http::empty_body> res{http::status::ok, 11};
  res.set(http::field::content_type, type);
  res.chunked(true);
  res.keep_alive(false);
  http::response_serializer<http::empty_body> sr{res};
  boost::system::error_code ec;
  http::write_header(s, sr, ec);
  for (const auto& c : chunks) asio::write(s, http::make_chunk(asio::buffer(c)), ec);
  if (last) asio::write(s, http::make_chunk_last(), ec);
}

void send_events(local::socket& s, const std::vector<json>& events, bool last = true) {
  std::vector<std::string> lines;
  for (const auto& e : events) lines.push_back(e.dump() + "\n");
  send_chunks(s, lines, "application/x-ndjson", last);
}

// Blocks until the client hangs up.
void wait_for_hangup(local::socket& s) {
  char c;
  boost::system::error_code ec;
  while (!ec) s.read_some(asio::buffer(&c, 1), ec);
}

// A FILE* that keeps what is written; writing `trigger` raises SIGINT once, as a Ctrl-C would.
class Capture {
 public:
  Capture() {
    cookie_io_functions_t io{};
    io.write = &Capture::on_write;
    file_ = fopencookie(this, "w", io);
  }
  ~Capture() { std::fclose(file_); }
  FILE* file() const { return file_; }
  std::string text() {
    std::fflush(file_);
    return text_;
  }
  std::string trigger;

 private:
  static ssize_t on_write(void* cookie, const char* buf, size_t n) {
    auto* self = static_cast<Capture*>(cookie);
    self->text_.append(buf, n);
    if (!self->trigger.empty() && self->text_.find(self->trigger) != std::string::npos) {
      self->trigger.clear();
      std::raise(SIGINT);
    }
    return static_cast<ssize_t>(n);
  }
  FILE* file_;
  std::string text_;
};

class FakeDaemonTest : public ::testing::Test {
 protected:
  void serve(FakeDaemon::Respond respond) { daemon_ = std::make_unique<FakeDaemon>(dir_ / "d.sock", std::move(respond)); }
  Context context(bool json_output = false) { return Context{Client(dir_ / "d.sock"), json_output, false, out_.file(), err_.file()}; }
  // Runs a command as main() does: an exit code, the CtlError's message on err.
  int run(const std::function<int()>& cmd) {
    try {
      return cmd();
    } catch (const CtlError& e) {
      std::fprintf(err_.file(), "gptqctl: %s\n", e.what());
      return e.exit_code;
    }
  }
  test::TempDir dir_;
  Capture out_, err_;
  std::unique_ptr<FakeDaemon> daemon_;
};

TEST_F(FakeDaemonTest, StreamEventsArriveAsTheyAreSent) {
  // The second event is sent only once the client has seen the first: a client that waited for
  // a full buffer (or the end of the response) would see both only after the server gave up.
  std::atomic<bool> first_seen{false}, server_waited_in_vain{false};
  serve([&](const Exchange&, local::socket& s) {
    send_chunks(s, {json{{"n", 1}}.dump() + "\n"}, "application/x-ndjson", /*last=*/false);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!first_seen && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    server_waited_in_vain = !first_seen;
    const std::string second = json{{"n", 2}}.dump() + "\n";
    boost::system::error_code ec;
    asio::write(s, http::make_chunk(asio::buffer(second)), ec);
    asio::write(s, http::make_chunk_last(), ec);
  });
  std::vector<int> seen;
  HttpResult r = Client(dir_ / "d.sock").stream("POST", "/api/x", "{}", [&](const json& ev) {
    seen.push_back(ev["n"].get<int>());
    first_seen = true;
  });
  EXPECT_EQ(r.status, 200);
  EXPECT_EQ(seen, (std::vector<int>{1, 2}));
  EXPECT_FALSE(server_waited_in_vain);
}

std::vector<json> running_events() {
  return {json{{"event", "queued"}, {"job", 7}, {"model", "smollm2:gptq-4b-g128"}, {"source", "smollm2:fp16"}},
          json{{"event", "progress"}, {"layer", 0}, {"n_layers", 2}, {"stage", "qkv"}, {"done", 0}, {"total", 4},
               {"fraction", 0.1}, {"elapsed_s", 1}, {"eta_s", nullptr}},
          json{{"event", "layer"}, {"layer", 0}, {"seconds", 1.0}, {"linears", json::array()}}};
}

TEST_F(FakeDaemonTest, QuantizeFollowsTheJobToItsSummary) {
  json quality = sample_quality();
  serve([&](const Exchange&, local::socket& s) {
    auto events = running_events();
    events.push_back(json{{"event", "done"}, {"status", "success"}, {"model", "smollm2:gptq-4b-g128"}, {"quality", quality}});
    send_events(s, events);
  });
  Context ctx = context();
  QuantizeArgs args = parse_quantize({"smollm2:fp16", "--calib", "wikitext2", "--bits", "4"});
  EXPECT_EQ(run([&] { return cmd_quantize(ctx, args); }), kExitOk) << err_.text();
  auto seen = daemon_->seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/api/quantize");
  json body = json::parse(seen[0].body);
  EXPECT_EQ(body["stream"], true);
  EXPECT_EQ(body["model"], "smollm2:fp16");
  EXPECT_EQ(body["calib"], "wikitext2");
  EXPECT_EQ(protocol::QuantizeRequest::from_json(body).to_json(), body);  // the daemon reads what was meant
  EXPECT_EQ(out_.text(),
            "quantized smollm2:gptq-4b-g128 from smollm2:fp16\n"
            "  Perplexity    21.6312 -> 22.1034 (ratio 1.022, limit 1.5)\n"
            "  Evaluated on  wikitext2, 4 window(s) of 512 tokens\n"
            "  Weight error  mean 0.0213, max 0.0512 over 210 linears\n"
            "  Smoke test    \"The capital of France is\" -> \" Paris.\\x0aIt is\"\n"
            "  State         ready\n");
  EXPECT_EQ(err_.text(),
            "job 7: quantizing smollm2:fp16 -> smollm2:gptq-4b-g128\n"
            "layer 1/2 (10%)\n"
            "layer 1/2 quantized in 1.0 s\n");
}

TEST_F(FakeDaemonTest, QuantizeJsonPrintsTheEventsAsTheyCome) {
  serve([&](const Exchange&, local::socket& s) {
    auto events = running_events();
    events.push_back(json{{"event", "done"}, {"status", "success"}, {"model", "m:t"}, {"quality", {{"state", "ready"}}}});
    send_events(s, events);
  });
  Context ctx = context(/*json_output=*/true);
  EXPECT_EQ(run([&] { return cmd_quantize(ctx, parse_quantize({"m"})); }), kExitOk);
  std::string out = out_.text();
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 4);
  EXPECT_EQ(json::parse(out.substr(out.rfind('\n', out.size() - 2) + 1))["event"], "done");
  EXPECT_EQ(err_.text(), "");
}

TEST_F(FakeDaemonTest, QuantizeFailedQualityIsExitOneWithTheReason) {
  serve([&](const Exchange&, local::socket& s) {
    send_events(s, {json{{"event", "done"}, {"status", "success"}, {"model", "m:gptq-2b-g128"},
                         {"quality", {{"source_ppl", 20.0}, {"result_ppl", 80.0}, {"ratio", 4.0}, {"state", "failed-quality"},
                                      {"reason", "perplexity rose from 20 to 80"}}}}});
  });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_quantize(ctx, parse_quantize({"m", "--bits", "2"})); }), kExitFailed);
  EXPECT_NE(out_.text().find("State         failed-quality (perplexity rose from 20 to 80)"), std::string::npos) << out_.text();
  EXPECT_NE(err_.text().find("gptqctl: m:gptq-2b-g128 failed the quality check: perplexity rose from 20 to 80; it is "
                             "registered as failed-quality (see gptqctl show m:gptq-2b-g128, remove it with gptqctl rm "
                             "m:gptq-2b-g128)"),
            std::string::npos)
      << err_.text();
}

TEST_F(FakeDaemonTest, QuantizeErrorCancelAndRefusalAreExitOne) {
  std::vector<std::function<void(local::socket&)>> answers = {
      [](local::socket& s) { send_events(s, {running_events()[0], json{{"event", "error"}, {"error", "out of memory"}}}); },
      [](local::socket& s) { send_events(s, {running_events()[0], json{{"event", "cancelled"}, {"job", 7}}}); },
      [](local::socket& s) { send_error(s, 400, "dataset 'nope' not found"); },
      [](local::socket& s) { send_events(s, {running_events()[0]}); },  // the daemon went away
  };
  size_t i = 0;
  serve([&](const Exchange&, local::socket& s) { answers[i++](s); });
  Context ctx = context();
  for (const char* expected : {"gptqctl: job 7 failed: out of memory\n", "gptqctl: job 7 was cancelled\n",
                               "gptqctl: dataset 'nope' not found\n",
                               "gptqctl: the event stream of job 7 ended without a result (did the daemon stop?); see "
                               "gptqctl jobs show 7\n"}) {
    const size_t before = err_.text().size();
    EXPECT_EQ(run([&] { return cmd_quantize(ctx, parse_quantize({"m"})); }), kExitFailed);
    std::string err = err_.text().substr(before);
    EXPECT_EQ(err.substr(err.rfind("gptqctl:")), expected);
  }
}

TEST_F(FakeDaemonTest, CtrlCDetachesFromTheJob) {
  serve([&](const Exchange&, local::socket& s) {
    send_events(s, running_events(), /*last=*/false);  // ...and the job goes on
    wait_for_hangup(s);
  });
  err_.trigger = "layer 1/2 quantized";  // Ctrl-C once the first layer is reported
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_quantize(ctx, parse_quantize({"m"})); }), kExitOk) << err_.text();
  EXPECT_NE(err_.text().find("detached: job 7 keeps running; follow it with gptqctl jobs show 7 --follow, cancel it "
                             "with gptqctl cancel 7\n"),
            std::string::npos)
      << err_.text();
  EXPECT_FALSE(take_interrupt());  // consumed: the next request is not taken for interrupted
  EXPECT_EQ(out_.text(), "");
}

TEST_F(FakeDaemonTest, DetachPrintsTheJob) {
  serve([&](const Exchange& x, local::socket& s) {
    if (x.target == "/api/quantize") send(s, 202, json{{"job", 12}, {"model", "m:rtn-4b-g128"}, {"source", "m:fp16"}}.dump());
  });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_quantize(ctx, parse_quantize({"m", "--method", "rtn", "--detach"})); }), kExitOk)
      << err_.text();
  EXPECT_EQ(out_.text(), "job 12: quantizing m:fp16 -> m:rtn-4b-g128; follow with gptqctl jobs show 12 --follow\n");
  json body = json::parse(daemon_->seen().at(0).body);
  EXPECT_EQ(body["stream"], false);
  EXPECT_EQ(body["method"], "rtn");
}

TEST_F(FakeDaemonTest, JobsShowCancel) {
  serve([&](const Exchange& x, local::socket& s) {
    if (x.method == "GET" && x.target == "/api/jobs") {
      send(s, 200, json{{"jobs", {{{"id", 3}, {"kind", "quantize"}, {"state", "queued"}, {"target", "m:t"}}}}}.dump());
    } else if (x.method == "GET" && x.target == "/api/jobs/3") {
      send(s, 200, json{{"id", 3}, {"kind", "quantize"}, {"state", "queued"}, {"target", "m:t"}}.dump());
    } else if (x.method == "GET" && x.target == "/api/jobs/3?stream=true") {
      send_events(s, {json{{"event", "done"}, {"status", "success"}, {"model", "m:t"}, {"quality", {{"state", "ready"}}}}});
    } else if (x.method == "DELETE" && x.target == "/api/jobs/3") {
      send(s, 200, json{{"status", "cancelled"}, {"job", 3}}.dump());
    } else if (x.method == "DELETE" && x.target == "/api/jobs/4") {
      send_error(s, 409, "job 4 already finished (success)");
    } else {
      send_error(s, 404, "job not found");
    }
  });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_jobs(ctx); }), kExitOk);
  EXPECT_EQ(run([&] { return cmd_job_show(ctx, 3, false); }), kExitOk);
  EXPECT_EQ(run([&] { return cmd_job_show(ctx, 3, true); }), kExitOk);
  EXPECT_EQ(run([&] { return cmd_cancel(ctx, 3); }), kExitOk);
  EXPECT_EQ(run([&] { return cmd_cancel(ctx, 4); }), kExitFailed);
  EXPECT_EQ(run([&] { return cmd_job_show(ctx, 9, false); }), kExitFailed);
  EXPECT_EQ(run([&] { return cmd_job_show(ctx, 9, true); }), kExitFailed);
  const std::string out = out_.text();
  EXPECT_NE(out.find("3   quantize  queued  m:t     -         -\n"), std::string::npos) << out;
  EXPECT_NE(out.find("Job      3 (quantize)\nState    queued\n"), std::string::npos) << out;
  EXPECT_NE(out.find("quantized m:t\n  State  ready\n"), std::string::npos) << out;
  EXPECT_NE(out.find("cancelled job 3\n"), std::string::npos) << out;
  EXPECT_NE(err_.text().find("gptqctl: job 4 already finished (success)\n"), std::string::npos) << err_.text();
  EXPECT_NE(err_.text().find("gptqctl: job not found\n"), std::string::npos) << err_.text();
}

TEST_F(FakeDaemonTest, ShowPrintsTheQualityReportAndListMarksFailedTags) {
  json entry = {{"name", "m:gptq-4b-g128"}, {"model", "m:gptq-4b-g128"}, {"tag", "gptq-4b-g128"}, {"size", 1000},
                {"digest", "sha256:00"},   {"architecture", "llama"},      {"dtype", "GPTQ-4bit-g128"},
                {"state", "failed-quality"}, {"quality", sample_quality()}};
  serve([&](const Exchange& x, local::socket& s) {
    if (x.target == "/api/show") send(s, 200, entry.dump());
    else send(s, 200, json{{"models", {entry}}}.dump());
  });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_show(ctx, "m:gptq-4b-g128"); }), kExitOk);
  EXPECT_EQ(run([&] { return cmd_list(ctx); }), kExitOk);
  const std::string out = out_.text();
  EXPECT_NE(out.find("Architecture  llama\n"), std::string::npos) << out;
  EXPECT_NE(out.find("Perplexity    21.6312 -> 22.1034 (ratio 1.022, limit 1.5)\n"), std::string::npos) << out;
  EXPECT_NE(out.find("State         failed-quality\n"), std::string::npos) << out;  // the model's state wins
  EXPECT_NE(out.find("gptq-4b-g128 (failed-quality)"), std::string::npos) << out;
}

// ---- pulls against the fake daemon ------------------------------------------------------------

std::vector<json> dataset_pull_events() {
  return {json{{"event", "progress"}, {"status", "resolving org/corpus@main"}},
          json{{"event", "progress"},
               {"status", "pulling org/corpus@4f1c2d3"},
               {"total", 1500},
               {"n_files", 2},
               {"files", {{{"file", "train.txt"}, {"total", 1000}}, {{"file", "valid.jsonl"}, {"total", 500}}}}},
          json{{"event", "progress"}, {"status", "pulling train.txt"}, {"file", "train.txt"}, {"file_index", 1},
               {"n_files", 2}, {"total", 1000}, {"completed", 0}},
          json{{"event", "progress"}, {"status", "pulling train.txt"}, {"file", "train.txt"}, {"file_index", 1},
               {"n_files", 2}, {"total", 1000}, {"completed", 1000}, {"rate", 2000.5}},
          json{{"event", "progress"}, {"status", "already have valid.jsonl"}, {"file", "valid.jsonl"},
               {"file_index", 2}, {"n_files", 2}, {"total", 500}, {"completed", 500}, {"skipped", true}},
          json{{"event", "progress"}, {"status", "verifying sha256 digest"}}};
}

TEST_F(FakeDaemonTest, DatasetPullStreamsToTheDoneLine) {
  serve([&](const Exchange&, local::socket& s) {
    auto events = dataset_pull_events();
    events.push_back(json{{"event", "done"}, {"status", "success"}, {"dataset", "corpus"}, {"files", 2}, {"size", 1500}});
    send_events(s, events);
  });
  Context ctx = context();
  DatasetPullArgs args{"org/corpus", {"train.txt", "valid.jsonl"}, "corpus", "", ""};
  EXPECT_EQ(run([&] { return cmd_dataset_pull(ctx, args); }), kExitOk) << err_.text();
  auto seen = daemon_->seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].method, "POST");
  EXPECT_EQ(seen[0].target, "/api/datasets/pull");
  json body = json::parse(seen[0].body);
  EXPECT_EQ(body, (json{{"source", "org/corpus"}, {"files", {"train.txt", "valid.jsonl"}}, {"name", "corpus"},
                        {"stream", true}}));
  EXPECT_EQ(protocol::DatasetPullRequest::from_json(body).to_json(), body);  // the daemon reads what was meant
  EXPECT_EQ(out_.text(), "pulled dataset corpus (2 file(s), 1.5 kB)\n");
  EXPECT_EQ(err_.text(),
            "resolving org/corpus@main\n"
            "pulling org/corpus@4f1c2d3\n"
            "pulling train.txt\n"
            "pulling train.txt: done (1.0 kB)\n"
            "already have valid.jsonl (500 B)\n"
            "verifying sha256 digest\n");
}

TEST_F(FakeDaemonTest, DatasetPullJsonPrintsTheRawEvents) {
  serve([&](const Exchange&, local::socket& s) {
    auto events = dataset_pull_events();
    events.push_back(json{{"event", "done"}, {"status", "success"}, {"dataset", "corpus"}, {"files", 2}, {"size", 1500}});
    send_events(s, events);
  });
  Context ctx = context(/*json_output=*/true);
  DatasetPullArgs args{"https://example.com/eval.txt", {}, "", "", std::string(64, 'f')};
  EXPECT_EQ(run([&] { return cmd_dataset_pull(ctx, args); }), kExitOk) << err_.text();
  EXPECT_EQ(json::parse(daemon_->seen().at(0).body)["sha256"], std::string(64, 'f'));
  const std::string out = out_.text();
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 7);
  EXPECT_EQ(json::parse(out.substr(out.rfind('\n', out.size() - 2) + 1))["dataset"], "corpus");
  EXPECT_EQ(err_.text(), "");
}

TEST_F(FakeDaemonTest, DatasetPullErrorsAreExitOneWithTheMessage) {
  std::vector<std::function<void(local::socket&)>> answers = {
      [](local::socket& s) {
        auto events = dataset_pull_events();
        events.resize(3);
        events.push_back(json{{"event", "error"}, {"error", "train.txt: sha256 mismatch (expected ab12, got cd34)"}});
        send_events(s, events);
      },
      [](local::socket& s) { send_error(s, 400, "file 'nope.txt' is not in org/corpus@main"); },
      [](local::socket& s) { send_events(s, dataset_pull_events()); },  // the daemon went away
  };
  size_t i = 0;
  serve([&](const Exchange&, local::socket& s) { answers[i++](s); });
  Context ctx = context();
  DatasetPullArgs args{"org/corpus", {"train.txt"}, "", "", ""};
  for (const char* expected : {"gptqctl: dataset pull failed: train.txt: sha256 mismatch (expected ab12, got cd34)\n",
                               "gptqctl: file 'nope.txt' is not in org/corpus@main\n",
                               "gptqctl: the dataset pull ended without a result (did the daemon stop?)\n"}) {
    const size_t before = err_.text().size();
    EXPECT_EQ(run([&] { return cmd_dataset_pull(ctx, args); }), kExitFailed);
    std::string err = err_.text().substr(before);
    EXPECT_EQ(err.substr(err.rfind("gptqctl:")), expected);
  }
  EXPECT_EQ(out_.text(), "");
}

TEST_F(FakeDaemonTest, CtrlCEndsADatasetPull) {
  serve([&](const Exchange&, local::socket& s) {
    send_events(s, dataset_pull_events(), /*last=*/false);  // ...and the download goes on
    wait_for_hangup(s);  // the daemon cancels a pull whose client went away
  });
  err_.trigger = "pulling train.txt: done";
  Context ctx = context();
  DatasetPullArgs args{"org/corpus", {"train.txt"}, "", "", ""};
  EXPECT_EQ(run([&] { return cmd_dataset_pull(ctx, args); }), 130);
  EXPECT_NE(err_.text().find("gptqctl: dataset pull interrupted (gptqd stops it when its client goes away)\n"),
            std::string::npos)
      << err_.text();
  EXPECT_FALSE(take_interrupt());
  EXPECT_EQ(out_.text(), "");
}

TEST_F(FakeDaemonTest, PullFromTheHubSendsTheRepoAndPrintsTheModel) {
  serve([&](const Exchange&, local::socket& s) {
    send_events(s, {json{{"event", "progress"}, {"status", "pulling org/name@0123abc"}, {"model", "name:bf16"},
                         {"total", 2123}, {"n_files", 2}},
                    json{{"event", "progress"}, {"status", "pulling config.json"}, {"file", "config.json"},
                         {"file_index", 1}, {"n_files", 2}, {"total", 123}, {"completed", 123}},
                    json{{"event", "progress"}, {"status", "pulling model.safetensors"}, {"file", "model.safetensors"},
                         {"file_index", 2}, {"n_files", 2}, {"total", 2000}, {"completed", 2000}},
                    json{{"event", "progress"}, {"status", "writing blobs"}},
                    json{{"event", "done"}, {"status", "success"}, {"model", "name:bf16"}, {"architecture", "llama"},
                         {"n_params", 134515008}, {"dtype", "BF16"}, {"size", 2123}}});
  });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_pull(ctx, PullArgs{"org/name", "", "main"}); }), kExitOk) << err_.text();
  auto seen = daemon_->seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].target, "/api/pull");
  json body = json::parse(seen[0].body);
  EXPECT_EQ(body, (json{{"model", "org/name"}, {"revision", "main"}, {"stream", true}}));
  protocol::PullRequest parsed = protocol::PullRequest::from_json(body);
  EXPECT_EQ(parsed.source, "org/name");
  EXPECT_EQ(parsed.revision, "main");
  EXPECT_EQ(out_.text(), "pulled name:bf16 (llama, 135M params, BF16, 2.1 kB)\n");
  EXPECT_EQ(err_.text(),
            "pulling org/name@0123abc\n"
            "pulling config.json\n"
            "pulling config.json: done (123 B)\n"
            "pulling model.safetensors\n"
            "pulling model.safetensors: done (2.0 kB)\n"
            "writing blobs\n");
}

class ExportTest : public FakeDaemonTest {
 protected:
  // Two files; "weights.bin" is bigger than one read so it arrives in several pieces.
  void SetUp() override {
    files_ = {{"config.json", std::string("{\"bits\": 4}")}, {"weights.bin", std::string(200000, '\x5a')}};
    for (int i = 0; i < 200000; i += 7) files_[1].second[static_cast<size_t>(i)] = static_cast<char>(i);
  }
  json show_answer() {
    json list = json::array();
    for (const auto& [name, bytes] : files_) {
      list.push_back({{"name", name}, {"digest", digest_of(bytes)}, {"size", bytes.size()}});
    }
    return {{"name", "m:gptq-4b-g128"}, {"tag", "gptq-4b-g128"}, {"files", list}};
  }
  static std::string digest_of(const std::string& bytes) {
    test::TempDir d;
    test::write_file(d / "f", bytes);
    auto r = test::run_command({"sha256sum", (d / "f").string()});
    return "sha256:" + r.output.substr(0, 64);
  }
  // Serves show and the blobs; `blob_body` may corrupt what is sent.
  void serve_model(std::function<std::string(const std::string&)> blob_body = [](const std::string& b) { return b; }) {
    json shown = show_answer();
    serve([this, shown, blob_body](const Exchange& x, local::socket& s) {
      if (x.target == "/api/show") return send(s, 200, shown.dump());
      for (const auto& [name, bytes] : files_) {
        if (x.target == "/api/blobs/" + digest_of(bytes)) {
          const std::string body = blob_body(bytes);
          return send_chunks(s, {body.substr(0, body.size() / 2), body.substr(body.size() / 2)}, "application/octet-stream");
        }
      }
      send_error(s, 404, "blob not found");
    });
  }
  std::vector<std::pair<std::string, std::string>> files_;
};

TEST_F(ExportTest, WritesEveryFileCheckedAndNothingElse) {
  serve_model();
  Context ctx = context();
  const auto out_dir = dir_ / "out" / "nested";
  EXPECT_EQ(run([&] { return cmd_export(ctx, ExportArgs{"m:gptq-4b-g128", out_dir.string(), false}); }), kExitOk)
      << err_.text();
  EXPECT_EQ(test::read_file(out_dir / "config.json"), files_[0].second);
  EXPECT_EQ(test::read_file(out_dir / "weights.bin"), files_[1].second);
  size_t n = 0;
  for ([[maybe_unused]] const auto& e : std::filesystem::directory_iterator(out_dir)) ++n;
  EXPECT_EQ(n, 2u);
  EXPECT_EQ(out_.text(), "exported m:gptq-4b-g128 (2 files, 200 kB) to " + out_dir.string() + "\n");
  auto seen = daemon_->seen();
  ASSERT_EQ(seen.size(), 3u);
  EXPECT_EQ(json::parse(seen[0].body)["model"], "m:gptq-4b-g128");
  EXPECT_EQ(seen[1].method, "GET");
  EXPECT_EQ(seen[1].target, "/api/blobs/" + digest_of(files_[0].second));

  // A second export into the same folder needs --force.
  EXPECT_EQ(run([&] { return cmd_export(ctx, ExportArgs{"m:gptq-4b-g128", out_dir.string(), false}); }), kExitFailed);
  EXPECT_NE(err_.text().find("is not empty; pass --force"), std::string::npos) << err_.text();
  EXPECT_EQ(run([&] { return cmd_export(ctx, ExportArgs{"m:gptq-4b-g128", out_dir.string(), true}); }), kExitOk);
}

TEST_F(ExportTest, ACorruptBlobLeavesNoPartialFile) {
  serve_model([](const std::string& b) {
    std::string bad = b;
    bad[bad.size() / 3] ^= 1;
    return bad;
  });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_export(ctx, ExportArgs{"m:gptq-4b-g128", (dir_ / "out").string(), false}); }),
            kExitFailed);
  EXPECT_NE(err_.text().find("config.json does not match its digest: expected sha256:"), std::string::npos) << err_.text();
  EXPECT_TRUE(std::filesystem::is_empty(dir_ / "out"));
}

TEST_F(ExportTest, ShortBlobAndMissingBlobFail) {
  serve_model([](const std::string& b) { return b.substr(0, b.size() - 1); });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_export(ctx, ExportArgs{"m:gptq-4b-g128", (dir_ / "a").string(), false}); }), kExitFailed);
  EXPECT_NE(err_.text().find("config.json is 10 bytes, the manifest says 11"), std::string::npos) << err_.text();
  EXPECT_TRUE(std::filesystem::is_empty(dir_ / "a"));
}

TEST_F(ExportTest, RefusesNamesThatAreNotPlainBeforeWritingAnything) {
  files_[1].first = "../escape.bin";
  serve_model();
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_export(ctx, ExportArgs{"m:gptq-4b-g128", (dir_ / "out").string(), false}); }),
            kExitFailed);
  EXPECT_NE(err_.text().find("refusing to export a file named '../escape.bin': it contains '/'"), std::string::npos)
      << err_.text();
  EXPECT_FALSE(std::filesystem::exists(dir_ / "out"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "escape.bin"));
  EXPECT_EQ(daemon_->seen().size(), 1u);  // show only, no blob fetched
}

TEST_F(ExportTest, CtrlCRemovesThePartialFile) {
  json shown = show_answer();
  serve([&](const Exchange& x, local::socket& s) {
    if (x.target == "/api/show") return send(s, 200, shown.dump());
    // Part of the blob, then a stall: the client is interrupted mid-file.
    send_chunks(s, {files_[0].second.substr(0, 5)}, "application/octet-stream", /*last=*/false);
    std::raise(SIGINT);
    wait_for_hangup(s);
  });
  Context ctx = context();
  EXPECT_EQ(run([&] { return cmd_export(ctx, ExportArgs{"m:gptq-4b-g128", (dir_ / "out").string(), false}); }), 130);
  EXPECT_NE(err_.text().find("export interrupted; removed the partial file"), std::string::npos) << err_.text();
  EXPECT_TRUE(std::filesystem::is_empty(dir_ / "out"));
}

}  // namespace
}  // namespace gptqd::ctl
