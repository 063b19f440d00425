"""A site's labelled face images: class folders or a CSV, checked before anything is sent.

    site/Happy/*.png, site/Sad/*.jpg ...        (folder names: any case, common synonyms)
    labels.csv with columns path,label          (paths relative to the CSV's folder)

Label names follow ``fer_triton.labels.class_index``. Every problem (unknown class, empty class
folder, a class too small to hold images out) is reported with the names involved.

The CSV is read as UTF-8, with or without a byte-order mark, with LF or CRLF line ends, and with
spaces around fields and column names ignored. A CSV that a spreadsheet or editor saved another way
is refused with what to change: ';' or tab separators, paths written with backslashes, UTF-16 or
another encoding (cp1252 is guessed when its bytes read as cp1252).

Images are decoded by ``fer_triton.images.read_face`` in :meth:`SiteData.read_faces`: a file that
cannot be read is named with the reason and left out, the others are used (:class:`SiteFaces`).
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_triton.images import IMAGE_SUFFIXES, ImageReadError, read_face
from fer_triton.labels import CLASSES, class_index


class SiteDataError(ValueError):
    """The site data cannot be used as given; the message names the files, folders or classes involved."""


@dataclass
class SiteData:
    """A site's labelled images: ``paths[i]`` shows class ``labels[i]``.

    ``labels``: INT64 [N], RAF-DB class indices 0..6 (``fer_triton.labels.CLASSES``).
    ``source``: the class-folder directory or the CSV the site was read from.
    """

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

    def subset(self, indices) -> "SiteData":
        """The images at ``indices`` (in that order), from the same source."""
        indices = [int(i) for i in indices]
        return SiteData([self.paths[i] for i in indices], self.labels[indices].astype(np.int64), self.source)

    def read_faces(self, size: int, *, max_pixels: int | None = None) -> "SiteFaces":
        """Decode every image with ``fer_triton.images.read_face`` -> :class:`SiteFaces`.

        ``size``: the wire size; faces are UINT8 RGB [size, size, 3] (PIL bilinear resize).
        ``max_pixels``: the pixel limit of ``read_face`` (default: the process-wide one).
        A file that cannot be read (any decoder failure, which ``read_image`` reports as
        ImageReadError) is left out and listed in ``SiteFaces.skipped`` with its reason; the faces,
        paths and labels of the others stay aligned in ``SiteFaces.faces`` and ``SiteFaces.site``.
        Raises SiteDataError naming every file when none can be read.
        """
        faces, kept, skipped = [], [], []
        for index, path in enumerate(self.paths):
            try:
                faces.append(read_face(path, size, max_pixels=max_pixels))
            except ImageReadError as exc:
                message = str(exc)
                prefix = f"{path}: "
                skipped.append((path, message[len(prefix):] if message.startswith(prefix) else message))
            else:
                kept.append(index)
        if not faces:
            shown = "\n  ".join(f"{p}: {why}" for p, why in skipped[:20])
            more = f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""
            raise SiteDataError(f"none of the {len(skipped)} site image(s) can be read:\n  {shown}{more}")
        return SiteFaces(np.stack(faces), self.subset(kept), skipped)


@dataclass
class SiteFaces:
    """The faces of a site that could be read, and the files that could not.

    ``faces``: UINT8 [N, size, size, 3] RGB; ``site``: the N readable images (paths and INT64 labels in
    the order of ``faces``, the source unchanged); ``skipped``: (file, reason) for each file left out,
    in the site's order (the reason without the file name in front).
    """

    faces: np.ndarray
    site: SiteData
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    @property
    def labels(self) -> np.ndarray:
        """INT64 [N]: the RAF-DB class of each face."""
        return self.site.labels

    def skipped_lines(self) -> list[str]:
        """One "skipped <file>: <reason>" line per file left out."""
        return [f"skipped {path}: {reason}" for path, reason in self.skipped]


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
    """A CSV with a header holding ``path`` and ``label`` columns (paths relative to the CSV's folder).

    Tolerated: a UTF-8 byte-order mark, CRLF line ends, spaces around fields and column names, blank
    lines, column names in any case and other columns beside the two. Refused with what to change:
    a UTF-16/32 or non-UTF-8 file, ';' or tab separators, paths written with backslashes, an empty
    path or label (line named), an unknown class (line named), listed images that do not exist (every
    one named, up to 20), a CSV that lists no image.
    """
    text = _csv_text(path)
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    rows = ((reader.line_num, [f.strip() for f in row]) for row in reader)
    rows = ((line, row) for line, row in rows if any(row))
    _, header = next(rows, (1, []))
    columns = [c.lower() for c in header]
    if "path" not in columns or "label" not in columns:
        for sep, what in ((";", "';'"), ("\t", "tabs")):
            if len(header) == 1 and sep in header[0]:
                raise SiteDataError(f"{path.name} uses {what} between columns: save it comma-separated "
                                    f"({path}, first line {header[0]!r})")
        raise SiteDataError(f"{path}: the first line must name the columns path,label (found {header})")
    at_path, at_label = columns.index("path"), columns.index("label")
    paths, labels, missing, backslashed = [], [], [], []
    for line, row in rows:
        file = row[at_path] if at_path < len(row) else ""
        label = row[at_label] if at_label < len(row) else ""
        if len(row) == 1 and ";" in row[0]:
            raise SiteDataError(f"{path.name} line {line} uses ';' between columns: save it comma-separated ({path})")
        if not file or not label:
            raise SiteDataError(f"{path} line {line}: empty path or label")
        labels.append(_class_of(label, f"{path} line {line}"))
        image = path.parent / file
        if "\\" in file and not image.is_file():
            backslashed.append(f"line {line}: path '{file}' uses backslashes: write paths with '/'")
        elif not image.is_file():
            missing.append(f"line {line}: {image}")
        paths.append(image)
    if backslashed:
        raise SiteDataError(f"{path}: {len(backslashed)} path(s) written with backslashes:\n  "
                            + "\n  ".join(backslashed[:20]) + _more(backslashed))
    if missing:
        raise SiteDataError(f"{path}: {len(missing)} listed image(s) do not exist:\n  " + "\n  ".join(missing[:20])
                            + _more(missing))
    if not paths:
        raise SiteDataError(f"{path} lists no images")
    return SiteData(paths, np.asarray(labels, np.int64), path)


def _more(items: list, shown: int = 20) -> str:
    return f"\n  ... and {len(items) - shown} more" if len(items) > shown else ""


_UNICODE_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
                 (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))


def _csv_text(path: Path) -> str:
    """The CSV's text: UTF-8, a byte-order mark removed; SiteDataError saying how to re-save anything else."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SiteDataError(f"{path}: cannot read the CSV ({exc})") from exc
    for bom, encoding in _UNICODE_BOMS:
        if data.startswith(bom):
            raise SiteDataError(f"{path.name} is {encoding} (byte-order mark {bom.hex(' ').upper()}): save it as UTF-8 "
                                f"({path})")
    if b"\x00" in data:
        line = data.count(b"\n", 0, data.index(b"\x00")) + 1
        raise SiteDataError(f"{path.name} holds NUL bytes (line {line}; UTF-16 without a byte-order mark?): "
                            f"save it as UTF-8 ({path})")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        guess = "cp1252?"
        try:
            data.decode("cp1252")
        except UnicodeDecodeError:
            guess = "an unknown encoding"
        raise SiteDataError(f"{path.name} is not UTF-8 (byte 0x{data[exc.start]:02x} at line {line}; {guess}): "
                            f"save it as UTF-8 ({path})") from None


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
