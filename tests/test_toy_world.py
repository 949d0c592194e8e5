"""The procedural toy world: determinism, listings, class semantics and split construction.

Run: python -m pytest tests/test_toy_world.py -x -q
"""

import math

import numpy as np
import pytest

from peft_vlprompt.toy import (
    COLORS,
    DOMAINS,
    OBJECT_NAMES,
    SHAPES,
    classnames,
    get_task,
    image_seed,
    list_domains,
    list_tasks,
    render,
    render_array,
    toy_example,
    toy_splits,
)


def test_listings():
    assert list_tasks() == ["objects", "shapes", "colors"]
    assert list_domains() == ["photo", "sketch", "cartoon", "painting", "night"]
    names = classnames("objects")
    assert len(names) == len(set(names)) == 48
    assert sorted(names) == sorted(f"{c} {s}" for s in SHAPES for c in COLORS)
    assert classnames("shapes") == list(SHAPES) and classnames("colors") == list(COLORS)
    for task in list_tasks():
        assert "{}" in get_task(task).template
    with pytest.raises(ValueError, match="`task` must be one of"):
        get_task("animals")


def test_class_words_are_single_clip_tokens():
    from transformers import CLIPTokenizer

    from peft_vlprompt.assets import clip_tokenizer_path

    tok = CLIPTokenizer.from_pretrained(clip_tokenizer_path())
    for word in SHAPES + COLORS:
        ids = tok(word)["input_ids"]
        assert len(ids) == 3 and ids[0] == 49406 and ids[-1] == 49407, (word, ids)


def test_base_new_halves_mix_all_shapes_and_colours():
    # base-to-new protocol: sort labels, base = first ceil(n/2); each half must hold every shape and colour,
    # and no (shape, colour) pair may appear in both
    names = classnames("objects")
    n_base = math.ceil(len(names) / 2)
    base, new = names[:n_base], names[n_base:]
    for half in (base, new):
        assert {n.split()[1] for n in half} == set(SHAPES)
        assert {n.split()[0] for n in half} == set(COLORS)
    assert not set(base) & set(new)


def test_task_members_match_class_names():
    for label, shape in enumerate(classnames("shapes")):
        members = get_task("shapes").members[label]
        assert len(members) == len(COLORS)
        assert all(OBJECT_NAMES[m].split()[1] == shape for m in members)
    for label, colour in enumerate(classnames("colors")):
        members = get_task("colors").members[label]
        assert len(members) == len(SHAPES)
        assert all(OBJECT_NAMES[m].split()[0] == colour for m in members)


@pytest.mark.parametrize("domain", DOMAINS)
def test_render_is_a_pure_function_of_the_seed(domain):
    a = render_array(7, domain, np.random.default_rng([3, 1, 4]))
    b = render_array(7, domain, np.random.default_rng([3, 1, 4]))
    c = render_array(7, domain, np.random.default_rng([3, 1, 5]))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    img = render(7, domain, np.random.default_rng([3, 1, 4]))
    assert img.mode == "RGB" and img.size == (32, 32)
    assert np.array_equal(np.asarray(img), a)


def test_render_ignores_global_rng():
    np.random.seed(0)
    a = render_array(3, "photo", np.random.default_rng(11))
    np.random.seed(1)
    np.random.random(100)
    assert np.array_equal(a, render_array(3, "photo", np.random.default_rng(11)))


def test_domains_look_different():
    images = [render_array(0, d, np.random.default_rng(0)).astype(float) for d in DOMAINS]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert np.abs(images[i] - images[j]).mean() > 10, (DOMAINS[i], DOMAINS[j])
    # night is dark, sketch is mostly paper-white
    assert images[DOMAINS.index("night")].mean() < 60
    assert np.median(images[DOMAINS.index("sketch")]) > 200


