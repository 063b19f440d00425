"""`fer-triton bench --frames` / `--detection-quality`: the server-side detection benchmarks of issue #15.

Frames/s (benchmarks/frames.py) exports a model with the MTCNN detector into ``workdir/frames``
and serves it; detection quality (benchmarks/detection_quality.py) runs the served detector's code
in this process (``mtcnn-onnx``: the same code and weights as the frames model), Haar and, when
installed, facenet-pytorch's MTCNN. Both print a Markdown table and write JSON next to ``json_path``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def run_detection_benchmarks(frames: bool, quality: bool, *, model_size: str = "vit-b-32",
                             checkpoint: Path | None = None, workdir: Path = Path("build/bench"),
                             json_path: Path = Path("build/bench/result.json"), frames_per_point: int = 4,
                             echo: Callable[[str], None] = print) -> dict:
    """Run the chosen benchmarks; returns {"frames": ..., "detection_quality": ...} (what was run)."""
    from fer_triton.benchmarks import machine

    out: dict = {}
    json_path = Path(json_path)
    if quality:
        from fer_triton.benchmarks.detection_quality import as_json, format_scores, run_quality

        echo("detection quality (served MTCNN in-process, Haar, facenet MTCNN if installed)")
        scores = run_quality(echo=echo)
        table = format_scores(scores)
        echo("\n" + table)
        out["detection_quality"] = {"machine": machine.describe(), "scores": as_json(scores), "table": table}
    if frames:
        from fer_triton.benchmarks.frames import run_benchmark

        echo(f"frames/s: server-side vs client-side detection ({model_size})")
        result = run_benchmark(model_size, Path(workdir) / "frames", checkpoint, frames=frames_per_point, echo=echo)
        echo("\n" + result["table"])
        if result["weights"] == "random":
            echo("(weights are RANDOM: speed only; labels are meaningless)")
        out["frames"] = result
    path = json_path.with_name(json_path.stem + "_detection.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=str))
    echo(f"\nwrote {path}")
    return out
