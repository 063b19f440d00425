"""Clients of server-side face detection (issue #15) against a REAL tritonserver serving ``cafe_frames``:
the frames API (client/frames.py), `fer-triton infer --detect server`, `fer-triton stream --detect
server` with tracking (client/server_detect.py), and the detection-quality scoring.

The frames model itself (decode, detect, crop, classify, per-frame errors) is tested in test_frames.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from fer_triton.benchmarks.detection_quality import ASTRONAUT_FACE, Sample, score_boxes
from fer_triton.client.faces import Box
from fer_triton.client.tracking import box_iou

skimage_data = pytest.importorskip("skimage.data", reason="the astronaut photo comes with scikit-image")

ASTRONAUT = np.ascontiguousarray(skimage_data.astronaut())      # 512x512 RGB, public domain, one face
HEAD = ASTRONAUT[30:200, 150:300]                                # the face with some hair and neck: 150x170


def moving_frames(count: int, size=(640, 480), step=(4, 2)) -> list[np.ndarray]:
    """``count`` grey frames of ``size`` (w, h), the astronaut's head pasted ``step`` pixels further each frame."""
    w, h = size
    frames = []
    for i in range(count):
        frame = np.full((h, w, 3), 110, np.uint8)
        x, y = 120 + step[0] * i, 100 + step[1] * i
        frame[y:y + HEAD.shape[0], x:x + HEAD.shape[1]] = HEAD
        frames.append(frame)
    return frames


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def client(frames_server):
    from fer_triton.client.grpc_client import FerClient

    with FerClient(frames_server.grpc_url, timeout_s=120) as c:
        yield c


# ---- the frames API -------------------------------------------------------------------------

def test_frames_api_faces_boxes_and_probabilities_match_the_classifier(client):
    from fer_triton.client.faces import make_detector

    frames = moving_frames(2)
    result = client.frames().infer([png(frames[0])], raw=frames[1][None], with_crops=True, with_features=True)
    assert [r.status for r in result.frames] == ["faces", "faces"]
    assert [f.frame for f in result.faces] == [0, 1]
    for i, face in enumerate(result.faces):
        assert 0.9 <= face.score <= 1.0
        head = Box(120 + 4 * i, 100 + 2 * i, HEAD.shape[1], HEAD.shape[0])
        assert score_boxes("served", "head", [Sample(frames[i], [head])], [[face.box]]).found == 1  # centre inside
        assert face.masked_features.shape == (512,)
        assert face.label == result.classes[int(np.argmax(face.probabilities))]
    # The served detector is the client-side mtcnn-onnx detector: the same boxes on the same raw frame.
    assert [result.faces[1].box] == make_detector("mtcnn-onnx").detect(frames[1])
    # Each face's probabilities are the classifier's on the crop the server cut out.
    crops = np.stack([f.crop for f in result.faces])
    direct = client.infer(crops)
    np.testing.assert_allclose(np.stack([f.probabilities for f in result.faces]), direct.probabilities, atol=1e-4)


