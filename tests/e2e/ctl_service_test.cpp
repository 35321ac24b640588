// SPDX-License-Identifier: Apache-2.0
// gptqctl service against a stand-in for systemd's manager (org.freedesktop.systemd1 served
// with sd-bus on a private dbus-daemon): the calls it makes, waiting for the job, failed jobs,
// refusals, enable/disable, status and its exit code — and the message when there is no systemd
// at all (e2e).
#include <gtest/gtest.h>

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "tests/support/daemon_process.h"
#include "tests/support/private_bus.h"
#include "tests/support/test_env.h"

namespace gptqd {
namespace {

constexpr const char* kSocketUnit = "/org/freedesktop/systemd1/unit/gptqd_2esocket";
constexpr const char* kServiceUnit = "/org/freedesktop/systemd1/unit/gptqd_2eservice";

// The stand-in manager: records each call, answers jobs with JobRemoved(result).
struct FakeSystemd {
  std::mutex mutex;
  std::vector<std::string> calls;
  std::string job_result = "done";
  bool deny = false;
  std::map<std::string, std::map<std::string, std::string>> props;  // unit path -> property -> value
  uint32_t next_job = 1;

  void record(std::string c) {
    std::lock_guard lock(mutex);
    calls.push_back(std::move(c));
  }
  std::vector<std::string> taken() {
    std::lock_guard lock(mutex);
    return std::exchange(calls, {});
  }
};

FakeSystemd* self(void* userdata) { return static_cast<FakeSystemd*>(userdata); }

int on_job(sd_bus_message* m, void* userdata, sd_bus_error* err) {
  FakeSystemd* f = self(userdata);
  const char *unit = nullptr, *mode = nullptr;
  if (sd_bus_message_read(m, "ss", &unit, &mode) < 0) return -EINVAL;
  f->record(std::string(sd_bus_message_get_member(m)) + " " + unit + " " + mode);
  if (f->deny) return sd_bus_error_set(err, SD_BUS_ERROR_ACCESS_DENIED, "Access denied");
  const uint32_t id = f->next_job++;
  const std::string path = "/org/freedesktop/systemd1/job/" + std::to_string(id);
  int r = sd_bus_reply_method_return(m, "o", path.c_str());
  if (r < 0) return r;
  return sd_bus_emit_signal(sd_bus_message_get_bus(m), "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                            "JobRemoved", "uoss", id, path.c_str(), unit, f->job_result.c_str());
}

int on_simple(sd_bus_message* m, void* userdata, sd_bus_error*) {
  self(userdata)->record(sd_bus_message_get_member(m));
  return sd_bus_reply_method_return(m, "");
}

int on_load(sd_bus_message* m, void* userdata, sd_bus_error* err) {
  const char* unit = nullptr;
  if (sd_bus_message_read(m, "s", &unit) < 0) return -EINVAL;
  self(userdata)->record(std::string("LoadUnit ") + unit);
  const std::string u = unit;
  if (u == "gptqd.socket") return sd_bus_reply_method_return(m, "o", kSocketUnit);
  if (u == "gptqd.service") return sd_bus_reply_method_return(m, "o", kServiceUnit);
  return sd_bus_error_setf(err, "org.freedesktop.systemd1.NoSuchUnit", "Unit %s not found.", unit);
}

int on_unit_files(sd_bus_message* m, void* userdata, sd_bus_error*) {
  FakeSystemd* f = self(userdata);
  const bool enable = std::string(sd_bus_message_get_member(m)) == "EnableUnitFiles";
  std::vector<std::string> units;
  sd_bus_message_enter_container(m, 'a', "s");
  const char* u = nullptr;
  while (sd_bus_message_read(m, "s", &u) > 0) units.push_back(u);
  sd_bus_message_exit_container(m);
  std::string rec = sd_bus_message_get_member(m);
  for (const auto& x : units) rec += " " + x;
  f->record(rec);
  sd_bus_message* reply = nullptr;
  sd_bus_message_new_method_return(m, &reply);
  if (enable) sd_bus_message_append(reply, "b", 1);
  sd_bus_message_open_container(reply, 'a', "(sss)");
  for (const auto& x : units) {
    const std::string link = "/etc/systemd/system/sockets.target.wants/" + x;
    sd_bus_message_append(reply, "(sss)", enable ? "symlink" : "unlink", link.c_str(),
                          enable ? ("/usr/lib/systemd/system/" + x).c_str() : "");
  }
  sd_bus_message_close_container(reply);
  const int r = sd_bus_send(nullptr, reply, nullptr);
  sd_bus_message_unref(reply);
  return r;
}

int get_prop(sd_bus*, const char* path, const char*, const char* property, sd_bus_message* reply, void* userdata,
             sd_bus_error*) {
  FakeSystemd* f = self(userdata);
  std::lock_guard lock(f->mutex);
  return sd_bus_message_append(reply, "s", f->props[path][property].c_str());
}

const sd_bus_vtable kManager[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_METHOD("Subscribe", "", "", on_simple, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("Reload", "", "", on_simple, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("StartUnit", "ss", "o", on_job, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("StopUnit", "ss", "o", on_job, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("RestartUnit", "ss", "o", on_job, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("LoadUnit", "s", "o", on_load, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("EnableUnitFiles", "asbb", "ba(sss)", on_unit_files, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD("DisableUnitFiles", "asb", "a(sss)", on_unit_files, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL("JobRemoved", "uoss", 0),
    SD_BUS_VTABLE_END};

const sd_bus_vtable kUnit[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("ActiveState", "s", get_prop, 0, 0),
    SD_BUS_PROPERTY("SubState", "s", get_prop, 0, 0),
    SD_BUS_PROPERTY("UnitFileState", "s", get_prop, 0, 0),
    SD_BUS_VTABLE_END};

const sd_bus_vtable kServiceIface[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("StatusText", "s", get_prop, 0, 0),
    SD_BUS_VTABLE_END};

class CtlServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    bus_ = std::make_unique<test::PrivateBus>(dir_ / "bus");
    std::filesystem::create_directories(dir_ / "bus");
    if (!bus_->start()) {
      if (test::under_ci()) FAIL() << "dbus-daemon did not start: " << bus_->log();
      GTEST_SKIP() << "no dbus-daemon: " << bus_->log();
    }
    sd_bus* b = nullptr;
    ASSERT_GE(sd_bus_new(&b), 0);
    conn_ = b;
    ASSERT_GE(sd_bus_set_address(conn_, bus_->address().c_str()), 0);
    ASSERT_GE(sd_bus_set_bus_client(conn_, 1), 0);
    ASSERT_GE(sd_bus_start(conn_), 0);
    ASSERT_GE(sd_bus_add_object_vtable(conn_, nullptr, "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                                       kManager, &fake_), 0);
    for (const char* unit : {kSocketUnit, kServiceUnit}) {
      ASSERT_GE(sd_bus_add_object_vtable(conn_, nullptr, unit, "org.freedesktop.systemd1.Unit", kUnit, &fake_), 0);
    }
    ASSERT_GE(sd_bus_add_object_vtable(conn_, nullptr, kServiceUnit, "org.freedesktop.systemd1.Service", kServiceIface, &fake_), 0);
    ASSERT_GE(sd_bus_request_name(conn_, "org.freedesktop.systemd1", 0), 0);
    fake_.props[kSocketUnit] = {{"ActiveState", "active"}, {"SubState", "listening"}, {"UnitFileState", "enabled"}};
    fake_.props[kServiceUnit] = {{"ActiveState", "active"}, {"SubState", "running"}, {"UnitFileState", "indirect"},
                                 {"StatusText", "serving: 1 model(s) loaded, 0 request(s) generating"}};
    server_ = std::thread([this] {
      while (!stop_) {
        const int r = sd_bus_process(conn_, nullptr);
        if (r < 0) break;
        if (r == 0) sd_bus_wait(conn_, 50'000);
      }
    });
  }
  void TearDown() override {
    stop_ = true;
    if (server_.joinable()) server_.join();
    if (conn_) sd_bus_flush_close_unref(conn_);
  }
  test::CommandResult ctl(const std::vector<std::string>& args) {
    std::vector<std::string> argv = {test::gptqctl_binary().string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return test::run_command(argv, {"GPTQD_SYSTEMD_BUS=" + bus_->address()});
  }

  test::TempDir dir_;
  std::unique_ptr<test::PrivateBus> bus_;
  FakeSystemd fake_;
  sd_bus* conn_ = nullptr;
  std::thread server_;
  std::atomic<bool> stop_{false};
};

TEST_F(CtlServiceTest, StartStopRestartRunTheJobsAndWaitForThem) {
  auto r = ctl({"service", "start"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("gptqd started"), std::string::npos) << r.output;
  auto calls = fake_.taken();
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "StartUnit gptqd.socket replace"), 1) << testing::PrintToString(calls);
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "StartUnit gptqd.service replace"), 1) << testing::PrintToString(calls);

  r = ctl({"service", "stop"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  calls = fake_.taken();
  const auto sock = std::find(calls.begin(), calls.end(), "StopUnit gptqd.socket replace");
  const auto svc = std::find(calls.begin(), calls.end(), "StopUnit gptqd.service replace");
  ASSERT_TRUE(sock != calls.end() && svc != calls.end()) << testing::PrintToString(calls);
  EXPECT_LT(sock, svc) << "the socket stops first, so no client starts the service again";

  r = ctl({"service", "restart"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  calls = fake_.taken();
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "RestartUnit gptqd.service replace"), 1) << testing::PrintToString(calls);
}

TEST_F(CtlServiceTest, AFailedJobAndARefusalSayWhatToDo) {
  fake_.job_result = "failed";
  auto r = ctl({"service", "restart"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("failed"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("journalctl"), std::string::npos) << r.output;
  fake_.job_result = "done";
  fake_.deny = true;
  r = ctl({"service", "start"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("sudo gptqctl service"), std::string::npos) << r.output;
}

TEST_F(CtlServiceTest, EnableAndDisableBothUnitsThenReload) {
  auto r = ctl({"service", "enable"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("symlink /etc/systemd/system/sockets.target.wants/gptqd.socket"), std::string::npos) << r.output;
  auto calls = fake_.taken();
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "EnableUnitFiles gptqd.socket gptqd.service"), 1) << testing::PrintToString(calls);
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "Reload"), 1);
  r = ctl({"service", "disable"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  calls = fake_.taken();
  EXPECT_EQ(std::count(calls.begin(), calls.end(), "DisableUnitFiles gptqd.socket gptqd.service"), 1) << testing::PrintToString(calls);
}

TEST_F(CtlServiceTest, StatusShowsBothUnitsAndTheDaemonsOwnStatusLine) {
  auto r = ctl({"service", "status"});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_NE(r.output.find("gptqd.socket   active (listening), enabled"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("gptqd.service  active (running), indirect"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("serving: 1 model(s) loaded"), std::string::npos) << r.output;
  {
    std::lock_guard lock(fake_.mutex);
    fake_.props[kServiceUnit]["ActiveState"] = "inactive";
    fake_.props[kServiceUnit]["SubState"] = "dead";
  }
  r = ctl({"service", "status"});
  EXPECT_EQ(r.exit_code, 3) << "inactive, like systemctl is-active\n" << r.output;
}

TEST(CtlServiceWithoutSystemd, SaysSoAndHowToRunTheDaemon) {
  if (sd_booted() > 0) GTEST_SKIP() << "systemd runs here";
  auto r = test::run_command({test::gptqctl_binary().string(), "service", "start"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("systemd is not running"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("gptqd --foreground"), std::string::npos) << r.output;
  r = test::run_command({test::gptqctl_binary().string(), "service", "reload"});
  EXPECT_EQ(r.exit_code, 2) << r.output;
}

}  // namespace
}  // namespace gptqd
