"""The metric Space's app: a gradio widget over the module in this folder (`evaluate-cli create` layout)."""

from pathlib import Path

import evaluate
from evaluate.utils import launch_gradio_widget

launch_gradio_widget(evaluate.load(str(Path(__file__).resolve().parent / "base2new.py")))
