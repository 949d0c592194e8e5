"""Base-to-new metrics of prompt learning for CLIP: accuracy, mean per-class accuracy, base, new, HM.

A standalone `evaluate` module (it imports nothing from peft_vlprompt, so it also runs as a Hub metric Space). It
computes what `peft_vlprompt.training.metrics` computes in the training loop; accuracies are percentages.
"""

import math
from collections import defaultdict

import datasets
import evaluate

_CITATION = """\
@inproceedings{zhou2022cocoop,
    title={Conditional Prompt Learning for Vision-Language Models},
    author={Zhou, Kaiyang and Yang, Jingkang and Loy, Chen Change and Liu, Ziwei},
    booktitle={IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
    year={2022}
}
"""

_DESCRIPTION = """\
Top-1 accuracy, mean per-class accuracy and, under the base-to-new protocol of CoCoOp (Zhou et al., CVPR 2022),
the accuracy on base classes, on new classes and their harmonic mean HM = 2 * base * new / (base + new). All in
percent. Base and new examples are scored in their own label spaces (each relabelled 0..m-1), so a class is the
pair (split, reference) and, over several datasets, (dataset, split, reference).

Over several datasets every top-level number is the papers' average: the mean over datasets of each dataset's
number, and HM is the harmonic mean of the averaged base and new accuracies, NOT the mean of per-dataset HMs.

Config "accuracies" takes per-dataset base and new accuracies instead of predictions (e.g. means over seeds) and
returns the same average.
"""

_KWARGS_DESCRIPTION = """
Args (config "default"):
    predictions (`list` of `int`): predicted class indices.
    references (`list` of `int`): true class indices (>= 0).
    splits (`list` of `str`, *optional*): "base" or "new" per example (the base-to-new protocol).
    datasets (`list` of `str`, *optional*): dataset name per example, to score several datasets at once.
Args (config "accuracies"):
    base_accuracy (`list` of `float`): base accuracy in percent, one row per dataset.
    new_accuracy (`list` of `float`): new accuracy in percent, one row per dataset.
    datasets (`list` of `str`, *optional*): the row's dataset name (unique).
Returns:
    accuracy, mean_per_class_accuracy (config "default"), and with splits base_accuracy, new_accuracy, hm; with
    several datasets these are the papers' averages and `per_dataset` maps each name to its own numbers.
Examples:
    >>> metric = evaluate.load(peft_vlprompt.metrics_module_path("base2new"))
    >>> metric.compute(predictions=[0, 1, 0, 1], references=[0, 1, 1, 1], splits=["base", "base", "new", "new"])
    {'accuracy': 75.0, 'mean_per_class_accuracy': 83.33333333333333, 'base_accuracy': 100.0, 'new_accuracy': 50.0, \
'hm': 66.66666666666667}
"""

_SPLITS = ("base", "new")
# Optional per-example columns; an absent one is stored as "" so that `evaluate`'s batching keeps working.
_OPTIONAL = {"default": ("splits", "datasets"), "accuracies": ("datasets",)}


