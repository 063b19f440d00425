"""What sites cost: served faces/s with 1 site and with 10 sites sharing the backbone, and server memory per site.

    .venv/bin/python benchmarks/sites.py --model-size tiny          # a quick check (2-layer CLIP)
    .venv/bin/python benchmarks/sites.py --model-size vit-b-32      # the true ViT-B/32 + ResNet-18 (slow on a CPU)

Builds an untrained CAFE model with RANDOM CLIP weights (speed does not depend on them), exports it
(every export carries ``cafe_sites`` and ``cafe_site_head``), serves it with the real tritonserver,
creates 10 sites with a head each, then sends the SAME load (``--concurrency`` clients, each keeping
one request of ``--batch-size`` faces in flight) through ``cafe_sites``:

- 1 site: every request for site-000;
- 10 sites: request k for site-(k mod 10), so the sites' requests meet in the dynamic batcher;
- base: the ``cafe`` ensemble (no site), for reference.

Runs alternate (1, 10, base, 1, 10, base ...) so a busy shared machine weighs on each alike; the
table gives the mean of ``--rounds``, the server's CPU time per face (user + system of the whole
process tree: what a shared machine changes least; the "vs 1 site" column is its inverse ratio, a
throughput on an idle machine) and, from Triton's metrics, the faces per execution of the CLIP
encoder (the heaviest backbone model): the batching that sites must not lower.
Memory, measured first (a load run grows the backbone's buffers): resident size of the server's
process tree (server + one python stub per loaded model version) with no site, 1, 10 and 100 sites
with heads. Prints Markdown tables; ``--json`` saves all.
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics
import threading
import time
from pathlib import Path

import numpy as np

MODEL_SIZES = {"tiny": "FER-Tiny-ViT-quickgelu", "vit-b-32": "ViT-B-32-quickgelu"}


def run_load(url: str, faces: np.ndarray, concurrency: int, duration_s: float,
             sites: list[str] | None) -> dict:
    """``concurrency`` threads send ``faces`` for ``duration_s``; ``sites`` None: the base ``cafe``
    ensemble, else request k of a thread goes to site ``sites[k % len(sites)]`` (all its faces).
    Returns faces/s, requests, errors."""
    from fer_triton.client import FerClient, FerServerError

    clients = [FerClient(url, timeout_s=600) for _ in range(concurrency)]
    counts, errors, lock = [0] * concurrency, [], threading.Lock()
    for client in clients:  # warm every channel and route
        client.infer(faces, sites=None if sites is None else sites[0])
    deadline = time.perf_counter() + duration_s

    def worker(i: int) -> None:
        names = itertools.cycle(sites[i % len(sites):] + sites[:i % len(sites)]) if sites else None
        while time.perf_counter() < deadline:
            try:
                clients[i].infer(faces, sites=None if names is None else next(names))
                counts[i] += 1
            except FerServerError as exc:
                with lock:
                    errors.append(str(exc))

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    for client in clients:
        client.close()
    requests = sum(counts)
    return {"faces_per_s": requests * len(faces) / seconds, "requests": requests, "seconds": seconds,
            "errors": len(errors), "first_error": errors[0] if errors else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-size", choices=sorted(MODEL_SIZES), default="tiny")
    parser.add_argument("--batch-size", type=int, default=4, help="faces per request")
    parser.add_argument("--concurrency", type=int, default=4, help="clients, one request in flight each")
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each configuration")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench_sites"))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from fer_triton.benchmarks import memory, metrics
    from fer_triton.benchmarks.machine import cpu_model
    from fer_triton.benchmarks.random_model import export_random_repository
    from fer_triton.client import FerClient
    from fer_triton.retrain.fit import LinearHead
    from fer_triton.retrain.sites import Sites
    from fer_triton.server import TritonServer, free_port
    from fer_triton.synthetic import draw_faces

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    clip_model = MODEL_SIZES[args.model_size]
    repository = export_random_repository(args.workdir, clip_model, source="sites benchmark")
    faces, _ = draw_faces(args.batch_size, 224, seed=3)
    rng = np.random.default_rng(0)
    names = [f"site-{i:03d}" for i in range(100)]

    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    server.start()
    result = {"model": clip_model, "batch_size": args.batch_size, "concurrency": args.concurrency,
              "duration_s": args.duration, "machine": f"{cpu_model()}, {_cores()} cores",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": [], "memory_mb": {}}
    try:
        url = server.grpc_url

        def rss(label: str) -> None:
            time.sleep(2.0)  # a replaced site-head version's process leaves once idle
            routes = [None, [""]] + ([] if label == "no site" else [names[:1]])
            for sites in routes:  # warm each route before every reading: first runs allocate
                run_load(url, faces, 1, 0.0, sites)
            result["memory_mb"][label] = round(sum(p.rss_mb for p in memory.server_tree(server.pid)), 1)

        def add_sites(chosen: list[str]) -> None:
            def change(table, _files):
                for name in chosen:
                    table.add(name, "benchmark")
                    table.push(name, LinearHead(rng.normal(0, 0.05, (7, 512)), rng.normal(0, 0.1, 7)), {})
                return f"{len(chosen)} benchmark sites"

            with FerClient(url) as client:
                Sites(repository).publish(client, change)

        # Memory first, on a server that has served only the warm-up requests: a load run grows the
        # backbone's buffers with its batches, which is not what sites cost.
        rss("no site")
        add_sites(names[:1])
        rss("1 site")
        add_sites(names[1:10])
        rss("10 sites")
        add_sites(names[10:])
        rss("100 sites")

        backbone = "cafe_clip_encoder"
        configs = {"1 site": names[:1], "10 sites": names[:10], "base (cafe)": None}
        for round_ in range(args.rounds):
            for label, sites in configs.items():
                before, cpu = metrics.scrape(server.metrics_url), memory.tree_cpu_seconds(server.pid)
                run = run_load(url, faces, args.concurrency, args.duration, sites)
                cpu = memory.tree_cpu_seconds(server.pid) - cpu
                times = {m.model: m for m in metrics.difference(before, metrics.scrape(server.metrics_url))}
                served = times["cafe_sites" if sites else "cafe"].faces  # warm-up requests included, as in the CPU
                run |= {"config": label, "round": round_,
                        "server_cpu_ms_per_face": 1000.0 * cpu / served if served else None,
                        "backbone_faces_per_execution": round(times[backbone].faces_per_execution, 2)
                        if backbone in times else None}
                result["runs"].append(run)
                print(f"  round {round_ + 1} {label:<12} {run['faces_per_s']:8.1f} faces/s, server CPU "
                      f"{run['server_cpu_ms_per_face']:.1f} ms/face, backbone batch "
                      f"{run['backbone_faces_per_execution']}, errors {run['errors']}", flush=True)
    finally:
        server.stop()

    summary = {}
    for label in configs:
        runs = [r for r in result["runs"] if r["config"] == label]
        summary[label] = {"faces_per_s": statistics.mean(r["faces_per_s"] for r in runs),
                          "spread": (min(r["faces_per_s"] for r in runs), max(r["faces_per_s"] for r in runs)),
                          "backbone_batch": statistics.mean(r["backbone_faces_per_execution"] or 0 for r in runs),
                          "cpu_ms": statistics.mean(r["server_cpu_ms_per_face"] or 0 for r in runs),
                          "errors": sum(r["errors"] for r in runs)}
    result["summary"] = summary
    one = summary["1 site"]["faces_per_s"]
    print(f"\n{result['date']}, {clip_model} (RANDOM weights), {result['machine']}; {args.concurrency} clients x "
          f"{args.batch_size} "
          f"faces per request, {args.rounds} x {args.duration:g} s per configuration\n")
    cpu_one = summary["1 site"]["cpu_ms"]
    print("| traffic | faces/s (mean) | min .. max | vs 1 site | server CPU ms/face | vs 1 site | "
          "backbone faces per execution | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, s in summary.items():
        print(f"| {label} | {s['faces_per_s']:.1f} | {s['spread'][0]:.1f} .. {s['spread'][1]:.1f} | "
              f"{s['faces_per_s'] / one:.3f}x | {s['cpu_ms']:.1f} | {cpu_one / s['cpu_ms']:.3f}x | "
              f"{s['backbone_batch']:.2f} | {s['errors']} |")
    mem = result["memory_mb"]
    print("\n| sites with a head | server RSS MB | vs no site | per extra site (from 1) |")
    print("|---|---:|---:|---:|")
    for label, mb in mem.items():
        count = int(label.split()[0]) if label[0].isdigit() else 0
        per = f"{(mb - mem['1 site']) / (count - 1) * 1024:.0f} KB" if count > 1 else "-"
        print(f"| {label} | {mb:.0f} | {mb - mem['no site']:+.1f} | {per} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"\nwrote {args.json}")


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    main()
