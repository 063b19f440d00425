"""Score the serving head and the new head on the same held-out site images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fer_triton.labels import CLASSES
from fer_triton.metrics import accuracy, balanced_accuracy, confusion_matrix, per_class_recall


@dataclass
class HeadScores:
    accuracy: float
    recall: np.ndarray        # per class; NaN where the held-out set has no image of the class
    confusion: np.ndarray     # [true, predicted] counts, 7 x 7

    @property
    def balanced_accuracy(self) -> float:
        return balanced_accuracy(self.confusion)

    def as_dict(self) -> dict:
        return {"accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
                "recall": {c: (None if np.isnan(r) else float(r)) for c, r in zip(CLASSES, self.recall)},
                "confusion": self.confusion.tolist()}


def score(labels: np.ndarray, predicted: np.ndarray, num_classes: int = len(CLASSES)) -> HeadScores:
    """Accuracy, per-class recall and confusion of class indices ``predicted`` [N] against ``labels`` [N].

    Raises ValueError for no labels or a different number of predictions.
    """
    if len(labels) == 0 or len(labels) != len(predicted):
        raise ValueError(f"need as many predictions as labels (>0), got {len(predicted)} and {len(labels)}")
    confusion = confusion_matrix(labels, predicted, num_classes)
    return HeadScores(accuracy(confusion), per_class_recall(confusion), confusion)


@dataclass
class Comparison:
    """The serving head vs the new head on the held-out site images."""

    serving: HeadScores
    new: HeadScores
    held_out: int
    new_name: str = "new head"     # "new mask net + head" with --fine-tune-mask

    @property
    def accuracy_gain(self) -> float:
        return self.new.accuracy - self.serving.accuracy

    @property
    def new_is_worse(self) -> bool:
        """Worse = lower held-out accuracy (ties publish: equal is not worse)."""
        return self.new.accuracy < self.serving.accuracy

    def summary(self) -> str:
        return (f"held-out accuracy on {self.held_out} site images: serving head {self.serving.accuracy:.1%}, "
                f"{self.new_name} {self.new.accuracy:.1%} ({self.accuracy_gain:+.1%})")


def compare_heads(labels: np.ndarray, serving_predicted: np.ndarray, new_predicted: np.ndarray,
                  new_name: str = "new head") -> Comparison:
    return Comparison(score(labels, serving_predicted), score(labels, new_predicted), len(labels), new_name)
