"""`fer-triton train`, `fer-triton evaluate`, `fer-triton explain` (argument parsing only)."""

from __future__ import annotations

import warnings
from pathlib import Path

import click

from fer_triton.options import max_pixels_option, tritonclient_verbose, verbose_option

DATA_HELP = ("[NAME=][KIND:]PATH, KIND one of rafdb, affectnet, folder (recognised from the layout when "
             "left out); e.g. RAF-DB=rafdb:/data/raf-basic, SFEW=folder:/data/SFEW/Val")


def _library_errors():
    """Library exceptions that become click errors (the message names what was wrong)."""
    from fer_triton.checkpoint import CheckpointError
    from fer_triton.clip_loader import CLIPWeightsUnavailable
    from fer_triton.images import ImageReadError
    from fer_triton.train.datasets import DatasetFormatError
    from fer_triton.train.trainer import TrainingError

    return (CheckpointError, CLIPWeightsUnavailable, ImageReadError, DatasetFormatError, TrainingError,
            ValueError, FileNotFoundError)


def _open(spec_text: str, split: str, class_map: str, ignore_class: tuple[str, ...]):
    from fer_triton.train.datasets import open_dataset, parse_spec

    return open_dataset(parse_spec(spec_text), split, class_map, ignore_class)


def _check_class_map(ctx, param, value: str) -> str:
    """--class-map: refuse an unknown keyword or a bad list of names here, before any dataset is read."""
    from fer_triton.labels import parse_class_map

    try:
        parse_class_map(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None
    return value


class_map_option = click.option(
    "--class-map", default="names", show_default=True, metavar="MAP", callback=_check_class_map,
    help="Folder datasets: how class folders become classes. 'names': folders named after expressions; "
         "'alphabetical': 7 expression folders sorted A..Z (Angry, Disgust, Fear, Happy, Neutral, Sad, Surprise; "
         "SFEW, MMA); numbered folders: 'fer2013' (0 Angry, 1 Disgust, 2 Fear, 3 Happy, 4 Sad, 5 Surprise, "
         "6 Neutral), 'rafdb' (1 Surprise, 2 Fear, 3 Disgust, 4 Happy, 5 Sad, 6 Angry, 7 Neutral), 'affectnet' "
         "(0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger; 7 Contempt not used), or the "
         "7 expressions of folders 0..6 in numeric order, comma-separated (e.g. "
         "angry,disgust,fear,happy,sad,surprise,neutral). Numbered folders need one of the numberings.")
ignore_class_option = click.option("--ignore-class", multiple=True, metavar="FOLDER",
                                   help="Folder datasets: a class folder to leave out (e.g. Contempt); repeatable.")


@click.command()
@click.option("-d", "--data", "data_spec", required=True, help=f"Training set: {DATA_HELP}.")
@click.option("--val", "val_spec", default="auto", show_default=True,
              help="Validation set (picks best.pt): a data spec, 'auto' (RAF-DB's test split, AffectNet's "
                   "validation set; none for folders) or 'none'.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("runs/cafe"), show_default=True,
              help="Run folder: last.pt, best.pt, final.pt, state.pt, history.json.")
@click.option("--epochs", default=60, show_default=True)
@click.option("-b", "--batch-size", default=32, show_default=True)
@click.option("--lr", default=2e-4, show_default=True, help="Adam learning rate.")
@click.option("--weight-decay", default=1e-4, show_default=True)
@click.option("--lr-gamma", default=0.9, show_default=True, help="ExponentialLR factor per epoch.")
@click.option("--seed", default=3407, show_default=True)
@click.option("--div-weight", default=5.0, show_default=True, help="Weight of L_div.")
@click.option("--sep-weight", default=1.5, show_default=True, help="Weight of L_sep.")
@click.option("--drop-per-block", default=10, show_default=True, help="Channels dropped per block for L_sep.")
@click.option("--augment", type=click.Choice(["paper", "none"]), default="paper", show_default=True)
@click.option("--cache-clip-features", is_flag=True,
              help="With --augment paper: reuse CLIP features of the clean (or flipped) image instead of running "
                   "CLIP on each augmented image (faster; an approximation of the paper's recipe).")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Keep cached CLIP features on disk here (reused by later runs and by evaluate).")
@click.option("--clip-model", default="ViT-B-32-quickgelu", show_default=True, help="open_clip model name.")
@click.option("--clip-weights", default="openai", show_default=True,
              help="openai, a local open_clip checkpoint file, or random (tests only: meaningless model).")
@click.option("--embed-clip", is_flag=True, help="Store the CLIP weights inside the checkpoints.")
@click.option("--mask-init", default="random", show_default=True,
              help="Mask-network start: random, imagenet, or msceleb:PATH (resnet18_msceleb.pth, the paper's).")
@class_map_option
@ignore_class_option
@click.option("--workers", default=2, show_default=True, help="DataLoader worker processes.")
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda, cuda:1...")
@click.option("--max-steps", type=int, help="Stop every epoch after this many steps (smoke runs).")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last finished epoch.")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@verbose_option
@max_pixels_option
def train(data_spec, val_spec, output, epochs, batch_size, lr, weight_decay, lr_gamma, seed, div_weight,
          sep_weight, drop_per_block, augment, cache_clip_features, cache_dir, clip_model, clip_weights,
          embed_clip, mask_init, class_map, ignore_class, workers, device, max_steps, resume, no_progress,
          verbose):
    """Train CAFE (frozen CLIP + ResNet-18 channel mask + linear head) with the paper's recipe."""
    from fer_triton.train.trainer import TrainConfig
    from fer_triton.train.trainer import train as run_training

    try:
        train_set = _open(data_spec, "train", class_map, ignore_class)
        if val_spec == "auto":
            val_set = _open(data_spec, "test", class_map, ignore_class) if train_set.kind != "folder" else None
        else:
            val_set = None if val_spec == "none" else _open(val_spec, "test", class_map, ignore_class)
        config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                             lr_gamma=lr_gamma, seed=seed, div_weight=div_weight, sep_weight=sep_weight,
                             drop_per_block=drop_per_block, augment=augment, cache_clip_features=cache_clip_features,
                             clip_model=clip_model, clip_weights=None if clip_weights == "random" else clip_weights,
                             embed_clip=embed_clip, mask_init=mask_init, workers=workers, device=device,
                             max_steps_per_epoch=max_steps)
        config.validate()
    except _library_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"train: {train_set.describe()}")
    counts = train_set.class_counts()
    click.echo("       " + ", ".join(f"{name} {n}" for name, n in counts.items()))
    if missing := [name for name, n in counts.items() if n == 0]:
        click.secho(f"WARNING: no training image of {', '.join(missing)}: the model cannot learn "
                    f"{'that class' if len(missing) == 1 else 'those classes'}.", fg="yellow", err=True)
    click.echo(f"val:   {val_set.describe() if val_set else 'none (best.pt is not written)'}")
    click.echo(f"CLIP {clip_model} ({clip_weights}); features {config.clip_features_path}; "
               f"device {config.torch_device()}")
    if config.clip_weights is None:
        click.secho("WARNING: RANDOM CLIP weights: the trained model is meaningless (tests and timing only).",
                    fg="yellow", err=True)

    def report(r):
        val = "" if r.val_accuracy is None else f" val acc {100 * r.val_accuracy:.2f}%"
        click.echo(f"epoch {r.epoch}/{epochs} lr {r.lr:.3g} loss {r.loss:.4f} (ce {r.ce:.4f} div {r.div:.4f} "
                   f"sep {r.sep:.4f}) train acc {100 * r.train_accuracy:.2f}%{val}"
                   f"{' [best]' if r.best else ''} {r.seconds:.0f}s")

    try:
        result = run_training(config, train_set, output, val_set, resume=resume, cache_dir=cache_dir,
                              progress=not no_progress, on_epoch=report)
    except _library_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {result.final}" + (f" and {result.best}" if result.best else ""))


