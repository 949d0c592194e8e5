"""Any dataset from the command line (issue 15 item 1): `--train_dir`/`--validation_dir` imagefolders and
`--dataset_name` (a `save_to_disk` folder here; a Hub id takes the same path through `load_dataset`) go through the
few-shot and base-to-new protocols as the registered datasets do; the results and the tracker logs hold the
accuracies. The expectations (which classes are base/new, how many images are trained on, the harmonic mean) are
restated by hand from the fixture's layout."""

import json
from collections import Counter

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
from datasets import Image as HFImage

from peft_vlprompt.data import load_task
from peft_vlprompt.training import main, parse_args
from tests._tensorboard import read_scalars
from tests.test_training_fixtures import CLASSNAMES, COUNTS, make_imagefolder, save_tiny_model, tiny_image

# the images of tests.test_training_fixtures: 4 classes (bird, cat, dog, fish), 6 train / 2 val / 3 test per class
SHOTS = 2


@pytest.fixture(autouse=True)
def _registry_left_as_found():
    """The runs register their sources (as the command line does in its own process): removed after each test, so
    other tests see the registry they expect."""
    from peft_vlprompt.data import DATASET_SPECS, hf_datasets

    before = set(DATASET_SPECS)
    yield
    for name in set(DATASET_SPECS) - before:
        DATASET_SPECS.pop(name)
        hf_datasets._SOURCES.pop(name, None)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def imagefolder(tmp_path_factory):
    return make_imagefolder(tmp_path_factory.mktemp("my_shapes"))


def _split(split: str, label_order: list[str], image_column: str, label_column: str, feature) -> Dataset:
    rows = {image_column: [], label_column: []}
    for name in CLASSNAMES:
        for index in range(COUNTS[split]):
            rows[image_column].append(tiny_image(CLASSNAMES.index(name), index, split))
            rows[label_column].append(label_order.index(name))
    return Dataset.from_dict(rows, features=Features({image_column: HFImage(), label_column: feature}))


# labels in an order of their own (not sorted): base-to-new takes the first half of the *labels*, as CoOp does
LABEL_ORDER = ["fish", "dog", "cat", "bird"]


@pytest.fixture(scope="module")
def saved_plain(tmp_path_factory):
    """A DatasetDict saved with `save_to_disk`: columns `img`/`y`, integer labels (no ClassLabel), train + test."""
    folder = tmp_path_factory.mktemp("saved_plain")
    dd = DatasetDict({s: _split(s, LABEL_ORDER, "img", "y", Value("int64")) for s in ("train", "test")})
    dd.save_to_disk(str(folder / "ds"))
    (folder / "names.txt").write_text("\n".join(LABEL_ORDER) + "\n")
    return folder


@pytest.fixture(scope="module")
def saved_classlabel(tmp_path_factory):
    """The same data with a ClassLabel naming the labels, and a 'validation' split instead of 'test'."""
    folder = tmp_path_factory.mktemp("saved_cl")
    feature = ClassLabel(names=LABEL_ORDER)
    dd = DatasetDict({"train": _split("train", LABEL_ORDER, "image", "label", feature),
                      "validation": _split("test", LABEL_ORDER, "image", "label", feature)})  # fmt: skip
    dd.save_to_disk(str(folder / "ds"))
    return folder / "ds"


def run_argv(model_dir, out, *extra):
    return ["--method", "coop", "--model", str(model_dir), "--output_dir", str(out), "--shots", str(SHOTS),
            "--num_train_epochs", "1", "--per_device_train_batch_size", "2", "--max_train_steps", "2",
            "--eval_batch_size", "16", "--torch_threads", "1", "--logging_steps", "1", "--with_tracking",
            "--report_to", "tensorboard", *extra]  # fmt: skip


def hm(a, b):
    return 2 * a * b / (a + b)


SOURCES = {
    "imagefolder": lambda f, p, c: ["--train_dir", str(f / "train"), "--validation_dir", str(f / "test")],
    "saved_plain": lambda f, p, c: [
        "--dataset_name",
        str(p / "ds"),
        "--image_column",
        "img",
        "--label_column_name",
        "y",
        "--class_names_file",
        str(p / "names.txt"),
        "--dataset",
        "Plain_Shapes",
    ],  # fmt: skip
    "saved_classlabel": lambda f, p, c: ["--dataset_name", str(c)],
}
# the classes in label order of each source: an imagefolder sorts its folders; the saved ones use LABEL_ORDER
LABELS = {"imagefolder": sorted(CLASSNAMES), "saved_plain": LABEL_ORDER, "saved_classlabel": LABEL_ORDER}
NAMES = {"imagefolder": "my_shapes0", "saved_plain": "plain_shapes", "saved_classlabel": "ds"}


