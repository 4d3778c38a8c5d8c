"""The concept vocabulary (WordNet synsets behind every label), the shown rule that merges the models'
tags by concept with calibrated confidences, and search through people's words."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import COREL, SHARED, needs_corel
from tagcap.concepts import concepts, read_mapping
from tagcap.concepts.calibrate import calibrated, expected_calibration_error, fit_platt, truth_matrix
from tagcap.errors import CheckpointError
from tagcap.inference.bundled import BUNDLED
from tagcap.inference.shown import Calibration, ShownRule, broader, choose, merge
from tagcap.library.search import search
from tagcap.library.store import Library

ESKIMO_DOG, DOG, ANIMAL, TIGER = "n02109961", "n02084071", "n00015388", "n02129604"
FLICKR8K = SHARED / "datasets" / "flickr8k"
needs_wordnet = pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(),
                                   reason="WordNet 3.0 not installed (Debian's wordnet-base; .ci/run installs it)")


def test_breeds_roll_up_and_words_reach_their_concepts():
    vocab = concepts()
    assert vocab.is_a(ESKIMO_DOG, DOG) and vocab.is_a(ESKIMO_DOG, ANIMAL) and not vocab.is_a(DOG, ESKIMO_DOG)
    assert broader(ESKIMO_DOG) == ["dog", "animal"]
    assert ESKIMO_DOG in vocab.descendants(DOG)
    assert vocab.lookup("airplanes")[0] == vocab.lookup("aeroplane")[0] == vocab.lookup("plane")[0]
    assert "child" in vocab.query_words("children") and "child" in vocab.query_words("kids")
    assert {"dog", "animal", "husky"} <= set(vocab.search_words("Eskimo dog"))
    assert vocab.lookup("no such word at all") == []


def test_every_bundled_annotator_maps_every_label_to_a_concept():
    for name in ("corel5k-annotator", "imagenet-classes", "flickr8k-tagger"):
        config = json.loads((BUNDLED / name / "config.json").read_text())
        mapping = read_mapping(BUNDLED / name)
        assert set(mapping) == set(config["vocabulary"]["labels"]), name
    corel = read_mapping(BUNDLED / "corel5k-annotator")
    assert corel["tiger"] == TIGER  # the cat, not "a fierce or audacious person" (WordNet's first sense)
    assert read_mapping(BUNDLED / "imagenet-classes")["tiger"] == TIGER  # one concept for both models


def test_a_mapping_naming_an_unknown_synset_is_refused_with_its_line(tmp_path):
    (tmp_path / "concepts.tsv").write_text("label\tsynset\twordnet\tgloss\nsky\tn09436708\tsky\t\nfoo\tn99999999\t\t\n")
    with pytest.raises(CheckpointError, match=r"concepts.tsv:3: 'n99999999'"):
        read_mapping(tmp_path)


@needs_wordnet
@pytest.mark.skipif(not FLICKR8K.is_dir(), reason=f"Flickr8k not found at {FLICKR8K}")
def test_the_shipped_vocabulary_is_what_the_build_script_makes_from_wordnet():
    from tagcap.concepts.build import build
    from tagcap.concepts.wordnet import WordNet

    rebuilt = build(WordNet(), FLICKR8K)
    shipped = concepts().data
    assert rebuilt["models"] == shipped["models"]
    assert rebuilt["concepts"] == shipped["concepts"] and rebuilt["forms"] == shipped["forms"]
    assert rebuilt["flickr8k_nouns"] == shipped["flickr8k_nouns"]


def test_platt_scaling_recovers_the_probabilities_it_was_drawn_from():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.99, (4000, 3))
    # the truth: right with probability sigmoid(2 * logit(raw) - 1), a model twice too timid and too eager
    p_true = 1 / (1 + np.exp(-(2 * np.log(raw / (1 - raw)) - 1)))
    truth = rng.uniform(size=raw.shape) < p_true
    a, b = fit_platt(raw, truth, strength=1.0)
    assert np.allclose(a, 2, atol=0.25) and np.allclose(b, -1, atol=0.25)
    ece_raw, _ = expected_calibration_error(raw.ravel(), truth.ravel())
    ece_fit, table = expected_calibration_error(calibrated(raw, a, b).ravel(), truth.ravel())
    assert ece_fit < 0.03 < ece_raw and sum(row["tags"] for row in table) == raw.size


def test_a_label_without_validation_photos_keeps_the_models_pooled_calibration():
    rng = np.random.default_rng(1)
    raw = rng.uniform(0.01, 0.99, (3000, 2))
    truth = rng.uniform(size=raw.shape) < raw
    judged = np.ones(raw.shape, bool)
    judged[:, 1] = False  # no photo can tell label 1 right or wrong
    truth[:, 1] = False
    a, b = fit_platt(raw, truth, strength=10.0, judged=judged)
    assert abs(a[1] - a[0]) < 0.2 and abs(b[1] - b[0]) < 0.2  # not pushed to "never" by unjudged zeros


def test_truth_counts_a_broader_or_a_narrower_tag_as_right():
    vocab = concepts()
    truth = truth_matrix(vocab, [{DOG}, {TIGER}, set()], [ESKIMO_DOG, ANIMAL, DOG, TIGER])
    assert truth.tolist() == [[True, True, True, False], [False, True, False, True], [False] * 4]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=6, max_size=6), st.floats(0, 1), st.integers(1, 6))
def test_the_shown_tags_are_few_confident_and_never_imply_each_other(confidences, threshold, cap):
    synsets = [DOG, ANIMAL, ESKIMO_DOG, TIGER, "n09436708", "n11508382"]  # dog, animal, husky, tiger, sky, snow
    best = np.array([confidences])
    shown = choose(best, ShownRule(threshold, cap), synsets)[0]
    picked = [synsets[j] for j in np.flatnonzero(shown)]
    assert len(picked) <= cap and all(best[0, j] >= threshold for j in np.flatnonzero(shown))
    vocab = concepts()
    # a broader concept is shown only above its narrower one (`dog` before `Eskimo dog`), never after it
    assert not any(vocab.is_a(x, y) for x in picked for y in picked if x != y and best[0, synsets.index(y)]
                   < best[0, synsets.index(x)])
    # every concept left out at or above the threshold is implied by a shown one, or the cap was reached
    for j in np.flatnonzero((best[0] >= threshold) & ~shown):
        assert len(picked) == cap or any(synsets[j] in vocab.ancestors(p) for p in picked)


def test_two_models_naming_one_concept_make_one_tag_with_both_sources():
    def cal(labels, synsets):
        n = len(labels)
        return Calibration(labels, synsets, np.ones(n), np.zeros(n), np.ones(n, bool), None)

    a = ("corel", cal(["tiger", "sky"], [TIGER, "n09436708"]), np.array([[0.9, 0.2]]))
    b = ("imagenet", cal(["tiger", "Eskimo dog"], [TIGER, ESKIMO_DOG]), np.array([[0.6, 0.05]]))
    [(shown, candidates)] = merge([a, b], ShownRule(0.5, 5))
    assert [t["label"] for t in shown] == ["tiger"]
    assert shown[0]["sources"] == {"corel": 0.9, "imagenet": 0.6} and shown[0]["source"] == "corel"
    assert [t["label"] for t in candidates] == ["tiger", "sky", "Eskimo dog"]
    assert candidates[2]["broader"] == ["dog", "animal"]


@needs_corel
def test_a_tiger_photo_gets_tiger_once_from_the_default_models():
    from tagcap.data import read_dataset
    from tagcap.features.images import load_image
    from tagcap.inference.bundled import default_sources
    from tagcap.inference.taggers import ModelSet

    records = [r for r in read_dataset(COREL).splits["test"] if "tiger" in r.labels][:3]
    models = ModelSet.load([s for s in default_sources() if "captioner" not in s.name])
    results = models.run([load_image(r.image) for r in records], captions=False)
    rule = ShownRule.load()
    for record, result in zip(records, results):
        labels = [t["label"] for t in result["labels"]]
        assert labels.count("tiger") == 1, (record.key, labels)
        scores = [t["score"] for t in result["labels"]]
        assert scores == sorted(scores, reverse=True) and min(scores) >= rule.threshold
        assert len(labels) <= rule.max_tags and result["decision"] == rule.name()
        tiger = next(t for t in result["labels"] if t["label"] == "tiger")
        assert set(tiger["sources"]) >= {"corel5k-annotator", "imagenet-classes"}


def test_search_finds_photos_by_synonyms_plurals_and_broader_words(tmp_path):
    with Library(tmp_path / "lib.sqlite") as lib:
        with lib.transaction():
            mid = lib.model_id("m", "m", "annotation")
            for name, tags in [("husky", [("Eskimo dog", 0.8, 1)]), ("dog", [("dog", 0.9, 1)]),
                               ("jet", [("jet", 0.9, 1)]), ("kid", [("child", 0.7, 1)]),
                               ("tiger", [("tiger", 0.9, 1)]), ("sky", [("sky", 0.9, 1), ("dog", 0.3, 0)])]:
                lib.write_photo({"path": f"/p/{name}.jpg", "size": 1, "mtime_ns": 1, "sha256": name},
                                {mid: {"tags": tags}}, 0.0)

        def found(query):
            return [Path(h.path).stem for h in search(lib, query)]

        # the exact label first, then a dog the word names more broadly, then a photo where "dog" was only
        # a candidate below the rule's line
        assert found("dog") == ["dog", "husky", "sky"]
        assert found("airplane") == ["jet"] and found("aeroplanes") == ["jet"]
        assert found("children") == ["kid"] and found("kids") == ["kid"]
        assert sorted(found("animal")) == ["dog", "husky", "tiger"]
        assert found("husky") == ["husky"]


@needs_corel
def test_index_stores_the_shown_tags_and_the_broader_words_find_them(tmp_path):
    import subprocess
    import sys

    photos = tmp_path / "photos"
    photos.mkdir()
    from tagcap.data import read_dataset

    tiger = next(r for r in read_dataset(COREL).splits["test"] if "tiger" in r.labels)
    shutil.copy(tiger.image, photos / "cat.jpeg")
    lib = tmp_path / "lib.sqlite"
    subprocess.run([sys.executable, "-m", "tagcap", "index", str(photos), "--library", str(lib), "--quiet"],
                   check=True, capture_output=True)
    with Library(lib, mode="read") as library:
        chosen = [r[0] for r in library.db.execute("SELECT label FROM tags WHERE chosen = 1")]
        assert chosen.count("tiger") == 1 and len(chosen) <= ShownRule.load().max_tags
        assert [Path(h.path).name for h in search(library, "big cats")] == ["cat.jpeg"]


@pytest.mark.parametrize("damage", ["not json {", '{"columns": [{"label": "tench"}]}'])
def test_a_damaged_calibration_file_is_refused_naming_it(tmp_path, damage):
    """A model folder whose shown.json is cut short or lacks its fields: loading its calibration
    raises a CheckpointError that names the file, instead of tags from half a calibration."""
    from tagcap.inference.taggers import load_model

    folder = tmp_path / "imagenet-classes"
    shutil.copytree(BUNDLED / "imagenet-classes", folder)
    (folder / "shown.json").write_text(damage)
    model = load_model(folder)
    with pytest.raises(CheckpointError, match=r"shown\.json: not a tagcap calibration file"):
        model.calibration


def test_a_damaged_shown_rule_file_is_refused_naming_it(tmp_path):
    bad = tmp_path / "shown-rule.json"
    bad.write_text('{"threshold": "high"}')
    with pytest.raises(CheckpointError, match=r"shown-rule\.json: not a tagcap shown rule"):
        ShownRule.load(bad)
