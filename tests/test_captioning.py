"""Captioning: tokenizer and words, readers, Show-Attend-Tell decoding (greedy, beam vs brute
force), overfitting ten images, the pycocoevalcap wrapper, and bench/predict on a Flickr8k slice."""

import itertools
import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SHARED, write_png
from tagcap.captioning import caption_targets
from tagcap.inference.checkpoint import load_checkpoint
from tagcap.inference.outputs import caption_grid
from tagcap.data.captions import WordVocabulary, tokenize
from tagcap.data.readers import read_dataset
from tagcap.errors import ConfigError, DataError
from tagcap.metrics.captioning import bleu4_quick
from tagcap.decoders import create_decoder
from tagcap.results import read_rows
from tagcap.train.loop import RandomViewDataset, TrainConfig, train_decoder

FLICKR8K = SHARED / "datasets" / "flickr8k"
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="caption metrics need Java on PATH")
needs_flickr = pytest.mark.skipif(not FLICKR8K.is_dir(), reason=f"Flickr8k not found at {FLICKR8K} "
                                  "(the shared datasets folder sits beside the repository in CI)")


# --- tokenizer and word vocabulary ------------------------------------------------------------

def test_tokenizer_lowercases_and_drops_punctuation():
    assert tokenize("A Dog's ball, running!  Two-3 .") == ["a", "dog", "s", "ball", "running", "two", "3"]


def test_word_vocabulary_min_count_unknown_words_and_length():
    caps = ["a dog runs", "a dog sits", "a cat runs", "the bird"]
    words = WordVocabulary.from_captions(caps, min_count=2, max_len=3)
    assert words.words == ["<pad>", "<start>", "<end>", "<unk>", "a", "dog", "runs"]  # by count, then a-z
    assert words.encode("A cat runs fast today") == [4, 3, 6, 2]  # cut at 3 words, cat unknown, then <end>
    batch = words.encode_batch(["a dog", "runs"])
    assert batch.tolist() == [[4, 5, 2, 0], [6, 2, 0, 0]]
    assert words.decode([4, 5, 2, 6]) == "a dog"  # stops at <end>
    again = WordVocabulary.from_dict(json.loads(json.dumps(words.to_dict())))
    assert again.words == words.words and again.max_len == 3


# --- readers ----------------------------------------------------------------------------------

def _flickr_fixture(root, extra_token_lines=(), listed_extra=()):
    names = [f"{i}_a.jpg" for i in range(5)]
    for i, n in enumerate(names + ["uncaptioned.jpg"]):
        write_png(root / "images" / n, seed=i)
    lines = [f"{n}#{k}\tCaption {k} of image {n} ." for n in names for k in range(5)]
    lines.insert(7, "ghost.jpg.1#0\tthe official file's duplicate-upload quirk")
    (root / "Flickr8k.token.txt").write_text("\n".join(lines + list(extra_token_lines)) + "\n")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names[:3] + list(listed_extra)) + "\n")
    (root / "Flickr_8k.devImages.txt").write_text(names[3] + "\n")
    (root / "Flickr_8k.testImages.txt").write_text(names[4] + "\n")
    return names


def test_flickr8k_reader_handles_the_known_quirks(tmp_path):
    names = _flickr_fixture(tmp_path)
    ds = read_dataset(tmp_path, task="caption")
    assert ds.format == "flickr8k" and ds.name == "flickr8k"
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [3, 1, 1]
    assert not ds.val_carved  # the dev list is the validation split
    first = ds.splits["train"][0]
    assert first.key == names[0] and len(first.captions) == 5 and first.captions[2].startswith("Caption 2")
    assert "ghost.jpg" not in {r.key for recs in ds.splits.values() for r in recs}


def test_flickr8k_reader_names_the_bad_line(tmp_path):
    _flickr_fixture(tmp_path, extra_token_lines=["no tab on this line"])
    with pytest.raises(DataError, match=r"Flickr8k.token.txt:27"):
        read_dataset(tmp_path, task="caption")


