"""Dataset registry, templates and the generated-dataset path (`kind="generated"` with a builder)."""

import re

import pytest
from datasets import ClassLabel, Dataset, Features, Image, Value
from PIL import Image as PILImage

from peft_vlprompt.data import (
    DATASET_SPECS,
    IMAGENET_TEMPLATES,
    IMAGENET_TEMPLATES_60,
    IMAGENET_TEMPLATES_SELECT,
    TEMPLATES,
    DatasetSpec,
    RawSplits,
    get_dataset_spec,
    load_task,
    register_dataset,
    unregister_dataset,
)

# (name, directory, image dir, split file, #classes, CoOp template) restated from methods.md §11.
COOP_TABLE = [
    ("imagenet", "imagenet", "images", None, 1000, "a photo of a {}."),
    ("caltech101", "caltech-101", "101_ObjectCategories", "split_zhou_Caltech101.json", 100, "a photo of a {}."),
    ("oxford_pets", "oxford_pets", "images", "split_zhou_OxfordPets.json", 37, "a photo of a {}, a type of pet."),
    ("stanford_cars", "stanford_cars", "", "split_zhou_StanfordCars.json", 196, "a photo of a {}."),
    ("oxford_flowers", "oxford_flowers", "jpg", "split_zhou_OxfordFlowers.json", 102, "a photo of a {}, a type of flower."),
    ("food101", "food-101", "images", "split_zhou_Food101.json", 101, "a photo of {}, a type of food."),
    ("fgvc_aircraft", "fgvc_aircraft", "images", None, 100, "a photo of a {}, a type of aircraft."),
    ("sun397", "sun397", "SUN397", "split_zhou_SUN397.json", 397, "a photo of a {}."),
    ("dtd", "dtd", "images", "split_zhou_DescribableTextures.json", 47, "{} texture."),
    ("eurosat", "eurosat", "2750", "split_zhou_EuroSAT.json", 10, "a centered satellite photo of {}."),
    ("ucf101", "ucf101", "UCF-101-midframes", "split_zhou_UCF101.json", 101, "a photo of a person doing {}."),
    ("imagenet_v2", "imagenetv2", "imagenetv2-matched-frequency-format-val", None, 1000, "a photo of a {}."),
    ("imagenet_sketch", "imagenet-sketch", "images", None, 1000, "a photo of a {}."),
    ("imagenet_a", "imagenet-adversarial", "imagenet-a", None, 200, "a photo of a {}."),
    ("imagenet_r", "imagenet-rendition", "imagenet-r", None, 200, "a photo of a {}."),
]  # fmt: skip


@pytest.mark.parametrize("name,directory,image_dir,split_file,n_cls,template", COOP_TABLE)
def test_builtin_specs_match_coop(name, directory, image_dir, split_file, n_cls, template):
    spec = get_dataset_spec(name)
    assert (spec.directory, spec.image_dir, spec.split_file) == (directory, image_dir, split_file)
    assert (spec.num_classes, spec.template) == (n_cls, template)
    assert TEMPLATES["coop"][name] == template
    assert spec.test_only == name.startswith("imagenet_")


def test_classname_fixes_and_lookup_by_dassl_name():
    eurosat = get_dataset_spec("EuroSAT")
    assert eurosat.classname_fixes["AnnualCrop"] == "Annual Crop Land"
    assert eurosat.classname_fixes["HerbaceousVegetation"] == "Herbaceous Vegetation Land"
    assert eurosat.classname_fixes["Highway"] == "Highway or Road"
    assert eurosat.classname_fixes["SeaLake"] == "Sea or Lake"
    assert len(eurosat.classname_fixes) == 10
    caltech = get_dataset_spec("Caltech101")
    assert set(caltech.ignored_classes) == {"BACKGROUND_Google", "Faces_easy"}
    assert caltech.classname_fixes["Faces"] == "face"
    assert get_dataset_spec("DescribableTextures") is get_dataset_spec("dtd")
    assert get_dataset_spec("stanford_cars").split_paths_relative_to == "dataset_dir"


def test_template_variants():
    assert TEMPLATES["prograd"]["oxford_pets"] == "a type of pet, a photo of a {}."
    assert TEMPLATES["prograd"]["dtd"] == "a texture of {}."
    assert TEMPLATES["prograd"]["food101"] == "a type of food, a photo of {}."
    assert TEMPLATES["kgcoop"]["dtd"] == "a photo of a {}, a type of texture."
    differ = {k for k in TEMPLATES["coop"] if TEMPLATES["kgcoop"][k] != TEMPLATES["coop"][k]}
    assert differ == {"dtd"}
    for table in TEMPLATES.values():
        assert set(table) == {row[0] for row in COOP_TABLE}
        assert all(t.count("{}") == 1 for t in table.values())


