"""Write a Triton model repository for the CAFE ensemble.

    <repo>/cafe/                 ensemble: faces (UINT8 [B,H,W,3]) -> probabilities, logits, masked_features
    <repo>/cafe_preprocess/      faces -> pixels (FP32 [B,3,224,224])
    <repo>/cafe_clip_encoder/    pixels -> clip_features [B,512]
    <repo>/cafe_mask_net/        pixels -> mask_logits [B,512]
    <repo>/cafe_head/            clip_features, mask_logits -> masked_features, logits, probabilities
    <repo>/cafe_sites/           ensemble: faces + site (BYTES [B,1]) -> the same outputs, each face by its site's head
    <repo>/cafe_site_head/       base head outputs + site -> each site's own head (python backend, numpy)
    <repo>/cafe_frames/          frames (JPEG/PNG bytes, raw UINT8) -> one row per face (export/detector.py)
    <repo>/cafe_detector_*/      the face detector's nets (MTCNN P-, R-, O-net) that cafe_frames calls

Fused CPU layout (``fused=True``): ``<repo>/cafe_backbone/`` (faces -> clip_features, mask_logits, one
merged graph) replaces the first three models; the ensemble and ``cafe_head`` are unchanged.

Sites (retrain/sites.py): ``cafe_sites`` runs the same steps as ``cafe`` (so Triton batches the
backbone across all sites and base clients), then ``cafe_site_head``, which replaces each face's
logits and probabilities by those of its site's own head (faces of sites without a head, and faces
with site "", keep the base head's). One model holds every site's head: sites cost kilobytes, not a
process each.

Configs are built as Triton's own ``ModelConfig`` protobuf messages, so every file written
is valid against Triton's schema by construction. Model and tensor names are the public API
documented in model_repository/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from fer_triton import __version__

# The python-backend model.py copied into every CPU model version (package data: see pyproject.toml).
RUNNER_SOURCE = Path(str(resources.files("fer_triton.export") / "triton_python" / "onnx_model.py"))
# The OpenVINO runner (`export --engine openvino`, export/openvino_engine.py); it reads a version's
# model.xml, or its model.onnx where a later version has no IR.
OPENVINO_RUNNER_SOURCE = Path(str(resources.files("fer_triton.export") / "triton_python" / "openvino_model.py"))


def runner_source(model_dir: Path) -> Path:
    """The python-backend runner a NEW version of the model in ``model_dir`` gets (retrain publishing):
    OpenVINO's where its config says ``engine: openvino`` (so a published version keeps the engine the
    model was exported with), else onnxruntime's. FileNotFoundError when ``model_dir`` has no config.pbtxt."""
    cfg = parse_config(Path(model_dir) / "config.pbtxt")
    engine = cfg.parameters["engine"].string_value if "engine" in cfg.parameters else "onnxruntime"
    return OPENVINO_RUNNER_SOURCE if engine == "openvino" else RUNNER_SOURCE


@dataclass(frozen=True)
class RepositoryLayout:
    """Names of the ensemble and its composing models (all share a prefix, default "cafe")."""

    prefix: str = "cafe"

    @property
    def ensemble(self) -> str:
        return self.prefix

    @property
    def stages(self) -> dict[str, str]:
        return {
            "preprocess": f"{self.prefix}_preprocess",
            "clip_encoder": f"{self.prefix}_clip_encoder",
            "mask_net": f"{self.prefix}_mask_net",
            "head": f"{self.prefix}_head",
        }

    @property
    def backbone(self) -> str:
        """Fused CPU layout: one model running preprocess + CLIP encoder + mask net (export/fuse.py)."""
        return f"{self.prefix}_backbone"

    @property
    def site_head(self) -> str:
        """The one model holding every site's head (retrain/sites.py)."""
        return f"{self.prefix}_site_head"

    @property
    def sites_ensemble(self) -> str:
        """The ensemble clients call with a ``site`` input per face."""
        return f"{self.prefix}_sites"

    @property
    def frames(self) -> str:
        """Frames in, faces out: decode, detect, crop, classify (export/detector.py, docs/frames.md)."""
        return f"{self.prefix}_frames"

    def model_name(self, stage: str) -> str:
        """Model name of ``stage``: one of ``stages``, "backbone" or "site_head"; KeyError otherwise."""
        extra = {"backbone": self.backbone, "site_head": self.site_head}
        return self.stages[stage] if stage in self.stages else extra[stage]

    def served_models(self, fused: bool = False) -> list[str]:
        """The composing models of the ensemble in a repository of this layout (head last)."""
        names = self.stages
        return [self.backbone, names["head"]] if fused else list(names.values())


