"""CLIP label-set embeddings computed in a child process while the export does everything else.

The 80-template ImageNet ensemble is ~80,000 prompts: most of a CLIP export's arithmetic. The
rest of the export (ONNX export of two towers, parity checks, INT8 calibration and guard, FP16)
is largely single-threaded Python, which leaves the other cores idle for minutes. So the export
starts this job right after building the model:

- the parent saves the text tower's parts and tokenizer (``torch.save``) into a private work
  directory inside the staging directory and starts ``python -m edgeinfer.export.label_job
  WORK`` at a lower CPU priority (``os.nice``), so the export's own steps keep their speed and
  the encoder fills the idle cores; the child dies with the parent (``PR_SET_PDEATHSIG``);
- the child tokenizes every label set's prompts with the model's own tokenizer, encodes them
  with ``SharedPrefixEncoder.encode_groups`` (exact: shared prefixes, no padding, the last
  layer at the end-of-text position only), ensembles them like open_clip's
  ``build_zero_shot_classifier`` and writes ``labels.<set>.npy`` plus the raw features of a
  sample of prompts (the check) into WORK, reporting progress as JSON lines on stdout;
- the parent forwards progress (prompts/s, ETA), and at the end (``wait``) checks the sample
  against the parity-checked ``text.fp32.onnx`` before the label sets go into the artifact.

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

PARTS_FILE = "text_parts.pt"
JOB_FILE = "job.json"
RESULT_FILE = "result.json"
CHILD_NICE = 5          # below the export's own steps, which are on the critical path
CHECK_LABELS = 8        # per label set: labels x templates encoded both ways as the check
CHECK_TEMPLATES = 4

Progress = Callable[[str], None] | None


def _text_parts(clip) -> dict:
    """Exactly what ``SharedPrefixEncoder`` reads of an open_clip ``CLIP`` (not the image tower:
    half the bytes)."""
    return {k: getattr(clip, k) for k in ("transformer", "token_embedding", "positional_embedding",
                                          "ln_final", "text_projection", "attn_mask",
                                          "text_pool_type")}


def _set_pdeathsig() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    try:
        os.nice(CHILD_NICE)
    except OSError:
        pass


class LabelSetJob:
    """A running child process computing label sets; ``wait()`` returns their embeddings."""

    def __init__(self, work: Path, proc: subprocess.Popen, total: int, sets: dict):
        self.work, self.proc, self.total, self.sets = work, proc, int(total), sets
        self.done = 0
        self.t0 = time.perf_counter()
        self.finished: float | None = None
        self.error: str | None = None
        self._stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self._err_reader = threading.Thread(target=self._read_err, daemon=True)
        self._err_reader.start()

    # -- start
    @classmethod
    def start(cls, clip, tokenizer, sets: dict[str, tuple[list[str], str, list[str]]],
              work: str | os.PathLike, *, threads: int | None = None) -> "LabelSetJob":
        """``sets``: name -> (labels, template set name, templates)."""
        import torch  # noqa: PLC0415

        work = Path(work)
        work.mkdir(parents=True, exist_ok=True)
        torch.save({"parts": _text_parts(clip), "tokenizer": tokenizer}, work / PARTS_FILE)
        job = {"sets": {n: {"labels": lab, "template_set": tn, "templates": tl}
                        for n, (lab, tn, tl) in sets.items()},
               "threads": int(threads or os.cpu_count() or 1),
               "check_labels": CHECK_LABELS, "check_templates": CHECK_TEMPLATES}
        (work / JOB_FILE).write_text(json.dumps(job), encoding="utf-8")
        total = sum(len(lab) * len(tl) for lab, _, tl in sets.values())
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "edgeinfer.export.label_job", str(work)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                preexec_fn=_set_pdeathsig if os.name == "posix" else None)
        return cls(work, proc, total, job["sets"])

    # -- progress
    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "done" in msg:
                self.done = int(msg["done"])
                self.total = int(msg.get("total", self.total))
                if self.done >= self.total and self.finished is None:
                    self.finished = time.perf_counter()
            if "error" in msg:
                self.error = str(msg["error"])

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())
            del self._stderr[:-40]

    def status(self) -> str:
        from ..runtime.zero_shot import _duration  # noqa: PLC0415

        if self.finished is not None:
            return (f"label sets in the background: all {self.total:,} prompts done in "
                    f"{_duration(self.finished - self.t0)}")
        el = time.perf_counter() - self.t0
        rate = self.done / el if el > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        return (f"label sets in the background: {self.done:,}/{self.total:,} prompts "
                f"({rate:,.0f} prompts/s, ETA {_duration(eta)})")

    # -- end
    def cancel(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(timeout=5)
        self._err_reader.join(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()

    def wait(self, progress: Progress = None, *, every_s: float = 10.0) -> dict[str, dict]:
        """Block until the child ends; -> {name: {"embeddings", "check_ids", "check_features",
        "seconds", "engine"}}. Raises ExportError when it failed."""
        last = 0.0
        while self.proc.poll() is None:
            now = time.perf_counter()
            if progress is not None and now - last >= every_s:
                progress(self.status())
                last = now
            time.sleep(0.2)
        self._reader.join(timeout=5)
        self._err_reader.join(timeout=5)
        rc = self.proc.returncode
        result = self.work / RESULT_FILE
        if rc != 0 or not result.is_file():
            how = (f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}")
            tail = "\n".join(self._stderr[-12:])
            raise ExportError(f"the label-set encoder process {how}"
                              + (f": {self.error}" if self.error else "")
                              + (f"\n{tail}" if tail else ""))
        info = json.loads(result.read_text(encoding="utf-8"))
        out = {}
        for name, rec in info["sets"].items():
            with open(self.work / rec["file"], "rb") as f:
                emb = np.load(f, allow_pickle=False)
            with open(self.work / rec["check_ids"], "rb") as f:
                cids = np.load(f, allow_pickle=False)
            with open(self.work / rec["check_features"], "rb") as f:
                cfeat = np.load(f, allow_pickle=False)
            out[name] = {"embeddings": emb, "check_ids": cids, "check_features": cfeat,
                         "seconds": rec["seconds"], "engine": info["engine"]}
        return out


# ------------------------------------------------------------------ the child
def _emit(**msg: Any) -> None:
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def _child(work: Path) -> int:
    import torch  # noqa: PLC0415

    from ..runtime.zero_shot import ensemble  # noqa: PLC0415
    from .clip import SharedPrefixEncoder  # noqa: PLC0415

    job = json.loads((work / JOB_FILE).read_text(encoding="utf-8"))
    torch.set_num_threads(int(job["threads"]))
    # our own file, written by the parent a moment ago into its private staging directory
    bundle = torch.load(work / PARTS_FILE, weights_only=False)
    (work / PARTS_FILE).unlink()
    parts, tok = bundle["parts"], bundle["tokenizer"]

    class _Parts:
        pass

    clip = _Parts()
    clip.__dict__.update(parts)
    enc = SharedPrefixEncoder(clip)
    groups_by_set = {}
    for name, spec in job["sets"].items():
        groups_by_set[name] = [np.asarray(tok([t.format(c) for c in spec["labels"]]), np.int64)
                               for t in spec["templates"]]
    total = sum(len(g) for gs in groups_by_set.values() for g in gs)

    class _Report:
        done, last = 0, 0.0

        def add(self, n: int) -> None:
            self.done += int(n)
            now = time.perf_counter()
            if now - self.last >= 1.0:
                self.last = now
                _emit(done=self.done, total=total)

    report = _Report()
    result: dict[str, Any] = {"engine": f"torch-cpu shared-prefix encoder ({job['threads']} threads, "
                                        f"in a background process)", "sets": {}}
    for name, groups in groups_by_set.items():
        t0 = time.perf_counter()
        feats = enc.encode_groups(groups, report=report)           # per template [n_labels, D]
        n_labels, n_t = len(groups[0]), len(groups)
        stacked = np.stack(feats, axis=1).reshape(n_labels * n_t, -1)
        emb = ensemble(stacked, n_labels, n_t).astype(np.float32)
        nl, nt = min(job["check_labels"], n_labels), min(job["check_templates"], n_t)
        cids = np.concatenate([g[:nl] for g in groups[:nt]])
        cfeat = np.concatenate([f[:nl] for f in feats[:nt]]).astype(np.float32)
        rec = {"file": f"labels.{name}.npy", "check_ids": f"check_ids.{name}.npy",
               "check_features": f"check_features.{name}.npy",
               "seconds": round(time.perf_counter() - t0, 2)}
        for key, arr in (("file", emb), ("check_ids", cids), ("check_features", cfeat)):
            with open(work / rec[key], "wb") as f:
                np.save(f, arr, allow_pickle=False)
        result["sets"][name] = rec
    _emit(done=report.done, total=total)
    tmp = work / (RESULT_FILE + ".tmp")
    tmp.write_text(json.dumps(result), encoding="utf-8")
    os.replace(tmp, work / RESULT_FILE)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        return _child(Path(argv[0]))
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises ExportError
        _emit(error=f"{type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    sys.exit(main())
