"""Fail before training, not after: every option and recipe key is checked before any feature is
extracted, with a message naming what is wrong and what is allowed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tagcap.cli import main
from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.errors import ConfigError
from tagcap.decoders import create_decoder
from tagcap.recipes import check_recipe, load_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("ff"), n_train=40, n_test=10, size=48, seed=4)


def run_fit(data, cache: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TAGCAP_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "tagcap", "fit", "--data", str(data), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


def nothing_extracted(cache: Path) -> bool:
    return not (cache / "features").exists() or not any((cache / "features").iterdir())


def test_an_unknown_decision_fails_before_extraction_naming_the_rules(data, tmp_path):
    done = run_fit(data, tmp_path / "cache", "--recipe", "ria", "--decision", "nonsense", "--out", tmp_path / "x")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "'nonsense'" in done.stderr and "threshold, mcc, sequence and top-K" in done.stderr
    assert nothing_extracted(tmp_path / "cache") and not (tmp_path / "x").exists()


def test_sequence_is_refused_for_a_decoder_that_emits_nothing(data, tmp_path):
    done = run_fit(data, tmp_path / "cache", "--recipe", "cnn-bce", "--decision", "sequence", "--out", tmp_path / "x")
    assert done.returncode == 2 and "gives scores only" in done.stderr and nothing_extracted(tmp_path / "cache")


def test_fit_saves_the_recipes_own_first_rule(data, tmp_path):
    assert main(["fit", "--data", str(data), "--recipe", "ria", "--epochs", "1", "--out", str(tmp_path / "ria"),
                 "--quiet"]) == 0
    assert json.loads((tmp_path / "ria" / "config.json").read_text())["decision"] == {"kind": "sequence"}


@pytest.mark.parametrize("section, key, value, named", [
    ("decoder", "embed_dims", 128, "'embed_dims' is not an option of the 'ria' decoder"),
    ("decoder", "order", "alphabetical", "unknown label order 'alphabetical'"),
    ("train", "learning_rate", 0.1, "unknown training option(s) 'learning_rate'"),
])
def test_a_misspelt_recipe_fails_before_extraction_naming_the_key(data, tmp_path, section, key, value, named):
    recipe = load_recipe("ria")
    recipe.pop("source")
    recipe[section][key] = value
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = run_fit(data, tmp_path / "cache", "--recipe", path, "--out", tmp_path / "x")
    assert done.returncode == 2 and named in done.stderr, done.stderr
    assert nothing_extracted(tmp_path / "cache")


def test_an_unknown_loss_is_named_before_any_work(tmp_path):
    recipe = load_recipe("cnn-unsym")
    recipe["decoder"]["loss"] = "unsymetrical"
    with pytest.raises(ConfigError, match="unsymetrical"):
        check_recipe(recipe)


def test_create_decoder_refuses_unknown_arguments_listing_the_known():
    with pytest.raises(ConfigError, match="'embed_dims' is not an option of the 'ria' decoder; it takes .*embed_dim"):
        create_decoder("ria", 5, 8, embed_dims=128)
    with pytest.raises(ConfigError, match="'dropuot' is not an option of the 'cnn' decoder; it takes dropout, loss"):
        create_decoder("cnn", 5, 8, dropuot=0.1)


def test_the_bench_checks_every_recipe_first(data, tmp_path):
    recipe = load_recipe("cnn-bce")
    recipe.pop("source")
    recipe["decoder"]["dropout_rate"] = 0.5
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "TAGCAP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "tagcap", "bench", "annotate", "--data", str(data), "--out",
                           str(tmp_path / "b"), "--methods", f"cnn-unsym,{path}"], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 2 and "'dropout_rate'" in done.stderr and nothing_extracted(tmp_path / "cache")


def tiny_flickr(root: Path) -> Path:
    from conftest import write_png

    names = {"train": ["a.jpg", "b.jpg"], "dev": ["c.jpg"], "test": ["d.jpg"]}
    tokens = []
    for split, files in names.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(files) + "\n")
        for f in files:
            write_png(root / "images" / f)
            tokens.append(f"{f}#0\ta dog runs on the grass")
    (root / "Flickr8k.token.txt").write_text("\n".join(tokens) + "\n")
    return root


def test_captioning_fit_refuses_options_it_would_ignore(tmp_path):
    tiny_flickr(tmp_path)
    done = subprocess.run([sys.executable, "-m", "tagcap", "fit", "--data", str(tmp_path), "--recipe",
                           "show-attend-tell", "--decision", "mcc", "--devices", "2", "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--decision, --devices: not used when training a captioner" in done.stderr, done.stderr


def test_evaluate_refuses_a_decoder_precision_an_annotator_does_not_have(data, tmp_path):
    from tagcap.inference.bundled import BUNDLED

    env = {**os.environ, "TAGCAP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "tagcap", "evaluate", str(BUNDLED / "corel5k-annotator"), "--data",
                           str(data), "--decoder-precision", "bfloat16"], capture_output=True, text=True, timeout=120,
                          env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--decoder-precision bfloat16: only for captioning checkpoints" in done.stderr
    assert nothing_extracted(tmp_path / "cache")


def test_evaluate_refuses_a_split_the_dataset_lacks_before_extraction(data, tmp_path):
    from tagcap.inference.bundled import BUNDLED

    env = {**os.environ, "TAGCAP_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-m", "tagcap", "evaluate", str(BUNDLED / "corel5k-annotator"), "--data",
                           str(data), "--split", "dev"], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--split dev:" in done.stderr and "it has test, train, val" in done.stderr
    assert nothing_extracted(tmp_path / "cache")
