"""The web page of `edgeinfer serve`, driven in a real headless Chromium (Debian's chromium +
chromium-driver through Selenium; nothing downloads a browser) against a real `edgeinfer serve`
process on 127.0.0.1 with a tiny CIFAR-10 classifier, a tiny CLIP model, a bearer token and a
library root holding real photos. Each step saves a screenshot into $EDGEINFER_SCREENSHOTS (or a
temporary folder, printed) so a person can look at what the browser showed.

The tests run in file order and share one browser tab: token -> classify -> drop + label sets ->
wording -> custom labels -> corrupt image -> too large -> library -> duplicates -> server down
(which stops the server). Neither the artifacts nor the server need torch."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import make_image
from test_library_fixtures import clip_artifact
from test_runtime_helpers import tiny_artifact

CHROMIUM = Path(os.environ.get("EDGEINFER_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("EDGEINFER_CHROMEDRIVER", "/usr/bin/chromedriver"))
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TOKEN = "browser-test-token"
MAX_UPLOAD_MB = 1
WAIT_S = 60

_missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
if _missing:
    pytest.skip(f"the browser test needs Debian's chromium and chromium-driver ({', '.join(_missing)} absent; "
                f"`apt-get install chromium chromium-driver`, as .ci/run does)", allow_module_level=True)
webdriver = pytest.importorskip("selenium.webdriver",
                                reason="selenium not installed (pip install 'edgeinfer[test]')")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

pytestmark = pytest.mark.photos  # the page is driven with real photos (skips without them)
REPO = Path(__file__).resolve().parents[1]
EDGEINFER = Path(sys.executable).with_name("edgeinfer")


# ------------------------------------------------------------------ artifacts + server
def _classifier_artifact(out: Path) -> Path:
    from edgeinfer.runtime.artifact import read_manifest, write_manifest

    d = tiny_artifact(out, labels=CIFAR10)
    m = read_manifest(d)
    m["model"]["name"] = "cifar10_tiny"  # a name that reads as what it is on the page's card
    write_manifest(d, m)
    return d


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str | None = None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    d = Path(os.environ.get("EDGEINFER_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nscreenshots: {d}")
    return d


@pytest.fixture(scope="module")
def library_root(tmp_path_factory, photo_paths) -> Path:
    """A few real photos, a resized re-encoded copy of one (a duplicate), and a corrupt file."""
    from PIL import Image

    root = tmp_path_factory.mktemp("library")
    folder = root / "holiday"
    folder.mkdir()
    for p in photo_paths[:8]:
        shutil.copy(p, folder / p.name)
    with Image.open(photo_paths[0]) as im:
        im.convert("RGB").resize((im.width // 2, im.height // 2)).save(folder / "copy_small.jpg", quality=80)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, library_root):
    art = tmp_path_factory.mktemp("artifacts")
    # The torch-free tiny CLIP of the library/serve tests: random towers, a stored cifar10 set.
    arts = [_classifier_artifact(art / "cifar10_tiny"), clip_artifact(art)]
    port = _free_port()
    log = art / "serve.log"
    env = {**os.environ, "EDGEINFER_CACHE": str(art / "cache")}
    env.pop("EDGEINFER_TOKEN", None)
    cmd = [str(EDGEINFER), "serve", *map(str, arts), "--host", "127.0.0.1", "--port", str(port),
           "--library", str(art / "library.db"), "--library-root", str(library_root),
           "--token", TOKEN, "--max-upload-mb", str(MAX_UPLOAD_MB)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + WAIT_S
    while True:
        if proc.poll() is not None:
            pytest.fail(f"`{' '.join(cmd)}` exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            _get(f"{url}/health")
            break
        except (urllib.error.URLError, ConnectionError, OSError):
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the server did not answer /health within {WAIT_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
    yield {"url": url, "proc": proc, "log": log, "models": _get(f"{url}/v1/models", TOKEN)}
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser(shots):
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              "--window-size=1280,860", "--hide-scrollbars"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    d = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)
    d.set_page_load_timeout(WAIT_S)
    d.edgeinfer_shots = shots
    yield d
    d.quit()


@pytest.fixture(autouse=True)
def no_script_errors(browser):
    """Every step ends without a JavaScript error in the page. Failed requests (401, 413, 422, a
    server that is down) are logged by Chromium too; they are the page's business, not errors."""
    yield
    logs = browser.get_log("browser")
    bad = [e["message"] for e in logs if e["level"] == "SEVERE"
           and "Failed to load resource" not in e["message"] and "net::ERR_" not in e["message"]]
    assert not bad, bad


