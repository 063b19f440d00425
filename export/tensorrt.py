"""Build TensorRT plans (model.plan) for the CLIP encoder and the mask net, on the serving host.

A plan is tied to the GPU model and the TensorRT version that built it, so it is built where it is
served: inside NVIDIA's Triton container (which ships trtexec and TensorRT), never shipped from here.
Uses TensorRT's Python API when ``import tensorrt`` works, else ``trtexec``. One optimisation profile
covers batch min/opt/max (default 1/32/256); FP16 by default.

Every version the config's version policy keeps loaded gets its plan (the mask net keeps two:
Triton fails the whole model when one version does not load), and the builder's TensorRT version must
match the serving container's (:data:`SERVING_TENSORRT`): a plan from another TensorRT does not load.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from fer_triton.export.gpu import (PLAN_PRECISION_PARAMETER, PRECISIONS, TRT_STAGES, config_name, plan_filename,
                                   version_dirs)
from fer_triton.export.repository import RepositoryLayout, _signatures, config_text, parse_config, read_ensemble_config

log = logging.getLogger(__name__)

BUILDERS = ("auto", "python", "trtexec")
# Where NVIDIA's containers put trtexec when it is not on PATH.
TRTEXEC_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")
CONTAINER_HINT = ("Build plans on the GPU host that serves them, with the TensorRT version of the Triton container "
                  "that loads them: e.g. in nvcr.io/nvidia/tensorrt:24.10-py3 for nvcr.io/nvidia/tritonserver:24.10-py3 "
                  "(docs/gpu.md shows the trtexec commands), or on a GPU host with the matching `pip install tensorrt`")


# The Triton container docs/gpu.md names, and the TensorRT it ships (NVIDIA's support matrix:
# 24.10 -> TensorRT 10.5). A plan loads only in the TensorRT major.minor that built it.
SERVING_CONTAINER = "nvcr.io/nvidia/tritonserver:24.10-py3"
SERVING_TENSORRT = "10.5"


class TensorRTVersionError(RuntimeError):
    """The builder's TensorRT is not the serving container's: its plans would not load there."""


class TensorRTUnavailableError(RuntimeError):
    """TensorRT or an NVIDIA GPU is missing on this machine."""


class TensorRTBuildError(RuntimeError):
    """TensorRT could not parse the ONNX graph or build an engine from it."""


@dataclass(frozen=True)
class Profile:
    """Batch sizes of TensorRT's optimisation profile: the plan accepts min..max, tuned for opt."""

    min: int = 1
    opt: int = 32
    max: int = 256

    def __post_init__(self):
        if not 1 <= self.min <= self.opt <= self.max:
            raise ValueError(f"TensorRT profile needs 1 <= min <= opt <= max, got {self.min}/{self.opt}/{self.max}")

    @classmethod
    def parse(cls, text: str) -> "Profile":
        """'1/32/256' -> Profile(1, 32, 256)."""
        parts = text.split("/")
        if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"TensorRT profile must look like MIN/OPT/MAX (e.g. 1/32/256), not {text!r}")
        return cls(*(int(p) for p in parts))

    def shapes(self, dims: list[int]) -> tuple[tuple[int, ...], ...]:
        return tuple((batch, *dims) for batch in (self.min, self.opt, self.max))


@dataclass(frozen=True)
class Builder:
    kind: str            # "python" or "trtexec"
    trtexec: str | None = None


def parse_trtexec_version(text: str) -> str | None:
    """'10.5' from trtexec's banner ``[TensorRT v100500]`` (TensorRT 10+: MMmmpp) or ``[TensorRT v8601]``
    (TensorRT 8: Mmpp); None when absent."""
    found = re.search(r"TensorRT v(\d+)", text)
    if not found:
        return None
    digits = found.group(1)
    if len(digits) >= 6:
        return f"{int(digits[:-4])}.{int(digits[-4:-2])}"
    return f"{int(digits[0])}.{int(digits[1])}" if len(digits) >= 2 else None


