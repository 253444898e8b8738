#!/usr/bin/env python
"""Hostile input: seeded mutated images through ``Model.classify``, and exports killed with SIGKILL.

    .venv/bin/python benchmarks/reliability.py --inputs 10000 --seed 0 --kills 20

Mutation run: ``--inputs`` images made from a seed (bit flips, truncations, overwritten runs,
random bytes behind real magic numbers, headers with huge / zero dimensions, duplicated chunks,
broken EXIF, every accepted format and mode, EXIF orientations, the formats that must be refused,
and extreme shapes such as a 157-byte 1 x 40000 PNG). Each input is classified alone by a tiny
224 x 224 artifact in a worker process; per input it records the outcome (ok / Failure /
uncaught exception / crash of the worker), the seconds it took and how much the process grew
for it (peak RSS reset before each input through /proc/self/clear_refs). A crashed worker is
restarted after the input that killed it.

Kill run: ``edgeinfer export`` (and ``edgeinfer quantize``) subprocesses killed with SIGKILL at
random moments; after each kill nothing next to ``--out`` may load and ``--out`` is either
absent or a complete artifact; the following export must succeed.

Writes benchmarks/results/reliability.md and .json (with this command, the machine and the load
average: numbers taken on a busy machine are marked as such).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
RSS_LIMIT_MB = 256
TIME_LIMIT_S = 5.0

# ------------------------------------------------------------------ corpus
ACCEPTED = {  # format -> modes saved
    "JPEG": ["RGB", "L", "CMYK"],
    "PNG": ["RGB", "RGBA", "L", "LA", "P", "1", "I;16"],
    "WEBP": ["RGB", "RGBA"],
    "GIF": ["P", "L"],
    "BMP": ["RGB", "L", "P", "1"],
    "TIFF": ["RGB", "RGBA", "L", "1", "CMYK", "I;16"],
    "AVIF": ["RGB"],
}
REFUSED = ["EPS", "PPM", "TGA", "PCX", "SGI", "ICO", "IM", "MSP", "QOI", "XBM", "DDS", "SPIDER",
           "ICNS", "JPEG2000", "DIB"]
MAGIC = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"GIF89a",
         b"BM", b"II*\x00", b"MM\x00*", b"\x00\x00\x00\x1cftypavif", b"%!PS-Adobe-3.0 EPSF-3.0",
         b"P6\n", b"8BPS", b"\x00\x00\x01\x00"]
OPS = [("valid", 14), ("bitflip", 22), ("truncate", 12), ("overwrite", 10), ("random", 8),
       ("dims", 14), ("refused", 5), ("extreme", 5), ("exif", 5), ("dup", 5)]
DIMS = [0, 1, 2, 3, 7, 255, 65535, 65536, 100_000, 1 << 24, 2**31 - 1, 2**32 - 1]


def _formats() -> dict:
    from PIL import features

    f = dict(ACCEPTED)
    if not features.check("avif"):
        f.pop("AVIF")
    return f


def base_image(r: random.Random, mode: str = "RGB"):
    """A small natural-ish image: gradient, a few shapes, noise (deterministic from ``r``)."""
    import numpy as np
    from PIL import Image, ImageDraw

    w, h = r.randint(8, 96), r.randint(8, 96)
    rng = np.random.default_rng(r.getrandbits(32))
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 / max(w - 1, 1)), (y * 255 / max(h - 1, 1)),
                     np.full((h, w), r.randint(0, 255))], axis=2)
    base = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(r.randint(0, 4)):
        x0, y0 = r.randint(0, w - 1), r.randint(0, h - 1)
        d.ellipse((x0, y0, x0 + r.randint(1, w), y0 + r.randint(1, h)),
                  fill=tuple(r.randint(0, 255) for _ in range(3)))
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8)))
    elif mode == "LA":
        img = img.convert("LA")
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257)
    elif mode != "RGB":
        img = img.convert(mode)
    return img


def encode(img, fmt: str, *, orientation: int | None = None, exif: bytes | None = None) -> bytes:
    from PIL import Image

    b = io.BytesIO()
    kw = {}
    if orientation is not None:
        e = Image.Exif()
        e[0x0112] = orientation
        kw["exif"] = e.tobytes()
    if exif is not None:
        kw["exif"] = exif
    if fmt == "GIF" and img.mode not in ("P", "L"):
        img = img.convert("P")
    if fmt in ("XBM", "MSP"):
        img = img.convert("1")
    if fmt in ("ICO", "ICNS", "SGI", "DDS", "JPEG2000", "QOI", "PCX", "TGA", "PPM", "IM", "DIB",
               "EPS") and img.mode not in ("RGB",):
        img = img.convert("RGB")
    if fmt == "SPIDER":
        img = img.convert("F")
    img.save(b, fmt, **kw)
    return b.getvalue()


def set_dims(data: bytes, fmt: str, w: int, h: int) -> bytes:
    """The same file with the header's width and height replaced (CRC fixed for PNG)."""
    b = bytearray(data)
    w32, h32 = w & 0xFFFFFFFF, h & 0xFFFFFFFF
    if fmt == "PNG":
        b[16:24] = struct.pack(">II", w32, h32)
        b[29:33] = struct.pack(">I", zlib.crc32(bytes(b[12:29])) & 0xFFFFFFFF)
    elif fmt == "JPEG":
        for marker in (b"\xff\xc0", b"\xff\xc1", b"\xff\xc2"):
            i = data.find(marker)
            if i >= 0:
                b[i + 5:i + 9] = struct.pack(">HH", h & 0xFFFF, w & 0xFFFF)
                break
    elif fmt == "GIF":
        b[6:10] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
        i = data.find(b"\x2c", 13)
        if i >= 0 and i + 9 <= len(b):
            b[i + 5:i + 9] = struct.pack("<HH", w & 0xFFFF, h & 0xFFFF)
    elif fmt == "BMP":
        b[18:26] = struct.pack("<ii", _i32(w), _i32(h))
    elif fmt == "TIFF":
        _tiff_dims(b, w32, h32)
    return bytes(b)


