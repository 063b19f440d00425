"""Faces for a person to label: ``--save-uncertain DIR`` keeps the crops the model was least sure of.

    DIR/labels.csv                          path,label,predicted,top_probability,margin,reason,camera,frame,track,timestamp
    DIR/images/<camera>/<run>_f<frame>_t<track>.png     the crop the server classified (UINT8 RGB, wire size)

A face is kept when its top probability is below ``max_top`` ("low_top") or the gap between its two
highest probabilities is below ``min_margin`` ("low_margin"); a random ``confident_share`` of the other
faces is kept too ("confident_sample"), so that the labelled set also checks what the model is sure
of. At most ``per_track`` faces per track (per camera; faces without a track count as their own
track), at least ``min_gap_s`` seconds apart on the frames' clock, and at most ``max_faces`` in all.

``label`` is left empty: a person fills it in with one of the 7 class names (Surprise, Fear,
Disgust, Happy, Sad, Angry, Neutral; any case, common synonyms such as "happiness" or "anger"). The
CSV is what ``fer-triton retrain --data DIR/labels.csv`` reads (``retrain/site_data.read_csv``):
paths are relative to the CSV's folder, the extra columns are ignored, but a row whose label is
still empty is refused (``line N: empty path or label``). So either fill in every row, delete the
rows that show no face or none of the 7 expressions, or use :func:`labelled_csv` to write a CSV of
the labelled rows only.

The CSV is appended to, never rewritten, so a person may label while more faces are collected
(spreadsheet programs may lock the file: copy it first) and several runs can share one folder;
``run`` in the file names keeps runs apart.
"""

from __future__ import annotations

import csv
import io
import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

COLUMNS = ("path", "label", "predicted", "top_probability", "margin", "reason", "camera", "frame", "track",
           "timestamp")
_SAFE = re.compile(r"[^A-Za-z0-9_.@-]+")


@dataclass
class SavedFace:
    """One face written: its file (relative to the folder) and why it was kept."""

    path: str
    reason: str