# Tensor signatures of each stage: (name, dtype, dims without the batch axis).
def _signatures(wire_size: int, num_classes: int) -> dict[str, tuple[list, list]]:
    pixels = ("pixels", mc.TYPE_FP32, [3, 224, 224])
    return {
        "preprocess": ([("faces", mc.TYPE_UINT8, [wire_size, wire_size, 3])], [pixels]),
        "clip_encoder": ([pixels], [("clip_features", mc.TYPE_FP32, [512])]),
        "mask_net": ([pixels], [("mask_logits", mc.TYPE_FP32, [512])]),
        "backbone": (
            [("faces", mc.TYPE_UINT8, [wire_size, wire_size, 3])],
            [("clip_features", mc.TYPE_FP32, [512]), ("mask_logits", mc.TYPE_FP32, [512])],
        ),
        "head": (
            [("clip_features", mc.TYPE_FP32, [512]), ("mask_logits", mc.TYPE_FP32, [512])],
            [("masked_features", mc.TYPE_FP32, [512]), ("logits", mc.TYPE_FP32, [num_classes]),
             ("probabilities", mc.TYPE_FP32, [num_classes])],
        ),
    }


def _tensor(cls, name, dtype, dims, **extra):
    return cls(name=name, data_type=dtype, dims=dims, **extra)


# Tiny graphs: one onnxruntime thread each, so their pools never compete with the encoders' for cores
# (measured with `fer-triton bench`, see docs/benchmarks.md).
SINGLE_THREAD_STAGES = ("preprocess", "head")

# Stages retrain can publish new versions of: the previous version stays loaded, so a publish can
# switch the ensemble in one step and a rollback is instant.
VERSIONED_STAGES = ("mask_net", "head")

# The site head (export/triton_python/site_head_model.py): python backend + numpy on CPU and GPU hosts.
SITE_RUNNER_SOURCE = Path(str(resources.files("fer_triton.export") / "triton_python" / "site_head_model.py"))
SITE_INPUT = "site"            # ensemble input: BYTES [B, 1], the site of each face ("" = the base model)
SITE_HEAD_TENSORS = {"logits": "base_logits", "probabilities": "base_probabilities"}  # base head's, renamed


def stage_config(stage: str, model_name: str, wire_size: int, num_classes: int, *,
                 max_batch_size: int, threads: int, instances: int = 1,
                 queue_delay_us: int = 2000, head_versions: int = 2) -> mc.ModelConfig:
    """CPU flavour: a python-backend model running the version's model.onnx with onnxruntime."""
    inputs, outputs = _signatures(wire_size, num_classes)[stage]
    cfg = mc.ModelConfig(
        name=model_name,
        backend="python",
        max_batch_size=max_batch_size,
        input=[_tensor(mc.ModelInput, *t) for t in inputs],
        output=[_tensor(mc.ModelOutput, *t) for t in outputs],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=queue_delay_us),
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=instances)],
    )
    if threads == 0 and stage in SINGLE_THREAD_STAGES:
        threads = 1
    cfg.parameters["intra_op_threads"].string_value = str(threads)
    cfg.parameters["onnx_file"].string_value = "model.onnx"
    if stage in VERSIONED_STAGES:
        cfg.version_policy.latest.num_versions = head_versions
    return cfg


