"""Command-line options that several `fer-triton` commands share, defined once so each means one thing."""

from __future__ import annotations

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
