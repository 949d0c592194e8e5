"""Training: the Accelerate loop behind `examples/train.py`, its arguments, presets, objectives and metrics.

>>> from peft_vlprompt.training import main
>>> results = main(["--method", "coop", "--dataset", "dtd", "--data_dir", "/data", "--protocol", "base2new"])  # doctest: +SKIP
"""

from .args import DEFAULT_RUN, PROTOCOLS, TrainArguments
from .loop import TrainingModule, main, train
from .methods import METHODS, MethodSpec, available_methods, get_method, register_training_method
from .metrics import accuracy, harmonic_mean, mean_per_class_accuracy, per_class_accuracy
from .objectives import Objective, StepInputs
from .parser import parse_args
from .presets import PRESETS, Preset, PresetContext, get_preset
from .results import format_results
from .schedule import dassl_lr

__all__ = [
    "DEFAULT_RUN",
    "METHODS",
    "PRESETS",
    "PROTOCOLS",
    "MethodSpec",
    "Objective",
    "Preset",
    "PresetContext",
    "StepInputs",
    "TrainArguments",
    "TrainingModule",
    "accuracy",
    "available_methods",
    "dassl_lr",
    "format_results",
    "get_method",
    "get_preset",
    "harmonic_mean",
    "main",
    "mean_per_class_accuracy",
    "parse_args",
    "per_class_accuracy",
    "register_training_method",
    "train",
]
