"""The training loop: plain PyTorch, seeded, CPU or CUDA. One ``fit`` call is one run (one split or
one fold): AdamW + cosine learning-rate decay + cross-entropy, per-epoch train/val loss and
accuracy, time per epoch, and the final validation metrics.

``head`` runs on cached features: the frozen backbone's output (the classifier's input) is computed
once for every image and the epochs only run the new classifier on it, which makes an epoch cost
about as much as a matrix multiply instead of a forward pass through the whole network.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .model import TrainModel, apply_strategy, set_train_mode


@dataclass
class FitResult:
    history: list[dict] = field(default_factory=list)   # one dict per epoch
    metrics: dict = field(default_factory=dict)         # final val metrics (empty without val)
    val_scores: np.ndarray | None = None                # softmax probabilities [N, C]
    seconds: float = 0.0
    feature_seconds: float = 0.0                        # head: time to compute the cache
    peak_memory_mb: float | None = None
    memory_kind: str = ""


def pick_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        from ..errors import ProviderUnavailableError

        raise ProviderUnavailableError("--device cuda: PyTorch sees no CUDA GPU here "
                                       "(torch.cuda.is_available() is False); use --device cpu")
    return device


def _peak_rss_mb() -> float | None:
    try:
        import resource
        import sys

        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return kb / (1 << 20) if sys.platform == "darwin" else kb / 1024
    except (ImportError, OSError):  # pragma: no cover - non-POSIX
        return None


def auc_ovr_macro(scores: np.ndarray, targets: np.ndarray) -> float | None:
    """Macro one-vs-rest ROC AUC over the classes with both positives and negatives (the
    Mann-Whitney statistic with average ranks for ties, as scikit-learn computes it)."""
    aucs = []
    for c in range(scores.shape[1]):
        pos = targets == c
        n_pos, n_neg = int(pos.sum()), int((~pos).sum())
        if n_pos == 0 or n_neg == 0:
            continue
        s = scores[:, c]
        order = np.argsort(s, kind="mergesort")
        ranks = np.empty(len(s), np.float64)
        sorted_s = s[order]
        # average ranks over ties
        i = 0
        while i < len(s):
            j = i
            while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
                j += 1
            ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
            i = j + 1
        aucs.append((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))
    return float(np.mean(aucs)) if aucs else None


def val_metrics(scores: np.ndarray, targets: np.ndarray, classes: list[str]) -> dict:
    """Accuracy (top-1/top-5), macro precision/recall/F1, MCC, macro AUC, confusion matrix."""
    from ..evaluate.metrics import classification_metrics

    m = classification_metrics(scores, targets, class_names=classes)
    m["accuracy"] = m["top1"]
    m["auc"] = auc_ovr_macro(scores, targets)
    return m


def _features(tm: TrainModel, x, device: str, batch_size: int):
    """The head's input for every image, with the frozen backbone in eval mode."""
    import torch

    captured: list = []
    hook = tm.head.register_forward_pre_hook(lambda _m, inp: captured.append(inp[0].detach().cpu()))
    tm.module.eval()
    try:
        with torch.inference_mode():
            for s in range(0, len(x), batch_size):
                tm.module(torch.from_numpy(x[s:s + batch_size]).to(device))
    finally:
        hook.remove()
    return torch.cat(captured)


