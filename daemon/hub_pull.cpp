// SPDX-License-Identifier: Apache-2.0
// Hub and URL pulls into the registry (daemon layer).
//
// A model pull runs in phases, each blocking one on a thread of its own, with the io thread in
// between for what only it may touch (the registry):
//   1. repo info at the revision (resolved to a commit sha); a tag pulled from that very commit
//      means the model is up to date, and nothing is fetched.
//   2. the index, config.json and quantize_config.json: the file selection and the architecture
//      are settled before any weight byte is fetched; then the free-space check.
//   3. (io) the target NAME:TAG may not exist or be in flight; the plan event goes out.
//   4. every other file, each verified, then the whole set inspected like a local folder (config
//      against tensors, GPTQ checks) and published into blobs/.
//   5. (io) the registry row, in one transaction.
// Partials live under tmp/hub/<key>.partial, their durable progress in the registry's downloads
// table, so any interruption resumes. Errors that a retry can fix (network, disk full, cancel)
// keep them; anything else deletes them.
#include "daemon/hub_pull.h"

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/this_coro.hpp>
#include <chrono>
#include <filesystem>
#include <optional>

#include "daemon/async_util.h"
#include "daemon/blob_store.h"
#include "daemon/daemon.h"
#include "daemon/fault.h"
#include "daemon/handler_support.h"
#include "daemon/importer.h"
#include "daemon/log.h"
#include "engine/error.h"
#include "engine/gptq_config.h"
#include "engine/json_strict.h"
#include "engine/model_config.h"
#include "engine/model_source.h"
#include "engine/perplexity.h"

namespace gptqd::daemon {
namespace {

namespace fs = std::filesystem;
using asio::awaitable;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

std::string listing(const std::vector<std::string>& names, size_t max_shown = 8) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < max_shown; ++i) out.append(i ? ", " : "").append(names[i]);
  if (names.size() > max_shown) out += cat(", ... (", names.size(), " in all)");
  return out;
}

std::string hex_sha256(std::string_view text) { return sha256_digest(text).substr(7); }

// Progress events go from a download thread to the io thread through this.
using Emit = std::function<void(json)>;

json progress_event(std::string status) { return json{{"event", "progress"}, {"status", std::move(status)}}; }

// Per-file progress events, at most ~5 a second plus the first and the last, with the rate over
// the last second or so. Returns false (cancel) once `cancel` is set.
class FileProgress {
 public:
  FileProgress(const Emit& emit, const std::atomic<bool>& cancel, json base, uint64_t start)
      : emit_(emit), cancel_(cancel), base_(std::move(base)), window_bytes_(start) {}

  bool operator()(uint64_t done, uint64_t total) {
    if (cancel_.load()) return false;
    const auto now = Clock::now();
    const bool first = !emitted_, last = done == total;
    // Changes at most ~5 times a second; a stalled download still says so every 2 s, which is
    // also how a client that hung up is noticed.
    const bool heartbeat = now - last_emit_ >= std::chrono::seconds(2);
    if (!first && !last && !heartbeat && (now - last_emit_ < std::chrono::milliseconds(200) || done == last_done_)) return true;
    const double window = std::chrono::duration<double>(now - window_start_).count();
    if (window >= 1.0) {
      rate_ = static_cast<double>(done - std::min(done, window_bytes_)) / window;
      window_start_ = now;
      window_bytes_ = done;
    }
    json ev = base_;
    ev["total"] = total;
    ev["completed"] = done;
    if (rate_ > 0) ev["rate"] = static_cast<uint64_t>(rate_);
    if (first && done > 0) ev["resumed"] = true;
    emit_(std::move(ev));
    emitted_ = true;
    last_emit_ = now;
    last_done_ = done;
    return true;
  }

 private:
  const Emit& emit_;
  const std::atomic<bool>& cancel_;
  json base_;
  bool emitted_ = false;
  Clock::time_point last_emit_{};
  uint64_t last_done_ = 0;
  Clock::time_point window_start_ = Clock::now();
  uint64_t window_bytes_ = 0;
  double rate_ = 0;
};

// "org/name@<sha>:<path>": a Hub file for the log and the registry's downloads table, and the
// partial's key when the Hub lists neither an LFS oid nor a blob id.
std::string file_source(const HubRepoRef& ref, const std::string& sha, const std::string& path) {
  return cat(ref.kind == RepoKind::dataset ? "datasets/" : "", ref.repo_id, "@", sha, ":", path);
}

// A fetched file: the verified partial (or a blob the store already had), the key of its
// download, and the lock that keeps other pulls off that key until it is published.
struct Fetched {
  StagedFile staged;
  std::string key;
  std::optional<HubPulls::FileLock> lock;
};

