"""The shipped `evaluate` module base2new (issue 18): the loop's numbers, the papers' average, loadable offline.

Everything that needs `evaluate` runs in ONE subprocess with a fresh HF_HOME, HF_HUB_OFFLINE=1 and sockets that
refuse to connect, so the load cannot use cached Hub files or the network; the expected numbers are computed here by
`peft_vlprompt.training.metrics` (the loop's functions) and by hand.
"""

import importlib.util
import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

import peft_vlprompt
from peft_vlprompt import metrics_module_path
from peft_vlprompt.training.metrics import accuracy, harmonic_mean, mean_per_class_accuracy, per_class_accuracy

ROOT = Path(__file__).resolve().parents[1]
requires_evaluate = pytest.mark.skipif(
    importlib.util.find_spec("evaluate") is None,
    reason="`evaluate` is not installed (pip install 'peft-vlprompt[evaluate]'; the test extra includes it)",
)

# Reads the cases, writes what the module returns for each. Network attempts are counted and refused.
CHILD = r"""
import json, socket, sys
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("network disabled by the test")
socket.socket.connect = refuse
socket.create_connection = refuse

import peft_vlprompt
evaluate_imported_by_package = "evaluate" in sys.modules
import evaluate

cases = json.loads(open(sys.argv[1]).read())
path = peft_vlprompt.metrics_module_path("base2new")
metric = evaluate.load(path, keep_in_memory=True)
out = {"evaluate_imported_by_package": evaluate_imported_by_package, "module_file": sys.modules[type(metric).__module__].__file__,
       "info": {"citation": metric.citation, "description": metric.description, "features": sorted(metric.features)}}
for name, kwargs in cases["compute"].items():
    out[name] = metric.compute(**kwargs)
for batch in cases["batches"]:  # the same examples streamed in batches, then one compute()
    metric.add_batch(**batch)
out["batched"] = metric.compute()
errors = {}
for name, kwargs in cases["errors"].items():
    try:
        metric.compute(**kwargs)
    except ValueError as e:
        errors[name] = str(e)
out["errors"] = errors
accuracies = evaluate.load(path, "accuracies", keep_in_memory=True)
out["accuracies"] = accuracies.compute(**cases["accuracies"])

sys.path.insert(0, cases["examples"])
import aggregate_results
out["aggregate"] = aggregate_results.aggregate(cases["runs"])
out["aggregate_evaluate"] = aggregate_results.aggregate(cases["runs"], use_evaluate=True)
out["network_attempts"] = attempts
open(sys.argv[2], "w").write(json.dumps(out))
"""


def _random_split(rng: random.Random, n: int, num_classes: int, hit_rate: float) -> tuple[list[int], list[int]]:
    references = [rng.randrange(num_classes) for _ in range(n)]
    predictions = [r if rng.random() < hit_rate else rng.randrange(num_classes) for r in references]
    return predictions, references


