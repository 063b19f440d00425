"""`fer-triton status`: the versions every replica serves, and the replicas that differ."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from fer_triton.options import verbose_option


def _on_disk(repository: Path) -> dict[str, list[int]]:
    """{model folder: version folders} of a repository (models without a config.pbtxt left out)."""
    return {m.name: sorted(int(v.name) for v in m.iterdir() if v.is_dir() and v.name.isdigit())
            for m in sorted(repository.iterdir()) if (m / "config.pbtxt").is_file()}


@click.command()
@click.option("-u", "--url", "urls", multiple=True, default=["127.0.0.1:8001"], show_default=True,
              help="Triton gRPC address of a replica; repeat it, or give one DNS name resolving to all of them.")
@click.option("-m", "--model", default="cafe", show_default=True, help="Ensemble name (its models are listed).")
@click.option("-r", "--repository", type=click.Path(path_type=Path, file_okay=False),
              help="The repository the replicas serve: also compare each replica with what is on disk.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@verbose_option
def status(urls, model, repository, as_json, verbose):
    """Show, per replica, the versions each model serves; flag a replica that differs (exit 2)."""
    from fer_triton.admin_key import AdminKeyError, load_admin_key
    from fer_triton.retrain.replicas import Fleet, FleetError, flag_differences

    try:
        with Fleet(urls, model, admin_key=load_admin_key()) as fleet:
            disk = _on_disk(repository) if repository else None
            statuses = fleet.status(sorted(disk) if disk else _models_of(fleet, model))
    except (FleetError, AdminKeyError) as exc:
        raise click.ClickException(str(exc)) from exc
    flag_differences(statuses, disk)
    if as_json:
        click.echo(json.dumps([s.__dict__ for s in statuses], indent=2))
    else:
        for s in statuses:
            verdict = "ok" if not s.differs else "DIFFERS: " + "; ".join(s.differs)
            click.echo(f"{s.url}  {verdict}")
            if not s.reachable:
                click.echo(f"  {s.error}")
            for name, versions in s.versions.items():
                disk_note = f"   (on disk: {disk[name]})" if disk and name in disk else ""
                click.echo(f"  {name:<24} {', '.join(map(str, versions)) or '-'}{disk_note}")
    if any(s.differs for s in statuses):
        sys.exit(2)


def _models_of(fleet, ensemble: str) -> list[str]:
    """The ensemble and the models named after it, from the first replica that answers (none: [])."""
    from tritonclient.utils import InferenceServerException

    for client in fleet.clients:
        try:
            index = client.triton.get_model_repository_index(headers=fleet.headers, as_json=True).get("models", [])
        except InferenceServerException:
            continue
        return sorted({m["name"] for m in index if m["name"] == ensemble or m["name"].startswith(f"{ensemble}_")})
    return []
