"""Baselines in the benchmark's own process: timing helpers and PyTorch eager.

The same ONNX graphs run in-process with fer_triton.export.onnx_chain.OnnxChain (staged or fused,
as the repository's ensemble wires them).
"""

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


class TorchEager:
    """The PyTorch model from the checkpoint, eager, on uint8 faces (what a user runs without export)."""

    def __init__(self, checkpoint: Path, threads: int = 0):
        import os

        import torch

        from fer_triton.checkpoint import CAFECheckpoint

        torch.set_num_threads(threads or os.cpu_count() or 1)
        self._torch = torch
        self._model = CAFECheckpoint.load(checkpoint).build_model()
        self._preprocess = self._model.preprocess

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
