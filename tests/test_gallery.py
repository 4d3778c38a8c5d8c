"""`tagcap serve --library`: the gallery's API (ids only, thumbnails cached) and its page in headless Chromium."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

from conftest import needs_chromium, offline_page, serving
from tagcap.library.indexer import index_photos
from tagcap.library.store import Library

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 60), "blue": (30, 40, 220)}


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """A library of three single-colour photos (one large) and `tagcap serve --library` on it."""
    root = tmp_path_factory.mktemp("gallery")
    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():
        size = (600, 800) if name == "blue" else (96, 128)
        arr = np.clip(np.array(rgb) + rng.integers(-10, 10, (*size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"{name}.jpg")
    lib_path = root / "lib.sqlite"
    with Library(lib_path) as lib:
        # each model's own rule: plain colour fields have labels to search, where the shown rule shows none
        index_photos([photos], lib, sources=["imagenet-classes"], progress=False, rule="model")
        ids = {p.split("/")[-1][:-4]: i for i, p in lib.db.execute("SELECT id, path FROM photos")}
        # a label the red photo has with a better score than any other photo: a search for it lists red first
        label = lib.db.execute("SELECT t.label FROM tags t WHERE t.photo_id = ? AND t.chosen = 1 AND t.score > "
                               "(SELECT COALESCE(MAX(score), 0) FROM tags u WHERE u.label = t.label AND u.photo_id != "
                               "t.photo_id) ORDER BY t.score DESC", (ids["red"],)).fetchone()[0]
    with serving(["imagenet-classes", "--library", lib_path, "--device", "cpu"], root / "serve.log") as (url, _, _):
        yield {"url": url, "ids": ids, "label": label, "library": lib_path}


def get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_gallery_api_serves_library_photos_by_id_only(gallery):
    url, ids = gallery["url"], gallery["ids"]
    status, body = get(f"{url}/v1/library/search?q={gallery['label'].replace(' ', '+')}")
    found = json.loads(body)
    assert status == 200 and found["hits"][0]["id"] == ids["red"] and found["facets"]
    assert "path" not in found["hits"][0]

    status, thumb = get(f"{url}/v1/library/photos/{ids['blue']}/thumb")
    img = Image.open(io.BytesIO(thumb))
    assert status == 200 and img.format == "JPEG" and max(img.size) == 256  # the 800 x 600 photo, made smaller
    cached = list((gallery["library"].parent / "lib.sqlite.thumbs").glob(f"{ids['blue']}-*.jpg"))
    assert len(cached) == 1
    made = cached[0].stat().st_mtime_ns
    assert get(f"{url}/v1/library/photos/{ids['blue']}/thumb")[1] == thumb and cached[0].stat().st_mtime_ns == made

    status, view = get(f"{url}/v1/library/photos/{ids['blue']}/image")
    assert status == 200 and Image.open(io.BytesIO(view)).size == (800, 600)
    photo = json.loads(get(f"{url}/v1/library/photos/{ids['red']}")[1])
    assert photo["name"] == "red.jpg" and photo["tags"] and all(t["source"] == "imagenet-classes" for t in photo["tags"])

    assert get(f"{url}/v1/library/photos/999999/thumb")[0] == 404
    for bad in ("..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", "1.jpg", "-1e9"):
        status, body = get(f"{url}/v1/library/photos/{bad}/thumb")
        assert status in (404, 422) and b"root:" not in body
    assert get(f"{url}/v1/library/search?q=x&after=yesterday")[0] == 400


@needs_chromium
def test_gallery_page_in_headless_chromium(gallery, tmp_path):
    url = gallery["url"]
    with offline_page(url) as (page, elsewhere):
        page.goto(url + "/library")
        page.keyboard.press("/")  # the keyboard reaches the search box
        page.keyboard.type(gallery["label"])
        page.keyboard.press("Enter")
        page.wait_for_selector("body[data-state=done]", timeout=30_000)
        page.wait_for_function("[...document.querySelectorAll('.card img')].every(i => i.complete && i.naturalWidth > 0)",
                               timeout=30_000)
        first = page.locator(".card").first
        assert first.get_attribute("data-id") == str(gallery["ids"]["red"])
        facets = page.locator("#facets .facet").count()
        box = first.locator("img").bounding_box()
        shot = tmp_path / "gallery.png"
        page.screenshot(path=str(shot))

        page.keyboard.press("Enter")  # opens the selected photo
        page.wait_for_selector("#viewer.open #vtags .tag", timeout=30_000)
        opened = page.evaluate("document.body.dataset.viewer")
        shown_tags = page.locator("#vtags .tag").count()
        name = page.inner_text("#vname")
        page.keyboard.press("Escape")
        closed = page.evaluate("document.querySelector('#viewer').classList.contains('open')")
    assert not elsewhere, f"the page tried to reach {elsewhere}"
    assert facets >= 1 and shown_tags >= 1 and opened == str(gallery["ids"]["red"]) and name == "red.jpg"
    assert not closed
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = img[int(box["y"] + box["height"] / 2), int(box["x"] + box["width"] / 2)]
    assert r > g + 80 and r > b + 80, (r, g, b)  # the red photo's thumbnail is on screen


def test_gallery_pages_come_from_one_search_inside_the_facet_pool(gallery, monkeypatch):
    """A filtered page that lies inside the facets' pool is cut from the pool's search (one search per
    request, not two); a page beyond it is searched for itself. Pages one photo long, put together,
    are the three-photo page, and `more` says where the list ends."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    import tagcap.library.search as search_module
    from tagcap.serve.gallery import FACET_POOL, add_gallery

    calls = []
    real = search_module.search
    monkeypatch.setattr(search_module, "search", lambda *a, **k: calls.append(k) or real(*a, **k))
    app = FastAPI()
    add_gallery(app, gallery["library"], static=gallery["library"].parent)
    every = {"not_tag": "no such label"}  # a filter all three photos pass
    with TestClient(app) as client:
        whole = client.get("/v1/library/search", params={**every, "per_page": 3}).json()
        assert len(calls) == 1 and len(whole["hits"]) == 3
        pages = [client.get("/v1/library/search", params={**every, "per_page": 1, "page": p}).json()
                 for p in range(len(whole["hits"]))]
        assert len(calls) == 1 + len(pages)
        assert [p["hits"][0]["id"] for p in pages] == [h["id"] for h in whole["hits"]]
        assert [p["more"] for p in pages] == [True] * (len(pages) - 1) + [False]
        assert all(p["facets"] == whole["facets"] for p in pages)
        far = client.get("/v1/library/search", params={**every, "per_page": 1, "page": FACET_POOL}).json()
        assert far["hits"] == [] and not far["more"] and far["facets"] == whole["facets"]
        assert len(calls) == 1 + len(pages) + 2  # the far page and the pool: two searches