def _cases() -> dict:
    rng = random.Random(0)
    single = dict(zip(("predictions", "references"), _random_split(rng, 300, 7, 0.5)))
    # Base (5 classes) and new (4 classes) each in their own label space 0..m-1, interleaved.
    base, new = _random_split(rng, 120, 5, 0.7), _random_split(rng, 90, 4, 0.4)
    order = [("base", i) for i in range(120)] + [("new", i) for i in range(90)]
    rng.shuffle(order)
    pick = {"base": base, "new": new}
    splits = {
        "predictions": [pick[s][0][i] for s, i in order],
        "references": [pick[s][1][i] for s, i in order],
        "splits": [s for s, _ in order],
    }
    # Three datasets of random base/new predictions.
    multi = {"predictions": [], "references": [], "splits": [], "datasets": []}
    for d, (n, hit) in enumerate(((60, 0.9), (40, 0.3), (80, 0.6))):
        for split, classes in (("base", 3 + d), ("new", 2 + d)):
            p, r = _random_split(rng, n, classes, hit if split == "base" else hit / 2)
            multi["predictions"] += p
            multi["references"] += r
            multi["splits"] += [split] * n
            multi["datasets"] += [f"d{d}"] * n
    # Constructed: A base 4/4 = 100, new 1/4 = 25 (HM 40); B base 2/4 = 50, new 2/4 = 50 (HM 50).
    constructed = {
        "predictions": [0, 1, 2, 3] + [0, 0, 0, 0] + [0, 1, 0, 0] + [0, 1, 0, 0],
        "references": [0, 1, 2, 3] + [0, 1, 2, 3] + [0, 1, 1, 1] + [0, 1, 1, 1],
        "splits": ["base"] * 4 + ["new"] * 4 + ["base"] * 4 + ["new"] * 4,
        "datasets": ["A"] * 8 + ["B"] * 8,
    }
    batches = [{k: v[i : i + 50] for k, v in splits.items()} for i in range(0, len(order), 50)]
    errors = {
        "bad_split": {"predictions": [0, 1], "references": [0, 1], "splits": ["base", "novel"]},
        "partial_split": {"predictions": [0, 1], "references": [0, 1], "splits": ["base", ""]},
        "one_split": {"predictions": [0, 1], "references": [0, 1], "splits": ["base", "base"], "datasets": ["A", "A"]},
        "negative": {"predictions": [0, 1], "references": [0, -1]},
    }
    runs = [  # base2new runs of one method on two datasets, two seeds each
        {"method": "coop", "dataset": d, "protocol": "base2new", "shots": 16, "seed": seed,
         "base_accuracy": b + seed, "new_accuracy": n - seed, "hm": 0.0}
        for d, b, n in (("dtd", 80.0, 60.0), ("eurosat", 90.0, 40.0)) for seed in (1, 2)
    ]  # fmt: skip
    return {
        "compute": {"single": single, "splits": splits, "multi": multi, "constructed": constructed},
        "batches": batches,
        "errors": errors,
        "accuracies": {"base_accuracy": [100.0, 50.0], "new_accuracy": [25.0, 50.0], "datasets": ["A", "B"]},
        "runs": runs,
        "examples": str(ROOT / "examples"),
    }


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate_metric")
    cases = _cases()
    (tmp / "cases.json").write_text(json.dumps(cases))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_"))}
    env.update(HF_HOME=str(tmp / "hf"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp / "cases.json"), str(tmp / "out.json")],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return cases, json.loads((tmp / "out.json").read_text()), tmp


def test_metrics_module_path_names_the_shipped_folder():
    folder = Path(metrics_module_path("base2new"))
    # what `evaluate.load` needs (the script named after its folder) and what a metric Space needs
    assert {"base2new.py", "README.md", "app.py", "requirements.txt"} <= {p.name for p in folder.iterdir()}
    assert folder.parent.parent == Path(peft_vlprompt.__file__).resolve().parent  # inside the installed package
    with pytest.raises(
        ValueError, match=r"no metrics module `bleu` ships with peft_vlprompt; available: \['base2new'\]"
    ):
        metrics_module_path("bleu")


@requires_evaluate
@pytest.mark.slow
def test_loads_offline_from_the_package_without_network(results):
    _, out, tmp = results
    assert out["network_attempts"] == []
    assert out["evaluate_imported_by_package"] is False  # `import peft_vlprompt` leaves evaluate unimported
    # evaluate copied the script into the fresh HF_HOME: nothing came from a pre-existing cache
    assert Path(out["module_file"]).is_relative_to(tmp / "hf") and Path(out["module_file"]).name == "base2new.py"
    assert "Conditional Prompt Learning for Vision-Language Models" in out["info"]["citation"]
    assert "harmonic mean" in out["info"]["description"]
    assert out["info"]["features"] == ["datasets", "predictions", "references", "splits"]


@requires_evaluate
@pytest.mark.slow
def test_equals_the_loops_metrics_on_random_predictions(results):
    cases, out, _ = results
    single = cases["compute"]["single"]
    assert out["single"] == {
        "accuracy": accuracy(single["predictions"], single["references"]),
        "mean_per_class_accuracy": mean_per_class_accuracy(single["predictions"], single["references"]),
    }
    c = cases["compute"]["splits"]
    by_split = {
        s: ([p for p, x in zip(c["predictions"], c["splits"]) if x == s],
            [r for r, x in zip(c["references"], c["splits"]) if x == s])
        for s in ("base", "new")
    }  # fmt: skip
    base, new = accuracy(*by_split["base"]), accuracy(*by_split["new"])
    # a class is (split, label): the mean over the base classes' and the new classes' accuracies together
    classes = per_class_accuracy(*by_split["base"]) + per_class_accuracy(*by_split["new"])
    expected = {
        "accuracy": accuracy(c["predictions"], c["references"]),
        "mean_per_class_accuracy": sum(classes) / len(classes),
        "base_accuracy": base,
        "new_accuracy": new,
        "hm": harmonic_mean(base, new),
    }
    assert out["splits"] == pytest.approx(expected, rel=1e-12)
    assert 0 < new < base < 100  # the random predictions are neither all right nor all wrong
    assert out["batched"] == pytest.approx(out["splits"], rel=1e-12)  # add_batch x 5 + compute() == one compute


