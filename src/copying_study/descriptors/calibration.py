"""Measure a descriptor's score distributions on positive pairs (an image and its transformed copy) and negative
pairs (two different images), and recommend a copy threshold from them.

Image families:

* ``embedded``: distinct scenes of the embedded study set (``copying_study.data.embedded``), 32 px;
* ``photos``: non-overlapping tiles of the real photographs shipped with matplotlib and scikit-learn
  (grace_hopper, china, flower); neighbouring tiles of one photograph are hard negatives;
* ``synthetic``: photo-like images (1/f² colour noise fields with blurred shapes), seeded.

Transforms (severities at the edge of what the ``default`` descriptor must survive): ``resize`` (down to 50–80 %),
``jpeg`` (quality 30–75), ``crop`` (keep 90–100 % of each side, anywhere), ``brightness`` and ``contrast``
(×0.7–1.3), ``text`` (a 2–5 letter word, 12 % of the height, at a random place), ``combo`` (two of the above).

Run ``python -m copying_study.descriptors.calibration --help``.
"""

from __future__ import annotations

import argparse
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

from copying_study.descriptors.base import Descriptor
from copying_study.utils.seeding import numpy_rng

TRANSFORMS = ("resize", "jpeg", "crop", "brightness", "contrast", "text", "combo")
FAMILIES = ("embedded", "photos", "synthetic")
THRESHOLD_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def transform(img: Image.Image, name: str, rng: np.random.Generator) -> Image.Image:
    """``img`` after the copy transform ``name`` with random severity from ``rng``."""
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
    raise ValueError(f"unknown transform '{name}': choose one of {', '.join(TRANSFORMS)}")


def photo_tiles(tile: int = 96) -> list[Image.Image]:
    """Non-overlapping ``tile``² tiles of the sample photographs that ship with matplotlib and scikit-learn."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    photos = [Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")]
    photos += [Image.fromarray(a) for a in load_sample_images().images]
    tiles = []
    for photo in photos:
        w, h = photo.size
        for top in range(0, h - tile + 1, tile):
            for left in range(0, w - tile + 1, tile):
                tiles.append(photo.crop((left, top, left + tile, top + tile)))
    return tiles


def synthetic_photos(n: int, size: int = 64, seed: int = 0) -> list[Image.Image]:
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


def embedded_scenes(n: int, resolution: int = 32, seed: int = 0) -> list[Image.Image]:
    """``n`` distinct scenes of the embedded study set (no planted copies)."""
    from copying_study.data.embedded import generate_embedded
    from copying_study.utils.images import images_from_bytes

    table = generate_embedded(n_images=n, resolution=resolution, n_clusters=0, seed=seed, shuffle=False)
    return images_from_bytes(table["image"])


def family_images(family: str, n: int, seed: int = 0) -> list[Image.Image]:
    """The originals of one image family (at most ``n``)."""
    if family == "embedded":
        return embedded_scenes(n, seed=seed)
    if family == "photos":
        return photo_tiles()[:n]
    if family == "synthetic":
        return synthetic_photos(n, seed=seed)
    raise ValueError(f"unknown image family '{family}': choose one of {', '.join(FAMILIES)}")


def pair_scores(
    descriptor: Descriptor, images: Sequence[Image.Image], seed: int = 0, transforms: Sequence[str] = TRANSFORMS
) -> dict[str, np.ndarray]:
    """Positive scores per transform (each image vs its transformed copy) and ``negative`` scores (all pairs of
    different originals)."""
    base = descriptor.encode(images)
    out: dict[str, np.ndarray] = {}
    for name in transforms:
        copies = [transform(img, name, numpy_rng(seed, "calibration", name, k)) for k, img in enumerate(images)]
        out[name] = np.einsum("nd,nd->n", base, descriptor.encode(copies))
    sims = base @ base.T
    out["negative"] = sims[np.triu_indices(len(images), 1)]
    return out


def recommend_threshold(negatives: np.ndarray, step: float = 0.05) -> float:
    """The smallest multiple of ``step`` strictly above every negative score: no measured pair of different images
    would be called a copy (connected components turn each false edge into a merged cluster)."""
    t = (np.floor(float(np.max(negatives)) / step) + 1) * step
    return float(min(1.0, round(t, 6)))


def summarize(scores: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Quantiles of each score set and the recall / false-positive rate over ``THRESHOLD_GRID``."""
    out = {}
    for name, s in scores.items():
        row = {"n": float(s.size), "min": float(s.min()), "p1": float(np.percentile(s, 1)),
               "p50": float(np.median(s)), "p99": float(np.percentile(s, 99)), "max": float(s.max())}
        row.update({f">={t}": float((s >= t).mean()) for t in THRESHOLD_GRID})
        out[name] = row
    return out


def calibrate(descriptor: Descriptor, families: Sequence[str] = FAMILIES, n: int = 200, seed: int = 0
              ) -> dict[str, Any]:
    """Score distributions per family and transform, and the recommended threshold over all families."""
    per_family, pos_all, neg_all = {}, [], []
    for family in families:
        scores = pair_scores(descriptor, family_images(family, n, seed), seed)
        per_family[family] = summarize(scores)
        pos_all.append(np.concatenate([v for k, v in scores.items() if k != "negative"]))
        neg_all.append(scores["negative"])
    pos, neg = np.concatenate(pos_all), np.concatenate(neg_all)
    threshold = recommend_threshold(neg)
    return {
        "descriptor": descriptor.meta(),
        "families": per_family,
        "recommended_threshold": threshold,
        "recall_at_threshold": float((pos >= threshold).mean()),
        "false_positive_rate_at_threshold": float((neg >= threshold).mean()),
    }


def format_table(result: Mapping[str, Any]) -> str:
    """A plain-text table of ``calibrate``'s result."""
    cols = ["n", "min", "p1", "p50", "p99", "max"] + [f">={t}" for t in THRESHOLD_GRID]
    lines = []
    for family, rows in result["families"].items():
        lines.append(f"\n[{family}]")
        lines.append(f"{'pairs':<11}" + "".join(f"{c:>8}" for c in cols))
        for name, row in rows.items():
            lines.append(f"{name:<11}" + "".join(
                f"{row[c]:>8.0f}" if c == "n" else f"{row[c]:>8.3f}" for c in cols))
    lines.append(f"\nrecommended threshold {result['recommended_threshold']:.2f}: recall "
                 f"{result['recall_at_threshold']:.4f}, false-positive rate "
                 f"{result['false_positive_rate_at_threshold']:.6f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """CLI: print the calibration table for a descriptor spec (JSON) over the chosen image families."""
    from copying_study.descriptors import load_descriptor

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--descriptor", default='{"name": "default"}', help="descriptor spec as JSON")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--n", type=int, default=200, help="originals per family (photos has 78 at most)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the full result to this file")
    args = parser.parse_args(argv)
    result = calibrate(load_descriptor(json.loads(args.descriptor)), args.families.split(","), args.n, args.seed)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
