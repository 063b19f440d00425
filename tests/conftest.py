"""Shared fixtures: a small CAFE checkpoint, its exported repository, and a REAL tritonserver.

The tiny CLIP config (2-layer ViT, same 512-d output) keeps tests fast; every code path
(open_clip config loading, ONNX export, python backend, ensemble, gRPC) is the real one.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from fer_triton.checkpoint import CAFECheckpoint, build_untrained
from fer_triton.clip_loader import TINY_CLIP_MODEL
from fer_triton.model import Preprocess
from fer_triton.server import TritonServer, free_port

torch.set_num_threads(2)


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
    """An exported (CPU flavour) repository. Treat as read-only: copy it to change it."""
    from fer_triton.export.exporter import export_checkpoint

    out = tmp_path_factory.mktemp("repo") / "model_repository"
    export_checkpoint(tiny_checkpoint, out)
    return out


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
