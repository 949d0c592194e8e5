"""Resume security and crash safety of the training checkpoints and saves (issue 11).

Nothing in a checkpoint folder is unpickled; `latest` is the newest complete checkpoint and partial leftovers are
ignored and removed; rotation happens only after the new checkpoint is published; a fresh run into a folder with
checkpoints fails before any work; files get the umask's permissions. Faults: SIGKILLs at random I/O operations of
the save phases and a full disk, in forked children (one import of torch for all of them), each run resumed with
`--resume_from_checkpoint latest` until it ends with the adapter of an uninterrupted run, bit for bit.

Run: `python -m pytest tests/test_crash_safety.py -q`.
"""

import errno
import hashlib
import json
import logging
import os
import pickle
import random
import shutil
import signal
import traceback
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_vlprompt import _atomic
from peft_vlprompt.training import checkpoint, main
from tests.test_training_fixtures import base_args, save_tiny_model

# ProGrad (an optimizer wrapper with momentum): 2 base classes x 4 shots / batch 2 = 4 steps per epoch, 2 epochs
RUN = ("--no_eval_zero_shot", "--checkpointing_steps", "1", "--torch_threads", "1")
STEPS = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"))


def argv(model_dir, out, *extra):
    return base_args(model_dir, out, "prograd", *RUN, *extra)


def adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    """The adapter of the uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert main(argv(model_dir, out))["global_step"] == STEPS
    return adapter(out)


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def complete(out: Path) -> list[str]:
    """Checkpoint folders whose every listed file matches the manifest (stated here, not by the library)."""
    found = []
    for folder in sorted((out / "checkpoints").glob("checkpoint_*")):
        manifest = folder / "checkpoint_manifest.json"
        if manifest.is_file():
            files = json.loads(manifest.read_text())["files"]
            if all(
                (folder / n).is_file() and hashlib.sha256((folder / n).read_bytes()).hexdigest() == m["sha256"]
                for n, m in files.items()
            ):
                found.append(folder.name)
    return found


def forked(fn) -> int:
    """Run `fn()` in a forked child (exit 0 when it returns, 1 on an exception); returns the wait status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            torch.set_num_threads(1)
            fn()
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1]


def killed(status: int) -> bool:
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, "the run failed (its traceback is in the output)"
    return False


class Faults:
    """In the child: counts the file operations `ops` of a run and acts on the `at`-th one.

    `kill`: SIGKILL there, half-done when `torn` (a half-written file, a folder partly deleted); `enospc`: the write
    raises ENOSPC as on a full disk.
    """

    OPS = ("write", "rename", "replace", "rmtree", "fsync_file", "fsync_dir")

    def __init__(self, at: int, mode: str = "kill", torn: bool = False, ops=OPS) -> None:
        self.at, self.mode, self.torn, self.ops, self.count = at, mode, torn, ops, 0

    def _hit(self, op: str) -> bool:
        self.count += op in self.ops
        return op in self.ops and self.count == self.at

    def install(self) -> None:
        real_write = _atomic.write_file

        def no_space(fd, data):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def write_file(path, data):
            if self._hit("write"):
                if self.mode == "enospc":  # the file is created, then no byte fits
                    real_os_write, os.write = os.write, no_space
                    try:
                        return real_write(path, data)
                    finally:
                        os.write = real_os_write
                if self.torn:
                    Path(path).write_bytes(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, data)

        def killing(op, fn, torn_fn=None):
            def wrapped(*args, **kwargs):
                if self.mode == "kill" and self._hit(op):
                    if self.torn and torn_fn is not None:
                        torn_fn(*args)
                    os.kill(os.getpid(), signal.SIGKILL)
                return fn(*args, **kwargs)

            return wrapped

        def delete_one(path, *rest):
            for root, _, files in os.walk(path):
                for name in files:
                    return os.remove(os.path.join(root, name))

        _atomic.write_file = checkpoint.write_file = write_file
        os.rename, os.replace = killing("rename", os.rename), killing("replace", os.replace)
        shutil.rmtree = killing("rmtree", shutil.rmtree, delete_one)
        checkpoint.fsync_file = killing("fsync_file", checkpoint.fsync_file)
        checkpoint.fsync_dir = killing("fsync_dir", checkpoint.fsync_dir)