def wait(driver, cond, what: str, timeout: float = WAIT_S):
    try:
        # The page re-renders lists wholesale: an element read mid-render is simply read again.
        return WebDriverWait(driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(
            cond, message=f"timed out waiting for {what}")
    except TimeoutException:
        driver.save_screenshot(str(driver.edgeinfer_shots / f"FAILED {what}.png"))
        raise


def snap(driver, shots: Path, name: str) -> None:
    time.sleep(0.3)  # let the last CSS transition (bars, progress) finish before the picture
    driver.save_screenshot(str(shots / f"{name}.png"))


def cards(driver):
    return driver.find_elements(By.CSS_SELECTOR, "#cards .card")


def cards_settled(driver):
    cs = cards(driver)
    return cs if cs and all(c.get_attribute("data-state") != "loading" for c in cs) else False


def answered(caption_part: str):
    """Every card settled, for the run whose caption names `caption_part` (not an older run's)."""
    def cond(d):
        return cards_settled(d) if caption_part in d.find_element(By.ID, "classify-caption").text else False
    return cond


def label_sets_loaded(d) -> bool:
    return len(d.find_elements(By.CSS_SELECTOR, "#label-set option")) >= 3


def model_names(server) -> list[str]:
    data = server["models"]
    return [m["name"] for m in (data["models"] if isinstance(data, dict) else data)]


def upload(driver, path: Path) -> None:
    driver.find_element(By.ID, "file-input").send_keys(str(path))


PCT = re.compile(r"^(\d{1,3}\.\d)%$")


# ------------------------------------------------------------------ the page, step by step
def test_token_is_asked_once_and_kept(server, browser, shots):
    browser.get(server["url"] + "/")
    dialog = wait(browser, lambda d: d.find_element(By.ID, "token-dialog").get_attribute("open") is not None
                  and d.find_element(By.ID, "token-dialog"), "the token dialog after a 401")
    snap(browser, shots, "01_token")
    dialog.find_element(By.ID, "token-input").send_keys(TOKEN + Keys.ENTER)  # Enter saves (not "Forget")
    wait(browser, label_sets_loaded, "the label sets")
    assert browser.execute_script("return sessionStorage.getItem('edgeinfer.token')") == TOKEN
    # Kept for the tab: a reload does not ask again.
    browser.refresh()
    wait(browser, label_sets_loaded, "the label sets after reload")
    assert browser.find_element(By.ID, "token-dialog").get_attribute("open") is None
    values = [o.get_attribute("value") for o in browser.find_elements(By.CSS_SELECTOR, "#label-set option")]
    assert values[:2] == ["cifar10", "imagenet"]


def test_classify_cifar10_one_card_per_model(server, browser, shots, photo_paths):
    photo = next((p for p in photo_paths if "husky" in p.name.lower()), photo_paths[0])
    upload(browser, photo)
    wait(browser, lambda d: d.find_element(By.ID, "preview").get_attribute("naturalWidth") not in (None, "0"),
         "the preview")
    Select(browser.find_element(By.ID, "label-set")).select_by_value("cifar10")
    browser.find_element(By.ID, "classify-button").click()
    cs = wait(browser, cards_settled, "every model's card")
    assert sorted(c.get_attribute("data-model") for c in cs) == sorted(model_names(server))
    for c in cs:
        assert c.get_attribute("data-state") == "done", c.text
        rows = c.find_elements(By.CSS_SELECTOR, ".bar-row")
        assert len(rows) == 3, c.text
        values = [float(PCT.match(r.find_element(By.CSS_SELECTOR, ".pct").text).group(1)) for r in rows]
        assert values == sorted(values, reverse=True) and sum(values) <= 100.2, values
        labels = [r.find_element(By.CSS_SELECTOR, ".bar-label span").text for r in rows]
        assert set(labels) <= set(CIFAR10), labels
        assert re.fullmatch(r"\d+(\.\d)? ms", c.find_element(By.CSS_SELECTOR, ".time").text), c.text
        # Both test artifacts have random weights: the page must say so on each card.
        assert "Random weights" in c.find_element(By.CSS_SELECTOR, ".banner-random").text
        assert c.find_element(By.CSS_SELECTOR, ".badge").text.count("·") == 1
    snap(browser, shots, "02_classify_cifar10")


def test_drag_and_drop_and_other_label_sets(browser, photo_paths):
    """A real photo dropped on the box (a DataTransfer built in the page, as a drag from the
    desktop delivers it); then label sets the models cannot answer say why, in words."""
    import base64

    photo = photo_paths[1]
    browser.execute_script("""
        const [b64, name] = arguments;
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], name, {type: "image/jpeg"}));
        const drop = new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true});
        document.getElementById("dropzone").dispatchEvent(drop);
    """, base64.b64encode(photo.read_bytes()).decode(), photo.name)
    wait(browser, answered(photo.name), "the cards for the dropped photo")
    assert browser.execute_script("return document.getElementById('preview').naturalWidth") > 0
    assert all(c.get_attribute("data-state") == "done" for c in cards(browser))

    # The tiny CLIP carries cifar10 only, and CIFAR-10 is the only set whose names the page knows.
    Select(browser.find_element(By.ID, "label-set")).select_by_value("imagenet")
    cs = wait(browser, answered("ImageNet"), "the ImageNet answers")
    by_model = {c.get_attribute("data-model"): c for c in cs}
    assert "carries no “ImageNet” label set" in by_model["clip_tiny"].text
    assert "No list of ImageNet names" in by_model["cifar10_tiny"].text

    Select(browser.find_element(By.ID, "label-set")).select_by_value("own")
    cs = wait(browser, answered("own labels"), "the answers with each model's own labels")
    by_model = {c.get_attribute("data-model"): c for c in cs}
    assert len(by_model["cifar10_tiny"].find_elements(By.CSS_SELECTOR, ".bar-row")) == 3
    assert "no labels of its own" in by_model["clip_tiny"].text
    Select(browser.find_element(By.ID, "label-set")).select_by_value("cifar10")  # as the next steps expect
    wait(browser, answered("CIFAR-10"), "the CIFAR-10 answers again")


def test_accuracy_cost_and_label_mapping_texts(browser):
    """The page's own wording of a manifest's accuracy records and of a classifier mapped onto a
    label set (the tiny test models are FP32 with CIFAR-10 labels, so the cards above show
    neither case)."""
    acc = "return accuracyText(arguments[0])"
    int8 = {"precision": "int8"}
    assert browser.execute_script(acc, {**int8, "accuracy": {"int8": {"parity": {
        "images": 60, "top1_agreement": 0.983, "cosine_mean": 0.9991, "reference": "fp32"}}}}) == \
        "top-1 agrees with FP32 on 98.3% · cosine to FP32 0.9991 (60 images)"
    assert browser.execute_script(acc, {**int8, "accuracy": {"int8": {"labelled": {
        "images": 100, "top1": 0.71, "fp32_top1": 0.74, "drop_points": 3.0}}}}) == \
        "top-1 71.0% vs 74.0% in FP32 (−3.0 pts) (100 images)"
    assert browser.execute_script(acc, {**int8, "accuracy": {}}) == "no accuracy-vs-FP32 record in its manifest"
    mapped = browser.execute_script(
        "return mapOntoSet(arguments[0], arguments[1])",
        # a synonym matches ("tom, cat"), case and "_" are folded, a longer name ("tabby cat") is not "cat"
        [{"label": "tom, cat", "score": 0.3}, {"label": "tabby, tabby cat", "score": 0.2},
         {"label": "Egyptian_cat", "score": 0.2}, {"label": "airliner", "score": 0.2},
         {"label": "Cat", "score": 0.1}],
        ["cat", "egyptian cat", "dog"])
    got = [(x["label"], round(x["score"], 4)) for x in mapped["labels"]]
    assert got == [("cat", 0.6667), ("egyptian cat", 0.3333)]
    assert mapped["matched"] == 2 and abs(mapped["covered"] - 0.6) < 1e-9
    assert browser.execute_script("return mapOntoSet(arguments[0], ['dog'])", [{"label": "cat", "score": 1}]) is None


def test_custom_labels_answered_by_clip(browser, shots):
    labels = ["shark", "dolphin", "lizard", "giraffe"]
    box = browser.find_element(By.ID, "custom-labels")
    box.clear()
    box.send_keys(", ".join(labels))
    browser.find_element(By.ID, "custom-button").click()
    cs = wait(browser, answered("custom labels"), "the CLIP answer to custom labels")
    assert [c.get_attribute("class") for c in cs] == ["card clip"] * len(cs) and cs
    for c in cs:
        shown = [s.text for s in c.find_elements(By.CSS_SELECTOR, ".bar-label span:first-child")]
        assert len(shown) == 3 and set(shown) <= set(labels), c.text
    snap(browser, shots, "03_custom_labels")


def test_corrupt_image_is_an_error_in_words(browser, shots, tmp_path):
    bad = tmp_path / "corrupt.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF" + b"\x00" * 64)  # a JPEG header and nothing else
    upload(browser, bad)
    cs = wait(browser, answered("corrupt.jpg"), "the cards for the corrupt image")
    for c in cs:
        assert c.get_attribute("data-state") == "error"
        assert "Could not read this image" in c.find_element(By.CSS_SELECTOR, ".card-error").text
    snap(browser, shots, "04_corrupt_image")


