"""Copy guard: rejection sampling against the training set (paper §8, "after training").

Each generated batch is scored against the training descriptors with the descriptor that produced them: an image
whose top-1 similarity is at or above ``threshold`` is regenerated with a mitigation and a new seed derived from
its first seed (``derive_seed(seed, "guard", try)``), up to ``max_tries`` times. The attempt with the lowest score
is kept; every attempt's score is recorded.

With ``trigger: detection`` the guard decides *before* sampling instead, from Wen et al.'s prompt-level score (the
first-step detection score of the prompt's first generation, one UNet call, no descriptor): every generation of a
prompt scoring at or above ``detection_threshold`` is made with ``mitigation`` (same seed) instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from PIL import Image

from copying_study.data.captions import INFERENCE_MITIGATIONS, check_choice
from copying_study.diffusion.sample import ImageRequest, MitigationSettings, Sample, mitigate
from copying_study.search import build_index, knn
from copying_study.utils.progress import progress
from copying_study.utils.seeding import derive_seed

logger = logging.getLogger(__name__)


GUARD_TRIGGERS = ("descriptor", "detection")


class BatchSampler(Protocol):
    """Anything that turns a batch of requests into images with their detection scores (``sample.Sampler`` or a
    test double); ``first_step_scores`` is needed by ``trigger: detection`` only."""

    batch_size: int

    def sample_batch(self, requests: Sequence[ImageRequest]) -> list[Sample]: ...

    def first_step_scores(self, requests: Sequence[ImageRequest]) -> np.ndarray: ...


class ImageEncoder(Protocol):
    """A copy-detection descriptor (``copying_study.descriptors``): images -> L2-normalised float32 rows."""

    def encode(self, images: Sequence[Image.Image], desc: str | None = None) -> np.ndarray: ...

    def meta(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GuardSettings:
    """``enabled``; ``threshold`` on top-1 similarity (``None``: the descriptor's calibrated copy threshold, to be
    filled in before sampling); ``max_tries`` regenerations; ``mitigation`` for them. ``trigger``: ``descriptor``
    (generate, score against the training set, regenerate) or ``detection`` (Wen et al.'s prompt-level first-step
    score at or above ``detection_threshold`` before sampling -> the prompt's images are made with ``mitigation``)."""

    enabled: bool = False
    threshold: float | None = 0.5
    max_tries: int = 3
    mitigation: str = "rt"
    trigger: str = "descriptor"
    detection_threshold: float | None = None

    def __post_init__(self) -> None:
        check_choice(self.mitigation, INFERENCE_MITIGATIONS, "copy_guard.mitigation")
        check_choice(self.trigger, GUARD_TRIGGERS, "copy_guard.trigger")
        if self.enabled and self.trigger == "detection" and self.detection_threshold is None:
            raise ValueError("copy_guard.trigger is 'detection' but copy_guard.detection_threshold is not set")
        if self.max_tries < 1:
            raise ValueError(f"copy_guard.max_tries must be >= 1, got {self.max_tries}")
        if self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"copy_guard.threshold must be a cosine similarity in [-1, 1], got {self.threshold}")


