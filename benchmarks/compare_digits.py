#!/usr/bin/env python
"""`edgeinfer compare` on real data that ships with scikit-learn: the handwritten digits
(1797 8x8 greyscale images, 10 classes).

1. Split the digits 70/30 (stratified, seed 0). The 540 held-out images are written as an
   ImageFolder (``digits_test/<digit>/<i>.png``) and as a CSV pixel table
   (``digits_test.csv``: ``label,pixel1..pixel64``); 200 training images as INT8 calibration set.
2. Train ``simple_cnn`` (32 px) on the 1257 training images with a plain PyTorch loop, on inputs
   made by edgeinfer's own runtime preprocessing (so training and inference see the same
   pixels); save ``weights.pt`` + ``labels.txt``; ``edgeinfer export --weights FILE --int8
   --calib DIR`` (FP32 + INT8 files).
3. Export ``resnet50`` and ``vgg16`` with random weights (no pretrained weights are reachable
   here): their 1000 ImageNet classes do not cover the digits, so ``compare`` reports them as
   not covering the data set and measures only their costs (time, size, memory) — the
   "custom CNN vs VGG16 vs ResNet50" cost comparison.
4. ``edgeinfer compare`` on the ImageFolder (simple_cnn@fp32, simple_cnn@int8, resnet50, vgg16)
   and on the CSV table (simple_cnn@fp32, @int8). Results:
   ``benchmarks/results/compare_digits_{imagefolder,csv}/`` and a summary
   ``benchmarks/results/compare_digits.{md,json}`` with the commands and the load average.

    .venv/bin/python benchmarks/compare_digits.py [--work /tmp/edgeinfer-digits] [--n 300]

Needs the export and bench extras (torch, scikit-learn, matplotlib). Re-runnable: existing
artifacts in --work are reused unless --fresh.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
EDGEINFER = [sys.executable, "-m", "edgeinfer.cli.main"]


def write_data(work: Path) -> tuple[np.ndarray, np.ndarray]:
    """The held-out split as an ImageFolder and a CSV table; returns the training split."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)        # 0..16 -> 0..255
    xtr, xte, ytr, yte = train_test_split(x, d.target, test_size=0.3, random_state=0,
                                          stratify=d.target)
    folder = work / "digits_test"
    if folder.exists():
        shutil.rmtree(folder)
    for i, (img, y) in enumerate(zip(xte, yte)):
        (folder / str(y)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(folder / str(y) / f"{i:04d}.png")
    calib = work / "digits_calib"
    calib.mkdir(exist_ok=True)
    for i, img in enumerate(xtr[:200]):
        Image.fromarray(img, "L").convert("RGB").save(calib / f"{i:04d}.png")
    with open(work / "digits_test.csv", "w") as f:
        f.write("label," + ",".join(f"pixel{j + 1}" for j in range(64)) + "\n")
        for img, y in zip(xte, yte):
            f.write(f"{y}," + ",".join(str(int(v)) for v in img.ravel()) + "\n")
    return xtr, ytr


def train_simple_cnn(name: str, xtr, ytr, out: Path, *, epochs: int, seed: int = 0) -> dict:
    """Plain PyTorch training of edgeinfer's simple_cnn on runtime-preprocessed digits."""
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    from edgeinfer.export.custom import simple_cnn
    from edgeinfer.export.recipes import get_recipe
    from edgeinfer.runtime.preprocess import preprocess_batch

    spec = get_recipe(name).preprocess_dict()
    x, errors = preprocess_batch([np.repeat(i[:, :, None], 3, axis=2) for i in xtr], spec, workers=1)
    assert not any(errors)
    torch.manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(np.asarray(ytr, np.int64))
    model = simple_cnn(10)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=4e-3, total_steps=epochs * ((len(xt) + 63) // 64))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    losses = []
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=g)
        tot = 0.0
        for s in range(0, len(xt), 64):
            idx = perm[s:s + 64]
            xb = xt[idx]
            # small random shifts: the digits are tiny and centred
            dx, dy = (int(v) for v in torch.randint(-2, 3, (2,), generator=g))
            xb = torch.roll(xb, shifts=(dy, dx), dims=(2, 3))
            loss = torch.nn.functional.cross_entropy(model(xb), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            tot += loss.item() * len(idx)
        losses.append(tot / len(xt))
        print(f"  {name} epoch {ep + 1}/{epochs}: loss {losses[-1]:.4f}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "weights.pt")
    (out / "labels.txt").write_text("".join(f"{i}\n" for i in range(10)))
    return {"model": name, "epochs": epochs, "train_images": int(len(xt)),
            "train_seconds": round(time.perf_counter() - t0, 1), "loss_per_epoch": losses}


def run(cmd: list[str]) -> None:
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="/tmp/edgeinfer-digits", help="data, weights and artifacts")
    ap.add_argument("--n", type=int, default=300, help="images per comparison (default 300 of 540)")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--no-big", action="store_true", help="leave out resnet50 and vgg16")
    ap.add_argument("--fresh", action="store_true", help="retrain and re-export everything")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    arts = work / "artifacts"
    t_start = time.time()
    xtr, ytr = write_data(work)
    training = []
    name = "simple_cnn"
    art = arts / name
    if not art.exists() or args.fresh:
        training.append(train_simple_cnn(name, xtr, ytr, work / "weights" / name, epochs=args.epochs))
        run(EDGEINFER + ["export", "--model", name, "--weights", str(work / "weights" / name / "weights.pt"),
                         "--int8", "--calib", str(work / "digits_calib"), "--out", str(art)])
    big = [] if args.no_big else ["resnet50", "vgg16"]
    for name in big:
        if not (arts / name).exists() or args.fresh:
            run(EDGEINFER + ["export", "--model", name, "--weights", "random", "--out", str(arts / name)])
    runs = {}
    cnn = ["simple_cnn@fp32", "simple_cnn@int8"]
    for kind, data, models in (("imagefolder", work / "digits_test", [*cnn, *big]),
                               ("csv", work / "digits_test.csv", cnn)):
        out = RESULTS / f"compare_digits_{kind}"
        cmd = ["edgeinfer", "compare", *[str(arts / m) for m in models], "--data", str(data),
               "--n", str(args.n), "--seed", "0", "--out", str(out)]
        run(EDGEINFER + cmd[1:])
        runs[kind] = {"command": " ".join(shlex.quote(c) for c in cmd),
                      "results": json.loads((out / "results.json").read_text())}
    load = list(os.getloadavg())
    summary = {"script": "benchmarks/compare_digits.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
               "loadavg_at_end": load, "wall_s": round(time.time() - t_start, 1), "training": training,
               "runs": {k: {"command": v["command"], "models": [
                   {k2: m.get(k2) for k2 in ("name", "status", "weights", "provider", "precision",
                                             "top1", "top3", "macro_f1", "mcc", "roc_auc",
                                             "time_mean_ms", "time_p90_ms", "params", "macs",
                                             "size_bytes", "peak_rss_mb", "reason")}
                   for m in v["results"]["models"]], "loadavg": v["results"]["loadavg"]}
                   for k, v in runs.items()}}
    (RESULTS / "compare_digits.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["# `edgeinfer compare` on scikit-learn's digits", "",
             f"Produced by `{summary['script'].strip()}` (re-runnable; see its docstring). Machine: "
             f"{runs['imagefolder']['results']['machine']['cpu']['model']}, "
             f"{runs['imagefolder']['results']['machine']['cpu']['usable_cores']} usable cores. "
             f"Load average (1/5/15 min) at the end: {' / '.join(f'{x:.2f}' for x in load)} — a "
             f"shared, busy machine: times are indicative, re-run on a quiet one to quote them.", "",
             "simple_cnn was trained here on the 1257-image training split (plain PyTorch loop in "
             "the script) and exported in FP32 and INT8 (calibrated on 200 training images); "
             "resnet50 and vgg16 have RANDOM weights and "
             "ImageNet's 1000 classes, so compare reports them as not covering the digits and "
             "measures only their costs.", ""]
    for kind, v in runs.items():
        lines += [f"## {kind}", "", f"`{v['command']}`", "",
                  "| model | weights | engine/precision | top-1 | top-3 | macro F1 | MCC | ROC AUC | "
                  "ms/image (mean / p90) | params | MACs | size MB | peak RSS MB |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

        def f(x, nd=3):
            return "—" if x is None else f"{x:.{nd}f}"

        for m in v["results"]["models"]:
            lines.append(
                f"| {m['name']} | {m.get('weights')} | {m.get('provider')}/{m.get('precision')} | "
                f"{f(m.get('top1'))} | {f(m.get('top3'))} | {f(m.get('macro_f1'))} | {f(m.get('mcc'))} | "
                f"{f(m.get('roc_auc'))} | {f(m.get('time_mean_ms'), 2)} / {f(m.get('time_p90_ms'), 2)} | "
                f"{(m.get('params') or 0) / 1e6:.2f} M | {(m.get('macs') or 0) / 1e9:.3f} G | "
                f"{(m.get('size_bytes') or 0) / 2**20:.1f} | {f(m.get('peak_rss_mb'), 0)} |")
        notes = [m for m in v["results"]["models"] if m.get("status") != "ok"]
        lines += [""] + [f"- {m['name']}: {m.get('reason')}" for m in notes] + \
                 ["", f"Report: `benchmarks/results/compare_digits_{kind}/report.html`", ""]
    (RESULTS / "compare_digits.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
