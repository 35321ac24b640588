// SPDX-License-Identifier: Apache-2.0
// The Hugging Face Hub client over libcurl (daemon layer). See hub_client.h.
#include "daemon/hub_client.h"

#include <curl/curl.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <numeric>
#include <thread>

#include "daemon/blob_store.h"
#include "daemon/fault.h"
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
  std::string content_range;  // Content-Range, of the last response
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
    if (name == "content-range") r->content_range = trim(line.substr(colon + 1));
  } else if (line.rfind("HTTP/", 0) == 0) {
    r->error_code.clear();  // a new response (after a redirect)
    r->content_range.clear();
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
  *sha256 = hex_of(d, n);
  EVP_DigestFinal_ex(b.get(), d, &n);
  *git_sha1 = hex_of(d, n);
}

constexpr size_t kMaxRanges = kMaxDownloadRanges;

// "scheme://host/path" of a URL: no user info, query or fragment (presigned URLs carry secrets
// there), for error messages.
std::string url_for_messages(const std::string& url) {
  std::string u = url.substr(0, url.find_first_of("?#"));
  const auto scheme = u.find("://");
  if (scheme != std::string::npos) {
    const auto host = scheme + 3;
    const auto at = u.find('@', host);
    if (at != std::string::npos && at < u.find('/', host)) u.erase(host, at + 1 - host);
  }
  return u;
}

// "bytes A-B/T" or "bytes */T": the start (-1 for "*") and the total (-1 for "*" or junk).
void parse_content_range(const std::string& v, int64_t* start, int64_t* total) {
  *start = *total = -1;
  if (v.rfind("bytes ", 0) != 0) return;
  const auto dash = v.find('-', 6), slash = v.find('/', 6);
  auto number = [](std::string_view s, int64_t* out) {
    uint64_t n = 0;
    const auto r = std::from_chars(s.data(), s.data() + s.size(), n);
    if (r.ec == std::errc() && r.ptr == s.data() + s.size() && !s.empty() && n <= INT64_MAX) *out = static_cast<int64_t>(n);
  };
  if (dash != std::string::npos && dash < slash) number(std::string_view(v).substr(6, dash - 6), start);
  if (slash != std::string::npos) number(std::string_view(v).substr(slash + 1), total);
}

// What a download fetches and how its failures read.
struct FetchSpec {
  std::string url;
  bool send_token = false;  // only for URLs on the Hub endpoint
  uint64_t size = 0;        // bytes, known before the first byte
  std::string subject;      // "org/name@rev: file" or the URL for messages, in every error
  std::function<void(const Reply&)> fail_http;  // throws the Error for a 4xx reply
};

// Byte range [begin, end) of the partial that one thread fetches.
struct RangeJob {
  enum class Outcome { running, ok, stopped, network, http, write_failed, too_long, size_changed, no_range };
  uint64_t begin = 0, end = 0;
  std::atomic<uint64_t> written{0};  // bytes from `begin` in the partial; durable once fsynced
  // Set by the range's thread, read after it was joined.
  Outcome outcome = Outcome::running;
  Reply reply;             // http: the 4xx
  std::string last_error;  // network: the last attempt's failure
  int write_errno = 0;     // write_failed
  int64_t server_size = -1;  // size_changed: what the server says, -1 unknown
};

// Everything the threads of one download share. The calling thread creates it, polls progress,
// checkpoints and reports; each range's thread runs run_range().
class PartialDownload {
 public:
  PartialDownload(const HubSettings& s, FetchSpec spec, fs::path partial, const HubClient::Progress& progress,
                  const DownloadOptions& opts)
      : s_(s), spec_(std::move(spec)), partial_(std::move(partial)), progress_(progress), opts_(opts) {}
  ~PartialDownload() { close_fd(); }
  PartialDownload(const PartialDownload&) = delete;
  PartialDownload& operator=(const PartialDownload&) = delete;

