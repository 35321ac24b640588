// SPDX-License-Identifier: Apache-2.0
// Test asset locations, temp dirs and subprocesses (test support).
#include "tests/support/test_env.h"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <random>
#include <sstream>
#include <stdexcept>

extern char** environ;

namespace gptqd::test {
namespace {
std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return (v && *v) ? std::string(v) : fallback;
}
}  // namespace

std::filesystem::path source_dir() { return GPTQD_SOURCE_DIR; }
std::filesystem::path binary_dir() { return GPTQD_BINARY_DIR; }

std::filesystem::path shared_data_dir() {
  return env_or("GPTQD_SHARED_DATA", (source_dir().parent_path() / "shared" / "data").string());
}

std::filesystem::path test_model_path() {
  const char* explicit_path = std::getenv("GPTQD_TEST_MODEL");
  if (explicit_path && *explicit_path) return explicit_path;
  std::string home = env_or("HOME", "/root");
  std::filesystem::path cache = env_or("GPTQD_TEST_CACHE", home + "/.cache/gptqd-test");
  return cache / "SmolLM2-135M-Instruct.Q4_1.gguf";
}

std::filesystem::path python() {
  return env_or("GPTQD_PYTHON", (source_dir() / ".venv" / "bin" / "python").string());
}

bool under_ci() {
  const char* ci = std::getenv("CI");
  return ci && (std::string(ci) == "true" || std::string(ci) == "1");
}

TempDir::TempDir() {
  std::filesystem::path base = env_or("TMPDIR", "/tmp");
  std::string tmpl = (base / "gptqd-test-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  // Make everything writable first so read-only fixtures can be removed.
  std::filesystem::permissions(path_, std::filesystem::perms::owner_all, std::filesystem::perm_options::add, ec);
  std::filesystem::remove_all(path_, ec);
}

CommandResult run_command(const std::vector<std::string>& argv, const std::vector<std::string>& env,
                          const std::string* stdin_text) {
  int pipefd[2];
  if (::pipe2(pipefd, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  std::string stdin_path = "/dev/null";
  std::unique_ptr<TempDir> stdin_dir;
  if (stdin_text) {
    stdin_dir = std::make_unique<TempDir>();
    stdin_path = (stdin_dir->path() / "stdin").string();
    write_file(stdin_path, *stdin_text);
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipefd[1], 2);
  posix_spawn_file_actions_addopen(&actions, 0, stdin_path.c_str(), O_RDONLY, 0);
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) envs.emplace_back(*e);
  for (const auto& kv : env) envs.push_back(kv);
  std::vector<char*> cargv, cenv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (const auto& e : envs) cenv.push_back(const_cast<char*>(e.c_str()));
  cenv.push_back(nullptr);
  pid_t pid = 0;
  int rc = ::posix_spawnp(&pid, cargv[0], &actions, nullptr, cargv.data(), cenv.data());
  posix_spawn_file_actions_destroy(&actions);
  ::close(pipefd[1]);
  CommandResult result;
  if (rc != 0) {
    ::close(pipefd[0]);
    result.output = "spawn failed for " + argv[0];
    return result;
  }
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) result.output.append(buf, static_cast<size_t>(n));
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return result;
}

std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_file(const std::filesystem::path& p, const std::string& content) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  if (!out) throw std::runtime_error("cannot write " + p.string());
  out << content;
}

}  // namespace gptqd::test
