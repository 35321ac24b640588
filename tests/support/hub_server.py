#!/usr/bin/env python3
"""Local fake of the Hugging Face Hub for testing gptqd's C++ Hub client (stdlib, Python 3.11).

    python3 tests/support/hub_server.py --root DIR --port-file FILE [--verbose]

Binds 127.0.0.1:0, writes the port to FILE (via FILE.tmp + rename) once listening, serves
HTTP/1.1 keep-alive (threaded; every response has Content-Length) until SIGTERM/SIGINT.

Layout: <root>/<models|datasets>/<org>/<name>/
    refs.json              {"branches": {"main": "<sha>"}, "tags": {"v1.0": "<sha>"}}
    commits/<sha>/<files>  each commit's files (nested paths allowed)
    repo.json (optional)   {"gated": true, "tokens": ["hf_good"], "extra_siblings": [...]}
<root>/faults.json (optional) is re-read on every request. A revision is a branch, a tag or
a 40-hex sha under commits/; its path segment is unquoted ("refs%2Fpr%2F1"). LFS = name ends
in .safetensors/.bin/.pt/.pth/.gguf/.parquet, or size > 10 MiB.

GET /api/{models|datasets}/{org}/{name}[/revision/{rev}]  (query ignored, blobs always given)
    200 {"id", "sha", "private": false, "gated": false|"auto", "siblings": [{"rfilename",
    "size", "blobId", "lfs"?: {"sha256", "size", "pointerSize"}}]} sorted by rfilename, plus
    extra_siblings. blobId = git blob sha1 of the content (of the LFS pointer for LFS files).
    404 X-Error-Code RepoNotFound|RevisionNotFound; gated: 401/403 X-Error-Code GatedRepo.
HEAD|GET /{org}/{name}/resolve/{rev}/{path}, /datasets/{org}/{name}/resolve/{rev}/{path}
    X-Repo-Commit once the revision resolves. Regular: 200, ETag "<blobId>", Range honoured.
    LFS: 302, Location http://127.0.0.1:<port>/cdn/<sha256>/<basename>?expires=N,
    X-Linked-Etag "<sha256>", X-Linked-Size, ETag "<sha256>". Missing: 404 EntryNotFound.
    A ".." segment anywhere in the unquoted request path: 400.
HEAD|GET /cdn/<sha256>/<name>  LFS object by sha256, ETag "<sha256>". Range "bytes=A-",
    "bytes=A-B", "bytes=-N": 206 + Content-Range; unsatisfiable: 416, "bytes */total".
GET /__stats  {"bytes_served": {path: n}, "requests": [{"method", "path", "range", "status",
    "authorization"}]} (paths without query; body bytes counted as sent). POST /__reset
    clears them. /__* requests are neither recorded nor faulted.

faults.json: [{"path": regex (re.search, path without query), "kind": K, "times": n
(default 1, -1 forever), ...}]; uses left are kept per list index, reset when the file's
content changes; every matching fault with uses left applies:
    status {"status": 500}              any request: that status, small JSON body
and on GET responses with a file body (/cdn, non-LFS resolve; a 416 uses them up too):
    drop_after {"bytes": N}             full Content-Length, N bytes, shutdown + close
    stall {"seconds": S, "bytes": N=0}  N bytes, sleep S (less if the client leaves), rest
    wrong_byte {"offset": K}            file byte K xor 0xFF if inside the served range
    short {"bytes": N}                  Content-Length N, N bytes (206: Content-Range too)
    no_range {}                         Range ignored: 200 with the whole file (a server
                                        without range support)
"""
import argparse, hashlib, json, os, re, select, signal, socket, socketserver, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote, unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".parquet")
LFS_MIN_SIZE = 10 * 1024 * 1024
CHUNK = 64 * 1024
BODY_FAULTS = ("drop_after", "stall", "wrong_byte", "short", "no_range")


class HubError(Exception):
    def __init__(self, status, message, code=None, headers=None):
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = {**(headers or {}), **({"X-Error-Code": code} if code else {})}


def read_file(path, default, parse=json.loads):
    try:
        with open(path, encoding="utf-8") as f:
            return parse(f.read())
    except FileNotFoundError:
        return default


