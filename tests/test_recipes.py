"""Recipes that extend a base, loss arguments reachable from a recipe, `--set` overrides, and the
resolved recipe saved with the model: each checked before any feature is extracted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tagcap.cli import main
from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.errors import ConfigError
from tagcap.losses import get_loss
from tagcap.decoders import create_decoder
from tagcap.recipes import CONFIG_DIR, apply_overrides, available, check_recipe, load_recipe


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("recipes"), n_train=40, n_test=10, size=48, seed=4)


def test_recipes_extend_the_base_and_keep_their_own_values():
    base = yaml.safe_load((CONFIG_DIR / "base.yaml").read_text())["train"]
    extending = [name for name in available() if "extends: base" in
                 next(p for p in CONFIG_DIR.glob(f"*/{name}.yaml")).read_text()]
    assert len(extending) >= 13
    for name in extending:
        recipe = load_recipe(name, "corel5k")
        own = yaml.safe_load(next(p for p in CONFIG_DIR.glob(f"*/{name}.yaml")).read_text()).get("train", {})
        assert recipe["train"] == {**base, **own}, name
        check_recipe(recipe)
    assert load_recipe("cnn-unsym")["train"]["patience"] == 8 and load_recipe("ria")["train"]["patience"] == 5


def test_extends_a_file_a_chain_and_refuses_a_loop(tmp_path):
    (tmp_path / "mine.yaml").write_text("name: mine\nmethod: cnn\nextends: cnn-asl\ntrain: {lr: 0.003}\n")
    recipe = load_recipe(str(tmp_path / "mine.yaml"))
    assert recipe["decoder"] == {"loss": "asl", "dropout": 0.3} and recipe["train"]["lr"] == 0.003
    assert recipe["train"]["patience"] == 8 and recipe["train"]["optimizer"] == "adamw"  # from cnn-asl, from base
    (tmp_path / "a.yaml").write_text("name: a\nmethod: cnn\nextends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("name: b\nmethod: cnn\nextends: a.yaml\n")
    with pytest.raises(ConfigError, match="loops back"):
        load_recipe(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("name: c\nmethod: cnn\nextends: no-such-recipe\n")
    with pytest.raises(ConfigError, match="'extends: no-such-recipe' names no recipe"):
        load_recipe(str(tmp_path / "c.yaml"))


def test_set_overrides_dotted_keys_with_yaml_values():
    original = load_recipe("cnn-asl")
    recipe = apply_overrides(original, ["decoder.dropout=0.5", "train.lr=3e-4",
                                        "decoder.loss_args.gamma_neg=2", "decisions=[mcc]"])
    assert original == load_recipe("cnn-asl"), "apply_overrides changed the recipe it was given"
    assert recipe["decoder"] == {"loss": "asl", "dropout": 0.5, "loss_args": {"gamma_neg": 2}}
    assert recipe["train"]["lr"] == 3e-4 and recipe["decisions"] == ["mcc"]
    assert recipe["overrides"][0] == "decoder.dropout=0.5"
    check_recipe(recipe)
    assert load_recipe("cnn-asl")["decoder"]["dropout"] == 0.3  # the packaged recipe is untouched
    for bad, named in (("decoder.dropout", "expected KEY=VALUE"), ("=3", "expected KEY=VALUE"),
                       ("name.x=1", "name is a value, not a section")):
        with pytest.raises(ConfigError, match=named):
            apply_overrides(load_recipe("cnn-asl"), [bad])


def test_loss_arguments_reach_the_loss_and_unknown_ones_are_named():
    logits, targets = torch.randn(4, 6), (torch.rand(4, 6) > 0.5).float()
    assert not torch.isclose(get_loss("asl", {"gamma_neg": 1.0})(logits, targets), get_loss("asl")(logits, targets))
    torch.manual_seed(0)
    dec = create_decoder("cnn", 6, 8, loss="asl", loss_args={"gamma_neg": 1.0}, dropout=0.0)
    x = torch.randn(4, 8)
    assert torch.isclose(dec.loss(x, targets), get_loss("asl", {"gamma_neg": 1.0})(dec.fc(x), targets))
    with pytest.raises(ConfigError, match="'gamma' not an argument of the 'asl' loss; it takes clip, gamma_neg, gamma_pos"):
        get_loss("asl", {"gamma": 2})
    recipe = apply_overrides(load_recipe("cnn-unsym"), ["decoder.loss_args.gama_neg=2"])
    with pytest.raises(ConfigError, match="'gama_neg' not an argument of the 'unsym' loss"):
        check_recipe(recipe)


def run_fit(data, cache: Path, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TAGCAP_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "tagcap", "fit", "--data", str(data), *map(str, args)],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("assignment, named", [
    ("decoder.dropuot=0.5", "'dropuot' is not an option of the 'cnn' decoder"),
    ("decoder.loss_args.gama_neg=2", "'gama_neg' not an argument of the 'unsym' loss"),
    ("train.learning_rate=0.1", "'learning_rate'"),
])
def test_a_misspelt_set_fails_before_extraction(data, tmp_path, assignment, named):
    done = run_fit(data, tmp_path / "cache", "--recipe", "cnn-unsym", "--set", assignment, "--out", tmp_path / "x")
    assert done.returncode == 2 and named in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "cache" / "features").exists() and not (tmp_path / "x").exists()


def test_the_resolved_recipe_is_saved_with_the_model(data, tmp_path):
    out = tmp_path / "m"
    assert main(["fit", "--data", str(data), "--recipe", "cnn-asl", "--epochs", "2", "--out", str(out), "--quiet",
                 "--set", "decoder.loss_args.gamma_neg=2", "train.lr=0.002"]) == 0
    saved = yaml.safe_load((out / "recipe.yaml").read_text())
    assert saved == json.loads((out / "config.json").read_text())["recipe"]
    assert saved["decoder"]["loss_args"] == {"gamma_neg": 2} and saved["train"]["lr"] == 0.002
    assert saved["train"]["optimizer"] == "adamw" and saved["overrides"] == ["decoder.loss_args.gamma_neg=2",
                                                                              "train.lr=0.002"]
    bench = tmp_path / "bench"
    assert main(["bench", "annotate", "--data", str(data), "--out", str(bench), "--methods", "cnn-bce",
                 "--set", "train.epochs=2", "--quiet"]) == 0
    assert yaml.safe_load((bench / "recipes" / "cnn-bce.yaml").read_text())["train"]["epochs"] == 2
