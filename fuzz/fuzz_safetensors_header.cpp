// SPDX-License-Identifier: Apache-2.0
// Fuzzes SafetensorsFile::parse (header length, JSON header, dtypes, shapes, data_offsets) on a
// whole in-memory file, then reads every tensor it accepted (st_to_f32 for the float dtypes).
#include "engine/mapped_file.h"
#include "engine/safetensors.h"
#include "fuzz/fuzz_common.h"

using namespace gptqd;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::expect_clean([&] {
    auto file = engine::MappedFile::from_bytes(fuzz::to_bytes(data, size), "fuzz.safetensors");
    engine::SafetensorsFile st = engine::SafetensorsFile::parse(file);
    for (const engine::StTensor& t : st.tensors()) {
      if (t.bytes.size() != t.n_elements * engine::st_dtype_size(t.dtype)) {
        std::fprintf(stderr, "tensor %s: %zu bytes for %llu elements\n", t.name.c_str(), t.bytes.size(),
                     static_cast<unsigned long long>(t.n_elements));
        std::abort();
      }
      if (st.find(t.name) != &t) std::abort();
      if (t.n_elements <= (1u << 20)) {
        try {
          (void)engine::st_to_f32(t);
        } catch (const Error& e) {
          if (e.code() != ErrorCode::unsupported) throw;
        }
      }
    }
  });
  return 0;
}
