// SPDX-License-Identifier: Apache-2.0
// The GPTQ checkpoint writer (gptq-reference.md Part B): plan the shards from the source's shapes,
// then stream the tensors shard by shard, then the JSON and side files (quantizer layer).
#include "quantizer/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string_view>

#include "engine/atomic_file.h"
#include "engine/error.h"
#include "engine/json_strict.h"
#include "engine/mapped_file.h"
#include "engine/safetensors.h"
#include "kernels/cpu/half.h"
#include "quantizer/pack.h"

namespace gptqd::quantizer {
namespace {

namespace fs = std::filesystem;
using engine::fsync_dir;
using engine::write_all;
using engine::write_file_atomic;
using engine::StDtype;
using engine::StTensor;
using nlohmann::json;

// ---- file system helpers (every failure is Error(no_space | io) naming the path) --------------

void write_json_atomic(const fs::path& path, const json& j) {
  const std::string text = j.dump(2) + "\n";
  write_file_atomic(path, [&](int fd) { return write_all(fd, text.data(), text.size()); });
}

// Copies a source side file (tokenizer, generation config, ...) byte for byte.
void copy_file_synced(const fs::path& from, const fs::path& to) {
  const int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) fail(ErrorCode::io, "cannot read ", from.string(), ": ", std::strerror(errno));
  int read_err = 0;
  try {
    write_file_atomic(to, [&](int fd) {
      std::vector<char> buf(1 << 20);
      for (;;) {
        const ssize_t r = ::read(in, buf.data(), buf.size());
        if (r < 0) {
          if (errno == EINTR) continue;
          read_err = errno;
          return EIO;
        }
        if (r == 0) return 0;
        if (int err = write_all(fd, buf.data(), static_cast<size_t>(r))) return err;
      }
    });
  } catch (...) {
    ::close(in);
    if (read_err) fail(ErrorCode::io, "cannot read ", from.string(), ": ", std::strerror(read_err));
    throw;
  }
  ::close(in);
}

// ---- tensors -----------------------------------------------------------------------------------

struct OutTensor {
  std::string name;
  StDtype dtype = StDtype::F16;
  std::vector<int64_t> shape;
  std::vector<std::byte> data;
};

template <typename T>
std::vector<std::byte> to_bytes(const std::vector<T>& v) {
  std::vector<std::byte> out(v.size() * sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), v.data(), out.size());
  return out;
}

// A source tensor as fp16 under its own name. fp16 is copied bit for bit; F32/BF16 are rounded
// to nearest even. A finite value beyond the fp16 range would turn into inf and silently break
// the model, so it is refused.
OutTensor to_f16(const StTensor& t) {
  OutTensor out{t.name, StDtype::F16, t.shape, {}};
  if (t.dtype == StDtype::F16) {
    out.data.assign(t.bytes.begin(), t.bytes.end());
    return out;
  }
  if (t.dtype != StDtype::F32 && t.dtype != StDtype::BF16) {
    fail(ErrorCode::unsupported, "tensor ", t.name, " has dtype ", engine::to_string(t.dtype),
         "; the checkpoint writer converts F16, BF16 and F32 tensors to F16");
  }
  // Element by element, without an fp32 copy: an embedding can be gigabytes.
  out.data.resize(t.n_elements * 2);
  const std::byte* src = t.bytes.data();
  for (uint64_t i = 0; i < t.n_elements; ++i) {
    float f;
    if (t.dtype == StDtype::F32) {
      std::memcpy(&f, src + 4 * i, 4);  // no alignment assumed: other writers may not align
    } else {
      uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      f = kernels::cpu::bf16_to_f32(b);
    }
    const uint16_t h = kernels::cpu::f32_to_f16(f);
    if (std::isfinite(f) && (h & 0x7fffu) == 0x7c00u) {
      fail(ErrorCode::unsupported, "tensor ", t.name, ": value ", f, " at element ", i,
           " is outside the fp16 range; GPTQ checkpoints store unquantized tensors as fp16");
    }
    std::memcpy(out.data.data() + 2 * i, &h, 2);
  }
  return out;
}