def test_too_large_upload_says_so(browser, shots, tmp_path):
    big = tmp_path / "big.bmp"
    make_image(3, size=(800, 600)).save(big)  # 1.4 MB uncompressed, over the 1 MB cap
    assert big.stat().st_size > MAX_UPLOAD_MB * 2**20
    upload(browser, big)
    err = wait(browser, lambda d: d.find_element(By.ID, "classify-error").is_displayed()
               and d.find_element(By.ID, "classify-error"), "the 413 message")
    assert "too large" in err.text
    snap(browser, shots, "05_too_large")


def test_library_scan_search_details(server, browser, shots, library_root):
    browser.find_element(By.ID, "tab-library").click()
    stats = wait(browser, lambda d: d.find_element(By.ID, "library-stats").text, "the library's size and roots")
    assert "0 photos in the library" in stats and str(library_root) in stats, stats
    path = browser.find_element(By.ID, "scan-path")
    assert path.get_attribute("value") == str(library_root)  # pre-filled with the first root
    path.clear()
    path.send_keys(str(library_root.parent))  # outside the root: the server's 403, in its words
    browser.find_element(By.ID, "scan-button").click()
    err = wait(browser, lambda d: d.find_element(By.ID, "library-error").is_displayed()
               and d.find_element(By.ID, "library-error"), "the message for a folder outside the root")
    assert "outside the library roots" in err.text
    path.clear()
    path.send_keys(str(library_root / "holiday"))
    browser.find_element(By.ID, "scan-button").click()
    wait(browser, lambda d: d.find_element(By.ID, "scan-progress").get_attribute("data-state") == "finished",
         "the scan to finish")
    n = len(list((library_root / "holiday").iterdir()))
    text = browser.find_element(By.ID, "scan-text").text
    assert text.startswith("100%") and f"{n}/{n} photos" in text and "1 unreadable" in text, text
    # The bar fills its track (after its CSS transition).
    wait(browser, lambda d: d.execute_script(
        "const b = document.getElementById('scan-bar'); "
        "return Math.abs(b.getBoundingClientRect().width - b.parentElement.getBoundingClientRect().width) < 1"),
        "the progress bar to fill its track", timeout=5)
    # The scan ends on the whole library: every photo a tile, the corrupt one marked unreadable.
    wait(browser, lambda d: d.find_element(By.ID, "library-caption").text.startswith("All photos"), "all photos")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#library-results .tile")) == n
    broken = browser.find_elements(By.CSS_SELECTOR, "#library-results .thumb.broken")
    assert len(broken) == 1 and "broken.jpg" in broken[0].find_element(By.XPATH, "..").text
    snap(browser, shots, "06_library_scanned")

    browser.find_element(By.ID, "search-input").send_keys("a dog on the beach")
    browser.find_element(By.ID, "search-button").click()

    def thumbs_loaded(d):
        imgs = d.find_elements(By.CSS_SELECTOR, "#library-results .tile img.thumb")
        js = "return arguments[0].complete && arguments[0].naturalWidth"
        ok = imgs and all(d.execute_script(js, i) for i in imgs)
        return imgs if ok else False
    wait(browser, lambda d: d.find_element(By.ID, "library-caption").text.startswith("Photos matching"), "the search")
    imgs = wait(browser, thumbs_loaded, "search results with thumbnails")
    assert 1 <= len(imgs) <= n - 1  # every readable photo may match, the corrupt one cannot
    scores = [t.text for t in browser.find_elements(By.CSS_SELECTOR, "#library-results .tile .score")]
    assert scores and all(re.fullmatch(r"score -?\d\.\d{3}", s) for s in scores), scores

    browser.find_elements(By.CSS_SELECTOR, "#library-results .tile")[0].click()
    details = wait(browser, lambda d: d.find_element(By.ID, "photo-details").is_displayed()
                   and d.find_element(By.ID, "photo-details"), "the photo details")
    assert str(library_root / "holiday") in details.text and "sha256" in details.text
    snap(browser, shots, "07_library_search")

    details.find_element(By.XPATH, ".//button[contains(., 'More like this')]").click()
    wait(browser, lambda d: d.find_element(By.ID, "library-caption").text.startswith("Photos like"),
         "more like this")
    wait(browser, thumbs_loaded, "similar photos with thumbnails")


