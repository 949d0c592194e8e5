"""CoOp-layout readers on fabricated mini trees: DTD, EuroSAT, Caltech101, OxfordPets, ImageNet (+ variants),
FGVCAircraft, StanfordCars; split rebuilding; and the errors raised before any work."""

import json
import re
from pathlib import Path

import pytest
from datasets import Image

from peft_vlprompt.data import load_task
from tests.data_fixtures import (
    make_class_folders,
    make_dtd,
    make_eurosat,
    make_imagenet,
    make_oxford_pets,
    write_image,
    write_json,
)


def _paths(ds):
    return [p["path"] for p in ds.cast_column("image", Image(decode=False))["image"]]


def _rows(ds):
    return list(zip(_paths(ds), ds["label"], ds["classname"]))


def test_dtd_reads_split_file(tmp_path):
    split = make_dtd(tmp_path)
    task = load_task("dtd", str(tmp_path), shots=None, seed=1)
    root = tmp_path / "dtd" / "images"
    for name in ("train", "val", "test"):
        assert _rows(getattr(task, name)) == [(str(root / p), y, c) for p, y, c in split[name]]
    assert task.classnames == ["banded", "blotchy", "braided"]
    assert task.template == "{} texture." and task.name == "dtd"
    assert task.train.column_names == ["image", "label", "classname"]
    assert task.train[0]["image"].size == (8, 8)  # decoded lazily from the file
    assert load_task("dtd", tmp_path, shots=None, seed=1, template="prograd").template == "a texture of {}."
    assert load_task("dtd", tmp_path, shots=None, seed=1, template="itap of a {}.").template == "itap of a {}."


def _check_50_20_30(split_file: Path, n_per_class: int, expected_names: list[str]):
    saved = json.loads(split_file.read_text())
    n_train, n_val = round(n_per_class * 0.5), round(n_per_class * 0.2)
    for label, name in enumerate(expected_names):
        counts = [sum(1 for e in saved[s] if e[1] == label) for s in ("train", "val", "test")]
        assert counts == [n_train, n_val, n_per_class - n_train - n_val]
        assert all(e[2] == name for s in saved for e in saved[s] if e[1] == label)
    files = [e[0] for s in ("train", "val", "test") for e in saved[s]]
    assert len(set(files)) == len(files) == n_per_class * len(expected_names)
    return saved


def test_eurosat_split_rebuilt_with_new_classnames(tmp_path):
    base = make_eurosat(tmp_path, {"AnnualCrop": 10, "Forest": 10, "SeaLake": 10})
    task = load_task("eurosat", tmp_path, shots=None, seed=1)
    split_file = base / "split_zhou_EuroSAT.json"
    saved = _check_50_20_30(split_file, 10, ["Annual Crop Land", "Forest", "Sea or Lake"])
    assert task.classnames == ["Annual Crop Land", "Forest", "Sea or Lake"]
    assert (len(task.train), len(task.val), len(task.test)) == (15, 6, 9)
    assert all(e[0].split("/")[0] == ["AnnualCrop", "Forest", "SeaLake"][e[1]] for e in saved["train"])
    assert not [p for p in base.iterdir() if p.name.endswith(".tmp")]
    # The rebuild uses a fixed seed: the same tree gives the same file.
    split_file.unlink()
    load_task("eurosat", tmp_path, shots=None, seed=2)
    assert json.loads(split_file.read_text()) == saved


def test_caltech_drops_ignored_classes_and_renames(tmp_path):
    make_class_folders(
        tmp_path / "caltech-101" / "101_ObjectCategories",
        {"BACKGROUND_Google": 4, "Faces": 4, "Faces_easy": 4, "airplanes": 7, "wild_cat": 5},
    )
    task = load_task("caltech101", tmp_path, shots=None, seed=1)
    # Sorted folders without the ignored ones: Faces, airplanes, wild_cat.
    assert task.classnames == ["face", "airplane", "wild_cat"]
    saved = json.loads((tmp_path / "caltech-101" / "split_zhou_Caltech101.json").read_text())
    assert [sum(e[1] == y for e in saved["train"]) for y in range(3)] == [2, 4, 2]  # round(0.5 n), banker's rounding
    assert [sum(e[1] == y for e in saved["val"]) for y in range(3)] == [1, 1, 1]


