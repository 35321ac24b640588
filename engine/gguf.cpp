// SPDX-License-Identifier: Apache-2.0
// GgufFile: parses and validates GGUF v2/v3 with checked arithmetic; every count is bounded by the
// bytes left in the file and by a hard cap before anything sized by it is allocated (engine layer).
#include "engine/gguf.h"

#include <algorithm>
#include <bit>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <utility>

#include "engine/error.h"

namespace gptqd::engine {

namespace kcpu = kernels::cpu;

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian uint32
constexpr uint64_t kHeaderBytes = 4 + 4 + 8 + 8;
constexpr uint64_t kDefaultAlignment = 32;
// Hard caps (reliability rows A09/A10): far above any real model, far below what would let a
// small hostile file make us allocate gigabytes.
constexpr uint64_t kMaxTensors = uint64_t{1} << 20;
constexpr uint64_t kMaxKv = uint64_t{1} << 20;
constexpr uint64_t kMaxKeyBytes = 65535;                      // GGUF spec limit for keys
constexpr uint64_t kMaxNameBytes = 65535;                     // tensor names (ggml itself uses 64)
constexpr uint64_t kMaxStringBytes = uint64_t{64} << 20;      // one string value
constexpr uint64_t kMaxArrayElementsTotal = uint64_t{1} << 23; // all arrays of the file together
constexpr int kMaxArrayDepth = 2;                             // array of arrays, no deeper
constexpr uint32_t kMaxDims = 4;                              // GGML_MAX_DIMS
constexpr uint64_t kMaxAlignment = uint64_t{1} << 16;
// Smallest possible encodings, used to bound counts by the bytes that remain.
constexpr uint64_t kMinKvBytes = 8 + 4 + 1;                   // empty key, type, 1-byte value
constexpr uint64_t kMinTensorInfoBytes = 8 + 4 + 8 + 4 + 8;   // empty name, n_dims, 1 dim, type, offset

bool known_value_type(uint32_t t) { return t <= static_cast<uint32_t>(GgufValueType::float64); }

uint64_t min_value_bytes(GgufValueType t) {
  switch (t) {
    case GgufValueType::uint8: case GgufValueType::int8: case GgufValueType::boolean: return 1;
    case GgufValueType::uint16: case GgufValueType::int16: return 2;
    case GgufValueType::uint32: case GgufValueType::int32: case GgufValueType::float32: return 4;
    case GgufValueType::uint64: case GgufValueType::int64: case GgufValueType::float64: return 8;
    case GgufValueType::string: return 8;
    case GgufValueType::array: return 4 + 8;
  }
  return 1;
}

bool checked_mul(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }
bool checked_add(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_add_overflow(a, b, out); }

// A cursor over the file bytes; every read is bounds-checked and names what it was reading.
class Cursor {
 public:
  Cursor(std::span<const std::byte> bytes, const std::string& file) : bytes_(bytes), file_(file) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  // `what` + `suffix` name the field in the error; they are joined only when the read fails.
  template <typename T>
  T read(std::string_view what, std::string_view suffix = {}) {
    need(sizeof(T), what, suffix);
    T v;
    std::memcpy(&v, bytes_.data() + pos_, sizeof(T));  // GGUF is little-endian, like the hosts we run on
    pos_ += sizeof(T);
    return v;
  }

  std::string read_string(std::string_view what, uint64_t cap) {
    const uint64_t len = read<uint64_t>(what, " length");
    if (len > cap) fail(ErrorCode::invalid_model, file_, ": ", what, " is ", len, " bytes long, more than the limit of ", cap);
    need(len, what, {});
    std::string s(reinterpret_cast<const char*>(bytes_.data() + pos_), static_cast<size_t>(len));
    pos_ += len;
    return s;
  }

 private:
  void need(uint64_t n, std::string_view what, std::string_view suffix) const {
    if (n > remaining()) {
      fail(ErrorCode::invalid_model, file_, ": truncated file: ", what, suffix, " at offset ", pos_, " needs ", n,
           " bytes but only ", remaining(), " remain");
    }
  }