  // Returns once every byte is in the partial and fsynced; throws as HubClient::download says.
  void fetch();
  // After fetch(): the partial's sha256 and git blob sha1.
  void digest(std::string* sha256, std::string* git_sha1) const { digest_file(partial_, spec_.size, sha256, git_sha1); }
  // Deletes the partial, clears and reports the state, and throws Error(invalid_model) with
  // `why` + "; the partial download was deleted, pull again".
  [[noreturn]] void discard_and_fail(const std::string& why);

 private:
  friend size_t range_write_cb(char*, size_t, size_t, void*);
  friend int range_xfer_cb(void*, curl_off_t, curl_off_t, curl_off_t, curl_off_t);

  void open_partial();
  void set_ranges(const DownloadState& st);
  void run_ranges();
  void run_range(RangeJob& job);
  bool checkpoint();  // fsync + publish; false (and halt) when fsync fails
  void publish();
  void halt();
  uint64_t written_total() const;
  void close_fd() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  [[noreturn]] void fail_write(int err);

  const HubSettings& s_;
  const FetchSpec spec_;
  const fs::path partial_;
  const HubClient::Progress& progress_;
  const DownloadOptions& opts_;
  int fd_ = -1;
  bool preallocated_ = false;  // the partial has its full size (with a state); else it grows
  DownloadState durable_;      // the last state known to be on disk
  std::vector<std::unique_ptr<RangeJob>> jobs_;
  std::atomic<bool> stop_{false};
  bool cancelled_ = false;
  int fsync_errno_ = 0;
  std::mutex m_;  // guards running_ and the stop_ transition (for the threads' retry waits)
  std::condition_variable cv_;
  size_t running_ = 0;
  // Held while taking a checkpoint and while a range restarts from byte 0, so that a checkpoint
  // never pairs a count with a file that no longer holds those bytes.
  std::mutex layout_m_;
};

// One attempt of one range, shared with libcurl's callbacks.
struct RangeTransfer {
  PartialDownload* d = nullptr;
  RangeJob* job = nullptr;
  CURL* curl = nullptr;
  uint64_t request_start = 0;  // the first byte asked for
  bool ranged = false;         // a Range header was sent
  bool checked_status = false;
  bool too_long = false;       // more bytes than the range holds
  bool no_range = false;       // 200 to a Range request while other ranges run
  bool bad_range = false;      // 206 for another start than asked
  int64_t server_size = -1;    // a Content-Range total that is not the listed size
  int write_errno = 0;
  Reply reply;
};

bool pwrite_all(int fd, const char* data, size_t n, uint64_t at, int* err) {
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, data, n, static_cast<off_t>(at));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      *err = w < 0 ? errno : EIO;
      return false;
    }
    data += w;
    n -= static_cast<size_t>(w);
    at += static_cast<uint64_t>(w);
  }
  return true;
}

size_t range_write_cb(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<RangeTransfer*>(user);
  PartialDownload& d = *t->d;
  RangeJob& job = *t->job;
  const size_t bytes = size * n;
  if (!t->checked_status) {
    t->checked_status = true;
    curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->reply.status);
    if (t->reply.status == 206) {
      int64_t start = -1, total = -1;
      parse_content_range(t->reply.content_range, &start, &total);
      if (total >= 0 && static_cast<uint64_t>(total) != d.spec_.size) {
        t->server_size = total;
        return 0;
      }
      if (start != static_cast<int64_t>(t->request_start)) {
        t->bad_range = true;
        return 0;
      }
    } else if (t->reply.status == 200 && t->ranged) {
      // No Range support here: the body is the whole file. Alone, this range restarts at byte 0;
      // beside others, writing it would overlap them, so the download goes one stream.
      if (d.jobs_.size() > 1) {
        t->no_range = true;
        return 0;
      }
      std::lock_guard lock(d.layout_m_);
      if (!d.preallocated_ && ::ftruncate(d.fd_, 0) != 0) {
        t->write_errno = errno;
        return 0;
      }
      job.written.store(0);
      t->request_start = 0;
    }
  }
  if (t->reply.status != 200 && t->reply.status != 206) {
    if (t->reply.body.size() < 4096) t->reply.body.append(data, std::min<size_t>(bytes, 4096));
    return bytes;
  }
  const uint64_t at = job.begin + job.written.load(std::memory_order_relaxed);  // only this thread moves it
  if (at + bytes > job.end) {
    t->too_long = true;  // never let a server write past the range (or grow the partial past the file)
    return 0;
  }
  if (!pwrite_all(d.fd_, data, bytes, at, &t->write_errno)) return 0;
  job.written.fetch_add(bytes, std::memory_order_release);
  return bytes;
}

