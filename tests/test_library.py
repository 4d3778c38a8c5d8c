"""The photo library: incremental indexing, a real kill -9 half-way, search, XMP sidecars read back by exiftool."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import COREL, needs_corel, write_png
from tagcap.errors import TagcapError
from tagcap.inference.bundled import DEFAULT_MODELS
from tagcap.library.indexer import exif_date, index_photos
from tagcap.library.search import search
from tagcap.library.store import Library
from tagcap.library.xmp import merge_sidecar, write_sidecar

FAST = ["imagenet-classes"]  # one annotator: the mechanics, at a fraction of the defaults' cost
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None,
                                    reason="exiftool not installed (Debian: libimage-exiftool-perl; .ci/run installs it)")


def tagcap(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagcap", *map(str, args)], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def write_jpeg(path: Path, seed: int, taken: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    exif = Image.Exif()
    if taken:
        exif.get_ifd(0x8769)[0x9003] = taken  # Exif IFD, DateTimeOriginal
        exif[0x0112] = 1  # orientation
    img.save(path, exif=exif)
    return path


def rows(lib_path: Path) -> dict:
    with Library(lib_path, mode="read") as lib:
        return {**lib.contents(), "integrity": lib.db.execute("PRAGMA integrity_check").fetchone()[0]}


def test_index_is_incremental(tmp_path):
    photos = tmp_path / "photos"
    for i in range(5):
        write_png(photos / f"p{i}.png", seed=i, size=(40, 30))
    with Library(tmp_path / "lib.sqlite") as lib:
        first = index_photos([photos], lib, sources=FAST, progress=False)
        assert (first.photos, first.indexed, first.skipped) == (5, 5, 0)
        again = index_photos([photos], lib, sources=FAST, progress=False)
        assert (again.indexed, again.skipped, again.touched) == (0, 5, 0)

        write_png(photos / "p0.png", seed=99, size=(40, 30))  # new content
        data = (photos / "p1.png").read_bytes()
        (photos / "p1.png").write_bytes(data)  # same content, new mtime
        os.utime(photos / "p1.png", ns=(time.time_ns(), time.time_ns() + 10**9))
        changed = index_photos([photos], lib, sources=FAST, progress=False)
        assert (changed.indexed, changed.touched, changed.skipped) == (1, 1, 3)

        (photos / "p2.png").unlink()
        kept = index_photos([photos], lib, sources=FAST, progress=False, keep_missing=True)
        assert kept.removed == 0 and lib.stats()["photos"] == 5
        gone = index_photos([photos], lib, sources=FAST, progress=False)
        assert gone.removed == 1 and lib.stats()["photos"] == 4
        assert not lib.db.execute("SELECT 1 FROM photos WHERE path LIKE '%p2.png'").fetchone()
        assert not lib.db.execute("SELECT 1 FROM tags WHERE photo_id NOT IN (SELECT id FROM photos)").fetchone()
        # the text of every photo left, and of no other (a noise image may have no tag the rule shows)
        assert not lib.db.execute("SELECT 1 FROM photo_text WHERE rowid NOT IN (SELECT id FROM photos)").fetchone()
        with_text = lib.db.execute("SELECT COUNT(DISTINCT photo_id) FROM tags WHERE chosen = 1").fetchone()[0]
        assert lib.db.execute("SELECT COUNT(*) FROM photo_text").fetchone()[0] == with_text

        (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
        bad = index_photos([photos], lib, sources=FAST, progress=False)
        assert bad.unreadable == 1 and [e for e in bad.errors if "broken.jpg" in e]
        assert all(e.count("broken.jpg") == 1 for e in bad.errors)  # the path once, then what is wrong
        stored = lib.db.execute("SELECT error FROM photos WHERE path LIKE '%broken.jpg'").fetchone()[0]
        assert stored and "broken.jpg" not in stored  # the row has the path; the error says what is wrong
        assert index_photos([photos], lib, sources=FAST, progress=False).unreadable == 0  # not retried until it changes


def test_a_new_model_tags_every_photo_again(tmp_path):
    photos = tmp_path / "photos"
    for i in range(3):
        write_png(photos / f"p{i}.png", seed=i)
    with Library(tmp_path / "lib.sqlite") as lib:
        index_photos([photos], lib, sources=FAST, progress=False)
        both = index_photos([photos], lib, sources=FAST + ["corel5k-annotator"], progress=False)
        assert both.indexed == 3
        models = {m["name"]: m["photos"] for m in lib.stats()["models"]}
        assert models == {"imagenet-classes": 3, "corel5k-annotator": 3}
        assert index_photos([photos], lib, sources=FAST + ["corel5k-annotator"], progress=False).skipped == 3


def test_one_view_is_another_model_and_close_to_two(tmp_path):
    photos = tmp_path / "photos"
    for i in range(3):
        write_png(photos / f"p{i}.png", seed=i, size=(64, 48))
    with Library(tmp_path / "lib.sqlite") as lib:
        index_photos([photos], lib, sources=FAST, progress=False)
        one = index_photos([photos], lib, sources=FAST, progress=False, views=1)
        assert one.indexed == 3  # other scores: the library keeps both
        identities = [m["identity"] for m in lib.stats()["models"]]
        assert len(identities) == 2 and identities[1] == identities[0] + "-1view"
        scores = {}
        for identity, score in lib.db.execute("SELECT m.identity, t.score FROM tags t JOIN models m ON m.id = "
                                              "t.model_id WHERE t.photo_id = 1 ORDER BY t.label"):
            scores.setdefault(identity, []).append(score)
        assert scores[identities[0]] != scores[identities[1]]


def test_exif_dates_heic_and_date_filters(tmp_path):
    photos = tmp_path / "photos"
    write_jpeg(photos / "old.jpg", 1, taken="2019:07:31 10:00:00")
    write_jpeg(photos / "new.jpg", 2, taken="2023:01:02 08:30:00")
    write_jpeg(photos / "undated.jpg", 3)
    import pillow_heif  # noqa: F401  (registered by tagcap.features.images)

    Image.fromarray(np.full((30, 50, 3), 128, np.uint8)).save(photos / "phone.heic")
    with Library(tmp_path / "lib.sqlite") as lib:
        stats = index_photos([photos], lib, sources=FAST, progress=False)
        assert stats.indexed == 4 and stats.unreadable == 0
        taken = dict(lib.db.execute("SELECT substr(path, length(path) - 8), taken FROM photos"))
        assert taken["s/old.jpg"] == "2019-07-31T10:00:00" and taken["s/new.jpg"] == "2023-01-02T08:30:00"
        assert lib.db.execute("SELECT width, height FROM photos WHERE path LIKE '%phone.heic'").fetchone() == (50, 30)
        assert [Path(h.path).name for h in search(lib, after="2020")] == ["new.jpg"]
        assert [Path(h.path).name for h in search(lib, before="2020-01")] == ["old.jpg"]
        assert search(lib, after="2019-07-31", before="2023-01-02") != []
        with pytest.raises(TagcapError, match="--after 'last week'"):
            search(lib, after="last week")
    assert exif_date("0000:00:00 00:00:00") is None and exif_date("2020:02:03") == "2020-02-03"


@needs_corel
def test_search_finds_what_is_in_the_photos(tmp_path):
    test = json.loads((COREL / "test.json").read_text())["samples"]
    tigers = [s["image_name"] for s in test if "tiger" in s["image_labels"]][:4]
    others = [s["image_name"] for s in test if "tiger" not in s["image_labels"] and "sky" in s["image_labels"]][:8]
    photos = tmp_path / "photos"
    for name in tigers + others:
        (photos / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(COREL / "images" / name, photos / name)
    lib_path = tmp_path / "lib.sqlite"
    run = tagcap("index", photos, "--library", lib_path, "--quiet", "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["indexed"] == 12

    out = tagcap("search", "tiger", "--library", lib_path, "--json", "--limit", "4")
    assert out.returncode == 0, out.stderr
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    assert {Path(h["path"]).relative_to(photos).as_posix() for h in hits} == set(tigers)
    assert hits == sorted(hits, key=lambda h: -h["relevance"])
    assert all(h["caption"] for h in hits) and all(t["source"] for h in hits for t in h["tags"])

    with Library(lib_path, mode="read") as lib:
        no_tiger = search(lib, "sky", not_tags=["tiger"], limit=50)
        assert no_tiger and not any("tiger" in [t["label"] for t in h.tags] for h in no_tiger)
        best = sorted(r[0] for r in lib.db.execute("SELECT MAX(score) FROM tags WHERE label = 'tiger' GROUP BY photo_id"))
        assert len(best) >= len(hits)
        best = best[-len(hits):]  # the tiger photos' (the best scored)
        floor = (best[0] + best[1]) / 2  # between the two weakest tigers
        strict = search(lib, "tiger", min_score=floor, limit=50)
        assert len(strict) == len(hits) - 1 and all(h.relevance >= floor for h in strict)
        tiger = search(lib, "tiger", limit=50)  # a possessive is the word, its s no word of its own
        assert tiger and search(lib, "tiger's", limit=50) == search(lib, "tiger\u2019s", limit=50) == tiger
    table = tagcap("search", "tiger", "--library", lib_path, "--limit", "2")
    assert table.returncode == 0 and "tags: " in table.stdout
    stats = tagcap("library", "stats", "--library", lib_path)
    assert "12 photos" in stats.stdout and "flickr8k-captioner" in stats.stdout


def test_every_word_must_match_a_label_or_the_text_of_photos_beyond_the_first_text_matches(tmp_path):
    """Words of a query matched by a chosen label, a label the rule did not choose, or the caption
    (Porter-stemmed); candidates from the label index are checked word by word, here with more text
    matches than the first page of candidates holds (250 > 200), so the check reads beyond them. (The
    words name no physical object: a caption's object words need the photo's tags to back them,
    tests/test_grounding.py.)"""
    with Library(tmp_path / "lib.sqlite") as lib:
        with lib.transaction():
            mid = lib.model_id("m", "m", "annotation")
            cap = lib.model_id("c", "c", "caption")

            def photo(name, tags, caption):
                facts = {"path": f"/p/{name}.jpg", "size": 1, "mtime_ns": 1, "sha256": name}
                lib.write_photo(facts, {mid: {"tags": tags}, cap: {"tags": [], "caption": caption}}, 0.0)

            for i in range(250):
                photo(f"text{i:03d}", [], "a sunset on a quiet morning")
            photo("unchosen", [("sunset", 0.9, 1), ("morning", 0.25, 0)], "a long sunset")
            photo("caption", [("sunset", 0.95, 1)], "morning resting under a sunset")
            photo("stemmed", [("sunset", 0.85, 1)], "the mornings of the forest")
            photo("neither", [("sunset", 0.99, 1), ("grass", 0.2, 0)], "a sunset alone")
        top = [Path(h.path).stem for h in search(lib, "sunset morning", limit=3)]
        assert sorted(top) == ["caption", "stemmed", "unchosen"], top
        every = [Path(h.path).stem for h in search(lib, "sunset morning", limit=300)]
        assert "neither" not in every and len(every) >= 200 and set(top) <= set(every)
        stemmed = {Path(h.path).stem for h in search(lib, "sunsets mornings", limit=300)}  # no label is either word
        assert {"caption", "stemmed"} <= stemmed and not {"unchosen", "neither"} & stemmed


def test_kill_9_half_way_then_rerun_equals_an_unbroken_run(tmp_path):
    photos = tmp_path / "photos"
    for i in range(96):
        write_png(photos / f"{i:03d}.png", seed=i, size=(64, 48))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed.sqlite"
    cmd = [sys.executable, "-m", "tagcap", "index", str(photos), "--library", str(killed), "--batch-size", "8",
           "--quiet", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    at_kill = 0
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
        try:
            db = sqlite3.connect(f"file:{killed}?mode=ro", uri=True, timeout=1)
            at_kill = db.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
            db.close()
        except sqlite3.Error:
            continue
        if at_kill >= 16:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed: {proc.stderr.read()}"
    half = rows(killed)
    assert half["integrity"] == "ok"
    assert 16 <= len(half["photos"]) < 96 and len(half["photos"]) % 8 == 0  # whole batches only
    assert len(half["done"]) == len(half["photos"]) * len(DEFAULT_MODELS)  # every stored photo has every model's results

    rerun = tagcap("index", photos, "--library", killed, "--batch-size", "8", "--quiet", "--json", "--device", "cpu")
    assert rerun.returncode == 0, rerun.stderr
    assert json.loads(rerun.stdout)["skipped"] == len(half["photos"])
    whole = tmp_path / "whole.sqlite"
    unbroken = tagcap("index", photos, "--library", whole, "--batch-size", "8", "--quiet", "--device", "cpu")
    assert unbroken.returncode == 0, unbroken.stderr
    a, b = rows(killed), rows(whole)
    assert len(a["photos"]) == 96 and len(a["captions"]) == 96
    for key in ("photos", "tags", "captions", "done"):
        assert a[key] == b[key], key


def test_xmp_merges_with_what_a_sidecar_already_has():
    existing = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"
   xmlns:darktable="http://darktable.sf.net/" darktable:xmp_version="5">
  <dc:subject><rdf:Bag><rdf:li>Holiday</rdf:li></rdf:Bag></dc:subject>
 </rdf:Description></rdf:RDF></x:xmpmeta>"""
    first = merge_sidecar(existing, ["tiger", "grass"], "a tiger in the grass")
    assert "Holiday" in first and "animal|big cat|tiger" in first and 'darktable:xmp_version="5"' in first
    second = merge_sidecar(first, ["tiger"], "another caption")
    assert "Holiday" in second and ">grass<" not in second and "|grass<" not in second
    # tagcap's own caption makes way for a new one; a description a person wrote is never overwritten
    assert "another caption" in second and "a tiger in the grass" not in second
    edited = second.replace(">another caption<", ">Our trip to the zoo<", 1)
    third = merge_sidecar(edited, ["tiger"], "a third caption")
    assert "Our trip to the zoo" in third and "a third caption" not in third
    theirs = existing.replace("</dc:subject>", "</dc:subject><dc:description><rdf:Alt><rdf:li xml:lang="
                              "\"x-default\">Grandma's tiger</rdf:li></rdf:Alt></dc:description>")
    assert "a tiger in the grass" not in merge_sidecar(theirs, ["tiger"], "a tiger in the grass")