  std::span<const std::byte> bytes_;
  const std::string& file_;
  uint64_t pos_ = 0;
};

class Parser {
 public:
  Parser(Cursor& cur, const std::string& file) : cur_(cur), file_(file) {}

  GgufValue read_value(uint32_t raw_type, int depth, const std::string& where) {
    if (!known_value_type(raw_type)) {
      fail(ErrorCode::invalid_model, file_, ": ", where, " has unknown value type ", raw_type);
    }
    GgufValue v;
    v.type = static_cast<GgufValueType>(raw_type);
    switch (v.type) {
      case GgufValueType::uint8: v.value = uint64_t{cur_.read<uint8_t>(where)}; break;
      case GgufValueType::uint16: v.value = uint64_t{cur_.read<uint16_t>(where)}; break;
      case GgufValueType::uint32: v.value = uint64_t{cur_.read<uint32_t>(where)}; break;
      case GgufValueType::uint64: v.value = cur_.read<uint64_t>(where); break;
      case GgufValueType::int8: v.value = int64_t{cur_.read<int8_t>(where)}; break;
      case GgufValueType::int16: v.value = int64_t{cur_.read<int16_t>(where)}; break;
      case GgufValueType::int32: v.value = int64_t{cur_.read<int32_t>(where)}; break;
      case GgufValueType::int64: v.value = cur_.read<int64_t>(where); break;
      case GgufValueType::float32: v.value = double{cur_.read<float>(where)}; break;
      case GgufValueType::float64: v.value = cur_.read<double>(where); break;
      case GgufValueType::boolean: {
        const uint8_t b = cur_.read<uint8_t>(where);
        if (b > 1) fail(ErrorCode::invalid_model, file_, ": ", where, " is a bool stored as ", int{b}, " (must be 0 or 1)");
        v.value = b == 1;
        break;
      }
      case GgufValueType::string: v.value = cur_.read_string(where, kMaxStringBytes); break;
      case GgufValueType::array: v = read_array(depth + 1, where); break;
    }
    return v;
  }

 private:
  GgufValue read_array(int depth, const std::string& where) {
    if (depth > kMaxArrayDepth) {
      fail(ErrorCode::invalid_model, file_, ": ", where, " nests arrays deeper than ", kMaxArrayDepth, " levels");
    }
    const uint32_t raw_elem = cur_.read<uint32_t>(where, " element type");
    if (!known_value_type(raw_elem)) {
      fail(ErrorCode::invalid_model, file_, ": ", where, " is an array of unknown value type ", raw_elem);
    }
    const auto elem = static_cast<GgufValueType>(raw_elem);
    const uint64_t count = cur_.read<uint64_t>(where, " element count");
    const uint64_t min_bytes = min_value_bytes(elem);
    if (count > cur_.remaining() / min_bytes) {
      fail(ErrorCode::invalid_model, file_, ": ", where, " claims ", count, " elements of type ", to_string(elem),
           " but only ", cur_.remaining(), " bytes remain (", min_bytes, " per element at least)");
    }
    if (count > kMaxArrayElementsTotal - array_elements_) {
      fail(ErrorCode::invalid_model, file_, ": ", where, " has ", count, " elements; arrays in one file may hold at most ",
           kMaxArrayElementsTotal, " elements in total");
    }
    array_elements_ += count;
    GgufValue v;
    v.type = GgufValueType::array;
    v.elem_type = elem;
    std::vector<GgufValue> items;
    items.reserve(static_cast<size_t>(count));
    for (uint64_t i = 0; i < count; ++i) {
      items.push_back(elem == GgufValueType::array ? read_array(depth + 1, where)
                                                   : read_value(raw_elem, depth, where));
    }
    v.value = std::move(items);
    return v;
  }

