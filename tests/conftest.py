"""Shared fixtures: a small CAFE checkpoint, its exported repository, and a REAL tritonserver.

The tiny CLIP config (2-layer ViT, same 512-d output) keeps tests fast; every code path
(open_clip config loading, ONNX export, python backend, ensemble, gRPC) is the real one.
"""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import fer_triton
from fer_triton.checkpoint import CAFECheckpoint, build_untrained
from fer_triton.clip_loader import TINY_CLIP_MODEL
from fer_triton.model import Preprocess
from fer_triton.server import TritonServer, free_port

torch.set_num_threads(2)

REPO = Path(__file__).resolve().parent.parent
# `make test` sets this: the tests then run against the wheel installed (not editable) in the venv.
INSTALLED = os.environ.get("FER_TRITON_TEST_INSTALLED") == "1"
# Subprocesses (`python -m fer_triton ...`) started in the repo root must import the installed
# package, not the source tree's fer_triton/ folder (which lacks the mapped sub-packages): Python
# 3.11+ then leaves the current folder off sys.path.
os.environ.setdefault("PYTHONSAFEPATH", "1")
# Tests never download anything: perf_analyzer comes from `make install` (or the test skips).
os.environ.setdefault("FER_TRITON_PERF_ANALYZER_DOWNLOAD", "0")


def _site_packages() -> list[Path]:
    return list(dict.fromkeys(Path(sysconfig.get_path(k)).resolve() for k in ("purelib", "platlib")))


def _installed(path: str | Path) -> bool:
    path = Path(path).resolve()
    return any(path.is_relative_to(site) for site in _site_packages())


_PROBE = "import fer_triton, fer_triton.export; print(fer_triton.__file__); print(fer_triton.export.__file__)"


def check_installed_package() -> None:
    """In installed mode: this process and a subprocess started in the repo root both import the wheel."""
    files = [fer_triton.__file__]
    try:
        files.append(importlib.import_module("fer_triton.export").__file__)
    except ImportError as exc:  # the source tree's fer_triton/ (without the mapped sub-packages) came first
        files.append(f"<{exc}>")
    probe = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True, text=True, timeout=60)
    files += probe.stdout.split() if probe.returncode == 0 else [f"<subprocess failed: {probe.stderr.strip()}>"]
    wrong = [f for f in files if not _installed(f)]
    if wrong:
        raise pytest.UsageError(
            f"FER_TRITON_TEST_INSTALLED=1 but fer_triton is not imported from site-packages "
            f"({', '.join(map(str, _site_packages()))}): {wrong}. Install the wheel (`make project`, not `pip "
            f"install -e`) and run pytest through .venv/bin/pytest (not `python -m pytest`) with PYTHONSAFEPATH=1.")


def pytest_sessionstart(session):
    if INSTALLED:
        check_installed_package()


def pytest_report_header(config):
    from fer_triton.benchmarks.perf_analyzer import find_perf_analyzer

    mode = "installed wheel" if INSTALLED else "as importable (set FER_TRITON_TEST_INSTALLED=1 to require the wheel)"
    binary = find_perf_analyzer()
    return [f"fer_triton: {Path(fer_triton.__file__).parent} ({mode})",
            f"perf_analyzer: {binary or 'not installed (`make install` fetches it; tests never download it)'}"]


def make_checkpoint(path: Path, seed: int = 0) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, init = build_untrained(TINY_CLIP_MODEL, None, seed=seed)
    return CAFECheckpoint.from_model(model, clip_model=TINY_CLIP_MODEL, clip_pretrained=None,
                                     mask_net_init=init, meta={"trained": False}).save(path)


def pytorch_probabilities(checkpoint: Path, faces: np.ndarray) -> np.ndarray:
    """The reference: the PyTorch model's probabilities on UINT8 faces at any wire size."""
    model = CAFECheckpoint.load(checkpoint).build_model()
    with torch.no_grad():
        return model(Preprocess()(torch.from_numpy(faces))).probabilities.numpy()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_cafe.pt")


@pytest.fixture(scope="session")
def tiny_repository(tmp_path_factory, tiny_checkpoint) -> Path:
    """An exported (CPU flavour) repository. Treat as read-only: copy it to change it.

    Exported with ``detector="none"``: the face detector's four python-backend models (what a plain
    export adds, export/detector.py) would slow every server start of the suite; tests of frames
    use ``frames_repository`` / ``frames_server``.
    """
    from fer_triton.export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("repo") / "model_repository"
    export_checkpoint(tiny_checkpoint, out, detector="none")
    return out


@pytest.fixture(scope="session")
def frames_repository(tmp_path_factory, tiny_repository) -> Path:
    """``tiny_repository`` plus what a plain ``fer-triton export`` adds to it: the MTCNN nets and
    ``cafe_frames`` (export/detector.py, default options). Treat as read-only."""
    from fer_triton.export.detector import DetectorOptions, write_detector_models

    out = tmp_path_factory.mktemp("frames") / "model_repository"
    shutil.copytree(tiny_repository, out)
    write_detector_models(out, prefix="cafe", classifier="cafe", wire_size=224, num_classes=7,
                          options=DetectorOptions(), classifier_max_batch_size=64)
    return out


@pytest.fixture(scope="session")
def frames_server(frames_repository):
    """One real tritonserver serving ``frames_repository`` (``cafe_frames``, the detector nets, ``cafe``)."""
    server = start_server(frames_repository)
    yield server
    server.stop()


@pytest.fixture
def repository_copy(tiny_repository, tmp_path) -> Path:
    """A private, writable copy of the exported repository (for tests that publish versions)."""
    dst = tmp_path / "model_repository"
    shutil.copytree(tiny_repository, dst)
    return dst


def start_server(repository: Path, **kwargs) -> TritonServer:
    return TritonServer(repository, grpc_port=free_port(), http_port=free_port(),
                        metrics_port=free_port(), **kwargs).start()


@pytest.fixture(scope="session")
def triton_server(tiny_repository):
    """One real tritonserver on the shared tiny repository, for tests that only read from it."""
    server = start_server(tiny_repository)
    yield server
    server.stop()


@pytest.fixture
def server_factory():
    """Start extra servers (on private repositories); all are stopped at the end of the test."""
    servers = []

    def factory(repository: Path, **kwargs) -> TritonServer:
        server = start_server(repository, **kwargs)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()