@needs_exiftool
def test_exiftool_reads_the_keywords_and_keeps_a_persons(tmp_path):
    photo = write_jpeg(tmp_path / "photos" / "a.jpg", 1)
    before = photo.read_bytes()
    sidecar = tmp_path / "photos" / "a.jpg.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(sidecar), "-XMP-dc:Subject=Holiday", "-XMP-dc:Subject=Family",
                    str(photo)], check=True)
    write_sidecar(photo, ["tiger", "crane (bird)"], "a tiger in the grass")
    read = json.loads(subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", "-XMP-lr:HierarchicalSubject",
                                      "-XMP-dc:Description", str(sidecar)], capture_output=True, text=True,
                                     check=True).stdout)[0]
    assert set(read["Subject"]) == {"Holiday", "Family", "tiger", "crane (bird)"}
    assert set(read["HierarchicalSubject"]) == {"animal|big cat|tiger", "animal|bird|crane (bird)"}
    assert read["Description"] == "a tiger in the grass"
    assert photo.read_bytes() == before


@needs_exiftool
def test_index_xmp_and_export(tmp_path):
    photos = tmp_path / "photos"
    for i in range(2):
        write_png(photos / f"p{i}.png", seed=i)
    lib_path = tmp_path / "lib.sqlite"
    run = tagcap("index", photos, "--library", lib_path, "--model", "imagenet-classes", "--xmp", "--quiet")
    assert run.returncode == 0, run.stderr
    with Library(lib_path, mode="read") as lib:
        labels = {r[0] for r in lib.db.execute("SELECT label FROM tags WHERE chosen = 1 AND photo_id = "
                                                "(SELECT id FROM photos WHERE path LIKE '%p0.png')")}
    read = json.loads(subprocess.run(["exiftool", "-j", "-XMP-dc:Subject", str(photos / "p0.png.xmp")],
                                     capture_output=True, text=True, check=True).stdout)[0]
    subject = read.get("Subject", [])
    assert set([subject] if isinstance(subject, str) else subject) == labels
    (photos / "p1.png.xmp").unlink()
    export = tagcap("library", "export-xmp", "--library", lib_path, "--naming", "replace")
    assert export.returncode == 0 and (photos / "p1.xmp").is_file() and "wrote 2" in export.stderr


