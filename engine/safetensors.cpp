// SPDX-License-Identifier: Apache-2.0
// safetensors reader (single files, sharded sets) and atomic writer (engine layer).
// Reader rules: gptq-reference.md B.10. Every error names the file, the tensor and the rule.
#include "engine/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "engine/atomic_file.h"
#include "engine/error.h"
#include "engine/json_strict.h"
#include "kernels/cpu/half.h"

namespace gptqd::engine {

static_assert(std::endian::native == std::endian::little, "safetensors data is little-endian");

namespace {

using nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100'000'000;      // the reference parser's MAX_HEADER_SIZE
constexpr uint64_t kMaxIndexBytes = 64ull << 20;       // model.safetensors.index.json
constexpr int kMaxHeaderDepth = 8;                     // a valid header nests 3 levels
constexpr std::string_view kIndexName = "model.safetensors.index.json";
constexpr std::string_view kPickleZipMessage =
    "pickle/zip weights are not supported; convert to safetensors";

struct DtypeInfo {
  StDtype dtype;
  std::string_view name;
  size_t size_bytes;
};

constexpr DtypeInfo kDtypes[] = {
    {StDtype::BOOL, "BOOL", 1}, {StDtype::U8, "U8", 1},   {StDtype::I8, "I8", 1},
    {StDtype::F8_E5M2, "F8_E5M2", 1}, {StDtype::F8_E4M3, "F8_E4M3", 1},
    {StDtype::I16, "I16", 2},   {StDtype::U16, "U16", 2}, {StDtype::F16, "F16", 2},
    {StDtype::BF16, "BF16", 2}, {StDtype::I32, "I32", 4}, {StDtype::U32, "U32", 4},
    {StDtype::F32, "F32", 4},   {StDtype::F64, "F64", 8}, {StDtype::I64, "I64", 8},
    {StDtype::U64, "U64", 8},
};

// Valid in the safetensors format but not representable by StDtype.
constexpr std::string_view kFormatOnlyDtypes[] = {"F4",          "F6_E2M3",    "F6_E3M2",
                                                  "F8_E8M0",     "F8_E4M3FNUZ", "F8_E5M2FNUZ",
                                                  "C64"};

std::string shape_string(std::span<const int64_t> shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

std::string file_base_name(const std::string& path) {
  return std::filesystem::path(path).filename().string();
}

bool has_pickle_or_zip_magic(std::span<const std::byte> b) {
  if (b.size() >= 4 && b[0] == std::byte{'P'} && b[1] == std::byte{'K'} && b[2] == std::byte{0x03} &&
      b[3] == std::byte{0x04}) {
    return true;
  }
  return !b.empty() && b[0] == std::byte{0x80};
}

// A JSON value that is an exact non-negative integer (never a float, bool or string).
std::optional<uint64_t> as_unsigned(const json& v) {
  if (v.is_number_unsigned()) return v.get<uint64_t>();
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return static_cast<uint64_t>(v.get<int64_t>());
  return std::nullopt;
}

std::string describe(const json& v) {
  std::string text = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (text.size() > 40) text = text.substr(0, 40) + "...";
  return cat(json_type_name(v), " ", text);
}

[[noreturn]] void fail_tensor(const std::string& file, const std::string& tensor, const auto&... rule) {
  fail(ErrorCode::invalid_model, file, ": tensor \"", tensor, "\": ", rule...);
}

StTensor parse_tensor_entry(const std::string& file, const std::string& name, const json& entry) {
  if (!entry.is_object()) fail_tensor(file, name, "entry must be an object, found ", describe(entry));
  for (const auto& [key, value] : entry.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      fail_tensor(file, name, "unexpected key \"", key, "\" (allowed: dtype, shape, data_offsets)");
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!entry.contains(key)) fail_tensor(file, name, "missing key \"", key, "\"");
  }

  StTensor t;
  t.name = name;
  const json& dtype = entry["dtype"];
  if (!dtype.is_string()) fail_tensor(file, name, "dtype must be a string, found ", describe(dtype));
  const auto& dtype_name = dtype.get_ref<const std::string&>();
  auto parsed = parse_st_dtype(dtype_name);
  if (!parsed) {
    if (std::find(std::begin(kFormatOnlyDtypes), std::end(kFormatOnlyDtypes), dtype_name) !=
        std::end(kFormatOnlyDtypes)) {
      fail(ErrorCode::unsupported, file, ": tensor \"", name, "\": dtype ", dtype_name,
           " is not supported by gptqd");
    }
    fail_tensor(file, name, "unknown dtype \"", dtype_name,
                "\" (dtype names are upper-case, e.g. F16, BF16, F32, I32)");
  }
  t.dtype = *parsed;

  const json& shape = entry["shape"];
  if (!shape.is_array()) fail_tensor(file, name, "shape must be an array, found ", describe(shape));
  uint64_t n_elements = 1;
  for (const json& d : shape) {
    auto dim = as_unsigned(d);
    if (!dim) fail_tensor(file, name, "shape entries must be non-negative integers, found ", describe(d));
    if (*dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail_tensor(file, name, "shape dimension ", *dim, " is too large");
    }
    if (__builtin_mul_overflow(n_elements, *dim, &n_elements)) {
      fail_tensor(file, name, "element count of shape ", shape.dump(), " overflows 64 bits");
    }
    t.shape.push_back(static_cast<int64_t>(*dim));
  }
  t.n_elements = n_elements;
  uint64_t n_bytes = 0;
  if (__builtin_mul_overflow(n_elements, st_dtype_size(t.dtype), &n_bytes)) {
    fail_tensor(file, name, "byte size of ", to_string(t.dtype), " ", shape_string(t.shape),
                " overflows 64 bits");
  }

  const json& offsets = entry["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2) {
    fail_tensor(file, name, "data_offsets must be an array of two integers, found ", describe(offsets));
  }
  auto begin = as_unsigned(offsets[0]);
  auto end = as_unsigned(offsets[1]);
  if (!begin || !end) {
    fail_tensor(file, name, "data_offsets must be non-negative integers, found ",
                describe(begin ? offsets[1] : offsets[0]));
  }
  if (*begin > *end) fail_tensor(file, name, "data_offsets begin ", *begin, " > end ", *end);
  t.data_begin = *begin;
  t.data_end = *end;
  if (*end - *begin != n_bytes) {
    fail_tensor(file, name, "data_offsets [", *begin, ", ", *end, "] span ", *end - *begin,
                " bytes but ", to_string(t.dtype), " ", shape_string(t.shape), " needs ", n_bytes);
  }
  return t;
}

}  // namespace

std::string_view to_string(StDtype d) {
  for (const auto& info : kDtypes) {
    if (info.dtype == d) return info.name;
  }
  return "?";
}

std::optional<StDtype> parse_st_dtype(std::string_view s) {
  for (const auto& info : kDtypes) {
    if (info.name == s) return info.dtype;
  }
  return std::nullopt;
}

size_t st_dtype_size(StDtype d) {
  for (const auto& info : kDtypes) {
    if (info.dtype == d) return info.size_bytes;
  }
  return 0;
}

SafetensorsFile SafetensorsFile::open(const std::filesystem::path& path) {
  return parse(MappedFile::open(path));
}

// Zero-size tensors (any 0 dimension) are allowed. They must still have begin == end and, like
// every tensor, sit where the walk in offset order expects them: at 0, at the end of the data, or
// at a boundary between two tensors (never inside another tensor's bytes). Ties on the offset are
// broken by (end, name), so the same file is accepted or rejected the same way every time.
SafetensorsFile SafetensorsFile::parse(std::shared_ptr<const MappedFile> file) {
  const std::string& fname = file->name();
  std::span<const std::byte> bytes = file->bytes();
  const uint64_t size = bytes.size();

  uint64_t n_header = 0;
  if (size >= 8) std::memcpy(&n_header, bytes.data(), 8);
  const bool framed = size >= 8 && n_header <= kMaxHeaderBytes && n_header <= size - 8 &&
                      n_header > 0 && bytes[8] == std::byte{'{'};
  // Why framing first: a pickle starts with 0x80, which is also the low byte of one valid header
  // length in 256; only a file that cannot be safetensors gets the pickle/zip diagnosis.
  if (!framed && has_pickle_or_zip_magic(bytes)) fail(ErrorCode::unsupported, fname, ": ", kPickleZipMessage);
  if (size < 8) fail(ErrorCode::invalid_model, fname, ": header too small (file has ", size, " bytes, need 8)");
  if (n_header > kMaxHeaderBytes) {
    fail(ErrorCode::invalid_model, fname, ": header too large (", n_header, " bytes, limit ", kMaxHeaderBytes, ")");
  }
  if (n_header > size - 8) {
    fail(ErrorCode::invalid_model, fname, ": invalid header length ", n_header, " (file has ", size,
         " bytes; truncated download?)");
  }
  if (n_header == 0 || bytes[8] != std::byte{'{'}) {
    fail(ErrorCode::invalid_model, fname, ": header must be a JSON object starting with '{'");
  }

  std::string_view text(reinterpret_cast<const char*>(bytes.data() + 8), n_header);
  json header;
  try {
    header = parse_json_strict(text, fname + " header", kMaxHeaderDepth);
  } catch (const Error& e) {
    throw Error(ErrorCode::invalid_model, e.what());
  }
  if (!header.is_object()) fail(ErrorCode::invalid_model, fname, ": header must be a JSON object");

  SafetensorsFile out;
  out.file_ = file;
  const uint64_t data_size = size - 8 - n_header;
  for (const auto& [key, value] : header.items()) {
    if (key == "__metadata__") {
      if (!value.is_object()) {
        fail(ErrorCode::invalid_model, fname, ": __metadata__ must be an object of strings, found ", describe(value));
      }
      for (const auto& [mkey, mvalue] : value.items()) {
        if (!mvalue.is_string()) {
          fail(ErrorCode::invalid_model, fname, ": __metadata__ value \"", mkey, "\" must be a string, found ",
               describe(mvalue));
        }
        out.metadata_.emplace(mkey, mvalue.get<std::string>());
      }
      continue;
    }
    StTensor t = parse_tensor_entry(fname, key, value);
    if (t.data_end > data_size) {
      fail_tensor(fname, key, "data_offsets end ", t.data_end, " is past the end of the data (", data_size,
                  " bytes): the file is truncated; download it again");
    }
    out.tensors_.push_back(std::move(t));
  }

  std::sort(out.tensors_.begin(), out.tensors_.end(), [](const StTensor& a, const StTensor& b) {
    return std::tie(a.data_begin, a.data_end, a.name) < std::tie(b.data_begin, b.data_end, b.name);
  });
  uint64_t expected_begin = 0;
  const std::string* previous = nullptr;
  for (const StTensor& t : out.tensors_) {
    if (t.data_begin < expected_begin) {
      fail_tensor(fname, t.name, "data_offsets [", t.data_begin, ", ", t.data_end, "] overlap tensor \"",
                  *previous, "\" (which ends at ", expected_begin, ")");
    }
    if (t.data_begin > expected_begin) {
      fail_tensor(fname, t.name, "gap of ", t.data_begin - expected_begin, " bytes before data_offsets begin ",
                  t.data_begin, " (previous tensor ends at ", expected_begin, ")");
    }
    expected_begin = t.data_end;
    previous = &t.name;
  }
  if (expected_begin != data_size) {
    fail(ErrorCode::invalid_model, fname, ": ", data_size - expected_begin,
         " trailing bytes after the last tensor (data is ", data_size, " bytes, tensors cover ", expected_begin,
         "): the file is not fully covered by tensors");
  }

  const std::byte* data = bytes.data() + 8 + n_header;
  for (size_t i = 0; i < out.tensors_.size(); ++i) {
    StTensor& t = out.tensors_[i];
    t.bytes = {data + t.data_begin, static_cast<size_t>(t.data_end - t.data_begin)};
    out.index_.emplace(t.name, i);
  }
  return out;
}

const StTensor* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

SafetensorsSet SafetensorsSet::open(const FileMap& files) {
  SafetensorsSet set;
  auto add_file = [&](SafetensorsFile f) {
    const size_t file_i = set.files_.size();
    for (size_t t = 0; t < f.tensors().size(); ++t) {
      const std::string& name = f.tensors()[t].name;
      auto [it, inserted] = set.index_.emplace(name, std::make_pair(file_i, t));
      if (!inserted) {
        fail(ErrorCode::invalid_model, "tensor \"", name, "\" is in two files: ",
             file_base_name(set.files_[it->second.first].name()), " and ", file_base_name(f.name()));
      }
    }
    set.files_.push_back(std::move(f));
  };

  auto index_it = files.find(std::string(kIndexName));
  if (index_it == files.end()) {
    for (const auto& [logical, path] : files) {
      if (logical.ends_with(".safetensors")) add_file(SafetensorsFile::open(path));
    }
    if (set.files_.empty()) fail(ErrorCode::invalid_model, "the model has no *.safetensors weights");
    return set;
  }

  const std::string where = index_it->second.string();
  auto mapped = MappedFile::open(index_it->second);
  if (mapped->size_bytes() > kMaxIndexBytes) {
    fail(ErrorCode::invalid_model, where, ": ", mapped->size_bytes(), " bytes is over the ", kMaxIndexBytes,
         "-byte limit for an index");
  }
  json index;
  try {
    index = parse_json_strict(
        std::string_view(reinterpret_cast<const char*>(mapped->bytes().data()), mapped->size_bytes()), where);
  } catch (const Error& e) {
    throw Error(ErrorCode::invalid_model, e.what());
  }
  if (!index.is_object()) fail(ErrorCode::invalid_model, where, ": must be a JSON object, found ", describe(index));
  if (index.contains("metadata") && !index["metadata"].is_object() && !index["metadata"].is_null()) {
    fail(ErrorCode::invalid_model, where, ": metadata must be an object, found ", describe(index["metadata"]));
  }
  if (!index.contains("weight_map") || !index["weight_map"].is_object()) {
    fail(ErrorCode::invalid_model, where, ": weight_map must be an object mapping tensor names to shard files");
  }
  const json& weight_map = index["weight_map"];

  std::map<std::string, std::vector<std::string>> by_shard;  // shard -> tensors the index puts there
  for (const auto& [tensor, shard_json] : weight_map.items()) {
    if (!shard_json.is_string()) {
      fail(ErrorCode::invalid_model, where, ": weight_map[\"", tensor, "\"] must be a file name, found ",
           describe(shard_json));
    }
    const auto& shard = shard_json.get_ref<const std::string&>();
    if (shard.empty() || shard.find('/') != std::string::npos || shard.find('\\') != std::string::npos ||
        shard.find("..") != std::string::npos || shard.find('\0') != std::string::npos) {
      fail(ErrorCode::invalid_model, where, ": weight_map[\"", tensor, "\"] = \"", shard,
           "\" is not a plain file name inside the model folder");
    }
    if (!files.contains(shard)) {
      fail(ErrorCode::invalid_model, where, ": weight_map[\"", tensor, "\"] names shard \"", shard,
           "\", which is not in the model folder");
    }
    by_shard[shard].push_back(tensor);
  }
  if (by_shard.empty()) fail(ErrorCode::invalid_model, where, ": weight_map is empty");

  for (const auto& [shard, tensors] : by_shard) {
    SafetensorsFile f = SafetensorsFile::open(files.at(shard));
    for (const std::string& tensor : tensors) {
      if (!f.find(tensor)) {
        fail(ErrorCode::invalid_model, where, ": tensor \"", tensor, "\" is mapped to ", shard,
             " but that shard does not contain it");
      }
    }
    for (const StTensor& t : f.tensors()) {
      if (!weight_map.contains(t.name)) {
        fail(ErrorCode::invalid_model, shard, ": tensor \"", t.name, "\" is not listed in ", kIndexName);
      }
    }
    add_file(std::move(f));
  }
  return set;
}

SafetensorsSet SafetensorsSet::open_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::directory_iterator it(dir, ec);
  if (ec) {
    fail(ec == std::errc::no_such_file_or_directory ? ErrorCode::not_found : ErrorCode::io, "cannot list ",
         dir.string(), ": ", ec.message());
  }
  FileMap files;
  for (; it != std::filesystem::directory_iterator(); it.increment(ec)) {
    if (ec) break;
    std::error_code type_ec;
    // is_regular_file follows symlinks: HF cache snapshots link into ../../blobs.
    if (it->is_regular_file(type_ec)) files.emplace(it->path().filename().string(), it->path());
  }
  if (ec) fail(ErrorCode::io, "cannot list ", dir.string(), ": ", ec.message());
  return open(files);
}

