"""The three complexity measures on hand-made images and arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from copying_study.metrics.complexity import (
    complexity_measures,
    grey_levels,
    histogram_entropy,
    jpeg_bytes,
    measure_settings,
    prepare,
    total_variation,
)
from copying_study.utils.images import encode_png


def flat(size: int = 64, level: int = 128) -> Image.Image:
    return Image.new("RGB", (size, size), (level, level, level))


def half_half(size: int = 64, low: int = 20, high: int = 230) -> Image.Image:
    arr = np.full((size, size, 3), low, dtype=np.uint8)
    arr[:, size // 2:] = high
    return Image.fromarray(arr)


def noise(size: int = 64, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_flat_image_has_zero_entropy_and_variation():
    grey = grey_levels(flat())
    assert histogram_entropy(grey) == 0.0
    assert math.copysign(1.0, histogram_entropy(grey)) == 1.0  # +0.0, not -0.0
    assert total_variation(grey) == 0.0


def test_two_level_half_half_image_has_entropy_ln2():
    assert histogram_entropy(grey_levels(half_half())) == pytest.approx(math.log(2), abs=1e-12)


def test_four_equal_levels_have_entropy_ln4_and_uniform_noise_is_near_ln256():
    levels = np.repeat(np.array([0, 60, 120, 250], dtype=np.uint8), 25)
    assert histogram_entropy(levels) == pytest.approx(math.log(4), abs=1e-12)
    every_level_once = np.arange(256, dtype=np.uint8)
    assert histogram_entropy(every_level_once) == pytest.approx(math.log(256), abs=1e-12)
    grey_noise = np.random.default_rng(1).integers(0, 256, (128, 128), dtype=np.uint8)
    noisy = histogram_entropy(grey_levels(Image.fromarray(grey_noise).convert("RGB")))
    assert 5.5 < noisy < math.log(256)  # 16384 uniform draws over 256 levels: close to the maximum


def test_entropy_rejects_non_uint8_and_empty_input():
    with pytest.raises(ValueError, match="uint8"):
        histogram_entropy(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        histogram_entropy(np.zeros((0,), dtype=np.uint8))


def test_grey_levels_use_itu_601_luma():
    red = Image.new("RGB", (4, 4), (255, 0, 0))
    # 299 * 255 / 1000 = 76.245 -> 76; green 587 * 255 / 1000 = 149.685 -> 150
    assert grey_levels(red).tolist() == [[76] * 4] * 4
    assert int(grey_levels(Image.new("RGB", (2, 2), (0, 255, 0)))[0, 0]) == 150


def test_flat_image_compresses_best_and_noise_worst():
    sizes = {name: jpeg_bytes(img, 90) for name, img in
             {"flat": flat(), "half": half_half(), "noise": noise()}.items()}
    assert sizes["flat"] < sizes["half"] < sizes["noise"]
    assert sizes["noise"] > 5 * sizes["flat"]


def test_jpeg_size_grows_with_quality_and_rejects_bad_quality():
    img = noise()
    assert jpeg_bytes(img, 30) < jpeg_bytes(img, 90) < jpeg_bytes(img, 100)
    assert jpeg_bytes(img, 90) == jpeg_bytes(img.copy(), 90)  # deterministic
    with pytest.raises(ValueError, match="quality"):
        jpeg_bytes(img, 0)


def test_total_variation_on_hand_made_arrays():
    checker = (np.indices((6, 6)).sum(axis=0) % 2 * 255).astype(np.uint8)
    assert total_variation(checker) == pytest.approx(1.0)
    # two columns 0 | 255: horizontal pairs 2 x 1.0, vertical pairs 2 x 0 -> 2 / (2*1 + 1*2) = 0.5
    assert total_variation(np.array([[0, 255], [0, 255]], dtype=np.uint8)) == pytest.approx(0.5)
    # floats are taken as already in [0, 1]: one row 0, 0.5, 1 -> (0.5 + 0.5) / 2
    assert total_variation(np.array([[0.0, 0.5, 1.0]])) == pytest.approx(0.5)
    # a 3x3 ramp 0, 0.25, 0.5 per row: horizontal 6 x 0.25, vertical 0 -> 1.5 / 12
    ramp = np.tile(np.array([0.0, 0.25, 0.5]), (3, 1))
    assert total_variation(ramp) == pytest.approx(1.5 / 12)


def test_total_variation_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2-D"):
        total_variation(np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="two adjacent"):
        total_variation(np.zeros((1, 1), dtype=np.uint8))


def test_noise_is_more_complex_than_flat_on_every_measure():
    simple, busy = complexity_measures(flat()), complexity_measures(noise())
    assert set(simple) == {"entropy", "jpeg_bytes", "total_variation"}
    for key in simple:
        assert simple[key] < busy[key], key


def test_prepare_resizes_and_crops_bytes_or_images():
    wide = Image.new("RGB", (40, 20), (10, 20, 30))
    out = prepare(encode_png(wide), 16, "bilinear")
    assert out.size == (16, 16) and out.mode == "RGB"
    assert prepare(wide.convert("RGBA"), 8).size == (8, 8)
    with pytest.raises(ValueError, match="resample"):
        prepare(wide, 16, "cubic")
    with pytest.raises(ValueError, match="unreadable"):
        prepare(b"not an image", 16)


def test_measure_settings_record_unit_and_quality():
    s = measure_settings(64, "bicubic", 75)
    assert s["entropy_unit"] == "nats" and s["jpeg"]["quality"] == 75 and s["image_size"] == 64
    assert s["entropy_max"] == pytest.approx(math.log(256))