def test_flickr8k_listed_image_without_caption(tmp_path):
    _flickr_fixture(tmp_path, listed_extra=["uncaptioned.jpg"])
    with pytest.raises(DataError, match=r"trainImages.txt:4.*uncaptioned.jpg.*no caption"):
        read_dataset(tmp_path, task="caption")


def test_karpathy_reader(tmp_path):
    for i in range(4):
        write_png(tmp_path / "images" / f"{i}.jpg", seed=i)
    entries = [{"filename": f"{i}.jpg", "split": s, "sentences": [{"raw": f"A photo {i} ."}, {"raw": "Another ."}]}
               for i, s in enumerate(["train", "restval", "val", "test"])]
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))
    ds = read_dataset(tmp_path, task="caption")
    assert ds.format == "karpathy"
    assert [r.key for r in ds.splits["train"]] == ["0.jpg", "1.jpg"]  # restval joins train
    assert ds.splits["test"][0].captions == ("A photo 3 .", "Another .")
    entries[2]["sentences"] = []
    (tmp_path / "dataset_flickr8k.json").write_text(json.dumps({"images": entries}))
    with pytest.raises(DataError, match=r"images\[2\].*no caption"):
        read_dataset(tmp_path, task="caption")


def test_coco_captions_reader(tmp_path):
    for split in ("train", "val"):
        images = [{"id": i, "file_name": f"{split}_{i}.jpg"} for i in range(3)]
        for im in images:
            write_png(tmp_path / f"{split}2014" / im["file_name"], seed=im["id"])
        anns = [{"id": 10 * i + k, "image_id": i, "caption": f"{split} image {i} caption {k}"}
                for i in range(3) for k in range(2)]
        (tmp_path / "annotations").mkdir(exist_ok=True)
        (tmp_path / "annotations" / f"captions_{split}2014.json").write_text(
            json.dumps({"images": images, "annotations": anns}))
    ds = read_dataset(tmp_path, task="caption", val_fraction=0.34)
    assert ds.format == "coco-captions"
    assert len(ds.splits["train"]) == 2 and len(ds.splits["val"]) == 1 and len(ds.splits["test"]) == 3
    assert ds.splits["test"][1].captions == ("val image 1 caption 0", "val image 1 caption 1")


# --- the decoder ------------------------------------------------------------------------------

def tiny_decoder(seed=0, vocab=7, **kw):
    torch.manual_seed(seed)
    opts = dict(embed_dim=8, hidden=16, attention_dim=8, context_dim=8, dropout=0.0, max_len=3)
    return create_decoder("show-attend-tell", vocab, 12, **{**opts, **kw}).eval()


def sequence_log_prob(decoder, grid, seq):
    """Sum of the decoder's log-probabilities of `seq` then <end>, with banned tokens removed."""
    a, keys, h, c = decoder.encode(grid)
    prev, total = torch.tensor([decoder.start]), 0.0
    for tok in [*seq, decoder.end]:
        logits, _, h, c = decoder.step_logits(prev, h, c, a, keys)
        logits[:, decoder._banned()] = float("-inf")
        total += torch.log_softmax(logits, -1)[0, tok].item()
        prev = torch.tensor([tok])
    return total


@pytest.mark.parametrize("seed", range(4))
def test_wide_beam_equals_brute_force_on_a_tiny_vocabulary(seed):
    decoder = tiny_decoder(seed)
    grid = torch.randn(1, 4, 12)
    words = range(4, 7)  # tokens 0-3 are <pad> <start> <end> <unk>
    candidates = [list(s) for n in range(3) for s in itertools.product(words, repeat=n)]
    scores = [sequence_log_prob(decoder, grid, s) for s in candidates]
    best = candidates[int(np.argmax(scores))]
    result = decoder.beam(grid, beam_width=64, max_len=3)
    assert result.finished[0]
    assert result.sequences[0] == best
    assert result.scores[0].item() == pytest.approx(max(scores), abs=1e-4)


