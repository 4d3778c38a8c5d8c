"""The photo library's SQLite file: what was indexed, by which model, and the full-text index.

Tables (schema version in `meta`):

- `photos`: one row per file: path (absolute, as the file system spells it), size, mtime_ns,
  sha256 of the content, width, height, EXIF date (`taken`, ISO 8601) and orientation, and the
  decoding error if the file could not be read (then it has no tags).
- `models`: each model that ever tagged or captioned a photo, by identity (its weights' sha256 and
  its decision rule): a new or retrained model is a new row, and re-tags what it has not seen.
- `done(photo, model)`: which model has processed which photo (a photo with no tag from a model
  still counts as done for it).
- `tags(photo, model, label, score, chosen)`: the labels the model's rule chose (chosen = 1) and
  its other best-scored labels (chosen = 0), which rank searches but are not keywords.
- `captions(photo, model, text)`.
- `photo_text`: FTS5 over each photo's chosen labels and caption (rowid = photo id), BM25-ranked.
- `roots`: the folders (and single photos) `tagcap index` was given; the gallery shows only files
  whose real path lies under one of them.
- `sidecars(photo, indexed_at)`: the photo's XMP sidecar was written from the results of that
  indexing; a photo without a row, or with an older one, still needs its sidecar (`index --xmp`).
- `corrections(photo, label, action, at)` and `blocked(label, at)`: a person's decisions, which win
  over every model: a label added to a photo (kept in `tags` under the model row `PERSON`, score 1,
  chosen), a label removed from a photo, a label never to be suggested for any photo (both: their
  model rows deleted, again after every re-indexing of the photo).

WAL journal, foreign keys on; the indexer writes each batch in one transaction, so a killed run
leaves whole photos or none.

A file is a tagcap library when it carries tagcap's `application_id` (or, made before that, has
schema version 1 and tagcap's tables). Only `tagcap index` (mode "create") makes one, and only
where there is no file or an empty one; commands that change a library ("write") open only a
tagcap library; those that read it ("read") open it read-only, so no other SQLite file is ever
changed by them (no tables added, no journal mode switched).
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from pathlib import Path

from tagcap.errors import LibraryError, TagcapError

SCHEMA_VERSION = 2
APPLICATION_ID = 0x74676370  # "tgcp": PRAGMA application_id, how a tagcap library is known
TABLES = {"meta", "photos", "models", "done", "tags", "captions", "photo_text"}  # those of schema 1
MODES = ("create", "write", "read")
PERSON = "you"  # the model row under which a person's own tags are kept (task "person")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    width INTEGER,
    height INTEGER,
    taken TEXT,
    orientation INTEGER,
    error TEXT,
    indexed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS photos_taken ON photos(taken);
CREATE INDEX IF NOT EXISTS photos_when ON photos(COALESCE(taken, strftime('%Y-%m-%dT%H:%M:%S', mtime_ns / 1000000000, 'unixepoch')));
CREATE INDEX IF NOT EXISTS photos_sha256 ON photos(sha256);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    identity TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS done (
    photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
    model_id INTEGER NOT NULL REFERENCES models(id),
    PRIMARY KEY (photo_id, model_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS tags (
    photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
    model_id INTEGER NOT NULL REFERENCES models(id),
    label TEXT NOT NULL,
    score REAL NOT NULL,
    chosen INTEGER NOT NULL,
    PRIMARY KEY (photo_id, model_id, label)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS tags_label ON tags(label COLLATE NOCASE, score);
CREATE TABLE IF NOT EXISTS captions (
    photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
    model_id INTEGER NOT NULL REFERENCES models(id),
    text TEXT NOT NULL,
    PRIMARY KEY (photo_id, model_id)
) WITHOUT ROWID;
CREATE VIRTUAL TABLE IF NOT EXISTS photo_text USING fts5(tags, caption, tokenize = 'porter unicode61');
CREATE TABLE IF NOT EXISTS roots (path TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS corrections (
    photo_id INTEGER NOT NULL REFERENCES photos(id) ON DELETE CASCADE,
    label TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ('add', 'remove')),
    at REAL NOT NULL,
    PRIMARY KEY (photo_id, label)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blocked (label TEXT PRIMARY KEY COLLATE NOCASE, at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sidecars (
    photo_id INTEGER PRIMARY KEY REFERENCES photos(id) ON DELETE CASCADE,
    indexed_at REAL NOT NULL
);
"""
TEXT_COLUMNS = "tags, caption, tokenize = 'porter unicode61'"  # photo_text's, for search's scratch copy
# when a photo was taken: its EXIF date, else its file's modification time (the expression photos_when indexes)
WHEN = "COALESCE(p.taken, strftime('%Y-%m-%dT%H:%M:%S', p.mtime_ns / 1000000000, 'unixepoch'))"
REINDEX = ("The photos themselves are untouched: `tagcap index PHOTOS --library NEW.sqlite` makes a sound library "
           "of them again")  # the way out of a damaged library
