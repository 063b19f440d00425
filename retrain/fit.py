"""Fit a new Linear(512, 7) head on a site's masked features (seconds on a CPU).

Class-balanced cross-entropy + an L2 pull towards a starting head (zeros, the serving head, or a
zero-shot text head), solved full-batch with L-BFGS on standardised features; the result is folded
back into plain weights for the unstandardised masked features the ensemble produces.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from fer_triton.labels import NUM_CLASSES
from fer_triton.model import Head


@dataclass
class LinearHead:
    """logits = masked_features @ weight.T + bias (what cafe_head's Linear(512, 7) computes)."""

    weight: np.ndarray   # FP32 [7, 512]
    bias: np.ndarray     # FP32 [7]

    def __post_init__(self):
        self.weight = np.asarray(self.weight, np.float32)
        self.bias = np.asarray(self.bias, np.float32)
        if self.weight.ndim != 2 or self.bias.shape != (self.weight.shape[0],):
            raise ValueError(f"head weight [C, D] and bias [C] do not fit: {self.weight.shape}, {self.bias.shape}")

    @classmethod
    def zeros(cls, in_features: int = 512, num_classes: int = NUM_CLASSES) -> "LinearHead":
        return cls(np.zeros((num_classes, in_features), np.float32), np.zeros(num_classes, np.float32))

    def logits(self, features: np.ndarray) -> np.ndarray:
        return features.astype(np.float32) @ self.weight.T + self.bias

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        z = self.logits(features)
        z = np.exp(z - z.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features).argmax(axis=1)

    def to_module(self) -> Head:
        """The same weights as the model's torch ``Head`` (what ONNX export and checkpoints take)."""
        module = Head(in_features=self.weight.shape[1], num_classes=self.weight.shape[0])
        with torch.no_grad():
            module.fc.weight.copy_(torch.from_numpy(self.weight))
            module.fc.bias.copy_(torch.from_numpy(self.bias))
        return module


def class_weights(labels: np.ndarray, num_classes: int = NUM_CLASSES) -> np.ndarray:
    """Inverse-frequency weights (mean 1 over the classes present); absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return weights


def fit_head(features: np.ndarray, labels: np.ndarray, *, l2: float = 1e-2, init: LinearHead | None = None,
             balance: bool = True, max_iter: int = 100, seed: int = 0) -> LinearHead:
    """Train a linear head on ``features`` [N, D] with RAF-DB ``labels`` [N].

    ``l2`` pulls the (standardised) weights towards ``init`` (zeros when None): small site data
    then stays close to the starting head instead of memorising the few images.
    """
    if len(features) != len(labels) or len(features) == 0:
        raise ValueError(f"need as many labels as feature rows (>0), got {len(features)} and {len(labels)}")
    if l2 < 0:
        raise ValueError(f"l2 must be >= 0, not {l2}")
    torch.manual_seed(seed)
    x = torch.from_numpy(np.asarray(features, np.float64))
    y = torch.from_numpy(np.asarray(labels, np.int64))
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    init = init or LinearHead.zeros(features.shape[1])
    # In standardised space the starting head is W0 * std, b0 + W0 @ mean.
    w0 = torch.from_numpy(init.weight.astype(np.float64)) * std
    b0 = torch.from_numpy(init.bias.astype(np.float64)) + torch.from_numpy(init.weight.astype(np.float64)) @ mean
    w = w0.clone().requires_grad_(True)
    b = b0.clone().requires_grad_(True)
    weights = torch.from_numpy(class_weights(labels, w.shape[0]) if balance else np.ones(w.shape[0]))
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y, weight=weights) + 0.5 * l2 * ((w - w0) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        weight = w / std
        bias = b - weight @ mean
    return LinearHead(weight.numpy(), bias.numpy())
