"""How long publishing a new head takes on 1 and on 3 replicas of one repository (and a rollback).

    .venv/bin/python -m fer_triton.benchmarks.publish_time                        # tiny CLIP config
    .venv/bin/python -m fer_triton.benchmarks.publish_time --clip-model ViT-B-32-quickgelu

Builds an untrained CAFE model with RANDOM weights (speed only), exports it once, starts N real
tritonservers on free loopback ports over the SAME repository (model control behind an admin
key, as a fleet runs), then times the library calls `fer-triton retrain` and `rollback` make after
the fit: ``publish_head`` (export + validate the head's ONNX, write the version folder, load it on
every replica, check each serves it, verify each replica's outputs) and ``rollback``. The head is
512x7 whatever the backbone, so the figures differ between models only through the ensemble reload
each load triggers. Prints a Markdown table and the machine.
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
    parser.add_argument("--replicas", default="1,3", help="comma-separated fleet sizes")
    parser.add_argument("--repeats", type=int, default=3, help="publishes (and rollbacks) timed per fleet size")
    args = parser.parse_args()

    import numpy as np

    from fer_triton.admin_key import new_key
    from fer_triton.benchmarks.machine import describe
    from fer_triton.benchmarks.random_model import export_random_repository
    from fer_triton.retrain.fit import LinearHead
    from fer_triton.retrain.pair_publish import rollback
    from fer_triton.retrain.publish import StageVersions, publish_head
    from fer_triton.retrain.replicas import Fleet
    from fer_triton.server import TritonServer, free_port
    from fer_triton.synthetic import draw_faces

    work = Path(tempfile.mkdtemp(prefix="fer-triton-publish-"))
    try:
        repository = export_random_repository(work, args.clip_model, source="publish_time")
        key, rows = new_key(), []
        rng = np.random.default_rng(0)
        faces, _ = draw_faces(8, 224, seed=0)
        for size in (int(n) for n in args.replicas.split(",")):
            servers = [TritonServer(repository, grpc_port=free_port(), http_port=free_port(),
                                    metrics_port=free_port(), admin_key=key).start() for _ in range(size)]
            try:
                with Fleet([s.grpc_url for s in servers], admin_key=key) as fleet:
                    publish, back = [], []
                    for _ in range(args.repeats):
                        head = LinearHead(rng.normal(0, 0.05, (7, 512)).astype(np.float32), np.zeros(7))

                        def verify(client):  # one request of 8 faces per replica, as retrain verifies
                            client.infer(faces)

                        started = time.perf_counter()
                        publish_head(fleet, StageVersions(repository), head, info={}, verify=verify)
                        publish.append(time.perf_counter() - started)
                        started = time.perf_counter()
                        rollback(fleet, repository)
                        back.append(time.perf_counter() - started)
            finally:
                for server in servers:
                    server.stop()
            rows.append((size, statistics.median(publish), max(publish), statistics.median(back), max(back)))
        m = describe()
        print(f"machine: {m['cpu']}, {m['cores']} cores, load average {m['load_average_1m']} at the end, "
              f"{m['date']}; model: {args.clip_model} with random weights")
        print("| replicas | publish median s | publish max s | rollback median s | rollback max s |")
        print("|---:|---:|---:|---:|---:|")
        for size, p50, pmax, r50, rmax in rows:
            print(f"| {size} | {p50:.2f} | {pmax:.2f} | {r50:.2f} | {rmax:.2f} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
