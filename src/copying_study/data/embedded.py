"""The embedded study set: generated image–caption pairs with planted duplicate clusters, deterministic from a seed.

Each distinct scene is one or more objects of one shape and colour on a background, drawn with PIL at 4× the
target resolution and downsampled (anti-aliased). Scenes range over four complexity levels:

* 0 ``flat``: one solid object on a plain background;
* 1 ``simple``: one or two solid objects on a plain or gradient background;
* 2 ``textured``: one to three objects, solid or striped, on a gradient, striped or checkered background;
* 3 ``busy``: three to five striped objects on a two-colour patterned background, scattered confetti, pixel noise.

Positions, sizes, rotations and colour shades are random, so two scenes with the same description still look
different. Captions come from templates and name colour, shape, count, texture and background; ``n_captions``
distinct paraphrases per image stand in for BLIP captions (the first one is ``caption``). The class label is the
shape.

Planted clusters: ``n_clusters`` scenes are each given ``copies_per_cluster`` extra copies (cluster size
``copies_per_cluster + 1``). The first ``exact_copies_per_cluster`` copies are byte-identical; the others are near
copies made by one or two of: a small crop (at most 10 % of each side) resized back, a down-and-up resize, colour
jitter, JPEG re-compression, and a small overlaid text. Copies keep the captions of their original. The original
and its copies carry the cluster id in ``planted_cluster``; every other row has -1. ``file_name`` names the scene,
and for copies the copy number and the operations applied (``scene_00012_copy2_jpeg+text.png``).
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageEnhance, ImageFont

from copying_study.data.table import frame_from_rows, make_image_id, sha256_hex
from copying_study.utils.images import encode_png
from copying_study.utils.seeding import numpy_rng

SOURCE = "embedded"
SUPERSAMPLE = 4

SHAPES = ("circle", "square", "triangle", "diamond", "cross", "ring")
PLURALS = {"cross": "crosses"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 40),
    "orange": (240, 135, 25),
    "yellow": (240, 215, 45),
    "green": (45, 165, 65),
    "teal": (25, 150, 150),
    "blue": (35, 75, 205),
    "purple": (130, 55, 175),
    "pink": (240, 135, 185),
    "brown": (125, 75, 35),
    "white": (245, 245, 240),
    "gray": (130, 130, 130),
    "black": (25, 25, 30),
}
COMPLEXITY_LEVELS = ("flat", "simple", "textured", "busy")
NEAR_COPY_OPS = ("crop", "resize", "jitter", "jpeg", "text")
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five"}
MIN_COLOUR_DISTANCE = 110.0

# {obj}: "two striped red circles"; {bg}: "blue and white checkered background"; {extras}: ", with ... confetti"
TEMPLATES = (
    "{obj} on a {bg}{extras}",
    "a {noun} of {obj} on a {bg}{extras}",
    "{bg_cap} with {obj}{extras}",
    "{obj} {prep} a {bg}{extras}",
    "a {style} {noun} showing {obj} {prep} a {bg}{extras}",
    "{obj_cap}, {bg}{extras}",
    "there {be} {obj} {prep} a {bg}{extras}",
    "a {noun} with a {bg} and {obj}{extras}",
    "{obj} drawn {prep} a {bg}{extras}",
    "a {style} {noun}: {obj}, {bg}{extras}",
)
NOUNS = ("picture", "image", "drawing", "illustration", "graphic", "render")
PREPS = ("on", "against", "over", "in front of")
STYLES = ("simple", "flat", "clip art", "digital", "minimal", "synthetic")
_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiou])")


@dataclass
class Scene:
    """The attributes of one generated scene (what its captions describe)."""

    shape: str
    colour: str
    count: int
    level: int
    background: str  # plain | gradient | striped | checkered | dotted
    bg_colour: str
    bg_colour2: str | None = None
    textured: bool = False
    confetti_colour: str | None = None
    noise: float = 0.0
    objects: list[tuple[float, float, float, float]] = field(default_factory=list)  # cx, cy, size, angle (0..1)


def _plural(shape: str, n: int) -> str:
    return shape if n == 1 else PLURALS.get(shape, shape + "s")


def _distance(a: str, b: str) -> float:
    return float(np.linalg.norm(np.subtract(COLOURS[a], COLOURS[b])))


def _pick_colour(rng: np.random.Generator, avoid: Sequence[str]) -> str:
    choices = [c for c in COLOURS if all(_distance(c, a) >= MIN_COLOUR_DISTANCE for a in avoid)]
    return str(rng.choice(choices))


def _shade(colour: str, rng: np.random.Generator, spread: int = 14) -> tuple[int, int, int]:
    base = np.asarray(COLOURS[colour], dtype=np.int64) + rng.integers(-spread, spread + 1, 3)
    return tuple(int(v) for v in np.clip(base, 0, 255))


def sample_scene(rng: np.random.Generator, level: int) -> Scene:
    """Random attributes and object layout of one scene at complexity ``level`` (0 flat … 3 busy)."""
    shape = str(rng.choice(SHAPES))
    colour = str(rng.choice(list(COLOURS)))
    bg_colour = _pick_colour(rng, [colour])
    count = {0: 1, 1: int(rng.integers(1, 3)), 2: int(rng.integers(1, 4)), 3: int(rng.integers(3, 6))}[level]
    background = {
        0: "plain",
        1: str(rng.choice(["plain", "gradient"])),
        2: str(rng.choice(["gradient", "striped", "checkered"])),
        3: str(rng.choice(["striped", "checkered", "dotted"])),
    }[level]
    scene = Scene(shape=shape, colour=colour, count=count, level=level, background=background, bg_colour=bg_colour)
    if background != "plain":
        scene.bg_colour2 = _pick_colour(rng, [colour, bg_colour])
    scene.textured = level == 3 or (level == 2 and bool(rng.random() < 0.5))
    if level == 3:
        scene.confetti_colour = _pick_colour(rng, [bg_colour])
        scene.noise = float(rng.uniform(6.0, 14.0))
    size_range = {1: (0.38, 0.62), 2: (0.28, 0.40), 3: (0.22, 0.32), 4: (0.19, 0.26), 5: (0.17, 0.23)}[count]
    placed: list[tuple[float, float, float, float]] = []
    for _ in range(count):
        best = None
        for _attempt in range(60):
            size = float(rng.uniform(*size_range))
            cx, cy = (float(v) for v in rng.uniform(size / 2 + 0.02, 1 - size / 2 - 0.02, 2))
            angle = float(rng.uniform(-0.5, 0.5))
            candidate = (cx, cy, size, angle)
            best = best or candidate
            if all(math.hypot(cx - x, cy - y) > (size + s) / 2 * 0.95 for x, y, s, _ in placed):
                best = candidate
                break
        placed.append(best)
    scene.objects = placed
    return scene


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        scale = r / math.sqrt(2) * 1.15
    elif shape == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        scale = r
    elif shape == "diamond":
        pts = [(0, -1), (0.7, 0), (0, 1), (-0.7, 0)]
        scale = r
    else:  # cross
        w = 0.36
        pts = [(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
               (-w, -w)]
        scale = r
    theta = angle * math.pi / 3  # at most ±30°
    c, s = math.cos(theta), math.sin(theta)
    return [(cx + scale * (x * c - y * s), cy + scale * (x * s + y * c)) for x, y in pts]


def _shape_mask(shape: str, obj: tuple[float, float, float, float], canvas: int) -> Image.Image:
    cx, cy, size, angle = obj
    cx, cy, r = cx * canvas, cy * canvas, size * canvas / 2
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = r * 0.55
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=255)
    return mask


def _stripes(canvas: int, a: tuple[int, int, int], b: tuple[int, int, int], period: int, diagonal: bool) -> Image.Image:
    yy, xx = np.mgrid[0:canvas, 0:canvas]
    phase = (xx + yy) if diagonal else xx
    sel = ((phase // max(1, period // 2)) % 2).astype(bool)
    arr = np.where(sel[..., None], np.asarray(b, np.uint8), np.asarray(a, np.uint8))
    return Image.fromarray(arr.astype(np.uint8), "RGB")


def _background(scene: Scene, canvas: int, rng: np.random.Generator) -> Image.Image:
    a = _shade(scene.bg_colour, rng)
    if scene.background == "plain":
        return Image.new("RGB", (canvas, canvas), a)
    b = _shade(scene.bg_colour2 or scene.bg_colour, rng)
    if scene.background == "gradient":
        t = np.linspace(0.0, 1.0, canvas)[:, None, None]
        arr = (1 - t) * np.asarray(a, float) + t * np.asarray(b, float)
        arr = np.broadcast_to(arr, (canvas, canvas, 3))
        img = Image.fromarray(arr.round().astype(np.uint8), "RGB")
        return img.rotate(float(rng.choice([0, 90, 180, 270])))
    period = int(canvas * rng.uniform(0.12, 0.25))
    if scene.background == "striped":
        return _stripes(canvas, a, b, period, diagonal=bool(rng.random() < 0.5))
    if scene.background == "checkered":
        yy, xx = np.mgrid[0:canvas, 0:canvas]
        cell = max(1, period // 2)
        sel = ((xx // cell + yy // cell) % 2).astype(bool)
        arr = np.where(sel[..., None], np.asarray(b, np.uint8), np.asarray(a, np.uint8))
        return Image.fromarray(arr.astype(np.uint8), "RGB")
    img = Image.new("RGB", (canvas, canvas), a)  # dotted
    draw = ImageDraw.Draw(img)
    step = max(2, period)
    dot = max(1, step // 4)
    offset = int(rng.integers(0, step))
    for y in range(offset % step, canvas, step):
        for x in range((offset + (y // step) * step // 2) % step, canvas, step):
            draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=b)
    return img


def render_scene(scene: Scene, resolution: int, rng: np.random.Generator) -> Image.Image:
    """Draw ``scene`` at ``resolution``×``resolution`` (RGB), supersampled for smooth edges."""
    canvas = resolution * SUPERSAMPLE
    img = _background(scene, canvas, rng)
    fill = _shade(scene.colour, rng)
    for obj in scene.objects:
        mask = _shape_mask(scene.shape, obj, canvas)
        if scene.textured:
            other = tuple(int(v * 0.55) for v in fill) if sum(fill) > 240 else tuple(min(255, v + 110) for v in fill)
            period = max(4, int(canvas * obj[2] * 0.3))
            layer = _stripes(canvas, fill, other, period, diagonal=True)
        else:
            layer = Image.new("RGB", (canvas, canvas), fill)
        img.paste(layer, (0, 0), mask)
    if scene.confetti_colour:
        draw = ImageDraw.Draw(img)
        confetti = _shade(scene.confetti_colour, rng)
        for _ in range(int(rng.integers(6, 12))):
            x, y = (float(v) for v in rng.uniform(0, canvas, 2))
            r = canvas * float(rng.uniform(0.012, 0.025))
            draw.ellipse([x - r, y - r, x + r, y + r], fill=confetti)
    img = img.resize((resolution, resolution), Image.Resampling.LANCZOS)
    if scene.noise > 0:
        arr = np.asarray(img, dtype=np.float64) + rng.normal(0.0, scene.noise, (resolution, resolution, 3))
        img = Image.fromarray(np.clip(arr, 0, 255).round().astype(np.uint8), "RGB")
    return img


def _phrases(scene: Scene) -> dict[str, str]:
    count = "a" if scene.count == 1 else COUNT_WORDS[scene.count]
    texture = "striped " if scene.textured else ""
    obj = f"{count} {texture}{scene.colour} {_plural(scene.shape, scene.count)}"
    bg = {
        "plain": f"plain {scene.bg_colour} background",
        "gradient": f"{scene.bg_colour} to {scene.bg_colour2} gradient background",
        "striped": f"{scene.bg_colour} and {scene.bg_colour2} striped background",
        "checkered": f"{scene.bg_colour} and {scene.bg_colour2} checkered background",
        "dotted": f"{scene.bg_colour} background with {scene.bg_colour2} dots",
    }[scene.background]
    extras = ""
    if scene.confetti_colour:
        extras = f", with scattered {scene.confetti_colour} confetti and grainy noise"
    return {"obj": obj, "bg": bg, "extras": extras, "be": "is" if scene.count == 1 else "are", "obj_cap": obj[0].upper() + obj[1:], "bg_cap": bg[0].upper() + bg[1:]}


def scene_captions(scene: Scene, n_captions: int, rng: np.random.Generator) -> list[str]:
    """``n_captions`` distinct paraphrases describing ``scene``; the first is the canonical, most literal one."""
    phrases = _phrases(scene)
    captions = [_ARTICLE.sub(r"\1n ", TEMPLATES[0].format(noun="", prep="", style="", **phrases))]
    combos = [(t, n, p, s) for t in range(1, len(TEMPLATES)) for n in NOUNS for p in PREPS for s in STYLES]
    for idx in rng.permutation(len(combos)):
        if len(captions) >= n_captions:
            break
        t, n, p, s = combos[int(idx)]
        text = _ARTICLE.sub(r"\1n ", TEMPLATES[t].format(noun=n, prep=p, style=s, **phrases))
        if text not in captions:
            captions.append(text)
    if len(captions) < n_captions:
        raise ValueError(f"embedded.n_captions={n_captions} is more than the templates can paraphrase ({len(captions)})")
    return captions


def _near_copy_op(img: Image.Image, op: str, rng: np.random.Generator) -> Image.Image:
    size = img.size[0]
    if op == "crop":
        keep_w, keep_h = (float(v) for v in rng.uniform(0.90, 0.97, 2))
        w, h = keep_w * size, keep_h * size
        left, top = float(rng.uniform(0, size - w)), float(rng.uniform(0, size - h))
        return img.resize((size, size), Image.Resampling.BICUBIC, box=(left, top, left + w, top + h))
    if op == "resize":
        small = max(4, round(size * float(rng.uniform(0.6, 0.85))))
        return img.resize((small, small), Image.Resampling.BILINEAR).resize((size, size), Image.Resampling.BICUBIC)
    if op == "jitter":
        img = ImageEnhance.Brightness(img).enhance(float(rng.uniform(0.85, 1.15)))
        img = ImageEnhance.Contrast(img).enhance(float(rng.uniform(0.85, 1.15)))
        return ImageEnhance.Color(img).enhance(float(rng.uniform(0.8, 1.2)))
    if op == "jpeg":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=int(rng.integers(40, 76)))
        with Image.open(io.BytesIO(buf.getvalue())) as jpg:
            return jpg.convert("RGB")
    if op == "text":
        canvas = size * SUPERSAMPLE
        layer = img.resize((canvas, canvas), Image.Resampling.BICUBIC)
        draw = ImageDraw.Draw(layer)
        word = "".join(chr(int(c)) for c in rng.integers(ord("A"), ord("Z") + 1, int(rng.integers(2, 5))))
        font = ImageFont.load_default(size=max(8, round(canvas * 0.16)))
        left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
        x = int(rng.choice([2, max(2, canvas - (right - left) - 4)]))
        y = int(rng.choice([2, max(2, canvas - (bottom - top) - 6)]))
        colour = (255, 255, 255) if rng.random() < 0.5 else (0, 0, 0)
        draw.text((x - left, y - top), word, fill=colour, font=font)
        return layer.resize((size, size), Image.Resampling.LANCZOS)
    raise ValueError(f"unknown near-copy operation '{op}': choose from {', '.join(NEAR_COPY_OPS)}")


def near_copy(img: Image.Image, ops: Sequence[str], rng: np.random.Generator) -> Image.Image:
    """``img`` after the near-copy operations ``ops``, in order (same size, RGB)."""
    for op in ops:
        img = _near_copy_op(img, op, rng)
    return img


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ValueError(f"ingest.embedded.{key}: {message}")


def generate_embedded(
    n_images: int = 240,
    resolution: int = 32,
    n_clusters: int = 8,
    copies_per_cluster: int = 4,
    seed: int = 0,
    n_captions: int = 5,
    exact_copies_per_cluster: int = 1,
    complexity_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
    near_copy_ops: Sequence[str] = NEAR_COPY_OPS,
    shuffle: bool = True,
) -> pd.DataFrame:
    """Generate the embedded study set as a ``training_set`` table (with ``planted_cluster``).

    Args:
        n_images: number of distinct scenes.
        resolution: side of the square images in pixels.
        n_clusters: number of scenes that get planted copies (each cluster is a distinct scene).
        copies_per_cluster: extra copies per planted scene (cluster size = copies + 1).
        seed: root seed; every random choice derives from it.
        n_captions: distinct captions per image (the first is ``caption``).
        exact_copies_per_cluster: how many of the copies are byte-identical; the rest are near copies.
        complexity_weights: relative frequency of the levels flat, simple, textured, busy.
        near_copy_ops: operations near copies draw one or two from.
        shuffle: shuffle the rows (else scenes in order, each cluster's copies after the last scene).

    Returns:
        One row per image; ``n_images + n_clusters * copies_per_cluster`` rows.
    """
    _check(int(n_images) >= 1, "n_images", f"must be >= 1, got {n_images}")
    _check(8 <= int(resolution) <= 1024, "resolution", f"must be in [8, 1024], got {resolution}")
    _check(0 <= int(n_clusters) <= int(n_images), "n_clusters", f"must be in [0, n_images={n_images}], got {n_clusters}")
    _check(int(copies_per_cluster) >= 1 or n_clusters == 0, "copies_per_cluster", f"must be >= 1, got {copies_per_cluster}")
    _check(0 <= int(exact_copies_per_cluster) <= int(copies_per_cluster), "exact_copies_per_cluster",
           f"must be in [0, copies_per_cluster={copies_per_cluster}], got {exact_copies_per_cluster}")
    _check(int(n_captions) >= 1, "n_captions", f"must be >= 1, got {n_captions}")
    weights = np.asarray(list(complexity_weights), dtype=np.float64)
    _check(weights.shape == (4,) and bool(np.all(weights >= 0)) and weights.sum() > 0, "complexity_weights",
           f"must be 4 non-negative numbers (flat, simple, textured, busy) with a positive sum, got {complexity_weights}")
    ops = list(near_copy_ops)
    bad = [o for o in ops if o not in NEAR_COPY_OPS]
    _check(not bad, "near_copy_ops", f"unknown {bad}; allowed: {', '.join(NEAR_COPY_OPS)}")
    _check(bool(ops) or exact_copies_per_cluster == copies_per_cluster or n_clusters == 0, "near_copy_ops",
           "is empty but some copies must be near copies")

    levels = numpy_rng(seed, "embedded", "levels").choice(4, size=n_images, p=weights / weights.sum())
    rows: list[dict] = []
    images: list[Image.Image] = []
    for i in range(n_images):
        rng = numpy_rng(seed, "embedded", "scene", i)
        scene = sample_scene(rng, int(levels[i]))
        img = render_scene(scene, resolution, rng)
        captions = scene_captions(scene, n_captions, rng)
        images.append(img)
        rows.append(_row(img, f"scene_{i:05d}.png", captions, scene.shape, -1))
    cluster_rng = numpy_rng(seed, "embedded", "clusters")
    originals = sorted(int(i) for i in cluster_rng.choice(n_images, size=n_clusters, replace=False))
    for cluster_id, original in enumerate(originals):
        rows[original]["planted_cluster"] = cluster_id
        for k in range(copies_per_cluster):
            rng = numpy_rng(seed, "embedded", "copy", cluster_id, k)
            if k < exact_copies_per_cluster:
                img, tag = images[original], "exact"
            else:
                chosen = [ops[int(j)] for j in sorted(rng.choice(len(ops), size=min(len(ops), int(rng.integers(1, 3))),
                                                                  replace=False))]
                img, tag = near_copy(images[original], chosen, rng), "+".join(chosen)
            name = f"scene_{original:05d}_copy{k + 1}_{tag}.png"
            rows.append(_row(img, name, rows[original]["captions"], rows[original]["class_label"], cluster_id))
    if shuffle:
        order = numpy_rng(seed, "embedded", "shuffle").permutation(len(rows))
        rows = [rows[int(i)] for i in order]
    return frame_from_rows(rows, with_planted=True)


def generate_control(
    n_images: int = 64,
    resolution: int = 32,
    seed: int = 0,
    n_captions: int = 5,
    complexity_weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
) -> pd.DataFrame:
    """The held-out split of the embedded study set: ``n_images`` distinct scenes from the same generator as
    :func:`generate_embedded` but drawn from their own random streams, so none of them is a training scene (the
    negative control of evaluate: images of the training distribution that the model never saw)."""
    _check(int(n_images) >= 0, "n_control", f"must be >= 0, got {n_images}")
    weights = np.asarray(list(complexity_weights), dtype=np.float64)
    _check(weights.shape == (4,) and bool(np.all(weights >= 0)) and weights.sum() > 0, "complexity_weights",
           f"must be 4 non-negative numbers (flat, simple, textured, busy) with a positive sum, got {complexity_weights}")
    levels = numpy_rng(seed, "embedded", "control_levels").choice(4, size=int(n_images), p=weights / weights.sum())
    rows = []
    for i in range(int(n_images)):
        rng = numpy_rng(seed, "embedded", "control_scene", i)
        scene = sample_scene(rng, int(levels[i]))
        img = render_scene(scene, resolution, rng)
        rows.append(_row(img, f"control_{i:05d}.png", scene_captions(scene, n_captions, rng), scene.shape, -1))
    return frame_from_rows(rows, with_planted=True)


def _row(img: Image.Image, file_name: str, captions: list[str], label: str, cluster: int) -> dict:
    png = encode_png(img)
    sha = sha256_hex(png)
    return {
        "image_id": make_image_id(SOURCE, file_name, sha),
        "image": png,
        "caption": captions[0],
        "captions": list(captions),
        "class_label": label,
        "source": SOURCE,
        "file_name": file_name,
        "sha256": sha,
        "width": img.width,
        "height": img.height,
        "planted_cluster": cluster,
    }
