"""What is not tagcap's is never changed: a person's XMP keywords and sidecars in any encoding, other
programs' SQLite files, files reached through links; and a library written by one `index` at a time.
Each fault is made for real: sidecars written by exiftool or by hand, a real foreign SQLite file, real
processes."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_png
from tagcap.errors import ConfigError
from tagcap.library.search import MAX_QUERY_CHARS, search
from tagcap.library.store import Library
from tagcap.library.xmp import merge_sidecar, write_sidecar

FAST = ["imagenet-classes"]
needs_exiftool = pytest.mark.skipif(shutil.which("exiftool") is None,
                                    reason="exiftool not installed (Debian: libimage-exiftool-perl; .ci/run installs it)")

PERSON = """<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
 <rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/">
  <dc:subject><rdf:{kind}><rdf:li>{first}</rdf:li><rdf:li>sky</rdf:li></rdf:{kind}></dc:subject>
 </rdf:Description></rdf:RDF></x:xmpmeta>"""


def tagcap(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tagcap", *map(str, args)], capture_output=True, text=True,
                          timeout=kw.pop("timeout", 300), **kw)


def photo_folder(folder: Path, n: int) -> Path:
    for i in range(n):
        write_png(folder / f"p{i}.png", seed=i)
    return folder


def index(photos: Path, lib: Path, *extra) -> subprocess.CompletedProcess:
    # each model's own rule: noise images get keywords to write, where the shown rule would show none
    return tagcap("index", photos, "--library", lib, "--model", FAST[0], "--rule", "model", "--quiet", *extra)


def exif_read(sidecar: Path, *tags: str) -> dict:
    out = subprocess.run(["exiftool", "-j", *[f"-{t}" for t in tags], str(sidecar)], capture_output=True, text=True,
                         check=True).stdout
    listed = json.loads(out)[0]
    return {k: v if isinstance(v, list) else [v] for k, v in listed.items() if k != "SourceFile"}


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- XMP ---------------------------------------------------------------------------------------------

@needs_exiftool
def test_a_persons_keyword_tagcap_also_chose_stays_when_tagcap_drops_it(tmp_path):
    photo = write_png(tmp_path / "a.png")
    sidecar = tmp_path / "a.png.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(sidecar), "-XMP-dc:Subject=Grandma", "-XMP-dc:Subject=sky",
                    str(photo)], check=True)
    write_sidecar(photo, ["sky", "cloud"], None)  # tagcap chooses the person's `sky` too, and adds `cloud`
    assert set(exif_read(sidecar, "XMP-dc:Subject")["Subject"]) == {"Grandma", "sky", "cloud"}
    write_sidecar(photo, [], None)  # the photo changed: tagcap chooses neither any more
    assert set(exif_read(sidecar, "XMP-dc:Subject")["Subject"]) == {"Grandma", "sky"}  # only tagcap's went


@needs_exiftool
def test_no_caption_leaves_every_description_alone(tmp_path):
    """`index --xmp --no-caption` writes keywords and leaves descriptions as they are: a person's, and
    the empty one of a photo tagcap captions all the same (the caption stays searchable); a later
    `export-xmp` without it writes the caption where there is none, still never over the person's."""
    photos = photo_folder(tmp_path / "photos", 2)
    theirs, ours = photos / "p0.png.xmp", photos / "p1.png.xmp"
    subprocess.run(["exiftool", "-q", "-o", str(theirs), "-XMP-dc:Description=Our garden in May",
                    str(photos / "p0.png")], check=True)
    lib = tmp_path / "lib.sqlite"
    run = tagcap("index", photos, "--library", lib, "--model", FAST[0], "--model", "flickr8k-captioner",
                 "--rule", "model", "--xmp", "--no-caption", "--quiet")
    assert run.returncode == 0, run.stderr
    assert exif_read(theirs, "XMP-dc:Description")["Description"] == ["Our garden in May"]
    assert exif_read(ours, "XMP-dc:Subject")["Subject"] and not exif_read(ours, "XMP-dc:Description")
    with Library(lib, mode="read") as library:
        made = [r[0] for r in library.db.execute("SELECT text FROM captions")]
    assert len(made) == 2 and all(made)
    export = tagcap("library", "export-xmp", "--library", lib)
    assert export.returncode == 0, export.stderr
    assert exif_read(ours, "XMP-dc:Description")["Description"][0] in made
    assert exif_read(theirs, "XMP-dc:Description")["Description"] == ["Our garden in May"]


