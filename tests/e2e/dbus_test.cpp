// SPDX-License-Identifier: Apache-2.0
// org.gptqd.Daemon1 through a real gptqd on a private dbus-daemon (e2e tests): introspection,
// properties, ListModels, GetJob and CancelJob on a running quantize job, the JobProgress and
// JobFinished signals, bus selection (none, a bad address, auto without and with a bus, a name
// already taken), and authorization of another uid (when the test may create users).
#include <gtest/gtest.h>
#include <pwd.h>
#include <sys/stat.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "tests/support/daemon_process.h"
#include "tests/support/private_bus.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd::test {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

constexpr const char* kName = "org.gptqd.Daemon1";
constexpr const char* kPath = "/org/gptqd/Daemon1";
constexpr const char* kInterface = "org.gptqd.Daemon1";

bool contains(const std::string& haystack, const std::string& needle) { return haystack.find(needle) != std::string::npos; }

// The daemon logs its D-Bus state just after the socket accepts (and the name may be on the bus
// a moment before the line is written): poll the log instead of reading it once.
bool log_shows(const DaemonProcess& d, const std::string& needle,
               std::chrono::milliseconds timeout = std::chrono::seconds(15)) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    if (contains(d.log(), needle)) return true;
    if (std::chrono::steady_clock::now() >= until) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

// Skips (or under CI fails) when a tool the test drives is not installed.
#define REQUIRE_PROGRAM(var, name)                                                       \
  const std::string var = find_program(name);                                            \
  do {                                                                                   \
    if (var.empty()) {                                                                   \
      if (under_ci()) FAIL() << name << " is missing (scripts/install-deps.sh installs it)"; \
      GTEST_SKIP() << name << " is not installed";                                       \
    }                                                                                    \
  } while (0)

// A D-Bus client through sd-bus: calls with their error names, and the daemon's signals.
class BusClient {
 public:
  struct Signal {
    std::string member;  // JobProgress | JobFinished
    uint64_t id = 0;
    std::string a, b;    // event_json | state, error
  };
  struct Reply {
    std::string error_name;  // "" on success
    std::string error_message;
    std::string text;        // an "s" result
  };

  explicit BusClient(const std::string& address) {
    int r = sd_bus_new(&bus_);
    if (r >= 0) r = sd_bus_set_address(bus_, address.c_str());
    if (r >= 0) r = sd_bus_set_bus_client(bus_, 1);
    if (r >= 0) r = sd_bus_start(bus_);
    ok_ = r >= 0;
  }
  ~BusClient() {
    sd_bus_slot_unref(match_);
    sd_bus_flush_close_unref(bus_);
  }
  BusClient(const BusClient&) = delete;
  BusClient& operator=(const BusClient&) = delete;
  bool ok() const { return ok_; }

  // Subscribes to the daemon's signals (the match is in place when this returns).
  bool subscribe() {
    return sd_bus_match_signal(bus_, &match_, kName, kPath, kInterface, nullptr, on_signal, this) >= 0;
  }

  // Calls `member` with a job id ("t"), expecting "s" or nothing back.
  Reply call_with_id(const char* member, uint64_t id) {
    sd_bus_error error = SD_BUS_ERROR_NULL;
    sd_bus_message* reply = nullptr;
    Reply out;
    if (sd_bus_call_method(bus_, kName, kPath, kInterface, member, &error, &reply, "t", id) < 0) {
      out.error_name = error.name ? error.name : "?";
      out.error_message = error.message ? error.message : "";
    } else if (const char* s = nullptr; sd_bus_message_read(reply, "s", &s) > 0) {
      out.text = s;
    }
    sd_bus_error_free(&error);
    sd_bus_message_unref(reply);
    return out;
  }

  // Whether org.gptqd.Daemon1 has an owner now.
  bool name_has_owner() {
    sd_bus_message* reply = nullptr;
    int has = 0;
    if (sd_bus_call_method(bus_, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus",
                           "NameHasOwner", nullptr, &reply, "s", kName) >= 0) {
      sd_bus_message_read(reply, "b", &has);
    }
    sd_bus_message_unref(reply);
    return has != 0;
  }

