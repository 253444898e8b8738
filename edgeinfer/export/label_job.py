"""CLIP label-set embeddings computed in a child process while the export does everything else.

The 80-template ImageNet ensemble is ~80,000 prompts: most of a CLIP export's arithmetic. The
rest of the export (ONNX export of two towers, parity checks, INT8 calibration and guard, FP16)
is largely single-threaded Python, which leaves the other cores idle for minutes. So the export
starts this job right after building the model:

- the parent saves the text tower's parts and tokenizer (``torch.save``) into a private work
  directory inside the staging directory and starts one ``python -m edgeinfer.export.label_job
  WORK K`` per core, each with a share of the (label set, template) groups and one thread; each
  lowers its own CPU priority (``os.nice``), so the export's own steps keep their speed and the
  encoders fill the idle cores, and dies with the parent (``PR_SET_PDEATHSIG``);
- a child tokenizes its templates' prompts with the model's own tokenizer, encodes them with
  ``SharedPrefixEncoder.encode_groups`` (exact: shared prefixes, no padding, the last layer at
  the end-of-text position only) and writes their raw features plus those of a sample of
  prompts (the check) into WORK, reporting progress as JSON lines on stdout;
- the parent forwards progress (prompts/s, ETA); at the end (``wait``) it ensembles the
  features like open_clip's ``build_zero_shot_classifier`` and checks the sample against the
  parity-checked ``text.fp32.onnx`` before the label sets go into the artifact.

Nothing the child writes is part of the artifact until the parent has checked it; a failed or
killed child is an ``ExportError`` naming what happened (its stderr tail), and WORK goes with the
staging directory.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import ExportError
from .clip import CHECK_LABELS, CHECK_TEMPLATES, SharedPrefixEncoder

PARTS_FILE = "text_parts.pt"
CHILD_NICE = 5          # below the export's own steps, which are on the critical path

Progress = Callable[[str], None] | None


def _text_parts(clip) -> dict:
    """Exactly what ``SharedPrefixEncoder`` reads of an open_clip ``CLIP`` (not the image tower:
    half the bytes)."""
    return {k: getattr(clip, k) for k in ("transformer", "token_embedding", "positional_embedding",
                                          "ln_final", "text_projection")}


def _tie_to_parent(parent_pid: int) -> None:
    """In the child, first thing: die with the parent (Linux ``PR_SET_PDEATHSIG``; done here,
    not in a ``preexec_fn``, which is unsafe in a parent with threads), exit if it is already
    gone, and step below the export's own steps in CPU priority."""
    try:
        import ctypes  # noqa: PLC0415

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        sys.exit(1)
    try:
        os.nice(CHILD_NICE)
    except OSError:
        pass