@requires_evaluate
@pytest.mark.slow
def test_several_datasets_average_is_hm_of_averaged_base_and_new(results):
    cases, out, _ = results
    c = cases["compute"]["multi"]
    per = {}
    for d in ("d0", "d1", "d2"):
        rows = [i for i, x in enumerate(c["datasets"]) if x == d]
        sub = {s: ([c["predictions"][i] for i in rows if c["splits"][i] == s],
                   [c["references"][i] for i in rows if c["splits"][i] == s]) for s in ("base", "new")}  # fmt: skip
        per[d] = {"base_accuracy": accuracy(*sub["base"]), "new_accuracy": accuracy(*sub["new"])}
        per[d]["hm"] = harmonic_mean(per[d]["base_accuracy"], per[d]["new_accuracy"])
        per[d]["accuracy"] = accuracy([c["predictions"][i] for i in rows], [c["references"][i] for i in rows])
    mean_base = sum(p["base_accuracy"] for p in per.values()) / 3
    mean_new = sum(p["new_accuracy"] for p in per.values()) / 3
    assert out["multi"]["base_accuracy"] == pytest.approx(mean_base, rel=1e-12)
    assert out["multi"]["new_accuracy"] == pytest.approx(mean_new, rel=1e-12)
    assert out["multi"]["hm"] == pytest.approx(harmonic_mean(mean_base, mean_new), rel=1e-12)
    assert out["multi"]["accuracy"] == pytest.approx(sum(p["accuracy"] for p in per.values()) / 3, rel=1e-12)
    for d, p in per.items():
        assert {k: out["multi"]["per_dataset"][d][k] for k in p} == pytest.approx(p, rel=1e-12)
    # the papers' average differs from the mean of per-dataset HMs (the mistake this metric exists to avoid)
    assert not math.isclose(out["multi"]["hm"], sum(p["hm"] for p in per.values()) / 3, rel_tol=1e-6)


@requires_evaluate
@pytest.mark.slow
def test_constructed_average_by_hand(results):
    _, out, _ = results
    # A: base 100, new 25, HM 2*100*25/125 = 40; B: base 50, new 50, HM 50. Mean of HMs = 45, but the average is
    # base (100+50)/2 = 75, new (25+50)/2 = 37.5, HM 2*75*37.5/112.5 = 50.
    c = out["constructed"]
    assert (c["base_accuracy"], c["new_accuracy"], c["hm"]) == (75.0, 37.5, 50.0)
    assert (c["per_dataset"]["A"]["hm"], c["per_dataset"]["B"]["hm"]) == (40.0, 50.0)
    assert c["hm"] != (40.0 + 50.0) / 2
    # accuracy: A 5/8 = 62.5, B 4/8 = 50 -> mean 56.25. Per class (split, label), A: base 0-3 at 100, new 0 at 100
    # and new 1-3 at 0 -> 500/8 = 62.5; B: base 0 at 100, base 1 at 1/3, new the same -> (100 + 100/3) / 2
    assert c["accuracy"] == 56.25
    assert c["per_dataset"]["A"]["mean_per_class_accuracy"] == 62.5
    assert c["per_dataset"]["B"]["mean_per_class_accuracy"] == pytest.approx((100 + 100 / 3) / 2)
    # the "accuracies" config gives the same average from per-dataset numbers
    assert out["accuracies"]["hm"] == 50.0 and out["accuracies"]["per_dataset"]["A"]["hm"] == 40.0


@requires_evaluate
@pytest.mark.slow
def test_errors_name_the_input_and_what_is_accepted(results):
    errors = results[1]["errors"]
    assert errors["bad_split"] == "`splits` must be one of ['base', 'new'], got ['novel']"
    assert errors["partial_split"] == "`splits` must be given for every example or for none, got 1 empty of 2"
    assert errors["one_split"] == "no new example of dataset `A`: base-to-new needs both splits"
    assert errors["negative"] == "`references` must be class indices >= 0, got -1"


@requires_evaluate
@pytest.mark.slow
def test_aggregate_results_with_evaluate_gives_the_same_tables(results):
    _, out, _ = results
    assert out["aggregate_evaluate"] == out["aggregate"]
    # dtd base 81/82 -> 81.5, new 59/58 -> 58.5; eurosat base 91.5, new 38.5; average 86.5 / 48.5,
    # HM 2*86.5*48.5/135 = 62.15
    assert "| coop | 86.50 | 48.50 | 62.15 |" in out["aggregate_evaluate"]