def test_imagenet_template_lists():
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert len(IMAGENET_TEMPLATES_60) == 60 and len(set(IMAGENET_TEMPLATES_60)) == 60
    assert IMAGENET_TEMPLATES_60[0] == "a photo of a {}." and IMAGENET_TEMPLATES_60[-1] == "itap of the {}."
    assert set(IMAGENET_TEMPLATES_60) <= set(IMAGENET_TEMPLATES)
    assert len(IMAGENET_TEMPLATES_SELECT) == 7 and set(IMAGENET_TEMPLATES_SELECT) <= set(IMAGENET_TEMPLATES)
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)


def test_registry_errors():
    with pytest.raises(ValueError, match=r"^Unknown dataset 'nope'\. Known datasets: caltech101, dtd, eurosat, "):
        get_dataset_spec("nope")
    with pytest.raises(ValueError, match=re.escape("Dataset 'dtd' is already registered; use another name or call")):
        register_dataset(DatasetSpec(name="dtd", directory="x", split_file="s.json"))
    with pytest.raises(ValueError, match=re.escape("`kind` must be one of")):
        DatasetSpec(name="x", kind="folder")
    with pytest.raises(ValueError, match=re.escape("`template` must contain exactly one '{}', got 'a photo'.")):
        DatasetSpec(name="x", kind="imagefolder", template="a photo")
    with pytest.raises(TypeError, match=re.escape("`builder` must be callable for kind='generated', got None.")):
        DatasetSpec(name="x", kind="generated")
    with pytest.raises(ValueError, match=re.escape("`split_file` is required for kind='split_file' (dataset 'x').")):
        DatasetSpec(name="x", directory="x")


def _png(seed):
    return PILImage.new("RGB", (8, 8), (seed * 20 % 256, 0, 0))


def _fake_builder(calls):
    names = ["zebra", "ant", "cow", "yak", "owl"]
    features = Features({"img": Image(), "y": ClassLabel(names=names)})

    def build(data_dir):
        calls.append(data_dir)
        # train: label y appears y+3 times, interleaved; test: 2 per label.
        train_labels = [y for r in range(7) for y in range(5) if r < y + 3]
        test_labels = [y for _ in range(2) for y in range(5)]
        train = Dataset.from_dict({"img": [_png(i) for i in range(len(train_labels))], "y": train_labels}, features)
        test = Dataset.from_dict({"img": [_png(i) for i in range(10)], "y": test_labels}, features)
        return RawSplits(train=train, val=None, test=test, classnames=names, image_column="img", label_column="y")

    return build


def test_generated_dataset_builder_path():
    calls = []
    register_dataset(DatasetSpec(name="fake_world", kind="generated", template="a {} in the toy world.", builder=_fake_builder(calls)))  # fmt: skip
    try:
        task = load_task("fake_world", None, shots=3, seed=2, subsample="new")
        assert calls == [None]
        assert task.template == "a {} in the toy world." and task.val is None
        # 5 classes sorted -> base = 0,1,2 and new = 3 (yak), 4 (owl) relabelled 0, 1.
        assert task.classnames == ["yak", "owl"]
        assert task.train.column_names == ["image", "label", "classname"]
        assert sorted(task.train["label"]) == [0, 0, 0, 1, 1, 1]
        assert task.test["label"] == [0, 1, 0, 1]
        assert task.test["classname"] == ["yak", "owl", "yak", "owl"]
        assert task.train[0]["image"].size == (8, 8)
        all_task = load_task("fake_world", "/some/dir", shots=None, seed=1, subsample="all")
        assert calls[-1] == "/some/dir" and len(all_task.train) == sum(y + 3 for y in range(5))
    finally:
        unregister_dataset("fake_world")
    assert "fake_world" not in DATASET_SPECS


def test_generated_builder_errors():
    def bad(data_dir):
        ds = Dataset.from_dict(
            {"image": [_png(0)], "label": [7]}, Features({"image": Image(), "label": Value("int64")})
        )
        return RawSplits(train=ds, val=None, test=ds, classnames=["a", "b"])

    register_dataset(DatasetSpec(name="bad_world", kind="generated", builder=bad))
    try:
        with pytest.raises(
            ValueError, match=re.escape("Dataset 'bad_world': 'train' labels must be ints in 0..1, got [7].")
        ):
            load_task("bad_world", None, shots=1, seed=1)
    finally:
        unregister_dataset("bad_world")