// Python's str() of a bool and a float: AutoGPTQ writes its __metadata__ values with str().
std::string py_str(bool v) { return v ? "True" : "False"; }
std::string py_str(double v) {
  char buf[64];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::to_string(v);
}

// ---- the plan ----------------------------------------------------------------------------------

// What goes into the shards, in file order: one unquantized tensor, or all tensors of one
// quantized linear (kept together in one shard, gptq-reference.md B.9).
struct Unit {
  std::string name;                  // the tensor name, or the linear's prefix
  const StTensor* tensor = nullptr;  // unquantized: the source tensor
  bool linear = false;
  int64_t N = 0, K = 0;              // linear: W [N, K] in the source
  const StTensor* bias = nullptr;    // linear: the source's `<prefix>.bias`, if any
  uint64_t n_bytes = 0;              // tensor bytes this unit adds to its shard
  // Sort key: embeddings first, then each layer (its other tensors, then its linears in
  // q, k, v, o, gate, up, down order), then the rest (final norm, lm_head).
  int64_t section = 0;
  int64_t rank = 0;
};

int64_t layer_of(std::string_view name) {
  constexpr std::string_view kLayers = "model.layers.";
  if (!name.starts_with(kLayers)) return -1;
  name.remove_prefix(kLayers.size());
  int64_t i = 0;
  auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), i);
  if (ec != std::errc() || p == name.data() + name.size() || *p != '.') return -1;
  return i;
}

int64_t section_of(std::string_view name) {
  if (name.starts_with("model.embed_tokens.")) return -1;
  const int64_t layer = layer_of(name);
  return layer >= 0 ? layer : std::numeric_limits<int64_t>::max();
}

int packing_block(int bits) { return bits == 3 ? 32 : 32 / bits; }

void check_spec(const CheckpointSpec& spec) {
  const engine::GptqConfig& c = spec.config;
  if (c.bits != 2 && c.bits != 3 && c.bits != 4 && c.bits != 8) {
    fail(ErrorCode::invalid_argument, "checkpoint: bits = ", c.bits, " (supported: 2, 3, 4, 8)");
  }
  if (c.group_size <= 0 && c.group_size != -1) {
    fail(ErrorCode::invalid_argument, "checkpoint: group_size = ", c.group_size, " (must be > 0 or -1)");
  }
  if (c.checkpoint_format != "gptq" && c.checkpoint_format != "gptq_v2") {
    fail(ErrorCode::invalid_argument, "checkpoint: checkpoint_format \"", c.checkpoint_format,
         "\" (supported: gptq, gptq_v2)");
  }
  // v1 stores zero - 1, so an asymmetric zero of 0 cannot be stored (gptq-reference.md B.5).
  if (!c.sym && c.checkpoint_format != "gptq_v2") {
    fail(ErrorCode::invalid_argument,
         "checkpoint: asymmetric quantization (sym = false) needs checkpoint_format \"gptq_v2\": the v1 format "
         "stores zero - 1 and cannot represent a zero point of 0");
  }
  if (c.lm_head) fail(ErrorCode::invalid_argument, "checkpoint: a quantized lm_head is not supported");
  if (!(c.damp_percent > 0.0 && c.damp_percent < 1.0)) {
    fail(ErrorCode::invalid_argument, "checkpoint: damp_percent = ", c.damp_percent, " (must be in (0, 1))");
  }
  if (spec.max_shard_bytes == 0) fail(ErrorCode::invalid_argument, "checkpoint: max_shard_bytes must be > 0");
  if (spec.quantizer_name.empty()) fail(ErrorCode::invalid_argument, "checkpoint: quantizer_name is empty");
}

