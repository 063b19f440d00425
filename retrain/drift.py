"""Has a site drifted away from what the serving head was fitted on? Three statistics, each with a limit.

A reference (``drift_reference.npz``) summarises the masked features and predictions at one moment:
``fer-triton retrain`` writes one into every head version it publishes (the site data it was fitted
on, predicted by the new head), and ``fer-triton drift --write-reference`` makes one from a folder of
images or JSON Lines. A recent sample is then compared with it:

- feature_shift: mean over the 512 channels of |recent mean - reference mean| / reference std
  (in reference standard deviations; needs masked features: images, or JSON Lines that carry them);
- label_js: Jensen-Shannon divergence (base 2, 0..1) between the predicted-label distributions;
- confidence_drop: reference mean max-probability minus the recent one.

A retrain is advised when any statistic passes its limit; the report says which and by how much.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fer_triton.labels import CLASSES

log = logging.getLogger(__name__)

REFERENCE_FILE = "drift_reference.npz"
DEFAULT_LIMITS = {"feature_shift": 0.5, "label_js": 0.1, "confidence_drop": 0.1}
MIN_SAMPLE = 10


class DriftError(ValueError):
    """Drift cannot be computed from what was given; the message says what was wrong."""


@dataclass
class SiteSample:
    """Recent outputs of the served model: probabilities [N,7] and, when known, masked features [M,512]."""

    probabilities: np.ndarray
    masked_features: np.ndarray | None = None
    skipped: int = 0            # JSON Lines without a result (errors, events), or unreadable image files

    def __post_init__(self):
        if self.probabilities.ndim != 2 or self.probabilities.shape[1] != len(CLASSES):
            raise DriftError(f"probabilities must be [N, {len(CLASSES)}], got {list(self.probabilities.shape)}")


@dataclass
class DriftReference:
    feature_mean: np.ndarray
    feature_std: np.ndarray
    label_distribution: np.ndarray
    mean_max_probability: float
    count: int
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_sample(cls, sample: SiteSample, **meta) -> "DriftReference":
        if sample.masked_features is None or len(sample.masked_features) < MIN_SAMPLE:
            raise DriftError(f"a reference needs masked features of at least {MIN_SAMPLE} faces "
                             "(a folder of images, or JSON Lines carrying masked_features)")
        f = sample.masked_features.astype(np.float64)
        return cls(f.mean(0), f.std(0), label_distribution(sample.probabilities),
                   float(sample.probabilities.max(axis=1).mean()), len(f),
                   {"created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **meta})

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            np.savez(fh, feature_mean=self.feature_mean, feature_std=self.feature_std,
                     label_distribution=self.label_distribution,
                     mean_max_probability=self.mean_max_probability, count=self.count,
                     meta=json.dumps(self.meta, default=str))
        return path

    @classmethod
    def load(cls, path: Path) -> "DriftReference":
        path = Path(path)
        if not path.is_file():
            raise DriftError(f"no drift reference at {path}: create one with `fer-triton drift --write-reference` "
                             "or publish a head with `fer-triton retrain`")
        try:
            with np.load(path, allow_pickle=False) as z:
                return cls(z["feature_mean"], z["feature_std"], z["label_distribution"],
                           float(z["mean_max_probability"]), int(z["count"]), json.loads(str(z["meta"])))
        except (OSError, KeyError, ValueError) as exc:
            raise DriftError(f"{path} is not a drift reference: {exc}") from exc


def label_distribution(probabilities: np.ndarray) -> np.ndarray:
    """Share of each predicted class (argmax), smoothed so that the divergence stays finite."""
    counts = np.bincount(probabilities.argmax(axis=1), minlength=len(CLASSES)).astype(np.float64) + 0.5
    return counts / counts.sum()


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0 = same distribution, 1 = disjoint)."""
    m = 0.5 * (p + q)
    kl = lambda a, b: float(np.sum(a * np.log2(a / b)))  # noqa: E731  (a, b > 0 after smoothing)
    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


@dataclass
class DriftStatistic:
    name: str
    value: float | None          # None: not computable from this sample (e.g. no features)
    limit: float
    meaning: str

    @property
    def exceeded(self) -> bool:
        return self.value is not None and self.value > self.limit

    @property
    def times_limit(self) -> float | None:
        return None if self.value is None else self.value / self.limit


@dataclass
class DriftReport:
    statistics: list[DriftStatistic]
    sample_size: int
    reference_size: int
    features_compared: int

    @property
    def retrain_advised(self) -> bool:
        return any(s.exceeded for s in self.statistics)

    @property
    def reasons(self) -> list[str]:
        return [f"{s.name} {s.value:.3f} > limit {s.limit:g} ({s.times_limit:.1f}x)" for s in self.statistics
                if s.exceeded]

    def as_dict(self) -> dict:
        return {"retrain_advised": self.retrain_advised, "reasons": self.reasons, "sample_size": self.sample_size,
                "reference_size": self.reference_size, "features_compared": self.features_compared,
                "statistics": [asdict(s) | {"exceeded": s.exceeded} for s in self.statistics]}


