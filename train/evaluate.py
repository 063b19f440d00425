"""Accuracy per test set and their mean, per-class recall and confusion matrices, as in the paper's Table 1.

Predictions come either from a checkpoint in PyTorch (CLIP features cached per image: evaluation
never augments) or from the served ensemble over gRPC (``FerClient``), which must give the same
numbers when export and serving are right.

Table layout: one row per training source (a checkpoint, or a served model), one column per test
set, then the mean over the columns (the paper's "Mean" includes the source's own test set).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fer_triton.labels import CLASSES, NUM_CLASSES
from fer_triton.metrics import confusion_matrix, per_class_recall
from fer_triton.model import CAFE
from fer_triton.train.augment import NoAugment
from fer_triton.train.datasets import FaceDataset, TorchFaces
from fer_triton.train.feature_cache import ClipFeatureCache

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    dataset: str
    labels: np.ndarray
    predictions: np.ndarray

    @property
    def n(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        return float((self.labels == self.predictions).mean()) if self.n else float("nan")

    @property
    def confusion(self) -> np.ndarray:
        return confusion_matrix(self.labels, self.predictions)

    @property
    def per_class_recall(self) -> list[float | None]:
        """Recall of each class (None where the test set has no image of it)."""
        return [None if np.isnan(r) else float(r) for r in per_class_recall(self.confusion)]


# -- predictions -------------------------------------------------------------------------------
@torch.no_grad()
def predict_pytorch(model: CAFE, dataset: FaceDataset, *, clip_cache: ClipFeatureCache | None = None,
                    batch_size: int = 64, workers: int = 0, progress: bool = True) -> np.ndarray:
    """Probabilities [N, 7] of the model on the clean images (cached CLIP features used when given)."""
    if clip_cache is not None and len(clip_cache) != len(dataset):
        raise ValueError(f"CLIP feature cache has {len(clip_cache)} rows for {len(dataset)} images of {dataset.name}")
    was_training = model.training
    device = next(model.mask_net.parameters()).device
    model.eval()
    loader = DataLoader(TorchFaces(dataset, NoAugment(model.preprocess.cpu_copy())), batch_size=batch_size,
                        shuffle=False, num_workers=workers)
    out = []
    try:
        for pixels, _, index, _ in tqdm(loader, desc=f"evaluate {dataset.name}", disable=not progress, leave=False):
            clip = clip_cache.lookup(index).to(device) if clip_cache is not None else None
            out.append(model(pixels.to(device), clip_features=clip).probabilities.cpu())
    finally:
        model.train(was_training)
    return torch.cat(out).numpy()


def predict_served(client, dataset: FaceDataset, *, chunk: int = 256, progress: bool = True) -> np.ndarray:
    """Probabilities [N, 7] from the served ensemble (``fer_triton.client.FerClient``), read at its wire size."""
    from fer_triton.images import to_wire

    info = client.info()
    if info.classes and tuple(info.classes) != CLASSES:
        raise ValueError(f"served model {info.name!r} has classes {info.classes}, expected {CLASSES}")
    out = []
    for start in tqdm(range(0, len(dataset), chunk), desc=f"evaluate {dataset.name} (served)",
                      disable=not progress, leave=False):
        faces = np.stack([to_wire(dataset.load(i), info.wire_size)
                          for i in range(start, min(start + chunk, len(dataset)))])
        out.append(client.infer_all(faces).probabilities)
    return np.concatenate(out)


def result_of(dataset: FaceDataset, probabilities: np.ndarray) -> EvalResult:
    return EvalResult(dataset.name, dataset.labels, probabilities.argmax(axis=1))


# -- reports -----------------------------------------------------------------------------------
Table = dict[str, dict[str, EvalResult]]  # row (training source) -> column (test set) -> result


def _columns(table: Table) -> list[str]:
    cols: list[str] = []
    for row in table.values():
        cols += [c for c in row if c not in cols]
    return cols


def _mean(row: dict[str, EvalResult]) -> float:
    return float(np.mean([r.accuracy for r in row.values()])) if row else float("nan")


def _pct(x: float | None) -> str:
    return "-" if x is None or x != x else f"{100 * x:.2f}"


def table1_markdown(table: Table) -> str:
    """Accuracy (%) in the layout of the paper's Table 1."""
    cols = _columns(table)
    lines = ["| Trained on | " + " | ".join(cols) + " | Mean |", "|---" * (len(cols) + 2) + "|"]
    for name, row in table.items():
        cells = [_pct(row[c].accuracy) if c in row else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_pct(_mean(row))} |")
    sizes = {c: next(r[c].n for r in table.values() if c in r) for c in cols}
    lines.append("")
    lines.append("Test images: " + ", ".join(f"{c} {n}" for c, n in sizes.items()) + ".")
    return "\n".join(lines)


def write_report(table: Table, out_dir: str | Path, note: str = "") -> dict[str, Path]:
    """Write table.md, table.csv, per_class_recall.csv, confusion/<row>__<test>.csv and report.md."""
    out = Path(out_dir)
    (out / "confusion").mkdir(parents=True, exist_ok=True)
    cols = _columns(table)
    paths = {"table_md": out / "table.md", "table_csv": out / "table.csv",
             "recall_csv": out / "per_class_recall.csv", "report": out / "report.md"}
    table_md = table1_markdown(table)
    paths["table_md"].write_text(table_md + "\n")
    with paths["table_csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trained_on", *cols, "mean"])
        for name, row in table.items():
            w.writerow([name, *[f"{100 * row[c].accuracy:.4f}" if c in row else "" for c in cols],
                        f"{100 * _mean(row):.4f}"])
    with paths["recall_csv"].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["trained_on", "test_set", "images", *CLASSES])
        for name, row in table.items():
            for col, r in row.items():
                w.writerow([name, col, r.n, *["" if x is None else f"{100 * x:.4f}" for x in r.per_class_recall]])
    report = ["# Evaluation", ""] + ([note, ""] if note else []) + ["## Accuracy (%)", "", table_md, ""]
    for name, row in table.items():
        for col, r in row.items():
            cm = r.confusion
            path = out / "confusion" / f"{_file_name(name)}__{_file_name(col)}.csv"
            with path.open("w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["true \\ predicted", *CLASSES])
                for c in range(NUM_CLASSES):
                    w.writerow([CLASSES[c], *cm[c].tolist()])
            report += [f"## {name} on {col}: accuracy {_pct(r.accuracy)}% ({r.n} images)", "",
                       "| true \\ predicted | " + " | ".join(CLASSES) + " | recall % |",
                       "|---" * (NUM_CLASSES + 2) + "|"]
            recall = r.per_class_recall
            report += [f"| {CLASSES[c]} | " + " | ".join(map(str, cm[c].tolist())) + f" | {_pct(recall[c])} |"
                       for c in range(NUM_CLASSES)]
            report.append("")
    paths["report"].write_text("\n".join(report))
    return paths


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
