"""PDQ, Meta's perceptual hash (``pdqhash``, the Python binding of ThreatExchange's C++ PDQ), as a descriptor.

PDQ turns an image into 256 bits and a quality score (0–100). Meta's rule: two images match when the Hamming distance
of their hashes is at most 31; hashes of quality below 50 are unreliable (flat or nearly flat images) and should not
be trusted.

So that PDQ fits the project's interface (``X @ Y.T`` is the similarity), a hash is also a 256-d float32 vector of
±1/16 (bit 1 → +1/16): rows have unit norm and the inner product is exactly ``1 - 2·hamming/256`` (every partial
sum is a multiple of 2⁻⁸, so float32 is exact). PDQ's rule ``hamming <= 31`` is ``similarity >= MATCH_THRESHOLD``
(= 1 - 62/256 = 0.7578125). The packed bits (uint8 [N, 32], the standard PDQ hex string's byte order) feed faiss's
binary indexes (``copying_study.search.binary``); ``bits_from_vectors`` / ``vectors_from_bits`` convert exactly.

Preprocessing: none of ours beyond RGB conversion; no resize. ``pdqhash.compute`` takes the RGB array at its own size,
makes luma ``0.299 R + 0.587 G + 0.114 B`` (float32) and hands it to PDQ's C++ core, which blurs it with two X/Y
passes of Jarosz box filters (window ≈ side/128) and decimates it to 64×64 (an image of exactly 64×64 is used as
is), computes the quality from the 64×64 image's gradients, takes the 16×16 lowest non-constant DCT coefficients and
sets each bit where the coefficient exceeds their median. Images under 5 px on a side get the all-zero hash with
quality 0.
"""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image

from copying_study.descriptors.base import Descriptor
from copying_study.search.binary import (  # the hash <-> vector helpers live with the binary search (no torch there)
    BITS,
    BYTES,
    MATCH_HAMMING,
    bits_from_vectors,
    check_bits,
    hamming_radius,
    similarity_from_hamming,
    vectors_from_bits,
)
from copying_study.utils.images import to_rgb
from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)

__all__ = [
    "BITS",
    "MATCH_HAMMING",
    "MATCH_THRESHOLD",
    "MIN_QUALITY",
    "PDQDescriptor",
    "PDQHashes",
    "bits_from_vectors",
    "check_bits",
    "hamming_radius",
    "similarity_from_hamming",
    "vectors_from_bits",
]
MIN_QUALITY = 50  # Meta's guidance: hashes with quality below 50 are unreliable
MATCH_THRESHOLD = float(similarity_from_hamming(MATCH_HAMMING))  # 1 - 62/256 = 0.7578125: PDQ's rule on our scale


def _pdqhash() -> Any:
    try:
        import pdqhash
    except ImportError as exc:  # a dependency of the project, but name it if it is missing
        raise ImportError("the pdq descriptor needs the 'pdqhash' package: pip install pdqhash") from exc
    return pdqhash


@dataclass(frozen=True)
class PDQHashes:
    """Hashes of N images: ``bits`` uint8 [N, 32] and ``quality`` int16 [N] (0–100, PDQ's own score)."""

    bits: np.ndarray
    quality: np.ndarray


