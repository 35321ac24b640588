# SPDX-License-Identifier: Apache-2.0
# Converts a llama-architecture GGUF with a gpt2-style (byte-level BPE) vocabulary into a Hugging
# Face model folder, using only gguf, numpy, tokenizers and safetensors (test tooling).
#
#   gguf_to_hf.py IN.gguf OUT_DIR [--dtype float16|bfloat16|float32] [--shards N] [--verify]
#
# Writes config.json, model.safetensors (or N shards + model.safetensors.index.json),
# tokenizer.json, tokenizer_config.json and generation_config.json. --verify reloads the output
# with the safetensors and tokenizers packages and checks it against the GGUF.
import argparse
import json
import math
import os
import sys

import numpy as np

import gguf
import safetensors
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

ST_DTYPE = {"float16": "float16", "bfloat16": "bfloat16", "float32": "float32"}
TOKEN_TYPE_CONTROL = 3
TOKEN_TYPE_USER_DEFINED = 4

# llama.cpp's tokenizer.ggml.pre names -> the equivalent Hugging Face pre-tokenizer.
LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def pre_tokenizer_for(pre):
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)
    if pre in ("default", "gpt-2", "gpt2"):
        return byte_level
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama3", "llama-bpe"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    sys.exit(f"unsupported tokenizer.ggml.pre '{pre}' (supported: default, gpt2, smollm, llama-bpe)")


class Gguf:
    def __init__(self, path):
        self.reader = gguf.GGUFReader(path)
        self.tensors = {t.name: t for t in self.reader.tensors}

    def get(self, key, default=None):
        field = self.reader.get_field(key)
        return default if field is None else field.contents()

    def require(self, key):
        value = self.get(key)
        if value is None:
            sys.exit(f"missing GGUF metadata key '{key}'")
        return value

    def dequantize(self, name):
        t = self.tensors[name]
        return np.ascontiguousarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32)


def f32_value(x):
    """A float32 metadata value as the shortest decimal that reads back to it (1e-05, not 9.99e-06)."""
    return float(str(np.float32(x)))


