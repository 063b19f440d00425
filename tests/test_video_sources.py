"""Frame sources read what a viewer or player shows, and trust no container estimate.

Real files written by the tests (OpenCV's writers), then patched byte by byte: a portrait phone
MP4 (landscape pixels + a rotate-90 display matrix in ``tkhd``), AVIs whose header claims another
frame count, a truncated AVI, AVIs with undecodable frames, and a folder holding a decompression
bomb between two good images. No network beyond 127.0.0.1, no ffmpeg binary, no mocks of OpenCV.
"""

from __future__ import annotations

import functools
import http.server
import struct
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from fer_triton.client.sources import BadFrame, Frame, VideoSource, open_source, parse_source

W, H = 64, 48  # landscape pixels as stored; a multiple of 16 for the MPEG-4 encoder
BRIGHT, DARK = 250, 30


# ---------------------------------------------------------------- a portrait phone MP4, made here


def landscape_frames(n: int) -> list[np.ndarray]:
    """BGR UINT8 [H, W, 3] frames: dark, with a bright block in the top-left corner of the stored pixels."""
    frame = np.full((H, W, 3), DARK, np.uint8)
    frame[: H // 4, : W // 4] = BRIGHT
    return [frame.copy() for _ in range(n)]


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None):
    """ISO BMFF boxes: (box start, box size, header size, type), descending into container boxes."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        size, kind = struct.unpack(">I4s", data[i:i + 8])
        header = 8
        if size == 1:
            size, header = struct.unpack(">Q", data[i + 8:i + 16])[0], 16
        elif size == 0:
            size = end - i
        kind = kind.decode("latin-1")
        yield i, size, header, kind
        if kind in ("moov", "trak", "mdia", "minf", "stbl", "edts"):
            yield from mp4_boxes(data, i + header, i + size)
        i += size


def rotate90_mp4(path: Path, frames: int = 6) -> Path:
    """Write a landscape MP4 (mp4v) and set its track's display matrix to "rotate 90" (portrait phone video).

    ISO/IEC 14496-12 tkhd, version 0: version+flags (4), creation (4), modification (4), track_ID (4),
    reserved (4), duration (4), reserved (8), layer (2), alternate_group (2), volume (2), reserved (2),
    then the matrix {a, b, u, c, d, v, x, y, w} (9 x int32; a..d, x, y 16.16, u, v, w 2.30): byte 40
    of the payload (52 in version 1). A point maps as x' = a*x + c*y + tx, y' = b*x + d*y + ty, so
    a=0, b=1, c=-1, d=0, tx=height turns the picture 90 degrees clockwise for display: FFmpeg (and
    ffprobe) call it rotate=90, and what was stored top-left is shown top-right. This is the matrix
    a phone writes for a video shot upright.
    """
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H))
    assert writer.isOpened()
    for frame in landscape_frames(frames):
        writer.write(frame)
    writer.release()
    data = bytearray(path.read_bytes())
    (tkhd,) = [(i, header) for i, _, header, kind in mp4_boxes(data) if kind == "tkhd"]
    payload = tkhd[0] + tkhd[1]
    offset = payload + (40 if data[payload] == 0 else 52)
    assert struct.unpack(">9i", data[offset:offset + 36]) == (0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
    data[offset:offset + 36] = struct.pack(">9i", 0, 0x10000, 0, -0x10000, 0, 0, H << 16, 0, 0x40000000)
    path.write_bytes(bytes(data))
    return path


def assert_upright(rgb: np.ndarray) -> None:
    """A portrait frame with the bright block in its top-right corner, where a player shows it."""
    assert rgb.dtype == np.uint8 and rgb.shape == (W, H, 3)  # portrait: H x W swapped
    corners = {"top-left": rgb[:6, :6], "top-right": rgb[:6, -6:], "bottom-left": rgb[-6:, :6],
               "bottom-right": rgb[-6:, -6:]}
    lit = {name for name, patch in corners.items() if patch.mean() > (BRIGHT + DARK) / 2}
    assert lit == {"top-right"}, lit


@pytest.fixture(scope="module")
def portrait(tmp_path_factory) -> Path:
    return rotate90_mp4(tmp_path_factory.mktemp("portrait") / "phone.mp4")


def test_the_test_file_is_a_rotated_landscape_video(portrait):
    """The premise: stored pixels are landscape and FFmpeg reads rotate=90 from the container."""
    cap = cv2.VideoCapture(str(portrait), cv2.CAP_FFMPEG)
    assert cap.get(cv2.CAP_PROP_ORIENTATION_META) == 90
    ok, bgr = cap.read()  # OpenCV's default: the stored pixels, sideways
    cap.release()
    assert ok and bgr.shape == (H, W, 3) and bgr[:6, :6].mean() > 200


def test_portrait_video_frames_come_out_as_a_player_shows_them(portrait):
    source = open_source(parse_source(str(portrait)))
    try:
        events = list(source.frames())
    finally:
        source.close()
    assert [type(e) for e in events] == [Frame] * 6 and source.end_reason == "ended"
    for event in events:
        assert_upright(event.image)


def test_portrait_video_is_upright_after_reopening(portrait):
    source = open_source(parse_source(str(portrait)))
    try:
        assert_upright(next(source.frames()).image)
        for _ in range(2):  # every capture the source makes (open and reopen) applies the rotation
            cap = source._open_capture()
            ok, bgr = cap.read()
            cap.release()
            assert ok
            assert_upright(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        source.close()


def test_portrait_stream_stays_upright_across_reconnects(portrait):
    """A live http:// stream: at the end of the file the source reconnects (``_open_capture``) and
    reads it again; frames before and after the reconnect are upright."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=portrait.parent))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    source = open_source(parse_source(f"web=http://127.0.0.1:{server.server_port}/{portrait.name}"),
                         stall_timeout_s=5.0)
    try:
        assert isinstance(source, VideoSource) and source.live
        frames = source.frames()
        events = [next(frames) for _ in range(14)]  # 6 + 6 (first reconnect) + 2 (second)
    finally:
        source.close()
        server.shutdown()
        server.server_close()
    assert [e.index for e in events] == list(range(14))
    for event in events:
        assert isinstance(event, Frame)
        assert_upright(event.image)


