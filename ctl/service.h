// SPDX-License-Identifier: Apache-2.0
// `gptqctl service ACTION`: gptqd's systemd units through systemd's manager on D-Bus (ctl layer).
#pragma once

#include <cstdio>
#include <set>
#include <string>

namespace gptqd::ctl {

// start | stop | restart | status | enable | disable
const std::set<std::string>& service_actions();

// Acts on gptqd.socket and gptqd.service (the system manager, or the user's with `user`) and
// waits for systemd's job. `status` returns kExitOk when the service is active, else
// kExitUnreachable. CtlError(kExitFailed) with what to do when systemd is not running, a unit is
// missing, or the caller may not manage it. GPTQD_SYSTEMD_BUS (an address) replaces the bus.
int cmd_service(const std::string& action, bool user, FILE* out);

}  // namespace gptqd::ctl
