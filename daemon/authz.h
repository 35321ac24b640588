// SPDX-License-Identifier: Apache-2.0
// Who may do what (daemon layer), for the socket and D-Bus alike. A caller is its uid and every
// group it is in (primary and supplementary, as the kernel knows them when it connected):
//   use   (read, generate, evaluate): root, the daemon's own user, members of user_group or
//         admin_group;
//   admin (pull, delete, quantize, datasets, cancel): root, the daemon's own user, members of
//         admin_group.
// File modes on the socket are a first fence, not the rule: a socket made world-writable by
// mistake still refuses an outsider here.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace gptqd::daemon {

struct Caller {
  uid_t uid = static_cast<uid_t>(-1);
  std::vector<gid_t> gids;  // primary first, then supplementary
};

// A group's gid by name; false when no such group exists here.
bool group_gid(const std::string& name, gid_t* gid);
// The groups of `uid` from the user database (primary + supplementary), for callers whose
// connection did not carry them.
std::vector<gid_t> groups_of_user(uid_t uid, gid_t primary);

bool may_use(const Caller& c, const std::string& user_group, const std::string& admin_group);
bool may_admin(const Caller& c, const std::string& admin_group);

// "uid 1001 (alice)": for refusals and the log.
std::string describe_caller(const Caller& c);

}  // namespace gptqd::daemon
