"""KgCoOp tuner: CoOp's context embedding under its own peft type."""

from ..coop.model import CoOpModel


class KgCoOpModel(CoOpModel):
    """Creates CoOp context from a `KgCoOpConfig`. Only the context is trainable and saved."""

    prefix = "kgcoop_"
