# SPDX-License-Identifier: Apache-2.0
# Cross-check of gptqd's safetensors reader/writer against the `safetensors` Python package
# (test support for tests/engine/safetensors_reference_test.cpp).
#
#   safetensors_reference.py write DIR   writes DIR/py.safetensors (safetensors.numpy.save_file),
#                                        DIR/py_bf16.safetensors (safetensors.serialize_file: numpy
#                                        has no bfloat16) and DIR/py.json: the expected values.
#   safetensors_reference.py check DIR   loads DIR/cpp.safetensors with safetensors.numpy.load_file
#                                        and DIR/cpp_bf16.safetensors with safetensors.deserialize,
#                                        compares them with DIR/cpp.json, and compares the data
#                                        buffer of DIR/cpp_layout.safetensors with the reference
#                                        writer's for the same tensors.
# Sidecar JSON: {"<file>": {"metadata": {...}, "tensors": {"<name>": {"dtype": "F16",
# "shape": [...], "values": [flattened, row-major]}}}}. Exit status 0 = agreement.
import json
import struct
import sys

import numpy as np
import safetensors
import safetensors.numpy

ST_DTYPE = {
    np.dtype(np.bool_): "BOOL", np.dtype(np.uint8): "U8", np.dtype(np.int8): "I8",
    np.dtype(np.int16): "I16", np.dtype(np.uint16): "U16", np.dtype(np.float16): "F16",
    np.dtype(np.int32): "I32", np.dtype(np.uint32): "U32", np.dtype(np.float32): "F32",
    np.dtype(np.float64): "F64", np.dtype(np.int64): "I64", np.dtype(np.uint64): "U64",
}
# Names that safetensors.serialize accepts.
PY_DTYPE = {
    "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16", "F16": "float16",
    "BF16": "bfloat16", "I32": "int32", "U32": "uint32", "F32": "float32", "F64": "float64",
    "I64": "int64", "U64": "uint64",
}


def ramp(shape, dtype, base, step):
    n = int(np.prod(shape, dtype=np.int64))
    values = [base + step * j for j in range(n)]
    return np.array(values, dtype=dtype).reshape(shape)


def numpy_tensors():
    return {
        "model.embed_tokens.weight": ramp((7, 3), np.float16, -2.0, 0.25),
        "model.norm.weight": ramp((5,), np.float32, 1.0, 0.125),
        "lm_head.weight": np.zeros((0, 3), dtype=np.float32),
        "scalar": np.array(42.5, dtype=np.float32),
        "model.layers.0.mlp.down_proj.qweight": ramp((4, 6), np.int32, -(2**31), 178956970),
        "model.layers.0.mlp.down_proj.g_idx": ramp((8,), np.int32, 0, 1) // 4,
        "i64": ramp((3,), np.int64, -5 * 10**12, 4 * 10**12),
        "f64": ramp((2,), np.float64, 3.25, -7.5),
        "u8": ramp((9,), np.uint8, 0, 31),
        "i8": ramp((5,), np.int8, -100, 50),
        "i16": ramp((3,), np.int16, -30000, 30000),
        "u16": ramp((2,), np.uint16, 1, 65000),
        "u32": ramp((2,), np.uint32, 7, 4 * 10**9),
        "u64": ramp((2,), np.uint64, 1, 2**63),
        "flags": np.array([True, False, True]),
    }


def bf16_values():
    return [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0, 65536.0]


def to_bf16_bytes(values):
    bits = np.array(values, dtype=np.float32).view(np.uint32) >> 16
    return bits.astype("<u2").tobytes()


def describe(arr, dtype=None):
    return {"dtype": dtype or ST_DTYPE[arr.dtype], "shape": list(arr.shape), "values": arr.reshape(-1).tolist()}


def cmd_write(out_dir):
    tensors = numpy_tensors()
    metadata = {"format": "pt", "note": "written by safetensors-python \u00e9"}
    safetensors.numpy.save_file(tensors, f"{out_dir}/py.safetensors", metadata=metadata)
    raw = {
        "b.bf16": {"dtype": "bfloat16", "shape": [2, 4], "data": to_bf16_bytes(bf16_values())},
        "a.f16": {"dtype": "float16", "shape": [3], "data": np.array([0.5, -0.25, 2.0], dtype="<f2").tobytes()},
    }
    safetensors.serialize_file(raw, f"{out_dir}/py_bf16.safetensors", metadata={"format": "pt"})
    sidecar = {
        "py.safetensors": {"metadata": metadata, "tensors": {k: describe(v) for k, v in tensors.items()}},
        "py_bf16.safetensors": {
            "metadata": {"format": "pt"},
            "tensors": {
                "b.bf16": {"dtype": "BF16", "shape": [2, 4], "values": bf16_values()},
                "a.f16": {"dtype": "F16", "shape": [3], "values": [0.5, -0.25, 2.0]},
            },
        },
    }
    with open(f"{out_dir}/py.json", "w", encoding="utf-8") as f:
        json.dump(sidecar, f)
    return 0


