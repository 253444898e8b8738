"""The library: SQLite store, incremental scan (add / change / touch / delete / swap an artifact),
failures, one transaction per batch, search, near-duplicates of real photos, torch-free import."""
from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from torch_blocked import run_without_torch

from test_library_fixtures import classifier_artifact, clip_artifact, near_copies, write_images

from edgeinfer.library import LibraryModel, Store, run_scan
from edgeinfer.library.scan import ScanError, list_photos, plan_scan, process_batch
from edgeinfer.library.search import duplicate_groups, top_k


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return clip_artifact(tmp_path_factory.getbasetemp())


@pytest.fixture
def models(tmp_path, clip_dir):
    ms = [LibraryModel.from_artifact(classifier_artifact(tmp_path / "cls"), provider="cpu"),
          LibraryModel.from_artifact(clip_dir, provider="cpu")]
    yield ms
    for m in ms:
        m.close()


def _counts(store):
    return {t: store.query(f"SELECT COUNT(*) AS n FROM {t}")[0]["n"]
            for t in ("photos", "tags", "embeddings", "photo_models")}


def test_scan_stores_tags_embeddings_and_failures(tmp_path, models):
    photos = tmp_path / "photos"
    write_images(photos, 6)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (photos / "empty.png").write_bytes(b"")
    (photos / "notes.txt").write_text("not a photo")
    with Store(tmp_path / "lib.db") as store:
        s = run_scan(store, photos, models, batch_size=4, top_k=3)
        assert (s.total, s.done, s.failed, s.skipped) == (8, 8, 2, 0)
        assert store.query("PRAGMA journal_mode")[0]["journal_mode"] == "wal"
        c = _counts(store)
        assert c == {"photos": 8, "tags": 6 * 3, "embeddings": 6, "photo_models": 12}
        bad = {Path(r["path"]).name: r["error"] for r in store.failures()}
        assert set(bad) == {"broken.jpg", "empty.png"} and all(bad.values())
        good = store.query("SELECT id FROM photos WHERE error IS NULL ORDER BY id")[0]["id"]
        rec = store.photo(good)
        cls, clip = models
        assert rec["width"] == 160 and rec["height"] == 120 and len(rec["sha256"]) == 64
        assert [t["model_sha256"] for t in rec["tags"]] == [cls.sha256]
        assert len(rec["tags"][0]["labels"]) == 3
        # the stored tags are what the runtime says for that file
        direct = cls.model.classify(rec["path"], top_k=3)
        assert [t["label"] for t in rec["tags"][0]["labels"]] == [lab for lab, _ in direct]
        v = store.embedding(good, clip.sha256)
        assert v.shape == (32,) and abs(float(np.linalg.norm(v)) - 1) < 1e-2
        np.testing.assert_allclose(v, clip.model.embed(rec["path"]), atol=2e-3)  # float16 blob


