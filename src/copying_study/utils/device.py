"""Device selection: CUDA when present (or asked for), else CPU. Always recorded in outputs."""

from __future__ import annotations

import torch


def pick_device(preference: str = "auto") -> torch.device:
    pref = (preference or "auto").lower()
    if pref == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device '{preference}' was asked for but CUDA is not available on this machine")
    if pref not in ("cpu",) and not pref.startswith("cuda") and pref != "mps":
        raise ValueError(f"unknown device '{preference}': use auto, cpu or cuda[:N]")
    return torch.device(pref)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type