// Fetches files for one pull on its download thread.
class Fetcher {
 public:
  Fetcher(HubPulls& pulls, BlobStore& store, const HubClient& client, const std::atomic<bool>& cancel, Emit emit)
      : pulls_(pulls), store_(store), client_(client), cancel_(cancel), emit_(std::move(emit)) {}

  const Emit& emit() const { return emit_; }

  Fetched hub_file(const HubRepoRef& ref, const std::string& sha, const HubFile& f, const std::string& name,
                   size_t index, size_t n) {
    const std::string source = file_source(ref, sha, f.path);
    Fetched out;
    out.key = download_key(f, source);
    json base = progress_event("pulling " + f.path);
    base["file"] = f.path;
    if (!f.lfs_sha256.empty()) base["digest"] = "sha256:" + f.lfs_sha256;
    if (index > 0) base["file_index"] = index, base["n_files"] = n;
    auto present = [&]() -> bool {
      if (f.lfs_sha256.empty()) return false;
      std::optional<StagedFile> s = store_.pin_existing(name, "sha256:" + f.lfs_sha256, f.size);
      if (!s) return false;
      out.staged = std::move(*s);
      json ev = base;
      ev["status"] = "already have " + f.path;
      ev["total"] = f.size;
      ev["completed"] = f.size;
      ev["skipped"] = true;
      emit_(std::move(ev));
      return true;
    };
    if (present()) return out;
    out.lock.emplace(pulls_.lock_file(out.key, cancel_, [&] { emit_(progress_event("waiting for another pull of " + f.path)); }));
    if (present()) return out;
    DownloadState state = DownloadState::from_json(pulls_.state_of(out.key));
    out.staged = download(out.key, source, f.size, base, state, [&](const fs::path& partial, const HubClient::Progress& p,
                                                                   const DownloadOptions& opts) {
      return client_.download(ref, sha, f, partial, p, opts);
    });
    out.staged.name = name;
    return out;
  }

  Fetched url_file(const std::string& url, const std::string& name, const std::string& expected_sha256) {
    Fetched out;
    out.key = "url-" + hex_sha256(url);
    json base = progress_event("pulling " + name);
    base["file"] = name;
    out.lock.emplace(pulls_.lock_file(out.key, cancel_, [&] { emit_(progress_event("waiting for another pull of " + url)); }));
    DownloadState state = DownloadState::from_json(pulls_.state_of(out.key));
    uint64_t size = 0;
    out.staged = download(out.key, url, 0, base, state, [&](const fs::path& partial, const HubClient::Progress& p,
                                                           const DownloadOptions& opts) {
      UrlDownload d = client_.download_url(url, partial, expected_sha256, p, opts);
      size = d.size;
      return d.sha256;
    });
    out.staged.name = name;
    out.staged.size_bytes = size;
    return out;
  }

 private:
  template <typename Fn>
  StagedFile download(const std::string& key, const std::string& source, uint64_t size, const json& base,
                      DownloadState& state, Fn&& fn) {
    store_.ensure_partials_dir();
    const fs::path partial = store_.partial_path(key);
    DownloadOptions opts;
    opts.state = &state;
    opts.checkpoint = [&](const DownloadState& s) { pulls_.save_state(key, source, size, s.to_json()); };
    FileProgress progress(emit_, cancel_, base, state.completed());
    HubClient::Progress p = std::ref(progress);
    std::string sha256;
    try {
      fault_disk_full("hub.download");
      sha256 = fn(partial, p, opts);
    } catch (const Error& e) {
      if (e.code() == ErrorCode::invalid_model) pulls_.forget(key);  // the client deleted the partial
      throw;
    }
    fault_point("hub.after_download");
    std::error_code ec;
    const uint64_t bytes = fs::file_size(partial, ec);
    return StagedFile{"", partial, "sha256:" + sha256, ec ? size : bytes, false};
  }

  HubPulls& pulls_;
  BlobStore& store_;
  const HubClient& client_;
  const std::atomic<bool>& cancel_;
  Emit emit_;
};

std::string read_small_file(const fs::path& p, const std::string& what) {
  std::error_code ec;
  if (fs::file_size(p, ec) > (64u << 20)) fail(ErrorCode::invalid_model, what, " is larger than 64 MiB");
  return handlers::read_whole_file(p);
}

bool resumable(ErrorCode code) {
  return code == ErrorCode::io || code == ErrorCode::cancelled || code == ErrorCode::no_space;
}

// What a model pull holds while it runs; shared between the io thread and its download threads
// (one phase at a time).
struct ModelPullWork {
  HubRepoRef ref;
  std::shared_ptr<HubClient> client;
  HubRepoInfo info;
  std::vector<HubFile> files;  // selected
  std::vector<Fetched> fetched;
  ImportOutcome out;           // out.staged mirrors fetched, in name order, after phase 4
  uint64_t total_bytes = 0;
  std::string suggested_tag;
};