  Cursor& cur_;
  const std::string& file_;
  uint64_t array_elements_ = 0;
};

// A key or tensor name for an error message: quoted, control bytes escaped (names come from the
// file and may hold terminal escapes), long names cut.
std::string in_quotes(std::string_view s) {
  constexpr size_t kMaxShown = 200;
  std::string out = "'";
  for (size_t i = 0; i < s.size() && i < kMaxShown; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) {
      constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += static_cast<char>(c);
    }
  }
  if (s.size() > kMaxShown) out += cat("... (", s.size(), " bytes)");
  return out + "'";
}

const char* kind_of(const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::array: return "an array";
    case GgufValueType::string: return "a string";
    case GgufValueType::boolean: return "a bool";
    case GgufValueType::float32: case GgufValueType::float64: return "a float";
    default: return "an integer";
  }
}

}  // namespace

const char* to_string(GgufValueType t) {
  switch (t) {
    case GgufValueType::uint8: return "uint8";
    case GgufValueType::int8: return "int8";
    case GgufValueType::uint16: return "uint16";
    case GgufValueType::int16: return "int16";
    case GgufValueType::uint32: return "uint32";
    case GgufValueType::int32: return "int32";
    case GgufValueType::float32: return "float32";
    case GgufValueType::boolean: return "bool";
    case GgufValueType::string: return "string";
    case GgufValueType::array: return "array";
    case GgufValueType::uint64: return "uint64";
    case GgufValueType::int64: return "int64";
    case GgufValueType::float64: return "float64";
  }
  return "unknown";
}

GgufFile GgufFile::open(const std::string& path) { return parse(MappedFile::open(path)); }

