// SPDX-License-Identifier: Apache-2.0
// The op table: every route of the socket API and the handler behind it (daemon layer).
#pragma once

#include "daemon/http_server.h"

namespace gptqd::daemon {

class Daemon;

// The dispatcher the HTTP server calls for each request. It catches everything a handler
// throws (gptqd::Error -> its status, anything else -> 500) so no request can end the daemon.
Dispatcher make_dispatcher(Daemon& daemon);

}  // namespace gptqd::daemon