PHONE = {"width": 390, "height": 844}


@needs_chromium
def test_on_a_phone_the_pages_fit_the_screen_and_the_gallery_opens_on_the_library(gallery):
    """At 390x844: no horizontal scroll on the gallery or the upload page, every button and field at least
    44 px tall, the gallery showing the library's photos with no query typed; the pages install as an app."""
    url = gallery["url"]
    small = """[...document.querySelectorAll('button, input:not([hidden]), label.camera, summary')]
               .filter(e => e.offsetParent !== null && e.getBoundingClientRect().height < 44)
               .map(e => e.id || e.textContent.trim().slice(0, 20))"""
    with offline_page(url, PHONE) as (page, elsewhere):
        page.goto(url + "/library")
        page.wait_for_selector("body[data-state=done]", timeout=30_000)
        cards = page.locator(".card").count()
        status = page.inner_text("#status")
        gallery_width = page.evaluate("document.documentElement.scrollWidth")
        gallery_small = page.evaluate(small)
        page.goto(url + "/")
        page.wait_for_selector("#drop")
        upload_width = page.evaluate("document.documentElement.scrollWidth")
        upload_small = page.evaluate(small)
        camera = page.get_attribute("#camera", "capture")
        manifest = page.evaluate("fetch(document.querySelector('link[rel=manifest]').href).then(r => r.json())")
        icons = [page.evaluate(f"fetch('{i['src']}').then(r => r.status)") for i in manifest["icons"]]
    assert not elsewhere, f"the page tried to reach {elsewhere}"
    assert cards == 3 and "newest first" in status
    assert gallery_width <= PHONE["width"] and upload_width <= PHONE["width"]
    assert gallery_small == [] and upload_small == [], (gallery_small, upload_small)
    assert camera == "environment" and manifest["display"] == "standalone" and icons == [200, 200]