@click.command()
@click.option("-c", "--checkpoint", "checkpoints", multiple=True, type=click.Path(path_type=Path),
              help="CAFE checkpoint to evaluate in PyTorch (one table row each); repeatable.")
@click.option("-d", "--data", "data_specs", multiple=True, required=True,
              help=f"Test set (one table column each): {DATA_HELP}. RAF-DB uses its test split, AffectNet its "
                   "validation set; repeatable.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("evaluation"), show_default=True,
              help="Folder for table.md, table.csv, per_class_recall.csv, confusion/*.csv, report.md.")
@click.option("-u", "--url", help="Also evaluate the model served by Triton at this gRPC address.")
@click.option("-m", "--model", default="cafe", show_default=True, help="Served ensemble name (with -u).")
@click.option("--row-name", "row_names", multiple=True,
              help="Table row names, in order: checkpoints, then the served model (default: training source).")
@click.option("-b", "--batch-size", default=64, show_default=True)
@click.option("--workers", default=2, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto (CUDA when available), cpu, cuda...")
@click.option("--cache-dir", type=click.Path(path_type=Path),
              help="Keep CLIP features of the test images here (reused when the same CLIP is evaluated again).")
@class_map_option
@ignore_class_option
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@verbose_option
@max_pixels_option
def evaluate(checkpoints, data_specs, output, url, model, row_names, batch_size, workers, device, cache_dir,
             class_map, ignore_class, no_progress, verbose):
    """Accuracy per test set and the mean, per-class recall, confusion matrices (the paper's Table 1 layout)."""
    from fer_triton.checkpoint import CAFECheckpoint
    from fer_triton.client.grpc_client import FerClient, FerInputError, FerServerError
    from fer_triton.train.evaluate import predict_pytorch, predict_served, result_of, table1_markdown, write_report
    from fer_triton.train.feature_cache import cached_clip_features, encoder_fingerprint
    from fer_triton.train.trainer import TrainConfig

    if not checkpoints and not url:
        raise click.UsageError("give at least one --checkpoint, or -u to evaluate a served model")
    if len(row_names) > len(checkpoints) + bool(url):
        raise click.UsageError(f"{len(row_names)} --row-name given for {len(checkpoints) + bool(url)} table rows")
    if len(set(row_names)) != len(row_names):
        raise click.UsageError("each --row-name must be different: rows with one name would overwrite each other")
    progress = not no_progress
    table, notes = {}, []
    features = {}  # (CLIP fingerprint, test set) -> cache: checkpoints sharing a CLIP (best, final) share it
    names = list(row_names)
    try:
        torch_device = TrainConfig(device=device).torch_device()
        test_sets = [_open(spec, "test", class_map, ignore_class) for spec in data_specs]
        for ts in test_sets:
            click.echo(f"test set {ts.describe()}")
        if len({ts.name for ts in test_sets}) != len(test_sets):
            raise ValueError("two test sets have the same name: name them with NAME=... in --data")
        for path in checkpoints:
            ckpt = CAFECheckpoint.load(path)
            row = names.pop(0) if names else _row_name(ckpt, path, table)
            click.echo(f"{row}: {path} ({ckpt.describe_weights()})")
            if ckpt.clip_is_random or not ckpt.meta.get("trained", False):
                notes.append(f"{row}: {'RANDOM CLIP weights' if ckpt.clip_is_random else 'untrained'}; "
                             "its numbers say nothing about real accuracy.")
            net = ckpt.build_model().to(torch_device)
            table[row] = {}
            clip_key = encoder_fingerprint(net.clip)
            for ts in test_sets:
                if (clip_key, ts.name) not in features:
                    features[clip_key, ts.name] = cached_clip_features(net.clip, ts, cache_dir, batch_size=batch_size,
                                                                       workers=workers, progress=progress)
                cache = features[clip_key, ts.name]
                probs = predict_pytorch(net, ts, clip_cache=cache, batch_size=batch_size, workers=workers,
                                        progress=progress)
                table[row][ts.name] = result_of(ts, probs)
                click.echo(f"  {ts.name}: {100 * table[row][ts.name].accuracy:.2f}%")
        if url:
            row = names.pop(0) if names else f"served {model} @ {url}"
            with FerClient(url, model, verbose=tritonclient_verbose(verbose)) as client:
                if client.info().random_weights:
                    notes.append(f"{row}: the served model uses RANDOM CLIP weights; its numbers say nothing "
                                 "about real accuracy.")
                table[row] = {}
                for ts in test_sets:
                    table[row][ts.name] = result_of(ts, predict_served(client, ts, progress=progress))
                    click.echo(f"  {row} {ts.name}: {100 * table[row][ts.name].accuracy:.2f}%")
    except (*_library_errors(), FerInputError, FerServerError) as exc:
        raise click.ClickException(str(exc)) from exc
    paths = write_report(table, output, note="\n".join(notes))
    click.echo(table1_markdown(table))
    for note in notes:
        click.secho(f"NOTE: {note}", fg="yellow", err=True)
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} and {output / 'confusion'}/")


