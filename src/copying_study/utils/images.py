"""Image conversions shared by all stages: PNG bytes in tables, PIL images in code."""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image


def encode_png(image: Image.Image, compress_level: int = 6) -> bytes:
    """PNG bytes of ``image`` (lossless, deterministic for the same pixels and level; 1 = fastest, 9 = smallest)."""
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False, compress_level=compress_level)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """An RGB PIL image from encoded bytes (PNG, JPEG, ...). Raises ``ValueError`` when unreadable."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return to_rgb(img)
    except Exception as exc:  # PIL raises many types
        raise ValueError(f"unreadable image ({type(exc).__name__}: {exc})") from exc


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB: palette and alpha over white, 16-bit and float scaled, CMYK via PIL."""
    if img.mode == "RGB":
        return img.copy()
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scale = 65535.0 if img.mode.startswith("I;16") or hi > 255 else 255.0
        if img.mode == "F" and hi <= 1.0 and lo >= 0.0:
            scale = 1.0
        arr8 = np.clip(arr / scale * 255.0, 0, 255).round().astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, size: int, resample=Image.Resampling.BICUBIC) -> Image.Image:
    """Resize the short edge to ``size`` (keeping aspect ratio), then center-crop to ``size``×``size``."""
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ValueError("image has no pixels")
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), resample=resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def images_from_bytes(column: Iterable[bytes]) -> list[Image.Image]:
    """Decode a column of encoded images (e.g. ``training_set['image']``)."""
    return [decode_image(b) for b in column]