# llama.cpp's converter stores q_proj / k_proj rows interleaved for its RoPE layout:
#   gguf = hf.reshape(n_head, 2, rows // n_head // 2, cols).swapaxes(1, 2).reshape(rows, cols)
def permute(w, n_head):
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w, n_head):
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_scaling(g, rope_theta, head_dim):
    """Recovers llama3 rope scaling from rope_freqs.weight when it matches the Llama 3.1/3.2 recipe."""
    factors = g.dequantize("rope_freqs.weight")
    factor, low, high, orig = float(factors.max()), 1.0, 4.0, 8192
    freqs = 1.0 / (rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
    expected = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < orig / high:
            expected.append(1.0)
        elif wavelen > orig / low:
            expected.append(factor)
        else:
            smooth = (orig / wavelen - low) / (high - low)
            expected.append(1 / ((1 - smooth) / factor + smooth))
    if factors.shape != (head_dim // 2,) or not np.allclose(factors, np.array(expected, np.float32), rtol=1e-5):
        sys.exit("rope_freqs.weight does not match llama3 rope scaling with low 1, high 4, original 8192")
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": orig}


def read_config(g):
    arch = g.require("general.architecture")
    if arch != "llama":
        sys.exit(f"unsupported architecture '{arch}': this script converts llama GGUFs")
    hidden = int(g.require("llama.embedding_length"))
    n_heads = int(g.require("llama.attention.head_count"))
    tokens = g.require("tokenizer.ggml.tokens")
    head_dim = int(g.get("llama.attention.key_length", hidden // n_heads))
    rope_theta = f32_value(g.get("llama.rope.freq_base", 10000.0))
    rope_scaling = None
    if g.get("llama.rope.scaling.type", "none") == "linear":
        rope_scaling = {"rope_type": "linear", "factor": f32_value(g.require("llama.rope.scaling.factor"))}
    elif "rope_freqs.weight" in g.tensors:
        rope_scaling = llama3_rope_scaling(g, rope_theta, head_dim)
    bos = g.get("tokenizer.ggml.bos_token_id")
    eos = g.get("tokenizer.ggml.eos_token_id")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": int(g.require("llama.feed_forward_length")),
        "num_hidden_layers": int(g.require("llama.block_count")),
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(g.get("llama.attention.head_count_kv", n_heads)),
        "head_dim": head_dim,
        "max_position_embeddings": int(g.require("llama.context_length")),
        "rms_norm_eps": f32_value(g.require("llama.attention.layer_norm_rms_epsilon")),
        "rope_theta": rope_theta,
        "rope_scaling": rope_scaling,
        "vocab_size": int(g.get("llama.vocab_size", len(tokens))),
        "tie_word_embeddings": "output.weight" not in g.tensors,
        "bos_token_id": None if bos is None else int(bos),
        "eos_token_id": None if eos is None else int(eos),
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "use_cache": True,
    }


def tensor_plan(g, cfg):
    """[(hf_name, gguf_name, permute_heads or None)] in HF order; every GGUF tensor must be used."""
    plan = [("model.embed_tokens.weight", "token_embd.weight", None)]
    per_layer = [
        ("input_layernorm.weight", "attn_norm.weight", None),
        ("self_attn.q_proj.weight", "attn_q.weight", cfg["num_attention_heads"]),
        ("self_attn.k_proj.weight", "attn_k.weight", cfg["num_key_value_heads"]),
        ("self_attn.v_proj.weight", "attn_v.weight", None),
        ("self_attn.o_proj.weight", "attn_output.weight", None),
        ("post_attention_layernorm.weight", "ffn_norm.weight", None),
        ("mlp.gate_proj.weight", "ffn_gate.weight", None),
        ("mlp.up_proj.weight", "ffn_up.weight", None),
        ("mlp.down_proj.weight", "ffn_down.weight", None),
    ]
    for i in range(cfg["num_hidden_layers"]):
        plan += [(f"model.layers.{i}.{hf}", f"blk.{i}.{gg}", heads) for hf, gg, heads in per_layer]
    plan.append(("model.norm.weight", "output_norm.weight", None))
    if not cfg["tie_word_embeddings"]:
        plan.append(("lm_head.weight", "output.weight", None))
    missing = [gg for _, gg, _ in plan if gg not in g.tensors]
    if missing:
        sys.exit(f"GGUF lacks tensors: {', '.join(missing[:5])}")
    unused = sorted(set(g.tensors) - {gg for _, gg, _ in plan} - {"rope_freqs.weight"})
    if unused:
        sys.exit(f"GGUF has tensors this script does not map: {', '.join(unused[:5])}")
    return plan


def to_dtype_bytes(w, dtype):
    if dtype == "float32":
        return w.astype("<f4").tobytes()
    if dtype == "float16":
        return w.astype("<f2").tobytes()
    return gguf.quants.quantize(w, gguf.GGMLQuantizationType.BF16).tobytes()  # ggml's fp32 -> bf16 (RNE)


def hf_weight(g, gguf_name, heads):
    w = g.dequantize(gguf_name)
    return unpermute(w, heads) if heads else w


def shard_bounds(sizes, n_shards):
    """[(start, end)] of n_shards non-empty contiguous runs, each about sum(sizes) / n_shards bytes."""
    total, bounds, start, acc = sum(sizes), [], 0, 0
    for i, size in enumerate(sizes):
        acc += size
        cuts_left = n_shards - len(bounds) - 1
        if cuts_left > 0 and (acc >= total * (len(bounds) + 1) / n_shards or len(sizes) - i - 1 == cuts_left):
            bounds.append((start, i + 1))
            start = i + 1
    bounds.append((start, len(sizes)))
    return bounds


def write_weights(g, plan, out_dir, dtype, n_shards):
    elem_bytes = 4 if dtype == "float32" else 2
    sizes = [g.tensors[gg].n_elements * elem_bytes for _, gg, _ in plan]
    total = sum(sizes)
    groups = [plan[a:b] for a, b in shard_bounds(sizes, n_shards)]
    weight_map = {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if n_shards == 1 else f"model-{k + 1:05d}-of-{n_shards:05d}.safetensors"
        tensors = {}
        for hf_name, gguf_name, heads in group:
            w = hf_weight(g, gguf_name, heads)
            tensors[hf_name] = {"dtype": ST_DTYPE[dtype], "shape": list(w.shape), "data": to_dtype_bytes(w, dtype)}
            weight_map[hf_name] = fname
        safetensors.serialize_file(tensors, os.path.join(out_dir, fname), metadata={"format": "pt"})
    if n_shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        write_json(os.path.join(out_dir, "model.safetensors.index.json"), index)
    return weight_map


def build_tokenizer(g, cfg):
    model = g.require("tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"unsupported tokenizer.ggml.model '{model}': only gpt2-style byte-level BPE is converted")
    tokens = g.require("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in g.require("tokenizer.ggml.merges")]
    token_types = g.get("tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        sys.exit("tokenizer.ggml.tokens has duplicate entries")
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizer_for(g.get("tokenizer.ggml.pre", "default"))
    tok.decoder = decoders.ByteLevel()
    bos_id = cfg["bos_token_id"]
    if g.get("tokenizer.ggml.add_bos_token", False) and bos_id is not None:
        bos = tokens[bos_id]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    special = [i for i, t in enumerate(token_types) if t == TOKEN_TYPE_CONTROL]
    user = [i for i, t in enumerate(token_types) if t == TOKEN_TYPE_USER_DEFINED]
    tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
    tok.add_tokens([AddedToken(tokens[i], special=False, normalized=False) for i in user])
    return tok, tokens, special, user


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tokenizer(g, cfg, out_dir):
    tok, tokens, special, user = build_tokenizer(g, cfg)
    tok.save(os.path.join(out_dir, "tokenizer.json"))

    def name_of(key):
        idx = g.get(key)
        return None if idx is None or idx >= len(tokens) else tokens[int(idx)]

    added = {str(i): {"content": tokens[i], "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": i in special} for i in sorted(special + user)}
    tokenizer_config = {
        "add_bos_token": bool(g.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(g.get("tokenizer.ggml.add_eos_token", False)),
        "added_tokens_decoder": added,
        "bos_token": name_of("tokenizer.ggml.bos_token_id"),
        "eos_token": name_of("tokenizer.ggml.eos_token_id"),
        "unk_token": name_of("tokenizer.ggml.unknown_token_id"),
        "pad_token": name_of("tokenizer.ggml.padding_token_id"),
        "clean_up_tokenization_spaces": False,
        "model_max_length": cfg["max_position_embeddings"],
        "tokenizer_class": "PreTrainedTokenizerFast",
    }
    chat_template = g.get("tokenizer.chat_template")
    if chat_template is not None:
        tokenizer_config["chat_template"] = chat_template
    write_json(os.path.join(out_dir, "tokenizer_config.json"), tokenizer_config)

    generation = {"bos_token_id": cfg["bos_token_id"], "eos_token_id": cfg["eos_token_id"]}
    pad = g.get("tokenizer.ggml.padding_token_id")
    if pad is not None:
        generation["pad_token_id"] = int(pad)
    write_json(os.path.join(out_dir, "generation_config.json"), generation)


def verify(g, plan, out_dir, dtype, weight_map):
    """Reloads the folder: permuting back must give the GGUF values (after the dtype cast) exactly."""
    loaded = {}
    for fname in sorted(set(weight_map.values())):
        with open(os.path.join(out_dir, fname), "rb") as f:
            for name, t in safetensors.deserialize(f.read()):
                raw = np.frombuffer(bytes(t["data"]), dtype=np.uint8)
                if dtype == "float32":
                    w = raw.view("<f4")
                elif dtype == "float16":
                    w = raw.view("<f2").astype(np.float32)
                else:
                    w = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
                loaded[name] = w.reshape(t["shape"])
    assert sorted(loaded) == sorted(hf for hf, _, _ in plan), "tensor names differ"
    for hf_name, gguf_name, heads in plan:
        want = g.dequantize(gguf_name)
        cast = np.frombuffer(to_dtype_bytes(want, dtype), dtype=np.uint8)
        want = {"float32": lambda b: b.view("<f4"), "float16": lambda b: b.view("<f2").astype(np.float32),
                "bfloat16": lambda b: (b.view("<u2").astype(np.uint32) << 16).view(np.float32)}[dtype](cast)
        got = loaded[hf_name]
        back = permute(got, heads) if heads else got
        assert np.array_equal(back.reshape(-1), want.reshape(-1), equal_nan=True), hf_name
        if heads:
            assert np.array_equal(unpermute(permute(got, heads), heads), got), hf_name
    tok = Tokenizer.from_file(os.path.join(out_dir, "tokenizer.json"))
    tokens = g.require("tokenizer.ggml.tokens")
    for text in ["Hello world", "  multiple   spaces\n\nand 12345 digits", "caf\u00e9 \U0001F600 <|im_start|>"]:
        ids = tok.encode(text).ids
        assert tok.decode(ids, skip_special_tokens=False) == text, (text, ids)
    hello = tok.encode("Hello world")
    print(f"verify: {len(plan)} tensors match; 'Hello world' -> {hello.tokens} {hello.ids}")
    for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
        idx = g.get(key)
        if idx is not None:
            assert tok.token_to_id(tokens[int(idx)]) == int(idx), key
            assert tok.encode(tokens[int(idx)], add_special_tokens=False).ids == [int(idx)], key


def main():
    ap = argparse.ArgumentParser(description="Converts a llama GGUF into a Hugging Face model folder.")
    ap.add_argument("gguf")
    ap.add_argument("out_dir")
    ap.add_argument("--dtype", choices=sorted(ST_DTYPE), default="float16")
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--verify", action="store_true")
    args = ap.parse_args()

    g = Gguf(args.gguf)
    cfg = read_config(g)
    cfg["torch_dtype"] = args.dtype
    plan = tensor_plan(g, cfg)
    if not 1 <= args.shards <= len(plan):
        ap.error(f"--shards must be between 1 and {len(plan)}")
    os.makedirs(args.out_dir, exist_ok=True)
    write_json(os.path.join(args.out_dir, "config.json"), cfg)
    weight_map = write_weights(g, plan, args.out_dir, args.dtype, args.shards)
    write_tokenizer(g, cfg, args.out_dir)
    if args.verify:
        verify(g, plan, args.out_dir, args.dtype, weight_map)


if __name__ == "__main__":
    main()
