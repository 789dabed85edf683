"""Fixtures of the training tests: one tiny digits ensemble shared by the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three small digits members, trained once per test session by the real pipeline."""
    from training.testing import train_tiny

    return train_tiny(
        tmp_path_factory.mktemp("tiny-digits"), "sklearn:digits", members=3, epochs=4, in_process=True
    )
