"""`evaluate` modules shipped with the package, loadable offline from their folder (no Hub needed).

    import evaluate, peft_vlprompt
    metric = evaluate.load(peft_vlprompt.metrics_module_path("base2new"))

Each folder is also a ready metric Space (script, README card, `app.py`, `requirements.txt`). This file imports
nothing from `evaluate`, which stays an optional extra (`pip install "peft-vlprompt[evaluate]"`).
"""

from pathlib import Path

_ROOT = Path(__file__).resolve().parent


def available_metrics_modules() -> list[str]:
    return sorted(p.name for p in _ROOT.iterdir() if (p / f"{p.name}.py").is_file())


def metrics_module_path(name: str) -> str:
    """The folder of the shipped `evaluate` module `name`, to pass to `evaluate.load`."""
    if name not in available_metrics_modules():
        raise ValueError(
            f"no metrics module `{name}` ships with peft_vlprompt; available: {available_metrics_modules()}"
        )
    return str(_ROOT / name)
