"""`examples/toy/methods_table.py` on fabricated finished runs (no training): the table's cells against hand-computed
means and stds, the header's statement of what differs from the paper presets, per-run and total times, a second
table under its own title and file, finished runs reused (and refused when they are another model's or schedule's)."""

import json
import statistics

import pytest

from tests.test_examples import _load_example

COMMON = ["--num_epochs", "20", "--batch_size", "32", "--shots", "16", "--no_plot"]


def finished(root, protocol, method, seed, wall_s=None, **numbers):
    out = root / protocol / method / f"seed{seed}"
    out.mkdir(parents=True)
    dataset = "toy_objects_night" if protocol == "base2new_night" else "toy_objects"
    summary = {"method": method, "dataset": dataset, "seed": seed, "shots": 16, "model": "toy_clip",
               "num_epochs": 20, "batch_size": 32, **numbers}  # fmt: skip
    (out / "all_results.json").write_text(json.dumps(summary))
    if wall_s is not None:
        (out / "methods_table_wall_time.json").write_text(json.dumps({"wall_s": wall_s}))


@pytest.fixture
def table(tmp_path):
    runs = tmp_path / "runs"
    finished(runs, "base2new_night", "coop", 1, wall_s=130.0, base_accuracy=80.0, new_accuracy=70.0, hm=74.6667,
             runtime_s=100.0)  # fmt: skip
    finished(runs, "base2new_night", "coop", 2, base_accuracy=60.0, new_accuracy=50.0, hm=54.5455, runtime_s=200.0)
    finished(runs, "base2new_night", "linear_probe", 1, wall_s=20.0, base_accuracy=59.0, runtime_s=10.0)
    # zero-shot records no schedule
    finished(runs, "base2new_night", "zeroshot", 1, base_accuracy=40.0, new_accuracy=30.0, hm=34.2857, num_epochs=0,
             batch_size=None)  # fmt: skip
    return _load_example("examples/toy/methods_table.py"), runs, tmp_path


def test_cells_times_and_header_of_a_second_table(table):
    script, runs, tmp = table
    out = tmp / "results" / "methods_table_other.md"
    argv = ["--methods", "coop", "linear_probe", "--protocols", "base2new_night", "--seeds", "1", "2", "3",
            "--output_dir", str(runs), "--only_existing", "--title", "Methods on the toy world, other backbone",
            "--results_file", str(out), "--results_dir", str(tmp / "default_results"), *COMMON]  # fmt: skip
    script.main(argv)
    text = out.read_text()
    assert not (tmp / "default_results" / "methods_table.md").exists()  # the first table is left alone
    assert text.startswith("# Methods on the toy world, other backbone\n")
    assert "runs its paper preset unchanged" in text and "`--num_epochs 20 --batch_size 32`" in text
    assert "--train_crop_scale 0.5 1.0" in text and "training/presets.py" in text
    assert f'--title "Methods on the toy world, other backbone" --output_dir {runs} --results_file {out}' in text
    sd = statistics.stdev
    coop = (f"| coop | 2 | 70.0 ± {sd([80, 60]):.1f} | 60.0 ± {sd([70, 50]):.1f} | 64.6 ± {sd([74.6667, 54.5455]):.1f}"
            " | 165 |")  # fmt: skip
    assert coop in text.splitlines()  # seed 3 did not finish; time: seed 1's wall time, seed 2's runtime_s
    assert "| linear_probe | 1 | 59.0 ± 0.0 | - | - | 20 |" in text.splitlines()
    total = (130 + 200 + 20) / 60
    assert (f"Total time of the 3 runs above: {total:.1f} min, summed over the runs (2 runs: wall time, loading included; 1 "
            "runs from before wall times were recorded: their `runtime_s`, training and evaluation only).\n") in text  # fmt: skip


