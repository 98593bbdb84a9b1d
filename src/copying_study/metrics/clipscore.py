"""CLIPScore of generations against their prompts, with a CLIP model from a local folder (or the local HF cache).

Per image: ``cos = <E_img, E_txt>`` with both CLIP embeddings L2-normalised, the image prepared by the model's own
CLIP image processor (resize short edge, center crop, CLIP mean/std — not the paper code's 256/224/0.5
preprocessing, dcr-notes §2.8) and the prompt tokenised with truncation to the text model's context (77 tokens).

Three numbers on three stated scales are reported:

- ``clipscore``: torchmetrics' ``CLIPScore`` value, ``max(100 * mean(cos), 0)`` (tests check it equals
  ``torchmetrics.multimodal.CLIPScore`` with the same model);
- ``clip_cosine_mean``: the raw mean cosine (≈0.3 for SD), which is what the paper's code reports as "CLIPScore";
- ``clipscore_hessel``: Hessel et al.'s ``mean(2.5 * max(cos, 0))``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)

TORCHMETRICS_SCALE = "max(100 * mean(cosine), 0) (torchmetrics CLIPScore)"
RAW_SCALE = "mean cosine similarity in [-1, 1] (what the paper's code reports as CLIPScore)"
HESSEL_SCALE = "mean(2.5 * max(cosine, 0)) (Hessel et al. 2021)"


class ClipScorer:
    """A CLIP model, tokenizer and image processor loaded from ``path`` (local folder or cached HF id)."""

    def __init__(self, path: str | Path, device: torch.device | str = "cpu", batch_size: int = 32) -> None:
        from transformers import AutoTokenizer, CLIPModel

        if int(batch_size) < 1:
            raise ValueError(f"evaluate.clipscore.batch_size must be >= 1, got {batch_size}")
        self.path = str(path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        local = Path(self.path)
        if not local.exists() and (local.is_absolute() or self.path.startswith(".")):
            raise FileNotFoundError(f"evaluate.clipscore.model_path: no CLIP model folder at {self.path}")
        try:
            self.model = CLIPModel.from_pretrained(self.path, local_files_only=True).to(self.device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.processor = _image_processor_class().from_pretrained(self.path, local_files_only=True)
        except OSError as exc:
            raise FileNotFoundError(
                f"evaluate.clipscore.model_path: cannot load a CLIP model (with tokenizer and image processor) "
                f"from '{self.path}' locally: {exc}"
            ) from exc
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def cosines(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """The cosine similarity of each image with its text, float64 [N]."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} prompts")
        if not images:
            raise ValueError("no images to score with CLIP (empty input)")
        out = []
        starts = range(0, len(images), self.batch_size)
        for s in progress(starts, desc="CLIPScore", total=len(starts), unit="batch"):
            out.append(self._batch(images[s : s + self.batch_size], [str(t) for t in texts[s : s + self.batch_size]]))
        return np.concatenate(out).astype(np.float64)

    def _batch(self, images: Sequence[Image.Image], texts: list[str]) -> np.ndarray:
        pixels = self.processor(images=[img.convert("RGB") for img in images], return_tensors="pt")["pixel_values"]
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.inference_mode():
            img = _embedding(self.model.get_image_features(pixel_values=pixels.to(self.device)))
            txt = _embedding(self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                                          attention_mask=tokens["attention_mask"].to(self.device)))
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        txt = torch.nn.functional.normalize(txt.float(), dim=-1)
        return (img * txt).sum(-1).cpu().numpy()

    def describe(self) -> dict[str, Any]:
        """Model path, class and preprocessing used."""
        return {
            "model": self.path,
            "model_class": type(self.model).__name__,
            "image_processor": type(self.processor).__name__,
            "preprocessing": "the model's CLIP image processor (resize, center crop, CLIP mean/std)",
            "text_truncation_tokens": self.max_length,
        }


def _image_processor_class():
    """The PIL-backed CLIP image processor (transformers >= 5 names it ``CLIPImageProcessorPil``; torchvision-free)."""
    try:
        from transformers import CLIPImageProcessorPil

        return CLIPImageProcessorPil
    except ImportError:  # transformers 4.x: the slow processor is the PIL one
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor


def _embedding(out: Any) -> torch.Tensor:
    """Projected CLIP features from ``get_*_features`` (a tensor in transformers 4, an output object in 5)."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_score_summary(cosines: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """The CLIPScore numbers on each scale (see the module docstring) from per-image cosines."""
    c = np.asarray(cosines, dtype=np.float64)
    if c.size == 0 or not np.isfinite(c).all():
        raise ValueError("CLIP cosines are empty or contain NaN/inf")
    return {
        "clipscore": float(max(100.0 * c.mean(), 0.0)),
        "clipscore_scale": TORCHMETRICS_SCALE,
        "clip_cosine_mean": float(c.mean()),
        "clip_cosine_scale": RAW_SCALE,
        "clipscore_hessel": float(np.mean(2.5 * np.maximum(c, 0.0))),
        "clipscore_hessel_scale": HESSEL_SCALE,
        "n": int(c.size),
    }
