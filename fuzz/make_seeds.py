#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
# Writes the seed corpora of the libFuzzer harnesses (standard library only: struct, json).
#
#   make_seeds.py OUT_DIR [--test-model GGUF] [--shared-data DIR]
#
# OUT_DIR/<target>/ gets small valid inputs and broken variants (reliability.md K1). With
# --test-model, the GGUF header of the real test model is added (metadata only, arrays cut short,
# no tensors); with --shared-data, chat templates, HF configs and tokenizer test lines. Nothing
# from the shared data is copied into the repository: seeds live in the build directory.
import argparse
import hashlib
import json
import os
import random
import struct
import sys


def put(out, target, name, data):
    d = os.path.join(out, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- safetensors ---------------------------------------------------------------------------------

def safetensors(tensors, metadata=None, raw_header=None, pad=True):
    """tensors: [(name, dtype, shape, bytes)] laid out in order."""
    header, data, off = {}, b"", 0
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(payload)]}
        data += payload
        off += len(payload)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    hb = text.encode() if isinstance(text, str) else text
    if pad:
        hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + data


def f32(*v):
    return struct.pack("<%df" % len(v), *v)


def safetensors_seeds(out):
    t = "fuzz_safetensors_header"
    good = [("a", "F32", [2, 2], f32(1, 2, 3, 4)), ("b", "F16", [3], struct.pack("<3e", 1, -2, 0.5)),
            ("c", "BF16", [2], b"\x80\x3f\x00\x40"), ("d", "I32", [1], struct.pack("<i", 7)),
            ("e", "U8", [0], b"")]
    put(out, t, "valid", safetensors(good, {"format": "pt"}))
    put(out, t, "valid_empty", safetensors([]))
    put(out, t, "valid_scalar", safetensors([("s", "F64", [], struct.pack("<d", 1.5))]))
    put(out, t, "len_huge", struct.pack("<Q", 2**64 - 1) + b"{}")
    put(out, t, "len_past_end", struct.pack("<Q", 1000) + b'{"a":1}')
    put(out, t, "not_object", safetensors([], raw_header="[1,2,3]"))
    put(out, t, "dup_key", safetensors([], raw_header='{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
                                                      '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}') + f32(1))
    put(out, t, "overlap", safetensors([], raw_header='{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},'
                                                      '"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}') + f32(1, 2))
    put(out, t, "offsets_float", safetensors([], raw_header='{"a":{"dtype":"F32","shape":[1],"data_offsets":[0.0,4e0]}}') + f32(1))
    put(out, t, "offsets_big", safetensors([], raw_header='{"a":{"dtype":"U8","shape":[1],"data_offsets":[9007199254740993,9007199254740994]}}'))
    put(out, t, "shape_overflow", safetensors([], raw_header='{"a":{"dtype":"F64","shape":[4294967296,4294967296,16],"data_offsets":[0,0]}}'))
    put(out, t, "bad_dtype", safetensors([], raw_header='{"a":{"dtype":"bf16","shape":[1],"data_offsets":[0,2]}}') + b"\0\0")
    put(out, t, "metadata_nonstring", safetensors([], {"n": 1}))
    put(out, t, "trailing", safetensors(good) + b"PK\x03\x04trailing")
    put(out, t, "pickle", b"\x80\x02}q\x00.")
    put(out, t, "zip", b"PK\x03\x04" + b"\0" * 26)
    put(out, t, "not_utf8", safetensors([], raw_header=b'{"\xff\xfe":{}}'))
    put(out, t, "deep", safetensors([], raw_header="{\"a\":" + "[" * 200 + "]" * 200 + "}"))

    t = "fuzz_safetensors_index"  # shards as fuzz_safetensors_index.cpp writes them
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    wm = {"model.embed_tokens.weight": s1, "model.norm.weight": s1, "lm_head.weight": s2}
    put(out, t, "valid", json.dumps({"metadata": {"total_size": 48}, "weight_map": wm}))
    put(out, t, "traversal", json.dumps({"weight_map": dict(wm, **{"lm_head.weight": "../../x.safetensors"})}))
    put(out, t, "absolute", json.dumps({"weight_map": dict(wm, **{"lm_head.weight": "/etc/passwd"})}))
    put(out, t, "missing_shard", json.dumps({"weight_map": dict(wm, **{"lm_head.weight": "model-00003-of-00003.safetensors"})}))
    put(out, t, "wrong_shard", json.dumps({"weight_map": dict(wm, **{"lm_head.weight": s1})}))
    put(out, t, "unlisted", json.dumps({"weight_map": {"model.norm.weight": s1}}))
    put(out, t, "config_as_shard", json.dumps({"weight_map": dict(wm, **{"lm_head.weight": "config.json"})}))
    put(out, t, "empty", json.dumps({"weight_map": {}}))
    put(out, t, "not_object", "[]")
    put(out, t, "nul", '{"weight_map":{"lm_head.weight":"model-00002-of-00002.safetensors\\u0000x"}}')


