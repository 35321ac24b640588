// SPDX-License-Identifier: Apache-2.0
// The files in systemd/ as systemd and the bus read them: `systemd-analyze verify` is clean, the
// service's exposure is at most 1.5 (reliability B8), the GPU is its only device, the D-Bus
// policy parses, sysusers and tmpfiles agree on the names (unit). Skips when a tool is missing,
// except under CI.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "tests/support/test_env.h"

namespace gptqd {
namespace {
namespace fs = std::filesystem;
using test::run_command;
using test::TempDir;

// The executable `name` on PATH, or "" when there is none.
std::string find_tool(const std::string& name) {
  const char* path = std::getenv("PATH");
  std::stringstream dirs(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    const fs::path p = fs::path(dir.empty() ? "." : dir) / name;
    if (::access(p.c_str(), X_OK) == 0) return p.string();
  }
  return "";
}

#define GPTQD_REQUIRE_TOOL(var, name)                                                     \
  const std::string var = find_tool(name);                                                \
  do {                                                                                    \
    if (var.empty()) {                                                                    \
      if (::gptqd::test::under_ci()) FAIL() << (name) << " is not installed (CI=true)";   \
      GTEST_SKIP() << (name) << " is not installed";                                      \
    }                                                                                     \
  } while (0)

fs::path systemd_dir() { return test::source_dir() / "systemd"; }

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

// The two units in `dir` as `cmake --install` would write them, ExecStart pointing at a stand-in
// gptqd (verify insists the binary exists and is executable).
void write_units(const fs::path& dir) {
  fs::create_directories(dir / "bin");
  test::write_file(dir / "bin" / "gptqd", "#!/bin/sh\nexit 0\n");
  fs::permissions(dir / "bin" / "gptqd", fs::perms::owner_all);
  test::write_file(dir / "gptqd.json", "{}\n");
  std::string service = test::read_file(systemd_dir() / "gptqd.service.in");
  service = replace_all(service, "@GPTQD_BINDIR@", (dir / "bin").string());
  service = replace_all(service, "@GPTQD_CONFIG_FILE@", (dir / "gptqd.json").string());
  ASSERT_EQ(service.find("@GPTQD_"), std::string::npos) << "a placeholder was left in gptqd.service.in";
  test::write_file(dir / "gptqd.service", service);
  fs::copy_file(systemd_dir() / "gptqd.socket", dir / "gptqd.socket");
}

// Directive=value lines of a unit file (comments and sections dropped).
std::vector<std::string> directives(const fs::path& unit, const std::string& name) {
  std::vector<std::string> values;
  std::istringstream in(test::read_file(unit));
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(name + "=", 0) == 0) values.push_back(line.substr(name.size() + 1));
  }
  return values;
}

TEST(SystemdUnits, VerifyIsClean) {
  GPTQD_REQUIRE_TOOL(analyze, "systemd-analyze");
  TempDir dir;
  write_units(dir.path());
  const auto r = run_command({analyze, "verify", "--man=no", (dir / "gptqd.socket").string(),
                              (dir / "gptqd.service").string()});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "") << "systemd-analyze verify printed warnings";
}

