// SPDX-License-Identifier: Apache-2.0
// `gptqctl service start|stop|restart|status|enable|disable`: asks systemd's manager
// (org.freedesktop.systemd1 on the system bus, or the user's bus with --user) to act on
// gptqd.socket and gptqd.service, waits for the job, and says plainly when there is no systemd
// (ctl layer, sd-bus).
#include "ctl/service.h"

#include <systemd/sd-bus.h>
#include <systemd/sd-daemon.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "ctl/client.h"

namespace gptqd::ctl {
namespace {

constexpr const char* kDest = "org.freedesktop.systemd1";
constexpr const char* kPath = "/org/freedesktop/systemd1";
constexpr const char* kManager = "org.freedesktop.systemd1.Manager";
constexpr const char* kService = "gptqd.service";
constexpr const char* kSocket = "gptqd.socket";

struct BusUnref {
  void operator()(sd_bus* b) const { sd_bus_flush_close_unref(b); }
};
using Bus = std::unique_ptr<sd_bus, BusUnref>;

struct MsgUnref {
  void operator()(sd_bus_message* m) const { sd_bus_message_unref(m); }
};
using Msg = std::unique_ptr<sd_bus_message, MsgUnref>;

// An sd_bus_error that frees itself.
struct BusError {
  sd_bus_error e = SD_BUS_ERROR_NULL;
  ~BusError() { sd_bus_error_free(&e); }
};

[[noreturn]] void fail_call(const std::string& what, int r, const sd_bus_error& e, bool user) {
  std::string msg = what + ": " + (sd_bus_error_is_set(&e) ? std::string(e.message ? e.message : e.name) : std::strerror(-r));
  if (sd_bus_error_has_name(&e, SD_BUS_ERROR_ACCESS_DENIED) || sd_bus_error_has_name(&e, "org.freedesktop.DBus.Error.InteractiveAuthorizationRequired")) {
    msg += user ? "" : " — managing the system service needs root: sudo gptqctl service ...";
  } else if (sd_bus_error_has_name(&e, "org.freedesktop.systemd1.NoSuchUnit")) {
    msg += user ? " — gptqd ships system units; manage them without --user"
                : " — install gptqd first (cmake --install; see the README's 'Running as a service')";
  }
  throw CtlError(kExitFailed, msg);
}

Bus connect(bool user) {
  sd_bus* raw = nullptr;
  int r = 0;
  // Tests (and unusual setups) point at a bus of their own.
  if (const char* addr = std::getenv("GPTQD_SYSTEMD_BUS"); addr && *addr) {
    r = sd_bus_new(&raw);
    if (r >= 0) r = sd_bus_set_address(raw, addr);
    if (r >= 0) r = sd_bus_set_bus_client(raw, 1);
    if (r >= 0) r = sd_bus_start(raw);
    if (r < 0) {
      if (raw) sd_bus_unref(raw);
      throw CtlError(kExitFailed, std::string("cannot connect to the bus at GPTQD_SYSTEMD_BUS: ") + std::strerror(-r));
    }
    return Bus(raw);
  }
  if (!user && sd_booted() <= 0) {
    throw CtlError(kExitFailed,
                   "systemd is not running on this machine (no /run/systemd/system), so there is no service to manage: "
                   "start the daemon directly with `gptqd` (it detaches once listening), or under your own supervisor "
                   "with `gptqd --foreground`");
  }
  r = user ? sd_bus_open_user(&raw) : sd_bus_open_system(&raw);
  if (r < 0) {
    throw CtlError(kExitFailed, std::string("cannot connect to the ") + (user ? "user" : "system") +
                                    " bus to reach systemd: " + std::strerror(-r) +
                                    (user ? " (is there a systemd --user session? try without --user)" : ""));
  }
  return Bus(raw);
}

// Calls a Manager method that returns a job, and waits for that job to finish.
std::string run_job(sd_bus* bus, bool user, const char* method, const char* unit) {
  std::string removed_result;
  std::string job_path;
  bool done = false;
  struct Watch {
    std::string* job;
    std::string* result;
    bool* done;
  } watch{&job_path, &removed_result, &done};
  sd_bus_slot* slot = nullptr;
  auto on_removed = [](sd_bus_message* m, void* userdata, sd_bus_error*) -> int {
    auto* w = static_cast<Watch*>(userdata);
    uint32_t id = 0;
    const char *path = nullptr, *unit_name = nullptr, *result = nullptr;
    if (sd_bus_message_read(m, "uoss", &id, &path, &unit_name, &result) < 0) return 0;
    if (path && *w->job == path) {
      *w->result = result ? result : "";
      *w->done = true;
    }
    return 0;
  };
  int r = sd_bus_match_signal(bus, &slot, kDest, kPath, kManager, "JobRemoved", on_removed, &watch);
  if (r < 0) throw CtlError(kExitFailed, std::string("cannot watch systemd's jobs: ") + std::strerror(-r));
  std::unique_ptr<sd_bus_slot, decltype(&sd_bus_slot_unref)> slot_guard(slot, &sd_bus_slot_unref);
  // systemd sends JobRemoved only to subscribers.
  BusError sub_err;
  sd_bus_call_method(bus, kDest, kPath, kManager, "Subscribe", &sub_err.e, nullptr, "");

  BusError err;
  sd_bus_message* reply_raw = nullptr;
  r = sd_bus_call_method(bus, kDest, kPath, kManager, method, &err.e, &reply_raw, "ss", unit, "replace");
  Msg reply(reply_raw);
  if (r < 0) fail_call(std::string(method) + " " + unit, r, err.e, user);
  const char* path = nullptr;
  if (sd_bus_message_read(reply.get(), "o", &path) < 0 || !path) throw CtlError(kExitFailed, "systemd sent no job for " + std::string(unit));
  job_path = path;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  while (!done && std::chrono::steady_clock::now() < deadline) {
    r = sd_bus_process(bus, nullptr);
    if (r < 0) throw CtlError(kExitFailed, std::string("lost the bus while waiting for systemd: ") + std::strerror(-r));
    if (r == 0) sd_bus_wait(bus, 500'000);
  }
  if (!done) throw CtlError(kExitFailed, std::string(method) + " " + unit + ": systemd did not finish the job in 90 s");
  return removed_result;
}

std::string unit_property(sd_bus* bus, const std::string& unit_path, const char* iface, const char* name) {
  BusError err;
  char* value = nullptr;
  if (sd_bus_get_property_string(bus, kDest, unit_path.c_str(), iface, name, &err.e, &value) < 0) return "";
  std::string s = value ? value : "";
  std::free(value);
  return s;
}

std::string unit_path(sd_bus* bus, bool user, const char* unit) {
  BusError err;
  sd_bus_message* reply_raw = nullptr;
  const int r = sd_bus_call_method(bus, kDest, kPath, kManager, "LoadUnit", &err.e, &reply_raw, "s", unit);
  Msg reply(reply_raw);
  if (r < 0) fail_call(std::string("LoadUnit ") + unit, r, err.e, user);
  const char* path = nullptr;
  if (sd_bus_message_read(reply.get(), "o", &path) < 0 || !path) throw CtlError(kExitFailed, "systemd sent no path for " + std::string(unit));
  return path;
}

void reload(sd_bus* bus, bool user) {
  BusError err;
  const int r = sd_bus_call_method(bus, kDest, kPath, kManager, "Reload", &err.e, nullptr, "");
  if (r < 0) fail_call("Reload", r, err.e, user);
}

// EnableUnitFiles / DisableUnitFiles for both units; returns the symlink changes.
std::vector<std::string> change_unit_files(sd_bus* bus, bool user, bool enable) {
  sd_bus_message* call_raw = nullptr;
  int r = sd_bus_message_new_method_call(bus, &call_raw, kDest, kPath, kManager, enable ? "EnableUnitFiles" : "DisableUnitFiles");
  Msg call(call_raw);
  if (r >= 0) r = sd_bus_message_append(call.get(), "as", 2, kSocket, kService);
  if (r >= 0) r = enable ? sd_bus_message_append(call.get(), "bb", 0, 0) : sd_bus_message_append(call.get(), "b", 0);
  if (r < 0) throw CtlError(kExitFailed, std::string("cannot build the call: ") + std::strerror(-r));
  BusError err;
  sd_bus_message* reply_raw = nullptr;
  r = sd_bus_call(bus, call.get(), 0, &err.e, &reply_raw);
  Msg reply(reply_raw);
  if (r < 0) fail_call(enable ? "EnableUnitFiles" : "DisableUnitFiles", r, err.e, user);
  if (enable) {
    int carries = 0;
    sd_bus_message_read(reply.get(), "b", &carries);
  }
  std::vector<std::string> changes;
  if (sd_bus_message_enter_container(reply.get(), 'a', "(sss)") > 0) {
    const char *type = nullptr, *from = nullptr, *to = nullptr;
    while (sd_bus_message_read(reply.get(), "(sss)", &type, &from, &to) > 0) {
      changes.push_back(std::string(type) + " " + from + (to && *to ? std::string(" -> ") + to : ""));
    }
    sd_bus_message_exit_container(reply.get());
  }
  reload(bus, user);
  return changes;
}

}  // namespace

const std::set<std::string>& service_actions() {
  static const std::set<std::string> kActions = {"start", "stop", "restart", "status", "enable", "disable"};
  return kActions;
}

int cmd_service(const std::string& action, bool user, FILE* out) {
  if (!service_actions().contains(action)) {
    throw CtlError(kExitUsage, "unknown service action '" + action + "' (start, stop, restart, status, enable, disable)");
  }
  Bus bus = connect(user);
  // Let polkit ask for a password on a terminal, as systemctl does.
  sd_bus_set_allow_interactive_authorization(bus.get(), ::isatty(STDIN_FILENO) ? 1 : 0);
  const char* scope = user ? " (user)" : "";
  auto check = [&](const std::string& what, const std::string& result) {
    if (result != "done") {
      throw CtlError(kExitFailed, what + " ended '" + result + "' — see `journalctl " + (user ? "--user " : "") + "-u gptqd`");
    }
  };
  if (action == "start") {
    check("starting gptqd.socket", run_job(bus.get(), user, "StartUnit", kSocket));
    check("starting gptqd.service", run_job(bus.get(), user, "StartUnit", kService));
    std::fprintf(out, "gptqd started%s\n", scope);
  } else if (action == "stop") {
    // The socket first, or a client could start the service again through it.
    check("stopping gptqd.socket", run_job(bus.get(), user, "StopUnit", kSocket));
    check("stopping gptqd.service", run_job(bus.get(), user, "StopUnit", kService));
    std::fprintf(out, "gptqd stopped%s\n", scope);
  } else if (action == "restart") {
    check("restarting gptqd.service", run_job(bus.get(), user, "RestartUnit", kService));
    std::fprintf(out, "gptqd restarted%s\n", scope);
  } else if (action == "enable" || action == "disable") {
    const bool enable = action == "enable";
    for (const auto& c : change_unit_files(bus.get(), user, enable)) std::fprintf(out, "%s\n", c.c_str());
    std::fprintf(out, "gptqd %s%s: %s\n", enable ? "enabled" : "disabled", scope,
                 enable ? "it starts at boot (gptqd.socket); `gptqctl service start` starts it now" : "it no longer starts at boot");
  } else {  // status
    bool active = false;
    for (const char* unit : {kSocket, kService}) {
      const std::string path = unit_path(bus.get(), user, unit);
      const std::string state = unit_property(bus.get(), path, "org.freedesktop.systemd1.Unit", "ActiveState");
      const std::string sub = unit_property(bus.get(), path, "org.freedesktop.systemd1.Unit", "SubState");
      const std::string file = unit_property(bus.get(), path, "org.freedesktop.systemd1.Unit", "UnitFileState");
      std::fprintf(out, "%-14s %s (%s), %s\n", unit, state.c_str(), sub.c_str(), file.empty() ? "not installed" : file.c_str());
      if (std::string(unit) == kService) {
        active = state == "active" || state == "reloading";
        const std::string text = unit_property(bus.get(), path, "org.freedesktop.systemd1.Service", "StatusText");
        if (!text.empty()) std::fprintf(out, "%-14s %s\n", "", text.c_str());
      }
    }
    return active ? kExitOk : kExitUnreachable;
  }
  return kExitOk;
}

}  // namespace gptqd::ctl
