"""One benchmark run: export the variants, time the in-process baselines, then each served variant.

    result = run_benchmark(BenchConfig(model_size="vit-b-32"))   # a JSON-ready dict
    print(format_report(result))

Served and in-process figures come from the same run on the same machine, so their ratios mean
something even where the absolute numbers move with the machine's load.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from fer_triton.benchmarks import machine, memory, metrics
from fer_triton.benchmarks.cpu_engines import inprocess_chain
from fer_triton.benchmarks.inprocess import TorchEager, measure
from fer_triton.benchmarks.served import ServedLoad
from fer_triton.export.onnx_chain import LAYOUTS as GRAPH_LAYOUTS
from fer_triton.export.precision_names import CPU_PRECISIONS
from fer_triton.metrics import max_abs_diff

log = logging.getLogger(__name__)

MODEL_SIZES = {"vit-b-32": "ViT-B-32-quickgelu", "tiny": "FER-Tiny-ViT-quickgelu"}
PRECISIONS = CPU_PRECISIONS     # served variants are CPU exports
LAYOUTS = tuple(GRAPH_LAYOUTS)  # ("staged", "fused")
DEFAULT_VARIANTS = ("fp32-staged", "fp32-fused", "int8-fused")


class BenchError(RuntimeError):
    """A benchmark setting is invalid or a step failed (the message says which)."""


def parse_variant(name: str) -> tuple[str, str]:
    """"int8-fused" -> ("int8", "fused"); OpenVINO variants ("ov-bf16-fused", benchmarks/cpu_engines.py)
    give the precision of their files ("fp32")."""
    from fer_triton.benchmarks.cpu_engines import split_variant

    precision, _, layout = split_variant(name)[1].partition("-")
    if precision not in PRECISIONS or layout not in LAYOUTS:
        raise BenchError(f"unknown served variant {name!r}: use <precision>-<layout> with precision in "
                         f"{PRECISIONS} and layout in {LAYOUTS}, e.g. fp32-staged, or ov-<fp32|bf16|int8>-<layout> "
                         f"for OpenVINO")
    return precision, layout


@dataclass
class BenchConfig:
    model_size: str = "vit-b-32"
    checkpoint: Path | None = None          # default: a random-weight checkpoint made in workdir
    workdir: Path = Path("build/bench")
    variants: tuple[str, ...] = DEFAULT_VARIANTS
    batch_sizes: tuple[int, ...] = (1, 16)
    concurrency: tuple[int, ...] = (1, 2)
    duration_s: float = 6.0                 # per measured point (at least min_requests per client)
    min_requests: int = 3
    threads: int = 0                        # onnxruntime/PyTorch threads in-process (0 = all cores)
    baselines: bool = True                  # onnxruntime in-process + PyTorch eager
    perf_analyzer: bool = True
    perf_analyzer_batch: int = 16
    reuse_exports: bool = False             # keep repositories already in workdir (same checkpoint)
    # Also measure every served point with faces through Triton's shared memory: None, "system" or "cuda".
    shared_memory: str | None = None
    seed: int = 0

    def validate(self) -> None:
        if self.model_size not in MODEL_SIZES:
            raise BenchError(f"model size must be one of {', '.join(MODEL_SIZES)}, not {self.model_size!r}")
        for v in self.variants:
            parse_variant(v)
        if not self.variants:
            raise BenchError("no served variant to measure")
        bad = [b for b in self.batch_sizes if not 1 <= b <= 64]
        if bad or not self.batch_sizes:
            raise BenchError("batch sizes must be 1..64 (the repository's max_batch_size), "
                             f"got {list(self.batch_sizes)}")
        if not self.concurrency or min(self.concurrency) < 1:
            raise BenchError(f"concurrency levels must be >= 1, got {list(self.concurrency)}")
        if self.duration_s <= 0 or self.min_requests < 1:
            raise BenchError(f"duration must be > 0 and min requests >= 1, got {self.duration_s}, {self.min_requests}")
        if self.shared_memory is not None:
            from fer_triton.client.shared_memory import SharedMemoryError, check_shared_memory

            try:
                check_shared_memory(self.shared_memory)
            except (SharedMemoryError, ValueError) as exc:
                raise BenchError(str(exc)) from exc
        if self.checkpoint is not None and not Path(self.checkpoint).is_file():
            raise BenchError(f"checkpoint not found: {self.checkpoint}")


def _checkpoint(cfg: BenchConfig, echo: Callable[[str], None]) -> Path:
    if cfg.checkpoint is not None:
        return Path(cfg.checkpoint)
    from fer_triton.benchmarks.random_model import save_random_checkpoint

    clip_model = MODEL_SIZES[cfg.model_size]
    path = Path(cfg.workdir) / f"cafe_{cfg.model_size}_random.pt"
    if not path.is_file():
        echo(f"building a random-weight CAFE model ({clip_model} + ResNet-18): speed only, never accuracy")
        save_random_checkpoint(path, clip_model, source="fer-triton bench", seed=cfg.seed)
    return path


def _export_metadata(repo: Path) -> dict:
    """What an earlier export recorded in the ensemble's config (precision and INT8 agreement)."""
    import json

    from fer_triton.export.repository import parse_config

    meta = json.loads(parse_config(repo / "cafe" / "config.pbtxt").parameters["fer_triton"].string_value or "{}")
    out = {}
    if "top1_agreement_vs_fp32" in meta:
        out.update(top1_agreement_vs_fp32=meta["top1_agreement_vs_fp32"],
                   agreement_faces=int(str(meta.get("agreement_faces", "0")).split()[0]),
                   quantization=meta.get("quantization"))
    return out


