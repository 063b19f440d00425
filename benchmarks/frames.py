"""Frames/s with server-side detection (the ``<prefix>_frames`` model) against client-side detection + crops.

    python -m fer_triton.benchmarks.frames --model-size tiny     # or: fer-triton bench --frames

Frames: 640x480 and 1280x720 mid-grey frames with 1 to 4 faces: the head of scikit-image's
public-domain astronaut photo (150x170 px), pasted at a different place and scale per face (scales
1.0, 0.8, 1.2, 0.7), each frame JPEG-encoded at quality 90 (OpenCV) as a camera feed would arrive.

Paths measured, one after the other on this machine (``frames`` frames per point, sent
``per_request`` frames per request, one request in flight, after one warm-up request):

- ``served``: the JPEG bytes to ``<prefix>_frames``: the server decodes, detects (MTCNN), crops and
  classifies; the split is the server's own ``timings_ms`` (decode, detect, crop, classify, per frame)
  and ``wire`` is the rest of the round trip (gRPC, queueing, BLS overhead).
- ``client <detector>``: this process decodes the JPEG (OpenCV), detects (``mtcnn-onnx``: the same
  MTCNN code and weights as the server; ``haar``), crops (client/faces.crop_face) and sends all crops
  of the request's frames in one request to ``<prefix>``; each step timed here (``classify`` is that
  round trip).

Weights: the model is the given checkpoint or, by default, one with RANDOM weights (benchmarks/
random_model.py): speed does not depend on them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

SIZES = ((640, 480), (1280, 720))
SCALES = (1.0, 0.8, 1.2, 0.7)
SPOTS = ((0.08, 0.10), (0.55, 0.12), (0.12, 0.55), (0.60, 0.55))   # top-left of each face, fraction of w, h
STEPS = ("decode", "detect", "crop", "classify", "wire")


@dataclass
class Point:
    """One path at one frame size and face count: frames/s and mean milliseconds per frame per step."""

    path: str
    size: str
    faces_per_frame: int
    frames: int
    seconds: float
    faces_found: int
    ms: dict[str, float] = field(default_factory=dict)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0


def astronaut_head() -> np.ndarray:
    """UINT8 RGB [170, 150, 3]: the face (with hair and neck) of ``skimage.data.astronaut()``."""
    from skimage import data

    return np.ascontiguousarray(data.astronaut()[30:200, 150:300])


def make_frame(size: tuple[int, int], faces: int, head: np.ndarray, shift: int = 0) -> np.ndarray:
    """UINT8 RGB [h, w, 3] grey frame with ``faces`` (1..4) astronaut heads at SPOTS and SCALES; ``shift``
    moves them a few pixels (each frame of a point differs)."""
    from PIL import Image

    w, h = size
    frame = np.full((h, w, 3), 110, np.uint8)
    k = min(w / 640, h / 480)
    for i in range(faces):
        scale = SCALES[i] * k
        patch = np.asarray(Image.fromarray(head).resize((int(head.shape[1] * scale), int(head.shape[0] * scale)),
                                                         Image.BILINEAR))
        x, y = int(SPOTS[i][0] * w) + 3 * shift, int(SPOTS[i][1] * h) + 2 * shift
        ph, pw = min(patch.shape[0], h - y), min(patch.shape[1], w - x)
        frame[y:y + ph, x:x + pw] = patch[:ph, :pw]
    return frame


def jpeg_frames(size, faces: int, count: int, head: np.ndarray, quality: int = 90) -> list[bytes]:
    from fer_triton.client.frames import encode_jpeg

    return [encode_jpeg(make_frame(size, faces, head, shift), quality) for shift in range(count)]


def _batches(items: Sequence, n: int):
    for start in range(0, len(items), n):
        yield items[start:start + n]


def measure_served(client, blobs: list[bytes], per_request: int) -> tuple[float, int, dict[str, float]]:
    """(seconds, faces found, per-frame ms by step) for ``blobs`` through ``<model>_frames``."""
    frames = client.frames()
    frames.infer(blobs[:per_request])  # warm-up
    totals = dict.fromkeys(STEPS, 0.0)
    found = 0
    t0 = time.perf_counter()
    for part in _batches(blobs, per_request):
        start = time.perf_counter()
        result = frames.infer(part, with_timings=True)
        wall_ms = (time.perf_counter() - start) * 1000
        server = result.timings_ms or {}
        for step, ms in server.items():
            totals[step] += ms
        totals["wire"] += wall_ms - sum(server.values())
        found += len(result.faces)
        bad = result.errors
        if bad:
            raise RuntimeError(f"the frames model refused a benchmark frame: {bad[0].error}")
    seconds = time.perf_counter() - t0
    return seconds, found, {k: v / len(blobs) for k, v in totals.items()}


def measure_client(client, detector, blobs: list[bytes], per_request: int, wire_size: int,
                   margin: float = 0.1) -> tuple[float, int, dict[str, float]]:
    """(seconds, faces found, per-frame ms by step) with client-side decode, detect, crop, classify."""
    import cv2

    from fer_triton.client.faces import crop_face

    def one(part):
        times = dict.fromkeys(STEPS, 0.0)
        crops = []
        for blob in part:
            t = time.perf_counter()
            rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(blob, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            t1 = time.perf_counter()
            boxes = detector.detect(rgb)
            t2 = time.perf_counter()
            crops += [crop_face(rgb, box, wire_size, margin) for box in boxes]
            t3 = time.perf_counter()
            times["decode"] += (t1 - t) * 1000
            times["detect"] += (t2 - t1) * 1000
            times["crop"] += (t3 - t2) * 1000
        t = time.perf_counter()
        if crops:
            client.infer_all(np.stack(crops))
        times["classify"] += (time.perf_counter() - t) * 1000
        return times, len(crops)

    one(blobs[:per_request])  # warm-up
    totals = dict.fromkeys(STEPS, 0.0)
    found = 0
    t0 = time.perf_counter()
    for part in _batches(blobs, per_request):
        times, n = one(part)
        found += n
        for step, ms in times.items():
            totals[step] += ms
    seconds = time.perf_counter() - t0
    return seconds, found, {k: v / len(blobs) for k, v in totals.items()}


def run_frames(url: str, model: str = "cafe", *, frames: int = 4, per_request: int = 4,
               sizes: Sequence[tuple[int, int]] = SIZES, faces: Sequence[int] = (1, 2, 3, 4),
               client_detectors: Sequence[str] = ("mtcnn-onnx", "haar"),
               echo: Callable[[str], None] = print) -> list[Point]:
    """Every path at every size and face count against the server at ``url``; returns the points."""
    from fer_triton.client.faces import make_detector
    from fer_triton.client.grpc_client import FerClient

    head = astronaut_head()
    detectors = {name: make_detector(name) for name in client_detectors}
    points = []
    with FerClient(url, model, timeout_s=600) as client:
        wire = client.info().wire_size
        for size in sizes:
            for n in faces:
                blobs = jpeg_frames(size, n, frames, head)
                label = f"{size[0]}x{size[1]}"
                runs = [("served (frames model)", lambda: measure_served(client, blobs, per_request))]
                runs += [(f"client {name} + crops", lambda d=d: measure_client(client, d, blobs, per_request, wire))
                         for name, d in detectors.items()]
                for path, run in runs:
                    seconds, found, ms = run()
                    points.append(Point(path, label, n, len(blobs), seconds, found, ms))
                    echo(f"  {label} {n} face(s) {path}: {points[-1].fps:.2f} frames/s, {found} faces found")
    return points


def format_points(points: Sequence[Point]) -> str:
    """A Markdown table: frames/s and the mean ms per frame of each step."""
    lines = ["| frame | faces/frame | path | frames/s | faces found | decode | detect | crop | classify | wire |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        cells = [f"{p.ms.get(s, 0.0):.1f}" if s in p.ms and (s != "wire" or p.path.startswith("served")) else "-"
                 for s in STEPS]
        lines.append(f"| {p.size} | {p.faces_per_frame} | {p.path} | {p.fps:.2f} | {p.faces_found}/"
                     f"{p.faces_per_frame * p.frames} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_benchmark(model_size: str = "tiny", workdir: Path = Path("build/bench_frames"), checkpoint: Path | None = None,
                  frames: int = 4, per_request: int = 4, echo: Callable[[str], None] = print) -> dict:
    """Export (random weights unless ``checkpoint``), serve, measure; returns a JSON-ready dict."""
    from fer_triton.benchmarks import machine
    from fer_triton.benchmarks.bench import MODEL_SIZES
    from fer_triton.benchmarks.random_model import export_random_repository
    from fer_triton.export.exporter import export_checkpoint
    from fer_triton.server import TritonServer, free_port

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    echo(f"exporting {'checkpoint ' + str(checkpoint) if checkpoint else model_size + ' (RANDOM weights)'} "
         f"with the MTCNN detector to {workdir}")
    if checkpoint is None:
        repository = export_random_repository(workdir, MODEL_SIZES[model_size], source="fer-triton bench --frames")
    else:
        repository = workdir / "model_repository"
        export_checkpoint(checkpoint, repository, overwrite=True)
    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start()
    try:
        points = run_frames(server.grpc_url, frames=frames, per_request=per_request, echo=echo)
    finally:
        server.stop()
    return {"machine": machine.describe(), "model_size": model_size, "checkpoint": str(checkpoint or ""),
            "weights": "checkpoint" if checkpoint else "random", "frames_per_point": frames,
            "frames_per_request": per_request, "points": [asdict(p) | {"fps": p.fps} for p in points],
            "table": format_points(points)}


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", default="tiny", choices=["tiny", "vit-b-32"])
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--json", type=Path, default=Path("build/bench_frames/result.json"))
    args = parser.parse_args()
    result = run_benchmark(args.model_size, frames=args.frames)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(result["table"])