class _Worker:
    """One child process and the threads reading its pipes."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.done = 0
        self.error: str | None = None
        self.stderr: list[str] = []
        self.threads = [threading.Thread(target=self._read, daemon=True),
                        threading.Thread(target=self._read_err, daemon=True)]
        for t in self.threads:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "done" in msg:
                self.done = int(msg["done"])
            if "error" in msg:
                self.error = str(msg["error"])

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())
            del self.stderr[:-40]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for t in self.threads:
            t.join(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


def _split(costs: list[tuple[tuple[str, int], int]], n: int) -> list[list[tuple[str, int]]]:
    """(item, cost) -> n lists of items with about equal total cost (largest first, each to the
    least loaded list)."""
    bins: list[list[tuple[str, int]]] = [[] for _ in range(n)]
    load = [0] * n
    for item, cost in sorted(costs, key=lambda c: -c[1]):
        i = load.index(min(load))
        bins[i].append(item)
        load[i] += cost
    return [b for b in bins if b]


class LabelSetJob:
    """Child processes computing label sets; ``wait()`` returns their embeddings.

    One single-threaded process per core, each with a share of the (label set, template)
    groups: while the export's own steps run they take what those leave idle, and afterwards
    every core. Processes rather than threads because a fork-join matrix product with a thread
    per core stalls whenever one of its threads waits for a busy core (measured here: one torch
    thread 61 GFLOP/s, two threads 105 together, against ~120 for two separate processes)."""

    def __init__(self, work: Path, workers: list[_Worker], total: int, sets: dict):
        self.work, self.workers, self.total, self.sets = work, workers, int(total), sets
        self.t0 = time.perf_counter()
        self.finished: float | None = None
        self.timing: dict = {}

    @property
    def done(self) -> int:
        return sum(w.done for w in self.workers)

    # -- start
    @classmethod
    def start(cls, clip, tokenizer, sets: dict[str, tuple[list[str], str, list[str]]],
              work: str | os.PathLike, *, processes: int | None = None) -> "LabelSetJob":
        """``sets``: name -> (labels, template set name, templates)."""
        import torch  # noqa: PLC0415

        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        torch.save({"parts": _text_parts(clip), "tokenizer": tokenizer}, work / PARTS_FILE)
        spec = {n: {"labels": lab, "template_set": tn, "templates": tl}
                for n, (lab, tn, tl) in sets.items()}
        # cost of a template ~ its prompts' characters (token positions follow them)
        costs = [((n, i), sum(len(t) + len(c) for c in lab))
                 for n, (lab, _, tl) in sets.items() for i, t in enumerate(tl)]
        n_proc = max(1, min(int(processes or os.cpu_count() or 1), len(costs)))
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1"}
        workers = []
        for k, items in enumerate(_split(costs, n_proc)):
            job = {"sets": spec, "items": items, "parent_pid": os.getpid(), "worker": k,
                   "check_labels": CHECK_LABELS, "check_templates": CHECK_TEMPLATES}
            (work / f"job.{k}.json").write_text(json.dumps(job), encoding="utf-8")
            proc = subprocess.Popen([sys.executable, "-m", "edgeinfer.export.label_job",
                                     str(work), str(k)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
            workers.append(_Worker(proc))
        total = sum(len(lab) * len(tl) for lab, _, tl in sets.values())
        return cls(work, workers, total, spec)

    def status(self) -> str:
        from ..runtime.zero_shot import _duration  # noqa: PLC0415

        done = self.done
        if done >= self.total and self.finished is None:
            self.finished = time.perf_counter()
        if self.finished is not None:
            return (f"label sets in the background: all {self.total:,} prompts done in "
                    f"{_duration(self.finished - self.t0)}")
        el = time.perf_counter() - self.t0
        rate = done / el if el > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        return (f"label sets in the background: {done:,}/{self.total:,} prompts "
                f"({rate:,.0f} prompts/s, ETA {_duration(eta)})")

    # -- end
    def cancel(self) -> None:
        for w in self.workers:
            w.close()

    def wait(self, progress: Progress = None, *, every_s: float = 10.0) -> dict[str, dict]:
        """Block until every child ends; -> {name: {"embeddings", "check_ids",
        "check_features", "seconds", "engine"}}. Raises ExportError when one failed (the
        others are stopped)."""
        from ..runtime.zero_shot import ensemble  # noqa: PLC0415

        last = 0.0
        while any(w.proc.poll() is None for w in self.workers):
            failed = [w for w in self.workers if w.proc.poll() not in (None, 0)]
            if failed:
                break
            now = time.perf_counter()
            if progress is not None and now - last >= every_s:
                progress(self.status())
                last = now
            time.sleep(0.2)
        self.status()
        results = []
        # a failed process first: the others may still be running when one failed
        order = sorted(range(len(self.workers)),
                       key=lambda k: self.workers[k].proc.poll() in (None, 0))
        for k in order:
            w = self.workers[k]
            rc = w.proc.poll()
            result = self.work / f"result.{k}.json"
            if rc != 0 or not result.is_file():
                self.cancel()
                how = ("is still running" if rc is None else
                       f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}")
                tail = "\n".join(w.stderr[-12:])
                raise ExportError(f"the label-set encoder process {how}"
                                  + (f": {w.error}" if w.error else "")
                                  + (f"\n{tail}" if tail else ""))
            results.append(json.loads(result.read_text(encoding="utf-8")))
        results = [r for _, r in sorted(zip(order, results))]
        self.cancel()
        feats: dict[str, dict[int, np.ndarray]] = {n: {} for n in self.sets}
        checks: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]] = {n: {} for n in self.sets}
        for r in results:
            for name, i, f, cid, cf in r["groups"]:
                with open(self.work / f, "rb") as fh:
                    feats[name][i] = np.load(fh, allow_pickle=False)
                if cid is not None:
                    with open(self.work / cid, "rb") as fh:
                        ids = np.load(fh, allow_pickle=False)
                    with open(self.work / cf, "rb") as fh:
                        checks[name][i] = (ids, np.load(fh, allow_pickle=False))
        self.timing = {"processes": len(self.workers),
                       "per_process": [r["timing"] for r in results],
                       "seconds": round(time.perf_counter() - self.t0, 2)}
        out = {}
        for name, spec in self.sets.items():
            n_l, n_t = len(spec["labels"]), len(spec["templates"])
            stacked = np.stack([feats[name][i] for i in range(n_t)], axis=1)  # label-major
            emb = ensemble(stacked.reshape(n_l * n_t, -1), n_l, n_t).astype(np.float32)
            cks = [checks[name][i] for i in sorted(checks[name])]
            out[name] = {"embeddings": emb,
                         "check_ids": np.concatenate([c[0] for c in cks]),
                         "check_features": np.concatenate([c[1] for c in cks]),
                         "seconds": self.timing["seconds"], "engine": results[0]["engine"]}
        return out


# ------------------------------------------------------------------ the child
def _emit(**msg: Any) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _child(work: Path, k: int) -> int:
    t_start = time.perf_counter()
    job = json.loads((work / f"job.{k}.json").read_text(encoding="utf-8"))
    _tie_to_parent(int(job["parent_pid"]))
    import torch  # noqa: PLC0415 - after the tie: importing torch takes seconds

    torch.set_num_threads(1)
    # our own file, written by the parent a moment ago into its private staging directory
    bundle = torch.load(work / PARTS_FILE, weights_only=False)
    parts, tok = bundle["parts"], bundle["tokenizer"]

    class _Parts:
        pass

    clip = _Parts()
    clip.__dict__.update(parts)
    enc = SharedPrefixEncoder(clip)
    timing = {"start_seconds": round(time.perf_counter() - t_start, 2)}
    t0 = time.perf_counter()
    items = [(name, int(i)) for name, i in job["items"]]
    groups = []
    for name, i in items:
        spec = job["sets"][name]
        t = spec["templates"][i]
        groups.append(np.asarray(tok([t.format(c) for c in spec["labels"]]), np.int64))
    timing["tokenize_seconds"] = round(time.perf_counter() - t0, 2)

    class _Report:
        done, last = 0, 0.0

        def add(self, n: int) -> None:
            self.done += int(n)
            now = time.perf_counter()
            if now - self.last >= 1.0:
                self.last = now
                _emit(done=self.done)

    report = _Report()
    t0 = time.perf_counter()
    feats = enc.encode_groups(groups, report=report)
    timing["encode_seconds"] = round(time.perf_counter() - t0, 2)
    out = []
    for (name, i), ids, f in zip(items, groups, feats):
        fname = f"feat.{name}.{i}.npy"
        with open(work / fname, "wb") as fh:
            np.save(fh, f.astype(np.float32), allow_pickle=False)
        cid = cf = None
        if i < job["check_templates"]:
            nl = job["check_labels"]
            cid, cf = f"check_ids.{name}.{i}.npy", f"check_features.{name}.{i}.npy"
            for fn, arr in ((cid, ids[:nl]), (cf, f[:nl].astype(np.float32))):
                with open(work / fn, "wb") as fh:
                    np.save(fh, arr, allow_pickle=False)
        out.append([name, i, fname, cid, cf])
    _emit(done=report.done)
    timing["total_seconds"] = round(time.perf_counter() - t_start, 2)
    result = {"engine": "torch-cpu shared-prefix encoder (one single-threaded background "
                        "process per core)", "groups": out, "timing": timing}
    tmp = work / f"result.{k}.json.tmp"
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, work / f"result.{k}.json")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _child(Path(argv[0]), int(argv[1]))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises ExportError
        _emit(error=f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
