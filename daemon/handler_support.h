// SPDX-License-Identifier: Apache-2.0
// What every handler shares: request parsing, model lookup, error-to-status mapping, and the
// handlers defined outside handlers.cpp (daemon layer). The route table stays in handlers.cpp.
#pragma once

#include <utility>  // before Boost 1.74's awaitable.hpp, which forgets it

#include <boost/asio/awaitable.hpp>
#include <nlohmann/json.hpp>
#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "daemon/device_worker.h"
#include "daemon/http_server.h"
#include "daemon/importer.h"
#include "daemon/protocol.h"
#include "daemon/registry.h"
#include "engine/error.h"
#include "kernels/cuda/cuda_probe.h"
#include "kernels/dispatch.h"

namespace gptqd::daemon {

class Daemon;

namespace handlers {

http::status status_for(ErrorCode code);

// The strict JSON body of a request (Error(invalid_argument) naming what is wrong).
nlohmann::json parse_body(const Request& req);

// T::from_json on the body; RequestError becomes Error(invalid_argument).
template <typename T>
T parse_request(const Request& req) {
  nlohmann::json body = parse_body(req);
  try {
    return T::from_json(body);
  } catch (const protocol::RequestError& e) {
    fail(ErrorCode::invalid_argument, e.what());
  }
}

protocol::ModelRef parse_ref(const std::string& text);
protocol::ModelEntry to_entry(const RegistryTag& t, bool detailed);
RegistryTag find_or_404(Daemon& d, const protocol::ModelRef& ref);
// The registry entry resolved to blob paths, for the device worker.
ModelHandle model_handle(Daemon& d, const RegistryTag& t);

// The registry row of a finished import: metadata from the inspected copies, files, manifest digest.
RegistryTag tag_from_import(const ImportOutcome& out, const protocol::ModelRef& ref, const std::string& source_kind,
                            const std::string& source);

// Releases what a failed or finished import holds: pins, and blobs no registry row references.
// commit_failed: the registry commit itself failed; the published blobs stay (see the .cpp).
void release_import(Daemon& d, const ImportOutcome& out, bool committed, bool commit_failed = false);

// The files of a dataset: a registered NAME, or (admin only: the daemon reads it) an absolute
// path. Error(not_found | permission_denied) with what to do.
using DatasetFiles = std::vector<std::pair<std::string, std::filesystem::path>>;  // (name, path)
DatasetFiles dataset_files(Daemon& d, const std::string& dataset, bool admin);
// Blocking: the rows of every file joined with "\n\n" (engine::join_rows).
std::string dataset_text(const DatasetFiles& files);
std::string read_whole_file(const std::filesystem::path& p);

// Generation, evaluation and datasets (generate_handlers.cpp).
boost::asio::awaitable<void> handle_generate(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_chat(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_openai_chat(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_openai_completions(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_openai_models(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_ps(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_eval(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_dataset_add(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_dataset_list(Daemon& d, Request& req, ResponseWriter& w);

// Quantize jobs and blob downloads (job_handlers.cpp).
boost::asio::awaitable<void> handle_quantize(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_jobs(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_job(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_job_cancel(Daemon& d, Request& req, ResponseWriter& w);
boost::asio::awaitable<void> handle_blob(Daemon& d, Request& req, ResponseWriter& w);

// GPUs and INT4 kernels (gpu_handlers.cpp).
boost::asio::awaitable<void> handle_gpu(Daemon& d, Request& req, ResponseWriter& w);
// A probed GPU as the dispatch table sees it.
kernels::DeviceDesc gpu_desc(const kernels::cuda::CudaDeviceInfo& g);
// The kernel plan of a GPTQ tag on the serving device (POST /api/show "kernels"); null for a
// model that is not GPTQ.
boost::asio::awaitable<nlohmann::json> kernel_plan_json(Daemon& d, const RegistryTag& t);

}  // namespace handlers
}  // namespace gptqd::daemon
