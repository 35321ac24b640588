#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Reference Llama/Qwen2 forward pass in float64 numpy, for tests of gptqd's engine.

Written from the Hugging Face modeling code's semantics (LlamaForCausalLM / Qwen2ForCausalLM:
pre-RMSNorm, rotate_half RoPE with the `default`, `linear` and `llama3` frequency rules, GQA by
repeating k/v heads, SwiGLU MLP, tied embeddings) and from the GPTQ checkpoint format
(gptq-reference.md B.3-B.7), without using any gptqd code.

    llama_numpy.py MODEL_DIR IDS_JSON OUT_NPY      # logits [n_tokens, vocab] float64 for the ids
"""
import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def load_tensors(folder: Path) -> dict:
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


def gptq_dequant(t: dict, prefix: str, q: dict) -> np.ndarray:
    """W [N, K] from qweight/qzeros/scales/g_idx (B.7), v1 zeros (stored zero - 1) unless gptq_v2."""
    bits = q["bits"]
    assert bits in (2, 4, 8), "this reference unpacks 2/4/8-bit only"
    per = 32 // bits
    mask = (1 << bits) - 1
    qweight = t[prefix + ".qweight"].astype(np.int64) & 0xFFFFFFFF  # [K/per, N]
    qzeros = t[prefix + ".qzeros"].astype(np.int64) & 0xFFFFFFFF    # [G, N/per]
    scales = t[prefix + ".scales"].astype(np.float64)               # [G, N]
    g_idx = t[prefix + ".g_idx"].astype(np.int64)                   # [K]
    K = qweight.shape[0] * per
    shifts = bits * np.arange(per)
    codes = ((qweight[:, None, :] >> shifts[None, :, None]) & mask).reshape(K, -1)  # [K, N]
    zeros = ((qzeros[:, :, None] >> shifts[None, None, :]) & mask).reshape(qzeros.shape[0], -1)  # [G, N]
    offset = 0 if q.get("checkpoint_format") == "gptq_v2" else 1
    w = scales[g_idx] * (codes - (zeros[g_idx] + offset))  # [K, N]
    return w.T


def inv_freq(cfg: dict) -> np.ndarray:
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    base = cfg.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    rs = cfg.get("rope_scaling")
    if rs:
        kind = rs.get("rope_type", rs.get("type"))
        if kind == "linear":
            inv = inv / rs["factor"]
        elif kind == "llama3":
            factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            old = rs["original_max_position_embeddings"]
            low_wavelen, high_wavelen = old / low, old / high
            out = []
            for f in inv:
                wavelen = 2 * math.pi / f
                if wavelen < high_wavelen:
                    out.append(f)
                elif wavelen > low_wavelen:
                    out.append(f / factor)
                else:
                    smooth = (old / wavelen - low) / (high - low)
                    out.append((1 - smooth) * f / factor + smooth * f)
            inv = np.array(out)
    return inv


def rms_norm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rotate_half(x):
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def forward(folder: Path, ids: list) -> np.ndarray:
    cfg = json.loads((folder / "config.json").read_text())
    t = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in load_tensors(folder).items()}
    q_cfg = cfg.get("quantization_config")
    H = cfg["hidden_size"]
    n_heads = cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_heads)
    hd = cfg.get("head_dim") or H // n_heads
    eps = cfg.get("rms_norm_eps", 1e-6)
    qwen2 = cfg["model_type"] == "qwen2"

    def linear(prefix):
        if q_cfg and prefix + ".qweight" in t:
            return gptq_dequant(t, prefix, q_cfg)
        return t[prefix + ".weight"]

    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    freqs = np.outer(pos, inv_freq(cfg))            # [n, hd/2]
    emb = np.concatenate([freqs, freqs], axis=-1)   # [n, hd]
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    mask = np.triu(np.full((n, n), -np.inf), k=1)

    x = t["model.embed_tokens.weight"][ids]
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, t[p + "input_layernorm.weight"], eps)
        q = h @ linear(p + "self_attn.q_proj").T
        k = h @ linear(p + "self_attn.k_proj").T
        v = h @ linear(p + "self_attn.v_proj").T
        if qwen2 or cfg.get("attention_bias"):
            q, k, v = q + t[p + "self_attn.q_proj.bias"], k + t[p + "self_attn.k_proj.bias"], v + t[p + "self_attn.v_proj.bias"]
        q = q.reshape(n, n_heads, hd)
        k = k.reshape(n, n_kv, hd)
        v = v.reshape(n, n_kv, hd)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = n_heads // n_kv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(n, n_heads * hd)
        x = x + attn @ linear(p + "self_attn.o_proj").T
        h = rms_norm(x, t[p + "post_attention_layernorm.weight"], eps)
        gate = h @ linear(p + "mlp.gate_proj").T
        up = h @ linear(p + "mlp.up_proj").T
        x = x + ((gate / (1 + np.exp(-gate))) * up) @ linear(p + "mlp.down_proj").T
    x = rms_norm(x, t["model.norm.weight"], eps)
    lm = t["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings") else t["lm_head.weight"]
    return x @ lm.T


def main():
    folder, ids_path, out_path = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    ids = json.loads(Path(ids_path).read_text())
    np.save(out_path, forward(folder, ids))


if __name__ == "__main__":
    main()