@pytest.mark.parametrize("seed", range(4))
def test_beam_width_one_is_greedy(seed):
    decoder = tiny_decoder(seed, vocab=30, max_len=8)
    grid = torch.randn(6, 4, 12)
    greedy = decoder.greedy(grid)
    beam = decoder.beam(grid, beam_width=1).sequences
    assert beam == greedy
    assert all(3 not in s and 0 not in s and 1 not in s for s in greedy)  # <unk>, <pad>, <start> never emitted


def test_attention_maps_are_distributions_one_per_word():
    decoder = tiny_decoder(0, vocab=20, max_len=6)
    out = decoder.predict(torch.randn(3, 4, 12), beam_width=2, attention=True)
    for seq, maps in zip(out.sequences, out.attention):
        assert maps.shape == (len(seq) + 1, 4)
        assert torch.allclose(maps.sum(1), torch.ones(len(seq) + 1), atol=1e-5)


def test_bfloat16_decoding_keeps_state_and_scores_in_float32():
    """Under `devices.decoding("bfloat16")` the matrix products run in bfloat16, but the LSTM state and
    the beam's summed log-probabilities stay float32; the captions stay valid and the maps are
    float32 distributions; the weights stay float32."""
    from tagcap.devices import decoding

    decoder = tiny_decoder(1, vocab=30, max_len=8)
    grid = torch.randn(5, 4, 12)
    before = decoder.predict(grid, beam_width=3)
    with decoding("bfloat16", "cpu"):
        a, keys, h, c = decoder._decoding_start(grid)
        assert a.dtype == torch.bfloat16 and (h.dtype, c.dtype) == (torch.float32, torch.float32)
        _, _, h, c = decoder.step_logits(torch.full((5,), decoder.start), h, c, a, keys)
        assert (h.dtype, c.dtype) == (torch.float32, torch.float32)  # the cell sums stay float32
        out = decoder.predict(grid, beam_width=3, attention=True)
    assert out.scores.dtype == torch.float32 and torch.isfinite(out.scores).all()
    assert all(0 < len(s) <= 8 and not {0, 1, 3} & set(s) for s in out.sequences)
    for seq, maps in zip(out.sequences, out.attention):
        assert maps.dtype == torch.float32 and maps.shape == (len(seq) + 1, 4)
        assert torch.allclose(maps.sum(1), torch.ones(len(seq) + 1), atol=2e-2)
    after = decoder.predict(grid, beam_width=3)  # the weights are left as they were: float32 decodes as before
    assert after.sequences == before.sequences and torch.equal(after.scores, before.scores)
    with pytest.raises(ConfigError, match="float16"):
        decoding("float16", "cpu")


def test_padded_captions_do_not_change_the_loss():
    """Rows of <pad> (images with fewer captions) and padding after <end> contribute nothing."""
    decoder = tiny_decoder(0, vocab=10, max_len=5)
    grid = torch.randn(2, 4, 12)
    targets = torch.tensor([[[4, 5, 2, 0, 0, 0], [6, 2, 0, 0, 0, 0]], [[7, 8, 9, 2, 0, 0], [0, 0, 0, 0, 0, 0]]])
    loss = decoder.loss(grid, targets)
    assert torch.isfinite(loss)
    # the same sentences without the empty row and with less padding: the same loss
    assert decoder.loss(grid, targets[:, :, :4]).item() == pytest.approx(loss.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for n, p in decoder.named_parameters() if n != "embed.weight")