def builder_version(builder: Builder) -> str | None:
    """The TensorRT major.minor ``builder`` builds with (``tensorrt.__version__`` or trtexec's banner)."""
    if builder.kind == "python":
        import tensorrt

        return ".".join(tensorrt.__version__.split(".")[:2])
    try:
        done = subprocess.run([builder.trtexec, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_trtexec_version(done.stdout + done.stderr)


def check_tensorrt_version(found: str | None, serving: str = SERVING_TENSORRT) -> None:
    """Refuse a builder whose TensorRT major.minor is not ``serving`` (the container's); ``serving`` ""
    skips the check. Raises TensorRTVersionError naming both."""
    if not serving:
        return
    if found is None:
        raise TensorRTVersionError(f"cannot tell this builder's TensorRT version; the serving container needs "
                                   f"TensorRT {serving}: pass --serving-tensorrt any to build anyway")
    if found.split(".")[:2] != serving.split(".")[:2]:
        raise TensorRTVersionError(
            f"this builder has TensorRT {found}, the serving container TensorRT {serving} ({SERVING_CONTAINER} "
            f"ships {SERVING_TENSORRT}): its plans would not load there. Build in the matching "
            f"nvcr.io/nvidia/tensorrt container, or pass --serving-tensorrt X.Y for another serving release")


def _gpu_problem() -> str | None:
    """Why no NVIDIA GPU is usable here, or None when one is."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "no NVIDIA GPU driver found (nvidia-smi is not on PATH)"
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"nvidia-smi failed: {exc}"
    if listing.returncode != 0 or "GPU" not in listing.stdout:
        return f"nvidia-smi lists no GPU ({(listing.stderr or listing.stdout).strip()[:200]})"
    return None


def _python_api_available() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def _find_trtexec() -> str | None:
    found = shutil.which("trtexec")
    return found or next((p for p in TRTEXEC_LOCATIONS if Path(p).is_file()), None)


def find_builder(preference: str = "auto") -> Builder:
    """TensorRT's Python API or trtexec, on a machine with a GPU; otherwise say what is missing."""
    if preference not in BUILDERS:
        raise ValueError(f"TensorRT builder must be one of {BUILDERS}, not {preference!r}")
    problems = []
    builder = None
    if preference in ("auto", "python") and _python_api_available():
        builder = Builder("python")
    elif preference in ("auto", "trtexec") and (trtexec := _find_trtexec()):
        builder = Builder("trtexec", trtexec)
    else:
        wanted = {"auto": "TensorRT's Python API (`import tensorrt`) nor trtexec",
                  "python": "TensorRT's Python API (`import tensorrt`)",
                  "trtexec": f"trtexec (on PATH or at {', '.join(TRTEXEC_LOCATIONS)})"}[preference]
        problems.append(f"TensorRT is not installed here: found neither {wanted}" if preference == "auto"
                        else f"TensorRT is not installed here: {wanted} not found")
    gpu = _gpu_problem()
    if gpu:
        problems.append(gpu)
    if problems:
        raise TensorRTUnavailableError("cannot build TensorRT plans: " + "; ".join(problems) + ". " + CONTAINER_HINT)
    return builder


def trtexec_command(trtexec: str, onnx_path: Path, plan_path: Path, inputs: list[tuple[str, list[int]]],
                    profile: Profile, precision: str, workspace_mib: int = 4096) -> list[str]:
    def shapes(batch: int) -> str:
        return ",".join(f"{name}:" + "x".join(str(d) for d in (batch, *dims)) for name, dims in inputs)

    cmd = [trtexec, f"--onnx={onnx_path}", f"--saveEngine={plan_path}",
           f"--minShapes={shapes(profile.min)}", f"--optShapes={shapes(profile.opt)}",
           f"--maxShapes={shapes(profile.max)}", f"--memPoolSize=workspace:{workspace_mib}", "--skipInference"]
    if precision == "fp16":
        cmd.append("--fp16")
    return cmd


def _build_with_trtexec(builder: Builder, onnx_path, plan_path, inputs, profile, precision) -> None:
    cmd = trtexec_command(builder.trtexec, onnx_path, plan_path, inputs, profile, precision)
    log.info("running %s", " ".join(cmd))
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not Path(plan_path).is_file():
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-20:])
        raise TensorRTBuildError(f"trtexec failed on {onnx_path} (exit {done.returncode}):\n{tail}")


def _build_with_python_api(onnx_path, plan_path, inputs, profile, precision, workspace_bytes=4 << 30) -> None:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 8 needs the explicit-batch flag; in TensorRT 10 every network is explicit-batch.
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if int(trt.__version__.split(".")[0]) < 10 else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise TensorRTBuildError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    trt_profile = builder.create_optimization_profile()
    for name, dims in inputs:
        trt_profile.set_shape(name, *profile.shapes(dims))
    config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise TensorRTBuildError(f"TensorRT could not build an engine from {onnx_path} (see the log above)")
    Path(plan_path).write_bytes(bytes(serialized))