@pytest.mark.parametrize("protocol", ["few_shot", "base2new"])
@pytest.mark.parametrize("source", list(SOURCES))
def test_a_command_line_dataset_goes_through_the_protocols(source, protocol, model_dir, imagefolder, saved_plain,
                                                           saved_classlabel, tmp_path):  # fmt: skip
    out = tmp_path / "run"
    argv = run_argv(model_dir, out, "--protocol", protocol, *SOURCES[source](imagefolder, saved_plain,
                                                                             saved_classlabel))  # fmt: skip
    results = main(argv)
    saved = json.loads((out / "all_results.json").read_text())
    assert saved == results
    assert results["dataset"] == NAMES[source]
    labels = LABELS[source]
    classnames = json.loads((out / "per_class_accuracy.json").read_text())["classnames"]
    test_images = COUNTS["test"]  # the evaluated split: test/, 'test', or 'validation' (holding the test images)
    if protocol == "base2new":
        assert classnames == {"base": labels[:2], "new": labels[2:]}
        assert results["num_train_examples"] == 2 * SHOTS  # K shots of each base class only
        assert results["hm"] == pytest.approx(hm(results["base_accuracy"], results["new_accuracy"]), abs=1e-3)
        keys = ["base_accuracy", "new_accuracy", "hm"]
    else:
        assert classnames == {"test": labels}
        assert results["num_train_examples"] == 4 * SHOTS
        keys = ["accuracy"]
    per_class = json.loads((out / "per_class_accuracy.json").read_text())["trained"]
    for split, accs in per_class.items():  # each class is scored on its 3 test images: k/3
        assert all(round(a * test_images / 100, 6) == round(a * test_images / 100) for a in accs), (split, accs)
    # the tracker holds the same numbers: the trained ones at the last step, zero-shot CLIP's at step 0
    scalars = read_scalars(out / "peft_vlprompt")
    for key in keys:
        assert scalars[f"eval/{key}"] == [(2, pytest.approx(results[key], abs=1e-3))], key
        assert scalars[f"zero_shot/{key}"] == [(0, pytest.approx(results["zero_shot"][key], abs=1e-3))], key
    assert [step for step, _ in scalars["train/ce"]] == [1, 2]  # the losses, as before


def test_the_registered_source_samples_like_any_dataset(model_dir, saved_plain, tmp_path, monkeypatch):
    """After the run registered it, `load_task` on the source samples K images of each class from 'train', keeps the
    base half of the labels and the whole test split (restated: 3 test images per class)."""
    from peft_vlprompt.training import loop

    monkeypatch.setattr(loop, "load_clip", _refuse)
    args = parse_args(run_argv(model_dir, tmp_path / "o", *SOURCES["saved_plain"](None, saved_plain, None)))
    with pytest.raises(_Stop):
        loop.train(args)
    for subsample, names in (("base", LABEL_ORDER[:2]), ("new", LABEL_ORDER[2:])):
        task = load_task("plain_shapes", None, shots=SHOTS, seed=1, subsample=subsample)
        assert task.classnames == names
        assert Counter(task.train["classname"]) == dict.fromkeys(names, SHOTS)
        assert Counter(task.test["classname"]) == dict.fromkeys(names, COUNTS["test"])


class _Stop(Exception):
    pass


def _refuse(*args, **kwargs):
    raise _Stop("the model is loaded after the data")


@pytest.fixture
def no_model(monkeypatch):
    """The data errors come before any model is loaded."""
    from peft_vlprompt.training import loop

    monkeypatch.setattr(loop, "load_clip", _refuse)


def test_labels_without_class_names_say_how_to_name_them(model_dir, saved_plain, tmp_path, no_model):
    argv = run_argv(model_dir, tmp_path / "o", "--dataset_name", str(saved_plain / "ds"), "--image_column", "img",
                    "--label_column", "y")  # fmt: skip
    with pytest.raises(ValueError, match=r"'y' is not a ClassLabel.*--class_names_file"):
        main(argv)


