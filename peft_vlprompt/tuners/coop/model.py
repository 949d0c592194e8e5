"""CoOp tuner: wraps CLIP's text token embedding with `ContextEmbedding`."""

from ..base import VLPromptTuner
from .layer import ContextEmbedding


class CoOpModel(VLPromptTuner):
    """Creates CoOp context from a `CoOpConfig` (see there). Only the context is trainable and saved."""

    prefix = "coop_"

    def wrapper_for(self, config, key):
        return ContextEmbedding
