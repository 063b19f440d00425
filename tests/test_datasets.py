"""Dataset readers on small fixture trees the tests write; label maps; the paper's augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from fer_triton.cli import cli
from fer_triton.images import ImageReadError, read_image
from fer_triton.labels import (AFFECTNET_TO_RAFDB, ALPHABETICAL_TO_RAFDB, CLASSES, FER2013_TO_RAFDB,
                               RAFDB_LABEL_TO_INDEX, class_index, parse_class_map)
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

    coded = tmp_path / "kdef"  # 7 folders that sort A..Z like Angry..Surprise, under other names
    for i, code in enumerate(["AN", "di", "FE", "ha", "NE", "sa", "SU"]):
        _save(coded / code / "x.png", size=(32, 32))
    ds = read_folder(coded, class_map="alphabetical")
    assert {s.path.parent.name: CLASSES[label] for s, label in zip(ds.samples, ds.labels)} == {
        "AN": "Angry", "di": "Disgust", "FE": "Fear", "ha": "Happy", "NE": "Neutral", "sa": "Sad", "SU": "Surprise"}
    assert sorted(ds.labels.tolist()) == sorted(ALPHABETICAL_TO_RAFDB.values())
    with pytest.raises(DatasetFormatError, match="not expression names .*--class-map alphabetical"):
        read_folder(coded)


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


# -- label files as editors and spreadsheets save them: UTF-8 BOM, CRLF, spaces ----------------------

BOM = "\ufeff"


def _write(path, text):
    """Write ``text`` byte for byte (BOM and CRLF kept) as UTF-8."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode("utf-8"))


def test_rafdb_label_list_with_bom_crlf_and_spaces_reads_every_line(tmp_path):
    root = tmp_path / "raf"
    for stem in ("train_00001", "train_00002", "test_0001", "val_0001"):
        _save(root / "Image" / "aligned" / f"{stem}_aligned.jpg")
    _write(root / "EmoLabel" / "list_patition_label.txt",
           BOM + "train_00001.jpg 5\r\n"        # the first line: lost to the BOM before
           "  test_0001.jpg\t 1 \r\n"
           "\r\n"                                # blank: lists no image
           "train_00002.jpg   7  \r\n"
           "val_0001.jpg 3\r\n")
    train = read_rafdb(root, "train")
    assert [s.path.name for s in train.samples] == ["train_00001_aligned.jpg", "train_00002_aligned.jpg"]
    assert [CLASSES[c] for c in train.labels] == ["Sad", "Neutral"]
    assert train.skipped == {"in the test split": 1, "named neither train_* nor test_*": 1}
    assert "not used: 1 in the test split, 1 named neither train_* nor test_*" in train.describe()
    test = read_rafdb(root, "test")
    assert [s.path.name for s in test.samples] == ["test_0001_aligned.jpg"]
    assert [CLASSES[c] for c in test.labels] == ["Surprise"]
    assert test.skipped == {"in the train split": 2, "named neither train_* nor test_*": 1}
    assert RAFDB_LABEL_TO_INDEX == {label: label - 1 for label in range(1, 8)}


def test_label_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    root = _rafdb(tmp_path / "raf", [("train_00001.jpg", 1)])
    (root / "EmoLabel" / "list_patition_label.txt").write_bytes(b"train_00001.jpg 1\ntrain_\xe900002.jpg 2\n")
    with pytest.raises(DatasetFormatError, match=r"list_patition_label.txt:2: not UTF-8 \(byte 0xe9\)"):
        read_rafdb(root)