  // Processes the bus until `done()` holds for the signals received so far, or `timeout`.
  bool wait_until(const std::function<bool(const std::vector<Signal>&)>& done, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done(signals_)) {
      const auto left = deadline - std::chrono::steady_clock::now();
      if (left <= std::chrono::milliseconds(0)) return false;
      const int r = sd_bus_process(bus_, nullptr);
      if (r < 0) return false;
      if (r == 0) sd_bus_wait(bus_, static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(left).count()));
    }
    return true;
  }
  const std::vector<Signal>& signals() const { return signals_; }

 private:
  static int on_signal(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto* self = static_cast<BusClient*>(userdata);
    Signal s;
    s.member = sd_bus_message_get_member(m);
    const char *a = nullptr, *b = nullptr;
    if (s.member == "JobProgress" && sd_bus_message_read(m, "ts", &s.id, &a) >= 0) {
      s.a = a;
    } else if (s.member == "JobFinished" && sd_bus_message_read(m, "tss", &s.id, &a, &b) >= 0) {
      s.a = a, s.b = b;
    }
    self->signals_.push_back(std::move(s));
    return 0;
  }

  sd_bus* bus_ = nullptr;
  sd_bus_slot* match_ = nullptr;
  bool ok_ = false;
  std::vector<Signal> signals_;
};

bool has_finished(const std::vector<BusClient::Signal>& signals, uint64_t id) {
  for (const auto& s : signals) {
    if (s.member == "JobFinished" && s.id == id) return true;
  }
  return false;
}

class DbusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    busctl_ = find_program("busctl");
    if (busctl_.empty()) {
      if (under_ci()) FAIL() << "busctl is missing (scripts/install-deps.sh installs it)";
      GTEST_SKIP() << "busctl is not installed";
    }
    // Another uid must reach the bus socket (the authorization test).
    fs::permissions(dir_.path(), fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    bus_ = std::make_unique<PrivateBus>(dir_ / "bus");
    if (!bus_->start()) {
      if (under_ci()) FAIL() << "cannot start a private dbus-daemon: " << bus_->log();
      GTEST_SKIP() << "cannot start a private dbus-daemon (is dbus-daemon installed?) " << bus_->log();
    }
    fs::permissions(dir_ / "bus", fs::perms::owner_all | fs::perms::group_exec | fs::perms::others_exec);
    fs::create_directories(dir_ / "d");
    daemon_ = std::make_unique<DaemonProcess>(dir_ / "d");
  }

  // Starts gptqd on the private bus and waits until it owns its name.
  void start_daemon(std::vector<std::string> args = {}) {
    args.insert(args.end(), {"--dbus", bus_->address(), "--threads", "2"});
    ASSERT_TRUE(daemon_->start({}, args)) << daemon_->log();
    ASSERT_TRUE(wait_for_name(*daemon_)) << daemon_->log();
  }

  bool wait_for_name(const DaemonProcess& d) {
    BusClient client(bus_->address());
    for (int i = 0; i < 500 && client.ok() && d.running(); ++i) {
      if (client.name_has_owner()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  // busctl --address=<bus> ARGS...
  CommandResult busctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {busctl_, "--address=" + bus_->address()};
    argv.insert(argv.end(), args.begin(), args.end());
    return run_command(argv);
  }

  // `busctl --json=short get-property`'s data.
  json property(const std::string& name) {
    CommandResult r = busctl({"--json=short", "get-property", kName, kPath, kInterface, name});
    EXPECT_EQ(r.exit_code, 0) << name << ": " << r.output << daemon_->log();
    json j = json::parse(r.output, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.output;
    return j.is_object() ? j["data"] : json();
  }

  void pull_tiny(const std::string& name, const TinyHfOptions& options = {}) {
    write_tiny_hf_model(dir_ / name, options);
    auto r = daemon_->ctl({"pull", (dir_ / name).string(), "--name", name});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  TempDir dir_;
  std::string busctl_;
  std::unique_ptr<PrivateBus> bus_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(DbusTest, IntrospectionPropertiesAndListModels) {
  start_daemon();
  EXPECT_TRUE(log_shows(*daemon_, "D-Bus: org.gptqd.Daemon1 on the bus at " + bus_->address())) << daemon_->log();

  CommandResult r = busctl({"introspect", "--xml-interface", kName, kPath});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  for (const char* piece :
       {"<interface name=\"org.gptqd.Daemon1\">", "<property name=\"Version\" type=\"s\" access=\"read\">",
        "<property name=\"Devices\" type=\"a(sssss)\" access=\"read\">",
        "<property name=\"LoadedModels\" type=\"as\" access=\"read\">",
        "<property name=\"Jobs\" type=\"a(tsssd)\" access=\"read\">", "<method name=\"ListModels\">",
        "<arg type=\"a(sssst)\" name=\"models\" direction=\"out\"/>", "<method name=\"GetJob\">",
        "<arg type=\"t\" name=\"id\" direction=\"in\"/>", "<method name=\"CancelJob\">", "<signal name=\"JobProgress\">",
        "<arg type=\"s\" name=\"event_json\"/>", "<signal name=\"JobFinished\">", "<arg type=\"s\" name=\"state\"/>",
        "org.freedesktop.DBus.Introspectable", "org.freedesktop.DBus.Properties"}) {
    EXPECT_TRUE(contains(r.output, piece)) << piece << " not in\n" << r.output;
  }

  const json version = json::parse(http_request(daemon_->socket(), "GET", "/api/version").body);
  EXPECT_EQ(property("Version"), version["version"]);
  EXPECT_EQ(property("Jobs"), json::array());
  EXPECT_EQ(property("LoadedModels"), json::array());
  const json devices = property("Devices");
  ASSERT_GE(devices.size(), 1u) << devices.dump();
  EXPECT_EQ(devices[0][0], "cpu");
  EXPECT_EQ(devices[0][1], "cpu");
  EXPECT_TRUE(contains(devices[0][4].get<std::string>(), "decode ")) << devices.dump();

  pull_tiny("tiny");
  r = busctl({"--json=short", "call", kName, kPath, kInterface, "ListModels"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json models = json::parse(r.output);
  EXPECT_EQ(models["type"], "a(sssst)");
  ASSERT_EQ(models["data"][0].size(), 1u) << r.output;
  const json& row = models["data"][0][0];
  EXPECT_EQ(row[0], "tiny:fp16");
  EXPECT_EQ(row[1], "safetensors");
  EXPECT_EQ(row[3], "ready");
  EXPECT_GT(row[4].get<uint64_t>(), 0u);
  // The pull is a job too.
  const json jobs = property("Jobs");
  ASSERT_EQ(jobs.size(), 1u) << jobs.dump();
  EXPECT_EQ(jobs[0][1], "pull");
  EXPECT_EQ(jobs[0][2], "done");
  EXPECT_EQ(jobs[0][4], 1.0);

  // A model loaded for a generation shows in LoadedModels (kept alive afterwards).
  HttpReply gen = http_request(daemon_->socket(), "POST", "/api/generate",
                               json{{"model", "tiny:fp16"}, {"prompt", "the"}, {"raw", true}, {"stream", false},
                                    {"options", {{"num_predict", 2}, {"num_ctx", 64}}}}
                                   .dump());
  ASSERT_EQ(gen.status, 200) << gen.body;
  EXPECT_EQ(property("LoadedModels"), json::array({"tiny:fp16"}));

  // Errors carry names and the socket's messages.
  BusClient client(bus_->address());
  ASSERT_TRUE(client.ok());
  BusClient::Reply missing = client.call_with_id("GetJob", 999);
  EXPECT_EQ(missing.error_name, "org.gptqd.Error.NotFound");
  EXPECT_TRUE(contains(missing.error_message, "job 999 not found")) << missing.error_message;
  r = busctl({"call", kName, kPath, kInterface, "GetJob", "t", "999"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "job 999 not found")) << r.output;
  r = busctl({"call", kName, kPath, kInterface, "NoSuchMethod"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "NoSuchMethod")) << r.output;
}

TEST_F(DbusTest, JobSignalsGetJobAndCancelJob) {
  const fs::path valid = shared_data_dir() / "wikitext-2-raw" / "wiki.valid.raw";
  GPTQD_REQUIRE_FILE(valid);
  start_daemon();
  pull_tiny("tiny");
  ASSERT_EQ(daemon_->ctl({"dataset", "add", "valid", valid.string()}).exit_code, 0);
  BusClient client(bus_->address());
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE(client.subscribe());

  // A quick job: its events arrive as JobProgress, its end as JobFinished.
  json req = {{"model", "tiny:fp16"}, {"calib", "valid"},  {"samples", 8},      {"seqlen", 64},
              {"group_size", 16},     {"eval_windows", 2}, {"eval_seqlen", 64}, {"tag", "quick"}};
  HttpReply started = http_request(daemon_->socket(), "POST", "/api/quantize", req.dump());
  ASSERT_EQ(started.status, 200) << started.body;
  const uint64_t quick = json::parse(started.body)["job"].get<uint64_t>();
  ASSERT_TRUE(client.wait_until([&](const auto& s) { return has_finished(s, quick); }, std::chrono::seconds(300)))
      << daemon_->log();
  int progress = 0, layers = 0;
  bool finished_last = false;
  for (const auto& s : client.signals()) {
    if (s.id != quick) continue;
    finished_last = s.member == "JobFinished";
    if (s.member == "JobFinished") {
      EXPECT_EQ(s.a, "done");
      EXPECT_EQ(s.b, "");
      continue;
    }
    const json ev = json::parse(s.a);
    EXPECT_EQ(ev["job"], quick) << s.a;
    if (ev["event"] == "progress") ++progress;
    if (ev["event"] == "layer") ++layers;
    if (ev["event"] == "done") {
      EXPECT_EQ(ev["model"], "tiny:quick");
    }
  }
  EXPECT_TRUE(finished_last);
  EXPECT_GT(progress, 0);
  EXPECT_EQ(layers, 2);
  const json done = json::parse(client.call_with_id("GetJob", quick).text);
  EXPECT_EQ(done["state"], "done");
  EXPECT_EQ(done["layers"].size(), 2u);

  // A slow job (a larger model, long evaluation): GetJob and Jobs while it runs, then CancelJob.
  TinyHfOptions big;
  big.shape.hidden = 128;
  big.shape.intermediate = 256;
  big.shape.n_layers = 4;
  big.shape.head_dim = 32;
  big.shape.context = 512;
  pull_tiny("big", big);
  req = {{"model", "big:fp16"},  {"calib", "valid"},    {"samples", 64},       {"seqlen", 256},
         {"group_size", 16},     {"eval_windows", 24},  {"eval_seqlen", 256},  {"tag", "slow"}};
  started = http_request(daemon_->socket(), "POST", "/api/quantize", req.dump());
  ASSERT_EQ(started.status, 200) << started.body;
  const uint64_t slow = json::parse(started.body)["job"].get<uint64_t>();
  auto running = [&](const std::vector<BusClient::Signal>& signals) {
    for (const auto& s : signals) {
      if (s.id == slow && s.member == "JobProgress" && contains(s.a, "\"event\":\"progress\"")) return true;
    }
    return false;
  };
  ASSERT_TRUE(client.wait_until(running, std::chrono::seconds(120))) << daemon_->log();

  CommandResult r = busctl({"--json=short", "call", kName, kPath, kInterface, "GetJob", "t", std::to_string(slow)});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const json job = json::parse(json::parse(r.output)["data"][0].get<std::string>());
  EXPECT_EQ(job["id"], slow);
  EXPECT_EQ(job["state"], "running") << job.dump();
  EXPECT_EQ(job["target"], "big:slow");
  EXPECT_EQ(job["source"], "big:fp16");
  EXPECT_TRUE(job["progress"].is_object()) << job.dump();
  EXPECT_EQ(job["params"]["samples"], 64);
  bool listed = false;
  for (const auto& row : property("Jobs")) {
    if (row[0] != slow) continue;
    listed = true;
    EXPECT_EQ(row[1], "quantize");
    EXPECT_EQ(row[2], "running");
    EXPECT_EQ(row[3], "big:slow");
    EXPECT_GE(row[4].get<double>(), 0.0);
    EXPECT_LT(row[4].get<double>(), 1.0);
  }
  EXPECT_TRUE(listed);

  r = busctl({"call", kName, kPath, kInterface, "CancelJob", "t", std::to_string(slow)});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  ASSERT_TRUE(client.wait_until([&](const auto& s) { return has_finished(s, slow); }, std::chrono::seconds(60)))
      << daemon_->log();
  for (const auto& s : client.signals()) {
    if (s.id == slow && s.member == "JobFinished") {
      EXPECT_EQ(s.a, "cancelled") << s.b;
    }
  }
  EXPECT_EQ(json::parse(client.call_with_id("GetJob", slow).text)["state"], "cancelled");
  // Once ended, a second cancel is a conflict; an unknown job is not found.
  BusClient::Reply again = client.call_with_id("CancelJob", slow);
  EXPECT_EQ(again.error_name, "org.gptqd.Error.Conflict") << again.error_message;
  EXPECT_TRUE(contains(again.error_message, "already ended")) << again.error_message;
  EXPECT_EQ(client.call_with_id("CancelJob", 999).error_name, "org.gptqd.Error.NotFound");
}

TEST_F(DbusTest, BusSelection) {
  const std::string nowhere = "unix:path=" + (dir_ / "no-bus-here").string();

  // none: no connection at all.
  ASSERT_TRUE(daemon_->start({}, {"--dbus", "none"})) << daemon_->log();
  EXPECT_TRUE(log_shows(*daemon_, "D-Bus: off (--dbus none)")) << daemon_->log();
  BusClient client(bus_->address());
  ASSERT_TRUE(client.ok());
  EXPECT_FALSE(client.name_has_owner());
  EXPECT_EQ(daemon_->stop(), 0);

  // An explicit bus that cannot be reached ends the start, naming it.
  int n_failing = 0;
  for (const auto& [args, env, needle] : std::vector<std::tuple<std::vector<std::string>, std::vector<std::string>, std::string>>{
           {{"--dbus", nowhere}, {}, "D-Bus: cannot connect to the bus at " + nowhere},
           {{"--dbus", "system"}, {"DBUS_SYSTEM_BUS_ADDRESS=" + nowhere}, "D-Bus: cannot connect to the system bus"},
           {{"--dbus", "session"}, {"DBUS_SESSION_BUS_ADDRESS=" + nowhere}, "D-Bus: cannot connect to the session bus"},
           {{"--dbus", "unix:nonsense=1"}, {}, "D-Bus: cannot connect to the bus at unix:nonsense=1"}}) {
    const fs::path dir = dir_ / ("failing-" + std::to_string(++n_failing));
    fs::create_directories(dir);
    DaemonProcess failing(dir);
    if (failing.start(env, args)) {
      EXPECT_EQ(failing.wait_exit(std::chrono::seconds(20)), 1) << failing.log();
    }
    EXPECT_FALSE(failing.running());
    EXPECT_TRUE(contains(failing.log(), "cannot start: " + needle)) << failing.log();
  }

  // auto without a bus: a warning, and the daemon serves.
  const std::vector<std::string> no_bus = {"DBUS_SYSTEM_BUS_ADDRESS=" + nowhere, "DBUS_SESSION_BUS_ADDRESS=" + nowhere};
  ASSERT_TRUE(daemon_->start(no_bus, {"--dbus", "auto"})) << daemon_->log();
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/version").status, 200);
  EXPECT_TRUE(log_shows(*daemon_, "ignoring: D-Bus: cannot connect to the ")) << daemon_->log();
  EXPECT_TRUE(log_shows(*daemon_, "running without D-Bus")) << daemon_->log();
  EXPECT_EQ(daemon_->stop(), 0);

  // auto with a bus (root or a system user: the system bus; others: the session bus).
  const std::vector<std::string> this_bus = {"DBUS_SYSTEM_BUS_ADDRESS=" + bus_->address(),
                                             "DBUS_SESSION_BUS_ADDRESS=" + bus_->address()};
  ASSERT_TRUE(daemon_->start(this_bus, {"--dbus", "auto"})) << daemon_->log();
  ASSERT_TRUE(wait_for_name(*daemon_)) << daemon_->log();
  EXPECT_TRUE(log_shows(*daemon_, ::geteuid() < 1000 ? "on the system bus" : "on the session bus")) << daemon_->log();

  // The name is taken: an explicit bus fails, auto runs on without D-Bus.
  fs::create_directories(dir_ / "second");
  DaemonProcess second(dir_ / "second");
  if (second.start({}, {"--dbus", bus_->address()})) {
    EXPECT_EQ(second.wait_exit(std::chrono::seconds(20)), 1);
  }
  EXPECT_TRUE(contains(second.log(), "cannot start: D-Bus: cannot own org.gptqd.Daemon1 on the bus at " +
                                         bus_->address() + ": another process owns it"))
      << second.log();
  fs::create_directories(dir_ / "third");
  DaemonProcess third(dir_ / "third");
  ASSERT_TRUE(third.start(this_bus, {"--dbus", "auto"})) << third.log();
  // (Waited for: the bus is joined after the socket listens, and under ASan that can lag.)
  EXPECT_TRUE(log_shows(third, "ignoring: D-Bus: cannot own org.gptqd.Daemon1")) << third.log();
  EXPECT_EQ(third.stop(), 0);

  // SIGTERM leaves the bus, and the daemon still stops promptly.
  EXPECT_EQ(daemon_->stop(), 0) << daemon_->log();
  EXPECT_TRUE(contains(daemon_->log(), "D-Bus: leaving the ")) << daemon_->log();
  EXPECT_FALSE(client.name_has_owner());
}

TEST_F(DbusTest, LosingTheBusIsNotFatal) {
  start_daemon();
  const std::string address = bus_->address();
  bus_.reset();  // dbus-daemon goes away under the daemon
  bool noticed = false;
  for (int i = 0; i < 500 && !noticed; ++i) {
    noticed = contains(daemon_->log(), "ignoring: D-Bus: lost the bus at " + address);
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(noticed) << daemon_->log();
  EXPECT_TRUE(contains(daemon_->log(), "running on without D-Bus")) << daemon_->log();
  EXPECT_EQ(http_request(daemon_->socket(), "GET", "/api/version").status, 200);
  EXPECT_EQ(daemon_->stop(), 0) << daemon_->log();
}

// A user and two groups made for the test, removed afterwards.
class TestAccounts {
 public:
  TestAccounts() {
    const std::string tag = std::to_string(::getpid() % 100000);
    user_ = "gqdbus" + tag, user_group_ = "gqdbus" + tag + "u", admin_group_ = "gqdbus" + tag + "a";
    const std::string groupadd = find_program("groupadd"), useradd = find_program("useradd");
    if (groupadd.empty() || useradd.empty()) {
      why_ = "groupadd/useradd are not installed";
      return;
    }
    for (const auto& g : {user_group_, admin_group_}) {
      CommandResult r = run_command({groupadd, g});
      if (r.exit_code != 0) {
        why_ = "groupadd " + g + " failed: " + r.output;
        return;
      }
      groups_.push_back(g);
    }
    CommandResult r = run_command({useradd, "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin", user_});
    if (r.exit_code != 0) {
      why_ = "useradd " + user_ + " failed: " + r.output;
      return;
    }
    made_user_ = true;
  }
  ~TestAccounts() {
    if (made_user_) run_command({find_program("userdel"), user_});
    for (const auto& g : groups_) run_command({find_program("groupdel"), g});
  }
  TestAccounts(const TestAccounts&) = delete;
  TestAccounts& operator=(const TestAccounts&) = delete;

  bool ok() const { return made_user_; }
  const std::string& why() const { return why_; }
  bool join(const std::string& group) {
    return run_command({find_program("usermod"), "--append", "--groups", group, user_}).exit_code == 0;
  }
  std::string user_, user_group_, admin_group_;

 private:
  bool made_user_ = false;
  std::vector<std::string> groups_;
  std::string why_;
};

TEST_F(DbusTest, AnotherUidNeedsTheUserGroupToReadAndTheAdminGroupToCancel) {
  if (::geteuid() != 0) GTEST_SKIP() << "creating a test user needs root";
  REQUIRE_PROGRAM(setpriv, "setpriv");
  REQUIRE_PROGRAM(dbus_send, "dbus-send");
  TestAccounts accounts;
  if (!accounts.ok()) GTEST_SKIP() << "cannot create a test user: " << accounts.why();
  start_daemon({"--user-group", accounts.user_group_, "--admin-group", accounts.admin_group_});

  // dbus-send as the test user (with the groups the user database gives it now).
  auto as_user = [&](const std::vector<std::string>& call) {
    const struct passwd* pw = ::getpwnam(accounts.user_.c_str());
    const std::string gid = pw ? std::to_string(pw->pw_gid) : "65534";
    std::vector<std::string> argv = {setpriv, "--reuid=" + accounts.user_, "--regid=" + gid, "--init-groups", dbus_send,
                                     "--bus=" + bus_->address(), "--print-reply", "--dest=" + std::string(kName), kPath};
    argv.insert(argv.end(), call.begin(), call.end());
    return run_command(argv);
  };
  const std::vector<std::string> get_version = {"org.freedesktop.DBus.Properties.Get", "string:org.gptqd.Daemon1",
                                                "string:Version"};
  const std::vector<std::string> cancel = {"org.gptqd.Daemon1.CancelJob", "uint64:999"};

  // An outsider: may introspect (the shape is public), may not read or cancel.
  CommandResult r = as_user({"org.freedesktop.DBus.Introspectable.Introspect"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "org.gptqd.Daemon1")) << r.output;
  r = as_user(get_version);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "org.freedesktop.DBus.Error.AccessDenied")) << r.output;
  EXPECT_TRUE(contains(r.output, "group " + accounts.user_group_)) << r.output;
  r = as_user({"org.gptqd.Daemon1.ListModels"});
  EXPECT_TRUE(contains(r.output, "org.freedesktop.DBus.Error.AccessDenied")) << r.output;
  EXPECT_TRUE(contains(daemon_->log(), "D-Bus: refused org.freedesktop.DBus.Properties.Get to uid ")) << daemon_->log();

  // In the user group: reads, but no cancelling.
  ASSERT_TRUE(accounts.join(accounts.user_group_));
  r = as_user(get_version);
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "variant")) << r.output;
  r = as_user(cancel);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "org.freedesktop.DBus.Error.AccessDenied")) << r.output;
  EXPECT_TRUE(contains(r.output, "CancelJob changes gptqd's jobs")) << r.output;
  EXPECT_TRUE(contains(r.output, "group " + accounts.admin_group_)) << r.output;

  // In the admin group: the call passes the gate (and job 999 does not exist).
  ASSERT_TRUE(accounts.join(accounts.admin_group_));
  r = as_user(cancel);
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(contains(r.output, "org.gptqd.Error.NotFound")) << r.output;
}

}  // namespace
}  // namespace gptqd::test
