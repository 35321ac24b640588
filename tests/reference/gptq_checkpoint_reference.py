# SPDX-License-Identifier: Apache-2.0
# Independent reader of a GPTQ checkpoint folder (AutoGPTQ/GPTQModel "gptq" / "gptq_v2" format),
# written only from shared/docs/gptq-reference.md Part B (B.2-B.7, B.9) (test tooling).
#
#   gptq_checkpoint_reference.py DIR OUT.safetensors   validate DIR and write one F32 tensor
#                                                      "<prefix>.weight" [N, K] per quantized
#                                                      linear (the B.7 dequantization)
#   gptq_checkpoint_reference.py --self-test           check the unpackers against a tiny
#                                                      in-script packer and the B.3/B.4/B.5
#                                                      check values, plus end-to-end folder cases
#
# stdout (success): {"linears": n, "bits": b, "group_size": gs, "format": "gptq" | "gptq_v2"}
# Any violation: one message on stderr naming the file / tensor, exit status 1.
#
# Checks applied:
#   * quantize_config.json: bits in {2,3,4,8}, group_size > 0 or -1, sym / desc_act booleans,
#     checkpoint_format "gptq" (default when absent) or "gptq_v2", quant_method "gptq" when present;
#     config.json["quantization_config"] has identical bits, group_size, sym, desc_act,
#     checkpoint_format (B.8: "write both, identical").
#   * B.9: with model.safetensors.index.json, every weight_map entry exists in its shard, every
#     tensor of a listed shard is listed (exactly once, for that shard), total_size = sum of the
#     tensors' byte sizes; without it, every *.safetensors is read and names must be unique.
#     Every file's __metadata__ has format == "pt".
#   * B.2: qweight I32 [ceil(K*b/32), N], qzeros I32 [G, ceil(N*b/32)], scales F16 [G, N],
#     g_idx I32 [K], optional bias F16 [N]; G = ceil(K/gs) (1 for gs = -1); K = len(g_idx),
#     N = scales.shape[1]. When K*b or N*b is not a multiple of 32 (B.2 table: the packers require
#     it; GPTQModel sizes with ceil) the unused padding fields must be 0.
#   * B.5: zero = unpacked + 1 (v1) or unpacked (v2) must lie in [0, maxq] (a v1 field holding
#     maxq, i.e. zero maxq + 1, is the "zero 0 stored as -1" corruption); sym: every zero is
#     2^(b-1) and, for v1 without padding, every qzeros word is the B.5 constant.
#   * B.6 / A.8: g_idx in [0, G); group g holds exactly min(gs, K - g*gs) features; without
#     act-order (or gs = -1) g_idx[k] == k // gs (0 for gs = -1). scales finite.
import glob
import json
import math
import os
import struct
import sys
import tempfile

import numpy as np
import safetensors
import safetensors.numpy

# B.10 dtype sizes in bits.
DTYPE_BITS = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8,
    "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}

# B.5 symmetric v1 qzeros words (zero 2^(b-1) stored as 2^(b-1) - 1).
SYM_V1_WORDS = {2: [0x55555555], 4: [0x77777777], 8: [0x7F7F7F7F],
                3: [0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D]}


class CheckpointError(Exception):
    pass


def fail(msg):
    raise CheckpointError(msg)


# ------------------------------------------------------------------------------------------------
# Unpacking (B.3, B.4). `words` is a uint32 array [R, C]; codes run along axis 0 (along K for
# qweight; qzeros is transposed first so that its N axis is axis 0).
# ------------------------------------------------------------------------------------------------
def packed_rows(count, bits):
    return (count * bits + 31) // 32  # = count*b/32 when divisible (B.2), ceil otherwise (GM)


