"""Dataset readers on small fixture trees the tests write; label maps; the paper's augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fer_triton.cli import cli
from fer_triton.labels import AFFECTNET_TO_RAFDB, ALPHABETICAL_TO_RAFDB, CLASSES, class_index
from fer_triton.train.augment import PaperAugment, to_model_tensor
from fer_triton.train.datasets import (DatasetFormatError, open_dataset, parse_spec, read_affectnet, read_ferplus,
                                       read_folder, read_rafdb)

RED = (220, 30, 10)


def _save(path, color=RED, size=(100, 100), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)


def _rafdb(root, rows):
    (root / "EmoLabel").mkdir(parents=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("".join(f"{n} {lab}\n" for n, lab in rows))
    for name, _ in rows:
        _save(root / "Image" / "aligned" / f"{name.split('.')[0]}_aligned.jpg")
    return root


def test_rafdb_reader_splits_by_prefix_and_shifts_labels(tmp_path):
    root = _rafdb(tmp_path / "raf-basic", [("train_00001.jpg", 1), ("train_00002.jpg", 7), ("test_0001.jpg", 4),
                                           ("train_00003.jpg", 5)])
    train = read_rafdb(root, "train")
    test = read_rafdb(root, "test")
    assert [s.path.name for s in train.samples] == ["train_00001_aligned.jpg", "train_00002_aligned.jpg",
                                                    "train_00003_aligned.jpg"]
    assert train.labels.tolist() == [0, 6, 4] and test.labels.tolist() == [3]
    assert CLASSES[train.labels[1]] == "Neutral"  # RAF-DB label 7
    image = train.load(0)
    assert image.shape == (100, 100, 3) and image.dtype == np.uint8
    r, g, b = image.reshape(-1, 3).mean(axis=0)
    assert r > 180 and b < 60  # RGB order, not OpenCV's BGR
    spec = parse_spec(f"{root}")
    assert (spec.kind, spec.name) == ("rafdb", "RAF-DB")
    assert len(open_dataset(spec, "test")) == 1


def test_rafdb_reader_names_what_is_wrong(tmp_path):
    root = _rafdb(tmp_path / "raf", [("train_00001.jpg", 1), ("train_00002.jpg", 2)])
    (root / "Image" / "aligned" / "train_00002_aligned.jpg").unlink()
    with pytest.raises(DatasetFormatError, match="1 RAF-DB train images .* missing .*train_00002_aligned.jpg"):
        read_rafdb(root)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("train_00001.jpg 8\n")
    with pytest.raises(DatasetFormatError, match=r"list_patition_label.txt:1: expected .*label 1..7"):
        read_rafdb(root)
    with pytest.raises(DatasetFormatError, match="not a RAF-DB"):
        read_rafdb(tmp_path)


def test_affectnet_reader_maps_seven_classes_crops_faces_and_counts_the_rest(tmp_path):
    root = tmp_path / "AffectNet"
    images = root / "Manually_Annotated_Images"
    _save(images / "1" / "a.jpg", size=(200, 160))
    _save(images / "1" / "b.png", size=(64, 64))
    _save(images / "2" / "c.png", size=(64, 64))
    header = "subDirectory_filePath,face_x,face_y,face_width,face_height,facial_landmarks,expression,valence,arousal\n"
    rows = ["1/a.jpg,20,10,120,100,,1,0.5,0.2",   # Happy, full photo: cropped to the face box
            "1/b.png,0,0,64,64,,6,0.1,0.1",      # Anger, already a face crop
            "2/c.png,0,0,64,64,,7,0,0",          # Contempt: not one of the 7 classes
            "2/c.png,0,0,64,64,,10,0,0"]         # no face
    (root / "Manually_Annotated_file_lists").mkdir(parents=True)
    (root / "Manually_Annotated_file_lists" / "validation.csv").write_text(header + "\n".join(rows) + "\n")
    ds = read_affectnet(root, "test")
    assert ds.labels.tolist() == [AFFECTNET_TO_RAFDB[1], AFFECTNET_TO_RAFDB[6]]
    assert [CLASSES[c] for c in ds.labels] == ["Happy", "Angry"]
    assert ds.load(0).shape == (100, 120, 3) and ds.load(1).shape == (64, 64, 3)
    assert sum(ds.skipped.values()) == 2 and "contempt (not one of the 7 classes)" in ds.skipped
    assert parse_spec(str(root)).kind == "affectnet"
    with pytest.raises(DatasetFormatError, match="no training.csv"):
        read_affectnet(root, "train")
    (root / "Manually_Annotated_file_lists" / "validation.csv").write_text("path,label\nx.png,1\n")
    with pytest.raises(DatasetFormatError, match="not an AffectNet annotation file"):
        read_affectnet(root, "test")


def test_affectnet_reader_reads_the_cropped_release_with_npy_labels(tmp_path):
    val = tmp_path / "AffectNet" / "val_set"
    for image_id, expression in (("0", 3), ("1", 5), ("2", 7)):
        _save(val / "images" / f"{image_id}.jpg", size=(224, 224))
        (val / "annotations").mkdir(parents=True, exist_ok=True)
        np.save(val / "annotations" / f"{image_id}_exp.npy", np.array(str(expression)))
    spec = parse_spec(str(tmp_path / "AffectNet"))
    ds = open_dataset(spec, "test")
    assert (spec.kind, ds.split) == ("affectnet", "test")
    assert [CLASSES[c] for c in ds.labels] == ["Surprise", "Disgust"]
    assert ds.skipped == {"contempt (not one of the 7 classes)": 1}
    (val / "images" / "1.jpg").unlink()
    with pytest.raises(DatasetFormatError, match="1 AffectNet images annotated .* missing .*first ids: 1"):
        read_affectnet(tmp_path / "AffectNet", "test")


def test_ferplus_reader_takes_the_majority_vote_and_reports_the_rest(tmp_path):
    test = tmp_path / "FERPlus" / "FER2013Test"
    for i in range(5):
        _save(test / f"fer{i:07d}.png", mode="L", size=(48, 48))
    #        neutral happiness surprise sadness anger disgust fear contempt unknown NF
    rows = ["fer0000000.png,\"(0, 0, 48, 48)\",0,9,1,0,0,0,0,0,0,0",   # Happy (the single surprise vote is dropped)
            "fer0000001.png,\"(0, 0, 48, 48)\",2,0,0,0,0,0,6,0,1,1",   # Fear: 6 of 8 counted votes
            "fer0000002.png,\"(0, 0, 48, 48)\",4,0,0,4,0,0,0,0,2,0",   # no majority (4 of 10)
            "fer0000003.png,\"(0, 0, 48, 48)\",0,0,0,0,0,0,0,8,2,0",   # contempt
            "fer0000004.png,\"(0, 0, 48, 48)\",0,0,0,0,0,0,0,0,0,10"]  # not a face
    (test / "label.csv").write_text("\n".join(rows) + "\n")
    ds = read_ferplus(tmp_path / "FERPlus", "test")
    assert [CLASSES[c] for c in ds.labels] == ["Happy", "Fear"]
    assert ds.skipped == {"no majority vote": 1, "contempt (not one of the 7 classes)": 1,
                          "not-a-face (not one of the 7 classes)": 1}
    assert ds.load(0).shape == (48, 48, 3)  # grayscale FER2013 pixels replicated to RGB
    spec = parse_spec(str(tmp_path / "FERPlus"))
    assert (spec.kind, spec.name) == ("ferplus", "FERPlus")
    (test / "label.csv").write_text("fer0000000.png,0,9\n")
    with pytest.raises(DatasetFormatError, match=r"label.csv:1: expected image, box and 10 vote counts"):
        read_ferplus(tmp_path / "FERPlus", "test")


def test_folder_reader_maps_names_alphabetical_order_and_reads_rgb(tmp_path):
    named = tmp_path / "site"
    for i, folder in enumerate(["happiness", "ANGRY", "Neutral"]):
        _save(named / folder / f"{i}.png", size=(48, 40))
    _save(named / "Neutral" / "gray.png", mode="L", size=(30, 30))
    (named / "Neutral" / "notes.txt").write_text("not an image")
    ds = read_folder(named)
    assert sorted(CLASSES[c] for c in ds.labels) == ["Angry", "Happy", "Neutral", "Neutral"]
    gray = ds.load([s.path.name for s in ds.samples].index("gray.png"))
    assert gray.shape == (30, 30, 3)
    assert ds.skipped == {"non-image files": 1}  # reported, not silently dropped

    numbered = tmp_path / "mma"
    for i in range(7):
        _save(numbered / str(i) / "x.png", size=(32, 32))
    ds = read_folder(numbered, class_map="alphabetical")
    assert sorted(zip([s.path.parent.name for s in ds.samples], ds.labels.tolist())) == \
        [(str(i), ALPHABETICAL_TO_RAFDB[i]) for i in range(7)]
    with pytest.raises(DatasetFormatError, match="not expression names"):
        read_folder(numbered)


def test_folder_reader_explains_split_folders_and_unknown_classes(tmp_path):
    sfew = tmp_path / "SFEW"
    for split in ("Train", "Val"):
        _save(sfew / split / "Happy" / "a.png")
    with pytest.raises(DatasetFormatError, match="folder of splits .*point at one of them"):
        read_folder(sfew)
    assert len(read_folder(sfew / "Val")) == 1

    ferplus = tmp_path / "ferplus"
    for folder in ("Happy", "Sad", "Contempt"):
        _save(ferplus / folder / "a.png")
    _save(ferplus / "Contempt" / "b.png")
    with pytest.raises(DatasetFormatError, match="Contempt are not expression names"):
        read_folder(ferplus)
    ds = read_folder(ferplus, ignore_classes=("contempt",))
    assert len(ds) == 2 and ds.skipped == {"in ignored class folders (Contempt)": 2}
    with pytest.raises(DatasetFormatError, match="no class folder disgust to ignore"):
        read_folder(ferplus, ignore_classes=("contempt", "disgust"))


def test_label_maps_agree_with_class_names():
    alphabetical = sorted(CLASSES)
    assert alphabetical == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad", "Surprise"]
    assert {i: class_index(n) for i, n in enumerate(alphabetical)} == ALPHABETICAL_TO_RAFDB
    affectnet_names = ["Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger"]
    assert {i: class_index(n) for i, n in enumerate(affectnet_names)} == AFFECTNET_TO_RAFDB


def test_data_specs_name_kind_and_path(tmp_path):
    _save(tmp_path / "faces" / "Sad" / "a.png")
    spec = parse_spec(f"Site A=folder:{tmp_path / 'faces'}")
    assert (spec.name, spec.kind, spec.path) == ("Site A", "folder", tmp_path / "faces")
    assert parse_spec(str(tmp_path / "faces")).kind == "folder"
    with pytest.raises(DatasetFormatError, match="does not exist"):
        parse_spec(f"rafdb:{tmp_path / 'missing'}")
    with pytest.raises(DatasetFormatError, match="not a RAF-DB"):
        open_dataset(parse_spec(f"rafdb:{tmp_path / 'faces'}"), "train")


def test_train_command_refuses_a_dataset_that_does_not_match_its_reader(tmp_path):
    _save(tmp_path / "faces" / "Sad" / "a.png")
    result = CliRunner().invoke(cli, ["train", "-d", f"rafdb:{tmp_path / 'faces'}", "-o", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "is not a RAF-DB (basic) folder" in result.output
    assert not (tmp_path / "run").exists()


def test_paper_augment_order_and_flip_flag():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 100, 3), dtype=np.uint8)
    clean = to_model_tensor(image)
    assert clean.shape == (3, 224, 224)
    flipped, was_flipped = PaperAugment(noise_p=0, flip_p=1, erase_p=0)(image)
    assert was_flipped and torch.equal(flipped, clean.flip(-1))
    torch.manual_seed(0)
    noisy, was_flipped = PaperAugment(noise_p=1, flip_p=0, erase_p=0)(image)
    assert not was_flipped
    diff = (noisy - clean).abs()
    assert 0 < diff.mean() < 0.2  # sqrt(30) ~ 5.5 grey levels of noise, after resizing and normalising
    erased, _ = PaperAugment(noise_p=0, flip_p=0, erase_p=1)(image)
    changed = (erased != clean).any(dim=0).float().mean().item()
    assert 0.02 * 0.9 <= changed <= 0.25  # RandomErasing scale 0.02..0.25 of the area
