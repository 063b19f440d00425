"""A site's labelled face images: class folders or a CSV, checked before anything is sent.

    site/Happy/*.png, site/Sad/*.jpg ...        (folder names: any case, common synonyms)
    labels.csv with columns path,label          (paths relative to the CSV's folder)

Label names follow ``fer_triton.labels.class_index``. Every problem (unknown class, empty class
folder, unreadable image, a class too small to hold images out) is reported with the names involved.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fer_triton.images import IMAGE_SUFFIXES, ImageReadError, read_face
from fer_triton.labels import CLASSES, class_index


class SiteDataError(ValueError):
    """The site data cannot be used as given; the message names the files, folders or classes involved."""


@dataclass
class SiteData:
    paths: list[Path]
    labels: np.ndarray          # RAF-DB class indices, one per path
    source: Path

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        """Images per class (every class, 0 where the site has none)."""
        found = Counter(int(i) for i in self.labels)
        return {name: found.get(i, 0) for i, name in enumerate(CLASSES)}

    @property
    def missing_classes(self) -> list[str]:
        return [name for name, n in self.counts().items() if n == 0]

    def read_faces(self, size: int) -> np.ndarray:
        """Decode every image to UINT8 [N, size, size, 3]; raise naming ALL unreadable files at once."""
        faces, bad = [], []
        for path in self.paths:
            try:
                faces.append(read_face(path, size))
            except ImageReadError as exc:
                bad.append(str(exc))
        if bad:
            shown = "\n  ".join(bad[:20]) + (f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else "")
            raise SiteDataError(f"{len(bad)} site image(s) cannot be read:\n  {shown}")
        return np.stack(faces)


def _class_of(name: str, where: str) -> int:
    try:
        return class_index(name)
    except ValueError as exc:
        raise SiteDataError(f"{where}: {exc}") from None


def read_class_folders(root: Path) -> SiteData:
    """root/<class name>/<images>; every file inside a class folder must be an image."""
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise SiteDataError(f"{root} has no class folders (expected e.g. {root}/Happy/*.png) and is not a CSV")
    unknown = [f.name for f in folders if _known(f.name) is None]
    if unknown:
        raise SiteDataError(f"{root}: unknown class folder(s) {', '.join(map(repr, unknown))}; "
                            f"expected names of {', '.join(CLASSES)} (any case, common synonyms)")
    paths, labels, seen = [], [], {}
    for folder in folders:
        index = _known(folder.name)
        if index in seen:
            raise SiteDataError(f"{root}: folders {seen[index].name!r} and {folder.name!r} both mean {CLASSES[index]}")
        seen[index] = folder
        files = sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))
        others = [f for f in files if f.suffix.lower() not in IMAGE_SUFFIXES]
        if others:
            raise SiteDataError(f"{folder}: not image files (suffix not one of {', '.join(sorted(IMAGE_SUFFIXES))}): "
                                + ", ".join(f.name for f in others[:10]))
        if not files:
            raise SiteDataError(f"class folder {folder} is empty: add images of {CLASSES[index]} or remove the folder")
        paths.extend(files)
        labels.extend([index] * len(files))
    return SiteData(paths, np.asarray(labels, np.int64), root)


def _known(name: str) -> int | None:
    try:
        return class_index(name)
    except ValueError:
        return None


def read_csv(path: Path) -> SiteData:
    """A CSV with a header holding ``path`` and ``label`` columns (paths relative to the CSV's folder)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise SiteDataError(f"{path}: cannot read the CSV ({exc})") from exc
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip().lower() for c in reader.fieldnames or []]
    if "path" not in columns or "label" not in columns:
        raise SiteDataError(f"{path}: the first line must name the columns path,label (found {reader.fieldnames})")
    reader.fieldnames = columns
    paths, labels, missing = [], [], []
    for line, row in enumerate(reader, start=2):
        file, label = (row.get("path") or "").strip(), (row.get("label") or "").strip()
        if not file or not label:
            raise SiteDataError(f"{path} line {line}: empty path or label")
        labels.append(_class_of(label, f"{path} line {line}"))
        image = (path.parent / file)
        if not image.is_file():
            missing.append(f"line {line}: {image}")
        paths.append(image)
    if missing:
        raise SiteDataError(f"{path}: {len(missing)} listed image(s) do not exist:\n  " + "\n  ".join(missing[:20]))
    if not paths:
        raise SiteDataError(f"{path} lists no images")
    return SiteData(paths, np.asarray(labels, np.int64), path)


def read_site(data: str | Path) -> SiteData:
    """Class folders (a directory) or a CSV file."""
    data = Path(data)
    if data.is_dir():
        return read_class_folders(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        return read_csv(data)
    if not data.exists():
        raise SiteDataError(f"site data not found: {data}")
    raise SiteDataError(f"{data}: site data must be a folder of class folders or a .csv file")


def holdout_split(labels: np.ndarray, fraction: float = 0.25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split -> (train indices, held-out indices): every class present keeps at least
    one image on each side, so each class both trains the head and is checked."""
    if not 0 < fraction < 1:
        raise SiteDataError(f"held-out fraction must be between 0 and 1, not {fraction}")
    rng = np.random.default_rng(seed)
    train, held = [], []
    small = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        if len(idx) < 2:
            small.append(f"{CLASSES[c]} ({len(idx)})")
            continue
        n_held = min(len(idx) - 1, max(1, int(round(len(idx) * fraction))))
        held.extend(idx[:n_held])
        train.extend(idx[n_held:])
    if small:
        raise SiteDataError("too few images for a held-out split: each class needs at least 2 "
                            f"(one to train, one to check); found {', '.join(small)}")
    return np.sort(np.asarray(train)), np.sort(np.asarray(held))
