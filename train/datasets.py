"""Readers for labelled face datasets; every label is mapped to RAF-DB order, every image read as RGB.

Kinds (a data spec is ``[NAME=][KIND:]PATH``; without KIND the layout is recognised):
- ``rafdb``: RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (``train_00001.jpg 5``, labels 1..7)
  and ``Image/aligned/<stem>_aligned.jpg``; the split is the file-name prefix (train / test).
- ``affectnet``: AffectNet's cropped release (``train_set/`` and ``val_set/``, each ``images/<id>.jpg``
  with ``annotations/<id>_exp.npy``), or the original one: ``training.csv`` / ``validation.csv`` (columns subDirectory_filePath,
  face_x, face_y, face_width, face_height, ..., expression) with images under
  ``Manually_Annotated_Images/``; the 7 basic classes (expression 0..6) mapped with AFFECTNET_TO_RAFDB.
  Rows with expression 7..10 (contempt, none, uncertain, no face) are not part of 7-class AffectNet:
  they are counted in ``skipped``.
- ``ferplus``: FERPlus as written by Microsoft's generate_training_data.py: ``FER2013Train/`` and
  ``FER2013Test/``, each with the PNGs and ``label.csv`` (image, box, 10 vote counts). Labels by the
  FERPlus majority rule: single votes are dropped, the top emotion needs more than half of the rest;
  images whose majority is contempt, unknown or not-a-face, or with no majority, go to ``skipped``.
- ``folder``: one sub-folder per class (SFEW 2.0, MMA, a site's own images); ``class_map`` says how
  folder names become classes (maps in ``fer_triton.labels``):

  - ``"names"`` (default): folder names are expressions (any case, common synonyms: ``class_index``);
  - ``"alphabetical"``: exactly 7 folders, sorted A..Z ignoring case, are Angry, Disgust, Fear, Happy,
    Neutral, Sad, Surprise (ALPHABETICAL_TO_RAFDB; the SFEW 2.0 / MMA convention). A folder whose name
    is an expression that the sorted position contradicts is refused;
  - ``"fer2013"``: folders 0..6 in FER2013 order (0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad,
    5 Surprise, 6 Neutral; FER2013_TO_RAFDB);
  - ``"rafdb"``: folders 1..7 in RAF-DB order (1 Surprise .. 7 Neutral: the number minus 1);
  - ``"affectnet"``: folders 0..6 in AffectNet order (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear,
    5 Disgust, 6 Anger; AFFECTNET_TO_RAFDB); folders 7..10 (contempt, none, uncertain, no-face) are
    counted in ``skipped``;
  - 7 comma-separated expression names, e.g. ``"angry,disgust,fear,happy,sad,surprise,neutral"``:
    the classes of folders 0, 1, ..., 6 in numeric order (``fer_triton.labels.parse_class_map``).

  Folder names made of digits only say nothing by themselves: with ``names`` or ``alphabetical``
  they are refused, with an error that lists the numberings. With a numbering, every folder must be
  a number of it (leave others out with ``ignore_classes``); numbers are compared as numbers ("01" is 1).

Label files (``list_patition_label.txt``, ``label.csv``, the AffectNet CSVs) are read as UTF-8 with
or without a byte-order mark, with LF or CRLF line ends, and with spaces around fields and column
names ignored. Every listed image that is not used is counted, by reason, in ``FaceDataset.skipped``
(``describe()`` prints them), never dropped silently; blank lines hold no image and are passed over.
A line that cannot be read as the format says stops the reader with its file and line number.
"""

from __future__ import annotations

import csv
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_triton.images import IMAGE_SUFFIXES, read_image
from fer_triton.labels import (AFFECTNET_NOT_7_CLASSES, AFFECTNET_TO_RAFDB, ALPHABETICAL_TO_RAFDB, CLASSES,
                               NUM_CLASSES, NUMBERED_NOT_USED, RAFDB_LABEL_TO_INDEX, class_index, class_map_options,
                               parse_class_map)

log = logging.getLogger(__name__)

KINDS = ("rafdb", "affectnet", "ferplus", "folder")
RAFDB_LIST = "list_patition_label.txt"  # sic: the file's name in the RAF-DB release


