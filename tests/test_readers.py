"""Every reader on tiny fixtures: the records it yields, and the error text for malformed input."""

import json

import numpy as np
import pytest
from scipy.io import savemat

from conftest import COREL, needs_corel, write_png
from tagcap.data import detect_format, read_dataset
from tagcap.data.vocab import Vocabulary
from tagcap.errors import DataError

LABELS = ["cat", "dog", "sky"]


def make_json(root, train=None, test=None, labels=LABELS):
    train = train if train is not None else [("a.png", ["cat"]), ("b.png", ["dog", "sky"]), ("c.png", [])]
    test = test if test is not None else [("d.png", ["sky"])]
    for i, (name, _) in enumerate(train + test):
        write_png(root / "images" / name, i)
    for split, items in (("train", train), ("test", test)):
        (root / f"{split}.json").write_text(json.dumps(
            {"labels": labels, "samples": [{"image_name": n, "image_labels": l} for n, l in items]}))
    return root


def make_tagprop(root, train_matrix=None):
    for i in range(4):
        write_png(root / "images" / "cd1" / f"{i}.jpeg", i)
    (root / "toy_words.txt").write_text("\n".join(LABELS) + "\n")
    (root / "toy_train_list.txt").write_text("cd1/0\ncd1/1\ncd1/2\n")
    (root / "toy_test_list.txt").write_text("cd1/3\n")
    m = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 0]], np.uint16) if train_matrix is None else train_matrix
    savemat(root / "toy_train_annot.mat", {"annot1": m})
    savemat(root / "toy_test_annot.mat", {"annot2": np.array([[0, 0, 1]], np.uint16)})
    return root


def make_list_annot(root, annot_lines=("1 0 0", "0 1 1", "0 0 0")):
    for i in range(4):
        write_png(root / "images" / f"{i}.jpg", i)
    (root / "toy_dict.txt").write_text("0 cat\n1 dog\n2 sky\n")
    (root / "toy_train_list.txt").write_text("0.jpg\n1.jpg\n2.jpg\n")
    (root / "toy_train_annot.txt").write_text("\n".join(annot_lines) + "\n")
    (root / "toy_test_list.txt").write_text("3.jpg\n")
    (root / "toy_test_annot.txt").write_text("0,0,1\n")
    return root


def make_coco(root):
    cats = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}, {"id": 7, "name": "sky"}]
    for split, imgs, anns in (
        ("train", [(1, "a.jpg"), (2, "b.jpg"), (3, "c.jpg")], [(1, 1), (2, 2), (2, 7), (2, 2)]),
        ("val", [(4, "d.jpg")], [(4, 7)]),
    ):
        for _, name in imgs:
            write_png(root / f"{split}2017" / name, len(name))
        data = {"categories": cats, "images": [{"id": i, "file_name": n} for i, n in imgs],
                "annotations": [{"id": k, "image_id": i, "category_id": c} for k, (i, c) in enumerate(anns)]}
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}2017.json").write_text(json.dumps(data))
    return root


def make_csv(root, test_rows="d.png,sky\n"):
    for i, n in enumerate("abcd"):
        write_png(root / "photos" / f"{n}.png", i)
    (root / "train.csv").write_text("image,labels\nphotos/a.png,cat\nphotos/b.png,dog;sky\nphotos/c.png,\n")
    (root / "test.csv").write_text("image,labels\n" + test_rows.replace("d.png", "photos/d.png"))
    return root


MAKERS = {"json": make_json, "tagprop": make_tagprop, "list-annot": make_list_annot, "coco": make_coco, "csv": make_csv}


@pytest.mark.parametrize("fmt", list(MAKERS))
def test_every_format_gives_the_same_records(tmp_path, fmt):
    root = MAKERS[fmt](tmp_path)
    assert detect_format(root) == fmt
    ds = read_dataset(root, val_fraction=0)
    assert ds.labels == LABELS
    train = sorted(sorted(r.labels) for r in ds.splits["train"])
    assert train == [[], ["cat"], ["dog", "sky"]]
    assert [list(r.labels) for r in ds.splits["test"]] == [["sky"]]
    assert all(r.image.is_file() for r in ds.all_records())
    assert "1 with no label" in ds.summary()


def test_validation_split_is_carved_with_a_fixed_seed(tmp_path):
    root = make_json(tmp_path, train=[(f"{i}.png", ["cat"]) for i in range(20)])
    a, b = read_dataset(root, val_fraction=0.25), read_dataset(root, val_fraction=0.25)
    assert len(a.splits["val"]) == 5 and len(a.splits["train"]) == 15
    assert [r.key for r in a.splits["val"]] == [r.key for r in b.splits["val"]]
    assert not {r.key for r in a.splits["val"]} & {r.key for r in a.splits["train"]}


def test_missing_image_names_file_and_entry(tmp_path):
    root = make_json(tmp_path)
    (root / "images" / "b.png").unlink()
    with pytest.raises(DataError, match=r"train\.json sample 1.*'b\.png' not found"):
        read_dataset(root)


def test_unknown_label(tmp_path):
    root = make_json(tmp_path, test=[("d.png", ["sky", "unicorn"])])
    with pytest.raises(DataError, match=r"test\.json.*unknown label 'unicorn'.*'d\.png'"):
        read_dataset(root)


def test_duplicate_image(tmp_path):
    root = make_json(tmp_path, train=[("a.png", ["cat"]), ("a.png", ["dog"])])
    with pytest.raises(DataError, match=r"train\.json.*duplicate image 'a\.png'"):
        read_dataset(root)