def ensemble_config(layout: RepositoryLayout, wire_size: int, classes: tuple[str, ...], *,
                    max_batch_size: int, metadata: dict, fused: bool = False) -> mc.ModelConfig:
    names = layout.stages
    n = len(classes)
    cfg = mc.ModelConfig(
        name=layout.ensemble,
        platform="ensemble",
        max_batch_size=max_batch_size,
        input=[_tensor(mc.ModelInput, "faces", mc.TYPE_UINT8, [wire_size, wire_size, 3])],
        output=[
            _tensor(mc.ModelOutput, "probabilities", mc.TYPE_FP32, [n], label_filename="labels.txt"),
            _tensor(mc.ModelOutput, "logits", mc.TYPE_FP32, [n]),
            _tensor(mc.ModelOutput, "masked_features", mc.TYPE_FP32, [512]),
        ],
    )
    steps = [
        (names["preprocess"], {"faces": "faces"}, {"pixels": "pixels"}),
        (names["clip_encoder"], {"pixels": "pixels"}, {"clip_features": "clip_features"}),
        (names["mask_net"], {"pixels": "pixels"}, {"mask_logits": "mask_logits"}),
        (names["head"], {"clip_features": "clip_features", "mask_logits": "mask_logits"},
         {"masked_features": "masked_features", "logits": "logits", "probabilities": "probabilities"}),
    ]
    if fused:  # one backbone model instead of the first three steps; same tensors, same head
        steps[:3] = [(layout.backbone, {"faces": "faces"},
                      {"clip_features": "clip_features", "mask_logits": "mask_logits"})]
    for model_name, inputs, outputs in steps:
        step = cfg.ensemble_scheduling.step.add(model_name=model_name, model_version=-1)
        step.input_map.update(inputs)
        step.output_map.update(outputs)
    cfg.parameters["classes"].string_value = json.dumps(list(classes))
    cfg.parameters["fer_triton"].string_value = json.dumps({"version": __version__, **metadata})
    return cfg


def site_head_config(model_name: str, num_classes: int, *, max_batch_size: int, queue_delay_us: int = 2000,
                     versions: int = 2) -> mc.ModelConfig:
    """``<prefix>_site_head``: python backend (numpy) on CPU instances, on CPU and GPU hosts alike.

    Inputs: ``masked_features`` FP32 [B,512], ``base_logits`` / ``base_probabilities`` FP32 [B,C] (the
    base head's outputs) and ``site`` BYTES [B,1]; outputs ``logits``, ``probabilities`` FP32 [B,C].
    The head is a 512 x C matmul per face: a GPU gains nothing, so GPU hosts run the same config.
    """
    inputs = [("masked_features", mc.TYPE_FP32, [512]), ("base_logits", mc.TYPE_FP32, [num_classes]),
              ("base_probabilities", mc.TYPE_FP32, [num_classes]), (SITE_INPUT, mc.TYPE_STRING, [1])]
    cfg = mc.ModelConfig(
        name=model_name,
        backend="python",
        max_batch_size=max_batch_size,
        input=[_tensor(mc.ModelInput, *t) for t in inputs],
        output=[_tensor(mc.ModelOutput, "logits", mc.TYPE_FP32, [num_classes]),
                _tensor(mc.ModelOutput, "probabilities", mc.TYPE_FP32, [num_classes])],
        dynamic_batching=mc.ModelDynamicBatching(max_queue_delay_microseconds=queue_delay_us),
        instance_group=[mc.ModelInstanceGroup(kind=mc.ModelInstanceGroup.KIND_CPU, count=1)],
    )
    cfg.version_policy.latest.num_versions = versions
    return cfg