int range_xfer_cb(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  return static_cast<RangeTransfer*>(user)->d->stop_.load() ? 1 : 0;
}

size_t parts_for(const HubSettings& s, bool with_state, uint64_t size) {
  if (!with_state || size < s.parallel_min_bytes || s.parallel_parts <= 1) return 1;
  return static_cast<size_t>(std::min<uint64_t>({static_cast<uint64_t>(s.parallel_parts), kMaxRanges, std::max<uint64_t>(size, 1)}));
}

uint64_t range_bytes(uint64_t size, size_t n) { return (size + n - 1) / n; }

// Whether `st` can describe a file of `size` bytes.
bool fits(const DownloadState& st, uint64_t size) {
  if (st.done.empty() || st.done.size() > kMaxRanges) return false;
  const uint64_t len = range_bytes(size, st.done.size());
  for (size_t i = 0; i < st.done.size(); ++i) {
    const uint64_t begin = std::min(i * len, size), end = std::min(begin + len, size);
    if (st.done[i] > end - begin) return false;
  }
  return true;
}

void PartialDownload::set_ranges(const DownloadState& st) {
  jobs_.clear();
  const uint64_t size = spec_.size, len = range_bytes(size, st.done.size());
  for (size_t i = 0; i < st.done.size(); ++i) {
    auto job = std::make_unique<RangeJob>();
    job->begin = std::min(i * len, size);
    job->end = std::min(job->begin + len, size);
    job->written.store(st.done[i]);
    jobs_.push_back(std::move(job));
  }
}

void PartialDownload::publish() {
  if (opts_.state) *opts_.state = durable_;
  if (opts_.checkpoint) opts_.checkpoint(durable_);
}

