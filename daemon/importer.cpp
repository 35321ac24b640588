// SPDX-License-Identifier: Apache-2.0
// Model import into the blob store (daemon layer).
#include "daemon/importer.h"

#include <chrono>

#include "daemon/fault.h"
#include "engine/error.h"

namespace gptqd::daemon {

ImportOutcome import_model(const engine::ModelInfo& source, BlobStore& store, const ImportProgress& progress,
                           const std::atomic<bool>& cancel) {
  ImportOutcome out;
  try {
    store.check_free_space(source.size_bytes);
    const size_t n_files = source.files.size();
    for (size_t i = 0; i < n_files; ++i) {
      const engine::SourceFile& f = source.files[i];
      auto last_emit = std::chrono::steady_clock::now();
      uint64_t last_done = 0;
      auto on_bytes = [&](uint64_t done) {
        if (cancel.load()) return false;
        auto now = std::chrono::steady_clock::now();
        bool first = done == 0, last = done == f.size_bytes;
        // At most ~5 events a second, plus the first and the last of each file.
        if (first || last || (now - last_emit > std::chrono::milliseconds(200) && done != last_done)) {
          progress({{"event", "progress"},
                    {"status", "copying " + f.name},
                    {"file", f.name},
                    {"file_index", i + 1},
                    {"n_files", n_files},
                    {"total", f.size_bytes},
                    {"completed", done}});
          last_emit = now;
          last_done = done;
        }
        return true;
      };
      out.staged.push_back(store.stage(f.name, f.path, on_bytes));
    }
    fault_point("import.after_stage");

    // The copies are what gets registered, so they are what gets validated; this also catches a
    // source that changed while it was being copied.
    progress({{"event", "progress"}, {"status", "verifying"}});
    std::vector<engine::SourceFile> copies;
    for (const auto& s : out.staged) copies.push_back(engine::SourceFile{s.name, s.tmp_path, s.size_bytes});
    out.info = engine::inspect_model_files(std::move(copies), "the copied files");
    out.info.suggested_name = source.suggested_name;
    for (size_t i = 0; i < out.staged.size(); ++i) {
      if (out.staged[i].size_bytes != source.files[i].size_bytes) {
        fail(ErrorCode::io, source.files[i].name, " changed size while it was copied (", source.files[i].size_bytes,
             " -> ", out.staged[i].size_bytes, " bytes); try again");
      }
    }
    if (cancel.load()) fail(ErrorCode::cancelled, "import cancelled");

    progress({{"event", "progress"}, {"status", "writing blobs"}});
    for (auto& s : out.staged) {
      store.publish(s);
      ++out.n_published;
    }
    fault_point("import.after_blobs");
  } catch (...) {
    out.error = std::current_exception();
    for (size_t i = out.n_published; i < out.staged.size(); ++i) BlobStore::discard(out.staged[i]);
  }
  return out;
}

}  // namespace gptqd::daemon
