"""Load generator: uint8 face batches through Triton gRPC, ``concurrency`` requests in flight.

``ServedLoad`` runs it in a process of its own (see there).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np


@dataclass
class LoadResult:
    batch_size: int
    concurrency: int
    requests: int
    faces: int
    seconds: float
    latencies_ms: list[float]
    errors: list[str]
    client_rss_mb: float
    client_cpu_s: float = 0.0        # user + system CPU of the client process during the timed part

    @property
    def faces_per_s(self) -> float:
        return self.faces / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")


def _client_rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _cpu_seconds() -> float:
    import psutil

    times = psutil.Process().cpu_times()
    return times.user + times.system


def run_load(url: str, model: str, faces: np.ndarray, concurrency: int, *, duration_s: float,
             min_requests: int = 3, warmup: int = 1, timeout_s: float = 300.0,
             shared_memory: str | None = None) -> LoadResult:
    """Send ``faces`` (one batch) from ``concurrency`` threads, each with its own gRPC channel, until
    ``duration_s`` has passed AND every thread has finished ``min_requests`` timed requests.
    ``shared_memory``: None (pixels in the gRPC message), "system" or "cuda" (FerClient's regions)."""
    from fer_triton.client import FerClient, FerServerError

    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    clients = [FerClient(url, model, timeout_s=timeout_s, shared_memory=shared_memory or False, shm_regions=1)
               for _ in range(concurrency)]
    try:
        for client in clients:  # read the config once and warm every channel and model instance
            for _ in range(warmup):
                client.infer(faces)
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        cpu = _cpu_seconds()
        start = time.perf_counter()
        deadline = start + duration_s

        def worker(client) -> None:
            done = 0
            while done < min_requests or time.perf_counter() < deadline:
                t0 = time.perf_counter()
                try:
                    client.infer(faces)
                except FerServerError as exc:  # counted, never silently dropped
                    with lock:
                        errors.append(str(exc))
                    if len(errors) > 10 * concurrency:
                        return
                    continue
                with lock:
                    latencies.append((time.perf_counter() - t0) * 1000.0)
                done += 1

        threads = [threading.Thread(target=worker, args=(c,)) for c in clients]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
    finally:
        for client in clients:
            client.close()
    return LoadResult(len(faces), concurrency, len(latencies), len(latencies) * len(faces), seconds,
                      latencies, errors, _client_rss_mb(), cpu)


class ServedLoad:
    """Runs ``run_load`` in a fresh ``python -m fer_triton.benchmarks.served`` process per point.

    A fresh interpreter holds only numpy + tritonclient, so its resident size is what a client
    needs, and its CPU is not the benchmark driver's (which holds PyTorch and the exported models).
    """

    def __init__(self):
        self._tmp = tempfile.TemporaryDirectory(prefix="fer-triton-load-")

    def run(self, url: str, model: str, faces: np.ndarray, concurrency: int, *, duration_s: float,
            min_requests: int = 3, timeout_s: float = 900.0, shared_memory: str | None = None) -> LoadResult:
        faces_path = Path(self._tmp.name) / "faces.npy"
        np.save(faces_path, faces)
        cmd = [sys.executable, "-m", "fer_triton.benchmarks.served", url, model, str(faces_path), str(concurrency),
               str(duration_s), str(min_requests)] + ([shared_memory] if shared_memory else [])
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        if done.returncode != 0:
            raise RuntimeError(f"load generator failed ({done.returncode}): {done.stderr.strip()[-1500:]}")
        return LoadResult(**json.loads(done.stdout.strip().splitlines()[-1]))

    def close(self) -> None:
        self._tmp.cleanup()

    def __enter__(self) -> "ServedLoad":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def main(argv: list[str]) -> None:
    url, model, faces_path, concurrency, duration_s, min_requests, *shared_memory = argv
    result = run_load(url, model, np.load(faces_path), int(concurrency), duration_s=float(duration_s),
                      min_requests=int(min_requests), shared_memory=shared_memory[0] if shared_memory else None)
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main(sys.argv[1:])
