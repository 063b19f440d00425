"""Sites: named adaptations of the base model, each with its own head versions, drift reference,
reports and rollback history, all served by ONE model.

Design (justified with measured figures in model_repository/README.md): clients of a site call the
``<prefix>_sites`` ensemble with a ``site`` per face. It runs the same preprocess, CLIP encoder and
mask net (or fused backbone) and the same base head as ``<prefix>``, so Triton's dynamic batcher
batches the backbone across every site and the base clients; its last step, ``<prefix>_site_head``
(python backend, numpy), swaps in each face's site head. A site without a head of its own gets the
base head's outputs unchanged. A model per site would cost a python stub process each (about 45 MB
on a CPU host); here a site costs its 512 x 7 weights (14 KB) in the one site-head process.

Every site change (add, a retrain's publish, a rollback) writes the next version folder of
``<prefix>_site_head`` (a copy of the served one with that one site changed) and loads it like a new
base head (publish.publish_version): versions are never reused, the previous version stays loaded,
a failed load or check serves the previous version again. A version folder holds:

    model.py          export/triton_python/site_head_model.py
    sites.json        the table: per site, who created it and when, the stack of its published heads
                      (site version, published at / by, held-out accuracy, data, drift reference),
                      the heads rolled back, and the next site version number
    sites.npz         "<site>/<site version>/weight" FP32 [7, 512] and ".../bias" FP32 [7] of every
                      head on a site's stack (rollback pops the stack: the one below is served again)
    drift/<site>-<site version>.npz   each site head's drift reference (retrain writes one)

Only the two newest version folders stay in the repository (Triton loads both); older ones move to
``<repository>.archive/<prefix>_site_head/<N>-superseded-<time>``: every folder holds the whole history.

The mask net is shared by every site and the base model: ``retrain --site`` fits a head only and
refuses ``--fine-tune-mask``. A base ``--fine-tune-mask`` changes the features every site head sees;
``fer-triton sites list`` then flags the site heads fitted on the previous mask net.
"""

from __future__ import annotations

import copy
import getpass
import json
import logging
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fer_triton.client import FerClient
from fer_triton.client.grpc_client import SITE_NAME, SITE_NAME_RULE
from fer_triton.export.repository import SITE_RUNNER_SOURCE, RepositoryLayout, write_site_models
from fer_triton.retrain.fit import LinearHead
from fer_triton.retrain.pins import check_unpinned
from fer_triton.retrain.publish import (SITES_INFO, PublishError, StageVersions, check_serving, jsonable, load_model,
                                        publish_version)
from fer_triton.retrain.replicas import Fleet, as_fleet

log = logging.getLogger(__name__)

TABLE_FILE = SITES_INFO
HEADS_FILE = "sites.npz"
DRIFT_FOLDER = "drift"
TABLE_FORMAT = 1
KEPT_FOLDERS = 2     # the served version and the one before (both loaded by the latest-2 policy)


class SiteError(ValueError):
    """A site request that cannot be done (a bad or unknown name, a site that exists, no site models,
    --fine-tune-mask with --site); nothing was changed."""


def check_site_name(name: str) -> str:
    """``name`` if it is a valid site name, else SiteError naming the rule."""
    if not isinstance(name, str) or not SITE_NAME.match(name):
        raise SiteError(f"{name!r} is not a valid site name: use {SITE_NAME_RULE} (e.g. 'lobby', 'store-12')")
    return name


