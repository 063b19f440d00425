"""The classification and agreement metrics of fer-triton, in one place.

Evaluation (``fer-triton evaluate``), the retrain comparison (``fer-triton retrain``) and the export
checks (INT8 at export, FP16 at export, ``fer-triton check-precision``) all count with these.

Labels and predictions are integer class indices (RAF-DB order, :data:`fer_triton.labels.CLASSES`),
shape [N]. Probability arrays are floating point [N, classes], one row per face.
"""

from __future__ import annotations

import numpy as np

from fer_triton.labels import NUM_CLASSES

DEFAULT_MIN_TOP1_AGREEMENT = 0.99
"""The one default bar for a reduced-precision model (FP16, INT8) against FP32: the least fraction of
faces whose top-1 class must stay the same. Used by export (``--min-agreement``, ``--fp16-min-top1``)
and ``fer-triton check-precision`` (``--min-top1``)."""


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """``cm[true, predicted]`` = number of images: INT64 [num_classes, num_classes].

    ``labels``, ``predictions``: integer class indices of one shape [N] (N may be 0: all zeros).
    Raises ValueError when the shapes differ, IndexError for an index outside 0..num_classes-1.
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predictions.shape[0]} predictions")
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels, predictions), 1)
    return cm


def accuracy(confusion: np.ndarray) -> float:
    """Fraction of images on the diagonal of a confusion matrix; NaN when it counts no image."""
    total = int(np.sum(confusion))
    return float(np.trace(confusion) / total) if total else float("nan")


def per_class_recall(confusion: np.ndarray) -> np.ndarray:
    """Recall of each class, FP64 [num_classes]: ``cm[c, c] / cm[c].sum()``, NaN where no image is of class c."""
    confusion = np.asarray(confusion)
    support = confusion.sum(axis=1)
    return np.where(support > 0, np.diag(confusion) / np.maximum(support, 1), np.nan)


def balanced_accuracy(confusion: np.ndarray) -> float:
    """Mean recall over the classes that have images (NaN when none has)."""
    recall = per_class_recall(confusion)
    present = recall[~np.isnan(recall)]
    return float(np.mean(present)) if len(present) else float("nan")


def _check_pair(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape or reference.ndim != 2 or len(reference) == 0:
        raise ValueError(f"need two non-empty [N, classes] arrays of one shape, got {reference.shape} "
                         f"and {candidate.shape}")
    return reference, candidate


def top1_agreement(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Fraction of rows (faces) whose argmax (top-1 class) is the same in both [N, classes] arrays.

    Raises ValueError unless both are non-empty 2-D arrays of one shape.
    """
    reference, candidate = _check_pair(reference, candidate)
    return float(np.mean(reference.argmax(axis=1) == candidate.argmax(axis=1)))


def max_abs_diff(reference: np.ndarray, candidate: np.ndarray) -> float:
    """Largest ``|candidate - reference|`` over all elements, computed in FP64; 0.0 for empty arrays.

    NaN or infinity in either array gives ``inf``, so that a tolerance check fails instead of passing
    (``nan > atol`` is False). Raises ValueError when the shapes differ.
    """
    reference, candidate = np.asarray(reference), np.asarray(candidate)
    if reference.shape != candidate.shape:
        raise ValueError(f"cannot compare arrays of shapes {reference.shape} and {candidate.shape}")
    diff = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    if diff.size == 0:
        return 0.0
    return float("inf") if not np.isfinite(diff).all() else float(diff.max())
