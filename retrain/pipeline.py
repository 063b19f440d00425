"""`fer-triton retrain` as one library call: site data -> features via the server -> fit -> compare ->
publish (or refuse) -> report. Nothing on the server or in the repository changes before the
comparison says the new head is not worse (or ``force`` is given).

With ``site``, the head fitted is that site's own (retrain/sites.py): features and the serving
outputs come through the ``<prefix>_sites`` ensemble for that site, and the new head is published as
the site's next version in ``<prefix>_site_head``; the base head and every other site are untouched."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fer_triton import __version__
from fer_triton.client import FerClient
from fer_triton.export.precision import check_published, served_precision
from fer_triton.export.repository import RepositoryLayout
from fer_triton.model import Preprocess
from fer_triton.retrain.compare import Comparison, compare_heads
from fer_triton.retrain.drift import MIN_SAMPLE, REFERENCE_FILE, DriftReference, SiteSample
from fer_triton.retrain.features import extract_features
from fer_triton.retrain.fit import LinearHead, fit_head
from fer_triton.retrain.mask_finetune import (FineTunedMask, MaskFineTuneOptions, check_layout, check_matches_served,
                                              fine_tune_mask, load_mask_net, resolve_checkpoint, served_mask_engine)
from fer_triton.retrain.publish import PublishError, StageVersions, check_serving, publish_head, read_head
from fer_triton.retrain.replicas import Fleet
from fer_triton.retrain.report import write_report
from fer_triton.retrain.site_data import holdout_split, read_site
from fer_triton.retrain.sites import SiteError, Sites, check_site_name

log = logging.getLogger(__name__)

INITS = ("zeros", "serving", "zero-shot")
MASK_WITH_SITE = ("--fine-tune-mask cannot be used with --site: the mask net is shared by every site and the base "
                  "model, so a site cannot have one of its own. Fine-tune it for everyone (retrain without --site), "
                  "then retrain each site's head on the new features (retrain --site NAME)")


@dataclass
class RetrainOptions:
    holdout: float = 0.25          # share of each class kept out of the fit, to compare the heads
    l2: float = 1e-2               # pull towards the starting head (standardised weights)
    init: str = "zeros"            # starting head: zeros, the serving head, or a CLIP zero-shot head
    zero_shot_weights: str | None = None   # CLIP weights for the zero-shot head (default: the served ones)
    force: bool = False            # publish even when the new head is worse
    publish: bool = True           # False: fit, compare and report only
    batch_size: int = 32
    seed: int = 0
    progress: bool = True
    report_dir: Path | None = None
    mask: MaskFineTuneOptions | None = None   # also fine-tune the mask net (needs torch + the checkpoint)


@dataclass
class RetrainResult:
    comparison: Comparison
    head: LinearHead
    serving_version: int
    published_version: int | None
    decision: str
    report: Path | None
    timings: dict[str, float] = field(default_factory=dict)
    fine_tuned: FineTunedMask | None = None           # with --fine-tune-mask
    head_only: Comparison | None = None               # with --fine-tune-mask: the head fitted alone
    serving_mask_version: int | None = None
    published_mask_version: int | None = None
    site: str | None = None                           # with a site: versions are the site's head versions
    site_model_version: int | None = None             # with a site: the <prefix>_site_head version published

    @property
    def refused(self) -> bool:
        return self.published_version is None and self.comparison.new_is_worse


def _starting_head(options: RetrainOptions, client: FerClient, heads: StageVersions, serving: int,
                   train_features: np.ndarray, site_head: LinearHead | None = None) -> LinearHead | None:
    if options.init == "zeros":
        return None
    if options.init == "serving":  # a site's own head, else the base head
        return site_head or read_head(heads.version_dir(serving) / "model.onnx")
    from fer_triton.retrain.zero_shot import zero_shot_head

    meta = client.info().metadata
    weights = options.zero_shot_weights or meta.get("clip_weights")
    pretrained = None if weights in (None, "random") else weights
    norm = float(np.median(np.linalg.norm(train_features, axis=1)))
    return zero_shot_head(meta.get("clip_model", "ViT-B-32-quickgelu"), pretrained, feature_norm=norm)


def retrain(data: str | Path, url: str | list[str], repository: str | Path, *, model: str = "cafe",
            options: RetrainOptions = RetrainOptions(), site: str | None = None,
            admin_key: str | None = None) -> RetrainResult:
    """Adapt the head (and with ``options.mask`` the mask net) to a site and publish it to a running server.

    ``data``: the site's labelled images (class folders or a ``path,label`` CSV; see site_data).
    ``url``: the Triton gRPC address serving ``model``, or a list of them: every replica that serves
    ``repository`` (a DNS name resolving to several addresses counts as all of them; see replicas).
    Features come from the first; the new version is loaded and verified on EVERY replica, all or
    nothing. ``repository``: the replicas' model repository on a filesystem this process can write.
    ``admin_key``: the key the servers' model control needs (None: none sent). Steps: read the images (unreadable ones named and left
    out), extract masked features FP32 [N, 512] and the serving head's probabilities through the
    server, hold out ``options.holdout`` of each class, fit a Linear(512, 7) head on the rest, compare
    it with the serving head on the held-out images (accuracy, balanced accuracy, per-class recall),
    then publish version N+1 through Triton's model control and verify the served outputs, unless the
    new head is worse (``options.force`` publishes anyway) or ``options.publish`` is False.
    ``site``: fit and publish that site's own head instead (see the module docstring); its serving
    head is the site's current one (the base head for a site without one) and the versions in the
    result are the site's head versions (0 = the base head).
    Returns a RetrainResult (comparison, versions, decision, report path, timings in seconds).
    Raises SiteDataError (bad site data), SiteError (a bad or unknown site, no site models, a site with
    ``options.mask``), PublishError (server or repository refused; the serving version is kept),
    MaskFineTuneError, FerServerError, or ValueError for bad options.
    """
    if options.init not in INITS:
        raise ValueError(f"init must be one of {', '.join(INITS)}, not {options.init!r}")
    sites = None
    if site is not None:  # before any work: the name, the mask net, the site models, the site itself
        check_site_name(site)
        if options.mask is not None:
            raise SiteError(MASK_WITH_SITE)
        sites = Sites(repository, RepositoryLayout(model))
        sites.table().site(site)
    if options.mask is not None:
        options.mask.validate()
    timings: dict[str, float] = {}
    t = time.perf_counter()
    data_site = read_site(data)
    train, held = holdout_split(data_site.labels, options.holdout, options.seed)  # fails early on tiny classes
    layout = RepositoryLayout(model)
    heads = StageVersions(Path(repository), layout)
    masks = StageVersions(Path(repository), layout, "mask_net")
    urls = [url] if isinstance(url, str) else list(url)
    with Fleet(urls, model, admin_key=admin_key, site=site) as fleet:
        client = fleet.first  # reads the features; every replica serves the same versions
        serving = check_serving(fleet, heads)
        site_head, base_version = None, serving
        if sites is not None:
            sites.check_serving(fleet)
            table = sites.table()
            serving, site_head = table.site_version(site), table.head(site)
        tuner = _MaskTuner.prepare(fleet, masks, options.mask) if options.mask is not None else None
        read = data_site.read_faces(client.info().wire_size)
        for line in read.skipped_lines():  # unreadable files are named and left out; the others are used
            log.warning("%s", line)
        if read.skipped:
            data_site = read.site
            train, held = holdout_split(data_site.labels, options.holdout, options.seed)
        faces = read.faces
        if tuner:  # before the long feature pass: a wrong checkpoint fails in seconds
            tuner.check(faces[:4])
        timings["read images"] = time.perf_counter() - t

        t = time.perf_counter()
        features = extract_features(client, faces, batch_size=options.batch_size, progress=options.progress)
        timings["features (server)"] = time.perf_counter() - t

        t = time.perf_counter()
        x, y = features.masked_features, data_site.labels
        init = _starting_head(options, client, heads, base_version, x[train], site_head)
        head = fit_head(x[train], y[train], l2=options.l2, init=init, seed=options.seed)
        timings["fit"] = time.perf_counter() - t

        t = time.perf_counter()
        serving_predicted = features.probabilities[held].argmax(1)
        head_only = compare_heads(y[held], serving_predicted, head.predict(x[held]))
        timings["compare"] = time.perf_counter() - t
        comparison, tuned = head_only, None
        if tuner:
            t = time.perf_counter()
            tuned = tuner.fine_tune(faces, x, y, train, head, options)
            timings["fine-tune mask net"] = time.perf_counter() - t
            comparison = compare_heads(y[held], serving_predicted, tuned.head.predict(tuned.masked_features[held]),
                                       new_name="new mask net + head")

        published = published_mask = site_model_version = None
        serving_name = f"version {serving}" if serving or not site else "the base head"
        against = f"site '{site}'s serving head ({serving_name})" if site else f"serving version {serving}"
        if not options.publish:
            decision = f"not published (--no-publish): {comparison.summary()}"
        elif comparison.new_is_worse and not options.force:
            decision = (f"REFUSED: the {comparison.new_name} is worse than {against}: "
                        f"{comparison.summary()}; pass --force to publish it anyway")
        else:
            t = time.perf_counter()
            forced = " (forced: it is worse)" if comparison.new_is_worse else ""
            if sites is not None:
                site_model_version, published = _publish_site(fleet, sites, site, head, x, data_site, faces, held,
                                                              comparison, options, masks, base_version)
            else:
                new_head, new_features = (tuned.head, tuned.masked_features) if tuned else (head, x)
                published_mask, published = _publish(fleet, heads, masks, new_head, new_features, tuned, data_site,
                                                      faces, held, comparison, options)
            timings["publish"] = time.perf_counter() - t
            if sites is not None:
                decision = (f"published as site '{site}' head version {published} ({layout.site_head} version "
                            f"{site_model_version}){forced}, replacing {serving_name}: {comparison.summary()}")
            elif tuned:
                decision = (f"published as {masks.name} version {published_mask} + {heads.name} version {published}"
                            f"{forced}, replacing versions {tuner.serving} + {serving}: {comparison.summary()}")
            else:
                decision = (f"published as {heads.name} version {published}{forced}, replacing version {serving}: "
                            f"{comparison.summary()}")
        if tuned:
            decision += f" (the head fitted alone scored {head_only.new.accuracy:.1%})"
            stale = _sites_fitted_before(Path(repository), layout) if published_mask else []
            if stale:
                decision += (f". The mask net is shared: the heads of site(s) {', '.join(stale)} were fitted on "
                             f"mask net version {tuner.serving}: retrain them (`fer-triton retrain --site NAME`)")

    report = None
    if options.report_dir is not None:
        details = {"site data": str(data_site.source), "server": ", ".join(urls), "repository": str(repository),
                   "serving version before": str(serving), "starting head": options.init, "l2": str(options.l2),
                   "held-out share": str(options.holdout),
                   "classes without site images": ", ".join(data_site.missing_classes) or "none"}
        if site:
            details.update({"site": site, "serving version before": f"site head {serving_name} (base head version "
                                                                   f"{base_version})"})
        if tuned:
            details.update(tuner.details(tuned, head_only))
        report = write_report(options.report_dir, comparison=comparison, decision=decision, counts=data_site.counts(),
                              details=details, timings=timings)
    return RetrainResult(comparison, tuned.head if tuned else head, serving, published, decision, report, timings,
                         fine_tuned=tuned, head_only=head_only if tuned else None,
                         serving_mask_version=tuner.serving if tuner else None,
                         published_mask_version=published_mask, site=site, site_model_version=site_model_version)


class _MaskTuner:
    """--fine-tune-mask: the checks made before any work, the fine-tune, and what the report says of it."""

    def __init__(self, client: FerClient, masks: StageVersions, serving: int, options: MaskFineTuneOptions):
        self.masks, self.serving, self.options = masks, serving, options
        self.checkpoint_path = resolve_checkpoint(options.checkpoint, client, masks, serving)
        self.base, self.net = load_mask_net(self.checkpoint_path)
        self.match = None

    @classmethod
    def prepare(cls, fleet: Fleet, masks: StageVersions, options: MaskFineTuneOptions) -> "_MaskTuner":
        for client in fleet.clients:  # every replica: one serving TensorRT plans could not load M+1
            check_layout(client.info().metadata, fleet.model, served_mask_engine(client, masks.layout))
        return cls(fleet.first, masks, check_serving(fleet, masks), options)

    def check(self, faces: np.ndarray) -> None:
        onnx_path = self.masks.version_dir(self.serving) / "model.onnx"
        self.match = check_matches_served(self.net, faces, onnx_path, self.options.match_atol, self.checkpoint_path,
                                          Preprocess.from_config(self.base.preprocess))

    def fine_tune(self, faces, masked, labels, train, head, options: RetrainOptions) -> FineTunedMask:
        return fine_tune_mask(self.net, self.base, self.checkpoint_path, faces, masked, labels, train, head,
                              self.options, l2=options.l2, seed=options.seed, progress=options.progress)

    def details(self, tuned: FineTunedMask, head_only: Comparison) -> dict[str, str]:
        last = tuned.history[-1]
        return {
            "mask net": f"fine-tuned from {self.checkpoint_path} (served version {self.serving}; checkpoint vs "
                        f"served mask logits {self.match:.2g}), {self.options.epochs} epoch(s), lr {self.options.lr:g}, "
                        f"last epoch loss {last['loss']:.4f} (CE {last['ce']:.4f}, div {last['div']:.4f}, "
                        f"sep {last['sep']:.4f}), train accuracy {last['accuracy']:.1%}",
            "fine-tuned checkpoint": str(tuned.saved_to) if tuned.saved_to else "not saved",
            "head fitted alone (serving mask net)": f"held-out accuracy {head_only.new.accuracy:.1%}",
        }


def _publish(fleet: Fleet, heads, masks, head: LinearHead, masked_features: np.ndarray, tuned: FineTunedMask | None,
             site, faces, held, comparison, options) -> tuple[int | None, int]:
    """Publish the new head (and the fine-tuned mask net with it); returns (mask version or None, head version)."""
    from fer_triton.retrain.pair_publish import publish_mask_and_head

    what = "mask net + head" if tuned else "head"
    new_probabilities = head.probabilities(masked_features)
    extra = {}
    if len(site) >= MIN_SAMPLE:  # the drift reference: this site as the new model sees it
        reference = DriftReference.from_sample(SiteSample(new_probabilities, masked_features),
                                               source=f"retrain{' --fine-tune-mask' if tuned else ''} on {site.source}")
        extra[REFERENCE_FILE] = reference.save
    else:
        log.warning("only %d site images: no drift reference written (needs %d)", len(site), MIN_SAMPLE)
    check = held[:8]

    def served_equals_new_model(client: FerClient):
        # The bound is the served precision's (FP16 TensorRT moves probabilities by ~1.5e-4 on its own).
        result = check_published(client.infer(faces[check]).probabilities, new_probabilities[check],
                                 served_precision(client, heads.layout), what)
        log.info("publish check at %s: %s", client.url, result.summary())
        if not result.passed:
            raise PublishError(f"the served model is not the new {what}: {result.summary()}")

    info = {"fer_triton": __version__, "site_data": str(site.source), "images": len(site),
            "held_out": comparison.held_out, "init": options.init, "l2": options.l2,
            "accuracy_serving": comparison.serving.accuracy, "accuracy_new": comparison.new.accuracy,
            "forced": bool(comparison.new_is_worse)}
    if not tuned:
        return None, publish_head(fleet, heads, head, info=info, extra_files=extra, verify=served_equals_new_model)
    mask_record = {"fer_triton": __version__, "checkpoint": str(tuned.saved_to) if tuned.saved_to else None,
                   "fine_tuned_from": str(tuned.base_checkpoint.resolve()), "site_data": str(site.source),
                   "history": tuned.history}
    return publish_mask_and_head(fleet, masks, heads, tuned.mask_net, head, wire_size=fleet.first.info().wire_size,
                                 mask_record=mask_record, head_info=info, extra_files=extra,
                                 verify=served_equals_new_model)


def _publish_site(fleet: Fleet, sites: Sites, site: str, head: LinearHead, masked_features: np.ndarray, data_site, faces,
                  held, comparison, options, masks: StageVersions, base_version: int) -> tuple[int, int]:
    """Publish ``head`` as ``site``'s next head version; returns (site-head model version, site version)."""
    new_probabilities = head.probabilities(masked_features)
    reference = None
    if len(data_site) >= MIN_SAMPLE:  # the drift reference: this site as its new head sees it
        reference = DriftReference.from_sample(SiteSample(new_probabilities, masked_features),
                                               source=f"retrain --site {site} on {data_site.source}").save
    else:
        log.warning("only %d site images: no drift reference written (needs %d)", len(data_site), MIN_SAMPLE)
    check = held[:8]

    def served_equals_new_head(client: FerClient):
        result = check_published(client.infer(faces[check], sites=site).probabilities, new_probabilities[check],
                                 served_precision(client, masks.layout), f"head of site '{site}'")
        log.info("publish check at %s: %s", client.url, result.summary())
        if not result.passed:
            raise PublishError(f"the served model is not site '{site}'s new head: {result.summary()}")

    try:
        mask_net_version = masks.newest()
    except PublishError:  # fused or INT8 layouts have no mask-net model of their own
        mask_net_version = None
    record = {"fer_triton": __version__, "site_data": str(data_site.source), "images": len(data_site),
              "held_out": comparison.held_out, "init": options.init, "l2": options.l2,
              "accuracy": comparison.new.accuracy, "balanced_accuracy": comparison.new.balanced_accuracy,
              "accuracy_serving": comparison.serving.accuracy, "forced": bool(comparison.new_is_worse),
              "base_head_version": base_version, "mask_net_version": mask_net_version}
    return sites.publish_head(fleet, site, head, record, drift_reference=reference, verify=served_equals_new_head)


def _sites_fitted_before(repository: Path, layout: RepositoryLayout) -> list[str]:
    """Sites whose served head was fitted on another mask net than the newest (after a mask-net publish)."""
    sites = Sites(repository, layout)
    if not sites.installed:
        return []
    newest = StageVersions(repository, layout, "mask_net").newest()
    return [row.site for row in sites.rows(newest) if row.note.startswith("fitted on mask net")]