def test_oxford_pets_rebuilt_from_annotations_then_read(tmp_path):
    base = make_oxford_pets(tmp_path, n_trainval=5, n_test=2)
    task = load_task("oxford_pets", tmp_path, shots=None, seed=1)
    assert task.classnames == ["abyssinian", "american_bulldog", "bengal"]
    saved = json.loads((base / "split_zhou_OxfordPets.json").read_text())
    for label in range(3):  # 80/20 of trainval: round(5 * 0.2) = 1 val image per class
        assert sum(e[1] == label for e in saved["val"]) == 1
        assert sum(e[1] == label for e in saved["train"]) == 4
        assert sum(e[1] == label for e in saved["test"]) == 2
    assert {e[0] for e in saved["test"] if e[1] == 1} == {"american_bulldog_6.jpg", "american_bulldog_7.jpg"}
    # Now the split file exists: it is read (edit it to prove the reader follows it).
    saved["train"] = saved["train"][:2]
    write_json(base / "split_zhou_OxfordPets.json", saved)
    again = load_task("oxford_pets", tmp_path, shots=None, seed=1)
    assert _rows(again.train) == [(str(base / "images" / p), y, c) for p, y, c in saved["train"]]


def test_imagenet_layout(tmp_path):
    make_imagenet(tmp_path, n_train=5, n_val=2)
    task = load_task("imagenet", tmp_path, shots=2, seed=1)
    # Labels follow the sorted wnid folders, whatever the order of classnames.txt.
    assert task.classnames == ["tench", "goldfish", "Chihuahua"]
    assert task.val is None
    root = tmp_path / "imagenet" / "images"
    assert _rows(task.test) == [
        (str(root / "val" / w / f"{w}_{i}.JPEG"), y, c)
        for y, (w, c) in enumerate([("n01440764", "tench"), ("n01443537", "goldfish"), ("n02085620", "Chihuahua")])
        for i in range(2)
    ]
    assert sorted(task.train["label"]) == [0, 0, 1, 1, 2, 2]
    assert all(p.startswith(str(root / "train")) for p in _paths(task.train))
    cache = json.loads((tmp_path / "imagenet" / "split_fewshot" / "shot_2-seed_1.json").read_text())
    assert set(cache) == {"train"}
    base = load_task("imagenet", tmp_path, shots=2, seed=1, subsample="base")
    assert base.classnames == ["tench", "goldfish"] and set(base.test["label"]) == {0, 1}


def test_imagenet_variants(tmp_path):
    names = "n01440764 tench\nn01443537 goldfish\nn02085620 Chihuahua\n"
    # ImageNet-A style: only some wnid folders exist, plus a README.txt to skip.
    a = tmp_path / "imagenet-adversarial"
    (a / "imagenet-a").mkdir(parents=True)
    (a / "classnames.txt").write_text(names)
    (a / "imagenet-a" / "README.txt").write_text("readme")
    for w in ("n02085620", "n01440764"):
        write_image(a / "imagenet-a" / w / "0.jpg")
    task = load_task("imagenet_a", tmp_path, shots=16, seed=1)
    assert task.train is None and task.val is None
    assert task.classnames == ["tench", "Chihuahua"] and task.test["label"] == [0, 1]
    # ImageNetV2: folders named by label index into classnames.txt.
    v2 = tmp_path / "imagenetv2"
    (v2).mkdir()
    (v2 / "classnames.txt").write_text(names)
    for i in range(3):
        write_image(v2 / "imagenetv2-matched-frequency-format-val" / str(i) / "a.jpeg")
    v2task = load_task("imagenet_v2", tmp_path, shots=None, seed=1)
    assert v2task.classnames == ["tench", "goldfish", "Chihuahua"] and v2task.test["label"] == [0, 1, 2]
    with pytest.raises(ValueError, match=re.escape("Dataset 'imagenet_v2' is test-only; `subsample` must be 'all'")):
        load_task("imagenet_v2", tmp_path, shots=None, seed=1, subsample="base")


