"""`fer-triton retrain`, `rollback`, `drift` and `sites`: parse arguments, call fer_triton.retrain.

With ``--site NAME`` the first three act on that site's own head (retrain/sites.py); ``fer-triton sites``
lists and creates sites."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from fer_triton.options import max_pixels_option, verbose_option

_url = click.option("-u", "--url", "urls", multiple=True, default=["127.0.0.1:8001"], show_default=True,
                    help="Triton gRPC address of every replica serving the repository: repeat it, or give one DNS "
                         "name that resolves to all of them (a headless Service). Changes are loaded and verified "
                         "on each, all or nothing.")
_lock_wait = click.option("--lock-wait", default=0.0, show_default=True, metavar="SECONDS",
                          help="Wait this long for another retrain/rollback of the repository to finish (0: refuse).")
_model = click.option("-m", "--model", default="cafe", show_default=True,
                      help="Ensemble name (also the repository's model prefix).")
_repository = click.option("-r", "--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
                           show_default=True, help="The model repository the server runs (versions are written here).")
_site = click.option("--site", metavar="NAME",
                     help="A site's own head instead of the base model's (create sites with `fer-triton sites add`).")


def _errors():
    from fer_triton.client import FerServerError
    from fer_triton.clip_loader import CLIPWeightsUnavailable
    from fer_triton.retrain.drift import DriftError
    from fer_triton.retrain.lock import RepositoryLockedError
    from fer_triton.retrain.pins import PinError
    from fer_triton.retrain.replicas import FleetError
    from fer_triton.retrain.publish import PublishError
    from fer_triton.retrain.mask_finetune import MaskFineTuneError
    from fer_triton.retrain.site_data import SiteDataError
    from fer_triton.retrain.sites import SiteError

    return (SiteDataError, SiteError, MaskFineTuneError, PublishError, PinError, DriftError, FerServerError,
            FleetError, RepositoryLockedError, CLIPWeightsUnavailable, ValueError, OSError)


def _admin_key() -> str | None:
    """The model-control key from FER_TRITON_ADMIN_KEY / FER_TRITON_ADMIN_KEY_FILE (never a flag)."""
    from fer_triton.admin_key import AdminKeyError, load_admin_key

    try:
        return load_admin_key()
    except AdminKeyError as exc:
        raise click.ClickException(str(exc)) from exc


def _locked(repository: Path, command: str, wait_s: float):
    """The repository lock (RepositoryLockedError names its holder); none for a folder that does not exist,
    which the command itself then reports."""
    from contextlib import nullcontext

    from fer_triton.retrain.lock import RepositoryLock

    return RepositoryLock(repository, command, wait_s=wait_s) if Path(repository).is_dir() else nullcontext()


def _check_site(site: str | None) -> None:
    """A bad site name is a usage error, before anything runs."""
    if site is not None:
        from fer_triton.retrain.sites import SiteError, check_site_name

        try:
            check_site_name(site)
        except SiteError as exc:
            raise click.BadParameter(str(exc), param_hint="--site") from None


@click.command()
@click.option("-d", "--data", required=True, type=click.Path(path_type=Path),
              help="Site images: a folder of class folders (Happy/, Sad/ ...) or a CSV with columns path,label.")
@_url
@_model
@_repository
@click.option("--holdout", default=0.25, show_default=True, help="Share of each class held out to compare the heads.")
@click.option("--l2", default=1e-2, show_default=True, help="L2 pull towards the starting head.")
@click.option("--init", "init", type=click.Choice(["zeros", "serving", "zero-shot"]), default="zeros",
              show_default=True, help="Starting head: zeros, the serving head, or CLIP text prompts (zero-shot).")
@click.option("--clip-weights", help="CLIP weights for --init zero-shot (default: those the server uses).")
@click.option("--force", is_flag=True, help="Publish even if the new head is worse on the held-out images.")
@click.option("--no-publish", is_flag=True, help="Fit, compare and report only; change nothing.")
@click.option("--report", "report_dir", type=click.Path(path_type=Path),
              help="Report folder (default: retrain-reports/<date-time>).")
@click.option("-b", "--batch-size", default=32, show_default=True, help="Faces per gRPC request.")
@click.option("--seed", default=0, show_default=True, help="Seed of the held-out split.")
@click.option("--fine-tune-mask", is_flag=True,
              help="Also fine-tune the mask network (torch + the trained checkpoint) and publish it with the head.")
@click.option("-c", "--checkpoint", type=click.Path(path_type=Path),
              help="With --fine-tune-mask: the checkpoint the served mask net came from (default: the recorded one).")
@click.option("--mask-epochs", default=3, show_default=True, help="With --fine-tune-mask: epochs over the site images.")
@click.option("--mask-lr", default=1e-4, show_default=True, help="With --fine-tune-mask: Adam learning rate.")
@click.option("--device", default="auto", show_default=True,
              help="With --fine-tune-mask: torch device (auto = CUDA when available, cpu, cuda:1...).")
@click.option("--save-checkpoint", type=click.Path(path_type=Path),
              help="With --fine-tune-mask: where to save the fine-tuned checkpoint (default: <report>/fine_tuned.pt).")
@_site
@_lock_wait
@verbose_option
@max_pixels_option
def retrain(data, urls, model, repository, holdout, l2, init, clip_weights, force, no_publish, report_dir,
            batch_size, seed, fine_tune_mask, checkpoint, mask_epochs, mask_lr, device, save_checkpoint, site,
            lock_wait, verbose):
    """Fit a new head on a site's labelled images and publish it to the running server (no restart).

    With --site NAME the head is that site's own: the base model and the other sites are unchanged."""
    from fer_triton.retrain.mask_finetune import MaskFineTuneOptions
    from fer_triton.retrain.pipeline import MASK_WITH_SITE, RetrainOptions, retrain as run

    _check_site(site)
    if site is not None and fine_tune_mask:
        raise click.UsageError(MASK_WITH_SITE)
    reports = Path("retrain-reports") / site if site else Path("retrain-reports")
    report_dir = report_dir or reports / time.strftime("%Y%m%d-%H%M%S")
    mask_only = {"--checkpoint": checkpoint, "--save-checkpoint": save_checkpoint}
    if not fine_tune_mask and any(mask_only.values()):
        raise click.UsageError(f"{', '.join(k for k, v in mask_only.items() if v)} only apply with --fine-tune-mask")
    mask = MaskFineTuneOptions(checkpoint=checkpoint, epochs=mask_epochs, lr=mask_lr, device=device,
                               save_checkpoint=save_checkpoint or report_dir / "fine_tuned.pt") \
        if fine_tune_mask else None
    options = RetrainOptions(holdout=holdout, l2=l2, init=init, zero_shot_weights=clip_weights, force=force,
                             publish=not no_publish, batch_size=batch_size, seed=seed,
                             progress=sys.stderr.isatty(), report_dir=report_dir, mask=mask)
    whose = f"site '{site}' of '{model}'" if site else f"'{model}'"
    click.echo(f"retraining the head of {whose} at {', '.join(urls)} on {data}")
    admin_key = _admin_key()
    try:
        if no_publish:
            result = run(data, list(urls), repository, model=model, options=options, site=site, admin_key=admin_key)
        else:
            with _locked(repository, f"retrain{f' --site {site}' if site else ''} --data {data}", lock_wait):
                result = run(data, list(urls), repository, model=model, options=options, site=site,
                             admin_key=admin_key)
    except _errors() as exc:
        raise click.ClickException(f"{exc} (the serving head is unchanged)") from exc
    for step, seconds in result.timings.items():
        click.echo(f"  {step:<18} {seconds:7.2f} s")
    click.echo(f"report: {result.report}")
    if result.refused:
        raise click.ClickException(result.decision)
    click.echo(result.decision)
    if result.published_version is not None:
        click.echo(f"loaded and verified on every replica: {', '.join(urls)}")


