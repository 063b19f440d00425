"""`fer-triton gpu-check`: one command that says how fast this GPU serves the true model, offline.

On a machine with an NVIDIA GPU and no network, in a few minutes (the budget is 8):

1. builds the true model (open_clip ViT-B-32-quickgelu + ResNet-18 + head) with RANDOM weights
   (benchmarks/random_model.py: speed and numerics only) and writes a ``gpu_python``-only repository
   from PyTorch alone (export/gpu_python_repository.py: the stages' ``model.pt2`` graphs, each checked
   against PyTorch, and the chain of them too), importing no onnx, onnxruntime or onnxscript;
2. measures PyTorch on CUDA in-process, faces to probabilities (preprocess included), in FP32, FP16
   and BF16 autocast at batch 1, 32 and 256;
3. checks FP16 and BF16 against FP32 on drawn faces: top-1 agreement and the largest probability
   difference (random weights: this is agreement of numerics, not accuracy);
4. serves the ``gpu_python`` variant with the tritonserver of the nvidia-pytriton wheel (the pip-only
   GPU server) and measures it through gRPC messages, system shared memory and, where usable, CUDA
   shared memory, after checking its answers against PyTorch FP32 on drawn faces;
5. prints one table with the GPU's name, and how far the best served figure is from the goal of
   20,000 faces/s on one H200 and from that GPU's compute limit.

``--dry-run`` runs every step on the CPU instead (no CUDA; the tiny model unless ``--model-size
vit-b-32``; small counts; the served part on the CPU tritonserver with KIND_CPU instances) and marks
the table DRY RUN: the mechanics are checked, the figures mean nothing.

Compute limit: 12.4 GFLOP per face (CLIP ViT-B/32 image tower about 4.4 GMAC + ResNet-18 about 1.8 GMAC
at 224x224, 2 FLOP per MAC) against about 790 TFLOP/s of dense BF16 on one H200, the figures issue #16
gives: about 63,700 faces/s.
"""

from __future__ import annotations

import logging
import re
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import click

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

GOAL_FACES_PER_S = 20_000            # issue #16: end to end on one H200
FLOP_PER_FACE = 12.4e9               # ViT-B/32 image tower + ResNet-18, 2 FLOP per MAC (issue #16)
H200_BF16_FLOP_PER_S = 790e12        # issue #16's figure for one H200 in BF16
PRECISIONS = ("fp32", "fp16", "bf16")
MODEL_SIZES = {"vit-b-32": "ViT-B-32-quickgelu", "tiny": "FER-Tiny-ViT-quickgelu"}


class GPUCheckError(RuntimeError):
    """The check cannot run here (no GPU without --dry-run, a step failed); the message says which."""


@dataclass
class CheckConfig:
    """What the check runs. The defaults are the real check on a GPU; :meth:`dry` the CPU rehearsal."""

    dry_run: bool = False
    model_size: str = "vit-b-32"
    batch_sizes: tuple[int, ...] = (1, 32, 256)          # PyTorch in-process
    seconds: float = 2.0                                 # per in-process point
    agreement_faces: int = 256
    served: tuple[tuple[int, int], ...] = ((32, 8), (256, 2))   # (faces per request, requests in flight)
    served_seconds: float = 5.0
    served_precision: str = "fp16"                       # gpu_python's autocast for the CLIP encoder + mask net
    opt_batch_size: int = 32                             # GPU configs: warm-up at 1 and this, preferred doublings
    workdir: Path | None = None                          # default: a temporary folder, removed at the end
    timeout_s: float = 480.0                             # the whole check's budget (8 minutes)

    @classmethod
    def dry(cls, model_size: str = "tiny", **kwargs) -> "CheckConfig":
        # FP32 served: PyTorch's FP16 autocast is slow on CPUs (and measures nothing useful there)
        kwargs.setdefault("served_precision", "fp32")
        return cls(dry_run=True, model_size=model_size, batch_sizes=(1, 4), seconds=0.2, agreement_faces=16,
                   served=((4, 1),), served_seconds=0.3, opt_batch_size=4, **kwargs)


