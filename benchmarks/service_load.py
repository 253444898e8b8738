"""Load test of `edgeinfer serve`: N concurrent clients x M requests mixing classify, zero-shot,
embed and search, a share of them corrupt or oversized uploads, against a real server process
(uvicorn) on 127.0.0.1.

    python benchmarks/service_load.py --classifier ARTIFACT --clip ARTIFACT \
        [--clients 50] [--requests 2000] [--bad 0.05] [--photos ../shared/data/photos] \
        [--batch-wait-ms 0] [--out benchmarks/results/service_load]

Checks: 0 responses 5xx, 0 dropped connections, p50/p99 latency per route, RSS growth of the
server between the first and the last thousand requests (< 10%). Before the load, the server
scans a small library (the photos folder) so that search has something to rank.
Writes results/service_load.md and .json with the command, the machine and the load average.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

from _serve import start_serve

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["a dog", "a cat on a sofa", "people at the beach", "a red car", "a bird in a tree",
           "food on a plate", "a mountain lake", "a receipt", "a screenshot", "flowers"]


def start_server(args, lib: Path, root: Path) -> tuple[subprocess.Popen, str]:
    arts = [a for a in (args.classifier, args.clip) if a]
    return start_serve([*arts, "--port", "0",
                        *(["--max-batch", str(args.max_batch)] if args.max_batch else []),
                        "--library", str(lib), "--library-root", str(root), "--provider",
                        args.provider, "--batch-wait-ms", str(args.batch_wait_ms), "--max-queue",
                        str(args.max_queue), "--log-level", "warning"], echo=True)


def make_payloads(photos: Path, max_mb: float):
    """Good uploads (the real photos as JPEG bytes), corrupt ones, and one oversized body."""
    good = [(p.name, p.read_bytes()) for p in sorted(photos.iterdir())
            if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    corrupt = [("truncated.jpg", good[0][1][: len(good[0][1]) // 3]),
               ("garbage.jpg", os.urandom(5000)), ("empty.jpg", b""),
               ("text.jpg", b"this is not an image")]
    oversized = ("huge.jpg", good[1][1] + os.urandom(int((max_mb + 1) * 2**20)))
    return good, corrupt, oversized


async def run_load(args, url: str, token_headers: dict, good, corrupt, oversized, pid: int):
    import httpx
    import psutil

    proc = psutil.Process(pid)
    rng = random.Random(0)
    plan = []
    for i in range(args.requests):
        r = rng.random()
        acc = 0.0
        for route, w in args.mix:
            acc += w
            if r <= acc:
                break
        bad = rng.random() < args.bad
        plan.append((i, route, bad))
    lat = defaultdict(list)
    status = Counter()
    per_route_status = defaultdict(Counter)
    dropped = []
    rss = {}
    done = 0
    next_i = 0
    lock = asyncio.Lock()

    async def one(client, i, route, bad):
        nonlocal done
        files = None
        data = {}
        if route == "search" and not bad:
            method, path = "GET", f"/v1/search?q={rng.choice(QUERIES)}&k=20"
        else:
            if route == "search":
                route = "similar"  # the bad share of searches: a corrupt image to /v1/search/similar
                method, path = "POST", "/v1/search/similar"
            else:
                method, path = "POST", f"/v1/{route}"
            if bad:
                item = oversized if rng.random() < 0.3 else rng.choice(corrupt)
            else:
                item = rng.choice(good)
            files = [("image", (item[0], item[1], "image/jpeg"))]
            if route == "zero-shot":
                data = {"labels": "a dog, a cat, a car, food, a person, a landscape"} if rng.random() < 0.5 \
                    else {"label_set": "cifar10"}
        t = time.perf_counter()
        try:
            r = await client.request(method, path, files=files, data=data or None, headers=token_headers)
            code = r.status_code
        except Exception as e:  # noqa: BLE001 -- a dropped connection is what we count
            dropped.append(f"{route}: {type(e).__name__}: {e}")
            code = None
        dt = time.perf_counter() - t
        key = route + (" (bad)" if bad else "")
        if code is not None:
            lat[key].append(dt)
            status[code] += 1
            per_route_status[key][code] += 1
        done += 1
        if done % 100 == 0:
            rss[done] = proc.memory_info().rss / 2**20

    async def worker(client):
        nonlocal next_i
        while True:
            async with lock:
                if next_i >= len(plan):
                    return
                item = plan[next_i]
                next_i += 1
            await one(client, *item)

    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.clients)))
    wall = time.perf_counter() - t0
    return lat, status, per_route_status, dropped, rss, wall


def pct(xs, q):
    import numpy as np

    return float(np.percentile(np.asarray(xs) * 1000, q)) if xs else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--clip", default=None, help="CLIP artifact (needed unless --mix has only classify)")
    ap.add_argument("--mix", default="classify=0.35,zero-shot=0.2,embed=0.2,search=0.25",
                    help="route=share,... (routes: classify, zero-shot, embed, search)")
    ap.add_argument("--max-batch", type=int, default=None, help="the server's --max-batch (default: its default)")
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--bad", type=float, default=0.05)
    ap.add_argument("--batch-wait-ms", type=float, default=0.0)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--max-upload-mb", type=float, default=25.0)
    ap.add_argument("--provider", default="auto")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "service_load"))
    args = ap.parse_args(argv)
    args.mix = [(k.strip(), float(v)) for k, v in (x.split("=") for x in args.mix.split(","))]
    tot = sum(w for _, w in args.mix)
    args.mix = [(k, w / tot) for k, w in args.mix]
    if any(k != "classify" for k, _ in args.mix) and not args.clip:
        ap.error("--clip is needed for zero-shot / embed / search")

    import httpx
    import psutil

    work = Path(tempfile.mkdtemp(prefix="edgeinfer-load-"))
    root = work / "root"
    root.mkdir()
    photos = Path(args.photos)
    for p in sorted(photos.iterdir())[:100]:
        (root / p.name).write_bytes(p.read_bytes())
    load = {"start": tuple(round(x, 2) for x in os.getloadavg())}
    proc, url = start_server(args, work / "library.db", root)
    try:
        with httpx.Client(base_url=url, timeout=600) as c:
            for _ in range(100):
                try:
                    health0 = c.get("/health").json()
                    break
                except httpx.ConnectError:
                    time.sleep(0.2)
            t = time.perf_counter()
            scan_s = None
            if any(k == "search" for k, _ in args.mix):  # search needs a library
                jid = c.post("/v1/library/scan", json={"path": str(root)}).json()["job"]
                while (j := c.get(f"/v1/library/jobs/{jid}").json())["state"] not in ("done", "failed"):
                    time.sleep(0.5)
                scan_s = time.perf_counter() - t
                print(f"library scan of {j['done']} photos: {scan_s:.1f} s", flush=True)
        good, corrupt, oversized = make_payloads(photos, args.max_upload_mb)
        rss_start = psutil.Process(proc.pid).memory_info().rss / 2**20
        load["before_load"] = tuple(round(x, 2) for x in os.getloadavg())
        lat, status, per_route, dropped, rss, wall = asyncio.run(
            run_load(args, url, {}, good, corrupt, oversized, proc.pid))
        load["after_load"] = tuple(round(x, 2) for x in os.getloadavg())
        with httpx.Client(base_url=url, timeout=60) as c:
            health = c.get("/health").json()
            metrics = c.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            exit_code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            exit_code = "killed"
    n5xx = sum(v for k, v in status.items() if k >= 500)
    half = args.requests // 2
    first = [v for k, v in rss.items() if k <= half]
    last = [v for k, v in rss.items() if k > half]
    growth = (max(last) - max(first)) / max(first) if first and last else float("nan")
    batches = re.findall(r'edgeinfer_batch_size_(sum|count)\{model="([^"]+)"\} (\S+)', metrics)
    bstats = defaultdict(dict)
    for kind, model, v in batches:
        bstats[model][kind] = float(v)
    routes = {k: {"n": len(v), "p50_ms": round(pct(v, 50), 1), "p99_ms": round(pct(v, 99), 1),
                  "status": dict(per_route[k])} for k, v in sorted(lat.items())}
    res = {"command": "python benchmarks/service_load.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "clients": args.clients, "requests": args.requests, "bad_share": args.bad,
           "batch_wait_ms": args.batch_wait_ms, "wall_s": round(wall, 1),
           "throughput_rps": round(args.requests / wall, 2), "status": dict(status), "responses_5xx": n5xx,
           "dropped_connections": len(dropped), "dropped_examples": dropped[:5], "routes": routes,
           "rss_mb": {"before_load": round(rss_start, 1), "samples": {k: round(v, 1) for k, v in rss.items()},
                      "max_first_half": round(max(first), 1) if first else None,
                      "max_last_half": round(max(last), 1) if last else None,
                      "growth_last_vs_first": round(growth, 4)},
           "mean_engine_batch": {m: round(d["sum"] / d["count"], 2) for m, d in bstats.items() if d.get("count")},
           "models": health["models"], "library_scan_s": scan_s and round(scan_s, 1), "max_batch": args.max_batch,
           "mix": dict(args.mix), "server_exit_code": exit_code,
           "loadavg": load, "cpu_count": os.cpu_count(), "python": platform.python_version()}
    try:
        from edgeinfer.bench.fingerprint import machine_fingerprint

        res["fingerprint"] = machine_fingerprint()
    except Exception as e:  # noqa: BLE001
        res["fingerprint"] = {"error": str(e)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    rows = "\n".join(f"| {k} | {v['n']} | {v['p50_ms']:.0f} | {v['p99_ms']:.0f} | "
                     f"{', '.join(f'{c}: {n}' for c, n in sorted(v['status'].items()))} |" for k, v in routes.items())
    models = ", ".join(f"{m['name']} ({m['kind']}, {m['provider']}/{m['precision']})" for m in health["models"])
    cpu = res["fingerprint"].get("cpu", {}) if isinstance(res["fingerprint"], dict) else {}
    md = f"""# Service load test