def run_until_done(model_dir, out, extra, rng, max_event) -> tuple[int, int]:
    """Start the run, and after every kill re-run it as a user would (`latest` once a checkpoint exists) until it
    completes; returns (kills, kills resumed from a checkpoint)."""
    kills = resumed = 0
    seen_checkpoint = False
    while True:
        resume = bool(list((out / "checkpoints").glob("checkpoint_*")))
        args = argv(model_dir, out, *extra, *(["--resume_from_checkpoint", "latest"] if resume else []))
        faults = Faults(rng.randint(1, max_event), torn=rng.random() < 0.5)
        if not killed(forked(lambda faults=faults, args=args: (faults.install(), main(args)))):
            return kills, resumed
        kills += 1
        resumed += resume
        assert not seen_checkpoint or complete(out), "a kill left no complete checkpoint behind"
        seen_checkpoint = seen_checkpoint or bool(complete(out))
        assert kills < 200


@pytest.mark.slow
@pytest.mark.parametrize("limit", [None, 1], ids=["all_checkpoints", "total_limit_1"])
def test_sigkills_across_the_save_phases_resume_to_the_same_adapter(model_dir, reference, tmp_path, limit):
    """>= 20 SIGKILLs at random file operations (writes, torn writes, renames, fsyncs, deletions) of checkpoint
    saves, rotation and the final adapter save; every resume succeeds and the adapter is bit-identical."""
    extra = [] if limit is None else ["--checkpoints_total_limit", str(limit)]
    rng = random.Random(11 if limit is None else 12)
    total = chains = 0
    while total < 20:
        out = tmp_path / f"run{chains}"
        kills, resumed = run_until_done(
            model_dir, out, extra, rng, max_event=25
        )  # ~2.5 checkpoints of file operations
        total, chains = total + resumed, chains + 1
        assert_same(adapter(out), reference)
        assert json.loads((out / "all_results.json").read_text())["global_step"] == STEPS
        assert not [p.name for p in out.rglob(".*")]  # no temp file or folder left behind
        if limit is not None:
            assert len(list((out / "checkpoints").iterdir())) == limit


@pytest.mark.parametrize("write", [3, 7], ids=["mid_checkpoint", "manifest"])
@pytest.mark.parametrize("limit", [None, 1], ids=["all_checkpoints", "total_limit_1"])
def test_full_disk_mid_checkpoint_leaves_the_previous_one_resumable(model_dir, reference, tmp_path, write, limit):
    out = tmp_path / "out"
    extra = [] if limit is None else ["--checkpoints_total_limit", "1"]
    per_checkpoint = 7  # rng state (2 files), state, adapter, optimizer (2 files), manifest
    faults = Faults(2 * per_checkpoint + write, mode="enospc")

    def run():
        faults.install()
        try:
            main(argv(model_dir, out, *extra))
        except OSError as e:
            (tmp_path / "error.txt").write_text(str(e))
            raise

    assert forked(run) != 0  # the third save fails, naming the file it could not write
    assert (
        "No space left on device" in (error := (tmp_path / "error.txt").read_text())
        and ".checkpoint_2.partial" in error
    )
    assert complete(out) == (["checkpoint_0", "checkpoint_1"] if limit is None else ["checkpoint_1"])
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == complete(out)  # the partial one was removed
    assert not killed(forked(lambda: main(argv(model_dir, out, *extra, "--resume_from_checkpoint", "latest"))))
    assert_same(adapter(out), reference)


def test_a_kill_during_the_final_adapter_save_leaves_no_half_adapter(model_dir, reference, tmp_path, caplog):
    out = tmp_path / "out"
    faults = Faults(2, ops=("fsync_file",))  # the adapter's second file, inside `.adapter-*`, before the rename
    assert killed(forked(lambda: (faults.install(), main(argv(model_dir, out)))))
    assert not (out / "adapter").exists() and len(list(out.glob(".adapter-*"))) == 1
    caplog.set_level(logging.WARNING, logger="peft_vlprompt.training")
    main(argv(model_dir, out, "--resume_from_checkpoint", "latest"))
    assert "left by an interrupted run" in caplog.text and not list(out.glob(".adapter-*"))
    assert_same(adapter(out), reference)