@click.command()
@_url
@_model
@_repository
@_site
@_lock_wait
@verbose_option
def rollback(urls, model, repository, site, lock_wait, verbose):
    """Serve the previous head version again (the newest goes to <repository>.archive/), no restart.

    A head published with a fine-tuned mask net rolls back together with that mask net. With --site
    NAME, the site's previous head is served again (the base head after its first)."""
    from fer_triton.export.repository import RepositoryLayout
    from fer_triton.retrain.pair_publish import rollback as run
    from fer_triton.retrain.publish import StageVersions
    from fer_triton.retrain.replicas import Fleet
    from fer_triton.retrain.sites import Sites

    _check_site(site)
    layout = RepositoryLayout(model)
    admin_key = _admin_key()
    try:
        with _locked(repository, f"rollback{f' --site {site}' if site else ''}", lock_wait), \
                Fleet(urls, model, admin_key=admin_key) as fleet:
            if site is not None:
                click.echo(Sites(repository, layout).rollback(fleet, site).describe(layout))
                click.echo(f"on {fleet.describe()}")
                return
            result = run(fleet, repository, layout)
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"on {fleet.describe()}")
    click.echo(result.describe(StageVersions(repository, layout), StageVersions(repository, layout, "mask_net")))


def _parse_limits(pairs) -> dict[str, float]:
    limits = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            limits[name.strip()] = float(value)
        except ValueError:
            raise click.BadParameter(f"{pair!r}: expected NAME=NUMBER, e.g. feature_shift=0.5",
                                     param_hint="--limit") from None
        if not sep:
            raise click.BadParameter(f"{pair!r}: expected NAME=NUMBER", param_hint="--limit")
    return limits


