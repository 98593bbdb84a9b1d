"""Tiny captioning models, built once per session (they take a second each)."""

from __future__ import annotations

import pytest

from tests.caption.tiny_models import save_tiny_blip, save_tiny_git


@pytest.fixture(scope="session")
def tiny_blip(tmp_path_factory):
    return save_tiny_blip(tmp_path_factory.mktemp("models") / "tiny-blip")


@pytest.fixture(scope="session")
def tiny_git(tmp_path_factory):
    return save_tiny_git(tmp_path_factory.mktemp("models") / "tiny-git")
