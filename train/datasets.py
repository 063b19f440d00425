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
- ``folder``: one sub-folder per class (SFEW 2.0, MMA, a site's own images). Class folders named
  after the expressions (any case, common synonyms) map by name; ``class_map="alphabetical"`` maps
  the 7 sorted folders with ALPHABETICAL_TO_RAFDB (for folders named 0..6 and the like).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_triton.images import IMAGE_SUFFIXES, ImageReadError
from fer_triton.labels import AFFECTNET_TO_RAFDB, ALPHABETICAL_TO_RAFDB, CLASSES, NUM_CLASSES, class_index

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
    """Read any image as UINT8 RGB (grayscale expanded, alpha over black, EXIF orientation applied)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
            if image.mode in ("RGBA", "LA", "P"):
                image = image.convert("RGBA")
                image = Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image)
            image = image.convert("RGB")
    except FileNotFoundError as exc:
        raise ImageReadError(f"{path}: no such file") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageReadError(f"{path}: not a readable image ({exc})") from exc
    if box is not None:
        x, y, w, h = box
        # AffectNet boxes refer to the full photo; an already-cropped face is used as it is.
        if w > 0 and h > 0 and x + w <= image.width and y + h <= image.height and (w, h) != image.size:
            image = image.crop((x, y, x + w, y + h))
    return np.asarray(image, dtype=np.uint8)


def _check_found(missing: list[str], what: str, first: str = "first") -> None:
    """Raise naming how many listed images are missing, and the first few, when any is."""
    if missing:
        raise DatasetFormatError(f"{len(missing)} {what} ({first}: {', '.join(missing[:3])})")


# -- RAF-DB ------------------------------------------------------------------------------------
def read_rafdb(root: str | Path, split: str = "train", name: str = "RAF-DB") -> FaceDataset:
    root = Path(root)
    if split not in ("train", "test"):
        raise ValueError(f"RAF-DB split must be 'train' or 'test', not {split!r}")
    label_file = next((p for p in (root / "EmoLabel" / RAFDB_LIST, root / RAFDB_LIST) if p.is_file()), None)
    image_dir = next((p for p in (root / "Image" / "aligned", root / "aligned") if p.is_dir()), None)
    if label_file is None or image_dir is None:
        raise DatasetFormatError(
            f"{root} is not a RAF-DB (basic) folder: expected EmoLabel/{RAFDB_LIST} and Image/aligned/ "
            f"(found label list: {label_file or 'no'}, aligned images: {image_dir or 'no'})")
    samples, missing = [], []
    for lineno, line in enumerate(label_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit() or not 1 <= int(parts[1]) <= NUM_CLASSES:
            raise DatasetFormatError(f"{label_file}:{lineno}: expected '<image name> <label 1..7>', got {line!r}")
        image_name, label = parts[0], int(parts[1]) - 1
        if not image_name.startswith(split):
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
    return FaceDataset(name, "rafdb", root, split, samples)


# -- AffectNet ---------------------------------------------------------------------------------
_AFFECTNET_CSV = {"train": "training.csv", "test": "validation.csv"}
_AFFECTNET_NPY = {"train": "train_set", "test": "val_set"}
_AFFECTNET_NOT_7_CLASSES = {7: "contempt", 8: "none", 9: "uncertain", 10: "no-face"}


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
    with csv_path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        needed = {"subDirectory_filePath", "expression"}
        if not reader.fieldnames or not needed <= set(reader.fieldnames):
            raise DatasetFormatError(f"{csv_path} is not an AffectNet annotation file: needs columns "
                                     f"{sorted(needed)}, has {reader.fieldnames}")
        for lineno, row in enumerate(reader, 2):
            try:
                expression = int(row["expression"])
            except (TypeError, ValueError):
                raise DatasetFormatError(f"{csv_path}:{lineno}: expression {row['expression']!r} is not a number")
            if expression in _AFFECTNET_NOT_7_CLASSES:
                skipped[f"{_AFFECTNET_NOT_7_CLASSES[expression]} (not one of the 7 classes)"] += 1
                continue
            if expression not in AFFECTNET_TO_RAFDB:
                raise DatasetFormatError(f"{csv_path}:{lineno}: expression {expression} is not an AffectNet "
                                         "label 0..10")
            rel = row["subDirectory_filePath"]
            path = next((d / rel for d in image_dirs if (d / rel).is_file()), None)
            if path is None:
                missing.append(rel)
                continue
            samples.append(Sample(path, AFFECTNET_TO_RAFDB[expression], _affectnet_box(row)))
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
        if expression in _AFFECTNET_NOT_7_CLASSES:
            skipped[f"{_AFFECTNET_NOT_7_CLASSES[expression]} (not one of the 7 classes)"] += 1
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


def _affectnet_box(row: dict) -> tuple[int, int, int, int] | None:
    try:
        return tuple(int(float(row[k])) for k in ("face_x", "face_y", "face_width", "face_height"))
    except (KeyError, TypeError, ValueError):
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
    with label_file.open(newline="") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            if not row:
                continue
            if len(row) != 2 + len(_FERPLUS_VOTES):
                raise DatasetFormatError(f"{label_file}:{lineno}: expected image, box and {len(_FERPLUS_VOTES)} vote "
                                         f"counts, got {len(row)} fields")
            try:
                votes = [float(v) for v in row[2:]]
            except ValueError:
                raise DatasetFormatError(f"{label_file}:{lineno}: vote counts must be numbers: {row[2:]}")
            votes = [v if v > 1 else 0.0 for v in votes]  # FERPlus: a single vote is an outlier
            top = max(range(len(votes)), key=votes.__getitem__)
            if votes[top] <= 0.5 * sum(votes):
                skipped["no majority vote"] += 1
                continue
            if top >= 7:
                skipped[f"{_FERPLUS_VOTES[top]} (not one of the 7 classes)"] += 1
                continue
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
    """One sub-folder per class. ``class_map``: "names" (folder names are expressions) or "alphabetical"."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{root} is not a folder")
    ignored = {c.lower() for c in ignore_classes}
    subfolders = [d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]  # no .git, .ipynb_*
    unmatched = ignored - {d.name.lower() for d in subfolders}
    if unmatched:
        raise DatasetFormatError(f"{root} has no class folder {', '.join(sorted(unmatched))} to ignore "
                                 f"(its folders: {', '.join(sorted(d.name for d in subfolders))})")
    folders = sorted(d for d in subfolders if d.name.lower() not in ignored)
    if not folders:
        raise DatasetFormatError(f"{root} has no class sub-folders")
    mapping = _folder_labels(root, folders, class_map)
    samples, skipped = [], Counter()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                samples.append(Sample(path, mapping[folder.name]))
            else:
                skipped["non-image files"] += 1
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