@click.command()
@click.option("--images", type=click.Path(path_type=Path, exists=True), multiple=True,
              help="Recent face images (files or folders), sent through the server.")
@click.option("--jsonl", type=click.Path(path_type=Path),
              help="Recent results as JSON Lines (infer --json, the stream client); masked_features optional.")
@_url
@_model
@_repository
@click.option("--reference", type=click.Path(path_type=Path),
              help="Reference file (default: drift_reference.npz of the served head version; with --site, the "
                   "site's in the served site-head version).")
@click.option("--write-reference", is_flag=True, help="Save the given sample as the reference instead of checking.")
@click.option("--limit", "limits", multiple=True, metavar="NAME=VALUE",
              help="Override a limit: feature_shift (std units, 0.5), label_js (bits, 0.1), confidence_drop (0.1).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--exit-code", is_flag=True, help="Exit with status 3 when a retrain is advised.")
@_site
@verbose_option
@max_pixels_option
def drift(images, jsonl, urls, model, repository, reference, write_reference, limits, as_json, exit_code, site,
          verbose):
    """Compare a site's recent outputs with the reference and say whether a retrain is advised.

    With --site NAME: the site's outputs (images go through its head; JSON lines of that site only)
    against the reference of the site's served head."""
    from fer_triton.export.repository import RepositoryLayout
    from fer_triton.retrain.drift import REFERENCE_FILE, DriftReference, check_drift, read_jsonl, sample_from_images
    from fer_triton.retrain.publish import StageVersions, check_serving
    from fer_triton.retrain.replicas import Fleet
    from fer_triton.retrain.sites import Sites

    if bool(images) == bool(jsonl):
        raise click.UsageError("give either --images or --jsonl (the recent sample)")
    _check_site(site)
    limits = _parse_limits(limits)
    layout = RepositoryLayout(model)
    heads = StageVersions(repository, layout)
    sites = Sites(repository, layout)
    try:
        if site is not None:
            sites.table().site(site)  # an unknown site or a repository without sites fails before any work
        if images:
            with Fleet(urls, model, admin_key=_admin_key(), site=site) as fleet:
                version = None if reference is not None else \
                    sites.check_serving(fleet) if site else check_serving(fleet, heads)
                sample = sample_from_images(fleet.first, list(images), progress=sys.stderr.isatty())
        else:
            sample = read_jsonl(jsonl, site=site)
            version = None if reference is not None else (sites.versions if site else heads).newest()
        if reference is not None:
            path = reference
        else:  # the served head's own reference: the site head's (in the served site-head version) or the base's
            path = sites.drift_reference(site) if site else heads.version_dir(version) / REFERENCE_FILE
        if write_reference:
            source = ", ".join(map(str, images)) if images else str(jsonl)
            DriftReference.from_sample(sample, source=source, head_version=version,
                                       **({"site": site} if site else {})).save(path)
            click.echo(f"wrote drift reference of {len(sample.probabilities)} faces to {path}")
            return
        report = check_drift(DriftReference.load(path), sample, limits)
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        click.echo(json.dumps(report.as_dict() | {"reference": str(path)}))
    else:
        click.echo(f"reference {path} ({report.reference_size} faces); recent sample {report.sample_size} faces"
                   + (f", {sample.skipped} {'image(s) unreadable' if images else 'JSON line(s) without a result'}"
                      f"{' of this site' if site and not images else ''} skipped"
                      if sample.skipped else ""))
        for s in report.statistics:
            value = "n/a (no masked features)" if s.value is None else f"{s.value:.3f}"
            click.echo(f"  {s.name:<16} {value:<26} limit {s.limit:<5g} {'EXCEEDED' if s.exceeded else 'ok'}")
        click.echo("RETRAIN ADVISED: " + "; ".join(report.reasons) if report.retrain_advised
                   else "no retrain advised")
    if exit_code and report.retrain_advised:
        sys.exit(3)