@dataclass
class CheckResult:
    device: str
    dry_run: bool
    model: str
    rows: list[dict] = field(default_factory=list)          # path, precision, batch, concurrency, faces/s, p50 ms
    agreement: list[dict] = field(default_factory=list)     # precision, faces, top-1 agreement, max |dp|
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def best_served(self) -> dict | None:
        served = [r for r in self.rows if r["path"].startswith("served") and r["faces_per_s"]]
        return max(served, key=lambda r: r["faces_per_s"]) if served else None


def _timed(run: Callable[[], object], sync: Callable[[], None], seconds: float, min_calls: int = 3) -> list[float]:
    """Wall times (s) of ``run`` (each followed by ``sync``) for ``seconds`` and at least ``min_calls`` calls."""
    run(), sync()  # warm-up: kernels chosen, caches filled
    times, deadline = [], time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < deadline:
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return times


def measure_pytorch(model, faces, device, cfg: CheckConfig, echo) -> tuple[list[dict], list[dict], "np.ndarray"]:
    """PyTorch in-process rows (faces/s per precision and batch), FP16/BF16 agreement with FP32, and the FP32
    probabilities [agreement_faces, 7] of the first faces (the reference the served model is compared with)."""
    import torch

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def forward(batch, precision):
        with torch.inference_mode():
            if precision == "fp32":
                return model(model.preprocess(batch)).probabilities.float()
            with torch.autocast(device.type, dtype=getattr(torch, {"fp16": "float16", "bf16": "bfloat16"}[precision])):
                return model(model.preprocess(batch)).probabilities.float()

    rows = []
    for precision in PRECISIONS:
        for b in cfg.batch_sizes:
            batch = torch.from_numpy(faces[:b]).to(device)
            try:
                times = _timed(lambda: forward(batch, precision), sync, cfg.seconds)
            except RuntimeError as exc:  # e.g. an autocast dtype the CPU does not run
                rows.append({"path": "pytorch in-process", "precision": precision, "batch": b, "concurrency": "-",
                             "faces_per_s": None, "p50_ms": None, "error": str(exc).splitlines()[0]})
                echo(f"  pytorch {precision} batch {b}: FAILED {str(exc).splitlines()[0]}")
                continue
            median = statistics.median(times)
            rows.append({"path": "pytorch in-process", "precision": precision, "batch": b, "concurrency": "-",
                         "faces_per_s": round(b / median, 1), "p50_ms": round(median * 1000, 2)})
            echo(f"  pytorch {precision} batch {b}: {b / median:.1f} faces/s")
    agreement = []
    check = torch.from_numpy(faces[:cfg.agreement_faces]).to(device)
    step = max(cfg.batch_sizes)
    reference = torch.cat([forward(check[i:i + step], "fp32") for i in range(0, len(check), step)]).cpu()
    for precision in PRECISIONS[1:]:
        try:
            got = torch.cat([forward(check[i:i + step], precision) for i in range(0, len(check), step)]).cpu()
        except RuntimeError as exc:
            agreement.append({"precision": precision, "faces": len(check), "error": str(exc).splitlines()[0]})
            continue
        agreement.append({"precision": precision, "faces": len(check),
                          "top1_agreement": float((got.argmax(1) == reference.argmax(1)).float().mean()),
                          "max_prob_diff": float((got - reference).abs().max())})
    return rows, agreement, reference.numpy()