def check_drift(reference: DriftReference, sample: SiteSample, limits: dict[str, float] | None = None) -> DriftReport:
    """Compare recent results with the reference a retrain wrote; say whether a retrain is advised.

    Statistics (each against its limit in ``limits``, defaults in DEFAULT_LIMITS):
    ``feature_shift``: mean over the 512 channels of |mean_sample - mean_reference| / std_reference of
    the masked features (in reference standard deviations; needs features in the sample);
    ``label_js``: Jensen-Shannon divergence (bits, 0..1) of the predicted-class shares;
    ``confidence_drop``: fall in the mean top-class probability (0..1).
    ``sample.probabilities``: FP32 [N, 7], N >= MIN_SAMPLE; ``sample.masked_features``: FP32 [N, 512]
    or None. Raises DriftError for an unknown statistic, too small a sample or mismatched channels.
    """
    limits = {**DEFAULT_LIMITS, **(limits or {})}
    unknown = set(limits) - set(DEFAULT_LIMITS)
    if unknown:
        raise DriftError(f"unknown drift statistic(s) {sorted(unknown)}; known: {sorted(DEFAULT_LIMITS)}")
    if len(sample.probabilities) < MIN_SAMPLE:
        raise DriftError(f"only {len(sample.probabilities)} recent result(s): need at least {MIN_SAMPLE} "
                         "for a meaningful drift check")
    shift = None
    n_features = 0 if sample.masked_features is None else len(sample.masked_features)
    if n_features:
        if sample.masked_features.shape[1] != len(reference.feature_mean):
            raise DriftError(f"masked features have {sample.masked_features.shape[1]} channels, the reference "
                             f"{len(reference.feature_mean)}")
        std = np.maximum(reference.feature_std, 1e-6)
        shift = float(np.mean(np.abs(sample.masked_features.mean(0) - reference.feature_mean) / std))
    stats = [
        DriftStatistic("feature_shift", shift, limits["feature_shift"],
                       "mean |shift| of the 512 masked-feature channel means, in reference standard deviations"),
        DriftStatistic("label_js", js_divergence(label_distribution(sample.probabilities),
                                                 reference.label_distribution), limits["label_js"],
                       "Jensen-Shannon divergence (bits) of the predicted-label distribution"),
        DriftStatistic("confidence_drop", reference.mean_max_probability - float(sample.probabilities.max(1).mean()),
                       limits["confidence_drop"], "drop of the mean top-class probability"),
    ]
    return DriftReport(stats, len(sample.probabilities), reference.count, n_features)


def read_jsonl(path: Path, classes: tuple[str, ...] = CLASSES, site: str | None = None) -> SiteSample:
    """Results from JSON Lines (``fer-triton infer --json``, the stream client): lines with
    ``probabilities`` (a {class: p} object or a list of 7) count, optionally ``masked_features``
    (a list of 512); lines without probabilities (errors, events) are skipped and counted.

    ``site``: only lines of that site count (``"site": NAME``, as the stream client writes for cameras
    mapped to a site); None: only lines without a site (the base model's). Others are skipped and counted.
    """
    path = Path(path)
    if not path.is_file():
        raise DriftError(f"JSON Lines file not found: {path}")
    probs, feats, skipped = [], [], 0
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DriftError(f"{path} line {number}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict) or "probabilities" not in row or (row.get("site") or None) != site:
            skipped += 1
            continue
        p = row["probabilities"]
        if isinstance(p, dict):
            missing = [c for c in classes if c not in p]
            if missing:
                raise DriftError(f"{path} line {number}: probabilities lack class(es) {missing}")
            p = [p[c] for c in classes]
        if not isinstance(p, list) or len(p) != len(classes):
            raise DriftError(f"{path} line {number}: probabilities must be {len(classes)} numbers or a "
                             f"{{class: p}} object")
        probs.append(p)
        if "masked_features" in row:
            feats.append(row["masked_features"])
    if not probs:
        whose = f" of site '{site}'" if site else " without a site"
        raise DriftError(f"{path} holds no result lines{whose} (lines with 'probabilities'); {skipped} other line(s)")
    features = None
    if feats:
        lengths = {len(f) for f in feats}
        if len(lengths) != 1:
            raise DriftError(f"{path}: masked_features have different lengths {sorted(lengths)}")
        features = np.asarray(feats, np.float64)
    return SiteSample(np.asarray(probs, np.float64), features, skipped)


def sample_from_images(client, images: list[Path], *, batch_size: int = 32, progress: bool = True) -> SiteSample:
    """Send face images (files or folders) through the served ensemble.

    Each unreadable file is logged by name ("skipped <file>: <reason>") and counted in
    ``SiteSample.skipped``; the others are used. Raises DriftError when no image is found or none reads.
    """
    from fer_triton.images import ImageReadError, list_images, read_face
    from fer_triton.retrain.features import extract_features

    paths = list_images(list(images))
    if not paths:
        raise DriftError(f"no images found in {', '.join(map(str, images))}")
    size = client.info().wire_size
    faces, bad = [], []
    for path in paths:
        try:
            faces.append(read_face(path, size))
        except ImageReadError as exc:
            log.warning("skipped %s", exc)
            bad.append(str(exc))
    if not faces:
        raise DriftError(f"none of the {len(paths)} image(s) can be read:\n  " + "\n  ".join(bad[:20]))
    out = extract_features(client, np.stack(faces), batch_size=batch_size, progress=progress, description="drift")
    return SiteSample(out.probabilities, out.masked_features, len(bad))
