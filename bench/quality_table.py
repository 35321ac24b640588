# SPDX-License-Identifier: Apache-2.0
"""GPTQ vs RTN on SmolLM2-135M-Instruct through a real gptqd: the table in docs/quantization.md.

The source is the test model's GGUF (Q4_1) dequantized to an fp16 Hugging Face folder
(tests/reference/gguf_to_hf.py); gptqd pulls it, registers wikitext-2 validation (calibration)
and test (evaluation) as datasets, then runs one quantize job per configuration with the quality
report on the first --eval-windows windows of 2048 tokens of wiki.test.raw (the GPTQ paper's
protocol, a fixed number of windows). Every job also reports the source's perplexity on the same
windows, so each row carries its own baseline. Prints a Markdown table; --json keeps every report.

Run from the repository root after building (scripts/test.sh or cmake --build):
    .venv/bin/python bench/quality_table.py --build build/release [--samples 32 --seqlen 512]
        [--eval-windows 16] [--configs gptq-4-128,rtn-4-128,...] [--threads N] [--json out.json]

Configuration names: METHOD-BITS-GROUP[-act], e.g. gptq-4-128-act, rtn-3-128, gptq-4--1.
"""
import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import httpx

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_CONFIGS = ("rtn-4-128,gptq-4-128,gptq-4-128-act,rtn-4--1,gptq-4--1,gptq-4--1-act,"
                   "rtn-3-128,gptq-3-128,gptq-3-128-act")


def parse_config(name):
    act = name.endswith("-act")
    if act:
        name = name[: -len("-act")]
    method, bits, group = name.split("-", 2)
    return {"method": method, "bits": int(bits), "group_size": int(group), "desc_act": act}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build/release")
    ap.add_argument("--model", default=os.path.expanduser("~/.cache/gptqd-test/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seqlen", type=int, default=512)
    ap.add_argument("--eval-windows", type=int, default=16)
    ap.add_argument("--configs", default=DEFAULT_CONFIGS)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    args = ap.parse_args()

    data = ROOT.parent / "shared" / "data" / "wikitext-2-raw"
    work = pathlib.Path(tempfile.mkdtemp(prefix="gptqd-quality-"))
    hf = work / "smollm2-f16"
    subprocess.run([sys.executable, str(ROOT / "tests/reference/gguf_to_hf.py"), args.model, str(hf),
                    "--dtype", "float16"], check=True)
    sock = work / "gptqd.sock"
    cmd = [str(ROOT / args.build / "daemon/gptqd"), "--foreground", "--state-dir", str(work / "state"),
           "--socket", str(sock)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    daemon = subprocess.Popen(cmd, stderr=open(work / "gptqd.log", "w"))
    rows, reports = [], []
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.1)
        client = httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://gptqd", timeout=None)

        def post(route, body):
            r = client.post(route, json=body)
            if r.status_code != 200:
                raise SystemExit(f"{route}: {r.status_code} {r.text}")
            return r

        post("/api/pull", {"model": str(hf), "name": "smollm2:f16", "stream": False})
        post("/api/datasets", {"name": "wiki-valid", "files": [str(data / "wiki.valid.raw")]})
        post("/api/datasets", {"name": "wiki-test", "files": [str(data / "wiki.test.raw")]})
        for name in args.configs.split(","):
            cfg = parse_config(name)
            tag = f"{cfg['method']}-{cfg['bits']}b-g{cfg['group_size']}" + ("-act" if cfg["desc_act"] else "")
            req = dict(cfg, model="smollm2:f16", calib="wiki-valid", eval="wiki-test", samples=args.samples,
                       seqlen=args.seqlen, eval_windows=args.eval_windows, eval_seqlen=2048, tag=tag,
                       max_ppl_ratio=1000, stream=True)
            t0 = time.time()
            done = None
            with client.stream("POST", "/api/quantize", json=req) as r:
                for line in r.iter_lines():
                    ev = json.loads(line)
                    if "event" not in ev:
                        raise SystemExit(f"{name}: HTTP {r.status_code}: {line}")
                    if ev["event"] in ("done", "error", "cancelled"):
                        done = ev
            wall = time.time() - t0
            if done is None or done["event"] != "done":
                raise SystemExit(f"{name}: {done}")
            q = done["quality"]
            job = client.get(f"/api/jobs/{done['job']}").json()
            layer_s = [layer["seconds"] for layer in job["layers"]]
            reports.append({"config": name, "quality": q, "wall_s": wall, "layer_seconds": layer_s})
            rows.append((name, q["source_ppl"], q["result_ppl"], q["ratio"], q["mean_weight_error"], sum(layer_s), wall,
                         q["smoke_output"]))
            print(f"{name}: source {q['source_ppl']:.4f} result {q['result_ppl']:.4f} "
                  f"(x{q['ratio']:.4f}) layers {sum(layer_s):.1f}s job {wall:.1f}s", file=sys.stderr, flush=True)
    finally:
        daemon.terminate()
        daemon.wait()
    print(f"| config | source ppl | result ppl | ratio | mean rel. weight error | layers s | job s | smoke output |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for name, s, t, ratio, err, ls, wall, smoke in rows:
        smoke = smoke.replace("\n", " ").replace("|", "\\|")[:60]
        print(f"| {name} | {s:.4f} | {t:.4f} | {ratio:.4f} | {err:.4f} | {ls:.1f} | {wall:.1f} | {smoke} |")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(reports, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