def who() -> str:
    """user@host of this process: who published a site change."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (containers)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def drift_file(site: str, site_version: int) -> str:
    """Where a site head's drift reference lives in a version folder (site version 0: the base head's outputs)."""
    return f"{DRIFT_FOLDER}/{site}-{site_version}.npz"


@dataclass
class SiteTable:
    """One site-head version's table (sites.json) and head weights (sites.npz).

    ``sites``: {name: {"created", "created_by", "heads": [entry...], "rolled_back": [entry...],
    "next_version"}}; an entry: {"version", "key", "published", "published_by", "accuracy",
    "balanced_accuracy", ... what the publish recorded}. ``arrays``: {"<key>/weight": FP32 [7, 512],
    "<key>/bias": FP32 [7]} of every entry on a stack. ``meta``: the change that made this version.
    """

    sites: dict[str, dict] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    @classmethod
    def empty(cls, model_version: int) -> "SiteTable":
        return cls(meta={"model_version": model_version, "change": "created by fer-triton export", "at": _now()})

    @classmethod
    def load(cls, folder: Path) -> "SiteTable":
        """Read a version folder's table; SiteError naming the file when it is missing or unreadable."""
        folder = Path(folder)
        try:
            record = json.loads((folder / TABLE_FILE).read_text(encoding="utf-8"))
            with np.load(folder / HEADS_FILE, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise SiteError(f"cannot read the site table of {folder}: {exc}") from exc
        if record.get("format") != TABLE_FORMAT:
            raise SiteError(f"{folder / TABLE_FILE} has format {record.get('format')!r}, this fer-triton reads "
                            f"{TABLE_FORMAT}")
        return cls(record["sites"], arrays, record.get("meta", {}))

    def save(self, folder: Path) -> None:
        """Write sites.json and sites.npz into ``folder`` (a version folder being built)."""
        folder = Path(folder)
        with open(folder / HEADS_FILE, "wb") as fh:
            np.savez(fh, **self.arrays)
        record = {"format": TABLE_FORMAT, "meta": self.meta, "sites": self.sites}
        (folder / TABLE_FILE).write_text(json.dumps(record, indent=2, default=jsonable))

    def copy(self) -> "SiteTable":
        return SiteTable(copy.deepcopy(self.sites), dict(self.arrays), dict(self.meta))

    def site(self, name: str) -> dict:
        """The site's record; SiteError naming `fer-triton sites add` for an unknown site."""
        check_site_name(name)
        if name not in self.sites:
            known = ", ".join(sorted(self.sites)) or "none yet"
            raise SiteError(f"unknown site {name!r} (sites: {known}): create it with `fer-triton sites add {name}`")
        return self.sites[name]

    def served(self, name: str) -> dict | None:
        """The entry of the head the site is served with, None when the base head serves it."""
        heads = self.site(name)["heads"]
        return heads[-1] if heads else None

    def site_version(self, name: str) -> int:
        """The site's served head version; 0 when the base head serves it."""
        entry = self.served(name)
        return entry["version"] if entry else 0

    def head(self, name: str) -> LinearHead | None:
        """The site's served head, or None (the base head serves it)."""
        entry = self.served(name)
        if entry is None:
            return None
        return LinearHead(self.arrays[f"{entry['key']}/weight"], self.arrays[f"{entry['key']}/bias"])

    def add(self, name: str, by: str) -> None:
        check_site_name(name)
        if name in self.sites:
            raise SiteError(f"site {name!r} already exists (created {self.sites[name]['created']} by "
                            f"{self.sites[name]['created_by']}): choose another name")
        self.sites[name] = {"created": _now(), "created_by": by, "heads": [], "rolled_back": [], "next_version": 1}

    def push(self, name: str, head: LinearHead, record: dict) -> int:
        """Serve ``head`` for the site as its next site version; returns that version."""
        site = self.site(name)
        version = site["next_version"]
        key = f"{name}/{version}"
        self.arrays[f"{key}/weight"] = np.asarray(head.weight, np.float32)
        self.arrays[f"{key}/bias"] = np.asarray(head.bias, np.float32)
        site["heads"].append({"version": version, "key": key, **record})
        site["next_version"] = version + 1
        return version

    def pop(self, name: str, by: str) -> tuple[int, int]:
        """Take the site's served head out (kept in ``rolled_back``); returns (version out, version now served,
        0 = the base head). SiteError when the site has no head of its own."""
        site = self.site(name)
        if not site["heads"]:
            raise SiteError(f"site {name!r} has no head of its own (the base head serves it): nothing to roll back")
        entry = site["heads"].pop()
        for suffix in ("weight", "bias"):
            self.arrays.pop(f"{entry['key']}/{suffix}", None)
        site["rolled_back"].append({**entry, "rolled_back": _now(), "rolled_back_by": by})
        return entry["version"], self.site_version(name)


@dataclass(frozen=True)
class SiteRow:
    """One line of `fer-triton sites list`."""

    site: str
    site_version: int                 # 0: served by the base head
    model_version: int                # the <prefix>_site_head version holding it
    published: str | None
    published_by: str | None
    accuracy: float | None            # held-out accuracy of the served head (the publish's comparison)
    balanced_accuracy: float | None
    held_out: int | None
    created: str
    created_by: str
    note: str = ""

    def as_dict(self) -> dict:
        return dict(self.__dict__)


class Sites:
    """The sites of one repository: its ``<prefix>_site_head`` version folders and the changes to them."""

    def __init__(self, repository: str | Path, layout: RepositoryLayout = RepositoryLayout()):
        self.repository, self.layout = Path(repository), layout
        self.versions = StageVersions(self.repository, layout, "site_head")

    @property
    def installed(self) -> bool:
        return all((self.repository / m / "config.pbtxt").is_file()
                   for m in (self.layout.site_head, self.layout.sites_ensemble))

    def require(self) -> None:
        """SiteError unless the repository has the site models."""
        if not (self.repository / self.layout.ensemble / "config.pbtxt").is_file():
            raise SiteError(f"{self.repository / self.layout.ensemble} is missing: is {self.repository} an exported "
                            f"fer-triton repository (prefix '{self.layout.prefix}')?")
        if not self.installed:
            raise SiteError(f"{self.repository} has no site models ({self.layout.sites_ensemble}, "
                            f"{self.layout.site_head}): it was exported before sites existed. `fer-triton sites add "
                            f"NAME` adds them in place (or export the repository again)")

    def table(self, version: int | None = None) -> SiteTable:
        """The table of ``version`` (default: the newest on disk)."""
        self.require()
        return SiteTable.load(self.versions.version_dir(self.versions.newest() if version is None else version))

    def drift_reference(self, site: str) -> Path:
        """The served site head's drift reference file (it may not exist yet)."""
        table = self.table()
        return self.versions.version_dir(self.versions.newest()) / drift_file(site, table.site_version(site))

    def rows(self, mask_net_version: int | None = None) -> list[SiteRow]:
        """Every site of the newest table, by name. ``mask_net_version``: the served mask net's, to flag heads
        fitted on another one."""
        table, model_version = self.table(), self.versions.newest()
        rows = []
        for name in sorted(table.sites):
            site, entry = table.sites[name], table.served(name)
            note = "" if entry else "served by the base head"
            fitted_on = (entry or {}).get("mask_net_version")
            if entry and mask_net_version is not None and fitted_on not in (None, mask_net_version):
                note = (f"fitted on mask net version {fitted_on}, version {mask_net_version} is served: "
                        f"retrain this site")
            entry = entry or {}
            rows.append(SiteRow(name, table.site_version(name), model_version, entry.get("published"),
                                entry.get("published_by"), entry.get("accuracy"), entry.get("balanced_accuracy"),
                                entry.get("held_out"), site["created"], site["created_by"], note))
        return rows

    # ---- changes (need the server that runs this repository) ----------------------------------
    def check_serving(self, client: Fleet | FerClient) -> int:
        """The served site-head version (the newest on disk); PublishError unless every replica runs it and
        has the sites ensemble ready."""
        self.require()
        fleet = as_fleet(client)
        version = check_serving(fleet, self.versions)
        for replica in fleet.clients:
            if not replica.triton.is_model_ready(self.layout.sites_ensemble):
                raise PublishError(f"the server at {replica.url} has no ready ensemble "
                                   f"'{self.layout.sites_ensemble}': load it (or restart the server on "
                                   f"{self.repository})")
        return version

    def install(self, client: Fleet | FerClient) -> list[str]:
        """Add the site models to a repository exported before sites existed, and load them; returns the
        models added ([] when they were there). On a load failure both folders are removed again."""
        if self.installed:
            return []
        check_serving(client, StageVersions(self.repository, self.layout))  # the server runs this repository
        check_unpinned(self.repository, self.layout)
        folders = write_site_models(self.repository, self.layout)
        try:
            load_model(client, self.layout.site_head)
            load_model(client, self.layout.sites_ensemble)
        except PublishError:
            for folder in folders:
                shutil.rmtree(folder, ignore_errors=True)
            for model in (self.layout.sites_ensemble, self.layout.site_head):
                # it may never have loaded on some replicas: what they say is only logged
                for url, why in as_fleet(client).unload(model).items():
                    log.debug("unloading %s on %s failed: %s", model, url, why)
            raise
        log.info("added %s and %s to %s", self.layout.site_head, self.layout.sites_ensemble, self.repository)
        return [f.name for f in folders]

    def publish(self, client: Fleet | FerClient, change: Callable[[SiteTable, dict], str], *,
                verify: Callable[[FerClient], None] | None = None) -> int:
        """Write and serve the next site-head version: the served table changed by ``change(table, files)``,
        which returns a description, may add {file name: writer(path)} to ``files`` (e.g. a drift
        reference) and raises SiteError before anything is written. Returns the version."""
        serving = self.check_serving(client)
        table = self.table(serving).copy()
        files: dict[str, Callable[[Path], object]] = {}
        description = change(table, files)
        by = who()

        def write(version: int, served: int) -> Path:
            table.meta = {"model_version": version, "previous_version": served, "change": description,
                          "at": _now(), "by": by}

            def fill(folder: Path) -> None:
                shutil.copyfile(SITE_RUNNER_SOURCE, folder / "model.py")
                previous = self.versions.version_dir(served) / DRIFT_FOLDER
                if previous.is_dir():
                    shutil.copytree(previous, folder / DRIFT_FOLDER)
                for name, writer in files.items():
                    (folder / name).parent.mkdir(parents=True, exist_ok=True)
                    writer(folder / name)
                table.save(folder)

            return self.versions.write_version(version, fill)

        version = publish_version(client, self.versions, write, verify=verify)
        self._archive_superseded()
        log.info("%s version %d: %s", self.versions.name, version, description)
        return version

    def _archive_superseded(self) -> None:
        for version in self.versions.on_disk()[:-KEPT_FOLDERS]:
            self.versions.archive(version, "superseded")

    def add(self, client: Fleet | FerClient, name: str) -> int:
        """Create site ``name`` (served by the base head until it gets a head); returns the site-head version."""
        check_site_name(name)
        by = who()

        def change(table: SiteTable, _files: dict) -> str:
            table.add(name, by)
            return f"added site {name}"

        return self.publish(client, change)

    def publish_head(self, client: Fleet | FerClient, site: str, head: LinearHead, record: dict, *,
                     drift_reference: Callable[[Path], object] | None = None,
                     verify: Callable[[FerClient], None] | None = None) -> tuple[int, int]:
        """Serve ``head`` for ``site`` as its next site version (with its drift reference writer, if any).

        ``record``: what the retrain measured (accuracy, balanced_accuracy, held_out, ...). Returns
        (site-head model version, site version).
        """
        by, versions = who(), {}

        def change(table: SiteTable, files: dict) -> str:
            version = table.site(site)["next_version"]
            drift = drift_file(site, version) if drift_reference else None
            versions["site"] = table.push(site, head, {"published": _now(), "published_by": by,
                                                       "drift_reference": drift, **record})
            if drift:
                files[drift] = drift_reference
            return f"site {site}: head version {version}"

        return self.publish(client, change, verify=verify), versions["site"]

    def rollback(self, client: Fleet | FerClient, site: str) -> "SiteRollback":
        """Serve the site's previous head again (or the base head after its first); the served one is kept
        in the table's ``rolled_back`` list and the archived version folders."""
        by, moved = who(), {}

        def change(table: SiteTable, _files: dict) -> str:
            moved["from"], moved["to"] = table.pop(site, by)
            to = f"version {moved['to']}" if moved["to"] else "the base head"
            return f"site {site}: rolled back from head version {moved['from']} to {to}"

        version = self.publish(client, change)
        return SiteRollback(site, moved["from"], moved["to"], version)


@dataclass(frozen=True)
class SiteRollback:
    site: str
    from_version: int
    to_version: int          # 0: the base head serves the site again
    model_version: int

    def describe(self, layout: RepositoryLayout = RepositoryLayout()) -> str:
        now = f"head version {self.to_version} is served" if self.to_version else "the base head serves it again"
        return (f"site '{self.site}': head version {self.from_version} taken out of service; {now} "
                f"({layout.site_head} version {self.model_version})")
