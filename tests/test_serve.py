"""The HTTP service through FastAPI's test client: every endpoint, every error, hostile uploads,
batching of concurrent requests; and `predict` on the same hostile files."""

import asyncio
import io
import json

import pytest
import torch

from hostile import HOSTILE, good_jpeg, write_all
from tagcap.cli import main
from tagcap.data.captions import WordVocabulary
from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.errors import CheckpointError
from tagcap.models import create_decoder
from tagcap.train.checkpoint import save_checkpoint

fastapi = pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from tagcap.serve import ServeConfig, create_app  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A RIA annotation checkpoint trained briefly on the synthetic set, and a captioner on the same
    backbone (random weights: this tests the plumbing, not caption quality)."""
    root = tmp_path_factory.mktemp("serve")
    data = make_synthetic_dataset(root / "data", n_train=60, n_test=20, size=64, seed=5)
    ann = root / "ria"
    assert main(["fit", "--data", str(data), "--recipe", "ria", "--out", str(ann), "--epochs", "2", "--quiet"]) == 0
    config = json.loads((ann / "config.json").read_text())
    words = WordVocabulary.from_captions(["a boat on the water", "a house near a tree", "the sun over grass"],
                                         min_count=1, max_len=8)
    torch.manual_seed(0)
    decoder = create_decoder("show-attend-tell", len(words), 1280, embed_dim=16, hidden=32, attention_dim=16,
                             context_dim=16, max_len=8)
    cap = save_checkpoint(root / "sat", decoder, {"task": "caption", "recipe": {"name": "show-attend-tell"},
                                                 "backbone": config["backbone"], "words": words.to_dict(),
                                                 "metrics": {}, "dataset": {"name": "synthetic"}})
    return ann, cap


@pytest.fixture(scope="module")
def client(checkpoints):
    app = create_app(list(checkpoints), ServeConfig(max_upload_bytes=2_000_000, batch_window_ms=30))
    with TestClient(app) as c:
        yield c


def post(client, data: bytes, name="photo.jpg", content_type="image/jpeg"):
    return client.post("/v1/annotate", files={"image": (name, data, content_type)})


def test_health_model_docs_and_page(client):
    assert client.get("/healthz").json()["status"] == "ok"
    model = client.get("/v1/model").json()
    assert model["annotation"]["method"] == "ria" and model["caption"]["method"] == "show-attend-tell"
    assert model["annotation"]["backbone"]["name"] == "tf_efficientnet_lite2"
    assert model["annotation"]["vocabulary_size"] > 5 and model["annotation"]["metrics"]["val"]["n_plus"] >= 0
    assert "/v1/annotate" in client.get("/openapi.json").json()["paths"]
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    # no CDN: the page loads nothing from elsewhere
    assert "<script src" not in page.text and "http://" not in page.text and "https://" not in page.text


def test_annotate_returns_tags_trace_caption_and_attention(client):
    r = post(client, good_jpeg())
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"labels", "top_scores", "steps", "caption", "attention", "decision"} <= set(body)
    assert all(0 <= t["score"] <= 1 for t in body["top_scores"])
    assert body["steps"] and "picked" in body["steps"][0]
    att = body["attention"]
    assert att["grid"] ** 2 == len(att["words"][0]["map"])
    assert len(att["words"]) == len(body["caption"].split()) + 1
    assert sum(att["words"][0]["map"]) == pytest.approx(1, abs=0.01)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_uploads(client, name):
    make, decodes = HOSTILE[name]
    r = post(client, make(), name=name)
    if decodes:
        assert r.status_code == 200, r.text
        if name == "exif_rotated.jpg":
            assert (r.json()["width"], r.json()["height"]) == (32, 48)  # EXIF rotation applied
    else:
        assert r.status_code in (400, 413, 415), r.text
        assert name in r.json()["detail"] or "empty" in r.json()["detail"]
        if name.startswith("huge"):
            assert r.status_code == 413 and "pixel limit" in r.json()["detail"]
    assert client.get("/healthz").json()["status"] == "ok"  # still serving


def test_file_name_and_content_type_do_not_decide(client):
    r = post(client, good_jpeg(), name="../../etc/passwd", content_type="text/plain")
    assert r.status_code == 200 and r.json()["image"] == "passwd"  # decoded as a JPEG; the name is only a label


def test_upload_limit_and_missing_field(client):
    r = post(client, b"\xff\xd8" + b"0" * 2_100_000)
    assert r.status_code == 413
    assert client.post("/v1/annotate", files={"other": ("x.jpg", good_jpeg())}).status_code == 422
    assert post(client, good_jpeg()).status_code == 200


def test_concurrent_requests_share_backbone_batches(checkpoints):
    import httpx

    app = create_app(list(checkpoints), ServeConfig(batch_window_ms=200, max_batch=8))

    async def run():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            replies = await asyncio.gather(*[c.post("/v1/annotate", files={"image": ("a.jpg", good_jpeg())})
                                             for _ in range(8)])
        await app.state.batcher.stop()
        return replies

    replies = asyncio.run(run())
    assert all(r.status_code == 200 for r in replies)
    assert app.state.batcher.images == 8 and app.state.batcher.batches < 8


def test_serve_refuses_a_corrupt_checkpoint(checkpoints, tmp_path):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(checkpoints[0], bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="corrupt weights"):
        create_app([bad])
    (bad / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not a readable checkpoint|unreadable"):
        create_app([bad])


def test_predict_on_hostile_files_reports_each_and_goes_on(checkpoints, tmp_path, capsys):
    paths = write_all(tmp_path / "hostile")
    code = main(["predict", str(checkpoints[0]), str(tmp_path / "hostile")])
    assert code == 1  # some files failed
    out = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
    by_name = {r["image"].rsplit("/", 1)[-1]: r for r in out}
    assert set(by_name) == set(paths)
    for name, (_, decodes) in HOSTILE.items():
        assert ("labels" in by_name[name]) == decodes, (name, by_name[name])
        assert ("error" in by_name[name]) != decodes