def _row_name(ckpt, path: Path, table: dict) -> str:
    name = (ckpt.meta.get("dataset") or {}).get("name") or path.stem
    return name if name not in table else f"{name} ({path.stem})"


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("-c", "--checkpoint", required=True, type=click.Path(path_type=Path), help="CAFE checkpoint.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=Path("explain"), show_default=True,
              help="Folder for <image>.png, channels.png and top_channels.csv.")
@click.option("--class", "target", help="Explain this class instead of the predicted one (e.g. Happy).")
@click.option("-d", "--data", "data_spec",
              help=f"Labelled images for the per-class channel statistics (test split): {DATA_HELP}. "
                   "Without it, the given images are grouped by predicted class.")
@click.option("--max-images", default=2000, show_default=True, help="At most this many images from --data.")
@click.option("--top-k", default=10, show_default=True, help="Channels listed per class.")
@class_map_option
@ignore_class_option
@verbose_option
@max_pixels_option
def explain(images, checkpoint, output, target, data_spec, max_images, top_k, class_map, ignore_class,
            verbose):
    """PNG pictures of what the model relies on: mask-net Grad-CAM, CLIP gradient x input, kept channels."""
    import numpy as np

    from fer_triton.checkpoint import CAFECheckpoint
    from fer_triton.images import ImageReadError, list_images, read_face, to_wire
    from fer_triton.labels import class_index
    from fer_triton.train import explain as ex

    try:
        target_index = None if target is None else class_index(target)
        ckpt = CAFECheckpoint.load(checkpoint)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = ckpt.build_model()
        size = model.preprocess.image_size
        read = []
        for path in list_images(list(images)):
            try:
                read.append((path, read_face(path, size)))
            except ImageReadError as exc:
                click.echo(f"skipped {exc}", err=True)
        if not read:
            raise ValueError(f"no readable image in {', '.join(map(str, images))}")
        paths, faces = [p for p, _ in read], np.stack([f for _, f in read])
        predicted = []
        used = set()
        for path, face in zip(paths, faces):
            e = ex.explain_face(model, face, target_index)
            predicted.append(int(e.probabilities.argmax()))
            stem = path.stem if path.stem not in used else f"{path.stem}_{len(used)}"
            used.add(stem)
            out = ex.save_explanation(e, output / f"{stem}.png")
            click.echo(f"{path}: {ex.CLASSES[predicted[-1]]} {100 * e.probabilities.max():.1f}% -> {out}")
        if data_spec:
            ds = _open(data_spec, "test", class_map, ignore_class)
            # An evenly spread subset, so sorted folders still give every class.
            picked = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), max_images)).astype(int))
            stats_faces = np.stack([to_wire(ds.load(int(i)), size) for i in picked])
            stats_labels, basis = ds.labels[picked], f"{len(picked)} images of {ds.name} by true label"
        else:
            stats_faces, stats_labels, basis = faces, np.array(predicted), "the given images by predicted class"
        keep = ex.mask_keep_by_class(model, stats_faces, stats_labels)
        channel_png = ex.save_channel_map(keep, output / "channels.png")
        csv_path = ex.write_top_channels(ex.top_channels(keep, top_k), output / "top_channels.csv")
    except _library_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"channel keep rates over {basis} -> {channel_png}, {csv_path}")
    if ckpt.clip_is_random or not ckpt.meta.get("trained", False):
        click.secho("NOTE: this model is untrained or uses RANDOM CLIP weights: the pictures show mechanics only.",
                    fg="yellow", err=True)
