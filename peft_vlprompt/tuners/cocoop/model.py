"""CoCoOp tuner: wraps CLIP's text token embedding with `ConditionalContextEmbedding`."""

from ..base import VLPromptTuner
from .layer import ConditionalContextEmbedding


class CoCoOpModel(VLPromptTuner):
    """Creates CoCoOp context and meta-net from a `CoCoOpConfig` (see there). Only they are trainable and saved."""

    prefix = "cocoop_"

    def wrapper_for(self, config, key):
        return ConditionalContextEmbedding
