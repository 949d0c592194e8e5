"""CoOp tuner: wraps CLIP's text token embedding with `ContextEmbedding`."""

from ..base import VLPromptTuner
from .layer import ContextEmbedding


class CoOpModel(VLPromptTuner):
    """Creates CoOp context from a `CoOpConfig` (see there). Only the context is trainable and saved."""

    prefix = "coop_"
    state_family = "coop"  # KgCoOp and ProGrad-CoOp subclass this tuner unchanged: their adapters may sit beside

    def wrapper_for(self, config, key):
        return ContextEmbedding