def harmonic_mean(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2.0 * base * new / (base + new)


def _marker(values: list[str], name: str, allowed: tuple[str, ...] | None = None) -> bool:
    """Whether the optional column `name` was given: all or none of the examples must carry it."""
    given = [v != "" for v in values]
    if any(given) and not all(given):
        raise ValueError(f"`{name}` must be given for every example or for none, got {given.count(False)} empty "
                         f"of {len(values)}")  # fmt: skip
    if allowed and any(given):
        bad = sorted(set(values) - set(allowed))
        if bad:
            raise ValueError(f"`{name}` must be one of {list(allowed)}, got {bad}")
    return any(given)


def _scores(predictions: list[int], references: list[int], splits: list[str], with_splits: bool) -> dict:
    """Accuracy and mean per-class accuracy (a class is (split, reference)), plus base, new and HM with splits."""
    totals, correct = defaultdict(int), defaultdict(int)
    for prediction, reference, split in zip(predictions, references, splits):
        totals[(split, reference)] += 1
        correct[(split, reference)] += prediction == reference
    per_class = [100.0 * correct[key] / totals[key] for key in sorted(totals)]
    out = {
        "accuracy": 100.0 * sum(correct.values()) / len(references),
        "mean_per_class_accuracy": sum(per_class) / len(per_class),
    }
    if with_splits:
        for split in _SPLITS:
            n = sum(t for (s, _), t in totals.items() if s == split)
            out[f"{split}_accuracy"] = 100.0 * sum(c for (s, _), c in correct.items() if s == split) / n
        out["hm"] = harmonic_mean(out["base_accuracy"], out["new_accuracy"])
    return out


def papers_average(per_dataset: dict[str, dict]) -> dict:
    """Mean over datasets of each number; HM of the averaged base and new accuracies (not the mean of HMs)."""
    rows = list(per_dataset.values())
    out = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0] if key != "hm"}
    if "base_accuracy" in out:
        out["hm"] = harmonic_mean(out["base_accuracy"], out["new_accuracy"])
    return out


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Base2new(evaluate.Metric):  # `evaluate` names the module base2new from this
    def _info(self):
        if self.config_name not in _OPTIONAL:
            raise ValueError(f"config `{self.config_name}` is unknown; use one of {list(_OPTIONAL)}")
        if self.config_name == "accuracies":
            columns = {"base_accuracy": "float64", "new_accuracy": "float64", "datasets": "string"}
        else:
            columns = {"predictions": "int64", "references": "int64", "splits": "string", "datasets": "string"}
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({name: datasets.Value(dtype) for name, dtype in columns.items()}),
            reference_urls=["https://arxiv.org/abs/2203.05557", "https://github.com/KaiyangZhou/CoOp"],
        )

    def _filled(self, kwargs: dict, count: int | None) -> dict:
        for name in _OPTIONAL[self.config_name]:
            if kwargs.get(name) is None:
                kwargs[name] = "" if count is None else [""] * count
        return kwargs

    # The overrides below only fill the optional columns; each keeps a docstring because `evaluate` appends to it.
    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one example (`splits` and `datasets` optional)."""
        super().add(prediction=prediction, reference=reference, **self._filled(kwargs, None))

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of examples (`splits` and `datasets` optional)."""
        # the length of the batch: the first input given (`evaluate` checks that all have the same length)
        given = [v for v in (predictions, references, *kwargs.values()) if v is not None]
        count = len(given[0]) if given else None
        if count is not None:
            kwargs = self._filled(kwargs, count)
        super().add_batch(predictions=predictions, references=references, **kwargs)

    def compute(self, *, predictions=None, references=None, **kwargs):
        """The metrics of everything added so far and of the inputs given here."""
        # `evaluate` requires every column once predictions are given: fill the optional ones it was not given
        if predictions is not None:
            kwargs = self._filled(kwargs, len(predictions))
        return super().compute(predictions=predictions, references=references, **kwargs)

    def _compute(self, predictions=None, references=None, splits=None, datasets=None, **accuracies):
        if self.config_name == "accuracies":
            return self._from_accuracies(accuracies["base_accuracy"], accuracies["new_accuracy"], datasets)
        if not references:
            raise ValueError("`references` is empty: there is nothing to score")
        if min(references) < 0:
            raise ValueError(f"`references` must be class indices >= 0, got {min(references)}")
        with_splits = _marker(splits, "splits", _SPLITS)
        names = datasets if _marker(datasets, "datasets") else [""] * len(references)
        groups = defaultdict(list)
        for i, name in enumerate(names):
            groups[name].append(i)
        per_dataset = {}
        for name, rows in groups.items():
            if with_splits:
                missing = [s for s in _SPLITS if s not in {splits[i] for i in rows}]
                if missing:
                    where = f" of dataset `{name}`" if name else ""
                    raise ValueError(f"no {missing[0]} example{where}: base-to-new needs both splits")
            per_dataset[name] = _scores(
                [predictions[i] for i in rows], [references[i] for i in rows], [splits[i] for i in rows], with_splits
            )
        if list(per_dataset) == [""]:
            return per_dataset[""]
        return {**papers_average(per_dataset), "per_dataset": per_dataset}

    @staticmethod
    def _from_accuracies(base: list[float], new: list[float], names: list[str]) -> dict:
        if not base:
            raise ValueError("`base_accuracy` is empty: there is nothing to average")
        for field, values in (("base_accuracy", base), ("new_accuracy", new)):
            bad = [v for v in values if not (math.isfinite(v) and 0 <= v <= 100)]
            if bad:
                raise ValueError(f"`{field}` must hold finite percentages in [0, 100], got {bad[0]!r}")
        if _marker(names, "datasets"):
            repeated = sorted({n for n in names if names.count(n) > 1})
            if repeated:
                raise ValueError(f"`datasets` must name each dataset once (one row per dataset), got {repeated} twice")
        else:
            names = [str(i) for i in range(len(base))]
        per_dataset = {
            name: {"base_accuracy": b, "new_accuracy": n, "hm": harmonic_mean(b, n)}
            for name, b, n in zip(names, base, new)
        }
        out = papers_average(per_dataset)
        return out if len(per_dataset) == 1 else {**out, "per_dataset": per_dataset}