# -- nothing is unpickled ------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this creates the folder `marker` (what a crafted checkpoint file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


# every name accelerate's load_state (or an older version of ours) reads, and strays
PICKLE_NAMES = ["custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "random_states_0.pkl", "evil.pkl"]
TORCH_NAMES = ["optimizer.bin", "scheduler.bin", "sampler.bin", "dl_state_dict.bin", "scaler.pt", "pytorch_model.bin",
               "model.bin", "evil.bin", "model.safetensors"]  # fmt: skip


def plant(folder: Path, marker: Path) -> None:
    for name in PICKLE_NAMES:
        (folder / name).write_bytes(pickle.dumps(Payload(marker)))
    for name in TORCH_NAMES:
        torch.save(Payload(marker), folder / name)


def rewrite(folder: Path, name: str, data: bytes) -> None:
    """Replace a checkpoint file and its manifest entry (so only the content itself can be refused)."""
    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "checkpoint_manifest.json").read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (folder / "checkpoint_manifest.json").write_text(json.dumps(manifest))


def test_crafted_pickles_in_a_checkpoint_are_never_executed(model_dir, tmp_path, monkeypatch):
    marker = tmp_path / "executed"
    pickle.loads(pickle.dumps(Payload(tmp_path / "probe")))
    assert (tmp_path / "probe").is_dir()  # the payload does run when unpickled
    out = tmp_path / "out"
    main(argv(model_dir, out, "--max_train_steps", "2"))
    for folder in (out / "checkpoints").iterdir():
        plant(folder, marker)
    loads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: loads.append(kw) or real_load(*a, **kw))
    assert (
        main(argv(model_dir, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))["global_step"] == 4
    )
    assert not marker.exists() and all(kw.get("weights_only") is True for kw in loads)

    # our own files hold JSON/safetensors only: a pickle in their place (with a matching manifest) is refused
    latest = max((out / "checkpoints").iterdir(), key=lambda p: int(p.name.split("_")[1]))
    for name in ("optimizer.safetensors", "optimizer.json", "rng_state_0.json", "adapter_model.safetensors"):
        victim = tmp_path / "victim"
        shutil.copytree(latest, victim / "checkpoints" / latest.name)
        rewrite(victim / "checkpoints" / latest.name, name, pickle.dumps(Payload(marker)))
        with pytest.raises(ValueError, match=rf"{name.split('.')[0]}.* corrupt|{name}"):
            main(argv(model_dir, victim, "--resume_from_checkpoint", "latest"))
        assert not marker.exists()
        shutil.rmtree(victim)


def test_crafted_pickles_in_a_dpl_search_checkpoint_are_never_executed(tmp_path):
    from tests.test_dpl_search import make_search

    search = make_search(tmp_path / "dpl", max_steps=2, checkpoint_every=1)
    search.run()  # the training loop's format: checkpoints/checkpoint_0 (step 1), checkpoint_1 (step 2)
    marker = tmp_path / "executed"
    for name in ("alpha_optimizer.json", "alpha_optimizer.safetensors", "rng_state_0.json", "vlprompt_state.json"):
        folder = tmp_path / f"crafted_{name}" / "checkpoints" / "checkpoint_1"
        shutil.copytree(tmp_path / "dpl" / "checkpoints" / "checkpoint_1", folder)
        rewrite(folder, name, pickle.dumps(Payload(marker)))
        with pytest.raises(ValueError, match=rf"{name.split('.')[0]}.* corrupt|{name}"):
            make_search(tmp_path / "dpl").resume(folder)
        assert not marker.exists()
    old = tmp_path / "old" / "checkpoint-2"  # the older DPL format (torch.save) is refused unread
    old.mkdir(parents=True)
    torch.save(Payload(marker), old / "search_state.pt")
    with pytest.raises(ValueError, match=r"checkpoint-2 is a DPL search checkpoint of the older format"):
        make_search(tmp_path / "old").resume("latest")
    assert not marker.exists()