def unpack_axis0(words, bits, count, what):
    words = np.asarray(words).astype(np.uint32, copy=False)
    R, C = words.shape
    maxq = np.uint32(2 ** bits - 1)
    if bits in (2, 4, 8):
        # B.3: q[k] = (word[k / pf] >> (b * (k % pf))) & maxq, first feature in the LSBs.
        pf = 32 // bits
        shifts = (np.arange(pf, dtype=np.uint32) * np.uint32(bits))
        codes = (words[:, None, :] >> shifts[None, :, None]) & maxq  # [R, pf, C]
        codes = codes.reshape(R * pf, C)
    elif bits == 3:
        # B.4: 32 codes in 3 words, the field table taken literally.
        pad = (-R) % 3
        if pad:
            words = np.concatenate([words, np.zeros((pad, C), np.uint32)], axis=0)
        w0, w1, w2 = words[0::3], words[1::3], words[2::3]
        T = w0.shape[0]
        v = np.zeros((T, 32, C), dtype=np.uint32)
        seven = np.uint32(7)
        for i in range(10):
            v[:, i] = (w0 >> np.uint32(3 * i)) & seven  # w0 bits 0-29: v0..v9 at 3i
        v[:, 10] = ((w0 >> np.uint32(30)) & np.uint32(3)) | ((w1 & np.uint32(1)) << np.uint32(2))
        for i in range(10):
            v[:, 11 + i] = (w1 >> np.uint32(3 * i + 1)) & seven  # w1 bits 1-30: v11..v20 at 3i+1
        v[:, 21] = ((w1 >> np.uint32(31)) & np.uint32(1)) | ((w2 & np.uint32(3)) << np.uint32(1))
        for i in range(10):
            v[:, 22 + i] = (w2 >> np.uint32(3 * i + 2)) & seven  # w2 bits 2-31: v22..v31 at 3i+2
        codes = v.reshape(T * 32, C)
    else:
        fail(f"unsupported bits {bits}")
    if codes.shape[0] < count:
        fail(f"{what}: {R} packed rows hold {codes.shape[0]} codes, need {count}")
    if np.any(codes[count:] != 0):
        fail(f"{what}: padding fields past {count} codes are not zero")
    return codes[:count].astype(np.int32)


