"""Library indexing throughput: `edgeinfer.library.run_scan` vs the naive one-photo-at-a-time loop,
on the shared real photos re-encoded at 12 MP, with one classifier + one CLIP image tower; then the
same scan again with nothing changed (target: < 5% of the first).

    python benchmarks/indexing.py --classifier ARTIFACT --clip ARTIFACT \
        [--photos ../shared/data/photos] [--n 100] [--out benchmarks/results/indexing]

The naive loop is what a backend writes without the library: for each photo, `classify(path)` and
`embed(path)` (each call decodes the file again), then one INSERT + COMMIT per photo. The scan
decodes each photo once (JPEG draft decoding at the scale the models need), runs every model on
the decoded image, decodes the next batch while the models run, and commits once per batch.
Writes results/indexing.md and .json (with the command, the machine and the load average).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def make_12mp(photos: Path, out: Path, n: int) -> list[Path]:
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    src = sorted(p for p in photos.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
    made = []
    for p in src:
        dst = out / (p.stem + ".jpg")
        if not dst.exists():
            im = Image.open(p).convert("RGB")
            im = im.resize((4000, 3000) if im.width >= im.height else (3000, 4000), Image.BICUBIC)
            im.save(dst, "JPEG", quality=90)
        made.append(dst)
    return made


def naive(paths, cls_dir, clip_dir, db_path, provider):
    import numpy as np

    import edgeinfer

    cls = edgeinfer.load(cls_dir, provider=provider)
    clip = edgeinfer.load(clip_dir, provider=provider)
    db = sqlite3.connect(db_path)
    db.execute("CREATE TABLE p (path TEXT, tags TEXT, emb BLOB)")
    t = time.perf_counter()
    for p in paths:
        tags = cls.classify(str(p), top_k=5)
        emb = clip.embed(str(p))
        db.execute("INSERT INTO p VALUES (?, ?, ?)", (str(p), json.dumps(tags), np.asarray(emb).tobytes()))
        db.commit()
    dt = time.perf_counter() - t
    db.close()
    cls.close()
    clip.close()
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classifier", required=True)
    ap.add_argument("--clip", required=True)
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--provider", default="auto")
    ap.add_argument("--workdir", default=None, help="where the 12 MP copies go (default: a temp dir)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "indexing"))
    args = ap.parse_args(argv)

    from edgeinfer.library import LibraryModel, Store, run_scan

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="edgeinfer-indexing-"))
    load = {"start": tuple(round(x, 2) for x in os.getloadavg())}
    t = time.perf_counter()
    paths = make_12mp(Path(args.photos), work / "photos12mp", args.n)
    make_s = time.perf_counter() - t
    mb = sum(p.stat().st_size for p in paths) / 2**20
    print(f"{len(paths)} photos at 12 MP ({mb:.0f} MB) in {work} ({make_s:.0f} s)", flush=True)

    # naive loop first (it also warms the page cache for the scan that follows)
    naive_s = naive(paths, args.classifier, args.clip, work / "naive.db", args.provider)
    load["after_naive"] = tuple(round(x, 2) for x in os.getloadavg())
    print(f"naive loop: {naive_s:.1f} s, {len(paths) / naive_s:.2f} photos/s", flush=True)

    db = work / "library.db"
    for f in work.glob("library.db*"):
        f.unlink()
    models = [LibraryModel.from_artifact(args.classifier, provider=args.provider),
              LibraryModel.from_artifact(args.clip, provider=args.provider)]
    with Store(db) as store:
        s1 = run_scan(store, work / "photos12mp", models, batch_size=args.batch_size)
        load["after_scan"] = tuple(round(x, 2) for x in os.getloadavg())
        print(f"scan: {s1.elapsed_s:.1f} s, {s1.done / s1.elapsed_s:.2f} photos/s", flush=True)
        s2 = run_scan(store, work / "photos12mp", models, batch_size=args.batch_size)
        print(f"re-scan (nothing changed): {s2.elapsed_s * 1000:.0f} ms", flush=True)
        counts = store.counts()
    sel = models[0].model.selection
    precisions = [m.model.precision for m in models]
    for m in models:
        m.close()
    load["end"] = tuple(round(x, 2) for x in os.getloadavg())
    res = {
        "command": "python benchmarks/indexing.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "photos": len(paths), "megapixels": 12, "mb": round(mb, 1),
        "classifier": str(args.classifier), "clip": str(args.clip),
        "provider": sel.provider, "precision": precisions,
        "naive_s": round(naive_s, 2), "naive_photos_per_s": round(len(paths) / naive_s, 3),
        "scan_s": round(s1.elapsed_s, 2), "scan_photos_per_s": round(s1.done / s1.elapsed_s, 3),
        "speedup": round(naive_s / s1.elapsed_s, 2),
        "rescan_s": round(s2.elapsed_s, 4), "rescan_fraction": round(s2.elapsed_s / s1.elapsed_s, 4),
        "rescan_skipped": s2.skipped, "stored": counts, "batch_size": args.batch_size,
        "loadavg": load, "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
    }
    try:
        from edgeinfer.bench.fingerprint import machine_fingerprint

        res["fingerprint"] = machine_fingerprint()
    except Exception as e:  # noqa: BLE001 -- the fingerprint is a nicety
        res["fingerprint"] = {"error": str(e)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str))
    cpu = res["fingerprint"].get("cpu", {}) if isinstance(res["fingerprint"], dict) else {}
    md = f"""# Library indexing (12 MP photos, one classifier + CLIP)

`{res['command']}`

{len(paths)} shared photos re-encoded at 12 MP ({mb:.0f} MB of JPEG), models `{Path(args.classifier).name}` +
`{Path(args.clip).name}` (random weights; speed does not depend on them), engine {sel.provider}.
Machine: {cpu.get('model', res['machine'])}, {os.cpu_count()} logical CPUs.
**Load average** (1/5/15 min) at start {load['start']}, after the scan {load['after_scan']}: the machine
was shared with other jobs, so absolute numbers are pessimistic; the ratios come from one run.

| run | time | photos/s |
|---|---:|---:|
| naive loop (classify(path) + embed(path), commit per photo) | {naive_s:.1f} s | {len(paths) / naive_s:.2f} |
| `run_scan` (decode once, batch {args.batch_size}, prefetch, one transaction per batch) | {s1.elapsed_s:.1f} s | {s1.done / s1.elapsed_s:.2f} |
| `run_scan` again, nothing changed | {s2.elapsed_s * 1000:.0f} ms ({100 * s2.elapsed_s / s1.elapsed_s:.2f}% of the first) | - |

Speed-up of the scan over the naive loop: **{naive_s / s1.elapsed_s:.2f}x**. The re-scan lists the
folder, compares (size, mtime) with the store and decodes nothing.
"""
    out.with_suffix(".md").write_text(md)
    print(md)
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