class CopyIndex:
    """Training descriptors plus the descriptor that made them: ``top1(images)`` -> (scores, matched ids).

    The training vectors go into an exact inner-product index once (``copying_study.search``); ``meta`` (the
    ``train_descriptors`` meta) is checked against the queries' descriptor on every search.
    """

    def __init__(
        self,
        descriptor: ImageEncoder,
        embeddings: np.ndarray,
        image_ids: Sequence[str],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        if len(image_ids) != len(embeddings):
            raise ValueError(f"copy guard: {len(embeddings)} training descriptors but {len(image_ids)} image ids")
        self.descriptor = descriptor
        self.index = build_index(embeddings, kind="flat", meta=meta)
        self.image_ids = [str(i) for i in image_ids]

    def top1(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[str]]:
        """Top-1 cosine similarity of each image to the training set, and the id of that training image."""
        queries = self.descriptor.encode(list(images), desc="copy guard")
        scores, idx = knn(queries, self.index, k=1, queries_meta=self.descriptor.meta())
        return scores[:, 0].astype(np.float64), [self.image_ids[int(i)] for i in idx[:, 0]]


@dataclass
class Generation:
    """One finished image: the request it was made from, its mitigation, and the guard's record."""

    image: Image.Image
    request: ImageRequest
    mitigation: str
    first_seed: int
    guard_tries: int = 0
    guard_scores: list[float] = field(default_factory=list)
    match_image_id: str | None = None
    detect_first: float = float("nan")
    detect_mean: float = float("nan")
    wen_iterations: int = 0
    wen_score_before: float = float("nan")
    prompt_score: float = float("nan")

    def take(self, sample: Sample) -> None:
        """Keep ``sample``'s image and the scores that belong to it."""
        self.image, self.detect_first, self.detect_mean = sample.image, sample.detect_first, sample.detect_mean
        self.wen_iterations, self.wen_score_before = sample.wen_iterations, sample.wen_score_before

    @property
    def guard_score(self) -> float:
        """The kept attempt's top-1 similarity (NaN when the guard is off)."""
        return min(self.guard_scores) if self.guard_scores else float("nan")


def generate_guarded(
    sampler: BatchSampler,
    originals: Sequence[str],
    requests: Sequence[ImageRequest],
    mitigation: str,
    *,
    guard: GuardSettings,
    index: CopyIndex | None = None,
    strengths: MitigationSettings | None = None,
    vocab: Sequence[str] = (),
) -> list[Generation]:
    """Generate ``requests`` (made from ``originals`` under ``mitigation``) batch by batch; with the guard on,
    regenerate every image scoring ``>= guard.threshold`` with ``guard.mitigation`` (strengths from ``strengths``)
    until it passes or ``guard.max_tries`` regenerations are spent, keeping the lowest-scoring attempt. With
    ``trigger: detection``, see :func:`_detection_guarded`."""
    if len(originals) != len(requests):
        raise ValueError("one original prompt is needed per request")
    retry = replace(strengths or MitigationSettings(), name=guard.mitigation)
    if guard.enabled and guard.trigger == "detection":
        return _detection_guarded(sampler, originals, requests, mitigation, guard, retry, vocab)
    if guard.enabled and index is None:
        raise ValueError("copy guard is enabled but no training descriptor index was given")
    if guard.enabled and guard.threshold is None:
        raise ValueError("copy_guard.threshold is 'calibrated' but no calibrated threshold was filled in: pass the "
                         "descriptor_calibration's copy_threshold")
    out: list[Generation] = []
    starts = range(0, len(requests), sampler.batch_size)
    for start in progress(starts, desc="generate", total=len(starts), unit="batch"):
        batch = list(requests[start:start + sampler.batch_size])
        gens = [_generation(s, req, mitigation, req.seed) for s, req in zip(sampler.sample_batch(batch), batch,
                                                                               strict=True)]
        if guard.enabled:
            _guard_batch(sampler, gens, list(originals[start:start + sampler.batch_size]), guard, index, retry, vocab)
        out.extend(gens)
    return out


def _guard_batch(
    sampler: BatchSampler,
    gens: list[Generation],
    originals: list[str],
    guard: GuardSettings,
    index: CopyIndex,
    retry: MitigationSettings,
    vocab: Sequence[str],
) -> None:
    """Score one batch and regenerate its flagged images in place (all flagged images of a try in one batch)."""
    scores, matches = index.top1([g.image for g in gens])
    best = list(scores)
    for g, s, m in zip(gens, scores, matches, strict=True):
        g.guard_scores.append(float(s))
        g.match_image_id = m
    pending = [i for i, s in enumerate(scores) if s >= guard.threshold]
    if pending:
        logger.info("copy guard caught %d of %d images (threshold %.3f)", len(pending), len(gens), guard.threshold)
    for attempt in range(1, guard.max_tries + 1):
        if not pending:
            break
        reqs = [mitigate(originals[i], derive_seed(gens[i].first_seed, "guard", attempt), retry, vocab) for i in pending]
        samples = sampler.sample_batch(reqs)
        scores, matches = index.top1([x.image for x in samples])
        still = []
        for i, req, sample, s, m in zip(pending, reqs, samples, scores, matches, strict=True):
            g = gens[i]
            g.guard_tries = attempt
            g.guard_scores.append(float(s))
            if s < best[i]:
                best[i] = float(s)
                g.take(sample)
                g.request, g.mitigation, g.match_image_id = req, retry.name, m
            if s >= guard.threshold:
                still.append(i)
        pending = still
    if pending:
        logger.warning(
            "copy guard: %d image(s) stayed at or above %.3f after %d tries; kept their lowest-scoring attempt",
            len(pending), guard.threshold, guard.max_tries,
        )


def _generation(sample: Sample, request: ImageRequest, mitigation: str, first_seed: int) -> Generation:
    g = Generation(sample.image, request, mitigation, first_seed)
    g.take(sample)
    return g


def prompt_level_scores(sampler: BatchSampler, originals: Sequence[str], requests: Sequence[ImageRequest]
                        ) -> list[float]:
    """Wen et al.'s prompt-level score for every request: the first-step detection score of the first request of
    its original prompt (one UNet call per prompt, batched, before any sampling)."""
    first_of: dict[str, int] = {}
    for i, o in enumerate(originals):
        first_of.setdefault(o, i)
    heads = sorted(first_of.values())
    scores = dict(zip(heads, sampler.first_step_scores([requests[i] for i in heads]), strict=True))
    return [float(scores[first_of[o]]) for o in originals]


def calibrate_wen_target(sampler: BatchSampler, originals: Sequence[str], requests: Sequence[ImageRequest],
                         strengths: MitigationSettings
                         ) -> tuple[MitigationSettings, list[ImageRequest], dict[str, Any] | None]:
    """``wen`` with ``wen_target_quantile``: the optimisation's target on the model's own scale, the quantile of the
    run's prompt-level scores (:func:`prompt_level_scores`, one per distinct prompt, before any sampling; numpy's
    linear rule). Returns the strengths and the requests with that target, and what was measured (``None``: nothing
    to calibrate, strengths and requests unchanged)."""
    if strengths.name != "wen" or strengths.wen_target_quantile is None:
        return strengths, list(requests), None
    scores = prompt_level_scores(sampler, originals, requests)  # per request: its prompt's score
    values = np.asarray(list(dict(zip(originals, scores, strict=True)).values()), dtype=np.float64)
    target = float(np.quantile(values, strengths.wen_target_quantile))
    logger.info("wen: target %.6g, the %.3g quantile of %d prompts' first-step scores", target,
                strengths.wen_target_quantile, values.size)
    calibrated = [replace(r, wen=replace(r.wen, target_loss=target)) if r.wen is not None else r for r in requests]
    return replace(strengths, wen_target_loss=target), calibrated, {
        "quantile": strengths.wen_target_quantile, "target": target, "n_prompts": int(values.size),
        "prompt_scores_min": float(values.min()), "prompt_scores_median": float(np.median(values)),
        "prompt_scores_max": float(values.max())}


def _detection_guarded(sampler: BatchSampler, originals: Sequence[str], requests: Sequence[ImageRequest],
                       mitigation: str, guard: GuardSettings, retry: MitigationSettings, vocab: Sequence[str]
                       ) -> list[Generation]:
    """``trigger: detection``: prompts whose prompt-level score is at or above ``guard.detection_threshold`` are
    generated with ``guard.mitigation`` (each image keeps its seed, as in Wen et al.); the others as requested."""
    prompt_scores = prompt_level_scores(sampler, originals, requests)
    flagged = [s >= guard.detection_threshold for s in prompt_scores]
    final = [mitigate(o, r.seed, retry, vocab) if f else r
             for o, r, f in zip(originals, requests, flagged, strict=True)]
    n_prompts = len({o for o, f in zip(originals, flagged, strict=True) if f})
    logger.info("copy guard (detection): %d of %d prompts at or above %.3f -> %s", n_prompts, len(set(originals)),
                guard.detection_threshold, guard.mitigation)
    out: list[Generation] = []
    starts = range(0, len(final), sampler.batch_size)
    for start in progress(starts, desc="generate", total=len(starts), unit="batch"):
        batch = final[start:start + sampler.batch_size]
        for k, (sample, req) in enumerate(zip(sampler.sample_batch(batch), batch, strict=True)):
            i = start + k
            g = _generation(sample, req, retry.name if flagged[i] else mitigation, req.seed)
            g.guard_tries, g.prompt_score = int(flagged[i]), prompt_scores[i]
            out.append(g)
    return out


def guard_metrics(gens: Sequence[Generation], guard: GuardSettings) -> dict[str, Any]:
    """Counts for ``generate_metrics``: images caught, replaced (now below threshold), still above, tries (with
    ``trigger: detection``: images and prompts flagged before sampling)."""
    if not guard.enabled:
        return {"guard_enabled": 0.0}
    if guard.trigger == "detection":
        flagged = [g for g in gens if g.guard_tries > 0]
        return {"guard_enabled": 1.0, "guard_caught": float(len(flagged)),
                "guard_caught_fraction": len(flagged) / len(gens) if gens else 0.0}
    caught = [g for g in gens if g.guard_tries > 0]
    replaced = [g for g in caught if g.guard_score < guard.threshold]
    return {
        "guard_enabled": 1.0,
        "guard_caught": float(len(caught)),
        "guard_replaced": float(len(replaced)),
        "guard_unresolved": float(len(caught) - len(replaced)),
        "guard_regenerations": float(sum(g.guard_tries for g in gens)),
        "guard_caught_fraction": len(caught) / len(gens) if gens else 0.0,
        "guard_final_score_mean": float(np.mean([g.guard_score for g in gens])) if gens else float("nan"),
        "guard_final_score_max": float(np.max([g.guard_score for g in gens])) if gens else float("nan"),
    }