# ------------------------------------------------------------------------------------------------
# safetensors files: header (B.10 layout) for names/dtypes/shapes/metadata, data via safetensors.
# ------------------------------------------------------------------------------------------------
def read_header(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                fail(f"{path}: header too small")
            (n,) = struct.unpack("<Q", head)
            if n > 100_000_000:
                fail(f"{path}: header too large")
            hb = f.read(n)
            if len(hb) != n:
                fail(f"{path}: invalid header length")
        header = json.loads(hb.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        fail(f"{path}: cannot read safetensors header: {e}")
    if not isinstance(header, dict):
        fail(f"{path}: header is not a JSON object")
    meta = header.pop("__metadata__", None)
    try:
        with safetensors.safe_open(path, framework="np"):  # the package's full validation
            pass
    except Exception as e:  # noqa: BLE001 - any parse error is a violation
        fail(f"{path}: safetensors rejects the file: {e}")
    tensors = {}
    for name, info in header.items():
        dt = info.get("dtype")
        if dt not in DTYPE_BITS:
            fail(f"{path}: tensor {name}: unknown dtype {dt!r}")
        shape = [int(d) for d in info["shape"]]
        nbytes = math.prod(shape) * DTYPE_BITS[dt] // 8
        tensors[name] = {"dtype": dt, "shape": shape, "nbytes": nbytes}
    return meta, tensors


def check_format_pt(path, meta):
    if not isinstance(meta, dict) or meta.get("format") != "pt":
        fail(f"{path}: __metadata__ must contain format == \"pt\", got {meta!r}")


def load_tensor_map(d):
    """name -> (file path, header info); applies the B.9 rules."""
    index_path = os.path.join(d, "model.safetensors.index.json")
    where = {}
    if os.path.exists(index_path):
        try:
            with open(index_path, encoding="utf-8") as f:
                index = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            fail(f"{index_path}: {e}")
        wm = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(wm, dict) or not wm:
            fail(f"{index_path}: missing or empty weight_map")
        md = index.get("metadata")
        if not isinstance(md, dict) or not isinstance(md.get("total_size"), int) \
                or isinstance(md.get("total_size"), bool):
            fail(f"{index_path}: metadata.total_size missing or not an integer")
        shards = {}
        for name, shard in wm.items():
            if not isinstance(shard, str) or os.path.basename(shard) != shard:
                fail(f"{index_path}: weight_map[{name!r}] = {shard!r} is not a file name")
            if shard not in shards:
                p = os.path.join(d, shard)
                if not os.path.isfile(p):
                    fail(f"{index_path}: shard {shard} (for {name}) does not exist")
                meta, tensors = read_header(p)
                check_format_pt(p, meta)
                shards[shard] = (p, tensors)
            p, tensors = shards[shard]
            if name not in tensors:
                fail(f"{index_path}: tensor {name} is not in shard {shard}")
            where[name] = (p, tensors[name])
        for shard, (p, tensors) in shards.items():
            for name in tensors:
                if wm.get(name) != shard:
                    fail(f"{p}: tensor {name} is not listed for this shard in the weight_map "
                         f"(listed: {wm.get(name)!r})")
        total = sum(info["nbytes"] for _, info in where.values())
        if total != md["total_size"]:
            fail(f"{index_path}: total_size {md['total_size']} != sum of tensor byte sizes {total}")
    else:
        files = sorted(glob.glob(os.path.join(d, "*.safetensors")))
        if not files:
            fail(f"{d}: no *.safetensors files")
        for p in files:
            meta, tensors = read_header(p)
            check_format_pt(p, meta)
            for name, info in tensors.items():
                if name in where:
                    fail(f"{p}: tensor {name} also in {where[name][0]}")
                where[name] = (p, info)
    return where


# ------------------------------------------------------------------------------------------------
# Configuration (B.8).
# ------------------------------------------------------------------------------------------------
KEYS = ("bits", "group_size", "sym", "desc_act", "checkpoint_format")


def load_config(d):
    qc_path = os.path.join(d, "quantize_config.json")
    cfg_path = os.path.join(d, "config.json")
    try:
        with open(qc_path, encoding="utf-8") as f:
            qc = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{qc_path}: {e}")
    if not isinstance(qc, dict):
        fail(f"{qc_path}: not a JSON object")
    for k in ("bits", "group_size", "sym", "desc_act"):
        if k not in qc:
            fail(f"{qc_path}: missing key {k}")
    bits, gs = qc["bits"], qc["group_size"]
    if type(bits) is not int or bits not in (2, 3, 4, 8):
        fail(f"{qc_path}: bits must be 2, 3, 4 or 8, got {bits!r}")
    if type(gs) is not int or not (gs == -1 or gs > 0):
        fail(f"{qc_path}: group_size must be > 0 or -1, got {gs!r}")
    for k in ("sym", "desc_act"):
        if type(qc[k]) is not bool:
            fail(f"{qc_path}: {k} must be a boolean, got {qc[k]!r}")
    fmt = qc.get("checkpoint_format", "gptq")
    if fmt not in ("gptq", "gptq_v2"):
        fail(f"{qc_path}: checkpoint_format must be \"gptq\" or \"gptq_v2\", got {fmt!r}")
    if "quant_method" in qc and str(qc["quant_method"]).lower() != "gptq":
        fail(f"{qc_path}: quant_method must be \"gptq\", got {qc['quant_method']!r}")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        fail(f"{cfg_path}: {e}")
    hq = cfg.get("quantization_config") if isinstance(cfg, dict) else None
    if not isinstance(hq, dict):
        fail(f"{cfg_path}: no quantization_config object")
    for k in KEYS:
        a = qc.get(k, "gptq" if k == "checkpoint_format" else None)
        b = hq.get(k, "gptq" if k == "checkpoint_format" else None)
        if type(a) is not type(b) or a != b:
            fail(f"{cfg_path}: quantization_config.{k} = {b!r} differs from quantize_config.json "
                 f"{k} = {a!r}")
    return bits, gs, qc["sym"], qc["desc_act"], fmt


# ------------------------------------------------------------------------------------------------
# One quantized linear: validate (B.2, B.5, B.6) and dequantize (B.7).
# ------------------------------------------------------------------------------------------------
def dequantize_linear(prefix, where, bits, gs, sym, desc_act, fmt):
    maxq = 2 ** bits - 1
    info = {}
    for part, dt in (("qweight", "I32"), ("qzeros", "I32"), ("scales", "F16"), ("g_idx", "I32")):
        name = f"{prefix}.{part}"
        if name not in where:
            fail(f"{name}: missing (needed with {prefix}.qweight)")
        p, h = where[name]
        if h["dtype"] != dt:
            fail(f"{name} ({p}): dtype {h['dtype']}, expected {dt}")
        info[part] = (name, p, h)

    def load(part):
        name, p, _ = info[part]
        with safetensors.safe_open(p, framework="np") as f:
            return f.get_tensor(name)

    gname, gp, gh = info["g_idx"]
    sname, sp, sh = info["scales"]
    if len(gh["shape"]) != 1 or gh["shape"][0] <= 0:
        fail(f"{gname} ({gp}): shape {gh['shape']}, expected [K] with K > 0")
    if len(sh["shape"]) != 2 or sh["shape"][1] <= 0:
        fail(f"{sname} ({sp}): shape {sh['shape']}, expected [G, N] with N > 0")
    K, N = gh["shape"][0], sh["shape"][1]
    G = 1 if gs == -1 else (K + gs - 1) // gs
    expect = {"qweight": [packed_rows(K, bits), N], "qzeros": [G, packed_rows(N, bits)],
              "scales": [G, N], "g_idx": [K]}
    for part, shape in expect.items():
        name, p, h = info[part]
        if h["shape"] != shape:
            fail(f"{name} ({p}): shape {h['shape']}, expected {shape} "
                 f"(K={K}, N={N}, G={G}, bits={bits}, group_size={gs})")
    bname = f"{prefix}.bias"
    if bname in where:
        p, h = where[bname]
        if h["dtype"] != "F16" or h["shape"] != [N]:
            fail(f"{bname} ({p}): {h['dtype']} {h['shape']}, expected F16 [{N}]")

    qweight = load("qweight")
    qzeros = load("qzeros")
    scales = load("scales")
    g_idx = load("g_idx").astype(np.int64)

    # B.6 / A.8 g_idx.
    if g_idx.min() < 0 or g_idx.max() >= G:
        bad = int(np.nonzero((g_idx < 0) | (g_idx >= G))[0][0])
        fail(f"{gname} ({gp}): g_idx[{bad}] = {int(g_idx[bad])} outside [0, {G})")
    if gs != -1:
        counts = np.bincount(g_idx, minlength=G)
        sizes = np.array([min(gs, K - g * gs) for g in range(G)])
        if not np.array_equal(counts, sizes):
            g = int(np.nonzero(counts != sizes)[0][0])
            fail(f"{gname} ({gp}): group {g} has {int(counts[g])} features, expected {int(sizes[g])}")
    trivial = np.arange(K, dtype=np.int64) // (K if gs == -1 else gs)
    if (not desc_act or gs == -1) and not np.array_equal(g_idx, trivial):
        k = int(np.nonzero(g_idx != trivial)[0][0])
        fail(f"{gname} ({gp}): g_idx[{k}] = {int(g_idx[k])}, expected k // group_size = "
             f"{int(trivial[k])} (desc_act false or group_size -1)")

    if not np.all(np.isfinite(scales)):
        fail(f"{sname} ({sp}): non-finite scale")

    # B.3/B.4 codes along K: q[k, n].
    qname, qp, _ = info["qweight"]
    q = unpack_axis0(qweight.view(np.uint32), bits, K, f"{qname} ({qp})")

    # B.5 zeros along N.
    zname, zp, _ = info["qzeros"]
    zu = unpack_axis0(np.ascontiguousarray(qzeros.view(np.uint32).T), bits, N, f"{zname} ({zp})").T
    z = zu + 1 if fmt == "gptq" else zu  # [G, N]
    if z.max() > maxq:
        g, n = (int(i[0]) for i in np.nonzero(z > maxq))
        fail(f"{zname} ({zp}): zero[{g}, {n}] = {int(z[g, n])} > maxq {maxq}"
             + (" (v1 field holds maxq: an asymmetric zero of 0 stored as -1)" if fmt == "gptq" else ""))
    if sym:
        half = 2 ** (bits - 1)
        if np.any(z != half):
            g, n = (int(i[0]) for i in np.nonzero(z != half))
            fail(f"{zname} ({zp}): sym checkpoint but zero[{g}, {n}] = {int(z[g, n])} != {half}")
        if fmt == "gptq" and (N * bits) % 32 == 0 and (bits != 3 or N % 32 == 0):
            consts = SYM_V1_WORDS[bits]
            words = qzeros.view(np.uint32)
            expectw = np.array([consts[c % len(consts)] for c in range(words.shape[1])], np.uint32)
            if not np.all(words == expectw[None, :]):
                g, c = (int(i[0]) for i in np.nonzero(words != expectw[None, :]))
                fail(f"{zname} ({zp}): sym v1 word [{g}, {c}] = {int(words[g, c]):#010x}, "
                     f"expected {int(expectw[c]):#010x}")

    # B.7 W[n, k] = scales[g, n] * (q[k, n] - z[g, n]), g = g_idx[k]; exact integer difference,
    # fp16 scale widened to fp32, product in fp32.
    diff = (q - z[g_idx, :]).astype(np.float32)  # [K, N], |diff| <= 255: exact
    s = scales.astype(np.float32)[g_idx, :]
    W = (s * diff).astype(np.float32)
    return np.ascontiguousarray(W.T)


def read_checkpoint(d):
    if not os.path.isdir(d):
        fail(f"{d}: not a directory")
    bits, gs, sym, desc_act, fmt = load_config(d)
    where = load_tensor_map(d)
    prefixes = sorted(n[:-len(".qweight")] for n in where if n.endswith(".qweight"))
    if not prefixes:
        fail(f"{d}: no tensor ends in .qweight")
    pset = set(prefixes)
    for n in where:
        for part in (".qzeros", ".scales", ".g_idx"):
            if n.endswith(part) and n[:-len(part)] not in pset:
                fail(f"{n} ({where[n][0]}): no matching {n[:-len(part)]}.qweight")
    out = {}
    for prefix in prefixes:
        out[prefix + ".weight"] = dequantize_linear(prefix, where, bits, gs, sym, desc_act, fmt)
    summary = {"linears": len(prefixes), "bits": bits, "group_size": gs, "format": fmt}
    return out, summary


# ------------------------------------------------------------------------------------------------
# --self-test: a tiny packer (a plain LSB-first bit stream built with Python integers, a different
# construction from the unpackers above), the B.3/B.4/B.5 check values and folder cases.
# ------------------------------------------------------------------------------------------------
def pack_axis0(codes, bits):
    """codes int [count, C] -> uint32 [ceil(count*b/32), C]: value i at stream bit b*i (B.3/B.4)."""
    codes = np.asarray(codes, dtype=np.int64)
    count, C = codes.shape
    R = packed_rows(count, bits)
    out = np.zeros((R, C), dtype=np.uint32)
    for c in range(C):
        stream = 0
        for i in range(count):
            v = int(codes[i, c])
            assert 0 <= v < 2 ** bits
            stream |= v << (bits * i)
        for r in range(R):
            out[r, c] = (stream >> (32 * r)) & 0xFFFFFFFF
    return out


def write_checkpoint(d, linears, bits, gs, sym, desc_act, fmt, shards=1, cfg_override=None,
                     total_size_delta=0, fmt_meta="pt"):
    """linears: {prefix: (codes [N,K], zeros [N,G], scales f16 [N,G], g_idx [K])}."""
    os.makedirs(d, exist_ok=True)
    qc = {"bits": bits, "group_size": gs, "damp_percent": 0.01, "desc_act": desc_act,
          "static_groups": False, "sym": sym, "true_sequential": True, "quant_method": "gptq",
          "checkpoint_format": fmt}
    hq = dict(qc, **(cfg_override or {}))
    with open(os.path.join(d, "quantize_config.json"), "w") as f:
        json.dump(qc, f)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump({"model_type": "llama", "quantization_config": hq}, f)
    tensors = {}
    for prefix, (codes, zeros, scales, g_idx) in linears.items():
        stored = zeros - 1 if fmt == "gptq" else zeros
        tensors[prefix + ".qweight"] = pack_axis0(codes.T, bits).view(np.int32)
        tensors[prefix + ".qzeros"] = np.ascontiguousarray(pack_axis0(stored, bits).T).view(np.int32)
        tensors[prefix + ".scales"] = np.ascontiguousarray(scales.T).astype(np.float16)
        tensors[prefix + ".g_idx"] = np.asarray(g_idx, np.int32)
    tensors["model.norm.weight"] = np.ones(8, np.float16)
    names = sorted(tensors)
    if shards == 1:
        safetensors.numpy.save_file(tensors, os.path.join(d, "model.safetensors"),
                                    metadata={"format": fmt_meta})
        return
    wm, total = {}, 0
    for s in range(shards):
        fn = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s::shards]}
        safetensors.numpy.save_file(part, os.path.join(d, fn), metadata={"format": fmt_meta})
        for n, a in part.items():
            wm[n] = fn
            total += a.nbytes
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total + total_size_delta}, "weight_map": wm}, f)


