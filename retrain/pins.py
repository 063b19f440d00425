"""Version pins in the ensemble's config: which version of each composing model a step calls.

In steady state every step asks for ``model_version: -1`` (the newest ready version), so publishing
a head is one ``load_model``. Publishing a mask net together with a head pins both steps for the
few seconds of the switch (retrain/pair_publish.py), then goes back to -1. A config left pinned
(a publish killed halfway) is reported, never silently overwritten.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fer_triton.export.repository import RepositoryLayout, parse_config, replace_config


class PinError(RuntimeError):
    """The ensemble config cannot be read, or pins versions when it should not."""


def ensemble_config_path(repository: Path, layout: RepositoryLayout, ensemble: str | None = None) -> Path:
    return Path(repository) / (ensemble or layout.ensemble) / "config.pbtxt"


def ensembles(repository: Path, layout: RepositoryLayout) -> list[str]:
    """The ensembles that call the mask net and the head: ``cafe``, and ``cafe_sites`` where sites exist."""
    names = [layout.ensemble, layout.sites_ensemble]
    return [n for i, n in enumerate(names) if i == 0 or ensemble_config_path(repository, layout, n).is_file()]


def _read(path: Path) -> mc.ModelConfig:
    try:
        return parse_config(path)
    except (OSError, text_format.ParseError) as exc:
        raise PinError(f"cannot read the ensemble config {path}: {exc}") from exc


def read_pins(repository: Path, layout: RepositoryLayout) -> dict[str, int]:
    """{model name: pinned version} for the steps that do not ask for the newest version (-1), in any ensemble."""
    pins: dict[str, int] = {}
    for ensemble in ensembles(repository, layout):
        cfg = _read(ensemble_config_path(repository, layout, ensemble))
        pins.update({step.model_name: step.model_version for step in cfg.ensemble_scheduling.step
                     if step.model_version != -1})
    return pins


def write_pins(repository: Path, layout: RepositoryLayout, pins: dict[str, int]) -> None:
    """Pin the named steps to the given versions and every other step to -1 (``{}`` unpins all), in every
    ensemble (:func:`ensembles`), so that base and site clients switch together.

    Each file is replaced atomically: Triton (re)reads it only on ``load_model``.
    """
    configs = {name: _read(ensemble_config_path(repository, layout, name)) for name in ensembles(repository, layout)}
    steps = {step.model_name for cfg in configs.values() for step in cfg.ensemble_scheduling.step}
    unknown = sorted(set(pins) - steps)
    if unknown:
        raise PinError(f"the ensemble {layout.ensemble} has no step calling {', '.join(unknown)}")
    for name, cfg in configs.items():
        for step in cfg.ensemble_scheduling.step:
            step.model_version = pins.get(step.model_name, -1)
        replace_config(ensemble_config_path(repository, layout, name), cfg)


def check_unpinned(repository: Path, layout: RepositoryLayout) -> None:
    """Raise PinError when a step is pinned: a new version published now would not be served."""
    pins = read_pins(repository, layout)
    if pins:
        where = ensemble_config_path(repository, layout)
        raise PinError(
            f"{where} pins " + ", ".join(f"{name} to version {v}" for name, v in sorted(pins.items()))
            + " (a mask-net publish or rollback was interrupted?): check which versions should be served, "
            f"set those steps' model_version back to -1 and load '{layout.ensemble}' again")
