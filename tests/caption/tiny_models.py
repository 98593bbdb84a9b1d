"""Tiny image-to-text models (random weights) saved like real ones: BLIP and GIT, model + processor in one folder.

The tokenizer is a BERT WordPiece tokenizer over a few caption words and single letters, as BLIP's and GIT's are.
"""

from __future__ import annotations

import string
from pathlib import Path

WORDS = ("a an the of on in with and picture photo dog cat fish bird truck church man woman field road sky water "
         "red blue green small large sitting standing").split()
SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _vocab(extra: tuple[str, ...] = ()) -> dict[str, int]:
    vocab = {t: i for i, t in enumerate(SPECIAL + extra)}
    for w in [*WORDS, *string.ascii_lowercase, *("##" + c for c in string.ascii_lowercase)]:
        vocab.setdefault(w, len(vocab))
    return vocab


def _pil_processor(name: str):
    """The PIL-backed image processor ``name`` (transformers >= 5 calls it ``<name>Pil``; 4.x: ``<name>``)."""
    import transformers

    return getattr(transformers, f"{name}Pil", None) or getattr(transformers, name)


def _small(**kw) -> dict:
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, **kw)


def save_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """A ``BlipForConditionalGeneration`` + ``BlipProcessor`` (32-px images, ``[DEC]`` as BOS, as BLIP's
    tokenizer) written with ``save_pretrained``."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor

    vocab = _vocab(("[DEC]",))
    tokenizer = BertTokenizer(vocab=vocab, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=_pil_processor("BlipImageProcessor")(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    config = BlipConfig(
        text_config=_small(vocab_size=len(vocab), encoder_hidden_size=32, max_position_embeddings=64,
                           bos_token_id=vocab["[DEC]"], pad_token_id=vocab["[PAD]"], sep_token_id=vocab["[SEP]"],
                           eos_token_id=vocab["[SEP]"]),
        vision_config=_small(image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    BlipForConditionalGeneration(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def save_tiny_git(folder: Path, seed: int = 0) -> Path:
    """A ``GitForCausalLM`` + ``GitProcessor`` (CLIP image processor, BERT tokenizer) written with
    ``save_pretrained``."""
    import torch
    from transformers import BertTokenizer, GitConfig, GitForCausalLM, GitProcessor

    vocab = _vocab()
    processor = GitProcessor(
        image_processor=_pil_processor("CLIPImageProcessor")(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=BertTokenizer(vocab=vocab),
    )
    config = GitConfig(vision_config=_small(image_size=32, patch_size=8), vocab_size=len(vocab),
                       max_position_embeddings=64, bos_token_id=vocab["[CLS]"], eos_token_id=vocab["[SEP]"],
                       pad_token_id=vocab["[PAD]"], **_small())
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    GitForCausalLM(config).eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_photo_classfolders(root: Path, per_class: int = 6, size: int = 64, seed: int = 0) -> Path:
    """An uncaptioned Imagenette-style folder of real photographs: seeded ``size``-px JPEG crops of scikit-learn's
    two sample photos (``building/`` from china.jpg, ``flower/`` from flower.jpg), ``per_class`` per class."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    for label, photo in zip(("building", "flower"), photos, strict=True):
        (root / label).mkdir(parents=True, exist_ok=True)
        h, w = photo.shape[:2]
        for i in range(per_class):
            side = int(rng.integers(size * 2, min(h, w)))
            y, x = int(rng.integers(0, h - side)), int(rng.integers(0, w - side))
            crop = Image.fromarray(photo[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BICUBIC)
            crop.save(root / label / f"{label}_{i:02d}.jpg", quality=90)
    return root