def measure_served(repository: Path, faces, cfg: CheckConfig, echo, reference=None) -> tuple[list[dict], list[str]]:
    """The gpu_python variant served by the pip tritonserver, through gRPC and shared memory; with ``reference``
    (FP32 PyTorch probabilities of the first faces) a note on how far the served answers are from it, PASS or
    FAIL against the served precision's tolerance (:func:`served_verdict`). The server's log is kept beside the
    repository (``tritonserver.log``) and the engine each stage's runner chose becomes a note."""
    from fer_triton.client import FerClient
    from fer_triton.benchmarks.served import ServedLoad
    from fer_triton.client.shared_memory import cuda_unavailable
    from fer_triton.server import TritonServer, free_port

    notes = []
    transports = [None, "system"]
    reason = cuda_unavailable()
    if reason is None and not cfg.dry_run:
        transports.append("cuda")
    else:
        notes.append(f"CUDA shared memory not measured: {reason or 'dry run (no CUDA)'}")
    from fer_triton.export.gpu import python_server_args

    log_file = Path(repository).parent / "tritonserver.log"
    log_file.unlink(missing_ok=True)
    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port(),
                          log_file=log_file, extra_args=["--model-config-name=gpu_python", *python_server_args()])
    started = time.perf_counter()
    server.start(timeout_s=300)
    notes.append(f"gpu_python server ready in {time.perf_counter() - started:.0f} s "
                 f"({'KIND_CPU instances on the CPU' if cfg.dry_run else 'KIND_GPU instances'})")
    engines = sorted(set(RUNNER_ENGINE.findall(log_file.read_text(errors="replace"))))
    notes.append("stage engines (server log): " + ("; ".join(engines) or "not found in the log"))
    rows = []
    try:
        if reference is not None:
            with FerClient(server.grpc_url) as client:
                served = client.infer_all(faces[:len(reference)]).probabilities
            notes.append(served_verdict(served, reference, cfg.served_precision, on_gpu=not cfg.dry_run))
        with ServedLoad() as load:
            for batch, concurrency in cfg.served:
                for transport in transports:
                    name = {None: "gRPC", "system": "system shm", "cuda": "CUDA shm"}[transport]
                    run = load.run(server.grpc_url, "cafe", faces[:batch], concurrency, duration_s=cfg.served_seconds,
                                   min_requests=2, shared_memory=transport)
                    rows.append({"path": f"served gpu_python, {name}", "precision": cfg.served_precision,
                                 "batch": batch, "concurrency": concurrency, "faces_per_s": round(run.faces_per_s, 1),
                                 "p50_ms": round(run.percentile_ms(50), 2), "errors": len(run.errors)})
                    echo(f"  served {name} batch {batch} x {concurrency}: {run.faces_per_s:.1f} faces/s"
                         + (f", {len(run.errors)} ERRORS: {run.errors[0]}" if run.errors else ""))
    finally:
        server.stop()
    return rows, notes


# What cuda_model.py logs once per stage instance: "<model> version <n>: <engine> (instance kind <kind>)".
RUNNER_ENGINE = re.compile(r"(\w+ version \d+: [^\n]*? \(instance kind \w+\))")


def served_verdict(served: "np.ndarray", reference: "np.ndarray", precision: str, *, on_gpu: bool) -> str:
    """One line comparing served probabilities [N, C] with PyTorch FP32's [N, C] (same faces): top-1 agreement,
    largest |dp|, and PASS when the agreement is at least DEFAULT_MIN_TOP1_AGREEMENT (0.99) and |dp| within
    the served precision's publish tolerance (export/precision_names.py ``verify_tolerance``: fp32 1e-4 on
    the CPU, 1e-3 on a GPU (TF32); fp16 5e-3; bf16 2e-2). Without ONNX in the check, this is what ties the
    served graphs to the PyTorch model end to end."""
    from fer_triton.export.precision_names import verify_tolerance
    from fer_triton.metrics import DEFAULT_MIN_TOP1_AGREEMENT

    agreement = float((served.argmax(1) == reference.argmax(1)).mean())
    diff = float(abs(served - reference).max())
    allowed = verify_tolerance(precision, on_gpu=on_gpu)
    passed = agreement >= DEFAULT_MIN_TOP1_AGREEMENT and diff <= allowed
    return (f"served ({precision}) vs PyTorch FP32 on {len(reference)} drawn faces: top-1 agreement {agreement:.2%}, "
            f"max |dp| {diff:.2e} (need >= {DEFAULT_MIN_TOP1_AGREEMENT:.0%} and <= {allowed:.0e}): "
            + ("PASS" if passed else "FAIL"))