GgufFile GgufFile::parse(std::shared_ptr<const MappedFile> file) {
  GgufFile g;
  g.file_ = std::move(file);
  const std::string& name = g.file_->name();
  const std::span<const std::byte> bytes = g.file_->bytes();
  const uint64_t size = bytes.size();
  auto bad = [&name](const auto&... args) { fail(ErrorCode::invalid_model, name, ": ", args...); };

  if (size == 0) bad("the file is empty (expected a GGUF header)");
  if (size < 4) bad("the file is ", size, " bytes long, too short for the GGUF magic");
  uint32_t magic = 0;
  std::memcpy(&magic, bytes.data(), 4);
  if (magic != kMagic) bad("not a GGUF file (the first four bytes are not 'GGUF')");
  if (size < kHeaderBytes) {
    bad("truncated GGUF header: the file is ", size, " bytes long, the header needs ", kHeaderBytes);
  }

  Cursor cur(bytes, name);
  cur.read<uint32_t>("magic");
  const uint32_t version = cur.read<uint32_t>("version");
  if (version != 2 && version != 3) {
    const uint32_t swapped = __builtin_bswap32(version);
    if ((version & 0xffffu) == 0 && swapped >= 1 && swapped <= 3) {
      fail(ErrorCode::unsupported, name, ": big-endian GGUF (version ", swapped,
           " stored byte-swapped) is not supported; convert it to little-endian");
    }
    if (version == 1) {
      fail(ErrorCode::unsupported, name, ": GGUF version 1 is not supported (gptqd reads versions 2 and 3); "
           "re-convert the model with a current llama.cpp");
    }
    fail(ErrorCode::unsupported, name, ": GGUF version ", version, " is not supported (gptqd reads versions 2 and 3)");
  }
  g.version_ = version;

  const uint64_t n_tensors = cur.read<uint64_t>("n_tensors");
  const uint64_t n_kv = cur.read<uint64_t>("n_kv");
  if (n_tensors > kMaxTensors) bad("n_tensors = ", n_tensors, " exceeds the limit of ", kMaxTensors);
  if (n_kv > kMaxKv) bad("n_kv = ", n_kv, " exceeds the limit of ", kMaxKv);
  // Both are now < 2^21, so the products below cannot overflow.
  if (n_kv * kMinKvBytes + n_tensors * kMinTensorInfoBytes > cur.remaining()) {
    bad("n_kv = ", n_kv, " and n_tensors = ", n_tensors, " cannot fit in the ", cur.remaining(),
        " bytes after the header (each key/value takes at least ", kMinKvBytes, " bytes, each tensor info ",
        kMinTensorInfoBytes, ")");
  }

  Parser parser(cur, name);
  for (uint64_t i = 0; i < n_kv; ++i) {
    std::string key = cur.read_string(cat("metadata key #", i), kMaxKeyBytes);
    if (key.empty()) bad("metadata key #", i, " is empty");
    const std::string where = cat("metadata key ", in_quotes(key));
    const uint32_t raw_type = cur.read<uint32_t>(where, " value type");
    GgufValue value = parser.read_value(raw_type, 0, where);
    if (!g.metadata_index_.emplace(key, g.metadata_.size()).second) bad("duplicate metadata key ", in_quotes(key));
    g.metadata_.emplace_back(std::move(key), std::move(value));
  }

  if (const GgufValue* a = g.find("general.alignment")) {
    if (a->type != GgufValueType::uint32) {
      bad("metadata key 'general.alignment' must be a uint32, not ", to_string(a->type));
    }
    const uint64_t alignment = std::get<uint64_t>(a->value);
    // The GGUF spec requires a multiple of 8; a power of two keeps align-up a mask operation.
    if (alignment < 8 || alignment > kMaxAlignment || !std::has_single_bit(alignment)) {
      bad("metadata key 'general.alignment' = ", alignment, " must be a power of two between 8 and ", kMaxAlignment);
    }
    g.alignment_ = alignment;
  } else {
    g.alignment_ = kDefaultAlignment;
  }

  std::vector<uint64_t> relative_offsets;
  for (uint64_t i = 0; i < n_tensors; ++i) {
    GgufTensorInfo t;
    t.name = cur.read_string(cat("tensor #", i, " name"), kMaxNameBytes);
    if (t.name.empty()) bad("tensor #", i, " has an empty name");
    const std::string where = cat("tensor ", in_quotes(t.name));
    const uint32_t n_dims = cur.read<uint32_t>(where, " n_dims");
    if (n_dims < 1 || n_dims > kMaxDims) bad(where, ": n_dims = ", n_dims, " must be between 1 and ", kMaxDims);
    t.ne.resize(n_dims);
    t.n_elements = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      t.ne[d] = cur.read<uint64_t>(cat(where, " ne[", d, "]"));
      if (t.ne[d] == 0) bad(where, ": ne[", d, "] is 0 (every dimension must be at least 1)");
      if (!checked_mul(t.n_elements, t.ne[d], &t.n_elements) ||
          t.n_elements > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        bad(where, ": the element count overflows (ne[", d, "] = ", t.ne[d], ")");
      }
    }
    t.type = cur.read<uint32_t>(where, " type");
    const kcpu::GgmlTypeTraits* traits = kcpu::ggml_type_traits(t.type);
    if (traits == nullptr) fail(ErrorCode::unsupported, name, ": ", where, " has unknown ggml type ", t.type);
    if (t.ne[0] % traits->block_elems != 0) {
      bad(where, ": ne[0] = ", t.ne[0], " is not a multiple of the ", traits->name, " block size ",
          traits->block_elems);
    }
    if (!checked_mul(t.n_elements / traits->block_elems, traits->block_bytes, &t.n_bytes)) {
      bad(where, ": the byte size overflows");
    }
    const uint64_t offset = cur.read<uint64_t>(where, " offset");
    if (offset % g.alignment_ != 0) {
      bad(where, ": data offset ", offset, " is not a multiple of the alignment ", g.alignment_);
    }
    if (!g.tensor_index_.emplace(t.name, g.tensors_.size()).second) bad("duplicate tensor name ", in_quotes(t.name));
    relative_offsets.push_back(offset);
    g.tensors_.push_back(std::move(t));
  }

  // The data section starts at the first alignment boundary after the tensor infos.
  const uint64_t header_end = cur.pos();
  if (!checked_add(header_end, g.alignment_ - 1, &g.data_offset_)) bad("the data section offset overflows");
  g.data_offset_ &= ~(g.alignment_ - 1);

  for (size_t i = 0; i < g.tensors_.size(); ++i) {
    GgufTensorInfo& t = g.tensors_[i];
    uint64_t end = 0;
    if (!checked_add(g.data_offset_, relative_offsets[i], &t.offset) || !checked_add(t.offset, t.n_bytes, &end)) {
      bad("tensor ", in_quotes(t.name), ": data offset ", relative_offsets[i], " + ", t.n_bytes,
          " bytes overflows a 64-bit file offset");
    }
    if (end > size) {
      bad("tensor ", in_quotes(t.name), ": data [", t.offset, ", ", end, ") ends past the end of the file (size ", size, ")");
    }
  }

  std::vector<size_t> by_offset(g.tensors_.size());
  std::iota(by_offset.begin(), by_offset.end(), size_t{0});
  std::sort(by_offset.begin(), by_offset.end(), [&g](size_t a, size_t b) {
    return std::pair(g.tensors_[a].offset, a) < std::pair(g.tensors_[b].offset, b);
  });
  for (size_t k = 1; k < by_offset.size(); ++k) {
    const GgufTensorInfo& prev = g.tensors_[by_offset[k - 1]];
    const GgufTensorInfo& next = g.tensors_[by_offset[k]];
    if (prev.offset + prev.n_bytes > next.offset) {
      bad("tensors ", in_quotes(prev.name), " [", prev.offset, ", ", prev.offset + prev.n_bytes, ") and ",
          in_quotes(next.name), " [", next.offset, ", ", next.offset + next.n_bytes, ") overlap");
    }
  }
  return g;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = metadata_index_.find(std::string(key));
  return it == metadata_index_.end() ? nullptr : &metadata_[it->second].second;
}