@pytest.mark.parametrize("colour", COLORS)
def test_object_colour_is_visible_at_difficulty_zero(colour):
    # difficulty 0: centred, unrotated, no clutter, no jitter; in the cartoon domain the fill is the named colour
    expected = {
        "red": (1, 0, 0),
        "green": (0, 1, 0),
        "blue": (0, 0, 1),
        "yellow": (1, 1, 0),
        "purple": (0.5, 0, 1),
        "orange": (1, 0.5, 0),
    }[colour]
    class_id = OBJECT_NAMES.index(f"{colour} square")
    centre = render_array(class_id, "cartoon", np.random.default_rng(0), difficulty=0.0)[14:18, 14:18].mean((0, 1))
    ref = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0, 1], [1, 0.5, 0]], dtype=float)
    nearest = np.argmin(((ref * 255 - centre) ** 2).sum(1))
    assert tuple(ref[nearest]) == expected, (colour, centre)


def test_render_validates_arguments():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="`class_id` must be in"):
        render(48, "photo", rng)
    with pytest.raises(ValueError, match="`domain` must be one of"):
        render(0, "xray", rng)
    with pytest.raises(ValueError, match="`difficulty` must be in"):
        render(0, "photo", rng, difficulty=-1)


def test_toy_splits_sizes_labels_and_columns():
    splits = toy_splits("objects", ["photo", "sketch"], n_train_per_class=2, n_val_per_class=1, n_test_per_class=1)
    assert set(splits) == {"train", "val", "test"}
    assert {k: len(v) for k, v in splits.items()} == {"train": 48 * 2 * 2, "val": 48 * 2, "test": 48 * 2}
    train = splits["train"]
    assert train.features["label"].names == classnames("objects")
    assert set(train.column_names) == {"image", "label", "classname", "domain"}
    rows = train[:]
    assert all(classnames("objects")[lab] == name for lab, name in zip(rows["label"], rows["classname"]))
    for domain in ("photo", "sketch"):
        labels = [lab for lab, d in zip(rows["label"], rows["domain"]) if d == domain]
        assert sorted(labels) == sorted(list(range(48)) * 2)
    # labels first appear in label order (CoOp's few-shot sampler groups by first appearance)
    first = list(dict.fromkeys(rows["label"]))
    assert first == list(range(48))
    img = rows["image"][0]
    assert img.mode == "RGB" and img.size == (32, 32)


def test_toy_splits_pixels_are_reproducible_and_splits_disjoint():
    a = toy_splits("shapes", "painting", 3, 0, 3, seed=5)
    b = toy_splits("shapes", "painting", 3, 0, 3, seed=5)
    c = toy_splits("shapes", "painting", 3, 0, 3, seed=6)
    arrays = {k: [np.asarray(im) for im in a[k]["image"]] for k in ("train", "test")}
    assert all(np.array_equal(x, np.asarray(y)) for x, y in zip(arrays["train"], b["train"]["image"]))
    assert not all(np.array_equal(x, np.asarray(y)) for x, y in zip(arrays["train"], c["train"]["image"]))
    train_bytes = {x.tobytes() for x in arrays["train"]}
    assert not train_bytes & {x.tobytes() for x in arrays["test"]}
    assert len(a["val"]) == 0
    # the split row equals the stand-alone example with the same (task, domain, split, label, index, seed)
    row = a["test"][len(SHAPES) + 2]  # index 1, label 2
    assert row["label"] == 2
    assert np.array_equal(np.asarray(row["image"]), np.asarray(toy_example("shapes", "painting", "test", 2, 1, 5)))
    assert image_seed(5, "shapes", "painting", "test", 2, 1) == [5, 1, 3, 2, 2, 1]


def test_toy_splits_validates_arguments():
    with pytest.raises(ValueError, match="`domains` must be taken from"):
        toy_splits("objects", ["photo", "xray"], 1, 1, 1)
    with pytest.raises(ValueError, match="`n_train_per_class` must be an int >= 0, got -1"):
        toy_splits("objects", "photo", -1, 1, 1)
    with pytest.raises(ValueError, match="`task` must be one of"):
        toy_splits("animals", "photo", 1, 1, 1)