def run_check(cfg: CheckConfig, echo: Callable[[str], None] = print) -> CheckResult:
    """Every step of the module's docstring; returns what the table shows. Raises GPUCheckError."""
    import numpy as np
    import torch

    from fer_triton.benchmarks.random_model import save_random_checkpoint
    from fer_triton.checkpoint import CAFECheckpoint
    from fer_triton.export.gpu import GPUOptions
    from fer_triton.export.gpu_python_repository import export_gpu_python
    from fer_triton.synthetic import draw_faces

    started = time.perf_counter()
    if cfg.model_size not in MODEL_SIZES:
        raise GPUCheckError(f"model size must be one of {', '.join(MODEL_SIZES)}, not {cfg.model_size!r}")
    if not cfg.dry_run and not torch.cuda.is_available():
        raise GPUCheckError(f"PyTorch sees no CUDA GPU here (torch {torch.__version__}, CUDA build "
                            f"{torch.version.cuda}): "
                            "run it on a GPU host, or `fer-triton gpu-check --dry-run` to rehearse it on the CPU")
    device = torch.device("cpu") if cfg.dry_run else torch.device("cuda", 0)
    name = ("CPU: " + _cpu_name()) if cfg.dry_run else torch.cuda.get_device_name(0)
    clip_model = MODEL_SIZES[cfg.model_size]
    result = CheckResult(device=name, dry_run=cfg.dry_run, model=f"{clip_model} + ResNet-18, random weights")
    work = Path(cfg.workdir) if cfg.workdir else Path(tempfile.mkdtemp(prefix="fer-triton-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        echo(f"[{_elapsed(started)}] exporting {clip_model} with random weights (PyTorch graphs, gpu_python only)")
        checkpoint = save_random_checkpoint(work / "cafe_random.pt", clip_model, source="fer-triton gpu-check")
        opts = GPUOptions(python_precision=cfg.served_precision, python_device="cpu" if cfg.dry_run else "auto",
                          opt_batch_size=cfg.opt_batch_size)
        # the ensemble takes opts.max_batch_size (256) faces per request: the batch-256 points are one request
        repository = export_gpu_python(checkpoint, work / "model_repository", opts=opts, overwrite=True)
        count = max(max(cfg.batch_sizes), cfg.agreement_faces, max(b for b, _ in cfg.served))
        faces, _ = draw_faces(count, 224, seed=5)
        faces = np.ascontiguousarray(faces)
        echo(f"[{_elapsed(started)}] PyTorch in-process on {device} ({name})")
        model = CAFECheckpoint.load(checkpoint).build_model().to(device).eval()
        rows, result.agreement, reference = measure_pytorch(model, faces, device, cfg, echo)
        result.rows += rows
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        echo(f"[{_elapsed(started)}] serving the gpu_python variant with the pip tritonserver")
        rows, notes = measure_served(repository, faces, cfg, echo, reference)
        result.rows += rows
        result.notes += notes
    finally:
        if cfg.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    result.seconds = round(time.perf_counter() - started, 1)
    if result.seconds > cfg.timeout_s:
        result.notes.append(f"took {result.seconds:.0f} s, over the {cfg.timeout_s:.0f} s budget")
    return result


def _elapsed(started: float) -> str:
    return f"{time.perf_counter() - started:5.0f}s"


def _cpu_name() -> str:
    from fer_triton.benchmarks.machine import cpu_model

    return cpu_model()


def format_check(result: CheckResult) -> str:
    """The one table, the agreement lines and the distance to the goal, as text."""
    from fer_triton.tables import text_table

    mark = "DRY RUN (CPU, no CUDA: mechanics only, the figures mean nothing) - " if result.dry_run else ""
    parts = [f"{mark}fer-triton gpu-check on {result.device}; model {result.model}"]
    parts.append(text_table(["path", "precision", "batch", "conc", "faces/s", "p50 ms"],
                            [[r["path"], r["precision"], r["batch"], r["concurrency"],
                              "FAILED" if r["faces_per_s"] is None else r["faces_per_s"],
                              "-" if r["p50_ms"] is None else r["p50_ms"]] for r in result.rows]))
    for a in result.agreement:
        if "error" in a:
            parts.append(f"{a['precision']} vs fp32: not run ({a['error']})")
        else:
            parts.append(f"{a['precision']} vs fp32 on {a['faces']} drawn faces: top-1 agreement "
                         f"{a['top1_agreement']:.2%}, max |dp| {a['max_prob_diff']:.2e} (random weights: numerics, "
                         "not accuracy)")
    best = result.best_served
    limit = H200_BF16_FLOP_PER_S / FLOP_PER_FACE
    if best is None:
        parts.append("no served figure")
    else:
        parts.append(f"best served: {best['faces_per_s']:,.1f} faces/s ({best['path']}, batch {best['batch']} x "
                     f"{best['concurrency']}) = {best['faces_per_s'] / GOAL_FACES_PER_S:.1%} of the goal "
                     f"({GOAL_FACES_PER_S:,} faces/s on one H200) and {best['faces_per_s'] / limit:.1%} of the H200 "
                     f"compute limit (~{limit:,.0f} faces/s: {FLOP_PER_FACE / 1e9:.1f} GFLOP/face at "
                     f"{H200_BF16_FLOP_PER_S / 1e12:.0f} TFLOP/s BF16)"
                     + ("" if "H200" in result.device else f"; this is not an H200 ({result.device})"))
    parts += result.notes
    parts.append(f"took {result.seconds:.0f} s" + (" (DRY RUN)" if result.dry_run else ""))
    return "\n\n".join(parts)


@click.command("gpu-check")
@click.option("--dry-run", is_flag=True, help="Rehearse every step on the CPU (no CUDA): tiny model, small counts, "
                                              "the CPU tritonserver; the table is marked DRY RUN.")
@click.option("--model-size", type=click.Choice(list(MODEL_SIZES)), default=None,
              help="vit-b-32 (the true model; default) or tiny (default with --dry-run).")
@click.option("--served-precision", type=click.Choice(list(PRECISIONS)), default=None,
              help="Autocast precision of the served CLIP encoder and mask net (gpu_python variant): default fp16, "
                   "fp32 with --dry-run.")
@click.option("-w", "--workdir", type=click.Path(path_type=Path), help="Keep the model and repository here "
                                                                        "(default: a temporary folder).")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Also write the result as JSON here.")
def gpu_check(dry_run, model_size, served_precision, workdir, json_path):
    """On a GPU host with no network: the true model's speed in PyTorch and served by the pip-only GPU server."""
    import json

    chosen = {"served_precision": served_precision} if served_precision else {}
    cfg = (CheckConfig.dry(model_size or "tiny", workdir=workdir, **chosen) if dry_run
           else CheckConfig(model_size=model_size or "vit-b-32", workdir=workdir, **chosen))
    try:
        result = run_check(cfg, echo=click.echo)
    except Exception as exc:  # noqa: BLE001 - one clear line for any failed step, the traceback with -v
        log.debug("gpu-check failed", exc_info=True)
        raise click.ClickException(f"gpu-check failed: {exc}") from exc
    click.echo("")
    click.echo(format_check(result))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(asdict(result), indent=2) + "\n")