def header_of(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def compare(errors, fname, name, arr, want):
    shape = list(arr.shape)
    if shape != want["shape"]:
        errors.append(f"{fname}:{name}: shape {shape} != {want['shape']}")
        return
    got = arr.reshape(-1).tolist()
    if got != want["values"]:
        errors.append(f"{fname}:{name}: values {got[:8]} != {want['values'][:8]}")


def cmd_check(in_dir):
    with open(f"{in_dir}/cpp.json", encoding="utf-8") as f:
        sidecar = json.load(f)
    errors = []
    for fname, spec in sidecar.items():
        path = f"{in_dir}/{fname}"
        n_header, header, data = header_of(path)
        if n_header % 8 != 0:
            errors.append(f"{fname}: header length {n_header} is not a multiple of 8")
        with safetensors.safe_open(path, framework="numpy") as f:
            if (f.metadata() or {}) != spec["metadata"]:
                errors.append(f"{fname}: metadata {f.metadata()} != {spec['metadata']}")
        has_bf16 = any(t["dtype"] == "BF16" for t in spec["tensors"].values())
        if not has_bf16:
            loaded = safetensors.numpy.load_file(path)
            if sorted(loaded) != sorted(spec["tensors"]):
                errors.append(f"{fname}: tensors {sorted(loaded)} != {sorted(spec['tensors'])}")
            for name, want in spec["tensors"].items():
                if name not in loaded:
                    continue
                arr = loaded[name]
                if ST_DTYPE[arr.dtype] != want["dtype"]:
                    errors.append(f"{fname}:{name}: dtype {ST_DTYPE[arr.dtype]} != {want['dtype']}")
                compare(errors, fname, name, arr, want)
        else:
            with open(path, "rb") as f:
                loaded = dict(safetensors.deserialize(f.read()))
            for name, want in spec["tensors"].items():
                t = loaded.get(name)
                if t is None:
                    errors.append(f"{fname}:{name}: missing")
                    continue
                if t["dtype"] != want["dtype"]:
                    errors.append(f"{fname}:{name}: dtype {t['dtype']} != {want['dtype']}")
                    continue
                if t["dtype"] == "BF16":
                    bits = np.frombuffer(bytes(t["data"]), dtype="<u2").astype(np.uint32) << 16
                    arr = bits.view(np.float32).reshape(t["shape"])
                else:
                    np_dtype = next(k for k, v in ST_DTYPE.items() if v == t["dtype"])
                    arr = np.frombuffer(bytes(t["data"]), dtype=np_dtype.newbyteorder("<")).reshape(t["shape"])
                compare(errors, fname, name, arr, want)

    # Layout: one dtype per element size, so the reference writer's order (dtype descending, then
    # name) and gptqd's (alignment descending, then name) must give the same data buffer.
    path = f"{in_dir}/cpp_layout.safetensors"
    _, header, data = header_of(path)
    with open(path, "rb") as f:
        loaded = dict(safetensors.deserialize(f.read()))
    ref = bytes(
        safetensors.serialize(
            {k: {**v, "dtype": PY_DTYPE[v["dtype"]], "data": bytes(v["data"])} for k, v in loaded.items()}
        )
    )
    (n_ref,) = struct.unpack("<Q", ref[:8])
    if ref[8 + n_ref :] != data:
        errors.append("cpp_layout.safetensors: data buffer differs from the reference writer's layout")
    ref_header = json.loads(ref[8 : 8 + n_ref])
    for name, entry in ref_header.items():
        if name != "__metadata__" and header[name]["data_offsets"] != entry["data_offsets"]:
            got = header[name]["data_offsets"]
            errors.append(f"cpp_layout.safetensors:{name}: offsets {got} != {entry['data_offsets']}")

    for e in errors:
        print(e)
    print("ok" if not errors else f"{len(errors)} mismatches")
    return 0 if not errors else 1


def main(argv):
    if len(argv) != 3 or argv[1] not in ("write", "check"):
        print(__doc__ or "usage: safetensors_reference.py write|check DIR", file=sys.stderr)
        return 2
    return cmd_write(argv[2]) if argv[1] == "write" else cmd_check(argv[2])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
