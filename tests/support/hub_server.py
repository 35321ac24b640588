#!/usr/bin/env python3
"""Local fake of the Hugging Face Hub, used to test gptqd's C++ Hub client.

Standard library only (Python 3.11).

    python3 tests/support/hub_server.py --root DIR --port-file FILE [--verbose]

Binds 127.0.0.1 on port 0, writes the port number to FILE (FILE.tmp, then rename) once
listening, and serves HTTP/1.1 with keep-alive (threaded) until SIGTERM/SIGINT.

Layout under --root:
    <models|datasets>/<org>/<name>/
        refs.json               {"branches": {"main": "<sha>"}, "tags": {"v1.0": "<sha>"}}
        commits/<sha>/<files>   the files of each commit (nested paths allowed)
        repo.json  (optional)   {"gated": true, "tokens": ["hf_good"],
                                 "extra_siblings": [{"rfilename": "../../evil.txt", "size": 3}]}
    faults.json    (optional)   fault injection list, re-read on every request

A revision is a branch, a tag, or a 40-hex sha present under commits/; its path segment is
URL-unquoted ("refs%2Fpr%2F1" names "refs/pr/1"). LFS files: name ends in .safetensors .bin
.pt .pth .gguf .parquet, or size > 10 MiB.

Endpoints:
  GET /api/{models|datasets}/{org}/{name}[/revision/{rev}]    (query ignored; blobs always on)
      200 {"id", "sha", "private": false, "gated": false|"auto", "siblings": [{"rfilename",
          "size", "blobId", ["lfs": {"sha256", "size", "pointerSize"}]}]}  sorted by rfilename.
          blobId = git blob sha1 of the content, or of the LFS pointer file for LFS files.
      404 X-Error-Code RepoNotFound | RevisionNotFound; gated: 401/403 X-Error-Code GatedRepo.
  HEAD|GET /{org}/{name}/resolve/{rev}/{path}, /datasets/{org}/{name}/resolve/{rev}/{path}
      X-Repo-Commit always (when the revision resolves). Regular: 200, ETag "<blobId>",
      Accept-Ranges, Range honoured. LFS: 302, Location http://127.0.0.1:<port>/cdn/<sha256>/
      <basename>?expires=..., X-Linked-Etag, X-Linked-Size, ETag "<sha256>", Content-Length 0.
      404 X-Error-Code EntryNotFound. Any ".." path segment (after unquoting) anywhere: 400.
  HEAD|GET /cdn/<sha256>/<name>   LFS object by sha256 (any repo), ETag "<sha256>". A single
      Range "bytes=A-", "bytes=A-B" or "bytes=-N" gives 206 + Content-Range; 416 when
      unsatisfiable (Content-Range: bytes */total). Malformed Range headers are ignored (200).
  GET /__stats   {"bytes_served": {path: n}, "requests": [{"method", "path", "range",
                 "status", "authorization"}]}  (paths without query; body bytes counted as
                 they are sent). POST /__reset clears it. /__* requests are not recorded.

Faults (faults.json): [{"path": regex (re.search on the request path without query),
"kind": ..., "times": n (default 1, -1 = forever), ...}]. Remaining counts are kept in memory
per list index and reset whenever the file's content changes. Every matching fault with uses
left applies (and uses one):
  status     {"status": 500}   any method and path except /__*: that status + small JSON body
Body faults, only on GET responses that carry a file body (/cdn and non-LFS resolve):
  drop_after {"bytes": N}      full Content-Length, N body bytes, then shutdown + close
  stall      {"seconds": S, "bytes": N=0}  N body bytes, then sleep S (ends early if the
                               client disconnects), then the rest
  wrong_byte {"offset": K}     byte at absolute file offset K xor 0xFF, if within the range
  short      {"bytes": N}      Content-Length N and N bytes (206: Content-Range shrinks too)
"""
import argparse
import hashlib
import json
import os
import re
import select
import signal
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".parquet")
LFS_MIN_SIZE = 10 * 1024 * 1024
SHA_RE = re.compile(r"[0-9a-f]{40}")
CHUNK = 64 * 1024
BODY_FAULTS = ("drop_after", "stall", "wrong_byte", "short")


