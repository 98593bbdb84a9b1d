"""A tiny CLIP model (random weights) saved like a real one: model, tokenizer and image processor in one folder."""

from __future__ import annotations

import string
from pathlib import Path


def tiny_clip_parts():
    """(model, tokenizer, image processor) of a tiny random CLIP with a character-level tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from copying_study.metrics.clipscore import _image_processor_class

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits + ".,":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    processor = _image_processor_class()(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                           num_attention_heads=2),
        projection_dim=16,
    )
    return CLIPModel(config).eval(), tokenizer, processor


def save_tiny_clip(folder: Path) -> Path:
    """Write the tiny CLIP into ``folder`` with ``save_pretrained`` (as a user's local CLIP folder)."""
    model, tokenizer, processor = tiny_clip_parts()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
