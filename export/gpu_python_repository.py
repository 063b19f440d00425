"""A repository that serves only the ``gpu_python`` variant, written from PyTorch alone (no ONNX).

The ``gpu_python`` runner (export/triton_python/cuda_model.py) runs each stage's ``model.pt2`` with
PyTorch where onnxruntime-gpu is not installed, so a repository meant only for the pip-only GPU server
does not need ONNX at all. :func:`export_gpu_python` writes one without importing onnx, onnxruntime
or onnxscript (about 36 MB of wheels that `fer-triton gpu-check` then need not carry, docs/gpu.md):

    <repo>/cafe/                ensemble: the config ``repository.ensemble_config`` builds (as export's)
    <repo>/cafe_<stage>/        config.pbtxt and configs/gpu_python.pbtxt (``gpu.python_cuda_config``),
                                1/cuda_model.py and 1/model.pt2 (``torch_graphs.write_torch_graphs``)

The stage split, tensor names and configs are the ``gpu_python`` variant's of a full export
(``--target both``); there is no ``model.onnx``, no CPU-flavour ``model.py``, no site or frames model.
Validation replaces the ONNX checks: every saved graph is reloaded and compared with its PyTorch
module on another batch size (atol 1e-5, ``torch_graphs.export_torch_graph``), then the four saved
graphs run as the ensemble chains them and are compared with the whole PyTorch model on drawn faces
(``atol``, the export's default 1e-4).

Weights-hash naming (``gpu.stamp_weights_hash``) does not apply: it keeps ONNX Runtime's TensorRT
engine cache from serving other weights, and this repository has no ONNX graph and no engine cache
(PyTorch runs the graph it loads). The ensemble's metadata records each graph's SHA-256 instead, so
what a server runs can be traced to the files.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from pathlib import Path

import torch

from fer_triton.export.gpu import (PYTHON_VARIANT, TORCH_GRAPH_FILENAME, GPUOptions, config_name, copy_cuda_runner,
                                   python_cuda_config)
from fer_triton.export.onnx_export import DEFAULT_ATOL, ExportValidationError
from fer_triton.export.repository import RepositoryLayout, config_text, ensemble_config
from fer_triton.export.torch_graphs import write_torch_graphs

log = logging.getLogger(__name__)

CHAIN_CHECK_FACES = 4   # drawn faces the saved chain is compared with the PyTorch model on


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_graph_chain(model, graphs: dict[str, Path], wire_size: int, *, atol: float = DEFAULT_ATOL,
                      faces: int = CHAIN_CHECK_FACES, seed: int = 1) -> float:
    """Run the saved ``model.pt2`` graphs as the ensemble chains them (faces -> pixels -> clip features and
    mask logits -> head) on ``faces`` random UINT8 faces [N, wire_size, wire_size, 3] and compare the
    probabilities with the PyTorch ``model``'s. ``graphs``: {"preprocess"|"clip_encoder"|"mask_net"|"head":
    file}. Returns the largest |p_graphs - p_model| (probabilities in [0, 1]); ExportValidationError past
    ``atol``."""
    gen = torch.Generator().manual_seed(seed)
    batch = torch.randint(0, 256, (faces, wire_size, wire_size, 3), dtype=torch.uint8, generator=gen)
    run = {stage: torch.export.load(str(path)).module() for stage, path in graphs.items()}
    with torch.no_grad():
        expected = model.eval()(model.preprocess(batch)).probabilities
        pixels = run["preprocess"](batch)
        _, _, probabilities = run["head"](run["clip_encoder"](pixels), run["mask_net"](pixels))
    diff = float((probabilities - expected).abs().max())
    if diff > atol:
        raise ExportValidationError(f"the saved PyTorch graphs, chained as the ensemble runs them, differ from the "
                                    f"model by {diff:.3g} in probabilities (> atol {atol:g})")
    return diff


def export_gpu_python(checkpoint: str | Path, output: str | Path, *, opts: GPUOptions = GPUOptions(),
                      wire_size: int = 224, max_batch_size: int | None = None,
                      layout: RepositoryLayout = RepositoryLayout(), atol: float = DEFAULT_ATOL,
                      overwrite: bool = False) -> Path:
    """Write a ``gpu_python``-only repository for the CAFE ``checkpoint`` into ``output``; return ``output``.

    ``opts``: the GPU options of ``export --target both`` (``python_precision``, ``python_device``,
    batch sizes, instances); ``max_batch_size``: the ensemble's per-request cap (default
    ``opts.max_batch_size``, which it must not exceed). Nothing is moved into ``output`` unless every
    graph and the chain passed their checks (module docstring). Raises ValueError (options),
    FileExistsError (models already there without ``overwrite``), ExportValidationError (a graph or the
    chain differs from PyTorch). Imports no ONNX package.
    """
    from fer_triton.checkpoint import CAFECheckpoint

    max_batch_size = opts.max_batch_size if max_batch_size is None else max_batch_size
    opts.validate(max_batch_size)
    output = Path(output)
    names = [layout.ensemble, *layout.stages.values()]
    existing = [output / n for n in names if (output / n).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{output} already holds {', '.join(p.name for p in existing)}; "
                              "pass overwrite=True to replace them")
    ckpt = CAFECheckpoint.load(checkpoint)
    model = ckpt.build_model().eval()
    num_classes = len(ckpt.classes)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".gpu-python-", dir=output) as staging:
        staging = Path(staging)
        for stage, model_name in layout.stages.items():
            model_dir = staging / model_name
            (model_dir / "1").mkdir(parents=True)
            (model_dir / "configs").mkdir()
            copy_cuda_runner(model_dir)
            text = config_text(python_cuda_config(stage, model_name, wire_size, num_classes, opts))
            # config.pbtxt too: the repository then serves with or without --model-config-name=gpu_python
            (model_dir / "config.pbtxt").write_text(text)
            (model_dir / "configs" / f"{config_name(PYTHON_VARIANT)}.pbtxt").write_text(text)
        graphs = write_torch_graphs(model, staging, layout=layout, wire_size=wire_size)
        by_stage = {stage: graphs[name] for stage, name in layout.stages.items()}
        chain_diff = check_graph_chain(model, by_stage, wire_size, atol=atol)
        metadata = {
            **ckpt.provenance(checkpoint),
            "export_max_abs_diff": chain_diff,
            "precision": "fp32",
            "layout": "staged",
            "variants": [PYTHON_VARIANT],
            "graphs": f"{TORCH_GRAPH_FILENAME} only (torch.export), no ONNX",
            "graph_sha256": {name: _sha256(path)[:16] for name, path in graphs.items()},
        }
        ensemble_dir = staging / layout.ensemble
        (ensemble_dir / "1").mkdir(parents=True)  # ensembles need an (empty) version directory
        (ensemble_dir / "labels.txt").write_text("\n".join(ckpt.classes) + "\n")
        cfg = ensemble_config(layout, wire_size, ckpt.classes, max_batch_size=max_batch_size, metadata=metadata)
        (ensemble_dir / "config.pbtxt").write_text(config_text(cfg))
        for path in existing:
            shutil.rmtree(path)
        for name in names:
            shutil.move(str(staging / name), output / name)
    log.info("gpu_python repository %s: PyTorch graphs only, chain max |dp| %.2g", output, chain_diff)
    return output
