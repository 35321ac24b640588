#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Load test of gptqd over its Unix socket (reliability.md E01, B03, B04, D07).

Starts its own daemon from a build directory with a temporary state directory, pulls a small
model, then at once runs:

- N well-behaved streaming clients (/api/generate with stream:true; every 4th one
  /v1/chat/completions with SSE): each must complete, or get a fast (< 1 s) 503 with Retry-After
  once `--parallel` are running and `--max-queue` wait;
- slowloris connections (one header byte every few seconds): the header timeout must close them;
- slow readers that never read: generation streams (their slots must be freed) and blob
  downloads (the send timeout must cut them);
- a /api/health probe every 100 ms: it must answer quickly (p50/p99 reported).

The whole run must end within --run-timeout-s (nothing deadlocks). Prints a table with peak RSS
(VmHWM) and open fds of the daemon before and after; exit status 0 when every check passed, 1
otherwise, 77 when the model is missing (ctest skips).

    bench/load_test.py --build build/release                 # 64 clients (the full run)
    bench/load_test.py --build build/release --clients 16 --parallel 2 --max-queue 4   # CI size

Standard library only.
"""
import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SKIP = 77


def pct(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    k = min(len(v) - 1, max(0, int(round(p / 100.0 * (len(v) - 1)))))
    return v[k]


def proc_status(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key] = value.strip()
    return out


def n_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class Reply:
    def __init__(self):
        self.status = 0
        self.headers = {}
        self.body = b""


async def read_head(reader):
    """Status line and headers; (status, {lower-name: value})."""
    line = await reader.readline()
    if not line:
        raise ConnectionError("closed before a status line")
    parts = line.decode("latin-1").split(" ", 2)
    status = int(parts[1])
    headers = {}
    while True:
        h = await reader.readline()
        if h in (b"\r\n", b"\n", b""):
            break
        k, _, v = h.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers


async def body_chunks(reader, headers):
    """Yields the body's pieces as they arrive (chunked or Content-Length)."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                raise ConnectionError("closed inside a chunked body")
            size = int(size_line.split(b";")[0].strip(), 16)
            if size == 0:
                await reader.readline()
                return
            data = await reader.readexactly(size + 2)
            yield data[:-2]
    else:
        n = int(headers.get("content-length", "0"))
        if n:
            yield await reader.readexactly(n)


def request_bytes(method, path, body=None, close=True):
    head = f"{method} {path} HTTP/1.1\r\nHost: gptqd\r\n"
    if close:
        head += "Connection: close\r\n"
    data = b""
    if body is not None:
        data = json.dumps(body).encode()
        head += f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
    return (head + "\r\n").encode() + data


async def call(sock, method, path, body=None, timeout=60):
    """One request on a fresh connection; the whole reply."""
    async def go():
        reader, writer = await asyncio.open_unix_connection(sock)
        try:
            writer.write(request_bytes(method, path, body))
            await writer.drain()
            r = Reply()
            r.status, r.headers = await read_head(reader)
            async for piece in body_chunks(reader, r.headers):
                r.body += piece
            return r
        finally:
            writer.close()
    return await asyncio.wait_for(go(), timeout)


# ---- the clients ----------------------------------------------------------------------------------