def test_malformed_json_names_the_line(tmp_path):
    root = make_json(tmp_path)
    (root / "test.json").write_text('{"labels": ["cat"],\n "samples": [\n}')
    with pytest.raises(DataError, match=r"test\.json:3: malformed JSON"):
        read_dataset(root)


def test_label_matrix_of_wrong_width(tmp_path):
    root = make_tagprop(tmp_path, train_matrix=np.zeros((3, 2), np.uint16))
    with pytest.raises(DataError, match=r"toy_train_annot\.mat.*shape \(3, 2\), expected 3 columns"):
        read_dataset(root)


def test_label_matrix_with_wrong_row_count(tmp_path):
    root = make_tagprop(tmp_path, train_matrix=np.zeros((2, 3), np.uint16))
    with pytest.raises(DataError, match=r"2 rows but toy_train_list\.txt lists 3 images"):
        read_dataset(root)


def test_annot_text_malformed_line(tmp_path):
    root = make_list_annot(tmp_path, annot_lines=("1 0 0", "0 x 1", "0 0 0"))
    with pytest.raises(DataError, match=r"toy_train_annot\.txt:2: malformed line"):
        read_dataset(root)


def test_annot_text_wrong_width(tmp_path):
    root = make_list_annot(tmp_path, annot_lines=("1 0 0", "0 1", "0 0 0"))
    with pytest.raises(DataError, match=r"toy_train_annot\.txt:2: 2 values but the dictionary has 3 labels"):
        read_dataset(root)


def test_csv_errors_name_the_line(tmp_path):
    root = make_csv(tmp_path, test_rows="d.png,sky\nnope.png,cat\n")
    with pytest.raises(DataError, match=r"test\.csv:3: image 'nope\.png' not found"):
        read_dataset(root)
    (root / "test.csv").write_text("image,labels\nphotos/d.png,sky,extra\n")
    with pytest.raises(DataError, match=r"test\.csv:2: expected 2 columns"):
        read_dataset(root)
    (root / "test.csv").write_text("image,labels\nphotos/d.png,horse\n")
    with pytest.raises(DataError, match=r"test\.csv.*unknown label 'horse'"):
        read_dataset(root)


def test_unknown_folder_layout(tmp_path):
    with pytest.raises(DataError, match="no known dataset format"):
        detect_format(tmp_path)


def test_label_orders():
    v = Vocabulary(["a", "b", "c", "d"], counts=[5, 1, 5, 2])
    assert v.order("rare-first").tolist() == [1, 3, 0, 2]       # ties by index
    assert v.order("frequent-first").tolist() == [0, 2, 3, 1]
    assert Vocabulary(["b", "c", "a"]).order("lexicographic").tolist() == [2, 0, 1]
    rng = np.random.default_rng(0)
    assert sorted(v.order("random", rng).tolist()) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        v.order("sideways")


@needs_corel
def test_corel5k_json_and_tagprop_agree():
    a = read_dataset(COREL, "json", val_fraction=0)
    b = read_dataset(COREL, "tagprop", val_fraction=0)
    assert a.name == b.name == "corel5k"
    assert len(a.labels) == 260 and a.labels == b.labels
    for split, n in (("train", 4500), ("test", 499)):
        assert len(a.splits[split]) == n
        ka = {r.key.removesuffix(".jpeg"): set(r.labels) for r in a.splits[split]}
        kb = {r.key: set(r.labels) for r in b.splits[split]}
        assert ka == kb
    assert sum(1 for r in a.splits["train"] if not r.labels) == 7


def test_cache_row_order_does_not_depend_on_the_validation_seed(tmp_path):
    root = make_json(tmp_path, train=[(f"{i}.png", ["cat"]) for i in range(20)])
    a, b = read_dataset(root, seed=0), read_dataset(root, seed=1)
    assert [r.key for r in a.splits["val"]] != [r.key for r in b.splits["val"]]
    assert [r.key for r in a.all_records()] == [r.key for r in b.all_records()]


def test_list_annot_reads_the_multi_order_release_layout(tmp_path):
    """nus1_dict81.txt-style numbered dictionary, list lines with extra fields after the path,
    images in subfolders of images/ (as NUS-WIDE's Flickr/<concept>/ tree)."""
    labels = [f"concept{i}" for i in range(81)]
    (tmp_path / "nus1_dict81.txt").write_text("\n".join(labels) + "\n")
    for split, names in (("train", ["a", "b", "c", "d"]), ("test", ["e", "f"])):
        rows, lines = [], []
        for k, name in enumerate(names):
            write_png(tmp_path / "images" / "Flickr" / f"c{k}" / f"{name}.jpg", k)
            lines.append(f"Flickr/c{k}/{name}.jpg 1234567 extra")
            row = np.zeros(81, int)
            row[[k, 80 - k]] = 1
            rows.append(" ".join(map(str, row)))
        (tmp_path / f"nus1_{split}_list.txt").write_text("\n".join(lines) + "\n")
        (tmp_path / f"nus1_{split}_annot.txt").write_text("\n".join(rows) + "\n")
    ds = read_dataset(tmp_path, val_fraction=0.25, seed=0)
    assert ds.format == "list-annot" and ds.labels == labels
    test = {r.key: r.labels for r in ds.splits["test"]}
    assert test == {"Flickr/c0/e.jpg": ("concept0", "concept80"), "Flickr/c1/f.jpg": ("concept1", "concept79")}
    assert len(ds.splits["train"]) == 3 and len(ds.splits["val"]) == 1
