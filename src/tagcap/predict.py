"""Tag and caption files and folders: walking them (unreadable places reported, never skipped in silence),
the models run batch by batch (`inference.taggers.ModelSet`), results streamed to a file that a rerun
can resume."""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator


from tagcap.data.readers.common import IMAGE_SUFFIXES
from tagcap.errors import DISK_FULL, DataError, TagcapError
from tagcap.features.images import load_image
from tagcap.inference.checkpoint import CONFIG, WEIGHTS
from tagcap.inference.taggers import ModelSet


CSV_HEADER = "image,labels,scores,caption,error\n"


def format_table_row(result: dict, width: int = 100) -> str:
    """One result for a person at a terminal: the photo, its caption, its chosen labels best first
    (a label two models gave, once, at its better score), wrapped to `width` columns."""
    import textwrap

    if "error" in result:
        return f"{result['image']}\n    cannot read: {result['error']}\n"
    best: dict[str, float] = {}
    for t in result.get("labels", []):
        best[t["label"]] = max(best.get(t["label"], 0.0), float(t["score"]))
    lines = [result["image"]]
    if result.get("caption"):
        lines += textwrap.wrap(f'"{result["caption"]}"', width, initial_indent="    ", subsequent_indent="     ")
    elif result.get("caption_withheld"):  # the captioner named what the taggers do not see
        lines += textwrap.wrap(f"(no caption: {result['caption_withheld'].removeprefix('not shown: ')})", width,
                               initial_indent="    ", subsequent_indent="     ")
    # each "label score" kept on one line: joined by no-break spaces while wrapping (textwrap splits at spaces only)
    tags = "  ".join(f"{label} {score:.2f}".replace(" ", "\u00a0")
                     for label, score in sorted(best.items(), key=lambda kv: -kv[1]))
    wrapped = textwrap.wrap(tags or "(no tag)", width, initial_indent="    ", subsequent_indent="    ")
    lines += [line.replace("\u00a0", " ") for line in wrapped]
    return "\n".join(lines) + "\n"


def format_csv_row(result: dict) -> str:
    """One CSV line: labels and their scores joined by ';' (the CSV dataset format's separator)."""
    import csv
    import io

    labels = result.get("labels", [])
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([
        result["image"], ";".join(t["label"] for t in labels), ";".join(f"{t['score']:.4f}" for t in labels),
        result.get("caption", ""), result.get("error", "")])
    return buf.getvalue()


@dataclass(frozen=True)
class Unreadable:
    """A place `iter_images` could not look into (an unreadable folder, a symbolic link loop): reported
    as that path's error, never skipped in silence."""

    path: Path
    problem: str

    def error(self) -> DataError:
        return DataError(self.path, self.problem)


class ResultWriter:
    """Results streamed to a file as they come, JSON Lines or CSV, flushed after every batch: a crash
    loses at most the batch being tagged. `resume=True` keeps what a file already holds (a torn last
    line is cut off) and reports those images as `done`, so a rerun tags only the rest.

    File names are written back byte for byte (`surrogateescape`), so a name that is not valid UTF-8
    is never the reason a result is lost. The target is opened before any model is loaded: a folder,
    a path under a file or a folder that cannot be written fails in the first second."""

    def __init__(self, path: str | Path, fmt: str = "jsonl", resume: bool = False):
        self.path, self.fmt = Path(path), fmt
        if self.path.is_dir():
            raise TagcapError(f"--output {self.path}: is a folder; give a file name")
        self.done: set[str] = set()
        self.failed_before = 0  # with `resume`: results in the file that are errors (the exit status counts them)
        if resume and self.path.is_file():
            self._read_done()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "a" if resume else "w", encoding="utf-8", errors="surrogateescape", newline="")
        except OSError as e:
            raise TagcapError(f"--output {self.path}: cannot write there ({e.strerror or e})") from None
        if fmt == "csv" and self.file.tell() == 0:
            self.file.write(CSV_HEADER)
            self.file.flush()
        self.written = 0

    def _read_done(self) -> None:
        import csv

        raw = self.path.read_bytes()
        keep = raw[: raw.rfind(b"\n") + 1]  # a line cut by a crash is dropped, and tagged again
        if len(keep) != len(raw):
            with open(self.path, "r+b") as f:
                f.truncate(len(keep))
        text = keep.decode("utf-8", errors="surrogateescape")
        if self.fmt == "csv":
            rows = list(csv.reader(text.splitlines()))
            self.done = {r[0] for r in rows[1:] if r}
            self.failed_before = sum(1 for r in rows[1:] if len(r) >= 5 and r[4])
            return
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                result = json.loads(line)
                self.done.add(result["image"])
            except (ValueError, KeyError, TypeError):
                raise TagcapError(f"{self.path}:{n}: not a tagcap JSON Lines result; --resume needs the file "
                                  "an earlier run wrote") from None
            self.failed_before += "error" in result

    def write(self, results: list[dict]) -> None:
        try:
            for result in results:
                self.file.write(format_csv_row(result) if self.fmt == "csv" else json.dumps(result) + "\n")
            self.file.flush()
        except OSError as e:
            self._failed(e)
        self.written += len(results)

    def close(self) -> None:
        if self.file.closed:  # a failed write closed it
            return
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
        except OSError as e:
            self._failed(e)
        self.file.close()

    def _failed(self, e: OSError) -> None:
        """A write refused (a full disk): the results before it stay, a line it cut is dropped by --resume."""
        try:
            self.file.close()  # its buffer cannot be written either
        except OSError:
            pass
        free = "free some space and " if e.errno in DISK_FULL else ""
        raise TagcapError(f"--output {self.path}: {e.strerror or e} after {self.written} results; {free}run the "
                          "same command with --resume to keep them and tag only the rest") from None