// The quantized linear must be exactly what the plan says (shapes from the source weight, bits and
// groups from the config) and must hold only storable values: Error(invalid_argument) otherwise.
void check_linear(const QuantizedLinear& q, const Unit& u, const engine::GptqConfig& c) {
  const std::string& p = u.name;
  auto mismatch = [&](const char* field, const auto& expected, const auto& actual) {
    fail(ErrorCode::invalid_argument, p, ": quantized linear has ", field, " = ", actual, ", expected ", expected);
  };
  if (q.N != u.N) mismatch("N (out_features)", u.N, q.N);
  if (q.K != u.K) mismatch("K (in_features)", u.K, q.K);
  if (q.bits != c.bits) mismatch("bits", c.bits, q.bits);
  if (q.group_size != c.group_size) mismatch("group_size", c.group_size, q.group_size);
  if (q.sym != c.sym) mismatch("sym", c.sym ? "true" : "false", q.sym ? "true" : "false");
  const int64_t G = c.n_groups(u.K);
  const auto NK = static_cast<size_t>(u.N * u.K), NG = static_cast<size_t>(u.N * G);
  if (q.codes.size() != NK) mismatch("codes.size()", cat(NK, " ([N, K] = [", u.N, ", ", u.K, "])"), q.codes.size());
  if (q.scales.size() != NG) mismatch("scales.size()", cat(NG, " ([N, G] = [", u.N, ", ", G, "])"), q.scales.size());
  if (q.zeros.size() != NG) mismatch("zeros.size()", cat(NG, " ([N, G] = [", u.N, ", ", G, "])"), q.zeros.size());
  if (q.g_idx.size() != static_cast<size_t>(u.K)) mismatch("g_idx.size()", u.K, q.g_idx.size());

  const int maxq = (1 << c.bits) - 1;
  for (size_t i = 0; i < NK; ++i) {
    if (q.codes[i] > maxq) {
      fail(ErrorCode::invalid_argument, p, ": code ", int{q.codes[i]}, " at [", i / static_cast<size_t>(u.K), ", ",
           i % static_cast<size_t>(u.K), "] does not fit in ", c.bits, " bits");
    }
  }
  const bool v1 = c.checkpoint_format == "gptq";
  const int sym_zero = (maxq + 1) / 2;
  for (size_t i = 0; i < NG; ++i) {
    const int z = q.zeros[i];
    if (z > maxq) fail(ErrorCode::invalid_argument, p, ": zero point ", z, " does not fit in ", c.bits, " bits");
    // Symmetric zeros are 2^(bits-1) by construction (A.6); loaders check the constant qzeros words.
    if (c.sym && z != sym_zero) {
      fail(ErrorCode::invalid_argument, p, ": symmetric zero point is ", z, ", expected ", sym_zero);
    }
    if (v1 && z == 0) {
      fail(ErrorCode::invalid_argument, p, ": zero point 0 cannot be stored in checkpoint_format \"gptq\" (v1 stores "
           "zero - 1); use \"gptq_v2\"");
    }
    const float s = kernels::cpu::f16_to_f32(kernels::cpu::f32_to_f16(q.scales[i]));
    if (!std::isfinite(s)) {
      fail(ErrorCode::invalid_argument, p, ": scale ", q.scales[i], " at [", i / static_cast<size_t>(G), ", ",
           i % static_cast<size_t>(G), "] is not a finite fp16 value");
    }
  }
  // Without act-order loaders may ignore g_idx and assume k / group_size (vLLM's marlin path), so
  // anything else would be served wrongly.
  const bool trivial_required = !c.desc_act || c.group_size == -1;
  for (int64_t k = 0; k < u.K; ++k) {
    const int32_t g = q.g_idx[static_cast<size_t>(k)];
    if (g < 0 || g >= G) fail(ErrorCode::invalid_argument, p, ": g_idx[", k, "] = ", g, " is outside [0, ", G, ")");
    const int64_t expected = c.group_size == -1 ? 0 : k / c.group_size;
    if (trivial_required && g != expected) {
      fail(ErrorCode::invalid_argument, p, ": g_idx[", k, "] = ", g, " but desc_act is false, which requires ",
           expected, " (k / group_size)");
    }
  }
}

