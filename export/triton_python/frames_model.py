"""Triton python-backend model ``<prefix>_frames``: whole frames in, one row per face out (docs/frames.md).

Copied by ``fer-triton export`` (export/detector.py) into ``<prefix>_frames/1/model.py``, next to
``face_crops.py`` (the crop rule the client uses) and ``face_detection.py`` (MTCNN / YOLOv8-face /
SCRFD), which it imports from its own folder: it needs numpy and Pillow, never fer_triton.

One ``execute`` call:

1. decode every frame: ``encoded_frames`` (BYTES [E], one JPEG/PNG/BMP/WebP file each) with Pillow,
   the pixel count read from the header and refused above ``max_pixels`` before any pixel is
   decoded, EXIF orientation applied as a photo viewer does; ``raw_frames`` (UINT8 [R, H, W, 3]) as is;
2. detect faces in all decoded frames of the request together (``detect_many``: MTCNN shares each
   P-net call among frames of one size, one R-net and one O-net call for all) through BLS calls to
   the detector nets' models (``detector_tensors``);
3. crop each face (``face_crops.crop_face``: square box widened by ``margin``, PIL bilinear to
   ``wire_size``), at most ``max_faces_per_frame`` per frame, the highest-scoring;
4. classify ALL faces of all requests of this call in ONE BLS request to the classifier ensemble
   (split only above its max batch size), so Triton's dynamic batcher merges them with other
   clients' faces.

A frame that cannot be answered (empty, undecodable, above the pixel limit) gets a message in
``frame_errors`` and no faces; the other frames of the request are answered. Only a request with
neither input fails as a whole.
"""

import io
import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import face_crops  # noqa: E402 - copied next to this file
import face_detection  # noqa: E402

CLASSIFIER_OUTPUTS = ("probabilities", "logits", "masked_features")
DEFAULT_OUTPUTS = ("frame_index", "boxes", "crop_boxes", "scores", "probabilities", "logits", "face_counts",
                   "frame_errors")
ALPHA_MODES = {"LA", "La", "PA", "RGBA", "RGBa"}
DIRECT_MODES = {"1", "L", "P", "RGB", "RGBX", "YCbCr", "CMYK", "HSV"}


class FrameError(Exception):
    """One frame cannot be answered; the message names the frame and the reason."""


def decode_frame(data: bytes, index: int, max_pixels: int) -> np.ndarray:
    """One encoded image -> UINT8 RGB [H, W, 3] (EXIF orientation applied); FrameError naming the frame."""
    from PIL import Image, ImageOps

    if len(data) == 0:
        raise FrameError(f"frame {index}: empty frame (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise FrameError(f"frame {index}: {width}x{height} = {width * height} pixels is above max_pixels "
                                 f"{max_pixels} (refused before decoding)")
            if width == 0 or height == 0:
                raise FrameError(f"frame {index}: has no pixels ({width}x{height})")
            if getattr(image, "n_frames", 1) > 1 and image.format != "MPO":
                raise FrameError(f"frame {index}: holds {image.n_frames} frames ({image.format} animation or "
                                 "multi-page file); send one still image per frame")
            image.load()
            try:
                orientation = image.getexif().get(274)
                upright = ImageOps.exif_transpose(image) if orientation in (2, 3, 4, 5, 6, 7, 8) else image
            except Exception:  # noqa: BLE001 - unreadable EXIF: shown as stored, as viewers do
                upright = image
            mode = upright.mode
            if mode == "P" and "transparency" in upright.info:
                upright, mode = upright.convert("RGBA"), "RGBA"
            if mode in ALPHA_MODES:
                rgba = upright.convert("RGBA")
                black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
                return np.asarray(Image.alpha_composite(black, rgba).convert("RGB"), dtype=np.uint8)
            if mode in DIRECT_MODES:
                return np.asarray(upright.convert("RGB"), dtype=np.uint8)
            raise FrameError(f"frame {index}: Pillow mode {mode!r} is not an 8-bit colour or grey image; "
                             "send 8-bit RGB or greyscale frames")
    except FrameError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the decoder raised is this frame's error
        reason = str(exc) or type(exc).__name__
        if type(exc).__name__ == "UnidentifiedImageError":  # Pillow's message names a BytesIO object, not the data
            reason = "Pillow recognises no image format in them"
        raise FrameError(f"frame {index}: cannot decode {len(data)} bytes as an image "
                         f"({type(exc).__name__}: {reason})") from None