# -- latest, rotation, reruns, leftovers, permissions ----------------------------------------------------------------
def test_latest_is_the_newest_complete_checkpoint_and_leftovers_are_removed(model_dir, tmp_path, caplog):
    out = tmp_path / "out"
    main(argv(model_dir, out, "--max_train_steps", "3"))  # checkpoint_0..2 at steps 1..3
    root = out / "checkpoints"
    (root / "checkpoint_3").mkdir()  # cut before its state was complete, as accelerate's save_state left them
    (root / "checkpoint_3" / "vlprompt_state.json").write_text(
        json.dumps({"method": "prograd", "peft_type": "prograd_coop", "global_step": 4})
    )
    optimizer = root / "checkpoint_2" / "optimizer.safetensors"
    optimizer.write_bytes(optimizer.read_bytes()[:-3])  # damaged after it was written
    (root / ".checkpoint_4.partial").mkdir()
    (root / ".checkpoint_4.partial" / "adapter_model.safetensors").write_bytes(b"half")
    (out / ".adapter-0123abcd").mkdir()
    for bad, match in ((root / "checkpoint_3", "no checkpoint_manifest.json: it is incomplete"),
                       (root / "checkpoint_2", r"optimizer\.safetensors does not match its size/sha256")):  # fmt: skip
        with pytest.raises(ValueError, match=rf"checkpoint {bad}.*{match}"):
            main(argv(model_dir, out, "--resume_from_checkpoint", str(bad)))
    caplog.set_level(logging.INFO, logger="peft_vlprompt.training")
    results = main(argv(model_dir, out, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"))
    assert results["global_step"] == 4
    assert "skipping checkpoint_3" in caplog.text and "skipping checkpoint_2" in caplog.text
    assert f"resumed from {root / 'checkpoint_1'} at optimizer step 2" in caplog.text
    for stale in (root / ".checkpoint_4.partial", out / ".adapter-0123abcd"):
        assert f"removing {stale}, left by an interrupted run" in caplog.text and not stale.exists()
    # numbering continues after every folder present; the damaged ones are kept for inspection, never loaded
    assert complete(out) == ["checkpoint_0", "checkpoint_1", "checkpoint_4", "checkpoint_5"]
    assert (root / "checkpoint_3").is_dir() and (root / "checkpoint_2").is_dir()


def test_no_complete_checkpoint_is_a_clear_error(model_dir, tmp_path):
    out = tmp_path / "out"
    (out / "checkpoints" / "checkpoint_0").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds no complete checkpoint \(incomplete or damaged: checkpoint_0\)"):
        main(argv(model_dir, out, "--resume_from_checkpoint", "latest"))


def test_rotation_deletes_only_after_the_new_checkpoint_is_complete(model_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    seen = []
    real_rename = os.rename

    def rename(src, dst):  # when an old checkpoint is taken away, a newer complete one must already be in place
        src = Path(src)
        if src.parent == out / "checkpoints" and src.name.startswith("checkpoint_"):
            newer = [c for c in complete(out) if int(c.split("_")[1]) > int(src.name.split("_")[1])]
            seen.append((src.name, newer))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    main(argv(model_dir, out, "--max_train_steps", "3", "--checkpoints_total_limit", "1"))
    assert [name for name, _ in seen] == ["checkpoint_0", "checkpoint_1"] and all(newer for _, newer in seen)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == complete(out) == ["checkpoint_2"]


def test_a_fresh_run_into_a_folder_with_checkpoints_fails_before_any_work(model_dir, tmp_path, monkeypatch):
    from peft_vlprompt.training import loop

    out = tmp_path / "out"
    main(argv(model_dir, out, "--max_train_steps", "1"))

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the error")

    monkeypatch.setattr(loop, "load_protocol_data", no_work)
    monkeypatch.setattr(loop, "load_clip", no_work)
    with pytest.raises(ValueError, match=rf"`output_dir` {out} already holds checkpoints of an earlier run "
                       r"\(checkpoint_0\); pass `--resume_from_checkpoint latest` to continue it, or another "
                       r"`--output_dir`"):  # fmt: skip
        main(argv(model_dir, out))


def _write_the_other_files(root: Path) -> None:
    """A split file (`data.split_io`), a toy CLIP folder (`toy.pretrain`) and a DPL supernet (`dpl.run`)."""
    from peft import get_peft_model

    from peft_vlprompt.data.split_io import atomic_write_json
    from peft_vlprompt.dpl.run import _save_supernet
    from peft_vlprompt.toy.pretrain import save_toy_clip
    from peft_vlprompt.tuners.dpl import DPLSearchConfig
    from tests.tiny import tiny_clip

    atomic_write_json(root / "split.json", {"train": [["a.png", 0, "a"]]})
    save_toy_clip(tiny_clip(), str(root / "toy_clip"))
    supernet = get_peft_model(tiny_clip(), DPLSearchConfig(text_candidates=[0, 1], vision_candidates=[0, 1]))
    (root / "dpl").mkdir()
    _save_supernet(supernet, root / "dpl")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_files_and_folders_get_the_umask_permissions(model_dir, tmp_path, umask):
    from peft_vlprompt.hub import __main__ as hub_cli
    from peft_vlprompt.hub import save_prompts_with_card
    from peft_vlprompt.training import loop

    out = tmp_path / "out"
    old = os.umask(umask)
    try:
        captured = {}
        real_fit = loop._fit

        def fit(*args, **kwargs):  # keep the trained PeftModel for the hub save below
            captured["model"] = args[4]
            return real_fit(*args, **kwargs)

        loop._fit = fit
        try:
            main(argv(model_dir, out, "--max_train_steps", "1"))
        finally:
            loop._fit = real_fit
        save_prompts_with_card(captured["model"], tmp_path / "shared")
        hub_cli.main([str(out / "adapter"), "--output", str(tmp_path / "card" / "README.md")])
        _write_the_other_files(tmp_path / "more")
    finally:
        os.umask(old)
    more = tmp_path / "more"
    folders = [out / "adapter", out / "checkpoints" / "checkpoint_0", tmp_path / "shared", more / "toy_clip",
               more / "dpl" / "supernet"]  # fmt: skip
    files = [p for f in folders for p in f.iterdir()] + [out / "all_results.json", tmp_path / "card" / "README.md",
                                                          more / "split.json"]  # fmt: skip
    assert {p.name: oct(p.stat().st_mode & 0o777) for p in folders} == {p.name: oct(0o777 & ~umask) for p in folders}
    assert {str(p): oct(p.stat().st_mode & 0o777) for p in files} == {str(p): oct(0o666 & ~umask) for p in files}


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    from tests._ddp import cpu_rank_accelerator

    cpu_rank_accelerator(rank, port, 2)  # the torchrun environment and a clean accelerate state; main() joins it
    main(json.loads(Path(out_dir, "argv.json").read_text()))


@pytest.mark.slow
def test_two_process_checkpoints_resume_bit_identical(model_dir, tmp_path):
    """2 gloo ranks: each writes its RNG state into the shared staging folder; the resumed run ends identical."""
    from tests._ddp import run_ranks

    def launch(out, *extra):
        (tmp_path / "argv.json").write_text(json.dumps(argv(model_dir, out, "--batch_size", "1", *extra)))
        run_ranks(_ddp_worker, tmp_path, 2)

    launch(tmp_path / "full")
    launch(tmp_path / "part", "--max_train_steps", "3")
    assert complete(tmp_path / "part") == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]
    names = {p.name for p in (tmp_path / "part" / "checkpoints" / "checkpoint_2").iterdir()}
    assert {"rng_state_0.json", "rng_state_1.json", "adapter_model.safetensors"} <= names
    launch(tmp_path / "part", "--resume_from_checkpoint", "latest")
    assert_same(adapter(tmp_path / "part"), adapter(tmp_path / "full"))


def test_state_files_round_trip_every_saved_state_and_refuse_anything_else():
    from peft_vlprompt.optim import GaussianPromptAggregator, ProGrad
    from peft_vlprompt.training.state_io import decode_state, encode_state, rng_state

    w = torch.nn.Parameter(torch.randn(3, 2))
    sgd = ProGrad(torch.optim.SGD([w], lr=0.1, momentum=0.9), lambda_=0.5)
    adam = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.randn(3, 2)
    sgd.step(), adam.step()
    sgd.add_general_direction((w**2).sum())  # a pending reference: `{param index: tensor}` with int keys
    gpa = GaussianPromptAggregator(4, 2.0, 1.0)
    gpa.update(0, {"p": torch.randn(2, dtype=torch.bfloat16)})
    states = {"prograd": sgd.state_dict(), "adam": adam.state_dict(), "gpa": gpa.state_dict(), "rng": rng_state(),
              "odd": {"__tensor__": 1, (1, "a"): [float("inf"), None, True], 2.5: -float("inf")}}  # fmt: skip

    def same(a, b):
        assert type(a) is type(b)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b)
        elif isinstance(a, dict):
            assert list(a) == list(b) and all(same(a[k], b[k]) is None for k in a)
        elif isinstance(a, (list, tuple)):
            assert len(a) == len(b) and all(same(x, y) is None for x, y in zip(a, b))
        else:
            assert a == b or (a != a and b != b)

    for name, state in states.items():
        files = encode_state(name, state)
        assert b"NaN" not in files[f"{name}.json"] and b"Infinity" not in files[f"{name}.json"]  # strict JSON
        same(decode_state(name, files), state)
    with pytest.raises(TypeError, match=r"state entry `x.f` has type object, which a checkpoint cannot hold"):
        encode_state("x", {"f": object()})
    bad = {
        "x.json": json.dumps({"__tensor__": "t9"}).encode(),
        "x.safetensors": encode_state("x", {})["x.safetensors"],
    }
    with pytest.raises(ValueError, match=r"tensor 't9' is missing"):
        decode_state("x", bad)
    with pytest.raises(ValueError, match=r"state 'x' is corrupt"):
        decode_state("x", {"x.json": pickle.dumps(1), "x.safetensors": bad["x.safetensors"]})


def test_dpl_search_never_rewrites_a_published_checkpoint(tmp_path, monkeypatch):
    from tests.test_dpl_search import make_search

    search = make_search(tmp_path, max_steps=2, checkpoint_every=1)
    search.run()  # checkpoint_0 (step 1), checkpoint_1 (step 2); the end-of-run save of step 2 is not repeated
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_0", "checkpoint_1"]
    seen = []
    real_rename = os.rename

    def rename(src, dst):
        seen.append((Path(src).name, Path(dst).name))
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    assert search.save_checkpoint() is None and seen == []  # nothing new since step 2
    resumed = make_search(tmp_path)
    resumed.resume("latest")
    assert resumed.global_step == 2
    assert resumed.save_checkpoint() is None and seen == []  # nothing happened since the resume
    resumed.args.max_steps = 3
    resumed.run()  # a new step goes to a new folder, published by one rename of its hidden staging folder
    assert seen == [(".checkpoint_2.partial", "checkpoint_2")]
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_0", "checkpoint_1", "checkpoint_2"]


def test_a_crafted_pickle_in_an_adapter_folder_is_never_executed(tmp_path):
    """peft falls back to `adapter_model.bin` when there is no safetensors file; it must load weights only."""
    from peft_vlprompt.hub import load_prompts
    from tests.test_hub_load import saved_coop
    from tests.tiny import tiny_clip

    saved_coop(tmp_path)
    marker = tmp_path / "executed"
    (tmp_path / "adapter" / "adapter_model.safetensors").unlink()
    torch.save(Payload(marker), tmp_path / "adapter" / "adapter_model.bin")
    (tmp_path / "adapter" / "evil.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(Exception):  # noqa: B017 - whichever error names it, the payload must not run
        load_prompts(tiny_clip(), tmp_path / "adapter")
    assert not marker.exists()


def test_a_checkpoint_adapter_with_missing_or_non_finite_tensors_is_refused(model_dir, tmp_path):
    from safetensors.torch import save

    out = tmp_path / "out"
    main(argv(model_dir, out, "--max_train_steps", "1"))
    folder = out / "checkpoints" / "checkpoint_0"
    (key, value), *_ = load_file(str(folder / "adapter_model.safetensors")).items()
    nan = {key: torch.full_like(value, float("nan"))}
    for tensors, match in (({}, rf"does not fit this adapter: missing \['{key}'\], unexpected \[\]"),
                           (nan, rf"holds non-finite values \(NaN/inf\) in \['{key}'\]")):  # fmt: skip
        rewrite(folder, "adapter_model.safetensors", save(tensors))
        with pytest.raises(ValueError, match=rf"checkpoint {folder} {match}"):
            main(argv(model_dir, out, "--resume_from_checkpoint", "latest"))
