"""The HTTP service through FastAPI's test client: every endpoint, every error, hostile uploads,
batching of concurrent requests; and `predict` on the same hostile files."""

import asyncio
import io
import json

import numpy as np
import pytest
import torch

from conftest import needs_chromium, offline_page, serving
from hostile import HOSTILE, good_jpeg, write_all
from tagcap.cli import main
from tagcap.data.captions import WordVocabulary
from tagcap.data.synthetic import make_synthetic_dataset
from tagcap.errors import CheckpointError
from tagcap.decoders import create_decoder
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
    model = {d["task"]: d for d in client.get("/v1/model").json().values()}  # keyed by model name
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


def test_the_status_comes_from_what_is_wrong_not_from_the_words_of_the_message(client):
    """A broken file whose name reads like the size refusal is still a broken file (415); a photo
    over the pixel limit, whatever its name, is too large (413)."""
    r = post(client, b"not an image at all", name="over the 1 pixel limit.jpg")
    assert r.status_code == 415, r.text
    huge = HOSTILE[next(n for n in HOSTILE if n.startswith("huge"))][0]()
    r = post(client, huge, name="not an image.png")
    assert r.status_code == 413, r.text


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
    with pytest.raises(CheckpointError, match="SHA-256 differs"):
        create_app([bad])
    config = json.loads((bad / "config.json").read_text())
    del config["files"]  # a checkpoint from before hashes were recorded still has its weights parsed
    config["format"] = "tagcap-checkpoint/1"
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="corrupt weights"), pytest.warns(UserWarning, match="before tagcap"):
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


def test_predict_reads_a_list_on_stdin_and_writes_csv(checkpoints, tmp_path, monkeypatch, capsys):
    paths = write_all(tmp_path / "h")
    listing = "\n".join(str(paths[n]) for n in ("alpha.png", "zero_byte.jpg", "cmyk.jpg")) + "\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(listing))
    out = tmp_path / "tags.csv"
    assert main(["predict", str(checkpoints[0]), "-", "--format", "csv", "--output", str(out), "--quiet"]) == 1
    import csv

    rows = list(csv.DictReader(out.open()))
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == ["alpha.png", "zero_byte.jpg", "cmyk.jpg"]
    assert rows[1]["error"] and "empty file" in rows[1]["error"] and not rows[0]["error"]
    assert len(rows[0]["labels"].split(";")) == len(rows[0]["scores"].split(";"))


def test_predict_with_tags_and_caption_together(checkpoints, tmp_path, capsys):
    img = tmp_path / "a.jpg"
    img.write_bytes(good_jpeg())
    assert main(["predict", str(checkpoints[0]), str(img), "--captioner", str(checkpoints[1])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "labels" in result and isinstance(result["caption"], str)
    assert main(["predict", str(checkpoints[0]), str(img), "--caption"]) == 2
    assert "no captioning model" in capsys.readouterr().err


@pytest.fixture(params=["checkpoints", "bundled"])
def live_server(request, checkpoints, tmp_path):
    """`tagcap serve` in its own process, as a user would start it: with the test's checkpoints, and with
    none (the bundled default models). Yields the URL and a word the page's model line must show."""
    named = [str(c) for c in checkpoints] if request.param == "checkpoints" else []
    with serving([*named, "--device", "cpu"], tmp_path / "serve.log") as (url, _, _):
        yield url, ("ria" if named else "imagenet-classes")


@needs_chromium
def test_web_page_in_headless_chromium(live_server, tmp_path):
    live_server, model_word = live_server
    from PIL import Image

    photo = tmp_path / "photo.jpg"
    # a recognisable picture: left half red, right half blue
    arr = np.zeros((120, 160, 3), np.uint8)
    arr[:, :80] = (220, 30, 30)
    arr[:, 80:] = (30, 30, 220)
    Image.fromarray(arr).save(photo)
    with offline_page(live_server) as (page, elsewhere):
        page.goto(live_server + "/")
        page.wait_for_function(f"document.getElementById('model').textContent.includes('{model_word}')",
                               timeout=30_000)
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        caption = page.inner_text("#caption")
        tags = page.locator("#tags .tag").count()
        shot, shot_attention = tmp_path / "page.png", tmp_path / "page-attention.png"
        page.screenshot(path=str(shot))
        page.locator("#words button").first.click()  # show the first word's attention
        page.screenshot(path=str(shot_attention))
        canvas = page.locator("#canvas").bounding_box()
        bar = page.locator("#tags .tag .bar span").first.bounding_box()
        sources = {page.locator("#tags .tag").nth(i).get_attribute("title") for i in range(tags)}
    if model_word == "imagenet-classes":  # the defaults: one list, each tag saying which models gave it
        annotators = ("corel5k-annotator", "imagenet-classes", "flickr8k-tagger")
        assert all(s.startswith("from ") and any(a in s for a in annotators) for s in sources), sources
    assert not elsewhere, f"the page tried to reach {elsewhere}"
    assert caption.strip() and tags >= 1
    # the screenshot shows the photo (red left, blue right, under the attention tint) and a score bar
    img = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    y = int(canvas["y"] + canvas["height"] / 2)
    left = img[y, int(canvas["x"] + canvas["width"] * 0.2)]
    right = img[y, int(canvas["x"] + canvas["width"] * 0.8)]
    assert left[0] > left[2] + 40 and right[2] > right[0] + 40, (left, right)
    tinted = np.asarray(Image.open(shot_attention).convert("RGB")).astype(int)
    box = (slice(int(canvas["y"]), int(canvas["y"] + canvas["height"])), slice(int(canvas["x"]), int(canvas["x"] + canvas["width"])))
    assert np.abs(tinted[box] - img[box]).mean() > 5  # the attention map is drawn over the photo
    assert bar["width"] > 0
    bar_px = img[int(bar["y"] + bar["height"] / 2), int(bar["x"] + min(bar["width"], 20) / 2)]
    assert bar_px[1] > bar_px[0] + 40 or bar_px[2] > bar_px[0] + 40, bar_px  # green (chosen) or blue bar


def test_request_timeout_answers_503_and_the_service_recovers(checkpoints):
    config = ServeConfig(timeout_s=0.001, batch_window_ms=50)
    app = create_app(list(checkpoints), config)
    with TestClient(app) as c:
        r = post(c, good_jpeg())
        assert r.status_code == 503 and "longer than" in r.json()["detail"]
        config.timeout_s = 60  # the same service, now patient: the abandoned request did not wedge it
        assert post(c, good_jpeg()).status_code == 200