const StTensor* SafetensorsSet::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &files_[it->second.first].tensors()[it->second.second];
}

const StTensor& SafetensorsSet::get(std::string_view name, StDtype dtype, std::span<const int64_t> shape) const {
  const StTensor* t = find(name);
  if (!t) {
    fail(ErrorCode::invalid_model, "tensor ", name, ": missing (expected ", to_string(dtype), " ",
         shape_string(shape), ")");
  }
  if (t->dtype != dtype || !std::equal(shape.begin(), shape.end(), t->shape.begin(), t->shape.end())) {
    const auto& file = files_[index_.find(name)->second.first];
    fail(ErrorCode::invalid_model, "tensor ", name, ": expected ", to_string(dtype), " ", shape_string(shape),
         ", found ", to_string(t->dtype), " ", shape_string(t->shape), " (in ", file_base_name(file.name()), ")");
  }
  return *t;
}

std::vector<const StTensor*> SafetensorsSet::all() const {
  std::vector<const StTensor*> out;
  out.reserve(index_.size());
  for (const auto& [name, loc] : index_) out.push_back(&files_[loc.first].tensors()[loc.second]);
  return out;
}

std::vector<float> st_to_f32(const StTensor& t) {
  std::vector<float> out(t.n_elements);
  const std::byte* p = t.bytes.data();
  switch (t.dtype) {
    case StDtype::F32:
      if (!out.empty()) std::memcpy(out.data(), p, out.size() * sizeof(float));
      break;
    case StDtype::F16:
    case StDtype::BF16:
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t h;
        std::memcpy(&h, p + 2 * i, 2);  // no alignment assumed: other writers may not align
        out[i] = t.dtype == StDtype::F16 ? kernels::cpu::f16_to_f32(h) : kernels::cpu::bf16_to_f32(h);
      }
      break;
    default:
      fail(ErrorCode::unsupported, "tensor ", t.name, ": cannot convert ", to_string(t.dtype),
           " to F32 (F32, F16 and BF16 are supported)");
  }
  return out;
}