def sites_ensemble_config(base: mc.ModelConfig, layout: RepositoryLayout) -> mc.ModelConfig:
    """``<prefix>_sites`` from the ``<prefix>`` ensemble's config: the same steps (staged or fused, any
    precision), plus a ``site`` input (BYTES [B,1]) and the site-head step after the base head.

    Outputs and parameters (classes, export metadata) are the base ensemble's, so clients read both
    the same way. Raises ValueError when ``base`` has no step calling ``layout``'s head.
    """
    cfg = mc.ModelConfig()
    cfg.CopyFrom(base)
    cfg.name = layout.sites_ensemble
    cfg.input.append(_tensor(mc.ModelInput, SITE_INPUT, mc.TYPE_STRING, [1]))
    head = [s for s in cfg.ensemble_scheduling.step if s.model_name == layout.stages["head"]]
    if len(head) != 1:
        raise ValueError(f"the ensemble {base.name} has no step calling {layout.stages['head']}")
    for step in cfg.ensemble_scheduling.step:
        step.model_version = -1  # never copy a pin of an interrupted publish
    for output, renamed in SITE_HEAD_TENSORS.items():
        head[0].output_map[output] = renamed
    step = cfg.ensemble_scheduling.step.add(model_name=layout.site_head, model_version=-1)
    step.input_map.update({"masked_features": "masked_features", SITE_INPUT: SITE_INPUT,
                           **{renamed: renamed for renamed in SITE_HEAD_TENSORS.values()}})
    step.output_map.update({output: output for output in SITE_HEAD_TENSORS})
    return cfg


def write_site_models(repository: Path, layout: RepositoryLayout = RepositoryLayout()) -> list[Path]:
    """Add ``<prefix>_site_head`` (version 1: no site yet) and ``<prefix>_sites`` to an exported repository.

    Read from the ``<prefix>`` ensemble's config (wire size, classes, max batch size, staged or fused
    steps), so it works for any layout and for repositories exported before sites existed; the site
    head gets a config beside each of the base head's (``sync_site_head_configs``). Returns the model
    folders written; raises FileExistsError if either exists, FileNotFoundError without the ensemble.
    """
    from fer_triton.retrain.sites import SiteTable

    repository = Path(repository)
    base = read_ensemble_config(repository, layout)
    head_dir, ensemble_dir = repository / layout.site_head, repository / layout.sites_ensemble
    existing = [p.name for p in (head_dir, ensemble_dir) if p.exists()]
    if existing:
        raise FileExistsError(f"{repository} already holds {', '.join(existing)}")
    sites_cfg = sites_ensemble_config(base, layout)
    version_dir = head_dir / "1"
    version_dir.mkdir(parents=True)
    shutil.copyfile(SITE_RUNNER_SOURCE, version_dir / "model.py")
    SiteTable.empty(model_version=1).save(version_dir)
    sync_site_head_configs(repository, layout)
    (ensemble_dir / "1").mkdir(parents=True)
    labels = repository / layout.ensemble / "labels.txt"
    if labels.is_file():
        shutil.copyfile(labels, ensemble_dir / "labels.txt")
    (ensemble_dir / "config.pbtxt").write_text(config_text(sites_cfg))
    return [head_dir, ensemble_dir]


def sync_site_head_configs(repository: Path, layout: RepositoryLayout = RepositoryLayout()) -> list[Path]:
    """Give ``<prefix>_site_head`` a config beside each of ``<prefix>_head``'s (config.pbtxt and every
    ``configs/<variant>.pbtxt``), with that config's max batch size, queue delay and version count.

    The site head stays the python backend in every one: ``--model-config-name=gpu_trt`` on a GPU
    host serves the CLIP encoder and mask net with TensorRT and the site head with numpy on the CPU.
    Returns the files written.
    """
    repository = Path(repository)
    head_dir, site_dir = repository / layout.stages["head"], repository / layout.site_head
    written = []
    for source in [head_dir / "config.pbtxt", *sorted((head_dir / "configs").glob("*.pbtxt"))]:
        head = parse_config(source)
        (probabilities,) = [o for o in head.output if o.name == "probabilities"]
        versions = head.version_policy.latest.num_versions \
            if head.version_policy.WhichOneof("policy_choice") == "latest" else 2
        cfg = site_head_config(layout.site_head, probabilities.dims[0], max_batch_size=head.max_batch_size,
                               queue_delay_us=head.dynamic_batching.max_queue_delay_microseconds or 2000,
                               versions=max(2, versions))
        target = site_dir / source.relative_to(head_dir)
        target.parent.mkdir(exist_ok=True)
        target.write_text(config_text(cfg))
        written.append(target)
    return written


