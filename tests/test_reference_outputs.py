"""Reference outputs: the PyTorch model and every exported graph, on fixed faces, against stored tensors.

open_clip's habit: outputs for fixed inputs are compared with reference tensors kept in the repository,
so a change in preprocessing, in a stage, in the exporter or in the checkpoint format fails here, even
where export's own validation passes (it compares today's PyTorch code with today's ONNX graphs, which
change together).

tests/fixtures/reference/
    cafe_tiny.pt   a CAFE checkpoint written by ``CAFECheckpoint.save`` (format fer-triton/cafe v1) with the
                   tiny CLIP config. Its weight tensors larger than POOL elements are strided views of
                   POOL random values each (drawn from the tensor's own init), which torch.save stores as
                   the pools: about 0.4 MB instead of 46 MB; BatchNorm statistics are measured on drawn
                   faces, so the mask net's outputs keep the scale of a normal network.
    outputs.npz    the fixed faces (UINT8, 2 per wire size) and, per variant, every tensor the ensemble
                   passes: pixels (every 16th row and column), clip_features, mask_logits, masked_features,
                   logits, probabilities. Variants: "pytorch" (the checkpoint's model), "fp32-staged",
                   "fp32-fused", "int8-staged", "int8-fused" (exported repositories, run as their ensemble
                   wires them) at wire size 224; "pytorch" and "fp32-staged" at 112 (the resize path).

Regenerate after a deliberate change, and say why in the commit:
    FER_TRITON_REGENERATE_REFERENCES=1 .venv/bin/pytest -q tests/test_reference_outputs.py
        new outputs.npz from the stored checkpoint (preprocessing, a stage or the exporter changed);
    FER_TRITON_REGENERATE_REFERENCES=checkpoint .venv/bin/pytest -q tests/test_reference_outputs.py
        also a new cafe_tiny.pt (the checkpoint format changed: bump checkpoint.FORMAT_VERSION first, and
        keep reading the old version).
INT8 references hold what onnxruntime's integer kernels computed on the machine that regenerated them
(x86-64 with AVX-512 VNNI here); CPUs without VNNI may round differently: regenerate there if they fail.
"""

from __future__ import annotations

import os
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import fer_triton.model
from fer_triton.checkpoint import CAFECheckpoint, build_untrained
from fer_triton.clip_loader import TINY_CLIP_MODEL
from fer_triton.export.exporter import export_checkpoint
from fer_triton.export.onnx_chain import OnnxChain
from fer_triton.export.onnx_export import DEFAULT_ATOL
from fer_triton.export.validate import pytorch_outputs
from fer_triton.metrics import max_abs_diff
from fer_triton.model import Preprocess
from fer_triton.synthetic import draw_faces

FIXTURES = Path(__file__).parent / "fixtures" / "reference"
CHECKPOINT = FIXTURES / "cafe_tiny.pt"
OUTPUTS = FIXTURES / "outputs.npz"
REGENERATE = os.environ.get("FER_TRITON_REGENERATE_REFERENCES", "").strip().lower()
META = {"trained": False, "source": "tests/test_reference_outputs.py (reference fixture)"}

POOL = 2048            # values behind each large weight tensor of the fixture checkpoint
PIXEL_STEP = 16        # pixels are stored at every 16th row and column
TENSORS = ("pixels", "clip_features", "mask_logits", "masked_features", "logits", "probabilities")
# (precision, fused) of each exported variant; the wire sizes each variant is stored at.
EXPORTS = {"fp32-staged": ("fp32", False), "fp32-fused": ("fp32", True),
           "int8-staged": ("int8", False), "int8-fused": ("int8", True)}
WIRES = {"pytorch": (224, 112), "fp32-staged": (224, 112), "fp32-fused": (224,),
         "int8-staged": (224,), "int8-fused": (224,)}
# Same code, another machine or thread count: FP32 moves in the last digits; INT8 may round one
# quantization step differently. A one-line change in preprocessing moves them by far more.
TOLERANCES = {"fp32": dict(rtol=1e-4, atol=1e-5), "int8": dict(rtol=1e-3, atol=1e-4)}


# -- the fixtures and how they are made ----------------------------------------------------------------

