#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Crash-consistency driver for gptqd (reliability.md B4, K4 + K6; hardening issue 11).

    crash_consistency.py --build build/release [--rounds 5] [--seed 1] [--work DIR] [--keep]

Each round starts gptqd on one persistent state directory, starts a random mix of operations
(Hub pulls from tests/support/hub_server.py, some of them held mid-download by a stall fault;
local folder and GGUF imports; quantize jobs on a tiny model; rm; dataset adds; job cancels),
logs every operation whose success the daemon acknowledged, kills the daemon with SIGKILL at a
random instant (sometimes at a GPTQD_FAULT_POINT instead), restarts it, waits until it is healthy
and idle, and checks the invariants:

  * SQLite `PRAGMA integrity_check` is ok and `PRAGMA foreign_key_check` is empty;
  * every acknowledged operation is there: a finished pull/import or quantize result is listed,
    an acknowledged rm is gone, an added dataset is listed, a submitted job has its row;
  * every blob row has its file blobs/sha256-<hex> (mode 0444) with the recorded size and sha256,
    every file under blobs/ has a row, every tag has files, every blob row is referenced;
  * no job is left queued/running once the daemon is idle (quantize jobs resume, others are
    failed "interrupted": docs/architecture.md), and no jobs/<id>/ scratch of an ended job;
  * partial files only under tmp/, and tmp/ holds only the Hub partials the downloads table names.