def test_ferplus_label_csv_with_bom_crlf_and_spaces_reads_every_line(tmp_path):
    test = tmp_path / "FERPlus" / "FER2013Test"
    for i in range(4):
        _save(test / f"fer{i:07d}.png", mode="L", size=(48, 48))
    _write(test / "label.csv",
           BOM + 'fer0000000.png,"(0, 0, 48, 48)",0,9,1,0,0,0,0,0,0,0\r\n'      # first line: "missing" before
           ' fer0000001.png , "(2, 3, 40, 45)" , 2, 0, 0, 0, 0, 0, 6, 0, 1, 1 \r\n'
           "\r\n"
           'fer0000002.png,"(0, 0, 48, 48)",4,0,0,4,0,0,0,0,2,0\r\n'             # no majority
           'fer0000003.png,"(0, 0, 48, 48)",0,0,0,0,0,0,0,8,2,0\r\n')            # contempt
    ds = read_ferplus(tmp_path / "FERPlus", "test")
    assert [s.path.name for s in ds.samples] == ["fer0000000.png", "fer0000001.png"]
    assert [CLASSES[c] for c in ds.labels] == ["Happy", "Fear"]
    assert [s.box for s in ds.samples] == [(0, 0, 48, 48), (2, 3, 38, 42)]
    assert ds.skipped == {"no majority vote": 1, "contempt (not one of the 7 classes)": 1}
    assert ds.load(1).shape == (42, 38, 3)


def test_affectnet_csv_with_bom_crlf_and_spaces_reads_every_line(tmp_path):
    root = tmp_path / "AffectNet"
    _save(root / "Manually_Annotated_Images" / "1" / "a.jpg", size=(200, 160))
    _save(root / "Manually_Annotated_Images" / "2" / "b.png", size=(64, 64))
    _write(root / "Manually_Annotated_file_lists" / "training.csv",
           BOM + " subDirectory_filePath , face_x, face_y ,face_width, face_height,facial_landmarks , expression ,"
           "valence,arousal\r\n"
           " 1/a.jpg , 20 , 10 , 120 , 100 ,, 1 , 0.5, 0.2\r\n"
           "2/b.png,0,0,64,64,,6,0.1,0.1\r\n"
           "\r\n"
           "2/b.png,0,0,64,64,,7,0,0\r\n"
           "2/b.png,0,0,64,64,,9,0,0\r\n"
           "2/b.png,0,0,64,64,,7,0,0\r\n")
    ds = read_affectnet(root, "train")
    assert [s.path.relative_to(root / "Manually_Annotated_Images").as_posix() for s in ds.samples] == \
        ["1/a.jpg", "2/b.png"]
    assert [CLASSES[c] for c in ds.labels] == ["Happy", "Angry"]
    assert [s.box for s in ds.samples] == [(20, 10, 120, 100), (0, 0, 64, 64)]
    assert ds.skipped == {"contempt (not one of the 7 classes)": 2, "uncertain (not one of the 7 classes)": 1}
    assert ds.load(0).shape == (100, 120, 3)
    _write(root / "Manually_Annotated_file_lists" / "training.csv", BOM + "path;expression\r\n1/a.jpg;1\r\n")
    with pytest.raises(DatasetFormatError, match=r"must name the columns subDirectory_filePath, expression .*"
                                                 r"it names 'path;expression'"):
        read_affectnet(root, "train")


def test_dataset_images_go_through_the_one_reader(tmp_path):
    root = tmp_path / "site"
    _save(root / "Happy" / "a.png", mode="RGB", size=(40, 30))
    (root / "Sad").mkdir()
    Image.new("LA", (20, 10), (200, 128)).save(root / "Sad" / "la.png")
    Image.new("1", (14000, 14000)).save(root / "Sad" / "bomb.png")  # 24 KB, 196 megapixels
    ds = read_folder(root)
    names = [s.path.name for s in ds.samples]
    for i, sample in enumerate(ds.samples):
        if sample.path.name != "bomb.png":
            np.testing.assert_array_equal(ds.load(i), read_image(sample.path))
    assert ds.load(names.index("la.png"))[0, 0].tolist() == [100, 100, 100]  # grey 200 at alpha 128 over black
    with pytest.raises(ImageReadError, match=r"bomb.png: .*(pixel limit|decompression-bomb limit)"):
        ds.load(names.index("bomb.png"))