class DatasetFormatError(ValueError):
    """A dataset folder or label file does not match the layout its reader expects."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int                                  # RAF-DB index 0..6
    box: tuple[int, int, int, int] | None = None  # face crop (x, y, width, height) in the file's pixels


@dataclass
class FaceDataset:
    """Labelled face images of one dataset split."""

    name: str
    kind: str
    root: Path
    split: str
    samples: list[Sample]
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count, reported to the user

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> np.ndarray:
        return np.array([s.label for s in self.samples], dtype=np.int64)

    def class_counts(self) -> dict[str, int]:
        counts = Counter(s.label for s in self.samples)
        return {CLASSES[c]: counts.get(c, 0) for c in range(NUM_CLASSES)}

    def load(self, index: int) -> np.ndarray:
        """Image ``index`` as UINT8 RGB [H, W, 3] at its own size (face box cropped)."""
        sample = self.samples[index]
        return load_rgb(sample.path, sample.box)

    def describe(self) -> str:
        text = f"{self.name} ({self.kind}, {self.split}): {len(self)} images"
        if self.skipped:
            text += "; not used: " + ", ".join(f"{n} {why}" for why, n in self.skipped.items())
        return text


def load_rgb(path: Path, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Read one image with ``fer_triton.images.read_image`` -> UINT8 RGB [H, W, 3], cropped to ``box``.

    ``box``: the face as (x, y, width, height) in the file's pixels (AffectNet's boxes refer to the
    full photo). It is applied only when it lies inside the image and is smaller than it; a face
    that is already cropped (or a box outside the image) is used as it is.
    Raises ``fer_triton.images.ImageReadError`` naming the file for any read or decode failure.
    """
    image = read_image(path)
    if box is not None:
        x, y, w, h = box
        height, width = image.shape[:2]
        if w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height and (w, h) != (width, height):
            image = np.ascontiguousarray(image[y:y + h, x:x + w])
    return image