void PartialDownload::open_partial() {
  const uint64_t size = spec_.size;
  std::error_code ec;
  const bool exists = fs::exists(partial_, ec);
  uint64_t have = exists && !ec ? fs::file_size(partial_, ec) : 0;
  if (ec) fail(ErrorCode::io, "cannot stat ", partial_.string(), ": ", ec.message());
  if (!opts_.state) {
    if (have > size) {  // longer than the file: not ours to resume
      fs::remove(partial_, ec);
      have = 0;
    }
    fd_ = ::open(partial_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) fail(ErrorCode::io, "cannot open ", partial_.string(), " for writing: ", std::strerror(errno));
    durable_.done = {have};
    set_ranges(durable_);
    return;
  }
  preallocated_ = true;
  if (exists && have == size && fits(*opts_.state, size)) {
    fd_ = ::open(partial_.c_str(), O_RDWR | O_CLOEXEC);
    if (fd_ < 0) fail(ErrorCode::io, "cannot open ", partial_.string(), " for writing: ", std::strerror(errno));
    durable_ = *opts_.state;
    set_ranges(durable_);
    return;
  }
  // A fresh download: record that first, so that no stored state outlives the bytes it counts.
  durable_.done.assign(parts_for(s_, true, size), 0);
  publish();
  fd_ = ::open(partial_.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(ErrorCode::io, "cannot create ", partial_.string(), ": ", std::strerror(errno));
  if (size > 0) {
    const int err = ::posix_fallocate(fd_, 0, static_cast<off_t>(size));
    if (err != 0) {
      close_fd();
      fs::remove(partial_, ec);
      if (err == ENOSPC || err == EDQUOT) {
        fail(ErrorCode::no_space, "disk full: cannot reserve ", size, " bytes for ", partial_.string(), " (",
             std::strerror(err), "); free some space and pull again");
      }
      fail(ErrorCode::io, "cannot reserve ", size, " bytes for ", partial_.string(), ": ", std::strerror(err));
    }
  }
  set_ranges(durable_);
}

void PartialDownload::halt() {
  {
    std::lock_guard lock(m_);
    stop_.store(true);
  }
  cv_.notify_all();
}

uint64_t PartialDownload::written_total() const {
  uint64_t n = 0;
  for (const auto& j : jobs_) n += j->written.load(std::memory_order_acquire);
  return n;
}

bool PartialDownload::checkpoint() {
  std::vector<uint64_t> snapshot;
  int err = 0;
  {
    // Counts first, then fsync: every byte a count includes was written before the fsync began.
    std::lock_guard lock(layout_m_);
    for (const auto& j : jobs_) snapshot.push_back(j->written.load(std::memory_order_acquire));
    if (fault_fsync("hub.fsync", fd_) != 0) err = errno;
  }
  if (err != 0) {
    if (fsync_errno_ == 0) fsync_errno_ = err;
    halt();
    return false;
  }
  durable_.done = std::move(snapshot);
  publish();
  return true;
}

void PartialDownload::run_range(RangeJob& job) {
  const int attempts = std::max(1, s_.max_attempts);
  int delay_ms = std::max(0, s_.retry_delay_ms);
  SlistPtr headers = spec_.send_token ? auth_headers(s_) : SlistPtr();
  auto finish = [&](RangeJob::Outcome o) {
    job.outcome = o;
    if (o != RangeJob::Outcome::ok && o != RangeJob::Outcome::stopped && o != RangeJob::Outcome::network) halt();
  };
  for (int attempt = 1;; ++attempt) {
    if (job.begin + job.written.load() >= job.end) return finish(RangeJob::Outcome::ok);
    if (stop_.load()) return finish(RangeJob::Outcome::stopped);
    CurlPtr c(curl_easy_init());
    if (!c) {
      job.last_error = "curl_easy_init failed";
      return finish(RangeJob::Outcome::network);
    }
    RangeTransfer t;
    t.d = this;
    t.job = &job;
    t.curl = c.get();
    t.request_start = job.begin + job.written.load();
    t.ranged = t.request_start > 0 || job.end < spec_.size;
    const std::string range = job.end == spec_.size ? cat(t.request_start, "-") : cat(t.request_start, "-", job.end - 1);
    common_options(c.get(), s_, headers.get());
    curl_easy_setopt(c.get(), CURLOPT_URL, spec_.url.c_str());
    curl_easy_setopt(c.get(), CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(c.get(), CURLOPT_HEADERDATA, &t.reply);
    curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, range_write_cb);
    curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(c.get(), CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c.get(), CURLOPT_XFERINFOFUNCTION, range_xfer_cb);
    curl_easy_setopt(c.get(), CURLOPT_XFERINFODATA, &t);
    if (t.ranged) curl_easy_setopt(c.get(), CURLOPT_RANGE, range.c_str());
    const CURLcode rc = curl_easy_perform(c.get());
    if (t.write_errno != 0) {
      job.write_errno = t.write_errno;
      return finish(RangeJob::Outcome::write_failed);
    }
    if (t.too_long) return finish(RangeJob::Outcome::too_long);
    if (t.server_size >= 0) {
      job.server_size = t.server_size;
      return finish(RangeJob::Outcome::size_changed);
    }
    if (t.no_range) return finish(RangeJob::Outcome::no_range);
    long status = t.reply.status;
    if (status == 0) curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &status);
    std::string error;
    if (rc == CURLE_OK && status != 200 && status != 206) {
      if (status == 416) {  // the server's file ends before a byte we asked for
        int64_t start = -1;
        parse_content_range(t.reply.content_range, &start, &job.server_size);
        return finish(RangeJob::Outcome::size_changed);
      }
      if (status < 500) {
        job.reply = std::move(t.reply);
        job.reply.status = status;
        job.reply.hub_message = hub_message(job.reply.body);
        return finish(RangeJob::Outcome::http);
      }
      error = cat("HTTP ", status);
    } else if (rc != CURLE_OK) {
      if (stop_.load() && !t.bad_range) return finish(RangeJob::Outcome::stopped);
      error = t.bad_range ? cat("the server sent another range than bytes ", t.request_start, "-") : curl_easy_strerror(rc);
    } else if (job.begin + job.written.load() < job.end) {
      error = cat("the server ended the reply after ", job.begin + job.written.load() - t.request_start, " of ",
                  job.end - t.request_start, " bytes");
    } else {
      return finish(RangeJob::Outcome::ok);
    }
    if (attempt >= attempts) {
      job.last_error = error;
      halt();  // the download fails: the other ranges stop too
      return finish(RangeJob::Outcome::network);
    }
    std::unique_lock lock(m_);
    if (cv_.wait_for(lock, std::chrono::milliseconds(delay_ms), [&] { return stop_.load(); })) {
      return finish(RangeJob::Outcome::stopped);
    }
    delay_ms = std::min(delay_ms, 30'000) * 2;  // capped: a minute at most
  }
}

void PartialDownload::run_ranges() {
  stop_.store(false);
  std::vector<std::thread> threads;
  struct Joiner {  // stops and joins the threads however this function leaves
    PartialDownload* d;
    std::vector<std::thread>* threads;
    ~Joiner() {
      d->halt();
      for (auto& th : *threads) th.join();
    }
  } joiner{this, &threads};
  running_ = jobs_.size();
  for (auto& job : jobs_) {
    threads.emplace_back([this, j = job.get()] {
      run_range(*j);
      {
        std::lock_guard lock(m_);
        --running_;
      }
      cv_.notify_all();
    });
  }
  const auto poll = std::clamp(opts_.checkpoint_every, std::chrono::milliseconds(5), std::chrono::milliseconds(100));
  const bool track = opts_.state || opts_.checkpoint;
  auto last_checkpoint = std::chrono::steady_clock::now();
  std::unique_lock lock(m_);
  while (running_ > 0) {
    if (cv_.wait_for(lock, poll, [&] { return running_ == 0; })) break;
    lock.unlock();
    if (progress_ && !cancelled_ && !stop_.load() && !progress_(written_total(), spec_.size)) {
      cancelled_ = true;
      halt();
    }
    if (track && std::chrono::steady_clock::now() - last_checkpoint >= opts_.checkpoint_every) {
      checkpoint();
      last_checkpoint = std::chrono::steady_clock::now();
    }
    lock.lock();
  }
}

[[noreturn]] void PartialDownload::fail_write(int err) {
  if (err == ENOSPC || err == EDQUOT) {
    fail(ErrorCode::no_space, "disk full writing ", partial_.string(), " (", std::strerror(err),
         "); free some space and pull again: the partial is kept and the pull resumes it");
  }
  fail(ErrorCode::io, "cannot write ", partial_.string(), ": ", std::strerror(err));
}

void PartialDownload::discard_and_fail(const std::string& why) {
  close_fd();
  std::error_code ec;
  fs::remove(partial_, ec);
  durable_.done.clear();
  publish();
  fail(ErrorCode::invalid_model, why, "; the partial download was deleted, pull again");
}

void PartialDownload::fetch() {
  open_partial();
  const uint64_t size = spec_.size;
  for (;;) {
    run_ranges();
    // The threads are done: every written byte is counted, and durable after this. When the
    // fsync fails, the caller hears the last state that was durable once more.
    if (!checkpoint()) publish();
    if (fsync_errno_ != 0 && fsync_errno_ != ENOSPC && fsync_errno_ != EDQUOT) {
      // The kernel may have dropped pages it could not write: only the last durable state counts.
      fail(ErrorCode::io, "I/O error on fsync of ", partial_.string(), " (", std::strerror(fsync_errno_),
           "); a new pull fetches again what was written since the last checkpoint");
    }
    int err = fsync_errno_;
    for (const auto& j : jobs_) err = err ? err : j->write_errno;
    if (err != 0) fail_write(err);
    for (const auto& j : jobs_) {
      if (j->outcome == RangeJob::Outcome::too_long) {
        discard_and_fail(cat(spec_.subject, ": the server sent more than the ", size, " bytes listed"));
      }
      if (j->outcome == RangeJob::Outcome::size_changed) {
        discard_and_fail(cat(spec_.subject, ": the server has ",
                             j->server_size >= 0 ? cat(j->server_size, " bytes") : std::string("a different size"),
                             ", not the ", size, " bytes listed"));
      }
    }
    for (const auto& j : jobs_) {
      if (j->outcome == RangeJob::Outcome::http) spec_.fail_http(j->reply);
    }
    if (cancelled_) {
      fail(ErrorCode::cancelled, "download of ", spec_.subject, " cancelled (", durable_.completed(), " of ", size,
           " bytes kept for a resume)");
    }
    bool no_range = false;
    for (const auto& j : jobs_) no_range = no_range || j->outcome == RangeJob::Outcome::no_range;
    if (no_range) {  // one stream from byte 0, over what the ranges wrote
      set_ranges(DownloadState{{0}});
      continue;
    }
    for (size_t i = 0; i < jobs_.size(); ++i) {
      const RangeJob& j = *jobs_[i];
      if (j.outcome != RangeJob::Outcome::network) continue;
      const std::string which =
          jobs_.size() > 1 ? cat(" (range ", i + 1, " of ", jobs_.size(), ", bytes ", j.begin, "-", j.end - 1, ")") : "";
      fail(ErrorCode::io, "downloading ", spec_.subject, which, " failed ", std::max(1, s_.max_attempts),
           " times (last: ", j.last_error, "); the partial is kept and the next pull resumes it");
    }
    break;
  }
  if (durable_.completed() != size) {
    fail(ErrorCode::internal, "download of ", spec_.subject, " ended with ", durable_.completed(), " of ", size, " bytes");
  }
  if (progress_ && !progress_(size, size)) {
    fail(ErrorCode::cancelled, "download of ", spec_.subject, " cancelled (all ", size, " bytes kept for a resume)");
  }
  close_fd();
}

// Fails with the error a user can act on for a 4xx from a plain URL.
[[noreturn]] void fail_url_status(const std::string& shown, const Reply& r) {
  if (r.status == 401 || r.status == 403) {
    fail(ErrorCode::permission_denied, shown, " refused the download (HTTP ", r.status,
         "): the link may need a login or may have expired; get a fresh one");
  }
  if (r.status == 404 || r.status == 410) fail(ErrorCode::not_found, shown, " does not exist (HTTP ", r.status, "); check the URL");
  fail(ErrorCode::io, shown, " failed with HTTP ", r.status);
}

struct Probe {
  CURL* curl = nullptr;
  Reply reply;
};

// Keeps a small error body; stops a 200's body at once (its headers had the size).
size_t probe_body_cb(char* data, size_t size, size_t n, void* user) {
  auto* p = static_cast<Probe*>(user);
  curl_easy_getinfo(p->curl, CURLINFO_RESPONSE_CODE, &p->reply.status);
  if (p->reply.status == 200) return 0;
  if (p->reply.body.size() < 4096) p->reply.body.append(data, std::min<size_t>(size * n, 4096));
  return size * n;
}

// The size of what `url` serves, without the token: a HEAD, or where that is refused or says
// nothing, a one-byte Range GET (206 Content-Range total, or a 200's Content-Length). Retries
// network errors and 5xx like a download.
uint64_t probe_size(const HubSettings& s, const std::string& url) {
  const std::string shown = url_for_messages(url);
  int delay_ms = std::max(0, s.retry_delay_ms);
  std::string error;
  const int attempts = std::max(1, s.max_attempts);
  for (int attempt = 1; attempt <= attempts; ++attempt) {
    for (const bool head : {true, false}) {
      CurlPtr c(curl_easy_init());
      if (!c) fail(ErrorCode::internal, "curl_easy_init failed");
      Probe p;
      p.curl = c.get();
      Reply& r = p.reply;
      common_options(c.get(), s, nullptr);
      curl_easy_setopt(c.get(), CURLOPT_URL, url.c_str());
      curl_easy_setopt(c.get(), CURLOPT_HEADERFUNCTION, header_cb);
      curl_easy_setopt(c.get(), CURLOPT_HEADERDATA, &r);
      curl_easy_setopt(c.get(), CURLOPT_TIMEOUT, 120L);
      if (head) {
        curl_easy_setopt(c.get(), CURLOPT_NOBODY, 1L);
      } else {
        curl_easy_setopt(c.get(), CURLOPT_RANGE, "0-0");
        curl_easy_setopt(c.get(), CURLOPT_WRITEFUNCTION, probe_body_cb);
        curl_easy_setopt(c.get(), CURLOPT_WRITEDATA, &p);
      }
      const CURLcode rc = curl_easy_perform(c.get());
      long status = 0;
      curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &status);
      curl_off_t length = -1;
      curl_easy_getinfo(c.get(), CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &length);
      if (rc != CURLE_OK && !(rc == CURLE_WRITE_ERROR && status == 200)) {
        error = curl_easy_strerror(rc);
        break;  // network: the next attempt
      }
      if (status == 206 || status == 416) {  // 416 "bytes */0": an empty file
        int64_t start = -1, total = -1;
        parse_content_range(r.content_range, &start, &total);
        if (total >= 0) return static_cast<uint64_t>(total);
      }
      if (status == 200 && length >= 0) return static_cast<uint64_t>(length);
      if (status >= 500) {
        error = cat("HTTP ", status);
        break;
      }
      if (!head && status >= 400) {
        r.status = status;
        fail_url_status(shown, r);
      }
      if (!head) {
        fail(ErrorCode::unsupported, shown, " does not say how big it is (HTTP ", status,
             " without Content-Length or Content-Range); gptqd needs the size to resume and verify a download");
      }
      // HEAD refused or silent about the size: ask with a GET.
    }
    if (attempt < attempts) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      delay_ms = std::min(delay_ms, 30'000) * 2;  // capped: a minute at most
    }
  }
  fail(ErrorCode::io, "cannot reach ", shown, " (tried ", attempts, " times, last: ", error, ")");
}

}  // namespace

