"""The command line end to end on a tiny synthetic set, with the offline default backbone."""

import json
import shutil
import subprocess

import pytest
import torch

from tagcap.cli import main
from tagcap.data.synthetic import LABELS, make_synthetic_dataset
from tagcap.results import read_rows


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=60, n_test=20, size=64, seed=3)


@pytest.fixture(scope="module")
def bench_out(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["bench", "annotate", "--data", str(tiny), "--out", str(out), "--methods", "cnn-bce,cnn-unsym,ria",
                 "--quiet"])
    assert code == 0
    return out


def test_bench_writes_rows_and_checkpoints(bench_out):
    rows = read_rows(bench_out / "results.json")
    assert [(r["method"], r["decision"]) for r in rows] == [
        ("cnn-bce", "threshold 0.5"), ("cnn-bce", "MCC thresholds"),
        ("cnn-unsym", "threshold 0.5"), ("cnn-unsym", "MCC thresholds"), ("ria", "sequence")]
    required = {"method", "decision", "per_label", "n_plus", "per_image", "overall", "mAP", "top1",
                "train_seconds", "predict_ms_per_image", "backbone", "input_size", "seed"}
    for r in rows:
        assert required <= set(r)
        assert set(r["per_label"]) == {"P", "R", "F1"}
        assert (bench_out / r["checkpoint"] / "model.safetensors").is_file()
    assert max(r["mAP"] for r in rows) > 0.6  # synthetic scenes are easy for ImageNet features
    md = (bench_out / "results.md").read_text()
    assert "| cnn-unsym | MCC thresholds |" in md and "Published" not in md
    assert (bench_out / "per_label_f1.png").stat().st_size > 1000
    assert (bench_out / "steps-ria.png").stat().st_size > 1000  # the sequence decoder's steps


def test_predict_explain_shows_each_step(bench_out, tiny, capsys):
    image = sorted((tiny / "images").glob("test_*.png"))[0]
    assert main(["predict", str(bench_out / "checkpoints" / "ria+sequence"), str(image), "--explain"]) == 0
    result = json.loads(capsys.readouterr().out)
    steps = result["steps"]
    emitted = [s["picked"] for s in steps if s["picked"] != "STOP"]
    assert steps and len(emitted) == len(set(emitted))  # no label twice
    assert set(emitted) == {x["label"] for x in result["labels"]}  # the sequence rule keeps what was emitted
    assert all(len(s["top"]) == 3 for s in steps)
    assert all(0 <= s["score"] <= 1 for s in steps if s["picked"] != "STOP")


def test_predict_good_and_bad_files(bench_out, tiny, tmp_path, capsys):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is text, not a JPEG")
    good = sorted((tiny / "images").glob("test_*.png"))[:3]
    out = tmp_path / "pred.jsonl"
    code = main(["predict", str(bench_out / "checkpoints" / "cnn-bce+mcc-thresholds"), *map(str, good), str(bad),
                 "--output", str(out)])
    assert code == 1  # one file failed
    assert "notes.jpg: not an image" in capsys.readouterr().err
    results = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(results) == 4
    ok = [r for r in results if "error" not in r]
    assert len(ok) == 3 and all({x["label"] for x in r["labels"]} <= set(LABELS) for r in ok)
    assert all(r["decision"] == "MCC thresholds" for r in ok)