const HubFile* find_file(const std::vector<HubFile>& files, std::string_view name) {
  for (const auto& f : files) {
    if (f.path == name) return &f;
  }
  return nullptr;
}

// Phase 2, on the download thread.
void fetch_metadata(ModelPullWork& w, Fetcher& fetch, BlobStore& store, HubPulls& pulls) {
  const std::string display = cat(w.ref.repo_id, "@", w.ref.revision);
  auto get = [&](const HubFile& f) -> const StagedFile& {
    w.fetched.push_back(fetch.hub_file(w.ref, w.info.sha, f, f.path, 0, 0));
    return w.fetched.back().staged;
  };
  std::set<std::string> shards;
  const std::set<std::string>* shards_ptr = nullptr;
  if (const HubFile* idx = find_file(w.info.files, "model.safetensors.index.json")) {
    const json j = engine::parse_json_strict(read_small_file(get(*idx).tmp_path, "model.safetensors.index.json"),
                                             display + ": model.safetensors.index.json");
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object()) {
      fail(ErrorCode::invalid_model, display, ": model.safetensors.index.json has no \"weight_map\" object");
    }
    for (const auto& [tensor, file] : j["weight_map"].items()) {
      if (!file.is_string()) fail(ErrorCode::invalid_model, display, ": the index maps ", tensor, " to a non-string");
      shards.insert(file.get<std::string>());
    }
    shards_ptr = &shards;
  }
  w.files = select_model_files(w.info.files, display, shards_ptr);

  // The architecture is checked before any weight byte is fetched.
  const json config = engine::parse_json_strict(read_small_file(get(*find_file(w.files, "config.json")).tmp_path, "config.json"),
                                                display + ": config.json");
  engine::ModelInfo est;
  est.config = engine::ModelConfig::from_hf_json(config, display + ": config.json");
  std::optional<json> quantize;
  if (const HubFile* q = find_file(w.files, "quantize_config.json")) {
    quantize = engine::parse_json_strict(read_small_file(get(*q).tmp_path, "quantize_config.json"),
                                         display + ": quantize_config.json");
  }
  est.gptq = engine::find_gptq_config(config, quantize ? &*quantize : nullptr);
  const std::string torch_dtype = config.is_object() ? config.value("torch_dtype", std::string()) : std::string();
  est.dtype = torch_dtype == "bfloat16" ? "BF16" : torch_dtype == "float32" ? "F32" : "F16";
  w.suggested_tag = engine::tag_for_dtype(est);

  uint64_t need = 0;
  for (const auto& f : w.files) {
    w.total_bytes += f.size;
    const bool fetched = std::any_of(w.fetched.begin(), w.fetched.end(), [&](const Fetched& x) { return x.staged.name == f.path; });
    if (fetched) continue;
    if (!f.lfs_sha256.empty() && fs::exists(store.blob_path("sha256:" + f.lfs_sha256))) continue;
    const uint64_t done =
        DownloadState::from_json(pulls.state_of(download_key(f, file_source(w.ref, w.info.sha, f.path)))).completed();
    need += f.size - std::min(f.size, done);
  }
  store.check_free_space(need);
}

// Phase 4, on the download thread.
void fetch_weights(ModelPullWork& w, Fetcher& fetch, BlobStore& store, HubPulls& pulls, const std::atomic<bool>& cancel) {
  const size_t n = w.files.size();
  for (size_t i = 0; i < n; ++i) {
    const HubFile& f = w.files[i];
    auto it = std::find_if(w.fetched.begin(), w.fetched.end(), [&](const Fetched& x) { return x.staged.name == f.path; });
    if (it != w.fetched.end()) {  // fetched in phase 2: report it as done
      json ev = progress_event("pulled " + f.path);
      ev["file"] = f.path, ev["file_index"] = i + 1, ev["n_files"] = n, ev["total"] = f.size, ev["completed"] = f.size;
      fetch.emit()(std::move(ev));
      continue;
    }
    w.fetched.push_back(fetch.hub_file(w.ref, w.info.sha, f, f.path, i + 1, n));
  }
  std::sort(w.fetched.begin(), w.fetched.end(), [](const Fetched& a, const Fetched& b) { return a.staged.name < b.staged.name; });
  fetch.emit()(progress_event("verifying the model"));
  std::vector<engine::SourceFile> copies;
  for (const auto& x : w.fetched) copies.push_back(engine::SourceFile{x.staged.name, x.staged.tmp_path, x.staged.size_bytes});
  for (const auto& x : w.fetched) w.out.staged.push_back(x.staged);
  w.out.info = engine::inspect_model_files(std::move(copies), cat(w.ref.repo_id, "@", w.info.sha));
  if (cancel.load()) fail(ErrorCode::cancelled, "pull cancelled");
  fetch.emit()(progress_event("writing blobs"));
  for (size_t i = 0; i < w.out.staged.size(); ++i) {
    store.publish(w.out.staged[i]);
    ++w.out.n_published;
    if (!w.out.staged[i].in_store) pulls.forget(w.fetched[i].key);
  }
  fault_point("hub.after_blobs");
}

