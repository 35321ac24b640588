# SPDX-License-Identifier: Apache-2.0
# Reference dumps of GGUF files from the `gguf` Python package, read by
# tests/engine/gguf_reference_test.cpp (tests).
#
#   gguf_reference.py synthetic OUT.gguf   writes a GGUF with every metadata value type and one
#                                          tensor per dequantizable ggml type
#   gguf_reference.py dump IN.gguf PREFIX  writes PREFIX.json (GGUFReader's metadata and tensor
#                                          infos) and PREFIX.f32 (gguf.quants.dequantize of every
#                                          tensor: per tensor u32 name length, name, u64 count,
#                                          float32[count], little-endian)
import json
import struct
import sys

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT

# Byte offsets of the fp16 scale fields inside one block of each type (the rest is random).
SCALE_FIELDS = {
    QT.Q4_0: [0], QT.Q4_1: [0, 2], QT.Q5_0: [0], QT.Q5_1: [0, 2], QT.Q8_0: [0],
    QT.Q2_K: [80, 82], QT.Q3_K: [108], QT.Q4_K: [0, 2], QT.Q5_K: [0, 2], QT.Q6_K: [208],
}
QUANTIZABLE = [QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1]


def sane_scales(rng, n):
    """fp16 scales as real files have them: mostly 1e-4..1e-1 of either sign, some 0 and subnormal."""
    mag = 10.0 ** rng.uniform(-4, -1, size=n)
    d = (mag * rng.choice([-1.0, 1.0], size=n)).astype(np.float16)
    d[rng.random(n) < 0.05] = 0
    sub = rng.random(n) < 0.05
    d[sub] = np.float16(2.0 ** -20)
    return d


def random_blocks(rng, qtype, rows, cols):
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block_elems
    blocks = rng.integers(0, 256, size=(n_blocks, block_bytes), dtype=np.uint8)
    for off in SCALE_FIELDS[qtype]:
        blocks[:, off:off + 2] = sane_scales(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    return blocks.reshape(rows, cols // block_elems * block_bytes)


def write_synthetic(path):
    rng = np.random.default_rng(20240601)
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_custom_alignment(64)
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4000000000)
    w.add_int32("t.i32", -2000000000)
    w.add_float32("t.f32", 0.1)
    w.add_uint64("t.u64", 2**64 - 1)
    w.add_int64("t.i64", -2**63)
    w.add_float64("t.f64", -2.5e300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "h\u00e9llo \u2713 \U0001F600")
    w.add_array("t.i32s", [1, -2, 3])
    w.add_key_value("t.u8s", [1, 2, 255], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.UINT8)
    w.add_key_value("t.f64s", [0.5, -1e-300], gguf.GGUFValueType.ARRAY, sub_type=gguf.GGUFValueType.FLOAT64)
    w.add_array("t.f32s", [0.5, -1.25, 3.0e-8])
    w.add_array("t.bools", [True, False])
    w.add_array("t.strs", ["a", "", "ccc"])
    w.add_array("t.nested", [[1, 2], [3, 4, 5]])

    rows, cols = 8, 512
    x = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    x[0, :7] = [0.0, -0.0, 1e-8, -3.0, 65504.0, 1e-6, 0.25]
    w.add_tensor("f32", x)
    w.add_tensor("f16", x.astype(np.float16))
    w.add_tensor("bf16", gguf.quants.quantize(x, QT.BF16), raw_dtype=QT.BF16)
    every_half = np.arange(65536, dtype=np.uint32).astype(np.uint16).reshape(256, 256)
    w.add_tensor("f16.all_bits", every_half.view(np.float16))
    w.add_tensor("bf16.all_bits", every_half.view(np.uint8).reshape(256, 512), raw_dtype=QT.BF16)
    for qt in QUANTIZABLE:
        w.add_tensor(qt.name.lower(), gguf.quants.quantize(x, qt), raw_dtype=qt)
    for qt in SCALE_FIELDS:
        w.add_tensor(qt.name.lower() + ".random", random_blocks(rng, qt, rows, cols), raw_dtype=qt)
    w.add_tensor("f32.3d", rng.standard_normal((2, 3, 64)).astype(np.float32))
    w.add_tensor("f32.1d", rng.standard_normal(100).astype(np.float32))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def dump(path, prefix):
    r = gguf.GGUFReader(path)
    metadata = []
    for key, field in r.fields.items():
        if key.startswith("GGUF."):
            continue  # the reader's pseudo-fields for the header
        metadata.append({"key": key, "types": [t.name for t in field.types], "value": field.contents()})
    version = int(r.fields["GGUF.version"].parts[0][0])
    tensors = [{
        "name": t.name, "type": int(t.tensor_type), "ne": [int(d) for d in t.shape],
        "offset": int(t.data_offset), "n_elements": int(t.n_elements), "n_bytes": int(t.n_bytes),
    } for t in r.tensors]
    with open(prefix + ".json", "w", encoding="utf-8") as f:
        json.dump({"version": version, "alignment": int(r.alignment), "data_offset": int(r.data_offset),
                   "metadata": metadata, "tensors": tensors}, f, ensure_ascii=False)
    with open(prefix + ".f32", "wb") as f:
        for t in r.tensors:
            y = np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)
            assert y.size == t.n_elements, t.name
            name = t.name.encode("utf-8")
            f.write(struct.pack("<I", len(name)) + name + struct.pack("<Q", y.size))
            f.write(y.astype("<f4", copy=False).tobytes())


def main(argv):
    if len(argv) == 3 and argv[1] == "synthetic":
        write_synthetic(argv[2])
    elif len(argv) == 4 and argv[1] == "dump":
        dump(argv[2], argv[3])
    else:
        sys.exit("usage: gguf_reference.py synthetic OUT.gguf | dump IN.gguf PREFIX")


if __name__ == "__main__":
    main(sys.argv)