Prints one line per round and a final table; exits 1 on any violation (each one described).
Stdlib + numpy (the project's .venv). Run many rounds by hand:

    .venv/bin/python tests/reliability/crash_consistency.py --build build/release --rounds 200 --seed 7
"""
import argparse, hashlib, http.client, json, os, random, shutil, signal, socket, sqlite3, stat
import struct, subprocess, sys, tempfile, threading, time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
COMMIT_A = "a1" * 20
COMMIT_B = "b2" * 20
KILL_POINTS = ["import.after_stage", "import.after_blobs", "hub.after_download", "hub.after_blobs",
               "quantize.after_layer.0", "quantize.after_layer.1"]


# ---- tiny models (the same layout as tests/support/tiny_model.cpp) ----

def byte_to_unicode(b):
    printable = lambda c: (ord("!") <= c <= ord("~")) or (0xA1 <= c <= 0xAC) or (0xAE <= c <= 0xFF)
    if printable(b):
        return chr(b)
    return chr(256 + sum(1 for c in range(b) if not printable(c)))


def tiny_pieces(vocab):
    pieces = [byte_to_unicode(b) for b in range(256)] + ["<s>", "</s>", "he", "\u0120t", "\u0120the"]
    return pieces + [f"<filler{i}>" for i in range(len(pieces), vocab)]


def tokenizer_json(vocab):
    pieces = tiny_pieces(vocab)
    added = [{"id": i, "content": pieces[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i in (256, 257)]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
            "pre_tokenizer": bl, "post_processor": None, "decoder": dict(bl, add_prefix_space=True),
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "vocab": {p: i for i, p in enumerate(pieces)}, "merges": ["h e", "\u0120 t", "\u0120t he"]}}


def write_safetensors(path, tensors):
    header, blobs, off = {"__metadata__": {"format": "pt"}}, [], 0
    for name, arr in tensors:
        data = arr.tobytes()
        header[name] = {"dtype": "F16", "shape": list(arr.shape), "data_offsets": [off, off + len(data)]}
        blobs.append(data)
        off += len(data)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h)
        for b in blobs:
            f.write(b)


def write_tiny_hf(d, seed, hidden=32, inter=64, layers=2, heads=4, kv=2, head_dim=8, vocab=272):
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    f16 = lambda shape, s: rng.normal(0, s, shape).astype(np.float16)
    t = [("model.embed_tokens.weight", f16((vocab, hidden), 0.5)),
         ("model.norm.weight", (1 + f16((hidden,), 0.1)).astype(np.float16)),
         ("lm_head.weight", f16((vocab, hidden), 0.1))]
    q, k = heads * head_dim, kv * head_dim
    for i in range(layers):
        p = f"model.layers.{i}."
        t += [(p + "input_layernorm.weight", np.ones(hidden, np.float16)),
              (p + "post_attention_layernorm.weight", np.ones(hidden, np.float16))]
        for name, n_in, n_out in (("self_attn.q_proj", hidden, q), ("self_attn.k_proj", hidden, k),
                                  ("self_attn.v_proj", hidden, k), ("self_attn.o_proj", q, hidden),
                                  ("mlp.gate_proj", hidden, inter), ("mlp.up_proj", hidden, inter),
                                  ("mlp.down_proj", inter, hidden)):
            t.append((p + name + ".weight", f16((n_out, n_in), 0.2)))
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
              "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
              "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": head_dim,
              "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
              "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 256, "eos_token_id": 257,
              "torch_dtype": "float16"}
    (d / "config.json").write_text(json.dumps(config, indent=2))
    (d / "tokenizer.json").write_text(json.dumps(tokenizer_json(vocab)))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>"}))
    write_safetensors(d / "model.safetensors", t)


def write_tiny_gguf(path, seed, hidden=32, inter=64, layers=2, heads=4, kv=2, head_dim=8, vocab=272):
    rng = np.random.default_rng(seed)
    tensors = []
    add = lambda name, ne, s: tensors.append((name, ne, np.ones(int(np.prod(ne)), np.float32) if s == 0
                                              else rng.normal(0, s, int(np.prod(ne))).astype(np.float32)))
    add("token_embd.weight", [hidden, vocab], 0.02)
    add("output_norm.weight", [hidden], 0)
    add("output.weight", [hidden, vocab], 0.02)
    for i in range(layers):
        p = f"blk.{i}."
        for name, ne, s in (("attn_norm", [hidden], 0), ("attn_q", [hidden, heads * head_dim], 0.05),
                            ("attn_k", [hidden, kv * head_dim], 0.05), ("attn_v", [hidden, kv * head_dim], 0.05),
                            ("attn_output", [heads * head_dim, hidden], 0.05), ("ffn_norm", [hidden], 0),
                            ("ffn_gate", [hidden, inter], 0.05), ("ffn_up", [hidden, inter], 0.05),
                            ("ffn_down", [inter, hidden], 0.05)):
            add(p + name + ".weight", ne, s)
    b = bytearray()
    s_ = lambda x: struct.pack("<Q", len(x.encode())) + x.encode()
    kv_u32 = lambda k, v: s_(k) + struct.pack("<II", 4, v)
    kv_f32 = lambda k, v: s_(k) + struct.pack("<If", 6, v)
    kv_str = lambda k, v: s_(k) + struct.pack("<I", 8) + s_(v)
    pieces = tiny_pieces(vocab)
    types = [3 if i in (256, 257) else 1 for i in range(vocab)]
    kvs = [kv_str("general.architecture", "llama"), kv_str("general.name", "tiny"),
           kv_u32("llama.block_count", layers), kv_u32("llama.context_length", 128),
           kv_u32("llama.embedding_length", hidden), kv_u32("llama.feed_forward_length", inter),
           kv_u32("llama.attention.head_count", heads), kv_u32("llama.attention.head_count_kv", kv),
           kv_f32("llama.rope.freq_base", 10000.0), kv_f32("llama.attention.layer_norm_rms_epsilon", 1e-5),
           kv_str("tokenizer.ggml.model", "gpt2"), kv_str("tokenizer.ggml.pre", "default"),
           s_("tokenizer.ggml.tokens") + struct.pack("<IIQ", 9, 8, len(pieces)) + b"".join(s_(p) for p in pieces),
           s_("tokenizer.ggml.merges") + struct.pack("<IIQ", 9, 8, 3) + b"".join(
               s_(m) for m in ["h e", "\u0120 t", "\u0120t he"]),
           s_("tokenizer.ggml.token_type") + struct.pack("<IIQ", 9, 5, vocab) + struct.pack(f"<{vocab}i", *types),
           kv_u32("tokenizer.ggml.bos_token_id", 256), kv_u32("tokenizer.ggml.eos_token_id", 257)]
    b += struct.pack("<IIQQ", 0x46554747, 3, len(tensors), len(kvs)) + b"".join(kvs)
    off = 0
    for name, ne, data in tensors:
        b += s_(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        b += struct.pack("<IQ", 0, off)
        off = (off + data.nbytes + 31) // 32 * 32
    b += b"\0" * (-len(b) % 32)
    for _, _, data in tensors:
        b += data.tobytes()
        b += b"\0" * (-len(b) % 32)
    Path(path).write_bytes(bytes(b))


# ---- HTTP over the Unix socket ----

class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self.path))


def request(sock, method, target, body=None, timeout=30.0, on_event=None):
    """(status, body text or list of NDJSON events). Raises OSError/HTTPException on a broken link."""
    c = UnixConnection(sock, timeout)
    try:
        data = json.dumps(body).encode() if body is not None else None
        c.request(method, target, body=data, headers={"Content-Type": "application/json"} if data else {})
        r = c.getresponse()
        if on_event is None or "ndjson" not in (r.getheader("Content-Type") or ""):
            return r.status, r.read().decode(errors="replace")
        events = []
        while True:
            line = r.readline()
            if not line:
                break
            if line.strip():
                ev = json.loads(line)
                events.append(ev)
                on_event(ev)
        return r.status, events
    finally:
        c.close()


# ---- the daemon ----

class Daemon:
    def __init__(self, binary, work, hub_url):
        self.binary, self.work = binary, Path(work)
        self.state, self.sock, self.log = self.work / "state", self.work / "gptqd.sock", self.work / "gptqd.log"
        self.env = dict(os.environ, HF_ENDPOINT=hub_url, HF_HOME=str(self.work / "hf-home"),
                        GPTQD_CONFIG=str(self.work / "empty-config.json"))
        (self.work / "hf-home").mkdir(parents=True, exist_ok=True)
        (self.work / "empty-config.json").write_text("{}\n")
        self.proc = None

    def start(self, extra_env=None):
        env = dict(self.env, **(extra_env or {}))
        with open(self.log, "ab") as log:
            log.write(f"\n==== start {time.strftime('%H:%M:%S')} {extra_env or ''}\n".encode())
            log.flush()
            self.proc = subprocess.Popen([str(self.binary), "--foreground", "--state-dir", str(self.state),
                                          "--socket", str(self.sock), "--dbus", "none", "--device", "cpu",
                                          "--threads", "1"], env=env, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gptqd exited during start-up with {self.proc.returncode}; see {self.log}")
            try:
                if request(self.sock, "GET", "/api/health", timeout=2)[0] == 200:
                    return
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.02)
        raise RuntimeError(f"gptqd did not become healthy in 30 s; see {self.log}")

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc:
            self.proc.wait(10)

    def stop(self):
        """SIGTERM; the exit status (an ASan report or a crash on the way out is not 0)."""
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill9()
        return self.proc.returncode if self.proc else 0


# ---- one round's operations ----

class Ledger:
    """What the daemon acknowledged, in order, across rounds."""

    def __init__(self):
        self.lock = threading.Lock()
        self.models = {}      # "name:tag" -> True (present) / False (removed)
        self.datasets = set()
        self.jobs = {}        # job id -> "submitted" | "done" | "cancel-acked"
        self.busy = set()     # names an operation of the running round touches
        self.acks = 0

    def ack(self, kind, key, value=True):
        with self.lock:
            self.acks += 1
            if kind == "model":
                self.models[key] = value
            elif kind == "dataset":
                self.datasets.add(key)
            elif kind == "job":
                if self.jobs.get(key) != "done":
                    self.jobs[key] = value


class Round:
    def __init__(self, drv, n, rng):
        self.d, self.n, self.rng = drv, n, rng
        self.threads, self.errors = [], []
        self.counts = {}

    def spawn(self, kind, fn, *args):
        self.counts[kind] = self.counts.get(kind, 0) + 1
        def run():
            try:
                fn(*args)
            except (OSError, http.client.HTTPException, ValueError):
                pass  # the kill broke the connection: not acknowledged
        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)

    def pull(self, source, name):
        led = self.d.ledger
        def on_event(ev):
            if ev.get("event") == "done" and ev.get("status") == "success":
                led.ack("model", ev["model"])
        request(self.d.daemon.sock, "POST", "/api/pull", {"model": str(source), "name": name}, timeout=120,
                on_event=on_event)

    def rm(self, ref):
        st, _ = request(self.d.daemon.sock, "DELETE", "/api/delete", {"model": ref})
        if st == 200:
            self.d.ledger.ack("model", ref, False)

    def dataset(self, name):
        st, _ = request(self.d.daemon.sock, "POST", "/api/datasets", {"name": name, "files": [str(self.d.calib)]})
        if st == 200:
            self.d.ledger.ack("dataset", name)

    def quantize(self, source, tag):
        led = self.d.ledger
        def on_event(ev):
            if ev.get("event") == "queued":
                led.ack("job", ev["job"], "submitted")
            if ev.get("event") == "done":
                led.ack("model", ev["model"])
                led.ack("job", ev["job"], "done")
        body = {"model": source, "calib": str(self.d.calib), "samples": 4, "seqlen": 32, "group_size": 16,
                "eval_windows": 1, "eval_seqlen": 32, "tag": tag, "stream": True,
                "method": self.rng.choice(["gptq", "rtn"])}
        request(self.d.daemon.sock, "POST", "/api/quantize", body, timeout=120, on_event=on_event)

    def cancel(self, job):
        st, _ = request(self.d.daemon.sock, "DELETE", f"/api/jobs/{job}")
        if st == 200:
            self.d.ledger.ack("job", job, "cancel-acked")

    def generate(self, ref):
        request(self.d.daemon.sock, "POST", "/api/generate",
                {"model": ref, "prompt": "the the", "stream": False, "options": {"num_predict": 8}}, timeout=60)

    def start_ops(self):
        rng, d, led, r = self.rng, self.d, self.d.ledger, self.n
        present = sorted(k for k, v in led.models.items() if v and k.split(":")[0] not in led.busy)
        for i in range(rng.randint(2, 6)):
            if len(present) > 12 and rng.random() < 0.5:  # keeps the state directory small over many rounds
                victim = present.pop(rng.randrange(len(present)))
                led.busy.add(victim.split(":")[0])
                self.spawn("rm", self.rm, victim)
                continue
            op = rng.choice(["hub", "hub", "folder", "folder", "gguf", "quantize", "quantize", "rm", "rm",
                             "dataset", "cancel", "generate"])
            name = f"r{r}-{i}"
            if op == "hub":
                repo = rng.choice(["org/fresh", "org/fresh", "org/medium", "org/medium@v1", "org/small"])
                led.busy.add(name)
                self.spawn(op, self.pull, repo, name)
            elif op == "folder":
                led.busy.add(name)
                self.spawn(op, self.pull, rng.choice(d.folders), name)
            elif op == "gguf":
                led.busy.add(name)
                self.spawn(op, self.pull, rng.choice(d.ggufs), name)
            elif op == "quantize":
                sources = [k for k in present if k.endswith(":fp16")]
                if sources:
                    src = rng.choice(sources)
                    led.busy.add(src.split(":")[0])
                    self.spawn(op, self.quantize, src, f"q{r}-{i}")
            elif op == "rm" and present:
                victim = present.pop(rng.randrange(len(present)))
                led.busy.add(victim.split(":")[0])
                self.spawn(op, self.rm, victim)
            elif op == "dataset":
                self.spawn(op, self.dataset, f"ds{r}-{i}")
            elif op == "cancel":
                live = [j for j, s in led.jobs.items() if s == "submitted"]
                if live:
                    self.spawn(op, self.cancel, rng.choice(live))
            elif op == "generate" and present:
                self.spawn(op, self.generate, rng.choice(present))
            time.sleep(rng.uniform(0, 0.3))


class Driver:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.hash_rng = random.Random(args.seed + 1)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="gptqd-crash-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.ledger = Ledger()
        self.violations = []
        self.rows = []
        self.inflight_total = 0

    def setup(self):
        w = self.work
        hub = w / "hub"
        for sha, seed in ((COMMIT_A, 1), (COMMIT_B, 2)):
            write_tiny_hf(hub / "models/org/medium/commits" / sha, seed, hidden=256, inter=1024, layers=4,
                          head_dim=64)
        (hub / "models/org/medium/refs.json").write_text(json.dumps({"branches": {"main": COMMIT_A},
                                                                     "tags": {"v1": COMMIT_B}}))
        write_tiny_hf(hub / "models/org/small/commits" / COMMIT_A, 3)
        (hub / "models/org/small/refs.json").write_text(json.dumps({"branches": {"main": COMMIT_A}}))
        self.folders = []
        for s in range(4):
            write_tiny_hf(w / f"src/folder{s}", 10 + s)
            self.folders.append(w / f"src/folder{s}")
        self.ggufs = []
        for s in range(2):
            write_tiny_gguf(w / f"src/tiny{s}.gguf", 20 + s)
            self.ggufs.append(w / f"src/tiny{s}.gguf")
        words = ["the", "he", "then", "tree", "river", "stone", "light", "house", "runs", "slowly", "over"]
        wr = random.Random(5)
        self.calib = w / "src/calib.txt"
        self.calib.write_text(" ".join(wr.choice(words) for _ in range(6000)))
        port_file = w / "hub.port"
        self.hub_log = open(w / "hub.log", "ab")
        self.hub_proc = subprocess.Popen([sys.executable, str(REPO / "tests/support/hub_server.py"), "--root", str(hub),
                                          "--port-file", str(port_file)], stdout=self.hub_log, stderr=self.hub_log)
        deadline = time.time() + 20
        while not port_file.exists():
            if time.time() > deadline or self.hub_proc.poll() is not None:
                raise RuntimeError("the local Hub did not start")
            time.sleep(0.05)
        self.hub_root = hub
        self.daemon = Daemon(self.args.gptqd, w, f"http://127.0.0.1:{port_file.read_text()}")

    def new_hub_commit(self, n):
        """org/fresh@main: a commit with weights of its own each round (the store dedupes by content,
        so only bytes it lacks make a download to interrupt); every third round serves the previous
        round's commit again, so a pull resumes the partial its kill left."""
        repo = self.hub_root / "models/org/fresh"
        shutil.rmtree(repo / "commits", ignore_errors=True)
        k = n - 1 if n % 3 == 0 else n
        sha = hashlib.sha1(f"fresh{k}".encode()).hexdigest()
        write_tiny_hf(repo / "commits" / sha, 1000 + k, hidden=256, inter=1024, layers=2, head_dim=64)
        (repo / "refs.json").write_text(json.dumps({"branches": {"main": sha}}))

    def set_hub_faults(self):
        faults = []
        if self.rng.random() < 0.6:  # hold the big download part way so the kill lands mid-download
            faults.append({"path": r"model\.safetensors", "kind": "stall", "times": -1,
                           "bytes": self.rng.randint(1, 6) << 20, "seconds": self.rng.uniform(0.5, 4)})
        (self.hub_root / "faults.json").write_text(json.dumps(faults))

    def run_round(self, n):
        rng = self.rng
        self.new_hub_commit(n)
        self.set_hub_faults()
        fault = rng.choice(KILL_POINTS) if rng.random() < 0.25 else None
        t0 = time.time()
        self.daemon.start({"GPTQD_FAULT_POINT": fault} if fault else None)
        rnd = Round(self, n, rng)
        delay = rng.uniform(0.0, 1.0) if rng.random() < 0.7 else rng.uniform(1.0, 3.0)
        # The kill's clock starts with the first operation: it may land while others are still
        # being started (those then fail to connect and are not acknowledged).
        starter = threading.Thread(target=rnd.start_ops, daemon=True)
        starter.start()
        time.sleep(delay)
        died = self.daemon.proc.poll() is not None
        inflight = sum(1 for t in rnd.threads if t.is_alive())
        self.inflight_total += inflight
        self.daemon.kill9()
        starter.join(15)
        for t in rnd.threads:
            t.join(15)
        self.ledger.busy.clear()
        (self.hub_root / "faults.json").write_text("[]")
        # Restart, wait until healthy and idle, then check.
        self.daemon.start()
        before = len(self.violations)
        self.wait_idle(n)
        self.check(n)
        rc = self.daemon.stop()
        if rc != 0:
            self.violation(n, f"gptqd exited with {rc} after SIGTERM (see {self.daemon.log})")
        self.check_files_only(n, "after a clean stop")
        ops = ",".join(f"{k}={v}" for k, v in sorted(rnd.counts.items()))
        status = "ok" if len(self.violations) == before else f"{len(self.violations) - before} VIOLATION(S)"
        how = f"fault point {fault}" + (" (reached)" if died else " (not reached)") if fault else f"kill -9 after {delay:.2f}s"
        print(f"round {n:4d}: {how:42s} ops [{ops}] in flight at the kill {inflight} acks={self.ledger.acks} "
              f"{time.time() - t0:5.1f}s {status}",
              flush=True)
        self.rows.append((n, how, ops, status))

    def violation(self, n, what):
        self.violations.append(f"round {n}: {what}")
        print(f"  VIOLATION round {n}: {what}", flush=True)

    def wait_idle(self, n, timeout=90):
        deadline = time.time() + timeout
        jobs = []
        while time.time() < deadline:
            st, body = request(self.daemon.sock, "GET", "/api/jobs")
            jobs = json.loads(body).get("jobs", []) if st == 200 else []
            if not any(j.get("state") in ("queued", "running") for j in jobs):
                return
            time.sleep(0.2)
        self.violation(n, "jobs still live " + str(timeout) + " s after the restart: " +
                       json.dumps([j for j in jobs if j.get("state") in ("queued", "running")]))

    def db(self):
        return sqlite3.connect(f"file:{self.daemon.state / 'registry.db'}?mode=ro", uri=True, timeout=10)

    def check(self, n):
        led = self.ledger
        st, body = request(self.daemon.sock, "GET", "/api/tags")
        listed = {m["name"] for m in json.loads(body)["models"]} if st == 200 else set()
        if st != 200:
            self.violation(n, f"GET /api/tags answered {st}")
        for ref, present in led.models.items():
            if present and ref not in listed:
                self.violation(n, f"acknowledged model {ref} is not listed")
            if not present and ref in listed:
                self.violation(n, f"model {ref} is listed after an acknowledged rm")
        st, body = request(self.daemon.sock, "GET", "/api/datasets")
        names = {d["name"] for d in json.loads(body).get("datasets", [])} if st == 200 else set()
        for ds in led.datasets - names:
            self.violation(n, f"acknowledged dataset {ds} is not listed")
        with self.db() as db:
            rows = {r[0]: r[1:] for r in db.execute("SELECT id, state, error FROM jobs")}
        for job, what in led.jobs.items():
            if job not in rows:
                self.violation(n, f"acknowledged job {job} has no row")
            elif what == "done" and rows[job][0] != "done":
                self.violation(n, f"job {job} acknowledged done is {rows[job][0]}")
        self.check_files_only(n, "while serving")

    def check_files_only(self, n, when):
        state = self.daemon.state
        with self.db() as db:
            ic = db.execute("PRAGMA integrity_check").fetchall()
            if ic != [("ok",)]:
                self.violation(n, f"integrity_check {when}: {ic}")
            fk = db.execute("PRAGMA foreign_key_check").fetchall()
            if fk:
                self.violation(n, f"foreign_key_check {when}: {fk}")
            blobs = dict(db.execute("SELECT digest, size_bytes FROM blobs"))
            referenced = {r[0] for r in db.execute("SELECT digest FROM files UNION SELECT digest FROM dataset_files")}
            tags_without_files = db.execute("SELECT t.id FROM tags t WHERE NOT EXISTS "
                                            "(SELECT 1 FROM files f WHERE f.tag_id = t.id)").fetchall()
            live = db.execute("SELECT id, kind, state FROM jobs WHERE state IN ('queued', 'running')").fetchall()
            downloads = {r[0] for r in db.execute("SELECT key FROM downloads")}
        if tags_without_files:
            self.violation(n, f"tags without files {when}: {tags_without_files}")
        if live:
            self.violation(n, f"jobs left live {when} with the daemon idle: {live}")
        for d in referenced - blobs.keys():
            self.violation(n, f"file row points at {d} which has no blob row {when}")
        for d in blobs.keys() - referenced:
            self.violation(n, f"blob row {d} that no model or dataset references {when}")
        on_disk = {p.name for p in (state / "blobs").iterdir()} if (state / "blobs").exists() else set()
        for digest, size in blobs.items():
            fname = digest.replace(":", "-")
            p = state / "blobs" / fname
            if fname not in on_disk:
                self.violation(n, f"blob row {digest} has no file {when}")
                continue
            st_ = p.stat()
            if st_.st_size != size:
                self.violation(n, f"blob {fname} has {st_.st_size} bytes, the row says {size} {when}")
            elif st_.st_mode & 0o222:
                self.violation(n, f"blob {fname} is writable (mode {oct(st_.st_mode & 0o777)}) {when}")
            elif self.hash_rng.random() < self.args.hash_fraction:
                h = hashlib.sha256(p.read_bytes()).hexdigest()
                if "sha256:" + h != digest:
                    self.violation(n, f"blob {fname} has sha256 {h} {when}")
        for fname in on_disk - {d.replace(":", "-") for d in blobs}:
            self.violation(n, f"file blobs/{fname} without a blob row {when}")
        for p in state.rglob("*"):
            rel = p.relative_to(state)
            if p.name.endswith(".partial") and rel.parts[0] != "tmp":
                self.violation(n, f"partial outside tmp/: {rel} {when}")
        tmp = state / "tmp"
        if tmp.exists():
            for p in tmp.rglob("*"):
                rel = p.relative_to(tmp)
                if p.is_dir() and rel.parts == ("hub",):
                    continue
                if len(rel.parts) == 2 and rel.parts[0] == "hub" and p.name.endswith(".partial") \
                        and p.name[:-len(".partial")] in downloads:
                    continue
                self.violation(n, f"tmp/{rel} left behind {when} (downloads table: {sorted(downloads)})")
        jobs_dir = state / "jobs"
        if jobs_dir.exists():
            for p in jobs_dir.iterdir():
                self.violation(n, f"scratch jobs/{p.name} of an ended job {when}")

    def run(self):
        self.setup()
        try:
            for n in range(1, self.args.rounds + 1):
                try:
                    self.run_round(n)
                except Exception as e:  # a start-up failure is a violation too
                    self.violation(n, f"{type(e).__name__}: {e}")
                    self.daemon.kill9()
        finally:
            self.daemon.kill9()
            self.hub_proc.terminate()
            self.hub_proc.wait(10)
        led = self.ledger
        print("\n== crash consistency summary")
        print(f"rounds          {self.args.rounds}")
        print(f"seed            {self.args.seed}")
        print(f"acknowledged    {led.acks} operations; {self.inflight_total} were in flight at a kill")
        print(f"models present  {sum(1 for v in led.models.values() if v)}, removed {sum(1 for v in led.models.values() if not v)}")
        print(f"datasets        {len(led.datasets)}")
        print(f"jobs            {len(led.jobs)} ({sum(1 for v in led.jobs.values() if v == 'done')} acknowledged done)")
        print(f"violations      {len(self.violations)}")
        for v in self.violations:
            print("  " + v)
        print(f"work dir        {self.work}" + ("" if self.args.keep or self.violations else " (removed)"))
        if not self.args.keep and not self.violations:
            shutil.rmtree(self.work, ignore_errors=True)
        return 1 if self.violations else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", help="build directory holding daemon/gptqd ($GPTQD_BUILD_DIR)",
                    default=os.environ.get("GPTQD_BUILD_DIR", str(REPO / "build/release")))
    ap.add_argument("--gptqd", help="the gptqd binary (default: BUILD/daemon/gptqd)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", help="work directory (default: a fresh temp dir, removed when all passed)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--hash-fraction", type=float, default=0.3, help="share of blobs whose sha256 is checked")
    ap.add_argument("--check", metavar="STATE_DIR", help="only run the file and registry invariants on STATE_DIR "
                    "(the daemon idle or stopped; used by tests/e2e/fault_test.cpp) and exit")
    args = ap.parse_args()
    if args.check:
        args.hash_fraction, args.work = 1.0, None
        drv = Driver.__new__(Driver)
        drv.args, drv.violations, drv.hash_rng = args, [], random.Random(0)
        drv.daemon = argparse.Namespace(state=Path(args.check))
        drv.check_files_only(0, "")
        print("invariants: " + ("ok" if not drv.violations else f"{len(drv.violations)} violation(s)"))
        sys.exit(1 if drv.violations else 0)
    args.gptqd = Path(args.gptqd or Path(args.build) / "daemon" / "gptqd").resolve()
    if not args.gptqd.exists():
        sys.exit(f"crash_consistency: no gptqd at {args.gptqd}")
    sys.exit(Driver(args).run())


if __name__ == "__main__":
    main()