def test_duplicates_mark_the_keeper(browser, shots):
    browser.find_element(By.ID, "dups-threshold").clear()
    browser.find_element(By.ID, "dups-threshold").send_keys("0.9")
    browser.find_element(By.ID, "dups-button").click()
    group = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#library-results .group"),
                 "a duplicate group")[0]
    keep = group.find_elements(By.CSS_SELECTOR, ".tile.keep")
    assert len(keep) == 1 and "KEEP" in keep[0].text
    # The keeper is the full-size original, not its half-size copy.
    assert "copy_small" not in keep[0].text and len(group.find_elements(By.CSS_SELECTOR, ".tile")) >= 2
    snap(browser, shots, "08_duplicates")


def test_server_down_is_said_in_words(server, browser, shots):
    server["proc"].send_signal(signal.SIGTERM)
    server["proc"].wait(timeout=20)
    browser.find_element(By.ID, "tab-classify").click()
    browser.find_element(By.ID, "classify-button").click()
    err = wait(browser, lambda d: d.find_element(By.ID, "global-error").is_displayed()
               and d.find_element(By.ID, "global-error"), "the server-down message")
    assert "Cannot reach the edgeinfer server" in err.text
    assert "server down" in browser.find_element(By.ID, "server-status").text
    assert all("cannot be reached" in c.text for c in wait(browser, cards_settled, "the cards"))
    snap(browser, shots, "09_server_down")
