"""Property tests (Hypothesis) where the inputs are unbounded: a person's XMP keywords over many rounds
of tagcap's and the person's edits, any text as a search query, any JSON as a checkpoint's config."""

from __future__ import annotations

import json
import math
import shutil
import warnings
import xml.etree.ElementTree as ET

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import annotation_meta  # noqa: E402
from tagcap.errors import CheckpointError, ConfigError  # noqa: E402
from tagcap.library.xmp import NS, merge_sidecar  # noqa: E402

RDF = f"{{{NS['rdf']}}}"
SUBJECT = f"{{{NS['dc']}}}subject"
# keywords as people type them: letters, digits, punctuation, spaces (XML 1.0 has no control characters,
# and a parser turns a carriage return into a newline, so neither can be a keyword in a sidecar)
KEYWORD = st.text(st.characters(whitelist_categories=("L", "N", "P", "Zs", "S")), min_size=1, max_size=10)
POOL = st.lists(KEYWORD, min_size=1, max_size=8, unique=True)


def subject(text: str) -> list[str]:
    root = ET.fromstring(text)
    prop = root.find(f".//{SUBJECT}")
    return [] if prop is None else [li.text or "" for li in prop.iter(f"{RDF}li")]


def person_edits(text: str | None, add: list[str], remove: list[str]) -> str:
    """The sidecar after a person added and removed keywords in a photo manager (dc:subject only)."""
    if text is None:
        text = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
                '<rdf:Description rdf:about="" xmlns:dc="http://purl.org/dc/elements/1.1/"><dc:subject><rdf:Bag/>'
                '</dc:subject></rdf:Description></rdf:RDF></x:xmpmeta>')
    for prefix, uri in NS.items():
        if prefix != "xml":
            ET.register_namespace(prefix, uri)
    root = ET.fromstring(text)
    prop = root.find(f".//{SUBJECT}")
    if prop is None:
        prop = ET.SubElement(root.find(f".//{RDF}Description"), SUBJECT)
    array = next(iter(prop), None)
    if array is None:
        array = ET.SubElement(prop, f"{RDF}Bag")
    for li in list(array):
        if (li.text or "") in remove:
            array.remove(li)
    present = [li.text or "" for li in array]
    for k in add:
        if k not in present:  # as a photo manager does: a keyword already there is not written twice
            ET.SubElement(array, f"{RDF}li").text = k
            present.append(k)
    return ET.tostring(root, encoding="unicode")


ROUND = st.one_of(
    st.tuples(st.just("tagcap"), st.lists(st.integers(0, 15), max_size=6)),   # tagcap's keywords, by pool index
    st.tuples(st.just("add"), st.lists(st.integers(0, 15), min_size=1, max_size=3)),   # the person adds
    st.tuples(st.just("remove"), st.lists(st.integers(0, 15), min_size=1, max_size=3)),  # the person removes
)


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pool=POOL, own=st.lists(st.integers(0, 15), max_size=4), rounds=st.lists(ROUND, min_size=1, max_size=8))
def test_a_persons_keywords_are_never_lost_whatever_tagcap_adds_and_removes(pool, own, rounds):
    pick = lambda idx: [pool[i % len(pool)] for i in idx]  # noqa: E731
    person = set(pick(own))  # the keywords that are the person's: never to be lost
    text = person_edits(None, sorted(person), []) if person else None
    latest: list[str] = []
    taken_out: set[str] = set()  # tagcap's keywords the person removed since tagcap last wrote the sidecar
    for kind, idx in rounds:
        words = pick(idx)
        if kind == "tagcap":
            latest = words
            text = merge_sidecar(text, words, None)
            present = set(subject(text))
            assert person <= present, f"lost {person - present}"
            assert present <= person | set(latest), f"tagcap left stale keywords {present - person - set(latest)}"
            taken_out = set()
        elif kind == "add":
            # a keyword the sidecar has already stays whose it was; one of tagcap's taken out and typed in
            # again before tagcap looks leaves the file as it was, so it stays tagcap's too
            new = set(words) - (set(subject(text)) if text else set()) - taken_out
            text = person_edits(text, words, [])
            person |= new
        else:
            taken_out |= set(words) & (set(subject(text)) if text else set()) - person
            text = person_edits(text, [], words)
            person -= set(words)
    final = set(subject(merge_sidecar(text, latest, None)))
    assert person <= final


