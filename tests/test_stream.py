"""The many-camera stream client against the real tritonserver: order, equality with PyTorch,
recovery from a killed server, failing cameras, live-camera dropping, detection, the command."""

from __future__ import annotations

import functools
import http.server
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from conftest import pytorch_probabilities
from fer_triton.cli import cli
from fer_triton.client import StreamConfig, StreamPipeline, parse_source, parse_sources
from fer_triton.client.faces import Box, DetectorUnavailable, HaarDetector, crop_face, make_detector
from fer_triton.client.grpc_client import FerServerError
from fer_triton.client.servers import Backoff, NoServerError, ServerPool, is_retryable
from fer_triton.client.sources import BadFrame, Frame, FrameSource, SourceSpec
from fer_triton.images import to_wire
from fer_triton.server import free_port
from fer_triton.synthetic import draw_face, draw_faces

FRAME = 96  # small frames keep the videos tiny; crops are resized to the wire size (224)


def write_video(path: Path, frames: np.ndarray, fps: int = 10) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (frames.shape[2], frames.shape[1]))
    assert writer.isOpened()
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def decode_video(path: Path) -> list[np.ndarray]:
    """The test's own decoding of a video: what the cameras 'saw'."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    return frames


def make_cameras(folder: Path, n: int, frames: int) -> list[Path]:
    return [write_video(folder / f"cam{c}.avi", draw_faces(frames, FRAME, seed=100 + c)[0]) for c in range(n)]


def run(sources, urls, **config) -> tuple[object, list[dict]]:
    out = io.StringIO()
    pipeline = StreamPipeline(sources, urls, config=StreamConfig(**config), out=out)
    summary = pipeline.run()
    return summary, [json.loads(line) for line in out.getvalue().splitlines()]


def face_lines(lines: list[dict]) -> list[dict]:
    return [line for line in lines if "label" in line]


def expected_probabilities(checkpoint: Path, videos: list[Path]) -> dict[tuple[str, int], np.ndarray]:
    keys, crops = [], []
    for video in videos:
        for index, frame in enumerate(decode_video(video)):
            keys.append((video.stem, index))
            crops.append(to_wire(Image.fromarray(frame), 224))
    return dict(zip(keys, pytorch_probabilities(checkpoint, np.stack(crops))))


def assert_matches_pytorch(lines: list[dict], expected: dict, classes) -> None:
    worst = max(np.abs(np.array([line["probabilities"][c] for c in classes])
                       - expected[(line["camera"], line["frame"])]).max() for line in face_lines(lines))
    assert worst < 1e-4


CLASSES = ("Surprise", "Fear", "Disgust", "Happy", "Sad", "Angry", "Neutral")


def test_eight_cameras_every_face_in_order_equal_to_pytorch(triton_server, tiny_checkpoint, tmp_path):
    videos = make_cameras(tmp_path, 8, 10)
    summary, lines = run(parse_sources([str(v) for v in videos]), triton_server.grpc_url,
                         detector="crops", batch_size=8, max_in_flight=4)
    total = summary.accounting
    assert total.frames_read == total.faces == total.faces_sent == total.results == 80
    assert total.balanced and total.errors == total.frames_dropped == 0
    faces = face_lines(lines)
    for video in videos:
        assert [line["frame"] for line in faces if line["camera"] == video.stem] == list(range(10))
    assert_matches_pytorch(lines, expected_probabilities(tiny_checkpoint, videos), CLASSES)
    first = faces[0]
    assert first["box"] == [0, 0, FRAME, FRAME] and first["label"] in CLASSES and first["latency_ms"] > 0
    assert first["server"] == triton_server.grpc_url and "position_ms" in first
    ends = [line for line in lines if line.get("event") == "ended"]
    assert sorted(line["camera"] for line in ends) == sorted(v.stem for v in videos)
    assert all(s.status == "ended" for s in summary.stats.cameras.values())


def test_server_killed_and_restarted_mid_stream_loses_no_face(server_factory, tiny_repository, tiny_checkpoint,
                                                              tmp_path):
    server = server_factory(tiny_repository)
    videos = make_cameras(tmp_path, 8, 10)
    killed, restarted = threading.Event(), threading.Event()
    results_before_kill = []

    def on_frame(outcome):  # kill as soon as the first results are out: the rest is mid-stream
        if outcome.status == "faces" and not killed.is_set():
            results_before_kill.append(outcome)
            if len(results_before_kill) == 3:
                killed.set()

    def kill_and_restart():
        killed.wait(60)
        server.kill()
        time.sleep(1.0)
        server.start()  # same object: the SAME ports
        restarted.set()

    helper = threading.Thread(target=kill_and_restart)
    helper.start()
    out = io.StringIO()
    # Paced like 8 fps cameras; "block" so that the outage slows the readers instead of dropping frames.
    pipeline = StreamPipeline(parse_sources([str(v) for v in videos]), server.grpc_url, on_frame=on_frame, out=out,
                              config=StreamConfig(detector="crops", batch_size=4, fps=8, live_drop="block"))
    summary = pipeline.run()
    helper.join(120)
    assert killed.is_set() and restarted.is_set()
    total = summary.accounting
    assert total.frames_read == total.faces == total.results == 80 and total.balanced
    assert total.errors == total.frames_dropped == total.faces_unfinished == 0
    assert summary.stats.retries > 0 and summary.servers[0]["errors"] > 0  # it really went through an outage
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    for video in videos:
        assert [x["frame"] for x in face_lines(lines) if x["camera"] == video.stem] == list(range(10))
    assert_matches_pytorch(lines, expected_probabilities(tiny_checkpoint, videos), CLASSES)


def corrupt_tail(path: Path) -> Path:
    """Zero the JPEG data of frame 5 of an MJPG AVI, its chunk header kept: FFmpeg cannot decode that frame."""
    data = bytearray(path.read_bytes())
    start = data.index(b"00dc", data.index(b"movi"))  # the first frame's chunk
    for _ in range(5):  # chunk = "00dc", size (little-endian), data padded to even
        size = int.from_bytes(data[start + 4:start + 8], "little")
        start += 8 + size + (size & 1)
    size = int.from_bytes(data[start + 4:start + 8], "little")
    data[start + 8:start + 8 + size] = bytes(size)
    bad = path.with_name("corrupt.avi")
    bad.write_bytes(bytes(data))
    return bad


def test_failing_cameras_are_reported_and_the_others_finish(triton_server, tmp_path):
    good = make_cameras(tmp_path, 2, 6)
    corrupt = corrupt_tail(write_video(tmp_path / "full.avi", draw_faces(10, FRAME, seed=7)[0]))
    garbage = tmp_path / "garbage.avi"
    garbage.write_bytes(os.urandom(4000))
    folder = tmp_path / "stills"
    folder.mkdir()
    for i, face in enumerate(draw_faces(3, FRAME, seed=9)[0]):
        Image.fromarray(face).save(folder / f"{i}.png")
    (folder / "1b_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    sources = [*map(str, good), str(corrupt), f"missing={tmp_path / 'nope.avi'}", str(garbage), str(folder)]
    summary, lines = run(parse_sources(sources), triton_server.grpc_url, detector="crops")
    cams = summary.stats.cameras
    for video in good:
        assert cams[video.stem].results == 6 and cams[video.stem].status == "ended"
    assert cams["missing"].status.startswith("failed") and "nope.avi does not exist" in cams["missing"].status
    assert cams["garbage"].status.startswith("failed") and "cannot open video file" in cams["garbage"].status
    # The corrupt file: frames FFmpeg decodes get results, the undecodable one is reported as a bad frame.
    assert cams["corrupt"].frames_bad >= 1 and cams["corrupt"].results >= 5
    assert cams["corrupt"].results + cams["corrupt"].frames_bad == cams["corrupt"].frames_read
    bad_lines = [x for x in lines if x.get("event") == "bad_frame"]
    assert {x["camera"] for x in bad_lines} == {"corrupt", "stills"}
    assert any("1b_broken.png" in x["error"] for x in bad_lines)
    assert cams["stills"].results == 3 and cams["stills"].frames_bad == 1
    assert [x["frame"] for x in lines if x["camera"] == "stills" and "frame" in x] == [0, 1, 2, 3]
    errors = {x["camera"]: x["message"] for x in lines if x.get("event") == "source_error"}
    assert set(errors) == {"missing", "garbage"}
    assert summary.accounting.balanced


class FastLiveCamera(FrameSource):
    """A live camera that produces frames faster than anything downstream: the drop policy must act."""

    def __init__(self, camera: str, frames: int):
        super().__init__(SourceSpec(camera, "test://fast"))
        self.live = True
        self.images = draw_faces(4, FRAME, seed=3)[0]
        self.count = frames

    def frames(self):
        for index in range(self.count):
            if index == 5:
                yield BadFrame(self.camera, index, time.time(), "lost packet")
            else:
                yield Frame(self.camera, index, time.time(), self.images[index % 4])


@pytest.mark.parametrize("policy", ["oldest", "newest"])
def test_live_camera_drops_are_counted_and_order_is_kept(triton_server, policy):
    out = io.StringIO()
    pipeline = StreamPipeline([FastLiveCamera("live", 300)], triton_server.grpc_url, out=out,
                              config=StreamConfig(detector="crops", batch_size=1, max_in_flight=1, queue_frames=1,
                                                  detect_workers=1, live_drop=policy))
    total = pipeline.run().accounting
    assert total.frames_read == 300 and total.frames_dropped > 0 and total.frames_bad == 1
    assert total.frames_dropped + total.results + total.frames_bad == 300 and total.balanced
    frames = [json.loads(x)["frame"] for x in out.getvalue().splitlines() if '"frame"' in x]
    assert frames == sorted(frames) and len(frames) == total.results + 1  # dropped frames are only counted


class SkippingCamera(FrameSource):
    def frames(self):
        image = draw_faces(1, FRAME)[0][0]
        yield Frame(self.camera, 0, time.time(), image)
        yield Frame(self.camera, 2, time.time(), image)  # a gap would hold back every later result


def test_a_source_breaking_frame_order_fails_alone(triton_server):
    summary, lines = run([SkippingCamera(SourceSpec("skip", "test://skip"))], triton_server.grpc_url,
                         detector="crops")
    status = summary.stats.cameras["skip"].status
    assert status == "failed: ValueError: source sent frame skip#2, expected skip#1"
    assert summary.accounting.results == 1 and lines[-1]["event"] == "source_error"


class PausingCamera(FrameSource):
    """Two frames, a pause longer than the stall timeout, two more frames."""

    def __init__(self):
        super().__init__(SourceSpec("pausing", "test://pause"))
        self.live = True
        self.images = draw_faces(4, FRAME, seed=4)[0]

    def frames(self):
        for index in range(4):
            if index == 2:
                time.sleep(1.2)
            yield Frame(self.camera, index, time.time(), self.images[index])


def test_stalled_streams_are_reported(triton_server, tmp_path):
    # A real HTTP stream (OpenCV + FFmpeg over http://) that goes away after one file: the client
    # reconnects until the stall timeout, then reports the camera stalled; a pausing camera is
    # reported stalled while it pauses and finishes normally.
    video = write_video(tmp_path / "web.avi", draw_faces(6, FRAME, seed=5)[0])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    web = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=web.handle_request, daemon=True).start()  # serves one request, then is gone
    try:
        sources = [parse_source(f"web=http://127.0.0.1:{web.server_port}/{video.name}"), PausingCamera()]
        summary, lines = run(sources, triton_server.grpc_url, detector="crops", stall_timeout_s=0.8,
                             live_drop="block")  # the "live" file arrives faster than real time
    finally:
        web.server_close()
    cams = summary.stats.cameras
    assert cams["web"].results == 6 and cams["web"].status.startswith("stalled: no frame for")
    assert cams["pausing"].results == 4 and cams["pausing"].status == "ended"
    events = [(x["camera"], x["event"]) for x in lines if "frame" not in x]
    assert ("pausing", "stalled") in events and ("pausing", "ended") in events and ("web", "stalled") in events
    assert summary.accounting.balanced


def test_round_robin_and_failover_across_servers(triton_server, server_factory, tiny_repository, tmp_path):
    second = server_factory(tiny_repository)
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    videos = make_cameras(tmp_path, 3, 8)
    summary, lines = run(parse_sources([str(v) for v in videos]), [triton_server.grpc_url, dead, second.grpc_url],
                         detector="crops", batch_size=2, max_in_flight=2)
    assert summary.accounting.results == 24 and summary.accounting.errors == 0
    used = {x["server"] for x in face_lines(lines)}
    assert used == {triton_server.grpc_url, second.grpc_url}
    by_url = {s["url"]: s for s in summary.servers}
    assert by_url[dead]["answered"] == 0 and by_url[dead]["errors"] >= 1
    assert by_url[triton_server.grpc_url]["answered"] > 0 and by_url[second.grpc_url]["answered"] > 0


def test_abort_reports_in_flight_faces_as_unfinished(server_factory, tiny_repository, tmp_path):
    server = server_factory(tiny_repository)
    videos = make_cameras(tmp_path, 2, 40)
    first_result = threading.Event()
    pipeline = StreamPipeline(parse_sources([str(v) for v in videos]), server.grpc_url,
                              on_frame=lambda outcome: first_result.set(),
                              config=StreamConfig(detector="crops", batch_size=2, fps=10, live_drop="block"))

    def kill_then_abort():
        first_result.wait(60)
        server.kill()          # nothing answers any more: faces wait for retries
        time.sleep(1.5)
        pipeline.abort()       # what the second Ctrl-C does

    threading.Thread(target=kill_then_abort).start()
    summary = pipeline.run()
    total = summary.accounting
    assert total.faces_unfinished > 0 and total.results > 0 and total.balanced
    assert all(s.status == "stopped" for s in summary.stats.cameras.values())


def test_stop_finishes_what_was_read(triton_server, tmp_path):
    videos = make_cameras(tmp_path, 2, 100)  # 10 s at 10 fps: stop() comes long before the end
    first_result = threading.Event()
    pipeline = StreamPipeline(parse_sources([str(v) for v in videos]), triton_server.grpc_url,
                              on_frame=lambda outcome: first_result.set(),
                              config=StreamConfig(detector="crops", fps=10, live_drop="block"))

    def stop_soon():
        first_result.wait(60)
        pipeline.stop()        # what the first Ctrl-C does

    threading.Thread(target=stop_soon).start()
    total = pipeline.run().accounting
    assert 0 < total.frames_read < 200 and total.results == total.faces == total.frames_read
    assert total.faces_unfinished == total.frames_unfinished == 0 and total.balanced
    assert all(s.status == "stopped" for s in pipeline.stats.cameras.values())


def test_ctrl_c_on_the_command(triton_server, tmp_path):
    video = write_video(tmp_path / "hall.avi", draw_faces(150, FRAME, seed=8)[0])  # 15 s at 10 fps
    out = tmp_path / "out.jsonl"
    fer_triton = Path(sys.executable).with_name("fer-triton")
    # SIGINT at its default disposition even when pytest ignores it (started in the background by a script).
    reset = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    proc = subprocess.Popen([sys.executable, "-c", reset, str(fer_triton), "stream", str(video), "-u",
                             triton_server.grpc_url, "--detector", "crops", "--fps", "10", "--drop", "block", "-o",
                             str(out), "--no-progress"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not out.exists() or out.stat().st_size == 0):
        time.sleep(0.2)  # wait for the first result
    proc.send_signal(signal.SIGINT)
    t0 = time.monotonic()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert time.monotonic() - t0 < 6  # prompt (it took 10.1 s when a KeyboardInterrupt landed in Thread.join)
    assert "stopped early (Ctrl-C)" in err and "every face accounted for: yes" in err
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    frames = [x["frame"] for x in face_lines(lines)]
    assert frames == list(range(len(frames))) and 0 < len(frames) < 150
    assert lines[-1] == {**lines[-1], "camera": "hall", "event": "ended", "message": "stopped"}


def test_haar_detector_finds_a_drawn_face_in_a_larger_frame(triton_server, tiny_checkpoint, tmp_path):
    # Haar finds few drawn (cartoon) faces; this one (seed 0, index 3) it finds. See docs/client.md.
    face = draw_faces(4, 160, seed=0)[0][3]
    frame = np.full((360, 480, 3), 90, np.uint8)
    frame[100:260, 200:360] = face
    boxes = HaarDetector(min_face=30).detect(frame)
    assert len(boxes) == 1
    box = boxes[0]
    overlap = max(0, min(box.x + box.w, 360) - max(box.x, 200)) * max(0, min(box.y + box.h, 260) - max(box.y, 100))
    assert overlap / (box.w * box.h + 160 * 160 - overlap) > 0.5
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(frame).save(folder / "a_face.png")
    Image.fromarray(np.full((360, 480, 3), 90, np.uint8)).save(folder / "b_empty.png")
    summary, lines = run(parse_sources([f"door={folder}"]), triton_server.grpc_url, detector="haar", min_face=30)
    assert [x.get("event") for x in lines if "frame" in x] == [None, "no_face"]
    hit = face_lines(lines)[0]
    assert hit["box"] == box.as_list()
    crop = crop_face(frame, Box(*hit["box"]), 224, margin=StreamConfig().margin)
    expected = pytorch_probabilities(tiny_checkpoint, crop[None].copy())[0]
    assert np.abs(np.array([hit["probabilities"][c] for c in CLASSES]) - expected).max() < 1e-4
    assert summary.accounting.frames_no_face == 1 and summary.accounting.balanced


def test_mtcnn_is_optional_and_says_how_to_install():
    try:
        import facenet_pytorch  # noqa: F401
    except ImportError:
        with pytest.raises(DetectorUnavailable, match="pip install --no-deps facenet-pytorch==2.6.0 requests"):
            make_detector("mtcnn")
        return
    frame = np.full((360, 480, 3), 90, np.uint8)  # with it installed: it must find this drawn face
    frame[100:260, 200:360] = draw_faces(3, 160, seed=0)[0][2]
    assert len(make_detector("mtcnn", min_face=30).detect(frame)) == 1


def test_crop_is_square_widened_and_clipped():
    frame = np.zeros((100, 200, 3), np.uint8)
    frame[:, 150:] = 255
    crop = crop_face(frame, Box(160, 10, 40, 20), 32, margin=0.25)
    assert crop.shape == (32, 32, 3)
    assert crop.min() == 255  # the square around the box lies in the white part, clipped at the frame edge
    whole = crop_face(frame, Box(0, 0, 200, 100), 32)
    assert whole.shape == (32, 32, 3) and whole[:, :20].max() == 0 and whole[:, -6:].min() == 255


@pytest.mark.parametrize("text,camera,location,kind", [
    ("lobby=rtsp://cam.local/live?a=b", "lobby", "rtsp://cam.local/live?a=b", "url"),
    ("rtsp://cam.local:554/s1", "cam.local_554_s1", "rtsp://cam.local:554/s1", "url"),
    ("0", "device0", "0", "device"),
    ("door=2", "door", "2", "device"),
    ("/videos/entrance.mp4", "entrance", "/videos/entrance.mp4", "video"),
])
def test_parse_source(text, camera, location, kind):
    spec = parse_source(text)
    assert (spec.camera, spec.location, spec.kind) == (camera, location, kind)
    assert spec.live == (kind in ("url", "device"))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="share camera id 'a'"):
        parse_sources(["a=1.mp4", "a=2.mp4"])
    with pytest.raises(ValueError, match="names no location"):
        parse_source("cam=")
    with pytest.raises(ValueError, match="live_drop must be one of"):
        StreamConfig(live_drop="sometimes").check()
    with pytest.raises(ValueError, match="unknown face detector 'yolo'"):
        StreamPipeline(parse_sources(["x.mp4"]), "127.0.0.1:1", config=StreamConfig(detector="yolo"))


def test_server_pool_benches_failing_servers_with_growing_backoff():
    pool = ServerPool(["127.0.0.1:1", "127.0.0.1:2"], backoff=Backoff(initial_s=0.5, max_s=2.0), reconnect_after=2)
    a, b = pool.servers
    assert [pool.pick().url for _ in range(4)] == [a.url, b.url, a.url, b.url]  # round robin
    unavailable = FerServerError("refused", "StatusCode.UNAVAILABLE")
    pool.failed(a, unavailable)
    assert [pool.pick().url for _ in range(3)] == [b.url] * 3  # failover while a is benched
    pool.failed(a, unavailable)  # second failure in a row: longer bench, new channel
    assert a.reconnects == 1 and 0.9 < a.benched_until - time.monotonic() <= 1.0
    pool.failed(b, unavailable)
    assert pool.pick() is None and 0.4 < pool.next_ready_in() <= 0.5  # b comes back first
    assert [Backoff(0.1, 2.0).delay(n) for n in (1, 2, 3, 6)] == [0.1, 0.2, 0.4, 2.0]
    assert not is_retryable(FerServerError("bad input", "StatusCode.INVALID_ARGUMENT"))
    pool.close()


def test_no_server_is_a_clear_error(tmp_path):
    dead = f"127.0.0.1:{free_port()}"
    pipeline = StreamPipeline(parse_sources([str(tmp_path)]), dead, config=StreamConfig(connect_wait_s=0.5))
    with pytest.raises(NoServerError, match=f"no Triton server answered:\n  {dead}"):
        pipeline.run()


def test_stream_command_writes_json_lines(triton_server, tmp_path):
    folder = tmp_path / "crops"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(draw_face(i, FRAME)).save(folder / f"{i}.png")
    out = tmp_path / "results.jsonl"
    result = CliRunner().invoke(cli, ["stream", f"desk={folder}", "-u", triton_server.grpc_url, "--detector", "crops",
                                      "-o", str(out), "-v", "--progress", "--stats-every", "0.001"])
    assert result.exit_code == 0, result.output
    assert "cameras 0/1 running | frames 3 |" in result.output and "| results 3 |" in result.output
    assert result.output.count("TOTAL") == 2  # the periodic per-camera table, then the summary
    assert "RANDOM CLIP weights: labels are meaningless" in result.output
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [x["frame"] for x in face_lines(lines)] == [0, 1, 2] and lines[-1]["event"] == "ended"
    assert "every face accounted for: yes" in result.output
    bad = CliRunner().invoke(cli, ["stream", str(folder), "-u", f"127.0.0.1:{free_port()}", "--connect-wait", "0"])
    assert bad.exit_code == 1 and "no Triton server answered" in bad.output
    missing = CliRunner().invoke(cli, ["stream", f"cam={tmp_path / 'none.mp4'}", "-u", triton_server.grpc_url,
                                       "--no-progress"])
    assert missing.exit_code == 1 and "failed: camera cam: " in missing.output and "does not exist" in missing.output
