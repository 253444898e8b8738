#!/usr/bin/env python
"""Runtime footprint of a backend process serving mobilevit_s INT8 (no PyTorch).

Each measurement runs in a fresh interpreter that only does what a photo backend does:
``import edgeinfer`` -> ``edgeinfer.load(artifact, precision="int8")`` -> classify photos.
Reported against the targets: peak RSS <= 150 MB, ``import edgeinfer`` <= 0.3 s, session
start (``edgeinfer.load``, engine import included) <= 1 s.

    python benchmarks/runtime_footprint.py --artifact /tmp/edgeinfer-peers/mobilevit_s \
        --photos ../shared/data/photos
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from _results import command_line

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"peak_rss_mb": 150.0, "import_s": 0.3, "session_start_s": 1.0}

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import edgeinfer
t_import = time.perf_counter() - t0
art, provider, photos, n, bs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
t1 = time.perf_counter()
import edgeinfer.runtime.model
if provider == "openvino":
    import openvino
else:
    import onnxruntime
t_engine_import = time.perf_counter() - t1
t1 = time.perf_counter()
m = edgeinfer.load(art, provider=provider, precision="int8", batch_size=bs)
t_load = time.perf_counter() - t1
from pathlib import Path
paths = sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:n]
t2 = time.perf_counter()
m.classify(paths[:1])
t_first = time.perf_counter() - t2
t3 = time.perf_counter()
res = m.classify(paths)
t_serve = time.perf_counter() - t3
hwm = None
for line in open("/proc/self/status"):
    if line.startswith("VmHWM:"):
        hwm = int(line.split()[1]) / 1024
print("RESULT " + json.dumps({"import_s": t_import, "engine_import_s": t_engine_import,
      "session_start_s": t_load, "first_classify_s": t_first,
      "images": len(paths), "images_per_s": len(paths) / t_serve, "peak_rss_mb": hwm,
      "provider": m.provider, "precision": m.precision,
      "torch_loaded": "torch" in sys.modules, "failures": sum(1 for r in res if not r)}))
"""


def measure(artifact: str, provider: str, photos: str, n: int, batch_size: int) -> dict:
    r = subprocess.run([sys.executable, "-c", CHILD, artifact, provider, photos, str(n), str(batch_size)],
                       capture_output=True, text=True, timeout=600)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    return {"error": (r.stderr or r.stdout).strip().splitlines()[-1:] or ["failed"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True, help="mobilevit_s artifact with an int8 file")
    ap.add_argument("--photos", default=str(REPO.parent / "shared" / "data" / "photos"))
    ap.add_argument("--providers", default="cpu,openvino")
    ap.add_argument("--images", type=int, default=32, help="photos classified while serving")
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per provider (median)")
    ap.add_argument("--batch-sizes", default="16,1",
                    help="Model batch_size values to serve with (16 is edgeinfer.load's default)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "runtime_footprint.md"))
    args = ap.parse_args(argv)

    rows = []
    for prov in [p for p in args.providers.split(",") if p]:
        for bs in [int(b) for b in args.batch_sizes.split(",") if b]:
            runs = [measure(args.artifact, prov, args.photos, args.images, bs) for _ in range(args.repeat)]
            ok = [r for r in runs if "error" not in r]
            if not ok:
                rows.append({"provider": prov, "batch_size": bs, "error": runs[0]["error"]})
                continue
            med = {k: sorted(r[k] for r in ok)[len(ok) // 2] for k in
                   ("import_s", "engine_import_s", "session_start_s", "first_classify_s",
                    "images_per_s", "peak_rss_mb")}
            rows.append({"provider": prov, "batch_size": bs, **med,
                         "torch_loaded": any(r["torch_loaded"] for r in ok),
                         "precision": ok[0]["precision"], "runs": len(ok)})
    cmd = command_line(__file__, argv)
    L = ["# Runtime footprint: a backend process serving mobilevit_s INT8", "",
         "Fresh process per run (median of runs): `import edgeinfer`, `edgeinfer.load(..., "
         "precision=\"int8\")`, classify photos. Targets: peak RSS <= 150 MB, import <= 0.3 s, "
         "session start <= 1 s.", "", "```", cmd, "```", "",
         "`import edgeinfer` is lazy; the engine import (edgeinfer.runtime + onnxruntime/openvino) "
         "is shown separately and is not part of session start.", "",
         "| engine | batch_size | import edgeinfer s | engine import s | session start s | first classify s "
         "| images/s | peak RSS MB | torch loaded | verdict |",
         "|---|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if "error" in r:
            L.append(f"| {r['provider']} | {r['batch_size']} | – | – | – | – | – | – | – | failed: {r['error']} |")
            continue
        miss = [k for k, lim in TARGETS.items() if r[k] > lim]
        verdict = "meets all targets" if not miss else "MISSES " + ", ".join(miss)
        L.append(f"| {r['provider']} | {r['batch_size']} | {r['import_s']:.3f} | {r['engine_import_s']:.3f} | "
                 f"{r['session_start_s']:.3f} | "
                 f"{r['first_classify_s']:.3f} | {r['images_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                 f"{'yes' if r['torch_loaded'] else 'no'} | {verdict} |")
    md = "\n".join(L) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(md)
    print(md)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
