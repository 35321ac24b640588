#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Converts a llama2.c checkpoint (e.g. stories260K.bin) and its SentencePiece tokenizer into a
Hugging Face-format folder gptqd can import, for tests.

    llama2c_to_hf.py CHECKPOINT.bin TOKENIZER.model OUT_DIR

llama2.c keeps q/k rows in Meta's interleaved-pairs RoPE layout; HF's converter
(convert_llama_weights_to_hf.py `permute`) reorders them for rotate_half, and so does this script.
"""
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def permute(w, n_heads):
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


def main():
    ckpt, tok, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    data = ckpt.read_bytes()
    dim, hidden, n_layers, n_heads, n_kv, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    head = dim // n_heads
    f = np.frombuffer(data, dtype="<f4", offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = f[pos:pos + n].reshape(shape).copy()
        pos += n
        return a

    emb = take(vocab, dim)
    rms_att = take(n_layers, dim)
    wq = take(n_layers, dim, dim)
    wk = take(n_layers, n_kv * head, dim)
    wv = take(n_layers, n_kv * head, dim)
    wo = take(n_layers, dim, dim)
    rms_ffn = take(n_layers, dim)
    w1 = take(n_layers, hidden, dim)
    w2 = take(n_layers, dim, hidden)
    w3 = take(n_layers, hidden, dim)
    rms_final = take(dim)
    pos += 2 * seq_len * head // 2  # legacy freq_cis tables
    tensors = {"model.embed_tokens.weight": emb, "model.norm.weight": rms_final}
    if not shared:
        tensors["lm_head.weight"] = take(vocab, dim)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        tensors[p + "input_layernorm.weight"] = rms_att[i]
        tensors[p + "post_attention_layernorm.weight"] = rms_ffn[i]
        tensors[p + "self_attn.q_proj.weight"] = permute(wq[i], n_heads)
        tensors[p + "self_attn.k_proj.weight"] = permute(wk[i], n_kv)
        tensors[p + "self_attn.v_proj.weight"] = wv[i]
        tensors[p + "self_attn.o_proj.weight"] = wo[i]
        tensors[p + "mlp.gate_proj.weight"] = w1[i]
        tensors[p + "mlp.down_proj.weight"] = w2[i]
        tensors[p + "mlp.up_proj.weight"] = w3[i]
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(out / "model.safetensors"),
              metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
        "intermediate_size": hidden, "num_hidden_layers": n_layers, "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv, "head_dim": head, "vocab_size": vocab, "max_position_embeddings": seq_len,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": shared, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": "float32",
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    shutil.copyfile(tok, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": True, "add_eos_token": False,
                                                           "bos_token": "<s>", "eos_token": "</s>"}))


if __name__ == "__main__":
    main()
