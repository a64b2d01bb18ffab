"""Fixtures for training tests. ``overrides_for(root, out_dir, kind, teacher_run, epochs)`` gives config
overrides for a seconds-long CPU run (see tests/tiny_training.py); the tiny dataset and the teacher and
student runs are session fixtures in tests/conftest.py."""

from __future__ import annotations

import pytest

from tiny_training import tiny_overrides


@pytest.fixture
def overrides_for():
    return tiny_overrides
