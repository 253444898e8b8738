"""The HTTP service: a real `edgeinfer serve` process on a free port (auth, every route, SIGTERM),
and the app in-process (TestClient) for every error status, coalescing, lazy load / idle unload,
re-scans, search and duplicates."""
from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from torch_blocked import run_without_torch

from test_library_fixtures import classifier_artifact, clip_artifact, jpeg_bytes, near_copies, write_images

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402

from edgeinfer.serve import ServeConfig, create_app  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEINFER_CACHE", str(tmp_path / "engine-cache"))


@pytest.fixture(scope="module")
def arts(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    cls = base / "serve_cls"
    if not (cls / "manifest.json").exists():
        classifier_artifact(cls)
    return {"cls": cls, "clip": clip_artifact(base)}


def _client(tmp_path, arts, **kw):
    roots = kw.pop("library_roots", [str(tmp_path / "root")])
    (tmp_path / "root").mkdir(exist_ok=True)
    cfg = ServeConfig(artifacts=[str(arts["cls"]), str(arts["clip"])], library=tmp_path / "lib.db",
                      library_roots=roots, provider="cpu", **kw)
    return TestClient(create_app(cfg))


def _files(*items):
    return [("image", (name, data, "image/jpeg")) for name, data in items]


def _wait_job(c, jid, headers=None, timeout=60):
    t = time.monotonic() + timeout
    while time.monotonic() < t:
        j = c.get(f"/v1/library/jobs/{jid}", headers=headers).json()
        if j["state"] in ("done", "failed", "cancelled"):
            return j
        time.sleep(0.05)
    raise AssertionError(f"job {jid} did not finish: {j}")


# ----------------------------------------------------------------------------- real process
def test_real_server_process(tmp_path, arts):
    root = tmp_path / "root"
    write_images(root / "album", 5)
    lib = tmp_path / "lib.db"
    env = {**os.environ, "EDGEINFER_TOKEN": "s3cret", "EDGEINFER_CACHE": str(tmp_path / "c"),
           "PYTHONUNBUFFERED": "1"}
    p = subprocess.Popen([sys.executable, "-m", "edgeinfer.cli.main", "serve", str(arts["cls"]), str(arts["clip"]),
                          "--port", "0", "--library", str(lib), "--library-root", str(root), "--provider", "cpu"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines = []
    try:
        url = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and url is None:
            line = p.stdout.readline()
            if not line:
                break
            lines.append(line)
            m = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            url = m.group(1) if m else None
        assert url, "".join(lines)
        # the banner names the models with engine/precision and the library
        for _ in range(4):
            lines.append(p.stdout.readline())
        banner = "".join(lines)
        assert "model tiny: classifier, cpu/fp32" in banner and "model clip_tiny: clip" in banner
        assert str(lib) in banner and "bearer token required" in banner
        threading.Thread(target=lambda: [lines.append(x) for x in p.stdout], daemon=True).start()
        auth = {"Authorization": "Bearer s3cret"}
        with httpx.Client(base_url=url, timeout=30) as c:
            for _ in range(100):
                try:
                    h = c.get("/health")
                    break
                except httpx.ConnectError:
                    time.sleep(0.1)
            assert h.status_code == 200
            hj = h.json()
            assert hj["status"] == "ok" and hj["rss_mb"] > 0
            assert {(m["name"], m["kind"], m["provider"], m["precision"]) for m in hj["models"]} == \
                {("tiny", "classifier", "cpu", "fp32"), ("clip_tiny", "clip", "cpu", "fp32")}
            assert c.get("/v1/models").status_code == 401
            assert c.get("/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
            assert c.get("/metrics").status_code == 401
            ms = c.get("/v1/models", headers=auth).json()["models"]
            assert {m["weights"] for m in ms} == {"random"} and all(m["sha256"] for m in ms)
            r = c.post("/v1/classify", headers=auth, files=_files(("a.jpg", jpeg_bytes(1)), ("bad.jpg", b"junk")))
            assert r.status_code == 200
            res = r.json()["results"]
            assert [x["model"] for x in res] == ["tiny"]
            assert len(res[0]["images"][0]["labels"]) == 5 and "error" in res[0]["images"][1]
            r = c.post("/v1/library/scan", headers=auth, json={"path": str(root)})
            assert r.status_code == 200
            j = _wait_job(c, r.json()["job"], auth)
            assert (j["state"], j["done"], j["total"], j["failed"]) == ("done", 5, 5, 0)
            s = c.get("/v1/search", params={"q": "a dog on a beach", "k": 3}, headers=auth).json()
            assert len(s["results"]) == 3 and s["searched"] == 5
            pid = s["results"][0]["photo_id"]
            t = c.get(f"/v1/photos/{pid}/thumbnail", headers=auth)
            assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg" and t.content[:2] == b"\xff\xd8"
            assert "edgeinfer_stage_seconds_bucket" in c.get("/metrics", headers=auth).text
            page = c.get("/")
            assert page.status_code == 200 and "html" in page.headers["content-type"]
            assert c.get("/docs").status_code in (200, 401)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    db = sqlite3.connect(lib)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == 5
    db.close()
    assert not Path(str(lib) + "-wal").exists() or Path(str(lib) + "-wal").stat().st_size == 0


# ----------------------------------------------------------------------------- in-process
def test_health_models_and_page(tmp_path, arts):
    with _client(tmp_path, arts) as c:
        h = c.get("/health").json()
        assert [m["name"] for m in h["models"]] == ["tiny", "clip_tiny"]
        ms = {m["name"]: m for m in c.get("/v1/models").json()["models"]}
        assert ms["tiny"]["labels"] == 10 and ms["clip_tiny"]["labels"] == {"cifar10": 10}
        assert ms["clip_tiny"]["label_sets"] == ["cifar10"] and ms["tiny"]["weights"] == "random"
        assert "accuracy_vs_fp32" in ms["tiny"]
        assert ms["tiny"]["max_batch"] == 1  # CPU engine: no coalescing by default (measured)
        assert c.get("/").status_code == 200
        assert c.get("/docs").status_code == 200 and c.get("/openapi.json").json()["paths"]["/v1/classify"]


def test_classify_zero_shot_embed(tmp_path, arts):
    import edgeinfer

    imgs = [("a.jpg", jpeg_bytes(1)), ("b.jpg", jpeg_bytes(2))]
    with _client(tmp_path, arts) as c:
        r = c.post("/v1/classify", files=_files(*imgs, ("c.txt", b"hello")), data={"top_k": "3"}).json()
        (res,) = r["results"]
        assert res["provider"] == "cpu" and res["precision"] == "fp32" and res["time_ms"] > 0
        assert [len(x.get("labels", [])) for x in res["images"]] == [3, 3, 0]
        assert res["images"][2]["filename"] == "c.txt" and "c.txt" in res["images"][2]["error"]
        with edgeinfer.load(arts["cls"], provider="cpu") as m:
            ref = m.classify([d for _, d in imgs], top_k=3)
        for got, want in zip(res["images"], ref):
            assert [x["label"] for x in got["labels"]] == [lab for lab, _ in want]
            np.testing.assert_allclose([x["score"] for x in got["labels"]], [s for _, s in want], atol=1e-5)
        # a CLIP model named explicitly classifies over its default label set
        r = c.post("/v1/classify", files=_files(*imgs), data={"model": "clip_tiny"}).json()
        assert r["results"][0]["images"][0]["labels"][0]["label"] in [
            "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
        z = c.post("/v1/zero-shot", files=_files(*imgs), data={"labels": "cat, dog, receipt", "top_k": "2"}).json()
        assert {x["label"] for x in z["results"][0]["images"][0]["labels"]} <= {"cat", "dog", "receipt"}
        with edgeinfer.load(arts["clip"], provider="cpu") as m:
            zref = m.zero_shot([d for _, d in imgs], ["cat", "dog", "receipt"], top_k=2)
            eref = m.embed([d for _, d in imgs])
        assert [x["label"] for x in z["results"][0]["images"][1]["labels"]] == [lab for lab, _ in zref[1]]
        z = c.post("/v1/zero-shot", files=_files(*imgs), data={"label_set": "cifar10"}).json()
        assert len(z["results"][0]["images"][0]["labels"]) == 5
        e = c.post("/v1/embed", files=_files(*imgs), data={"text": ["a cat", "a dog"]}).json()["results"][0]
        assert e["model"] == "clip_tiny" and len(e["model_sha256"]) == 64 and e["dim"] == 32
        v = np.array(e["images"][0]["embedding"])
        assert abs(np.linalg.norm(v) - 1) < 1e-4 and np.allclose(v, eref[0], atol=1e-5)
        assert [t["text"] for t in e["texts"]] == ["a cat", "a dog"]
        e = c.post("/v1/embed", data={"text": "only text"}).json()["results"][0]
        assert e["images"] == [] and len(e["texts"][0]["embedding"]) == 32


def test_error_statuses(tmp_path, arts):
    outside = tmp_path / "outside"
    write_images(outside, 1)
    with _client(tmp_path, arts, max_upload_mb=0.05, token="tok") as c:
        a = {"Authorization": "Bearer tok"}
        # 401
        assert c.post("/v1/classify", files=_files(("a.jpg", jpeg_bytes(1)))).status_code == 401
        assert c.get("/health").status_code == 200
        # 400: no image, bad top_k, malformed JSON, neither labels nor label_set
        for r in (c.post("/v1/classify", headers=a, data={"top_k": "3"}),
                  c.post("/v1/classify", headers=a, files=_files(("a.jpg", jpeg_bytes(1))), data={"top_k": "x"}),
                  c.post("/v1/classify", headers=a, files=_files(("a.jpg", jpeg_bytes(1))), data={"top_k": "0"}),
                  c.post("/v1/library/scan", headers={**a, "content-type": "application/json"}, content=b"{nope"),
                  c.post("/v1/zero-shot", headers=a, files=_files(("a.jpg", jpeg_bytes(1)))),
                  c.get("/v1/search", headers=a)):
            assert r.status_code == 400, r.text
            assert isinstance(r.json()["error"], str) and r.json()["error"]
        # 403: outside the root, and a symlink inside the root that leads out
        assert c.post("/v1/library/scan", headers=a, json={"path": str(outside)}).status_code == 403
        (tmp_path / "root" / "escape").symlink_to(outside, target_is_directory=True)
        r = c.post("/v1/library/scan", headers=a, json={"path": str(tmp_path / "root" / "escape")})
        assert r.status_code == 403 and "outside the library roots" in r.json()["error"]
        r = c.post("/v1/library/scan", headers=a, json={"path": str(tmp_path / "root" / ".." / "outside")})
        assert r.status_code == 403
        # 404: unknown model, photo, job, route
        assert c.post("/v1/classify", headers=a, files=_files(("a.jpg", jpeg_bytes(1))),
                      data={"model": "nope"}).status_code == 404
        for url in ("/v1/photos/12345", "/v1/photos/12345/thumbnail", "/v1/library/jobs/nope", "/v1/nothing"):
            r = c.get(url, headers=a)
            assert r.status_code == 404 and r.json()["error"], url
        assert c.post("/v1/search/similar", headers=a, json={"photo_id": 999}).status_code == 404
        # 413: the body is over the cap (0.05 MB)
        big = jpeg_bytes(3, size=(900, 700)) + b"\0" * 60_000
        r = c.post("/v1/classify", headers=a, files=_files(("big.jpg", big)))
        assert r.status_code == 413 and "--max-upload-mb" in r.json()["error"]
        # 422: zero-shot on a classifier, duplicate labels, unknown label set, a non-folder
        r = c.post("/v1/zero-shot", headers=a, files=_files(("a.jpg", jpeg_bytes(1))),
                   data={"labels": "a, b", "model": "tiny"})
        assert r.status_code == 422 and "classifier" in r.json()["error"]
        r = c.post("/v1/zero-shot", headers=a, files=_files(("a.jpg", jpeg_bytes(1))), data={"labels": "cat, Cat"})
        assert r.status_code == 422 and "duplicate" in r.json()["error"]
        r = c.post("/v1/zero-shot", headers=a, files=_files(("a.jpg", jpeg_bytes(1))), data={"label_set": "imagenet"})
        assert r.status_code == 422 and "cifar10" in r.json()["error"]
        assert c.post("/v1/library/scan", headers=a, json={"path": str(tmp_path / "root" / "none")}).status_code == 422
        r = c.post("/v1/search/similar", headers=a, files=_files(("x.jpg", b"not an image")))
        assert r.status_code == 422
        # 503 + Retry-After when the queue is full
        st = c.app.state.edge
        st.admission.depth = st.admission.limit
        try:
            r = c.post("/v1/classify", headers=a, files=_files(("a.jpg", jpeg_bytes(1))))
            assert r.status_code == 503 and int(r.headers["Retry-After"]) >= 1 and "busy" in r.json()["error"]
        finally:
            st.admission.depth = 0
        assert c.post("/v1/classify", headers=a, files=_files(("a.jpg", jpeg_bytes(1)))).status_code == 200
        m = c.get("/metrics", headers=a).text
        assert 'edgeinfer_request_errors_total{route="/v1/classify",status="413"}' in m
        assert "edgeinfer_rejected_total 1.0" in m


def test_no_library_root_means_no_scans(tmp_path, arts):
    with _client(tmp_path, arts, library_roots=[]) as c:
        r = c.post("/v1/library/scan", json={"path": str(tmp_path)})
        assert r.status_code == 403 and "--library-root" in r.json()["error"]


def test_concurrent_requests_are_coalesced_with_identical_results(tmp_path, arts):
    imgs = [jpeg_bytes(i) for i in range(8)]
    with _client(tmp_path, arts, batch_wait_ms=200, max_batch=8) as c:
        single = [c.post("/v1/classify", files=_files(("x.jpg", d))).json()["results"][0]["images"][0] for d in imgs[:2]]
        out = [None] * 8

        def go(i):
            out[i] = c.post("/v1/classify", files=_files(("x.jpg", imgs[i]))).json()["results"][0]["images"][0]

        ts = [threading.Thread(target=go, args=(i,)) for i in range(8)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert out[:2] == single
        m = c.get("/metrics").text
        count = float(re.search(r'edgeinfer_batch_size_count\{model="tiny"\} (\S+)', m).group(1))
        total = float(re.search(r'edgeinfer_batch_size_sum\{model="tiny"\} (\S+)', m).group(1))
        assert total == 10 and count < 10  # 10 images in fewer engine calls


def test_lazy_load_and_idle_unload(tmp_path, arts):
    with _client(tmp_path, arts, lazy=True, idle_unload_s=0.3) as c:
        h = c.get("/health").json()
        assert [m["loaded"] for m in h["models"]] == [False, False]
        assert c.post("/v1/classify", files=_files(("a.jpg", jpeg_bytes(1)))).status_code == 200
        m = c.get("/health").json()["models"][0]
        assert m["loaded"] and m["provider"] == "cpu" and m["load_seconds"] >= 0
        deadline = time.monotonic() + 10
        while c.get("/health").json()["models"][0]["loaded"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not c.get("/health").json()["models"][0]["loaded"]
        r = c.post("/v1/classify", files=_files(("a.jpg", jpeg_bytes(1))))
        assert r.status_code == 200 and "labels" in r.json()["results"][0]["images"][0]
        assert c.get("/health").json()["models"][0]["reloads"] >= 1
        # a scan pins the models it uses: no idle unload under it
        sm = c.app.state.edge.models["tiny"]
        sm.pin()
        sm.last_used -= 100
        assert not sm.unload_if_idle(0.01) and sm.loaded
        sm.unpin()
        sm.last_used -= 100
        assert sm.unload_if_idle(0.01) and not sm.loaded


def test_library_rescan_search_similar_duplicates(tmp_path, arts):
    root = tmp_path / "root"
    paths = write_images(root / "a", 6)
    with _client(tmp_path, arts) as c:
        j = _wait_job(c, c.post("/v1/library/scan", json={"path": str(root)}).json()["job"])
        assert (j["done"], j["total"], j["failed"], j["eta_s"]) == (6, 6, 0, 0.0) and j["photos_per_s"] > 0
        # again: nothing to do
        j = _wait_job(c, c.post("/v1/library/scan", json={"path": str(root)}).json()["job"])
        assert (j["done"], j["total"], j["skipped"]) == (0, 0, 6)
        # add a near-copy, delete a photo, corrupt one
        copies = near_copies(paths[0], root / "a")
        paths[5].unlink()
        paths[4].write_bytes(b"broken")
        j = _wait_job(c, c.post("/v1/library/scan", json={"path": str(root / "a")}).json()["job"])
        assert (j["done"], j["failed"], j["deleted"]) == (4, 1, 1)
        lib = c.get("/v1/library").json()
        assert lib["photos"] == 8 and lib["failed"] == 1 and lib["failures"][0]["path"] == str(paths[4])
        photos = {Path(p["path"]).name: p["photo_id"] for p in c.get("/v1/photos", params={"limit": 100}).json()["photos"]}
        rec = c.get(f"/v1/photos/{photos['img000.jpg']}").json()
        assert rec["width"] == 160 and rec["tags"][0]["model"] == "tiny" and rec["embeddings"][0]["dim"] == 32
        # similar to a stored photo: its copies come first, itself is excluded
        s = c.post("/v1/search/similar", json={"photo_id": photos["img000.jpg"], "k": 3}).json()
        assert {Path(x["path"]).name for x in s["results"]} == {p.name for p in copies}
        # similar to an upload
        s = c.post("/v1/search/similar", files=_files(("q.jpg", paths[1].read_bytes())), data={"k": "2"}).json()
        assert Path(s["results"][0]["path"]).name == "img001.jpg" and s["results"][0]["score"] > 0.99
        d = c.get("/v1/duplicates").json()
        assert len(d["groups"]) == 1
        g = d["groups"][0]
        assert {Path(x["path"]).name for x in g["photos"]} == {"img000.jpg"} | {p.name for p in copies}
        assert g["keep"] == photos["img000.jpg"]
        t = c.get(f"/v1/photos/{photos['img000.jpg']}/thumbnail", params={"size": 64})
        from PIL import Image
        import io
        assert max(Image.open(io.BytesIO(t.content)).size) == 64
        assert 'edgeinfer_library_photos 8.0' in c.get("/metrics").text
        # a file deleted since the scan: its thumbnail says so (404), the record stays until a re-scan
        paths[0].unlink()
        r = c.get(f"/v1/photos/{photos['img000.jpg']}/thumbnail")
        assert r.status_code == 404 and "gone" in r.json()["error"]
        # a second scan request for the same folder while one is pending returns the same job
        j1 = c.post("/v1/library/scan", json={"path": str(root)}).json()["job"]
        j2 = c.post("/v1/library/scan", json={"path": str(root)}).json()["job"]
        assert j1 == j2 or c.get(f"/v1/library/jobs/{j1}").json()["state"] == "done"
        assert _wait_job(c, j2)["deleted"] in (0, 1)


def test_serve_app_is_torch_free(tmp_path, arts):
    code = (f"from fastapi.testclient import TestClient\n"
            f"from edgeinfer.serve import ServeConfig, create_app\n"
            f"app = create_app(ServeConfig(artifacts=[{str(arts['cls'])!r}, {str(arts['clip'])!r}], library={str(tmp_path / 'l.db')!r}, provider='cpu'))\n"
            f"with TestClient(app) as c:\n"
            f"    assert c.get('/health').status_code == 200\n"
            f"    assert c.get('/v1/search', params={{'q': 'cat'}}).status_code == 200\n")
    # torch & co blocked; fails if they or edgeinfer.export were loaded (tests/torch_blocked.py)
    run_without_torch(code, env={**os.environ, "EDGEINFER_CACHE": str(tmp_path / "c")})


def test_config_is_validated():
    from edgeinfer.errors import InvalidOptionError

    for kw in ({"max_upload_mb": 0}, {"max_queue": 0}, {"batch_wait_ms": -1}, {"idle_unload_s": 0}):
        with pytest.raises(InvalidOptionError):
            ServeConfig(**kw)