# ---------------------------------------------------------------- AVIs: counts, truncation, bad frames

N = 10


def grey_frames(n: int = N) -> list[np.ndarray]:
    """BGR frames, frame k uniformly grey at level 20 + 20 k: each frame says which it is."""
    return [np.full((H, W, 3), 20 + 20 * k, np.uint8) for k in range(n)]


def level(rgb: np.ndarray) -> int:
    """Which frame of :func:`grey_frames` this decoded frame is (JPEG keeps a flat grey within a few levels)."""
    return int(round((float(rgb.mean()) - 20) / 20))


def write_avi(path: Path, n: int = N) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    assert writer.isOpened()
    for frame in grey_frames(n):
        writer.write(frame)
    writer.release()
    return path


def riff_chunks(data: bytes, start: int = 12, end: int | None = None):
    """AVI (RIFF) chunks: (fourcc, payload offset, payload size), descending into LIST chunks."""
    end = len(data) if end is None else end
    i = start
    while i + 8 <= end:
        fourcc, size = struct.unpack("<4sI", data[i:i + 8])
        if fourcc == b"LIST":
            yield from riff_chunks(data, i + 12, min(i + 8 + size, end))
        else:
            yield fourcc.decode("latin-1"), i + 8, size
        i += 8 + size + (size & 1)


def frame_chunks(data: bytes) -> list[tuple[int, int]]:
    """(payload offset, size) of each video frame chunk ("00dc"), in file order."""
    return [(offset, size) for fourcc, offset, size in riff_chunks(data) if fourcc == "00dc"]


def with_header_count(path: Path, claimed: int) -> Path:
    """The same AVI whose headers (avih dwTotalFrames, strh dwLength, dmlh dwTotalFrames) claim ``claimed`` frames."""
    data = bytearray(path.read_bytes())
    for fourcc, offset, _ in riff_chunks(data):
        if fourcc in ("avih", "dmlh"):
            field = offset + (16 if fourcc == "avih" else 0)
            data[field:field + 4] = struct.pack("<I", claimed)
        elif fourcc == "strh" and data[offset:offset + 4] == b"vids":
            data[offset + 32:offset + 36] = struct.pack("<I", claimed)
    patched = path.with_name(f"claims{claimed}.avi")
    patched.write_bytes(bytes(data))
    return patched


