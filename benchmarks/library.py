"""The photo library's bars: relevance on Corel-5k, indexing speed and resumption, scale.

    python benchmarks/library.py relevance   # Corel-5k test photos, the bundled models (about 1 minute)
    python benchmarks/library.py people      # Corel-5k and Flickr8k test photos, 30 queries as people type them
    python benchmarks/library.py speed       # all 4,999 photos: index vs extract, kill -9 half-way, re-run
    python benchmarks/library.py synthetic --photos 1000000   # rows made up, no images: size and search latency
    python benchmarks/library.py sharded --ranks 2           # all 4,999 photos: one process vs torchrun
    python benchmarks/library.py hostile --photos 100000     # oversized queries, trickled uploads (`hostile`)

Each writes its JSON (with machine and commit) under benchmarks/results/library-*.json.

- relevance: the 499 Corel-5k test photos indexed with the bundled models (the annotator was trained
  on train + validation only); the 20 most frequent test labels as queries; precision@10 and
  retrieval AP (the full ranking of `search(label)`, photos never returned count as missed).
- people: the 499 Corel-5k test photos and the 1,000 Flickr8k test photos in one library, the
  bundled models; 30 queries written as a person types them (synonyms, plurals, general words),
  fixed in `PEOPLE_QUERIES` before any was measured. A photo is relevant when one of its truth
  concepts (Corel-5k's labels; for Flickr8k the nouns said in at least 2 of its 5 captions) is the
  concept the query means (WordNet's most frequent sense of the word, or the one noted) or a kind of
  it: `animal` is answered by a tiger photo, `dogs` by a husky. P@10 (fewer than 10 returned count as
  misses) and retrieval AP, per query and their means; and the 20 exact-label Corel queries of
  `relevance` on the same library, judged by Corel labels.
- speed: `FeatureCache.extract` (the work of `tagcap extract`) and `tagcap index` on the same photos,
  same engine (`--engine`; by default index's own, the shipped int8 backbone), one after the other in this run (cold caches each), and `tagcap index --views 1`; then an index killed with SIGKILL
  about half-way and run again, compared row for row with the uninterrupted library; then a third
  run over the unchanged folder, timed as a whole command.
- sharded: `tagcap index` of the same photos by one process (all cores) and by `torchrun
  --nproc_per_node R` (cores / R threads each), one after the other; photos/s of each and whether
  the two libraries hold the same rows (photos, tags, captions, and the photos' row ids).
- synthetic: N photos with Corel and ImageNet labels drawn by frequency, scores, captions from a
  few templates and dates over ten years, written through the library's own schema; then the size
  on disk per photo and the latency of a fixed set of 15 searches, each run 5 times (p50 and p95
  over the 75 timings). `--reuse --cold` searches a library made before after dropping its file
  from the page cache: each query's first run reads the disk, as the first searches after a reboot do.
  `--fresh` opens the library again for each search, as `tagcap search` and each gallery request do
  (SQLite's own page cache starts empty each time; the operating system's may still hold the file).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "datasets" / "corel5k"
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "src"))

from tagcap import atomic  # noqa: E402
from tagcap.provenance import machine_info  # noqa: E402


def corel_test(data: Path) -> list[tuple[Path, set[str]]]:
    test = json.loads((data / "test.json").read_text())
    return [(data / "images" / s["image_name"], set(s["image_labels"])) for s in test["samples"]]


def relevance(args) -> dict:
    from tagcap.library.indexer import index_photos
    from tagcap.library.search import search
    from tagcap.library.store import Library

    photos = corel_test(Path(args.data))
    work = Path(tempfile.mkdtemp(prefix="tagcap-lib-"))
    with Library(work / "lib.sqlite") as lib:
        stats = index_photos([p for p, _ in photos], lib, progress=True, device="cpu")
        truth = {str(p.resolve()): labels for p, labels in photos}
        counts: dict[str, int] = {}
        for _, labels in photos:
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        queries = sorted(counts, key=lambda w: (-counts[w], w))[:20]
        rows = []
        for q in queries:
            ranked = [h.path for h in search(lib, q, limit=len(photos))]
            relevant = [q in truth[p] for p in ranked]
            p10 = sum(relevant[:10]) / 10
            hits, ap = 0, 0.0
            for rank, rel in enumerate(relevant, 1):
                if rel:
                    hits += 1
                    ap += hits / rank
            ap /= counts[q]
            rows.append({"query": q, "relevant": counts[q], "returned": len(ranked), "P@10": p10, "AP": round(ap, 4)})
            print(rows[-1], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return {"photos": len(photos), "index": stats.to_dict(), "queries": rows,
            "mean_P@10": round(statistics.mean(r["P@10"] for r in rows), 4),
            "mAP": round(statistics.mean(r["AP"] for r in rows), 4)}


# as a person types them; (query, what it means where that is not the query's own most frequent WordNet
# sense: another word, or synsets). Fixed before measuring.
PEOPLE_QUERIES = [("airplane", None), ("planes", None), ("animal", None), ("animals", None), ("dog", None),
                  ("dogs", None), ("puppy", None), ("cat", None), ("bird", None), ("birds", None),
                  ("person", None), ("people", "person"), ("child", None), ("children", None), ("kids", None),
                  ("man", None), ("woman", None), ("bike", "bicycle"), ("ball", None),
                  ("football", ("n00468480", "n03378765")),  # the game or the ball
                  ("vehicle", None), ("car", None), ("boat", None), ("water", None), ("beach", None),
                  ("snow", None), ("mountain", None), ("flower", None), ("tree", None), ("horse", None)]


def flickr_test(data: Path) -> list[tuple[Path, set[str]]]:
    """Flickr8k test photos and their caption-noun labels' concepts."""
    from tagcap.concepts import concepts
    from tagcap.data import read_dataset

    names = {v: k for k, v in concepts().data["flickr8k_nouns"]["labels"].items()}
    test = read_dataset(data, fmt="flickr8k-nouns").splits["test"]
    return [(r.image, {names[label] for label in r.labels}) for r in test]


