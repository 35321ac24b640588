// SPDX-License-Identifier: Apache-2.0
// org.gptqd.Daemon1 on D-Bus through sd-bus, on the daemon's io thread (daemon layer). The bus
// socket is waited for with asio; every call is authorized before sd-bus dispatches it: a filter
// holds the call back, asks the bus for the caller's credentials without waiting, and re-queues
// the call once it is allowed (sd_bus_enqueue_for_read, the pattern of systemd's polkit check).
#include "daemon/dbus_service.h"

#include <poll.h>
#include <pwd.h>
#include <systemd/sd-bus.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/post.hpp>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "daemon/authz.h"
#include "daemon/daemon.h"
#include "daemon/handler_support.h"
#include "daemon/log.h"
#include "engine/error.h"
#include "engine/kernel_plan.h"
#include "kernels/dispatch.h"

namespace gptqd::daemon {

using nlohmann::json;
namespace asio = boost::asio;

namespace {

constexpr const char* kName = "org.gptqd.Daemon1";
constexpr const char* kPath = "/org/gptqd/Daemon1";
constexpr const char* kInterface = "org.gptqd.Daemon1";
constexpr const char* kErrorInternal = "org.gptqd.Error.Internal";
constexpr uint64_t kCallTimeoutUs = 5'000'000;  // start-up round trips and credential look-ups
constexpr size_t kMaxPendingAuth = 256;         // calls waiting for their caller's credentials
constexpr int kMaxProcessPerTurn = 64;          // messages per io turn before other work runs

// Reads GetConnectionCredentials' a{sv} into the caller (daemon/authz.h). The bus vouches for
// UnixUserID (and UnixGroupIDs where dbus-daemon >= 1.15 sends them); without the groups, the
// process's own come from /proc while it still runs as that uid (sd-bus's "augment"), else the
// account's from the user database.
int parse_credentials(sd_bus_message* reply, Caller* c) {
  bool has_uid = false, has_gids = false;
  uint32_t pid = 0;
  int r = sd_bus_message_enter_container(reply, 'a', "{sv}");
  if (r < 0) return r;
  while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
    const char* key = nullptr;
    if ((r = sd_bus_message_read(reply, "s", &key)) < 0) return r;
    if (std::strcmp(key, "UnixUserID") == 0) {
      uint32_t uid = 0;
      if ((r = sd_bus_message_read(reply, "v", "u", &uid)) < 0) return r;
      c->uid = uid, has_uid = true;
    } else if (std::strcmp(key, "ProcessID") == 0) {
      if ((r = sd_bus_message_read(reply, "v", "u", &pid)) < 0) return r;
    } else if (std::strcmp(key, "UnixGroupIDs") == 0) {
      if ((r = sd_bus_message_enter_container(reply, 'v', "au")) < 0) return r;
      const void* data = nullptr;
      size_t size = 0;
      if ((r = sd_bus_message_read_array(reply, 'u', &data, &size)) < 0) return r;
      const auto* ids = static_cast<const uint32_t*>(data);
      c->gids.assign(ids, ids + size / sizeof(uint32_t));
      has_gids = true;
      if ((r = sd_bus_message_exit_container(reply)) < 0) return r;
    } else if ((r = sd_bus_message_skip(reply, "v")) < 0) {
      return r;
    }
    if ((r = sd_bus_message_exit_container(reply)) < 0) return r;
  }
  if (r < 0) return r;
  if ((r = sd_bus_message_exit_container(reply)) < 0) return r;
  if (!has_uid) return -ENODATA;
  if (!has_gids && pid > 0) {
    sd_bus_creds* creds = nullptr;
    if (sd_bus_creds_new_from_pid(&creds, static_cast<pid_t>(pid),
                                  SD_BUS_CREDS_EUID | SD_BUS_CREDS_EGID | SD_BUS_CREDS_SUPPLEMENTARY_GIDS) >= 0) {
      uid_t euid = 0;
      gid_t egid = 0;
      const gid_t* extra = nullptr;
      const int n = sd_bus_creds_get_supplementary_gids(creds, &extra);
      if (sd_bus_creds_get_euid(creds, &euid) >= 0 && euid == c->uid && sd_bus_creds_get_egid(creds, &egid) >= 0 &&
          n >= 0) {
        c->gids = {egid};
        c->gids.insert(c->gids.end(), extra, extra + n);
        has_gids = true;
      }
      sd_bus_creds_unref(creds);
    }
  }
  if (!has_gids) {
    const struct passwd* pw = ::getpwuid(c->uid);
    c->gids = pw ? groups_of_user(c->uid, pw->pw_gid) : std::vector<gid_t>{};
  }
  return 0;
}

// ---- Errors: gptqd::Error codes as D-Bus error names.

const char* error_name(ErrorCode code) {
  switch (code) {
    case ErrorCode::invalid_argument: return "org.gptqd.Error.InvalidArgument";
    case ErrorCode::invalid_model: return "org.gptqd.Error.InvalidModel";
    case ErrorCode::unsupported: return "org.gptqd.Error.Unsupported";
    case ErrorCode::not_found: return "org.gptqd.Error.NotFound";
    case ErrorCode::conflict: return "org.gptqd.Error.Conflict";
    case ErrorCode::io: return "org.gptqd.Error.IO";
    case ErrorCode::no_space: return "org.gptqd.Error.NoSpace";
    case ErrorCode::permission_denied: return SD_BUS_ERROR_ACCESS_DENIED;
    case ErrorCode::cancelled: return "org.gptqd.Error.Cancelled";
    case ErrorCode::busy: return "org.gptqd.Error.Busy";
    case ErrorCode::internal: return kErrorInternal;
  }
  return kErrorInternal;
}

// Runs a callback body; nothing is thrown into sd-bus: errors become the call's D-Bus error.
template <typename F>
int guarded(sd_bus_error* ret_error, F&& body) noexcept {
  try {
    return body();
  } catch (const Error& e) {
    return sd_bus_error_set(ret_error, error_name(e.code()), e.what());
  } catch (const std::exception& e) {
    log_error("D-Bus: ", e.what());
    return sd_bus_error_set(ret_error, kErrorInternal, e.what());
  } catch (...) {
    return sd_bus_error_set(ret_error, kErrorInternal, "unknown error");
  }
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

struct MessageUnref {
  void operator()(sd_bus_message* m) const { sd_bus_message_unref(m); }
};
using MessagePtr = std::unique_ptr<sd_bus_message, MessageUnref>;

// ---- Devices: what GET /api/gpu shows, one row per device.

// "decode cpu-avx2, prefill cpu-avx2": what runs the usual GPTQ linear on `device`.
std::string kernels_summary(const kernels::DeviceDesc& device) {
  const kernels::LinearDesc& usual = engine::common_linear_configs().front().desc;
  return cat("decode ", kernels::kernel_name(kernels::pick_kernel(device, usual, engine::kPlanDecodeM)), ", prefill ",
             kernels::kernel_name(kernels::pick_kernel(device, usual, engine::kPlanPrefillM)));
}

int append_devices(const Daemon& d, sd_bus_message* reply) {
  int r = sd_bus_message_open_container(reply, 'a', "(sssss)");
  if (r < 0) return r;
  const kernels::DeviceDesc& host = kernels::host_cpu_device();
  r = sd_bus_message_append(reply, "(sssss)", "cpu", "cpu", host.name.c_str(), "", kernels_summary(host).c_str());
  if (r < 0) return r;
  // GPUs once the start-up probe answered (it runs on its own thread; until then, the CPU only).
  if (d.gpu_probe().state == GpuProbe::State::done) {
    for (const auto& g : d.gpu_probe().result.devices) {
      const kernels::DeviceDesc desc = handlers::gpu_desc(g);
      const std::string id = cat("cuda:", g.index), cc = cat(g.cc_major, ".", g.cc_minor);
      r = sd_bus_message_append(reply, "(sssss)", id.c_str(), "cuda", g.name.c_str(), cc.c_str(),
                                kernels_summary(desc).c_str());
      if (r < 0) return r;
    }
  }
  return sd_bus_message_close_container(reply);
}

}  // namespace

// ---- sd-bus entry points (C callbacks).

struct DbusService::PendingAuth {
  DbusService* self = nullptr;
  sd_bus_message* call = nullptr;  // a reference
  sd_bus_slot* slot = nullptr;     // the GetConnectionCredentials call; unref cancels it
  bool admin = false;              // the call changes something

