"""Command-line options that several `fer-triton` commands share, defined once so each means one thing.

The flags follow tritonclient's examples and optimum-cli; in every command:

    -u/--url         Triton gRPC address ("host:port")         -m/--model       served ensemble name
    -x/--model-version  served version ("" = Triton's policy)  -r/--repository  Triton model repository
    -c/--checkpoint  CAFE checkpoint file                      -d/--data        labelled images
    -o/--output      what the command writes (a results file, a run folder, the repository `export` writes)
    -w/--workdir     a scratch/work folder
    -b/--batch-size  faces per request or step
    -v/--verbose     -v logs each step, -vv debug logs + tritonclient's printing of every request
"""

from __future__ import annotations

import logging

import click

from fer_triton.images import DEFAULT_MAX_PIXELS, set_max_pixels


def _apply_max_pixels(_ctx, _param, value: int) -> int:
    set_max_pixels(value)
    return value


max_pixels_option = click.option(
    "--max-pixels", type=click.IntRange(min=1), default=DEFAULT_MAX_PIXELS, show_default=True, expose_value=False,
    is_eager=True, callback=_apply_max_pixels,
    help="Refuse images of more pixels (width x height) than this, before decoding them (decompression bombs).")
"""``--max-pixels N``: the process-wide limit of :func:`fer_triton.images.set_max_pixels` (a click decorator)."""


def configure_logging(verbose: int) -> None:
    """0: warnings only; 1 (-v): fer-triton's steps (INFO); 2+ (-vv): DEBUG of every library."""
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger().setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    logging.getLogger("fer_triton").setLevel(level)


def _apply_verbose(ctx: click.Context, _param, value: int) -> int:
    # `fer-triton -v CMD` and `fer-triton CMD -v` add up.
    total = value + ((ctx.find_root().params.get("verbose") or 0) if ctx.parent is not None else 0)
    if total:
        configure_logging(total)
    return total


verbose_option = click.option(
    "-v", "--verbose", count=True, callback=_apply_verbose,
    help="-v: log each step; -vv: debug logs and tritonclient's request printing.")
"""``-v/--verbose`` (counted): the value passed on is the level, 0, 1 or 2+ (a click decorator)."""


def tritonclient_verbose(verbose: int) -> bool:
    """Whether tritonclient should print every request (it is at -vv)."""
    return verbose >= 2
