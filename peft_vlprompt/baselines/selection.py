"""`--select_on`: which state of a run is kept and tested. "last" (the papers'): the state after the last step.
"validation": the epoch-end state (and the final state, when the run stops inside an epoch) with the best accuracy on
the dataset's validation split, over the training classes only; the test split is never looked at. Ties keep the
earlier epoch. The results record the choice (`selected_on`, `selected_epoch`, the validation accuracies)."""

import logging

from peft import get_peft_model_state_dict, set_peft_model_state_dict

logger = logging.getLogger(__name__)


def check_selection(spec, args) -> None:
    """Refusals that need no data or model."""
    if args.select_on == "last":
        return
    if not spec.trains or spec.optimizer == "closed_form":
        raise ValueError(f"`select_on`='validation' would be ignored: method {spec.name!r} trains no epochs (a probe "
                         "chooses its regularisation on the validation split itself)")  # fmt: skip
    if spec.name == "promptsrc":
        raise ValueError("`select_on`='validation' cannot apply to promptsrc: its final prompts are the Gaussian-"
                         "weighted average of all epochs (GPA), not one epoch's")  # fmt: skip
    if args.resume_from_checkpoint:
        raise ValueError("`select_on`='validation' cannot resume: the checkpoints do not hold the best epoch's "
                         "adapter so far; train without --resume_from_checkpoint")  # fmt: skip


def check_validation_split(args, task) -> None:
    """After the data is loaded, before the model: the dataset must have a validation split."""
    if args.select_on == "validation" and (task.val is None or len(task.val) == 0):
        raise ValueError(f"`select_on`='validation' needs a validation split, and dataset {task.name!r} has none "
                         "(its protocol evaluates on the test split): use --select_on last")  # fmt: skip


class EpochSelector:
    """Scores the adapter on the validation split at epoch ends and restores the best state at the end."""

    def __init__(self, args, task, evaluator_factory) -> None:
        self.on = args.select_on
        self.task = task
        self._make_evaluator = evaluator_factory  # () -> Evaluator over the validation split
        self._evaluator = None
        self.scores: list[dict] = []
        self.best: tuple[float, int, dict] | None = None
        self._last_scored_step = None

    def after_epoch(self, epoch: int, step: int, model) -> None:
        if self.on == "validation":
            self._score(epoch + 1, step, model)

    def _score(self, epoch: int, step: int, model) -> None:
        if self._evaluator is None:
            self._evaluator = self._make_evaluator()
        accuracy = self._evaluator.run(zero_shot=False)["validation"]["accuracy"]
        self.scores.append({"epoch": epoch, "step": step, "accuracy": round(accuracy, 4)})
        self._last_scored_step = step
        if self.best is None or accuracy > self.best[0]:
            state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}
            self.best = (accuracy, epoch, state)

    def finish(self, model, step: int, per_epoch: int) -> dict:
        """Restore the selected state; returns what the results record."""
        last_epoch = -(-step // per_epoch)
        if self.on == "last":
            return {"selected_on": "last", "selected_epoch": last_epoch}
        if self._last_scored_step != step:  # the run stopped inside an epoch: its final state is a candidate too
            self._score(last_epoch, step, model)
        accuracy, epoch, state = self.best
        set_peft_model_state_dict(model, state)
        logger.info("select_on validation: epoch %d of %d (validation accuracy %.2f)", epoch, last_epoch, accuracy)
        return {"selected_on": "validation", "selected_epoch": epoch, "validation_accuracy": round(accuracy, 4),
                "validation_by_epoch": self.scores}  # fmt: skip