std::optional<uint64_t> GgufFile::get_uint_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (const auto* u = std::get_if<uint64_t>(&v->value)) return *u;
  if (const auto* s = std::get_if<int64_t>(&v->value)) {
    if (*s < 0) fail(ErrorCode::invalid_model, name(), ": metadata key ", in_quotes(key), " is ", *s, ", must not be negative");
    return static_cast<uint64_t>(*s);
  }
  fail(ErrorCode::invalid_model, name(), ": metadata key ", in_quotes(key), " is ", kind_of(*v), ", expected an integer");
}

uint64_t GgufFile::get_uint(std::string_view key) const {
  if (auto v = get_uint_opt(key)) return *v;
  fail(ErrorCode::invalid_model, name(), ": missing metadata key ", in_quotes(key));
}

std::optional<double> GgufFile::get_float_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (const auto* d = std::get_if<double>(&v->value)) return *d;
  fail(ErrorCode::invalid_model, name(), ": metadata key ", in_quotes(key), " is ", kind_of(*v), ", expected a float");
}

double GgufFile::get_float(std::string_view key) const {
  if (auto v = get_float_opt(key)) return *v;
  fail(ErrorCode::invalid_model, name(), ": missing metadata key ", in_quotes(key));
}

std::optional<std::string> GgufFile::get_string_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (const auto* s = std::get_if<std::string>(&v->value)) return *s;
  fail(ErrorCode::invalid_model, name(), ": metadata key ", in_quotes(key), " is ", kind_of(*v), ", expected a string");
}

std::string GgufFile::get_string(std::string_view key) const {
  if (auto v = get_string_opt(key)) return *v;
  fail(ErrorCode::invalid_model, name(), ": missing metadata key ", in_quotes(key));
}

std::optional<bool> GgufFile::get_bool_opt(std::string_view key) const {
  const GgufValue* v = find(key);
  if (v == nullptr) return std::nullopt;
  if (const auto* b = std::get_if<bool>(&v->value)) return *b;
  fail(ErrorCode::invalid_model, name(), ": metadata key ", in_quotes(key), " is ", kind_of(*v), ", expected a bool");
}