# ---- GGUF ----------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32T, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32T: "<f", BOOL: "<?",
          U64: "<Q", I64: "<q", F64: "<d"}


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gval(vtype, v):
    if vtype == STR:
        return gstr(v)
    if vtype == ARR:
        etype, items = v
        return struct.pack("<IQ", etype, len(items)) + b"".join(gval(etype, x) for x in items)
    return struct.pack(SCALAR[vtype], v)


def gguf(kvs, tensors, version=3, alignment=32, n_tensors=None, n_kv=None):
    """kvs: [(key, type, value)]; tensors: [(name, ne, ggml_type, bytes)]."""
    head = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if n_tensors is None else n_tensors,
                                 len(kvs) if n_kv is None else n_kv)
    body = b"".join(gstr(k) + struct.pack("<I", t) + gval(t, v) for k, t, v in kvs)
    infos, data = b"", b""
    for name, ne, gtype, payload in tensors:
        data += b"\0" * (-len(data) % alignment)
        infos += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        infos += struct.pack("<IQ", gtype, len(data))
        data += payload
    blob = head + body + infos
    blob += b"\0" * (-len(blob) % alignment)
    return blob + data


def tiny_llama_kvs(tokenizer="gpt2"):
    tokens = ["<s>", "</s>", "a", "b", "ab", "\u0120", "\u0120a", "c", "<|im_start|>", "<|im_end|>"]
    if tokenizer == "llama":
        tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["\u2581", "a", "b", "\u2581a"]
    kvs = [("general.architecture", STR, "llama"), ("general.name", STR, "tiny"),
           ("llama.block_count", U32, 1), ("llama.context_length", U32, 64),
           ("llama.embedding_length", U32, 8), ("llama.feed_forward_length", U32, 16),
           ("llama.attention.head_count", U32, 2), ("llama.attention.head_count_kv", U32, 1),
           ("llama.attention.layer_norm_rms_epsilon", F32T, 1e-5), ("llama.rope.freq_base", F32T, 10000.0),
           ("general.file_type", U32, 3),
           ("tokenizer.ggml.model", STR, tokenizer), ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
           ("tokenizer.ggml.token_type", ARR, (I32, [3 if t.startswith("<") and len(t) > 3 and not t.startswith("<0x") else (6 if t.startswith("<0x") else 1) for t in tokens])),
           ("tokenizer.ggml.bos_token_id", U32, 1 if tokenizer == "llama" else 0),
           ("tokenizer.ggml.eos_token_id", U32, 2 if tokenizer == "llama" else 1),
           ("tokenizer.chat_template", STR, "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}")]
    if tokenizer == "gpt2":
        kvs += [("tokenizer.ggml.merges", ARR, (STR, ["a b", "\u0120 a"])), ("tokenizer.ggml.pre", STR, "smollm")]
    else:
        kvs += [("tokenizer.ggml.scores", ARR, (F32T, [0.0] * len(tokens))), ("tokenizer.ggml.add_bos_token", BOOL, True)]
    return kvs


