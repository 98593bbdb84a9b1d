"""Reference image families for calibrating copy descriptors, and the copy transforms that make positive pairs.

Families (each deterministic; none of them is ever a run's training data):

* ``embedded``: distinct scenes of the embedded study generator (``copying_study.data.embedded``, no planted
  copies), drawn from a calibration seed of their own;
* ``photos``: tiles of the real photographs that ship inside installed packages — scikit-learn's sample images
  (``china``, ``flower``), matplotlib's sample data (``grace_hopper``) and scikit-image's data folder (17 photographs
  in all). Each photograph is scaled so its long side is at most ``PHOTO_LONG_SIDE`` px and cut into non-overlapping
  ``tile``-px tiles (photographs are only ever scaled down, never up). Neighbouring tiles of one photograph (grass, gravel, brick, one face) are *hard* negatives.
  Tiles whose luminance standard deviation is below ``MIN_TILE_STD`` (flat sky, black space) are left out: two flat
  tiles are the same image to any copy detector, so they are not "distinct images";
* ``synthetic``: photo-like images (1/f² colour noise fields with a few blurred shapes), seeded.

The whitening of :mod:`copying_study.descriptors.scale` is fitted on a *generic* reference set drawn from the
``embedded`` and ``synthetic`` generators with another seed (:func:`whitening_reference`), so the ``photos`` family
stays held out from every fit.

Copy transforms (:data:`TRANSFORMS`) at the edge of what a copy detector must survive: ``resize`` (to 50–80 %),
``jpeg`` (quality 30–75), ``crop`` (keep 90–100 % of each side), ``brightness`` / ``contrast`` (×0.7–1.3),
``text`` (a 2–5 letter word, 12 % of the height), ``combo`` (two of these).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from copying_study.utils.seeding import derive_seed, numpy_rng

TRANSFORMS = ("resize", "jpeg", "crop", "brightness", "contrast", "text", "combo")
FAMILIES = ("embedded", "photos", "synthetic")
#: the seed every calibration family is drawn from (fixed: a calibration is a property of the descriptor)
CALIBRATION_SEED = 20230530
#: the seed of the generic whitening reference set (disjoint from the calibration families)
REFERENCE_SEED = 20231210
PHOTO_LONG_SIDE = 640
MIN_TILE_STD = 0.04
#: scikit-image's photographs (its data folder ships them inside the wheel); documents and masks are not used
SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "immunohistochemistry",
                  "camera", "brick", "grass", "gravel", "moon", "coins", "clock")


def transform(img: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """``img`` after the copy transform ``name`` with a random severity drawn from ``rng``."""
    w, h = img.size
    if name == "resize":
        f = float(rng.uniform(0.5, 0.8))
        return img.resize((max(4, round(w * f)), max(4, round(h * f))), Image.Resampling.BILINEAR)
    if name == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(30, 76)))
        with Image.open(io.BytesIO(buf.getvalue())) as jpg:
            return jpg.convert("RGB")
    if name == "crop":
        kw, kh = (float(v) for v in rng.uniform(0.9, 1.0, 2))
        cw, ch = max(1, round(w * kw)), max(1, round(h * kh))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((left, top, left + cw, top + ch))
    if name == "brightness":
        return ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.7, 1.3)))
    if name == "contrast":
        return ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.7, 1.3)))
    if name == "text":
        scale = 4 if h < 128 else 1  # draw small images at 4x so the glyphs stay legible
        layer = img.resize((w * scale, h * scale), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(layer)
        word = "".join(chr(int(c)) for c in rng.integers(ord("A"), ord("Z") + 1, int(rng.integers(2, 6))))
        font = ImageFont.load_default(size=max(6, round(0.12 * h * scale)))
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        x = int(rng.integers(0, max(1, w * scale - (right - left))))
        y = int(rng.integers(0, max(1, h * scale - (bottom - top))))
        draw.text((x - left, y - top), word, font=font, fill=(255, 255, 255) if rng.random() < 0.5 else (0, 0, 0))
        return layer.resize((w, h), Image.Resampling.LANCZOS)
    if name == "combo":
        first, second = rng.choice(len(TRANSFORMS) - 1, size=2, replace=False)
        return transform(transform(img, TRANSFORMS[int(first)], rng), TRANSFORMS[int(second)], rng)
    raise ValueError(f"unknown copy transform '{name}': choose one of {', '.join(TRANSFORMS)}")


def copy_transformed(images: Sequence[Image.Image], seed: int, purpose: str,
                     transforms: Sequence[str] = TRANSFORMS) -> tuple[list[Image.Image], list[str]]:
    """Each image after one copy transform drawn from ``transforms`` (seeded per position): (copies, names)."""
    out, names = [], []
    for k, img in enumerate(images):
        rng = numpy_rng(seed, "copy_transform", purpose, k)
        name = str(transforms[int(rng.integers(0, len(transforms)))])
        out.append(transform(img.convert("RGB"), name, rng))
        names.append(name)
    return out, names


@lru_cache(maxsize=1)
def package_photos() -> tuple[tuple[str, Image.Image], ...]:
    """``(name, RGB image)`` of the photographs shipped by scikit-learn, matplotlib and scikit-image."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    with Image.open(cbook.get_sample_data("grace_hopper.jpg")) as img:
        photos = [("grace_hopper", img.convert("RGB"))]
    sample = load_sample_images()
    for path, arr in zip(sample.filenames, sample.images, strict=True):
        photos.append((str(path).replace("\\", "/").rsplit("/", 1)[-1].split(".")[0], Image.fromarray(arr)))
    try:
        import skimage.data as skdata
    except ImportError as exc:  # pragma: no cover - scikit-image is a dependency
        raise ImportError("the 'photos' reference family needs scikit-image (pip install scikit-image)") from exc
    for name in SKIMAGE_PHOTOS:
        photos.append((name, Image.fromarray(getattr(skdata, name)()).convert("RGB")))
    return tuple(photos)