def test_bad_libraries_and_folders_are_named(tmp_path):
    missing = tagcap("search", "dog", "--library", tmp_path / "none.sqlite")
    assert missing.returncode == 2 and "none.sqlite: no library here" in missing.stderr
    assert not (tmp_path / "none.sqlite").exists()
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not a database" * 100)
    bad = tagcap("library", "stats", "--library", junk)
    assert bad.returncode == 2 and "junk.sqlite: not a tagcap library" in bad.stderr
    nowhere = tagcap("index", tmp_path / "no-such-folder", "--library", tmp_path / "l.sqlite")
    assert nowhere.returncode == 2 and "no-such-folder: no such file or folder" in nowhere.stderr
    empty = tagcap("search", "--library", tmp_path / "l.sqlite")
    assert empty.returncode == 2 and "give words" in empty.stderr


def _small_library(path: Path, photos: int = 400) -> None:
    """A library of `photos` rows written through the store (no model: this is about the file)."""
    with Library(path) as lib, lib.transaction():
        model = lib.model_id("m", "m-identity", "annotation")
        for i in range(photos):
            label = ["sky", "water", "tiger", "grass"][i % 4]
            lib.write_photo({"path": f"/photos/{i:04d}.jpg", "size": 100 + i, "mtime_ns": i, "sha256": f"{i:064x}"},
                            {model: {"tags": [(label, 0.5 + i / 2000, 1)], "caption": f"a {label} in photo {i}"}}, 0.0)


