"""Faces/s over gRPC messages vs Triton's system shared memory, side by side on one server.

    .venv/bin/python -m fer_triton.benchmarks.shared_memory                    # tiny CLIP config
    .venv/bin/python -m fer_triton.benchmarks.shared_memory --clip-model ViT-B-32-quickgelu

Exports an untrained CAFE model with RANDOM weights (speed only), serves it with the real CPU
tritonserver, and times ``FerClient.infer`` on the same batch through both paths, alternating them
so both see the same machine load. The shared-memory path saves the client's serialisation and the
copy of the pixels through the gRPC stack; it matters where the model is fast (tiny model, GPUs) and
hardly where the CPU spends a second in the CLIP encoder.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip-model", default="FER-Tiny-ViT-quickgelu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--requests", type=int, default=30, help="timed requests per path")
    args = parser.parse_args()

    from fer_triton.benchmarks.machine import describe
    from fer_triton.benchmarks.random_model import export_random_repository
    from fer_triton.client import FerClient
    from fer_triton.server import TritonServer, free_port
    from fer_triton.synthetic import draw_faces

    work = Path(tempfile.mkdtemp(prefix="fer-triton-shm-"))
    try:
        repository = export_random_repository(work, args.clip_model, source="shared_memory")
        faces, _ = draw_faces(args.batch_size, 224, seed=0)
        with TritonServer(repository, grpc_port=free_port(), http_port=free_port(),
                          metrics_port=free_port()) as server, \
                FerClient(server.grpc_url) as grpc, FerClient(server.grpc_url, shared_memory=True) as shm:
            times = {"gRPC message": [], "system shared memory": []}
            for client in (grpc, shm):  # warm up both paths
                client.infer(faces)
            for _ in range(args.requests):
                for name, client in (("gRPC message", grpc), ("system shared memory", shm)):
                    started = time.perf_counter()
                    client.infer(faces)
                    times[name].append(time.perf_counter() - started)
        m = describe()
        print(f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_1m']}, {m['date']}; "
              f"model: {args.clip_model} with random weights; batch {args.batch_size} at 224x224")
        print("| path | median ms per request | faces/s |")
        print("|---|---:|---:|")
        for name, values in times.items():
            median = statistics.median(values)
            print(f"| {name} | {median * 1000:.1f} | {args.batch_size / median:.1f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
