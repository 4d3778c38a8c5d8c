"""XMP sidecars: a library's tags and captions where photo managers look for keywords.

For a photo `IMG.jpg` the sidecar is `IMG.jpg.xmp` (darktable's and digiKam's default; `naming=
"replace"` writes `IMG.xmp`, Lightroom's name for raw files). It holds

- `dc:subject` (a Bag, or the Seq a sidecar already has): the labels the models' rules chose, as
  keywords (digiKam, darktable, Lightroom and exiftool's `XMP-dc:Subject` read them);
- `lr:hierarchicalSubject` (a Bag): each label under the named concepts above it in the vocabulary
  (`animal|dog|Eskimo dog`, `tagcap.concepts`; a label no concept has stands alone), so a photo
  manager shows one keyword tree; `tagcap:hierarchy` records which of these entries are tagcap's;
- `tagcap:added` (a Bag): the keywords tagcap itself put into `dc:subject` because the sidecar did
  not have them, and `tagcap:rejected`: those a person took out of `dc:subject` after tagcap put
  them there;
- `dc:description` (an Alt, `x-default`): the caption, where the sidecar has no description or holds
  the caption tagcap wrote there last (`tagcap:caption` remembers it): a better model's caption
  replaces tagcap's own, never a person's text; where the captioner's new sentence was withheld
  (it named what the taggers do not see), tagcap's own caption is taken out.

The photo itself is never touched. An existing sidecar is merged into, never replaced: its other
properties stay, and a keyword tagcap did not add is the person's and is never removed, even when
tagcap chooses the same word and later stops choosing it. Only a keyword in `tagcap:added` leaves
when no model chooses it any more; a keyword a person removed is not put back. (Sidecars written
before `tagcap:added` existed carry no record, so every keyword in them counts as the person's; and
one of tagcap's that a person removes and types in again before tagcap next writes leaves the file as
it was, so it stays tagcap's.)
A sidecar in any encoding XML allows is read; it is written back in UTF-8, atomically.

Written with the standard library's ElementTree: the Python XMP toolkits wrap C libraries (Exempi)
that a plain `pip install` does not bring, and a sidecar is a small RDF/XML file.
"""

from __future__ import annotations

import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass
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
    "tagcap": "https://tagcap.invalid/xmp/1.0/",  # tagcap's own bookkeeping; .invalid: never a real host
}
ROOT = "tagcap|"
RDF = f"{{{NS['rdf']}}}"
CONTAINERS = ("Bag", "Seq", "Alt")


def sidecar_path(photo: str | Path, naming: str = "append") -> Path:
    photo = Path(photo)
    return photo.with_name(photo.name + ".xmp") if naming == "append" else photo.with_suffix(".xmp")


