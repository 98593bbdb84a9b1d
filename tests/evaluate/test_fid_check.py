"""The offline check that the bundled FID Inception is the standard FID network (copying_study.metrics.fid_check)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from copying_study.metrics import fid, fid_check


@pytest.fixture(scope="module")
def bundled_tensors() -> dict[str, torch.Tensor]:
    return torch.jit.load(str(fid.bundled_inception_path()), map_location="cpu").state_dict()


def test_every_bundled_tensor_has_one_standard_name(bundled_tensors):
    state, mapping = fid_check.standard_state_dict(bundled_tensors)
    assert mapping["mapped"] == len(bundled_tensors) == 376 and mapping["conv_layers"] == 94
    assert len(state) == 376 + 2 * 94 + 2  # + BN gamma and counter per layer + the (absent) head
    assert fid_check.fidelity_name("net.layers.conv.weight") == "Conv2d_1a_3x3.conv.weight"
    assert fid_check.fidelity_name("net.layers.mixed_10.tower_2_conv.beta") == "Mixed_7c.branch_pool.bn.bias"
    assert fid_check.fidelity_name("net.layers.mixed_5.tower_1.conv_4.var") == "Mixed_6c.branch7x7dbl_5.bn.running_var"
    assert tuple(state["Mixed_6b.branch7x7_2.conv.weight"].shape) == (128, 128, 1, 7)  # 1x7, as torchvision's
    assert all(bool((state[k] == 1).all()) for k in state if k.endswith("bn.weight"))  # TF's BN has no gamma
    with pytest.raises(KeyError, match="output"):
        fid_check.fidelity_name("net.layers.output.weight")
    swapped = fid_check.swapped(state)
    assert torch.equal(swapped["Mixed_6c.branch1x1.conv.weight"], state["Mixed_6d.branch1x1.conv.weight"])
    assert not torch.equal(swapped["Mixed_6c.branch1x1.conv.weight"], state["Mixed_6c.branch1x1.conv.weight"])


def test_check_needs_torch_fidelity_and_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch_fidelity" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="--no-deps --target"):
        fid_check.import_fidelity(tmp_path)


@pytest.mark.slow
def test_quick_check_passes_on_the_bundled_inception(tmp_path):
    if not (fid_check.FIDELITY_DIR / "torch_fidelity").is_dir():
        pytest.skip(f"torch-fidelity is not installed at {fid_check.FIDELITY_DIR} (scripts/setup.sh installs it)")
    out = tmp_path / "report.json"
    # a fresh process: torchmetrics decides at import time whether torch-fidelity is there
    res = subprocess.run([sys.executable, "-m", "copying_study.metrics.fid_check", "--quick", "--json", str(out)],
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(out.read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["file", "graph", "mapping", "features", "weights: fid64"]
    assert all(s["passed"] for s in steps.values()) and report["sha256"] == fid.BUNDLED_SHA256
    assert steps["graph"]["facts"]["parameters"] == 21_802_784
    assert max(steps["features"]["per_image"].values()) <= fid_check.FEATURE_TOL
    assert min(steps["features"]["control_per_image"].values()) > 0.1
    fid64 = steps["weights: fid64"]
    assert fid64["example"]["got"] == fid64["example"]["expected"] == "tensor(12.6388)"
    assert fid64["control"]["got"] != "tensor(12.6388)" and not fid64["control"]["passed"]
