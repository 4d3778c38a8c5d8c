"""XMP sidecars: a library's tags and captions where photo managers look for keywords.

For a photo `IMG.jpg` the sidecar is `IMG.jpg.xmp` (darktable's and digiKam's default; `naming=
"replace"` writes `IMG.xmp`, Lightroom's name for raw files). It holds

- `dc:subject` (a Bag): the labels the models' rules chose, as keywords (digiKam, darktable,
  Lightroom and exiftool's `XMP-dc:Subject` read them);
- `lr:hierarchicalSubject` (a Bag): the same labels under a `tagcap|` root (`tagcap|tiger`), so a
  photo manager shows them as one keyword tree, and so tagcap knows which keywords are its own;
- `dc:description` (an Alt, `x-default`): the caption, when the sidecar has no description yet.

The photo itself is never touched. An existing sidecar is merged into, never replaced: its other
properties and the keywords a person gave stay; tagcap's own keywords (those under `tagcap|`) are
brought up to date, so a label a model no longer chooses leaves. Each sidecar is written atomically.

Written with the standard library's ElementTree: the Python XMP toolkits wrap C libraries (Exempi)
that a plain `pip install` does not bring, and a sidecar is a small RDF/XML file.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Iterable

from tagcap import atomic
from tagcap.errors import DataError
from tagcap.library.store import Library

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "xml": "http://www.w3.org/XML/1998/namespace",
}
ROOT = "tagcap|"
RDF = f"{{{NS['rdf']}}}"


def sidecar_path(photo: str | Path, naming: str = "append") -> Path:
    photo = Path(photo)
    return photo.with_name(photo.name + ".xmp") if naming == "append" else photo.with_suffix(".xmp")


def merge_sidecar(existing: str | None, keywords: list[str], caption: str | None) -> str:
    """The sidecar text: `existing` (or a new packet) with tagcap's keywords and caption merged in."""
    if existing:
        for prefix, uri in _namespaces(existing):
            if prefix and prefix != "xml":
                ET.register_namespace(prefix, uri)
        root = ET.fromstring(existing)
    else:
        root = ET.Element(f"{{{NS['x']}}}xmpmeta")
    for prefix in ("x", "rdf", "dc", "lr"):
        ET.register_namespace(prefix, NS[prefix])
    rdf = root if root.tag == f"{RDF}RDF" else root.find(f"{RDF}RDF")
    if rdf is None:
        rdf = ET.SubElement(root, f"{RDF}RDF")
    descriptions = rdf.findall(f"{RDF}Description")
    if not descriptions:
        descriptions = [ET.SubElement(rdf, f"{RDF}Description", {f"{RDF}about": ""})]

    hierarchical = _bag(descriptions, "lr", "hierarchicalSubject")
    subject = _bag(descriptions, "dc", "subject")
    ours_before = {v[len(ROOT):] for v in _items(hierarchical) if v.startswith(ROOT)}
    dropped = ours_before - set(keywords)
    _set_items(subject, [v for v in _items(subject) if v not in dropped] +
               [k for k in keywords if k not in _items(subject)])
    _set_items(hierarchical, [v for v in _items(hierarchical) if not v.startswith(ROOT)] + [ROOT + k for k in keywords])
    if caption and _find(descriptions, "dc", "description") is None:
        alt = ET.SubElement(ET.SubElement(descriptions[0], f"{{{NS['dc']}}}description"), f"{RDF}Alt")
        li = ET.SubElement(alt, f"{RDF}li", {f"{{{NS['xml']}}}lang": "x-default"})
        li.text = caption
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + body + '\n<?xpacket end="w"?>\n'


def _namespaces(text: str) -> list[tuple[str, str]]:
    return [ns for _, ns in ET.iterparse(io.StringIO(text), events=("start-ns",))]


def _find(descriptions, prefix: str, name: str):
    for d in descriptions:
        el = d.find(f"{{{NS[prefix]}}}{name}")
        if el is not None:
            return el
    return None


def _bag(descriptions, prefix: str, name: str):
    """The rdf:Bag of property prefix:name, made in the first rdf:Description when missing."""
    prop = _find(descriptions, prefix, name)
    if prop is None:
        prop = ET.SubElement(descriptions[0], f"{{{NS[prefix]}}}{name}")
    bag = prop.find(f"{RDF}Bag")
    if bag is None:
        bag = ET.SubElement(prop, f"{RDF}Bag")
    return bag


def _items(bag) -> list[str]:
    return [li.text or "" for li in bag.findall(f"{RDF}li")]


def _set_items(bag, values: Iterable[str]) -> None:
    for li in bag.findall(f"{RDF}li"):
        bag.remove(li)
    seen = set()
    for v in values:
        if v not in seen:
            seen.add(v)
            ET.SubElement(bag, f"{RDF}li").text = v


def write_sidecar(photo: str | Path, keywords: list[str], caption: str | None, naming: str = "append") -> Path:
    path = sidecar_path(photo, naming)
    existing = None
    if path.is_file():
        existing = path.read_text(encoding="utf-8")
    try:
        text = merge_sidecar(existing, keywords, caption)
    except ET.ParseError as e:
        raise DataError(path, f"an existing sidecar that is not valid XML ({e}); left as it is") from None
    atomic.write_text(path, text)
    return path


def write_sidecars(library: Library, paths: list[str] | None = None, naming: str = "append",
                   on_error=None) -> int:
    """Sidecars for `paths` (default: every readable photo in the library); returns how many were written."""
    if paths is None:
        rows = library.db.execute("SELECT id, path FROM photos WHERE error IS NULL ORDER BY path").fetchall()
    else:
        rows = library.db.execute(f"SELECT id, path FROM photos WHERE error IS NULL AND path IN "
                                  f"({','.join('?' * len(paths))})", paths).fetchall() if paths else []
    written = 0
    for pid, path in rows:
        keywords = [r[0] for r in library.db.execute(
            "SELECT label FROM tags WHERE photo_id = ? AND chosen = 1 GROUP BY label ORDER BY MAX(score) DESC", (pid,))]
        caption = library.db.execute("SELECT text FROM captions WHERE photo_id = ? LIMIT 1", (pid,)).fetchone()
        try:
            write_sidecar(path, keywords, caption[0] if caption else None, naming)
            written += 1
        except (DataError, OSError) as e:
            if on_error is None:
                raise
            on_error(path, str(e))
    return written