def _compact(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """A floating tensor of more than POOL elements as a strided view of POOL of its own values.

    Deterministic (seeded by ``name``); smaller tensors and integer buffers are returned as they are.
    """
    if tensor.numel() <= POOL or not tensor.is_floating_point():
        return tensor
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    flat = tensor.detach().flatten()
    pool = flat[torch.from_numpy(rng.choice(flat.numel(), POOL, replace=False))].clone()
    shape, strides = tuple(tensor.shape), [1] * tensor.dim()
    reach = lambda: sum((d - 1) * s for d, s in zip(shape, strides))  # noqa: E731 - last offset used
    for _ in range(8):  # grow the strides at random while the view stays inside the pool
        for i in rng.permutation(len(shape)):
            factor = int(rng.choice([2, 3, 5, 7]))
            strides[i] *= factor
            if reach() >= POOL:
                strides[i] //= factor
    assert reach() < POOL, (name, shape)
    return pool.as_strided(shape, strides)


def _calibrate_batch_norm(mask_net: nn.Module, pixels: torch.Tensor) -> None:
    """Set every BatchNorm's running statistics to those of ``pixels`` (the compacted weights change them)."""
    norms = [m for m in mask_net.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average: exactly this batch's statistics
    mask_net.train()
    with torch.no_grad():
        mask_net(pixels)
    mask_net.eval()
    for norm in norms:
        norm.momentum = 0.1


def write_reference_checkpoint(path: Path) -> Path:
    """The fixture checkpoint: today's format, tiny CLIP, compact weights (see the module's docstring)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "no pretrained weights": random CLIP on purpose
        model, init = build_untrained(TINY_CLIP_MODEL, None, seed=0)
    parts = {"mask_net": model.mask_net, "clip": model.clip.visual}
    compact = {part: {k: _compact(f"{part}.{k}", v) for k, v in module.state_dict().items()}
               for part, module in parts.items()}
    for part, module in parts.items():
        module.load_state_dict(compact[part])
    faces, _ = draw_faces(8, 224, seed=2)
    _calibrate_batch_norm(model.mask_net, model.preprocess(torch.from_numpy(faces)))
    ckpt = CAFECheckpoint.from_model(model, clip_model=TINY_CLIP_MODEL, clip_pretrained=None, mask_net_init=init,
                                     meta=META)
    # from_model copies every tensor densely: put the compact views back (BatchNorm statistics stay measured).
    ckpt.mask_net = {k: compact["mask_net"][k] if compact["mask_net"][k].numel() > POOL else v
                     for k, v in ckpt.mask_net.items()}
    ckpt.clip_state_dict = {k: compact["clip"][k] if compact["clip"][k].numel() > POOL else v
                            for k, v in ckpt.clip_state_dict.items()}
    return ckpt.save(path)


def _stored(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The tensors as the references keep them (pixels thinned to every PIXEL_STEP-th row and column)."""
    out = dict(tensors)
    if "pixels" in out:
        out["pixels"] = np.ascontiguousarray(out["pixels"][:, :, ::PIXEL_STEP, ::PIXEL_STEP])
    return {k: out[k] for k in TENSORS if k in out}


def pytorch_reference(checkpoint: Path, faces: np.ndarray) -> dict[str, np.ndarray]:
    return _stored(pytorch_outputs(CAFECheckpoint.load(checkpoint).build_model(), faces))


def repository_reference(repository: Path, faces: np.ndarray) -> dict[str, np.ndarray]:
    return _stored(OnnxChain.from_repository(repository, threads=2).run(faces))


def fixed_faces() -> dict[int, np.ndarray]:
    return {wire: draw_faces(2, wire, seed=1000 + wire)[0] for wire in (224, 112)}


def _export(checkpoint: Path, out: Path, variant: str, wire: int) -> Path:
    precision, fused = EXPORTS[variant]
    return export_checkpoint(checkpoint, out, wire_size=wire, precision=precision, fused=fused,
                             overwrite=True).repository


def regenerate(exports: dict[tuple[str, int], Path]) -> None:
    """Write outputs.npz from the stored checkpoint and its exported repositories."""
    faces = fixed_faces()
    arrays = {f"faces@{wire}": f for wire, f in faces.items()}
    for (variant, wire) in [(v, w) for v, wires in WIRES.items() for w in wires]:
        tensors = (pytorch_reference(CHECKPOINT, faces[wire]) if variant == "pytorch"
                   else repository_reference(exports[variant, wire], faces[wire]))
        arrays.update({f"{variant}@{wire}/{name}": value for name, value in tensors.items()})
    np.savez_compressed(OUTPUTS, **arrays)


def mismatches(got: dict[str, np.ndarray], references, key: str, precision: str) -> list[str]:
    """Each tensor of ``got`` that differs from references[key/...] beyond the tolerance, described."""
    tol, found = TOLERANCES[precision], []
    for name, value in got.items():
        expected = references[f"{key}/{name}"]
        if value.shape != expected.shape:
            found.append(f"{key} {name}: shape {value.shape}, reference {expected.shape}")
        elif not np.allclose(value, expected, **tol):
            found.append(f"{key} {name}: max |diff| {max_abs_diff(expected, value):.3g} beyond rtol {tol['rtol']:g}, "
                         f"atol {tol['atol']:g}")
    return found


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    """The fixture checkpoint (written first with FER_TRITON_REGENERATE_REFERENCES=checkpoint)."""
    if REGENERATE == "checkpoint":
        FIXTURES.mkdir(parents=True, exist_ok=True)
        write_reference_checkpoint(CHECKPOINT)
    return CHECKPOINT


@pytest.fixture(scope="module")
def exports(tmp_path_factory, checkpoint) -> dict[tuple[str, int], Path]:
    """Every exported variant of the fixture checkpoint."""
    root = tmp_path_factory.mktemp("reference")
    return {(v, w): _export(checkpoint, root / f"{v}-{w}", v, w) for v, wires in WIRES.items() if v != "pytorch"
            for w in wires}


@pytest.fixture(scope="module")
def references(request, checkpoint):
    """The stored reference tensors (regenerated first when FER_TRITON_REGENERATE_REFERENCES is set)."""
    if REGENERATE:
        regenerate(request.getfixturevalue("exports"))
    with np.load(OUTPUTS) as stored:
        return dict(stored)


# -- the tests ----------------------------------------------------------------------------------------

def test_the_checkpoint_fixture_is_small_and_in_todays_format(checkpoint, tmp_path):
    """Today's writer produces what the fixture holds: same fields, tensor names, shapes and dtypes, same
    preprocessing settings. A change to the format fails here: bump FORMAT_VERSION, keep reading
    version 1, and regenerate the fixture (FER_TRITON_REGENERATE_REFERENCES=checkpoint)."""
    assert checkpoint.stat().st_size < 1_000_000
    stored = torch.load(checkpoint, map_location="cpu", weights_only=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, init = build_untrained(TINY_CLIP_MODEL, None, seed=1)
    today = CAFECheckpoint.from_model(model, clip_model=TINY_CLIP_MODEL, clip_pretrained=None, mask_net_init=init,
                                      meta=META).to_dict()

    def layout(blob):
        if isinstance(blob, torch.Tensor):
            return ("tensor", tuple(blob.shape), str(blob.dtype))
        if isinstance(blob, dict):
            return {k: layout(v) for k, v in blob.items()}
        return type(blob).__name__

    assert layout(stored) == layout(today)
    assert stored["format"] == today["format"] and stored["format_version"] == today["format_version"]
    assert stored["preprocess"] == today["preprocess"] == Preprocess().config()
    # Loads, saves and loads again to the same contents.
    again = CAFECheckpoint.load(CAFECheckpoint.load(checkpoint).save(tmp_path / "again.pt"))
    for name, tensor in stored["mask_net"].items():
        assert torch.equal(again.mask_net[name], tensor), name


@pytest.mark.parametrize("wire", WIRES["pytorch"])
def test_pytorch_model_of_the_stored_checkpoint_matches_its_references(checkpoint, references, wire):
    got = pytorch_reference(checkpoint, references[f"faces@{wire}"])
    assert set(got) == set(TENSORS)
    assert mismatches(got, references, f"pytorch@{wire}", "fp32") == []


@pytest.mark.parametrize("variant,wire", [(v, w) for v, wires in WIRES.items() if v != "pytorch" for w in wires])
def test_every_exported_graph_matches_its_references(exports, references, variant, wire):
    precision, fused = EXPORTS[variant]
    got = repository_reference(exports[variant, wire], references[f"faces@{wire}"])
    # The fused backbone passes no pixels between models: every other tensor is compared.
    assert set(got) == set(TENSORS) - ({"pixels"} if fused else set())
    assert mismatches(got, references, f"{variant}@{wire}", precision) == []
    if precision == "fp32":  # and an FP32 export stays where PyTorch is
        for name, value in got.items():
            np.testing.assert_allclose(value, references[f"pytorch@{wire}/{name}"], atol=DEFAULT_ATOL, rtol=0)


def _shifted_mean(monkeypatch):
    """One line changed: the red channel's mean (0.485 -> 0.495)."""
    original = Preprocess.__init__

    def init(self, image_size=224, mean=fer_triton.model.IMAGENET_MEAN, std=fer_triton.model.IMAGENET_STD):
        original(self, image_size, (mean[0] + 0.01, *mean[1:]), std)
    monkeypatch.setattr(Preprocess, "__init__", init)


def _nearest_resize(monkeypatch):
    """One line changed: the resize mode (bilinear -> nearest)."""
    functional = torch.nn.functional

    class NearestF:
        def __getattr__(self, name):
            return getattr(functional, name)

        @staticmethod
        def interpolate(x, size=None, mode=None, align_corners=None, antialias=False):
            return functional.interpolate(x, size=size, mode="nearest")
    monkeypatch.setattr(fer_triton.model, "F", NearestF())


@pytest.mark.parametrize("change,wire", [(_shifted_mean, 224), (_nearest_resize, 112)], ids=["mean", "resize"])
def test_a_one_line_preprocessing_change_fails_the_references(checkpoint, references, monkeypatch, tmp_path, change,
                                                              wire):
    change(monkeypatch)
    faces = references[f"faces@{wire}"]
    # Export still validates (PyTorch and ONNX changed together) ...
    repository = _export(checkpoint, tmp_path / "repo", "fp32-staged", wire)
    exported = mismatches(repository_reference(repository, faces), references, f"fp32-staged@{wire}", "fp32")
    pytorch = mismatches(pytorch_reference(checkpoint, faces), references, f"pytorch@{wire}", "fp32")
    # ... the stored references do not: every tensor from the pixels on has moved.
    for found, key in ((exported, f"fp32-staged@{wire}"), (pytorch, f"pytorch@{wire}")):
        assert [m.split(":")[0] for m in found] == [f"{key} {name}" for name in TENSORS], found


def test_export_validates_the_fused_graph_it_serves(checkpoint, monkeypatch, tmp_path):
    """A fused backbone that no longer computes what PyTorch does fails the export, and nothing is written."""
    import onnx
    from onnx import numpy_helper

    import fer_triton.export.fuse as fuse
    from fer_triton.export.onnx_export import ExportValidationError

    original = fuse.fuse_backbone

    def off_by_one_percent(*args):
        path = original(*args)
        graph = onnx.load(str(path))
        weight = next(t for t in graph.graph.initializer if t.name.startswith("mask_net/") and len(t.dims) == 4)
        weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.01, weight.name))
        onnx.save(graph, str(path))
        return path
    monkeypatch.setattr(fuse, "fuse_backbone", off_by_one_percent)
    with pytest.raises(ExportValidationError, match=r"cafe_backbone: ONNX differs from PyTorch by .* in clip_features"):
        _export(checkpoint, tmp_path / "repo", "fp32-fused", 224)
    assert not (tmp_path / "repo").exists()


def test_int8_graphs_are_held_to_agreement_and_a_probability_tolerance(checkpoint, exports, references):
    from fer_triton.export.onnx_chain import repository_graphs
    from fer_triton.export.onnx_export import ExportValidationError
    from fer_triton.export.precision_names import precision
    from fer_triton.export.validate import validate_graphs

    model = CAFECheckpoint.load(checkpoint).build_model()
    graphs = repository_graphs(exports["int8-fused", 224])
    faces = references["faces@224"]
    report = validate_graphs(model, graphs, faces, precision="int8")
    assert report.layout == "fused" and report.top1_agreement == 1.0
    assert 0 < report.chain_max_prob_diff <= precision("int8").max_prob_diff
    assert set(report.graphs) == {"head"}  # the backbone holds INT8 stages: judged by the chain, not by atol
    with pytest.raises(ExportValidationError, match=r"INT8 fused graphs move a probability by .* more than the "
                                                   r"allowed 1e-06"):
        validate_graphs(model, graphs, faces, precision="int8", max_prob_diff=1e-6)