def test_a_keyword_a_person_removed_is_not_put_back():
    first = merge_sidecar(None, ["tiger", "grass"], None)
    edited = first.replace("<rdf:li>grass</rdf:li>", "", 1)  # the person deletes `grass` in their photo manager
    again = merge_sidecar(edited, ["tiger", "grass"], None)
    assert ">grass<" not in again.split("tagcap:rejected")[0].split("<tagcap:added")[0]
    assert "<rdf:li>tiger</rdf:li>" in again
    re_added = merge_sidecar(again.replace("<rdf:li>tiger</rdf:li>", "<rdf:li>tiger</rdf:li><rdf:li>grass</rdf:li>",
                                           1), [], None)  # ... and later types it in again: theirs now
    assert "<rdf:li>grass</rdf:li>" in re_added.split("<tagcap:")[0]


def test_a_seq_subject_keeps_its_one_container():
    merged = merge_sidecar(PERSON.format(kind="Seq", first="Grandma"), ["tiger"], None)
    subject = merged.split("<dc:subject>")[1].split("</dc:subject>")[0]
    assert subject.count("<rdf:Seq>") == 1 and "<rdf:Bag" not in subject
    assert [s.split("<")[0] for s in subject.split("<rdf:li>")[1:]] == ["Grandma", "sky", "tiger"]


@needs_exiftool
def test_a_latin1_sidecar_is_read_and_the_export_goes_on(tmp_path):
    photos = photo_folder(tmp_path / "photos", 3)
    latin = photos / "p0.png.xmp"
    text = '<?xml version="1.0" encoding="ISO-8859-1"?>\n' + PERSON.format(kind="Bag", first="Gro\xdfmutter")
    latin.write_bytes(text.encode("latin-1"))
    lib = tmp_path / "lib.sqlite"
    assert index(photos, lib).returncode == 0
    export = tagcap("library", "export-xmp", "--library", lib)
    assert export.returncode == 0, export.stderr
    assert "wrote 3" in export.stderr
    subject = exif_read(latin, "XMP-dc:Subject")["Subject"]
    assert {"Gro\xdfmutter", "sky"} <= set(subject) and len(subject) > 2
    assert all((photos / f"p{i}.png.xmp").is_file() for i in range(3))


@needs_exiftool
def test_index_xmp_goes_past_a_bad_sidecar_and_a_rerun_writes_what_is_missing(tmp_path):
    photos = photo_folder(tmp_path / "photos", 4)
    bad = photos / "p1.png.xmp"
    bad.write_text("not xml")
    lib = tmp_path / "lib.sqlite"
    first = index(photos, lib, "--xmp")
    assert first.returncode == 1 and "p1.png.xmp" in first.stderr and "not valid XML" in first.stderr
    assert bad.read_text() == "not xml"  # left as the person has it
    assert all((photos / f"p{i}.png.xmp").is_file() for i in (0, 2, 3))
    again = index(photos, lib, "--xmp")
    assert again.returncode == 1 and "p1.png.xmp" in again.stderr  # still said, still not overwritten
    assert bad.read_text() == "not xml"
    bad.unlink()  # the person mends it (here: deletes it): the next run writes it
    third = index(photos, lib, "--xmp")
    assert third.returncode == 0, third.stderr
    assert "4 unchanged" in third.stderr and exif_read(bad, "XMP-dc:Subject")["Subject"]


# -- other programs' SQLite files -----------------------------------------------------------------------