def _folder_labels(root: Path, folders: list[Path], class_map: str) -> dict[str, int]:
    if class_map == "alphabetical":
        if len(folders) != NUM_CLASSES:
            raise DatasetFormatError(f"alphabetical class map needs exactly {NUM_CLASSES} class folders in {root}, "
                                     f"found {len(folders)}: {', '.join(d.name for d in folders)}")
        return {d.name: ALPHABETICAL_TO_RAFDB[i] for i, d in enumerate(folders)}
    if class_map != "names":
        raise ValueError(f"class_map must be 'names' or 'alphabetical', not {class_map!r}")
    mapping, unknown = {}, []
    for d in folders:
        try:
            mapping[d.name] = class_index(d.name)
        except ValueError:
            unknown.append(d.name)
    if unknown:
        nested = [d.name for d in folders if any(c.is_dir() for c in d.iterdir())]
        hint = (f"; it looks like a folder of splits ({', '.join(nested)}): point at one of them"
                if nested and len(nested) == len(folders) else
                "; use class_map 'alphabetical' for 7 folders in Angry..Surprise order, or ignore those classes")
        raise DatasetFormatError(f"{root}: class folders {', '.join(unknown)} are not expression names "
                                 f"({', '.join(CLASSES)}){hint}")
    duplicates = [c for c, n in Counter(mapping.values()).items() if n > 1]
    if duplicates:
        raise DatasetFormatError(f"{root}: several folders map to {', '.join(CLASSES[c] for c in duplicates)}")
    return mapping


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
