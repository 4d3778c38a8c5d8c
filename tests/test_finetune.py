"""Fine-tuning the backbone with a decoder: partial (cached activations) and end to end."""

import json

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import load_file

from tagcap.cli import main
from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.errors import TagcapError
from tagcap.features.backbone import BackboneSpec, build_timm_model
from tagcap.features.images import load_image
from tagcap.finetune import BACKBONE_FILE, fit_tuned, save_tuned, split_backbone
from tagcap.inference.taggers import Annotator
from tagcap.recipes import load_recipe
from tagcap.inference.outputs import predict_outputs


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=96, n_test=24, size=64, seed=7)


def small_recipe(**train):
    recipe = load_recipe("cnn-unsym-partial")
    recipe["train"].update({"epochs": 2, "batch_size": 16, "patience": 10, **train})
    return recipe


def test_split_backbone_reproduces_the_whole_network_and_refuses_what_it_cannot_split():
    model, _ = build_timm_model(BackboneSpec(weights="random"))
    prefix, tail = split_backbone(model, 5)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(tail(prefix(x)), model.forward_features(x))
    assert sum(p.numel() for p in tail.parameters()) < sum(p.numel() for p in model.parameters())
    with pytest.raises(TagcapError, match="1 to 6"):
        split_backbone(model, 7)
    with pytest.raises(TagcapError, match="--finetune"):
        split_backbone(timm.create_model("resnet18", pretrained=False), 2)


def test_partial_finetuning_trains_the_tail_and_the_checkpoint_predicts_like_training(synth, tmp_path):
    spec = BackboneSpec(input_size=96)
    tuned = fit_tuned(synth, small_recipe(), spec, "partial", 5, cache=tmp_path / "acts", progress=False,
                      probe_epochs=3, crop=1)
    assert tuned.history["epochs_run"] == 2 and tuned.history["probe"]["epochs_run"] == 3
    manifest = json.loads((tmp_path / "acts/manifest.json").read_text())
    assert manifest["layer"] == "blocks.5" and manifest["complete"]
    test_inputs = tuned.split_inputs("test")
    assert test_inputs.shape[1:3] == (2, 120) and test_inputs.dtype == np.float16  # [N, views, C, H, W]

    rule = {"kind": "threshold", "t": 0.5}
    ckpt = save_tuned(tmp_path / "ckpt", tuned, small_recipe(), rule, {}, 0)
    base, _ = build_timm_model(spec)
    saved = load_file(str(ckpt / BACKBONE_FILE))
    base_state = base.state_dict()
    assert torch.equal(saved["blocks.4.0.conv_pw.weight"], base_state["blocks.4.0.conv_pw.weight"])  # frozen
    assert not torch.equal(saved["blocks.5.0.conv_pw.weight"], base_state["blocks.5.0.conv_pw.weight"])  # trained
    assert not torch.equal(saved["conv_head.weight"], base_state["conv_head.weight"])

    # the saved checkpoint runs the whole tuned network on images and agrees with the training-time path
    expected = predict_outputs(tuned.net, test_inputs)["scores"]
    annotator = Annotator(ckpt, engine="eager")
    images = [load_image(r.image) for r in tuned.prep.dataset.splits["test"]]
    got = annotator.outputs(images)["scores"]
    np.testing.assert_allclose(got, expected, atol=0.02)  # float16 activations in the cache
    assert annotator.backbone.weights_id == json.loads((ckpt / "config.json").read_text())["backbone"]["weights"]


def test_end_to_end_finetuning_with_accumulation_resumes_from_its_saved_state(synth, tmp_path):
    spec = BackboneSpec(input_size=64)
    recipe = small_recipe(epochs=1, batch_size=8, accumulate=2, backbone_lr=1e-5)
    state = tmp_path / "state"
    first = fit_tuned(synth, recipe, spec, "end-to-end", resume_dir=state, progress=False)
    assert first.history["epochs_run"] == 1 and (state / "last.ckpt").is_file()
    groups = first.net.param_groups(1e-3, 1e-5)
    assert [g["lr"] for g in groups] == [1e-5, 1e-3]
    assert sum(p.numel() for p in groups[0]["params"]) > 1e6  # the whole backbone trains

    recipe["train"]["epochs"] = 2
    second = fit_tuned(synth, recipe, spec, "end-to-end", resume_dir=state, progress=False)
    assert second.history["resumed_from"] == str(state / "last.ckpt")
    assert second.history["epochs_run"] == 2  # epoch 0's validation came back with the state, one more ran
    assert second.history["val_mAP_curve"][0] == pytest.approx(first.history["val_mAP_curve"][0])


def test_fit_partial_finetune_from_the_command_line(synth, tmp_path):
    out = tmp_path / "ckpt"
    code = main(["fit", "--data", str(synth), "--recipe", "cnn-unsym", "--partial-finetune", "6", "--epochs", "1",
                 "--input-size", "96", "--out", str(out), "--quiet"])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["backbone"]["tuned"]["mode"] == "partial" and config["backbone"]["tuned"]["from_block"] == 6
    assert not (tmp_path / "ckpt.train-state").exists()  # spent once the checkpoint is written
    assert main(["evaluate", str(out), "--data", str(synth), "--split", "test"]) == 0
