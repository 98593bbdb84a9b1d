"""A random-weight network with SSCD's architecture, saved as TorchScript, for speed measurements without a download.

SSCD's ``sscd_disc_mixup`` (Pizzi et al., CVPR 2022) is a ResNet-50 trunk, generalised-mean pooling (GeM, p = 3),
a linear projection to 512 dimensions and an L2 norm. This module writes that network in plain torch (torchvision
is not importable beside every torch build this project runs on), seeds its initialisation, and scripts it to
TorchScript so that :class:`copying_study.descriptors.sscd.SSCDDescriptor` loads it exactly as it loads the real
file. ``size="tiny"`` is the same code with one bottleneck block per stage and narrow widths, for tests.

The weights are random, so the descriptors mean nothing: this is for timing (``benchmarks/descriptor_speed.py``)
and for testing the loading and batching code.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from copying_study.utils.seeding import derive_seed

SIZES = {
    # blocks per stage, stem width, output dimension
    "full": {"blocks": (3, 4, 6, 3), "width": 64, "dim": 512},  # ResNet-50 trunk (23.5M) + 2048->512 projection
    "tiny": {"blocks": (1, 1, 1, 1), "width": 8, "dim": 64},
}


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3×3 convolution), as torchvision's ``resnet50``."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.downsample = (
            nn.Sequential(nn.Conv2d(in_channels, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            if stride != 1 or in_channels != out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + self.downsample(x))


class SSCDNet(nn.Module):
    """ResNet trunk → GeM pooling (p = 3) → linear projection → L2 norm: ``[B, 3, H, W]`` → ``[B, dim]``."""

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, dim: int = 512,
                 gem_p: float = 3.0) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        layers: list[nn.Module] = []
        channels = width
        for stage, n in enumerate(blocks):
            planes = width * 2**stage
            for b in range(n):
                layers.append(Bottleneck(channels, planes, stride=2 if stage > 0 and b == 0 else 1))
                channels = planes * Bottleneck.expansion
        self.trunk = nn.Sequential(*layers)
        self.gem_p = float(gem_p)
        self.projection = nn.Linear(channels, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(self.stem(x))
        x = x.clamp(min=1e-6).pow(self.gem_p).mean(dim=(2, 3)).pow(1.0 / self.gem_p)  # GeM pooling
        return F.normalize(self.projection(x), dim=1)


def _initialise(model: SSCDNet) -> None:
    """torchvision's ResNet initialisation (Kaiming-normal convolutions, unit BatchNorm), with each residual
    branch's last BatchNorm at zero (torchvision's ``zero_init_residual``) so activations stay small enough for
    float16 through the 16 blocks of a random network."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    for m in model.modules():
        if isinstance(m, Bottleneck):
            nn.init.zeros_(m.bn3.weight)


def build_sscd_model(size: str = "full", seed: int = 0) -> SSCDNet:
    """An SSCD-shaped network in eval mode, its random initialisation drawn deterministically from ``seed``."""
    if size not in SIZES:
        raise ValueError(f"SSCD model size must be one of {', '.join(SIZES)}, got {size!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "reference_shapes", "sscd", size) % (2**63))
        model = SSCDNet(**SIZES[size])
        _initialise(model)
    return model.eval()


def save_sscd_torchscript(path: str | Path, size: str = "full", seed: int = 0) -> Path:
    """Script :func:`build_sscd_model` and save it where ``descriptor.path`` can point (``torch.jit.save``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(torch.jit.script(build_sscd_model(size, seed)), str(path))
    return path
