"""GPU flavour of the repository: the same model.onnx files, served by NVIDIA's native backends.

Each composing model gets one config per engine in ``<model>/configs/<variant>.pbtxt``; NVIDIA's
Triton container picks one with ``--model-config-name=<variant>`` (a model without that file falls
back to its config.pbtxt, which is why every composing model gets every variant). The ensemble's
config.pbtxt is the same for every flavour.

    gpu        onnxruntime_onnx on the GPU (CUDA execution provider), FP32: exact, no build step
    gpu_trt    onnxruntime_onnx with ONNX Runtime's TensorRT accelerator (FP16 by default) for the
               CLIP encoder and the mask net; engines are built at load (warm-up) and cached
    tensorrt   tensorrt_plan for the CLIP encoder and the mask net (model.plan, built on the serving
               host by `fer-triton build-trt`); preprocess and head stay on onnxruntime
    gpu_python the python backend on CUDA (export/triton_python/cuda_model.py: onnxruntime-gpu with IO
               binding where installed, else PyTorch on the stage's model.pt2, FP16/BF16 autocast for
               the CLIP encoder and mask net), tensors passed between stages on the GPU by DLPack: the
               pip-only GPU server (`fer-triton serve --model-config-name gpu_python`, no container)

Stale TensorRT engines: ONNX Runtime's TensorRT accelerator names a cached engine
``TensorrtExecutionProvider_TRTKernel_graph_<graph name>_<id>_...`` where ``<id>`` hashes the model's
*file name* (always model.onnx here), its input and node-output names and the ORT/CUDA/TensorRT
versions, never the weights (``TRTGenerateId`` in ORT's tensorrt_execution_provider_utils.h). Every
version of a model re-exported or fine-tuned from the same architecture gets the same id, and Triton
gives a model one ``trt_engine_cache_path`` for all its versions. So every model.onnx fer-triton
writes carries a hash of its own contents in its graph name (:func:`stamp_weights_hash`): a new
export or a new published version can never load another one's engine.

Preprocess (a few element-wise ops on UINT8) and the head (one 512x7 layer) stay on onnxruntime in
every variant: TensorRT gains nothing there, and a head version published by `retrain` (a new
model.onnx) then serves at once, with no engine to build.

The site head (``<prefix>_site_head``, every site's own 512x7 head, retrain/sites.py) stays the python
backend (numpy, CPU instance) in every variant: it gets a ``configs/<variant>.pbtxt`` sized like the
base head's, so ``--model-config-name`` finds one, and the ``<prefix>_sites`` ensemble serves on GPU
hosts unchanged.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tritonclient.grpc import model_config_pb2 as mc

from fer_triton.export.precision import DEFAULT_MAX_PROB_DIFF
from fer_triton.export.precision_names import REDUCED_STAGES, TENSORRT_PRECISIONS
from fer_triton.export.repository import (VERSIONED_STAGES, RepositoryLayout, _signatures, _tensor, config_text,
                                         read_ensemble_config, sync_site_head_configs)
from fer_triton.metrics import DEFAULT_MIN_TOP1_AGREEMENT

if TYPE_CHECKING:
    from fer_triton.export.precision import PrecisionReport

# The variants NVIDIA's container serves with its native backends, and the pip-only one (python backend).
NATIVE_VARIANTS = ("gpu", "gpu_trt", "tensorrt")
PYTHON_VARIANT = "gpu_python"
VARIANTS = (*NATIVE_VARIANTS, PYTHON_VARIANT)
# gpu_python: the precision PyTorch autocasts the CLIP encoder and mask net to; where its instances run.
PYTHON_PRECISIONS = ("fp32", "fp16", "bf16")
PYTHON_DEVICES = ("auto", "cpu")
PRECISIONS = TENSORRT_PRECISIONS
# Stages worth a TensorRT engine: they hold nearly all of the model's FLOPs.
TRT_STAGES = REDUCED_STAGES
PLAN_FILENAME = "model.plan"
# A named set (e.g. "t4") sizes the variants for one GPU type: configs/gpu_t4.pbtxt, model_t4.plan.
SET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


# ONNX Runtime's CUDA EP benchmarks every cuDNN convolution algorithm (EXHAUSTIVE) for each new input
# shape: with a dynamic batcher every new batch size stalls a request. "1" = HEURISTIC, the
# (deprecated but still read) model-level key of Triton's onnxruntime backend README.
CUDNN_CONV_ALGO_SEARCH = "1"
# The graph-name suffix that carries the weights hash (16 hex digits of SHA-256).
_WEIGHTS_TAG = re.compile(r"_w[0-9a-f]{16}$")


def weights_digest(model) -> str:
    """16 hex digits of SHA-256 over the ONNX ``model``'s serialised contents, its graph name left out
    (so stamping is idempotent): any change of weights, nodes or opset changes it."""
    name = model.graph.name
    model.graph.name = ""
    try:
        data = model.SerializeToString(deterministic=True)
    finally:
        model.graph.name = name
    return hashlib.sha256(data).hexdigest()[:16]


def stamp_weights_hash(path: str | Path) -> str:
    """Give the ONNX graph at ``path`` the name ``<name>_w<weights digest>`` (rewritten in place, atomically,
    only when it changes) and return it.

    ONNX Runtime's TensorRT accelerator puts the graph name into its cached engines' file names and
    nothing else of the weights (module docstring), so this makes every model.onnx unable to load an
    engine built from other weights. The computation is unchanged: only the graph's name is.
    Call it on every model.onnx written (``export_stage`` in export/onnx_export.py).
    """
    import onnx

    path = Path(path)
    model = onnx.load(str(path))
    base = _WEIGHTS_TAG.sub("", model.graph.name) or "graph"
    stamped = f"{base}_w{weights_digest(model)}"
    if model.graph.name != stamped:
        model.graph.name = stamped
        tmp = path.with_name(path.name + ".stamp.tmp")
        onnx.save(model, str(tmp))
        os.replace(tmp, path)
    return stamped


def version_dirs(model_dir: Path) -> list[Path]:
    """The numeric version folders of a model folder, oldest first."""
    return sorted((p for p in Path(model_dir).iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))


def stamp_repository(repository: str | Path, layout: RepositoryLayout = RepositoryLayout()) -> list[Path]:
    """Stamp every version's model.onnx of the TensorRT stages (:func:`stamp_weights_hash`), e.g. a
    repository exported before stamps existed; returns the files looked at. Idempotent."""
    stamped = []
    for stage in TRT_STAGES:
        model_dir = Path(repository) / layout.stages[stage]
        if not model_dir.is_dir():
            continue
        for version in version_dirs(model_dir):
            if (version / "model.onnx").is_file():
                stamp_weights_hash(version / "model.onnx")
                stamped.append(version / "model.onnx")
    return stamped


def check_set_name(name: str) -> str:
    if name and not SET_NAME.match(name):
        raise ValueError(f"GPU config set name must be lower-case letters, digits, '_' or '-' "
                         f"(at most 32, no spaces), not {name!r}")
    return name


def config_name(variant: str, name: str = "") -> str:
    """What --model-config-name selects: the variant, or variant_<name> for a named set."""
    return f"{variant}_{check_set_name(name)}" if name else variant


def plan_filename(name: str = "") -> str:
    """model.plan, or model_<name>.plan: plans for several GPU types can sit in one version folder."""
    return f"model_{check_set_name(name)}.plan" if name else PLAN_FILENAME


@dataclass(frozen=True)
class GPUOptions:
    """How the GPU configs batch, scale and build engines (the defaults suit one data-centre GPU)."""

    precision: str = "fp16"                # gpu_trt accelerator precision (plans: build-trt --precision)
    max_batch_size: int = 256              # per composing model; the dynamic batcher fills it
    opt_batch_size: int = 32               # TensorRT optimisation profile: min 1, opt, max
    queue_delay_us: int = 1000             # how long the batcher may hold a request to grow a batch
    instances: int = 1                     # model instances per GPU (2 overlaps copies and compute)
    gpus: tuple[int, ...] = ()             # empty: every visible GPU gets `instances` instances
    # Writable in the container. ONNX Runtime creates only its LAST folder (std::filesystem::create_directory,
    # not create_directories): its parent must exist there (/tmp does) or the model fails to load.
    trt_cache_path: str = "/tmp/fer-triton-trt-cache"
    trt_workspace_bytes: int = 4 << 30
    head_versions: int = 2                 # keep the previous head and mask net loaded (instant rollback)
    default_variant: str = "gpu"           # config.pbtxt of a GPU-only repository
    # FP16 check at export (see precision.py): faces compared and what must hold.
    check_faces: int = 32
    min_top1_agreement: float = DEFAULT_MIN_TOP1_AGREEMENT
    max_prob_diff: float = DEFAULT_MAX_PROB_DIFF
    # gpu_python: autocast precision of the CLIP encoder and mask net (preprocess and head stay FP32), and
    # where its instances run: "auto" = KIND_GPU on CUDA (the CPU, logged, where PyTorch sees no GPU);
    # "cpu" = KIND_CPU instances on the CPU (a tritonserver with no GPU refuses KIND_GPU instances).
    python_precision: str = "fp16"            # FP16: what the export's FP16 check compared with FP32
    python_device: str = "auto"

    def validate(self, ensemble_max_batch_size: int) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"GPU precision must be one of {PRECISIONS}, not {self.precision!r}")
        if self.default_variant not in VARIANTS:
            raise ValueError(f"default GPU variant must be one of {VARIANTS}, not {self.default_variant!r}")
        if not 1 <= self.opt_batch_size <= self.max_batch_size:
            raise ValueError(f"GPU batch sizes need 1 <= opt ({self.opt_batch_size}) <= max ({self.max_batch_size})")
        if self.max_batch_size < ensemble_max_batch_size:
            # Triton refuses an ensemble whose max_batch_size exceeds a composing model's.
            raise ValueError(f"GPU max batch size {self.max_batch_size} is below the ensemble's max batch size "
                             f"{ensemble_max_batch_size}: raise --gpu-max-batch-size or lower --max-batch-size")
        if self.instances < 1 or self.queue_delay_us < 0 or self.head_versions < 1:
            raise ValueError("GPU instances and head versions must be >= 1 and the queue delay >= 0")
        if not self.trt_cache_path.startswith("/") or self.trt_cache_path.rstrip("/") in ("", "/tmp"):
            raise ValueError(f"--trt-cache-path must be an absolute folder of its own in the container (e.g. "
                             f"/tmp/fer-triton-trt-cache), not {self.trt_cache_path!r}")
        if self.python_precision not in PYTHON_PRECISIONS or self.python_device not in PYTHON_DEVICES:
            raise ValueError(f"gpu_python precision must be one of {PYTHON_PRECISIONS} and its device one of "
                             f"{PYTHON_DEVICES}, not {self.python_precision!r} / {self.python_device!r}")
        if self.check_faces < 1 or not 0 <= self.min_top1_agreement <= 1 or self.max_prob_diff < 0:
            raise ValueError("precision check needs >= 1 face, a top-1 agreement in [0, 1] and a max |dp| >= 0")

    @property
    def preferred_batch_sizes(self) -> list[int]:
        """The opt size and its doublings up to max: the sizes TensorRT was tuned for."""
        sizes, size = [], self.opt_batch_size
        while size <= self.max_batch_size:
            sizes.append(size)
            size *= 2
        return sizes

    @property
    def warmup_batch_sizes(self) -> list[int]:
        # 1 and opt make Triton build engines and CUDA kernels before the model reports ready.
        return sorted({1, self.opt_batch_size})


def trt_cache_dir(opts: GPUOptions, name: str = "") -> str:
    """The gpu_trt engine and timing cache folder: ``--trt-cache-path`` itself, ``<path>_<name>`` for a
    named set (its own profile must not meet the default set's engines).

    One level only, shared by every model and version: ONNX Runtime creates just the last folder, so a
    ``<path>/<model>`` sub-folder failed to load whenever ``<path>`` was not mounted. Models and versions
    cannot meet each other's engines there: each engine's name carries its graph's weights hash
    (:func:`stamp_weights_hash`), its input and node names, precision and GPU compute capability.
    """
    root = opts.trt_cache_path.rstrip("/")
    return f"{root}_{check_set_name(name)}" if name else root


def _shape(name: str, batch: int, dims: list[int]) -> str:
    return f"{name}:" + "x".join(str(d) for d in [batch, *dims])


def _warmup(inputs: list, batch_sizes: list[int]) -> list[mc.ModelWarmup]:
    warmups = []
    for batch in batch_sizes:
        warmup = mc.ModelWarmup(name=f"random_batch_{batch}", batch_size=batch)
        for name, dtype, dims in inputs:
            warmup.inputs[name].CopyFrom(mc.ModelWarmup.Input(data_type=dtype, dims=dims, random_data=True))
        warmups.append(warmup)
    return warmups


def _base_config(stage: str, model_name: str, wire_size: int, num_classes: int, opts: GPUOptions,
                 max_batch_size: int) -> mc.ModelConfig:
    inputs, outputs = _signatures(wire_size, num_classes)[stage]
    cfg = mc.ModelConfig(
        name=model_name,
        max_batch_size=max_batch_size,
        input=[_tensor(mc.ModelInput, *t) for t in inputs],
        output=[_tensor(mc.ModelOutput, *t) for t in outputs],
        dynamic_batching=mc.ModelDynamicBatching(
            preferred_batch_size=[b for b in opts.preferred_batch_sizes if b <= max_batch_size],
            max_queue_delay_microseconds=opts.queue_delay_us),
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_GPU, count=opts.instances,
                                              gpus=list(opts.gpus))],
        model_warmup=_warmup(inputs, [b for b in opts.warmup_batch_sizes if b <= max_batch_size]),
    )
    if stage in VERSIONED_STAGES:
        cfg.version_policy.latest.num_versions = opts.head_versions
    return cfg


def onnxruntime_config(stage: str, model_name: str, wire_size: int, num_classes: int, opts: GPUOptions,
                       *, trt_accelerator: bool = False, name: str = "") -> mc.ModelConfig:
    """Native onnxruntime backend on the GPU, optionally with the TensorRT execution accelerator."""
    cfg = _base_config(stage, model_name, wire_size, num_classes, opts, opts.max_batch_size)
    cfg.platform = "onnxruntime_onnx"
    cfg.default_model_filename = "model.onnx"
    # CUDA EP (the gpu variant, and every node TensorRT does not take): heuristic cuDNN algorithm choice,
    # not an exhaustive benchmark on each new batch shape.
    cfg.parameters["cudnn_conv_algo_search"].string_value = CUDNN_CONV_ALGO_SEARCH
    if trt_accelerator and stage in TRT_STAGES:
        inputs, _ = _signatures(wire_size, num_classes)[stage]
        cache = trt_cache_dir(opts, name)
        params = {
            "precision_mode": opts.precision.upper(),
            "max_workspace_size_bytes": str(opts.trt_workspace_bytes),
            "trt_engine_cache_enable": "true",
            "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": "true",
            "trt_timing_cache_path": cache,
            # One explicit profile, so a new batch size never triggers an engine rebuild mid-traffic.
            "trt_profile_min_shapes": ",".join(_shape(n, 1, d) for n, _, d in inputs),
            "trt_profile_opt_shapes": ",".join(_shape(n, opts.opt_batch_size, d) for n, _, d in inputs),
            "trt_profile_max_shapes": ",".join(_shape(n, opts.max_batch_size, d) for n, _, d in inputs),
        }
        accelerator = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters.update(params)
    return cfg


def tensorrt_plan_config(stage: str, model_name: str, wire_size: int, num_classes: int,
                         opts: GPUOptions, name: str = "") -> mc.ModelConfig:
    """Native TensorRT backend on a plan whose profile's max batch is ``opts.max_batch_size``."""
    if stage not in TRT_STAGES:
        raise ValueError(f"only {TRT_STAGES} are built as TensorRT plans, not {stage!r}")
    cfg = _base_config(stage, model_name, wire_size, num_classes, opts, opts.max_batch_size)
    cfg.platform = "tensorrt_plan"
    cfg.default_model_filename = plan_filename(name)
    return cfg


# The gpu_python runner, copied beside model.py into every version of the four stages.
CUDA_RUNNER_FILENAME = "cuda_model.py"
TORCH_GRAPH_FILENAME = "model.pt2"          # export/torch_graphs.py


def python_cuda_config(stage: str, model_name: str, wire_size: int, num_classes: int,
                       opts: GPUOptions) -> mc.ModelConfig:
    """gpu_python: the python backend running ``cuda_model.py`` on CUDA (KIND_GPU), inputs left in GPU
    memory between stages (FORCE_CPU_ONLY_INPUT_TENSORS "no"); ``opts.python_device`` "cpu" makes the
    instances KIND_CPU on the CPU (what a tritonserver without a GPU accepts)."""
    cfg = _base_config(stage, model_name, wire_size, num_classes, opts, opts.max_batch_size)
    cfg.backend = "python"
    cfg.default_model_filename = CUDA_RUNNER_FILENAME
    on_cpu = opts.python_device == "cpu"
    if on_cpu:
        for group in cfg.instance_group:
            group.kind = mc.ModelInstanceGroup.KIND_CPU
            del group.gpus[:]
    params = {
        # python backend: keep inputs where the previous stage left them (GPU), handed over by DLPack
        "FORCE_CPU_ONLY_INPUT_TENSORS": "no",
        "device": "cpu" if on_cpu else "auto",
        "precision": opts.python_precision if stage in TRT_STAGES else "fp32",
        "engine": "auto",
        "onnx_file": "model.onnx",
        "torch_graph": TORCH_GRAPH_FILENAME,
    }
    for key, value in params.items():
        cfg.parameters[key].string_value = value
    return cfg


def copy_cuda_runner(model_dir: Path) -> list[Path]:
    """Put the gpu_python runner beside model.py in every version folder of ``model_dir`` (idempotent)."""
    import shutil
    from importlib import resources

    source = Path(str(resources.files("fer_triton.export") / "triton_python" / CUDA_RUNNER_FILENAME))
    copied = []
    for version in version_dirs(model_dir):
        shutil.copyfile(source, version / CUDA_RUNNER_FILENAME)
        copied.append(version / CUDA_RUNNER_FILENAME)
    return copied


# tritonserver flags for gpu_python: GPU tensors cross between the server and the python-backend stubs
# through Triton's CUDA memory pool (64 MB per GPU by default; a batch of 256 pixel tensors is 154 MB), and
# CPU tensors through a /dev/shm region that grows in 1 MB steps by default (256 faces are 38 MB).
CUDA_POOL_BYTES = 1 << 30
SHM_GROWTH_BYTES = 32 << 20


def python_server_args(gpu_count: int | None = None) -> list[str]:
    """Extra tritonserver arguments for serving the gpu_python variant: a CUDA memory pool of
    CUDA_POOL_BYTES on each GPU (``gpu_count``; default: what PyTorch sees, 1 without it) and larger
    python-backend shared-memory growth steps. Harmless on a host without a GPU."""
    if gpu_count is None:
        try:
            import torch

            gpu_count = max(1, torch.cuda.device_count())
        except ImportError:
            gpu_count = 1
    return [*(f"--cuda-memory-pool-byte-size={i}:{CUDA_POOL_BYTES}" for i in range(gpu_count)),
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}"]


def add_cuda_runner(version_folder: Path) -> bool:
    """For a version folder written after export (``retrain`` publishes): when its model has gpu_python
    configs, copy the runner beside model.py and return True (the caller may add ``model.pt2``; without
    it the runner runs model.onnx with onnxruntime, logged). False, and nothing written, otherwise."""
    version_folder = Path(version_folder)
    if not any((version_folder.parent / "configs").glob(f"{PYTHON_VARIANT}*.pbtxt")):
        return False
    import shutil
    from importlib import resources

    source = Path(str(resources.files("fer_triton.export") / "triton_python" / CUDA_RUNNER_FILENAME))
    shutil.copyfile(source, version_folder / CUDA_RUNNER_FILENAME)
    return True


def variant_config(variant: str, stage: str, model_name: str, wire_size: int, num_classes: int,
                   opts: GPUOptions, name: str = "") -> mc.ModelConfig:
    if variant not in VARIANTS:
        raise ValueError(f"GPU variant must be one of {VARIANTS}, not {variant!r}")
    if variant == PYTHON_VARIANT:
        return python_cuda_config(stage, model_name, wire_size, num_classes, opts)
    if variant == "tensorrt" and stage in TRT_STAGES:
        return tensorrt_plan_config(stage, model_name, wire_size, num_classes, opts, name)
    return onnxruntime_config(stage, model_name, wire_size, num_classes, opts,
                              trt_accelerator=(variant == "gpu_trt"), name=name)


def write_gpu_configs(repository: str | Path, *, layout: RepositoryLayout = RepositoryLayout(),
                      wire_size: int, num_classes: int, ensemble_max_batch_size: int,
                      opts: GPUOptions = GPUOptions(), gpu_only: bool = False, name: str = "") -> list[Path]:
    """Write ``configs/<variant>.pbtxt`` (``<variant>_<name>.pbtxt`` for a named set) for every
    composing model of an exported repository.

    With ``gpu_only`` the GPU default variant also becomes config.pbtxt and the python-backend
    runners are removed, so NVIDIA's container serves the repository with no extra flag. The site
    head keeps its python runner and gets the same config names (python backend, CPU instance).
    Returns the files written.
    """
    opts.validate(ensemble_max_batch_size)
    check_set_name(name)
    repository = Path(repository)
    stamp_repository(repository, layout)  # older exports: no engine cache may serve other weights
    written = []
    for stage, model_name in layout.stages.items():
        model_dir = repository / model_name
        if not model_dir.is_dir():
            raise FileNotFoundError(f"{model_dir} is missing: GPU configs need an exported repository with "
                                    f"the staged layout (not --layout fused)")
        (model_dir / "configs").mkdir(exist_ok=True)
        copy_cuda_runner(model_dir)
        for variant in VARIANTS:
            path = model_dir / "configs" / f"{config_name(variant, name)}.pbtxt"
            cfg = variant_config(variant, stage, model_name, wire_size, num_classes, opts, name)
            path.write_text(config_text(cfg))
            written.append(path)
        if gpu_only:
            default = variant_config(opts.default_variant, stage, model_name, wire_size, num_classes, opts, name)
            (model_dir / "config.pbtxt").write_text(config_text(default))
            written.append(model_dir / "config.pbtxt")
            for runner in model_dir.glob("[0-9]*/model.py"):
                runner.unlink()
    if (repository / layout.site_head).is_dir():  # python backend everywhere: configs sized like the head's
        written += [p for p in sync_site_head_configs(repository, layout)
                    if p.parent.name == "configs" or gpu_only]
    # Face detector nets: native onnxruntime on the GPU; <prefix>_frames stays python (export/detector.py).
    from fer_triton.export.detector import write_detector_gpu_configs

    written += write_detector_gpu_configs(repository, prefix=layout.prefix,
                                          variants=[config_name(v, name) for v in NATIVE_VARIANTS],
                                          python_variants=[config_name(PYTHON_VARIANT, name)],
                                          instances=opts.instances, gpus=opts.gpus, gpu_only=gpu_only)
    return written


def check_export_precision(stage_paths: dict[str, Path], wire_size: int, opts: GPUOptions,
                           work_dir: Path) -> "PrecisionReport | None":
    """At export: FP16 vs FP32 on drawn faces when the GPU variants run TensorRT in FP16.

    Raises PrecisionCheckError past the thresholds, so nothing gets written. None for FP32.
    """
    from fer_triton.export.precision import check_fp16_onnx
    from fer_triton.synthetic import draw_faces

    if opts.precision != "fp16":
        return None
    faces, _ = draw_faces(opts.check_faces, wire_size, seed=7)
    report = check_fp16_onnx(stage_paths, faces, work_dir, min_top1_agreement=opts.min_top1_agreement,
                             max_prob_diff=opts.max_prob_diff)
    return report.raise_if_failed()


def add_gpu_configs(repository: str | Path, *, layout: RepositoryLayout = RepositoryLayout(),
                    opts: GPUOptions = GPUOptions(), name: str = "") -> list[Path]:
    """GPU configs for an already exported repository (e.g. a CPU-only export, or a set per GPU type).

    Wire size, classes and the ensemble's max batch size are read from the ensemble's config.
    """
    ensemble = read_ensemble_config(repository, layout)
    (faces,) = [i for i in ensemble.input if i.name == "faces"]
    (probabilities,) = [o for o in ensemble.output if o.name == "probabilities"]
    return write_gpu_configs(repository, layout=layout, wire_size=faces.dims[0], num_classes=probabilities.dims[0],
                             ensemble_max_batch_size=ensemble.max_batch_size, opts=opts, name=name)


# What build-trt records in a plan's config: the precision it was built in (Triton's TensorRT backend
# reads only the parameters it knows; the config served over gRPC then says what the plan computes in).
PLAN_PRECISION_PARAMETER = "fer_triton_plan_precision"


def _get(d: dict, *keys: str):
    """``d[key]`` under its proto name or its JSON camelCase name (tritonclient gives either)."""
    for key in keys:
        camel = re.sub(r"_([a-z])", lambda m: m.group(1).upper(), key)
        d = d.get(key, d.get(camel, {})) if isinstance(d, dict) else {}
    return d


@dataclass(frozen=True)
class ServedEngine:
    """What a loaded composing model runs on, read from the config the server reports for it (on a GPU
    host: the variant ``--model-config-name`` selected)."""

    model: str
    engine: str                 # python | onnxruntime-cuda | onnxruntime-tensorrt | tensorrt_plan | other
    precision: str | None       # the precision its config names; None: the export's (python) or unrecorded
    on_gpu: bool

    @classmethod
    def from_config(cls, cfg: dict) -> "ServedEngine":
        """From a model config as a dict (``get_model_config(..., as_json=True)["config"]``, or
        ``json_format.MessageToDict`` of a ModelConfig)."""
        name = cfg.get("name", "")
        platform, backend = cfg.get("platform", ""), cfg.get("backend", "")
        params = {k: (v.get("string_value", v.get("stringValue", "")) if isinstance(v, dict) else str(v))
                  for k, v in cfg.get("parameters", {}).items()}
        groups = cfg.get("instance_group", cfg.get("instanceGroup", []))
        on_gpu = any(g.get("kind", "KIND_GPU") in ("KIND_GPU", 1) for g in groups) if groups else False
        if platform == "tensorrt_plan" or backend == "tensorrt":
            return cls(name, "tensorrt_plan", params.get(PLAN_PRECISION_PARAMETER) or None, True)
        if platform == "onnxruntime_onnx" or backend == "onnxruntime":
            for accelerator in _get(cfg, "optimization", "execution_accelerators", "gpu_execution_accelerator") or []:
                if accelerator.get("name") == "tensorrt":
                    mode = accelerator.get("parameters", {}).get("precision_mode", "FP32")
                    return cls(name, "onnxruntime-tensorrt", str(mode).lower(), True)
            return cls(name, "onnxruntime-cuda" if on_gpu else "onnxruntime-cpu", "fp32" if on_gpu else None, on_gpu)
        if backend == "python" and params.get("precision"):  # gpu_python (cuda_model.py)
            on_gpu = on_gpu and params.get("device", "auto") != "cpu"
            return cls(name, "python-cuda" if on_gpu else "python-cpu", params["precision"], on_gpu)
        if backend == "python":
            return cls(name, "python", None, False)
        return cls(name, "other", None, on_gpu)
