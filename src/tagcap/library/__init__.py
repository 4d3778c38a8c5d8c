"""The photo library: photos tagged and captioned once, kept in SQLite, found again by words.

- `store`: the schema and the `Library` connection (WAL, one transaction per batch).
- `indexer`: `index_photos` (tagcap index): incremental, resumable, decoding beside the models.
- `search`: `search` (tagcap search, the gallery): FTS5 BM25 blended with label scores.
- `xmp`: sidecars for photo managers (tagcap library export-xmp, index --xmp).
- `commands`: the command-line verbs; the gallery itself lives in `tagcap.serve.gallery`.

Nothing here imports training code: indexing runs the inference layer (`tagcap.inference`).
"""