def config_text(cfg: mc.ModelConfig) -> str:
    return text_format.MessageToString(cfg)


def parse_config(path: Path) -> mc.ModelConfig:
    """Parse a config.pbtxt against Triton's schema (raises text_format.ParseError)."""
    return text_format.Parse(Path(path).read_text(), mc.ModelConfig())


def read_ensemble_config(repository: Path, layout: RepositoryLayout = RepositoryLayout()) -> mc.ModelConfig:
    """The exported ensemble's config; FileNotFoundError naming it when the repository has none."""
    path = Path(repository) / layout.ensemble / "config.pbtxt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: is {repository} an exported fer-triton repository?")
    return parse_config(path)


def replace_config(path: Path, cfg: mc.ModelConfig) -> None:
    """Rewrite a config.pbtxt in one step: a server (re)loading the model never reads half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(config_text(cfg))
    os.replace(tmp, path)


def write_repository(out_dir: Path, onnx_paths: dict[str, Path], *, layout: RepositoryLayout = RepositoryLayout(),
                     wire_size: int = 224, classes: tuple[str, ...], max_batch_size: int = 64,
                     threads: int = 0, metadata: dict | None = None, overwrite: bool = False,
                     fused: bool = False, detector=None) -> Path:
    """Write the CPU-flavour repository (version 1 of every model) into ``out_dir``.

    ``onnx_paths`` maps Triton model names to validated ONNX files (moved into the repository).
    ``fused``: preprocess, CLIP encoder and mask net run as ONE model (``layout.backbone``, one merged
    graph in one process) before the head; clients see the same ensemble and tensors.
    Every layout also gets the site models (``write_site_models``: ``<prefix>_sites`` and
    ``<prefix>_site_head`` with no site yet).
    ``detector``: export/detector.py's DetectorOptions, or "mtcnn" / "none"; None (the default) means
    "mtcnn": the MTCNN nets and ``<prefix>_frames`` (``write_detector_models``).
    """
    out_dir = Path(out_dir)
    names = layout.stages
    models = [*names.values(), layout.backbone, layout.site_head, layout.sites_ensemble]
    existing = [p for p in [out_dir / layout.ensemble, *(out_dir / n for n in models)] if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{out_dir} already holds {', '.join(p.name for p in existing)}; pass --overwrite to replace them"
        )
    for path in existing:
        shutil.rmtree(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    stages = {"backbone": layout.backbone, "head": names["head"]} if fused else names
    for stage, model_name in stages.items():
        version_dir = out_dir / model_name / "1"
        version_dir.mkdir(parents=True)
        if stage == "backbone":
            from fer_triton.export.fuse import fuse_backbone

            fuse_backbone(*(onnx_paths[names[s]] for s in ("preprocess", "clip_encoder", "mask_net")),
                          version_dir / "model.onnx")
        else:
            shutil.move(str(onnx_paths[model_name]), version_dir / "model.onnx")
        shutil.copyfile(RUNNER_SOURCE, version_dir / "model.py")
        cfg = stage_config(stage, model_name, wire_size, len(classes), max_batch_size=max_batch_size, threads=threads)
        (out_dir / model_name / "config.pbtxt").write_text(config_text(cfg))
    ensemble_dir = out_dir / layout.ensemble
    (ensemble_dir / "1").mkdir(parents=True)  # ensembles need an (empty) version directory
    (ensemble_dir / "labels.txt").write_text("\n".join(classes) + "\n")
    cfg = ensemble_config(layout, wire_size, classes, max_batch_size=max_batch_size, metadata=metadata or {},
                          fused=fused)
    (ensemble_dir / "config.pbtxt").write_text(config_text(cfg))
    write_site_models(out_dir, layout)
    from fer_triton.export.detector import DetectorOptions, write_detector_models

    write_detector_models(out_dir, prefix=layout.prefix, classifier=layout.ensemble, wire_size=wire_size,
                          num_classes=len(classes), options=DetectorOptions.parse(detector or "mtcnn"),
                          classifier_max_batch_size=max_batch_size, overwrite=overwrite)
    return out_dir