def test_fgvc_aircraft_and_stanford_cars(tmp_path):
    fg = tmp_path / "fgvc_aircraft"
    (fg / "images").mkdir(parents=True)
    (fg / "variants.txt").write_text("707-320\nA300B4\nF-16A/B\n")
    for s, ids in (("train", ["1", "2", "3"]), ("val", ["4", "5", "6"]), ("test", ["7", "8", "9"])):
        (fg / f"images_variant_{s}.txt").write_text("".join(f"000{i} {v}\n" for i, v in zip(ids, ["F-16A/B", "707-320", "A300B4"])))  # fmt: skip
        for i in ids:
            write_image(fg / "images" / f"000{i}.jpg")
    task = load_task("fgvc_aircraft", tmp_path, shots=None, seed=1)
    assert task.classnames == ["707-320", "A300B4", "F-16A/B"]
    assert _rows(task.test) == [(str(fg / "images" / f"000{i}.jpg"), y, c) for i, y, c in [("7", 2, "F-16A/B"), ("8", 0, "707-320"), ("9", 1, "A300B4")]]  # fmt: skip

    cars = tmp_path / "stanford_cars"
    write_image(cars / "cars_train" / "00001.jpg")
    write_image(cars / "cars_test" / "00001.jpg")
    split = {"train": [["cars_train/00001.jpg", 0, "2012 Tesla Model S"]], "val": [], "test": [["cars_test/00001.jpg", 0, "2012 Tesla Model S"]]}  # fmt: skip
    write_json(cars / "split_zhou_StanfordCars.json", split)
    task = load_task("stanford_cars", tmp_path, shots=None, seed=1)
    assert _paths(task.train) == [str(cars / "cars_train" / "00001.jpg")]  # relative to the dataset folder


def test_errors_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"^Unknown dataset 'dtdd'\. Known datasets: .*dtd, eurosat"):
        load_task("dtdd", tmp_path, shots=1, seed=1)
    with pytest.raises(
        ValueError, match=re.escape("`data_dir` is required for dataset 'dtd' (expects <data_dir>/dtd/...).")
    ):
        load_task("dtd", None, shots=1, seed=1)
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"Data directory `data_dir` not found: {missing}")):
        load_task("dtd", missing, shots=1, seed=1)
    with pytest.raises(FileNotFoundError, match=re.escape(f"Dataset folder for 'dtd' not found: {tmp_path / 'dtd'}")):
        load_task("dtd", tmp_path, shots=1, seed=1)
    (tmp_path / "dtd").mkdir()
    split_file = tmp_path / "dtd" / "split_zhou_DescribableTextures.json"
    with pytest.raises(FileNotFoundError, match=re.escape(f"Split file not found: {split_file}; rebuilding it needs {tmp_path / 'dtd' / 'images'}")):  # fmt: skip
        load_task("dtd", tmp_path, shots=1, seed=1)
    with pytest.raises(ValueError, match=re.escape("`subsample` must be one of ('all', 'base', 'new'), got 'old'.")):
        load_task("dtd", tmp_path, shots=1, seed=1, subsample="old")

    split_file.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"Split file {split_file} is not valid JSON: ")):
        load_task("dtd", tmp_path, shots=1, seed=1)
    write_json(split_file, {"train": [], "test": []})
    with pytest.raises(ValueError, match=re.escape(f"Split file {split_file} has no 'val' list (keys found: ['test', 'train']).")):  # fmt: skip
        load_task("dtd", tmp_path, shots=1, seed=1)
    write_json(split_file, {"train": [["a.jpg", "0", "x"]], "val": [], "test": []})
    with pytest.raises(ValueError, match=re.escape(f"Split file {split_file}: 'train' entry 0 must be [relpath: str, label: int, classname: str], got ['a.jpg', '0', 'x'].")):  # fmt: skip
        load_task("dtd", tmp_path, shots=1, seed=1)
    write_json(split_file, {"train": [["a.jpg", 0, "banded"]], "val": [], "test": [["b.jpg", 0, "bumpy"]]})
    with pytest.raises(ValueError, match=re.escape(f"Split file {split_file}: label 0 has two class names, 'banded' ('train' entry 0) and 'bumpy' ('test' entry 0).")):  # fmt: skip
        load_task("dtd", tmp_path, shots=1, seed=1)
    write_json(split_file, {"train": [["a.jpg", 0, "banded"]], "val": [], "test": [["b.jpg", 2, "bumpy"]]})
    with pytest.raises(ValueError, match=re.escape(f"Split file {split_file}: labels must be 0..2 without gaps; missing [1].")):  # fmt: skip
        load_task("dtd", tmp_path, shots=1, seed=1)


