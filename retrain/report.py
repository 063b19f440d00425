"""The retrain report: Markdown with confusion-matrix PNGs of the serving head (before) and the new head (after)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fer_triton.labels import CLASSES
from fer_triton.retrain.compare import Comparison, HeadScores


def draw_confusion(confusion: np.ndarray, title: str, path: Path, classes: tuple[str, ...] = CLASSES) -> Path:
    """Row-normalised confusion matrix as a PNG (rows: true class, columns: predicted), counts in cells."""
    from PIL import Image, ImageDraw, ImageFont

    n, cell, left, top = len(classes), 56, 90, 70
    img = Image.new("RGB", (left + n * cell + 20, top + n * cell + 20), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((10, 8), title, fill="black", font=font)
    d.text((left, 28), "predicted ->", fill="black", font=font)
    d.text((6, top - 18), "true", fill="black", font=font)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    for j, name in enumerate(classes):
        d.text((left + j * cell + 4, top - 18), name[:7], fill="black", font=font)
        d.text((6, top + j * cell + cell // 2 - 6), name[:10], fill="black", font=font)
    for i in range(n):
        for j in range(n):
            shade = int(255 * (1 - share[i, j]))
            x, y = left + j * cell, top + i * cell
            d.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255), outline=(200, 200, 200))
            d.text((x + cell // 2 - 8, y + cell // 2 - 6), str(int(confusion[i, j])),
                   fill="black" if share[i, j] < 0.6 else "white", font=font)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def _recall_rows(serving: HeadScores, new: HeadScores) -> list[str]:
    cell = lambda r: "-" if np.isnan(r) else f"{r:.1%}"  # noqa: E731
    return [f"| {c} | {cell(a)} | {cell(b)} |" for c, a, b in zip(CLASSES, serving.recall, new.recall)]


def write_report(out_dir: Path, *, comparison: Comparison, decision: str, counts: dict[str, int],
                 details: dict[str, str], timings: dict[str, float]) -> Path:
    """Write ``out_dir/report.md`` plus ``confusion_serving.png`` and ``confusion_new.png``."""
    out_dir = Path(out_dir)
    draw_confusion(comparison.serving.confusion, "serving head (before), held-out site images",
                   out_dir / "confusion_serving.png")
    new = comparison.new_name
    draw_confusion(comparison.new.confusion, f"{new} (after), held-out site images", out_dir / "confusion_new.png")
    s, n = comparison.serving, comparison.new
    lines = [
        "# fer-triton retrain report", "",
        f"**Decision:** {decision}", "",
        *(f"- {k}: {v}" for k, v in details.items()), "",
        "## Site data", "",
        "| class | images |", "|---|---|", *(f"| {c} | {k} |" for c, k in counts.items()), "",
        f"## Held-out comparison ({comparison.held_out} images)", "",
        f"| | serving head (before) | {new} (after) |", "|---|---|---|",
        f"| accuracy | {s.accuracy:.1%} | {n.accuracy:.1%} |",
        f"| balanced accuracy | {s.balanced_accuracy:.1%} | {n.balanced_accuracy:.1%} |", "",
        "Recall per class:", "", "| class | serving | new |", "|---|---|---|", *_recall_rows(s, n), "",
        "Confusion matrices (rows: true class, columns: predicted):", "",
        f"![serving head](confusion_serving.png) ![{new}](confusion_new.png)", "",
        "## Time", "", "| step | seconds |", "|---|---|", *(f"| {k} | {v:.2f} |" for k, v in timings.items()), "",
    ]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path
