"""`fer-triton infer`: classify image files with one gRPC batch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import numpy as np

from fer_triton.options import max_pixels_option, tritonclient_verbose, verbose_option
from fer_triton.tables import probability_table


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-u", "--url", default="127.0.0.1:8001", show_default=True, help="Triton gRPC address.")
@click.option("-m", "--model", default="cafe", show_default=True, help="Ensemble name.")
@click.option("-x", "--model-version", default="", help="Model version to ask for (default: the one Triton serves).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON Lines instead of a table.")
@click.option("--site", metavar="NAME", help="Ask for a site's own head (the <model>_sites ensemble; the base head "
                                             "for a site without one).")
@click.option("--detect", type=click.Choice(["crops", "server"]), default="crops", show_default=True,
              help="crops: every file is one face crop; server: files are whole photos, sent as they are to the "
                   "<model>_frames model, which finds, crops and classifies every face (one record per face).")
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the JSON Lines records to this file.")
@verbose_option
@max_pixels_option
def infer(images, url, model, model_version, as_json, site, detect, output, verbose):
    """Classify face images (files or folders; any size, RGB/grayscale/RGBA) in one batch.

    With --detect server, IMAGES are whole photos: each face found gets a record with its box and
    detector score, a photo without face a "no_face" record, a photo that failed an error record.
    Exit code: 0 all good, 2 some photo failed, 1 every photo failed.
    """
    from fer_triton.client.grpc_client import FerClient, FerInputError, FerServerError
    from fer_triton.images import ImageReadError, list_images, read_face

    if detect == "server":
        from fer_triton.client.frames_cli import infer_server

        infer_server(list(images), url, model, model_version, as_json, site, output, verbose)
        return

    with FerClient(url, model, model_version=model_version, verbose=tritonclient_verbose(verbose),
                   site=site) as client:
        try:
            info = client.info()
        except FerServerError as exc:
            raise click.ClickException(str(exc)) from exc
        faces, names, failed = [], [], []
        for path in list_images(list(images)):
            try:
                faces.append(read_face(path, info.wire_size))
                names.append(str(path))
            except ImageReadError as exc:
                failed.append((str(path), str(exc)))
        results = []
        if faces:
            try:
                out = client.infer_all(np.stack(faces))
            except (FerInputError, FerServerError) as exc:
                raise click.ClickException(str(exc)) from exc
            results = list(zip(names, out.labels, out.probabilities))
    if info.random_weights and not as_json:
        click.echo("WARNING: the served model uses RANDOM CLIP weights: labels are meaningless.", err=True)
    if output is not None:
        with open(output, "w") as handle:
            for name, label, probs in results:
                handle.write(json.dumps({"image": name, "label": label,
                                         "probabilities": dict(zip(info.classes, map(float, probs)))}
                                        | ({"site": site} if site else {})) + "\n")
            for name, error in failed:
                handle.write(json.dumps({"image": name, "error": error}) + "\n")
    if as_json:
        for name, label, probs in results:
            click.echo(json.dumps({"image": name, "label": label,
                                   "probabilities": dict(zip(info.classes, map(float, probs)))}
                                  | ({"site": site} if site else {})))
        for name, error in failed:
            click.echo(json.dumps({"image": name, "error": error}))
    else:
        click.echo(probability_table(results, info.classes))
        for name, error in failed:
            click.echo(f"ERROR {error}", err=True)
    if failed:
        sys.exit(1 if not results else 2)  # 2: partial success