def test_rescan_add_change_touch_delete(tmp_path, models):
    photos = tmp_path / "photos"
    paths = write_images(photos, 6)
    with Store(tmp_path / "lib.db") as store:
        run_scan(store, photos, models, batch_size=4)
        before = {r["path"]: r for r in store.query("SELECT * FROM photos")}
        clip_sha = models[1].sha256
        cached = {k: store.vectors(k) for k in (clip_sha,)}  # read now: the re-scans update them
        assert len(store.signatures().ids) == 6
        # nothing changed: nothing is decoded or run
        s = run_scan(store, photos, models)
        assert (s.total, s.skipped) == (0, 6)
        # add one, change one's content, touch one (same bytes, new mtime), delete one
        write_images(photos, 1, start=50)
        from conftest import make_image
        make_image(99, size=(200, 100)).save(paths[1], quality=90)
        os.utime(paths[2], (time.time() + 100, time.time() + 100))
        paths[3].unlink()
        s = run_scan(store, photos, models)
        assert (s.total, s.done, s.skipped, s.deleted) == (2, 2, 4, 1)  # 6 - changed - deleted
        after = {r["path"]: r for r in store.query("SELECT * FROM photos")}
        assert str(paths[3]) not in after and len(after) == 6
        assert after[str(paths[1])]["sha256"] != before[str(paths[1])]["sha256"]
        assert after[str(paths[1])]["width"] == 200
        assert after[str(paths[2])]["mtime"] != before[str(paths[2])]["mtime"]
        assert after[str(paths[2])]["scanned_at"] == before[str(paths[2])]["scanned_at"]  # not re-run
        assert _counts(store)["photo_models"] == 12  # every photo has both models, no leftovers
        # the cached matrices were kept current (not re-read) and equal a fresh read
        with Store(tmp_path / "lib.db") as fresh:
            for got, want in ((store.vectors(clip_sha), fresh.vectors(clip_sha)),
                              (store.signatures(), fresh.signatures())):
                o1, o2 = np.argsort(got.ids), np.argsort(want.ids)
                assert got.ids[o1].tolist() == want.ids[o2].tolist() and len(want.ids) == 6
                np.testing.assert_array_equal(got.matrix[o1], want.matrix[o2])
        assert cached[clip_sha] is not store.vectors(clip_sha)
        assert store.query("SELECT COUNT(*) AS n FROM tags WHERE photo_id NOT IN (SELECT id FROM photos)")[0]["n"] == 0


def test_swapped_artifact_recomputes_only_that_model(tmp_path, models, clip_dir):
    photos = tmp_path / "photos"
    write_images(photos, 5)
    cls, clip = models
    with Store(tmp_path / "lib.db") as store:
        run_scan(store, photos, models)
        clip_rows = store.query("SELECT photo_id, vector FROM embeddings ORDER BY photo_id")
        old_tags = store.query("SELECT photo_id, label FROM tags WHERE rank = 0 ORDER BY photo_id")
        # a new version of the classifier artifact (same name, different weights -> new sha256)
        new_dir = classifier_artifact(tmp_path / "cls_v2", seed_offset=7)
        new_cls = LibraryModel.from_artifact(new_dir, provider="cpu")
        try:
            assert new_cls.sha256 != cls.sha256 and new_cls.name == cls.name
            plan = plan_scan(store, [photos], [new_cls, clip])
            assert len(plan.todo) == 5 and all(r.models == [new_cls.sha256] for r in plan.todo)
            s = run_scan(store, photos, [new_cls, clip])
            assert s.done == 5
            shas = {r["model_sha256"] for r in store.query("SELECT DISTINCT model_sha256 FROM tags")}
            assert shas == {new_cls.sha256}  # the old version's tags are gone
            assert {m["sha256"] for m in store.models()} == {new_cls.sha256, clip.sha256}
            assert store.query("SELECT photo_id, vector FROM embeddings ORDER BY photo_id") == clip_rows
            new_tags = store.query("SELECT photo_id, label FROM tags WHERE rank = 0 ORDER BY photo_id")
            assert len(new_tags) == len(old_tags) == 5
        finally:
            new_cls.close()


def test_one_transaction_per_batch(tmp_path, models, monkeypatch):
    """A batch that fails while being written leaves nothing of itself; earlier batches stay."""
    photos = tmp_path / "photos"
    write_images(photos, 6)
    calls = {"n": 0}
    with Store(tmp_path / "lib.db") as store:
        orig = store.write_results

        def flaky(results):
            calls["n"] += 1
            if calls["n"] == 2:
                # fail in the middle of the second batch's transaction
                results = list(results)
                results[1].outputs[models[1].sha256] = {"embedding": "not a vector"}
            return orig(results)

        monkeypatch.setattr(store, "write_results", flaky)
        with pytest.raises(ValueError):
            run_scan(store, photos, models, batch_size=3)
        assert _counts(store)["photos"] == 3 and _counts(store)["photo_models"] == 6
        monkeypatch.setattr(store, "write_results", orig)
        s = run_scan(store, photos, models, batch_size=3)  # the re-scan does the rest
        assert (s.done, s.skipped) == (3, 3) and _counts(store)["photo_models"] == 12


