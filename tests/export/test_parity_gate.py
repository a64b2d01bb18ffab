"""The parity gate's arithmetic with known answers: each of its two numbers fails the gate on its own, the
recorded numbers are the worst over the batch sizes, and a non-finite embedding never passes."""

from __future__ import annotations

import numpy as np
import pytest

from export.config import Tolerance
from export.parity import ParityGateError, compare, run_gate

IMAGES = np.arange(8 * 2 * 2 * 3, dtype=np.uint8).reshape(8, 2, 2, 3)


def _reference(images: np.ndarray) -> np.ndarray:
    """Unit rows: row i = (cos a_i, sin a_i, 0, 0) with a_i from the image's first pixel."""
    angle = images[:, 0, 0, 0].astype(np.float64) / 10.0
    return np.stack([np.cos(angle), np.sin(angle), 0 * angle, 0 * angle], axis=1).astype(np.float32)


def _rotated(radians: float):
    """The reference turned by ``radians`` in its own plane: cosine = cos(radians) on every row."""
    return lambda images: _reference(images + 0) @ np.array(
        [[np.cos(radians), np.sin(radians), 0, 0], [-np.sin(radians), np.cos(radians), 0, 0],
         [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)


def test_compare_gives_the_known_cosine_and_largest_difference():
    parity = compare(_reference(IMAGES), _rotated(0.1)(IMAGES))
    assert parity.min_cosine == pytest.approx(np.cos(0.1), abs=1e-6)
    # rotating a unit vector by t moves each coordinate by at most 2 sin(t / 2)
    assert 0.05 < parity.max_abs_err <= 2 * np.sin(0.05) + 1e-6
    assert np.isnan(compare(_reference(IMAGES), np.full((8, 4), np.nan, np.float32)).min_cosine)


def test_cosine_alone_fails_the_gate():
    loose_difference = Tolerance(max_abs_err=10.0, min_cosine=0.999)
    with pytest.raises(ParityGateError, match=r"parity gate 'x' failed: batch 1: .*min_cosine 0\.99500.*gates\.x"):
        run_gate("x", _reference, _rotated(0.1), IMAGES, (1, 3), loose_difference)


def test_largest_difference_alone_fails_the_gate():
    loose_cosine = Tolerance(max_abs_err=1e-3, min_cosine=-1.0)
    with pytest.raises(ParityGateError, match=r"max_abs_err 0\.0\d+.*tolerance gates\.y\.max_abs_err 0\.001"):
        run_gate("y", _reference, _rotated(0.1), IMAGES, (1, 3), loose_cosine)


def test_recorded_numbers_are_the_worst_batch_and_non_finite_rows_fail():
    def worse_in_big_batches(images: np.ndarray) -> np.ndarray:
        return _rotated(0.01 if len(images) < 5 else 0.02)(images)

    passed = run_gate("z", _reference, worse_in_big_batches, IMAGES, (1, 3, 7), Tolerance(1.0, 0.99))
    assert passed["min_cosine"] == pytest.approx(np.cos(0.02), abs=1e-6)
    assert passed["batch_sizes"] == [1, 3, 7] and passed["images"] == 8
    assert passed["tolerance"] == {"max_abs_err": 1.0, "min_cosine": 0.99}
    with pytest.raises(ParityGateError, match="parity gate 'n' failed"):
        run_gate("n", _reference, lambda images: _reference(images) * np.nan, IMAGES, (1,), Tolerance(10.0, -1.0))