def read_all(path: Path) -> tuple[list[Frame | BadFrame], str]:
    source = open_source(parse_source(str(path)))
    try:
        return list(source.frames()), source.end_reason
    finally:
        source.close()


def header_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        cap.release()


@pytest.mark.parametrize("claimed", [25, 3])
def test_a_wrong_frame_count_in_the_header_changes_nothing(tmp_path, claimed):
    avi = with_header_count(write_avi(tmp_path / "full.avi"), claimed)
    assert header_count(avi) == claimed  # the premise: OpenCV reports the header's (wrong) count
    events, end = read_all(avi)
    assert all(isinstance(e, Frame) for e in events), [e for e in events if isinstance(e, BadFrame)]
    assert [e.index for e in events] == list(range(N))
    assert [level(e.image) for e in events] == list(range(N))
    assert end == "ended"


def test_a_truncated_file_gives_every_frame_it_holds_then_ends(tmp_path):
    full = write_avi(tmp_path / "full.avi")
    data = full.read_bytes()
    offset, size = frame_chunks(data)[5]
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[:offset + size])  # frames 0..5 whole; the rest and the index are gone
    assert header_count(cut) == N  # the header still says 10
    events, end = read_all(cut)
    assert all(isinstance(e, Frame) for e in events)
    assert [level(e.image) for e in events] == list(range(6))
    assert end == "ended"


def zero_frames(path: Path, which: list[int], name: str) -> Path:
    """The AVI with the JPEG data of the frames ``which`` zeroed (chunk headers kept): FFmpeg cannot decode them."""
    data = bytearray(path.read_bytes())
    chunks = frame_chunks(data)
    for k in which:
        offset, size = chunks[k]
        data[offset:offset + size] = bytes(size)
    out = path.with_name(name)
    out.write_bytes(bytes(data))
    return out


@pytest.mark.parametrize("bad", [[4], [3, 4, 5, 6], [0, 1]])
def test_undecodable_frames_inside_a_file_are_bad_frames_and_reading_goes_on(tmp_path, bad):
    avi = zero_frames(write_avi(tmp_path / "full.avi"), bad, "bad.avi")
    events, end = read_all(avi)
    assert [e.index for e in events] == list(range(N))
    assert [k for k, e in enumerate(events) if isinstance(e, BadFrame)] == bad
    for k, event in enumerate(events):
        if isinstance(event, BadFrame):
            assert event.camera == "bad" and f"frame {k} cannot be decoded" in event.message
        else:
            assert level(event.image) == k and event.position_ms is not None
    assert end == "ended"


def test_a_file_without_one_decodable_frame_fails_naming_the_file(tmp_path):
    avi = zero_frames(write_avi(tmp_path / "full.avi"), list(range(N)), "black.avi")
    events, end = read_all(avi)
    assert events == []
    assert end.startswith("failed: camera black:") and str(avi) in end and "no frame" in end


def test_end_after_failed_reads_must_be_positive():
    with pytest.raises(ValueError, match="at least 1"):
        VideoSource(parse_source("x.mp4"), end_after_failed_reads=0)


# ---------------------------------------------------------------- a folder camera with a decompression bomb


def test_a_decompression_bomb_in_a_folder_is_one_bad_frame(tmp_path):
    folder = tmp_path / "door"
    folder.mkdir()
    good = np.zeros((40, 30, 3), np.uint8)
    good[:, :, 0] = 200
    Image.fromarray(good).save(folder / "a.png")
    Image.new("1", (14000, 14000)).save(folder / "b_bomb.png")  # ~24 KB on disk, 196 megapixels
    Image.fromarray(good[:, :, ::-1].copy()).save(folder / "c.png")
    assert (folder / "b_bomb.png").stat().st_size < 100_000
    source = open_source(parse_source(str(folder)))
    events = list(source.frames())
    assert [(type(e), e.index, e.camera) for e in events] == [(Frame, 0, "door"), (BadFrame, 1, "door"),
                                                            (Frame, 2, "door")]
    assert events[0].image.shape == (40, 30, 3) and events[0].image[0, 0].tolist() == [200, 0, 0]
    assert events[2].image[0, 0].tolist() == [0, 0, 200]
    message = events[1].message  # Pillow's guard or the project's pixel limit, whichever refuses it first
    assert message.startswith(f"{folder / 'b_bomb.png'}: ") and ("bomb" in message or "pixel limit" in message)
    assert source.end_reason == "ended"
