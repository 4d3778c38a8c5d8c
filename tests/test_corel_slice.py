"""Integration: the whole annotation pipeline on a small slice of the real Corel-5k."""

import json

import pytest

from conftest import COREL, needs_corel
from tagcap.bench import bench_annotate
from tagcap.features.backbone import BackboneSpec


@pytest.fixture(scope="module")
def corel_slice(tmp_path_factory):
    """The first 300 training and 100 test images of Corel-5k, as a JSON-samples folder."""
    root = tmp_path_factory.mktemp("corel-slice")
    (root / "images").symlink_to(COREL / "images")
    for split, n in (("train", 300), ("test", 100)):
        data = json.loads((COREL / f"{split}.json").read_text())
        (root / f"{split}.json").write_text(json.dumps({"labels": data["labels"], "samples": data["samples"][:n]}))
    return root


@needs_corel
def test_pretrained_features_beat_random_ones_on_a_corel_slice(corel_slice, tmp_path):
    def run(weights):
        rows = bench_annotate(corel_slice, tmp_path / weights, methods=["cnn-unsym"], progress=False,
                              spec=BackboneSpec(weights=weights), log=lambda *a: None)
        return {r["decision"]: r for r in rows}

    pretrained, random_init = run("auto"), run("random")
    assert set(pretrained) == {"threshold 0.5", "MCC thresholds"}
    # ImageNet features must carry far more about Corel labels than a random network's
    assert pretrained["MCC thresholds"]["mAP"] > random_init["MCC thresholds"]["mAP"] + 0.05
    assert pretrained["MCC thresholds"]["per_image"]["F1"] > random_init["MCC thresholds"]["per_image"]["F1"]
    assert pretrained["MCC thresholds"]["input_size"] == 260
    assert (tmp_path / "auto" / "checkpoints" / "cnn-unsym+mcc-thresholds" / "config.json").is_file()