def test_frames_api_bad_input_is_named(client):
    from fer_triton.client.grpc_client import FerInputError

    frames = client.frames()
    bad = {
        "no frame to send": dict(),
        "UINT8": dict(raw=np.zeros((1, 8, 8, 3), np.float32)),
        "[R, H, W, 3]": dict(raw=np.zeros((1, 8, 8, 4), np.uint8)),
        "share one size": dict(raw=[np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)]),
        "encoded frame 1": dict(encoded=[b"x", 42]),
        "not one bytes object": dict(encoded=b"\xff\xd8"),
    }
    for expected, kwargs in bad.items():
        with pytest.raises(FerInputError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            frames.infer(**kwargs)
    # Per-frame problems: named per frame, the other frames of the request still answered.
    result = frames.infer([b"", b"not an image", png(np.full((64, 64, 3), 100, np.uint8)), png(ASTRONAUT)])
    assert [r.status for r in result.frames] == ["error", "error", "no_face", "faces"]
    assert "empty" in result.frames[0].error and "decode" in result.frames[1].error
    assert [f.frame for f in result.faces] == [3]


# ---- fer-triton infer --detect server --------------------------------------------------------

def test_infer_detect_server_one_record_per_face_and_per_failed_photo(frames_server, tmp_path):
    from fer_triton.cli import cli

    (tmp_path / "astronaut.png").write_bytes(png(ASTRONAUT))
    (tmp_path / "wall.png").write_bytes(png(np.full((200, 300, 3), 90, np.uint8)))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff this is no JPEG")
    out = tmp_path / "faces.jsonl"
    result = CliRunner().invoke(cli, ["infer", "--detect", "server", "-u", frames_server.grpc_url, "--json",
                                      "-o", str(out), str(tmp_path / "astronaut.png"), str(tmp_path / "wall.png"),
                                      str(tmp_path / "broken.jpg")])
    assert result.exit_code == 2, result.output  # partial success, as `infer` without --detect
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records == [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    by_image = {Path(r["image"]).name: r for r in records}
    face = by_image["astronaut.png"]
    assert face["face"] == 0 and face["score"] >= 0.9 and len(face["probabilities"]) == 7
    assert score_boxes("served", "astronaut", [Sample(ASTRONAUT, [ASTRONAUT_FACE])], [[Box(*face["box"])]]).found == 1
    assert by_image["wall.png"] == {"image": str(tmp_path / "wall.png"), "event": "no_face"}
    assert "broken.jpg" in by_image["broken.jpg"]["error"] and "decode" in by_image["broken.jpg"]["error"]
    assert len(records) == 3


# ---- fer-triton stream --detect server ----------------------------------------------------------

def _stream(url: str, folder: Path, **config):
    from fer_triton.client import StreamConfig, parse_sources
    from fer_triton.client.pipeline import StreamPipeline
    from fer_triton.client.server_detect import ServerDetectPipeline

    out = io.StringIO()
    cls = ServerDetectPipeline if config.get("detect") == "server" else StreamPipeline
    summary = cls(parse_sources([f"cam={folder}"]), url, config=StreamConfig(**config), out=out).run()
    return summary, [json.loads(x) for x in out.getvalue().splitlines()]


def test_stream_detect_server_with_tracking_accounts_for_every_frame(frames_server, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    frames = moving_frames(8)
    for i, frame in enumerate(frames):
        (folder / f"{i:03d}.png").write_bytes(png(frame))
    (folder / "008.png").write_bytes(png(np.full((480, 640, 3), 110, np.uint8)))  # the head has left
    summary, records = _stream(frames_server.grpc_url, folder, detect="server", reclassify="0", batch_size=4)
    total = summary.accounting
    assert total.balanced and total.frames_read == 9
    assert (total.frames_with_faces, total.frames_no_face, total.results, total.errors) == (8, 1, 8, 0)
    faces = [r for r in records if "face" in r]
    assert [r["frame"] for r in faces] == list(range(8))
    assert len({r["track"] for r in faces}) == 1                      # one stable track across the frames
    assert all(r["score"] >= 0.9 and r["fresh"] and "smoothed" in r for r in faces)
    assert [r["frame"] for r in records if r.get("event") == "no_face"] == [8]
    assert "server detect" in summary.format() and "encode" in summary.format()
    # The command line: the same records (boxes, scores, tracks) through `fer-triton stream --detect server`.
    from fer_triton.cli import cli

    out = folder.parent / "stream.jsonl"
    result = CliRunner().invoke(cli, ["stream", "--detect", "server", "--jpeg-quality", "90", "-u",
                                      frames_server.grpc_url, "--reclassify-every", "0", "-o", str(out),
                                      f"cam={folder}"])
    assert result.exit_code == 0, result.output
    cli_faces = [json.loads(x) for x in out.read_text().splitlines() if '"face"' in x]
    key = lambda r: (r["frame"], r["box"], r["track"])  # noqa: E731
    assert [key(r) for r in cli_faces] == [key(r) for r in faces]
    # The same frames with client-side detection by the same detector code: the same faces, boxes a
    # pixel or so apart (the server sees the JPEG, the client the PNG).
    _, local = _stream(frames_server.grpc_url, folder, detect="client", detector="mtcnn-onnx", reclassify="0")
    local_faces = [r for r in local if "face" in r]
    assert [r["frame"] for r in local_faces] == list(range(8))
    for a, b in zip(faces, local_faces):
        assert box_iou(Box(*a["box"]), Box(*b["box"])) > 0.85


def test_stream_detect_server_reports_a_frame_the_server_refuses_and_answers_the_others(frames_server, tmp_path):
    """A frame the client reads (64 MP limit) but the frames model refuses (its max_pixels, 33 MP, checked
    from the JPEG header before decoding) ends as that frame's bad_frame record; the frames around it
    are answered: nothing accepted is lost."""
    folder = tmp_path / "frames"
    folder.mkdir()
    face = moving_frames(1)[0]
    (folder / "000.png").write_bytes(png(face))
    (folder / "001.png").write_bytes(png(np.full((6000, 6200, 3), 90, np.uint8)))  # 37.2 MP: flat, a small PNG
    (folder / "002.png").write_bytes(png(face))
    summary, records = _stream(frames_server.grpc_url, folder, detect="server", batch_size=4)
    total = summary.accounting
    assert total.balanced and total.frames_read == 3
    assert [r["frame"] for r in records if "face" in r] == [0, 2]
    (bad,) = [r for r in records if r.get("frame") == 1]
    assert bad.get("event") == "bad_frame", bad
    assert "above max_pixels 33177600" in json.dumps(bad) and "refused before decoding" in json.dumps(bad)


# ---- detection-quality scoring (no server) ----------------------------------------------------

def test_detection_quality_scoring_counts_found_faces_and_false_positives():
    frame = np.zeros((10, 10, 3), np.uint8)
    samples = [Sample(frame, [Box(0, 0, 50, 50)]), Sample(frame, [Box(0, 0, 50, 50), Box(60, 0, 40, 40)]),
               Sample(frame, [])]
    boxes = [[Box(10, 10, 20, 20), Box(200, 200, 5, 5)],   # found + one false positive
             [Box(70, 5, 20, 20)],                          # finds the second face only
             [Box(1, 1, 3, 3)]]                             # a non-face image with a box
    score = score_boxes("d", "data", samples, boxes)
    assert (score.faces, score.found, score.false_positives, score.images_with_fp) == (3, 2, 2, 2)
    assert score.recall == pytest.approx(2 / 3)
    # One box matches one face at most: two faces sharing a centre need two boxes.
    twin = [Sample(frame, [Box(0, 0, 40, 40), Box(0, 0, 40, 40)])]
    assert score_boxes("d", "x", twin, [[Box(10, 10, 10, 10)]]).found == 1
    with pytest.raises(ValueError, match="2 box lists for 1 images"):
        score_boxes("d", "x", twin, [[], []])