# -- search ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def library(tmp_path_factory):
    from tagcap.library.store import Library

    lib = Library(tmp_path_factory.mktemp("props") / "lib.sqlite")
    with lib.transaction():
        mid = lib.model_id("m", "identity", "annotation")
        for n, (labels, caption) in enumerate([(["dog", "grass"], "a dog runs on the grass"),
                                               (["tiger", "water"], "a tiger in the water"),
                                               (["golden retriever"], "a dog's ball")]):
            lib.write_photo({"path": f"/p/{n}.jpg", "size": 1, "mtime_ns": 1, "sha256": f"{n:064d}"},
                            {mid: {"tags": [(label, 0.9, 1) for label in labels], "caption": caption}}, 0.0)
    yield lib
    lib.close()


QUERY = st.one_of(st.text(max_size=200), st.text(st.sampled_from(list("ab \"*'%-_^():")), max_size=60),
                  st.lists(st.sampled_from(["dog", "tiger", "grass", "golden", "retriever", "OR", "NOT", "*"]),
                           max_size=20).map(" ".join))


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(query=QUERY, limit=st.integers(-5, 200_000), offset=st.integers(-5, 2 ** 70),
       min_score=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
       tags=st.lists(st.text(max_size=12), max_size=20))
def test_any_query_gives_results_or_a_named_error(library, query, limit, offset, min_score, tags):
    from tagcap.library.search import search

    try:
        hits = search(library, query, tags=tags, min_score=min_score, limit=limit, offset=offset)
    except ConfigError:
        return
    assert len(hits) <= limit and all(h.path.startswith("/p/") for h in hits)


# -- checkpoint configs ----------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                    max_leaves=12)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import torch

    from tagcap.decoders import create_decoder
    from tagcap.train.checkpoint import save_checkpoint

    torch.manual_seed(0)
    folder = save_checkpoint(tmp_path_factory.mktemp("ckpt") / "ckpt", create_decoder("ria", 4, 16, hidden=8,
                                                                                      embed_dim=8), annotation_meta(4))
    return folder, json.loads((folder / "config.json").read_text())


def _paths(value, prefix=()):
    """Every key path of a JSON object, leaves and containers."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))


def _mutated(config: dict, edits) -> object:
    config = json.loads(json.dumps(config))
    paths = list(_paths(config))
    for which, action, value in edits:
        *parent, key = paths[which % len(paths)]
        node = config
        for k in parent:
            node = node.get(k) if isinstance(node, dict) else None
        if not isinstance(node, dict) or key not in node:
            continue
        if action == "delete":
            del node[key]
        else:
            node[key] = value
    return config


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["delete", "set"]), JSON), max_size=4),
       whole=st.one_of(st.none(), JSON))
def test_any_config_json_gives_a_model_or_a_checkpoint_error(checkpoint, tmp_path_factory, edits, whole):
    from tagcap.inference.checkpoint import load_checkpoint

    folder, config = checkpoint
    trial = tmp_path_factory.mktemp("trial") / "ckpt"
    shutil.copytree(folder, trial)
    text = json.dumps(whole if whole is not None else _mutated(config, edits), allow_nan=True)
    (trial / "config.json").write_text(text)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            decoder, loaded = load_checkpoint(trial)
    except CheckpointError:
        return
    finally:
        shutil.rmtree(trial.parent)
    assert decoder.num_labels == loaded["decoder"]["num_labels"] == 4
    rule = loaded["decision"]
    assert all(math.isfinite(t) for t in [rule.get("t", 0.5), *rule.get("thresholds", [])])