`{res['command']}`

{args.clients} concurrent clients x {args.requests} requests against a real `edgeinfer serve` (uvicorn)
on 127.0.0.1; mix: {', '.join(f'{k} {w:.0%}' for k, w in args.mix)}; {args.bad:.0%} of the
requests carry a corrupt image (truncated / random bytes / empty / text) or an oversized body
(> --max-upload-mb; the bad share of searches posts a corrupt image to /v1/search/similar).
Models: {models}; random weights (speed does not depend on them). Uploads: the shared
ImageNet-size JPEGs. `--batch-wait-ms {args.batch_wait_ms:g}`, `--max-batch {args.max_batch or 'default'}`, `--max-queue {args.max_queue}`.
Machine: {cpu.get('model', platform.machine())}, {os.cpu_count()} logical CPUs. **Load average**
(1/5/15 min) before the load {load['before_load']}, after {load['after_load']}: the machine was shared
with other jobs while this ran, so latencies are pessimistic.

- responses 5xx: **{n5xx}**, dropped connections: **{len(dropped)}**; status counts {dict(sorted(status.items()))}
- wall time {wall:.0f} s, {args.requests / wall:.1f} requests/s
- server RSS: {rss_start:.0f} MB before the load; max over the first {half} requests
  {res['rss_mb']['max_first_half']} MB, over the last {args.requests - half} {res['rss_mb']['max_last_half']} MB:
  growth **{100 * growth:.1f}%** (target < 10%)
- mean images per engine call (coalescing): {res['mean_engine_batch']}
- server exit code after SIGTERM: {exit_code}

| route | requests | p50 ms | p99 ms | statuses |
|---|---:|---:|---:|---|
{rows}
"""
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0 if n5xx == 0 and not dropped else 1


if __name__ == "__main__":
    sys.exit(main())
