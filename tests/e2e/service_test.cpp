// SPDX-License-Identifier: Apache-2.0
// gptqd under a service manager, with the real tools this machine has: a socket passed the
// systemd way (systemd-socket-activate), sd_notify to a test NOTIFY_SOCKET (READY only once the
// socket accepts, STATUS, WATCHDOG pings at the configured interval, STOPPING on SIGTERM),
// journal priority prefixes, and authorization by the caller's uid and groups with real accounts
// (member, primary-group member, admin, outsider) on a socket made world-writable by mistake (e2e).
#include <gtest/gtest.h>

#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <filesystem>
#include <random>
#include <thread>

#include "tests/support/daemon_process.h"
#include "tests/support/test_env.h"
#include "tests/support/tiny_model.h"

namespace gptqd {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::DaemonProcess;
using Clock = std::chrono::steady_clock;

// A NOTIFY_SOCKET: an AF_UNIX datagram socket that collects what the daemon sends.
class NotifyListener {
 public:
  explicit NotifyListener(const fs::path& path) : path_(path) {
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~NotifyListener() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool ok() const { return fd_ >= 0; }
  // The next datagram, or "" after `timeout`.
  std::string next(std::chrono::milliseconds timeout) {
    timeval tv{static_cast<time_t>(timeout.count() / 1000), static_cast<suseconds_t>(timeout.count() % 1000 * 1000)};
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string();
  }

 private:
  fs::path path_;
  int fd_ = -1;
};

class ServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_ / "d");
    daemon_ = std::make_unique<DaemonProcess>(dir_ / "d");
  }
  test::TempDir dir_;
  std::unique_ptr<DaemonProcess> daemon_;
};

TEST_F(ServiceTest, TakesTheSocketSystemdPassesAndLeavesItsFileAlone) {
  if (!fs::exists("/usr/bin/systemd-socket-activate")) {
    if (test::under_ci()) FAIL() << "systemd-socket-activate is missing (package systemd)";
    GTEST_SKIP() << "no systemd-socket-activate";
  }
  daemon_->set_wrapper({"/usr/bin/systemd-socket-activate", "-l", daemon_->socket().string()});
  ASSERT_TRUE(daemon_->start()) << daemon_->log();
  auto health = test::http_request(daemon_->socket(), "GET", "/api/health");
  EXPECT_EQ(health.status, 200) << health.body;
  EXPECT_NE(daemon_->log().find("(from systemd)"), std::string::npos) << daemon_->log();
  EXPECT_EQ(daemon_->stop(), 0) << daemon_->log();
  EXPECT_TRUE(fs::exists(daemon_->socket())) << "systemd owns the socket file; the daemon must not remove it";
}

TEST_F(ServiceTest, BindsItsOwnSocketWithoutSystemd) {
  ASSERT_TRUE(daemon_->start()) << daemon_->log();
  EXPECT_EQ(daemon_->log().find("(from systemd)"), std::string::npos);
  EXPECT_EQ(daemon_->stop(), 0);
  EXPECT_FALSE(fs::exists(daemon_->socket())) << "its own socket file goes with it";
}

