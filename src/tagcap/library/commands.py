"""The photo library's commands: `tagcap index`, `tagcap search`, `tagcap library stats|check|duplicates|export-xmp`.

Registered on the main parser by `add_commands` (tagcap/cli.py); each imports what it needs when run.
"""

from __future__ import annotations

import json
import sys

from tagcap.cli_options import command, model_options

LIBRARY_HELP = "the library file (SQLite; default: ~/.local/share/tagcap/library.sqlite)"


def cmd_index(args) -> int:
    from contextlib import nullcontext

    from tagcap import distributed
    from tagcap.library.indexer import index_photos
    from tagcap.library.store import Library

    # under torchrun each process tags its share of the batches and rank 0 alone writes the library
    distributed.init_from_env()
    first = distributed.rank_and_world()[0] == 0

    def on_error(path, message):
        print(f"error: {path}: {message}", file=sys.stderr)

    with Library(args.library) if first else nullcontext() as lib:
        stats = index_photos(args.paths, lib, sources=args.model, batch_size=args.batch_size,
                             keep_missing=args.keep_missing, progress=not args.quiet, engine=args.engine,
                             device=args.device, xmp=args.xmp, on_error=on_error, views=args.views,
                             rule=args.rule, xmp_caption=not args.no_caption)
    distributed.leave()
    if not first:  # rank 0 has the counts and says what went wrong
        return 0
    summary = stats.to_dict()
    if args.json:
        print(json.dumps(summary))
    else:
        rate = f" ({summary['photos_per_second']} photos/s)" if summary["photos_per_second"] else ""
        print(f"{stats.photos} photos under {', '.join(map(str, args.paths))}: {stats.indexed} tagged{rate}, "
              f"{stats.skipped} unchanged, {stats.touched} with a new date only, {stats.unreadable} unreadable, "
              f"{stats.removed} removed; {stats.seconds:.1f} s; library {lib.path}", file=sys.stderr)
    return 1 if stats.errors else 0


def cmd_search(args) -> int:
    from tagcap.library.search import format_table, search
    from tagcap.library.store import Library

    if not (args.query or args.tag or args.not_tag or args.after or args.before):
        from tagcap.errors import ConfigError

        raise ConfigError("give words to search for, or a filter (--tag, --not-tag, --after, --before)")
    with Library(args.library, mode="read") as lib:
        hits = search(lib, " ".join(args.query), tags=args.tag or (), not_tags=args.not_tag or (),
                      min_score=args.min_score, after=args.after, before=args.before, limit=args.limit,
                      offset=args.offset)
    if args.json:
        for h in hits:
            print(json.dumps(h.to_dict()))
    else:
        print(format_table(hits))
    return 0


def cmd_stats(args) -> int:
    from tagcap.library.store import Library

    with Library(args.library, mode="read") as lib:
        stats = lib.stats()
    if args.json:
        print(json.dumps(stats, indent=1))
        return 0
    print(f"{stats['library']}: {stats['photos']} photos ({stats['unreadable']} unreadable), {stats['tags']} tags "
          f"({stats['labels']} different labels), {stats['captions']} captions, "
          f"{stats['bytes_on_disk'] / 2**20:.1f} MB on disk")
    for m in stats["models"]:
        print(f"    {m['name']} ({m['task']}, {m['identity']}): {m['photos']} photos")
    return 0


def cmd_check(args) -> int:
    import time

    from tagcap.library.store import REINDEX, TEXT_INDEX_DAMAGED, Library

    t0 = time.perf_counter()
    # "write": FTS5's check of the text index is an INSERT, which SQLite refuses on a read-only connection
    with Library(args.library, mode="write") as lib:
        problems = lib.check()
        text_only = problems and all(p.startswith(TEXT_INDEX_DAMAGED) for p in problems)
        if text_only and args.repair:  # every page sound: the text index is made again from what it indexes
            print(f"{lib.path}: {problems[0]}; rebuilding the full-text index", file=sys.stderr)
            lib.rebuild_text_index()
            problems = lib.check()
        photos = lib.db.execute("SELECT COUNT(*) FROM photos").fetchone()[0] if not problems else None
    if problems:
        for problem in problems:
            print(f"{lib.path}: {problem}")
        n = f"{len(problems)} problem{'s' if len(problems) > 1 else ''}{' or more' if len(problems) >= 100 else ''}"
        fix = ("`tagcap library check --repair` builds the full-text index again from the labels and captions "
               "stored with it" if text_only and not args.repair else REINDEX)
        print(f"{lib.path}: damaged ({n}). {fix}.", file=sys.stderr)
        return 1
    print(f"{lib.path}: sound ({photos} photos; every page, the foreign keys and the full-text index checked in "
          f"{time.perf_counter() - t0:.1f} s)")
    return 0


def cmd_duplicates(args) -> int:
    from tagcap.library.store import Library

    with Library(args.library, mode="read") as lib:
        groups = lib.duplicates()
    for group in groups:
        paths = [path for _, path in group]
        print(json.dumps(paths) if args.json else "\n".join(paths) + "\n")
    copies = sum(len(g) - 1 for g in groups)
    print(f"{len(groups)} photos stored more than once ({copies} extra copies)", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    """The photos a person corrected, with their labels as corrected, as a CSV `tagcap fit` reads."""
    import csv
    import io

    from tagcap import atomic
    from tagcap.library.store import Library

    with Library(args.library, mode="read") as lib:
        rows = lib.corrected_photos()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["image", "labels"])
    for path, labels in rows:
        writer.writerow([path, ";".join(labels)])
    if args.out == "-":
        sys.stdout.write(out.getvalue())
    else:
        atomic.write_text(args.out, out.getvalue())
    print(f"{len(rows)} corrected photos" + ("" if args.out == "-" else f" written to {args.out}"), file=sys.stderr)
    return 0