class TritonPythonModel:
    def initialize(self, args):
        from PIL import Image

        config = json.loads(args["model_config"])
        self.model_name = config["name"]
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.classifier = params["classifier"]
        self.classifier_max_batch = int(params.get("classifier_max_batch_size", "64"))
        self.wire_size = int(params.get("wire_size", "224"))
        self.margin = float(params.get("margin", "0.1"))
        self.max_faces = int(params.get("max_faces_per_frame", "32"))
        self.max_pixels = int(params.get("max_pixels", "33177600"))
        self.tensors = json.loads(params["detector_tensors"])
        dims = {o["name"]: o["dims"] for o in config["output"]}
        self.num_classes = int(dims["probabilities"][-1])
        # This model checks the pixel count itself (with its own message); Pillow's guard must not come first.
        Image.MAX_IMAGE_PIXELS = None
        size = (640, 640)
        if "detector" in self.tensors:
            dims = self.tensors["detector"].get("input_dims", [])
            if len(dims) == 4 and dims[2] > 0 and dims[3] > 0:
                size = (int(dims[2]), int(dims[3]))
        self.detector = face_detection.make_detector(
            params.get("detector", "mtcnn"), self._run_net, min_face=int(params.get("min_face", "40")),
            min_score=float(params.get("min_score", "0.9")), input_size=size)

    # -- BLS ---------------------------------------------------------------------------------------
    def _run_net(self, net, batch):
        """face_detection's ``run``: one detector net through a BLS request (split above its max batch)."""
        spec = self.tensors[net]
        limit = int(spec.get("max_batch_size", 0))
        if limit > 0 and len(batch) > limit:
            parts = [self._run_net(net, batch[i:i + limit]) for i in range(0, len(batch), limit)]
            return [np.concatenate(arrays) for arrays in zip(*parts)]
        request = pb_utils.InferenceRequest(
            model_name=spec["model"], requested_output_names=list(spec["outputs"]),
            inputs=[pb_utils.Tensor(spec["input"], np.ascontiguousarray(batch, dtype=np.float32))])
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{spec['model']}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in spec["outputs"]]

    def _classify(self, faces, outputs):
        """UINT8 faces [F, S, S, 3] -> {output: array [F, ...]}, in as few classifier requests as its max
        batch size allows (one for F <= max batch)."""
        results = {name: [] for name in outputs}
        for start in range(0, len(faces), self.classifier_max_batch):
            request = pb_utils.InferenceRequest(
                model_name=self.classifier, requested_output_names=list(outputs),
                inputs=[pb_utils.Tensor("faces", np.ascontiguousarray(faces[start:start + self.classifier_max_batch]))])
            response = request.exec()
            if response.has_error():
                raise RuntimeError(f"classifier {self.classifier}: {response.error().message()}")
            for name in outputs:
                results[name].append(pb_utils.get_output_tensor_by_name(response, name).as_numpy())
        return {name: np.concatenate(parts) for name, parts in results.items()}

    # -- one request -------------------------------------------------------------------------------
    def _frames(self, request):
        """The request's frames as a list of (UINT8 [H, W, 3] or FrameError); ValueError for a malformed request."""
        encoded = pb_utils.get_input_tensor_by_name(request, "encoded_frames")
        raw = pb_utils.get_input_tensor_by_name(request, "raw_frames")
        if encoded is None and raw is None:
            raise ValueError("send encoded_frames (BYTES [N], one image file each) and/or raw_frames "
                             "(UINT8 [R, H, W, 3]); the request had neither input")
        frames = []
        if encoded is not None:
            for i, data in enumerate(encoded.as_numpy().reshape(-1)):
                data = data if isinstance(data, bytes) else bytes(data)
                try:
                    frames.append(decode_frame(data, i, self.max_pixels))
                except FrameError as exc:
                    frames.append(exc)
        if raw is not None:
            array = raw.as_numpy()
            if array.ndim != 4 or array.shape[3] != 3:
                raise ValueError(f"raw_frames must be UINT8 [R, H, W, 3], got {list(array.shape)}")
            height, width = array.shape[1:3]
            for k in range(array.shape[0]):
                index = len(frames)
                if height * width > self.max_pixels:
                    frames.append(FrameError(f"frame {index}: {width}x{height} = {width * height} pixels is above "
                                             f"max_pixels {self.max_pixels} (refused before decoding)"))
                elif height == 0 or width == 0:
                    frames.append(FrameError(f"frame {index}: has no pixels ({width}x{height})"))
                else:
                    frames.append(np.ascontiguousarray(array[k]))
        return frames

    def execute(self, requests):
        responses = [None] * len(requests)
        timings = np.zeros(4, dtype=np.float64)  # decode, detect, crop, classify (ms)
        work = []  # (request index, requested outputs, per-frame rows, counts, errors)
        faces = []
        for r, request in enumerate(requests):
            try:
                wanted = set(request.requested_output_names()) or set(DEFAULT_OUTPUTS)
            except AttributeError:
                wanted = set(DEFAULT_OUTPUTS)
            start = time.perf_counter()
            try:
                frames = self._frames(request)
            except ValueError as exc:
                responses[r] = self._error(str(exc))
                continue
            timings[0] += (time.perf_counter() - start) * 1e3
            rows, counts, errors = [], [], []
            # All decoded frames of the request in one detector pass (MTCNN: P-net calls shared by frames of
            # one size, one R-net and one O-net call); a detector failure is each of those frames' error.
            decoded = [i for i, frame in enumerate(frames) if not isinstance(frame, FrameError)]
            start = time.perf_counter()
            try:
                detections = dict(zip(decoded, self.detector.detect_many([frames[i] for i in decoded])))
            except Exception as exc:  # noqa: BLE001 - reported per frame, the request is still answered
                failure = f"face detection failed ({type(exc).__name__}: {exc})"
                detections = {i: FrameError(f"frame {i}: {failure}") for i in decoded}
            timings[1] += (time.perf_counter() - start) * 1e3
            for index, frame in enumerate(frames):
                found = detections.get(index, frame)
                if isinstance(found, FrameError):
                    counts.append(0)
                    errors.append(str(found))
                    continue
                start = time.perf_counter()
                counts.append(len(found))
                errors.append("")
                if len(found) > self.max_faces:  # keep the highest-scoring, then back to reading order
                    found = sorted(sorted(found, key=lambda d: -d.score)[:self.max_faces], key=lambda d: (d.y, d.x))
                for det in found:
                    region = face_crops.crop_region(frame, det.box, self.margin)
                    faces.append(face_crops.crop_face(frame, det.box, self.wire_size, self.margin))
                    rows.append((index, det.box, region, det.score, len(faces) - 1))
                timings[2] += (time.perf_counter() - start) * 1e3
            work.append((r, wanted, rows, counts, errors))
        classified = {}
        wanted_all = set().union(*(w[1] for w in work)) if work else set()
        outputs = [name for name in CLASSIFIER_OUTPUTS if name in wanted_all]
        if faces and outputs:
            start = time.perf_counter()
            try:
                classified = self._classify(np.stack(faces), outputs)
            except Exception as exc:  # noqa: BLE001 - the classifier failed: every request of this call fails
                for r, *_ in work:
                    responses[r] = self._error(str(exc))
                return responses
            timings[3] += (time.perf_counter() - start) * 1e3
        for r, wanted, rows, counts, errors in work:
            responses[r] = self._response(wanted, rows, counts, errors, faces, classified, timings)
        return responses

    def _response(self, wanted, rows, counts, errors, faces, classified, timings):
        picks = np.asarray([row[4] for row in rows], dtype=np.int64)
        size = self.wire_size
        values = {
            "frame_index": np.asarray([row[0] for row in rows], dtype=np.int32),
            "boxes": np.asarray([row[1] for row in rows], dtype=np.int32).reshape(-1, 4),
            "crop_boxes": np.asarray([row[2] for row in rows], dtype=np.int32).reshape(-1, 4),
            "scores": np.asarray([row[3] for row in rows], dtype=np.float32),
            "face_counts": np.asarray(counts, dtype=np.int32),
            "frame_errors": np.asarray([e.encode("utf-8") for e in errors], dtype=np.object_),
            "timings_ms": timings.astype(np.float32),
        }
        if "crops" in wanted:
            values["crops"] = (np.stack([faces[i] for i in picks]) if len(picks)
                               else np.zeros((0, size, size, 3), dtype=np.uint8))
        for name in CLASSIFIER_OUTPUTS:
            if name in wanted:
                if len(picks):
                    values[name] = classified[name][picks]
                else:
                    width = 512 if name == "masked_features" else self.num_classes
                    values[name] = np.zeros((0, width), dtype=np.float32)
        tensors = [pb_utils.Tensor(name, value) for name, value in values.items() if name in wanted]
        return pb_utils.InferenceResponse(output_tensors=tensors)

    def _error(self, message):
        error = pb_utils.TritonError(f"{self.model_name}: {message}")
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