def test_overfits_ten_images_to_near_perfect_bleu():
    """Ten images with distinct captions: the decoder must learn to say each one back."""
    rng = np.random.default_rng(0)
    animals, colours, actions = ["dog", "cat", "bird", "horse", "cow"], ["black", "white"], ["runs", "sleeps"]
    captions = [f"a {colours[i % 2]} {animals[i // 2]} {actions[(i // 2 + i) % 2]} on the grass" for i in range(10)]
    assert len(set(captions)) == 10
    words = WordVocabulary.from_captions(captions, min_count=1, max_len=10)
    grid = rng.normal(size=(10, 2, 4, 16)).astype(np.float16)
    grid[:, 1] = grid[:, 0]  # both "views" identical: nothing to confuse
    torch.manual_seed(0)
    decoder = create_decoder("show-attend-tell", len(words), 16, embed_dim=32, hidden=64, attention_dim=16,
                             context_dim=16, dropout=0.0, max_len=10)
    refs = {str(i): [c] for i, c in enumerate(captions)}

    def validate():
        caps, _ = caption_grid(decoder, grid, words, beam_width=1)
        return bleu4_quick(dict(zip(refs, caps)), refs)

    dataset = RandomViewDataset(grid, caption_targets([_R(c) for c in captions], words))
    config = TrainConfig(epochs=150, batch_size=10, lr=1e-2, weight_decay=0.0, optimizer="adam", patience=150)
    history = train_decoder(decoder, dataset, validate, "val_BLEU4", config, progress=False)
    assert history["best_val_BLEU4"] > 95
    caps, _ = caption_grid(decoder, grid, words, beam_width=3)
    assert sum(c == ref for c, ref in zip(caps, captions)) >= 9


class _R:
    def __init__(self, caption):
        self.captions = (caption,)


# --- metrics ----------------------------------------------------------------------------------

@needs_java
def test_caption_metrics_on_a_hand_computed_example():
    from tagcap.metrics.captioning import caption_metrics

    refs = {"a": ["a dog runs fast"], "b": ["two people ride bikes ."]}
    perfect = caption_metrics({"a": "A dog runs fast.", "b": "two people ride bikes"}, refs)
    for key in ("BLEU1", "BLEU4", "METEOR", "ROUGE_L"):
        assert perfect[key] == pytest.approx(100, abs=1e-3)
    # "a dog runs" against "a dog runs fast": every unigram matches, brevity penalty exp(1 - 4/3)
    short = caption_metrics({"a": "a dog runs"}, {"a": refs["a"]}, meteor=False)
    assert short["BLEU1"] == pytest.approx(100 * math.exp(1 - 4 / 3), abs=0.01)
    # ROUGE-L (beta 1.2): LCS 3, precision 1, recall 3/4
    p, r, beta = 1.0, 0.75, 1.2
    assert short["ROUGE_L"] == pytest.approx(100 * (1 + beta ** 2) * p * r / (r + beta ** 2 * p), abs=0.01)
    none = caption_metrics({"a": "cats"}, {"a": refs["a"]}, meteor=False)
    assert none["BLEU1"] == pytest.approx(0, abs=1e-6) and none["CIDEr"] == 0


def test_metrics_refuse_mismatched_images():
    from tagcap.errors import TagcapError

    with pytest.raises(TagcapError, match="different images"):
        bleu4_quick({"a": "x"}, {"b": ["x"]})


# --- end to end on a slice of Flickr8k --------------------------------------------------------

@pytest.fixture(scope="module")
def flickr_slice(tmp_path_factory):
    if not FLICKR8K.is_dir():
        pytest.skip(f"Flickr8k not found at {FLICKR8K}")
    root = tmp_path_factory.mktemp("flickr8k-slice")
    (root / "images").mkdir()
    keep = set()
    for split, n in (("train", 40), ("dev", 10), ("test", 10)):
        names = (FLICKR8K / f"Flickr_8k.{split}Images.txt").read_text().split()[:n]
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
        for name in names:
            shutil.copy(FLICKR8K / "images" / name, root / "images" / name)
        keep.update(names)
    lines = [ln for ln in (FLICKR8K / "Flickr8k.token.txt").read_text().splitlines()
             if ln.split("#")[0] in keep or ".jpg.1#" in ln]  # the quirk travels with the slice
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return root