TEST_F(ServiceTest, NotifiesReadyStatusWatchdogAndStopping) {
  NotifyListener notify(dir_ / "notify.sock");
  ASSERT_TRUE(notify.ok());
  ASSERT_TRUE(daemon_->start({"NOTIFY_SOCKET=" + (dir_ / "notify.sock").string(), "WATCHDOG_USEC=400000"}))
      << daemon_->log();
  // READY=1 comes once the socket accepts (start() above returned when it did; READY must be
  // among the first messages and the socket must accept right when it arrives).
  std::string ready;
  for (int i = 0; i < 20 && ready.find("READY=1") == std::string::npos; ++i) ready = notify.next(std::chrono::seconds(5));
  ASSERT_NE(ready.find("READY=1"), std::string::npos) << ready;
  EXPECT_NE(ready.find("STATUS=serving: 0 model(s) loaded"), std::string::npos) << ready;
  const int fd = test::connect_unix(daemon_->socket());
  EXPECT_GE(fd, 0);
  if (fd >= 0) ::close(fd);

  // Pings every 200 ms (half of WatchdogSec), from the loop that serves requests.
  int pings = 0;
  auto last = Clock::now();
  std::chrono::milliseconds max_gap{0};
  const auto until = Clock::now() + std::chrono::seconds(2);
  while (Clock::now() < until) {
    std::string m = notify.next(std::chrono::milliseconds(1000));
    if (m.find("WATCHDOG=1") == std::string::npos) continue;
    const auto now = Clock::now();
    if (pings > 0) max_gap = std::max(max_gap, std::chrono::duration_cast<std::chrono::milliseconds>(now - last));
    last = now;
    ++pings;
  }
  // 10 expected; the margins absorb a loaded CI machine (2 cores shared by ctest -j2).
  EXPECT_GE(pings, 5) << "2 s at one ping per 200 ms";
  EXPECT_LT(max_gap.count(), 800) << "pings stopped for several intervals";

  // STATUS= follows what the daemon serves: a model loaded by a request shows up.
  const fs::path model = dir_ / "tiny.gguf";
  test::write_tiny_gguf(model);
  ASSERT_EQ(daemon_->ctl({"pull", model.string(), "--name", "tiny"}).exit_code, 0);
  auto gen = test::http_request(daemon_->socket(), "POST", "/api/generate",
                                json{{"model", "tiny"}, {"prompt", "hi"}, {"stream", false},
                                     {"options", {{"num_ctx", 64}, {"num_predict", 2}}}}.dump());
  EXPECT_EQ(gen.status, 200) << gen.body;
  bool loaded = false;
  for (int i = 0; i < 100 && !loaded; ++i) {
    loaded = notify.next(std::chrono::milliseconds(100)).find("STATUS=serving: 1 model(s) loaded") != std::string::npos;
  }
  EXPECT_TRUE(loaded) << "no STATUS= update after a model loaded";

  ASSERT_EQ(::kill(daemon_->pid(), SIGTERM), 0);
  std::string stopping;
  for (int i = 0; i < 50 && stopping.find("STOPPING=1") == std::string::npos; ++i) stopping = notify.next(std::chrono::seconds(1));
  EXPECT_NE(stopping.find("STOPPING=1"), std::string::npos) << stopping;
  EXPECT_EQ(daemon_->stop(), 0);
}

TEST_F(ServiceTest, JournalLinesCarryTheirPriority) {
  const fs::path log = dir_ / "d" / "gptqd.log";
  test::write_file(log, "");
  struct stat st {};
  ASSERT_EQ(::stat(log.c_str(), &st), 0);
  const std::string stream = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  ASSERT_TRUE(daemon_->start({"JOURNAL_STREAM=" + stream})) << daemon_->log();
  daemon_->stop();
  const std::string text = daemon_->log();
  EXPECT_NE(text.find("<6>gptqd "), std::string::npos) << text;
  size_t lines = 0;
  for (size_t pos = 0; pos < text.size();) {
    const size_t nl = text.find('\n', pos);
    const std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl - pos);
    EXPECT_TRUE(line.size() > 3 && line[0] == '<' && line[1] >= '0' && line[1] <= '7' && line[2] == '>') << line;
    ++lines;
    pos = nl == std::string::npos ? text.size() : nl + 1;
  }
  EXPECT_GE(lines, 3u);
  EXPECT_EQ(text.find(" info: "), std::string::npos) << "no timestamps or level words for the journal\n" << text;

  // A JOURNAL_STREAM that is not our stderr (inherited by a child) keeps plain lines.
  test::write_file(log, "");
  ASSERT_TRUE(daemon_->start({"JOURNAL_STREAM=1:2"})) << daemon_->log();
  daemon_->stop();
  EXPECT_NE(daemon_->log().find(" info: gptqd "), std::string::npos) << daemon_->log();
}