def test_a_damaged_library_is_named_checked_and_its_text_index_repaired(tmp_path):
    lib = tmp_path / "lib.sqlite"
    _small_library(lib)
    sound = tagcap("library", "check", "--library", lib)
    assert sound.returncode == 0 and "sound (400 photos" in sound.stdout, sound.stderr
    before = tagcap("search", "photo", "--json", "--library", lib)
    assert before.returncode == 0 and len(before.stdout.splitlines()) == 20  # caption words: the text index

    # the full-text index damaged (its blocks zeroed): searches still answer, without text matches
    fts = tmp_path / "fts.sqlite"
    shutil.copy(lib, fts)
    with sqlite3.connect(fts) as db:
        db.execute("UPDATE photo_text_data SET block = zeroblob(length(block)) WHERE id > 10")
    found = tagcap("library", "check", "--library", fts)
    assert found.returncode == 1 and "full-text index (photo_text)" in found.stdout
    assert "--repair" in found.stderr
    repaired = tagcap("library", "check", "--repair", "--library", fts)
    assert repaired.returncode == 0 and "sound (400 photos" in repaired.stdout, repaired.stderr
    assert tagcap("search", "photo", "--json", "--library", fts).stdout == before.stdout

    # pages overwritten with noise past the first: every command names the file and the way out
    pages = tmp_path / "pages.sqlite"
    data = bytearray(lib.read_bytes())
    data[4096:] = np.random.default_rng(0).integers(0, 256, len(data) - 4096, dtype=np.uint8).tobytes()
    pages.write_bytes(bytes(data))
    for command in (["search", "sky"], ["library", "stats"], ["index", tmp_path / "no-photos-here.jpg"]):
        if command[0] == "index":
            write_png(tmp_path / "no-photos-here.jpg", seed=0)
        failed = tagcap(*command, "--library", pages)
        assert failed.returncode == 2, (command, failed.stderr)
        assert "Traceback" not in failed.stderr
        assert f"{pages}: the library file is damaged" in failed.stderr, (command, failed.stderr)
        assert f"tagcap library check --library {pages}" in failed.stderr
    checked = tagcap("library", "check", "--repair", "--library", pages)  # pages damaged: nothing to repair
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert "index PHOTOS --library NEW.sqlite" in checked.stderr