  ~PendingAuth() {
    sd_bus_slot_unref(slot);
    sd_bus_message_unref(call);
  }
};

struct DbusCallbacks {
  static Daemon& daemon(void* userdata) { return static_cast<DbusService*>(userdata)->d_; }

  static int get_version(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void*,
                         sd_bus_error* ret_error) {
    return guarded(ret_error, [&] { return sd_bus_message_append(reply, "s", GPTQD_VERSION); });
  }

  static int get_devices(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void* userdata,
                         sd_bus_error* ret_error) {
    return guarded(ret_error, [&] { return append_devices(daemon(userdata), reply); });
  }

  static int get_loaded_models(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply,
                               void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      // The worker's snapshot is thread-safe and current: no cache needed.
      int r = sd_bus_message_open_container(reply, 'a', "s");
      for (const auto& st : daemon(userdata).worker().status()) {
        if (r >= 0) r = sd_bus_message_append(reply, "s", st.ref.c_str());
      }
      return r < 0 ? r : sd_bus_message_close_container(reply);
    });
  }

  static int get_jobs(sd_bus*, const char*, const char*, const char*, sd_bus_message* reply, void* userdata,
                      sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      const json list = daemon(userdata).jobs().list_json();
      int r = sd_bus_message_open_container(reply, 'a', "(tsssd)");
      for (const json& j : list.at("jobs")) {
        if (r < 0) break;
        const std::string state = j.value("state", "");
        double fraction = state == "done" ? 1.0 : 0.0;
        if (auto p = j.find("progress"); p != j.end() && p->is_object()) fraction = p->value("fraction", 0.0);
        r = sd_bus_message_append(reply, "(tsssd)", static_cast<uint64_t>(j.value("id", int64_t{0})),
                                  j.value("kind", "").c_str(), state.c_str(), j.value("target", "").c_str(), fraction);
      }
      return r < 0 ? r : sd_bus_message_close_container(reply);
    });
  }

  static int list_models(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      sd_bus_message* raw = nullptr;
      int r = sd_bus_message_new_method_return(m, &raw);
      if (r < 0) return r;
      MessagePtr reply(raw);
      r = sd_bus_message_open_container(raw, 'a', "(sssst)");
      for (const RegistryTag& t : daemon(userdata).registry().list()) {
        if (r < 0) break;
        const std::string ref = t.name + ":" + t.tag;
        r = sd_bus_message_append(raw, "(sssst)", ref.c_str(), t.format.c_str(), t.dtype.c_str(), t.state.c_str(),
                                  static_cast<uint64_t>(t.size_bytes));
      }
      if (r >= 0) r = sd_bus_message_close_container(raw);
      return r < 0 ? r : sd_bus_send(nullptr, raw, nullptr);
    });
  }

  static int64_t read_job_id(sd_bus_message* m) {
    uint64_t id = 0;
    const int r = sd_bus_message_read(m, "t", &id);
    if (r < 0) fail(ErrorCode::invalid_argument, "expected a job id (t): ", std::strerror(-r));
    if (id > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail(ErrorCode::not_found, "job ", id, " not found; `gptqctl jobs` lists them");
    }
    return static_cast<int64_t>(id);
  }

  static int get_job(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      const int64_t id = read_job_id(m);
      auto job = daemon(userdata).jobs().job_json(id, true);
      if (!job) fail(ErrorCode::not_found, "job ", id, " not found; `gptqctl jobs` lists them");
      return sd_bus_reply_method_return(m, "s", dump(*job).c_str());
    });
  }

  static int cancel_job(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] {
      const int64_t id = read_job_id(m);
      daemon(userdata).jobs().cancel(id);
      return sd_bus_reply_method_return(m, "");
    });
  }

  static int filter(sd_bus_message* m, void* userdata, sd_bus_error* ret_error) {
    return guarded(ret_error, [&] { return static_cast<DbusService*>(userdata)->filter(m); });
  }

  static int on_credentials(sd_bus_message* reply, void* userdata, sd_bus_error*) {
    auto* pending = static_cast<DbusService::PendingAuth*>(userdata);
    try {
      pending->self->on_credentials(pending, reply);
    } catch (const std::exception& e) {
      log_error("D-Bus: authorizing a call: ", e.what());
    }
    return 0;
  }
};

