"""Whitening: centre and PCA-whiten a descriptor on a reference set, so that its cosine means "copy" at the scale
SSCD's scores have.

SSCD's own evaluation (Pizzi et al. 2022, DISC2021) centres and PCA-whitens its descriptors on a reference set before
taking inner products: directions that *every* image shares (a bright background, a common colour histogram) stop
dominating the cosine, so two distinct images score near 0 and copies keep scores near 1. The training-free
``default`` descriptor needs this much more than SSCD: its raw cosines of *distinct* images have a median of 0.1 and
a 99th percentile of 0.6 (docs/dedup.md), where SSCD's lie near 0.

:class:`Whitening` is fitted by :func:`fit_whitening` on the descriptor's raw (L2-normalised) vectors of a generic,
deterministic reference set (:func:`copying_study.descriptors.reference.whitening_reference`):

``w(x) = normalise(diag((λ_i + shrinkage·λ_1)^(-1/2)) · U_kᵀ (x − μ))``

with μ the reference mean, U_k the top ``dim`` eigenvectors of the reference covariance and λ their eigenvalues
(float64, eigenvector signs fixed so the result is reproducible). Its sha256 (of μ and the projection) goes into the
descriptor's meta, so generations are always scored in the space the training images were described in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

METHODS = ("pca",)
DEFAULT_WHITENING: dict[str, Any] = {"method": "pca", "dim": 256, "shrinkage": 0.0, "n_reference": 2000}
KEYS = tuple(DEFAULT_WHITENING)


@dataclass(frozen=True)
class Whitening:
    """A fitted centring + PCA whitening: ``apply(X)`` maps L2-normalised rows to L2-normalised whitened rows."""

    mean: np.ndarray  # float64 [d_in]
    projection: np.ndarray  # float64 [d_in, dim]
    eigenvalues: np.ndarray  # float64 [dim]
    spec: dict[str, Any]

    @property
    def dim(self) -> int:
        return int(self.projection.shape[1])

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(self.mean, dtype="<f8").tobytes())
        h.update(np.ascontiguousarray(self.projection, dtype="<f8").tobytes())
        return h.hexdigest()

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised float32 rows of ``x`` ([N, d_in] -> [N, dim])."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"whitening expects [N, {self.mean.shape[0]}] descriptors, got {x.shape}")
        y = (x - self.mean) @ self.projection
        norms = np.linalg.norm(y, axis=1, keepdims=True)
        # an image equal to the reference mean has no direction left; give it a fixed one rather than NaN
        y = np.where(norms > 1e-12, y / np.maximum(norms, 1e-12), np.eye(1, y.shape[1]))
        return y.astype(np.float32)

    def describe(self) -> dict[str, Any]:
        """What the meta records: the spec, the output dim, the kept variance and the sha256."""
        return {**self.spec, "dim": self.dim, "sha256": self.sha256}


def whitening_spec(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A validated whitening spec (``None`` = no whitening) with defaults filled in; ``ValueError`` names the key."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise ValueError(f"descriptor.whitening must be a mapping (or null), got {value!r}")
    unknown = sorted(set(value) - set(KEYS))
    if unknown:
        raise ValueError(f"descriptor.whitening does not take {unknown}: allowed keys are {', '.join(KEYS)}")
    spec = {**DEFAULT_WHITENING, **{k: v for k, v in value.items() if v is not None}}
    if spec["method"] not in METHODS:
        raise ValueError(f"descriptor.whitening.method '{spec['method']}' is not one of {', '.join(METHODS)}")
    for key in ("dim", "n_reference"):
        if isinstance(spec[key], bool) or not isinstance(spec[key], int) or spec[key] < 1:
            raise ValueError(f"descriptor.whitening.{key} must be a positive integer, got {spec[key]!r}")
    shrink = spec["shrinkage"]
    if isinstance(shrink, bool) or not isinstance(shrink, (int, float)) or not 0.0 <= float(shrink) <= 1.0:
        raise ValueError(f"descriptor.whitening.shrinkage must be a number in [0, 1], got {shrink!r}")
    spec["shrinkage"] = float(shrink)
    if spec["n_reference"] <= spec["dim"]:
        raise ValueError(f"descriptor.whitening.n_reference ({spec['n_reference']}) must exceed its dim "
                         f"({spec['dim']}): a covariance needs more images than dimensions")
    return spec


def fit_whitening(reference: np.ndarray, spec: Mapping[str, Any]) -> Whitening:
    """Fit centring + PCA whitening (``spec``: dim, shrinkage) on reference descriptors [N, d_in]."""
    spec = whitening_spec(spec)
    x = np.asarray(reference, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"whitening needs a reference set of at least 2 descriptors, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("whitening reference descriptors contain NaN/inf")
    dim = min(int(spec["dim"]), x.shape[1], x.shape[0] - 1)
    from threadpoolctl import threadpool_limits

    # one BLAS thread: the covariance and eigh round differently at 1 and 2 threads (measured), and the fit must be
    # the same bytes in every process (a Dask worker runs at 1, a sequential run at the machine's cores)
    with threadpool_limits(limits=1, user_api="blas"):
        mean = x.mean(axis=0)
        cov = np.cov(x - mean, rowvar=False)
        values, vectors = np.linalg.eigh(cov)
    order = np.argsort(values)[::-1][:dim]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
    if values[-1] <= 0 and spec["shrinkage"] == 0:
        raise ValueError(f"the reference set spans fewer than {dim} dimensions: lower descriptor.whitening.dim")
    # fix each eigenvector's sign (its largest-magnitude component positive) so the fit is reproducible
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(dim)])
    vectors = vectors * np.where(signs == 0, 1.0, signs)
    projection = vectors / np.sqrt(values + spec["shrinkage"] * values[0])
    kept = float(values.sum() / max(np.trace(cov), 1e-300))
    return Whitening(mean=mean, projection=projection, eigenvalues=values,
                     spec={**spec, "dim_requested": int(spec["dim"]), "variance_kept": round(kept, 6),
                           "n_reference": int(x.shape[0])})