async def well_behaved(sock, i, args, results):
    openai = i % 4 == 3
    prompt = f"Write one sentence about the number {i}."
    if openai:
        path = "/v1/chat/completions"
        body = {"model": args.model_name, "messages": [{"role": "user", "content": prompt}], "stream": True,
                "max_tokens": args.num_predict, "temperature": 0.7, "seed": i}
    else:
        path = "/api/generate"
        body = {"model": args.model_name, "prompt": prompt, "stream": True,
                "options": {"num_predict": args.num_predict, "seed": i}}
    res = {"i": i, "route": path, "status": 0, "outcome": "error", "error": ""}
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.open_unix_connection(sock)
        try:
            writer.write(request_bytes("POST", path, body))
            await writer.drain()
            status, headers = await read_head(reader)
            res["status"] = status
            res["head_s"] = time.monotonic() - t0
            if status == 503:
                async for _ in body_chunks(reader, headers):
                    pass
                fast = res["head_s"] < 1.0
                if headers.get("retry-after") and fast:
                    res["outcome"] = "503"
                else:
                    res["error"] = f"503 without Retry-After or slow ({res['head_s']:.2f} s)"
                return
            if status != 200:
                data = b"".join([p async for p in body_chunks(reader, headers)])
                res["error"] = f"status {status}: {data[:200]!r}"
                return
            text = b""
            first = None
            n_pieces = 0
            async for piece in body_chunks(reader, headers):
                if first is None:
                    first = time.monotonic() - t0
                text += piece
                n_pieces += 1
            res["ttfb_s"] = first
            done = (b"data: [DONE]" in text) if openai else (b'"done":true' in text)
            if done and b'"error"' not in text:
                res["outcome"] = "completed"
            else:
                res["error"] = f"stream ended without done: {text[-200:]!r}"
        finally:
            writer.close()
    except Exception as e:  # noqa: BLE001 - every failure is a result here
        res["error"] = f"{type(e).__name__}: {e}"
    finally:
        res["total_s"] = time.monotonic() - t0
        results.append(res)


async def slowloris(sock, i, args, results):
    """Sends a request line, then one header byte every --slowloris-interval-s; when is it closed?"""
    res = {"i": i, "closed_after_s": None}
    t0 = time.monotonic()
    reader, writer = await asyncio.open_unix_connection(sock)
    try:
        writer.write(b"GET /api/health HTTP/1.1\r\n")
        await writer.drain()
        while time.monotonic() - t0 < args.run_timeout_s:
            try:
                data = await asyncio.wait_for(reader.read(1024), args.slowloris_interval_s)
                if not data:
                    res["closed_after_s"] = time.monotonic() - t0
                    break
            except asyncio.TimeoutError:
                pass
            try:
                writer.write(b"X")
                await writer.drain()
            except (ConnectionError, OSError):
                res["closed_after_s"] = time.monotonic() - t0
                break
    finally:
        writer.close()
        results.append(res)