namespace {

// Properties without flags are introspected with EmitsChangedSignal=false: read them when needed.
// Methods are UNPRIVILEGED for sd-bus, whose own check would admit only our uid and CAP_SYS_ADMIN:
// DbusService::filter applies the socket's rules before any of them runs.
const sd_bus_vtable kVtable[] = {
    SD_BUS_VTABLE_START(0),
    SD_BUS_PROPERTY("Version", "s", DbusCallbacks::get_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
    SD_BUS_PROPERTY("Devices", "a(sssss)", DbusCallbacks::get_devices, 0, 0),
    SD_BUS_PROPERTY("LoadedModels", "as", DbusCallbacks::get_loaded_models, 0, 0),
    SD_BUS_PROPERTY("Jobs", "a(tsssd)", DbusCallbacks::get_jobs, 0, 0),
    SD_BUS_METHOD_WITH_ARGS("ListModels", SD_BUS_NO_ARGS, SD_BUS_RESULT("a(sssst)", models),
                            DbusCallbacks::list_models, SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("GetJob", SD_BUS_ARGS("t", id), SD_BUS_RESULT("s", job_json), DbusCallbacks::get_job,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_METHOD_WITH_ARGS("CancelJob", SD_BUS_ARGS("t", id), SD_BUS_NO_RESULT, DbusCallbacks::cancel_job,
                            SD_BUS_VTABLE_UNPRIVILEGED),
    SD_BUS_SIGNAL_WITH_ARGS("JobProgress", SD_BUS_ARGS("t", id, "s", event_json), 0),
    SD_BUS_SIGNAL_WITH_ARGS("JobFinished", SD_BUS_ARGS("t", id, "s", state, "s", error), 0),
    SD_BUS_VTABLE_END,
};

bool runs_as_system_service() { return ::geteuid() < 1000 || std::getenv("INVOCATION_ID") != nullptr; }

}  // namespace

// ---- DbusService

DbusService::DbusService(Daemon& d) : d_(d), fd_(d.io()), timer_(d.io()) {}

DbusService::~DbusService() { stop(); }

void DbusService::start() {
  const std::string& want = d_.config().dbus;
  if (want == "none") {
    log_info("D-Bus: off (--dbus none)");
    return;
  }
  const bool automatic = want == "auto";
  const std::string which = automatic ? (runs_as_system_service() ? "system" : "session") : want;
  label_ = which == "system" ? "the system bus" : which == "session" ? "the session bus" : "the bus at " + which;
  try {
    connect(which);
  } catch (const std::exception& e) {
    stop();
    if (!automatic) throw;
    log_warn("ignoring: ", e.what(), "; running without D-Bus (--dbus auto; --dbus none turns it off)");
    return;
  }
  observed_ = &d_.jobs();
  observed_->set_observer([this](int64_t id, const json& event) { on_job_event(id, event); });
  log_info("D-Bus: ", kName, " on ", label_);
  process();  // whatever arrived during the start-up round trips
}

void DbusService::connect(const std::string& which) {
  int r = 0;
  std::string_view step = "connect";
  if (which == "system") {
    r = sd_bus_open_system_with_description(&bus_, "gptqd");
  } else if (which == "session") {
    r = sd_bus_open_user_with_description(&bus_, "gptqd");
  } else {
    r = sd_bus_new(&bus_);
    if (r >= 0) r = sd_bus_set_description(bus_, "gptqd");
    if (r >= 0) r = sd_bus_set_address(bus_, which.c_str());
    if (r >= 0) r = sd_bus_set_bus_client(bus_, 1);
    if (r >= 0) r = sd_bus_start(bus_);
  }
  if (r >= 0) r = sd_bus_set_method_call_timeout(bus_, kCallTimeoutUs);
  if (r >= 0) step = "export", r = sd_bus_add_object_vtable(bus_, &object_slot_, kPath, kInterface, kVtable, this);
  if (r >= 0) step = "filter", r = sd_bus_add_filter(bus_, &filter_slot_, DbusCallbacks::filter, this);
  if (r >= 0) step = "name", r = sd_bus_request_name(bus_, kName, 0);
  if (r < 0) {
    const bool address = which != "system" && which != "session";
    if (step == "connect") {
      fail(ErrorCode::io, "D-Bus: cannot connect to ", label_, ": ", std::strerror(-r),
           address ? " (--dbus takes auto, none, system, session or an address such as unix:path=/run/dbus/system_bus_socket)"
                   : "");
    }
    if (step == "name") {
      fail(ErrorCode::io, "D-Bus: cannot own ", kName, " on ", label_, ": ",
           r == -EEXIST   ? "another process owns it (a second gptqd?)"
           : r == -EACCES ? "the bus policy does not allow it (install the D-Bus policy for org.gptqd.Daemon1)"
                          : std::strerror(-r));
    }
    fail(ErrorCode::io, "D-Bus: cannot set up ", kPath, " on ", label_, ": ", std::strerror(-r));
  }
  fd_.assign(sd_bus_get_fd(bus_));
}

void DbusService::stop() {
  const bool was_up = observed_ != nullptr;
  if (observed_) {
    observed_->set_observer(nullptr);
    observed_ = nullptr;
  }
  if (fd_.is_open()) {
    boost::system::error_code ec;
    fd_.cancel(ec);
    fd_.release();  // sd-bus owns the socket
  }
  timer_.cancel();
  pending_.clear();
  for (sd_bus_message* m : authorized_) sd_bus_message_unref(m);
  authorized_.clear();
  filter_slot_ = sd_bus_slot_unref(filter_slot_);
  object_slot_ = sd_bus_slot_unref(object_slot_);
  if (bus_) {
    if (was_up) log_info("D-Bus: leaving ", label_);
    bus_ = sd_bus_close_unref(bus_);
  }
}

void DbusService::fail_connection(const char* what, int r) {
  log_warn("ignoring: D-Bus: lost ", label_, " (", what, ": ", std::strerror(-r), "); running on without D-Bus");
  stop();
}

void DbusService::process() {
  process_posted_ = false;
  for (int i = 0; bus_ && i < kMaxProcessPerTurn; ++i) {
    const int r = sd_bus_process(bus_, nullptr);
    if (r < 0) return fail_connection("processing", r);
    if (r == 0) return arm();
  }
  // More is ready: let the rest of the daemon have a turn first.
  if (bus_ && !process_posted_) {
    process_posted_ = true;
    asio::post(d_.io(), [this] { process(); });
  }
}

// Waits for what sd-bus asks for: readable, writable (a queue to flush), its next deadline.
void DbusService::arm() {
  if (!bus_) return;
  const int events = sd_bus_get_events(bus_);
  if (events < 0) return fail_connection("polling", events);
  if ((events & POLLIN) && !waiting_read_) {
    waiting_read_ = true;
    fd_.async_wait(asio::posix::stream_descriptor::wait_read, [this](const boost::system::error_code& ec) {
      waiting_read_ = false;
      if (!ec) process();
    });
  }
  if ((events & POLLOUT) && !waiting_write_) {
    waiting_write_ = true;
    fd_.async_wait(asio::posix::stream_descriptor::wait_write, [this](const boost::system::error_code& ec) {
      waiting_write_ = false;
      if (!ec) process();
    });
  }
  uint64_t until_us = 0;  // CLOCK_MONOTONIC, which is steady_clock's
  if (sd_bus_get_timeout(bus_, &until_us) < 0 || until_us == std::numeric_limits<uint64_t>::max()) {
    timer_.cancel();
    return;
  }
  timer_.expires_at(std::chrono::steady_clock::time_point(std::chrono::microseconds(until_us)));
  timer_.async_wait([this](const boost::system::error_code& ec) {
    if (!ec) process();
  });
}

int DbusService::filter(sd_bus_message* m) {
  uint8_t type = 0;
  if (sd_bus_message_get_type(m, &type) < 0 || type != SD_BUS_MESSAGE_METHOD_CALL) return 0;
  const char* path = sd_bus_message_get_path(m);
  if (!path || std::strcmp(path, kPath) != 0) return 0;
  const char* iface = sd_bus_message_get_interface(m);
  // The shape of the interface is no secret.
  if (iface && (std::strcmp(iface, "org.freedesktop.DBus.Introspectable") == 0 ||
                std::strcmp(iface, "org.freedesktop.DBus.Peer") == 0)) {
    return 0;
  }
  if (auto it = authorized_.find(m); it != authorized_.end()) {
    authorized_.erase(it);
    sd_bus_message_unref(m);  // sd-bus holds its own reference while dispatching
    return 0;
  }
  const char* sender = sd_bus_message_get_sender(m);
  if (!sender) {
    sd_bus_reply_method_errorf(m, SD_BUS_ERROR_ACCESS_DENIED, "gptqd cannot tell who sent this call (no sender)");
    return 1;
  }
  if (pending_.size() >= kMaxPendingAuth) {
    sd_bus_reply_method_errorf(m, SD_BUS_ERROR_LIMITS_EXCEEDED, "gptqd is identifying %zu callers; try again",
                               pending_.size());
    return 1;
  }
  auto pending = std::make_unique<PendingAuth>();
  pending->self = this;
  pending->call = sd_bus_message_ref(m);
  const char* member = sd_bus_message_get_member(m);
  pending->admin = member && std::strcmp(member, "CancelJob") == 0;
  const int r = sd_bus_call_method_async(bus_, &pending->slot, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                         "org.freedesktop.DBus", "GetConnectionCredentials",
                                         DbusCallbacks::on_credentials, pending.get(), "s", sender);
  if (r < 0) {
    sd_bus_reply_method_errorf(m, SD_BUS_ERROR_FAILED, "gptqd cannot identify the caller: %s", std::strerror(-r));
    return 1;
  }
  pending_.push_back(std::move(pending));
  return 1;  // held back until the caller is known
}

void DbusService::on_credentials(PendingAuth* pending, sd_bus_message* reply) {
  auto it = std::find_if(pending_.begin(), pending_.end(), [&](const auto& p) { return p.get() == pending; });
  if (it == pending_.end()) return;
  std::unique_ptr<PendingAuth> owned = std::move(*it);
  pending_.erase(it);
  sd_bus_message* call = owned->call;
  const char* iface = sd_bus_message_get_interface(call);
  const char* member = sd_bus_message_get_member(call);
  const std::string what = cat(iface ? iface : "", iface ? "." : "", member ? member : "?");
  const char* sender = sd_bus_message_get_sender(call);

  Caller caller;
  std::string why;
  if (const sd_bus_error* e = sd_bus_message_get_error(reply)) {
    why = e->message ? e->message : e->name;
  } else if (const int r = parse_credentials(reply, &caller); r < 0) {
    why = cat("unreadable credentials: ", std::strerror(-r));
  }
  if (!why.empty()) {
    log_warn("D-Bus: refusing ", what, " from ", sender ? sender : "?", ": cannot identify the caller: ", why);
    sd_bus_reply_method_errorf(call, SD_BUS_ERROR_ACCESS_DENIED, "gptqd cannot identify the caller: %s", why.c_str());
    return;
  }

  const DaemonConfig& cfg = d_.config();
  if (owned->admin ? !may_admin(caller, cfg.admin_group) : !may_use(caller, cfg.user_group, cfg.admin_group)) {
    const std::string need = owned->admin
        ? cat(what, " changes gptqd's jobs: it needs root, the daemon's user (uid ", ::geteuid(), ") or group ",
              cfg.admin_group)
        : cat(what, " needs root, the daemon's user (uid ", ::geteuid(), ") or group ", cfg.user_group, " or ",
              cfg.admin_group);
    const std::string who = describe_caller(caller);
    log_warn("D-Bus: refused ", what, " to ", who, " (", sender ? sender : "?", "): ", need);
    sd_bus_reply_method_errorf(call, SD_BUS_ERROR_ACCESS_DENIED, "%s; %s is none of these", need.c_str(), who.c_str());
    return;
  }
  // Allowed: dispatch it again; the filter lets it through this time.
  if (const int r = sd_bus_enqueue_for_read(bus_, call); r < 0) {
    sd_bus_reply_method_errorf(call, SD_BUS_ERROR_FAILED, "gptqd cannot dispatch the call: %s", std::strerror(-r));
    return;
  }
  authorized_.insert(sd_bus_message_ref(call));
}

void DbusService::on_job_event(int64_t id, const json& event) {
  if (!bus_) return;
  try {
    int r = sd_bus_emit_signal(bus_, kPath, kInterface, "JobProgress", "ts", static_cast<uint64_t>(id),
                               dump(event).c_str());
    const std::string kind = event.value("event", "");
    if (r >= 0 && (kind == "done" || kind == "error" || kind == "cancelled")) {
      // The registry has the job's final state by now; an "error" that leaves the job queued or
      // running is the daemon stopping under it (it resumes at the next start).
      auto job = d_.registry().job(id);
      if (job && job->state != "queued" && job->state != "running") {
        r = sd_bus_emit_signal(bus_, kPath, kInterface, "JobFinished", "tss", static_cast<uint64_t>(id),
                               job->state.c_str(), job->error.c_str());
      }
    }
    if (r < 0) log_warn("ignoring: D-Bus signal for job ", id, " not sent: ", std::strerror(-r));
  } catch (const std::exception& e) {
    log_warn("ignoring: D-Bus signal for job ", id, " not sent: ", e.what());
  }
  arm();  // a signal that did not fit the socket waits for POLLOUT
}

}  // namespace gptqd::daemon