HubSettings HubSettings::from_environment(const std::string& config_endpoint, const fs::path& config_token_file) {
  HubSettings s;
  std::string e = trim(env("HF_ENDPOINT"));
  const char* endpoint_source = "HF_ENDPOINT";
  if (e.empty() && !config_endpoint.empty()) e = config_endpoint, endpoint_source = "the configured hub_endpoint";
  if (!e.empty()) {
    while (!e.empty() && e.back() == '/') e.pop_back();
    if (e.rfind("http://", 0) != 0 && e.rfind("https://", 0) != 0) {
      fail(ErrorCode::invalid_argument, endpoint_source, " must start with http:// or https://, not '", e, "'");
    }
    s.endpoint = e;
  }
  s.token = trim(env("HF_TOKEN"));
  if (s.token.empty()) {
    fs::path file = env("HF_TOKEN_PATH");
    if (file.empty()) file = config_token_file;
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
  auto number = [](const char* var, uint64_t lo, uint64_t hi, uint64_t* out) {
    const std::string v = trim(env(var));
    if (v.empty()) return;
    uint64_t n = 0;
    const auto r = std::from_chars(v.data(), v.data() + v.size(), n);
    if (r.ec != std::errc() || r.ptr != v.data() + v.size() || n < lo || n > hi) {
      fail(ErrorCode::invalid_argument, var, " must be a whole number from ", lo, " to ", hi, ", not '", v, "'");
    }
    *out = n;
  };
  number("GPTQD_HUB_PARALLEL_MIN_BYTES", 0, UINT64_MAX, &s.parallel_min_bytes);
  uint64_t parts = static_cast<uint64_t>(s.parallel_parts);
  number("GPTQD_HUB_PARALLEL_PARTS", 1, kMaxRanges, &parts);
  s.parallel_parts = static_cast<int>(parts);
  return s;
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
  return parse_repo_info(r.body, ref);
}

std::string HubClient::download(const HubRepoRef& ref, const std::string& sha, const HubFile& file,
                                const fs::path& partial, const Progress& progress, const DownloadOptions& opts) const {
  check_repo_file_name(file.path);
  if (!is_hex(sha, 40)) fail(ErrorCode::invalid_argument, "download needs a commit sha, not '", sha, "'");
  CurlPtr c(curl_easy_init());
  if (!c) fail(ErrorCode::internal, "curl_easy_init failed");
  const auto slash = ref.repo_id.find('/');
  FetchSpec spec;
  spec.url = cat(settings_.endpoint, ref.kind == RepoKind::dataset ? "/datasets/" : "/", escape(c.get(), ref.repo_id.substr(0, slash)),
                 "/", escape(c.get(), ref.repo_id.substr(slash + 1)), "/resolve/", sha, "/", escape_path(c.get(), file.path));
  spec.send_token = true;
  spec.size = file.size;
  spec.subject = cat(ref.display(), ": ", file.path);
  spec.fail_http = [&](const Reply& r) { fail_status(settings_, ref, r, file.path); };
  PartialDownload d(settings_, std::move(spec), partial, progress, opts);
  d.fetch();
  std::string sha256, git_sha1;
  d.digest(&sha256, &git_sha1);
  const bool ok = !file.lfs_sha256.empty() ? sha256 == file.lfs_sha256 : (file.blob_id.empty() || git_sha1 == file.blob_id);
  if (!ok) {
    d.discard_and_fail(cat(ref.display(), ": ", file.path, " failed its checksum (",
                           !file.lfs_sha256.empty() ? cat("sha256 ", sha256, ", the Hub says ", file.lfs_sha256)
                                                    : cat("git blob ", git_sha1, ", the Hub says ", file.blob_id),
                           ")"));
  }
  return sha256;
}

UrlDownload HubClient::download_url(const std::string& url, const fs::path& partial, const std::string& expected_sha256,
                                    const Progress& progress, const DownloadOptions& opts) const {
  const std::string shown = url_for_messages(url);
  if (url.rfind("http://", 0) != 0 && url.rfind("https://", 0) != 0) {
    fail(ErrorCode::invalid_argument, "'", shown, "' is not an http:// or https:// URL");
  }
  std::string expected = expected_sha256;
  std::transform(expected.begin(), expected.end(), expected.begin(), [](unsigned char ch) { return std::tolower(ch); });
  if (!expected.empty() && !is_hex(expected, 64)) {
    fail(ErrorCode::invalid_argument, "the expected sha256 for ", shown, " must be 64 hex digits, not '", expected_sha256, "'");
  }
  FetchSpec spec;
  spec.url = url;
  spec.send_token = false;  // the Hub token is for the Hub only
  spec.size = probe_size(settings_, url);
  spec.subject = shown;
  spec.fail_http = [&](const Reply& r) { fail_url_status(shown, r); };
  UrlDownload out;
  out.size = spec.size;
  PartialDownload d(settings_, std::move(spec), partial, progress, opts);
  d.fetch();
  std::string git_sha1;
  d.digest(&out.sha256, &git_sha1);
  if (!expected.empty() && out.sha256 != expected) {
    d.discard_and_fail(cat(shown, " failed its checksum (sha256 ", out.sha256, ", expected ", expected, ")"));
  }
  return out;
}

}  // namespace gptqd::daemon