class HubError(Exception):
    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = dict(headers or {})
        if code:
            self.headers["X-Error-Code"] = code


def read_json(path, default):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


class State:
    def __init__(self, root, verbose):
        self.root, self.verbose, self.port = root, verbose, 0
        self.lock = threading.Lock()
        self.hash_cache = {}   # abspath -> ((size, mtime_ns), info)
        self.cdn = {}          # sha256 -> abspath of an LFS file
        self.faults_text, self.fault_left = None, {}
        self.reset()
        self.rebuild_cdn()

    def reset(self):
        with self.lock:
            self.bytes_served, self.requests = {}, []

    def count(self, path, n):
        with self.lock:
            self.bytes_served[path] = self.bytes_served.get(path, 0) + n

    def record(self, entry):
        with self.lock:
            self.requests.append(entry)

    def file_info(self, path):
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns)
        with self.lock:
            hit = self.hash_cache.get(path)
        if hit and hit[0] == key:
            return hit[1]
        size = st.st_size
        h256, h1 = hashlib.sha256(), hashlib.sha1(b"blob %d\0" % size)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h256.update(chunk)
                h1.update(chunk)
        info = {"size": size, "sha256": h256.hexdigest(), "blob_id": h1.hexdigest(),
                "lfs": path.endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE}
        if info["lfs"]:  # the Hub's blobId of an LFS file is the git oid of its pointer file
            pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{info['sha256']}"
                       f"\nsize {size}\n").encode()
            info["pointer_size"] = len(pointer)
            info["blob_id"] = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest()
        with self.lock:
            self.hash_cache[path] = (key, info)
        return info

    def rebuild_cdn(self):
        index = {}
        for kind in ("models", "datasets"):
            for top, _, files in os.walk(os.path.join(self.root, kind)):
                if os.sep + "commits" + os.sep not in top + os.sep:
                    continue
                for fn in files:
                    info = self.file_info(os.path.join(top, fn))
                    if info["lfs"]:
                        index[info["sha256"]] = os.path.join(top, fn)
        with self.lock:
            self.cdn = index

    def take_faults(self, path, kinds, first=False):
        try:
            with open(os.path.join(self.root, "faults.json"), encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        try:
            faults = json.loads(text) if text.strip() else []
        except ValueError:
            faults = []  # half-written file: no faults this time
        out = []
        with self.lock:
            if text != self.faults_text:
                self.faults_text, self.fault_left = text, {}
            for i, fault in enumerate(faults):
                if fault.get("kind") not in kinds or not re.search(fault.get("path", ""), path):
                    continue
                left = self.fault_left.get(i, int(fault.get("times", 1)))
                if left == 0:
                    continue
                self.fault_left[i] = left - 1 if left > 0 else left
                out.append(fault)
                if first:
                    break
        return out


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeHub/1.0"

    def log_message(self, fmt, *args):
        if self.server.state.verbose:
            super().log_message(fmt, *args)

    def send_response(self, code, message=None):
        self.status_sent = code
        super().send_response(code, message)

    def do_GET(self):
        self.dispatch()

    do_HEAD = do_POST = do_GET

    def dispatch(self):
        st = self.server.state
        self.path_only = urlsplit(self.path).path
        self.status_sent = None
        self.control = self.path_only.startswith("/__")
        if int(self.headers.get("Content-Length") or 0) > 0:
            self.rfile.read(int(self.headers["Content-Length"]))
        try:
            if self.control:
                self.control_endpoint()
            else:
                for fault in st.take_faults(self.path_only, ("status",), first=True):
                    raise HubError(int(fault.get("status", 500)), "Injected fault")
                if any(s == ".." for s in unquote(self.path_only).split("/")):
                    raise HubError(400, "Invalid path")
                if self.command not in ("GET", "HEAD"):
                    raise HubError(405, "Method not allowed")
                self.route()
        except HubError as e:
            self.send_json(e.status, {"error": e.message}, e.headers)
        except OSError:  # client went away, or drop_after closed the socket
            self.close_connection = True
        finally:
            if not self.control:
                st.record({"method": self.command, "path": self.path_only,
                           "range": self.headers.get("Range"), "status": self.status_sent,
                           "authorization": "Authorization" in self.headers})

    def control_endpoint(self):
        st = self.server.state
        if self.path_only == "/__stats" and self.command == "GET":
            with st.lock:
                obj = {"bytes_served": dict(st.bytes_served), "requests": list(st.requests)}
            self.send_json(200, obj)
        elif self.path_only == "/__reset" and self.command == "POST":
            st.reset()
            self.send_json(200, {"ok": True})
        else:
            raise HubError(404, "Not Found")

    def route(self):
        segs = self.path_only.split("/")[1:]
        if segs[0] == "api" and len(segs) >= 4 and segs[1] in ("models", "datasets"):
            rest = segs[4:]
            if not rest:
                rev = "main"
            elif rest[0] == "revision" and len(rest) >= 2:
                rev = unquote("/".join(rest[1:]))
            else:
                raise HubError(404, "Not Found")
            return self.api_info(segs[1], unquote(segs[2]), unquote(segs[3]), rev)
        if segs[0] == "cdn" and len(segs) >= 2:
            return self.cdn(segs[1])
        kind = "models"
        if segs[0] == "datasets":
            kind, segs = "datasets", segs[1:]
        if len(segs) >= 5 and segs[2] == "resolve":
            return self.resolve(kind, unquote(segs[0]), unquote(segs[1]), unquote(segs[3]),
                                "/".join(unquote(s) for s in segs[4:]))
        raise HubError(404, "Not Found")

    def open_repo(self, kind, org, name):
        st = self.server.state
        repo_dir = os.path.join(st.root, kind, org, name)
        if not org or not name or not os.path.isfile(os.path.join(repo_dir, "refs.json")):
            raise HubError(404, f"Repository Not Found for url: http://127.0.0.1:{st.port}"
                           f"{self.path}.", "RepoNotFound")
        meta = read_json(os.path.join(repo_dir, "repo.json"), {})
        if meta.get("gated"):
            what = f"Access to {kind[:-1]} {org}/{name} is restricted"
            auth = self.headers.get("Authorization")
            if not auth:
                raise HubError(401, what + ". You must have access to it and be authenticated "
                               "to access it. Please log in.", "GatedRepo")
            if not auth.startswith("Bearer ") or auth[7:].strip() not in meta.get("tokens", []):
                raise HubError(403, what + " and you are not in the authorized list.", "GatedRepo")
        return repo_dir, meta

    def resolve_rev(self, repo_dir, rev):
        refs = read_json(os.path.join(repo_dir, "refs.json"), {})
        sha = refs.get("branches", {}).get(rev) or refs.get("tags", {}).get(rev)
        if sha is None and SHA_RE.fullmatch(rev):
            sha = rev
        if sha is None or not os.path.isdir(os.path.join(repo_dir, "commits", sha)):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return sha

    def api_info(self, kind, org, name, rev):
        st = self.server.state
        repo_dir, meta = self.open_repo(kind, org, name)
        sha = self.resolve_rev(repo_dir, rev)
        cdir = os.path.join(repo_dir, "commits", sha)
        siblings = []
        for top, _, files in os.walk(cdir):
            for fn in files:
                info = st.file_info(os.path.join(top, fn))
                rel = os.path.relpath(os.path.join(top, fn), cdir).replace(os.sep, "/")
                sib = {"rfilename": rel, "size": info["size"], "blobId": info["blob_id"]}
                if info["lfs"]:
                    sib["lfs"] = {"sha256": info["sha256"], "size": info["size"],
                                  "pointerSize": info["pointer_size"]}
                siblings.append(sib)
        siblings += meta.get("extra_siblings", [])
        siblings.sort(key=lambda s: s["rfilename"])
        self.send_json(200, {"id": f"{org}/{name}", "sha": sha, "private": False,
                             "gated": "auto" if meta.get("gated") else False,
                             "siblings": siblings})

    def resolve(self, kind, org, name, rev, rel):
        st = self.server.state
        repo_dir, _ = self.open_repo(kind, org, name)
        sha = self.resolve_rev(repo_dir, rev)
        hdrs = {"X-Repo-Commit": sha}
        cdir = os.path.realpath(os.path.join(repo_dir, "commits", sha))
        fpath = os.path.realpath(os.path.join(cdir, rel))
        if not rel or not fpath.startswith(cdir + os.sep) or not os.path.isfile(fpath):
            raise HubError(404, "Entry not found", "EntryNotFound", hdrs)
        info = st.file_info(fpath)
        if not info["lfs"]:
            return self.serve_file(fpath, info, {**hdrs, "ETag": f'"{info["blob_id"]}"'})
        base = quote(rel.rsplit("/", 1)[-1])
        hdrs.update({"Location": f"http://127.0.0.1:{st.port}/cdn/{info['sha256']}/{base}"
                                 f"?expires={int(time.time()) + 3600}",
                     "X-Linked-Etag": f'"{info["sha256"]}"', "X-Linked-Size": str(info["size"]),
                     "ETag": f'"{info["sha256"]}"', "Content-Length": "0"})
        self.send_response(302)
        for k, v in hdrs.items():
            self.send_header(k, v)
        self.end_headers()

    def cdn(self, sha256):
        st = self.server.state
        for attempt in range(2):
            with st.lock:
                path = st.cdn.get(sha256)
            if path and os.path.isfile(path) and st.file_info(path)["sha256"] == sha256:
                return self.serve_file(path, st.file_info(path), {"ETag": f'"{sha256}"'})
            if attempt == 0:
                st.rebuild_cdn()
        raise HubError(404, "Not Found")

    def serve_file(self, fpath, info, headers):
        total, start, status = info["size"], 0, 200
        end = total - 1
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", self.headers.get("Range") or "")
        if m and (m[1] or m[2]):
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), total - 1) if m[2] else total - 1
                bad = start >= total or (m[2] and int(m[2]) < start)
            else:
                start, bad = max(0, total - int(m[2])), int(m[2]) == 0 or total == 0
            if bad:
                raise HubError(416, "Requested Range Not Satisfiable",
                               headers={**headers, "Content-Range": f"bytes */{total}"})
            status = 206
        faults = self.server.state.take_faults(self.path_only, BODY_FAULTS) \
            if self.command == "GET" else []
        length = end - start + 1
        drop = stall = flip = None
        for f in faults:
            if f["kind"] == "short":
                length = min(length, int(f["bytes"]))
            elif f["kind"] == "drop_after":
                drop = int(f["bytes"])
            elif f["kind"] == "stall":
                stall = f
            elif f["kind"] == "wrong_byte":
                flip = int(f["offset"])
        headers.update({"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream",
                        "Content-Length": str(length)})
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{total}"
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = length if drop is None else min(length, drop)
        stall_at = min(int(stall.get("bytes", 0)), limit) if stall else None
        sent = 0
        with open(fpath, "rb") as f:
            f.seek(start)
            while True:
                if stall_at is not None and sent >= stall_at:
                    self.stall(float(stall.get("seconds", 1)))
                    stall_at = None
                if sent >= limit:
                    break
                n = min(CHUNK, limit - sent, (stall_at - sent) if stall_at is not None else CHUNK)
                chunk = bytearray(f.read(n))
                if not chunk:
                    break
                if flip is not None and start + sent <= flip < start + sent + len(chunk):
                    chunk[flip - start - sent] ^= 0xFF
                self.write_body(chunk)
                sent += len(chunk)
        if drop is not None and drop < length:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.connection.close()

    def stall(self, seconds):
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], min(left, 0.1))
            if readable:
                if self.connection.recv(1, socket.MSG_PEEK) == b"":
                    raise ConnectionResetError("client went away during stall")
                time.sleep(min(left, 0.05))  # pipelined data: keep waiting

    def send_json(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.write_body(body)

    def write_body(self, data):
        view, off = memoryview(data), 0
        while off < len(view):
            n = self.connection.send(view[off:off + CHUNK])
            off += n
            if not self.control:
                self.server.state.count(self.path_only, n)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def server_bind(self):  # skip HTTPServer's getfqdn() reverse lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.state = State(os.path.abspath(args.root), args.verbose)
    server.state.port = server.server_address[1]
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.state.port))
    os.replace(tmp, args.port_file)

    def stop(signum, frame):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