class State:
    def __init__(self, root, verbose):
        self.root, self.verbose, self.port = root, verbose, 0
        self.lock = threading.Lock()
        self.hash_cache = {}  # abspath -> ((size, mtime_ns), info)
        self.cdn = {}         # sha256 -> abspath of an LFS file
        self.faults_text, self.fault_left = None, {}
        self.bytes_served, self.requests = {}, []
        self.rebuild_cdn()

    def file_info(self, path):
        st = os.stat(path)
        key = (st.st_size, st.st_mtime_ns)
        with self.lock:
            hit = self.hash_cache.get(path)
        if hit and hit[0] == key:
            return hit[1]
        size, h256, h1 = st.st_size, hashlib.sha256(), hashlib.sha1(b"blob %d\0" % st.st_size)
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h256.update(chunk)
                h1.update(chunk)
        info = {"size": size, "sha256": h256.hexdigest(), "blob_id": h1.hexdigest(),
                "lfs": path.endswith(LFS_SUFFIXES) or size > LFS_MIN_SIZE}
        if info["lfs"]:  # the Hub's blobId of an LFS file is the git oid of its pointer file
            ptr = (f"version https://git-lfs.github.com/spec/v1\n"
                   f"oid sha256:{info['sha256']}\nsize {size}\n")
            info["pointer_size"] = len(ptr)
            info["blob_id"] = hashlib.sha1(b"blob %d\0%s" % (len(ptr), ptr.encode())).hexdigest()
        with self.lock:
            self.hash_cache[path] = (key, info)
        return info

    def rebuild_cdn(self):
        index = {}
        for kind in ("models", "datasets"):
            for top, _, files in os.walk(os.path.join(self.root, kind)):
                for path in (os.path.join(top, fn) for fn in files):
                    if f"{os.sep}commits{os.sep}" in path and self.file_info(path)["lfs"]:
                        index[self.file_info(path)["sha256"]] = path
        with self.lock:
            self.cdn = index

    def take_faults(self, path, kinds, first=False):
        """Matching faults with uses left (each use counted); re-reads faults.json every time."""
        text = read_file(os.path.join(self.root, "faults.json"), "", parse=str)
        try:
            faults = json.loads(text) if text.strip() else []
        except ValueError:
            faults = []  # half-written file: no faults this time
        out = []
        with self.lock:
            if text != self.faults_text:
                self.faults_text, self.fault_left = text, {}
            for i, fault in enumerate(faults):
                left = self.fault_left.get(i, int(fault.get("times", 1)))
                hit = fault.get("kind") in kinds and re.search(fault.get("path", ""), path)
                if hit and left != 0:
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

    def send_head(self, status, headers):
        self.status_sent = status
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()

    def do_GET(self):
        st = self.server.state
        self.path_only = urlsplit(self.path).path
        self.status_sent = None
        self.control = self.path_only.startswith("/__")
        self.rfile.read(max(0, int(self.headers.get("Content-Length") or 0)))
        try:
            if self.control:
                return self.control_endpoint()
            for fault in st.take_faults(self.path_only, ("status",), first=True):
                raise HubError(int(fault.get("status", 500)), "Injected fault")
            if ".." in unquote(self.path_only).split("/"):
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
                with st.lock:
                    st.requests.append({"method": self.command, "path": self.path_only,
                                        "range": self.headers.get("Range"),
                                        "status": self.status_sent,
                                        "authorization": "Authorization" in self.headers})

    do_HEAD = do_POST = do_GET

    def control_endpoint(self):
        st = self.server.state
        with st.lock:
            if self.path_only == "/__stats" and self.command == "GET":
                obj = {"bytes_served": dict(st.bytes_served), "requests": list(st.requests)}
            elif self.path_only == "/__reset" and self.command == "POST":
                st.bytes_served, st.requests, obj = {}, [], {"ok": True}
            else:
                obj = None
        if obj is None:
            raise HubError(404, "Not Found")
        self.send_json(200, obj)

    def route(self):
        segs = self.path_only.split("/")[1:]
        if segs[0] == "api" and len(segs) >= 4 and segs[1] in ("models", "datasets"):
            rest = segs[4:]
            if rest and (rest[0] != "revision" or len(rest) < 2):
                raise HubError(404, "Not Found")
            rev = unquote("/".join(rest[1:])) if rest else "main"
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

    def open_repo(self, kind, org, name, rev):
        """Checks existence, gating and revision; returns (commit dir, sha, repo.json)."""
        repo_dir = os.path.join(self.server.state.root, kind, org, name)
        refs = read_file(os.path.join(repo_dir, "refs.json"), None) if org and name else None
        if refs is None:
            raise HubError(404, f"Repository Not Found for url: "
                           f"http://127.0.0.1:{self.server.state.port}{self.path}", "RepoNotFound")
        meta = read_file(os.path.join(repo_dir, "repo.json"), {})
        if meta.get("gated"):
            what = f"Access to {kind[:-1]} {org}/{name} is restricted"
            auth = self.headers.get("Authorization")
            if not auth:
                raise HubError(401, what + ". You must have access to it and be authenticated "
                               "to access it. Please log in.", "GatedRepo")
            if not auth.startswith("Bearer ") or auth[7:].strip() not in meta.get("tokens", []):
                raise HubError(403, what + " and you are not in the authorized list.", "GatedRepo")
        sha = refs.get("branches", {}).get(rev) or refs.get("tags", {}).get(rev)
        if sha is None and re.fullmatch(r"[0-9a-f]{40}", rev):
            sha = rev
        cdir = os.path.join(repo_dir, "commits", sha or "-")
        if sha is None or not os.path.isdir(cdir):
            raise HubError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return os.path.realpath(cdir), sha, meta

    def api_info(self, kind, org, name, rev):
        cdir, sha, meta = self.open_repo(kind, org, name, rev)
        siblings = []
        for top, _, files in os.walk(cdir):
            for path in (os.path.join(top, fn) for fn in files):
                info = self.server.state.file_info(path)
                sib = {"rfilename": os.path.relpath(path, cdir).replace(os.sep, "/"),
                       "size": info["size"], "blobId": info["blob_id"]}
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
        cdir, sha, _ = self.open_repo(kind, org, name, rev)
        hdrs = {"X-Repo-Commit": sha}
        fpath = os.path.realpath(os.path.join(cdir, rel))
        if not rel or not fpath.startswith(cdir + os.sep) or not os.path.isfile(fpath):
            raise HubError(404, "Entry not found", "EntryNotFound", hdrs)
        info = self.server.state.file_info(fpath)
        if not info["lfs"]:
            return self.serve_file(fpath, info, {**hdrs, "ETag": f'"{info["blob_id"]}"'})
        loc = (f"http://127.0.0.1:{self.server.state.port}/cdn/{info['sha256']}/"
               f"{quote(rel.rsplit('/', 1)[-1])}?expires={int(time.time()) + 3600}")
        self.send_head(302, {**hdrs, "Location": loc, "X-Linked-Etag": f'"{info["sha256"]}"',
                             "X-Linked-Size": str(info["size"]), "ETag": f'"{info["sha256"]}"',
                             "Content-Length": "0"})

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
        faults = {f["kind"]: f for f in (self.server.state.take_faults(
            self.path_only, BODY_FAULTS) if self.command == "GET" else [])}
        m = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", self.headers.get("Range") or "")
        if m and (m[1] or m[2]) and "no_range" not in faults:
            if m[1]:
                start = int(m[1])
                end = min(int(m[2]), total - 1) if m[2] else total - 1
                bad = start >= total or (m[2] and int(m[2]) < start)
            else:  # suffix range: the last N bytes
                start, bad = max(0, total - int(m[2])), int(m[2]) == 0 or total == 0
            if bad:
                raise HubError(416, "Requested Range Not Satisfiable",
                               headers={**headers, "Content-Range": f"bytes */{total}"})
            status = 206
        length = min(end - start + 1, int(faults.get("short", {}).get("bytes", total)))
        headers.update({"Content-Type": "application/octet-stream", "Content-Length": str(length)})
        if "no_range" not in faults:
            headers["Accept-Ranges"] = "bytes"
        if status == 206:
            headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{total}"
        self.send_head(status, headers)
        if self.command == "HEAD":
            return
        limit = min(length, int(faults.get("drop_after", {}).get("bytes", length)))
        stall = faults.get("stall")
        stall_at = min(int(stall.get("bytes", 0)), limit) if stall else None
        flip = int(faults["wrong_byte"]["offset"]) if "wrong_byte" in faults else None
        sent = 0
        with open(fpath, "rb") as f:
            f.seek(start)
            while True:
                if stall_at is not None and sent >= stall_at:
                    self.stall(float(stall.get("seconds", 1)))
                    stall_at = None
                n = min(CHUNK, limit - sent, (stall_at - sent) if stall_at is not None else CHUNK)
                chunk = bytearray(f.read(n)) if n > 0 else b""
                if not chunk:
                    break
                if flip is not None and start + sent <= flip < start + sent + len(chunk):
                    chunk[flip - start - sent] ^= 0xFF
                self.write_body(chunk)
                sent += len(chunk)
        if limit < length:  # drop_after: abrupt close, nothing more goes out
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
                time.sleep(min(left, 0.05))  # pipelined data, not EOF: keep waiting

    def send_json(self, status, obj, headers=None):
        body = json.dumps(obj).encode()
        self.send_head(status, {"Content-Type": "application/json",
                                "Content-Length": str(len(body)), **(headers or {})})
        if self.command != "HEAD":
            self.write_body(body)

    def write_body(self, data):
        """Sends data, counting in /__stats only what the kernel accepted."""
        view, off = memoryview(data), 0
        while off < len(view):
            n = self.connection.send(view[off:off + CHUNK])
            off += n
            if not self.control:
                with self.server.state.lock:
                    served = self.server.state.bytes_served
                    served[self.path_only] = served.get(self.path_only, 0) + n


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def server_bind(self):  # skip HTTPServer's getfqdn() reverse lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request, client_address):  # e.g. resets between requests
        if self.state.verbose:
            super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.state = State(os.path.abspath(args.root), args.verbose)
    server.state.port = server.server_address[1]
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.state.port))
    os.replace(args.port_file + ".tmp", args.port_file)

    def stop(signum, frame):
        raise KeyboardInterrupt
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