// After a failure (io thread): pins of files that were already blobs go, partials stay for a
// resume when the error is one a retry can fix, and are deleted otherwise.
// (Published files are no longer partials; the caller releases pins.)
void clean_up_failed(Daemon& d, std::vector<Fetched>& fetched, ErrorCode code) {
  if (resumable(code)) return;
  for (auto& x : fetched) {
    std::error_code ec;
    if (x.staged.in_store || x.staged.tmp_path.empty() || !fs::exists(x.staged.tmp_path, ec)) continue;
    BlobStore::discard(x.staged);
    d.hub().forget(x.key);
  }
}

struct Outcome {
  bool ok = false;
  ErrorCode code = ErrorCode::internal;
  std::string error;
};

Outcome outcome_of(std::exception_ptr e) {
  Outcome o;
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    o.code = err.code(), o.error = err.what();
  } catch (const std::exception& err) {
    o.error = err.what();
  }
  return o;
}

// Drives one model pull and tells every follower of `s` how it goes (io thread).
awaitable<void> drive_model_pull(Daemon& d, std::shared_ptr<PullSession> s, HubRepoRef ref, protocol::ModelRef want) {
  auto exec = co_await asio::this_coro::executor;
  auto broadcast = [s](const json& ev) {
    for (auto& q : s->followers) q->push(ev);
  };
  Emit emit = [exec, broadcast](json ev) { asio::post(exec, [broadcast, ev = std::move(ev)] { broadcast(ev); }); };
  d.track(s->cancel);
  const int64_t job_id = d.registry().add_job("pull", ref.display(), json{{"source", ref.display()}}.dump());
  auto w = std::make_shared<ModelPullWork>();
  w->ref = ref;
  std::string target;
  bool reserved = false, committed = false, commit_attempted = false;
  std::exception_ptr error;
  json done;
  try {
    broadcast(progress_event("resolving " + ref.display()));
    w->client = std::make_shared<HubClient>(HubSettings::from_environment(d.config().hub_endpoint, d.config().hub_token_file));
    auto resolve = [w] { w->info = w->client->repo_info(w->ref); };
    co_await run_on_thread(std::move(resolve));
    const std::string pinned = cat(ref.repo_id, "@", w->info.sha);
    log_info("pull ", ref.display(), ": commit ", w->info.sha, " (job ", job_id, ")");

    std::optional<RegistryTag> current;
    for (auto& t : d.registry().list()) {
      if (t.source_kind == "hf-hub" && t.source == pinned && (want.name.empty() || t.name == want.name) &&
          (want.tag.empty() || t.tag == want.tag)) {
        current = std::move(t);
        break;
      }
    }
    if (current) {
      target = current->name + ":" + current->tag;
      done = {{"event", "done"}, {"status", "success"}, {"model", target}, {"revision", w->info.sha}, {"up_to_date", true},
              {"n_params", current->n_params}, {"dtype", current->dtype}, {"size", current->size_bytes},
              {"architecture", current->architecture}};
    } else {
      HubPulls& pulls = d.hub();
      BlobStore& store = d.blobs();
      auto cancel = s->cancel;
      auto metadata = [w, &pulls, &store, cancel, emit] {
        Fetcher fetch(pulls, store, *w->client, *cancel, emit);
        fetch_metadata(*w, fetch, store, pulls);
      };
      co_await run_on_thread(std::move(metadata));

      protocol::ModelRef ref_out = want;
      if (ref_out.name.empty()) ref_out.name = engine::sanitize_model_name(ref.repo_id.substr(ref.repo_id.find('/') + 1));
      if (ref_out.tag.empty()) ref_out.tag = w->suggested_tag;
      std::string why;
      if (!protocol::is_valid_name(ref_out.name, &why) || !protocol::is_valid_tag(ref_out.tag, &why)) {
        fail(ErrorCode::invalid_argument, "cannot derive a valid model name from ", ref.repo_id, " (", why, "); pass one with --name");
      }
      target = ref_out.name + ":" + ref_out.tag;
      if (auto t = d.registry().find(ref_out.name, ref_out.tag)) {
        fail(ErrorCode::conflict, "model ", target, " already exists (from ", t->source, "); remove it first (gptqctl rm ",
             target, ") or choose another name with --name");
      }
      if (!d.pulls_in_flight().insert(target).second) fail(ErrorCode::conflict, "model ", target, " is already being pulled");
      reserved = true;

      json files = json::array();
      for (const auto& f : w->files) files.push_back({{"file", f.path}, {"total", f.size}});
      s->plan = {{"event", "progress"}, {"status", "pulling " + pinned}, {"model", target}, {"revision", w->info.sha},
                 {"total", w->total_bytes}, {"n_files", w->files.size()}, {"files", std::move(files)}};
      broadcast(s->plan);

      auto weights = [w, &pulls, &store, cancel, emit] {
        Fetcher fetch(pulls, store, *w->client, *cancel, emit);
        fetch_weights(*w, fetch, store, pulls, *cancel);
      };
      co_await run_on_thread(std::move(weights));

      RegistryTag t = handlers::tag_from_import(w->out, ref_out, "hf-hub", pinned);
      commit_attempted = true;
      d.registry().add(t);
      committed = true;
      done = {{"event", "done"}, {"status", "success"}, {"model", target}, {"revision", w->info.sha},
              {"n_params", w->out.info.n_params}, {"dtype", w->out.info.dtype}, {"size", w->out.info.size_bytes},
              {"architecture", w->out.info.config.architecture}};
    }
  } catch (...) {
    error = std::current_exception();
  }

  Outcome o;
  if (error) {
    o = outcome_of(error);
    clean_up_failed(d, w->fetched, o.code);
    // Pins taken for blobs the store already had, on files never counted as published.
    for (size_t i = 0; i < w->fetched.size(); ++i) {
      const bool counted = i < w->out.n_published;
      if (w->fetched[i].staged.in_store && !counted) d.blobs().unpin(w->fetched[i].staged.digest);
    }
  } else {
    o.ok = true;
  }
  handlers::release_import(d, w->out, committed, commit_attempted && !committed && o.code == ErrorCode::io);
  w->fetched.clear();  // releases the file locks
  if (reserved) d.pulls_in_flight().erase(target);
  d.untrack(s->cancel);
  d.registry().finish_job(job_id, o.ok ? "done" : (o.code == ErrorCode::cancelled ? "cancelled" : "failed"), o.error);
  if (o.ok) {
    log_info("pulled ", ref.display(), " as ", target, done.contains("up_to_date") ? " (already up to date)" : "", " (job ", job_id, ")");
    s->final_event = done;
  } else {
    log_warn("pull of ", ref.display(), " failed (job ", job_id, "): ", o.error);
    s->final_event = {{"event", "error"}, {"error", o.error}};
  }
  s->ok = o.ok;
  s->final_code = o.code;
  d.hub().sessions().erase(s->key);
  broadcast(s->final_event);
  for (auto& q : s->followers) q->close();
}

}  // namespace