def test_killed_scan_leaves_a_consistent_store(tmp_path, clip_dir):
    """SIGKILL in the middle of a scan: the store opens, passes integrity_check, and every photo
    it holds has all its outputs (batches are atomic); a re-scan completes the rest."""
    photos = tmp_path / "photos"
    write_images(photos, 40, size=(64, 48))
    cls = classifier_artifact(tmp_path / "cls")
    lib = tmp_path / "lib.db"
    code = f"""
import time, edgeinfer.library.scan as sc
from edgeinfer.library import LibraryModel, Store, run_scan
orig = sc.infer_records
def slow(*a, **k):
    time.sleep(0.15)
    return orig(*a, **k)
sc.infer_records = slow
ms = [LibraryModel.from_artifact({str(cls)!r}, provider='cpu'), LibraryModel.from_artifact({str(clip_dir)!r}, provider='cpu')]
run_scan(Store({str(lib)!r}), {str(photos)!r}, ms, batch_size=2, progress=lambda s: print(s.done, flush=True))
"""
    env = {**os.environ, "EDGEINFER_CACHE": str(tmp_path / "c")}
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    seen = 0
    for line in p.stdout:
        seen = int(line)
        if seen >= 6:
            break
    p.kill()
    p.wait(30)
    assert 6 <= seen < 40
    db = sqlite3.connect(lib)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    with Store(lib) as store:
        n = _counts(store)["photos"]
        assert 6 <= n < 40
        incomplete = store.query("SELECT p.id FROM photos p LEFT JOIN photo_models m ON m.photo_id = p.id "
                                 "GROUP BY p.id HAVING COUNT(m.model_sha256) != 2")
        assert incomplete == []
        ms = [LibraryModel.from_artifact(cls, provider="cpu"), LibraryModel.from_artifact(clip_dir, provider="cpu")]
        s = run_scan(store, photos, ms)
        assert s.done == 40 - n and _counts(store)["photo_models"] == 80
        for m in ms:
            m.close()


def test_symlinks_out_of_the_root_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    write_images(outside, 2)
    root = tmp_path / "root"
    write_images(root, 1)
    (root / "link_dir").symlink_to(outside, target_is_directory=True)
    (root / "link.jpg").symlink_to(outside / "img000.jpg")
    listed = [Path(p).name for p, _, _ in list_photos(root)]
    assert listed == ["img000.jpg"]


def test_scan_rejects_a_missing_folder(tmp_path, models):
    with Store(tmp_path / "lib.db") as store:
        with pytest.raises(ScanError, match="not a folder"):
            run_scan(store, tmp_path / "nope", models)
        with pytest.raises(ScanError, match="unknown engine"):
            run_scan(store, tmp_path, models, engine="spark")


def test_process_batch_is_pure_and_decodes_once(tmp_path, models, monkeypatch):
    """The unit a distributed engine calls: no store, one decode per photo for all models."""
    from edgeinfer.library.scan import PhotoRecord
    import edgeinfer.runtime.preprocess as pp

    photos = write_images(tmp_path / "p", 3)
    recs = [PhotoRecord(str(p), p.stat().st_size, p.stat().st_mtime, models=[m.sha256 for m in models])
            for p in photos]
    calls = []
    real = pp.load_image

    def counting(src, **kw):
        calls.append(type(src).__name__)
        return real(src, **kw)

    monkeypatch.setattr(pp, "load_image", counting)
    out = process_batch(models, recs, decode_workers=0)
    assert len(out) == 3 and all(set(r.outputs) == {m.sha256 for m in models} for r in out)
    # 3 decodes of file bytes; the models then get the decoded PIL images (no re-decode)
    assert calls.count("bytes") == 3 and all(c in ("bytes", "JpegImageFile", "Image") for c in calls)


