"""The one image reader over a generated corpus: every Pillow mode, truncated and corrupt files, odd EXIF.

Each case asserts the pixel values that must come out (not only "no exception").
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from fer_triton.images import ImageReadError, read_face, read_image, set_max_pixels, max_pixels, to_wire


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def _roundtrip(image: Image.Image, fmt: str, tmp_path, **kwargs) -> np.ndarray:
    path = tmp_path / f"image.{fmt.lower()}"
    path.write_bytes(_encode(image, fmt, **kwargs))
    with Image.open(path) as reopened:  # the file really holds the mode under test
        assert reopened.mode == image.mode or fmt == "JPEG"
    return read_image(path)


def test_greyscale_and_bilevel_are_copied_to_rgb(tmp_path):
    grey = Image.fromarray(np.array([[0, 100], [200, 255]], np.uint8), "L")
    out = _roundtrip(grey, "PNG", tmp_path)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert (out == np.array([[0, 100], [200, 255]])[:, :, None]).all()
    bilevel = Image.fromarray(np.array([[0, 255], [255, 0]], np.uint8), "L").convert("1")
    assert (_roundtrip(bilevel, "PNG", tmp_path)[:, :, 1] == [[0, 255], [255, 0]]).all()


def test_16_bit_modes_are_scaled_not_clamped(tmp_path):
    values = np.array([[0, 257 * 100], [65535, 257 * 255 - 1]], np.uint16)
    expected = np.array([[0, 100], [255, 255]])
    png = Image.fromarray(values)  # mode I;16
    assert (_roundtrip(png, "PNG", tmp_path)[:, :, 0] == expected).all()
    for mode, dtype in (("I;16B", ">u2"), ("I;16L", "<u2")):
        image = Image.frombytes(mode, (2, 2), values.astype(dtype).tobytes())
        assert (read_image(_encode(image, "TIFF"))[:, :, 2] == expected).all(), mode


def test_32_bit_integer_and_float_modes_scale_or_are_refused(tmp_path):
    ints = Image.fromarray(np.array([[0, 257 * 51], [65535, 0]], np.int32), "I")
    assert (read_image(_encode(ints, "TIFF"))[:, :, 0] == [[0, 51], [255, 0]]).all()
    floats = Image.fromarray(np.array([[0.0, 0.2], [1.0, 0.5]], np.float32), "F")
    assert (read_image(_encode(floats, "TIFF"))[:, :, 1] == [[0, 51], [255, 128]]).all()
    too_big = Image.fromarray(np.array([[0, 70000]], np.int32), "I")
    with pytest.raises(ImageReadError, match=r"mode I holds values 0\.\.70000, outside 0\.\.65535"):
        read_image(_encode(too_big, "TIFF"), name="wide.tif")
    hdr = Image.fromarray(np.array([[0.0, 3.5]], np.float32), "F")
    with pytest.raises(ImageReadError, match=r"hdr\.tif: mode F .* values 0\.\.3\.5, outside 0\.\.1"):
        read_image(_encode(hdr, "TIFF"), name="hdr.tif")


def test_alpha_and_palette_transparency_composite_over_black(tmp_path):
    rgba = Image.fromarray(np.array([[[200, 100, 50, 255], [200, 100, 50, 0]]], np.uint8), "RGBA")
    assert _roundtrip(rgba, "PNG", tmp_path).tolist() == [[[200, 100, 50], [0, 0, 0]]]
    la = Image.fromarray(np.array([[[90, 255], [90, 0]]], np.uint8), "LA")
    assert _roundtrip(la, "PNG", tmp_path).tolist() == [[[90, 90, 90], [0, 0, 0]]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([10, 20, 30, 240, 230, 220] + [0] * 762)
    palette.putdata([0, 1])
    assert _roundtrip(palette, "PNG", tmp_path).tolist() == [[[10, 20, 30], [240, 230, 220]]]
    assert _roundtrip(palette, "GIF", tmp_path, transparency=0).tolist() == [[[0, 0, 0], [240, 230, 220]]]


def test_colour_spaces_convert_to_rgb(tmp_path):
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red ink
    assert (_roundtrip(cmyk, "TIFF", tmp_path) == [255, 0, 0]).all()
    assert (np.abs(read_image(_encode(cmyk, "JPEG", quality=100)).astype(int) - [255, 0, 0]) <= 3).all()
    ycbcr = Image.new("RGB", (4, 4), (30, 160, 90)).convert("YCbCr")
    assert (np.abs(_roundtrip(ycbcr, "TIFF", tmp_path).astype(int) - [30, 160, 90]) <= 2).all()


def test_exif_orientation_is_applied_and_odd_values_ignored(tmp_path):
    pixels = np.zeros((2, 3, 3), np.uint8)
    pixels[0, 0] = [255, 0, 0]  # red top-left marker on a landscape image
    image = Image.fromarray(pixels)

    def with_orientation(value) -> bytes:
        exif = Image.Exif()
        exif[274] = value
        return _encode(image, "PNG", exif=exif)

    rotated = read_image(with_orientation(6))  # "rotate 90 CW to view": portrait, marker top-right
    assert rotated.shape == (3, 2, 3) and rotated[0, 1].tolist() == [255, 0, 0]
    for odd in (0, 9, 65535):
        assert (read_image(with_orientation(odd)) == pixels).all(), odd
    # A JPEG whose APP1 EXIF block is garbage: read as stored, not refused.
    jpeg = bytearray(_encode(Image.fromarray(np.full((8, 8, 3), 120, np.uint8)), "JPEG", quality=95))
    garbage = b"Exif\x00\x00MM\x00\x2a\xff\xff\xff\xff" + b"\x00" * 16
    jpeg[2:2] = b"\xff\xe1" + (len(garbage) + 2).to_bytes(2, "big") + garbage
    assert (np.abs(read_image(bytes(jpeg)).astype(int) - 120) <= 2).all()


def test_multi_frame_files(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 0, 255))]
    gif = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match=r"anim\.gif: holds 2 frames"):
        read_image(gif, name="anim.gif")
    tiff = _encode(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    with pytest.raises(ImageReadError, match="holds 2 frames"):
        read_image(tiff)
    mpo = _encode(frames[0], "MPO", save_all=True, append_images=frames[1:], quality=100)
    assert Image.open(io.BytesIO(mpo)).format == "MPO"
    assert (np.abs(read_image(mpo).astype(int) - [255, 0, 0]) <= 3).all()  # the primary image


def test_truncated_corrupt_and_missing_files_name_the_file(tmp_path):
    good = _encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)), "PNG")
    cases = {"truncated.png": good[: len(good) // 2], "garbage.jpg": b"\xff\xd8\xff\xe0 not a jpeg",
             "text.png": b"hello", "empty.png": b""}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageReadError, match=rf"^{tmp_path / name}: "):
            read_image(tmp_path / name)
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "absent.png")


def test_decompression_bomb_and_pixel_limit(tmp_path):
    bomb = tmp_path / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)
    assert bomb.stat().st_size < 100_000  # 24 KB on disk, 196 MB decoded
    with pytest.raises(ImageReadError, match=r"bomb\.png: .*--max-pixels"):
        read_image(bomb)
    big = _encode(Image.new("L", (100, 60)), "PNG")
    with pytest.raises(ImageReadError, match=r"100x60 = 6,000 pixels is above the pixel limit of 5,999"):
        read_image(big, max_pixels=5999)
    assert read_image(big, max_pixels=6000).shape == (60, 100, 3)
    before = max_pixels()
    try:
        set_max_pixels(5000)
        with pytest.raises(ImageReadError, match="limit of 5,000"):
            read_image(big)
    finally:
        set_max_pixels(before)


def test_read_face_resizes_bilinear_like_training():
    pixels = np.random.default_rng(1).integers(0, 255, (40, 30, 3), np.uint8)
    face = read_face(_encode(Image.fromarray(pixels), "PNG"), 224)
    assert face.shape == (224, 224, 3) and face.dtype == np.uint8
    assert (face == np.asarray(Image.fromarray(pixels).resize((224, 224), Image.BILINEAR))).all()
    assert (to_wire(pixels, 224) == face).all()
    with pytest.raises(ValueError, match=r"expected a UINT8 RGB array"):
        to_wire(pixels.astype(np.float32), 224)