void write_safetensors(const std::filesystem::path& path, std::span<const StWriteTensor> tensors,
                       const std::map<std::string, std::string>& metadata) {
  std::set<std::string_view> names;
  for (const StWriteTensor& t : tensors) {
    if (t.name.empty() || t.name == "__metadata__") {
      fail(ErrorCode::invalid_argument, path.string(), ": invalid tensor name \"", t.name, "\"");
    }
    if (!names.insert(t.name).second) {
      fail(ErrorCode::invalid_argument, path.string(), ": duplicate tensor name \"", t.name, "\"");
    }
    uint64_t n_bytes = st_dtype_size(t.dtype);
    for (int64_t d : t.shape) {
      if (d < 0 || __builtin_mul_overflow(n_bytes, static_cast<uint64_t>(d), &n_bytes)) {
        fail(ErrorCode::invalid_argument, path.string(), ": tensor \"", t.name, "\": invalid shape ",
             shape_string(t.shape));
      }
    }
    if (n_bytes != t.data.size()) {
      fail(ErrorCode::invalid_argument, path.string(), ": tensor \"", t.name, "\": ", to_string(t.dtype), " ",
           shape_string(t.shape), " needs ", n_bytes, " bytes, got ", t.data.size());
    }
  }

  std::vector<const StWriteTensor*> order;
  for (const StWriteTensor& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const StWriteTensor* a, const StWriteTensor* b) {
    const size_t sa = st_dtype_size(a->dtype), sb = st_dtype_size(b->dtype);
    return sa != sb ? sa > sb : a->name < b->name;
  });

  json header = json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  uint64_t offset = 0;
  for (const StWriteTensor* t : order) {
    const uint64_t end = offset + t->data.size();
    header[t->name] = {{"dtype", to_string(t->dtype)}, {"shape", t->shape}, {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string header_text;
  try {
    header_text = header.dump();
  } catch (const json::exception& e) {
    fail(ErrorCode::invalid_argument, path.string(), ": tensor names and metadata must be UTF-8: ", e.what());
  }
  // Why pad: the data buffer then starts 8-byte aligned, so each tensor is aligned to its dtype.
  header_text.append((8 - header_text.size() % 8) % 8, ' ');
  const uint64_t n_header = header_text.size();

  write_file_atomic(path, [&](int fd) {
    int err = write_all(fd, &n_header, 8);
    if (!err) err = write_all(fd, header_text.data(), header_text.size());
    for (const StWriteTensor* t : order) {
      if (err) break;
      err = write_all(fd, t->data.data(), t->data.size());
    }
    return err;
  });
  fsync_dir(path.parent_path());
}

}  // namespace gptqd::engine
