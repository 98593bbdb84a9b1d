"""Descriptors: the training-free default, and the real loaders (SSCD TorchScript, CLIP / DINO HF folders) exercised
with tiny models saved in the same formats."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from copying_study.descriptors import (
    EncodedImages,
    check_same_descriptor,
    descriptor_from_meta,
    load_descriptor,
)
from copying_study.descriptors.calibration import threshold_rule, transform
from copying_study.descriptors.hf import clip_sub_config
from copying_study.descriptors.preprocess import CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD
from copying_study.descriptors.reference import embedded_scenes
from copying_study.utils.images import encode_png
from copying_study.utils.seeding import numpy_rng

COPY_THRESHOLD = 0.5  # the default descriptor's calibrated copy threshold (docs/dedup.md)
DEDUP_THRESHOLD = 0.75  # conf/base/parameters_dedup_clusters.yml


@pytest.fixture(scope="module")
def scenes() -> list[Image.Image]:
    return embedded_scenes(40, seed=3)


@pytest.fixture(scope="module")
def default():
    return load_descriptor({"name": "default", "device": "cpu"})


def test_default_shape_norm_and_determinism(default, scenes):
    x = default.encode(scenes)
    assert x.shape == (40, default.output_dim) and x.dtype == np.float32 and default.output_dim == 256
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(x, load_descriptor("default").encode(scenes))
    # batching does not change a row
    small = load_descriptor({"name": "default", "batch_size": 7}).encode(scenes)
    np.testing.assert_allclose(small, x, atol=1e-6)


@pytest.mark.parametrize("name", ["resize", "jpeg", "crop", "brightness", "contrast", "text"])
def test_default_finds_transformed_copies(default, scenes, name):
    base = default.encode(scenes)
    copies = default.encode([transform(img, name, numpy_rng(1, name, k)) for k, img in enumerate(scenes)])
    scores = np.einsum("nd,nd->n", base, copies)
    assert np.mean(scores >= COPY_THRESHOLD) >= 0.95, (name, np.sort(scores)[:5])
    assert np.median(scores) >= 0.85


def test_default_does_not_call_different_images_copies(default, scenes):
    x = default.encode(scenes)
    sims = x @ x.T
    off = sims[np.triu_indices(len(scenes), 1)]
    assert off.max() < DEDUP_THRESHOLD
    assert np.mean(off >= COPY_THRESHOLD) < 0.01
    assert abs(np.median(off)) < 0.1  # whitened: distinct images score near 0, as with SSCD


def test_flat_images_have_a_direction(default):
    x = default.encode([Image.new("RGB", (20, 20), (90, 90, 90)), Image.new("RGB", (40, 30), (200, 200, 200))])
    assert np.isfinite(x).all()
    assert float(x[0] @ x[1]) == pytest.approx(1.0, abs=1e-5)


def test_encoded_images_decode_lazily_and_match(default, scenes):
    column = [encode_png(img) for img in scenes[:5]]
    lazy = EncodedImages(column)
    assert len(lazy) == 5 and isinstance(lazy[1:3], list) and lazy[0].size == scenes[0].size
    np.testing.assert_allclose(default.encode(lazy), default.encode(scenes[:5]), atol=1e-6)


def test_meta_round_trip_and_mismatch(default, scenes):
    meta = json.loads(json.dumps(default.meta()))  # as stored in train_descriptors
    assert meta["name"] == "default" and meta["dim"] == default.output_dim and meta["weights"] is None
    assert meta["model_dim"] == default.dim == 945 and len(meta["whitening"]["sha256"]) == 64
    again = descriptor_from_meta(meta, {"batch_size": 3})
    np.testing.assert_allclose(again.encode(scenes[:4]), default.encode(scenes[:4]), atol=1e-6)
    other = load_descriptor({"name": "default", "hog_cells": 4}).meta()
    with pytest.raises(ValueError, match="descriptor mismatch.*config.*whitening sha256"):
        check_same_descriptor(other, meta)
    raw = load_descriptor({"name": "default", "whitening": None}).meta()
    assert raw["dim"] == 945 and "whitening" not in raw
    with pytest.raises(ValueError, match="descriptor mismatch.*dim"):
        check_same_descriptor(raw, meta)
    with pytest.raises(ValueError, match="name mismatch"):
        descriptor_from_meta(meta, {"name": "sscd"})
    with pytest.raises(ValueError, match="cannot override"):
        descriptor_from_meta(meta, {"threshold": 3})
    with pytest.raises(ValueError, match="'name' and 'dim'"):
        descriptor_from_meta({"dim": 3})


def test_whitening_is_refitted_bit_identically_and_centres_distinct_images(default, scenes):
    from copying_study.descriptors import base
    from copying_study.descriptors.scale import fit_whitening

    first = default.whitening()
    base._WHITENINGS.clear()  # force a fresh fit from the reference set
    again = load_descriptor({"name": "default"}).whitening()
    assert again.sha256 == first.sha256
    np.testing.assert_array_equal(again.projection, first.projection)
    assert again.spec["variance_kept"] > 0.9
    # on random data, whitened rows of the reference itself are decorrelated: covariance ~ identity up to scale
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(500, 20)) @ rng.normal(size=(20, 20))
    w = fit_whitening(ref, {"dim": 20})
    y = (ref - w.mean) @ w.projection
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(20), atol=1e-8)
    with pytest.raises(ValueError, match="n_reference .* must exceed its dim"):
        load_descriptor({"name": "default", "whitening": {"dim": 256, "n_reference": 100}})
    with pytest.raises(ValueError, match="does not take \\['size'\\]"):
        load_descriptor({"name": "default", "whitening": {"size": 3}})


def test_bad_specs_and_inputs(default):
    with pytest.raises(ValueError, match="unknown descriptor.name 'sift'.*default, sscd, clip, dino"):
        load_descriptor({"name": "sift"})
    with pytest.raises(ValueError, match="does not take \\['resize_mode'\\]"):
        load_descriptor({"name": "default", "resize_mode": "square"})
    with pytest.raises(ValueError, match="no images to encode"):
        default.encode([])
    with pytest.raises(ValueError, match="weights must be 3"):
        load_descriptor({"name": "default", "weights": [1, 1]})


def test_threshold_rule_takes_the_strictest_family_and_rounds_up():
    rng = np.random.default_rng(0)
    low, high = rng.uniform(-0.2, 0.3, 10_000), rng.uniform(-0.2, 0.43, 10_000)
    # the 99.9 % quantile of the second family is ~0.429: the next multiple of 0.05 is 0.45
    assert threshold_rule({"a": low, "b": high}) == pytest.approx(0.45)
    assert threshold_rule({"a": np.array([0.1] * 999 + [0.5])}, max_pair_fpr=0.01) == pytest.approx(0.1)
    assert threshold_rule({"a": np.array([0.99, 1.0])}) == pytest.approx(1.0)


# -- SSCD: TorchScript files ---------------------------------------------------------------------------------------
class InputProbe(torch.nn.Module):
    """Outputs [mean R, mean G, mean B, H/1000, W/1000, 1]: after L2 norm, dividing by the last entry recovers them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        means = x.float().mean(dim=(2, 3))
        size = torch.tensor([x.shape[2] / 1000.0, x.shape[3] / 1000.0, 1.0], dtype=torch.float32).expand(b, 3)
        return torch.cat([means, size.to(means.device)], dim=1)