def make_linear(rng, N, K, bits, gs, sym, act_order):
    maxq = 2 ** bits - 1
    G = 1 if gs == -1 else (K + gs - 1) // gs
    codes = rng.integers(0, maxq + 1, size=(N, K))
    zeros = np.full((N, G), 2 ** (bits - 1)) if sym else rng.integers(0, maxq + 1, size=(N, G))
    scales = (rng.random((N, G)) * 0.01 + 1e-3).astype(np.float16)
    if gs == -1:
        g_idx = np.zeros(K, np.int64)
    elif act_order:
        g_idx = rng.permutation(K) // gs  # invperm[k] // gs for a random solve order
    else:
        g_idx = np.arange(K) // gs
    W = (scales.astype(np.float32)[:, g_idx] * (codes - zeros[:, g_idx]).astype(np.float32)).astype(np.float32)
    return (codes, zeros, scales, g_idx), W


def self_test():
    ok = True

    def expect(cond, msg):
        nonlocal ok
        print(("ok   " if cond else "FAIL ") + msg)
        ok = ok and bool(cond)

    # B.3 example: 4-bit codes 1..8 along K -> 0x87654321 (int32 -2023406815).
    w = pack_axis0(np.arange(1, 9)[:, None], 4)
    expect(w.shape == (1, 1) and int(w[0, 0]) == 0x87654321, f"B.3 pack 1..8 -> {int(w[0, 0]):#010x}")
    expect(int(w.view(np.int32)[0, 0]) == -2023406815, "B.3 word as int32 is -2023406815")
    expect(unpack_axis0(w, 4, 8, "B.3").ravel().tolist() == list(range(1, 9)), "B.3 unpack -> 1..8")
    # B.4 check value: 32 codes of 3 -> 0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D.
    w = pack_axis0(np.full((32, 1), 3), 3)
    expect([int(x) for x in w[:, 0]] == [0xDB6DB6DB, 0xB6DB6DB6, 0x6DB6DB6D],
           "B.4 pack 32 x 3 -> " + ", ".join(f"{int(x):#010x}" for x in w[:, 0]))
    words = np.array([[0xDB6DB6DB], [0xB6DB6DB6], [0x6DB6DB6D]], np.uint32)
    expect(np.all(unpack_axis0(words, 3, 32, "B.4") == 3), "B.4 unpack of the check words -> all 3")
    # B.4 field table: a single code at each position lands where the table says.
    good = True
    for i in range(32):
        c = np.zeros((32, 1), np.int64)
        c[i, 0] = 5  # 0b101: catches swapped bits of the split fields v10 / v21
        u = unpack_axis0(pack_axis0(c, 3), 3, 32, "B.4 single")
        good &= np.array_equal(u, c)
    expect(good, "B.4 every position (incl. split v10, v21) round-trips")
    # B.5 symmetric v1 constants for 2/4/8 bits (zero 2^(b-1) stored minus one).
    for b, word in ((2, 0x55555555), (4, 0x77777777), (8, 0x7F7F7F7F)):
        w = pack_axis0(np.full((32 // b, 1), 2 ** (b - 1) - 1), b)
        expect(int(w[0, 0]) == word, f"B.5 sym v1 {b}-bit word {int(w[0, 0]):#010x} == {word:#010x}")
    # Random round-trips for every width, along K and along N (qzeros transposed).
    rng = np.random.default_rng(7)
    for b in (2, 3, 4, 8):
        for count in (32, 64, 96, 40):
            c = rng.integers(0, 2 ** b, size=(count, 5))
            u = unpack_axis0(pack_axis0(c, b), b, count, "rt")
            expect(np.array_equal(u, c), f"round-trip {b}-bit, {count} codes along axis 0")
        c = rng.integers(0, 2 ** b, size=(3, 64))  # [G, N] zeros packed along N
        packed = np.ascontiguousarray(pack_axis0(c.T, b).T)
        u = unpack_axis0(np.ascontiguousarray(packed.T), b, 64, "rtN").T
        expect(np.array_equal(u, c), f"round-trip {b}-bit along N (qzeros layout)")

    # End-to-end folders.
    with tempfile.TemporaryDirectory() as tmp:
        cases = [
            ("4bit-g128-sym-v1", 4, 128, True, False, "gptq", 1, (64, 256)),
            ("4bit-g32-actorder-sym-v1-sharded", 4, 32, True, True, "gptq", 3, (64, 256)),
            ("3bit-g64-sym-v1", 3, 64, True, False, "gptq", 1, (64, 192)),
            ("3bit-g-1-asym-v2", 3, -1, False, True, "gptq_v2", 2, (32, 96)),
            ("2bit-g48-asym-v2-partial", 2, 48, False, True, "gptq_v2", 1, (32, 112)),
            ("8bit-g100-sym-v1-partial", 8, 100, True, True, "gptq", 1, (16, 260)),
        ]
        for tag, b, gs, sym, act, fmt, shards, (N, K) in cases:
            d = os.path.join(tmp, tag)
            lin, ref = {}, {}
            for i, name in enumerate(("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj")):
                lin[name], ref[name + ".weight"] = make_linear(rng, N + 16 * i, K, b, gs, sym, act)
            write_checkpoint(d, lin, b, gs, sym, act, fmt, shards=shards)
            try:
                out, summary = read_checkpoint(d)
                same = set(out) == set(ref) and all(np.array_equal(out[k], ref[k]) for k in ref)
                expect(same and summary == {"linears": 2, "bits": b, "group_size": gs, "format": fmt},
                       f"folder {tag}: dequantized weights exact, summary {summary}")
            except CheckpointError as e:
                expect(False, f"folder {tag}: unexpected error {e}")

        # Violations that must be reported.
        def must_fail(tag, mutate, **kw):
            d = os.path.join(tmp, "bad-" + tag)
            args = dict(bits=4, gs=32, sym=True, act=False, fmt="gptq")
            args.update({k: v for k, v in kw.items() if k in args})
            codes, zeros, scales, g_idx = make_linear(rng, 32, 64, args["bits"], args["gs"],
                                                      args["sym"], args["act"])[0]
            if args["fmt"] == "gptq":
                zeros = np.maximum(zeros, 1)  # a v1 zero of 0 is not representable (B.5)
            lin = {"m.l": (codes, zeros, scales, g_idx)}
            extra = {k: v for k, v in kw.items() if k not in args}
            write_checkpoint(d, lin, args["bits"], args["gs"], args["sym"], args["act"], args["fmt"],
                             **extra)
            if mutate:
                mutate(d)
            try:
                read_checkpoint(d)
                expect(False, f"violation {tag} not detected")
            except CheckpointError as e:
                expect(True, f"violation {tag}: {e}")

        must_fail("config-mismatch", None, cfg_override={"group_size": 64})
        must_fail("config-bool-vs-int", None, cfg_override={"sym": 1})
        must_fail("total-size", None, shards=2, total_size_delta=4)
        must_fail("format-meta", None, fmt_meta="np")

        def drop_from_index(d):
            p = os.path.join(d, "model.safetensors.index.json")
            idx = json.load(open(p))
            idx["weight_map"]["m.l.missing"] = next(iter(idx["weight_map"].values()))
            json.dump(idx, open(p, "w"))
        must_fail("index-lists-absent-tensor", drop_from_index, shards=2)

        def bad_gidx(d):
            p = os.path.join(d, "model.safetensors")
            t = safetensors.numpy.load_file(p)
            t["m.l.g_idx"][0] = 2  # group 2 of 2 (G = 2 for K = 64, gs = 32)
            safetensors.numpy.save_file(t, p, metadata={"format": "pt"})
        must_fail("g_idx-range", bad_gidx)

        def swap_gidx(d):
            p = os.path.join(d, "model.safetensors")
            t = safetensors.numpy.load_file(p)
            t["m.l.g_idx"][[0, 40]] = t["m.l.g_idx"][[40, 0]]  # non-trivial without desc_act
            safetensors.numpy.save_file(t, p, metadata={"format": "pt"})
        must_fail("g_idx-not-trivial", swap_gidx)

        def bad_sym(d):
            p = os.path.join(d, "model.safetensors")
            t = safetensors.numpy.load_file(p)
            t["m.l.qzeros"][0, 0] = np.int32(0x77777776)
            safetensors.numpy.save_file(t, p, metadata={"format": "pt"})
        must_fail("sym-qzeros-word", bad_sym)

        def bad_shape(d):
            p = os.path.join(d, "model.safetensors")
            t = safetensors.numpy.load_file(p)
            t["m.l.scales"] = np.ascontiguousarray(t["m.l.scales"][:1])
            safetensors.numpy.save_file(t, p, metadata={"format": "pt"})
        must_fail("scales-shape", bad_shape)

        def v1_asym_zero0(d):
            p = os.path.join(d, "model.safetensors")
            t = safetensors.numpy.load_file(p)
            t["m.l.qzeros"][0, 0] = np.int32(-1)  # all fields 15 -> zero 16
            safetensors.numpy.save_file(t, p, metadata={"format": "pt"})
        must_fail("v1-asym-zero-overflow", v1_asym_zero0, sym=False)

    print("self-test " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


def main(argv):
    if len(argv) == 2 and argv[1] == "--self-test":
        return self_test()
    if len(argv) != 3:
        print("usage: gptq_checkpoint_reference.py DIR OUT.safetensors | --self-test", file=sys.stderr)
        return 2
    try:
        out, summary = read_checkpoint(argv[1])
    except CheckpointError as e:
        print(f"gptq_checkpoint_reference: {e}", file=sys.stderr)
        return 1
    safetensors.numpy.save_file(out, argv[2], metadata={"format": "pt"})
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