def test_exact_search_matches_brute_force(tmp_path):
    rng = np.random.default_rng(0)
    n, d = 3000, 64
    mat = rng.normal(size=(n, d)).astype(np.float32)
    mat /= np.linalg.norm(mat, axis=1, keepdims=True)
    with Store(tmp_path / "lib.db", embedding_dtype="float32") as store:
        store.register_model(sha256="m" * 64, name="m", kind="clip")
        with store.transaction() as db:
            db.executemany("INSERT INTO photos(id, path, size, mtime, scanned_at) VALUES (?, ?, 0, 0, 0)",
                           [(i + 1, f"/p/{i}.jpg") for i in range(n)])
        store.add_embeddings("m" * 64, list(range(1, n + 1)), mat)
        vs = store.vectors("m" * 64)
        q = mat[17] + 0.01 * rng.normal(size=d).astype(np.float32)
        hits = top_k(vs, q, 10)
        ref = np.argsort(-(mat @ q))[:10] + 1
        assert [h[0] for h in hits] == ref.tolist()
        assert hits[0][0] == 18 and all(a[1] >= b[1] for a, b in zip(hits, hits[1:]))
        assert 18 not in [h[0] for h in top_k(vs, q, 10, exclude={18})]
        assert vs is store.vectors("m" * 64)  # cached until the next write


@pytest.mark.photos
def test_duplicates_of_real_photos(tmp_path, photo_paths, models):
    """Re-encoded, half-size and 2%-cropped copies group with their original, which is kept
    (largest resolution); none of 30 distinct real photos is grouped with another."""
    lib = tmp_path / "photos"
    lib.mkdir()
    originals = photo_paths[:30]
    for p in originals:
        shutil.copy(p, lib / p.name)
    copies = {p.name: near_copies(p, lib) for p in originals[:4]}
    with Store(tmp_path / "lib.db") as store:
        run_scan(store, lib, models[:1])
        groups = duplicate_groups(store)
        assert len(groups) == 4
        for g in groups:
            names = {Path(x["path"]).name for x in g["photos"]}
            orig = next(n for n in names if n in copies)
            assert names == {orig} | {c.name for c in copies[orig]}
            keep = next(x for x in g["photos"] if x["keep"])
            assert Path(keep["path"]).name == orig and keep["photo_id"] == g["keep"]
            assert g["min_similarity"] >= 0.9
        # a strict threshold splits the cropped copies off; a loose one is the caller's choice
        assert sum(len(g["photos"]) for g in duplicate_groups(store, threshold=0.9999)) < 16


def test_library_is_torch_free(tmp_path):
    cls = classifier_artifact(tmp_path / "cls")
    photos = tmp_path / "p"
    write_images(photos, 2)
    code = (f"from edgeinfer.library import LibraryModel, Store, run_scan\n"
            f"s = run_scan(Store({str(tmp_path / 'l.db')!r}), {str(photos)!r}, [LibraryModel.from_artifact({str(cls)!r}, provider='cpu')])\n"
            f"assert s.done == 2\n")
    # torch & co blocked; fails if they or edgeinfer.export were loaded (tests/torch_blocked.py)
    run_without_torch(code, env={**os.environ, "EDGEINFER_CACHE": str(tmp_path / "c")})


def test_cli_index_progress_and_reuse_of_models(tmp_path):
    from edgeinfer.cli.main import main

    cls = classifier_artifact(tmp_path / "cls")
    photos = tmp_path / "p"
    write_images(photos, 3)
    lib = tmp_path / "lib.db"
    assert main(["index", str(photos), "--library", str(lib), "--model", str(cls), "--provider", "cpu"]) == 0
    write_images(photos, 1, start=10)
    r = subprocess.run([sys.executable, "-m", "edgeinfer.cli.main", "index", str(photos), "--library", str(lib),
                        "--json"], capture_output=True, text=True,
                       env={**os.environ, "EDGEINFER_CACHE": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    import json
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert (d["done"], d["skipped"], d["library_photos"]) == (1, 3, 4)
    assert main(["index", str(tmp_path / "missing"), "--library", str(lib)]) == 1
    assert main(["index", str(photos), "--library", str(tmp_path / "new.db")]) == 1  # no models known