TEXT_INDEX_DAMAGED = "the full-text index (photo_text)"  # how check() names a damaged text index


def default_library() -> Path:
    """~/.local/share/tagcap/library.sqlite (or under $XDG_DATA_HOME)."""
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "tagcap" / "library.sqlite"


class Library:
    """An open library file, in one of three modes (see the module docstring):

    - "create" (`tagcap index`): makes the file (and its folder) when missing or empty, refuses any
      other file that is not a tagcap library, brings an older library's schema up to date;
    - "write" (export-xmp, check): an existing tagcap library, read and written;
    - "read" (search, stats, duplicates, the gallery): an existing tagcap library, opened read-only."""

    def __init__(self, path: str | Path | None = None, mode: str = "create"):
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: one of {MODES}")
        self.path = Path(path) if path else default_library()
        self.mode = mode
        self.db = None
        if not self.path.is_file():
            if self.path.exists():
                raise TagcapError(f"{self.path}: not a file")
            if mode != "create":
                raise TagcapError(f"{self.path}: no library here (make one with `tagcap index PHOTOS --library "
                                  f"{self.path}`)")
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if mode == "read":
                uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            else:
                self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)  # explicit transactions
            self.version = self._identify()
            if mode != "read":
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")  # WAL: durable at checkpoints, never corrupt
            self.db.execute("PRAGMA foreign_keys=ON")
            if mode != "read":
                self._migrate()
        except sqlite3.DatabaseError as e:
            self._close()
            raise failure(self.path, e) from None
        except BaseException:
            self._close()
            raise

    def _close(self) -> None:
        if self.db is not None:
            self.db.close()

    def _identify(self) -> int:
        """The file's schema version; 0 for an empty file (which only "create" takes). Anything that is
        not a tagcap library is refused before a byte of it is written."""
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        app = self.db.execute("PRAGMA application_id").fetchone()[0]
        empty = self.db.execute("PRAGMA page_count").fetchone()[0] == 0
        if empty and self.mode == "create":
            return 0
        tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        ours = app == APPLICATION_ID or (app == 0 and version == 1 and TABLES <= tables)
        if not ours:
            why = "an empty file" if empty else "another program's SQLite file"
            raise LibraryError(f"{self.path}: not a tagcap library ({why}); left as it is. "
                               "`tagcap index PHOTOS --library NEW.sqlite` makes a library in a new file")
        if version > SCHEMA_VERSION:
            raise TagcapError(f"{self.path}: written by a newer tagcap (schema {version}, this one reads "
                              f"{SCHEMA_VERSION}); upgrade tagcap")
        return version

    def _migrate(self) -> None:
        if self.version < SCHEMA_VERSION:
            with self.transaction():
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        self.db.execute(statement)
                self.db.execute(f"PRAGMA application_id={APPLICATION_ID}")
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            self.version = SCHEMA_VERSION

    def index_lock(self):
        """Held by `tagcap index` for its whole run (a lock file beside the library, `LIB.lock`,
        released by the system when the process ends, however it ends): a second index of the same
        library is refused rather than doing the same work again."""
        import fcntl

        lock = Path(f"{self.path}.lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LibraryError(f"{self.path}: another `tagcap index` is writing to this library (it holds "
                               f"{lock}); run this one when it has finished") from None
        return _Lock(fd)

    def transaction(self):
        return _Transaction(self.db)

    def close(self) -> None:
        self._close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        if isinstance(exc, sqlite3.DatabaseError):  # what failed, named, instead of SQLite's bare words
            raise failure(self.path, exc) from exc

    def check(self) -> list[str]:
        """What is wrong with the file, or [] when it is sound: SQLite's integrity check of every
        table and index (each page read), the foreign keys, and FTS5's check of the text index
        against the text it indexes."""
        problems = []
        try:
            problems += [row[0] for row in self.db.execute("PRAGMA integrity_check(100)") if row[0] != "ok"]
            problems += [f"{table} row {rowid}: no {parent} row for it" for table, rowid, parent, _ in
                         self.db.execute("PRAGMA foreign_key_check")]
        except sqlite3.DatabaseError as e:
            problems.append(str(e))
        try:
            self.db.execute("INSERT INTO photo_text(photo_text) VALUES ('integrity-check')")
        except sqlite3.DatabaseError as e:
            problems.append(f"{TEXT_INDEX_DAMAGED}: {e}")
        return problems

    def rebuild_text_index(self) -> None:
        """Build the full-text index again from the text it indexes (FTS5's 'rebuild'), in one
        transaction: the repair for a damaged text index when every table's pages are sound."""
        with self.transaction():
            self.db.execute("INSERT INTO photo_text(photo_text) VALUES ('rebuild')")

    # -- models ------------------------------------------------------------------------------
    def model_id(self, name: str, identity: str, task: str) -> int:
        row = self.db.execute("SELECT id FROM models WHERE identity = ?", (identity,)).fetchone()
        if row:
            return row[0]
        return self.db.execute("INSERT INTO models(name, identity, task) VALUES (?, ?, ?)",
                               (name, identity, task)).lastrowid

    # -- photos ------------------------------------------------------------------------------
    def lookup(self, paths: list[str]) -> dict[str, tuple]:
        """{path: (id, size, mtime_ns, sha256)} for those of `paths` already in the library."""
        out = {}
        for start in range(0, len(paths), 500):
            chunk = paths[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for row in self.db.execute(f"SELECT path, id, size, mtime_ns, sha256 FROM photos WHERE path IN ({marks})",
                                       chunk):
                out[row[0]] = row[1:]
        return out

    def models_done(self, photo_ids: list[int]) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {i: set() for i in photo_ids}
        for start in range(0, len(photo_ids), 500):
            chunk = photo_ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for pid, mid in self.db.execute(f"SELECT photo_id, model_id FROM done WHERE photo_id IN ({marks})", chunk):
                out[pid].add(mid)
        return out

    def remove(self, photo_id: int) -> None:
        self.db.execute("DELETE FROM photo_text WHERE rowid = ?", (photo_id,))
        self.db.execute("DELETE FROM photos WHERE id = ?", (photo_id,))

    def write_photo(self, facts: dict, results: dict[int, dict] | None, now: float) -> int:
        """Insert or replace one photo and what each model (by id) made of it, inside the caller's
        transaction. `results`: {model_id: {"tags": [(label, score, chosen)], "caption": str | None}}."""
        row = self.db.execute("SELECT id FROM photos WHERE path = ?", (facts["path"],)).fetchone()
        values = (facts["size"], facts["mtime_ns"], facts["sha256"], facts.get("width"), facts.get("height"),
                  facts.get("taken"), facts.get("orientation"), facts.get("error"), now)
        if row:
            pid = row[0]
            self.db.execute("UPDATE photos SET size=?, mtime_ns=?, sha256=?, width=?, height=?, taken=?, orientation=?, "
                            "error=?, indexed_at=? WHERE id=?", (*values, pid))
        else:
            pid = self.db.execute("INSERT INTO photos(size, mtime_ns, sha256, width, height, taken, orientation, error, "
                                  "indexed_at, path) VALUES (?,?,?,?,?,?,?,?,?,?)", (*values, facts["path"])).lastrowid
        for mid, made in (results or {}).items():
            self.db.execute("DELETE FROM tags WHERE photo_id = ? AND model_id = ?", (pid, mid))
            self.db.execute("DELETE FROM captions WHERE photo_id = ? AND model_id = ?", (pid, mid))
            self.db.executemany("INSERT INTO tags(photo_id, model_id, label, score, chosen) VALUES (?,?,?,?,?)",
                                [(pid, mid, label, score, chosen) for label, score, chosen in made.get("tags", [])])
            if made.get("caption") is not None:  # "": the captioner's sentence was withheld (`inference.grounding`)
                self.db.execute("INSERT INTO captions(photo_id, model_id, text) VALUES (?,?,?)", (pid, mid, made["caption"]))
            self.db.execute("INSERT OR IGNORE INTO done(photo_id, model_id) VALUES (?, ?)", (pid, mid))
        if self.version >= 2:
            self._apply_corrections(pid)
        self._refresh_text(pid)
        return pid

    # -- a person's corrections --------------------------------------------------------------
    def person_id(self) -> int:
        return self.model_id(PERSON, PERSON, "person")

    def correct(self, photo_id: int, label: str, action: str, now: float) -> None:
        """A person adds `label` to a photo or removes it (action "add" or "remove"), in one transaction;
        it wins over every model, now and after any re-indexing."""
        label = label.strip()
        if action not in ("add", "remove") or not label:
            raise TagcapError(f"a correction is 'add' or 'remove' of a label, not {action!r} of {label!r}")
        with self.transaction():
            if self.db.execute("SELECT 1 FROM photos WHERE id = ?", (photo_id,)).fetchone() is None:
                raise TagcapError(f"no photo {photo_id} in the library")
            self.db.execute("INSERT OR REPLACE INTO corrections(photo_id, label, action, at) VALUES (?, ?, ?, ?)",
                            (photo_id, label, action, now))
            if action == "add":
                self.db.execute("DELETE FROM blocked WHERE label = ?", (label,))
            self._apply_corrections(photo_id)
            self._refresh_text(photo_id)
            self.db.execute("DELETE FROM sidecars WHERE photo_id = ?", (photo_id,))  # its sidecar is due again

    def block(self, label: str, now: float) -> int:
        """Never suggest `label` for any photo of the library; returns how many photos had it."""
        label = label.strip()
        if not label:
            raise TagcapError("give a label to block")
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO blocked(label, at) VALUES (?, ?)", (label, now))
            # the later decision wins: a label the person had added is taken back too
            self.db.execute("DELETE FROM corrections WHERE label = ? COLLATE NOCASE AND action = 'add'", (label,))
            photos = [r[0] for r in self.db.execute(
                "SELECT DISTINCT photo_id FROM tags WHERE label = ? COLLATE NOCASE", (label,))]
            for pid in photos:
                self._apply_corrections(pid)
                self._refresh_text(pid)
                self.db.execute("DELETE FROM sidecars WHERE photo_id = ?", (pid,))
        return len(photos)

    def _apply_corrections(self, photo_id: int) -> None:
        """The person's decisions over the models' rows of one photo: removed and blocked labels gone,
        added ones kept under PERSON (score 1, chosen)."""
        self.db.execute("DELETE FROM tags WHERE photo_id = ? AND (label COLLATE NOCASE IN (SELECT label FROM blocked) "
                        "OR label IN (SELECT label FROM corrections WHERE photo_id = ? AND action = 'remove'))",
                        (photo_id, photo_id))
        if self.db.execute("SELECT 1 FROM corrections WHERE photo_id = ? AND action = 'add'", (photo_id,)).fetchone():
            self.db.execute("INSERT OR REPLACE INTO tags(photo_id, model_id, label, score, chosen) SELECT photo_id, ?, "
                            "label, 1.0, 1 FROM corrections WHERE photo_id = ? AND action = 'add'",
                            (self.person_id(), photo_id))

    def corrected_photos(self) -> list[tuple[str, list[str]]]:
        """(path, the photo's chosen labels as corrected) of every photo a person corrected."""
        rows = self.db.execute("SELECT p.id, p.path FROM photos p WHERE EXISTS (SELECT 1 FROM corrections c WHERE "
                               "c.photo_id = p.id) ORDER BY p.path").fetchall()
        return [(path, [r[0] for r in self.db.execute("SELECT DISTINCT label FROM tags WHERE photo_id = ? AND "
                                                      "chosen = 1 ORDER BY label", (pid,))]) for pid, path in rows]

    def labels_like(self, prefix: str, limit: int = 20) -> list[str]:
        """Labels the library knows (any model's, any score) starting with `prefix`, for completion."""
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        return [r[0] for r in self.db.execute("SELECT DISTINCT label FROM tags WHERE label LIKE ? ESCAPE '\\' "
                                              "ORDER BY label LIMIT ?", (escaped + "%", limit))]

    def touch(self, photo_id: int, size: int, mtime_ns: int) -> None:
        """The file's stat changed but not its content: remember the new stat, keep the results."""
        self.db.execute("UPDATE photos SET size = ?, mtime_ns = ? WHERE id = ?", (size, mtime_ns, photo_id))

    def add_roots(self, roots: list[Path]) -> None:
        """Remember folders (or photos) `index` was given: the gallery serves files under them only."""
        with self.transaction():
            self.db.executemany("INSERT OR IGNORE INTO roots(path) VALUES (?)", [(str(r),) for r in roots])

    def roots(self) -> list[str]:
        if self.version < 2:  # a library from before roots were kept: none known
            return []
        return [r[0] for r in self.db.execute("SELECT path FROM roots ORDER BY path")]

    def sidecar_photos(self, pending_only: bool = False, under: list[Path] | None = None) -> list[tuple]:
        """(id, path, indexed_at) of readable photos, by path: all of them, or those whose sidecar was
        not written since they were last indexed; only those under `under` (folders or photos) if given."""
        sql, params = "SELECT p.id, p.path, p.indexed_at FROM photos p WHERE p.error IS NULL", []
        if pending_only:
            sql += (" AND NOT EXISTS (SELECT 1 FROM sidecars s WHERE s.photo_id = p.id AND "
                    "s.indexed_at = p.indexed_at)")
        if under is not None:
            folders = [str(root).rstrip(os.sep) + os.sep for root in under]
            sql += " AND (" + " OR ".join(["p.path = ? OR substr(p.path, 1, ?) = ?"] * len(under) or ["0"]) + ")"
            params = [v for root, folder in zip(under, folders) for v in (str(root), len(folder), folder)]
        return self.db.execute(sql + " ORDER BY p.path", params).fetchall()

    def keywords_and_caption(self, photo_id: int) -> tuple[list[str], list[str], str | None]:
        """What a sidecar says of a photo: the models' chosen labels, best first; the labels a person
        added (their own keywords); a caption ("" where the captioner's was withheld, None where no
        captioner ran)."""
        person = [r[0] for r in self.db.execute(
            "SELECT label FROM corrections WHERE photo_id = ? AND action = 'add' ORDER BY label", (photo_id,))] \
            if self.version >= 2 else []
        keywords = [r[0] for r in self.db.execute(
            "SELECT label FROM tags WHERE photo_id = ? AND chosen = 1 GROUP BY label ORDER BY MAX(score) DESC, label",
            (photo_id,)) if r[0] not in person]
        caption = self.db.execute("SELECT text FROM captions WHERE photo_id = ? ORDER BY model_id LIMIT 1",
                                  (photo_id,)).fetchone()
        return keywords, person, caption[0] if caption else None

    def sidecars_written(self, done: list[tuple[int, float]]) -> None:
        """Record that these photos' sidecars now hold their results of that indexing (photo id, indexed_at)."""
        with self.transaction():
            self.db.executemany("INSERT OR REPLACE INTO sidecars(photo_id, indexed_at) VALUES (?, ?)", done)

    def _backed_words(self, photo_id: int, caption: str) -> str:
        """A caption's words less the objects it names that the photo's tags do not back: an object a
        tagger can name (a concept at or above a bundled model's label) is searchable only where one
        of the photo's stored tags, at or below it, has a confidence of at least the grounding's
        `support`. A `dog` search then finds no horse whose caption alone says dog."""
        from tagcap.concepts import concepts
        from tagcap.inference.grounding import bundled_grounding

        vocab, support = concepts(), bundled_grounding().support
        tags = [vocab.concept_of(label) for label, in self.db.execute(
            "SELECT DISTINCT label FROM tags WHERE photo_id = ? AND score >= ?", (photo_id, support))]
        unbacked = set()
        for word, synset in vocab.objects(caption):
            below = vocab.descendants(synset)
            if below & vocab.named and not any(t in below for t in tags):
                unbacked.update(word.split())
        if not unbacked:
            return caption
        return " ".join(w for w in caption.split() if w.lower().strip(".,;:!?") not in unbacked)

    def _refresh_text(self, photo_id: int) -> None:
        """The photo's searchable text: its chosen labels, each followed by the words of its concept and
        of the named concepts above it (`tagcap.concepts`: `Eskimo dog` is found by `husky`, `dog`,
        `animal`), and the words of its captions that its tags back (`_backed_words`)."""
        from tagcap.concepts import concepts

        vocab = concepts()
        labels = [r[0] for r in self.db.execute(
            "SELECT DISTINCT label FROM tags WHERE photo_id = ? AND chosen = 1 ORDER BY label", (photo_id,))]
        tags = " ".join(dict.fromkeys(w for label in labels for w in (label, *vocab.search_words(label))))
        caption = " ".join(r[0] for r in self.db.execute("SELECT text FROM captions WHERE photo_id = ?", (photo_id,)))
        if caption:
            caption = self._backed_words(photo_id, caption)
        self.db.execute("DELETE FROM photo_text WHERE rowid = ?", (photo_id,))
        if tags or caption:
            self.db.execute("INSERT INTO photo_text(rowid, tags, caption) VALUES (?, ?, ?)", (photo_id, tags, caption))

    # -- reading -----------------------------------------------------------------------------
    def contents(self) -> dict[str, list[tuple]]:
        """Everything the library says about its photos, as sorted rows keyed by paths and model
        identities (not row ids): two libraries of the same photos and models compare equal."""
        q = lambda sql: self.db.execute(sql).fetchall()  # noqa: E731
        return {
            "photos": q("SELECT path, size, sha256, width, height, taken, orientation, error FROM photos ORDER BY path"),
            "tags": q("SELECT p.path, m.identity, t.label, t.score, t.chosen FROM tags t JOIN photos p ON p.id = "
                      "t.photo_id JOIN models m ON m.id = t.model_id ORDER BY 1, 2, 3"),
            "captions": q("SELECT p.path, m.identity, c.text FROM captions c JOIN photos p ON p.id = c.photo_id "
                          "JOIN models m ON m.id = c.model_id ORDER BY 1, 2"),
            "done": q("SELECT p.path, m.identity FROM done d JOIN photos p ON p.id = d.photo_id JOIN models m ON "
                      "m.id = d.model_id ORDER BY 1, 2"),
        }

    def duplicates(self, limit: int | None = None) -> list[list[tuple[int, str]]]:
        """Groups of photos with the same content (SHA-256) as (id, path), each group by path, the groups
        by their first path; unreadable files (which have a hash too) included."""
        groups: dict[str, list[tuple[int, str]]] = {}
        for sha, pid, path in self.db.execute(
                "SELECT sha256, id, path FROM photos WHERE sha256 IN (SELECT sha256 FROM photos GROUP BY sha256 "
                "HAVING COUNT(*) > 1) ORDER BY sha256, path"):
            groups.setdefault(sha, []).append((pid, path))
        return sorted(groups.values(), key=lambda g: g[0][1])[:limit]

    def stats(self) -> dict:
        q = lambda sql: self.db.execute(sql).fetchone()[0]  # noqa: E731
        models = [{"name": n, "task": t, "identity": i, "photos": c} for n, t, i, c in self.db.execute(
            "SELECT m.name, m.task, m.identity, COUNT(d.photo_id) FROM models m LEFT JOIN done d ON d.model_id = m.id "
            "GROUP BY m.id ORDER BY m.id")]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.is_file())
        return {"library": str(self.path), "photos": q("SELECT COUNT(*) FROM photos"),
                "unreadable": q("SELECT COUNT(*) FROM photos WHERE error IS NOT NULL"),
                "tags": q("SELECT COUNT(*) FROM tags WHERE chosen = 1"),
                "labels": q("SELECT COUNT(DISTINCT label) FROM tags WHERE chosen = 1"),
                "captions": q("SELECT COUNT(*) FROM captions WHERE text != ''"), "models": models, "bytes_on_disk": size}


def inside(path: str, root: Path | str) -> bool:
    """Whether `path` is `root` or lies under it (names compared, no link followed)."""
    root = str(root)
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def failure(path: Path, e: sqlite3.DatabaseError) -> LibraryError:
    """The error a command reports when SQLite fails on the library at `path`."""
    name = getattr(e, "sqlite_errorname", "")
    if name == "SQLITE_NOTADB":
        return LibraryError(f"{path}: not a tagcap library ({e})")
    if name.startswith("SQLITE_CORRUPT"):
        return LibraryError(f"{path}: the library file is damaged ({e}). `tagcap library check --library {path}` "
                            f"lists what is wrong. {REINDEX}.")
    if name == "SQLITE_FULL" or (name.startswith("SQLITE_IOERR") and _disk_full(path)):
        # (a full disk fails a write with SQLITE_FULL, and the opening of a library, whose shared-memory
        # file beside it cannot be made, with an I/O error)
        return LibraryError(f"{path}: the disk is full ({e}). Free some space and run the command again: `tagcap "
                            "index` goes on from the last batch it wrote (each is one transaction; the one cut short "
                            "is undone)")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")):
        return LibraryError(f"{path}: {e} (another process has been writing to it for over 30 s)")
    return LibraryError(f"{path}: {e} ({name or type(e).__name__})")


def _disk_full(path: Path) -> bool:
    import shutil

    try:
        return shutil.disk_usage(Path(path).parent).free < (1 << 20)
    except OSError:
        return False


class _Lock:
    def __init__(self, fd: int):
        self.fd = fd

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        os.close(self.fd)  # closing the descriptor releases the lock
        return False


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, ROLLBACK on any exception."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self):
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, *exc):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False
