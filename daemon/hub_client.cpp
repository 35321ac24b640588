// SPDX-License-Identifier: Apache-2.0
// The Hugging Face Hub client over libcurl (daemon layer). See hub_client.h.
#include "daemon/hub_client.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <mutex>
#include <thread>

#include "engine/error.h"
#include "engine/json_strict.h"

namespace gptqd::daemon {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

std::string trim(std::string s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.pop_back();
  size_t b = 0;
  while (b < s.size() && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  return s.substr(b);
}

void global_init() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct CurlDeleter {
  void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
struct SlistDeleter {
  void operator()(curl_slist* l) const { curl_slist_free_all(l); }
};
using CurlPtr = std::unique_ptr<CURL, CurlDeleter>;
using SlistPtr = std::unique_ptr<curl_slist, SlistDeleter>;

// Percent-encodes one path segment ("org", "name", a revision, a file path segment).
std::string escape(CURL* c, const std::string& s) {
  char* e = curl_easy_escape(c, s.c_str(), static_cast<int>(s.size()));
  if (!e) fail(ErrorCode::internal, "curl_easy_escape failed");
  std::string out(e);
  curl_free(e);
  return out;
}

std::string escape_path(CURL* c, const std::string& path) {
  std::string out;
  size_t start = 0;
  for (;;) {
    const size_t slash = path.find('/', start);
    out += escape(c, path.substr(start, slash == std::string::npos ? std::string::npos : slash - start));
    if (slash == std::string::npos) return out;
    out += '/';
    start = slash + 1;
  }
}

const char* kind_path(RepoKind k) { return k == RepoKind::dataset ? "datasets" : "models"; }

// One HTTP exchange's outcome as far as the callers need it.
struct Reply {
  long status = 0;
  std::string body;         // API replies only (bounded)
  std::string error_code;   // X-Error-Code
  std::string hub_message;  // the JSON "error" of an error reply, if any
};

size_t header_cb(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<Reply*>(user);
  std::string line(data, size * n);
  const auto colon = line.find(':');
  if (colon != std::string::npos) {
    std::string name = line.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char ch) { return std::tolower(ch); });
    if (name == "x-error-code") r->error_code = trim(line.substr(colon + 1));
  } else if (line.rfind("HTTP/", 0) == 0) {
    r->error_code.clear();  // a new response (after a redirect)
  }
  return size * n;
}

constexpr size_t kMaxApiBody = 64u << 20;

size_t body_cb(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<Reply*>(user);
  if (r->body.size() + size * n > kMaxApiBody) return 0;  // aborts the transfer
  r->body.append(data, size * n);
  return size * n;
}

void common_options(CURL* c, const HubSettings& s, curl_slist* headers) {
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, static_cast<long>(s.connect_timeout_s));
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, static_cast<long>(s.stall_timeout_s));
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_USERAGENT, "gptqd/" GPTQD_VERSION);
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
}

SlistPtr auth_headers(const HubSettings& s) {
  curl_slist* l = nullptr;
  if (!s.token.empty()) l = curl_slist_append(l, ("Authorization: Bearer " + s.token).c_str());
  return SlistPtr(l);
}

// The Hub's error replies carry {"error": "..."}; keep it short and single-line.
std::string hub_message(const std::string& body) {
  try {
    const json j = json::parse(body);
    if (j.is_object() && j.contains("error") && j["error"].is_string()) {
      std::string m = j["error"].get<std::string>();
      std::replace(m.begin(), m.end(), '\n', ' ');
      return m.substr(0, 300);
    }
  } catch (const std::exception&) {
  }
  return {};
}