def tiny_buffer_socket(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # On AF_UNIX the sender's buffer is what fills; a tiny receive buffer is the TCP habit, kept.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(path)
    s.setblocking(False)
    return s


async def wait_closed_by_peer(s, limit_s):
    """Never reads the data; polls only for the hang-up (POLLHUP/POLLRDHUP via a zero-byte peek)."""
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    import select
    p = select.poll()
    p.register(s.fileno(), select.POLLRDHUP | select.POLLHUP | select.POLLERR)
    while time.monotonic() - t0 < limit_s:
        ev = await loop.run_in_executor(None, p.poll, 200)
        if ev:
            return time.monotonic() - t0
    return None


async def slow_reader(sock, i, args, results, blob_digest):
    """A stream that is never read: a generation (slot freed?) or a blob (cut by the send timeout?)."""
    kind = "blob" if blob_digest and i % 2 == 1 else "generate"
    res = {"i": i, "kind": kind, "closed_after_s": None}
    s = tiny_buffer_socket(sock)
    loop = asyncio.get_running_loop()
    try:
        if kind == "blob":
            req = request_bytes("GET", f"/api/blobs/{blob_digest}", close=False)
        else:
            req = request_bytes("POST", "/api/generate", {
                "model": args.model_name, "prompt": f"Tell a long story number {i}.", "stream": True,
                "options": {"num_predict": args.num_predict}}, close=False)
        await loop.sock_sendall(s, req)
        res["closed_after_s"] = await wait_closed_by_peer(s, args.run_timeout_s)
    finally:
        s.close()
        results.append(res)


async def health_probe(sock, stop, latencies, failures):
    while not stop.is_set():
        t0 = time.monotonic()
        try:
            r = await call(sock, "GET", "/api/health", timeout=10)
            if r.status == 200:
                latencies.append(time.monotonic() - t0)
            else:
                failures.append(f"status {r.status}")
        except Exception as e:  # noqa: BLE001
            failures.append(f"{type(e).__name__}: {e}")
        await asyncio.sleep(0.1)


async def ps_idle(sock, limit_s):
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        r = await call(sock, "GET", "/api/ps")
        models = json.loads(r.body).get("models", [])
        if all(m.get("active", 0) == 0 and m.get("queued", 0) == 0 for m in models):
            return time.monotonic() - t0
        await asyncio.sleep(0.2)
    return None


# ---- the run ---------------------------------------------------------------------------------------

async def run(args, sock, pid, blob_digest):
    results, loris, readers, health, health_fail = [], [], [], [], []
    stop = asyncio.Event()
    probe = asyncio.create_task(health_probe(sock, stop, health, health_fail))
    t0 = time.monotonic()
    tasks = [asyncio.create_task(slow_reader(sock, i, args, readers, blob_digest)) for i in range(args.slow_readers)]
    tasks += [asyncio.create_task(slowloris(sock, i, args, loris)) for i in range(args.slowloris)]
    await asyncio.sleep(0.2)  # the slow ones first: they hold connections while the load arrives
    clients = [asyncio.create_task(well_behaved(sock, i, args, results)) for i in range(args.clients)]
    await asyncio.gather(*clients)
    load_s = time.monotonic() - t0
    await asyncio.gather(*tasks)
    idle_after_s = await ps_idle(sock, 120)
    stop.set()
    await probe
    return results, loris, readers, health, health_fail, load_s, idle_after_s


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build", required=True, help="build directory with daemon/gptqd and ctl/gptqctl")
    ap.add_argument("--model", default=os.environ.get("GPTQD_TEST_MODEL") or
                    str(Path.home() / ".cache/gptqd-test/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--model-name", default="smollm2-135m-instruct")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=4)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--num-predict", type=int, default=32)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--slowloris", type=int, default=8)
    ap.add_argument("--slowloris-interval-s", type=float, default=2.0)
    ap.add_argument("--slow-readers", type=int, default=4)
    ap.add_argument("--header-timeout-ms", type=int, default=5000)
    ap.add_argument("--write-timeout-ms", type=int, default=3000)
    ap.add_argument("--idle-timeout-ms", type=int, default=10000)
    ap.add_argument("--run-timeout-s", type=float, default=600)
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()

    build = Path(args.build).resolve()
    gptqd, gptqctl = build / "daemon" / "gptqd", build / "ctl" / "gptqctl"
    for b in (gptqd, gptqctl):
        if not b.exists():
            sys.exit(f"load_test: {b} is missing; build it first")
    if not Path(args.model).exists():
        print(f"load_test: no model at {args.model} (scripts/fetch-test-model.sh); skipping")
        return SKIP

    work = Path(tempfile.mkdtemp(prefix="gptqd-load-"))
    sock = str(work / "gptqd.sock")
    log_path = work / "gptqd.log"
    cmd = [str(gptqd), "--foreground", "--state-dir", str(work / "state"), "--socket", sock, "--dbus", "none",
           "--parallel", str(args.parallel), "--max-queue", str(args.max_queue), "--threads", str(args.threads),
           "--header-timeout-ms", str(args.header_timeout_ms), "--write-timeout-ms", str(args.write_timeout_ms),
           "--idle-timeout-ms", str(args.idle_timeout_ms), "--max-connections", "1024",
           "--max-connections-per-uid", "1024"]
    log = open(log_path, "wb")
    daemon = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    failures = []
    try:
        for _ in range(600):
            if daemon.poll() is not None:
                sys.exit(f"load_test: gptqd exited with {daemon.returncode}:\n{log_path.read_text()}")
            try:
                if asyncio.run(call(sock, "GET", "/api/health", timeout=2)).status == 200:
                    break
            except (OSError, asyncio.TimeoutError, ConnectionError):
                time.sleep(0.05)
        pull = subprocess.run([str(gptqctl), "--socket", sock, "pull", args.model], capture_output=True, text=True)
        if pull.returncode != 0:
            sys.exit(f"load_test: pull failed: {pull.stdout}{pull.stderr}")
        show = asyncio.run(call(sock, "POST", "/api/show", {"model": args.model_name}))
        blob_digest = json.loads(show.body)["files"][-1]["digest"]
        warm = asyncio.run(call(sock, "POST", "/api/generate", {"model": args.model_name, "prompt": "", "stream": False},
                                timeout=300))
        if warm.status != 200:
            sys.exit(f"load_test: loading the model failed: {warm.status} {warm.body!r}")
        time.sleep(0.5)
        fds_before = n_fds(daemon.pid)
        rss_before = proc_status(daemon.pid)["VmRSS"]

        t0 = time.monotonic()
        try:
            out = asyncio.run(asyncio.wait_for(run(args, sock, daemon.pid, blob_digest), args.run_timeout_s))
        except asyncio.TimeoutError:
            failures.append(f"the run did not end within {args.run_timeout_s} s (deadlock?)")
            out = None
        duration = time.monotonic() - t0
        time.sleep(0.5)
        alive = daemon.poll() is None
        if not alive:
            failures.append(f"the daemon died (status {daemon.returncode})")
        st = proc_status(daemon.pid) if alive else {}
        fds_after = n_fds(daemon.pid) if alive else -1
        if out is None:
            report(args, failures, None, duration, fds_before, fds_after, st, rss_before)
            return 1
        results, loris, readers, health, health_fail, load_s, idle_after_s = out

        completed = [r for r in results if r["outcome"] == "completed"]
        refused = [r for r in results if r["outcome"] == "503"]
        errors = [r for r in results if r["outcome"] == "error"]
        for r in errors[:5]:
            failures.append(f"client {r['i']} ({r['route']}): {r['error']}")
        if len(errors) > 5:
            failures.append(f"... and {len(errors) - 5} more client errors")
        if args.clients >= args.parallel + args.max_queue + args.slow_readers and not refused:
            failures.append("no client got a 503 although the clients outnumber parallel + max_queue")
        max_served = args.parallel + args.max_queue
        if len(completed) > max_served + args.parallel * 4:
            failures.append(f"{len(completed)} completed; the limits allow about {max_served} at once")
        header_bound = args.header_timeout_ms / 1000 + args.slowloris_interval_s + 2
        for r in loris:
            if r["closed_after_s"] is None or r["closed_after_s"] > header_bound:
                failures.append(f"slowloris {r['i']} was not closed within {header_bound:.1f} s: {r['closed_after_s']}")
        for r in readers:
            if r["closed_after_s"] is None:
                failures.append(f"slow reader {r['i']} ({r['kind']}) was never closed")
        if idle_after_s is None:
            failures.append("the generation slots were not freed within 120 s after the load")
        if health_fail:
            failures.append(f"{len(health_fail)} health probes failed: {health_fail[:3]}")
        if health and pct(health, 99) > 1.0:
            failures.append(f"health p99 {pct(health, 99) * 1000:.0f} ms > 1 s")
        if fds_after > fds_before + 2:
            failures.append(f"fds grew from {fds_before} to {fds_after}")
        summary = report(args, failures, (results, completed, refused, errors, loris, readers, health, load_s,
                                          idle_after_s), duration, fds_before, fds_after, st, rss_before)
        if args.json:
            Path(args.json).write_text(json.dumps(summary, indent=1))
        return 1 if failures else 0
    finally:
        if daemon.poll() is None:
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        log.close()
        if os.environ.get("GPTQD_KEEP_LOAD_DIR"):
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(args, failures, out, duration, fds_before, fds_after, st, rss_before):
    rows = [("clients", f"{args.clients} streaming ({args.clients - args.clients // 4} /api/generate, "
                        f"{args.clients // 4} /v1/chat/completions), num_predict {args.num_predict}"),
            ("limits", f"parallel {args.parallel}, max_queue {args.max_queue}, header_timeout {args.header_timeout_ms} ms, "
                       f"write_timeout {args.write_timeout_ms} ms, idle_timeout {args.idle_timeout_ms} ms")]
    summary = {"clients": args.clients, "parallel": args.parallel, "max_queue": args.max_queue,
               "duration_s": round(duration, 2), "fds_before": fds_before, "fds_after": fds_after,
               "vm_hwm": st.get("VmHWM"), "vm_rss_before": rss_before, "vm_rss_after": st.get("VmRSS"),
               "threads": st.get("Threads"), "failures": failures}
    if out:
        results, completed, refused, errors, loris, readers, health, load_s, idle_after_s = out
        total = [r["total_s"] for r in completed]
        ttfb = [r["ttfb_s"] for r in completed if r.get("ttfb_s") is not None]
        rej = [r["head_s"] for r in refused]
        loris_t = [r["closed_after_s"] for r in loris if r["closed_after_s"] is not None]
        gen_readers = [r["closed_after_s"] for r in readers if r["kind"] == "generate" and r["closed_after_s"]]
        blob_readers = [r["closed_after_s"] for r in readers if r["kind"] == "blob" and r["closed_after_s"]]
        ms = lambda v: f"{v * 1000:.0f} ms"  # noqa: E731
        rows += [
            ("completed / 503 / errors", f"{len(completed)} / {len(refused)} / {len(errors)}"),
            ("completed: first piece p50 / p99", f"{ms(pct(ttfb, 50))} / {ms(pct(ttfb, 99))}" if ttfb else "-"),
            ("completed: total p50 / p99", f"{ms(pct(total, 50))} / {ms(pct(total, 99))}" if total else "-"),
            ("503: time to answer p50 / max", f"{ms(pct(rej, 50))} / {ms(max(rej))}" if rej else "-"),
            ("health probes: n, p50 / p99 / max", f"{len(health)}, {ms(pct(health, 50))} / {ms(pct(health, 99))} / "
                                                 f"{ms(max(health))}" if health else "-"),
            ("slowloris closed after (min / max)", f"{min(loris_t):.1f} / {max(loris_t):.1f} s ({len(loris_t)}/{len(loris)})"
                                                   if loris_t else f"0/{len(loris)}"),
            ("slow generation readers closed after", ", ".join(f"{v:.1f} s" for v in gen_readers) or "-"),
            ("slow blob readers closed after", ", ".join(f"{v:.1f} s" for v in blob_readers) or "-"),
            ("load phase (all clients answered)", f"{load_s:.1f} s"),
            ("slots idle after the run", f"{idle_after_s:.1f} s" if idle_after_s is not None else "no"),
        ]
        summary.update({"completed": len(completed), "rejected_503": len(refused), "errors": len(errors),
                        "ttfb_p50_ms": pct(ttfb, 50) * 1000 if ttfb else None,
                        "ttfb_p99_ms": pct(ttfb, 99) * 1000 if ttfb else None,
                        "total_p50_ms": pct(total, 50) * 1000 if total else None,
                        "total_p99_ms": pct(total, 99) * 1000 if total else None,
                        "reject_max_ms": max(rej) * 1000 if rej else None,
                        "health_n": len(health),
                        "health_p50_ms": pct(health, 50) * 1000 if health else None,
                        "health_p99_ms": pct(health, 99) * 1000 if health else None,
                        "slowloris_closed_s": loris_t, "slow_generation_closed_s": gen_readers,
                        "slow_blob_closed_s": blob_readers, "load_s": load_s})
    rows += [
        ("daemon peak RSS (VmHWM)", f"{st.get('VmHWM', '?')} (RSS {rss_before} before, {st.get('VmRSS', '?')} after)"),
        ("daemon fds before / after", f"{fds_before} / {fds_after}"),
        ("duration", f"{duration:.1f} s"),
        ("result", "PASS" if not failures else "FAIL"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for f in failures:
        print(f"FAIL: {f}")
    sys.stdout.flush()
    return summary


if __name__ == "__main__":
    sys.exit(main())
