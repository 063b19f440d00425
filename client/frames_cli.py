"""`fer-triton infer --detect server`: whole photos to the served frames model, one record per face."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


def _face_name(record: dict) -> str:
    return f"{record['image']} #{record['face']} box {record['box']} score {record['score']:.3f}"


def infer_server(images: list[Path], url: str, model: str, model_version: str, as_json: bool, site: str | None,
                 output: Path | None, verbose: int) -> None:
    """Send IMAGES (files or folders) whole to ``<model>_frames``; print a table or JSON Lines (and write
    them to ``output``); exit 2 when some photo failed, 1 when every photo failed."""
    from fer_triton.client.frames import classify_photos
    from fer_triton.client.grpc_client import FerClient, FerInputError, FerServerError
    from fer_triton.images import list_images
    from fer_triton.options import tritonclient_verbose
    from fer_triton.tables import probability_table

    if site:
        raise click.ClickException("--site is not supported with --detect server: the frames model serves the "
                                   "base head (use --detect crops with face crops for a site's head)")
    paths = list_images(list(images))
    if not paths:
        raise click.ClickException("no image file found in " + ", ".join(map(str, images)))
    with FerClient(url, model, model_version=model_version, verbose=tritonclient_verbose(verbose)) as client:
        try:
            info = client.info()
            frames = client.frames()
            photos = classify_photos(frames, paths)
        except (FerInputError, FerServerError) as exc:
            raise click.ClickException(str(exc)) from exc
    records = [r for photo in photos for r in photo.records(info.classes)]
    if output is not None:
        with open(output, "w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
    if info.random_weights and not as_json:
        click.echo("WARNING: the served model uses RANDOM CLIP weights: labels are meaningless.", err=True)
    if as_json:
        for record in records:
            click.echo(json.dumps(record))
    else:
        faces = [r for r in records if "face" in r]
        rows = [(_face_name(r), r["label"], [r["probabilities"][c] for c in info.classes]) for r in faces]
        if rows:
            click.echo(probability_table(rows, info.classes))
        for r in records:
            if r.get("event") == "no_face":
                click.echo(f"{r['image']}: no face found")
            elif "error" in r:
                click.echo(f"ERROR {r['error']}", err=True)
            elif r.get("note") and r["face"] == 0:
                click.echo(f"{r['image']}: {r['note']}", err=True)
    failed = [p for p in photos if p.error]
    if failed:
        sys.exit(1 if len(failed) == len(photos) else 2)  # 2: partial success