def foreign_sqlite(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE contacts (name TEXT, phone TEXT)")
        db.execute("INSERT INTO contacts VALUES ('Ada', '555')")
    return path


def test_no_command_changes_a_foreign_sqlite_file(tmp_path):
    photos = photo_folder(tmp_path / "photos", 1)
    foreign = foreign_sqlite(tmp_path / "contacts.sqlite")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    before = {p: digest(p) for p in (foreign, empty)}
    for path in (foreign, empty):
        for args in (["library", "stats"], ["search", "dog"], ["library", "export-xmp"], ["library", "check"]):
            run = tagcap(*args, "--library", path)
            assert run.returncode == 2 and "not a tagcap library" in run.stderr, (args, run.stderr)
    refused = index(photos, foreign)
    assert refused.returncode == 2 and "not a tagcap library" in refused.stderr
    serve = tagcap("serve", "--library", foreign, "--port", "1")  # refused before it loads a model or binds
    assert serve.returncode == 2 and "not a tagcap library" in serve.stderr, serve.stderr
    assert {p: digest(p) for p in (foreign, empty)} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["contacts.sqlite", "empty.sqlite", "photos"]  # no -wal
    with sqlite3.connect(foreign) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert db.execute("SELECT name FROM sqlite_master").fetchall() == [("contacts",)]
    made = index(photos, empty)  # an empty file: nothing lost
    assert made.returncode == 0 and tagcap("library", "stats", "--library", empty).returncode == 0


def test_reading_a_library_writes_nothing_to_it(tmp_path):
    photos = photo_folder(tmp_path / "photos", 1)
    lib = tmp_path / "lib.sqlite"
    assert index(photos, lib).returncode == 0
    before = digest(lib)
    os.chmod(lib, 0o444)  # a read-only file: a command that tried to write would fail
    try:
        for args in (["library", "stats"], ["search", "a"]):
            assert tagcap(*args, "--library", lib).returncode == 0
    finally:
        os.chmod(lib, 0o644)
    assert digest(lib) == before


def test_a_second_index_of_one_library_is_refused_while_the_first_runs(tmp_path):
    photos = tmp_path / "photos"
    for i in range(48):
        write_png(photos / f"p{i}.png", seed=i, size=(320, 240))
    lib = tmp_path / "lib.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "tagcap", "index", str(photos), "--library", str(lib),
                              "--batch-size", "1", "--quiet"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and first.poll() is None:  # until the first holds the lock
            if Path(f"{lib}.lock").exists():
                fd = os.open(f"{lib}.lock", os.O_RDWR)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    fcntl.flock(fd, fcntl.LOCK_UN)
                except BlockingIOError:
                    break
                finally:
                    os.close(fd)
            time.sleep(0.05)
        assert first.poll() is None, "the first index ended before the second could start"
        second = index(photos, lib)
        assert second.returncode == 2 and "another `tagcap index` is writing to this library" in second.stderr
    finally:
        first.wait(timeout=600)
    assert first.returncode == 0, first.stderr.read()
    with Library(lib, mode="read") as done:
        assert done.db.execute("SELECT COUNT(*) FROM photos").fetchone()[0] == 48


# -- the gallery serves only what was indexed -------------------------------------------------------------

def test_the_gallery_does_not_follow_a_photo_replaced_by_a_link_outside(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tagcap.serve.app import ServeConfig, create_app

    photos = photo_folder(tmp_path / "photos", 2)
    lib = tmp_path / "lib.sqlite"
    assert index(photos, lib).returncode == 0
    secret = write_png(tmp_path / "elsewhere" / "secret.png", seed=9)
    with Library(lib, mode="read") as db:
        ids = dict(db.db.execute("SELECT path, id FROM photos"))
    victim = str((photos / "p1.png").resolve())
    os.unlink(victim)
    os.symlink(secret, victim)
    client = TestClient(create_app(["imagenet-classes"], ServeConfig(device="cpu"), library=lib))
    ok = ids[str((photos / "p0.png").resolve())]
    assert client.get(f"/v1/library/photos/{ok}/image").status_code == 200
    for what in ("image", "thumb"):
        refused = client.get(f"/v1/library/photos/{ids[victim]}/{what}")
        assert refused.status_code == 404 and "outside the indexed folders" in refused.json()["detail"]
    assert client.get(f"/v1/library/photos/{2**64}").status_code == 422  # over SQLite's integers: refused, not a 500


# -- search arguments ---------------------------------------------------------------------------------

def test_search_refuses_what_it_cannot_answer_sensibly(tmp_path):
    photos = photo_folder(tmp_path / "photos", 1)
    lib = tmp_path / "lib.sqlite"
    assert index(photos, lib).returncode == 0
    for args, said in ((["dog", "--offset", "99999999999999999999"], "--offset"),
                       (["dog", "--limit", "99999999999999999999"], "--limit"),
                       (["dog", "--min-score", "nan"], "--min-score"), (["dog", "--min-score", "2"], "--min-score"),
                       (["dog", "--min-score", "-1"], "--min-score"), (['"'], "no word"), (["*"], "no word"),
                       (["\N{DOG FACE}"], "no word"), (["a " * 50_000], "characters long")):
        run = tagcap("search", *args, "--library", lib)
        assert run.returncode == 2 and said in run.stderr and "Traceback" not in run.stderr, (args, run.stderr)
    with Library(lib, mode="read") as db:
        with pytest.raises(ConfigError, match="different words"):
            search(db, " ".join(f"w{i}" for i in range(40)))
        assert search(db, "x" * MAX_QUERY_CHARS) == []  # the longest query allowed is answered


def test_photos_stored_twice_are_listed_as_duplicates(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from tagcap.serve.app import ServeConfig, create_app

    photos = photo_folder(tmp_path / "photos", 3)
    (photos / "copies").mkdir()
    shutil.copy(photos / "p1.png", photos / "copies" / "p1 copy.png")
    shutil.copy(photos / "p1.png", photos / "copies" / "again.png")
    lib = tmp_path / "lib.sqlite"
    assert index(photos, lib).returncode == 0
    listed = tagcap("library", "duplicates", "--library", lib, "--json")
    assert listed.returncode == 0 and "1 photos stored more than once (2 extra copies)" in listed.stderr
    groups = [json.loads(line) for line in listed.stdout.splitlines()]
    assert groups == [sorted(str((p).resolve()) for p in (photos / "p1.png", photos / "copies" / "p1 copy.png",
                                                          photos / "copies" / "again.png"))]
    client = TestClient(create_app(["imagenet-classes"], ServeConfig(device="cpu"), library=lib))
    shown = client.get("/v1/library/duplicates").json()["groups"]
    assert [[p["name"] for p in g] for g in shown] == [[Path(p).name for p in groups[0]]]
    assert all("path" not in p for g in shown for p in g)


def test_a_blocked_label_is_never_suggested_again_and_a_persons_keyword_stays_theirs(tmp_path):
    """`never suggest this label`: gone from every photo and from search, and it stays gone after the
    photos are indexed again; a label the person added is written as their own keyword (not tagcap's)."""
    import time

    from tagcap.library.search import search

    photos = photo_folder(tmp_path / "photos", 3)
    lib_path = tmp_path / "lib.sqlite"
    assert index(photos, lib_path).returncode == 0
    with Library(lib_path, mode="write") as lib:
        label, count = lib.db.execute("SELECT label, COUNT(DISTINCT photo_id) FROM tags WHERE chosen = 1 "
                                      "GROUP BY label ORDER BY 2 DESC, 1").fetchone()
        assert search(lib, label)
        assert lib.block(label, time.time()) >= count
        assert search(lib, label) == []
        pid = lib.db.execute("SELECT MIN(id) FROM photos").fetchone()[0]
        lib.correct(pid, "Grandma", "add", time.time())
    assert index(photos, lib_path, "--views", "1", "--xmp").returncode == 0  # another model: everything again
    with Library(lib_path, mode="read") as lib:
        assert search(lib, label) == []
        assert lib.db.execute("SELECT COUNT(*) FROM tags WHERE label = ?", (label,)).fetchone()[0] == 0
        path = lib.db.execute("SELECT path FROM photos WHERE id = ?", (pid,)).fetchone()[0]
    import re

    sidecar = Path(path + ".xmp").read_text()
    subject = re.search(r"<dc:subject>(.*?)</dc:subject>", sidecar, re.S).group(1)
    added = re.search(r"<tagcap:added>(.*?)</tagcap:added>", sidecar, re.S)
    assert "<rdf:li>Grandma</rdf:li>" in subject and (added is None or "Grandma" not in added.group(1))
    once_theirs = merge_sidecar(sidecar, [], None)  # and tagcap, choosing nothing later, leaves it alone
    assert "<rdf:li>Grandma</rdf:li>" in once_theirs


def test_index_xmp_writes_the_sidecars_of_photos_indexed_without_it(tmp_path):
    photos = photo_folder(tmp_path / "photos", 3)
    lib = tmp_path / "lib.sqlite"
    assert index(photos, lib).returncode == 0 and not list(photos.glob("*.xmp"))
    again = index(photos, lib, "--xmp")
    assert again.returncode == 0 and "3 unchanged" in again.stderr  # nothing tagged again, every sidecar written
    assert sorted(p.name for p in photos.glob("*.xmp")) == [f"p{i}.png.xmp" for i in range(3)]
