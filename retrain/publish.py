"""Publish a new head as the next version of ``cafe_head`` and load it with no restart; roll back.

``publish_version`` does the same for any versioned model (the mask net's versions go through
pair_publish.py, the site head's through sites.py): write version N+1 beside the repository, move it
in, load it, verify, and put N back on any failure.

What the running server does (measured with tritonserver 2.51, explicit model control):
``load_model("cafe_head")`` loads every version the policy keeps (latest 2: N and N+1) while the old
instances keep serving, then Triton reloads the ensemble that depends on the head; the new ensemble
resolves ``model_version: -1`` to the highest READY version, so it serves N+1 as soon as
``load_model`` returns. The old ensemble and head versions are unloaded only after the requests in
flight on them finish: a client sending requests through the swap sees no error.

Layout:
    <repo>/cafe_head/<N>/model.onnx, model.py, head_info.json, drift_reference.npz
    <repo>.archive/cafe_head/<N>-rolled-back-<time>/    versions taken out of service (kept, not deleted)

Rollback moves the newest version directory into the archive and loads the head again: Triton then
serves N-1 (kept loaded by the latest-2 policy, so the switch is instant). Version numbers are never
reused (the archive counts), so Triton never mistakes a new head for an old one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tritonclient.utils import InferenceServerException

from fer_triton.client import FerClient
from fer_triton.export.onnx_export import HeadGraph, StageSpec, export_stage
from fer_triton.export.repository import RepositoryLayout, runner_source
from fer_triton.retrain.fit import LinearHead
from fer_triton.retrain.pins import check_unpinned
from fer_triton.retrain.replicas import Fleet, FleetError, as_fleet

log = logging.getLogger(__name__)

HEAD_INFO = "head_info.json"
MASK_INFO = "mask_info.json"
SITES_INFO = "sites.json"
VERSION_INFO = {"head": HEAD_INFO, "mask_net": MASK_INFO, "site_head": SITES_INFO}


class PublishError(RuntimeError):
    """A head could not be published or rolled back; the serving head was left (or put back) as it was."""


@dataclass(frozen=True)
class StageVersions:
    """One versioned stage's folders on disk (the head by default, the mask net, or the site head), and
    its archive beside the repository."""

    repository: Path
    layout: RepositoryLayout = RepositoryLayout()
    stage: str = "head"

    @property
    def name(self) -> str:
        return self.layout.model_name(self.stage)

    @property
    def model_dir(self) -> Path:
        return Path(self.repository) / self.name

    @property
    def archive_dir(self) -> Path:
        repo = Path(self.repository).resolve()
        return repo.parent / f"{repo.name}.archive" / self.name

    def on_disk(self) -> list[int]:
        if not (self.model_dir / "config.pbtxt").is_file():
            raise PublishError(f"{self.model_dir} is not a model folder (no config.pbtxt): is {self.repository} "
                               f"the repository the server runs, exported with prefix '{self.layout.prefix}'"
                               f"{' and the staged layout' if self.stage == 'mask_net' else ''}?")
        return sorted(int(p.name) for p in self.model_dir.iterdir() if p.is_dir() and p.name.isdigit())

    def newest(self) -> int:
        versions = self.on_disk()
        if not versions:
            raise PublishError(f"{self.model_dir} holds no version folder")
        return versions[-1]

    def next_version(self) -> int:
        archived = [int(p.name.split("-")[0]) for p in self.archive_dir.glob("*") if p.name.split("-")[0].isdigit()] \
            if self.archive_dir.is_dir() else []
        return max(self.on_disk() + archived + [0]) + 1

    def version_dir(self, version: int) -> Path:
        return self.model_dir / str(version)

    def info(self, version: int) -> dict:
        """The JSON record a publish wrote into the version folder ({} for an exported version)."""
        path = self.version_dir(version) / VERSION_INFO[self.stage]
        return json.loads(path.read_text()) if path.is_file() else {}

    def archive(self, version: int, why: str) -> Path:
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        target = self.archive_dir / f"{version}-{why}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(self.version_dir(version)), str(target))
        return target

    def write_version(self, version: int, fill: Callable[[Path], None]) -> Path:
        """Build version folder ``version`` with ``fill`` beside the repository, then move it in whole:
        a server (re)start never sees a half-written version."""
        self.archive_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".staging-", dir=self.archive_dir) as tmp:
            staged = Path(tmp) / str(version)
            staged.mkdir()
            fill(staged)
            target = self.version_dir(version)
            if target.exists():  # another publish got there first: never write into a version in use
                raise PublishError(f"{target} appeared while publishing: is another retrain running?")
            try:
                staged.rename(target)                      # atomic on one filesystem
            except OSError:
                shutil.move(str(staged), str(target))      # the repository is a mount of its own
        return target


def served_versions(target: Fleet | FerClient, model: str) -> list[int]:
    """READY versions of ``model``, the same on every replica; raises PublishError naming the replicas
    that cannot say or that serve other versions than the first."""
    fleet = as_fleet(target)
    found = {}
    for client in fleet.clients:
        try:
            found[client.url] = fleet.ready_versions(client, model)
        except FleetError as exc:
            raise PublishError(str(exc)) from exc
    first = next(iter(found.values()))
    if any(versions != first for versions in found.values()):
        raise PublishError(f"the replicas serve different versions of {model}: "
                           + "; ".join(f"{url}: {v or 'none'}" for url, v in found.items())
                           + " (`fer-triton status` shows them; load the model on the ones behind)")
    return first


def check_serving(target: Fleet | FerClient, heads: StageVersions) -> int:
    """The stage's version being served (the newest on disk); raise PublishError unless EVERY replica runs
    this repository's versions of it (the message names the replica)."""
    fleet = as_fleet(target)
    for client in fleet.clients:
        try:
            ensemble_ready = client.triton.is_model_ready(client.model)
        except InferenceServerException as exc:
            raise PublishError(f"cannot reach the Triton server at {client.url}: {exc.message()}") from exc
        if not ensemble_ready:
            raise PublishError(f"the server at {client.url} has no ready ensemble '{client.model}' "
                               f"(is this a fer-triton server? pass -m/--model for another name)")
    newest = heads.newest()
    for client in fleet.clients:
        served = served_versions(Fleet.wrap([client]), heads.name)
        if not served:
            raise PublishError(f"the server at {client.url} serves no '{heads.name}' model; it is not the server "
                               f"of {heads.repository}")
        if served[-1] != newest:
            raise PublishError(f"the server at {client.url} serves {heads.name} version {served[-1]} but "
                               f"{heads.model_dir} holds version {newest} as newest: the server does not run "
                               f"repository {heads.repository}, or it was changed without loading")
    return newest


