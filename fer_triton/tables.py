"""Plain-text tables for terminals: one layout for every command that prints rows of figures."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(headers: Sequence[str], rows: Sequence[Sequence]) -> str:
    """A header line, a rule, then one line per row; the first column left-aligned, the rest right-aligned.

    Cells are shown with ``str()``; widths fit the widest cell of each column.
    """
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def probability_table(results: Sequence[tuple[str, str, Sequence[float]]], classes: Sequence[str]) -> str:
    """Rows of (image name, predicted label, probabilities of ``classes``) with 4 decimals per class."""
    return text_table(["image", "label", *(c[:8] for c in classes)],
                      [[name, label, *(f"{p:.4f}" for p in probs)] for name, label, probs in results])