def test_browsing_without_words_is_newest_first(tmp_path):
    from tagcap.library.search import search

    with Library(tmp_path / "lib.sqlite") as lib:
        with lib.transaction():
            mid = lib.model_id("m", "m", "annotation")
            for n, (taken, mtime) in enumerate([(None, 3), ("2001-05-01T10:00:00", 9), (None, 7), ("1999-01-01", 1)]):
                lib.write_photo({"path": f"/p/{n}.jpg", "size": 1, "mtime_ns": (10 ** 9) * 10 ** 9 + mtime * 10 ** 15,
                                 "sha256": f"{n:064d}", "taken": taken}, {mid: {"tags": []}}, 0.0)
        # file dates 2001-09-09 plus 3 / 9 / 7 / 1 million seconds: the EXIF date wins where there is one
        assert [h.path for h in search(lib, "")] == ["/p/2.jpg", "/p/0.jpg", "/p/1.jpg", "/p/3.jpg"]


def _post(url: str, body: dict, headers: dict) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


@needs_chromium
def test_a_persons_corrections_win_over_every_model(tmp_path):
    """In the photo view a person removes a tag and adds one: the removed one is gone from search at
    once and stays gone after re-indexing with another model, the added one is found at once, and the
    XMP sidecar exiftool reads has the added keyword and not the removed one. Another site's POST is refused."""
    import shutil
    import subprocess
    import sys

    if shutil.which("exiftool") is None:
        pytest.skip("exiftool not installed (Debian: libimage-exiftool-perl; .ci/run installs it)")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for name, rgb in COLOURS.items():  # as the module's gallery has them: each gets a few labels
        arr = np.clip(np.array(rgb) + rng.integers(-10, 10, (96, 128, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(photos / f"{name}.jpg")
    lib_path = tmp_path / "lib.sqlite"

    def tagcap(*args):
        run = subprocess.run([sys.executable, "-m", "tagcap", *map(str, args)], capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr
        return run.stdout

    def found(query: str) -> set[str]:
        return {json.loads(line)["path"] for line in tagcap("search", query, "--library", lib_path, "--json").splitlines()}

    tagcap("index", photos, "--library", lib_path, "--model", "imagenet-classes", "--rule", "model", "--xmp", "--quiet")
    red = str((photos / "red.jpg").resolve())
    with Library(lib_path, mode="read") as lib:
        rid = lib.db.execute("SELECT id FROM photos WHERE path = ?", (red,)).fetchone()[0]
        removed = lib.db.execute("SELECT label FROM tags WHERE photo_id = ? AND chosen = 1 ORDER BY score DESC",
                                 (rid,)).fetchone()[0]
    assert red in found(removed)
    with serving(["imagenet-classes", "--library", lib_path, "--device", "cpu"], tmp_path / "serve.log") as (url, _, _):
        for headers in ({"Content-Type": "application/json", "Origin": "http://elsewhere.example"},
                        {"Content-Type": "application/json"},
                        {"Content-Type": "text/plain", "Origin": url}):
            assert _post(f"{url}/v1/library/photos/{rid}/tags", {"label": removed, "action": "remove"},
                         headers) in (403, 415)
            assert _post(f"{url}/v1/library/blocked", {"label": removed}, headers) in (403, 415)
        assert red in found(removed)  # nothing changed by them
        with offline_page(url) as (page, elsewhere):
            page.goto(url + "/library")
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            page.locator(f".card[data-id='{rid}']").click()
            page.wait_for_selector("#viewer.open #vtags .tag", timeout=30_000)
            page.locator(f"#vtags .tag:has-text('{removed}') button.remove").first.click()
            page.wait_for_function(f"document.querySelector('#vsaid').textContent === 'removed: {removed}'")
            page.fill("#newtag", "grandmas garden")
            page.press("#newtag", "Enter")
            page.wait_for_function("document.querySelector('#vsaid').textContent === 'added: grandmas garden'")
            page.wait_for_selector("#vtags .tag:has-text('grandmas garden (yours)')", timeout=30_000)
        assert not elsewhere, f"the page tried to reach {elsewhere}"
    assert red not in found(removed) and red in found("grandmas garden")  # searchable at once
    # another model (the same head on one view is another model to the library) tags everything again
    tagcap("index", photos, "--library", lib_path, "--model", "imagenet-classes", "--rule", "model", "--views", "1",
           "--xmp", "--quiet")
    assert red not in found(removed) and red in found("grandmas garden")
    read = json.loads(subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", str(photos / "red.jpg.xmp")],
                                     capture_output=True, text=True, check=True).stdout)[0]
    subject = read.get("Subject", [])
    subject = [subject] if isinstance(subject, str) else subject
    assert "grandmas garden" in subject and removed not in subject
    exported = tagcap("library", "export", "--library", lib_path)
    assert exported.splitlines()[0] == "image,labels" and "grandmas garden" in exported and removed not in exported
