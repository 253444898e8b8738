"""Search latency over a large library: text search and similar-photo search by exact inner
product in numpy over N stored embeddings (synthetic unit vectors; the size is what matters).

    python benchmarks/search.py [--n 100000] [--dim 512] [--clip ARTIFACT] [--queries 200] \
        [--out benchmarks/results/search]

Text search = CLIP text tower on the query (when --clip is given; else a random query vector and
the text-tower time is left out) + the matrix-vector product + top-k. Similar search = the stored
vector of a photo + the product + top-k excluding the photo. The matrix is read from SQLite once
(float16 blobs -> float32) and cached until the next write; that load time is reported too.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["a dog", "a cat on a sofa", "people at the beach", "a red car", "a bird in a tree",
           "food on a plate", "a mountain lake at sunset", "a receipt", "a screenshot of a chat", "flowers"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--clip", default=None, help="CLIP artifact for the text tower (optional)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search"))
    args = ap.parse_args(argv)

    from edgeinfer.library.search import top_k
    from edgeinfer.library.store import Store

    load = {"start": tuple(round(x, 2) for x in os.getloadavg())}
    rng = np.random.default_rng(0)
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-search-"))
    sha = "s" * 64
    model = None
    if args.clip:
        import edgeinfer

        model = edgeinfer.load(args.clip, provider="cpu")
        args.dim = int(model.artifact.manifest["output"]["dim"])
    with Store(work / "lib.db") as store:
        t = time.perf_counter()
        store.register_model(sha256=sha, name="synthetic", kind="clip", dim=args.dim)
        with store.transaction() as db:
            db.executemany("INSERT INTO photos(id, path, size, mtime, scanned_at) VALUES (?, ?, 0, 0, 0)",
                           ((i + 1, f"/photos/{i:06d}.jpg") for i in range(args.n)))
        for s in range(0, args.n, 20_000):
            m = rng.normal(size=(min(20_000, args.n - s), args.dim)).astype(np.float32)
            m /= np.linalg.norm(m, axis=1, keepdims=True)
            store.add_embeddings(sha, range(s + 1, s + 1 + len(m)), m)
        fill_s = time.perf_counter() - t
        t = time.perf_counter()
        vs = store.vectors(sha)
        load_s = time.perf_counter() - t
        db_mb = sum(f.stat().st_size for f in work.glob("lib.db*")) / 2**20
        text_ms, tower_ms, sim_ms = [], [], []
        for i in range(args.queries + 5):
            t = time.perf_counter()
            if model is not None:
                # a new text each time (no cache hit): the query + a counter
                q = model.embed_text(f"{QUERIES[i % len(QUERIES)]} {i}")  # as the service does
            else:
                q = rng.normal(size=args.dim).astype(np.float32)
                q /= np.linalg.norm(q)
            t1 = time.perf_counter()
            hits = top_k(store.vectors(sha), q, args.k)
            t2 = time.perf_counter()
            pid = int(rng.integers(1, args.n + 1))
            v = store.embedding(pid, sha)
            hits2 = top_k(store.vectors(sha), v, args.k, exclude={pid})
            t3 = time.perf_counter()
            assert len(hits) == len(hits2) == args.k and pid not in [h[0] for h in hits2]
            if i >= 5:  # warm-up
                text_ms.append((t2 - t) * 1000)
                tower_ms.append((t1 - t) * 1000)
                sim_ms.append((t3 - t2) * 1000)
    if model is not None:
        model.close()
    load["end"] = tuple(round(x, 2) for x in os.getloadavg())

    def p(xs, q):
        return round(float(np.percentile(xs, q)), 2)

    res = {"command": "python benchmarks/search.py " + " ".join(sys.argv[1:] if argv is None else argv),
           "n": args.n, "dim": args.dim, "k": args.k, "queries": args.queries, "store_dtype": "float16",
           "db_mb": round(db_mb, 1), "fill_s": round(fill_s, 2), "matrix_load_s": round(load_s, 3),
           "matrix_mb": round(vs.matrix.nbytes / 2**20, 1),
           "text_search_ms": {"p50": p(text_ms, 50), "p90": p(text_ms, 90), "p99": p(text_ms, 99)},
           "text_tower_ms": {"p50": p(tower_ms, 50)} if model is not None else None,
           "similar_search_ms": {"p50": p(sim_ms, 50), "p90": p(sim_ms, 90), "p99": p(sim_ms, 99)},
           "clip": args.clip, "loadavg": load, "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "numpy": np.__version__}
    try:
        from edgeinfer.bench.fingerprint import machine_fingerprint

        res["fingerprint"] = machine_fingerprint()
    except Exception as e:  # noqa: BLE001
        res["fingerprint"] = {"error": str(e)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    cpu = res["fingerprint"].get("cpu", {}) if isinstance(res["fingerprint"], dict) else {}
    tower = (f"of which the CLIP text tower ({Path(args.clip).name}, ORT CPU) p50 {res['text_tower_ms']['p50']} ms"
             if model is not None else "query vector random (no text tower timed)")
    md = f"""# Library search latency ({args.n:,} embeddings, {args.dim}-d)

`{res['command']}`

Exact inner product in numpy over {args.n:,} synthetic unit vectors stored as float16 blobs in the
SQLite store ({db_mb:.0f} MB file); the float32 matrix ({res['matrix_mb']} MB) is read once in
{load_s:.2f} s and cached until the next write. {args.queries} queries after 5 warm-up ones, top-{args.k}.
Machine: {cpu.get('model', platform.machine())}, {os.cpu_count()} logical CPUs. **Load average** at start
{load['start']}, at the end {load['end']} (shared machine: pessimistic numbers).

| search | p50 ms | p90 ms | p99 ms |
|---|---:|---:|---:|
| text (`GET /v1/search`): text tower + product + top-k | {res['text_search_ms']['p50']} | {res['text_search_ms']['p90']} | {res['text_search_ms']['p99']} |
| similar (`POST /v1/search/similar` by photo id): product + top-k | {res['similar_search_ms']['p50']} | {res['similar_search_ms']['p90']} | {res['similar_search_ms']['p99']} |

Text search: {tower}.
"""
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
