// SPDX-License-Identifier: Apache-2.0
// DbusService: gptqd's D-Bus face, org.gptqd.Daemon1 through sd-bus, driven by the daemon's
// io_context rather than a thread of its own (daemon layer, io thread only).
//
// Object /org/gptqd/Daemon1, interface org.gptqd.Daemon1 (Introspect lists it):
//   properties  Version s                 the daemon's version (const)
//               Devices a(sssss)          (id "cpu"|"cuda:N", kind "cpu"|"cuda", name, compute
//                                         capability "" on the CPU, kernels "decode K, prefill K")
//               LoadedModels as           NAME:TAG loaded on the serving device (as GET /api/ps)
//               Jobs a(tsssd)             (id, kind, state, target NAME:TAG, progress 0..1)
//               Devices, LoadedModels and Jobs emit no PropertiesChanged: read them when needed;
//               JobProgress/JobFinished report every change of a job.
//   methods     ListModels() -> a(sssst)  (NAME:TAG, format, dtype, state, size in bytes)
//               GetJob(t id) -> s         the job as GET /api/jobs/{id} gives it (JSON)
//               CancelJob(t id)
//   signals     JobProgress(t id, s event_json)     every event a follower of the job gets
//               JobFinished(t id, s state, s error) once, when the job ends (done|failed|cancelled)
// Errors: org.gptqd.Error.{NotFound,Conflict,InvalidArgument,...} with the socket's message;
// org.freedesktop.DBus.Error.AccessDenied for callers the socket would refuse too.
#pragma once

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdint>
#include <list>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

struct sd_bus;
struct sd_bus_slot;
struct sd_bus_message;

namespace gptqd::daemon {

class Daemon;
class JobManager;

class DbusService {
 public:
  explicit DbusService(Daemon& d);
  ~DbusService();
  DbusService(const DbusService&) = delete;
  DbusService& operator=(const DbusService&) = delete;

  // Connects to the bus `config().dbus` names, exports the object and takes the name (a few
  // synchronous round trips, before io_context::run). An explicit bus that fails throws
  // Error(io) naming the bus; "auto" logs a warning and leaves D-Bus off.
  void start();
  // Drops the connection (and so the name); idempotent. Cancels its waits, so that
  // io_context::run can return.
  void stop();
  bool connected() const { return bus_ != nullptr; }

 private:
  friend struct DbusCallbacks;
  struct PendingAuth;

  void connect(const std::string& which);
  void process();
  void arm();
  void fail_connection(const char* what, int r);
  int filter(sd_bus_message* m);
  void on_credentials(PendingAuth* pending, sd_bus_message* reply);
  void on_job_event(int64_t id, const nlohmann::json& event);

  Daemon& d_;
  std::string label_;  // "the system bus", "the bus at unix:path=..." for messages
  sd_bus* bus_ = nullptr;
  sd_bus_slot* object_slot_ = nullptr;
  sd_bus_slot* filter_slot_ = nullptr;
  JobManager* observed_ = nullptr;  // whose observer we are
  boost::asio::posix::stream_descriptor fd_;  // sd-bus's socket; released, never closed, by us
  boost::asio::steady_timer timer_;           // sd_bus_get_timeout's deadline
  bool waiting_read_ = false, waiting_write_ = false, process_posted_ = false;
  // Method calls whose caller's credentials are being fetched (GetConnectionCredentials,
  // asynchronously: the io thread never waits for the bus).
  std::list<std::unique_ptr<PendingAuth>> pending_;
  // Calls found allowed and re-queued with sd_bus_enqueue_for_read (one reference each).
  std::set<sd_bus_message*> authorized_;
};

}  // namespace gptqd::daemon