std::vector<HubFile> select_model_files(const std::vector<HubFile>& listed, const std::string& repo_display,
                                        const std::set<std::string>* index_shards) {
  std::vector<HubFile> out;
  std::vector<std::string> pickles, ggufs;
  bool has_config = false, has_weights = false;
  for (const auto& f : listed) {
    if (f.path.find('/') != std::string::npos) continue;  // only the top level is the model
    const bool weights = ends_with(f.path, ".safetensors") && (!index_shards || index_shards->contains(f.path));
    if (engine::is_pickle_name(f.path)) pickles.push_back(f.path);
    if (ends_with(f.path, ".gguf")) ggufs.push_back(f.path);
    if (f.path == "config.json") has_config = true;
    if (weights) has_weights = true;
    if (weights || engine::is_hf_side_file(f.path)) out.push_back(f);
  }
  if (index_shards) {
    for (const auto& shard : *index_shards) {
      if (!std::any_of(out.begin(), out.end(), [&](const HubFile& f) { return f.path == shard; })) {
        fail(ErrorCode::invalid_model, repo_display, ": model.safetensors.index.json names ", shard, ", which the repo does not have");
      }
    }
  }
  if (!has_weights && !pickles.empty()) {
    fail(ErrorCode::unsupported, repo_display, " has only pickle weights (", listing(pickles),
         "). gptqd never downloads pickles: loading one can run arbitrary code. Use a revision or a repo with "
         ".safetensors weights (the Hub often has a safetensors conversion as a pull request: ORG/NAME@refs/pr/N), "
         "or convert the model yourself and pull the folder");
  }
  if (!has_weights && !ggufs.empty()) {
    fail(ErrorCode::unsupported, repo_display, " holds GGUF files (", listing(ggufs),
         "), not a transformers model: download the .gguf you want and pull the file (gptqctl pull FILE.gguf)");
  }
  if (!has_config) fail(ErrorCode::invalid_model, repo_display, " has no config.json: it is not a transformers model repo");
  if (!has_weights) fail(ErrorCode::invalid_model, repo_display, " has no .safetensors weights");
  // Small files first: the metadata settles the plan before the weights start.
  std::stable_sort(out.begin(), out.end(), [](const HubFile& a, const HubFile& b) {
    return ends_with(a.path, ".safetensors") < ends_with(b.path, ".safetensors");
  });
  return out;
}

