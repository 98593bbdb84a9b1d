"""Caption similarity inside a duplicate cluster, as the paper defines it (§5.1).

For two captions a, b: ``sim(a, b) = cos(T(a), T(b)) × Jaccard(unigrams(a), unigrams(b))``, where T is the CLIP text
feature (projected, L2-normalised). A cluster's caption similarity is the **median** of ``sim`` over pairs of its
members' captions (each image's ``caption``); clusters with more than ``max_pairs`` pairs use ``max_pairs`` pairs
drawn with a seed. Unigrams: lower-cased runs of letters and digits.

Without a local CLIP model, the text term is an offline stand-in, **TF-IDF cosine** (scikit-learn, fitted on all
the training captions, unigrams + bigrams, sublinear tf): identical captions still score 1 and captions sharing
no word score 0, but paraphrases with different words score lower than CLIP would. The method is named in every
output (``caption_similarity_method``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import sparse

from copying_study.utils.progress import progress

logger = logging.getLogger(__name__)

_TOKEN = re.compile(r"[a-z0-9]+")
CLIP_METHOD = "clip_text_cosine*unigram_jaccard"
TFIDF_METHOD = "tfidf_cosine*unigram_jaccard (offline stand-in for CLIP text features)"


def unigrams(text: str) -> frozenset[str]:
    """The set of lower-cased word tokens of ``text``."""
    return frozenset(_TOKEN.findall(str(text).lower()))


def unigram_jaccard(a: str, b: str) -> float:
    """|A ∩ B| / |A ∪ B| of the unigram sets (1.0 for two captions with no words that are equal, else 0.0)."""
    ua, ub = unigrams(a), unigrams(b)
    union = ua | ub
    if not union:
        return 1.0 if str(a) == str(b) else 0.0
    return len(ua & ub) / len(union)


class TfidfTextEncoder:
    """TF-IDF vectors (unit rows) fitted on a caption corpus: the offline stand-in for CLIP text features."""

    method = TFIDF_METHOD

    def __init__(self, corpus: Sequence[str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        corpus = [str(c) for c in corpus if str(c).strip()]
        if not corpus:
            raise ValueError("cannot fit the TF-IDF caption model: the captions are all empty")
        self.vectorizer = TfidfVectorizer(lowercase=True, token_pattern=r"[a-z0-9]+", ngram_range=(1, 2),
                                          sublinear_tf=True, norm="l2")
        self.vectorizer.fit(corpus)

    def encode(self, texts: Sequence[str]) -> Any:
        """Sparse (CSR) float32 [len(texts), vocabulary] rows with unit norm (zero rows for unknown words only)."""
        return self.vectorizer.transform([str(t) for t in texts]).astype(np.float32).tocsr()

    def meta(self) -> dict[str, Any]:
        return {"method": self.method, "model": "sklearn TfidfVectorizer(1-2 grams, sublinear tf)",
                "vocabulary_size": len(self.vectorizer.vocabulary_)}


class ClipTextEncoder:
    """CLIP text features (``CLIPTextModelWithProjection.text_embeds``, L2-normalised) from a local model."""

    method = CLIP_METHOD

    def __init__(self, path: str, device: torch.device | str = "cpu", batch_size: int = 64) -> None:
        from transformers import AutoTokenizer, CLIPTextModelWithProjection

        from copying_study.descriptors.hf import clip_sub_config, load_pretrained

        self.path, self.device, self.batch_size = str(path), torch.device(device), int(batch_size)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=True)
            self.model = load_pretrained(CLIPTextModelWithProjection, self.path, clip_sub_config(self.path, "text"))
        except OSError as exc:
            raise FileNotFoundError(f"dedup.caption_model: no CLIP text model (with tokenizer) at '{self.path}' "
                                    f"locally: {exc}") from exc
        self.model = self.model.to(self.device).eval()
        self.max_length = int(self.model.config.max_position_embeddings)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-norm float32 [len(texts), projection_dim] text features (captions truncated to the context)."""
        out = []
        starts = range(0, len(texts), self.batch_size)
        for start in progress(starts, desc="CLIP text features", total=len(starts), unit="batch"):
            tok = self.tokenizer([str(t) for t in texts[start : start + self.batch_size]], padding=True,
                                 truncation=True, max_length=self.max_length, return_tensors="pt").to(self.device)
            with torch.inference_mode():
                emb = self.model(**tok).text_embeds.float()
            out.append(torch.nn.functional.normalize(emb, dim=-1).cpu().numpy())
        return np.concatenate(out).astype(np.float32)

    def meta(self) -> dict[str, Any]:
        return {"method": self.method, "model": self.path}


def load_text_encoder(
    path: str | None, corpus: Sequence[str], device: torch.device | str = "cpu"
) -> ClipTextEncoder | TfidfTextEncoder:
    """CLIP text features from ``path`` (a local folder or a cached HF id), else the TF-IDF stand-in on ``corpus``
    (with a WARNING: the fallback is never silent)."""
    if path:
        if not Path(str(path)).exists() and (Path(str(path)).is_absolute() or str(path).startswith(".")):
            raise FileNotFoundError(f"dedup.caption_model: no model folder at '{path}'")
        return ClipTextEncoder(str(path), device)
    logger.warning("dedup.caption_model is not set: caption similarity uses the offline TF-IDF stand-in for CLIP "
                   "text features (%s)", TFIDF_METHOD)
    return TfidfTextEncoder(corpus)


def sample_pairs(m: int, max_pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All pairs i < j of ``m`` items, or ``max_pairs`` distinct ones drawn with ``rng`` when there are more."""
    total = m * (m - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(m, 1)
        return i, j
    chosen: set[tuple[int, int]] = set()
    while len(chosen) < max_pairs:
        a = rng.integers(0, m, size=2 * (max_pairs - len(chosen)))
        b = rng.integers(0, m, size=a.size)
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            if x != y and len(chosen) < max_pairs:
                chosen.add((min(x, y), max(x, y)))
    pairs = np.array(sorted(chosen), dtype=np.int64)
    return pairs[:, 0], pairs[:, 1]


def caption_similarity(
    captions: Sequence[str], encoder: ClipTextEncoder | TfidfTextEncoder, max_pairs: int, rng: np.random.Generator
) -> tuple[float, int]:
    """(median over caption pairs of text-cosine × unigram-Jaccard, number of pairs used); NaN for < 2 captions."""
    if int(max_pairs) < 1:
        raise ValueError(f"dedup.max_caption_pairs must be >= 1, got {max_pairs}")
    m = len(captions)
    if m < 2:
        return float("nan"), 0
    i, j = sample_pairs(m, int(max_pairs), rng)
    used = np.unique(np.concatenate([i, j]))
    texts = [str(captions[k]) for k in used]
    unique = sorted(set(texts))
    feats = encoder.encode(unique)
    row = {t: n for n, t in enumerate(unique)}
    pos = {int(k): row[t] for k, t in zip(used, texts, strict=True)}
    fi = feats[[pos[int(k)] for k in i]]
    fj = feats[[pos[int(k)] for k in j]]
    cos = np.asarray(fi.multiply(fj).sum(axis=1)).ravel() if sparse.issparse(fi) else np.einsum("nd,nd->n", fi, fj)
    jac = np.array([unigram_jaccard(captions[a], captions[b]) for a, b in zip(i.tolist(), j.tolist(), strict=True)])
    return float(np.median(cos * jac)), int(i.size)
