"""PyTorch graphs of the four stages for the ``gpu_python`` variant: ``model.pt2`` beside ``model.onnx``.

The pip-only GPU server (export/triton_python/cuda_model.py) runs each stage with PyTorch on CUDA
where onnxruntime-gpu is not installed. PyTorch cannot run ONNX, so the export also saves each stage
as a ``torch.export`` program (an ATen graph plus its weights, loaded with ``torch.export.load``
without fer-triton's or open_clip's model code), with a dynamic batch axis, and checks that it
reproduces the module it came from on another batch size.

Why not rebuild the stages from the checkpoint inside the server? The checkpoint path recorded in
the ensemble's metadata belongs to the exporting machine, and the runner would then import
fer-triton's and open_clip's model code in every stage process; a saved graph makes the repository
carry what it serves, like model.onnx does (docs/gpu.md).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch

from fer_triton.export.gpu import TORCH_GRAPH_FILENAME, version_dirs
from fer_triton.export.onnx_export import ExportValidationError, stage_specs
from fer_triton.export.repository import RepositoryLayout
from fer_triton.metrics import max_abs_diff

log = logging.getLogger(__name__)

# The largest batch the saved graphs accept (torch.export needs a bound; the GPU configs' max is 256).
MAX_BATCH = 4096


def export_torch_graph(module: torch.nn.Module, sample: tuple, path: Path, check: tuple, *,
                       atol: float = 1e-5) -> float:
    """Save ``module`` traced on ``sample`` (dynamic dim 0) to ``path``; reload it and return its largest
    difference from ``module`` on ``check`` (another batch size). Raises ExportValidationError past ``atol``."""
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the same graph as the ONNX export (no fused MHA op)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.export.export(module.eval(), sample, dynamic_shapes=tuple({0: batch} for _ in sample))
            torch.export.save(program, str(path))
            loaded = torch.export.load(str(path)).module()
            expected, got = module(*check), loaded(*check)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    expected = expected if isinstance(expected, (tuple, list)) else (expected,)
    got = got if isinstance(got, (tuple, list)) else (got,)
    diff = max(max_abs_diff(e.numpy(), g.numpy()) for e, g in zip(expected, got))
    if diff > atol:
        raise ExportValidationError(f"{path}: the saved PyTorch graph differs from the model by {diff:.3g} "
                                    f"(> {atol:g})")
    return diff


def write_torch_graphs(model, repository: str | Path, *, layout: RepositoryLayout = RepositoryLayout(),
                       wire_size: int = 224, seed: int = 0) -> dict[str, Path]:
    """``model.pt2`` for each stage of a CAFE ``model`` into the newest version folder of its Triton model in
    ``repository`` (staged layout). Returns {model name: file}. FileNotFoundError for a missing model folder."""
    written = {}
    for spec in stage_specs(model.eval(), wire_size, layout.stages):
        model_dir = Path(repository) / spec.name
        versions = version_dirs(model_dir) if model_dir.is_dir() else []
        if not versions:
            raise FileNotFoundError(f"{model_dir} has no version folder: PyTorch graphs need the staged layout")
        gen = torch.Generator().manual_seed(seed)
        sample, check = spec.sample(3, gen), spec.sample(5, gen)
        path = versions[-1] / TORCH_GRAPH_FILENAME
        diff = export_torch_graph(spec.module, sample, path, check)
        log.info("%s: PyTorch graph %s (max |diff| %.2g)", spec.name, path, diff)
        written[spec.name] = path
    return written


def write_spec_graph(spec, folder: str | Path, *, seed: int = 0) -> Path:
    """``model.pt2`` of one stage (an ``onnx_export.StageSpec``, e.g. a fine-tuned mask net that ``retrain``
    publishes) into ``folder``, checked like :func:`write_torch_graphs`."""
    gen = torch.Generator().manual_seed(seed)
    path = Path(folder) / TORCH_GRAPH_FILENAME
    export_torch_graph(spec.module, spec.sample(3, gen), path, spec.sample(5, gen))
    return path