def merge_sidecar(existing: str | bytes | None, keywords: list[str], caption: str | None,
                  person: Iterable[str] = ()) -> str:
    """The sidecar text: `existing` (text, or the file's bytes in the encoding it declares; None for a
    new packet) with tagcap's current `keywords` and caption merged in (see the module docstring), and
    the keywords a person added in tagcap (`person`, their corrections) as the person's own: written
    like any keyword of theirs, never recorded as tagcap's, so never removed by tagcap."""
    if existing:
        for prefix, uri in _namespaces(existing):
            if prefix and prefix != "xml":
                ET.register_namespace(prefix, uri)
        root = ET.fromstring(existing)
    else:
        root = ET.Element(f"{{{NS['x']}}}xmpmeta")
    for prefix in ("x", "rdf", "dc", "lr", "tagcap"):
        ET.register_namespace(prefix, NS[prefix])
    rdf = root if root.tag == f"{RDF}RDF" else root.find(f"{RDF}RDF")
    if rdf is None:
        rdf = ET.SubElement(root, f"{RDF}RDF")
    descriptions = rdf.findall(f"{RDF}Description")
    if not descriptions:
        descriptions = [ET.SubElement(rdf, f"{RDF}Description", {f"{RDF}about": ""})]

    had_subject = _find(descriptions, "dc", "subject") is not None
    subject = _container(descriptions, "dc", "subject")
    added_bag = _container(descriptions, "tagcap", "added")
    rejected_bag = _container(descriptions, "tagcap", "rejected")
    person = list(dict.fromkeys(person))
    present = _items(subject)
    added = set(_items(added_bag)) - set(person)  # a keyword the person added in tagcap is theirs from now on
    rejected = (set(_items(rejected_bag)) | (added - set(present))) - set(person)  # tagcap's, taken out by a person
    keywords = [k for k in dict.fromkeys(keywords) if k not in rejected and k not in person]
    kept = [v for v in present if v not in added or v in keywords]
    _set_items(subject, kept + [k for k in person + keywords if k not in kept])
    _set_items(added_bag, [k for k in keywords if k in added or k not in present])
    _set_items(rejected_bag, sorted(rejected - set(present)))
    had_hierarchy = _find(descriptions, "lr", "hierarchicalSubject") is not None
    hierarchical = _container(descriptions, "lr", "hierarchicalSubject")
    ours_bag = _container(descriptions, "tagcap", "hierarchy")
    ours = set(_items(ours_bag))
    persons = [v for v in _items(hierarchical) if v not in ours and not v.startswith(ROOT)]
    paths = [hierarchy_path(k) for k in person + keywords]
    # tagcap's earlier entries (and those of versions that wrote `tagcap|label`) make way for today's;
    # an entry a person wrote stays theirs even where it equals one of tagcap's
    _set_items(hierarchical, persons + paths)
    _set_items(ours_bag, [p for p in paths if p not in persons])
    for bag in (added_bag, rejected_bag, ours_bag):
        _drop_if_empty(descriptions, bag)
    if not had_hierarchy:
        _drop_if_empty(descriptions, hierarchical)
    if not had_subject:
        _drop_if_empty(descriptions, subject)
    if caption:
        _merge_caption(descriptions, caption)
    elif caption == "":  # the captioner's sentence was withheld: take back the one tagcap wrote before
        _withdraw_caption(descriptions)
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + body + '\n<?xpacket end="w"?>\n'


def _namespaces(text: str | bytes) -> list[tuple[str, str]]:
    stream = io.BytesIO(text) if isinstance(text, bytes) else io.StringIO(text)
    return [ns for _, ns in ET.iterparse(stream, events=("start-ns",))]


def _find(descriptions, prefix: str, name: str):
    for d in descriptions:
        el = d.find(f"{{{NS[prefix]}}}{name}")
        if el is not None:
            return el
    return None


def _container(descriptions, prefix: str, name: str):
    """The array (rdf:Bag, or the rdf:Seq or rdf:Alt a writer chose) of property prefix:name; a Bag
    made in the first rdf:Description when the property or its array is missing."""
    prop = _find(descriptions, prefix, name)
    if prop is None:
        prop = ET.SubElement(descriptions[0], f"{{{NS[prefix]}}}{name}")
    for kind in CONTAINERS:
        array = prop.find(f"{RDF}{kind}")
        if array is not None:
            return array
    return ET.SubElement(prop, f"{RDF}Bag")


def hierarchy_path(keyword: str) -> str:
    """A keyword under the named concepts above it, most general first: `animal|dog|Eskimo dog`."""
    from tagcap.concepts import concepts

    vocab = concepts()
    synset = vocab.concept_of(keyword)
    above = [vocab.name(a) for a in vocab.ancestors(synset) if a in vocab.named] if synset else []
    return "|".join([*reversed(above), keyword])