def test_too_few_class_names_are_named(model_dir, saved_plain, tmp_path, no_model):
    names = tmp_path / "names.json"
    names.write_text(json.dumps(["fish", "dog"]))
    argv = run_argv(model_dir, tmp_path / "o", "--dataset_name", str(saved_plain / "ds"), "--image_column", "img",
                    "--label_column", "y", "--class_names_file", str(names))  # fmt: skip
    with pytest.raises(ValueError, match=r"labels must be ints in 0\.\.1"):
        main(argv)


def test_a_source_without_a_held_out_split_is_refused(model_dir, imagefolder, tmp_path, no_model):
    with pytest.raises(ValueError, match=r"no 'test' or validation split.*--validation_dir"):
        main(run_argv(model_dir, tmp_path / "o", "--train_dir", str(imagefolder / "train")))


@pytest.mark.parametrize(
    "extra,match",
    [
        (["--streaming"], r"`streaming`=True cannot be honoured: few-shot sampling"),
        (["--train_dir", "{f}/train", "--dataset_name", "{f}"], r"give one data source"),
        (["--train_dir", "{f}/missing"], r"`train_dir` folder .*missing does not exist"),
        (["--train_dir", "{f}/train", "--dataset", "dtd"], r"`dataset` 'dtd' is a registered dataset"),
        (["--dataset_name", "{f}", "--dataset_config_name", "x"], r"`dataset_config_name`='x' would be ignored"),
        (["--dataset_config_name", "x"], r"`dataset_config_name`='x' would be ignored"),
        (["--train_dir", "{f}/train", "--image_column", "img"], r"`image_column`='img' would be ignored"),
        (["--train_dir", "{f}/train", "--data_dir", "{f}"], r"`data_dir`='.*' would be ignored"),
        (["--validation_dir", "{f}/test"], r"`validation_dir`='.*' would be ignored: it needs --train_dir"),
        (["--class_names_file", "{f}/names.txt"], r"`class_names_file`='.*' would be ignored"),
        (["--train_dir", "{f}/train", "--class_names_file", "{f}/none.txt"], r"`class_names_file` .*none.txt does"),
        (["--dataset_name", "not a hub id!"], r"`dataset_name` 'not a hub id!' is neither a local folder"),
    ],
)
def test_bad_dataset_flags_are_refused_before_any_work(extra, match, model_dir, imagefolder, tmp_path, monkeypatch):
    from peft_vlprompt.training import loop

    monkeypatch.setattr(loop, "load_clip", _refuse)
    monkeypatch.setattr(loop, "load_protocol_data", _refuse)
    extra = [e.format(f=imagefolder) for e in extra]
    with pytest.raises(ValueError, match=match):
        main(run_argv(model_dir, tmp_path / "o", *extra))


def test_a_class_names_file_naming_a_class_twice_is_refused(imagefolder, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"names a class more than once: \['cat'\]"):
        main(["--train_dir", str(imagefolder / "train"), "--class_names_file", str(names), "--output_dir",
              str(tmp_path / "o")])  # fmt: skip


def test_the_recorded_name_of_a_source():
    assert parse_args(["--dataset_name", "Someone/Flowers", "--dataset_config_name", "v2"]).dataset == (
        "someone/flowers-v2"
    )
    args = parse_args(["--dataset_name", "Someone/Flowers", "--method", "coop"])
    assert args.default_output_dir() == "runs/coop_someone_flowers_base2new_16shots_seed1"


def test_the_library_reads_a_save_to_disk_folder_and_refuses_streaming(saved_plain):
    from peft_vlprompt.data import raw_splits_from_hf

    raw = raw_splits_from_hf(str(saved_plain / "ds"), image_column="img", label_column="y", classnames=LABEL_ORDER)
    assert raw.classnames == LABEL_ORDER and len(raw.train) == 4 * COUNTS["train"] and len(raw.test) == 12
    with pytest.raises(ValueError, match=r"`streaming=True` cannot be honoured .*few-shot sampling"):
        raw_splits_from_hf(str(saved_plain / "ds"), streaming=True)
    streamed = Dataset.from_dict({"label": [0]}).to_iterable_dataset()
    with pytest.raises(TypeError, match=r"streamed IterableDataset: few-shot sampling"):
        raw_splits_from_hf(streamed)