def photo_tiles(tile: int = 96, long_side: int = PHOTO_LONG_SIDE, min_std: float = MIN_TILE_STD,
                photos: Sequence[str] | None = None) -> tuple[list[Image.Image], list[str]]:
    """Non-overlapping ``tile``² tiles of the package photographs (long side scaled down to ``long_side``), without
    near-flat tiles: (tiles, the photograph each came from)."""
    tiles, sources = [], []
    for name, photo in package_photos():
        if photos is not None and name not in photos:
            continue
        w, h = photo.size
        img = photo
        if max(w, h) > long_side:
            f = long_side / max(w, h)
            img = photo.resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS)
        for top in range(0, img.height - tile + 1, tile):
            for left in range(0, img.width - tile + 1, tile):
                t = img.crop((left, top, left + tile, top + tile))
                if np.asarray(t.convert("L"), dtype=np.float32).std() / 255.0 >= min_std:
                    tiles.append(t)
                    sources.append(name)
    return tiles, sources


def synthetic_photos(n: int, size: int = 64, seed: int = CALIBRATION_SEED) -> list[Image.Image]:
    """``n`` photo-like images: a 1/f² colour noise field plus a few blurred ellipses and rectangles."""
    out = []
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    amp = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / size) ** 1.0  # amplitude 1/f -> power 1/f²
    for k in range(n):
        rng = numpy_rng(seed, "calibration", "synthetic", k)
        chans = []
        for _ in range(3):
            phase = np.exp(2j * np.pi * rng.random((size, size)))
            field = np.real(np.fft.ifft2(amp * phase))
            chans.append((field - field.mean()) / (field.std() + 1e-8))
        mix = rng.normal(size=(3, 3)) * 0.5 + np.eye(3)  # correlated colour channels, as in photos
        arr = np.tensordot(mix, np.stack(chans), axes=1).transpose(1, 2, 0)
        arr = np.clip(128 + 40 * arr + rng.normal(0, 30, 3), 0, 255).astype(np.uint8)
        img = Image.fromarray(arr, "RGB")
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(1, 5))):
            x0, y0 = (int(v) for v in rng.integers(0, size * 3 // 4, 2))
            x1, y1 = x0 + int(rng.integers(size // 8, size // 2)), y0 + int(rng.integers(size // 8, size // 2))
            colour = tuple(int(c) for c in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)([x0, y0, x1, y1], fill=colour)
        out.append(img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.5, 1.5)))))
    return out


def embedded_scenes(n: int, seed: int = CALIBRATION_SEED, resolution: int | None = None) -> list[Image.Image]:
    """``n`` distinct scenes of the embedded study generator (no planted copies) at its default resolution."""
    from copying_study.data.embedded import generate_embedded
    from copying_study.utils.images import images_from_bytes

    kwargs = {} if resolution is None else {"resolution": int(resolution)}
    table = generate_embedded(n_images=n, n_clusters=0, seed=seed, shuffle=False, **kwargs)
    return images_from_bytes(table["image"])


def family_images(family: str, n: int, seed: int = CALIBRATION_SEED) -> tuple[list[Image.Image], list[str]]:
    """The originals of one family (at most ``n``) and, per image, what it came from (photographs: the photo)."""
    if int(n) < 2:
        raise ValueError(f"a calibration family needs at least 2 images, got n={n}")
    if family == "embedded":
        images = embedded_scenes(n, seed)
        return images, [f"scene{k}" for k in range(len(images))]
    if family == "photos":
        tiles, sources = photo_tiles()
        if len(tiles) > n:  # an even, seeded subsample so every photograph stays represented
            keep = np.sort(numpy_rng(seed, "calibration", "photos").choice(len(tiles), size=n, replace=False))
            tiles, sources = [tiles[int(i)] for i in keep], [sources[int(i)] for i in keep]
        return tiles, sources
    if family == "synthetic":
        images = synthetic_photos(n, seed=seed)
        return images, [f"synthetic{k}" for k in range(len(images))]
    raise ValueError(f"unknown calibration family '{family}': choose one of {', '.join(FAMILIES)}")


def whitening_reference(n: int) -> list[Image.Image]:
    """The generic reference set whitening is fitted on: ``n // 2`` embedded scenes and ``n - n // 2`` synthetic
    photo-like images, drawn from :data:`REFERENCE_SEED` (no package photograph: they stay held out)."""
    if int(n) < 8:
        raise ValueError(f"whitening.n_reference must be >= 8, got {n}")
    seed = derive_seed(REFERENCE_SEED, "whitening")
    return embedded_scenes(int(n) // 2, seed) + synthetic_photos(int(n) - int(n) // 2, seed=seed)