def _ours(descriptions) -> bool:
    """Whether the sidecar's description is the caption tagcap wrote last, and nothing else."""
    existing = _find(descriptions, "dc", "description")
    record = _find(descriptions, "tagcap", "caption")
    texts = [li.text or "" for li in existing.iter(f"{RDF}li")] or [existing.text or ""]
    return record is not None and (record.text or "") in texts and len(texts) == 1


def _remove(descriptions, prop) -> None:
    for d in descriptions:
        if prop in list(d):
            d.remove(prop)


def _merge_caption(descriptions, caption: str) -> None:
    """Write the caption as the description where there is none, or where the description is the
    caption tagcap wrote last (then a new one replaces it); a person's text is left as it is."""
    existing = _find(descriptions, "dc", "description")
    record = _find(descriptions, "tagcap", "caption")
    if existing is not None:
        if not _ours(descriptions):
            return
        _remove(descriptions, existing)
    alt = ET.SubElement(ET.SubElement(descriptions[0], f"{{{NS['dc']}}}description"), f"{RDF}Alt")
    li = ET.SubElement(alt, f"{RDF}li", {f"{{{NS['xml']}}}lang": "x-default"})
    li.text = caption
    if record is None:
        record = ET.SubElement(descriptions[0], f"{{{NS['tagcap']}}}caption")
    record.text = caption


def _withdraw_caption(descriptions) -> None:
    """Take the caption tagcap wrote last out of the description (the captioner's new sentence named
    what the taggers do not see); a description a person wrote or changed stays."""
    existing = _find(descriptions, "dc", "description")
    record = _find(descriptions, "tagcap", "caption")
    if existing is not None and _ours(descriptions):
        _remove(descriptions, existing)
        _remove(descriptions, record)


def _drop_if_empty(descriptions, array) -> None:
    """A property of ours left with no item goes, rather than stay an empty array in the file."""
    if len(array):
        return
    for d in descriptions:
        for prop in list(d):
            if array in list(prop):
                d.remove(prop)
                return


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


def write_sidecar(photo: str | Path, keywords: list[str], caption: str | None, naming: str = "append",
                  person: Iterable[str] = ()) -> Path:
    path = sidecar_path(photo, naming)
    existing = path.read_bytes() if path.is_file() else None  # the bytes: XML declares its own encoding
    try:
        text = merge_sidecar(existing, keywords, caption, person)
    except (ET.ParseError, ValueError, LookupError) as e:  # not XML; an encoding Python does not know
        raise DataError(path, f"an existing sidecar that is not valid XML ({e}); left as it is") from None
    atomic.write_text(path, text)
    return path


@dataclass(frozen=True)
class Sidecars:
    """How sidecars are written: `naming` (`append`: IMG.jpg.xmp; `replace`: IMG.xmp) and whether the
    caption goes into the description (`caption=False`, `--no-caption`: descriptions are left alone,
    neither written nor taken back)."""

    naming: str = "append"
    caption: bool = True


def write_sidecars(library: Library, photos: list[tuple] | None = None, options: Sidecars = Sidecars(),
                   on_error=None) -> int:
    """Sidecars for `photos` ((id, path, indexed_at) rows, default: every readable photo in the library),
    each recorded in the library once written; returns how many were written. A sidecar that cannot
    be written (not XML, unreadable, a full disk) is one photo's problem: with `on_error` it is
    reported and the others are written, and it stays pending for the next `index --xmp`."""
    written = []
    try:
        for pid, path, indexed_at in library.sidecar_photos() if photos is None else photos:
            keywords, person, caption = library.keywords_and_caption(pid)
            try:
                write_sidecar(path, keywords, caption if options.caption else None, options.naming, person)
            except (DataError, OSError) as e:
                if on_error is None:
                    raise
                on_error(path, str(e))
                continue
            written.append((pid, indexed_at))
            if len(written) % 256 == 0:
                library.sidecars_written(written[-256:])
    finally:
        if written[len(written) // 256 * 256:]:
            library.sidecars_written(written[len(written) // 256 * 256:])
    return len(written)
