"""Did a mode learn anything? A mode at chance accuracy or with a non-finite loss makes every path from it
meaningless, so training, importing, connecting and the Modes page name it loudly.

"Near chance" means a train accuracy less than a tenth of the way from guessing (1 / classes) to perfect:
below 19 % for 10 classes, 55 % for 2, 10.9 % for 100.
"""
import math

from .modefile import ModeMeta

CHANCE_MARGIN = 0.1  # fraction of the way from chance accuracy to 1 that a mode must exceed


def chance_warning(meta: ModeMeta, label: str = "this mode") -> str | None:
    """A one-line warning naming the numbers if the mode learned nothing, else None."""
    loss, acc = meta.metrics.get("train_loss"), meta.metrics.get("train_acc")
    classes = meta.model_kwargs.get("num_classes")
    if isinstance(loss, (int, float)) and not math.isfinite(loss):
        return (f"{label} has a non-finite train loss ({loss}): it learned nothing and a path from it means "
                f"nothing; retrain it with a lower learning rate")
    if not isinstance(acc, (int, float)) or not isinstance(classes, int) or classes < 2:
        return None
    chance = 1 / classes
    if acc >= chance + CHANCE_MARGIN * (1 - chance):
        return None
    loss_text = f", train loss {loss:.3f} (guessing: ln {classes} = {math.log(classes):.3f})" \
        if isinstance(loss, (int, float)) else ""
    return (f"{label} is at chance level: train accuracy {acc:.1%} where guessing gives {chance:.1%} "
            f"({classes} classes){loss_text}; it learned nothing and a path from it means nothing: retrain it "
            f"(another learning rate, more epochs)")
