// SPDX-License-Identifier: Apache-2.0
// `cmake --install` into a DESTDIR: binaries, units whose ExecStart names the installed gptqd,
// sysusers.d, tmpfiles.d, the D-Bus policy and a default config the daemon accepts (unit).
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/daemon_config.h"
#include "engine/error.h"
#include "tests/support/test_env.h"

namespace gptqd {
namespace {
namespace fs = std::filesystem;
using test::read_file;
using test::run_command;
using test::TempDir;

// Not the configured prefix: the units must follow the prefix given at install time.
constexpr const char* kPrefix = "/opt/gptqd-install-test";

test::CommandResult install(const fs::path& destdir) {
  return run_command({"env", "DESTDIR=" + destdir.string(), GPTQD_CMAKE_COMMAND, "--install",
                      test::binary_dir().string(), "--prefix", kPrefix});
}

class InstallTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dest_ = new TempDir();
    log_ = new test::CommandResult(install(dest_->path()));
  }
  static void TearDownTestSuite() {
    delete log_;
    delete dest_;
  }
  void SetUp() override { ASSERT_EQ(log_->exit_code, 0) << log_->output; }

  // The file the install log names ("-- Installing: DESTDIR/PATH") whose PATH ends with
  // `suffix`, as installed (without DESTDIR); "" when there is none.
  static std::string installed(const std::string& suffix) {
    std::istringstream in(log_->output);
    std::string line;
    const std::string marker = "-- Installing: " + dest_->path().string();
    while (std::getline(in, line)) {
      if (line.rfind(marker, 0) == 0 && line.ends_with(suffix)) return line.substr(marker.size());
    }
    return "";
  }
  static fs::path staged(const std::string& path) { return dest_->path() / fs::path(path).relative_path(); }

  static TempDir* dest_;
  static test::CommandResult* log_;
};
TempDir* InstallTest::dest_ = nullptr;
test::CommandResult* InstallTest::log_ = nullptr;

TEST_F(InstallTest, BinariesGoUnderThePrefix) {
  for (const char* name : {"/gptqd", "/gptqctl"}) {
    const std::string p = installed(name);
    ASSERT_FALSE(p.empty()) << name << " was not installed:\n" << log_->output;
    EXPECT_EQ(p.rfind(std::string(kPrefix) + "/", 0), 0u) << p;
    EXPECT_EQ(::access(staged(p).c_str(), X_OK), 0) << p;
  }
}

TEST_F(InstallTest, ExecStartNamesTheInstalledBinaryAndConfig) {
  const std::string service = installed("/systemd/system/gptqd.service");
  ASSERT_FALSE(service.empty()) << log_->output;
  EXPECT_FALSE(installed("/systemd/system/gptqd.socket").empty()) << log_->output;
  const std::string text = read_file(staged(service));
  const std::string exec = "\nExecStart=" + installed("/gptqd") + " --foreground --config " + installed("/gptqd/gptqd.json") + "\n";
  EXPECT_NE(text.find(exec), std::string::npos) << "no" << exec << "in\n" << text;
  EXPECT_EQ(text.find("@GPTQD_"), std::string::npos) << "a placeholder was left:\n" << text;
}

TEST_F(InstallTest, SysusersTmpfilesAndDbusPolicy) {
  const fs::path src = test::source_dir() / "systemd";
  const std::pair<const char*, const char*> files[] = {
      {"/sysusers.d/gptqd.conf", "gptqd.sysusers.conf"},
      {"/tmpfiles.d/gptqd.conf", "gptqd.tmpfiles.conf"},
      {"/dbus-1/system.d/org.gptqd.Daemon1.conf", "org.gptqd.Daemon1.conf"},
      {"/systemd/system/gptqd.socket", "gptqd.socket"},
  };
  for (const auto& [suffix, source] : files) {
    const std::string p = installed(suffix);
    ASSERT_FALSE(p.empty()) << suffix << " was not installed:\n" << log_->output;
    EXPECT_EQ(read_file(staged(p)), read_file(src / source)) << p;
  }
  for (const auto& e : fs::recursive_directory_iterator(dest_->path())) {
    if (!e.is_regular_file()) continue;
    const auto perms = e.status().permissions();
    EXPECT_EQ(perms & (fs::perms::group_write | fs::perms::others_write), fs::perms::none) << e.path();
  }
}

TEST_F(InstallTest, TheDefaultConfigIsAcceptedAndSurvivesAReinstall) {
  const std::string config = installed("/gptqd/gptqd.json");
  ASSERT_FALSE(config.empty()) << log_->output;
  daemon::DaemonConfig cfg;
  EXPECT_NO_THROW(cfg.apply_file(staged(config)));

  test::write_file(staged(config), "{\"max_queue\": 3}\n");
  const auto again = install(dest_->path());
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_NE(again.output.find("Keeping: " + staged(config).string()), std::string::npos) << again.output;
  EXPECT_EQ(read_file(staged(config)), "{\"max_queue\": 3}\n");
}

TEST_F(InstallTest, TheInstalledUnitsVerify) {
  std::string analyze;
  for (const char* p : {"/usr/bin/systemd-analyze", "/bin/systemd-analyze"}) {
    if (::access(p, X_OK) == 0) analyze = p;
  }
  if (analyze.empty()) {
    if (test::under_ci()) FAIL() << "systemd-analyze is not installed (CI=true)";
    GTEST_SKIP() << "systemd-analyze is not installed";
  }
  // verify wants ExecStart to exist on this machine: point it into DESTDIR.
  TempDir dir;
  std::string service = read_file(staged(installed("/systemd/system/gptqd.service")));
  const std::string bin = installed("/gptqd");
  service.replace(service.find("ExecStart=" + bin) + 10, bin.size(), staged(bin).string());
  test::write_file(dir / "gptqd.service", service);
  fs::copy_file(staged(installed("/systemd/system/gptqd.socket")), dir / "gptqd.socket");
  const auto r = run_command({analyze, "verify", "--man=no", (dir / "gptqd.socket").string(),
                              (dir / "gptqd.service").string()});
  EXPECT_EQ(r.exit_code, 0) << r.output;
  EXPECT_EQ(r.output, "");
}

}  // namespace
}  // namespace gptqd
