"""`fer-triton demo`: the main job end to end on this machine (CPU Triton from pip).

build an (untrained) CAFE model -> export + validate ONNX -> start tritonserver -> send a batch
of face images over gRPC -> print labels, probabilities, served-vs-PyTorch difference, images/s.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import click
import numpy as np

from fer_triton.options import max_pixels_option, verbose_option
from fer_triton.tables import probability_table


def _choose_clip_weights(choice: str) -> str | None:
    from fer_triton import clip_loader

    if choice == "random":
        return None
    if choice == "auto":
        if clip_loader.pretrained_weights_reachable():
            return clip_loader.DEFAULT_CLIP_PRETRAINED
        click.secho("OpenAI CLIP weights cannot be downloaded here (offline): using RANDOM CLIP weights.",
                    fg="yellow", err=True)
        return None
    return choice  # "openai" or a local checkpoint path


@click.command()
@click.option("-w", "--workdir", type=click.Path(path_type=Path), default=Path("build/demo"), show_default=True,
              help="Where the demo checkpoint and face images go.")
@click.option("-r", "--repository", type=click.Path(path_type=Path), default=Path("model_repository"),
              show_default=True, help="Model repository to export into (replaced).")
@click.option("--clip-model", default="ViT-B-32-quickgelu", show_default=True)
@click.option("--clip-weights", default="auto", show_default=True,
              help="auto (OpenAI if downloadable, else random), openai, random, or a local open_clip checkpoint.")
@click.option("-c", "--checkpoint", type=click.Path(path_type=Path),
              help="Use this trained CAFE checkpoint instead of building an untrained one.")
@click.option("--faces", "face_dir", type=click.Path(path_type=Path),
              help="Folder of face crops to send (default: 16 drawn synthetic faces).")
@click.option("-b", "--batch-size", default=16, show_default=True)
@click.option("--repeats", default=5, show_default=True, help="Timed batches for images/s.")
@verbose_option
@max_pixels_option
def demo(workdir, repository, clip_model, clip_weights, checkpoint, face_dir, batch_size, repeats, verbose):
    """Run the main job end to end: build, export, serve on CPU Triton, infer over gRPC."""
    from fer_triton.checkpoint import CAFECheckpoint, build_untrained
    from fer_triton.client.grpc_client import FerClient
    from fer_triton.export.exporter import export_checkpoint
    from fer_triton.images import read_face
    from fer_triton.server import TritonServer, TritonServerError, free_port
    from fer_triton.synthetic import draw_faces

    import torch

    # Read given faces before the long build: a folder without one readable face fails at once.
    given = _read_face_dir(face_dir, batch_size) if face_dir else None
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if checkpoint is None:
        pretrained = _choose_clip_weights(clip_weights)
        click.echo(f"[1/5] building CAFE: CLIP {clip_model} ({pretrained or 'RANDOM init'}), "
                   "ResNet-18 mask net (random init), Linear(512, 7) head (untrained)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model, init = build_untrained(clip_model, pretrained)
        checkpoint = CAFECheckpoint.from_model(model, clip_model=clip_model, clip_pretrained=pretrained,
                                               mask_net_init=init, meta={"trained": False, "source": "fer-triton demo"}
                                               ).save(workdir / "cafe_untrained.pt")
    else:
        click.echo(f"[1/5] using checkpoint {checkpoint}")
    ckpt = CAFECheckpoint.load(checkpoint)
    trained = ckpt.meta.get("trained", True)
    click.echo(f"      weights: {ckpt.describe_weights()}; mask net + head {'trained' if trained else 'UNTRAINED'}")

    click.echo(f"[2/5] exporting to {repository} (each stage validated against PyTorch)")
    result = export_checkpoint(checkpoint, repository, overwrite=True,
                               on_report=lambda r: click.echo(f"      {r.name:<20} max |diff| {r.worst:.2e}"))
    click.echo(f"      whole ensemble     max |diff| {result.ensemble_max_abs_diff:.2e}")

    if given is not None:
        faces, names = given
    else:
        faces_dir = workdir / "faces"
        faces_dir.mkdir(exist_ok=True)
        drawn, _ = draw_faces(batch_size, 224, seed=0)
        from PIL import Image

        names = []
        for i, face in enumerate(drawn):
            path = faces_dir / f"synthetic_{i:02d}.png"
            Image.fromarray(face).save(path)
            names.append(str(path))
        faces = np.stack([read_face(p, 224) for p in names])  # through the same reader users get

    click.echo("[3/5] starting tritonserver (CPU, python backend + onnxruntime)")
    server = TritonServer(repository, grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    try:
        server.start()
    except TritonServerError as exc:
        raise click.ClickException(str(exc)) from exc
    try:
        click.echo(f"      ready: gRPC {server.grpc_url}")
        with FerClient(server.grpc_url) as client:
            click.echo(f"[4/5] sending {len(faces)} face images in one gRPC batch")
            out = client.infer(faces)
            click.echo(probability_table(list(zip(names, out.labels, out.probabilities)), out.classes))
            model = ckpt.build_model()
            with torch.no_grad():
                expected = model(model.preprocess(torch.from_numpy(faces))).probabilities.numpy()
            diff = float(np.abs(expected - out.probabilities).max())
            click.echo(f"      served vs PyTorch probabilities: max |diff| = {diff:.2e}")
            click.echo(f"[5/5] timing {repeats} batches of {len(faces)}")
            client.infer(faces)  # warm-up
            start = time.perf_counter()
            for _ in range(repeats):
                client.infer(faces)
            elapsed = time.perf_counter() - start
            click.echo(f"      {repeats * len(faces) / elapsed:.1f} images/s through Triton gRPC "
                       f"(batch {len(faces)}, this machine's CPU)")
            _astronaut_through_frames(client, random_weights=ckpt.clip_is_random or not trained)
    finally:
        server.stop()
    click.echo(f"server stopped; demo took {time.perf_counter() - t0:.0f}s")
    if ckpt.clip_is_random or not trained:
        click.secho("NOTE: this model is untrained"
                    + (" and uses RANDOM CLIP weights" if ckpt.clip_is_random else "")
                    + ": the labels above are meaningless. Train with your data, then pass --checkpoint.",
                    fg="yellow")


def _read_face_dir(face_dir: Path, count: int) -> tuple[np.ndarray, list[str]]:
    """The first ``count`` readable images of ``face_dir`` as UINT8 [N, 224, 224, 3] and their names.

    Each unreadable file is reported by name on stderr and skipped; raises click.ClickException when
    the folder does not exist or holds no readable image.
    """
    from fer_triton.images import ImageReadError, list_images, read_face

    if not face_dir.is_dir():
        raise click.ClickException(f"--faces {face_dir}: not a folder")
    faces, names = [], []
    for path in list_images([face_dir]):
        if len(faces) == count:
            break
        try:
            faces.append(read_face(path, 224))
            names.append(str(path))
        except ImageReadError as exc:
            click.echo(f"skipped {exc}", err=True)
    if not faces:
        raise click.ClickException(f"--faces {face_dir}: no readable image in the folder")
    return np.stack(faces), names


def _astronaut_through_frames(client, random_weights: bool) -> None:
    """Send scikit-image's public-domain astronaut photo (``skimage.data.astronaut()``, 512x512 RGB)
    whole, as a PNG, to ``<model>_frames``: the server finds the face, crops and classifies it; print
    its box, detector score and probabilities. Skipped, saying why, without scikit-image or a frames model."""
    import io

    from PIL import Image

    from fer_triton.client.grpc_client import FerInputError, FerServerError

    click.echo("[+] server-side detection: a real photograph through the frames model (decode, detect, crop, "
               "classify on the server)")
    try:
        from skimage import data
    except ImportError:
        click.echo("      skipped: scikit-image is not installed (pip install scikit-image, or "
                   "pip install 'fer-triton[bench]'); it ships the public-domain astronaut photo")
        return
    photo = data.astronaut()
    buffer = io.BytesIO()
    Image.fromarray(photo).save(buffer, format="PNG")
    frames = client.frames()
    try:
        result = frames.infer([buffer.getvalue()])
    except (FerInputError, FerServerError) as exc:
        click.echo(f"      skipped: {exc}")
        return
    report = result.frames[0]
    click.echo(f"      skimage.data.astronaut() (public domain, {photo.shape[1]}x{photo.shape[0]}) -> "
               f"{frames.model}: {report.found} face(s) found" + (f", ERROR {report.error}" if report.error else ""))
    for face in result.faces:
        click.echo(f"      face box x,y,w,h {face.box.as_list()}  crop {face.crop_box.as_list()}  "
                   f"detector score {face.score:.3f}")
        click.echo("      " + "  ".join(f"{c} {p:.3f}" for c, p in zip(result.classes, face.probabilities))
                   + f"  -> {face.label}")
    if result.faces and random_weights:
        click.echo("      (these probabilities come from RANDOM / untrained weights: the box is real, the label is not)")
