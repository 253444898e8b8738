"""`edgeinfer index --engine ray`: the library scan on Ray Data gives what the local scan gives.

A local Ray instance (2 CPUs, loopback only) indexes real photos plus one corrupt file with a
tiny classifier and a tiny CLIP; the store must hold the same tags (identical) and embeddings
(cosine >= 0.9999) as a local scan, the corrupt photo recorded as failed, and a worker that dies
mid-job must not lose a photo.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'edgeinfer[ray]')")

from test_library_fixtures import classifier_artifact, clip_artifact  # noqa: E402

N_PHOTOS = 12


@pytest.fixture(scope="module")
def ray_local():
    from edgeinfer.library.ray_engine import ensure_ray

    ensure_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    base = tmp_path_factory.mktemp("ray_arts")
    return [classifier_artifact(base / "cls"), clip_artifact(base)]


@pytest.fixture
def photo_dir(tmp_path, photo_paths):
    d = tmp_path / "photos"
    d.mkdir()
    for p in photo_paths[:N_PHOTOS]:
        shutil.copy2(p, d / p.name)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    return d


def _scan(db: Path, folder: Path, arts, *, engine: str, **opts):
    from edgeinfer.library import LibraryModel, Store, run_scan

    models = [LibraryModel.from_artifact(a, provider="cpu", precision="fp32") for a in arts]
    try:
        with Store(db) as store:
            stats = run_scan(store, folder, models, batch_size=4, engine=engine,
                             engine_options=opts or None)
            return stats, _contents(store, models)
    finally:
        for m in models:
            m.close()


def _contents(store, models):
    photos = {r["path"]: dict(r) for r in store.query("SELECT id, path, sha256, error, width, height FROM photos")}
    tags = {}
    for r in store.query("SELECT p.path, t.model_sha256, t.rank, t.label, t.score FROM tags t "
                         "JOIN photos p ON p.id = t.photo_id ORDER BY p.path, t.model_sha256, t.rank"):
        tags.setdefault((r["path"], r["model_sha256"]), []).append((r["label"], round(r["score"], 5)))
    embs = {}
    for m in models:
        if m.kind == "classifier":
            continue
        vs = store.vectors(m.sha256)
        by_id = {int(i): v for i, v in zip(vs.ids, vs.matrix)}
        for path, row in photos.items():
            if row["id"] in by_id:
                embs[(path, m.sha256)] = by_id[row["id"]]
    return photos, tags, embs


def _assert_same(local, other):
    (p1, t1, e1), (p2, t2, e2) = local, other
    assert set(p1) == set(p2)
    for path in p1:
        assert p1[path]["sha256"] == p2[path]["sha256"]
        assert bool(p1[path]["error"]) == bool(p2[path]["error"]), path
    assert t1 == t2 and t1, "tags must be identical"
    assert set(e1) == set(e2) and e1
    cos = [float(np.dot(e1[k], e2[k]) / np.linalg.norm(e1[k]) / np.linalg.norm(e2[k])) for k in e1]
    assert min(cos) >= 0.9999


def test_ray_scan_matches_local_scan_and_is_incremental(tmp_path, photo_dir, arts, ray_local):
    s_local, local = _scan(tmp_path / "local.db", photo_dir, arts, engine="local")
    s_ray, on_ray = _scan(tmp_path / "ray.db", photo_dir, arts, engine="ray", workers=2)
    assert s_ray.total == s_local.total == N_PHOTOS + 1
    assert s_ray.done == N_PHOTOS + 1 and s_ray.failed == 1
    broken = [p for p, r in on_ray[0].items() if r["error"]]
    assert [Path(p).name for p in broken] == ["broken.jpg"]
    _assert_same(local, on_ray)
    # a later local scan of the Ray-built library finds nothing to do
    again, _ = _scan(tmp_path / "ray.db", photo_dir, arts, engine="local")
    assert again.total == 0 and again.skipped == N_PHOTOS + 1


def test_new_photos_only_reach_the_cluster(tmp_path, photo_dir, arts, ray_local, photo_paths):
    _scan(tmp_path / "ray.db", photo_dir, arts, engine="ray", workers=1)
    extra = photo_paths[N_PHOTOS]
    shutil.copy2(extra, photo_dir / extra.name)
    stats, (photos, _, _) = _scan(tmp_path / "ray.db", photo_dir, arts, engine="ray", workers=1)
    assert stats.total == 1 and stats.done == 1
    assert str((photo_dir / extra.name).resolve()) in photos


def test_a_worker_that_dies_loses_no_photo(tmp_path, photo_dir, arts, ray_local):
    from edgeinfer.library.ray_engine import Predictor

    marker = tmp_path / "died"

    class DiesOnSecondBatch(Predictor):   # defined here: Ray ships it by value to the workers
        calls = 0

        def __call__(self, batch):
            type(self).calls += 1
            if type(self).calls == 2 and not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)               # the worker process dies mid-job
            return super().__call__(batch)

    stats, on_ray = _scan(tmp_path / "ray.db", photo_dir, arts, engine="ray", workers=2,
                          predictor_cls=DiesOnSecondBatch)
    assert marker.exists(), "the worker did not die: the test proves nothing"
    assert stats.done == N_PHOTOS + 1
    photos = on_ray[0]
    assert len(photos) == N_PHOTOS + 1
    failed = sorted(Path(p).name for p, r in photos.items() if r["error"])
    assert failed == ["broken.jpg"], failed
    _, local = _scan(tmp_path / "local.db", photo_dir, arts, engine="local")
    _assert_same(local, on_ray)


def test_ship_artifacts_through_the_object_store(tmp_path, photo_dir, arts, ray_local):
    stats, on_ray = _scan(tmp_path / "ray.db", photo_dir, arts, engine="ray", workers=1, ship_artifacts=True)
    assert stats.done == N_PHOTOS + 1 and stats.failed == 1
    _, local = _scan(tmp_path / "local.db", photo_dir, arts, engine="local")
    _assert_same(local, on_ray)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_index_against_a_ray_head_by_address(tmp_path, photo_dir, arts):
    """`ray start --head` in a subprocess, then `edgeinfer index --engine ray --ray-address`."""
    if ray.is_initialized():
        ray.shutdown()
    ray_bin = Path(sys.executable).with_name("ray")
    port = _free_port()
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    subprocess.run([str(ray_bin), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                    "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
                   check=True, env=env, capture_output=True, timeout=120)
    try:
        db = tmp_path / "lib.db"
        cmd = [sys.executable, "-m", "edgeinfer.cli.main", "index", str(photo_dir), "--library", str(db),
               "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", "--workers", "2",
               "--provider", "cpu", "--precision", "fp32", "--json"]
        for a in arts:
            cmd += ["--model", str(a)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert out.returncode == 0, out.stderr[-2000:]
        d = json.loads(out.stdout.strip().splitlines()[-1])
        assert d["done"] == N_PHOTOS + 1 and d["failed"] == 1
    finally:
        subprocess.run([str(ray_bin), "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_ray_options_need_the_ray_engine(tmp_path, photo_dir, arts):
    cmd = [sys.executable, "-m", "edgeinfer.cli.main", "index", str(photo_dir), "--library",
           str(tmp_path / "x.db"), "--model", str(arts[0]), "--workers", "2"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--engine ray" in out.stderr
