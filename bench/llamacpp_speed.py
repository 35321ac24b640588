# SPDX-License-Identifier: Apache-2.0
"""llama.cpp's CPU speed on SmolLM2-135M-Instruct (F16, Q4_1, Q4_0): a reference for docs/performance.md.

Measures, through llama-cpp-python's low-level ctypes API, prompt processing (one 512-token prompt,
n_batch = n_ubatch 512) and decode (128 greedy tokens, one llama_decode per token) with 2 threads,
for the model requantized to F16 and for the original Q4_1 GGUF. Each configuration: one
discarded warm-up run, then --runs timed runs (default 3); the medians are reported.

Setup: the same venv as tests/reference/make_llamacpp_golden.py (see its docstring):
    python3 -m venv build/llamacpp-venv
    build/llamacpp-venv/bin/pip install --upgrade pip
    CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAMA_BUILD_TESTS=OFF" MAKEFLAGS=-j2 \
        build/llamacpp-venv/bin/pip install -v --no-binary llama-cpp-python \
        llama-cpp-python==0.3.36 > build/llamacpp-pip.log 2>&1
    build/llamacpp-venv/bin/pip install gguf==0.19.0 numpy   # used by the golden script

Run (from the repository root, on an otherwise idle machine):
    scripts/fetch-test-model.sh
    build/llamacpp-venv/bin/python bench/llamacpp_speed.py [--runs 3] [--json build/llamacpp-bench/speed.json]

Details
- F16 model: llama_model_quantize(ftype = LLAMA_FTYPE_MOSTLY_F16, allow_requantize) of the Q4_1
  GGUF (written to build/llamacpp-bench/); the norms stay F32, the other weights are the
  dequantized Q4_1 values rounded to fp16 (speed, not accuracy, is what this file is for).
- Q4_0 model: llama_model_quantize(ftype = LLAMA_FTYPE_MOSTLY_Q4_0) of that F16 file, with
  llama.cpp's own choice of types for the tensors it treats specially (the tied token embedding /
  output matrix); its size is printed. The comparison point of gptqd's 4-bit GPTQ decode.
- Context: llama.cpp's library defaults except n_ctx 2048, n_batch = n_ubatch 512, n_threads =
  n_threads_batch 2; so flash attention "auto" and an F16 KV cache, weights loaded with llama.cpp's
  default load mode (mmap) and its default CPU weight repacking. Both are printed.
- Prompt: the first 512 tokens of wiki.test.raw as llama.cpp tokenizes it (no BOS; SmolLM2 has
  none). Only the last prompt position's logits are requested.
- Other work on the machine wrecks these numbers (OpenMP threads wait for a descheduled peer).
  Before each run the script waits until /proc/stat shows the CPUs --idle-threshold idle (default
  0.9, at most --idle-wait s) and records that idle fraction and each phase's CPU share (process
  CPU time / (wall * 2 threads)). A run with a share under --min-cpu-share (0.9) in either phase
  was disturbed: it is kept in the JSON under "disturbed_runs" and run again, so the medians are
  of --runs undisturbed runs.
- pp tokens/s = 512 / wall time of the prompt's llama_decode call(s). tg tokens/s = 128 / wall
  time of 128 steps, each = llama.cpp's greedy sampler on the last logits + one single-token
  llama_decode. llama_perf_context's eval timer is reported beside tg as a cross-check (it counts
  127 tokens: llama.cpp books the first single-token decode after the prompt under p_eval). Its
  p_eval timer is kept in the JSON but not used: with this API it reports 513 tokens and its time
  can include time spent before the prompt's decode (seen: 3 s to 143 s for a 1.5 s decode).
"""
import argparse
import ctypes
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

import llama_cpp as lc

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_THREADS = 2
N_PROMPT = 512
N_GEN = 128
N_CTX = 2048
N_BATCH = 512

_log_keep = []


def quiet_logs():
    @lc.llama_log_callback
    def cb(level, text, _user):
        if level in (3, 4):
            sys.stderr.write("llama.cpp: " + text.decode("utf-8", "replace"))
    _log_keep.append(cb)
    lc.llama_log_set(cb, ctypes.c_void_p(0))


def quantize(src, dst, ftype):
    params = lc.llama_model_quantize_default_params()
    params.nthread = N_THREADS
    params.ftype = ftype
    params.allow_requantize = True
    if lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize({src} -> {dst}) failed")


def tokenize(vocab, data):
    cap = len(data) + 16
    buf = (lc.llama_token * cap)()
    n = lc.llama_tokenize(vocab, data, len(data), buf, cap, True, False)
    if n < 0:
        raise SystemExit("llama_tokenize failed")
    return [int(t) for t in buf[:n]]