def _ranking_scores(ranked: list[str], relevant: set[str]) -> tuple[float, float]:
    """P@10 (missing ranks count as misses) and AP over the whole ranking (unreturned relevant = missed)."""
    flags = [p in relevant for p in ranked]
    hits, ap = 0, 0.0
    for rank, rel in enumerate(flags, 1):
        if rel:
            hits += 1
            ap += hits / rank
    return sum(flags[:10]) / 10, (ap / len(relevant) if relevant else 0.0)


def people(args) -> dict:
    from tagcap.concepts import concepts, read_mapping
    from tagcap.inference.bundled import BUNDLED
    from tagcap.library.indexer import index_photos
    from tagcap.library.search import search
    from tagcap.library.store import Library

    vocab = concepts()
    corel_map = read_mapping(BUNDLED / "corel5k-annotator")
    corel = [(p, labels, {corel_map[w] for w in labels}) for p, labels in corel_test(Path(args.data))]
    flickr = [(p, set(), c) for p, c in flickr_test(Path(args.data).parent / "flickr8k")]
    photos = corel + flickr
    work = Path(tempfile.mkdtemp(prefix="tagcap-lib-"))
    with Library(work / "lib.sqlite") as lib:
        stats = index_photos([p for p, _, _ in photos], lib, progress=True, device="cpu")
        truth = {str(Path(p).resolve()): c for p, _, c in photos}
        rows = []
        for query, meaning in PEOPLE_QUERIES:
            wanted = list(meaning) if isinstance(meaning, tuple) else [vocab.lookup(meaning or query)[0]]
            relevant = {p for p, c in truth.items() if any(vocab.is_a(t, w) for t in c for w in wanted)}
            ranked = [h.path for h in search(lib, query, limit=len(photos))]
            p10, ap = _ranking_scores(ranked, relevant)
            rows.append({"query": query, "means": ", ".join(f"{vocab.name(w)} ({w})" for w in wanted),
                         "relevant": len(relevant),
                         "returned": len(ranked), "P@10": p10, "AP": round(ap, 4)})
            print(rows[-1], flush=True)
        labels = {str(Path(p).resolve()): words for p, words, _ in corel}
        counts: dict[str, int] = {}
        for words in labels.values():
            for w in words:
                counts[w] = counts.get(w, 0) + 1
        exact = []
        for q in sorted(counts, key=lambda w: (-counts[w], w))[:20]:
            ranked = [h.path for h in search(lib, q, limit=len(photos))]
            p10, ap = _ranking_scores(ranked, {p for p, words in labels.items() if q in words})
            exact.append({"query": q, "relevant": counts[q], "P@10": p10, "AP": round(ap, 4)})
    shutil.rmtree(work, ignore_errors=True)
    return {"photos": {"corel5k test": len(corel), "flickr8k test": len(flickr)}, "index": stats.to_dict(),
            "queries": rows, "mean_P@10": round(statistics.mean(r["P@10"] for r in rows), 4),
            "mAP": round(statistics.mean(r["AP"] for r in rows), 4),
            "corel_exact_label_queries": exact,
            "corel_exact_mean_P@10": round(statistics.mean(r["P@10"] for r in exact), 4),
            "corel_exact_mAP": round(statistics.mean(r["AP"] for r in exact), 4)}


