"""pytest-benchmark suites (not part of `make test`): ``pytest benchmarks/test_latency_suite.py``.

Micro-benchmarks of the pieces the photo workload is made of, on the tiny test artifact and, when
present, the real photos: preprocessing one photo, ``Model.infer`` on one batch, end-to-end
``classify``. Use ``--benchmark-compare`` across commits to catch regressions.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_tiny import make_tiny_artifact  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "photos"

pytest.importorskip("pytest_benchmark")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_artifact(tmp_path_factory.mktemp("tiny") / "a")


@pytest.fixture(scope="module")
def photo():
    ps = sorted(PHOTOS.glob("*.JPEG")) if PHOTOS.is_dir() else []
    if not ps:
        pytest.skip("photos absent")
    return ps[0]


@pytest.mark.parametrize("provider", ["cpu", "openvino"])
def test_infer_batch1(benchmark, tiny, provider):
    import edgeinfer

    try:
        m = edgeinfer.load(tiny, provider=provider, precision="fp32")
    except Exception as e:  # engine not installed here
        pytest.skip(str(e))
    x = np.zeros((1, 3, 32, 32), np.float32)
    benchmark(m.infer, x)
    m.close()


def test_preprocess_photo(benchmark, tiny, photo):
    import edgeinfer

    with edgeinfer.load(tiny, provider="cpu", precision="fp32") as m:
        benchmark(m.preprocess, [str(photo)])


def test_classify_photo(benchmark, tiny, photo):
    import edgeinfer

    with edgeinfer.load(tiny, provider="cpu", precision="fp32") as m:
        benchmark(m.classify, [str(photo)])
