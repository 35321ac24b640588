// SPDX-License-Identifier: Apache-2.0
// Where tests find their assets, tools and scratch space (test support).
#pragma once

#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

namespace gptqd::test {

std::filesystem::path source_dir();        // the repository root
std::filesystem::path binary_dir();        // the CMake build root (gptqd, gptqctl live in daemon/, ctl/)
std::filesystem::path shared_data_dir();   // $GPTQD_SHARED_DATA or <repo>/../shared/data
std::filesystem::path test_model_path();   // the SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch-test-model.sh)
std::filesystem::path python();            // $GPTQD_PYTHON or <repo>/.venv/bin/python
bool under_ci();                           // CI=true: a missing asset fails instead of skipping

// A fresh directory under $TMPDIR, removed (recursively) when the object dies.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& rel) const { return path_ / rel; }

 private:
  std::filesystem::path path_;
};

struct CommandResult {
  int exit_code = -1;        // exit status, or 128 + signal
  std::string output;        // stdout and stderr interleaved
};
// Runs argv[0] with arguments (no shell), capturing output; `env` entries are "K=V" added to
// the current environment; stdin is `stdin_text` when given, else /dev/null.
CommandResult run_command(const std::vector<std::string>& argv, const std::vector<std::string>& env = {},
                          const std::string* stdin_text = nullptr);

std::string read_file(const std::filesystem::path& p);
void write_file(const std::filesystem::path& p, const std::string& content);

}  // namespace gptqd::test

// Skips (or, under CI, fails) the current test when an asset is missing.
#define GPTQD_REQUIRE_FILE(path)                                                                 \
  do {                                                                                           \
    if (!std::filesystem::exists(path)) {                                                        \
      if (::gptqd::test::under_ci()) {                                                           \
        FAIL() << "missing test asset " << (path) << " (under CI a missing asset is a failure)"; \
      } else {                                                                                   \
        GTEST_SKIP() << "missing test asset " << (path);                                         \
      }                                                                                          \
    }                                                                                            \
  } while (0)
