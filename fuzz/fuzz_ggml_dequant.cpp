// SPDX-License-Identifier: Apache-2.0
// Fuzzes kernels::cpu::dequantize_ggml with fuzzed block bytes: byte 0 picks the ggml type, the
// rest is whole blocks of it. Every known type is tried; unsupported ones must say so.
#include <cmath>
#include <vector>

#include "kernels/cpu/ggml_dequant.h"
#include "kernels/status.h"

using namespace gptqd::kernels;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const uint32_t type = data[0] % 40;
  const cpu::GgmlTypeTraits* traits = cpu::ggml_type_traits(type);
  if (traits == nullptr) return 0;
  const size_t n_blocks = (size - 1) / traits->block_bytes;
  // An exact copy so ASan sees reads past the blocks the call was given.
  std::vector<uint8_t> src(data + 1, data + 1 + n_blocks * traits->block_bytes);
  const int64_t n_elements = static_cast<int64_t>(n_blocks) * traits->block_elems;
  std::vector<float> dst(static_cast<size_t>(n_elements));
  const KernelStatus st = cpu::dequantize_ggml(type, src.data(), n_elements, dst.data());
  if (traits->can_dequantize && st != KernelStatus::ok) __builtin_trap();
  if (!traits->can_dequantize && st == KernelStatus::ok) __builtin_trap();
  // A partial block must be refused, never read past.
  if (traits->block_elems > 1 && n_elements > 0) {
    std::vector<float> one(traits->block_elems);
    if (cpu::dequantize_ggml(type, src.data(), traits->block_elems - 1, one.data()) == KernelStatus::ok) {
      __builtin_trap();
    }
  }
  return 0;
}