def rnd(n, seed):
    r = random.Random(seed)
    return bytes(r.randrange(256) for _ in range(n))


def gguf_seeds(out, test_model):
    t = "fuzz_gguf"
    H, F, V = 8, 16, 10
    tensors = [("token_embd.weight", [H, V], 0, f32(*[0.01 * i for i in range(H * V)])),
               ("output_norm.weight", [H], 0, f32(*[1.0] * H)),
               ("blk.0.attn_norm.weight", [H], 1, struct.pack("<8e", *[1.0] * H)),
               ("blk.0.attn_q.weight", [32, 2], 2, rnd(2 * 18, 1)),      # Q4_0
               ("blk.0.attn_k.weight", [32, 1], 3, rnd(20, 2)),          # Q4_1
               ("blk.0.attn_v.weight", [32, 1], 8, rnd(34, 3)),          # Q8_0
               ("blk.0.ffn_gate.weight", [256, 1], 12, rnd(144, 4)),     # Q4_K
               ("blk.0.ffn_up.weight", [256, 1], 14, rnd(210, 5))]       # Q6_K
    put(out, t, "valid_gpt2", gguf(tiny_llama_kvs("gpt2"), tensors))
    put(out, t, "valid_llama_tok", gguf(tiny_llama_kvs("llama"), tensors[:3]))
    put(out, t, "valid_v2", gguf([("general.architecture", STR, "llama")], tensors[:1], version=2))
    put(out, t, "aligned64", gguf([("general.alignment", U32, 64)], tensors[:2], alignment=64))
    put(out, t, "align_zero", gguf([("general.alignment", U32, 0)], tensors[:1]))
    put(out, t, "align_i32", gguf([("general.alignment", I32, 32)], tensors[:1]))
    put(out, t, "n_tensors_huge", gguf([], [], n_tensors=2**63))
    put(out, t, "n_kv_huge", gguf([], [], n_kv=2**64 - 1))
    put(out, t, "version1", gguf([], [], version=1))
    put(out, t, "big_endian", b"GGUF" + struct.pack(">IQQ", 3, 0, 0))
    put(out, t, "bare_magic", b"GGUF")
    put(out, t, "empty", b"")
    put(out, t, "string_past_eof", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 2**40) + b"key")
    put(out, t, "array_huge", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr("k") + struct.pack("<IIQ", ARR, U8, 2**62))
    nested = struct.pack("<I", ARR) + struct.pack("<IQ", ARR, 1) * 50 + struct.pack("<IQ", U8, 0)
    put(out, t, "array_nested", b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gstr("k") + nested)
    put(out, t, "ne_overflow", gguf([], [("x", [2**32, 2**32, 2], 0, b"")]))
    put(out, t, "offset_past_end", gguf([], [("x", [4], 0, f32(1, 2, 3, 4))])[:-8])
    put(out, t, "block_count_huge", gguf([(k, ty, (100000 if k == "llama.block_count" else v)) for k, ty, v in tiny_llama_kvs()], tensors))
    put(out, t, "head_count_zero", gguf([(k, ty, (0 if k == "llama.attention.head_count" else v)) for k, ty, v in tiny_llama_kvs()], tensors))
    put(out, t, "byte_token_bad", gguf(tiny_llama_kvs("llama")[:12] + [("tokenizer.ggml.tokens", ARR, (STR, ["<0x-1>", "<0xZZ>", "<s>"]))], []))
    put(out, t, "unknown_type", gguf([], [("x", [32], 99, rnd(32, 6))]))
    if test_model and os.path.exists(test_model):
        put(out, t, "test_model_header", gguf_header_only(test_model))

    t = "fuzz_ggml_dequant"
    for gtype in list(range(0, 31)) + [34, 35]:
        put(out, t, "type_%02d" % gtype, bytes([gtype]) + rnd(600, gtype))
        put(out, t, "type_%02d_ff" % gtype, bytes([gtype]) + b"\xff" * 600)