class TinyConvNet(torch.nn.Module):
    """A small SSCD-like net: conv trunk, GeM pooling (p=3), linear, L2 norm."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2)
        self.fc = torch.nn.Linear(8, 12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.conv(x)).clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1.0 / 3)
        return torch.nn.functional.normalize(self.fc(h), dim=1)


def test_sscd_preprocessing_short_edge_and_square(tmp_path):
    path = tmp_path / "probe.torchscript.pt"
    torch.jit.script(InputProbe()).save(str(path))
    colour = (200, 100, 50)
    img = Image.new("RGB", (200, 100), colour)  # landscape: short edge is the height
    expected = [(c / 255 - m) / s for c, m, s in zip(colour, IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    for mode, hw in (("short_edge", (288, 576)), ("square", (320, 320))):
        d = load_descriptor({"name": "sscd", "path": str(path), "resize_mode": mode, "device": "cpu"})
        out = d.encode([img])[0]
        raw = out / out[-1]
        np.testing.assert_allclose(raw[:3], expected, atol=1e-4)
        assert (round(raw[3] * 1000), round(raw[4] * 1000)) == hw
        meta = d.meta()
        assert meta["preprocessing"]["resize_mode"] == mode and meta["preprocessing"]["mean"] == list(IMAGENET_MEAN)
        assert meta["weights"]["path"] == str(path) and len(meta["weights"]["sha256"]) == 64


def test_sscd_conv_net_images_of_several_shapes(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny_sscd.torchscript.pt"
    torch.jit.trace(TinyConvNet().eval(), torch.rand(1, 3, 64, 64)).save(str(path))
    d = load_descriptor({"name": "sscd", "path": str(path), "size": 64, "batch_size": 2})
    imgs = [Image.new("RGB", (80, 40), (i * 20, 50, 90)) for i in range(3)] + [Image.new("RGB", (50, 50), "red")]
    x = d.encode(imgs)
    assert d.dim == 12 and x.shape == (4, 12)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    singles = np.concatenate([d.encode([im]) for im in imgs])  # grouping by shape inside a batch changes nothing
    np.testing.assert_allclose(x, singles, atol=1e-5)
    # the same descriptor again from its meta; a different file is refused
    np.testing.assert_allclose(descriptor_from_meta(d.meta()).encode(imgs), x, atol=1e-6)
    other = tmp_path / "other.torchscript.pt"
    torch.jit.trace(TinyConvNet().eval(), torch.rand(1, 3, 64, 64)).save(str(other))
    with pytest.raises(ValueError, match="weights sha256"):
        descriptor_from_meta(d.meta(), {"path": str(other)})


def test_sscd_missing_or_bad_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="descriptor.path.*does not exist"):
        load_descriptor({"name": "sscd", "path": str(tmp_path / "nope.pt")})
    with pytest.raises(FileNotFoundError, match="is not set"):
        load_descriptor({"name": "sscd"})
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a TorchScript model"):
        load_descriptor({"name": "sscd", "path": str(junk)})


# -- CLIP / DINO: Hugging Face folders -----------------------------------------------------------------------------
def test_clip_folder_matches_transformers_preprocessing(tmp_path):
    from transformers import CLIPVisionModelWithProjection

    from copying_study.metrics.clipscore import _image_processor_class
    from tests.evaluate.clip_fixture import save_tiny_clip

    folder = save_tiny_clip(tmp_path / "clip")
    d = load_descriptor({"name": "clip", "path": str(folder), "device": "cpu"})
    assert d.dim == 16 and d.meta()["preprocessing"]["center_crop"] == 32
    assert d.meta()["preprocessing"]["mean"] == pytest.approx(list(CLIP_MEAN))
    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)) for _ in range(3)]
    ours = torch.stack([d._prepare(im) for im in imgs])
    theirs = _image_processor_class().from_pretrained(folder)(images=imgs, return_tensors="pt")["pixel_values"]
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=0.03)  # same resize/crop/normalise (PIL rounding)
    # a full CLIPModel folder keeps projection_dim at the top level (the loader must carry it to the vision part)
    model = CLIPVisionModelWithProjection.from_pretrained(folder, config=clip_sub_config(folder, "vision")).eval()
    assert model.visual_projection.out_features == 16
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(pixel_values=ours).image_embeds, dim=-1).numpy()
    np.testing.assert_allclose(d.encode(imgs), ref, atol=1e-5)
    assert CLIP_STD[0] == pytest.approx(d.meta()["preprocessing"]["std"][0])


def test_dino_folder_uses_the_cls_token(tmp_path):
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    model = ViTModel(ViTConfig(hidden_size=24, num_hidden_layers=1, num_attention_heads=2, intermediate_size=30,
                               image_size=32, patch_size=8), add_pooling_layer=False).eval()
    model.save_pretrained(tmp_path / "dino")
    (tmp_path / "dino" / "preprocessor_config.json").write_text(json.dumps(
        {"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "do_center_crop": True,
         "image_mean": list(IMAGENET_MEAN), "image_std": list(IMAGENET_STD), "resample": 3}))
    d = load_descriptor({"name": "dino", "path": str(tmp_path / "dino"), "device": "cpu"})
    img = Image.new("RGB", (50, 40), (10, 120, 240))
    x = d.encode([img])
    assert d.dim == 24 and d.meta()["preprocessing"]["resize"] == 36
    with torch.no_grad():
        cls = model(pixel_values=d._prepare(img)[None]).last_hidden_state[:, 0]
    np.testing.assert_allclose(x, torch.nn.functional.normalize(cls, dim=-1).numpy(), atol=1e-5)


def test_hf_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a local model folder nor"):
        load_descriptor({"name": "clip", "path": str(tmp_path / "missing")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_descriptor({"name": "dino", "path": str(tmp_path / "empty")})


def test_jpeg_roundtrip_of_png_bytes_is_a_copy(default, scenes):
    buf = io.BytesIO()
    scenes[0].save(buf, format="JPEG", quality=60)
    x = default.encode([scenes[0], Image.open(io.BytesIO(buf.getvalue())).convert("RGB")])
    assert float(x[0] @ x[1]) >= COPY_THRESHOLD


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_uint8_transfer_then_normalise_equals_the_float_transform_bit_for_bit():
    """Images travel to the device as uint8 and are normalised there: the values must be exactly the CPU ones."""
    from copying_study.descriptors.preprocess import ImageTransform

    rng = np.random.default_rng(0)
    for tf in (ImageTransform(288, "short_edge"), ImageTransform(320, "square"),
               ImageTransform(224, "short_edge", crop=224, mean=CLIP_MEAN, std=CLIP_STD, resample="bicubic")):
        for shape in ((100, 200, 3), (300, 240, 3), (64, 64, 3)):
            img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
            small = tf.to_uint8(img)
            assert small.dtype == torch.uint8
            assert torch.equal(tf.normalise(small[None])[0], tf(img))


def test_encoding_in_worker_threads_gives_the_same_bytes_in_the_same_order(tmp_path):
    from copying_study.descriptors.sscd_shape import save_sscd_torchscript

    path = save_sscd_torchscript(tmp_path / "sscd_tiny.pt", size="tiny")
    rng = np.random.default_rng(1)
    shapes = [(48, 80, 3), (64, 64, 3), (90, 60, 3)]
    data = [_jpeg(Image.fromarray(rng.integers(0, 256, shapes[i % 3], dtype=np.uint8))) for i in range(11)]
    serial = load_descriptor({"name": "sscd", "path": str(path), "size": 64, "batch_size": 4, "workers": 0})
    threaded = load_descriptor({"name": "sscd", "path": str(path), "size": 64, "batch_size": 4, "workers": 3})
    assert (serial.workers, threaded.workers) == (0, 3)
    x = serial.encode(EncodedImages(data))
    assert x.tobytes() == threaded.encode(EncodedImages(data)).tobytes()
    # each row is its own image's descriptor (order kept across threads and shape groups)
    np.testing.assert_allclose(x[7], serial.encode(EncodedImages(data[7:8]))[0], atol=1e-6)
    # the default descriptor prepares floats, not uint8: threads change nothing there either
    imgs = EncodedImages(data)
    plain = {"name": "default", "batch_size": 4, "whitening": None}
    assert load_descriptor({**plain, "workers": 2}).encode(imgs).tobytes() == \
        load_descriptor({**plain, "workers": 0}).encode(imgs).tobytes()
    # an unreadable image fails the same way from a worker thread
    with pytest.raises(ValueError, match="unreadable image"):
        threaded.encode(EncodedImages(data[:5] + [b"not an image"] + data[5:]))
    with pytest.raises(ValueError, match="descriptor.workers must be 'auto' or an integer >= 0"):
        load_descriptor({"name": "sscd", "path": str(path), "workers": -1})
    assert load_descriptor({**plain, "device": "cpu"}).workers == 0  # auto: none on a CPU device
