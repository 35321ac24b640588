// SPDX-License-Identifier: Apache-2.0
// Importer: copies a model's files into the blob store — hash while copying to tmp/, inspect the
// copies (they, not the source, are what gets registered), publish into blobs/ (daemon layer).
// Runs on a worker thread; the io thread then commits the registry row or cleans up.
#pragma once

#include <atomic>
#include <exception>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "daemon/blob_store.h"
#include "engine/model_source.h"

namespace gptqd::daemon {

struct ImportOutcome {
  engine::ModelInfo info;            // inspected from the staged copies
  std::vector<StagedFile> staged;    // every file, in info.files order
  size_t n_published = 0;            // staged[0, n_published) are in blobs/ and pinned
  std::exception_ptr error;          // set when the import failed
};

// Called on the worker thread with NDJSON progress events.
using ImportProgress = std::function<void(nlohmann::json event)>;

// Never throws: failures land in `error`, with the partial files already removed; what was
// published stays pinned for the io thread to release (it alone can tell whether another model
// references a blob).
ImportOutcome import_model(const engine::ModelInfo& source, BlobStore& store, const ImportProgress& progress,
                           const std::atomic<bool>& cancel);

}  // namespace gptqd::daemon