def read_head(onnx_path: Path) -> LinearHead:
    """The Linear(512, 7) weights of a published head graph (its ONNX initializers)."""
    import onnx
    from onnx import numpy_helper

    arrays = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(onnx_path)).graph.initializer}
    weights = [a for a in arrays.values() if a.ndim == 2]
    biases = [a for a in arrays.values() if a.ndim == 1]
    if len(weights) != 1 or len(biases) != 1:
        raise PublishError(f"{onnx_path} is not a linear head graph (initializers: {sorted(arrays)})")
    return LinearHead(weights[0], biases[0])


def export_head(head: LinearHead, path: Path, name: str) -> float:
    """Write ``head`` as the head stage's ONNX graph, validated against PyTorch; returns max |diff|."""
    def sample(batch, gen):  # CLIP-like features and non-negative mask logits, as the ensemble feeds them
        return torch.randn(batch, head.weight.shape[1], generator=gen), \
            torch.relu(torch.randn(batch, head.weight.shape[1], generator=gen))

    spec = StageSpec(name, HeadGraph(head.to_module()), ("clip_features", "mask_logits"),
                     ("masked_features", "logits", "probabilities"), sample)
    return export_stage(spec, path).worst


def load_model(target: Fleet | FerClient, name: str) -> None:
    """Load ``name`` on every replica; raise PublishError naming each replica that refused and why."""
    fleet = as_fleet(target)
    failed = fleet.load(name)
    if failed:
        where = "" if len(fleet.clients) == 1 else f" on {len(failed)} of {len(fleet.clients)} replicas"
        raise PublishError(f"Triton could not load {name}{where}: "
                           + "; ".join(msg if len(fleet.clients) == 1 else f"{url}: {msg}" for url, msg in failed.items()))


def verify_everywhere(target: Fleet | FerClient, verify: Callable[[FerClient], None] | None) -> None:
    """Run ``verify(client)`` against every replica; the first failure is raised naming its replica."""
    if verify is None:
        return
    fleet = as_fleet(target)
    for client in fleet.clients:
        try:
            verify(client)
        except Exception as exc:
            if len(fleet.clients) == 1:
                raise
            raise PublishError(f"replica {client.url}: {exc}") from exc