def _plan_config(path: Path, profile: Profile) -> mc.ModelConfig:
    """The variant's config, re-fitted to the plan's profile (user edits such as instances are kept)."""
    cfg = parse_config(path)
    if cfg.platform != "tensorrt_plan":
        raise ValueError(f"{path} is not a tensorrt_plan config (platform {cfg.platform!r})")
    cfg.max_batch_size = profile.max
    preferred = [b for b in cfg.dynamic_batching.preferred_batch_size if profile.min <= b <= profile.max]
    del cfg.dynamic_batching.preferred_batch_size[:]
    cfg.dynamic_batching.preferred_batch_size.extend(preferred or [profile.opt])
    warmups = [w for w in cfg.model_warmup if profile.min <= w.batch_size <= profile.max]
    del cfg.model_warmup[:]
    cfg.model_warmup.extend(warmups)
    return cfg


def kept_versions(model_dir: Path, cfg: mc.ModelConfig) -> list[Path]:
    """The version folders (holding a model.onnx) that ``cfg``'s version policy loads, oldest first:
    Triton fails the model if any of them lacks its plan."""
    versions = [v for v in version_dirs(model_dir) if (v / "model.onnx").is_file()]
    policy = cfg.version_policy.WhichOneof("policy_choice")
    if policy == "all":
        return versions
    if policy == "specific":
        wanted = set(cfg.version_policy.specific.versions)
        return [v for v in versions if int(v.name) in wanted]
    keep = cfg.version_policy.latest.num_versions if policy == "latest" else 1
    return versions[-max(keep, 1):]


def _ensemble_max_batch(repository: Path, layout: RepositoryLayout) -> int:
    return read_ensemble_config(repository, layout).max_batch_size


def build_plans(repository: str | Path, *, layout: RepositoryLayout = RepositoryLayout(),
                profile: Profile = Profile(), precision: str = "fp16", builder: str = "auto",
                name: str = "", on_built=None, serving_tensorrt: str = SERVING_TENSORRT) -> list[Path]:
    """Build a plan beside every model.onnx the TensorRT stages' version policy keeps loaded (both mask-net
    versions with ``latest 2``) and fit configs/tensorrt.pbtxt (configs/tensorrt_<name>.pbtxt and
    model_<name>.plan for a named GPU config set) to the profile, recording the plan precision in it.

    Checks the repository, then that TensorRT and a GPU are present and that the builder's TensorRT is
    ``serving_tensorrt`` ("" skips that), before writing anything.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"TensorRT precision must be one of {PRECISIONS}, not {precision!r}")
    repository = Path(repository)
    ensemble_max = _ensemble_max_batch(repository, layout)
    if profile.max < ensemble_max:
        raise ValueError(f"profile max batch {profile.max} is below the ensemble's max_batch_size {ensemble_max}")
    variant = config_name("tensorrt", name)
    configs = {stage: repository / model / "configs" / f"{variant}.pbtxt" for stage, model in layout.stages.items()}
    missing = [path for path in configs.values() if not path.is_file()]
    if missing:
        how = (f"`fer-triton gpu-configs --name {name}`" if name
               else "`fer-triton export --target both` (or `--target gpu`, or `fer-triton gpu-configs`)")
        raise FileNotFoundError(f"{missing[0]} is missing: write the GPU configs first with {how}")
    fitted = {stage: _plan_config(configs[stage], profile) for stage in TRT_STAGES}
    for config in fitted.values():
        config.parameters[PLAN_PRECISION_PARAMETER].string_value = precision
    sources = {stage: kept_versions(repository / layout.stages[stage], fitted[stage]) for stage in TRT_STAGES}
    empty = [layout.stages[stage] for stage, versions in sources.items() if not versions]
    if empty:
        raise FileNotFoundError(f"{repository / empty[0]} has no version folder with a model.onnx")
    found = find_builder(builder)
    check_tensorrt_version(builder_version(found), serving_tensorrt)
    signatures = _signatures(224, 7)  # the TensorRT stages' tensors do not depend on wire size or classes
    built = []
    for stage, versions in sources.items():
        inputs = [(tensor, dims) for tensor, _, dims in signatures[stage][0]]
        config = fitted[stage]
        for version in versions:
            onnx_path = version / "model.onnx"
            plan_path = onnx_path.with_name(config.default_model_filename or plan_filename(name))
            if found.kind == "python":
                _build_with_python_api(onnx_path, plan_path, inputs, profile, precision)
            else:
                _build_with_trtexec(found, onnx_path, plan_path, inputs, profile, precision)
            built.append(plan_path)
            if on_built:
                on_built(plan_path)
        configs[stage].write_text(config_text(config))
    return built
