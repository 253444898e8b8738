"""Where a library text search's time goes, over N stored embeddings (issue 17: p50 < 50 ms at
100,000 photos), in one process run:

1. the CLIP text tower for one query (batch 1, cut after its end-of-text token, as the runtime
   runs it) per engine x text precision x threads, with its cosine to ONNX Runtime FP32, and the
   tokenizer; ``Model.embed_text`` as loaded by default (what the service runs);
2. product + top-k over N synthetic unit vectors stored as float16 blobs in the SQLite store:
   the float32 path of before (BLAS product + argpartition), the exact float32 path now
   (``exact_top_k``) and the int8 index (``Int8Index``), each query checked identical (ids, order,
   scores) to ``exact_top_k`` and, for the first queries, to float64 brute force;
3. in-process text search (``Model.embed_text`` + ``top_k``);
4. end to end: ``GET /v1/search`` against a real ``edgeinfer serve`` process (uvicorn on
   127.0.0.1) over the same store, one client, keep-alive; the server's own ``time_ms`` beside it
   shows the HTTP overhead.

    python benchmarks/search.py --clip ARTIFACT [--n 100000] [--queries 200] [--providers cpu,openvino]

Without ``--clip`` the query vectors are random and only the product is timed. Every query is a
new text (no cache hit). Synthetic vectors: the size is what matters for the product.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import numpy as np
from _results import command_line, write_results
from _serve import start_serve

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def pct(xs) -> dict:
    xs = np.asarray(xs, float)
    return {"p50": round(float(np.percentile(xs, 50)), 2), "p90": round(float(np.percentile(xs, 90)), 2),
            "p99": round(float(np.percentile(xs, 99)), 2), "n": int(len(xs))}


def timed(fn, items, warmup: int = 3) -> tuple[list[float], list]:
    for x in items[:warmup]:
        fn(x)
    ms, outs = [], []
    for x in items:
        t = time.perf_counter()
        outs.append(fn(x))
        ms.append((time.perf_counter() - t) * 1000)
    return ms, outs


def queries(n: int) -> list[str]:
    from edgeinfer.runtime.zero_shot import sample_prompts

    base = sample_prompts()
    return [f"{base[i % len(base)]} {i}" for i in range(n)]  # a new text each time


# ------------------------------------------------------------------ 1. text tower
def text_towers(clip: str, providers: list[str], texts: list[str]) -> tuple[list[dict], dict]:
    from edgeinfer import backends
    from edgeinfer.evaluate.fidelity import cosine_per_row
    from edgeinfer.runtime.artifact import Artifact
    from edgeinfer.runtime.selection import engine_options, select
    from edgeinfer.runtime.tokenizer import ClipTokenizer

    art = Artifact(clip)
    tok = ClipTokenizer.from_artifact(art)
    tok_ms, ids = timed(lambda t: tok.encode([t]), texts)
    variable = bool((art.manifest.get("text") or {}).get("variable_length"))
    feeds = [i[:, : int(i.argmax(axis=1).max()) + 1] if variable else i for i in ids]
    name = (art.entry("fp32", "text").get("inputs") or [{}])[0].get("name", "input_ids")
    rows, ref = [], None
    for prov in providers:
        for prec in [p for p in ("fp32", "fp16", "int8") if p in art.files("text")]:
            for threads in (None, 1):
                row = {"provider": prov, "precision": prec, "threads": threads or "auto"}
                try:
                    sel = select(prov, artifact=art, precision=art.precisions()[0])
                    opts = engine_options(sel, art, tower="text", precision=prec, threads=threads)
                    t = time.perf_counter()
                    with backends.create_session(art.path(prec, "text"), provider=sel.provider,
                                                 options=opts) as s:
                        row["session_s"] = round(time.perf_counter() - t, 2)
                        ms, outs = timed(lambda f: s.run_feeds({name: f})[0][0], feeds)
                except Exception as e:  # noqa: BLE001 - an engine failing shows in its row only
                    rows.append({**row, "error": f"{type(e).__name__}: {str(e)[:200]}"})
                    continue
                out = np.stack(outs)
                if ref is None and prov == "cpu" and prec == "fp32":
                    ref = out
                if ref is not None:
                    c = cosine_per_row(ref, out)
                    row["cosine_to_ort_fp32"] = {"mean": round(float(c.mean()), 6), "min": round(float(c.min()), 6)}
                rows.append({**row, "ms": pct(ms)})
                print("text tower", row, pct(ms)["p50"], flush=True)
    tokens = [int(f.shape[1]) for f in feeds]
    return rows, {"ms": pct(tok_ms), "tokens_p50": float(np.median(tokens)), "tokens_max": max(tokens)}


# ------------------------------------------------------------------ 2. product + top-k
def before_top_k(vs, q, k):
    """The code this replaced: float32 product + argpartition + argsort (no re-score)."""
    scores = vs.matrix @ q
    idx = np.argpartition(-scores, k - 1)[:k]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return [(int(vs.ids[i]), float(scores[i])) for i in idx]


def fill_store(store, sha: str, n: int, dim: int, rng) -> float:
    t = time.perf_counter()
    store.register_model(sha256=sha, name="clip_vit_b32", kind="clip", dim=dim)
    with store.transaction() as db:
        db.executemany("INSERT INTO photos(id, path, size, mtime, scanned_at) VALUES (?, ?, 0, 0, 0)",
                       ((i + 1, f"/photos/{i:06d}.jpg") for i in range(n)))
    for s in range(0, n, 20_000):
        m = rng.normal(size=(min(20_000, n - s), dim)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        store.add_embeddings(sha, range(s + 1, s + 1 + len(m)), m)
    return time.perf_counter() - t


def product(vs, qs: list[np.ndarray], k: int) -> dict:
    from edgeinfer.library.search import Int8Index, exact_top_k

    before_ms, before = timed(lambda q: before_top_k(vs, q, k), qs)
    exact_ms, exact = timed(lambda q: exact_top_k(vs, q, k), qs)
    import onnxruntime  # noqa: F401 - loaded before the RSS baseline (the service has it loaded)
    import psutil

    rss0 = psutil.Process().memory_info().rss
    t = time.perf_counter()
    idx = Int8Index(vs)
    build_s = time.perf_counter() - t
    index_mb = (psutil.Process().memory_info().rss - rss0) / 2**20
    index_ms, fast = timed(lambda q: idx.top_k(q, k), qs)
    idx1 = Int8Index(vs, threads=1)   # the index runs two threads: what does the second one buy?
    index1_ms, _ = timed(lambda q: idx1.top_k(q, k), qs)
    idx1.close()
    same = sum(a == b for a, b in zip(exact, fast))
    # float64 brute force on the first queries: the definition of exact
    m64 = vs.matrix.astype(np.float64)
    brute_ok = 0
    for q, got in list(zip(qs, fast))[:10]:
        s = (m64 * q.astype(np.float64)).sum(axis=1)
        o = np.lexsort((vs.ids, -s))[:k]
        brute_ok += [i for i, _ in got] == vs.ids[o].tolist() and \
            max(abs(a - float(s[j])) for (_, a), j in zip(got, o)) < 1e-9
    del m64
    # the order of before's float32 ranking vs the exact one
    before_same = sum([i for i, _ in a] == [i for i, _ in b] for a, b in zip(before, exact))
    score_diff = max(abs(a[1] - b[1]) for x, y in zip(before, exact) for a, b in zip(x, y))
    return {"before_float32_ms": pct(before_ms), "exact_float32_ms": pct(exact_ms),
            "int8_index_ms": pct(index_ms), "int8_index_1_thread_ms": pct(index1_ms),
            "index_build_s": round(build_s, 3), "index_rss_mb": round(index_mb, 1),
            "index_identical_to_exact": f"{same}/{len(qs)}",
            "index_equals_float64_brute_force": f"{brute_ok}/{min(10, len(qs))}",
            "before_same_ids_as_exact": f"{before_same}/{len(qs)}",
            "before_max_score_diff": float(f"{score_diff:.3g}")}, idx


# ------------------------------------------------------------------ 4. HTTP
def start_server(clip: str, lib: Path, provider: str) -> tuple[subprocess.Popen, str]:
    return start_serve([clip, "--port", "0", "--library", str(lib), "--provider", provider,
                        "--log-level", "warning"])


def http_search(clip: str, lib: Path, provider: str, texts: list[str], k: int, n: int) -> dict:
    p, url = start_server(clip, lib, provider)
    try:
        host = urllib.parse.urlparse(url)
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=120)

        def get(q: str) -> dict:
            conn.request("GET", "/v1/search?" + urllib.parse.urlencode({"q": q, "k": k}))
            r = conn.getresponse()
            body = json.loads(r.read())
            if r.status != 200:
                raise SystemExit(f"GET /v1/search: {r.status} {body}")
            return body

        deadline = time.monotonic() + 60
        while True:  # the port is bound before uvicorn listens on it
            try:
                conn.connect()
                break
            except ConnectionRefusedError:
                if time.monotonic() > deadline:
                    raise
                conn.close()
                time.sleep(0.2)
        t = time.perf_counter()
        first = get("warm up: load the model and read the matrix")
        first_s = time.perf_counter() - t
        if first["searched"] != n:
            raise SystemExit(f"the server searched {first['searched']} vectors, not {n} (model sha256?)")
        get("a second search of the snapshot starts its int8 index")
        time.sleep(4.0)  # the index builds in the background (about a second per 100k rows)
        conn.close()     # uvicorn drops keep-alive connections idle for 5 s: start a fresh one
        ms, bodies = timed(get, [f"http {t}" for t in texts], warmup=5)
        server = [b["time_ms"] for b in bodies]
        return {"first_request_s": round(first_s, 2), "client_ms": pct(ms), "server_time_ms": pct(server),
                "http_overhead_ms_p50": round(float(np.median(np.asarray(ms) - np.asarray(server))), 2)}
    finally:
        p.terminate()
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()


# ------------------------------------------------------------------ main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--clip", default=None, help="CLIP artifact (text tower, service); optional")
    ap.add_argument("--provider", default="auto", help="engine of the default load and the server")
    ap.add_argument("--providers", default="cpu,openvino", help="engines compared for the text tower")
    ap.add_argument("--no-http", action="store_true", help="skip the end-to-end service run")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "search.md"))
    args = ap.parse_args(argv)

    from edgeinfer.bench.fingerprint import machine_fingerprint
    from edgeinfer.library.search import top_k
    from edgeinfer.library.store import Store

    load = {"start": [round(x, 2) for x in os.getloadavg()]}
    res: dict = {"command": command_line(__file__, argv), "n": args.n, "k": args.k, "queries": args.queries,
                 "clip": args.clip, "fingerprint": machine_fingerprint()}
    rng = np.random.default_rng(0)
    texts = queries(args.queries)
    work = Path(tempfile.mkdtemp(prefix="edgeinfer-search-"))
    sha, model = "s" * 64, None
    if args.clip:
        import edgeinfer
        from edgeinfer.runtime.artifact import Artifact

        avail = _available(args.providers.split(","))
        res["text_tower"], res["tokenizer"] = text_towers(args.clip, avail, texts)
        model = edgeinfer.load(args.clip, provider=args.provider)
        res["default"] = {"provider": model.provider, "precision": model.precision, "reason": model.reason}
        from edgeinfer.runtime.selection import text_tower_pick

        res["text_pick"] = " / ".join(text_tower_pick(model.selection, model.artifact))
        args.dim = int(model.artifact.manifest["output"]["dim"])
        # the store rows belong to the model the server will run (its image file's sha256)
        sha = Artifact(args.clip).entry(model.precision).get("sha256")
        model.embed_text("warm up")
        emb_ms, qvecs = timed(model.embed_text, texts)
        res["embed_text_ms"] = pct(emb_ms)
    else:
        qvecs = [v / np.linalg.norm(v) for v in rng.normal(size=(args.queries, args.dim)).astype(np.float32)]
    res["dim"] = args.dim
    with Store(work / "lib.db") as store:
        res["fill_s"] = round(fill_store(store, sha, args.n, args.dim, rng), 2)
        t = time.perf_counter()
        vs = store.vectors(sha)
        res["matrix_load_s"] = round(time.perf_counter() - t, 3)
        res["db_mb"] = round(sum(f.stat().st_size for f in work.glob("lib.db*")) / 2**20, 1)
        res["matrix_mb"] = round(vs.matrix.nbytes / 2**20, 1)
        res["product"], idx = product(vs, qvecs, args.k)
        vs.derived["int8"] = idx     # as top_k would have it after its background build
        if model is not None:
            ms, _ = timed(lambda t: top_k(vs, model.embed_text(t), args.k), [f"in-process {t}" for t in texts])
            res["text_search_in_process_ms"] = pct(ms)
            model.close()
    if args.clip and not args.no_http:
        res["http"] = http_search(args.clip, work / "lib.db", args.provider, texts, args.k, args.n)
    load["end"] = [round(x, 2) for x in os.getloadavg()]
    res["loadavg"] = load
    write_results(Path(args.out).with_suffix(".md"), markdown(res), res)
    return 0




def _available(providers: list[str]) -> list[str]:
    from edgeinfer.backends.providers import detect_one

    return [p for p in providers if detect_one(p).available]


def markdown(r: dict) -> list[str]:
    cpu = r["fingerprint"]["cpu"]
    isa = ", ".join(k for k, v in cpu["isa"].items() if v is True) if isinstance(cpu.get("isa"), dict) else ""
    p = r["product"]
    L = [f"# Library search latency ({r['n']:,} photos, {r['dim']}-d embeddings, top-{r['k']})", "",
         f"`{r['command']}`", "",
         f"Machine: {cpu['model']}, {cpu.get('usable_cores')} usable cores ({isa}); int8 tier "
         f"{cpu.get('int8_tier')}. **Load average** at start {tuple(r['loadavg']['start'])}, at the end "
         f"{tuple(r['loadavg']['end'])}. {r['queries']} queries per row, each a new text, after warm-up; "
         f"times in ms.", ""]
    if r.get("http"):
        L += ["## End to end: `GET /v1/search` on a real `edgeinfer serve` (one client, keep-alive)", "",
              "| server | client round trip p50 | p90 | p99 | server `time_ms` p50 | p90 | p99 | HTTP overhead p50 |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
        h = r["http"]
        c, sv = h["client_ms"], h["server_time_ms"]
        L.append(f"| as shipped | {c['p50']} | {c['p90']} | {c['p99']} | {sv['p50']} | {sv['p90']} | "
                 f"{sv['p99']} | {h['http_overhead_ms_p50']} |")
        L += ["", f"Server `time_ms`: text tower + vectors + top-k. HTTP overhead = round trip - `time_ms` "
                  f"(uvicorn, routing, JSON, photo paths). First request (loads the model and reads the "
                  f"matrix) {h['first_request_s']} s. Server engine: {r['default']['provider']}/"
                  f"{r['default']['precision']}; its text tower as `runtime.selection.text_tower_pick` "
                  f"chooses it ({r.get('text_pick') or '?'}). The listening socket is TCP, so asyncio sets "
                  f"TCP_NODELAY (before that fix every keep-alive response waited ~40 ms for the client's "
                  f"delayed ACK).", ""]
    if r.get("text_tower"):
        L += ["## CLIP text tower, one query (batch 1, trimmed to its tokens)", "",
              f"Tokens per query: median {r['tokenizer']['tokens_p50']:.0f}, max {r['tokenizer']['tokens_max']}; "
              f"tokenizer p50 {r['tokenizer']['ms']['p50']} ms.", "",
              "| engine | text precision | threads | p50 | p90 | cosine to ORT FP32 (min) | session s |",
              "|---|---|---|---:|---:|---:|---:|"]
        for t in r["text_tower"]:
            if "error" in t:
                L.append(f"| {t['provider']} | {t['precision']} | {t['threads']} | error: {t['error'][:80]} | | | |")
                continue
            c = t.get("cosine_to_ort_fp32") or {}
            L.append(f"| {t['provider']} | {t['precision']} | {t['threads']} | {t['ms']['p50']} | {t['ms']['p90']} "
                     f"| {c.get('min', '')} | {t['session_s']} |")
        e = r["embed_text_ms"]
        L += ["", f"`Model.embed_text` as `edgeinfer.load(..., provider={r['default']['provider']!r})` runs it "
                  f"({r['default']['precision']} image tower; text tower by `text_tower_pick`): p50 {e['p50']}, p90 {e['p90']}.",
              f"Reason: {r['default']['reason']}", ""]
    L += ["## Product + top-k", "",
          f"{r['n']:,} unit vectors stored as float16 blobs ({r['db_mb']:.0f} MB SQLite file), read once into "
          f"a float32 matrix ({r['matrix_mb']} MB) in {r['matrix_load_s']} s.", "",
          "| path | p50 | p90 | p99 |", "|---|---:|---:|---:|"]
    for key, what in (("before_float32_ms", "before: float32 product + argpartition (float32 order)"),
                      ("exact_float32_ms", "exact float32 product + float64 re-score (`exact_top_k`)"),
                      ("int8_index_ms", "int8 index + float64 re-score (`Int8Index`, the default: 2 threads)"),
                      ("int8_index_1_thread_ms", "the same index on 1 engine thread")):
        L.append(f"| {what} | {p[key]['p50']} | {p[key]['p90']} | {p[key]['p99']} |")
    L += ["", f"Int8 index: built in {p['index_build_s']} s (background, once per store snapshot), "
              f"{p['index_rss_mb']} MB more resident memory beside the float32 matrix. Identical to `exact_top_k` (ids, order, "
              f"scores): {p['index_identical_to_exact']} queries; equal to float64 brute force: "
              f"{p['index_equals_float64_brute_force']}. Before's float32 ranking had the same ids in the "
              f"same order in {p['before_same_ids_as_exact']} queries (largest score difference "
              f"{p['before_max_score_diff']}).", ""]
    if r.get("text_search_in_process_ms"):
        t = r["text_search_in_process_ms"]
        L += [f"In-process text search (`Model.embed_text` + `top_k`): p50 {t['p50']}, p90 {t['p90']}, p99 {t['p99']}.", ""]
    return L


if __name__ == "__main__":
    sys.exit(main())