def _library_rows(path: Path) -> dict:
    from tagcap.library.store import Library

    with Library(path, mode="read") as lib:
        return {**lib.contents(), "integrity": lib.db.execute("PRAGMA integrity_check").fetchone()[0]}


def _tagcap(*a: str) -> list[str]:
    return [sys.executable, "-m", "tagcap", *a]


def speed(args) -> dict:
    from tagcap.data import read_dataset
    from tagcap.devices import decoding_precision
    from tagcap.features.backbone import Backbone, BackboneSpec, weights_identity
    from tagcap.features.cache import FeatureCache
    from tagcap.features.quantize import photo_engine

    images = Path(args.data) / "images"
    work = Path(tempfile.mkdtemp(prefix="tagcap-lib-speed-"))
    result: dict = {"engine_option": args.engine}
    spec = BackboneSpec()
    engine = ("--engine", args.engine)
    try:
        records = read_dataset(args.data).all_records()
        # the engine `index --engine E` runs (auto: the shipped int8 backbone), for extract too
        backbone = Backbone(spec, engine=photo_engine(args.engine, spec.name, weights_identity(spec), None),
                            cache_root=work)
        t = time.perf_counter()
        ext = FeatureCache(work / "extract").extract(backbone, records, progress=True)
        result["extract"] = {"images": len(records), "engine": backbone.engine, "wall_seconds": round(time.perf_counter() - t, 1),
                             "images_per_second": ext["images_per_second"]}
        # what the captioner decodes in on this path: bfloat16 only where the CPU has bfloat16 arithmetic
        result["captioner_precision"] = decoding_precision("caption", "cpu", args.engine, backbone.engine)
        print(result["extract"], result["captioner_precision"], flush=True)
        env = {**os.environ, "TAGCAP_CACHE": str(work)}
        full = work / "full.sqlite"
        run = subprocess.run(_tagcap("index", str(images), "--library", str(full), "--json", "--quiet", "--device", "cpu", *engine),
                             capture_output=True, text=True, env=env, check=True)
        result["index"] = json.loads(run.stdout)
        result["index_over_extract"] = round(result["index"]["photos_per_second"] / ext["images_per_second"], 3)
        print(result["index"], result["index_over_extract"], flush=True)
        one = subprocess.run(_tagcap("index", str(images), "--library", str(work / "one-view.sqlite"), "--json",
                                     "--quiet", "--device", "cpu", "--views", "1", *engine),
                             capture_output=True, text=True, env=env, check=True)
        result["index_one_view"] = json.loads(one.stdout)
        result["index_one_view_over_extract"] = round(result["index_one_view"]["photos_per_second"] /
                                                      ext["images_per_second"], 3)
        print(result["index_one_view"], result["index_one_view_over_extract"], flush=True)

        killed = work / "killed.sqlite"
        proc = subprocess.Popen(_tagcap("index", str(images), "--library", str(killed), "--quiet", "--device", "cpu", *engine),
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        half = result["index"]["indexed"] // 2
        while proc.poll() is None:
            time.sleep(0.5)
            try:
                db = sqlite3.connect(f"file:{killed}?mode=ro", uri=True, timeout=5)
                n = db.execute("SELECT COUNT(*) FROM photos").fetchone()[0]
                db.close()
            except sqlite3.Error:
                continue
            if n >= half:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        at_kill = sqlite3.connect(str(killed)).execute("SELECT COUNT(*) FROM photos").fetchone()[0]
        t = time.perf_counter()
        rerun = subprocess.run(_tagcap("index", str(images), "--library", str(killed), "--json", "--quiet", "--device", "cpu", *engine),
                               capture_output=True, text=True, env=env, check=True)
        a, b = _library_rows(full), _library_rows(killed)
        result["kill_and_rerun"] = {"photos_at_kill": at_kill, "rerun": json.loads(rerun.stdout),
                                    "rerun_seconds": round(time.perf_counter() - t, 1),
                                    "same_photos": a["photos"] == b["photos"], "same_tags": a["tags"] == b["tags"],
                                    "same_captions": a["captions"] == b["captions"],
                                    "integrity": b["integrity"], "rows": {k: len(a[k]) for k in ("photos", "tags", "captions")}}
        print(result["kill_and_rerun"], flush=True)
        t = time.perf_counter()
        third = subprocess.run(_tagcap("index", str(images), "--library", str(full), "--json", "--quiet", "--device", "cpu", *engine),
                               capture_output=True, text=True, env=env, check=True)
        result["unchanged_rerun"] = {"wall_seconds": round(time.perf_counter() - t, 2), **json.loads(third.stdout)}
        print(result["unchanged_rerun"], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


def sharded(args) -> dict:
    images = Path(args.data) / "images"
    work = Path(tempfile.mkdtemp(prefix="tagcap-lib-sharded-"))
    cores = os.cpu_count() or 2
    result: dict = {"cores": cores, "ranks": args.ranks}
    try:
        runs = {"one_process": ((), cores), f"torchrun_{args.ranks}": (
            ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.ranks)), max(1, cores // args.ranks))}
        for name, (launcher, threads) in runs.items():
            env = {**os.environ, "TAGCAP_CACHE": str(work / "models"), "OMP_NUM_THREADS": str(threads)}
            run = subprocess.run([sys.executable, *launcher, "-m", "tagcap", "index", str(images), "--library",
                                  str(work / f"{name}.sqlite"), "--json", "--quiet", "--device", "cpu"],
                                 capture_output=True, text=True, env=env)
            if run.returncode != 0:
                raise SystemExit(f"{name} failed:\n{run.stderr[-3000:]}")
            result[name] = {"threads_per_process": threads, **json.loads(run.stdout.strip().splitlines()[-1])}
            print(name, result[name], flush=True)
        a, b = (_library_rows(work / f"{name}.sqlite") for name in runs)
        ids = [sqlite3.connect(str(work / f"{name}.sqlite")).execute("SELECT id, path FROM photos ORDER BY id").fetchall()
               for name in runs]
        one, many = (result[name]["photos_per_second"] for name in runs)
        result["speedup"] = round(many / one, 3)
        result["same"] = {**{k: a[k] == b[k] for k in ("photos", "tags", "captions", "done")}, "row_ids": ids[0] == ids[1]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return result


CAPTIONS = ["a {a} and a {b} in the {c}", "a {a} near the {b}", "{a} under a {c} sky", "a group of {a} by the {b}"]


def build_synthetic(path: Path, n: int, words_file: Path, reuse: bool = False, cold: bool = False) -> float:
    """A library of `n` made-up photos (rows only: Zipf-distributed Corel-5k labels, an ImageNet class, a
    caption) at `path`; with `reuse`, the one already there. Returns the seconds it took to build."""
    from tagcap.concepts import concepts
    from tagcap.library.store import Library

    vocab = concepts()
    rng = random.Random(0)
    corel = words_file.read_text().split()
    imagenet = [f"class{i}" for i in range(1000)]
    weights = [1 / (i + 1) for i in range(len(corel))]  # Zipf-like, as real label frequencies are
    reuse = reuse and path.is_file()
    if path.exists() and not reuse:
        path.unlink()
    if reuse and cold:  # the file's pages out of the page cache, as after a reboot (no root needed)
        for f in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
    t0 = time.perf_counter()
    with Library(path) as lib:
        with lib.transaction():
            ids = [lib.model_id(n, n, t) for n, t in (("corel", "annotation"), ("imagenet", "annotation"),
                                                      ("captioner", "caption"))]
        for start in range(0, 0 if reuse else n, 20000):
            with lib.transaction() as db:
                photos, tags, caps, texts, done = [], [], [], [], []
                for pid in range(start + 1, min(n, start + 20000) + 1):
                    year = 2015 + rng.randrange(10)
                    photos.append((pid, f"/photos/{year}/{pid:07d}.jpg", 2_000_000 + pid, pid * 1000, f"{pid:064x}",
                                   4032, 3024, f"{year}-{1 + rng.randrange(12):02d}-{1 + rng.randrange(28):02d}T12:00:00",
                                   1, time.time()))
                    chosen = set(rng.choices(corel, weights, k=4))
                    extra = set(rng.choices(corel, weights, k=3)) - chosen
                    for label in chosen:
                        tags.append((pid, ids[0], label, round(rng.uniform(0.3, 1), 4), 1))
                    for label in extra:
                        tags.append((pid, ids[0], label, round(rng.uniform(0.01, 0.3), 4), 0))
                    inet = rng.sample(imagenet, 3)
                    tags.append((pid, ids[1], inet[0], round(rng.uniform(0.2, 1), 4), 1))
                    for label in inet[1:]:
                        tags.append((pid, ids[1], label, round(rng.uniform(0.01, 0.2), 4), 0))
                    c = sorted(chosen)
                    cap = rng.choice(CAPTIONS).format(a=c[0], b=c[-1], c=rng.choice(corel))
                    caps.append((pid, ids[2], cap))
                    # as Library._refresh_text writes it: each label followed by its concept's words
                    texts.append((pid, " ".join(dict.fromkeys(w for label in c + [inet[0]]
                                                              for w in (label, *vocab.search_words(label)))), cap))
                    done += [(pid, i) for i in ids]
                db.executemany("INSERT INTO photos(id, path, size, mtime_ns, sha256, width, height, taken, orientation, "
                               "indexed_at) VALUES (?,?,?,?,?,?,?,?,?,?)", photos)
                db.executemany("INSERT INTO tags VALUES (?,?,?,?,?)", tags)
                db.executemany("INSERT INTO captions VALUES (?,?,?)", caps)
                db.executemany("INSERT INTO photo_text(rowid, tags, caption) VALUES (?,?,?)", texts)
                db.executemany("INSERT INTO done VALUES (?,?)", done)
            print(f"{min(n, start + 20000)} photos written, {time.perf_counter() - t0:.0f} s", flush=True)
        lib.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return time.perf_counter() - t0


def synthetic(args) -> dict:
    from tagcap.library.search import search
    from tagcap.library.store import Library

    path = Path(args.out_dir or tempfile.mkdtemp(prefix="tagcap-lib-synth-")) / "synthetic.sqlite"
    reuse = args.reuse and path.is_file()
    build_s = build_synthetic(path, args.photos, Path(args.data) / "corel5k_words.txt", reuse, args.cold)
    with Library(path, mode="read") as lib:
        size = path.stat().st_size
        queries = [("sky", {}), ("water", {}), ("tiger", {}), ("tree people", {}), ("beach", {"after": "2020"}),
                   ("", {"tags": ["snow"], "before": "2017"}), ("mountain", {"not_tags": ["sky"]}),
                   ("sunset sea", {}), ("", {"tags": ["tiger"]}), ("grass", {"min_score": 0.9}),
                   ("class17", {}), ("zebra field", {}), ("boats harbor", {"limit": 50}),
                   ("city", {"after": "2018-06", "before": "2019"}), ("flowers", {"offset": 100})]
        rows, every = [], []
        for q, kw in queries:
            times = []
            for _ in range(5):
                t = time.perf_counter()
                if args.fresh:  # a connection of its own, as each `tagcap search` and gallery request has
                    with Library(path, mode="read") as own:
                        hits = search(own, q, **kw)
                else:
                    hits = search(lib, q, **kw)
                times.append((time.perf_counter() - t) * 1000)
            rows.append({"query": q, **{k: v for k, v in kw.items()}, "hits": len(hits),
                         "median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)})
            every += times
            print(rows[-1], flush=True)
    every.sort()
    return {"photos": args.photos, "cold": bool(reuse and args.cold), "fresh_connections": args.fresh,
            "build_seconds": None if reuse else round(build_s, 1), "bytes": size,
            "bytes_per_photo": round(size / args.photos, 1), "queries": rows,
            "p50_ms": round(statistics.median(every), 1),
            "p95_ms": round(every[min(len(every) - 1, int(0.95 * len(every)))], 1)}


def hostile(args) -> dict:
    """What hostile searches cost (issue: a 100 KB query ran 5 min 39 s, a 14 KB gallery GET 7 s of CPU):
    on a synthetic library of --photos, the 100 KB query as a whole `tagcap search` command, the 14 KB
    one through the gallery's API, and the costliest query still allowed (MAX_WORDS of the most common
    labels, and MAX_QUERY_CHARS of them); then `/healthz` answered beside 60 connections trickling an
    upload's body a byte a second (`tagcap serve --library` with the bundled models)."""
    import socket
    import urllib.request

    from tagcap.library.search import MAX_QUERY_CHARS, MAX_WORDS, search
    from tagcap.library.store import Library

    sys.path.insert(0, str(Path(__file__).parent))
    from serve_load import serving

    path = Path(args.out_dir or tempfile.mkdtemp(prefix="tagcap-lib-hostile-")) / "synthetic.sqlite"
    words_file = Path(args.data) / "corel5k_words.txt"
    build_synthetic(path, args.photos, words_file, args.reuse)
    out: dict = {"photos": args.photos}
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    t = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "tagcap", "search", "a " * 50_000, "--library", str(path)],
                         capture_output=True, text=True, env=env)
    out["query_100kb_command_s"] = round(time.perf_counter() - t, 3)
    out["query_100kb_exit"], out["query_100kb_said"] = run.returncode, run.stderr.strip()[-200:]
    with Library(path, mode="read") as lib:
        common = [r[0] for r in lib.db.execute("SELECT label FROM tags WHERE chosen = 1 GROUP BY label "
                                               "ORDER BY COUNT(*) DESC LIMIT ?", (MAX_WORDS,))]
        worst = {"words": " ".join(common), "chars": " ".join(common * 200)[:MAX_QUERY_CHARS].rsplit(" ", 1)[0]}
        for name, q in worst.items():
            times = []
            for _ in range(3):
                t = time.perf_counter()
                hits = search(lib, q, limit=200)
                times.append(time.perf_counter() - t)
            out[f"allowed_{name}_s"] = {"query_chars": len(q), "hits": len(hits), "median": round(statistics.median(times), 3),
                                        "max": round(max(times), 3)}
    socks = []
    with serving(["--library", str(path)], env) as (url, _, _):
        port = int(url.rsplit(":", 1)[1])
        t = time.perf_counter()
        try:
            urllib.request.urlopen(url + "/v1/library/search?q=" + "a+" * 7_000, timeout=60)
            out["gallery_14kb_status"] = 200
        except urllib.error.HTTPError as e:
            out["gallery_14kb_status"] = e.code
        out["gallery_14kb_s"] = round(time.perf_counter() - t, 3)
        for _ in range(60):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /v1/annotate HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                      b"Content-Length: 100000\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"image\"; "
                      b"filename=\"a.jpg\"\r\n\r\n")
            socks.append(s)
        health = []
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 20:
            for s in socks:
                try:
                    s.sendall(b"x")
                except OSError:
                    pass
            t = time.perf_counter()
            with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
                health.append((r.status, time.perf_counter() - t))
            time.sleep(1)
        out["healthz_beside_60_trickling"] = {"answers": len(health), "statuses": sorted({c for c, _ in health}),
                                              "max_s": round(max(s for _, s in health), 3),
                                              "median_s": round(statistics.median(s for _, s in health), 3)}
        for s in socks:
            s.close()
    print(json.dumps(out, indent=1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["relevance", "people", "speed", "synthetic", "sharded", "hostile"])
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--photos", type=int, default=1_000_000)
    ap.add_argument("--out-dir", default=None, help="synthetic: where the library is made (default: a temporary folder)")
    ap.add_argument("--reuse", action="store_true", help="synthetic, hostile: search the library already in --out-dir")
    ap.add_argument("--cold", action="store_true", help="synthetic, with --reuse: drop the library file from the "
                                                        "page cache first (posix_fadvise), so the first searches read the disk")
    ap.add_argument("--fresh", action="store_true", help="synthetic: each search on a new connection (the "
                                                         "library opened again), as `tagcap search` and each gallery "
                                                         "request do; by default one connection serves all, its "
                                                         "page cache kept between searches")
    ap.add_argument("--ranks", type=int, default=2, help="sharded: torchrun processes")
    ap.add_argument("--engine", default="auto", help="speed: the engine of index and extract (auto: what index "
                                                     "runs by default, the shipped int8 backbone)")
    ap.add_argument("--tag", default="", help="speed: a suffix for the results file (library-speed-TAG.json)")
    args = ap.parse_args()
    t = time.perf_counter()
    result = {"what": args.what, **globals()[args.what](args), "wall_seconds": round(time.perf_counter() - t, 1),
              "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M")}
    atomic.write_json(RESULTS / f"library-{args.what}{'-' + args.tag if args.tag else ''}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k not in ("queries",)}, indent=1))


if __name__ == "__main__":
    main()