TEST(SystemdUnits, ServiceExposureIsAtMost1_5) {
  GPTQD_REQUIRE_TOOL(analyze, "systemd-analyze");
  TempDir dir;
  write_units(dir.path());
  // --threshold is the exposure times ten: 15 is 1.5.
  const auto r = run_command({analyze, "security", "--offline=true", "--threshold=15", "--no-pager",
                              (dir / "gptqd.service").string()});
  std::smatch m;
  const std::regex overall("Overall exposure level for gptqd.service: ([0-9]+\\.[0-9])");
  ASSERT_TRUE(std::regex_search(r.output, m, overall)) << r.output;
  std::printf("systemd-analyze security --offline: gptqd.service exposure %s\n", m[1].str().c_str());
  RecordProperty("exposure", m[1].str());
  EXPECT_LE(std::stod(m[1].str()), 1.5) << r.output;
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

TEST(SystemdUnits, TheGpuIsTheOnlyDevice) {
  const fs::path service = systemd_dir() / "gptqd.service.in";
  EXPECT_EQ(directives(service, "DevicePolicy"), std::vector<std::string>{"closed"});
  EXPECT_EQ(directives(service, "PrivateDevices"), std::vector<std::string>{"no"});
  const auto allowed = directives(service, "DeviceAllow");
  EXPECT_FALSE(allowed.empty());
  for (const std::string& a : allowed) {
    EXPECT_TRUE(std::regex_match(a, std::regex("char-nvidia[a-z-]* r?w?"))) << "DeviceAllow=" << a;
  }
  // Nothing may widen the device list or hand out capabilities behind the analyzer's back.
  EXPECT_TRUE(directives(service, "SupplementaryGroups").empty());
  EXPECT_EQ(directives(service, "CapabilityBoundingSet"), std::vector<std::string>{""});
  EXPECT_EQ(directives(service, "AmbientCapabilities"), std::vector<std::string>{""});
  EXPECT_EQ(directives(service, "ExecStart").size(), 1u);
  EXPECT_EQ(directives(service, "ExecStart")[0].rfind("@GPTQD_BINDIR@/gptqd --foreground", 0), 0u);
}

TEST(SystemdUnits, SocketMatchesTheServiceAndTheUsers) {
  const fs::path socket = systemd_dir() / "gptqd.socket";
  const fs::path service = systemd_dir() / "gptqd.service.in";
  EXPECT_EQ(directives(socket, "ListenStream"), std::vector<std::string>{"/run/gptqd/gptqd.sock"});
  EXPECT_EQ(directives(socket, "SocketMode"), std::vector<std::string>{"0660"});
  EXPECT_EQ(directives(socket, "SocketUser"), directives(service, "User"));
  EXPECT_EQ(directives(socket, "SocketGroup"), directives(service, "Group"));
  EXPECT_EQ(directives(socket, "Accept"), std::vector<std::string>{"no"});
  // The socket lives in the service's RuntimeDirectory, which must outlive a service restart.
  EXPECT_EQ(directives(service, "RuntimeDirectory"), std::vector<std::string>{"gptqd"});
  EXPECT_EQ(directives(service, "RuntimeDirectoryPreserve"), std::vector<std::string>{"yes"});
  EXPECT_NE(test::read_file(systemd_dir() / "gptqd.tmpfiles.conf").find("d /run/gptqd 0750 gptqd gptq -"),
            std::string::npos);
}

TEST(SystemdUnits, SysusersAndTmpfilesApply) {
  GPTQD_REQUIRE_TOOL(sysusers, "systemd-sysusers");
  GPTQD_REQUIRE_TOOL(tmpfiles, "systemd-tmpfiles");
  TempDir root;
  fs::create_directories(root / "etc");
  auto r = run_command({sysusers, "--root=" + root.path().string(), (systemd_dir() / "gptqd.sysusers.conf").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  const std::string passwd = test::read_file(root / "etc" / "passwd");
  const std::string group = test::read_file(root / "etc" / "group");
  EXPECT_NE(passwd.find("gptqd:x:"), std::string::npos) << passwd;
  EXPECT_NE(passwd.find(":/var/lib/gptqd:"), std::string::npos) << passwd;
  EXPECT_TRUE(std::regex_search(group, std::regex("(^|\n)gptq:x:[0-9]+:gptqd(\n|$)"))) << group;
  EXPECT_TRUE(std::regex_search(group, std::regex("(^|\n)gptq-admin:x:[0-9]+:"))) << group;

  // Not root: chown to gptqd would fail, so the names become the caller's own (sysusers above
  // already showed that gptqd and gptq exist).
  std::string rules = test::read_file(systemd_dir() / "gptqd.tmpfiles.conf");
  if (::geteuid() != 0) {
    rules = replace_all(rules, "gptqd gptq", std::to_string(::geteuid()) + " " + std::to_string(::getegid()));
  }
  test::write_file(root / "gptqd.conf", rules);
  r = run_command({tmpfiles, "--create", "--root=" + root.path().string(), (root / "gptqd.conf").string()});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "");
  const auto st = fs::status(root / "run" / "gptqd");
  ASSERT_TRUE(fs::is_directory(st));
  EXPECT_EQ(st.permissions() & fs::perms::all,
            fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
}

TEST(SystemdUnits, DbusPolicyParses) {
  GPTQD_REQUIRE_TOOL(dbus_daemon, "dbus-daemon");
  GPTQD_REQUIRE_TOOL(timeout, "timeout");
  const std::string policy = test::read_file(systemd_dir() / "org.gptqd.Daemon1.conf");
  EXPECT_NE(policy.find(R"(<policy user="gptqd">)"), std::string::npos);
  EXPECT_NE(policy.find(R"(<allow own="org.gptqd.Daemon1"/>)"), std::string::npos);
  // Only the gptqd user may own the name.
  EXPECT_EQ(std::regex_search(policy, std::regex(R"(<policy context="default">[\s\S]*own=)")), false);

  // A private bus that includes the policy: dbus-daemon refuses to start on an unknown element
  // or attribute, and keeps running (until `timeout` stops it) when the file is good. The user
  // name becomes the caller's so that the bus has no unknown-user warning to print.
  TempDir dir;
  const char* user = std::getenv("USER");
  std::string own = test::read_file(systemd_dir() / "org.gptqd.Daemon1.conf");
  if (::geteuid() == 0) own = replace_all(own, R"(user="gptqd")", R"(user="root")");
  else if (user && *user) own = replace_all(own, R"(user="gptqd")", std::string("user=\"") + user + "\"");
  test::write_file(dir / "org.gptqd.Daemon1.conf", own);
  test::write_file(dir / "bus.conf", R"(<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <listen>unix:path=)" + (dir / "bus").string() + R"(</listen>
  <auth>EXTERNAL</auth>
  <policy context="default"><allow user="*"/></policy>
  <include>)" + (dir / "org.gptqd.Daemon1.conf").string() + R"(</include>
</busconfig>
)");
  const auto r = run_command({timeout, "2", dbus_daemon, "--config-file=" + (dir / "bus.conf").string(), "--nofork",
                              "--nopidfile", "--print-address=1"});
  EXPECT_EQ(r.exit_code, 124) << "dbus-daemon did not accept the policy:\n" << r.output;
  EXPECT_NE(r.output.find("unix:path="), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find("Failed to start message bus"), std::string::npos) << r.output;

  if (const std::string xmllint = find_tool("xmllint"); !xmllint.empty()) {
    const auto x = run_command({xmllint, "--noout", (systemd_dir() / "org.gptqd.Daemon1.conf").string()});
    EXPECT_EQ(x.exit_code, 0) << x.output;
  }
}

}  // namespace
}  // namespace gptqd