def _i32(v: int) -> int:
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= 1 << 31 else v


def _tiff_dims(b: bytearray, w: int, h: int) -> None:
    end = "<" if b[:2] == b"II" else ">"
    (ifd,) = struct.unpack(end + "I", b[4:8])
    if ifd + 2 > len(b):
        return
    (n,) = struct.unpack(end + "H", b[ifd:ifd + 2])
    for k in range(n):
        e = ifd + 2 + 12 * k
        if e + 12 > len(b):
            return
        tag, typ = struct.unpack(end + "HH", b[e:e + 4])
        if tag in (256, 257):
            v = w if tag == 256 else h
            if typ == 3:  # SHORT
                b[e + 8:e + 10] = struct.pack(end + "H", v & 0xFFFF)
            else:
                b[e + 8:e + 12] = struct.pack(end + "I", v)


_EXTREME: list | None = None


def extreme_inputs() -> list[tuple[str, bytes]]:
    """Valid (or header-crafted) files with shapes that amplify memory or time (the probe's)."""
    global _EXTREME
    if _EXTREME is not None:
        return _EXTREME
    from PIL import Image

    out = []

    def png(img, name):
        out.append((name, encode(img, "PNG")))

    png(Image.new("L", (1, 40000), 128), "png 1x40000")
    png(Image.new("L", (40000, 1), 128), "png 40000x1")
    png(Image.new("L", (1, 8000), 7), "png 1x8000")
    png(Image.new("1", (9000, 9000), 0), "png 9000x9000 1-bit")
    png(Image.new("L", (300, 2), 0), "png 300x2")
    small = encode(Image.new("L", (4, 4), 0), "PNG")
    out.append(("png header 2x44000000", set_dims(small, "PNG", 2, 44_000_000)))
    out.append(("png header 0x0", set_dims(small, "PNG", 0, 0)))
    out.append(("png header 0x10", set_dims(small, "PNG", 0, 10)))
    out.append(("png header 65535x65535", set_dims(small, "PNG", 65535, 65535)))
    out.append(("png header 9400x9400", set_dims(small, "PNG", 9400, 9400)))
    jpg = encode(Image.new("RGB", (16, 16), (90, 20, 200)), "JPEG")
    out.append(("jpeg header 65500x65500", set_dims(jpg, "JPEG", 65500, 65500)))
    out.append(("jpeg header 9000x9000", set_dims(jpg, "JPEG", 9000, 9000)))
    out.append(("jpeg header 0x16", set_dims(jpg, "JPEG", 0, 16)))
    gif = encode(Image.new("P", (8, 8)), "GIF")
    out.append(("gif header 65535x65535", set_dims(gif, "GIF", 65535, 65535)))
    bmp = encode(Image.new("RGB", (8, 8)), "BMP")
    out.append(("bmp header 30000x-30000", set_dims(bmp, "BMP", 30000, -30000)))
    out.append(("bmp header 1x2147483647", set_dims(bmp, "BMP", 1, 2**31 - 1)))
    tif = encode(Image.new("RGB", (8, 8)), "TIFF")
    out.append(("tiff header 100000x100000", set_dims(tif, "TIFF", 100000, 100000)))
    big = Image.new("RGBA", (6000, 4000), (255, 0, 0, 10))
    out.append(("png 6000x4000 RGBA", encode(big, "PNG")))
    del big
    big = Image.new("RGB", (8000, 6000), (10, 120, 30))
    out.append(("jpeg 8000x6000", encode(big, "JPEG")))
    del big
    _EXTREME = out
    return out