// qweight, qzeros, scales, g_idx (+ bias) of one linear (gptq-reference.md B.2-B.6).
void append_linear(std::vector<OutTensor>& out, const QuantizedLinear& q, const Unit& u,
                   const engine::GptqConfig& c) {
  const int64_t N = u.N, K = u.K, G = c.n_groups(K);
  const int bits = c.bits;
  // The solver's [N, K] codes and [N, G] parameters, transposed to the checkpoint's [K, N] / [G, N].
  std::vector<uint8_t> codes_kn(static_cast<size_t>(K * N));
  for (int64_t n = 0; n < N; ++n) {
    const uint8_t* row = q.codes.data() + n * K;
    for (int64_t k = 0; k < K; ++k) codes_kn[static_cast<size_t>(k * N + n)] = row[k];
  }
  const uint8_t zero_offset = c.checkpoint_format == "gptq" ? 1 : 0;
  std::vector<uint8_t> zeros_gn(static_cast<size_t>(G * N));
  std::vector<uint16_t> scales_gn(static_cast<size_t>(G * N));
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      const auto src = static_cast<size_t>(n * G + g), dst = static_cast<size_t>(g * N + n);
      zeros_gn[dst] = static_cast<uint8_t>(q.zeros[src] - zero_offset);
      scales_gn[dst] = kernels::cpu::f32_to_f16(q.scales[src]);
    }
  }
  const std::string& p = u.name;
  out.push_back({p + ".qweight", StDtype::I32, {K * bits / 32, N}, to_bytes(pack_qweight(codes_kn, K, N, bits))});
  out.push_back({p + ".qzeros", StDtype::I32, {G, N * bits / 32}, to_bytes(pack_qzeros(zeros_gn, G, N, bits))});
  out.push_back({p + ".scales", StDtype::F16, {G, N}, to_bytes(scales_gn)});
  out.push_back({p + ".g_idx", StDtype::I32, {K}, to_bytes(q.g_idx)});
  if (u.bias) out.push_back(to_f16(*u.bias));
}

// Bytes of what append_linear produces, known before the solver runs (the plan needs them).
uint64_t linear_bytes(const Unit& u, const engine::GptqConfig& c) {
  const auto n = static_cast<uint64_t>(u.N), k = static_cast<uint64_t>(u.K);
  const auto b = static_cast<uint64_t>(c.bits), G = static_cast<uint64_t>(c.n_groups(u.K));
  uint64_t bytes = k * b / 32 * n * 4 + G * (n * b / 32) * 4 + G * n * 2 + k * 4;
  if (u.bias) bytes += u.bias->n_elements * 2;
  return bytes;
}

std::string shard_name(size_t i, size_t n) {
  if (n == 1) return "model.safetensors";
  char buf[64];
  std::snprintf(buf, sizeof buf, "model-%05zu-of-%05zu.safetensors", i + 1, n);
  return buf;
}

bool is_weight_file(std::string_view name) {
  for (std::string_view ext : {".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth", ".gguf"}) {
    if (name.ends_with(ext)) return true;
  }
  return false;
}

json read_json_file(const fs::path& path, const std::string& where) {
  auto mapped = engine::MappedFile::open(path);
  auto bytes = mapped->bytes();
  try {
    return engine::parse_json_strict(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()),
                                     where);
  } catch (const Error& e) {
    throw Error(ErrorCode::invalid_model, e.what());
  }
}

// Creates out_dir, or accepts an existing empty one; remembers which so a failure undoes only
// what this writer did.
struct OutDir {
  fs::path path;
  bool created = false;

  explicit OutDir(const fs::path& p) : path(p) {
    std::error_code ec;
    const fs::file_status st = fs::status(p, ec);
    if (fs::exists(st)) {
      if (!fs::is_directory(st)) fail(ErrorCode::conflict, p.string(), " already exists and is not a directory");
      const bool empty = fs::is_empty(p, ec);
      if (ec) fail(ErrorCode::io, "cannot read ", p.string(), ": ", ec.message());
      if (!empty) fail(ErrorCode::conflict, p.string(), " already exists and is not empty");
      return;
    }
    if (!fs::create_directories(p, ec) || ec) {
      fail(ec.value() == ENOSPC || ec.value() == EDQUOT ? ErrorCode::no_space : ErrorCode::io, "cannot create ",
           p.string(), ": ", ec ? ec.message() : "not created");
    }
    created = true;
  }

  // Best effort: the original error is what the caller needs to see.
  void remove_written() noexcept {
    std::error_code ec;
    if (created) {
      fs::remove_all(path, ec);
      return;
    }
    for (auto it = fs::directory_iterator(path, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
      std::error_code ignored;
      fs::remove_all(it->path(), ignored);
    }
  }
};

}  // namespace