def _export(cfg: BenchConfig, checkpoint: Path, variant: str, echo) -> tuple[Path, dict]:
    from fer_triton.export.exporter import export_checkpoint

    precision, layout = parse_variant(variant)
    repo = Path(cfg.workdir) / "repositories" / variant
    if cfg.reuse_exports and (repo / "cafe" / "config.pbtxt").is_file():
        echo(f"  {variant}: reusing {repo}")
        info = {"reused": True, **_export_metadata(repo)}
        if variant.startswith("ov-"):  # the record of the precision its runners are pinned to
            from fer_triton.benchmarks.cpu_engines import pin_repository

            info.update(pin_repository(repo, variant))
        return repo, info
    start = time.perf_counter()
    from fer_triton.benchmarks.cpu_engines import derive_repository, export_kwargs, sibling_export

    sibling = sibling_export(cfg.variants, variant)
    if sibling is not None:  # same OpenVINO files, another load-time precision: copy, do not export again
        info = derive_repository(repo.parent / sibling, repo, variant)
        echo(f"  {variant}: the files of {sibling}, pinned to its own precision")
        return repo, info

    result = export_checkpoint(checkpoint, repo, overwrite=True, precision=precision, fused=layout == "fused",
                               **export_kwargs(variant),
                               max_batch_size=64, detector="none")  # the classifier alone (--frames: the detector)
    info = {"seconds": round(time.perf_counter() - start, 1)}
    if result.cpu_precision is not None:
        q = result.cpu_precision
        info.update(top1_agreement_vs_fp32=q.agreement, agreement_faces=q.check_faces,
                    max_abs_diff_vs_fp32=q.max_abs_diff, quantization=q.methods)
    if getattr(result, "openvino", None) is not None:
        from fer_triton.benchmarks.cpu_engines import pin_repository

        info.update(pin_repository(repo, variant))
    echo(f"  {variant}: exported in {info['seconds']:.0f}s"
         + (f", top-1 agreement {info['top1_agreement_vs_fp32']:.2%} on {info['agreement_faces']} drawn faces"
            if "top1_agreement_vs_fp32" in info else ""))
    return repo, info


def _timed(run) -> dict:
    return {"faces_per_s": round(run.faces_per_s, 2), "p50_ms": round(run.percentile_ms(50), 1),
            "p95_ms": round(run.percentile_ms(95), 1), "p99_ms": round(run.percentile_ms(99), 1)}


def _eager(cfg, checkpoint, faces_by_batch, echo) -> list[dict]:
    eager = TorchEager(checkpoint, threads=cfg.threads)
    rows = []
    for b in cfg.batch_sizes:
        run = measure("pytorch", "fp32", eager, faces_by_batch[b], duration_s=cfg.duration_s,
                      min_calls=cfg.min_requests)
        rows.append({"engine": "pytorch eager", "precision": "fp32", "batch_size": b, "calls": run.calls,
                     "cpu_ms_per_face": round(run.cpu_ms_per_face, 1), **_timed(run)})
        echo(f"  pytorch eager batch {b}: {run.faces_per_s:.1f} faces/s")
    return rows


def _ort_row(cfg, variant, pipeline, faces, echo) -> dict:
    from fer_triton.benchmarks.cpu_engines import precision_label, split_variant

    precision, engine = precision_label(variant), split_variant(variant)[0]
    run = measure(engine, precision, pipeline, faces, duration_s=cfg.duration_s, min_calls=cfg.min_requests)
    echo(f"  {engine} in-process, {variant} graphs, batch {len(faces)}: {run.faces_per_s:.1f} faces/s")
    return {"engine": f"{engine} in-process", "precision": precision, "variant": variant, "batch_size": len(faces),
            "calls": run.calls, "cpu_ms_per_face": round(run.cpu_ms_per_face, 1), **_timed(run)}


