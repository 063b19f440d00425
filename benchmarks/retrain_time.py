"""How long `fer-triton retrain` takes on N SYNTHETIC site images, and where the time goes.

    .venv/bin/python benchmarks/retrain_time.py --images 1000            # true ViT-B-32-quickgelu
    .venv/bin/python benchmarks/retrain_time.py --images 140 --clip-model FER-Tiny-ViT-quickgelu
    .venv/bin/python benchmarks/retrain_time.py --images 1000 --fine-tune-mask   # + the mask net

Builds an untrained CAFE model with RANDOM CLIP weights (speed only: no accuracy is measured or
meaningful), exports it, serves it with the real tritonserver on this machine, writes a synthetic
site (drawn faces with a site shift) as class folders, then runs the same library call as
`fer-triton retrain` and prints the time of each step (read images, features through the server,
fit, compare, publish; with --fine-tune-mask also the mask-net fine-tune, and the publish then
writes and switches a mask-net version too) as Markdown and JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000, help="site images (spread over the 7 classes)")
    parser.add_argument("--clip-model", default="ViT-B-32-quickgelu")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per gRPC request")
    parser.add_argument("--workdir", type=Path, default=Path("build/bench_retrain"))
    parser.add_argument("--fine-tune-mask", action="store_true", help="also fine-tune the ResNet-18 mask net")
    parser.add_argument("--mask-epochs", type=int, default=3)
    args = parser.parse_args()

    from fer_triton.benchmarks.random_model import CHECKPOINT_NAME, export_random_repository
    from fer_triton.retrain.mask_finetune import MaskFineTuneOptions
    from fer_triton.retrain.pipeline import RetrainOptions, retrain
    from fer_triton.server import TritonServer, free_port
    from fer_triton.synthetic import SiteShift, write_site

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    setup = {}
    t = time.perf_counter()
    repository = export_random_repository(args.workdir, args.clip_model, source="retrain_time")
    setup["build + export (not part of retrain)"] = time.perf_counter() - t

    t = time.perf_counter()
    per_class = -(-args.images // 7)
    site = write_site(args.workdir / "site", per_class, SiteShift(0.8, (1.1, 1.0, 0.85), 0.5, 3.0), seed=1)
    setup[f"write {per_class * 7} synthetic site PNGs (not part of retrain)"] = time.perf_counter() - t

    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    t = time.perf_counter()
    server.start()
    setup["server start (not part of retrain)"] = time.perf_counter() - t
    try:
        t = time.perf_counter()
        mask = MaskFineTuneOptions(checkpoint=args.workdir / CHECKPOINT_NAME, epochs=args.mask_epochs,
                                   save_checkpoint=args.workdir / "fine_tuned.pt") if args.fine_tune_mask else None
        result = retrain(site, server.grpc_url, repository,
                         options=RetrainOptions(batch_size=args.batch_size, progress=True,
                                                report_dir=args.workdir / "report", mask=mask, force=True))
        total = time.perf_counter() - t
    finally:
        server.stop()

    images = per_class * 7
    rows = dict(result.timings)
    what = f" --fine-tune-mask ({args.mask_epochs} epochs)" if args.fine_tune_mask else ""
    print(f"\nretrain{what} of {images} SYNTHETIC site images, CLIP {args.clip_model} with RANDOM weights, "
          f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}")
    print("\n| step | seconds | share |\n|---|---|---|")
    for step, seconds in rows.items():
        print(f"| {step} | {seconds:.2f} | {seconds / total:.0%} |")
    print(f"| **total** | **{total:.2f}** | |")
    print(f"\nfeatures through the server: {images / rows['features (server)']:.1f} images/s "
          f"(batch {args.batch_size})")
    for step, seconds in setup.items():
        print(f"setup: {step}: {seconds:.1f} s")
    print(f"decision: {result.decision}")
    print(json.dumps({"images": images, "clip_model": args.clip_model, "batch_size": args.batch_size,
                      "fine_tune_mask_epochs": args.mask_epochs if args.fine_tune_mask else None,
                      "total_s": total, "steps_s": rows, "setup_s": setup}))


if __name__ == "__main__":
    main()
