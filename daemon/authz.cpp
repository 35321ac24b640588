// SPDX-License-Identifier: Apache-2.0
// Authorization of callers (daemon layer).
#include "daemon/authz.h"

#include <grp.h>
#include <pwd.h>
#include <unistd.h>

#include <algorithm>

namespace gptqd::daemon {
namespace {

bool in_group(const Caller& c, const std::string& name) {
  gid_t gid = 0;
  if (name.empty() || !group_gid(name, &gid)) return false;
  return std::find(c.gids.begin(), c.gids.end(), gid) != c.gids.end();
}

bool is_owner(const Caller& c) { return c.uid == 0 || c.uid == ::geteuid(); }

}  // namespace

bool group_gid(const std::string& name, gid_t* gid) {
  struct group gr {};
  struct group* found = nullptr;
  std::vector<char> buf(16384);
  if (::getgrnam_r(name.c_str(), &gr, buf.data(), buf.size(), &found) != 0 || !found) return false;
  *gid = gr.gr_gid;
  return true;
}

std::vector<gid_t> groups_of_user(uid_t uid, gid_t primary) {
  std::vector<gid_t> out{primary};
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) != 0 || !found) return out;
  int n = 64;
  std::vector<gid_t> groups(static_cast<size_t>(n));
  if (::getgrouplist(pw.pw_name, primary, groups.data(), &n) < 0) {
    groups.resize(static_cast<size_t>(n));
    if (::getgrouplist(pw.pw_name, primary, groups.data(), &n) < 0) return out;
  }
  groups.resize(static_cast<size_t>(n));
  for (gid_t g : groups) {
    if (std::find(out.begin(), out.end(), g) == out.end()) out.push_back(g);
  }
  return out;
}

bool may_use(const Caller& c, const std::string& user_group, const std::string& admin_group) {
  return is_owner(c) || in_group(c, user_group) || in_group(c, admin_group);
}

bool may_admin(const Caller& c, const std::string& admin_group) { return is_owner(c) || in_group(c, admin_group); }

std::string describe_caller(const Caller& c) {
  std::string s = "uid " + std::to_string(c.uid);
  struct passwd pw {};
  struct passwd* found = nullptr;
  std::vector<char> buf(16384);
  if (::getpwuid_r(c.uid, &pw, buf.data(), buf.size(), &found) == 0 && found) s += std::string(" (") + pw.pw_name + ")";
  return s;
}

}  // namespace gptqd::daemon