def test_finished_runs_are_reused_missing_ones_run_and_timed(table, monkeypatch):
    script, runs, tmp = table
    calls = []

    def fake_train(argv):
        calls.append(argv)
        return {"base_accuracy": 50.0, "new_accuracy": 40.0, "hm": 44.4444, "runtime_s": 1.0}

    monkeypatch.setattr(script, "train_main", fake_train)
    out = tmp / "t.md"
    script.main(["--methods", "zeroshot", "coop", "--protocols", "base2new_night", "--seeds", "1", "2", "3",
                 "--output_dir", str(runs), "--results_file", str(out), *COMMON])  # fmt: skip
    asked = [(a[a.index("--method") + 1], a[a.index("--seed") + 1]) for a in calls]
    assert asked == [("zeroshot", "2"), ("zeroshot", "3"), ("coop", "3")]  # coop 1, 2, zeroshot 1 reused
    wall = json.loads((runs / "base2new_night" / "coop" / "seed3" / "methods_table_wall_time.json").read_text())
    assert wall["wall_s"] >= 0 and "| coop | 3 |" in out.read_text()


def test_a_finished_run_of_another_model_or_schedule_is_refused_before_any_run(table, monkeypatch):
    script, runs, tmp = table
    monkeypatch.setattr(script, "train_main", lambda argv: pytest.fail("no run may start"))
    base = ["--methods", "coop", "--protocols", "base2new_night", "--seeds", "1", "2", "3", "--output_dir", str(runs),
            "--results_file", str(tmp / "t.md"), "--no_plot", "--shots", "16", "--batch_size", "32"]  # fmt: skip
    seed1 = runs / "base2new_night" / "coop" / "seed1" / "all_results.json"
    with pytest.raises(ValueError, match=rf"^{seed1} is a finished run with `model` 'toy_clip' \(asked: 'other'\)"):
        script.main([*base, "--num_epochs", "20", "--model", "other"])
    with pytest.raises(ValueError, match=r"`num_epochs` 20 \(asked: 5\): pass another --output_dir"):
        script.main([*base, "--num_epochs", "5"])
    assert not (tmp / "t.md").exists()


def test_transfer_rows_carry_the_time_and_the_footer_counts_every_run(table):
    script, runs, tmp = table
    targets = {t: 10.0 * i for i, t in enumerate(script.DG_TARGETS + script.CROSS_TARGETS, start=1)}
    finished(runs, "transfer", "coop", 1, wall_s=42.0, accuracy=75.0, target_accuracy=targets)
    out = tmp / "t.md"
    script.main(["--methods", "coop", "--protocols", "base2new_night", "transfer", "--seeds", "1", "--output_dir",
                 str(runs), "--only_existing", "--results_file", str(out), *COMMON])  # fmt: skip
    text = out.read_text()
    dg = statistics.mean(targets[t] for t in script.DG_TARGETS)
    cross = statistics.mean(targets[t] for t in script.CROSS_TARGETS)
    cells = " | ".join(f"{v:.1f} ± 0.0" for v in targets.values())
    assert f"| coop | 1 | 75.0 ± 0.0 | {cells} | {dg:.1f} ± 0.0 | {cross:.1f} ± 0.0 | 42 |" in text.splitlines()
    assert (
        f"Total time of the 2 runs above: {(130 + 42) / 60:.1f} min, summed over the runs (wall time of each run"
        in text
    )


def test_a_diverged_run_is_a_row_of_the_table_not_a_crash(table, monkeypatch):
    script, runs, tmp = table
    calls = []

    def fake_train(argv):
        calls.append(argv)
        if argv[argv.index("--seed") + 1] == "2":
            raise FloatingPointError("training stopped at optimizer step 21: `loss term ce` NaN")
        return {"base_accuracy": 30.0, "new_accuracy": 20.0, "hm": 24.0, "runtime_s": 1.0}

    monkeypatch.setattr(script, "train_main", fake_train)
    out = tmp / "t.md"
    argv = ["--methods", "restore", "--protocols", "base2new_night", "--seeds", "1", "2", "--output_dir", str(runs),
            "--results_file", str(out), *COMMON]  # fmt: skip
    script.main(argv)
    assert "| restore | 1 (1 diverged) | 30.0 ± 0.0 | 20.0 ± 0.0 | 24.0 ± 0.0 |" in out.read_text()
    stopped = json.loads((runs / "base2new_night" / "restore" / "seed2" / "methods_table_diverged.json").read_text())
    assert "optimizer step 21" in stopped["diverged"]
    script.main(argv)  # the diverged run is a result: not started again (the fake seed 1 wrote no results: it reruns)
    assert [a[a.index("--seed") + 1] for a in calls] == ["1", "2", "1"]
