// SPDX-License-Identifier: Apache-2.0
// The local Hub fixture (test support).
#include "tests/support/local_hub.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tests/support/test_env.h"

extern char** environ;

namespace gptqd::test {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::string http(const std::string& url, bool post) {
  std::string body;
  CURL* c = curl_easy_init();
  if (!c) throw std::runtime_error("curl_easy_init failed");
  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  if (post) curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, +[](char* d, size_t s, size_t n, void* u) {
    static_cast<std::string*>(u)->append(d, s * n);
    return s * n;
  });
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &body);
  const CURLcode rc = curl_easy_perform(c);
  curl_easy_cleanup(c);
  if (rc != CURLE_OK) throw std::runtime_error("local Hub request " + url + " failed: " + curl_easy_strerror(rc));
  return body;
}

fs::path repo_dir(const fs::path& root, const std::string& repo, bool dataset) {
  return root / (dataset ? "datasets" : "models") / repo;
}

}  // namespace

LocalHub::LocalHub(fs::path root) : root_(std::move(root)) {
  fs::create_directories(root_);
  const fs::path port_file = root_ / "port";
  const std::string py = python().string(), script = (source_dir() / "tests/support/hub_server.py").string();
  const std::string root_s = root_.string(), port_s = port_file.string();
  std::vector<char*> argv{const_cast<char*>(py.c_str()), const_cast<char*>(script.c_str()),
                          const_cast<char*>("--root"), const_cast<char*>(root_s.c_str()),
                          const_cast<char*>("--port-file"), const_cast<char*>(port_s.c_str()), nullptr};
  if (posix_spawn(&pid_, py.c_str(), nullptr, nullptr, argv.data(), environ) != 0) pid_ = -1;
  for (int i = 0; i < 300 && pid_ > 0 && !fs::exists(port_file); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  if (fs::exists(port_file)) url_ = "http://127.0.0.1:" + read_file(port_file);
  while (!url_.empty() && (url_.back() == '\n' || url_.back() == ' ')) url_.pop_back();
}

LocalHub::~LocalHub() {
  if (pid_ > 0) {
    ::kill(pid_, SIGTERM);
    ::waitpid(pid_, nullptr, 0);
  }
}

fs::path LocalHub::commit_dir(const std::string& repo, const std::string& sha, bool dataset) const {
  return repo_dir(root_, repo, dataset) / "commits" / sha;
}

void LocalHub::set_refs(const std::string& repo, const std::map<std::string, std::string>& branches,
                        const std::map<std::string, std::string>& tags, bool dataset) {
  const fs::path dir = repo_dir(root_, repo, dataset);
  fs::create_directories(dir);
  write_file(dir / "refs.json", json{{"branches", branches}, {"tags", tags}}.dump());
}

void LocalHub::set_repo_json(const std::string& repo, const json& j, bool dataset) {
  const fs::path dir = repo_dir(root_, repo, dataset);
  fs::create_directories(dir);
  write_file(dir / "repo.json", j.dump());
}

void LocalHub::faults(const json& list) { write_file(root_ / "faults.json", list.dump()); }

json LocalHub::stats() const { return json::parse(http(url_ + "/__stats", false)); }

void LocalHub::reset() { http(url_ + "/__reset", true); }

uint64_t LocalHub::bytes_served(const std::string& needle) const {
  uint64_t n = 0;
  const json s = stats();
  for (const auto& [path, bytes] : s.at("bytes_served").items()) {
    if (path.find(needle) != std::string::npos) n += bytes.get<uint64_t>();
  }
  return n;
}

std::string file_sha256(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + p.string());
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, md, &len);
  EVP_MD_CTX_free(ctx);
  static const char* kHex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < len; ++i) out += kHex[md[i] >> 4], out += kHex[md[i] & 15];
  return out;
}

}  // namespace gptqd::test
