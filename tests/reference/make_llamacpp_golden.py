# SPDX-License-Identifier: Apache-2.0
"""Golden outputs of llama.cpp for the SmolLM2-135M-Instruct test model (generated, not hand-edited).

llama.cpp is the independent reference our engine is checked against. This script drives
llama.cpp through llama-cpp-python's low-level ctypes API (no high-level `Llama` class, no
sampler chain of its own choosing) and writes

  tests/golden/smollm2_135m_llamacpp.json         prompts, token ids, greedy continuations,
                                                  perplexity figures, tokenization hashes,
                                                  versions, sha256s, the index of the .bin
  tests/golden/smollm2_135m_llamacpp_logits.bin   float32 little-endian logit rows (full vocab)

Setup (once; the llama.cpp build took 6 minutes on the 2-core dev VM)
--------------------------------------------------------------------------------
    python3 -m venv build/llamacpp-venv
    build/llamacpp-venv/bin/pip install --upgrade pip
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF" MAKEFLAGS=-j2 \
        build/llamacpp-venv/bin/pip install -v --no-binary llama-cpp-python \
        llama-cpp-python==0.3.36 > build/llamacpp-pip.log 2>&1
    build/llamacpp-venv/bin/pip install gguf==0.19.0 numpy

llama-cpp-python 0.3.36 is an sdist on PyPI; it vendors llama.cpp at commit
0c1e57098bba43ac29e6e3b677cdceebdd22334f (ggml_commit() reports "0c1e570-dirty": the sdist's
vendored tree is not a clean checkout of that commit) and builds it with CMake. GGML_NATIVE=ON
compiles for this CPU (AVX-512 on the dev VM), so logits can differ in the last bits on another
CPU; token ids cannot, and greedy ids and perplexities (to ~4 decimals) should not, except at a
near-tie (see greedy_top1_margins in the JSON). Two runs here gave a byte-identical .bin.

Run (from the repository root)
------------------------------
    scripts/fetch-test-model.sh     # puts the Q4_1 GGUF in ~/.cache/gptqd-test
    build/llamacpp-venv/bin/python tests/reference/make_llamacpp_golden.py

Options: --model (default $GPTQD_TEST_MODEL or ~/.cache/gptqd-test/SmolLM2-135M-Instruct.Q4_1.gguf),
--data (default $GPTQD_SHARED_DATA/wikitext-2-raw/wiki.test.raw, $GPTQD_SHARED_DATA defaulting to
../shared/data beside the repository), --work (scratch folder for the F32 GGUF, default
build/llamacpp-golden), --out (default tests/golden), --full-ppl. 2 to 6 minutes on the dev VM
(depending on what else runs there).

What it does
------------
a. Requantizes the Q4_1 GGUF to F32 with llama.cpp's own `llama_model_quantize` (ftype
   LLAMA_FTYPE_ALL_F32, allow_requantize). llama.cpp dequantizes every quantized tensor (210 Q4_1,
   token_embd Q8_0) to fp32 and copies the F32 norms, so llama.cpp then computes with exactly the
   fp32 weights our engine gets by dequantizing the Q4_1 file. The script checks, tensor by
   tensor, that the F32 file holds bit-for-bit `gguf.quants.dequantize` of the Q4_1 tensors
   (names, shapes and every float's bits) and aborts otherwise.

b. Loads the F32 GGUF on the CPU: n_threads = n_threads_batch = 2, n_ctx 2048, n_batch = n_ubatch
   512, load_mode NONE (read into memory, no mmap), check_tensors on, flash attention OFF and an
   F32 KV cache (llama.cpp's defaults would be flash-attention "auto" and an F16 cache; fp32
   everywhere is the reference for an fp32 engine). For each prompt:
   - ids: `llama_tokenize(text, add_special=True, parse_special=...)` (parse_special only for the
     chat prompts). add_special=True lets llama.cpp add BOS if the model asked for one; SmolLM2's
     GGUF says tokenizer.ggml.add_bos_token = false and the script asserts that add_special=True
     and add_special=False give the same ids (no BOS anywhere).
   - the whole prompt is decoded as one batch from position 0; the logits of the LAST prompt
     position are stored (49152 float32), and for the long wikitext prompt also those of 4
     earlier positions (listed in the JSON).
   - greedy continuation of 32 tokens: the next token is numpy.argmax of the fp32 logits (first
     index on a tie; no temperature, penalties or RNG), fed back one token per llama_decode. The
     script also runs llama.cpp's own greedy sampler on the same logits and asserts it agrees.
     Generation does not stop at an end-of-generation token; `first_eog_index` says where the
     first one (<|im_end|>, <|endoftext|>) came, if any.

c. Perplexity with the GPTQ paper's protocol (docs: shared/docs/gptq-reference.md A.12).
   Text decision: A.12 evaluates `"\\n\\n".join(rows)` of the Hugging Face wikitext-2-raw-v1 test
   split, and the HF loading script makes one row per line of wiki.test.raw: the line WITH its
   trailing "\\n", or "" when the line is empty or whitespace-only (the 1467 " " lines). So the
   evaluated string is rows[0] + "\\n\\n" + rows[1] + ... + rows[4357], built here from the raw
   file (1,294,336 characters / 1,296,370 UTF-8 bytes, as PROVENANCE.md derives; asserted). It is
   NOT the raw file as is (that is what llama.cpp's own llama-perplexity reads; a different
   protocol with different numbers). Tokenized once with llama_tokenize(add_special=True,
   parse_special=False): no BOS (see b.), and the text holds no special-token strings.
   Windows: non-overlapping [i*seqlen, (i+1)*seqlen), each decoded from position 0 with an empty
   KV cache (no carry-over), in batches of 512. Counted positions: the logits at window
   positions 0..seqlen-2 predict the tokens at positions 1..seqlen-1, i.e. seqlen-1 predictions
   per window; the first token of a window is never predicted. Per-window mean NLL = mean of
   -log_softmax(logits[p])[token[p+1]] over those seqlen-1 positions (log-softmax in float64 from
   the float32 logits). Aggregate over the first N windows: mean_nll = mean of the per-window
   means (all windows have the same count; equals A.12's sum(nll_i)/(N*seqlen) with nll_i =
   mean*seqlen), ppl = exp(mean_nll). Recorded: seqlen 512, the first 8 windows; seqlen 2048,
   the first 4 windows; plus the token count and the number of full windows of the whole text.

d. Tokenization of whole files for tokenizer parity: the raw wiki.test.raw bytes as they are, and
   the A.12 evaluation string, each tokenized with add_special=True, parse_special=False: token
   count, sha256 of the int32 little-endian id array, and the first/last 32 ids.

The .bin is the logit rows back to back, float32 little-endian; the JSON's "logits_index" gives
each row's name, byte offset, float count, prompt and position.
"""
import argparse
import ctypes
import datetime
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import time