def test_rebuild_rejects_tiny_classes(tmp_path):
    make_eurosat(tmp_path, {"Forest": 3})
    with pytest.raises(ValueError, match=re.escape("Cannot split class 'Forest' (3 images) 50/20/30 into train/val/test: every part needs at least one image.")):  # fmt: skip
        load_task("eurosat", tmp_path, shots=1, seed=1)
    assert not (tmp_path / "eurosat" / "split_zhou_EuroSAT.json").exists()


def test_sun397_and_ucf101_rebuilt_from_official_lists(tmp_path):
    sun = tmp_path / "sun397"
    folders = ["a/abbey", "a/apartment_building/outdoor", "b/bakery/shop"]
    (sun).mkdir()
    (sun / "ClassName.txt").write_text("".join(f"/{f}\n" for f in folders))
    lines = {"Training_01.txt": [], "Testing_01.txt": []}
    for c, f in enumerate(folders):
        for i in range(6):
            write_image(sun / "SUN397" / f / f"sun_{i}.jpg", seed=c * 10 + i)
            lines["Training_01.txt" if i < 5 else "Testing_01.txt"].append(f"/{f}/sun_{i}.jpg")
    for name, rows in lines.items():
        (sun / name).write_text("\n".join(rows) + "\n")
    task = load_task("sun397", tmp_path, shots=None, seed=1)
    # Letter folder dropped, qualifiers first.
    assert task.classnames == ["abbey", "outdoor apartment_building", "shop bakery"]
    assert (len(task.train), len(task.val), len(task.test)) == (12, 3, 3)  # 80/20 of 5 trainval per class
    assert _paths(task.test)[1] == str(sun / "SUN397" / "a/apartment_building/outdoor/sun_5.jpg")

    ucf = tmp_path / "ucf101"
    lists = ucf / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 YoYo\n")
    train_rows, test_rows = [], []
    for label, (action, renamed) in enumerate([("ApplyEyeMakeup", "Apply_Eye_Makeup"), ("YoYo", "Yo_Yo")], start=1):
        for g in range(6):
            write_image(ucf / "UCF-101-midframes" / renamed / f"v_{action}_g{g:02d}_c01.jpg", seed=g)
            row = f"{action}/v_{action}_g{g:02d}_c01.avi"
            (train_rows if g < 5 else test_rows).append(f"{row} {label}" if g < 5 else row)
    (lists / "trainlist01.txt").write_text("\n".join(train_rows) + "\n")
    (lists / "testlist01.txt").write_text("\n".join(test_rows) + "\n")
    task = load_task("ucf101", tmp_path, shots=None, seed=1)
    assert task.classnames == ["Apply_Eye_Makeup", "Yo_Yo"]
    assert (len(task.train), len(task.val), len(task.test)) == (8, 2, 2)
    assert _paths(task.test) == [str(ucf / "UCF-101-midframes" / "Apply_Eye_Makeup" / "v_ApplyEyeMakeup_g05_c01.jpg"), str(ucf / "UCF-101-midframes" / "Yo_Yo" / "v_YoYo_g05_c01.jpg")]  # fmt: skip


def test_oxford_flowers_rebuilt_from_label_file(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    base = tmp_path / "oxford_flowers"
    labels = [1, 2] * 10  # image_00001 is class 1, image_00002 class 2, ...
    for i in range(len(labels)):
        write_image(base / "jpg" / f"image_{i + 1:05d}.jpg", seed=i)
    scipy_io.savemat(base / "imagelabels.mat", {"labels": [labels]})
    write_json(base / "cat_to_name.json", {"1": "pink primrose", "2": "hard-leaved pocket orchid"})
    task = load_task("oxford_flowers", tmp_path, shots=None, seed=1)
    assert task.classnames == ["pink primrose", "hard-leaved pocket orchid"]
    saved = _check_50_20_30(base / "split_zhou_OxfordFlowers.json", 10, task.classnames)
    assert all(int(e[0][6:11]) % 2 == (1 - e[1]) for s in saved.values() for e in s)
