// SPDX-License-Identifier: Apache-2.0
// Fault-injection points for crash-consistency tests (daemon layer). GPTQD_FAULT_POINT=<name>
// in the daemon's environment makes it SIGKILL itself when it reaches that point — the same
// as a kill -9 at exactly that instant. Without the variable a point costs one string compare.
#pragma once

#include <string_view>

namespace gptqd::daemon {

// Names in use: "import.after_stage" (files copied to tmp/), "import.after_blobs" (blobs renamed
// into blobs/, registry not yet committed).
void fault_point(std::string_view name);

}  // namespace gptqd::daemon