# -- numbered class folders: the numbering is said, never guessed ------------------------------------

FER2013_FOLDERS = {"0": "Angry", "1": "Disgust", "2": "Fear", "3": "Happy", "4": "Sad", "5": "Surprise", "6": "Neutral"}
RAFDB_FOLDERS = {"1": "Surprise", "2": "Fear", "3": "Disgust", "4": "Happy", "5": "Sad", "6": "Angry", "7": "Neutral"}
AFFECTNET_FOLDERS = {"0": "Neutral", "1": "Happy", "2": "Sad", "3": "Surprise", "4": "Fear", "5": "Disgust",
                     "6": "Angry"}


def _numbered(root, numbers):
    for n in numbers:
        _save(root / n / "a.png", size=(16, 16))
        _save(root / n / "b.png", size=(16, 16))
    return root


def _labels_per_folder(ds):
    found = {}
    for sample, label in zip(ds.samples, ds.labels):
        found.setdefault(sample.path.parent.name, set()).add(CLASSES[label])
    return {folder: labels.pop() if len(labels) == 1 else labels for folder, labels in found.items()}


@pytest.mark.parametrize("class_map,folders", [
    ("fer2013", FER2013_FOLDERS),
    ("rafdb", RAFDB_FOLDERS),
    ("affectnet", AFFECTNET_FOLDERS),
    ("AffectNet", AFFECTNET_FOLDERS),
    ("surprise,fear,disgust,happy,sad,angry,neutral", dict(zip("0123456", CLASSES))),
    (" Anger, disgusted , FEAR,happiness,sadness,surprised,calm", FER2013_FOLDERS),
], ids=["fer2013", "rafdb", "affectnet", "any-case", "list-rafdb-order", "list-synonyms"])
def test_numbered_folders_read_with_their_numbering(tmp_path, class_map, folders):
    ds = read_folder(_numbered(tmp_path / "faces", folders), class_map=class_map)
    assert _labels_per_folder(ds) == folders
    assert len(ds) == 14 and ds.skipped == {}


def test_affectnet_numbering_counts_contempt_and_the_rest_as_not_used(tmp_path):
    root = _numbered(tmp_path / "affectnet", list(AFFECTNET_FOLDERS) + ["7", "10"])
    ds = read_folder(root, class_map="affectnet")
    assert _labels_per_folder(ds) == AFFECTNET_FOLDERS
    assert ds.skipped == {"contempt (not one of the 7 classes)": 2, "no-face (not one of the 7 classes)": 2}
    assert "not used: 2 contempt (not one of the 7 classes)" in ds.describe()
    assert _labels_per_folder(read_folder(root, class_map="affectnet", ignore_classes=("7", "10"))) == AFFECTNET_FOLDERS


def test_numbered_maps_agree_with_their_numberings():
    assert {int(n): class_index(name) for n, name in FER2013_FOLDERS.items()} == FER2013_TO_RAFDB
    assert {int(n): class_index(name) for n, name in RAFDB_FOLDERS.items()} == RAFDB_LABEL_TO_INDEX
    assert {int(n): class_index(name) for n, name in AFFECTNET_FOLDERS.items()} == AFFECTNET_TO_RAFDB
    assert parse_class_map("fer2013") == FER2013_TO_RAFDB and parse_class_map(" Names ") == "names"


@pytest.mark.parametrize("class_map", ["names", "alphabetical"])
@pytest.mark.parametrize("numbers", [list(FER2013_FOLDERS), list(RAFDB_FOLDERS)], ids=["0-6", "1-7"])
def test_numbered_folders_without_a_numbering_are_refused(tmp_path, class_map, numbers):
    root = _numbered(tmp_path / "faces", numbers)
    with pytest.raises(DatasetFormatError) as error:
        read_folder(root, class_map=class_map)
    message = str(error.value)
    assert f"class folders {', '.join(numbers)} are numbers" in message
    for option in ("'fer2013' (0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, 6 Neutral)",
                   "'rafdb' (1 Surprise, 2 Fear, 3 Disgust, 4 Happy, 5 Sad, 6 Angry, 7 Neutral)",
                   "'affectnet' (0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Angry; 7 contempt",
                   "angry,disgust,fear,happy,sad,surprise,neutral"):
        assert option in message