def cmd_export_xmp(args) -> int:
    from tagcap.library.store import Library
    from tagcap.library.xmp import Sidecars, write_sidecars

    failed = []
    with Library(args.library, mode="write") as lib:
        n = write_sidecars(lib, options=Sidecars(args.naming, caption=not args.no_caption),
                           on_error=lambda p, e: (failed.append(p), print(f"error: {e}", file=sys.stderr)))
    print(f"wrote {n} XMP sidecars" + (f"; {len(failed)} failed" if failed else ""), file=sys.stderr)
    return 1 if failed else 0


def add_commands(sub) -> None:
    p = command(sub, "index", cmd_index,
                help="tag and caption photo folders into a searchable library (incremental)",
                description="Walk folders (JPEG, PNG, WebP, TIFF, BMP, GIF, HEIC), tag and caption new and changed "
                            "photos with the bundled models (or --model), and keep the results in a SQLite library. "
                            "Unchanged photos are skipped, photos gone from disk removed; a killed run resumes "
                            "where it stopped. Exit status 1 if any photo could not be read (each is named on "
                            "stderr).")
    p.add_argument("paths", nargs="+", metavar="PHOTOS", help="folders (walked recursively) or photo files")
    p.add_argument("--library", default=None, help=LIBRARY_HELP)
    p.add_argument("--model", action="append", default=None, metavar="CKPT",
                   help="a checkpoint folder or bundled model name; repeat for several (default: the bundled models)")
    p.add_argument("--keep-missing", action="store_true", help="keep photos whose files are gone")
    p.add_argument("--xmp", action="store_true", help="also write each tagged photo's XMP sidecar (IMG.jpg.xmp)")
    p.add_argument("--no-caption", action="store_true",
                   help="XMP: leave each sidecar's description alone (the caption is still made and searchable)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run's counts as one JSON object")
    model_options(p, weights=False,
                  views_note=" (a model run with 1 view is another model to the library: it re-tags)")

    p = command(sub, "search", cmd_search, help="find photos in a library by words, tags and dates",
                description="Full-text search (BM25) over the photos' labels and captions, blended with the "
                            "labels' scores. A table for people, or JSON Lines with --json.")
    p.add_argument("query", nargs="*", help="words; a photo must match every one (in a label or its caption)")
    p.add_argument("--library", default=None, help=LIBRARY_HELP)
    p.add_argument("--tag", action="append", help="only photos with this label (repeatable)")
    p.add_argument("--not-tag", action="append", help="no photo with this label (repeatable)")
    p.add_argument("--min-score", type=float, default=None, help="labels matched count only at or above this score")
    p.add_argument("--after", default=None, help="taken on or after this date (EXIF; 2024, 2024-07, 2024-07-31)")
    p.add_argument("--before", default=None, help="taken before this date")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--offset", type=int, default=0, help="skip this many hits (the next page)")
    p.add_argument("--json", action="store_true", help="one JSON object per hit")

    p = sub.add_parser("library", help="a library's statistics, a check for damage, its duplicates, its keywords "
                                       "as XMP sidecars")
    lsub = p.add_subparsers(dest="library_command", required=True)
    s = command(lsub, "stats", cmd_stats, help="photos, tags, models and size on disk")
    s.add_argument("--library", default=None, help=LIBRARY_HELP)
    s.add_argument("--json", action="store_true")
    s = command(lsub, "check", cmd_check,
                help="check the library file for damage (every page, the foreign keys, the full-text index); "
                     "exit status 1 if damaged")
    s.add_argument("--library", default=None, help=LIBRARY_HELP)
    s.add_argument("--repair", action="store_true",
                   help="when only the full-text index is damaged, build it again from the labels and captions "
                        "stored with it")
    s = command(lsub, "duplicates", cmd_duplicates,
                help="list the photos whose files have the same content (one group per photo, a blank line between)")
    s.add_argument("--library", default=None, help=LIBRARY_HELP)
    s.add_argument("--json", action="store_true", help="one JSON list of paths per group")
    s = command(lsub, "export", cmd_export,
                help="the photos you corrected in the gallery, with their labels as corrected, as a CSV that "
                     "`tagcap fit` reads (image,labels; labels joined by ';')")
    s.add_argument("--library", default=None, help=LIBRARY_HELP)
    s.add_argument("--out", default="-", help="the CSV file (default: standard output)")
    s = command(lsub, "export-xmp", cmd_export_xmp,
                help="write every photo's XMP sidecar (keywords and caption), merging with sidecars already "
                     "there; the photos are never touched")
    s.add_argument("--library", default=None, help=LIBRARY_HELP)
    s.add_argument("--naming", choices=["append", "replace"], default="append",
                   help="IMG.jpg.xmp (append: darktable, digiKam) or IMG.xmp (replace: Lightroom's raw files)")
    s.add_argument("--no-caption", action="store_true",
                   help="leave each sidecar's description alone (the caption is still made and searchable)")