// Maps an HTTP error status to the error a user can act on.
[[noreturn]] void fail_status(const HubSettings& s, const HubRepoRef& ref, const Reply& r, const std::string& what) {
  const std::string repo = ref.display();
  const std::string detail = r.hub_message.empty() ? std::string() : cat(" (the Hub says: ", r.hub_message, ")");
  if (r.status == 401 || r.status == 403) {
    if (s.token.empty()) {
      fail(ErrorCode::permission_denied, repo, " is gated or private and no token was sent: accept its terms on the ",
           "model page, then set HF_TOKEN (or run `huggingface-cli login`) and pull again", detail);
    }
    fail(ErrorCode::permission_denied, "the token from HF_TOKEN or the token file has no access to ", repo,
         ": request access on the model page or use another token", detail);
  }
  if (r.status == 404) {
    if (r.error_code == "RevisionNotFound") fail(ErrorCode::not_found, ref.repo_id, " has no revision '", ref.revision, "'", detail);
    if (r.error_code == "EntryNotFound") fail(ErrorCode::not_found, repo, ": ", what, " does not exist", detail);
    fail(ErrorCode::not_found, "no ", ref.kind == RepoKind::dataset ? "dataset" : "model", " ", ref.repo_id, " on ",
         s.endpoint, s.token.empty() ? " (a private repo needs HF_TOKEN)" : "", detail);
  }
  fail(ErrorCode::io, repo, ": ", what, " failed with HTTP ", r.status, detail,
       r.status >= 500 ? "; the Hub may be down, try again later" : "");
}

std::string hex(const unsigned char* d, unsigned n) {
  static const char* digits = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out += digits[d[i] >> 4];
    out += digits[d[i] & 15];
  }
  return out;
}

// sha256 and git's blob sha1 ("blob <size>\0" + content) of a file, in one read.
void digest_file(const fs::path& p, uint64_t size, std::string* sha256, std::string* git_sha1) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> a(EVP_MD_CTX_new(), EVP_MD_CTX_free),
      b(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!a || !b || EVP_DigestInit_ex(a.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestInit_ex(b.get(), EVP_sha1(), nullptr) != 1) {
    fail(ErrorCode::internal, "cannot initialise sha256/sha1");
  }
  const std::string header = cat("blob ", size);
  EVP_DigestUpdate(b.get(), header.data(), header.size() + 1);  // with the NUL
  std::ifstream in(p, std::ios::binary);
  if (!in) fail(ErrorCode::io, "cannot read ", p.string());
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto got = static_cast<size_t>(in.gcount());
    if (got == 0) break;
    EVP_DigestUpdate(a.get(), buf.data(), got);
    EVP_DigestUpdate(b.get(), buf.data(), got);
  }
  if (in.bad()) fail(ErrorCode::io, "cannot read ", p.string());
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  EVP_DigestFinal_ex(a.get(), d, &n);
  *sha256 = hex(d, n);
  EVP_DigestFinal_ex(b.get(), d, &n);
  *git_sha1 = hex(d, n);
}

bool is_hex(const std::string& s, size_t len) {
  return s.size() == len && std::all_of(s.begin(), s.end(), [](char ch) { return std::isxdigit(static_cast<unsigned char>(ch)); });
}

// The state of one download attempt, shared with libcurl's callbacks.
struct Transfer {
  std::FILE* out = nullptr;
  CURL* curl = nullptr;
  uint64_t offset = 0;   // bytes in the partial before this attempt
  uint64_t written = 0;  // bytes written by this attempt
  uint64_t total = 0;
  bool write_error = false;  // the partial could not be written (disk full, I/O error)
  bool too_long = false;     // the server sent more bytes than the file has
  bool checked_status = false;
  const HubClient::Progress* progress = nullptr;
  bool cancelled = false;
  Reply reply;
};

size_t file_cb(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t bytes = size * n;
  if (!t->checked_status) {
    t->checked_status = true;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->reply.status);
    if (t->reply.status == 200 && t->offset > 0) {
      // No Range support here: the body is the whole file.
      if (std::fflush(t->out) != 0 || ::ftruncate(fileno(t->out), 0) != 0 || std::fseek(t->out, 0, SEEK_SET) != 0) {
        t->write_error = true;
        return 0;
      }
      t->offset = 0;
    }
  }
  if (t->reply.status != 200 && t->reply.status != 206) {
    if (t->reply.body.size() < 4096) t->reply.body.append(data, std::min<size_t>(bytes, 4096));
    return bytes;
  }
  if (t->offset + t->written + bytes > t->total) {
    t->too_long = true;  // never let a server grow the partial past the file's size
    return 0;
  }
  if (std::fwrite(data, 1, bytes, t->out) != bytes) {
    t->write_error = true;
    return 0;
  }
  t->written += bytes;
  return bytes;
}