// A device that fails for good (here injected where a sticky CUDA error would surface) fails the
// request in flight, makes /api/health and STATUS= say unhealthy, and ends the process with
// status 1 so that systemd (Restart=on-failure) starts a fresh one.
TEST_F(ServiceTest, ABrokenDeviceEndsTheProcessWithAFailure) {
  const fs::path model = dir_ / "tiny.gguf";
  test::write_tiny_gguf(model);
  NotifyListener notify(dir_ / "notify.sock");
  ASSERT_TRUE(notify.ok());
  ASSERT_TRUE(daemon_->start({"NOTIFY_SOCKET=" + (dir_ / "notify.sock").string(), "GPTQD_FAULT_DEVICE=device.step"}))
      << daemon_->log();
  auto r = daemon_->ctl({"pull", model.string(), "--name", "tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto gen = test::http_request(daemon_->socket(), "POST", "/api/generate",
                                json{{"model", "tiny"}, {"prompt", "hi"}, {"stream", false}, {"options", {{"num_ctx", 64}}}}.dump());
  EXPECT_EQ(gen.status, 500) << gen.body;
  EXPECT_NE(gen.body.find("cannot recover"), std::string::npos) << gen.body;
  EXPECT_EQ(daemon_->wait_exit(std::chrono::seconds(20)), 1) << daemon_->log();
  bool told = false;
  for (int i = 0; i < 50 && !told; ++i) told = notify.next(std::chrono::milliseconds(200)).find("STATUS=unhealthy") != std::string::npos;
  EXPECT_TRUE(told);
  EXPECT_NE(daemon_->log().find("unhealthy"), std::string::npos) << daemon_->log();
}

// B7: a device step that never returns (a wedged driver) is caught by the step clock, not only a
// step that fails: unhealthy, and exit 1 without waiting for the stuck thread.
TEST_F(ServiceTest, AStuckDeviceStepEndsTheProcessWithAFailure) {
  const fs::path model = dir_ / "tiny.gguf";
  test::write_tiny_gguf(model);
  NotifyListener notify(dir_ / "notify.sock");
  ASSERT_TRUE(notify.ok());
  ASSERT_TRUE(daemon_->start({"NOTIFY_SOCKET=" + (dir_ / "notify.sock").string(), "GPTQD_FAULT_DEVICE_HANG=device.step"},
                             {"--device-step-timeout-s", "1"}))
      << daemon_->log();
  auto r = daemon_->ctl({"pull", model.string(), "--name", "tiny"});
  ASSERT_EQ(r.exit_code, 0) << r.output;
  auto gen = std::async(std::launch::async, [this] {
    return test::http_request(daemon_->socket(), "POST", "/api/generate",
                              json{{"model", "tiny"}, {"prompt", "hi"}, {"stream", false}, {"options", {{"num_ctx", 64}}}}.dump());
  });
  // 1 s of step, a watchdog tick (<= 5 s), the 10 s grace for the hung request's connection.
  EXPECT_EQ(daemon_->wait_exit(std::chrono::seconds(60)), 1) << daemon_->log();
  gen.wait();
  const std::string log = daemon_->log();
  EXPECT_NE(log.find("the device worker has been in one step for"), std::string::npos) << log;
  EXPECT_NE(log.find("without waiting for the stuck device worker"), std::string::npos) << log;
  bool told = false;
  for (int i = 0; i < 50 && !told; ++i) told = notify.next(std::chrono::milliseconds(200)).find("STATUS=unhealthy") != std::string::npos;
  EXPECT_TRUE(told);
}

// ---- authorization with real accounts --------------------------------------------------------

// Runs `cmd` and fails the test when it does not exit 0.
bool sh(const std::vector<std::string>& argv) {
  auto r = test::run_command(argv);
  if (r.exit_code != 0) ADD_FAILURE() << argv[0] << " " << (argv.size() > 1 ? argv[1] : "") << ": " << r.output;
  return r.exit_code == 0;
}

class AuthorizationTest : public ServiceTest {
 protected:
  void SetUp() override {
    ServiceTest::SetUp();
    if (::geteuid() != 0 || !fs::exists("/usr/sbin/useradd")) {
      GTEST_SKIP() << "creating accounts needs root and useradd; authorization with real accounts not tested here";
    }
    std::mt19937 rng(static_cast<uint32_t>(::getpid()) ^ static_cast<uint32_t>(time(nullptr)));
    suffix_ = std::to_string(rng() % 100000);
    use_group_ = "gqtu" + suffix_;
    admin_group_ = "gqta" + suffix_;
    ASSERT_TRUE(sh({"/usr/sbin/groupadd", use_group_}));
    ASSERT_TRUE(sh({"/usr/sbin/groupadd", admin_group_}));
    created_groups_ = true;
    add_user("gqtm" + suffix_, "users", {use_group_});  // supplementary member
    add_user("gqtp" + suffix_, use_group_, {});         // primary-group member
    add_user("gqtx" + suffix_, "users", {admin_group_});  // admin
    add_user("gqto" + suffix_, "users", {});            // outsider
    // Everyone may reach the socket (a world-writable socket made by mistake); the daemon decides.
    ::chmod(dir_.path().c_str(), 0755);
    ::chmod((dir_ / "d").c_str(), 0755);
    ASSERT_TRUE(daemon_->start({}, {"--socket-mode", "0666", "--user-group", use_group_, "--admin-group", admin_group_}))
        << daemon_->log();
  }
  void TearDown() override {
    if (daemon_) daemon_->stop();
    for (const auto& u : users_) test::run_command({"/usr/sbin/userdel", u});
    if (created_groups_) {
      test::run_command({"/usr/sbin/groupdel", use_group_});
      test::run_command({"/usr/sbin/groupdel", admin_group_});
    }
  }
  void add_user(const std::string& name, const std::string& group, const std::vector<std::string>& extra) {
    std::vector<std::string> argv = {"/usr/sbin/useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-g", group};
    if (!extra.empty()) argv.insert(argv.end(), {"-G", extra[0]});
    argv.push_back(name);
    if (sh(argv)) users_.push_back(name);
  }
  // One request as `user` (its uid and all its groups, as a login would set them).
  test::HttpReply as(const std::string& user, const std::string& method, const std::string& target,
                     const std::string& body = {}) {
    struct passwd* pw = ::getpwnam(user.c_str());
    if (!pw) {
      ADD_FAILURE() << "no user " << user;
      return {};
    }
    const uid_t uid = pw->pw_uid;
    const gid_t gid = pw->pw_gid;
    int pipefd[2];
    if (::pipe(pipefd) != 0) return {};
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(pipefd[0]);
      if (::initgroups(user.c_str(), gid) != 0 || ::setgid(gid) != 0 || ::setuid(uid) != 0) ::_exit(3);
      test::HttpReply r = test::http_request(daemon_->socket(), method, target, body);
      const std::string out = std::to_string(r.status) + "\n" + r.body;
      [[maybe_unused]] ssize_t n = ::write(pipefd[1], out.data(), out.size());
      ::_exit(0);
    }
    ::close(pipefd[1]);
    std::string out;
    char buf[4096];
    ssize_t n;
    while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    ::close(pipefd[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    test::HttpReply r;
    const auto nl = out.find('\n');
    if (nl != std::string::npos) {
      r.status = std::stoi(out.substr(0, nl));
      r.body = out.substr(nl + 1);
    }
    return r;
  }

  std::string suffix_, use_group_, admin_group_;
  std::vector<std::string> users_;
  bool created_groups_ = false;
};

TEST_F(AuthorizationTest, MembersUseAdminsChangeOutsidersAreRefusedWhateverTheSocketMode) {
  const std::string member = "gqtm" + suffix_, primary = "gqtp" + suffix_, admin = "gqtx" + suffix_,
                    outsider = "gqto" + suffix_;
  const std::string bad_pull = json{{"model", "/nonexistent/x.gguf"}, {"stream", false}}.dump();
  const std::string bad_delete = json{{"model", "nothing:here"}}.dump();

  EXPECT_EQ(as(member, "GET", "/api/tags").status, 200);
  EXPECT_EQ(as(primary, "GET", "/api/tags").status, 200);
  EXPECT_EQ(as(admin, "GET", "/api/tags").status, 200);
  auto refused = as(outsider, "GET", "/api/tags");
  EXPECT_EQ(refused.status, 403) << refused.body;
  EXPECT_NE(refused.body.find(use_group_), std::string::npos) << refused.body;
  EXPECT_NE(refused.body.find(outsider), std::string::npos) << "names the caller: " << refused.body;
  EXPECT_EQ(as(outsider, "GET", "/api/health").status, 403);

  // Changing the registry: admins only (their bad request gets past the check to a 400 / 404).
  auto member_pull = as(member, "POST", "/api/pull", bad_pull);
  EXPECT_EQ(member_pull.status, 403) << member_pull.body;
  EXPECT_NE(member_pull.body.find(admin_group_), std::string::npos) << member_pull.body;
  EXPECT_EQ(as(primary, "DELETE", "/api/delete", bad_delete).status, 403);
  EXPECT_EQ(as(admin, "POST", "/api/pull", bad_pull).status, 400);
  EXPECT_EQ(as(admin, "DELETE", "/api/delete", bad_delete).status, 404);
  EXPECT_EQ(as(outsider, "POST", "/api/pull", bad_pull).status, 403);

  daemon_->stop();
  const std::string log = daemon_->log();
  EXPECT_NE(log.find("refused GET /api/tags from uid " + std::to_string(::getpwnam(outsider.c_str())->pw_uid)), std::string::npos)
      << log;
}

}  // namespace
}  // namespace gptqd