namespace {

const std::vector<GgufValue>& array_of(const GgufFile& g, std::string_view key, const char* want,
                                       bool (*accepts)(GgufValueType)) {
  const GgufValue* v = g.find(key);
  if (v == nullptr) fail(ErrorCode::invalid_model, g.name(), ": missing metadata key ", in_quotes(key));
  if (v->type != GgufValueType::array || !accepts(v->elem_type)) {
    fail(ErrorCode::invalid_model, g.name(), ": metadata key ", in_quotes(key), " is ",
         v->type == GgufValueType::array ? cat("an array of ", to_string(v->elem_type)) : std::string(kind_of(*v)),
         ", expected an array of ", want);
  }
  return std::get<std::vector<GgufValue>>(v->value);
}

bool is_integer_type(GgufValueType t) {
  return t != GgufValueType::float32 && t != GgufValueType::float64 && t != GgufValueType::boolean &&
         t != GgufValueType::string && t != GgufValueType::array;
}

}  // namespace

std::vector<std::string> GgufFile::get_string_array(std::string_view key) const {
  const auto& items = array_of(*this, key, "strings", [](GgufValueType t) { return t == GgufValueType::string; });
  std::vector<std::string> out;
  out.reserve(items.size());
  for (const GgufValue& v : items) out.push_back(std::get<std::string>(v.value));
  return out;
}

std::vector<int64_t> GgufFile::get_int_array(std::string_view key) const {
  const auto& items = array_of(*this, key, "integers", is_integer_type);
  std::vector<int64_t> out;
  out.reserve(items.size());
  for (size_t i = 0; i < items.size(); ++i) {
    if (const auto* u = std::get_if<uint64_t>(&items[i].value)) {
      if (*u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        fail(ErrorCode::invalid_model, name(), ": metadata key ", in_quotes(key), "[", i, "] = ", *u, " is out of range");
      }
      out.push_back(static_cast<int64_t>(*u));
    } else {
      out.push_back(std::get<int64_t>(items[i].value));
    }
  }
  return out;
}

std::vector<double> GgufFile::get_float_array(std::string_view key) const {
  const auto& items = array_of(*this, key, "floats", [](GgufValueType t) {
    return t == GgufValueType::float32 || t == GgufValueType::float64;
  });
  std::vector<double> out;
  out.reserve(items.size());
  for (const GgufValue& v : items) out.push_back(std::get<double>(v.value));
  return out;
}

const GgufTensorInfo* GgufFile::find_tensor(std::string_view tensor_name) const {
  auto it = tensor_index_.find(std::string(tensor_name));
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

std::span<const std::byte> GgufFile::tensor_bytes(const GgufTensorInfo& t) const {
  uint64_t end = 0;
  if (!checked_add(t.offset, t.n_bytes, &end) || end > file_->size_bytes()) {
    fail(ErrorCode::internal, name(), ": tensor ", in_quotes(t.name), " does not belong to this file");
  }
  return file_->bytes().subspan(static_cast<size_t>(t.offset), static_cast<size_t>(t.n_bytes));
}

std::vector<float> GgufFile::dequantize(const GgufTensorInfo& t) const {
  const kcpu::GgmlTypeTraits* traits = kcpu::ggml_type_traits(t.type);
  if (traits == nullptr || !traits->can_dequantize) {
    fail(ErrorCode::unsupported, name(), ": tensor ", in_quotes(t.name), " has type ",
         traits ? traits->name : "unknown", ", which gptqd cannot dequantize");
  }
  uint64_t n_bytes = 0;
  if (t.n_elements % traits->block_elems != 0 ||
      !checked_mul(t.n_elements / traits->block_elems, traits->block_bytes, &n_bytes) || n_bytes != t.n_bytes) {
    fail(ErrorCode::internal, name(), ": tensor ", in_quotes(t.name), " has an inconsistent element and byte count");
  }
  const std::span<const std::byte> src = tensor_bytes(t);
  std::vector<float> out(static_cast<size_t>(t.n_elements));
  const kernels::KernelStatus st =
      kcpu::dequantize_ggml(t.type, src.data(), static_cast<int64_t>(t.n_elements), out.data());
  if (st != kernels::KernelStatus::ok) {
    fail(ErrorCode::internal, name(), ": dequantizing tensor ", in_quotes(t.name), " failed: ", kernels::to_string(st));
  }
  return out;
}

}  // namespace gptqd::engine