def write_head_version(heads: StageVersions, version: int, head: LinearHead, *, previous: int, info: dict,
                       extra_files: dict[str, Callable[[Path], None]] | None = None) -> Path:
    """Version folder ``version`` of the head: validated ONNX graph, python-backend runner, head_info.json
    (+ ``extra_files``: file name -> writer, e.g. the drift reference)."""

    def fill(folder: Path) -> None:
        diff = export_head(head, folder / "model.onnx", heads.name)
        shutil.copyfile(runner_source(heads.model_dir), folder / "model.py")
        from fer_triton.export.gpu import add_cuda_runner

        add_cuda_runner(folder)  # gpu_python variant: its runner (the 512x7 head runs model.onnx, no graph needed)
        for file_name, write in (extra_files or {}).items():
            write(folder / file_name)
        record = {"version": version, "previous_version": previous,
                  "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "onnx_max_abs_diff": diff, **info}
        (folder / HEAD_INFO).write_text(json.dumps(record, indent=2, default=jsonable))

    return heads.write_version(version, fill)


def publish_version(target: Fleet | FerClient, versions: StageVersions, write: Callable[[int, int], Path], *,
                    verify: Callable[[FerClient], None] | None = None) -> int:
    """Publish the next version of a versioned model on every replica, all or nothing; return its number.

    ``target``: the replicas that serve the repository (a Fleet), or one server (a FerClient).
    ``write(version, serving)`` builds version folder ``version`` (through ``versions.write_version``)
    from the served one. Then every replica loads the model, must serve the new version, and
    ``verify(client)`` runs against each (raise to refuse). On any failure after the write (one replica
    refusing the load, serving another version, or failing verification), the new folder goes to the
    archive as ``<version>-failed-<time>`` and every replica loads the model again, so all serve the
    previous version as before. Raises PublishError naming the replica (or PinError: an interrupted pair
    publish left pins).
    """
    fleet = as_fleet(target)
    serving = check_serving(fleet, versions)
    check_unpinned(versions.repository, versions.layout)
    version = versions.next_version()
    write(version, serving)
    try:
        load_model(fleet, versions.name)
        served = served_versions(fleet, versions.name)
        if not served or served[-1] != version:
            raise PublishError(f"after loading, {fleet.describe()} serve(s) {versions.name} versions {served}, "
                               f"not {version}")
        verify_everywhere(fleet, verify)
    except Exception as exc:
        archived = versions.archive(version, "failed")
        try:
            load_model(fleet, versions.name)
        except PublishError as again:
            raise PublishError(f"{exc}; and reloading version {serving} failed too: {again}") from exc
        raise PublishError(f"publishing {versions.name} version {version} failed, version {serving} is served "
                           f"again by {fleet.describe()} (the new version is kept in {archived}): {exc}") from exc
    log.info("published %s version %d (was %d) on %s, each verified", versions.name, version, serving,
             fleet.describe())
    return version


def publish_head(client: Fleet | FerClient, heads: StageVersions, head: LinearHead, *, info: dict,
                 extra_files: dict[str, Callable[[Path], None]] | None = None,
                 verify: Callable[[FerClient], None] | None = None) -> int:
    """Write ``head`` as version N+1, load it, check it is served; return N+1.

    ``extra_files`` maps file names to writers (e.g. the drift reference). ``verify`` runs after the
    load (raise to refuse): on any failure the new version is archived and version N is served again.
    """
    def write(version: int, serving: int) -> Path:
        return write_head_version(heads, version, head, previous=serving, info=info, extra_files=extra_files)

    return publish_version(client, heads, write, verify=verify)


def rollback_head(client: Fleet | FerClient, heads: StageVersions) -> tuple[int, int]:
    """Take the newest head version out of service (into the archive) and serve the previous one on every
    replica (a replica that refuses puts the version back and reloads everywhere).

    Returns (version taken out, version now served).
    """
    serving = check_serving(client, heads)
    check_unpinned(heads.repository, heads.layout)
    versions = heads.on_disk()
    if len(versions) < 2:
        raise PublishError(f"{heads.model_dir} holds only version {serving}: there is no previous version "
                           f"to roll back to")
    previous = versions[-2]
    archived = heads.archive(serving, "rolled-back")
    try:
        load_model(client, heads.name)
    except PublishError:
        shutil.move(str(archived), str(heads.version_dir(serving)))  # put it back as it was
        load_model(client, heads.name)
        raise
    served = served_versions(client, heads.name)
    if not served or served[-1] != previous:
        raise PublishError(f"after rollback the server serves {heads.name} versions {served}, not {previous}")
    log.info("rolled %s back from version %d to %d (archived in %s)", heads.name, serving, previous, archived)
    return serving, previous


def jsonable(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)