def _read_label_text(path: Path) -> str:
    """A label file's text: UTF-8 with or without a byte-order mark (the BOM is removed).

    Line ends are left to the caller (``str.splitlines`` and the csv module both take LF and CRLF).
    Raises DatasetFormatError naming the file and the line of the first byte that is not UTF-8.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DatasetFormatError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); save it as UTF-8") from None


def _csv_rows(text: str):
    """(line number, fields with surrounding spaces removed) for each non-blank CSV row of ``text``."""
    reader = csv.reader(io.StringIO(text, newline=""), skipinitialspace=True)
    for row in reader:
        fields = [f.strip() for f in row]
        if any(fields):
            yield reader.line_num, fields


def _check_found(missing: list[str], what: str, first: str = "first") -> None:
    """Raise naming how many listed images are missing, and the first few, when any is."""
    if missing:
        raise DatasetFormatError(f"{len(missing)} {what} ({first}: {', '.join(missing[:3])})")


# -- RAF-DB ------------------------------------------------------------------------------------
def read_rafdb(root: str | Path, split: str = "train", name: str = "RAF-DB") -> FaceDataset:
    """RAF-DB basic: ``EmoLabel/list_patition_label.txt`` (or the list in ``root``) and ``Image/aligned/``.

    Each line is ``<image name> <label 1..7>`` (spaces or tabs around either are ignored); labels
    become RAF-DB indices with RAFDB_LABEL_TO_INDEX (the label minus 1). The split is the name's
    prefix: lines of the other split are counted in ``skipped`` ("in the test split"), as are names
    that start with neither ``train`` nor ``test``. Images are ``<stem>_aligned.jpg`` (or the listed
    name itself, as some copies keep it).
    Raises DatasetFormatError for a missing layout, a malformed line (file:line named), listed images
    that are missing (counted, the first named) or a split with no image.
    """
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"RAF-DB split must be 'train' or 'test', not {split!r}")
    label_file = next((p for p in (root / "EmoLabel" / RAFDB_LIST, root / RAFDB_LIST) if p.is_file()), None)
    image_dir = next((p for p in (root / "Image" / "aligned", root / "aligned") if p.is_dir()), None)
    if label_file is None or image_dir is None:
        raise DatasetFormatError(
            f"{root} is not a RAF-DB (basic) folder: expected EmoLabel/{RAFDB_LIST} and Image/aligned/ "
            f"(found label list: {label_file or 'no'}, aligned images: {image_dir or 'no'})")
    samples, skipped, missing = [], Counter(), []
    for lineno, line in enumerate(_read_label_text(label_file).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue  # a blank line lists no image
        if (len(parts) != 2 or not re.fullmatch(r"[0-9]+", parts[1])
                or int(parts[1]) not in RAFDB_LABEL_TO_INDEX):
            raise DatasetFormatError(f"{label_file}:{lineno}: expected '<image name> <label 1..7>', got {line!r}")
        image_name, label = parts[0], RAFDB_LABEL_TO_INDEX[int(parts[1])]
        listed_split = next((s for s in ("train", "test") if image_name.startswith(s)), None)
        if listed_split is None:
            skipped["named neither train_* nor test_*"] += 1
            continue
        if listed_split != split:
            skipped[f"in the {listed_split} split"] += 1
            continue
        stem = image_name.rsplit(".", 1)[0]
        path = image_dir / f"{stem}_aligned.jpg"
        if not path.is_file() and (image_dir / image_name).is_file():
            path = image_dir / image_name  # some copies keep the original names
        if not path.is_file():
            missing.append(path.name)
            continue
        samples.append(Sample(path, label))
    _check_found(missing, f"RAF-DB {split} images listed in {label_file} are missing from {image_dir}")
    if not samples:
        raise DatasetFormatError(f"{label_file} lists no '{split}_*' images")
    return FaceDataset(name, "rafdb", root, split, samples, dict(skipped))


# -- AffectNet ---------------------------------------------------------------------------------
_AFFECTNET_CSV = {"train": "training.csv", "test": "validation.csv"}
_AFFECTNET_NPY = {"train": "train_set", "test": "val_set"}


def read_affectnet(root: str | Path, split: str = "train", name: str = "AffectNet") -> FaceDataset:
    """``root`` is the AffectNet folder or one of its CSV files; split "test" is the validation set."""
    root = Path(root)
    if split not in _AFFECTNET_CSV:
        raise ValueError(f"AffectNet split must be 'train' or 'test' (its validation set), not {split!r}")
    npy_split = root / _AFFECTNET_NPY[split]
    if (npy_split / "annotations").is_dir():
        return _read_affectnet_npy(root, npy_split, split, name)
    if root.is_file():
        csv_path, base = root, root.parent
    else:
        wanted = _AFFECTNET_CSV[split]
        csv_path = next((p for p in (root / wanted, root / "Manually_Annotated_file_lists" / wanted) if p.is_file()),
                        None)
        base = root
        if csv_path is None:
            raise DatasetFormatError(f"{root} is not an AffectNet folder: no {wanted} in it or in "
                                     f"Manually_Annotated_file_lists/, and no {_AFFECTNET_NPY[split]}/annotations/")
    image_dirs = [d for d in (base / "Manually_Annotated_Images", base.parent / "Manually_Annotated_Images", base)
                  if d.is_dir()]
    samples, skipped, missing = [], Counter(), []
    rows = _csv_rows(_read_label_text(csv_path))
    header = next(rows, (1, []))[1]
    columns = {c.lower(): i for i, c in enumerate(header)}
    needed = ("subDirectory_filePath", "expression")
    if not all(c.lower() in columns for c in needed):
        raise DatasetFormatError(f"{csv_path} is not an AffectNet annotation file: its first line must name the "
                                 f"columns {', '.join(needed)} (and face_x, face_y, face_width, face_height); "
                                 f"it names {', '.join(map(repr, header)) or 'none'}")
    field_of = lambda row, column: (row[columns[column.lower()]]  # noqa: E731
                                    if column.lower() in columns and columns[column.lower()] < len(row) else "")
    for lineno, row in rows:
        text = field_of(row, "expression")
        if not re.fullmatch(r"-?[0-9]+", text):
            raise DatasetFormatError(f"{csv_path}:{lineno}: expression {text!r} is not a number")
        expression = int(text)
        if expression in AFFECTNET_NOT_7_CLASSES:
            skipped[f"{AFFECTNET_NOT_7_CLASSES[expression]} (not one of the 7 classes)"] += 1
            continue
        if expression not in AFFECTNET_TO_RAFDB:
            raise DatasetFormatError(f"{csv_path}:{lineno}: expression {expression} is not an AffectNet "
                                     "label 0..10")
        rel = field_of(row, "subDirectory_filePath")
        if not rel:
            raise DatasetFormatError(f"{csv_path}:{lineno}: no image path (column subDirectory_filePath)")
        path = next((d / rel for d in image_dirs if (d / rel).is_file()), None)
        if path is None:
            missing.append(rel)
            continue
        box = tuple(field_of(row, c) for c in ("face_x", "face_y", "face_width", "face_height"))
        samples.append(Sample(path, AFFECTNET_TO_RAFDB[expression], _affectnet_box(box)))
    _check_found(missing, f"AffectNet images listed in {csv_path} were not found under "
                          f"{', '.join(map(str, image_dirs)) or base}")
    if not samples:
        raise DatasetFormatError(f"{csv_path} has no images of the 7 basic classes")
    return FaceDataset(name, "affectnet", root, split, samples, dict(skipped))


def _read_affectnet_npy(root: Path, folder: Path, split: str, name: str) -> FaceDataset:
    """The cropped release: <split>/images/<id>.jpg with <split>/annotations/<id>_exp.npy."""
    samples, skipped, missing = [], Counter(), []
    for ann in sorted((folder / "annotations").glob("*_exp.npy")):
        image_id = ann.name[:-len("_exp.npy")]
        try:
            expression = int(np.load(ann))
        except (ValueError, TypeError, OSError) as exc:
            raise DatasetFormatError(f"{ann}: not an AffectNet expression label ({exc})") from exc
        if expression in AFFECTNET_NOT_7_CLASSES:
            skipped[f"{AFFECTNET_NOT_7_CLASSES[expression]} (not one of the 7 classes)"] += 1
            continue
        if expression not in AFFECTNET_TO_RAFDB:
            raise DatasetFormatError(f"{ann}: expression {expression} is not an AffectNet label 0..10")
        path = next((p for p in (folder / "images" / f"{image_id}{ext}" for ext in (".jpg", ".png", ".jpeg"))
                     if p.is_file()), None)
        if path is None:
            missing.append(image_id)
            continue
        samples.append(Sample(path, AFFECTNET_TO_RAFDB[expression]))
    _check_found(missing, f"AffectNet images annotated in {folder / 'annotations'} are missing from "
                          f"{folder / 'images'}", first="first ids")
    if not samples:
        raise DatasetFormatError(f"{folder / 'annotations'} has no *_exp.npy label of the 7 basic classes")
    return FaceDataset(name, "affectnet", root, split, samples, dict(skipped))


def _affectnet_box(fields: tuple[str, ...]) -> tuple[int, int, int, int] | None:
    """(face_x, face_y, face_width, face_height) as written in the CSV -> ints, or None if any is not a number."""
    try:
        return tuple(int(float(v)) for v in fields)
    except ValueError:
        return None


# -- FERPlus ----------------------------------------------------------------------------------
_FERPLUS_SPLIT = {"train": "FER2013Train", "test": "FER2013Test"}
_FERPLUS_VOTES = ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt",
                  "unknown", "not-a-face")


def read_ferplus(root: str | Path, split: str = "train", name: str = "FERPlus") -> FaceDataset:
    """``root`` holds FER2013Train/ and FER2013Test/ (or is one of them); split "test" is FER2013Test."""
    root = Path(root)
    if split not in _FERPLUS_SPLIT:
        raise ValueError(f"FERPlus split must be 'train' or 'test', not {split!r}")
    folder = root if (root / "label.csv").is_file() else root / _FERPLUS_SPLIT[split]
    label_file = folder / "label.csv"
    if not label_file.is_file():
        raise DatasetFormatError(f"{root} is not a FERPlus folder: no label.csv in it or in {_FERPLUS_SPLIT[split]}/")
    samples, skipped, missing = [], Counter(), []
    for lineno, row in _csv_rows(_read_label_text(label_file)):
        if len(row) != 2 + len(_FERPLUS_VOTES):
            raise DatasetFormatError(f"{label_file}:{lineno}: expected image, box and {len(_FERPLUS_VOTES)} vote "
                                     f"counts, got {len(row)} fields")
        try:
            votes = [float(v) for v in row[2:]]
        except ValueError:
            raise DatasetFormatError(f"{label_file}:{lineno}: vote counts must be numbers: {row[2:]}") from None
        votes = [v if v > 1 else 0.0 for v in votes]  # FERPlus: a single vote is an outlier
        top = max(range(len(votes)), key=votes.__getitem__)
        if votes[top] <= 0.5 * sum(votes):
            skipped["no majority vote"] += 1
            continue
        if top >= 7:
            skipped[f"{_FERPLUS_VOTES[top]} (not one of the 7 classes)"] += 1
            continue
        if not row[0]:
            raise DatasetFormatError(f"{label_file}:{lineno}: no image name in the first field")
        path = folder / row[0]
        if not path.is_file():
            missing.append(row[0])
            continue
        samples.append(Sample(path, class_index(_FERPLUS_VOTES[top]), _ferplus_box(row[1])))
    _check_found(missing, f"FERPlus images listed in {label_file} are missing")
    if not samples:
        raise DatasetFormatError(f"{label_file} has no image with a majority for one of the 7 classes")
    return FaceDataset(name, "ferplus", root, split, samples, dict(skipped))


def _ferplus_box(text: str) -> tuple[int, int, int, int] | None:
    """"(left, top, right, bottom)" -> (x, y, width, height)."""
    try:
        left, top, right, bottom = (int(v) for v in text.strip("() ").split(","))
    except ValueError:
        return None
    return left, top, right - left, bottom - top


# -- class folders -----------------------------------------------------------------------------
def read_folder(root: str | Path, name: str | None = None, class_map: str = "names",
                ignore_classes: tuple[str, ...] = ()) -> FaceDataset:
    """One sub-folder per class (its images found recursively); the split is the folder's own name.

    ``class_map``: how folder names become classes: "names", "alphabetical", "fer2013", "rafdb",
    "affectnet" or 7 comma-separated expression names for folders 0..6 (see the module docstring and
    ``fer_triton.labels.parse_class_map``). ``ignore_classes``: folder names (any case) left out;
    their images are counted in ``skipped``, as are non-image files, images outside class folders and
    the images of numbered folders that are not one of the 7 classes (AffectNet 7..10).
    Raises ValueError for an unknown ``class_map`` value and DatasetFormatError when the folders do
    not fit it (numbered folders without a numbering, unknown names, numbers outside the numbering,
    two folders of one class), naming the folders and what to pass instead.
    """
    root = Path(root)
    chosen = parse_class_map(class_map)
    if not root.is_dir():
        raise DatasetFormatError(f"{root} is not a folder")
    ignored = {c.lower() for c in ignore_classes}
    subfolders = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]  # no .git, .ipynb_*
    unmatched = ignored - {d.name.lower() for d in subfolders}
    if unmatched:
        raise DatasetFormatError(f"{root} has no class folder {', '.join(sorted(unmatched))} to ignore "
                                 f"(its folders: {', '.join(sorted(d.name for d in subfolders))})")
    # Numbered folders in numeric order (2 before 10), the others A..Z ignoring case (the alphabetical map's order).
    folders = sorted((d for d in subfolders if d.name.lower() not in ignored),
                     key=lambda d: (0, int(d.name), d.name) if _is_number(d.name) else (1, d.name.lower(), d.name))
    if not folders:
        raise DatasetFormatError(f"{root} has no class sub-folders")
    mapping, not_used = _folder_labels(root, folders, chosen, class_map)
    samples, skipped = [], Counter()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                skipped["non-image files"] += 1
            elif folder.name in not_used:
                skipped[not_used[folder.name]] += 1
            else:
                samples.append(Sample(path, mapping[folder.name]))
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if loose:
        skipped["images outside class folders"] = len(loose)
    left_out = [d for d in subfolders if d.name.lower() in ignored]
    if left_out:
        skipped[f"in ignored class folders ({', '.join(sorted(d.name for d in left_out))})"] = sum(
            1 for d in left_out for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not samples:
        raise DatasetFormatError(f"the class folders of {root} hold no images")
    label = root.resolve().name  # "." or ".." name nothing
    return FaceDataset(name or label, "folder", root, label, samples, dict(skipped))


def _is_number(folder_name: str) -> bool:
    return re.fullmatch(r"[0-9]+", folder_name) is not None


def _known(folder_name: str) -> int | None:
    try:
        return class_index(folder_name)
    except ValueError:
        return None


def _folder_labels(root: Path, folders: list[Path], chosen: str | dict[int, int],
                   class_map: str) -> tuple[dict[str, int], dict[str, str]]:
    """-> ({folder name: RAF-DB index}, {folder name: why its images are not used}) for ``chosen``
    (a value of ``parse_class_map``; ``class_map`` is the text it came from, for messages)."""
    if isinstance(chosen, dict):
        return _numbered_labels(root, folders, chosen, class_map)
    numbered = [d.name for d in folders if _is_number(d.name)]
    if numbered:
        raise DatasetFormatError(
            f"{root}: class folders {', '.join(numbered)} are numbers, and a number does not say which expression "
            f"it is (class map '{chosen}' reads expression names). Pass the numbering the dataset uses with "
            f"--class-map: {class_map_options()}")
    if chosen == "alphabetical":
        if len(folders) != NUM_CLASSES:
            raise DatasetFormatError(f"alphabetical class map needs exactly {NUM_CLASSES} class folders in {root}, "
                                     f"found {len(folders)}: {', '.join(d.name for d in folders)}")
        mapping = {d.name: ALPHABETICAL_TO_RAFDB[i] for i, d in enumerate(folders)}  # folders: sorted A..Z
        contradicted = [f"{name} would be read as {CLASSES[c]}" for name, c in mapping.items()
                        if _known(name) not in (None, c)]
        if contradicted:
            raise DatasetFormatError(f"{root}: the alphabetical class map gives the 7 folders sorted A..Z the classes "
                                     f"{', '.join(sorted(CLASSES))}, but {'; '.join(contradicted)}: "
                                     "pass --class-map names for folders named after their expressions")
        return mapping, {}
    mapping, unknown = {}, []
    for d in folders:
        index = _known(d.name)
        if index is None:
            unknown.append(d.name)
        else:
            mapping[d.name] = index
    if unknown:
        nested = [d.name for d in folders if any(c.is_dir() for c in d.iterdir())]
        hint = (f"; it looks like a folder of splits ({', '.join(nested)}): point at one of them"
                if nested and len(nested) == len(folders) else
                "; to leave a folder out pass --ignore-class NAME, and if the 7 folders hold Angry, Disgust, Fear, "
                "Happy, Neutral, Sad, Surprise under other names that sort in that order A..Z (SFEW, MMA), pass "
                "--class-map alphabetical")
        raise DatasetFormatError(f"{root}: class folders {', '.join(unknown)} are not expression names "
                                 f"({', '.join(CLASSES)}){hint}")
    _refuse_duplicates(root, mapping)
    return mapping, {}


def _numbered_labels(root: Path, folders: list[Path], numbering: dict[int, int],
                     class_map: str) -> tuple[dict[str, int], dict[str, str]]:
    """Numbered folders read with one numbering of ``fer_triton.labels`` (or an explicit list)."""
    label = class_map.strip().lower()
    not_used_numbers = NUMBERED_NOT_USED.get(label, {})
    described = ", ".join(f"{n} {CLASSES[c]}" for n, c in sorted(numbering.items()))
    words = [d.name for d in folders if not _is_number(d.name)]
    if words:
        raise DatasetFormatError(f"{root}: class map {class_map!r} reads numbered folders ({described}), but "
                                 f"{', '.join(words)} {'is not a number' if len(words) == 1 else 'are not numbers'}; "
                                 "pass --class-map names for folders named after expressions, or --ignore-class "
                                 "NAME to leave a folder out")
    mapping, not_used, outside = {}, {}, []
    for d in folders:
        number = int(d.name)
        if number in numbering:
            mapping[d.name] = numbering[number]
        elif number in not_used_numbers:
            not_used[d.name] = f"{not_used_numbers[number]} (not one of the 7 classes)"
        else:
            outside.append(d.name)
    if outside:
        numbers = [int(d.name) for d in folders]
        hint = ""
        if min(numbers) >= 1 and max(numbers) == NUM_CLASSES and label != "rafdb":
            hint = "; folders 1..7 are RAF-DB's numbering: --class-map rafdb"
        elif min(numbers) == 0 and label == "rafdb":
            hint = "; folders from 0 are not RAF-DB's numbering (1..7): --class-map fer2013 or affectnet?"
        raise DatasetFormatError(f"{root}: class folders {', '.join(outside)} are not numbers of class map "
                                 f"{class_map!r} ({described}){hint}")
    _refuse_duplicates(root, mapping)
    return mapping, not_used


def _refuse_duplicates(root: Path, mapping: dict[str, int]) -> None:
    twice = {c: [name for name, i in mapping.items() if i == c] for c, n in Counter(mapping.values()).items() if n > 1}
    if twice:
        raise DatasetFormatError(f"{root}: several folders map to one class: " + "; ".join(
            f"{', '.join(names)} -> {CLASSES[c]}" for c, names in twice.items()))


# -- specs -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DataSpec:
    name: str
    kind: str
    path: Path


def parse_spec(text: str) -> DataSpec:
    """``[NAME=][KIND:]PATH`` -> DataSpec; the kind is recognised from the layout when not given."""
    name, sep, rest = text.partition("=")
    if not sep or "/" in name or ":" in name:
        name, rest = "", text  # the "=" belongs to the path
    kind, sep, path = rest.partition(":")
    if not sep or kind not in KINDS:
        kind, path = "", rest  # no kind (or a Windows drive letter)
    if not path:
        raise ValueError(f"data spec {text!r} has no path; expected [NAME=][KIND:]PATH with KIND one of {KINDS}")
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetFormatError(f"data spec {text!r}: {path} does not exist")
    kind = kind or detect_kind(path)
    return DataSpec(name or _default_name(kind, path), kind, path)


def detect_kind(path: Path) -> str:
    if (path / "EmoLabel" / RAFDB_LIST).is_file() or (path / RAFDB_LIST).is_file():
        return "rafdb"
    if (path / "label.csv").is_file() or any((path / d / "label.csv").is_file() for d in _FERPLUS_SPLIT.values()):
        return "ferplus"
    if any((path / d / "annotations").is_dir() for d in _AFFECTNET_NPY.values()):
        return "affectnet"
    if path.suffix == ".csv" or any((path / d / f).is_file() for d in (".", "Manually_Annotated_file_lists")
                                    for f in _AFFECTNET_CSV.values()):
        return "affectnet"
    if path.is_dir():
        return "folder"
    raise DatasetFormatError(f"cannot tell what kind of dataset {path} is; write KIND:PATH with KIND one of {KINDS}")


def _default_name(kind: str, path: Path) -> str:
    return {"rafdb": "RAF-DB", "affectnet": "AffectNet", "ferplus": "FERPlus"}.get(kind, path.resolve().name)


def open_dataset(spec: DataSpec, split: str, class_map: str = "names",
                 ignore_classes: tuple[str, ...] = ()) -> FaceDataset:
    """Read ``spec``; ``split`` ("train"/"test") applies to RAF-DB, AffectNet and FERPlus; a folder is its own split."""
    if spec.kind == "rafdb":
        return read_rafdb(spec.path, split, spec.name)
    if spec.kind == "affectnet":
        return read_affectnet(spec.path, split, spec.name)
    if spec.kind == "ferplus":
        return read_ferplus(spec.path, split, spec.name)
    if spec.kind == "folder":
        return read_folder(spec.path, spec.name, class_map, ignore_classes)
    raise ValueError(f"unknown dataset kind {spec.kind!r}; expected one of {KINDS}")


class TorchFaces:
    """A torch-style dataset over a FaceDataset: item -> (pixels [3,224,224], label, index, flipped)."""

    def __init__(self, dataset: FaceDataset, transform):
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        pixels, flipped = self.transform(self.dataset.load(index))
        return pixels, self.dataset.samples[index].label, index, flipped