@click.group()
def sites():
    """Named adaptations of the base model: each site has its own head versions, drift reference, reports
    and rollback history, and shares the backbone with every other site (`sites list`, `sites add`)."""


@sites.command("list")
@_model
@_repository
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per site.")
def list_sites(model, repository, as_json):
    """Each site with its served head version, when and by whom it was published, its held-out accuracy.

    Read from the repository (the newest site-head version, which the server serves)."""
    from fer_triton.export.repository import RepositoryLayout
    from fer_triton.retrain.publish import PublishError, StageVersions
    from fer_triton.retrain.sites import Sites
    from fer_triton.tables import text_table

    layout = RepositoryLayout(model)
    store = Sites(repository, layout)
    try:
        try:
            mask_net = StageVersions(repository, layout, "mask_net").newest()
        except PublishError:  # fused / INT8 layouts: no mask-net model of its own
            mask_net = None
        rows = store.rows(mask_net)
    except _errors() as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for row in rows:
            click.echo(json.dumps(row.as_dict()))
        return
    if not rows:
        click.echo(f"no site yet in {repository} ({layout.site_head} version {store.versions.newest()}): "
                   f"create one with `fer-triton sites add NAME`")
        return
    percent = lambda v: "-" if v is None else f"{v:.1%}"  # noqa: E731
    table = [[r.site, r.site_version or "base", r.model_version, r.published or "-", r.published_by or "-",
              percent(r.accuracy), percent(r.balanced_accuracy), r.held_out or "-", r.note] for r in rows]
    click.echo(text_table(["site", "site version", "model version", "published at", "published by",
                           "held-out acc", "balanced acc", "held out", "note"], table))


@sites.command("add")
@click.argument("name")
@_url
@_model
@_repository
@_lock_wait
@verbose_option
def add_site(name, urls, model, repository, lock_wait, verbose):
    """Create site NAME (served by the base head until `retrain --site NAME` publishes its own).

    A repository exported before sites existed gets the two site models first (loaded, no restart)."""
    from fer_triton.export.repository import RepositoryLayout
    from fer_triton.retrain.replicas import Fleet
    from fer_triton.retrain.sites import Sites

    _check_site(name)
    layout = RepositoryLayout(model)
    store = Sites(repository, layout)
    admin_key = _admin_key()
    try:
        with _locked(repository, f"sites add {name}", lock_wait), Fleet(urls, model, admin_key=admin_key) as fleet:
            added = store.install(fleet)
            if added:
                click.echo(f"added {', '.join(added)} to {repository} and loaded them on {fleet.describe()}")
            version = store.add(fleet, name)
    except _errors() as exc:
        raise click.ClickException(f"{exc} (nothing was changed)") from exc
    click.echo(f"site '{name}' created ({layout.site_head} version {version}); it is served by the base head "
               f"until `fer-triton retrain --site {name}` publishes its own")