const std::vector<std::string>& llama_linear_names() {
  static const std::vector<std::string> names = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                 "self_attn.o_proj", "mlp.gate_proj",    "mlp.up_proj",
                                                 "mlp.down_proj"};
  return names;
}

std::string linear_prefix(int64_t layer, const std::string& name) { return cat("model.layers.", layer, ".", name); }

std::vector<std::string> llama_linear_prefixes(int64_t n_layers) {
  std::vector<std::string> out;
  for (int64_t i = 0; i < n_layers; ++i) {
    for (const std::string& name : llama_linear_names()) out.push_back(linear_prefix(i, name));
  }
  return out;
}

void write_gptq_checkpoint(const engine::ModelInfo& source, const LinearSource& linears, const CheckpointSpec& spec,
                           const fs::path& out_dir) {
  if (source.format != engine::ModelFormat::safetensors) {
    fail(ErrorCode::unsupported, "GPTQ quantization needs a Hugging Face safetensors model (config.json + "
         "*.safetensors), not a ", engine::to_string(source.format),
         " file; pull or import the original Hugging Face model instead");
  }
  if (source.gptq) {
    fail(ErrorCode::unsupported, "the source model is already GPTQ-quantized (", source.dtype,
         "); quantize the original fp16/bf16/fp32 model instead");
  }
  if (!linears) fail(ErrorCode::invalid_argument, "checkpoint: no linear source given");
  check_spec(spec);
  const engine::GptqConfig& cfg = spec.config;

  engine::FileMap st_files;
  const engine::SourceFile* config_file = nullptr;
  std::vector<const engine::SourceFile*> side_files;
  for (const auto& f : source.files) {
    if (f.name.ends_with(".safetensors") || f.name == "model.safetensors.index.json") st_files[f.name] = f.path;
    if (f.name == "config.json") config_file = &f;
    else if (f.name != "quantize_config.json" && !is_weight_file(f.name)) side_files.push_back(&f);
  }
  if (!config_file) fail(ErrorCode::invalid_model, "the source model has no config.json");
  const engine::SafetensorsSet set = engine::SafetensorsSet::open(st_files);

  // ---- plan: units in file order, then shards by size ----
  std::vector<Unit> units;
  std::map<std::string, size_t> linear_index;  // prefix -> units[i]
  const std::vector<std::string> prefixes = llama_linear_prefixes(source.config.n_layers);
  const int block = packing_block(cfg.bits);
  for (size_t i = 0; i < prefixes.size(); ++i) {
    const std::string& p = prefixes[i];
    const StTensor* w = set.find(p + ".weight");
    if (!w) fail(ErrorCode::invalid_model, "the source model has no tensor ", p, ".weight");
    if (w->shape.size() != 2) fail(ErrorCode::invalid_model, "tensor ", p, ".weight is not a matrix");
    Unit u;
    u.name = p;
    u.linear = true;
    u.N = w->shape[0];
    u.K = w->shape[1];
    if (u.K % block != 0 || u.N % block != 0) {
      fail(ErrorCode::invalid_argument, p, ": ", cfg.bits, "-bit GPTQ packing needs in_features and out_features to "
           "be multiples of ", block, ", but the weight is [out ", u.N, ", in ", u.K, "]; choose another bit width");
    }
    u.section = section_of(p);
    u.rank = 1 + static_cast<int64_t>(i % llama_linear_names().size());
    linear_index[p] = units.size();
    units.push_back(std::move(u));
  }
  for (const StTensor* t : set.all()) {
    std::string_view name = t->name;
    if (name.ends_with(".weight") && linear_index.contains(std::string(name.substr(0, name.size() - 7)))) continue;
    if (t->dtype != StDtype::F16 && t->dtype != StDtype::BF16 && t->dtype != StDtype::F32) {
      fail(ErrorCode::unsupported, "tensor ", t->name, " has dtype ", engine::to_string(t->dtype),
           "; the checkpoint writer converts F16, BF16 and F32 tensors to F16");
    }
    if (name.ends_with(".bias")) {
      auto it = linear_index.find(std::string(name.substr(0, name.size() - 5)));
      if (it != linear_index.end()) {
        Unit& u = units[it->second];
        if (t->shape != std::vector<int64_t>{u.N}) {
          fail(ErrorCode::invalid_model, "tensor ", t->name, " does not have shape [", u.N, "]");
        }
        u.bias = t;
        continue;
      }
    }
    Unit u;
    u.name = t->name;
    u.tensor = t;
    u.n_bytes = t->n_elements * 2;
    u.section = section_of(name);
    units.push_back(std::move(u));
  }
  for (Unit& u : units) {
    if (u.linear) u.n_bytes = linear_bytes(u, cfg);
  }
  std::stable_sort(units.begin(), units.end(), [](const Unit& a, const Unit& b) {
    if (a.section != b.section) return a.section < b.section;
    if (a.rank != b.rank) return a.rank < b.rank;
    return a.name < b.name;
  });

  std::vector<std::vector<const Unit*>> shards;
  uint64_t shard_bytes = 0, total_bytes = 0;
  for (const Unit& u : units) {
    // A unit larger than the limit gets a shard of its own.
    if (shards.empty() || (shard_bytes > 0 && shard_bytes + u.n_bytes > spec.max_shard_bytes)) {
      shards.emplace_back();
      shard_bytes = 0;
    }
    shards.back().push_back(&u);
    shard_bytes += u.n_bytes;
    total_bytes += u.n_bytes;
  }

  json config_json = read_json_file(config_file->path, "config.json");
  if (!config_json.is_object()) fail(ErrorCode::invalid_model, "config.json: expected a JSON object");
  const json quant_json = cfg.to_json();
  config_json["quantization_config"] = quant_json;
  config_json["torch_dtype"] = "float16";
  if (config_json.contains("dtype")) config_json["dtype"] = "float16";  // newer transformers' name for it

  const std::map<std::string, std::string> metadata = {
      {"format", "pt"},
      {"quantizer", spec.quantizer_name},
      {"gptq_bits", std::to_string(cfg.bits)},
      {"gptq_group_size", std::to_string(cfg.group_size)},
      {"gptq_desc_act", py_str(cfg.desc_act)},
      {"gptq_damp_percent", py_str(cfg.damp_percent)},
      {"gptq_checkpoint_format", cfg.checkpoint_format},
      {"gptq_quant_method", "gptq"},
  };

  // ---- write ----
  OutDir out(out_dir);
  try {
    json weight_map = json::object();
    for (size_t s = 0; s < shards.size(); ++s) {
      const std::string file = shard_name(s, shards.size());
      std::vector<OutTensor> tensors;
      for (const Unit* u : shards[s]) {
        const size_t first = tensors.size();
        if (u->linear) {
          const QuantizedLinear q = linears(u->name);
          check_linear(q, *u, cfg);
          append_linear(tensors, q, *u, cfg);
        } else {
          tensors.push_back(to_f16(*u->tensor));
        }
        uint64_t unit_bytes = 0;
        for (size_t i = first; i < tensors.size(); ++i) unit_bytes += tensors[i].data.size();
        if (unit_bytes != u->n_bytes) {
          fail(ErrorCode::internal, u->name, ": planned ", u->n_bytes, " bytes but produced ", unit_bytes);
        }
      }
      std::vector<engine::StWriteTensor> views;
      for (const OutTensor& t : tensors) {
        views.push_back({t.name, t.dtype, t.shape, t.data});
        weight_map[t.name] = file;
      }
      engine::write_safetensors(out.path / file, views, metadata);
    }
    if (shards.size() > 1) {
      write_json_atomic(out.path / "model.safetensors.index.json",
                        json{{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}});
    }
    write_json_atomic(out.path / "config.json", config_json);
    write_json_atomic(out.path / "quantize_config.json", quant_json);
    for (const engine::SourceFile* f : side_files) copy_file_synced(f->path, out.path / f->name);
    fsync_dir(out.path);
    if (out.created) {
      fs::path parent = out.path.parent_path();
      fsync_dir(parent.empty() ? fs::path(".") : parent);
    }
  } catch (...) {
    out.remove_written();
    throw;
  }
}

}  // namespace gptqd::quantizer