int xfer_cb(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  if (t->progress && *t->progress && !(*t->progress)(t->offset + t->written, t->total)) {
    t->cancelled = true;
    return 1;
  }
  return 0;
}

}  // namespace

HubSettings HubSettings::from_environment() {
  HubSettings s;
  if (std::string e = trim(env("HF_ENDPOINT")); !e.empty()) {
    while (!e.empty() && e.back() == '/') e.pop_back();
    if (e.rfind("http://", 0) != 0 && e.rfind("https://", 0) != 0) {
      fail(ErrorCode::invalid_argument, "HF_ENDPOINT must start with http:// or https://, not '", e, "'");
    }
    s.endpoint = e;
  }
  s.token = trim(env("HF_TOKEN"));
  if (s.token.empty()) {
    fs::path file = env("HF_TOKEN_PATH");
    if (file.empty()) {
      fs::path home = env("HF_HOME");
      if (home.empty()) {
        const std::string xdg = env("XDG_CACHE_HOME");
        home = !xdg.empty() ? fs::path(xdg) / "huggingface" : fs::path(env("HOME")) / ".cache" / "huggingface";
      }
      file = home / "token";
    }
    std::ifstream in(file);
    if (in) {
      std::string t((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      s.token = trim(t);
    }
  }
  if (s.token.find_first_of("\r\n") != std::string::npos) {
    fail(ErrorCode::invalid_argument, "the Hugging Face token contains a line break; check HF_TOKEN or the token file");
  }
  return s;
}

HubRepoRef HubRepoRef::parse(std::string_view text) {
  HubRepoRef r;
  std::string t(text);
  if (t.rfind("datasets/", 0) == 0) {
    r.kind = RepoKind::dataset;
    t = t.substr(9);
  } else if (t.rfind("models/", 0) == 0) {
    t = t.substr(7);
  }
  if (const auto at = t.find('@'); at != std::string::npos) {
    r.revision = t.substr(at + 1);
    t = t.substr(0, at);
    if (r.revision.empty()) fail(ErrorCode::invalid_argument, "'", text, "': the revision after '@' is empty");
  }
  const auto slash = t.find('/');
  auto valid = [](const std::string& part) {
    return !part.empty() && part.size() <= 96 && part != "." && part != ".." &&
           std::all_of(part.begin(), part.end(), [](char ch) {
             return std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.';
           });
  };
  if (slash == std::string::npos || !valid(t.substr(0, slash)) || !valid(t.substr(slash + 1))) {
    fail(ErrorCode::invalid_argument, "'", text, "' is not a Hub repo: use ORG/NAME, ORG/NAME@REVISION or datasets/ORG/NAME");
  }
  if (r.revision.size() > 256 || r.revision.find_first_of(" \t\r\n") != std::string::npos || r.revision.find("..") != std::string::npos) {
    fail(ErrorCode::invalid_argument, "'", text, "': '", r.revision, "' is not a valid revision");
  }
  r.repo_id = t;
  return r;
}

std::string HubRepoRef::display() const {
  return cat(kind == RepoKind::dataset ? "datasets/" : "", repo_id, "@", revision);
}

void check_repo_file_name(std::string_view name) {
  auto bad = [&](const char* why) { fail(ErrorCode::invalid_model, "the Hub listed a file name gptqd will not write (", why, "): '", std::string(name.substr(0, 200)), "'"); };
  if (name.empty() || name.size() > 1024) bad("empty or too long");
  if (name.front() == '/') bad("absolute path");
  for (char ch : name) {
    if (static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f) bad("control character");
    if (ch == '\\') bad("backslash");
  }
  size_t start = 0;
  for (;;) {
    const size_t slash = name.find('/', start);
    const std::string_view seg = name.substr(start, slash == std::string_view::npos ? std::string_view::npos : slash - start);
    if (seg.empty()) bad("empty path segment");
    if (seg == "." || seg == "..") bad("'.' or '..' segment");
    if (slash == std::string_view::npos) break;
    start = slash + 1;
  }
}

HubClient::HubClient(HubSettings settings) : settings_(std::move(settings)) { global_init(); }

HubRepoInfo HubClient::repo_info(const HubRepoRef& ref) const {
  CurlPtr c(curl_easy_init());
  if (!c) fail(ErrorCode::internal, "curl_easy_init failed");
  const auto slash = ref.repo_id.find('/');
  const std::string url = cat(settings_.endpoint, "/api/", kind_path(ref.kind), "/", escape(c.get(), ref.repo_id.substr(0, slash)),
                              "/", escape(c.get(), ref.repo_id.substr(slash + 1)), "/revision/",
                              escape(c.get(), ref.revision), "?blobs=true");
  SlistPtr headers = auth_headers(settings_);
  Reply r;
  common_options(c.get(), settings_, headers.get());
  curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
  curl_easy_setopt(c.get(), CURLOPT_HEADERFUNCTION, header_cb);
  curl_easy_setopt(c.get(), CURLOPT_HEADERDATA, &r);
  curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, body_cb);
  curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &r);
  curl_easy_setopt(c.get(), CURLOPT_TIMEOUT, 120L);
  const CURLcode rc = curl_easy_perform(c.get());
  if (rc != CURLE_OK) {
    fail(ErrorCode::io, "cannot reach the Hub at ", settings_.endpoint, " for ", ref.display(), ": ", curl_easy_strerror(rc));
  }
  curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &r.status);
  if (r.status != 200) {
    r.hub_message = hub_message(r.body);
    fail_status(settings_, ref, r, "repo info");
  }
  HubRepoInfo info;
  try {
    const json j = engine::parse_json_strict(r.body, "the Hub's repo info");
    info.repo_id = j.at("id").get<std::string>();
    info.sha = j.at("sha").get<std::string>();
    for (const json& s : j.at("siblings")) {
      HubFile f;
      f.path = s.at("rfilename").get<std::string>();
      check_repo_file_name(f.path);
      if (s.contains("size")) f.size = s.at("size").get<uint64_t>();
      if (s.contains("blobId")) f.blob_id = s.at("blobId").get<std::string>();
      if (s.contains("lfs") && s.at("lfs").is_object()) {
        f.lfs_sha256 = s.at("lfs").at("sha256").get<std::string>();
        f.size = s.at("lfs").at("size").get<uint64_t>();
        if (!is_hex(f.lfs_sha256, 64)) fail(ErrorCode::invalid_model, "bad LFS sha256 for ", f.path);
      }
      info.files.push_back(std::move(f));
    }
  } catch (const Error&) {
    throw;
  } catch (const std::exception& e) {
    fail(ErrorCode::invalid_model, "the Hub's reply for ", ref.display(), " is not what its API returns: ", e.what());
  }
  if (!is_hex(info.sha, 40)) fail(ErrorCode::invalid_model, "the Hub's reply for ", ref.display(), " has no commit sha");
  return info;
}

