"""Publish a fine-tuned mask net together with its head, and roll such a pair back, in one switch.

A head-only publish is one ``load_model`` (retrain/publish.py). A new mask net needs its own head, and
with the ensemble's steps at ``model_version: -1`` loading ``cafe_mask_net`` M+1 and then ``cafe_head``
N+1 would serve the new mask with the old head in between. So the switch goes:

1. pin the ensemble's mask-net and head steps to the pair being served (M, N) and load the ensemble:
   it serves exactly what it served before;
2. write versions M+1 and N+1 and load both models: with ``version_policy latest 2`` Triton loads the
   new versions beside the old ones, while the pinned ensemble keeps calling M and N;
3. pin the ensemble to (M+1, N+1) and load it: the one step in which clients move to the new pair
   (requests in flight finish on the old ensemble);
4. check the served probabilities are the new pair's, then unpin (-1 again, which now resolves to the
   same pair) so that later head-only publishes work as before.

Any failure puts the ensemble back on (M, N), takes M+1 and N+1 out into the archive and unpins.
Rollback is the same switch backwards. ``head_info.json`` of N+1 records the mask-net version it was
published with, so ``fer-triton rollback`` knows to move both.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fer_triton.client import FerClient
from fer_triton.export.onnx_export import export_stage, mask_net_spec
from fer_triton.export.repository import RepositoryLayout, parse_config, replace_config, runner_source
from fer_triton.model import MaskNet
from fer_triton.retrain.fit import LinearHead
from fer_triton.retrain.pins import check_unpinned, write_pins
from fer_triton.retrain.pins import ensembles
from fer_triton.retrain.publish import (MASK_INFO, PublishError, StageVersions, jsonable, check_serving,
                                        load_model, rollback_head, served_versions, verify_everywhere,
                                        write_head_version)
from fer_triton.retrain.replicas import Fleet

log = logging.getLogger(__name__)

KEPT_VERSIONS = 2


def keep_two_versions(versions: StageVersions) -> list[Path]:
    """Make every config of the model keep 2 versions loaded (repositories exported before the mask net
    had that policy); returns the files changed. Triton reads them at the next load."""
    changed = []
    for path in [versions.model_dir / "config.pbtxt", *sorted((versions.model_dir / "configs").glob("*.pbtxt"))]:
        cfg = parse_config(path)
        if cfg.version_policy.WhichOneof("policy_choice") == "latest" \
                and cfg.version_policy.latest.num_versions >= KEPT_VERSIONS:
            continue
        cfg.version_policy.latest.num_versions = KEPT_VERSIONS
        replace_config(path, cfg)
        changed.append(path)
    if changed:
        log.info("%s now keeps %d versions loaded (%s)", versions.name, KEPT_VERSIONS, ", ".join(map(str, changed)))
    return changed


def write_mask_version(masks: StageVersions, version: int, net: MaskNet, *, wire_size: int, record: dict) -> Path:
    """Version folder of the mask net: ONNX graph validated against PyTorch, runner, mask_info.json."""

    def fill(folder: Path) -> None:
        report = export_stage(mask_net_spec(net.eval(), masks.name, wire_size), folder / "model.onnx")
        shutil.copyfile(runner_source(masks.model_dir), folder / "model.py")  # the engine it was exported with
        from fer_triton.export.gpu import add_cuda_runner

        if add_cuda_runner(folder):  # gpu_python variant: its runner and the PyTorch graph it runs on CUDA
            from fer_triton.export.torch_graphs import write_spec_graph

            write_spec_graph(mask_net_spec(net.eval(), masks.name, wire_size), folder)
        info = {"version": version, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "onnx_max_abs_diff": report.worst, **record}
        (folder / MASK_INFO).write_text(json.dumps(info, indent=2, default=jsonable))

    return masks.write_version(version, fill)


def _switch(client: Fleet | FerClient, layout: RepositoryLayout, repository: Path, pins: dict[str, int]) -> None:
    """Pin (or unpin, ``{}``) the mask-net and head steps of every ensemble and load them on every replica:
    ``cafe`` and, where sites exist, ``cafe_sites`` switch together."""
    write_pins(repository, layout, pins)
    for ensemble in ensembles(repository, layout):
        load_model(client, ensemble)


def _require_served(client: FerClient, versions: StageVersions, *wanted: int) -> None:
    served = served_versions(client, versions.name)
    missing = [v for v in wanted if v not in served]
    if missing:
        raise PublishError(f"the server has {versions.name} versions {served} ready, not {missing}")


def publish_mask_and_head(client: Fleet | FerClient, masks: StageVersions, heads: StageVersions, net: MaskNet,
                          head: LinearHead, *, wire_size: int, mask_record: dict, head_info: dict,
                          extra_files: dict[str, Callable[[Path], None]] | None = None,
                          verify: Callable[[FerClient], None] | None = None) -> tuple[int, int]:
    """Publish ``net`` as mask-net version M+1 and ``head`` as head version N+1, switched in one step, on
    every replica of ``client`` (a Fleet, or one FerClient).

    ``verify(client)`` runs against each replica once the ensembles serve the new pair (raise to
    refuse: every replica goes back to the old pair). Returns (M+1, N+1).
    """
    repository, layout = Path(heads.repository), heads.layout
    old_mask, old_head = check_serving(client, masks), check_serving(client, heads)
    check_unpinned(repository, layout)
    new_mask, new_head = masks.next_version(), heads.next_version()
    keep_two_versions(masks)
    written: list[tuple[StageVersions, int]] = []
    switched = False
    try:
        write_mask_version(masks, new_mask, net, wire_size=wire_size,
                           record={"previous_version": old_mask, "head_version": new_head, **mask_record})
        written.append((masks, new_mask))
        write_head_version(heads, new_head, head, previous=old_head, extra_files=extra_files,
                           info={**head_info, "mask_net_version": new_mask, "previous_mask_net_version": old_mask,
                                 "published_with_mask_net": True})
        written.append((heads, new_head))
        switched = True  # from here on, undoing includes unpinning
        _switch(client, layout, repository, {masks.name: old_mask, heads.name: old_head})
        load_model(client, masks.name)
        load_model(client, heads.name)
        _require_served(client, masks, old_mask, new_mask)
        _require_served(client, heads, old_head, new_head)
        _switch(client, layout, repository, {masks.name: new_mask, heads.name: new_head})
        verify_everywhere(client, verify)
        _switch(client, layout, repository, {})
    except Exception as exc:
        kept = _undo(client, layout, repository, written, {masks.name: old_mask, heads.name: old_head} if switched
                     else None, exc)
        raise PublishError(f"publishing {masks.name} version {new_mask} with {heads.name} version {new_head} "
                           f"failed; versions {old_mask} and {old_head} are served again"
                           + (f" (the new versions are kept in {', '.join(map(str, kept))})" if kept else "")
                           + f": {exc}") from exc
    log.info("published %s %d + %s %d (were %d + %d)", masks.name, new_mask, heads.name, new_head, old_mask, old_head)
    return new_mask, new_head


def _undo(client, layout, repository, written, old_pins, cause) -> list[Path]:
    """Serve the old pair again (``old_pins``, None when the ensemble was never pinned), archive what was
    written, unpin. Raises if the server cannot be restored."""
    try:
        if old_pins:
            _switch(client, layout, repository, old_pins)
        kept = [versions.archive(version, "failed") for versions, version in written]
        for versions, _ in written:
            load_model(client, versions.name)
        if old_pins:
            _switch(client, layout, repository, {})
        return kept
    except Exception as again:
        raise PublishError(f"{cause}; and restoring the previous versions failed too: {again}") from cause


@dataclass
class Rollback:
    head_from: int
    head_to: int
    mask_from: int | None = None   # set when the mask net rolled back with the head
    mask_to: int | None = None

    def describe(self, heads: StageVersions, masks: StageVersions) -> str:
        text = f"{heads.name}: version {self.head_from} taken out of service"
        if self.mask_from is not None:
            text += f", with {masks.name} version {self.mask_from}"
        kept = heads.archive_dir if self.mask_from is None else heads.archive_dir.parent
        text += f" (kept in {kept}); version {self.head_to} is served"
        if self.mask_to is not None:
            text += f" with {masks.name} version {self.mask_to}"
        return text


def rollback(client: Fleet | FerClient, repository: Path, layout: RepositoryLayout = RepositoryLayout()) -> Rollback:
    """Take the newest head version out of service, and its mask net too when they were published together."""
    heads = StageVersions(repository, layout)
    masks = StageVersions(repository, layout, "mask_net")
    newest = heads.newest()
    record = heads.info(newest)
    if not record.get("published_with_mask_net"):
        old, new = rollback_head(client, heads)
        return Rollback(old, new)
    return _rollback_pair(client, masks, heads, record)


def _rollback_pair(client: FerClient, masks: StageVersions, heads: StageVersions, record: dict) -> Rollback:
    repository, layout = Path(heads.repository), heads.layout
    mask, head = check_serving(client, masks), check_serving(client, heads)
    check_unpinned(repository, layout)
    if record.get("mask_net_version") != mask:
        raise PublishError(f"{heads.name} version {head} was published with {masks.name} version "
                           f"{record.get('mask_net_version')}, but version {mask} is served: roll back by hand")
    previous_mask, previous_head = record.get("previous_mask_net_version"), record.get("previous_version")
    _require_served(client, masks, previous_mask)
    _require_served(client, heads, previous_head)
    _switch(client, layout, repository, {masks.name: previous_mask, heads.name: previous_head})
    try:
        heads.archive(head, "rolled-back")
        masks.archive(mask, "rolled-back")
        load_model(client, masks.name)
        load_model(client, heads.name)
    finally:
        _switch(client, layout, repository, {})
    served = (served_versions(client, masks.name)[-1:], served_versions(client, heads.name)[-1:])
    if served != ([previous_mask], [previous_head]):
        raise PublishError(f"after rollback the server serves {masks.name} {served[0]} and {heads.name} "
                           f"{served[1]}, not {previous_mask} and {previous_head}")
    log.info("rolled back %s %d + %s %d to %d + %d", masks.name, mask, heads.name, head, previous_mask, previous_head)
    return Rollback(head, previous_head, mask, previous_mask)
