// SPDX-License-Identifier: Apache-2.0
// Fuzzes the daemon's config file (/etc/gptqd/gptqd.json): DaemonConfig::apply_json on the
// defaults, then finalize() as gptqd does at start. A clean rejection is an Error naming the file;
// an accepted document is applied a second time over its own result, which must give the same
// config (applying a file is idempotent).
#include "daemon/daemon_config.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;
using namespace gptqd::daemon;

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  // finalize() fills unset directories from these; fixed so that runs are reproducible.
  ::setenv("HOME", "/nonexistent-home", 1);
  ::unsetenv("STATE_DIRECTORY");
  ::unsetenv("RUNTIME_DIRECTORY");
  ::unsetenv("XDG_DATA_HOME");
  ::unsetenv("XDG_RUNTIME_DIR");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text = fuzz::to_text(data, size);
  fuzz::expect_clean([&] {
    DaemonConfig once;
    once.apply_json(text, "/etc/gptqd/gptqd.json");
    if (std::string_view(once.admin_group).empty()) {
      std::fprintf(stderr, "an accepted config has an empty admin_group\n");
      std::abort();
    }
    DaemonConfig twice = once;
    twice.apply_json(text, "/etc/gptqd/gptqd.json");
    if (twice.max_queue != once.max_queue || twice.admin_group != once.admin_group || twice.socket_path != once.socket_path ||
        twice.keep_alive_s != once.keep_alive_s || twice.state_dir != once.state_dir) {
      std::fprintf(stderr, "applying the same config twice gave a different result\n");
      std::abort();
    }
    once.finalize();
  });
  return 0;
}
