"""Reading back what a run logged to tensorboard (tests of the trackers)."""

from pathlib import Path


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of every tensorboard event file under `folder`: {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = {}
    for file in sorted(Path(folder).rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(file))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            out.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return out
