"""Seeding: every random choice in the project derives from an explicit seed.

``derive_seed(seed, "finetune", "duplication")`` gives an independent, stable 63-bit seed for one named
purpose, so adding a new random choice never shifts the others.
"""

from __future__ import annotations

import hashlib
import os
import random

import numpy as np


def derive_seed(seed: int, *names: object) -> int:
    key = ":".join([str(int(seed)), *map(str, names)]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def numpy_rng(seed: int, *names: object) -> np.random.Generator:
    return np.random.default_rng(derive_seed(seed, *names))


def python_rng(seed: int, *names: object) -> random.Random:
    return random.Random(derive_seed(seed, *names))


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python ``random``, numpy's legacy global state and torch (CPU and CUDA).

    ``PYTHONHASHSEED`` is not set here: it only takes effect when an interpreter starts, so setting it in a running
    process changes nothing in it (and leaks into child processes). Results must not depend on string-hash order
    instead: everything that orders words or ids sorts them (vocabularies, BPE merges, plans)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        if hasattr(torch.backends, "cudnn"):
            torch.backends.cudnn.benchmark = False


def torch_generator(seed: int, device: str | object = "cpu"):
    import torch

    g = torch.Generator(device=str(device))
    g.manual_seed(int(seed) % (2**63))
    return g