def fit(tm: TrainModel, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray | None,
        y_val: np.ndarray | None, *, classes: list[str], strategy: str, unfreeze: int = 1,
        epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-4,
        seed: int = 0, device: str = "cpu", progress: bool = True, label: str = "") -> FitResult:
    """Train ``tm`` in place with ``strategy`` and return its history and final val metrics."""
    import torch
    import torch.nn.functional as F

    res = FitResult()
    apply_strategy(tm, strategy, unfreeze=unfreeze)
    tm.module.to(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # dropout masks

    cached = strategy == "head"
    if cached:
        t0 = time.perf_counter()
        f_train = _features(tm, x_train, device, max(batch_size, 128))
        f_val = _features(tm, x_val, device, max(batch_size, 128)) if x_val is not None else None
        res.feature_seconds = time.perf_counter() - t0
        forward = tm.head
        data_train, data_val = f_train, f_val
    else:
        forward = tm.module
        data_train = torch.from_numpy(x_train)
        data_val = torch.from_numpy(x_val) if x_val is not None else None
    yt = torch.from_numpy(np.asarray(y_train, np.int64))
    yv = torch.from_numpy(np.asarray(y_val, np.int64)) if y_val is not None else None

    params = [p for p in tm.module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(yt) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)

    def evaluate(data, y) -> tuple[float, float, np.ndarray]:
        forward.eval()
        outs = []
        with torch.inference_mode():
            for s in range(0, len(data), max(batch_size, 128)):
                outs.append(forward(data[s:s + max(batch_size, 128)].to(device)).float().cpu())
        logits = torch.cat(outs)
        loss = float(F.cross_entropy(logits, y))
        acc = float((logits.argmax(1) == y).float().mean())
        return loss, acc, torch.softmax(logits, 1).numpy()

    bar = _Bar(progress, epochs * steps_per_epoch, label)
    with bar:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            if cached:
                tm.head.train()
            else:
                set_train_mode(tm, strategy)
            perm = torch.randperm(len(yt), generator=gen)
            total, correct, seen = 0.0, 0, 0
            for s in range(0, len(perm), batch_size):
                idx = perm[s:s + batch_size]
                xb, yb = data_train[idx].to(device), yt[idx].to(device)
                logits = forward(xb)
                loss = F.cross_entropy(logits, yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += float(loss.detach()) * len(idx)
                correct += int((logits.argmax(1) == yb).sum())
                seen += len(idx)
                bar.advance(f"epoch {epoch}/{epochs} loss {total / seen:.4f}")
            row = {"epoch": epoch, "train_loss": total / seen, "train_acc": correct / seen,
                   "lr": float(sched.get_last_lr()[0])}
            if data_val is not None and len(yv):
                vl, va, _ = evaluate(data_val, yv)
                row.update(val_loss=vl, val_acc=va)
            row["seconds"] = time.perf_counter() - t0
            res.history.append(row)
            bar.epoch_done(row)
    if data_val is not None and len(yv):
        _, _, probs = evaluate(data_val, yv)
        res.val_scores = probs
        res.metrics = val_metrics(probs, yv.numpy(), classes)
    tm.module.eval()
    tm.module.to("cpu")
    res.seconds = time.perf_counter() - t_start
    if device == "cuda":
        res.peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
        res.memory_kind = "CUDA max_memory_allocated"
    else:
        res.peak_memory_mb = _peak_rss_mb()
        res.memory_kind = "process peak RSS (includes data loading and earlier runs)"
    return res


class _Bar:
    """A rich progress bar per epoch on stderr, plus a one-line summary when an epoch ends."""

    def __init__(self, on: bool, total: int, label: str):
        self.on, self.total, self.label = on, total, label
        self.progress: Any = None
        self.task = None

    def __enter__(self):
        if self.on:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.console = Console(stderr=True)
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                     TimeElapsedColumn(), console=self.console, transient=True)
            self.progress.__enter__()
            self.task = self.progress.add_task(self.label or "training", total=self.total)
        return self

    def advance(self, desc: str) -> None:
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=f"{self.label} {desc}".strip())

    def epoch_done(self, row: dict) -> None:
        if self.progress is not None:
            val = (f", val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%}"
                   if "val_loss" in row else "")
            self.progress.console.print(
                f"{self.label + ' ' if self.label else ''}epoch {row['epoch']}: train loss "
                f"{row['train_loss']:.4f} acc {row['train_acc']:.2%}{val} ({row['seconds']:.1f} s)")

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False