std::string HubClient::download(const HubRepoRef& ref, const std::string& sha, const HubFile& file,
                                const fs::path& partial, const Progress& progress) const {
  check_repo_file_name(file.path);
  if (!is_hex(sha, 40)) fail(ErrorCode::invalid_argument, "download needs a commit sha, not '", sha, "'");
  int delay_ms = settings_.retry_delay_ms;
  std::string last_error;
  for (int attempt = 1; attempt <= std::max(1, settings_.max_attempts); ++attempt) {
    std::error_code ec;
    uint64_t have = fs::exists(partial, ec) ? fs::file_size(partial, ec) : 0;
    if (ec) fail(ErrorCode::io, "cannot stat ", partial.string(), ": ", ec.message());
    if (have > file.size) {  // longer than the file: not ours to resume
      fs::remove(partial, ec);
      have = 0;
    }
    if (have < file.size || file.size == 0) {
      std::unique_ptr<std::FILE, decltype(&std::fclose)> out(std::fopen(partial.c_str(), have ? "r+b" : "wb"), &std::fclose);
      if (!out) fail(ErrorCode::io, "cannot open ", partial.string(), " for writing");
      if (std::fseek(out.get(), static_cast<long>(have), SEEK_SET) != 0) fail(ErrorCode::io, "cannot seek in ", partial.string());
      CurlPtr c(curl_easy_init());
      if (!c) fail(ErrorCode::internal, "curl_easy_init failed");
      const auto slash = ref.repo_id.find('/');
      const std::string url = cat(settings_.endpoint, ref.kind == RepoKind::dataset ? "/datasets/" : "/",
                                  escape(c.get(), ref.repo_id.substr(0, slash)), "/",
                                  escape(c.get(), ref.repo_id.substr(slash + 1)), "/resolve/", sha, "/",
                                  escape_path(c.get(), file.path));
      SlistPtr headers = auth_headers(settings_);
      Transfer t;
      t.out = out.get();
      t.curl = c.get();
      t.offset = have;
      t.total = file.size;
      t.progress = &progress;
      common_options(c.get(), settings_, headers.get());
      curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
      curl_easy_setopt(c.get(), CURLOPT_HEADERFUNCTION, header_cb);
      curl_easy_setopt(c.get(), CURLOPT_HEADERDATA, &t.reply);
      curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, file_cb);
      curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &t);
      curl_easy_setopt(c.get(), CURLOPT_NOPROGRESS, 0L);
      curl_easy_setopt(c.get(), CURLOPT_XFERINFOFUNCTION, xfer_cb);
      curl_easy_setopt(c.get(), CURLOPT_XFERINFODATA, &t);
      if (have > 0) curl_easy_setopt(c.get(), CURLOPT_RESUME_FROM_LARGE, static_cast<curl_off_t>(have));
      const CURLcode rc = curl_easy_perform(c.get());
      const bool flushed = std::fflush(out.get()) == 0 && ::fsync(fileno(out.get())) == 0;
      if (t.cancelled) fail(ErrorCode::cancelled, "download of ", file.path, " cancelled (", t.offset + t.written, " of ", file.size, " bytes kept for a resume)");
      if (!flushed) fail(ErrorCode::io, "cannot write ", partial.string(), " (disk full?)");
      if (t.too_long) {
        out.reset();
        fs::remove(partial, ec);
        fail(ErrorCode::invalid_model, ref.display(), ": the server sent more than the ", file.size, " bytes of ", file.path,
             "; the partial download was deleted");
      }
      if (t.write_error) fail(ErrorCode::io, "cannot write ", partial.string(), " (disk full?)");
      long status = t.reply.status;
      if (status == 0) curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &status);
      t.reply.status = status;
      if (rc == CURLE_OK && status != 200 && status != 206) {
        t.reply.hub_message = hub_message(t.reply.body);
        if (status == 416 && have > 0) {  // our partial does not fit the file: start over
          out.reset();
          fs::remove(partial, ec);
          continue;
        }
        if (status < 500) fail_status(settings_, ref, t.reply, file.path);
        last_error = cat("HTTP ", status);
      } else if (rc != CURLE_OK) {
        last_error = curl_easy_strerror(rc);
      } else {
        last_error.clear();
      }
      if (!last_error.empty()) {
        if (attempt < settings_.max_attempts) {
          std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
          delay_ms *= 2;
        }
        continue;
      }
    }
    // Every byte is there (or the server says so): check size and content.
    have = fs::file_size(partial, ec);
    if (ec) fail(ErrorCode::io, "cannot stat ", partial.string(), ": ", ec.message());
    if (have != file.size) {
      last_error = cat("got ", have, " of ", file.size, " bytes");
      continue;
    }
    std::string sha256, git_sha1;
    digest_file(partial, have, &sha256, &git_sha1);
    const bool ok = !file.lfs_sha256.empty() ? sha256 == file.lfs_sha256 : (file.blob_id.empty() || git_sha1 == file.blob_id);
    if (!ok) {
      fs::remove(partial, ec);
      fail(ErrorCode::invalid_model, ref.display(), ": ", file.path, " failed its checksum (",
           !file.lfs_sha256.empty() ? cat("sha256 ", sha256, ", the Hub says ", file.lfs_sha256)
                                    : cat("git blob ", git_sha1, ", the Hub says ", file.blob_id),
           "); the partial download was deleted, pull again");
    }
    return sha256;
  }
  fail(ErrorCode::io, ref.display(), ": downloading ", file.path, " failed ", settings_.max_attempts,
       " times (last: ", last_error, "); the partial is kept and the next pull resumes it");
}

}  // namespace gptqd::daemon
