"""Train CAFE with the paper's recipe (every number overridable through TrainConfig).

Frozen CLIP; trained ResNet-18 mask network + Linear(512, 7) head; loss CE + 5 L_div + 1.5 L_sep
with a fresh channel-drop mask each step; Adam (lr 2e-4, weight decay 1e-4); ExponentialLR 0.9 per
epoch; 60 epochs of batch 32; seed 3407; the official augmentation.

Writes into the output folder:
    last.pt   CAFE checkpoint after the latest finished epoch (what ``resume`` continues from)
    best.pt   the epoch with the best validation accuracy (only when a validation set is given)
    final.pt  the checkpoint after the last epoch
    state.pt  optimizer, scheduler, RNG and history, for resume
    history.json  one record per epoch
All checkpoints are in ``fer_triton.checkpoint.CAFECheckpoint`` format (``fer-triton export`` reads them).
"""

from __future__ import annotations

import json
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from fer_triton import clip_loader
from fer_triton.checkpoint import CAFECheckpoint, build_untrained
from fer_triton.devices import resolve_device
from fer_triton.files import atomic_write
from fer_triton.train import losses
from fer_triton.train.augment import make_augment
from fer_triton.train.datasets import FaceDataset, TorchFaces
from fer_triton.train.evaluate import predict_pytorch, result_of
from fer_triton.train.feature_cache import ClipFeatureCache, cached_clip_features

log = logging.getLogger(__name__)

# Settings that change what is learned: a resumed run must keep them (epochs may grow).
RECIPE_KEYS = ("batch_size", "lr", "weight_decay", "lr_gamma", "seed", "div_weight", "sep_weight", "group_size",
               "drop_per_block", "augment", "cache_clip_features", "clip_model", "clip_weights", "mask_init")


class TrainingError(RuntimeError):
    """A run cannot start or resume (existing run, missing state, changed recipe...)."""


@dataclass
class TrainConfig:
    epochs: int = 60
    batch_size: int = 32
    lr: float = 2e-4
    weight_decay: float = 1e-4
    lr_gamma: float = 0.9
    seed: int = 3407
    div_weight: float = losses.DIV_WEIGHT
    sep_weight: float = losses.SEP_WEIGHT
    group_size: int = losses.GROUP_SIZE
    drop_per_block: int = losses.DROP_PER_BLOCK
    augment: str = "paper"                    # "paper" or "none"
    cache_clip_features: bool = False          # with "paper": CLIP sees clean/flipped images (approximation)
    clip_model: str = clip_loader.DEFAULT_CLIP_MODEL
    clip_weights: str | None = clip_loader.DEFAULT_CLIP_PRETRAINED  # "openai", a local file, None = random
    mask_init: str = "random"                  # "random", "imagenet", "msceleb:<path>" (the paper's)
    embed_clip: bool = False                   # store CLIP weights inside the checkpoints
    workers: int = 2
    device: str = "auto"                       # "auto" (CUDA when available), "cpu", "cuda", "cuda:1"...
    max_steps_per_epoch: int | None = None     # for smoke tests; None = whole epoch
    eval_batch_size: int = 64

    def validate(self) -> None:
        for key in ("epochs", "batch_size", "group_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be at least 1, not {getattr(self, key)}")
        if self.lr <= 0 or not 0 < self.lr_gamma <= 1 or self.weight_decay < 0:
            raise ValueError(f"need lr > 0, 0 < lr_gamma <= 1, weight_decay >= 0 (got {self.lr}, "
                             f"{self.lr_gamma}, {self.weight_decay})")
        if self.augment not in ("paper", "none"):
            raise ValueError(f"augment must be 'paper' or 'none', not {self.augment!r}")
        if self.max_steps_per_epoch is not None and self.max_steps_per_epoch < 1:
            raise ValueError("max_steps_per_epoch must be at least 1")
        self.torch_device()

    def torch_device(self) -> torch.device:
        return resolve_device(self.device)

    @property
    def clip_features_path(self) -> str:
        """How CLIP features are obtained during training, in words."""
        if self.augment == "none":
            return "cached per image (no augmentation: exact)"
        if self.cache_clip_features:
            return ("cached per image and flip (approximation: CLIP sees clean images, the mask network "
                    "sees noise and erasing)")
        return "computed on every augmented image at every step (paper recipe)"


@dataclass
class EpochRecord:
    epoch: int
    lr: float
    loss: float
    ce: float
    div: float
    sep: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float
    best: bool = False


@dataclass
class TrainResult:
    output: Path
    final: Path
    best: Path | None
    history: list[EpochRecord] = field(default_factory=list)


def _dataset_meta(dataset: FaceDataset | None) -> dict | None:
    if dataset is None:
        return None
    return {"name": dataset.name, "kind": dataset.kind, "path": str(dataset.root), "split": dataset.split,
            "images": len(dataset), "class_counts": dataset.class_counts(), "skipped": dataset.skipped}


