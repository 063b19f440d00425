"""Baselines in the benchmark's own process: the same ONNX graphs with onnxruntime, and PyTorch eager."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class TimedRun:
    engine: str             # "onnxruntime" or "pytorch"
    precision: str
    batch_size: int
    calls: int
    seconds: float
    latencies_ms: list[float]
    cpu_seconds: float = 0.0     # this process's user + system CPU during the timed calls

    @property
    def cpu_ms_per_face(self) -> float:
        return 1000.0 * self.cpu_seconds / (self.calls * self.batch_size) if self.calls else float("nan")

    @property
    def faces_per_s(self) -> float:
        return self.calls * self.batch_size / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def time_calls(fn: Callable[[], object], *, duration_s: float, min_calls: int = 3, warmup: int = 1
               ) -> tuple[int, float, list[float]]:
    """Call ``fn`` until ``duration_s`` passed and at least ``min_calls`` were made: (calls, seconds, ms each)."""
    for _ in range(warmup):
        fn()
    latencies = []
    start = time.perf_counter()
    while len(latencies) < min_calls or time.perf_counter() - start < duration_s:
        t0 = time.perf_counter()
        fn()
        latencies.append((time.perf_counter() - t0) * 1000.0)
    return len(latencies), time.perf_counter() - start, latencies


def _latest_onnx(model_dir: Path) -> Path:
    versions = sorted((p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    if not versions or not (versions[-1] / "model.onnx").is_file():
        raise FileNotFoundError(f"no <version>/model.onnx in {model_dir}")
    return versions[-1] / "model.onnx"


class OrtPipeline:
    """The graphs of an exported repository (staged or fused layout) chained in one process."""

    def __init__(self, repository: Path, prefix: str = "cafe", threads: int = 0):
        import onnxruntime as ort

        from fer_triton.export.repository import RepositoryLayout

        layout = RepositoryLayout(prefix)
        repository = Path(repository)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL

        def session(model: str):
            return ort.InferenceSession(str(_latest_onnx(repository / model)), options,
                                        providers=["CPUExecutionProvider"])

        self.fused = (repository / layout.backbone).is_dir()
        stages = layout.stages
        if self.fused:
            self._backbone = session(layout.backbone)
        else:
            self._stages = {k: session(stages[k]) for k in ("preprocess", "clip_encoder", "mask_net")}
        self._head = session(stages["head"])

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        if self.fused:
            clip_features, mask_logits = self._backbone.run(["clip_features", "mask_logits"], {"faces": faces})
        else:
            (pixels,) = self._stages["preprocess"].run(["pixels"], {"faces": faces})
            (clip_features,) = self._stages["clip_encoder"].run(["clip_features"], {"pixels": pixels})
            (mask_logits,) = self._stages["mask_net"].run(["mask_logits"], {"pixels": pixels})
        feeds = {"clip_features": clip_features, "mask_logits": mask_logits}
        return self._head.run(["probabilities"], feeds)[0]


class TorchEager:
    """The PyTorch model from the checkpoint, eager, on uint8 faces (what a user runs without export)."""

    def __init__(self, checkpoint: Path, threads: int = 0):
        import os

        import torch

        from fer_triton.checkpoint import CAFECheckpoint
        from fer_triton.model import Preprocess

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self._torch = torch
        self._model = CAFECheckpoint.load(checkpoint).build_model()
        self._preprocess = Preprocess()

    def __call__(self, faces: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            return self._model(self._preprocess(self._torch.from_numpy(faces))).probabilities.numpy()


def measure(engine: str, precision: str, fn: Callable[[np.ndarray], object], faces: np.ndarray, *,
            duration_s: float, min_calls: int = 3) -> TimedRun:
    import psutil

    fn(faces)  # warm-up outside the CPU count
    cpu = psutil.Process().cpu_times()
    calls, seconds, latencies = time_calls(lambda: fn(faces), duration_s=duration_s, min_calls=min_calls, warmup=0)
    used = psutil.Process().cpu_times()
    return TimedRun(engine, precision, len(faces), calls, seconds, latencies,
                    (used.user - cpu.user) + (used.system - cpu.system))
