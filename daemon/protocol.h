// SPDX-License-Identifier: Apache-2.0
// The whole socket API in one place: every request and event struct with its JSON mapping,
// model-name rules and the default socket path (daemon layer; gptqctl links only this).
//
// Transport: HTTP/1.1 over a Unix stream socket. Errors are `{"error": "..."}` with a 4xx/5xx
// status. Long operations stream NDJSON events (application/x-ndjson), one JSON object per line:
//   {"event":"progress","status":"copying model.safetensors","digest":"sha256:..","total":N,"completed":M}
//   {"event":"done","status":"success","model":"smollm2-135m-instruct:q4_1"}
//   {"event":"error","error":"..."}
// ("status"/"digest"/"total"/"completed" and "error" are the fields Ollama's clients read.)
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace gptqd::protocol {

inline constexpr std::string_view kNdjsonType = "application/x-ndjson";
inline constexpr std::string_view kJsonType = "application/json";

// ---- names -----------------------------------------------------------------------------------
// A model reference is NAME[:TAG]. NAME: 1-96 characters of [a-z0-9._-] (upper case is folded
// to lower case), starting and ending with a letter or digit, with no "--" or ".." (Hub rules).
// TAG: 1-64 characters of the same set. An empty tag means the model's default tag (the variant
// as it was pulled).
struct ModelRef {
  std::string name;
  std::string tag;  // empty = default
  std::string str() const { return tag.empty() ? name : name + ":" + tag; }
};

// Parses and validates `text`; on failure returns nullopt and sets `why` to a one-line reason.
std::optional<ModelRef> parse_model_ref(std::string_view text, std::string* why);
bool is_valid_name(std::string_view name, std::string* why = nullptr);
bool is_valid_tag(std::string_view tag, std::string* why = nullptr);

// $GPTQD_SOCKET is gptqctl's override; the daemon's default is
// $RUNTIME_DIRECTORY/gptqd.sock (systemd), else $XDG_RUNTIME_DIR/gptqd.sock, else
// /tmp/gptqd-<uid>/gptqd.sock. Both binaries use this one function.
std::filesystem::path default_socket_path();

// "135M", "1.1B", "6.74B": the parameter_size style of Ollama's /api/tags.
std::string format_param_count(uint64_t n_params);

// ---- requests --------------------------------------------------------------------------------
// Request parsers throw RequestError naming the field (the daemon answers 400 with it).
struct RequestError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// POST /api/pull. "model" is the source (Ollama's field name): an absolute path to a .gguf file
// or to a Hugging Face-format folder (gptqctl makes relative paths absolute), or org/repo[@rev]
// (the Hub; not yet). "name" overrides the registered NAME[:TAG].
struct PullRequest {
  std::string source;
  std::string name;      // optional NAME or NAME:TAG
  std::string revision;  // optional, Hub only
  bool stream = true;
  static PullRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// POST /api/show and DELETE /api/delete: {"model": "NAME[:TAG]"} (Ollama also sends "name").
struct ModelRequest {
  std::string model;
  static ModelRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// Ollama's "options" object. Unset fields take the engine's defaults. Ollama options gptqd does
// not implement but that clients send routinely (num_thread, num_gpu, mirostat, ...) are
// accepted and ignored; any other unknown key is an error naming it.
struct GenOptions {
  std::optional<double> temperature, top_p, min_p, repeat_penalty, presence_penalty, frequency_penalty;
  std::optional<int64_t> top_k, repeat_last_n, num_predict, num_ctx;
  std::optional<uint64_t> seed;
  std::optional<std::vector<std::string>> stop;
  static GenOptions from_json(const nlohmann::json& j, const std::string& where);
  nlohmann::json to_json() const;
};

// keep_alive: seconds as a number, or a duration string ("5m", "1h30m", "45s", "0", "-1");
// negative = keep loaded forever. nullopt when absent.
std::optional<int64_t> parse_keep_alive(const nlohmann::json& j);

struct ChatMessageJson {
  std::string role;
  std::string content;
};

// POST /api/generate
struct GenerateRequest {
  std::string model;
  std::string prompt;
  std::string system;
  bool raw = false;
  bool stream = true;
  bool truncate = false;                  // drop the oldest prompt tokens instead of a 400
  bool allow_failed_quality = false;      // serve a tag that failed its quantization quality check
  std::optional<int64_t> keep_alive;
  GenOptions options;
  static GenerateRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// POST /api/chat
struct ChatRequest {
  std::string model;
  std::vector<ChatMessageJson> messages;
  bool stream = true;
  bool truncate = false;                  // drop the oldest prompt tokens instead of a 400
  bool allow_failed_quality = false;      // serve a tag that failed its quantization quality check
  std::optional<int64_t> keep_alive;
  GenOptions options;
  static ChatRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// POST /v1/chat/completions and POST /v1/completions (OpenAI shapes; n must be 1).
struct OpenAiRequest {
  bool chat = true;
  std::string model;
  std::vector<ChatMessageJson> messages;  // chat
  std::string prompt;                     // completions
  bool stream = false;
  bool allow_failed_quality = false;
  GenOptions options;                     // max_tokens -> num_predict, temperature, top_p, stop, seed, penalties
  static OpenAiRequest from_json(const nlohmann::json& j, bool chat);
};

// POST /api/eval: perplexity of a model on a dataset (registered NAME, or an absolute file path).
struct EvalRequest {
  std::string model;
  std::string dataset = "wikitext2";
  int64_t seqlen = 2048;
  int64_t max_windows = 0;                // 0: all windows
  bool stream = true;
  static EvalRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// POST /api/quantize: a GPTQ (or RTN) job producing a new tag of `model`. Defaults follow the
// reference implementations (gptq-reference.md A.10, A.11).
struct QuantizeRequest {
  std::string model;                      // NAME[:TAG], an HF safetensors model
  std::string method = "gptq";            // "gptq" | "rtn"
  int bits = 4;                           // 2, 3, 4, 8
  int64_t group_size = 128;               // > 0 or -1
  bool desc_act = false;                  // act-order
  bool sym = true;
  bool static_groups = false;
  double damp_percent = 0.01;             // 0 < d < 1
  std::string calib;                      // dataset NAME or absolute file path (gptq: required)
  int64_t samples = 128;
  int64_t seqlen = 2048;
  uint64_t seed = 0;
  std::string tag;                        // default gptq-<bits>b-g<group>[-act] (rtn-... for rtn)
  std::string device = "auto";            // auto | cpu | cuda:N
  std::string eval;                       // dataset NAME or path for the quality report; "": held-out
                                          // tail of the calibration text
  int64_t eval_windows = 4;               // 0: skip the perplexity check
  int64_t eval_seqlen = 512;
  double max_ppl_ratio = 1.5;             // result ppl / source ppl above this: failed-quality
  bool stream = false;                    // true: follow the job's progress as NDJSON
  static QuantizeRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
  std::string default_tag() const;
};

// POST /api/datasets: register text files (plain text, or JSONL with a "text" field) as NAME.
struct DatasetAddRequest {
  std::string name;
  std::vector<std::string> files;         // absolute paths
  static DatasetAddRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// POST /api/datasets/pull: fetch text/JSONL files from a Hub dataset repo ("org/name[@rev]",
// "datasets/org/name") or one plain http(s) URL, and register them as NAME. Streams NDJSON like
// /api/pull.
struct DatasetPullRequest {
  std::string source;                     // Hub dataset repo or URL
  std::vector<std::string> files;         // files of the repo (required for a repo; none for a URL)
  std::string name;                       // optional: default from the repo name or the URL's file
  std::string revision;                   // optional, Hub only
  std::string sha256;                     // optional, URL only: expected sha256 hex of the file
  bool stream = true;
  static DatasetPullRequest from_json(const nlohmann::json& j);
  nlohmann::json to_json() const;
};

// ---- responses -------------------------------------------------------------------------------
struct FileEntry {
  std::string name;       // file name inside the model folder
  std::string digest;     // "sha256:<hex>"
  uint64_t size_bytes = 0;
};

// One name:tag of the registry, as /api/tags lists it and /api/show details it.
struct ModelEntry {
  std::string name;
  std::string tag;
  bool is_default = false;       // NAME without a tag means this one
  std::string format;            // "gguf" | "safetensors"
  std::string architecture;      // "llama" | "mistral" | "qwen2"
  uint64_t n_params = 0;
  std::string dtype;             // "Q4_1", "F16", "GPTQ-4bit-g128", ...
  uint64_t size_bytes = 0;       // sum of the file sizes
  std::string source;            // what was pulled: path or org/repo@rev
  std::string source_kind;       // "gguf-file" | "hf-folder" | "hf-hub" | "quantized"
  std::string digest;            // "sha256:<hex>" of the manifest (file name -> digest)
  int64_t created_at = 0;        // unix seconds
  std::string state = "ready";   // "ready" | "failed-quality" (not served unless asked for)
  nlohmann::json quality;        // quantized tags: the quality report (null otherwise)
  nlohmann::json config;         // ModelConfig::to_json() (show only)
  std::vector<FileEntry> files;  // (show only)

  std::string ref() const { return name + ":" + tag; }
  // Ollama-compatible fields (name, model, size, digest, modified_at, details{...}) plus ours.
  nlohmann::json to_json(bool detailed) const;
  // RequestError when `j` is not an object or a field has the wrong type.
  static ModelEntry from_json(const nlohmann::json& j);
};

// The text a manifest digest is taken over: "name digest size\n" lines sorted by name. The
// daemon stores sha256(manifest_text) as the model's digest.
std::string manifest_text(const std::vector<FileEntry>& files);

std::string rfc3339_utc(int64_t unix_seconds);

}  // namespace gptqd::protocol