def cpu_idle_fraction(interval=2.0):
    """Fraction of all CPUs' time spent idle over `interval` seconds (/proc/stat)."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return v[3] + v[4], sum(v[:8])
    i0, t0 = snap()
    time.sleep(interval)
    i1, t1 = snap()
    return (i1 - i0) / max(1, t1 - t0)


def wait_idle(threshold, max_wait):
    """Waits (at most max_wait s) until the machine is at least `threshold` idle; returns the last idle fraction."""
    deadline = time.time() + max_wait
    while True:
        idle = cpu_idle_fraction()
        if idle >= threshold or time.time() >= deadline:
            return idle
        time.sleep(3)


def bench_model(path, prompt_bytes, runs, idle_threshold, idle_wait, min_cpu_share, max_disturbed):
    mp = lc.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(str(path).encode(), mp)
    if not model:
        raise SystemExit(f"cannot load {path}")
    cp = lc.llama_context_default_params()
    cp.n_ctx = N_CTX
    cp.n_batch = N_BATCH
    cp.n_ubatch = N_BATCH
    cp.n_seq_max = 1
    cp.n_threads = N_THREADS
    cp.n_threads_batch = N_THREADS
    cp.no_perf = False
    ctx = lc.llama_init_from_model(model, cp)
    vocab = lc.llama_model_get_vocab(model)
    prompt = tokenize(vocab, prompt_bytes)[:N_PROMPT]
    assert len(prompt) == N_PROMPT
    batch = lc.llama_batch_init(N_BATCH, 0, 1)
    smpl = lc.llama_sampler_init_greedy()
    mem = lc.llama_get_memory(ctx)

    def fill(tokens, pos0, last_only):
        for i, t in enumerate(tokens):
            batch.token[i] = t
            batch.pos[i] = pos0 + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = (i == len(tokens) - 1) if last_only else True
        batch.n_tokens = len(tokens)

    def one_run():
        idle = wait_idle(idle_threshold, idle_wait)
        lc.llama_memory_clear(mem, True)
        lc.llama_perf_context_reset(ctx)
        c0 = time.process_time()
        t0 = time.perf_counter()
        for s in range(0, N_PROMPT, N_BATCH):
            fill(prompt[s:s + N_BATCH], s, True)
            if lc.llama_decode(ctx, batch) != 0:
                raise SystemExit("llama_decode failed")
        t1 = time.perf_counter()
        c1 = time.process_time()
        gen = []
        for i in range(N_GEN):
            tok = lc.llama_sampler_sample(smpl, ctx, -1)
            gen.append(tok)
            fill([tok], N_PROMPT + i, True)
            if lc.llama_decode(ctx, batch) != 0:
                raise SystemExit("llama_decode failed")
        t2 = time.perf_counter()
        c2 = time.process_time()
        perf = lc.llama_perf_context(ctx)
        return {"pp_s": t1 - t0, "tg_s": t2 - t1, "pp_tps": N_PROMPT / (t1 - t0), "tg_tps": N_GEN / (t2 - t1),
                "cpu_idle_before": idle,
                # process CPU time / (wall * threads): about 1.0 when both threads had a core throughout
                "pp_cpu_share": (c1 - c0) / ((t1 - t0) * N_THREADS),
                "tg_cpu_share": (c2 - c1) / ((t2 - t1) * N_THREADS),
                "perf_p_eval_ms": perf.t_p_eval_ms, "perf_n_p_eval": perf.n_p_eval,
                "perf_eval_ms": perf.t_eval_ms, "perf_n_eval": perf.n_eval,
                "gen_head": gen[:8]}

    one_run()  # warm-up, discarded
    results, disturbed = [], []
    while len(results) < runs:
        r = one_run()
        if min(r["pp_cpu_share"], r["tg_cpu_share"]) >= min_cpu_share:
            results.append(r)
        else:
            disturbed.append(r)
            if len(disturbed) >= max_disturbed:
                raise SystemExit(f"{path.name}: {len(disturbed)} runs disturbed by other work; try later")
    info = {"flash_attn_type": cp.flash_attn_type, "type_k": cp.type_k, "type_v": cp.type_v,
            "load_mode": mp.load_mode, "use_extra_bufts": mp.use_extra_bufts,
            "model_size_bytes": lc.llama_model_size(model), "n_params": lc.llama_model_n_params(model)}
    lc.llama_sampler_free(smpl)
    lc.llama_batch_free(batch)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    med = {k: statistics.median(r[k] for r in results) for k in ("pp_tps", "tg_tps")}
    med["perf_tg_tps"] = statistics.median(1000 * r["perf_n_eval"] / r["perf_eval_ms"] for r in results)
    return {"runs": results, "disturbed_runs": disturbed, "median": med, "info": info}


def lscpu_summary():
    try:
        txt = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    info = dict(ln.split(":", 1) for ln in txt.splitlines() if ":" in ln)
    flags = set(info.get("Flags", "").split())
    return {"model_name": info.get("Model name", "").strip(), "nproc": os.cpu_count(),
            **{f: f in flags for f in ("avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile")}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shared = pathlib.Path(os.environ.get("GPTQD_SHARED_DATA", REPO.parent / "shared" / "data"))
    ap.add_argument("--model", default=os.environ.get("GPTQD_TEST_MODEL",
                                                      str(pathlib.Path.home() / ".cache/gptqd-test" / MODEL_NAME)))
    ap.add_argument("--data", default=str(shared / "wikitext-2-raw" / "wiki.test.raw"))
    ap.add_argument("--work", default=str(REPO / "build" / "llamacpp-bench"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--models", default="F16,Q4_1,Q4_0", help="comma-separated subset of F16,Q4_1,Q4_0")
    ap.add_argument("--idle-threshold", type=float, default=0.9,
                    help="before each run, wait until the CPUs are this idle (fraction, /proc/stat over 2 s)")
    ap.add_argument("--idle-wait", type=float, default=600, help="give up waiting for idle after this many s")
    ap.add_argument("--min-cpu-share", type=float, default=0.9,
                    help="a run whose pp or tg CPU share is below this was disturbed: it is kept in the JSON "
                         "as disturbed and run again")
    ap.add_argument("--max-disturbed", type=int, default=6, help="give up after this many disturbed runs")
    args = ap.parse_args()

    quiet_logs()
    lc.llama_backend_init()
    work = pathlib.Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    q4 = pathlib.Path(args.model)
    f16 = work / "SmolLM2-135M-Instruct.F16.gguf"
    if not f16.exists():
        quantize(q4, f16, lc.LLAMA_FTYPE_MOSTLY_F16)
    q40 = work / "SmolLM2-135M-Instruct.Q4_0.gguf"
    if not q40.exists():
        quantize(f16, q40, lc.LLAMA_FTYPE_MOSTLY_Q4_0)
    paths = {"F16": f16, "Q4_1": q4, "Q4_0": q40}
    prompt_bytes = pathlib.Path(args.data).read_bytes()[:16384]

    out = {"date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "llama_cpp_python": lc.__version__, "llama_version": lc.llama_version().decode(),
           "system_info": lc.llama_print_system_info().decode(), "cpu": lscpu_summary(),
           "python": platform.python_version(), "threads": N_THREADS, "n_prompt": N_PROMPT, "n_gen": N_GEN,
           "loadavg_before": os.getloadavg(), "models": {}}
    for name in args.models.split(","):
        path = paths[name]
        r = bench_model(path, prompt_bytes, args.runs, args.idle_threshold, args.idle_wait,
                        args.min_cpu_share, args.max_disturbed)
        out["models"][name] = r
        m = r["median"]
        print(f"{name}: pp{N_PROMPT} {m['pp_tps']:.1f} t/s, "
              f"tg{N_GEN} {m['tg_tps']:.1f} t/s (perf {m['perf_tg_tps']:.1f}); runs "
              + ", ".join(f"{x['pp_tps']:.1f}/{x['tg_tps']:.1f} (idle {x['cpu_idle_before']:.2f}, "
                          f"cpu share {x['pp_cpu_share']:.2f}/{x['tg_cpu_share']:.2f})" for x in r["runs"])
              + f"; {len(r['disturbed_runs'])} disturbed run(s) redone", flush=True)
    out["loadavg_after"] = os.getloadavg()
    print(f"system_info: {out['system_info']}")
    print(f"loadavg before {out['loadavg_before']}, after {out['loadavg_after']}")
    print()
    print(f"| model | size | pp{N_PROMPT} t/s | tg{N_GEN} t/s |")
    print("|---|---:|---:|---:|")
    for name, r in out["models"].items():
        m = r["median"]
        print(f"| SmolLM2-135M {name} | {r['info']['model_size_bytes'] / 2**20:.1f} MiB | "
              f"{m['pp_tps']:.1f} | {m['tg_tps']:.1f} |")
    if args.json:
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
