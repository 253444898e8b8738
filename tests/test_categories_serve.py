"""User categories in the library and the service: POST/GET/DELETE /v1/categories (photo ids and
uploads), scans tag new photos, search and photo listing filter by category, errors are JSON."""
from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from test_library_fixtures import clip_artifact, jpeg_bytes, near_copies, write_images

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from edgeinfer.serve import ServeConfig, create_app  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return clip_artifact(tmp_path_factory.getbasetemp())


def _scan(c, path):
    jid = c.post("/v1/library/scan", json={"path": str(path)}).json()["job"]
    t = time.monotonic() + 60
    while time.monotonic() < t:
        j = c.get(f"/v1/library/jobs/{jid}").json()
        if j["state"] in ("done", "failed", "cancelled"):
            assert j["state"] == "done", j
            return j
        time.sleep(0.05)
    raise AssertionError("scan did not finish")


def _ids(c) -> dict[str, int]:
    return {p["path"].rsplit("/", 1)[-1]: p["photo_id"]
            for p in c.get("/v1/photos", params={"limit": 1000}).json()["photos"]}


def test_categories_end_to_end(tmp_path, clip):
    root = tmp_path / "root"
    others = write_images(root / "misc", 12, start=100)
    src = write_images(tmp_path / "src", 1, start=7)[0]
    (root / "rex").mkdir(parents=True)
    copies = near_copies(src, root / "rex")           # near-copies: one "subject"
    shutil.copy(src, root / "rex" / "rex_original.jpg")
    assert len(copies) >= 3
    cfg = ServeConfig(artifacts=[str(clip)], library=tmp_path / "lib.db",
                      library_roots=[str(root)], provider="cpu")
    with TestClient(create_app(cfg)) as c:
        _scan(c, root)
        ids = _ids(c)
        rex = [ids[p.name] for p in copies]
        r = c.post("/v1/categories", json={"name": "rex", "photo_ids": rex})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["category"]["examples"] == len(rex) and body["category"]["calibrated"]
        assert 0 <= body["report"]["loo_accuracy"] <= 1
        assert body["report"]["negatives"] == len(ids) - len(rex)  # the rest of the library
        # the original (not an example) looks like its copies: tagged; unrelated photos mostly not
        tagged = {p["photo_id"] for p in c.get("/v1/photos", params={"category": "rex"}).json()["photos"]}
        assert ids["rex_original.jpg"] in tagged
        assert len(tagged & {ids[p.name] for p in others}) <= 2
        detail = c.get(f"/v1/photos/{ids['rex_original.jpg']}").json()
        assert detail["categories"][0]["category"] == "rex" and detail["categories"][0]["score"] > 0
        # search limited to the category returns only its photos
        s = c.get("/v1/search", params={"q": "a dog", "category": "rex", "k": 50}).json()
        assert s["results"] and {h["photo_id"] for h in s["results"]} <= tagged
        assert s["searched"] == len(tagged)
        # a scan tags new photos as they arrive
        shutil.copy(copies[0], root / "new_rex.jpg")
        _scan(c, root)
        tagged2 = {p["photo_id"] for p in c.get("/v1/photos", params={"category": "rex"}).json()["photos"]}
        assert _ids(c)["new_rex.jpg"] in tagged2
        # a second category from uploads
        files = [("image", (f"b{i}.jpg", jpeg_bytes(300 + i), "image/jpeg")) for i in range(3)]
        r = c.post("/v1/categories", data={"name": "beach"}, files=files)
        assert r.status_code == 200, r.text
        assert r.json()["category"]["sources"][0] == "upload:b0.jpg"
        cats = c.get("/v1/categories").json()["categories"]
        assert sorted(x["name"] for x in cats) == ["beach", "rex"]
        assert all(x["model_sha256"] and x["threshold"] < 1 for x in cats)
        assert next(x for x in cats if x["name"] == "rex")["tagged_photos"] == len(tagged2)
        # delete: gone, and its tags with it
        assert c.delete("/v1/categories/rex").status_code == 200
        assert [x["name"] for x in c.get("/v1/categories").json()["categories"]] == ["beach"]
        assert c.get("/v1/photos", params={"category": "rex"}).json()["photos"] == []


def test_category_errors_are_json_with_a_way_out(tmp_path, clip):
    root = tmp_path / "root"
    write_images(root, 4)
    cfg = ServeConfig(artifacts=[str(clip)], library=tmp_path / "lib.db",
                      library_roots=[str(root)], provider="cpu")
    with TestClient(create_app(cfg)) as c:
        _scan(c, root)
        ids = list(_ids(c).values())
        r = c.post("/v1/categories", json={"name": "x", "photo_ids": ids[:2]})
        assert r.status_code == 422 and "at least 3" in r.json()["error"]
        r = c.post("/v1/categories", json={"name": "x", "photo_ids": [999999, *ids[:2]]})
        assert r.status_code == 422 and "999999" in r.json()["error"]
        r = c.post("/v1/categories", json={"photo_ids": ids[:3]})
        assert r.status_code == 400 and "name" in r.json()["error"]
        r = c.post("/v1/categories", json={"name": "x", "photo_ids": "1,2"})
        assert r.status_code == 400
        r = c.post("/v1/categories", json={"name": "x"})
        assert r.status_code == 400 and "no examples" in r.json()["error"]
        files = [("image", ("bad.jpg", b"not an image", "image/jpeg"))] * 3
        r = c.post("/v1/categories", data={"name": "x"}, files=files)
        assert r.status_code == 422 and "cannot be used" in r.json()["error"]
        r = c.delete("/v1/categories/nope")
        assert r.status_code == 404 and "no category 'nope'" in r.json()["error"]


def test_library_categories_follow_the_model_identity(tmp_path):
    from edgeinfer.errors import CategoryError, EmbeddingModelMismatchError
    from edgeinfer.library import Store
    from edgeinfer.library import categories as lc
    from edgeinfer.library.store import PhotoResult

    rng = np.random.default_rng(0)
    ident = {"model": "m", "precision": "fp32", "sha256": "s1", "dim": 8}
    with Store(tmp_path / "l.db") as st:
        st.register_model(sha256="s1", name="m", kind="clip", dim=8)
        res = []
        for i in range(10):
            v = np.eye(8)[0 if i < 4 else 3] + 0.05 * rng.standard_normal(8)
            res.append(PhotoResult(path=f"/p/{i}.jpg", size=1, mtime=0.0, sha256=str(i),
                                   outputs={"s1": {"embedding": v / np.linalg.norm(v)}}))
        pids = st.write_results(res)
        out = lc.add_category(st, ident, "zero", photo_ids=pids[:3])
        assert out["tagged_photos"] == 4  # the 3 examples and the 4th photo like them, no others
        assert lc.photo_ids_in(st, "zero") == set(pids[:4])
        # another model version has no embeddings of these photos: a clear error, nothing stored
        with pytest.raises(CategoryError, match="no embedding from this model"):
            lc.add_category(st, {**ident, "sha256": "s2"}, "other", photo_ids=pids[:3])
        assert [m["sha256"] for m in st.models()] == ["s1"]
        # a stored set refuses embeddings of another model version
        with pytest.raises(EmbeddingModelMismatchError):
            lc.load_set(st, "s1").tag_embeddings(np.eye(8)[:1], identity={**ident, "sha256": "s2"})
        lc.delete_category(st, "s1", "zero")
        assert lc.list_categories(st) == [] and lc.photo_ids_in(st, "zero") == set()
