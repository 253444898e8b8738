"""User data files never execute code: crafted pickles are refused with DatasetError (CIFAR-10
batches and metadata) or WeightsError (--weights state dicts); idx files cannot expand without
bound (issue 9)."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from edgeinfer.errors import DatasetError
from edgeinfer.evaluate import datasets

CIFAR = datasets.CIFAR10_CLASSES


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EvalPayload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def _good_batch(d: Path, n: int = 8, protocol: int = 2) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "test_batch", "wb") as f:
        pickle.dump({b"batch_label": b"testing batch 1 of 1",
                     b"data": np.random.default_rng(0).integers(0, 255, (n, 3072), dtype=np.uint8),
                     b"labels": [i % 10 for i in range(n)], b"filenames": [b"x.png"] * n}, f,
                    protocol=protocol)
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CIFAR], b"num_vis": 3072}, f,
                    protocol=protocol)
    return d


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_genuine_cifar10_batches_still_load(tmp_path, protocol):
    d = _good_batch(tmp_path / "cifar-10-batches-py", protocol=protocol)
    ds = datasets.load_labelled(d, CIFAR)
    assert len(ds) == 8 and ds.paths[0].shape == (32, 32, 3) and ds.targets[:3] == [0, 1, 2]


@pytest.mark.parametrize("payload", [_Payload, _EvalPayload])
@pytest.mark.parametrize("where", ["data", "labels", "meta", "top"])
def test_crafted_cifar10_pickle_runs_no_code(tmp_path, payload, where):
    marker = tmp_path / "PWNED"
    d = _good_batch(tmp_path / "cifar-10-batches-py")
    evil = payload(marker)
    if where == "meta":
        with open(d / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": evil}, f, protocol=2)
    else:
        obj = evil if where == "top" else {b"data": evil if where == "data" else np.zeros((1, 3072), np.uint8),
                                           b"labels": evil if where == "labels" else [0]}
        with open(d / "test_batch", "wb") as f:
            pickle.dump(obj, f, protocol=2)
    with pytest.raises(DatasetError, match="refusing to unpickle"):
        datasets.load_labelled(d, CIFAR)
    assert not marker.exists()
    # the same file given directly (not the folder)
    if where != "meta":
        with pytest.raises(DatasetError):
            datasets.load_labelled(d / "test_batch", CIFAR)
        assert not marker.exists()


@pytest.mark.parametrize("content", [
    b"", b"not a pickle at all", pickle.dumps([1, 2, 3]), pickle.dumps({b"data": b"xx", b"labels": [0]}),
    pickle.dumps({b"data": np.zeros((2, 3072), np.float64), b"labels": [0, 1]}),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 99]}),
    pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}),
    pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"labels": [0, 1]}),
])
def test_malformed_cifar10_batches_are_dataset_errors(tmp_path, content):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    (d / "test_batch").write_bytes(content)
    with pytest.raises(DatasetError):
        datasets.load_labelled(d, CIFAR)


def test_binary_cifar10_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    rng = np.random.default_rng(1)
    recs = np.concatenate([np.array([[3], [7]], np.uint8), rng.integers(0, 255, (2, 3072), dtype=np.uint8)], axis=1)
    (d / "test_batch.bin").write_bytes(recs.tobytes())
    (d / "batches.meta.txt").write_text("\n".join(CIFAR) + "\n")
    ds = datasets.load_labelled(d, CIFAR)
    assert ds.targets == [3, 7] and np.array_equal(ds.paths[0].transpose(2, 0, 1).reshape(-1), recs[0, 1:])
    (d / "test_batch.bin").write_bytes(recs.tobytes()[:-1])
    with pytest.raises(DatasetError, match="3073"):
        datasets.load_labelled(d, CIFAR)


def test_idx_gzip_bomb_reads_only_what_the_header_says(tmp_path):
    d = tmp_path / "fm"
    d.mkdir()
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:   # header: 2 x 28 x 28, then 50 MB
        f.write(bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (2, 28, 28)))
        f.write(b"\x00" * (50 << 20))
    with gzip.open(d / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (2).to_bytes(4, "big") + bytes([1, 2]))
    ds = datasets.load_labelled(d, datasets.FASHION_MNIST_CLASSES)
    assert len(ds) == 2
    with gzip.open(d / "t10k-images-idx3-ubyte.gz", "wb") as f:    # announces 64 GB
        f.write(bytes([0, 0, 8, 3]) + b"".join(v.to_bytes(4, "big") for v in (65536, 1024, 1024)))
    with pytest.raises(DatasetError, match="announces"):
        datasets.load_labelled(d, datasets.FASHION_MNIST_CLASSES)
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x01\x02"))
    with pytest.raises(DatasetError, match="magic"):
        datasets.load_labelled(d, datasets.FASHION_MNIST_CLASSES)


def test_crafted_weights_file_runs_no_code(tmp_path):
    """`--weights FILE`: torch.load(weights_only=True) refuses pickled callables."""
    torch = pytest.importorskip("torch")
    from edgeinfer.errors import WeightsError
    from edgeinfer.export.torch_models import read_state_dict

    marker = tmp_path / "PWNED"
    p = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2), "evil": _Payload(marker)}, p)
    with pytest.raises(WeightsError):
        read_state_dict(p)
    assert not marker.exists()