class PDQDescriptor(Descriptor):
    """PDQ perceptual hash as a 256-d ±1/16 descriptor (CPU; ``pdqhash``). ``min_quality`` only marks rows."""

    name = "pdq"
    #: PDQ's standard match rule, Hamming distance <= 31 of 256 bits, on the ±1/16 scale: 1 - 2·31/256
    standard_copy_threshold = 1.0 - 2.0 * 31 / BITS

    def __init__(self, min_quality: int = MIN_QUALITY, batch_size: int = 256, device: str = "auto",
                 half: bool | None = None, whitening: Any = None, workers: Any = "auto") -> None:
        if whitening is not None:
            raise ValueError("pdq descriptor: whitening does not apply to a binary hash (its scale is the Hamming "
                             "distance); set descriptor.whitening to null")
        super().__init__(batch_size=batch_size, device="cpu", half=False, workers=0)  # a C++ hash on the CPU
        if not 0 <= int(min_quality) <= 100 or int(min_quality) != min_quality:
            raise ValueError(f"pdq descriptor: min_quality must be an integer in [0, 100], got {min_quality!r}")
        self.min_quality = int(min_quality)
        self.version = importlib.metadata.version("pdqhash")
        self.dim = BITS

    def hash_image(self, image: Image.Image) -> tuple[np.ndarray, int]:
        """One image → (packed bits uint8 [32], quality), exactly as ``pdqhash.compute`` gives them."""
        rgb = np.ascontiguousarray(np.asarray(image if image.mode == "RGB" else to_rgb(image), dtype=np.uint8))
        bits, quality = _pdqhash().compute(rgb)
        return np.packbits(np.asarray(bits, dtype=np.uint8)), int(quality)

    def hash(self, images: Sequence[Image.Image], desc: str | None = None) -> PDQHashes:
        """Hashes and qualities of ``images`` (any sequence with ``len`` and slicing, e.g. ``EncodedImages``)."""
        if len(images) == 0:
            raise ValueError("pdq descriptor: no images to hash (empty input)")
        bits = np.empty((len(images), BYTES), dtype=np.uint8)
        quality = np.empty(len(images), dtype=np.int16)
        starts = range(0, len(images), self.batch_size)
        for start in progress(starts, desc=desc or "pdq hashes", total=len(starts), unit="batch"):
            for offset, image in enumerate(images[start : start + self.batch_size]):
                bits[start + offset], quality[start + offset] = self.hash_image(image)
        low = int((quality < self.min_quality).sum())
        if low:
            logger.warning("pdq: %d of %d image(s) have quality < min_quality=%d (flat or nearly flat); their "
                           "hashes are unreliable. They are kept and marked as low_quality.", low, len(quality),
                           self.min_quality)
        return PDQHashes(bits, quality)

    def encode_bits(self, images: Sequence[Image.Image], desc: str | None = None) -> np.ndarray:
        """Packed hashes uint8 [N, 32] (for faiss's binary indexes)."""
        return self.hash(images, desc).bits

    def encode_rows(self, images: Sequence[Image.Image], desc: str | None = None
                    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """``encode`` plus each row's ``quality`` and ``low_quality`` (quality < ``min_quality``)."""
        hashes = self.hash(images, desc)
        return vectors_from_bits(hashes.bits), {"quality": hashes.quality,
                                                 "low_quality": hashes.quality < self.min_quality}

    # ``encode`` (the base class's batching) gives float32 [N, 256] of ±1/16 through these two; its final L2 norm
    # is exact for such rows (norm 1).
    def _prepare(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(vectors_from_bits(self.hash_image(image)[0][None])[0])

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        return batch  # the hash is made in _prepare

    def preprocessing(self) -> dict[str, Any]:
        return {
            "algorithm": "PDQ (Meta ThreatExchange)",
            "implementation": f"pdqhash {self.version}",
            "input": "RGB at its own size, no resize by us",
            "luma": "0.299 R + 0.587 G + 0.114 B",
            "downsample": "2 X/Y passes of Jarosz box filters (window ~ side/128), decimated to 64x64",
            "hash": "16x16 DCT coefficients > their median -> 256 bits",
            "vector": "bit 1 -> +1/16, bit 0 -> -1/16; inner product = 1 - 2*hamming/256",
        }

    def config(self) -> dict[str, Any]:
        return {"min_quality": self.min_quality}

    def meta(self) -> dict[str, Any]:
        """The common meta plus the search metric (``hamming``: ``copying_study.search`` uses binary indexes) and
        PDQ's match rule."""
        return {
            **super().meta(),
            "metric": "hamming",
            "bits": BITS,
            "match_rule": {"max_hamming": MATCH_HAMMING, "similarity_threshold": MATCH_THRESHOLD,
                           "min_quality": self.min_quality},
        }
