"""Site data for `retrain`: CSVs as spreadsheets and editors save them, and unreadable images (no server)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from fer_triton.images import read_face
from fer_triton.labels import CLASSES
from fer_triton.retrain.site_data import SiteDataError, read_site

BOM = "\ufeff"


def _image(path, value):
    """An 8x8 image of one grey ``value`` (tells the faces apart after decoding)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)
    return path


def _csv(tmp_path, text, encoding="utf-8"):
    """labels.csv holding ``text`` byte for byte (BOM and CRLF as written) beside faces/a.png, b.png, c.png."""
    for name, value in (("a.png", 10), ("b.png", 20), ("c.png", 30)):
        _image(tmp_path / "faces" / name, value)
    path = tmp_path / "labels.csv"
    path.write_bytes(text.encode(encoding))
    return path


# -- what a spreadsheet or editor saves: tolerated ----------------------------------------------------

def test_csv_with_bom_crlf_and_spaces_reads_the_exact_paths_and_labels(tmp_path):
    path = _csv(tmp_path, BOM + " Path , LABEL \r\n"
                               " faces/a.png , happy \r\n"
                               "\r\n"
                               'faces/b.png,"Sad "\r\n'
                               "faces/c.png ,  Neutral\r\n")
    site = read_site(path)
    assert site.paths == [tmp_path / "faces" / n for n in ("a.png", "b.png", "c.png")]
    assert [CLASSES[c] for c in site.labels] == ["Happy", "Sad", "Neutral"]
    assert site.labels.dtype == np.int64 and site.source == path


def test_csv_with_other_columns_and_line_numbers_counted_as_in_the_file(tmp_path):
    path = _csv(tmp_path, "camera,label,path\r\n3,happy,faces/a.png\r\n\r\n4,Smirk,faces/b.png\r\n")
    with pytest.raises(SiteDataError, match=r"labels.csv line 4: unknown expression class 'Smirk'"):
        read_site(path)


# -- what to change, named ----------------------------------------------------------------------------

def test_semicolon_separated_csv_says_to_save_it_comma_separated(tmp_path):
    path = _csv(tmp_path, "path;label\r\nfaces/a.png;happy\r\n")
    with pytest.raises(SiteDataError, match=r"^labels.csv uses ';' between columns: save it comma-separated"):
        read_site(path)
    path.write_text("path,label\nfaces/a.png,happy\nfaces/b.png;sad\n")
    with pytest.raises(SiteDataError, match=r"^labels.csv line 3 uses ';' between columns: save it comma-separated"):
        read_site(path)


def test_tab_separated_csv_says_to_save_it_comma_separated(tmp_path):
    path = _csv(tmp_path, "path\tlabel\nfaces/a.png\thappy\n")
    with pytest.raises(SiteDataError, match=r"^labels.csv uses tabs between columns: save it comma-separated"):
        read_site(path)


def test_backslash_paths_say_to_write_paths_with_slashes(tmp_path):
    path = _csv(tmp_path, "path,label\nfaces/a.png,happy\nfaces\\b.png,sad\nfaces\\c.png,neutral\n")
    with pytest.raises(SiteDataError) as error:
        read_site(path)
    message = str(error.value)
    assert "2 path(s) written with backslashes" in message
    assert "line 3: path 'faces\\b.png' uses backslashes: write paths with '/'" in message
    assert "line 4: path 'faces\\c.png' uses backslashes: write paths with '/'" in message


@pytest.mark.parametrize("encoding,bom", [("utf-16", "FF FE"), ("utf-16-be", "FE FF"), ("utf-32", "FF FE 00 00")])
def test_utf16_csv_says_to_save_it_as_utf8(tmp_path, encoding, bom):
    text = "path,label\nfaces/a.png,happy\n"
    path = _csv(tmp_path, ("\ufeff" + text) if encoding == "utf-16-be" else text, encoding)
    kind = encoding.upper()[:6]
    with pytest.raises(SiteDataError, match=rf"^labels.csv is {kind} \(byte-order mark {bom}\): save it as UTF-8"):
        read_site(path)


def test_utf16_without_bom_says_to_save_it_as_utf8(tmp_path):
    path = _csv(tmp_path, "path,label\nfaces/a.png,happy\n", "utf-16-le")
    with pytest.raises(SiteDataError, match=r"^labels.csv holds NUL bytes .*UTF-16.*: save it as UTF-8"):
        read_site(path)


def test_cp1252_csv_names_the_byte_and_line_and_says_to_save_it_as_utf8(tmp_path):
    _image(tmp_path / "faces" / "é.png", 40)
    path = _csv(tmp_path, "path,label\nfaces/a.png,happy\nfaces/b.png,sad\nfaces/\u00e9.png,neutral\n", "cp1252")
    with pytest.raises(SiteDataError, match=r"^labels.csv is not UTF-8 \(byte 0xe9 at line 4; cp1252\?\): "
                                            r"save it as UTF-8"):
        read_site(path)
    path.write_text("path,label\nfaces/\u00e9.png,neutral\n", encoding="utf-8")  # the same, saved as UTF-8
    assert read_site(path).paths == [tmp_path / "faces" / "\u00e9.png"]


# -- unreadable images: named with their reason, the others used ---------------------------------------

def test_read_faces_names_a_decompression_bomb_and_returns_the_good_faces(tmp_path):
    for folder, name, value in (("Happy", "a.png", 10), ("Happy", "b.jpg", 20), ("Sad", "c.png", 30),
                                ("Sad", "d.png", 40), ("Neutral", "e.png", 50)):
        _image(tmp_path / folder / name, value)
    bomb = tmp_path / "Sad" / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)  # 24 KB on disk, 196 megapixels decoded
    assert bomb.stat().st_size < 100_000
    (tmp_path / "Happy" / "broken.png").write_bytes(b"not a png")
    site = read_site(tmp_path)
    assert len(site) == 7

    read = site.read_faces(16)
    assert [p.name for p in read.site.paths] == ["a.png", "b.jpg", "e.png", "c.png", "d.png"]
    assert [CLASSES[c] for c in read.labels] == ["Happy", "Happy", "Neutral", "Sad", "Sad"]
    assert read.faces.shape == (5, 16, 16, 3) and read.faces.dtype == np.uint8
    for face, path in zip(read.faces, read.site.paths):
        np.testing.assert_array_equal(face, read_face(path, 16))
    assert read.site.source == tmp_path and read.site.counts()["Sad"] == 2
    assert [p for p, _ in read.skipped] == [tmp_path / "Happy" / "broken.png", bomb]
    assert "not a readable image" in read.skipped[0][1]
    assert "14000" in read.skipped[1][1] or "decompression-bomb" in read.skipped[1][1]
    assert read.skipped_lines()[1].startswith(f"skipped {bomb}: ")
    assert len(site) == 7  # the site as read is left as it was


def test_read_faces_refuses_a_site_where_no_image_reads(tmp_path):
    for name in ("a.png", "b.png"):
        (tmp_path / "Happy").mkdir(exist_ok=True)
        (tmp_path / "Happy" / name).write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(SiteDataError, match=r"none of the 2 site image\(s\) can be read:\n  .*a.png: .*\n  .*b.png"):
        read_site(tmp_path).read_faces(16)