def make_case(seed: int, i: int) -> tuple[str, bytes]:
    """Input ``i`` of the corpus for ``seed``: (description, bytes). Deterministic."""
    r = random.Random(f"edgeinfer-reliability:{seed}:{i}")
    op = r.choices([o for o, _ in OPS], weights=[w for _, w in OPS])[0]
    formats = _formats()
    fmt = r.choice(sorted(formats))
    mode = r.choice(formats[fmt])
    if op == "extreme":
        ex = extreme_inputs()
        name, data = ex[i % len(ex)] if r.random() < 0.5 else r.choice(ex)
        return f"extreme {name}", data
    if op == "refused":
        f = r.choice(REFUSED)
        return f"refused format {f}", encode(base_image(r), f)
    if op == "random":
        return "random bytes behind a magic number", r.choice(MAGIC) + r.randbytes(r.randint(0, 4096))
    orient = r.choice([None, 1, 2, 3, 4, 5, 6, 7, 8, 0, 9, 65535]) if fmt in ("JPEG", "PNG", "WEBP", "TIFF") else None
    img = base_image(r, mode)
    if op == "exif":
        data = encode(img.convert("RGB"), "JPEG", exif=b"Exif\x00\x00" + r.randbytes(r.randint(0, 200)))
        return "jpeg with random EXIF bytes", data
    try:
        data = encode(img, fmt, orientation=orient)
    except (OSError, ValueError, TypeError):  # a writer that does not take EXIF for this mode
        data = encode(img, fmt)
        orient = None
    what = f"{fmt} {mode}" + (f" orientation {orient}" if orient is not None else "")
    if op == "valid":
        return f"valid {what}", data
    b = bytearray(data)
    if op == "bitflip":
        k = r.randint(1, 16)
        for _ in range(k):
            p = r.randrange(len(b))
            b[p] ^= 1 << r.randrange(8)
        return f"{k} bit flips in {what}", bytes(b)
    if op == "truncate":
        n = r.randrange(len(b))
        return f"{what} truncated to {n} of {len(b)} bytes", bytes(b[:n])
    if op == "overwrite":
        n = r.randint(1, 64)
        p = r.randrange(len(b))
        b[p:p + n] = r.randbytes(n)
        return f"{n} bytes overwritten in {what}", bytes(b)
    if op == "dup":
        p = r.randrange(len(b))
        n = r.randint(1, 512)
        q = r.randrange(len(b))
        return f"chunk duplicated in {what}", bytes(b[:q] + b[p:p + n] + b[q:])
    # dims
    f2 = r.choice([f for f in ("PNG", "JPEG", "GIF", "BMP", "TIFF") if f in formats])
    if f2 != fmt:
        img = base_image(r, "RGB")
        data = encode(img, f2)
    w, h = r.choice(DIMS + [r.randint(1, 70000)]), r.choice(DIMS + [r.randint(1, 70000)])
    return f"{f2} header {w}x{h}", set_dims(data, f2, w, h)


