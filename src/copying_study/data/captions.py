"""Caption regimes and caption perturbations, shared by finetune (train-time) and generate (inference-time).

Names follow the paper (Section 5.3 and 7):

* caption types: ``fixed`` ("An image"), ``class`` ("An image of <class>"), ``original`` (the image's first
  caption), ``blip`` (a fixed caption from its alternatives; a ``blip_captions`` column when the data has one),
  ``random`` (a fixed random sequence of 6 vocabulary words per image).
* text mitigations: ``mc`` (multiple captions: one drawn each time from all the image's captions, its
  ``blip_captions`` included; see ``caption_pool``), ``rc`` (random caption
  replacement), ``rt`` (random token replacement *and* addition), ``cwr`` (caption word repetition), ``rna`` (random
  number addition, integers in [0, 10^6]). ``gn`` (Gaussian noise) acts on text embeddings, not on text, and is
  handled in ``copying_study.diffusion``; here it leaves the caption unchanged.

Every function takes an explicit ``random.Random``: the caller seeds it (``utils.seeding.python_rng``) so the same
seed gives the same captions. Insertion positions run over ``0..len(words)`` inclusive (first and last allowed).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence

from copying_study.utils.seeding import python_rng

CAPTION_TYPES = ("fixed", "class", "original", "blip", "random")
TEXT_MITIGATIONS = ("rc", "rt", "cwr", "rna")
"""Mitigations that rewrite a caption's text (train time and inference time alike)."""
TRAIN_MITIGATIONS = ("none", "mc", "gn", *TEXT_MITIGATIONS, "wen")
"""Train-time mitigations: ``mc`` draws from the image's alternatives, ``gn`` noises the text embedding, ``wen``
(Wen et al., ICLR 2024) leaves samples with a high detection score out of the loss."""
SAMPLER_MITIGATIONS = ("wen", "delayed", "opposite")
"""Inference-time mitigations that act inside the sampler, not on the text: Wen et al.'s prompt-embedding
optimisation and Jain et al.'s delayed / opposite guidance (``copying_study.diffusion.sample``)."""
INFERENCE_MITIGATIONS = ("none", "gn", *TEXT_MITIGATIONS, *SAMPLER_MITIGATIONS)
"""Inference-time mitigations (a prompt has no alternatives, so no ``mc``)."""

FIXED_CAPTION = "An image"
_WORD = re.compile(r"[a-z][a-z'-]*")
CAPTIONLESS_TYPES = ("fixed", "class", "random")
"""Caption types that need no caption in the data (uncaptioned class folders use these)."""

FALLBACK_WORDS: tuple[str, ...] = tuple(sorted(set("""
apple arch autumn ball beach bench bicycle bird boat book bottle bread bridge building bus cake camera car castle
cat chair church city cliff clock cloud coast coffee cup desert dog door dress fence field fish flower forest
fountain fruit garden gate glass grass guitar hat hill horse house island kitchen lake lamp leaf light market
mirror moon mountain museum night ocean orange painting palace park path person piano plane plate portrait
river road rock roof room sand sea sheep ship shoe sign sky snow sofa square star station statue stone street
sun table temple tower town train tree truck umbrella valley vase village wall water wave window winter wood
""".split())))
"""The word pool for random words (``random`` captions, rt, rc) when the data has no captions to draw words from:
a fixed list, so random captions do not depend on the base model's tokenizer (the tiny model's is learned from the
captions themselves, CLIP's holds sub-word pieces)."""