class Trainer:
    def __init__(self, config: TrainConfig, train_set: FaceDataset, output: str | Path,
                 val_set: FaceDataset | None = None, *, cache_dir: str | Path | None = None, progress: bool = True,
                 on_epoch: Callable[[EpochRecord], None] | None = None):
        config.validate()
        self.config, self.train_set, self.val_set = config, train_set, val_set
        self.output = Path(output)
        self.cache_dir = cache_dir
        self.progress = progress
        self.on_epoch = on_epoch or (lambda r: None)
        self.history: list[EpochRecord] = []
        self.best_accuracy = -1.0
        self.start_epoch = 0

    # -- setup -------------------------------------------------------------------------------
    def _build(self, resume: bool) -> None:
        cfg = self.config
        state_path = self.output / "state.pt"
        if resume:
            if not state_path.is_file() or not (self.output / "last.pt").is_file():
                raise TrainingError(f"nothing to resume in {self.output}: no state.pt / last.pt")
            state = torch.load(state_path, map_location="cpu", weights_only=False)
            changed = {k: (state["config"].get(k), getattr(cfg, k)) for k in RECIPE_KEYS
                       if state["config"].get(k) != getattr(cfg, k)}
            if changed:
                raise TrainingError("cannot resume with a different recipe: " + ", ".join(
                    f"{k} was {old!r}, now {new!r}" for k, (old, new) in changed.items()))
            self.model = CAFECheckpoint.load(self.output / "last.pt").build_model()
        elif state_path.exists():
            raise TrainingError(f"{self.output} already holds a training run: pass resume to continue it, "
                                "or choose another output folder")
        else:
            with warnings.catch_warnings():
                if cfg.clip_weights is None:
                    warnings.simplefilter("ignore")  # the CLI says so loudly instead
                self.model, _ = build_untrained(cfg.clip_model, cfg.clip_weights, mask_net_init=cfg.mask_init,
                                                seed=cfg.seed)
        self.device = cfg.torch_device()
        self.model.to(self.device)
        params = list(self.model.mask_net.parameters()) + list(self.model.head.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ExponentialLR(self.optimizer, gamma=cfg.lr_gamma)
        if resume:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_epoch = state["epoch"]
            self.best_accuracy = state["best_accuracy"]
            self.history = [EpochRecord(**r) for r in state["history"]]
            self._rng_state = state["torch_rng"]
        else:
            self.output.mkdir(parents=True, exist_ok=True)
            self._rng_state = None

    def _clip_caches(self) -> tuple[ClipFeatureCache | None, ClipFeatureCache | None]:
        cfg, encoder = self.config, self.model.clip
        common = dict(batch_size=cfg.eval_batch_size, workers=cfg.workers, progress=self.progress,
                      preprocess=self.model.preprocess.cpu_copy())
        train_cache = None
        if cfg.augment == "none" or cfg.cache_clip_features:
            train_cache = cached_clip_features(encoder, self.train_set, self.cache_dir,
                                               flips=cfg.augment == "paper", **common)
        val_cache = (cached_clip_features(encoder, self.val_set, self.cache_dir, **common)
                     if self.val_set is not None else None)
        return train_cache, val_cache

    # -- the loop ----------------------------------------------------------------------------
    def run(self, resume: bool = False) -> TrainResult:
        cfg = self.config
        self._build(resume)
        if self.start_epoch >= cfg.epochs:
            raise TrainingError(f"{self.output} already finished {self.start_epoch} epochs; "
                                f"ask for more than {self.start_epoch} to continue")
        (self.output / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
        train_cache, val_cache = self._clip_caches()
        # Seed (or restore) the RNG only now: building the caches draws from it.
        if self._rng_state is not None:
            torch.set_rng_state(self._rng_state)
        else:
            torch.manual_seed(cfg.seed)
        dataset = TorchFaces(self.train_set, make_augment(cfg.augment, self.model.preprocess.cpu_copy()))
        for epoch in range(self.start_epoch + 1, cfg.epochs + 1):
            started = time.perf_counter()
            # Shuffling, worker RNG and drop masks depend only on (seed, epoch): a resumed run repeats them.
            loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.workers,
                                generator=torch.Generator().manual_seed(cfg.seed + epoch),
                                persistent_workers=False)
            drop_rng = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
            lr = self.optimizer.param_groups[0]["lr"]
            sums, correct, seen = self._train_epoch(epoch, loader, train_cache, drop_rng)
            self.scheduler.step()
            val_acc = None
            if self.val_set is not None:
                probs = predict_pytorch(self.model, self.val_set, clip_cache=val_cache,
                                        batch_size=cfg.eval_batch_size, workers=cfg.workers, progress=self.progress)
                val_acc = result_of(self.val_set, probs).accuracy
            steps = max(1, sums.pop("steps"))
            record = EpochRecord(epoch, lr, *(sums[k] / steps for k in ("loss", "ce", "div", "sep")),
                                 correct / max(1, seen), val_acc, time.perf_counter() - started)
            if val_acc is not None and val_acc > self.best_accuracy:
                self.best_accuracy, record.best = val_acc, True
            self.history.append(record)
            self._save(epoch, record)
            self.on_epoch(record)
        final = self.output / "final.pt"
        self._checkpoint(self.history[-1], "final").save(final)
        best = self.output / "best.pt"
        return TrainResult(self.output, final, best if best.is_file() else None, self.history)

    def _train_epoch(self, epoch: int, loader: DataLoader, cache: ClipFeatureCache | None,
                     drop_rng: torch.Generator) -> tuple[dict, int, int]:
        cfg = self.config
        self.model.train()
        sums = {"loss": 0.0, "ce": 0.0, "div": 0.0, "sep": 0.0, "steps": 0}
        correct = seen = 0
        total = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
        bar = tqdm(loader, total=total, desc=f"epoch {epoch}/{cfg.epochs}", disable=not self.progress, leave=False)
        for step, (pixels, labels, index, flipped) in enumerate(bar):
            if step >= total:
                break
            pixels, labels = pixels.to(self.device), labels.to(self.device)
            clip = cache.lookup(index, flipped).to(self.device) if cache is not None else None
            out = self.model(pixels, clip_features=clip)
            drop = losses.channel_drop_mask(out.masked_features.shape[1], out.logits.shape[1], cfg.group_size,
                                            cfg.drop_per_block, generator=drop_rng)
            terms = losses.cafe_loss(out.logits, out.masked_features, labels, drop, div_weight=cfg.div_weight,
                                     sep_weight=cfg.sep_weight, group_size=cfg.group_size)
            self.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            self.optimizer.step()
            for k, v in terms.as_floats().items():
                sums[k] += v
            sums["steps"] += 1
            correct += int((out.logits.argmax(1) == labels).sum())
            seen += len(labels)
            bar.set_postfix(loss=f"{sums['loss'] / sums['steps']:.3f}", acc=f"{correct / seen:.3f}")
        bar.close()
        return sums, correct, seen

    # -- saving ------------------------------------------------------------------------------
    def _checkpoint(self, record: EpochRecord, role: str) -> CAFECheckpoint:
        cfg = self.config
        recipe = asdict(cfg)
        meta = {
            "trained": True,
            "role": role,
            "recipe": recipe,
            "clip_features": cfg.clip_features_path,
            "dataset": _dataset_meta(self.train_set),
            "validation": _dataset_meta(self.val_set),
            "epochs": record.epoch,
            "metrics": {"train_loss": record.loss, "train_accuracy": record.train_accuracy,
                        "val_accuracy": record.val_accuracy,
                        "best_val_accuracy": self.best_accuracy if self.best_accuracy >= 0 else None},
            "source": "fer-triton train",
        }
        ckpt = CAFECheckpoint.from_model(self.model, clip_model=cfg.clip_model, clip_pretrained=cfg.clip_weights,
                                         mask_net_init=cfg.mask_init, meta=meta, embed_clip=cfg.embed_clip)
        # Checkpoints always hold CPU tensors, whatever device trained them.
        ckpt.mask_net = {k: v.cpu() for k, v in ckpt.mask_net.items()}
        ckpt.head = {k: v.cpu() for k, v in ckpt.head.items()}
        if ckpt.clip_state_dict is not None:
            ckpt.clip_state_dict = {k: v.cpu() for k, v in ckpt.clip_state_dict.items()}
        return ckpt

    def _save(self, epoch: int, record: EpochRecord) -> None:
        self._checkpoint(record, "last").save(self.output / "last.pt")
        if record.best:
            self._checkpoint(record, "best").save(self.output / "best.pt")
        state = {
            "config": asdict(self.config),
            "epoch": epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best_accuracy": self.best_accuracy,
            "history": [asdict(r) for r in self.history],
            "torch_rng": torch.get_rng_state(),
        }
        atomic_write(self.output / "state.pt", lambda tmp: torch.save(state, tmp))
        (self.output / "history.json").write_text(json.dumps([asdict(r) for r in self.history], indent=2))


def train(config: TrainConfig, train_set: FaceDataset, output: str | Path, val_set: FaceDataset | None = None,
          *, resume: bool = False, cache_dir: str | Path | None = None, progress: bool = True,
          on_epoch: Callable[[EpochRecord], None] | None = None) -> TrainResult:
    """Train (or resume) a CAFE model; see the module docstring for what is written."""
    return Trainer(config, train_set, output, val_set, cache_dir=cache_dir, progress=progress,
                   on_epoch=on_epoch).run(resume)