@needs_flickr
@needs_java
@pytest.mark.slow
def test_bench_caption_and_predict_on_a_flickr8k_slice(flickr_slice, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tagcap.cli", "bench", "caption", "--data", str(flickr_slice), "--out", str(out),
           "--epochs", "2", "--beams", "1,3", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(out / "results.json")
    assert [r["beam"] for r in rows] == [1, 3]
    for key in ("method", "beam", "BLEU1", "BLEU2", "BLEU3", "BLEU4", "METEOR", "ROUGE_L", "CIDEr",
                "train_seconds", "predict_ms_per_image"):
        assert key in rows[0]
    coco = json.loads((out / "captions-beam3.json").read_text())
    assert len(coco) == 10 and set(coco[0]) == {"image_id", "caption"}
    assert (out / "attention.png").stat().st_size > 0 and "Published" in (out / "results.md").read_text()
    done = subprocess.run([sys.executable, "-m", "tagcap.cli", "report", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    page = (out / "report.html").read_text()
    best = max(rows, key=lambda r: r["BLEU4"])
    shown = json.loads((out / best["predictions"]).read_text())[0]["caption"]
    assert "CIDEr" in page and "report_files/attention.png" in page and shown in page

    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    images = sorted((flickr_slice / "images").iterdir())[:2]
    cmd = [sys.executable, "-m", "tagcap.cli", "predict", str(out / "checkpoints" / "show-attend-tell"),
           *map(str, images), str(bad), "--caption", "--attention", str(tmp_path / "att")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1  # one bad file
    results = [json.loads(ln) for ln in done.stdout.splitlines()]
    assert [("caption" in r, "error" in r) for r in results] == [(True, False), (True, False), (False, True)]
    sheet = tmp_path / "att" / f"{images[0].stem}.png"
    assert sheet.is_file() and results[0]["attention"] == str(sheet)
    per_word = sorted((tmp_path / "att" / images[0].stem).glob("*.png"))
    assert len(per_word) == len(results[0]["caption"].split()) + 1  # one per word, and <end>


@needs_flickr
@pytest.mark.slow
def test_fit_a_captioner_from_the_command_line(flickr_slice, tmp_path, capsys):
    from tagcap.cli import main

    out = tmp_path / "sat"
    assert main(["fit", "--data", str(flickr_slice), "--recipe", "show-attend-tell", "--out", str(out),
                 "--epochs", "1", "--quiet"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "caption" and config["words"]["words"][:4] == ["<pad>", "<start>", "<end>", "<unk>"]
    assert "validation BLEU-4" in capsys.readouterr().out

    # --refit: the epoch count and the validation BLEU-4 come from the first model; the saved weights
    # are a second model's, trained on train + validation with the same words
    assert main(["fit", "--data", str(flickr_slice), "--recipe", "show-attend-tell", "--out", str(tmp_path / "refit"),
                 "--epochs", "1", "--quiet", "--refit"]) == 0
    assert "refit on train + val: 1 epochs on 50 images" in capsys.readouterr().out
    refit = json.loads((tmp_path / "refit" / "config.json").read_text())
    assert refit["training"]["refit"]["epochs"] == config["training"]["best_epoch"] + 1
    assert refit["metrics"] == config["metrics"] and refit["words"] == config["words"]
    first, second = (load_checkpoint(folder)[0].state_dict() for folder in (out, tmp_path / "refit"))
    assert not torch.equal(first["L_o.weight"], second["L_o.weight"])


@needs_flickr
@needs_java
@pytest.mark.slow
def test_bench_caption_with_seeds_keeps_rows_and_summarises(flickr_slice, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "tagcap.cli", "bench", "caption", "--data", str(flickr_slice), "--out", str(out),
           "--epochs", "1", "--beams", "1", "--seeds", "0,1", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = read_rows(out / "results.json")
    assert sorted((r["seed"], r["beam"]) for r in rows) == [(0, 1), (1, 1)]
    summary = json.loads((out / "results.json").read_text())["summary"]
    assert summary[0]["seeds"] == [0, 1]
    b4 = [r["BLEU4"] for r in rows]
    assert summary[0]["BLEU4"]["mean"] == pytest.approx(sum(b4) / 2, abs=1e-4)
    assert (out / "checkpoints" / "show-attend-tell-seed1" / "config.json").is_file()
    assert "mean ± sd over seeds" in (out / "results.md").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # everything done: nothing trained
    assert again.returncode == 0 and again.stdout.count("done before") == 2
    assert read_rows(out / "results.json") == rows