def test_numbered_folders_outside_the_numbering_are_refused_with_a_hint(tmp_path):
    one_to_seven = _numbered(tmp_path / "raf", list(RAFDB_FOLDERS))
    with pytest.raises(DatasetFormatError, match=r"folders 7 are not numbers of class map 'fer2013' "
                                                 r".*folders 1..7 are RAF-DB's numbering: --class-map rafdb"):
        read_folder(one_to_seven, class_map="fer2013")
    with pytest.raises(DatasetFormatError, match=r"folders 7 are not numbers of class map 'angry,disgust"):
        read_folder(one_to_seven, class_map="angry,disgust,fear,happy,sad,surprise,neutral")
    zero_to_six = _numbered(tmp_path / "fer", list(FER2013_FOLDERS))
    with pytest.raises(DatasetFormatError, match=r"folders 0 are not numbers of class map 'rafdb' .*fer2013"):
        read_folder(zero_to_six, class_map="rafdb")
    _save(zero_to_six / "Happy" / "c.png")
    with pytest.raises(DatasetFormatError, match=r"reads numbered folders .* but Happy is not a number"):
        read_folder(zero_to_six, class_map="fer2013")
    _save(zero_to_six / "01" / "c.png")
    with pytest.raises(DatasetFormatError, match=r"several folders map to one class: 01, 1 -> Disgust"):
        read_folder(zero_to_six, class_map="fer2013", ignore_classes=("happy",))


@pytest.mark.parametrize("class_map,message", [
    ("angry,disgust,fear,happy,sad,surprise,smirk", r"'smirk' is not an expression"),
    ("angry,disgust,fear,happy,sad,surprise", r"names 6 classes; .* needs exactly 7"),
    ("angry,disgust,fear,happy,sad,surprise,anger", r"gives Angry more than once \(and Neutral never\)"),
    ("fer2031", r"unknown class map 'fer2031'; expected 'names'"),
], ids=["unknown-name", "six-names", "twice", "unknown-keyword"])
def test_a_bad_class_map_is_refused_by_name(tmp_path, class_map, message):
    root = _numbered(tmp_path / "faces", list(FER2013_FOLDERS))
    with pytest.raises(ValueError, match=message):
        read_folder(root, class_map=class_map)
    result = CliRunner().invoke(cli, ["train", "-d", f"folder:{root}", "--class-map", class_map,
                                      "-o", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--class-map" in result.output
    assert class_map.rsplit(",", 1)[-1] in result.output
    assert not (tmp_path / "run").exists()


def test_alphabetical_map_refuses_expression_folders_it_would_mislabel(tmp_path):
    root = tmp_path / "faces"
    for folder in ("Angry", "calm", "Disgust", "Fear", "Happy", "Sad", "Surprise"):  # calm (Neutral) sorts 2nd
        _save(root / folder / "a.png", size=(16, 16))
    with pytest.raises(DatasetFormatError, match=r"calm would be read as Disgust; Disgust would be read as Fear"):
        read_folder(root, class_map="alphabetical")
    assert _labels_per_folder(read_folder(root)) == {"Angry": "Angry", "calm": "Neutral", "Disgust": "Disgust",
                                                     "Fear": "Fear", "Happy": "Happy", "Sad": "Sad",
                                                     "Surprise": "Surprise"}


def test_train_command_explains_numbered_folders(tmp_path):
    root = _numbered(tmp_path / "faces", list(FER2013_FOLDERS))
    result = CliRunner().invoke(cli, ["train", "-d", f"folder:{root}", "--class-map", "alphabetical",
                                      "-o", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert "are numbers" in result.output and "'fer2013' (0 Angry" in result.output
    assert not (tmp_path / "run").exists()


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