# ------------------------------------------------------------------ measuring one input
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        return True
    except OSError:
        return False


def classify_one(model, data: bytes) -> dict:
    """Classify one input; outcome, seconds, MB the process grew for it (peak over before)."""
    from edgeinfer.runtime.model import Failure

    can_reset = _reset_peak()
    rss0 = _status_kb("VmRSS")
    t0, c0 = time.perf_counter(), time.process_time()
    rec: dict = {}
    try:
        res = model.classify([data], top_k=1)[0]
        if isinstance(res, Failure):
            rec.update(outcome="failure", error=res.error)
        else:
            rec.update(outcome="ok")
    except Exception as e:  # noqa: BLE001 - what we count
        rec.update(outcome="uncaught", error=f"{type(e).__name__}: {e}")
    rec["seconds"] = round(time.perf_counter() - t0, 4)
    # CPU seconds of the whole process: what the input costs whatever else the machine runs
    rec["cpu_seconds"] = round(time.process_time() - c0, 4)
    rec["grew_mb"] = round((_status_kb("VmHWM") - rss0) / 1024, 1) if can_reset else None
    return rec


def tiny_model(workdir: Path):
    """A 224 x 224 tiny classifier artifact (onnx.helper; no torch), loaded on the CPU."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_runtime_helpers import tiny_artifact

    import edgeinfer

    d = workdir / "tiny224"
    if not (d / "manifest.json").exists():
        tiny_artifact(d, size=224, classes=10)
    return edgeinfer.load(d, provider="cpu", precision="fp32", batch_size=1)


def _worker(args) -> int:
    model = tiny_model(Path(args.workdir))
    with open(args.jsonl, "a") as out:
        for i in range(args.start, args.stop):
            desc, data = make_case(args.seed, i)
            rec = {"i": i, "case": desc, "bytes": len(data), **classify_one(model, data)}
            out.write(json.dumps(rec) + "\n")
            out.flush()
    return 0


def mutation_run(n: int, seed: int, workdir: Path, progress=print) -> list[dict]:
    """Every input in a worker process (restarted after a crash, which is recorded)."""
    jsonl = workdir / "records.jsonl"
    jsonl.unlink(missing_ok=True)
    tiny_model(workdir).close()  # build the artifact once
    done: dict[int, dict] = {}
    start = 0
    crashes = 0
    while start < n:
        cmd = [sys.executable, __file__, "--worker", "--seed", str(seed), "--start", str(start),
               "--stop", str(n), "--jsonl", str(jsonl), "--workdir", str(workdir)]
        p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        for line in jsonl.read_text().splitlines():
            rec = json.loads(line)
            done[rec["i"]] = rec
        nxt = max(done) + 1 if done else 0
        if p.returncode != 0 and nxt < n:
            desc, data = make_case(seed, nxt)
            done[nxt] = {"i": nxt, "case": desc, "bytes": len(data), "outcome": "crash",
                         "error": f"worker exited with {p.returncode}: {p.stderr[-300:]}"}
            crashes += 1
            with open(jsonl, "a") as f:
                f.write(json.dumps(done[nxt]) + "\n")
            progress(f"crash at input {nxt} ({desc}); restarting")
            nxt += 1
        if crashes > 50:
            progress("too many crashes; stopping")
            break
        start = nxt
    return [done[i] for i in sorted(done)]


_KINDS = [("bit flips", "bit flips"), ("truncated", "truncation"), ("overwritten", "overwritten run"),
          ("random bytes", "random bytes"), ("header", "header dimensions"),
          ("refused format", "other format"), ("extreme", "extreme shape"), ("EXIF", "random EXIF"),
          ("duplicated", "duplicated chunk"), ("valid", "valid")]


def kind_of(desc: str) -> str:
    if desc.startswith("extreme"):
        return "extreme shape"
    for needle, kind in _KINDS:
        if needle in desc:
            return kind
    return "other"


def by_kind(records: list[dict]) -> dict:
    out: dict = {}
    for rec in records:
        c = out.setdefault(kind_of(rec["case"]), {"ok": 0, "failure": 0, "uncaught": 0, "crash": 0})
        c[rec["outcome"]] += 1
    return out


def _fresh_worker(args) -> int:
    """One extreme input in a fresh process (after one warm-up image, so the engine's own
    allocations are not counted): the growth no allocator reuse can hide."""
    model = tiny_model(Path(args.workdir))
    classify_one(model, encode(base_image(random.Random(0)), "PNG"))
    data = Path(args.jsonl).read_bytes()  # made by the parent: building it here would pre-grow us
    print(json.dumps({"bytes": len(data), **classify_one(model, data)}))
    return 0


def extremes_fresh(workdir: Path, progress=print) -> list[dict]:
    tiny_model(workdir).close()
    out = []
    for i, (name, data) in enumerate(extreme_inputs()):
        f = workdir / "extreme.bin"
        f.write_bytes(data)
        p = subprocess.run([sys.executable, __file__, "--fresh-worker", "--jsonl", str(f),
                            "--workdir", str(workdir)], cwd=REPO, capture_output=True, text=True)
        if p.returncode != 0:
            rec = {"case": name, "outcome": "crash", "error": p.stderr[-300:]}
        else:
            rec = {"case": name, **json.loads(p.stdout.strip().splitlines()[-1])}
        out.append(rec)
        progress(f"{name}: {rec.get('outcome')} {rec.get('grew_mb')} MB {rec.get('seconds')} s")
    return out


def summarize(records: list[dict]) -> dict:
    counts = {k: sum(r["outcome"] == k for r in records) for k in ("ok", "failure", "uncaught", "crash")}
    grew = [r["grew_mb"] for r in records if r.get("grew_mb") is not None]
    secs = [r["seconds"] for r in records if "seconds" in r]
    cpu = [r["cpu_seconds"] for r in records if "cpu_seconds" in r]
    worst_mem = sorted(records, key=lambda r: -(r.get("grew_mb") or 0))[:5]
    worst_time = sorted(records, key=lambda r: -r.get("seconds", 0))[:5]
    keys = ("i", "case", "outcome", "grew_mb", "seconds", "cpu_seconds")
    return {"inputs": len(records), **counts,
            "max_growth_mb": max(grew) if grew else None,
            "over_rss_limit": sum(g > RSS_LIMIT_MB for g in grew),
            "max_seconds": max(secs) if secs else None,
            "over_time_limit": sum(s > TIME_LIMIT_S for s in secs),
            "max_cpu_seconds": max(cpu) if cpu else None,
            "over_time_limit_cpu": sum(s > TIME_LIMIT_S for s in cpu),
            "worst_memory": [{k: r.get(k) for k in keys} for r in worst_mem],
            "worst_time": [{k: r.get(k) for k in keys} for r in worst_time],
            "uncaught_examples": [r for r in records if r["outcome"] in ("uncaught", "crash")][:10]}


# ------------------------------------------------------------------ kill run
def _loads(d: Path) -> bool:
    import edgeinfer

    try:
        edgeinfer.load(d, provider="cpu").close()
        return True
    except Exception:  # noqa: BLE001 - anything that does not load
        return False


def _complete(d: Path, precisions: set[str]) -> bool:
    from edgeinfer.runtime.artifact import Artifact

    try:
        a = Artifact(d)
        for p in a.precisions():
            a.path(p)
        return set(a.precisions()) >= precisions
    except Exception:  # noqa: BLE001
        return False


def _temp_leftovers(tmpdir: Path) -> list[str]:
    """Temporary files of the quantizer left in $TMPDIR (ONNX Runtime's ``ort.quant.*`` dirs,
    model copies); a library's persistent files there (OpenVINO telemetry's ``.ses``) are not."""
    return sorted(p.name for p in tmpdir.iterdir()
                  if p.name.startswith(("ort.quant", "tmp")) or p.suffix in (".onnx", ".data", ".npy"))


def kill_run(n: int, seed: int, workdir: Path, *, model: str = "simple_cnn", progress=print) -> dict:
    """Export / quantize subprocesses killed with SIGKILL at random moments."""

    r = random.Random(f"kills:{seed}")
    calib = workdir / "calib"
    calib.mkdir(parents=True, exist_ok=True)
    for k in range(12):
        base_image(random.Random(k)).resize((48, 40)).save(calib / f"c{k}.png")
    root = workdir / "kill"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    out = root / "art"
    tmpdir = workdir / "tmpdir"  # the children's $TMPDIR: must stay empty
    tmpdir.mkdir(exist_ok=True)
    exe = str(Path(sys.executable).with_name("edgeinfer"))
    env = {**os.environ, "TMPDIR": str(tmpdir), "EDGEINFER_CACHE": str(workdir / "cache")}
    export = [exe, "export", "--model", model, "--weights", "random", "--exporter", "torchscript",
              "--int8", "--fp16", "--calib", str(calib), "--out", str(out), "--force", "--json"]
    quantize = [exe, "quantize", str(out), "--int8", "--fp16", "--calib", str(calib), "--json"]

    def timed(cmd) -> float:
        t0 = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {p.stderr[-2000:]}")
        return time.perf_counter() - t0

    t_export = timed(export)
    t_quant = timed(quantize)
    progress(f"full export {t_export:.1f} s, quantize {t_quant:.1f} s")
    runs = []
    k = 0
    # until n runs were really killed while running (a kill after the run ended proves nothing)
    while sum(not x["finished_before_kill"] for x in runs) < n and k < 3 * n:
        what = "quantize" if k % 4 == 3 else "export"
        if what == "export" and k % 2 == 0:
            shutil.rmtree(out, ignore_errors=True)  # half the exports go to a fresh target
        if what == "quantize" and not _complete(out, {"fp32"}):
            timed(export)
        cmd = quantize if what == "quantize" else export
        delay = r.uniform(0.1, 0.95 * (t_quant if what == "quantize" else t_export))
        before = _complete(out, {"fp32"})
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            p.wait(timeout=delay)
            finished = True
        except subprocess.TimeoutExpired:
            p.send_signal(signal.SIGKILL)
            p.wait()
            finished = False
        siblings = [d for d in root.iterdir() if d != out]
        loadable = [d.name for d in siblings if d.is_dir() and _loads(d)]
        out_state = "absent" if not out.exists() else \
            ("complete" if _complete(out, {"fp32", "int8", "fp16"}) else
             "fp32-complete" if _complete(out, {"fp32"}) else "not loadable")
        # ok: nothing next to --out loads; --out is absent, or complete (export), or the
        # artifact it was before the kill (quantize adds files one atomic step at a time)
        ok = not loadable and out_state != "not loadable" and \
            (what == "quantize" and before or out_state in ("absent", "complete") or
             (what == "export" and out_state == "fp32-complete" and before))
        runs.append({"run": k, "command": what, "killed_after_s": round(delay, 2),
                     "finished_before_kill": finished, "left_next_to_out": [d.name for d in siblings],
                     "loadable_leftovers": loadable, "out": out_state,
                     "tmpdir_files": _temp_leftovers(tmpdir), "ok": ok})
        progress(f"run {k + 1} ({sum(not x['finished_before_kill'] for x in runs)}/{n} killed): "
                 f"{what} after {delay:.1f} s{' (had finished)' if finished else ''}: out "
                 f"{out_state}, {len(siblings)} leftover(s), {len(loadable)} loadable")
        k += 1
    # the following export and quantize succeed and leave nothing behind
    shutil.rmtree(out, ignore_errors=True)
    final_ok = True
    try:
        timed(export)
        timed([exe, "quantize", str(out), "--int8", "--calib", str(calib)])
    except RuntimeError as e:
        final_ok = False
        progress(str(e))
    left = sorted(d.name for d in root.iterdir() if d != out)
    stale_work = sorted(d.name for d in out.glob(".quantize-*"))
    return {"kills": n, "runs_started": len(runs), "model": model, "export_seconds": round(t_export, 1),
            "quantize_seconds": round(t_quant, 1),
            "killed_runs": sum(not x["finished_before_kill"] for x in runs),
            "loadable_leftovers": sum(len(x["loadable_leftovers"]) for x in runs),
            "bad_out_states": sum(not x["ok"] for x in runs),
            "tmpdir_files_max": max((len(x["tmpdir_files"]) for x in runs), default=0),
            "tmpdir_other_files": sorted(p.name for p in tmpdir.iterdir()
                                         if p.name not in _temp_leftovers(tmpdir)),
            "final_export_ok": final_ok and _complete(out, {"fp32", "int8", "fp16"}),
            "left_after_final_export": left, "stale_quantize_dirs_after_final": stale_work,
            "runs": runs}


# ------------------------------------------------------------------ report
def _machine() -> dict:
    import numpy as np
    import onnxruntime
    import PIL

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "pillow": PIL.__version__, "numpy": np.__version__, "onnxruntime": onnxruntime.__version__,
            "platform": platform.platform()}


def _run_line(sec: dict) -> list[str]:
    load, mach = sec["load_average"], sec["machine"]
    busy = max(load["start"][0], load["end"][0]) > 0.75 * (mach["cores"] or 1)
    return [f"Command: `{sec['command']}`", "",
            f"Machine: {mach['cpu']}, {mach['cores']} cores; Python {mach['python']}, Pillow "
            f"{mach['pillow']}, onnxruntime {mach['onnxruntime']}. Load average (1/5/15 min) at "
            f"start {load['start']}, at end {load['end']}"
            + (": a busy shared machine, so times are upper bounds; re-run on a quiet machine "
               "for timings." if busy else "."), ""]


def write_report(res: dict) -> None:
    """Write the sections run now; a section not re-run keeps its previous results."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "reliability.json"
    old = {}
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError:
            old = {}
    res = {**{k: v for k, v in old.items() if k in ("mutation", "extremes", "kill")}, **res}
    path.write_text(json.dumps(res, indent=2) + "\n")
    m = res.get("mutation")
    k = res.get("kill")
    lines = ["# Reliability under hostile input", "",
             "Made by `benchmarks/reliability.py` (issue 9). Limits per input: growth of the "
             f"process < {RSS_LIMIT_MB} MB, time < {TIME_LIMIT_S:g} s.", ""]
    if m:
        s = m["summary"]
        lines += ["## Mutated images through `Model.classify`", "", *_run_line(m),
                  f"{s['inputs']} inputs from seed {m['seed']} (each alone, tiny 224x224 CPU artifact).", "",
                  "| outcome | count |", "|---|---:|",
                  f"| ok | {s['ok']} |", f"| Failure (refused / undecodable, batch continues) | {s['failure']} |",
                  f"| uncaught exception | {s['uncaught']} |", f"| crash (worker died) | {s['crash']} |", "",
                  f"Largest growth of the process for one input (peak RSS over RSS before it): "
                  f"**{s['max_growth_mb']} MB** (limit {RSS_LIMIT_MB}; {s['over_rss_limit']} over). "
                  f"Slowest input: **{s['max_seconds']} s** wall clock ({s['over_time_limit']} over "
                  f"{TIME_LIMIT_S:g} s), **{s['max_cpu_seconds']} s** of CPU time "
                  f"({s['over_time_limit_cpu']} over). Run time {m['seconds']} s.", "",
                  "Most memory:", ""]
        lines += [f"- {w['case']}: {w['grew_mb']} MB, {w['seconds']} s ({w['cpu_seconds']} s CPU; "
                  f"{w['outcome']})" for w in s["worst_memory"]]
        lines += ["", "Slowest (wall clock):", ""]
        lines += [f"- {w['case']}: {w['seconds']} s ({w['cpu_seconds']} s CPU), {w['grew_mb']} MB "
                  f"({w['outcome']})" for w in s["worst_time"]]
        lines += ["", "Outcomes by kind of mutation:", "", "| kind | ok | Failure | uncaught | crash |",
                  "|---|---:|---:|---:|---:|"]
        for kind, c in sorted(m["by_kind"].items()):
            lines.append(f"| {kind} | {c['ok']} | {c['failure']} | {c['uncaught']} | {c['crash']} |")
        lines.append("")
    e = res.get("extremes")
    if e:
        lines += ["## Each extreme input alone in a fresh process", "", *_run_line(e),
                  "After one warm-up image, so the growth is the input's own (in the long run "
                  "above, memory freed by an earlier input is reused and hides part of it).", "",
                  "| input | bytes | outcome | grew MB | wall s | CPU s | why refused |",
                  "|---|---:|---|---:|---:|---:|---|"]
        for r in e["records"]:
            why = (r.get("error") or "").replace("|", "/")[:90]
            lines.append(f"| {r['case']} | {r.get('bytes', '')} | {r['outcome']} | {r.get('grew_mb')} | "
                         f"{r.get('seconds')} | {r.get('cpu_seconds')} | {why} |")
        lines.append("")
    if k:
        lines += ["## Exports and quantizations killed with SIGKILL", "", *_run_line(k),
                  f"Runs of `edgeinfer export --model {k['model']} --weights random --exporter "
                  f"torchscript --int8 --fp16 --force` (every other one to a fresh --out) and "
                  f"`edgeinfer quantize --int8 --fp16` (every fourth) sent SIGKILL at a random moment "
                  f"(uniform up to 0.95x the full run: export {k['export_seconds']} s, quantize "
                  f"{k['quantize_seconds']} s), until {k['kills']} were killed while running: "
                  f"{k.get('runs_started', k['kills'])} runs started, {k['killed_runs']} killed "
                  f"mid-run.", "",
                  f"- loadable leftovers next to --out: **{k['loadable_leftovers']}**",
                  f"- runs where --out was neither absent, the previous artifact nor a complete new one: "
                  f"**{k['bad_out_states']}**",
                  f"- quantization temp files left in the children's $TMPDIR (`ort.quant.*`, model "
                  f"copies): **{k['tmpdir_files_max']}** (other files there: "
                  f"{', '.join(k.get('tmpdir_other_files') or []) or 'none'})",
                  f"- the following export + quantize succeeded: **{k['final_export_ok']}**; left next "
                  f"to --out afterwards: {k['left_after_final_export'] or 'nothing'}; stale quantize "
                  f"work dirs: {k['stale_quantize_dirs_after_final'] or 'none'}", ""]
    (RESULTS / "reliability.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=10000, help="mutated inputs (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLed export/quantize runs (0: skip)")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--no-write", action="store_true", help="print, do not write results files")
    ap.add_argument("--extremes", action="store_true",
                    help="also measure each extreme-shape input alone in a fresh process")
    ap.add_argument("--rescore", default=None, metavar="RECORDS_JSONL",
                    help="rebuild the mutation section from a run's records (keeps its command "
                         "and load average)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--fresh-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--jsonl", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.fresh_worker:
        return _fresh_worker(args)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="edgeinfer-reliability-"))
    work.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python benchmarks/reliability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    res: dict = {}

    def section() -> dict:
        return {"command": command, "machine": _machine(),
                "load_average": {"start": [round(x, 2) for x in os.getloadavg()]}}

    if args.inputs:
        sec = section()
        t0 = time.perf_counter()
        recs = mutation_run(args.inputs, args.seed, work, progress=lambda s: print(s, flush=True))
        sec["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
        res["mutation"] = {**sec, "seed": args.seed, "seconds": round(time.perf_counter() - t0, 1),
                           "summary": summarize(recs), "by_kind": by_kind(recs)}
        print(json.dumps({k: v for k, v in res["mutation"]["summary"].items()
                          if not isinstance(v, list)}), flush=True)
    if args.rescore:
        recs = [json.loads(line) for line in Path(args.rescore).read_text().splitlines()]
        old = json.loads((RESULTS / "reliability.json").read_text())["mutation"]
        res["mutation"] = {**{k: old[k] for k in ("command", "machine", "load_average", "seed", "seconds")},
                           "summary": summarize(recs), "by_kind": by_kind(recs)}
    if args.extremes:
        sec = section()
        ex = extremes_fresh(work, progress=lambda s: print(s, flush=True))
        sec["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
        res["extremes"] = {**sec, "records": ex}
    if args.kills:
        sec = section()
        kr = kill_run(args.kills, args.seed, work, progress=lambda s: print(s, flush=True))
        sec["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
        res["kill"] = {**sec, **kr}
        print(json.dumps({k: v for k, v in kr.items() if k != "runs"}), flush=True)
    if not args.no_write:
        write_report(res)
        print(f"wrote {RESULTS / 'reliability.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