def _serve_variant(cfg, variant, repo, faces_by_batch, load, echo, inprocess: list[dict]) -> dict:
    """Serve one variant; at each batch size, time the same graphs in-process just before the served
    points, so that each served/in-process pair sees the same machine load."""
    from fer_triton.client import FerClient
    from fer_triton.server import TritonServer, free_port

    server = TritonServer(repo, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    started = time.perf_counter()
    server.start()
    out = {"variant": variant, "startup_s": round(time.perf_counter() - started, 1), "points": []}
    try:
        out["server_idle_mb"] = round(sum(p.rss_mb for p in memory.server_tree(server.pid)), 1)
        # The served graphs must compute what the in-process ones do: a benchmark of wrong answers is worthless.
        check = faces_by_batch[max(cfg.batch_sizes)]
        with FerClient(server.grpc_url) as client:
            served = client.infer(check).probabilities
        pipeline = inprocess_chain(repo, threads=cfg.threads)  # each graph on the engine its server runs
        out["served_vs_inprocess_max_abs_diff"] = max_abs_diff(pipeline(check), served)
        peak: list[memory.ProcessMemory] = []
        for b in cfg.batch_sizes:
            if cfg.baselines:
                inprocess.append(_ort_row(cfg, variant, pipeline, faces_by_batch[b], echo))
            transports = (None,) if cfg.shared_memory is None else (None, cfg.shared_memory)  # gRPC, then shm
            for c, transport in [(c, t) for c in cfg.concurrency for t in transports]:
                before, cpu = metrics.scrape(server.metrics_url), memory.tree_cpu_seconds(server.pid)
                run = load.run(server.grpc_url, "cafe", faces_by_batch[b], c, duration_s=cfg.duration_s,
                               min_requests=cfg.min_requests, shared_memory=transport)
                cpu = memory.tree_cpu_seconds(server.pid) - cpu
                after = metrics.scrape(server.metrics_url)
                times = metrics.difference(before, after)
                # Triton also counted the warm-up requests, which the server's CPU time includes
                served_faces = sum(m.faces for m in times if m.model == "cafe")
                tree = memory.server_tree(server.pid)
                if sum(p.rss_mb for p in tree) > sum(p.rss_mb for p in peak):
                    peak = tree
                point = {"batch_size": b, "concurrency": c, "transport": f"{transport} shm" if transport else "gRPC",
                         "requests": run.requests, "errors": len(run.errors),
                         "seconds": round(run.seconds, 3),
                         "client_rss_mb": round(run.client_rss_mb, 1), **_timed(run),
                         "server_cpu_ms_per_face": round(1000.0 * cpu / served_faces, 1) if served_faces else None,
                         "client_cpu_ms_per_face": (round(1000.0 * run.client_cpu_s / run.faces, 1)
                                                    if run.faces else None),
                         "triton": [{k: (round(v, 2) if isinstance(v, float) else v) for k, v in asdict(m).items()}
                                    for m in times]}
                if run.errors:
                    point["first_error"] = run.errors[0]
                out["points"].append(point)
                echo(f"  {variant} batch {b} concurrency {c}" + (f" ({transport} shm)" if transport else "")
                     + f": {run.faces_per_s:.1f} faces/s, "
                     f"p99 {run.percentile_ms(99):.0f} ms" + (f", {len(run.errors)} ERRORS" if run.errors else ""))
        out["server_peak_mb"] = round(sum(p.rss_mb for p in peak), 1)
        out["server_processes"] = [asdict(p) | {"rss_mb": round(p.rss_mb, 1)} for p in peak]
        if cfg.perf_analyzer and variant == cfg.variants[0]:
            out["perf_analyzer"] = _perf_analyzer(cfg, server, echo)
    finally:
        server.stop()
    return out


def _perf_analyzer(cfg, server, echo) -> dict:
    from fer_triton.benchmarks.perf_analyzer import PerfAnalyzerError, install_perf_analyzer, run_perf_analyzer

    try:
        binary = install_perf_analyzer()
        rows = run_perf_analyzer(binary, server.grpc_url, "cafe", batch_size=cfg.perf_analyzer_batch,
                                 concurrency=list(cfg.concurrency), wire_size=224,
                                 requests_per_window=max(3, cfg.min_requests))
    except PerfAnalyzerError as exc:  # reported in the result; the rest of the run still counts
        echo(f"  perf_analyzer: FAILED: {exc}")
        return {"error": str(exc)}
    for r in rows:
        echo(f"  perf_analyzer batch {r.batch_size} concurrency {r.concurrency}: {r.faces_per_s:.1f} faces/s, "
             f"p99 {r.p99_ms:.0f} ms")
    return {"binary": str(binary), "rows": [asdict(r) for r in rows]}


def run_benchmark(cfg: BenchConfig, echo: Callable[[str], None] = print) -> dict:
    """Run everything ``cfg`` asks for; returns the result as a JSON-ready dict (see benchmarks/README.md)."""
    from fer_triton.synthetic import draw_faces

    cfg.validate()
    Path(cfg.workdir).mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    result: dict = {"machine": machine.describe(), "settings": {k: (str(v) if isinstance(v, Path) else v)
                                                               for k, v in asdict(cfg).items()}}
    checkpoint = _checkpoint(cfg, echo)
    result["model"] = {"size": cfg.model_size, "clip_model": MODEL_SIZES[cfg.model_size],
                       "checkpoint": str(checkpoint),
                       "weights": "random (speed only; top-1 agreement is on drawn faces)"}
    echo("exporting (each export validated against PyTorch; int8 checked against fp32)")
    repos, result["exports"] = {}, {}
    for variant in cfg.variants:
        repos[variant], result["exports"][variant] = _export(cfg, checkpoint, variant, echo)
    # Drawn faces (synthetic): the content does not change the speed of these graphs.
    faces_by_batch = {b: draw_faces(b, 224, seed=cfg.seed + b)[0] for b in cfg.batch_sizes}
    result["inprocess"] = []
    if cfg.baselines:
        echo("PyTorch eager baseline")
        result["inprocess"] = _eager(cfg, checkpoint, faces_by_batch, echo)
    echo("served through Triton gRPC (each beside onnxruntime in-process on the same graphs)")
    result["served"] = []
    with ServedLoad() as load:
        for variant in cfg.variants:
            result["served"].append(_serve_variant(cfg, variant, repos[variant], faces_by_batch, load, echo,
                                                   result["inprocess"]))
    result["targets"] = targets(result)
    from fer_triton.benchmarks.cpu_engines import engine_targets

    result["targets"]["engines"] = engine_targets(result)
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def _best_point(served: dict, batch: int) -> dict | None:
    points = [p for p in served["points"] if p["batch_size"] == batch]
    return max(points, key=lambda p: p["faces_per_s"]) if points else None


def _served_cpu(point: dict) -> float | None:
    server, client = point.get("server_cpu_ms_per_face"), point.get("client_cpu_ms_per_face")
    return round(server + (client or 0.0), 1) if server is not None else None


def targets(result: dict) -> dict:
    """The two goals of issue #7, as ratios measured in this run (absent where not measured).

    served vs in-process: each variant's best served point against the same graphs in-process,
    timed just before it. int8 vs fp32: the best served points of the same layout when both exist.
    CPU time per face is given beside every ratio: it moves much less than wall time with load.
    """
    batch = 16 if 16 in result["settings"]["batch_sizes"] else max(result["settings"]["batch_sizes"])
    out: dict = {"batch_size": batch, "served_vs_inprocess": {}}
    best = {s["variant"]: _best_point(s, batch) for s in result["served"]}
    for variant, point in best.items():
        ort = next((r for r in result["inprocess"] if r.get("variant") == variant and r["batch_size"] == batch), None)
        if point and ort:
            out["served_vs_inprocess"][variant] = {
                "ratio": round(point["faces_per_s"] / ort["faces_per_s"], 3), "served": point["faces_per_s"],
                "concurrency": point["concurrency"], "inprocess": ort["faces_per_s"], "goal": ">= 0.9",
                "served_cpu_ms_per_face": _served_cpu(point), "inprocess_cpu_ms_per_face": ort["cpu_ms_per_face"]}
    by_layout = {}
    for variant, point in best.items():
        if point and not variant.startswith("ov-"):  # onnxruntime int8 vs fp32 (engines: cpu_engines.py)
            by_layout.setdefault(parse_variant(variant)[1], {})[parse_variant(variant)[0]] = (variant, point)
    pairs = [v for v in by_layout.values() if len(v) == 2]
    if pairs:
        (fp32_variant, fp32), (int8_variant, int8) = pairs[-1]["fp32"], pairs[-1]["int8"]
        agreement = result["exports"].get(int8_variant, {}).get("top1_agreement_vs_fp32")
        fp32_cpu, int8_cpu = _served_cpu(fp32), _served_cpu(int8)
        out["served_int8_vs_fp32"] = {
            "ratio": round(int8["faces_per_s"] / fp32["faces_per_s"], 3), "int8": int8["faces_per_s"],
            "int8_variant": int8_variant, "fp32": fp32["faces_per_s"], "fp32_variant": fp32_variant,
            "cpu_ratio": round(fp32_cpu / int8_cpu, 3) if fp32_cpu and int8_cpu else None,
            "top1_agreement": agreement, "goal": ">= 2.0 at >= 0.99 agreement"}
    return out