def check_choice(value: str, allowed: Sequence[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {what} '{value}': choose one of {', '.join(allowed)}")
    return value


def vocabulary(captions: Iterable[str]) -> list[str]:
    """Sorted unique lower-case words of ``captions`` (the word pool for random words and random captions)."""
    words: set[str] = set()
    for c in captions:
        words.update(_WORD.findall(str(c).lower()))
    if not words:
        raise ValueError("cannot build a vocabulary: the captions contain no words")
    return sorted(words)


def random_caption(vocab: Sequence[str], n_words: int, rng: random.Random) -> str:
    if not vocab:
        raise ValueError("empty vocabulary")
    return " ".join(rng.choice(vocab) for _ in range(n_words))


def random_captions(image_ids: Iterable[str], vocab: Sequence[str], seed: int, n_words: int = 6) -> dict[str, str]:
    """One fixed random caption per image, derived from (seed, image_id): independent of row order."""
    return {i: random_caption(vocab, n_words, python_rng(seed, "random_caption", i)) for i in image_ids}


def captions_of(row: Mapping) -> list[str]:
    """All captions of a training row (``captions`` list, else ``[caption]``), empty strings dropped; ``[]`` for an
    uncaptioned image (a ``classfolders`` source without a captions file)."""
    caps = row.get("captions")
    caps = list(caps) if caps is not None and len(caps) else [row.get("caption")]
    return [str(c) for c in caps if c is not None and str(c).strip()]


def alternatives(row: Mapping) -> list[str]:
    """The captions of a training row (:func:`captions_of`); ``ValueError`` when it has none."""
    caps = captions_of(row)
    if not caps:
        raise ValueError(f"image {row.get('image_id', '?')} has no caption")
    return caps


def caption_pool(row: Mapping) -> list[str]:
    """The captions MC and partial duplication draw from: the row's own captions followed by its ``blip_captions``
    (the caption stage's model captions) when it has them; an uncaptioned image with model captions draws from
    those alone (the paper: "20 captions ... plus the original"), one with neither has ``[]``."""
    blip = row.get("blip_captions")
    model = [str(c) for c in blip if c is not None and str(c).strip()] if blip is not None else []
    return captions_of(row) + model


def word_pool(captions: Iterable[str]) -> tuple[list[str], str | None]:
    """The random-word pool: the words of ``captions``, or :data:`FALLBACK_WORDS` when they hold none (uncaptioned
    data) together with the note that says so (``None`` when the captions gave the words)."""
    captions = [c for c in captions if str(c).strip()]
    if captions:
        return vocabulary(captions), None
    return list(FALLBACK_WORDS), (f"the data has no captions: random words (random captions, rt, rc) come from the "
                                  f"fixed list copying_study.data.captions.FALLBACK_WORDS ({len(FALLBACK_WORDS)} "
                                  "words)")


def base_caption(row: Mapping, caption_type: str, random_caption_of: Mapping[str, str] | None = None) -> str:
    """The caption an image is trained with under ``caption_type`` (before any mitigation)."""
    check_choice(caption_type, CAPTION_TYPES, "caption type")
    if caption_type == "fixed":
        return FIXED_CAPTION
    if caption_type == "class":
        label = row.get("class_label")
        if label is None or str(label).strip() == "" or str(label) == "nan":
            raise ValueError(f"caption type 'class' needs a class_label; image {row.get('image_id', '?')} has none")
        return f"{FIXED_CAPTION} of {str(label).replace('_', ' ')}"
    if caption_type == "original":
        return alternatives(row)[0]
    if caption_type == "blip":
        blip = row.get("blip_captions")
        if blip is not None and len(blip):
            return str(blip[0])
        caps = alternatives(row)
        return caps[1] if len(caps) > 1 else caps[0]
    if random_caption_of is None or row.get("image_id") not in random_caption_of:
        raise ValueError("caption type 'random' needs the image's random caption (see random_captions)")
    return random_caption_of[row["image_id"]]


def _insert(words: list[str], new: str, rng: random.Random) -> None:
    words.insert(rng.randint(0, len(words)), new)


def random_token(caption: str, rng: random.Random, vocab: Sequence[str], n: int = 2) -> str:
    """RT: ``n`` edits, each a coin flip between replacing a random word and adding a random word somewhere."""
    words = caption.split()
    for _ in range(n):
        if words and rng.random() < 0.5:
            words[rng.randrange(len(words))] = rng.choice(vocab)
        else:
            _insert(words, rng.choice(vocab), rng)
    return " ".join(words)


def word_repetition(caption: str, rng: random.Random, n: int = 2) -> str:
    """CWR: insert ``n`` words drawn from the caption itself at random positions."""
    words = caption.split()
    if not words:
        return caption
    pool = list(words)
    for _ in range(n):
        _insert(words, rng.choice(pool), rng)
    return " ".join(words)


def number_addition(caption: str, rng: random.Random, n: int = 2, high: int = 10**6) -> str:
    """RNA: insert ``n`` integers drawn uniformly from [0, high] at random positions."""
    words = caption.split()
    for _ in range(n):
        _insert(words, str(rng.randint(0, high)), rng)
    return " ".join(words)


def perturb_caption(
    caption: str,
    mitigation: str,
    rng: random.Random,
    *,
    vocab: Sequence[str] = (),
    alternatives_: Sequence[str] = (),
    p: float = 1.0,
    n: int = 2,
    rc_words: int = 4,
    rna_high: int = 10**6,
) -> str:
    """Apply one text mitigation. ``p`` is the probability that the caption is changed (``mc`` ignores it, as in
    the paper's code). Exactly one ``rng.random()`` is drawn for the gate whatever the outcome, so a sequence of
    calls stays aligned across mitigations with the same seed."""
    check_choice(mitigation, TRAIN_MITIGATIONS, "mitigation")
    if mitigation in ("none", "gn", "wen"):  # these act on embeddings or the loss, not on the text
        return caption
    if mitigation == "mc":
        if not alternatives_:
            raise ValueError("mitigation 'mc' needs the image's alternative captions")
        return rng.choice(list(alternatives_))
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"mitigation probability must be in [0, 1], got {p}")
    if rng.random() >= p:
        return caption
    if mitigation in ("rc", "rt") and not vocab:
        raise ValueError(f"mitigation '{mitigation}' needs a vocabulary of words")
    if mitigation == "rc":
        return random_caption(vocab, rc_words, rng)
    if mitigation == "rt":
        return random_token(caption, rng, vocab, n)
    if mitigation == "cwr":
        return word_repetition(caption, rng, n)
    return number_addition(caption, rng, n, rna_high)