def iter_images(paths: list[str | Path]) -> Iterator[Path | Unreadable]:
    """Files as given (a bad one is reported when it is read); folders walked recursively for image
    suffixes, in sorted order, following links to folders once each. What cannot be walked comes as
    an `Unreadable`."""
    for p in paths:
        if isinstance(p, Unreadable):
            yield p
            continue
        p = Path(p)
        try:
            is_dir = p.is_dir()
        except OSError:  # e.g. inside a folder it may not enter: reading the file will say so
            is_dir = False
        if is_dir:
            yield from _walk(p, set())
        else:
            yield p


def _walk(folder: Path, seen: set) -> Iterator[Path | Unreadable]:
    try:
        st = folder.stat()
        if (st.st_dev, st.st_ino) in seen:
            yield Unreadable(folder, "a symbolic link loop (this folder is already being walked)")
            return
        seen = seen | {(st.st_dev, st.st_ino)}
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        yield Unreadable(folder, _os_problem(e, "folder"))
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            is_dir = entry.is_dir()  # follows links
        except OSError as e:
            yield Unreadable(path, _os_problem(e, "entry"))
            continue
        if is_dir:
            yield from _walk(path, seen)
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            yield path
        elif entry.is_symlink() and _is_loop(path):  # a link to itself, whatever its name: say so
            yield Unreadable(path, "a symbolic link loop")


def _is_loop(path: Path) -> bool:
    try:
        path.stat()
    except OSError as e:
        return e.errno == errno.ELOOP
    return False


def _os_problem(e: OSError, what: str) -> str:
    if e.errno == errno.ELOOP:
        return "a symbolic link loop"
    if isinstance(e, PermissionError):
        return f"permission denied: cannot read this {what}, so the images in it were not tagged"
    return f"cannot read this {what}: {e.strerror or e}"


def is_checkpoint(path: str | Path) -> bool:
    """Whether a command-line item names a model (a checkpoint folder or a bundled model) rather than photos."""
    from tagcap.inference.bundled import BUNDLED

    p = Path(path)
    try:
        if p.is_dir():
            return (p / CONFIG).is_file() and (p / WEIGHTS).is_file()
    except OSError:  # a folder it may not enter (permissions): photos, whose reading reports it
        return False
    return "/" not in str(path) and (BUNDLED / str(path) / CONFIG).is_file()


def predict_paths(models: ModelSet, paths: list, batch_size: int = 16, strict: bool = False, on_error=None,
                  explain: bool = False, attention_dir: str | Path | None = None, beam_width: int | None = None,
                  threshold: float | None = None, top_k: int | None = None, tags: bool = True,
                  captions: bool = True) -> Iterator[dict]:
    """Yield one result per image, in the order given: tags from the annotators, a caption from the
    captioner (see `ModelSet.run`); a bad file yields {"image", "error"} (or raises with strict). With
    `attention_dir`, each caption's per-word attention overlays and contact sheet are written there."""
    from tagcap.report.plots import attention_maps

    files = list(iter_images(paths))
    stems: set[str] = set()
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        good, imgs, errors = [], [], {}
        for n, f in enumerate(chunk):
            try:
                if isinstance(f, Unreadable):
                    raise f.error()
                imgs.append(load_image(f, reduce_to=models.decode_size))
            except TagcapError as e:
                if strict:
                    raise
                if on_error:
                    on_error(f, e)
                errors[n] = {"image": str(getattr(f, "path", f)), "error": str(e)}
                continue
            good.append((n, f))
        outs = models.run(imgs, explain=explain, attention=attention_dir is not None, threshold=threshold,
                          top_k=top_k, beam_width=beam_width, tags=tags, captions=captions)
        done = {}
        for (n, f), img, out in zip(good, imgs, outs):
            result = {"image": str(f), **out}
            if out.get("attention") is not None and not out.get("caption_withheld"):
                stem = f.stem
                while stem in stems:  # two folders may hold the same file name
                    stem += "_"
                stems.add(stem)
                written = attention_maps(img, out["caption"], out["attention"], attention_dir, stem)
                result["attention"] = str(written[-1])
            else:
                result.pop("attention", None)  # a withheld caption has no maps to draw
            done[n] = result
        for n in range(len(chunk)):  # results in the order the files were given
            yield errors[n] if n in errors else done[n]