def test_a_model_after_the_photos_is_refused_not_walked(bench_out, tiny, capsys):
    ckpt = str(bench_out / "checkpoints" / "cnn-unsym+threshold-0.5")
    photo = str(sorted((tiny / "images").glob("test_*.png"))[0])
    for argv in (["predict", photo, ckpt], ["predict", "--model", ckpt, photo, ckpt], ["predict", photo, "imagenet-classes"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"{argv[-1]}: a model among the photos; give models first" in err, err


def test_predict_folder(bench_out, tiny, capsys):
    folder = tiny / "images"
    code = main(["predict", str(bench_out / "checkpoints" / "cnn-unsym+threshold-0.5"), str(folder)])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == len(list(folder.glob("*.png")))


def test_evaluate_reproduces_the_bench_row(bench_out, tiny, tmp_path):
    rows = read_rows(bench_out / "results.json")
    row = next(r for r in rows if r["checkpoint"].endswith("cnn-unsym+mcc-thresholds"))
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(bench_out / row["checkpoint"]), "--data", str(tiny), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["per_label"] == pytest.approx(row["per_label"])
    assert got["n_plus"] == row["n_plus"]


def test_fit_and_extract(tiny, tmp_path, capsys):
    assert main(["extract", "--data", str(tiny)]) == 0
    assert '"reused": true' in capsys.readouterr().out  # the bench fixture already cached these features
    ckpt = tmp_path / "model"
    assert main(["fit", "--data", str(tiny), "--recipe", "cnn-asl", "--out", str(ckpt), "--epochs", "3",
                 "--quiet", "--decision", "top-2"]) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["decision"] == {"kind": "top-k", "k": 2} and config["recipe"]["name"] == "cnn-asl"


def test_pool_blocks_round_trip(tiny, tmp_path, capsys):
    """A checkpoint trained on multi-level pooled features rebuilds the same backbone to evaluate and
    predict: the validation metrics come back, and images are tagged without a width mismatch."""
    ckpt = tmp_path / "model"
    assert main(["fit", "--data", str(tiny), "--recipe", "cnn-unsym", "--out", str(ckpt), "--epochs", "3",
                 "--quiet", "--pool-blocks", "blocks.4,blocks.5", "--input-size", "96"]) == 0
    config = json.loads((ckpt / "config.json").read_text())
    assert config["backbone"]["spec"]["pool_blocks"] == ["blocks.4", "blocks.5"]
    out = tmp_path / "val.json"
    assert main(["evaluate", str(ckpt), "--data", str(tiny), "--split", "val", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["mAP"] == pytest.approx(config["metrics"]["val"]["mAP"], abs=1e-6)
    images = sorted((tiny / "images").glob("test_*.png"))[:2]
    capsys.readouterr()
    assert main(["predict", str(ckpt), *map(str, images)]) == 0
    assert len([json.loads(line) for line in capsys.readouterr().out.splitlines()]) == 2


def test_refit_trains_again_on_train_and_val(tiny, tmp_path, capsys):
    """--refit: the rule and the epoch count come from the first model; the saved weights are a second
    model's, trained on train + val for that many epochs."""
    from tagcap.data import read_dataset
    from tagcap.inference.checkpoint import load_checkpoint

    args = ["fit", "--data", str(tiny), "--recipe", "cnn-unsym", "--epochs", "4", "--quiet"]
    assert main(args + ["--out", str(tmp_path / "first")]) == 0
    assert main(args + ["--out", str(tmp_path / "refit"), "--refit"]) == 0
    assert "refit on train + val" in capsys.readouterr().out
    first, refit = (json.loads((tmp_path / n / "config.json").read_text()) for n in ("first", "refit"))
    splits = read_dataset(tiny).splits
    assert refit["training"]["refit"]["images"] == len(splits["train"]) + len(splits["val"])
    assert refit["training"]["refit"]["epochs"] == first["training"]["best_epoch"] + 1
    assert refit["decision"] == first["decision"] and refit["metrics"] == first["metrics"]
    a, b = (load_checkpoint(tmp_path / n)[0].state_dict() for n in ("first", "refit"))
    assert not torch.equal(a["fc.weight"], b["fc.weight"])
    assert main(args + ["--out", str(tmp_path / "x"), "--refit", "--finetune"]) == 2
    assert "--refit is for annotation decoders on frozen features" in capsys.readouterr().err


def test_bench_refit_rows_say_so(tiny, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "annotate", "--data", str(tiny), "--out", str(out), "--methods", "cnn-unsym", "--refit",
                 "--quiet"]) == 0
    rows = read_rows(out / "results.json")
    assert rows and all(r["refit"] for r in rows)
    assert "refit on train + validation" in (out / "results.md").read_text()
    config = json.loads((out / rows[0]["checkpoint"] / "config.json").read_text())
    assert config["training"]["refit"]["epochs"] == rows[0]["best_epoch"] + 1


def test_errors_exit_non_zero_with_a_message(tmp_path, capsys):
    assert main(["bench", "annotate", "--data", str(tmp_path), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "no known dataset format" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "nothing"), "x.jpg"]) == 2
    assert "neither a checkpoint folder nor a bundled model" in capsys.readouterr().err


def test_evaluate_refuses_a_checkpoint_with_another_vocabulary(bench_out, tmp_path, capsys):
    other = make_synthetic_dataset(tmp_path / "other", n_train=60, n_test=8, size=48, seed=9)
    for split in ("train", "test"):  # same images, one label renamed
        (other / f"{split}.csv").write_text((other / f"{split}.csv").read_text().replace("fish", "salmon"))
    code = main(["evaluate", str(bench_out / "checkpoints" / "cnn-bce+mcc-thresholds"), "--data", str(other)])
    assert code == 2 and "vocabulary" in capsys.readouterr().err


def test_console_script_is_installed():
    exe = shutil.which("tagcap")
    assert exe, "the tagcap console script should be on PATH after installation"
    out = subprocess.run([exe, "bench", "annotate", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--methods" in out and "results.json" in out


def test_demo_runs_end_to_end(tmp_path):
    from tagcap.demo import run_demo

    result = run_demo(tmp_path / "demo", n_train=60, n_test=16, progress=False, log=lambda *a: None)
    for name in ("results.md", "results.json", "predictions.jsonl", "predictions.png", "per_label_f1.png",
                 "steps-ria.png"):
        assert (tmp_path / "demo" / name).is_file(), name
    preds = (tmp_path / "demo" / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 16
    assert result["best"]["mAP"] > 0.5


def test_checkpoints_keep_the_learning_curves_and_the_training_log(bench_out):
    rows = read_rows(bench_out / "results.json")
    ckpt = bench_out / next(r["checkpoint"] for r in rows if r["method"] == "ria")
    training = json.loads((ckpt / "config.json").read_text())["training"]
    n = training["epochs_run"]
    assert n >= 1 and len(training["val_mAP_curve"]) == len(training["train_loss_curve"]) == len(training["lr_curve"]) == n
    assert all(loss > 0 for loss in training["train_loss_curve"])
    log = (ckpt / "training-log.csv").read_text().splitlines()
    assert {"epoch", "train_loss", "val_mAP"} <= set(log[0].split(","))
    assert len(log) - 1 >= n


def test_report_on_a_small_run(bench_out, capsys):
    assert main(["report", str(bench_out), "--labels", "sun,boat"]) == 0
    page = (bench_out / "report.html").read_text()
    for part in ("per_label_f1.png", "pr_curves.png", "Most-missed", "test_images.png", "cnn-unsym",
                 "learning_curves.png"):
        assert part in page
    for png in ("per_label_f1.png", "pr_curves.png", "test_images.png", "learning_curves.png"):
        assert (bench_out / "report_files" / png).stat().st_size > 1000
    assert main(["report", str(bench_out), "--labels", "unicorn"]) == 2
    assert "'unicorn' is not one of this dataset's labels" in capsys.readouterr().err


def test_cli_engine_names_are_the_backbones():
    """The CLI lists the engines without importing torch; the backbone module is what runs them."""
    from tagcap.cli_options import ENGINES
    from tagcap.features.backbone import ENGINES as RUN

    assert ENGINES == list(RUN)


def test_seeds_ranges_and_lists_each_seed_once():
    from tagcap.cli_options import parse_seeds
    from tagcap.errors import ConfigError

    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("0-2,5") == [0, 1, 2, 5]
    for bad, named in (("1,1", "each seed once"), ("0-2,2", "each seed once"), ("a", "expected numbers"),
                       ("", "expected numbers")):
        with pytest.raises(ConfigError, match=named):
            parse_seeds(bad)
