"""The library's gallery: `tagcap serve --library LIB` adds a page at /library and its JSON API.

    GET /library                          the page: the library newest first, search and filters, tag
                                          facets, photo view; a phone-sized layout below 700 px
    GET /v1/library/search?q=&tag=&not_tag=&min_score=&after=&before=&page=&per_page=
    GET /v1/library/photos/{id}           one photo: its tags, scores, caption, date, size
    GET /v1/library/photos/{id}/thumb     a JPEG at most 256 px, made once and kept on disk
    GET /v1/library/photos/{id}/image     a JPEG at most 1600 px, for the photo view
    GET /v1/library/duplicates?limit=     groups of photos with the same content: [{id, name, folder}]
    GET /v1/library/labels?prefix=        labels the library knows, for completion
    POST /v1/library/photos/{id}/tags     {"label", "action": "add" | "remove"}: a person's correction
    POST /v1/library/blocked              {"label"}: never suggest this label for any photo

The two POSTs change the library, so they take only JSON from this server's own pages: a request
whose Origin is not this server (or missing) is refused (403), as is any other content type, which
a cross-site form cannot send without the browser asking first.

Photos are named by their library id only: nothing in a request becomes a path, and only files
the library holds are ever read, and of those only the ones whose real path (symbolic links
followed) lies under a folder `tagcap index` was given: a photo replaced by a link to a file
elsewhere is not shown. Thumbnails live beside the library (`LIB.thumbs/`), named by id
and content hash, so a changed photo gets a new one; each is written atomically (where it cannot be
written, on a full disk, it is sent all the same).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.concurrency import run_in_threadpool

from tagcap.errors import TagcapError

THUMB_PX = 256
VIEW_PX = 1600
FACET_POOL = 200  # facets count the labels of this many best hits
PHOTO_ID = PathParam(ge=1, le=2**63 - 1)  # SQLite's integer range: a larger id is a 422, not an overflow


def add_gallery(app: FastAPI, library: str | Path, static: Path) -> None:
    from tagcap.library.store import Library

    library = Path(library)
    thumbs = library.with_name(library.name + ".thumbs")

    def open_library():
        return Library(library, mode="read")  # one connection per request: sqlite3 objects stay in their thread

    def photo_row(lib, photo_id: int):
        row = lib.db.execute("SELECT path, sha256, error FROM photos WHERE id = ?", (photo_id,)).fetchone()
        if row is None:
            raise HTTPException(404, f"no photo {photo_id} in the library")
        if not _under_roots(row[0], lib.roots()):
            raise HTTPException(404, f"photo {photo_id} is not shown: its file now lies outside the indexed folders")
        return row

    @app.get("/library", include_in_schema=False)
    def gallery_page():
        return FileResponse(static / "gallery.html", media_type="text/html")

    @app.get("/v1/library/search")
    def library_search(q: str = "", tag: list[str] = Query(default=[]), not_tag: list[str] = Query(default=[]),
                       min_score: float | None = Query(None, ge=0.0, le=1.0), after: str | None = None,
                       before: str | None = None, page: int = Query(0, ge=0, le=100_000),
                       per_page: int = Query(24, ge=1, le=200)):
        """Photos matching the query, best first (see tagcap.library.search), a page at a time, with
        the labels of the best hits counted (facets)."""
        from tagcap.library.search import search

        with open_library() as lib:
            options = dict(tags=tag, not_tags=not_tag, min_score=min_score, after=after, before=before)
            start, stop = page * per_page, (page + 1) * per_page + 1  # one more than the page: is there a next?
            try:  # (no query and no filter: the whole library, newest first, its facets those of the newest)
                if stop <= FACET_POOL:  # the page lies inside the facets' pool: one search for both
                    pool = search(lib, q, limit=FACET_POOL, **options)
                    hits = pool[start:stop]
                else:
                    hits = search(lib, q, limit=stop - start, offset=start, **options)
                    pool = search(lib, q, limit=FACET_POOL, **options)
            except TagcapError as e:
                raise HTTPException(400, str(e)) from None
        counts: dict[str, int] = {}
        for h in pool:
            for label in {t["label"] for t in h.tags}:
                counts[label] = counts.get(label, 0) + 1
        facets = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:30]
        return {"hits": [_public(h.to_dict()) for h in hits[:per_page]], "page": page, "per_page": per_page,
                "more": len(hits) > per_page, "facets": [{"label": k, "count": v} for k, v in facets],
                "facets_of": len(pool)}

    async def change_from_this_server(request: Request) -> dict:
        """The JSON object a library-changing request carries, once it is known to come from this
        server's own pages (checked before the body is read: another site's request gets 403)."""
        origin = request.headers.get("origin")
        host = request.headers.get("host")
        if not origin or not host or origin.split("://", 1)[-1] != host:
            raise HTTPException(403, "changes to the library are accepted only from this server's own pages")
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            raise HTTPException(415, "send the change as JSON")
        body = await request.body()
        try:
            change = json.loads(body) if len(body) <= 4096 else None
        except ValueError:
            change = None
        if not isinstance(change, dict) or not isinstance(change.get("label"), str) or \
                not 0 < len(change["label"].strip()) <= 200:
            raise HTTPException(400, 'expected {"label": "a label of 1-200 characters", ...}')
        return change

    @app.get("/v1/library/labels")
    def library_labels(prefix: str = Query("", max_length=100)):
        with open_library() as lib:
            return {"labels": lib.labels_like(prefix)}

    @app.post("/v1/library/photos/{photo_id}/tags")
    async def library_correct(request: Request, photo_id: int = PHOTO_ID):
        """A person's correction of one photo's tags ({"label", "action": "add" | "remove"}): it wins
        over every model, survives re-indexing, is searchable at once and reaches the photo's XMP
        sidecar (at the next `index --xmp` or `library export-xmp`)."""
        change = await change_from_this_server(request)
        if change.get("action") not in ("add", "remove"):
            raise HTTPException(400, 'expected "action": "add" or "remove"')

        def write():  # in a worker thread: SQLite may wait for an `index` in progress, the server may not
            with Library(library, mode="write") as lib:
                photo_row(lib, photo_id)  # 404 for a photo the library does not hold or show
                lib.correct(photo_id, change["label"], change["action"], time.time())
            return library_photo(photo_id)

        return await run_in_threadpool(write)

    @app.post("/v1/library/blocked")
    async def library_block(request: Request):
        """Never suggest {"label"} for any photo of this library (a person's decision; adding the label
        to a photo undoes it)."""
        change = await change_from_this_server(request)

        def write():
            with Library(library, mode="write") as lib:
                return lib.block(change["label"], time.time())

        return {"label": change["label"].strip(), "photos": await run_in_threadpool(write)}

    @app.get("/v1/library/duplicates")
    def library_duplicates(limit: int = Query(200, ge=1, le=10_000)):
        """Groups of photos whose files have the same content, as ids and names (never paths to open)."""
        with open_library() as lib:
            groups = lib.duplicates(limit)
        return {"groups": [[{"id": pid, "name": Path(p).name, "folder": str(Path(p).parent)} for pid, p in g]
                           for g in groups]}

    def broader(label: str) -> list[str]:
        """The named concepts above a tag's, nearest first (`Eskimo dog`: dog, animal); the page groups
        a photo's tags by the most general of them."""
        from tagcap.concepts import concepts

        vocab = concepts()
        synset = vocab.concept_of(label)
        return [vocab.name(a) for a in vocab.ancestors(synset) if a in vocab.named] if synset else []

    @app.get("/v1/library/photos/{photo_id}")
    def library_photo(photo_id: int = PHOTO_ID):
        with open_library() as lib:
            row = lib.db.execute("SELECT path, width, height, taken, error FROM photos WHERE id = ?",
                                 (photo_id,)).fetchone()
            if row is None:
                raise HTTPException(404, f"no photo {photo_id} in the library")
            tags = [{"label": label, "score": score, "source": name, "chosen": bool(chosen), "broader": broader(label)}
                    for label, score, name, chosen in lib.db.execute(
                        "SELECT t.label, t.score, m.name, t.chosen FROM tags t JOIN models m ON m.id = t.model_id "
                        "WHERE t.photo_id = ? ORDER BY t.chosen DESC, t.score DESC", (photo_id,))]
            caption = lib.db.execute("SELECT text FROM captions WHERE photo_id = ? LIMIT 1", (photo_id,)).fetchone()
        path, width, height, taken, error = row
        return {"id": photo_id, "name": Path(path).name, "folder": str(Path(path).parent), "width": width,
                "height": height, "taken": taken, "error": error, "caption": caption[0] or None if caption else None,
                "tags": tags}

    @app.get("/v1/library/photos/{photo_id}/thumb")
    def library_thumb(photo_id: int = PHOTO_ID):
        with open_library() as lib:
            path, sha, _ = photo_row(lib, photo_id)
        cached = thumbs / f"{photo_id}-{sha[:16]}.jpg"
        headers = {"Cache-Control": "max-age=86400"}
        if not cached.is_file():
            from tagcap import atomic

            thumb = _rendition(path, THUMB_PX)
            try:
                thumbs.mkdir(parents=True, exist_ok=True)
                atomic.write_bytes(cached, thumb)
            except OSError:  # a full disk or a read-only folder: shown all the same, and made again next time
                return Response(thumb, media_type="image/jpeg", headers=headers)
        return FileResponse(cached, media_type="image/jpeg", headers=headers)

    @app.get("/v1/library/photos/{photo_id}/image")
    def library_image(photo_id: int = PHOTO_ID):
        with open_library() as lib:
            path, _, _ = photo_row(lib, photo_id)
        return Response(_rendition(path, VIEW_PX), media_type="image/jpeg")


def _under_roots(path: str, roots: list[str]) -> bool:
    """Whether the file at `path`, links followed, lies under one of the indexed `roots` (a library
    made before roots were kept: only a file that is not reached through a link)."""
    import os

    from tagcap.library.store import inside

    real = os.path.realpath(path)
    if not roots:
        return real == path
    return any(inside(real, os.path.realpath(root)) for root in roots)


def _public(hit: dict) -> dict:
    path = Path(hit.pop("path"))
    return {**hit, "name": path.name, "folder": str(path.parent)}


def _rendition(path: str, size: int) -> bytes:
    """The photo as a JPEG at most `size` px on its longer side (upright, RGB)."""
    from PIL import Image

    from tagcap.features.images import load_image

    try:
        img = load_image(path, reduce_to=size)
    except TagcapError as e:
        raise HTTPException(404, f"the photo cannot be shown: {e}") from None
    img.thumbnail((size, size), Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=85)
    return out.getvalue()