def gguf_header_only(path, keep=300):
    """The metadata of a real GGUF, arrays cut to `keep` items, no tensors."""
    with open(path, "rb") as f:
        def rd(fmt):
            return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

        def rstr():
            return f.read(rd("<Q"))

        def rval(t):
            if t == STR:
                return rstr()
            if t == ARR:
                et, n = rd("<I"), rd("<Q")
                return (et, [rval(et) for _ in range(n)])
            return rd(SCALAR[t])

        assert f.read(4) == b"GGUF"
        version, _, n_kv = rd("<I"), rd("<Q"), rd("<Q")
        kvs = []
        for _ in range(n_kv):
            k = rstr().decode()
            t = rd("<I")
            v = rval(t)
            if t == ARR:
                v = (v[0], v[1][:keep])
            kvs.append((k, t, v))
    return gguf(kvs, [], version=version)


# ---- configs -------------------------------------------------------------------------------------

def config_seeds(out, shared):
    t = "fuzz_model_config"
    llama = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096,
             "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 32, "max_position_embeddings": 4096, "rms_norm_eps": 1e-5,
             "rope_theta": 10000.0, "tie_word_embeddings": False, "torch_dtype": "float16",
             "bos_token_id": 1, "eos_token_id": 2}
    quant = {"bits": 4, "group_size": 128, "desc_act": False, "sym": True, "damp_percent": 0.01,
             "static_groups": False, "true_sequential": True, "quant_method": "gptq", "checkpoint_format": "gptq"}
    put(out, t, "llama2", json.dumps(llama))
    put(out, t, "llama2_quant", json.dumps(llama) + "\0" + json.dumps(quant))
    put(out, t, "llama2_inline_quant", json.dumps(dict(llama, quantization_config=quant)))
    put(out, t, "llama3", json.dumps(dict(llama, vocab_size=128256, num_key_value_heads=8, rope_theta=500000.0,
                                          eos_token_id=[128001, 128009], rope_scaling={
                                              "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})))
    put(out, t, "mistral", json.dumps(dict(llama, model_type="mistral", sliding_window=4096, num_key_value_heads=8)))
    put(out, t, "qwen2", json.dumps(dict(llama, model_type="qwen2", attention_bias=True, tie_word_embeddings=True,
                                         head_dim=128)))
    put(out, t, "linear_rope", json.dumps(dict(llama, rope_scaling={"type": "linear", "factor": 2.0})))
    put(out, t, "huge", json.dumps(dict(llama, hidden_size=2**31, num_hidden_layers=10**9)))
    put(out, t, "negative", json.dumps(dict(llama, hidden_size=-1, num_attention_heads=0)))
    put(out, t, "floats", json.dumps(dict(llama, hidden_size=4096.5)))
    put(out, t, "awq", json.dumps(dict(llama, quantization_config={"quant_method": "awq", "bits": 4})))
    put(out, t, "conflict", json.dumps(dict(llama, quantization_config=quant)) + "\0" + json.dumps(dict(quant, bits=8)))
    put(out, t, "quant_synonyms", "{}\0" + json.dumps({"w_bit": 4, "q_group_size": -1}))
    put(out, t, "quant_bad", "{}\0" + json.dumps({"bits": 5, "group_size": 0, "damp_percent": "x"}))
    put(out, t, "deep", "[" * 100 + "]" * 100)
    if shared:
        base = os.path.join(shared, "gptq-configs")
        for d in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            p = os.path.join(base, d)
            if not os.path.isdir(p):
                continue
            parts = []
            for name in ("config.json", "quantize_config.json"):
                if os.path.exists(os.path.join(p, name)):
                    with open(os.path.join(p, name), "rb") as f:
                        parts.append(f.read())
            put(out, t, "shared_" + d, b"\0".join(parts))


# ---- tokenizers ----------------------------------------------------------------------------------

def byte_to_unicode():
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def added(i, content, special=True):
    return {"id": i, "content": content, "special": special, "lstrip": False, "rstrip": False,
            "normalized": False, "single_word": False}


def byte_level_tokenizer():
    table = byte_to_unicode()
    vocab = {table[b]: b for b in range(256)}
    G = table[ord(" ")]
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("hell", "o"), (G, "w"), (G + "w", "o"), (G + "wo", "r")]
    for i, (a, b) in enumerate(merges):
        vocab[a + b] = 256 + i
    return {"version": "1.0",
            "added_tokens": [added(263, "<|im_start|>"), added(264, "<|im_end|>"), added(265, "<tool>", False)],
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}| ?\\p{L}+|\\s+"}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
            "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                      "vocab": vocab, "merges": [a + " " + b for a, b in merges]}}


def spm_tokenizer():
    sp = "\u2581"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    vocab.update({sp: 259, "a": 260, "b": 261, sp + "a": 262, "ab": 263, sp + "ab": 264, "c": 265})
    return {"version": "1.0", "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": sp}, {"type": "Replace", "pattern": {"String": " "}, "content": sp}]},
            "pre_tokenizer": None,
            "post_processor": {"type": "TemplateProcessing", "single": [
                {"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}]},
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": sp}, "content": " "}, {"type": "ByteFallback"},
                {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": True, "byte_fallback": True, "vocab": vocab,
                      "merges": [sp + " a", "a b", sp + "a b"]}}


def metaspace_tokenizer():
    j = spm_tokenizer()
    j["normalizer"] = {"type": "NFC"}
    j["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}
    j["decoder"] = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True}
    return j


TEXTS = ["hello world", "Hello, World! 123 4567 <|im_start|>user\nhi<|im_end|>", "ab abc <s></s> a\tb\r\n",
         "\u00e9\u4e2d\u6587 \U0001F600 \u2581a", "\xff\xfe invalid", "   leading spaces", ""]


def tokenizer_seeds(out, shared):
    t = "fuzz_tokenizer_json"
    cfg = {"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": True,
           "chat_template": "{% for m in messages %}<|im_start|>{{ m.role }}{% endfor %}"}
    for name, j in (("byte_level", byte_level_tokenizer()), ("spm", spm_tokenizer()), ("metaspace", metaspace_tokenizer())):
        text = json.dumps(j, ensure_ascii=False)
        for i, s in enumerate(TEXTS[:4]):
            put(out, t, "%s_%d" % (name, i), text + "\0" + s)
        put(out, t, name + "_config", text + "\0" + TEXTS[1] + "\0" + json.dumps(cfg))
    bad = byte_level_tokenizer()
    bad["added_tokens"].append(added(-1, "<bad>"))
    put(out, t, "added_negative", json.dumps(bad) + "\0x")
    bad = byte_level_tokenizer()
    bad["model"]["merges"].append("zz qq")
    put(out, t, "merge_unknown", json.dumps(bad) + "\0x")
    bad = byte_level_tokenizer()
    bad["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a+)+$"}, "behavior": "Isolated", "invert": False}
    put(out, t, "redos", json.dumps(bad) + "\0" + "a" * 40 + "b")
    bad = spm_tokenizer()
    bad["decoder"] = {"type": "WordPiece"}
    put(out, t, "unknown_decoder", json.dumps(bad) + "\0x")
    put(out, t, "unigram", json.dumps({"model": {"type": "Unigram", "vocab": [["a", 0.0]]}}) + "\0a")

    t = "fuzz_tokenizer_encode"
    for i, s in enumerate(TEXTS):
        put(out, t, "text_%d" % i, s.encode("utf-8", "surrogateescape") if "\xff" not in s else b"\xff\xfe invalid")
    if shared:
        p = os.path.join(shared, "llama2-tokenizer", "llamacpp-vocab-test.inp")
        if os.path.exists(p):
            with open(p, "rb") as f:
                for i, chunk in enumerate(f.read().split(b"\n__ggml_vocab_test__\n")):
                    if chunk:
                        put(out, t, "vocab_test_%02d" % i, chunk)


# ---- chat templates ------------------------------------------------------------------------------

def chat_seeds(out, repo, shared):
    t = "fuzz_chat_template"
    dirs = [os.path.join(repo, "tests", "reference", "chat_templates")]
    if shared:
        dirs.append(os.path.join(shared, "chat-templates"))
    conv = ["system", "You are helpful.", "user", "Hi", "assistant", "Hello!", "user", "What is 2+2?"]
    for d in dirs:
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            if not name.endswith(".jinja"):
                continue
            with open(os.path.join(d, name), "rb") as f:
                src = f.read()
            stem = name[:-6]
            put(out, t, stem, b"\0".join([src, b"\x01", b"<s>", b"</s>"] + [c.encode() for c in conv]))
            put(out, t, stem + "_nosys", b"\0".join([src, b"\x00", b"<s>", b"</s>"] + [c.encode() for c in conv[2:]]))
            put(out, t, stem + "_badrole", b"\0".join([src, b"\x01", b"<s>", b"</s>", b"tool", b"x", b"user", b"\xff"]))
    put(out, t, "chatml_marker", b"\0".join([b"<|im_start|>", b"\x01", b"", b"", b"user", b"<|im_end|>"]))


# ---- HTTP and JSON bodies ------------------------------------------------------------------------

def http_seeds(out):
    t = "fuzz_http_request"
    body = json.dumps({"model": "smollm2", "prompt": "hi", "stream": False})
    reqs = {
        "get": "GET /api/tags HTTP/1.1\r\nHost: x\r\n\r\n",
        "post": "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body),
        "chunked": "POST /api/chat HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "pipelined": "GET /api/ps HTTP/1.1\r\nHost: x\r\n\r\nGET /api/jobs/7?stream=true HTTP/1.1\r\nHost: x\r\n\r\n",
        "expect": "POST /api/pull HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}",
        "cl_and_te": "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "two_cl": "POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        "cl_negative": "POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        "cl_huge": "POST / HTTP/1.1\r\nContent-Length: 18446744073709551616\r\n\r\n",
        "chunk_huge": "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n",
        "bare_lf": "GET / HTTP/1.1\nHost: x\n\n",
        "obs_fold": "GET / HTTP/1.1\r\nX-A: a\r\n b\r\n\r\n",
        "http09": "GET /\r\n",
        "http10": "DELETE /api/delete HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 13\r\n\r\n{\"model\":\"a\"}",
        "nul_header": "GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n",
        "v1": "POST /v1/chat/completions?x=%2e%2e/ HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
    }
    for name, r in reqs.items():
        put(out, t, name, r)


def json_body_seeds(out):
    t = "fuzz_json_body"
    opts = {"temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 42,
            "num_predict": 16, "num_ctx": 2048, "stop": ["\n", "User:"], "num_thread": 4}
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    bodies = [
        (0, {"model": "/models/x.gguf", "name": "smollm2:q4", "stream": True}),
        (0, {"model": "HuggingFaceTB/SmolLM2-135M-Instruct", "revision": "main"}),
        (1, {"model": "smollm2-135m-instruct:q4_1"}), (1, {"name": "x"}),
        (2, {"model": "smollm2", "prompt": "hi", "system": "s", "raw": False, "stream": False, "keep_alive": "5m",
             "options": opts}),
        (2, {"model": "m", "prompt": "p", "keep_alive": -1, "truncate": True, "options": {"temperature": -1, "top_k": -5}}),
        (3, {"model": "smollm2", "messages": msgs, "options": opts, "keep_alive": "1h30m"}),
        (4, {"model": "smollm2", "messages": msgs, "max_tokens": 16, "temperature": 0.2, "stream": True, "n": 1,
             "stop": "x", "seed": 1}),
        (5, {"model": "smollm2", "prompt": "once", "max_tokens": 2**63, "top_p": 2}),
        (6, {"model": "smollm2", "dataset": "wikitext2", "seqlen": 512, "max_windows": 4}),
        (7, {"model": "smollm2:fp16", "method": "gptq", "bits": 4, "group_size": 128, "desc_act": True, "sym": True,
             "damp_percent": 0.01, "calib": "wikitext2", "samples": 8, "seqlen": 256, "seed": 0, "device": "cpu",
             "eval_windows": 1, "max_ppl_ratio": 1.5, "stream": True}),
        (7, {"model": "m", "bits": 3, "group_size": -1, "tag": "../x", "device": "cuda:99999999999"}),
        (8, {"name": "wiki", "files": ["/data/a.txt", "/data/b.jsonl"]}),
        (9, {"source": "org/corpus", "files": ["train.txt"], "name": "corpus", "revision": "main"}),
        (9, {"source": "https://example.com/a.txt", "sha256": "0" * 64}),
        (10, {"name": "smollm2", "model": "smollm2:q4_1", "size": 1, "digest": "sha256:" + "0" * 64,
              "modified_at": "2024-01-01T00:00:00Z", "details": {"format": "gguf"}}),
        (11, "5m"), (11, "smollm2:latest"), (11, -1),
    ]
    for i, (route, b) in enumerate(bodies):
        put(out, t, "route%02d_%d" % (route, i), bytes([route]) + json.dumps(b).encode())
    put(out, t, "dup_key", b"\x02" + b'{"model":"a","model":"b","prompt":"x"}')
    put(out, t, "nul_name", b"\x01" + b'{"model":"good\\u0000../x"}')
    put(out, t, "surrogate", b"\x03" + b'{"model":"a","messages":[{"role":"user","content":"\\ud800"}]}')
    put(out, t, "big_number", b"\x02" + b'{"model":"a","prompt":"x","options":{"temperature":1e999}}')
    put(out, t, "deep", b"\x03" + b'{"model":"a","messages":' + b"[" * 100 + b"]" * 100 + b"}")
    put(out, t, "wrong_type", b"\x05" + b'{"model":"a","prompt":"x","max_tokens":"10"}')


def hub_seeds(out):
    t = "fuzz_hub_json"
    sha = "0123456789abcdef0123456789abcdef01234567"
    siblings = [{"rfilename": "config.json", "size": 700, "blobId": "a" * 40},
                {"rfilename": "model.safetensors", "size": 134, "blobId": "b" * 40,
                 "lfs": {"sha256": "c" * 64, "size": 269060552, "pointerSize": 134}},
                {"rfilename": "onnx/model.onnx", "size": 5}]
    info = {"_id": "x", "id": "HuggingFaceTB/SmolLM2-135M", "sha": sha, "private": False, "gated": False,
            "siblings": siblings}
    state = {"done": [1048576, 0, 524288, 7]}
    put(out, t, "info", json.dumps(info))
    put(out, t, "info_state_ref", json.dumps(info).encode() + b"\0" + json.dumps(state).encode() + b"\0" +
        b"datasets/org/corpus@v1.0")
    put(out, t, "dup", json.dumps({"id": "o/n", "sha": sha, "siblings": [siblings[0], siblings[0]]}))
    put(out, t, "file_and_dir", json.dumps({"id": "o/n", "sha": sha, "siblings": [
        {"rfilename": "a"}, {"rfilename": "a/b"}]}))
    put(out, t, "traversal", json.dumps({"id": "o/n", "sha": sha, "siblings": [{"rfilename": "../../x"}]}))
    put(out, t, "float_size", b'{"id":"o/n","sha":"' + sha.encode() + b'","siblings":[{"rfilename":"x","size":1.8e20}]}')
    put(out, t, "negative_size", b'{"id":"o/n","sha":"' + sha.encode() + b'","siblings":[{"rfilename":"x","size":-1}]}')
    put(out, t, "upper_sha", json.dumps({"id": "o/n", "sha": sha.upper(), "siblings": []}))
    put(out, t, "states", b"{}\0" + b'{"done":[1,2,3]}' + b"\0" + b"org/name@main")
    put(out, t, "state_bad", b"{}\0" + b'{"done":[-1, 1.5, "x"]}')
    put(out, t, "state_many", b"{}\0" + json.dumps({"done": list(range(70))}).encode())

    t = "fuzz_daemon_config"
    put(out, t, "empty", "{}")
    put(out, t, "all", json.dumps({
        "state_dir": "/var/lib/gptqd", "socket": "/run/gptqd/gptqd.sock", "socket_mode": "0660",
        "admin_group": "gptq-admin", "user_group": "gptq", "device": "cuda:0", "dbus": "auto",
        "hub_endpoint": "https://huggingface.co/", "hub_token_file": "/etc/gptqd/token",
        "max_queue": 32, "max_connections": 128, "max_connections_per_uid": 64, "idle_timeout_ms": 30000,
        "header_timeout_ms": 10000, "write_timeout_ms": 30000, "max_header_bytes": 16384,
        "max_body_bytes": 8388608, "max_json_depth": 64, "max_messages": 1024, "max_stop_strings": 13,
        "max_stop_bytes": 256, "max_generation_ms": 0, "device_step_timeout_s": 1800, "keep_alive": "5m",
        "max_loaded_models": 2, "io_workers": 2}))
    put(out, t, "unknown_key", '{"max_qeue": 3}')
    put(out, t, "bad_types", '{"max_queue": "3", "keep_alive": true, "socket_mode": "999", "device": "cuda:x"}')
    put(out, t, "relative_path", '{"state_dir": "var/lib"}')
    put(out, t, "long_group", json.dumps({"admin_group": "g" * 5000}))
    put(out, t, "dbus_address", json.dumps({"dbus": "unix:path=/run/dbus/system_bus_socket"}))
    put(out, t, "not_object", "[1, 2]")


DICTS = {
    "json.dict": ['"{"', '"}"', '"["', '"]"', '":"', '","', '"\\""', '"true"', '"false"', '"null"', '"-1"',
                  '"1e999"', '"0.5"', '"\\\\u0000"', '"\\\\ud800"', '"9007199254740993"', '"18446744073709551616"'],
    "http.dict": ['"GET "', '"POST "', '"DELETE "', '" HTTP/1.1\\x0d\\x0a"', '" HTTP/1.0\\x0d\\x0a"', '"\\x0d\\x0a"',
                  '"Content-Length: "', '"Transfer-Encoding: chunked\\x0d\\x0a"', '"Connection: close\\x0d\\x0a"',
                  '"Connection: keep-alive\\x0d\\x0a"', '"Expect: 100-continue\\x0d\\x0a"', '"Host: x\\x0d\\x0a"',
                  '"/api/generate"', '"/api/chat"', '"/api/jobs/"', '"/v1/chat/completions"', '"?stream=true"',
                  '"0\\x0d\\x0a\\x0d\\x0a"', '"ffffffffffffffff"', '";ext=1"'],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--test-model", default=os.environ.get("GPTQD_TEST_MODEL"))
    ap.add_argument("--shared-data", default=os.environ.get("GPTQD_SHARED_DATA"))
    a = ap.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    shared = a.shared_data or os.path.join(repo, "..", "shared", "data")
    shared = shared if os.path.isdir(shared) else None
    safetensors_seeds(a.out)
    gguf_seeds(a.out, a.test_model)
    config_seeds(a.out, shared)
    tokenizer_seeds(a.out, shared)
    chat_seeds(a.out, repo, shared)
    http_seeds(a.out)
    json_body_seeds(a.out)
    hub_seeds(a.out)
    # Dictionaries: JSON keys and values for the JSON-shaped inputs, HTTP tokens for the parser.
    dict_dir = os.path.join(a.out, "dict")
    os.makedirs(dict_dir, exist_ok=True)
    for name, words in DICTS.items():
        with open(os.path.join(dict_dir, name), "w") as f:
            f.write("\n".join(words) + "\n")
    n = sum(len(files) for _, _, files in os.walk(a.out))
    print("make_seeds: %d files in %s" % (n, a.out))


if __name__ == "__main__":
    sys.exit(main())