import numpy as np

import gguf
import llama_cpp as lc

REPO = pathlib.Path(__file__).resolve().parents[2]
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
VENDORED_COMMIT = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"

N_THREADS = 2
N_CTX = 2048
N_BATCH = 512
N_GREEDY = 32

PROMPTS = [
    # name, text (or a callable of the wikitext lines), parse_special
    ("capital", "The capital of France is", False),
    ("once", "Once upon a time", False),
    ("fibonacci", "def fibonacci(n):", False),
    ("chat", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", True),
    # What the model's own Jinja chat template renders for the same single user message: it adds
    # its default system message when the conversation does not start with one.
    ("chat_template", "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
     "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n", True),
    ("wikitext_long", None, False),  # line 18 of wiki.test.raw, stripped (about 270 tokens)
    ("unicode", "Ünïcödé: naïve café, 日本語のテキスト, Ελληνικά, русский, emoji 🦙🚀 — “quotes” ½ ∑ x² ≠ y", False),
]
LONG_LINE = 18  # 1-based line of wiki.test.raw used for the long prompt

PPL_RUNS = [(512, 8), (2048, 4)]


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# llama.cpp plumbing

_log_keep = []


def quiet_logs():
    """Drop llama.cpp's info/debug chatter; keep warnings and errors on stderr."""
    @lc.llama_log_callback
    def cb(level, text, _user):
        if level in (3, 4):  # GGML_LOG_LEVEL_WARN, GGML_LOG_LEVEL_ERROR
            sys.stderr.write("llama.cpp: " + text.decode("utf-8", "replace"))
    _log_keep.append(cb)
    lc.llama_log_set(cb, ctypes.c_void_p(0))


def ggml_commit():
    lib = ctypes.CDLL(str(pathlib.Path(lc.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_commit.restype = ctypes.c_char_p
    lib.ggml_version.restype = ctypes.c_char_p
    return lib.ggml_commit().decode(), lib.ggml_version().decode()


def quantize(src, dst, ftype):
    params = lc.llama_model_quantize_default_params()
    params.nthread = N_THREADS
    params.ftype = ftype
    params.allow_requantize = True
    rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise SystemExit(f"llama_model_quantize({src} -> {dst}) failed: {rc}")


class Llama:
    def __init__(self, path, n_ctx=N_CTX, n_batch=N_BATCH, load_mode=lc.LLAMA_LOAD_MODE_NONE,
                 flash_attn=lc.LLAMA_FLASH_ATTN_TYPE_DISABLED, kv_type=lc.GGML_TYPE_F32, check_tensors=True):
        mp = lc.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.load_mode = load_mode
        mp.check_tensors = check_tensors
        self.model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise SystemExit(f"cannot load {path}")
        cp = lc.llama_context_default_params()
        cp.n_ctx = n_ctx
        cp.n_batch = n_batch
        cp.n_ubatch = n_batch
        cp.n_seq_max = 1
        cp.n_threads = N_THREADS
        cp.n_threads_batch = N_THREADS
        cp.flash_attn_type = flash_attn
        cp.type_k = kv_type
        cp.type_v = kv_type
        cp.no_perf = False
        self.ctx = lc.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise SystemExit("cannot create a llama context")
        self.params = {"n_ctx": lc.llama_n_ctx(self.ctx), "n_batch": lc.llama_n_batch(self.ctx),
                       "n_ubatch": lc.llama_n_ubatch(self.ctx), "n_threads": N_THREADS,
                       "n_threads_batch": N_THREADS, "flash_attn_type": flash_attn,
                       "type_k": kv_type, "type_v": kv_type, "load_mode": load_mode,
                       "check_tensors": check_tensors, "n_gpu_layers": 0}
        self.vocab = lc.llama_model_get_vocab(self.model)
        self.n_vocab = lc.llama_vocab_n_tokens(self.vocab)
        self.n_batch = n_batch
        self.batch = lc.llama_batch_init(n_batch, 0, 1)
        self.greedy = lc.llama_sampler_init_greedy()

    def close(self):
        lc.llama_sampler_free(self.greedy)
        lc.llama_batch_free(self.batch)
        lc.llama_free(self.ctx)
        lc.llama_model_free(self.model)

    def tokenize(self, text, add_special=True, parse_special=False):
        data = text.encode("utf-8") if isinstance(text, str) else text
        cap = len(data) + 16
        buf = (lc.llama_token * cap)()
        n = lc.llama_tokenize(self.vocab, data, len(data), buf, cap, add_special, parse_special)
        if n < 0:
            raise SystemExit(f"llama_tokenize failed ({n})")
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32).copy()

    def piece(self, tok):
        buf = ctypes.create_string_buffer(256)
        n = lc.llama_token_to_piece(self.vocab, int(tok), buf, 256, 0, True)
        return buf.raw[:n]

    def detokenize(self, ids):
        arr = (lc.llama_token * len(ids))(*[int(t) for t in ids])
        cap = 64 * len(ids) + 64
        buf = ctypes.create_string_buffer(cap)
        n = lc.llama_detokenize(self.vocab, arr, len(ids), buf, cap, False, True)
        if n < 0:
            raise SystemExit("llama_detokenize failed")
        return buf.raw[:n]

    def clear(self):
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)

    def decode(self, ids, pos0, want):
        """Decodes ids at positions pos0.. in batches of n_batch. `want(j)` says whether the logits
        of the j-th token (0-based within ids) are needed; yields (j0, rows) per batch, rows being a
        (k, n_vocab) float32 view valid until the next decode, in ascending j order."""
        b = self.batch
        for s in range(0, len(ids), self.n_batch):
            chunk = ids[s:s + self.n_batch]
            outs = []
            for i, t in enumerate(chunk):
                b.token[i] = int(t)
                b.pos[i] = pos0 + s + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                w = bool(want(s + i))
                b.logits[i] = w
                if w:
                    outs.append(s + i)
            b.n_tokens = len(chunk)
            rc = lc.llama_decode(self.ctx, b)
            if rc != 0:
                raise SystemExit(f"llama_decode failed: {rc}")
            if outs:
                rows = np.ctypeslib.as_array(lc.llama_get_logits(self.ctx), shape=(len(outs), self.n_vocab))
                yield outs, rows

    def logits_at(self, ids, positions):
        wanted = set(positions)
        got = {}
        for outs, rows in self.decode(ids, 0, lambda j: j in wanted):
            for k, j in enumerate(outs):
                got[j] = rows[k].copy()
        return got

    def greedy_check(self, argmax_tok):
        """llama.cpp's own greedy sampler on the last output row must agree with numpy.argmax."""
        t = lc.llama_sampler_sample(self.greedy, self.ctx, -1)
        if t != argmax_tok:
            raise SystemExit(f"llama.cpp greedy sampler chose {t}, numpy.argmax {argmax_tok}")


def top1_margin(row):
    a, b = np.partition(row, -2)[-2:]
    return float(b - a)


def log_softmax_rows(rows):
    x = rows.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return x - (m + np.log(np.exp(x - m).sum(axis=1, keepdims=True)))


# ---------------------------------------------------------------------------------------------
# steps

def verify_f32(q4_path, f32_path):
    qr = gguf.GGUFReader(str(q4_path))
    fr = gguf.GGUFReader(str(f32_path))
    ftensors = {t.name: t for t in fr.tensors}
    if sorted(ftensors) != sorted(t.name for t in qr.tensors):
        raise SystemExit("F32 GGUF has a different tensor set")
    counts, n_el = {}, 0
    for qt in qr.tensors:
        ft = ftensors[qt.name]
        if ft.tensor_type != gguf.GGMLQuantizationType.F32:
            raise SystemExit(f"{qt.name}: F32 file holds {ft.tensor_type.name}")
        if list(ft.shape) != list(qt.shape):
            raise SystemExit(f"{qt.name}: shape {list(ft.shape)} vs {list(qt.shape)}")
        want = np.asarray(gguf.quants.dequantize(qt.data, qt.tensor_type), dtype=np.float32).reshape(-1)
        have = np.asarray(ft.data, dtype=np.float32).reshape(-1)
        if want.shape != have.shape or not np.array_equal(want.view(np.uint32), have.view(np.uint32)):
            bad = int(np.count_nonzero(want.view(np.uint32) != have.view(np.uint32))) if want.shape == have.shape else -1
            raise SystemExit(f"{qt.name}: F32 tensor != gguf.quants.dequantize ({bad} floats differ)")
        counts[qt.tensor_type.name] = counts.get(qt.tensor_type.name, 0) + 1
        n_el += have.size
    msg = (f"verified: all {len(qr.tensors)} tensors of the F32 GGUF equal gguf.quants.dequantize of the Q4_1 "
           f"GGUF bit for bit ({', '.join(f'{v} {k}' for k, v in sorted(counts.items()))}; {n_el} floats)")
    print(msg, flush=True)
    return {"tensors": len(qr.tensors), "source_types": counts, "floats": n_el, "bit_identical": True,
            "checked_with": f"gguf {importlib.metadata.version('gguf')} gguf.quants.dequantize"}


def a12_text(raw_bytes):
    lines = raw_bytes.decode("utf-8").split("\n")
    assert lines[-1] == "", "wiki.test.raw should end with a newline"
    lines = lines[:-1]
    rows = [ln + "\n" if ln.strip() else "" for ln in lines]
    text = "\n\n".join(rows)
    return len(lines), text


def id_summary(ids):
    return {"count": int(ids.size), "sha256_int32_le": hashlib.sha256(ids.astype("<i4").tobytes()).hexdigest(),
            "first_32": ids[:32].tolist(), "last_32": ids[-32:].tolist()}


def perplexity(llm, ids, seqlen, n_windows, verbose=True):
    per = []
    for w in range(n_windows):
        win = ids[w * seqlen:(w + 1) * seqlen]
        assert win.size == seqlen
        llm.clear()
        nll_sum = 0.0
        t0 = time.time()
        for outs, rows in llm.decode(win, 0, lambda j: j < seqlen - 1):
            lsm = log_softmax_rows(rows)
            tgt = win[np.asarray(outs) + 1]
            nll_sum += float(-lsm[np.arange(len(outs)), tgt].sum())
        mean = nll_sum / (seqlen - 1)
        per.append(mean)
        if verbose or w % 50 == 0:
            print(f"  seqlen {seqlen} window {w}: mean NLL {mean:.6f} (ppl {math.exp(mean):.4f}, {time.time() - t0:.1f}s)",
                  flush=True)
    mean_nll = float(np.mean(per))
    return {"seqlen": seqlen, "windows_evaluated": n_windows,
            "windows_in_text": int(ids.size // seqlen),
            "predictions_per_window": seqlen - 1,
            "per_window_mean_nll": per,
            "per_window_ppl": [math.exp(v) for v in per],
            "mean_nll": mean_nll, "ppl": math.exp(mean_nll),
            "sum_nll_over_predictions": float(sum(v * (seqlen - 1) for v in per))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = pathlib.Path(os.environ.get("GPTQD_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--model", default=os.environ.get("GPTQD_TEST_MODEL",
                                                      str(pathlib.Path.home() / ".cache/gptqd-test" / MODEL_NAME)))
    ap.add_argument("--data", default=str(shared / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--work", default=str(REPO / "build" / "llamacpp-golden"))
    ap.add_argument("--out", default=str(REPO / "tests" / "golden"))
    ap.add_argument("--full-ppl", action="store_true",
                    help="also evaluate every full window of the text at both seqlens "
                         "(slow: about 3 hours on the 2-core dev VM)")
    args = ap.parse_args()

    model = pathlib.Path(args.model)
    work = pathlib.Path(args.work)
    out = pathlib.Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    quiet_logs()
    lc.llama_backend_init()
    commit_short, ggml_ver = ggml_commit()
    system_info = lc.llama_print_system_info().decode()
    print(f"llama-cpp-python {lc.__version__}, llama.cpp {lc.llama_version().decode()} commit {commit_short}")
    print(f"system_info: {system_info}", flush=True)

    # a. requantize to F32 and verify
    f32 = work / "SmolLM2-135M-Instruct.F32.gguf"
    t0 = time.time()
    quantize(model, f32, lc.LLAMA_FTYPE_ALL_F32)
    print(f"requantized to {f32} in {time.time() - t0:.1f}s", flush=True)
    f32_check = verify_f32(model, f32)

    raw = pathlib.Path(args.data).read_bytes()
    raw_lines = raw.decode("utf-8").split("\n")
    n_rows, eval_text = a12_text(raw)
    assert n_rows == 4358 and len(eval_text) == 1294336 and len(eval_text.encode()) == 1296370, \
        (n_rows, len(eval_text))

    llm = Llama(f32)
    assert llm.n_vocab == 49152
    add_bos = bool(lc.llama_vocab_get_add_bos(llm.vocab))
    add_eos = bool(lc.llama_vocab_get_add_eos(llm.vocab))
    eog = [t for t in range(llm.n_vocab) if lc.llama_vocab_is_eog(llm.vocab, t)]
    bos_id, eos_id = int(lc.llama_vocab_bos(llm.vocab)), int(lc.llama_vocab_eos(llm.vocab))
    special_pieces = {str(t): llm.piece(t).decode("utf-8", "replace") for t in sorted({bos_id, eos_id, *eog})}

    # b. prompts
    bin_rows, index, prompts = [], [], []
    offset = 0

    def add_row(name, prompt, pos, row):
        nonlocal offset
        row = np.ascontiguousarray(row, dtype="<f4")
        bin_rows.append(row.tobytes())
        index.append({"name": name, "prompt": prompt, "position": pos, "offset": offset, "count": int(row.size)})
        offset += row.nbytes

    for name, text, parse_special in PROMPTS:
        if text is None:
            text = raw_lines[LONG_LINE - 1].strip()
        ids = llm.tokenize(text, add_special=True, parse_special=parse_special)
        ids_nospecial = llm.tokenize(text, add_special=False, parse_special=parse_special)
        if not np.array_equal(ids, ids_nospecial):
            raise SystemExit(f"{name}: add_special changed the ids (BOS/EOS added?)")
        n = int(ids.size)
        extra = [0, 1, n // 2, n - 2] if name == "wikitext_long" else []
        llm.clear()
        got = llm.logits_at(ids, extra + [n - 1])
        last = got[n - 1]
        top = np.argsort(-last, kind="stable")[:5]
        for p in extra:
            add_row(f"{name}@{p}", name, p, got[p])
        add_row(f"{name}@last", name, n - 1, last)
        # greedy
        gen, margins = [], []
        nxt = int(np.argmax(last))
        margins.append(top1_margin(last))
        llm.greedy_check(nxt)
        for step in range(N_GREEDY):
            gen.append(nxt)
            if step == N_GREEDY - 1:
                break
            (_, rows), = list(llm.decode(np.asarray([nxt], np.int32), n + step, lambda j: True))
            nxt = int(np.argmax(rows[0]))
            margins.append(top1_margin(rows[0]))
            llm.greedy_check(nxt)
        gen_bytes = llm.detokenize(gen)
        first_eog = next((i for i, t in enumerate(gen) if t in eog), None)
        entry = {
            "name": name, "text": text, "parse_special": parse_special, "add_special": True,
            "ids": ids.tolist(), "n_tokens": n,
            "last_logits": f"{name}@last",
            "extra_logit_positions": extra,
            "last_top5": [{"id": int(t), "logit": float(last[t]), "piece": llm.piece(t).decode("utf-8", "replace")}
                          for t in top],
            "greedy_ids": gen,
            "greedy_text": gen_bytes.decode("utf-8", "replace"),
            "greedy_text_utf8_hex": gen_bytes.hex(),
            "greedy_text_is_valid_utf8": _valid_utf8(gen_bytes),
            "first_eog_index": first_eog,
            # logit(top1) - logit(top2) at each greedy step: a small margin is where an engine with
            # a different summation order may legitimately pick the other token
            "greedy_top1_margins": [round(m, 5) for m in margins],
            "greedy_min_margin": {"step": int(np.argmin(margins)), "margin": round(float(min(margins)), 5)},
        }
        prompts.append(entry)
        print(f"{name}: {n} tokens, top1 {top[0]} ({last[top[0]]:.4f}); greedy: {entry['greedy_text']!r}", flush=True)

    # d. whole-file tokenization (raw file as is, and the A.12 string)
    t0 = time.time()
    raw_ids = llm.tokenize(raw, add_special=True, parse_special=False)
    a12_ids = llm.tokenize(eval_text, add_special=True, parse_special=False)
    print(f"tokenized wiki.test.raw: {raw_ids.size} tokens; A.12 text: {a12_ids.size} tokens "
          f"({time.time() - t0:.1f}s)", flush=True)
    if raw_ids.size and (raw_ids[0] == bos_id or a12_ids[0] == bos_id):
        raise SystemExit("llama.cpp added BOS to the wikitext tokens")

    # c. perplexity on the A.12 string
    ppl = [perplexity(llm, a12_ids, seqlen, nw) for seqlen, nw in PPL_RUNS]
    ppl_full = []
    if args.full_ppl:
        for seqlen, _ in PPL_RUNS:
            r = perplexity(llm, a12_ids, seqlen, a12_ids.size // seqlen, verbose=False)
            print(f"ppl seqlen {seqlen} all {r['windows_evaluated']} windows: ppl {r['ppl']:.4f}", flush=True)
            ppl_full.append(r)
    for r in ppl:
        print(f"ppl seqlen {r['seqlen']} first {r['windows_evaluated']} windows: mean NLL {r['mean_nll']:.6f} "
              f"ppl {r['ppl']:.4f}", flush=True)
    llm_params = llm.params
    llm.close()

    # write
    bin_path = out / "smollm2_135m_llamacpp_logits.bin"
    bin_path.write_bytes(b"".join(bin_rows))
    cpu = _lscpu()
    golden = {
        "generated_by": "tests/reference/make_llamacpp_golden.py (generated file: do not edit by hand)",
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "llama_cpp": {"llama_cpp_python": lc.__version__, "llama_version": lc.llama_version().decode(),
                      "ggml_version": ggml_ver, "ggml_commit": commit_short, "vendored_commit": VENDORED_COMMIT,
                      "system_info": system_info,
                      "cmake_args": "-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF"},
        "machine": {"cpu": cpu, "python": platform.python_version(), "numpy": np.__version__},
        "models": {
            "q4_1": {"file": model.name, "sha256": sha256_file(model), "bytes": model.stat().st_size},
            "f32": {"file": f32.name, "sha256": sha256_file(f32), "bytes": f32.stat().st_size,
                    "made_with": "llama_model_quantize(ftype=LLAMA_FTYPE_ALL_F32, allow_requantize=true, nthread=2)",
                    "equals_gguf_dequantize": f32_check},
        },
        "context": llm_params,
        "tokenizer": {"model": "gpt2 (byte-level BPE)", "pre": "smollm", "n_vocab": 49152,
                      "add_bos": add_bos, "add_eos": add_eos,
                      "bos": bos_id, "eos": eos_id, "eog_ids": eog, "special_pieces": special_pieces,
                      "tokenize_call": "llama_tokenize(add_special=true, parse_special=false; true for the chat prompts)"},
        "greedy": {"n_tokens": N_GREEDY, "rule": "numpy.argmax of float32 logits (lowest id on ties), "
                   "checked against llama_sampler_init_greedy; no stop at EOG",
                   "prompt_decode": "whole prompt in one llama_decode batch from position 0, empty KV cache; "
                   "then one token per llama_decode"},
        "prompts": prompts,
        "wikitext": {
            "file": "shared/data/wikitext-2-raw/wiki.test.raw", "sha256": hashlib.sha256(raw).hexdigest(),
            "raw_file_tokens": id_summary(raw_ids),
            "a12_text": {"rows": n_rows, "chars": len(eval_text), "utf8_bytes": len(eval_text.encode()),
                         "sha256_utf8": hashlib.sha256(eval_text.encode()).hexdigest(),
                         "construction": "rows = [line + '\\n' if line.strip() else '' for line in lines]; "
                                         "text = '\\n\\n'.join(rows)",
                         "tokens": id_summary(a12_ids)},
        },
        "perplexity": {
            "protocol": "GPTQ A.12 on the a12_text tokens: non-overlapping windows [i*seqlen,(i+1)*seqlen), "
                        "each from position 0 with an empty KV cache; logits at positions 0..seqlen-2 "
                        "predict tokens 1..seqlen-1; per-window mean NLL over those seqlen-1 predictions "
                        "(float64 log-softmax); ppl = exp(mean of the per-window means)",
            "runs": ppl,
            "runs_all_windows": ppl_full or None,
        },
        "logits_bin": {"file": bin_path.name, "dtype": "float32", "byte_order": "little", "row_floats": 49152,
                       "bytes": offset, "sha256": hashlib.sha256(b"".join(bin_rows)).hexdigest()},
        "logits_index": index,
        "elapsed_s": round(time.time() - started, 1),
    }
    json_path = out / "smollm2_135m_llamacpp.json"
    json_path.write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {json_path} and {bin_path} ({offset} bytes) in {time.time() - started:.0f}s")


def _valid_utf8(b):
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def _lscpu():
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    info = dict(ln.split(":", 1) for ln in txt.splitlines() if ":" in ln)
    flags = set(info.get("Flags", "").split())
    return {"model_name": info.get("Model name", "").strip(), "cpus": os.cpu_count(),
            "simd": sorted(f for f in flags if f in {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                                                        "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"})}


if __name__ == "__main__":
    main()