std::string download_key(const HubFile& f, const std::string& fallback_id) {
  if (!f.lfs_sha256.empty()) return "lfs-" + f.lfs_sha256;
  if (!f.blob_id.empty()) return "git-" + f.blob_id;
  return "id-" + hex_sha256(fallback_id);
}

// ---- HubPulls -------------------------------------------------------------------------------------

HubPulls::HubPulls(Daemon& d) : d_(d) {
  for (const auto& dl : d.registry().downloads()) states_[dl.key] = dl.state_json;
}

std::string HubPulls::state_of(const std::string& key) {
  std::lock_guard lock(mutex_);
  auto it = states_.find(key);
  return it == states_.end() ? std::string() : it->second;
}

void HubPulls::save_state(const std::string& key, const std::string& source, uint64_t size, const std::string& state_json) {
  {
    std::lock_guard lock(mutex_);
    states_[key] = state_json;
  }
  RegistryDownload dl{key, source, size, state_json, 0};
  asio::post(d_.io(), [&d = d_, dl] {
    try {
      d.registry().put_download(dl);
    } catch (const std::exception& e) {
      log_warn("cannot record the progress of ", dl.source, ": ", e.what());
    }
  });
}

void HubPulls::forget(const std::string& key) {
  {
    std::lock_guard lock(mutex_);
    states_.erase(key);
  }
  asio::post(d_.io(), [&d = d_, key] {
    try {
      d.registry().remove_download(key);
    } catch (const std::exception& e) {
      log_warn("cannot forget download ", key, ": ", e.what());
    }
  });
}

HubPulls::FileLock HubPulls::lock_file(const std::string& key, const std::atomic<bool>& cancel,
                                       const std::function<void()>& on_wait) {
  std::unique_lock lock(mutex_);
  bool told = false;
  while (locked_.contains(key)) {
    if (cancel.load()) fail(ErrorCode::cancelled, "pull cancelled");
    if (!told && on_wait) {
      told = true;
      lock.unlock();
      on_wait();
      lock.lock();
      continue;
    }
    released_.wait_for(lock, std::chrono::milliseconds(200));
  }
  locked_.insert(key);
  return FileLock(this, key);
}

void HubPulls::FileLock::release() noexcept {
  if (!owner_) return;
  {
    std::lock_guard lock(owner_->mutex_);
    owner_->locked_.erase(key_);
  }
  owner_->released_.notify_all();
  owner_ = nullptr;
}

// ---- handlers -----------------------------------------------------------------------------------

awaitable<void> pull_from_hub(Daemon& d, const protocol::PullRequest& r, ResponseWriter& w) {
  HubRepoRef ref = HubRepoRef::parse(r.source);
  if (ref.kind == RepoKind::dataset) {
    fail(ErrorCode::invalid_argument, "'", r.source, "' is a dataset repo: fetch its files with gptqctl dataset pull");
  }
  if (!r.revision.empty()) {
    if (r.source.find('@') != std::string::npos && ref.revision != r.revision) {
      fail(ErrorCode::invalid_argument, "two revisions: '@", ref.revision, "' in the source and \"revision\": \"", r.revision, "\"");
    }
    ref = HubRepoRef::parse(ref.repo_id + "@" + r.revision);
  }
  protocol::ModelRef want;
  if (!r.name.empty()) want = handlers::parse_ref(r.name);
  if (d.stopping()) fail(ErrorCode::busy, "gptqd is shutting down");

  const std::string key = ref.display() + " " + r.name;
  std::shared_ptr<PullSession> s;
  bool joined = false;
  if (auto it = d.hub().sessions().find(key); it != d.hub().sessions().end()) {
    s = it->second;
    joined = true;
  } else {
    s = std::make_shared<PullSession>();
    s->key = key;
    d.hub().sessions().emplace(key, s);
    asio::co_spawn(d.io(), drive_model_pull(d, s, ref, want), asio::detached);
  }
  auto exec = co_await asio::this_coro::executor;
  auto q = std::make_shared<AsyncQueue<json>>(exec);
  s->followers.push_back(q);
  ++s->n_connected;
  if (joined) {
    log_info("pull ", ref.display(), ": another client follows the pull in progress");
    if (!s->plan.is_null()) q->push(s->plan);
    q->push(progress_event("joined the pull of " + ref.display() + " already in progress"));
  }
  bool connected = true;
  if (r.stream) connected = co_await w.begin_stream(protocol::kNdjsonType);
  while (auto ev = co_await q->pop()) {
    if (!r.stream || !connected) continue;
    if (!co_await w.write_chunk(ev->dump() + "\n")) {
      connected = false;
      // The last client gone cancels the pull, as with Ollama; its partials stay for a resume.
      if (--s->n_connected == 0) s->cancel->store(true);
    }
  }
  if (r.stream) {
    if (connected) co_await w.end_stream();
  } else if (s->ok) {
    co_await w.send_json(http::status::ok, s->final_event);
  } else {
    co_await w.send_error(handlers::status_for(s->final_code), s->final_event.value("error", std::string("pull failed")));
  }
}

