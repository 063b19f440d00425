"""Fine-tune the mask network on a site's images as well as the head (``retrain --fine-tune-mask``).

Needs torch and the checkpoint the served mask net came from, but no CLIP weights: the server returns
``masked_features = clip_features * sigmoid(mask_logits)``, and ``sigmoid(mask_logits) >= 0.5``
because mask logits are >= 0 (ReLU, then average pooling). So dividing the served masked features by
the checkpoint mask net's sigmoid gives back each site image's frozen CLIP features, to float
precision. That only holds if the checkpoint's mask net IS the served one, which is checked first
against the served version's ONNX graph.

Training: the paper's loss (CE + 5 L_div + 1.5 L_sep, one channel-drop mask per step; train/losses.py)
on the site images that are not held out, updating the mask net and a head that starts from the
fitted linear head (Adam). Augmentation reaches the mask branch only (Gaussian noise and random
erasing, as in the paper's transform); CLIP features stay those of the clean image, the same
approximation as ``fer-triton train --cache-clip-features``. Afterwards the linear head is fitted
again on the new masked features with the same class-balanced L2 fit as a head-only retrain.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fer_triton.checkpoint import CAFECheckpoint, CheckpointError
from fer_triton.client import FerClient
from fer_triton.devices import resolve_device
from fer_triton.model import MaskNet, Preprocess
from fer_triton.retrain.fit import LinearHead, fit_head
from fer_triton.retrain.publish import StageVersions
from fer_triton.train import losses

log = logging.getLogger(__name__)


class MaskFineTuneError(RuntimeError):
    """The mask net cannot be fine-tuned here (layout, checkpoint, device); nothing was changed."""


@dataclass
class MaskFineTuneOptions:
    checkpoint: Path | None = None     # None: the one recorded for the served mask-net version
    epochs: int = 3
    lr: float = 1e-4                   # Adam; the paper trains from scratch at 2e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    augment: bool = True               # noise + random erasing on the mask branch
    device: str = "auto"               # "auto" = CUDA when torch sees a GPU
    save_checkpoint: Path | None = None  # where the fine-tuned checkpoint goes (retrain: the report folder)
    match_atol: float = 1e-3           # checkpoint mask logits vs the served graph's

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"mask fine-tuning needs epochs >= 1 and batch size >= 2, got {self.epochs}, "
                             f"{self.batch_size}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ValueError(f"mask fine-tuning needs lr > 0 and weight decay >= 0, got {self.lr}, {self.weight_decay}")
        self.torch_device()

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)


@dataclass
class FineTunedMask:
    mask_net: MaskNet                  # eval mode, on the CPU
    head: LinearHead                   # fitted on the new masked features
    masked_features: np.ndarray        # every site image through the new mask net
    checkpoint: CAFECheckpoint         # the base checkpoint with this mask net and head
    base_checkpoint: Path
    saved_to: Path | None
    history: list[dict] = field(default_factory=list)   # per epoch: loss, ce, div, sep, accuracy


def served_mask_engine(client: FerClient, layout):
    """The :class:`~fer_triton.export.gpu.ServedEngine` of the mask net ``client``'s server has loaded (on
    a GPU host: the ``--model-config-name`` variant), or None when its config cannot be read."""
    from tritonclient.utils import InferenceServerException

    from fer_triton.export.gpu import ServedEngine

    try:
        cfg = client.triton.get_model_config(layout.stages["mask_net"], headers=client.headers, as_json=True)
    except InferenceServerException:
        return None
    return ServedEngine.from_config(cfg["config"])


def check_layout(meta: dict, model: str, mask_engine=None) -> None:
    """Only the staged FP32 layout has a mask-net model of its own to publish a version of
    (``meta``: the served ensemble's fer_triton metadata), and only an engine that loads a new
    model.onnx by itself can serve it (``mask_engine``: the served mask net's ServedEngine, see
    :func:`served_mask_engine`).

    A server on the ``tensorrt`` variant runs ``model.plan`` files that only ``fer-triton build-trt`` on
    the serving host makes: a new version M+1 with only its model.onnx would fail to load, so this
    refuses before any work. Raises MaskFineTuneError naming what to do instead.
    """
    if meta.get("layout", "staged") != "staged" or meta.get("precision", "fp32") != "fp32":
        raise MaskFineTuneError(
            f"the server's '{model}' runs the {meta.get('layout')} layout at {meta.get('precision')} "
            "precision; --fine-tune-mask publishes a new FP32 mask-net version and needs the staged FP32 layout. "
            "Fine-tune with --no-publish --fine-tune-mask (it saves the fine-tuned checkpoint) and export that "
            "checkpoint with `fer-triton export` instead")
    if mask_engine is not None and mask_engine.engine == "tensorrt_plan":
        raise MaskFineTuneError(
            f"the server's '{model}' runs the mask net as a TensorRT plan (--model-config-name=tensorrt*): a new "
            "mask-net version needs its model.plan built on the serving host, which retrain cannot do, and Triton "
            "would fail to load it. Fine-tune with --no-publish --fine-tune-mask, export the saved checkpoint, run "
            "`fer-triton build-trt` on the serving host, or serve the gpu / gpu_trt variant to publish mask nets")


def resolve_checkpoint(option: Path | None, client: FerClient, masks: StageVersions, serving: int) -> Path:
    """The checkpoint to start from: the given one, else the one recorded for the served mask-net
    version (by a previous fine-tune), else the one the repository was exported from."""
    if option is not None:
        return Path(option)
    recorded = masks.info(serving).get("checkpoint")
    where = f"{masks.name} version {serving}'s mask_info.json"
    if not recorded:
        recorded = client.info().metadata.get("checkpoint")
        where = f"the export metadata of '{client.model}'"
    if not recorded or not Path(recorded).is_file():
        raise MaskFineTuneError(
            f"--fine-tune-mask needs the trained checkpoint the served {masks.name} version {serving} came from; "
            + (f"{where} names {recorded}, which is not on this machine" if recorded else "none is recorded")
            + ": pass --checkpoint PATH")
    return Path(recorded)


def load_mask_net(path: Path) -> tuple[CAFECheckpoint, MaskNet]:
    try:
        ckpt = CAFECheckpoint.load(path)
        net = MaskNet()
        net.load_state_dict(ckpt.mask_net)
    except (CheckpointError, RuntimeError, KeyError) as exc:
        raise MaskFineTuneError(f"cannot load the mask net from {path}: {exc}") from exc
    return ckpt, net.eval()


def mask_logits(net: MaskNet, faces: np.ndarray, preprocess: Preprocess, *, batch_size: int = 32,
                device: torch.device = torch.device("cpu")) -> np.ndarray:
    """The mask net's logits FP32 [N, 512] for UINT8 faces [N, S, S, 3], in eval mode (as served).

    ``preprocess``: the checkpoint's (``Preprocess.from_config(checkpoint.preprocess)``).
    """
    preprocess = preprocess.cpu_copy().to(device)
    net = net.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(faces), batch_size):
            pixels = preprocess(torch.from_numpy(faces[start:start + batch_size]).to(device))
            out.append(net(pixels).cpu().numpy())
    return np.concatenate(out)


def check_matches_served(net: MaskNet, faces: np.ndarray, onnx_path: Path, atol: float, source: Path,
                         preprocess: Preprocess) -> float:
    """Max |diff| between the checkpoint mask net and the served graph on ``faces``; raises above ``atol``.

    Both run on the pixels of ``preprocess`` (the checkpoint's), so a checkpoint whose preprocessing
    differs from the served one's fails here too.
    """
    import onnxruntime as ort

    if not onnx_path.is_file():
        raise MaskFineTuneError(f"{onnx_path} is missing: the served mask net cannot be compared with {source}")
    with torch.no_grad():
        pixels = preprocess(torch.from_numpy(faces)).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (served,) = session.run(["mask_logits"], {"pixels": pixels})
    diff = float(np.abs(served - mask_logits(net, faces, preprocess)).max())
    if diff > atol:
        raise MaskFineTuneError(
            f"the mask net in {source} is not the served one ({onnx_path}): mask logits differ by {diff:.3g} "
            f"(> {atol:g}); pass --checkpoint with the checkpoint that version was exported or fine-tuned from")
    return diff


def _gate(logits: np.ndarray) -> np.ndarray:
    """sigmoid(mask logits): the per-channel factor the head applies to the CLIP features."""
    return 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))


def recover_clip_features(masked_features: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """CLIP features from masked features and the mask logits that produced them (logits >= 0)."""
    return (masked_features.astype(np.float64) / _gate(logits)).astype(np.float32)


def _noisy(faces: torch.Tensor, p: float = 0.5, std: float = math.sqrt(30)) -> torch.Tensor:
    """Per image with probability p: uint8 + N(0, std^2), clipped and truncated (the paper's add_g)."""
    x = faces.to(torch.float32)
    noise = torch.randn_like(x) * std
    pick = (torch.rand(len(x), device=x.device) < p).view(-1, 1, 1, 1)
    return torch.where(pick, (x + noise).clamp(0, 255).floor(), x)


def fine_tune_mask(net: MaskNet, base: CAFECheckpoint, base_path: Path, faces: np.ndarray,
                   served_masked: np.ndarray, labels: np.ndarray, train: np.ndarray, start_head: LinearHead,
                   options: MaskFineTuneOptions, *, l2: float = 1e-2, seed: int = 0,
                   progress: bool = False) -> FineTunedMask:
    """Fine-tune ``net`` (the served mask net) and a head on ``faces[train]``; see the module docstring."""
    from torchvision import transforms
    from tqdm import tqdm

    options.validate()
    device = options.torch_device()
    started = time.perf_counter()
    tuned = copy.deepcopy(net)  # mask_logits moves it to the device
    base_preprocess = Preprocess.from_config(base.preprocess)
    clip = recover_clip_features(served_masked, mask_logits(tuned, faces, base_preprocess,
                                                            batch_size=options.batch_size, device=device))

    torch.manual_seed(seed)
    tuned.train()
    head = start_head.to_module().to(device)
    optimizer = torch.optim.Adam(list(tuned.parameters()) + list(head.parameters()), lr=options.lr,
                                 weight_decay=options.weight_decay)
    preprocess = base_preprocess.cpu_copy().to(device)
    erase = transforms.RandomErasing(p=0.5, scale=(0.02, 0.25))
    drop_rng = torch.Generator().manual_seed(seed)
    clip_t = torch.from_numpy(clip).to(device)
    labels_t = torch.from_numpy(np.asarray(labels, np.int64)).to(device)
    history = []
    steps_per_epoch = math.ceil(len(train) / options.batch_size)
    bar = tqdm(total=options.epochs * steps_per_epoch, desc="fine-tune mask net", disable=not progress, leave=False)
    for epoch in range(1, options.epochs + 1):
        order = train[torch.randperm(len(train)).numpy()]
        sums = {"loss": 0.0, "ce": 0.0, "div": 0.0, "sep": 0.0}
        correct = 0
        for start in range(0, len(order), options.batch_size):
            index = order[start:start + options.batch_size]
            if len(index) < 2:  # batch norm needs two images; the one left over joins the next epoch
                continue
            faces_t = torch.from_numpy(faces[index]).to(device)
            pixels = preprocess(_noisy(faces_t) if options.augment else faces_t)
            if options.augment:
                pixels = torch.stack([erase(p) for p in pixels])
            masked, logits, _ = head(clip_t[index], tuned(pixels))
            drop = losses.channel_drop_mask(masked.shape[1], logits.shape[1], generator=drop_rng).to(device)
            terms = losses.cafe_loss(logits, masked, labels_t[index], drop)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            for k, v in terms.as_floats().items():
                sums[k] += v * len(index)
            correct += int((logits.argmax(1) == labels_t[index]).sum())
            bar.update(1)
        record = {"epoch": epoch, **{k: v / len(order) for k, v in sums.items()}, "accuracy": correct / len(order)}
        history.append(record)
        log.info("mask fine-tune epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in record.items()))
    bar.close()

    masked = (clip * _gate(mask_logits(tuned, faces, base_preprocess, batch_size=options.batch_size,
                                              device=device))).astype(np.float32)
    tuned = tuned.cpu().eval()
    joint = LinearHead(head.fc.weight.detach().cpu().numpy(), head.fc.bias.detach().cpu().numpy())
    new_head = fit_head(masked[train], labels[train], l2=l2, init=joint, seed=seed)

    checkpoint = copy.copy(base)
    checkpoint.mask_net = {k: v.detach().clone() for k, v in tuned.state_dict().items()}
    checkpoint.head = new_head.to_module().state_dict()
    checkpoint.meta = {**base.meta, "fine_tuned_mask_net": {
        "from": str(Path(base_path).resolve()), "site_images": int(len(train)), "epochs": options.epochs,
        "lr": options.lr, "augment": options.augment, "history": history}}
    saved = checkpoint.save(options.save_checkpoint).resolve() if options.save_checkpoint else None
    log.info("mask net fine-tuned in %.1f s on %s", time.perf_counter() - started, device)
    return FineTunedMask(tuned, new_head, masked, checkpoint, Path(base_path), saved, history)