class UncertainFaces:
    """Keeps low-confidence faces (and a few confident ones) with a CSV to label; thread-safe.

    ``folder``: created if needed; ``classes``: the class names in the order of the probabilities.
    ``max_top``: keep faces whose top probability is below this; ``min_margin``: keep faces whose top
    two probabilities differ by less than this; ``confident_share``: the share (0..1) of other faces
    kept at random (``seed``: the random draw, for reproducible tests); ``per_track``, ``min_gap_s``,
    ``max_faces``: the limits above. Raises ValueError for limits out of range, OSError when the folder
    cannot be written, and ValueError when an existing labels.csv has other columns.
    """

    def __init__(self, folder: str | Path, classes: tuple[str, ...], *, max_top: float = 0.5, min_margin: float = 0.15,
                 confident_share: float = 0.02, per_track: int = 3, min_gap_s: float = 1.0, max_faces: int = 10000,
                 seed: int | None = None, run: str | None = None):
        if not 0 <= max_top <= 1 or not 0 <= min_margin <= 1 or not 0 <= confident_share <= 1:
            raise ValueError("max_top, min_margin and confident_share must be between 0 and 1")
        if per_track < 1 or max_faces < 1 or min_gap_s < 0:
            raise ValueError("per_track and max_faces must be at least 1, min_gap_s at least 0")
        self.folder, self.classes = Path(folder), tuple(classes)
        self.max_top, self.min_margin, self.confident_share = max_top, min_margin, confident_share
        self.per_track, self.min_gap_s, self.max_faces = per_track, min_gap_s, max_faces
        self.run = run or time.strftime("%Y%m%dT%H%M%S")
        self.csv_path = self.folder / "labels.csv"
        self._rng = np.random.default_rng(seed)
        self._per_track: dict[tuple[str, int | str], tuple[int, float]] = {}  # -> (saved, last time)
        self._lock = threading.Lock()
        self.saved = 0
        self.counts = {"low_top": 0, "low_margin": 0, "confident_sample": 0}
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.csv_path.exists() and self.csv_path.stat().st_size > 0:
            with open(self.csv_path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            if [h.strip().lower() for h in header[:2]] != ["path", "label"]:
                raise ValueError(f"{self.csv_path} exists with other columns ({header}); choose another folder")
        else:
            self._append([COLUMNS])

    def _append(self, rows) -> None:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as f:
            f.write(buffer.getvalue())

    def reason(self, probabilities: np.ndarray) -> str | None:
        """Why a face with these probabilities (FLOAT [C]) would be kept, or None (before the limits)."""
        p = np.sort(np.asarray(probabilities, np.float64))[::-1]
        if p[0] < self.max_top:
            return "low_top"
        if len(p) > 1 and p[0] - p[1] < self.min_margin:
            return "low_margin"
        if self.confident_share > 0 and self._rng.random() < self.confident_share:
            return "confident_sample"
        return None

    def offer(self, crop: np.ndarray, probabilities: np.ndarray, *, camera: str, frame: int, track: int | None = None,
              timestamp: float | None = None, t: float | None = None) -> SavedFace | None:
        """Consider one classified face; returns what was saved, or None.

        ``crop``: UINT8 RGB [S, S, 3], the face as the server got it; ``probabilities``: FLOAT [C] its
        (fresh) result; ``timestamp``: Unix seconds (written); ``t``: the frames' clock in seconds
        for ``min_gap_s`` (default ``timestamp``). A write that fails is logged and returns None (the
        stream goes on).
        """
        from PIL import Image

        timestamp = time.time() if timestamp is None else timestamp
        t = timestamp if t is None else t
        key = (camera, track if track is not None else f"f{frame}")
        with self._lock:
            if self.saved >= self.max_faces:
                return None
            saved, last = self._per_track.get(key, (0, -np.inf))
            if saved >= self.per_track or t - last < self.min_gap_s:
                return None
            why = self.reason(probabilities)
            if why is None:
                return None
            self._per_track[key] = (saved + 1, t)
            self.saved += 1
            self.counts[why] += 1
        p = np.asarray(probabilities, np.float64)
        order = np.argsort(p)[::-1]
        cam = _SAFE.sub("_", camera)
        name = f"images/{cam}/{self.run}_f{frame:08d}_t{'-' if track is None else track}.png"
        try:
            (self.folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(crop, dtype=np.uint8)).save(self.folder / name)
            row = [name, "", self.classes[order[0]], f"{p[order[0]]:.6f}",
                   f"{p[order[0]] - (p[order[1]] if len(p) > 1 else 0.0):.6f}", why, camera, frame,
                   "" if track is None else track, f"{timestamp:.6f}"]
            with self._lock:
                self._append([row])
        except OSError as exc:
            log.warning("could not save an uncertain face to %s: %s", self.folder / name, exc)
            with self._lock:
                self.saved -= 1
                self.counts[why] -= 1
            return None
        return SavedFace(name, why)

    def summary(self) -> str:
        """One line for the end-of-run summary."""
        return (f"uncertain faces saved to {self.csv_path}: {self.saved} ({self.counts['low_top']} low top probability, "
                f"{self.counts['low_margin']} low margin, {self.counts['confident_sample']} confident samples); "
                "fill in the label column, then: fer-triton retrain --data " + str(self.csv_path))


def labelled_csv(source: str | Path, out: str | Path | None = None) -> tuple[Path, int, int]:
    """Write the rows of ``source`` (a labels.csv) whose label is filled in to ``out`` (default:
    labelled.csv beside it), paths kept relative to the same folder; returns (out, rows kept, rows left
    out). Raises ValueError when ``source`` lacks the path,label columns or no row is labelled."""
    source = Path(source)
    out = Path(out) if out is not None else source.with_name("labelled.csv")
    if out.resolve().parent != source.resolve().parent:
        raise ValueError(f"{out} must be in the same folder as {source} (paths are relative to it)")
    with open(source, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    header = [h.strip().lower() for h in (rows[0] if rows else [])]
    if "path" not in header or "label" not in header:
        raise ValueError(f"{source}: the first line must name the columns path,label (found {rows[:1]})")
    at = header.index("label")
    body = [r for r in rows[1:] if any(f.strip() for f in r)]
    kept = [r for r in body if at < len(r) and r[at].strip()]
    if not kept:
        raise ValueError(f"{source}: no row has a label yet (fill in the label column)")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([rows[0], *kept])
    out.write_text(buffer.getvalue(), encoding="utf-8")
    return out, len(kept), len(body) - len(kept)