awaitable<void> handle_dataset_pull(Daemon& d, Request& req, ResponseWriter& w) {
  auto r = handlers::parse_request<protocol::DatasetPullRequest>(req);
  const bool is_url = r.source.rfind("http://", 0) == 0 || r.source.rfind("https://", 0) == 0;
  HubRepoRef ref;
  std::vector<std::pair<std::string, std::string>> files;  // (repo path or URL, dataset file name)
  std::string default_name;
  if (is_url) {
    if (!r.files.empty()) fail(ErrorCode::invalid_argument, "a URL is one file; \"files\" names files of a Hub dataset repo");
    if (!r.revision.empty()) fail(ErrorCode::invalid_argument, "\"revision\" applies to Hub dataset repos, not to URLs");
    const std::string& url = r.source;
    if (url.size() > 2048 || std::any_of(url.begin(), url.end(), [](char ch) { return static_cast<unsigned char>(ch) <= 0x20 || ch == 0x7f; })) {
      fail(ErrorCode::invalid_argument, "the URL is too long or has spaces or control characters");
    }
    const size_t host_start = url.find("//") + 2;
    const size_t path_start = url.find('/', host_start);
    const std::string authority = url.substr(host_start, path_start == std::string::npos ? std::string::npos : path_start - host_start);
    if (authority.empty()) fail(ErrorCode::invalid_argument, "the URL has no host: ", url);
    if (authority.find('@') != std::string::npos) {
      fail(ErrorCode::invalid_argument, "the URL carries credentials (user@host); gptqd does not store them: use a URL without");
    }
    std::string path = path_start == std::string::npos ? std::string() : url.substr(path_start);
    path = path.substr(0, path.find_first_of("?#"));
    std::string base = path.substr(path.find_last_of('/') + 1);
    if (base.empty()) fail(ErrorCode::invalid_argument, "the URL does not end in a file name: ", url);
    if (!r.sha256.empty() && (r.sha256.size() != 64 || r.sha256.find_first_not_of("0123456789abcdef") != std::string::npos)) {
      fail(ErrorCode::invalid_argument, "\"sha256\" must be 64 lower-case hex digits");
    }
    files.emplace_back(url, engine::sanitize_model_name(base).empty() ? "data.txt" : base);
    default_name = base.substr(0, base.find('.'));
  } else {
    if (!r.sha256.empty()) fail(ErrorCode::invalid_argument, "\"sha256\" applies to URLs; the Hub lists each file's checksum itself");
    ref = HubRepoRef::parse(r.source.rfind("datasets/", 0) == 0 ? r.source : "datasets/" + r.source);
    if (!r.revision.empty()) ref = HubRepoRef::parse("datasets/" + ref.repo_id + "@" + r.revision);
    if (r.files.empty()) {
      fail(ErrorCode::invalid_argument, "name the files to fetch from ", ref.display(), ": gptqctl dataset pull ",
           ref.repo_id, " FILE...");
    }
    for (const auto& f : r.files) {
      try {
        check_repo_file_name(f);
      } catch (const Error&) {
        fail(ErrorCode::invalid_argument, "'", f, "' is not a file path inside a repo");
      }
      files.emplace_back(f, f.substr(f.find_last_of('/') + 1));
    }
    default_name = ref.repo_id.substr(ref.repo_id.find('/') + 1);
  }
  std::set<std::string> seen;
  for (const auto& [src, name] : files) {
    if (!seen.insert(name).second) fail(ErrorCode::invalid_argument, "two files are named ", name, " in the dataset");
  }
  const std::string name = r.name.empty() ? engine::sanitize_model_name(default_name) : r.name;
  std::string why;
  if (!protocol::is_valid_name(name, &why)) {
    fail(ErrorCode::invalid_argument, "invalid dataset name '", name, "': ", why, r.name.empty() ? "; pass one with --name" : "");
  }
  if (d.registry().find_dataset(name)) fail(ErrorCode::conflict, "dataset ", name, " already exists");
  if (d.stopping()) fail(ErrorCode::busy, "gptqd is shutting down");

  auto exec = co_await asio::this_coro::executor;
  auto events = std::make_shared<AsyncQueue<json>>(exec);
  auto cancel = std::make_shared<std::atomic<bool>>(false);
  Emit emit = [exec, events](json ev) { asio::post(exec, [events, ev = std::move(ev)]() mutable { events->push(std::move(ev)); }); };
  struct Work {
    std::vector<Fetched> fetched;
    size_t n_published = 0;
  };
  auto work = std::make_shared<Work>();
  auto error = std::make_shared<std::exception_ptr>();
  HubPulls& pulls = d.hub();
  BlobStore& store = d.blobs();
  HubSettings settings = HubSettings::from_environment(d.config().hub_endpoint, d.config().hub_token_file);
  d.track(cancel);
  const int64_t job_id = d.registry().add_job("pull", "dataset " + name, json{{"source", is_url ? r.source : ref.display()}}.dump());
  auto fetch_all = [work, error, files, ref, is_url, expected = r.sha256, settings, &pulls, &store, cancel, emit, events, exec] {
    try {
      HubClient client(settings);
      Fetcher fetch(pulls, store, client, *cancel, emit);
      if (is_url) {
        work->fetched.push_back(fetch.url_file(files[0].first, files[0].second, expected));
      } else {
        emit(progress_event("resolving " + ref.display()));
        const HubRepoInfo info = client.repo_info(ref);
        std::vector<std::string> available;
        for (const auto& f : info.files) available.push_back(f.path);
        for (size_t i = 0; i < files.size(); ++i) {
          const HubFile* f = find_file(info.files, files[i].first);
          if (!f) {
            fail(ErrorCode::not_found, files[i].first, " is not in ", ref.display(), " (it has: ", listing(available, 12), ")");
          }
          work->fetched.push_back(fetch.hub_file(ref, info.sha, *f, files[i].second, i + 1, files.size()));
        }
      }
      emit(progress_event("checking the text"));
      for (const auto& x : work->fetched) {
        engine::dataset_rows(x.staged.name, handlers::read_whole_file(x.staged.tmp_path));
      }
      if (cancel->load()) fail(ErrorCode::cancelled, "pull cancelled");
      for (auto& x : work->fetched) {
        store.publish(x.staged);
        ++work->n_published;
        if (!x.staged.in_store) pulls.forget(x.key);
      }
    } catch (...) {
      *error = std::current_exception();
    }
    asio::post(exec, [events] { events->close(); });
  };
  std::thread(std::move(fetch_all)).detach();

  bool connected = true;
  if (r.stream) {
    connected = co_await w.begin_stream(protocol::kNdjsonType);
    json first = progress_event("pulling dataset " + name);
    first["dataset"] = name, first["n_files"] = files.size();
    if (connected) connected = co_await w.write_chunk(first.dump() + "\n");
  }
  while (auto ev = co_await events->pop()) {
    if (r.stream && connected && !co_await w.write_chunk(ev->dump() + "\n")) {
      connected = false;
      cancel->store(true);
    }
  }
  d.untrack(cancel);

  Outcome o;
  uint64_t bytes = 0;
  std::vector<RegistryFile> rows;
  if (*error) {
    o = outcome_of(*error);
  } else {
    for (const auto& x : work->fetched) {
      rows.push_back(RegistryFile{x.staged.name, x.staged.digest, x.staged.size_bytes});
      bytes += x.staged.size_bytes;
    }
    try {
      d.registry().add_dataset(name, rows);
      o.ok = true;
    } catch (const Error& e) {
      o.code = e.code(), o.error = e.what();
    }
  }
  if (!o.ok) clean_up_failed(d, work->fetched, o.code);
  const std::set<std::string> known = o.ok ? std::set<std::string>{} : d.registry().blob_digests();
  for (size_t i = 0; i < work->fetched.size(); ++i) {
    const StagedFile& s = work->fetched[i].staged;
    if (i < work->n_published || s.in_store) {
      store.unpin(s.digest);
      if (!o.ok && !known.contains(s.digest)) store.remove_unless_pinned(s.digest);
    }
  }
  work->fetched.clear();
  d.registry().finish_job(job_id, o.ok ? "done" : (o.code == ErrorCode::cancelled ? "cancelled" : "failed"), o.error);
  json done;
  if (o.ok) {
    log_info("dataset ", name, " pulled from ", is_url ? r.source : ref.display(), " (", rows.size(), " file(s), ", bytes, " bytes)");
    done = {{"event", "done"}, {"status", "success"}, {"dataset", name}, {"files", rows.size()}, {"size", bytes}};
  } else {
    log_warn("dataset pull of ", is_url ? r.source : ref.display(), " failed (job ", job_id, "): ", o.error);
  }
  if (r.stream) {
    if (!connected) co_return;
    json last = o.ok ? done : json{{"event", "error"}, {"error", o.error}};
    std::string line = last.dump() + "\n";
    co_await w.write_chunk(std::move(line));
    co_await w.end_stream();
  } else if (o.ok) {
    co_await w.send_json(http::status::ok, done);
  } else {
    co_await w.send_error(handlers::status_for(o.code), o.error);
  }
}

}  // namespace gptqd::daemon
