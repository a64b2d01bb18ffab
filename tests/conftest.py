"""Session fixtures shared by every test package.

``tiny_reid_root``: a synthetic Market-layout re-ID set (8 train ids, 64x32 images), generated once.
``teacher_run``: a 2-epoch tiny teacher run dir trained on it.
``student_run``: a 2-epoch tiny CDD student run dir distilled from it (gradient resetting on).
"""

from __future__ import annotations

import pytest
import torch

from tiny_training import TINY_INT8_EXPORT, tiny_overrides
from training.data.synthetic import SyntheticConfig, generate_synthetic_reid

# Tiny models gain nothing from intra-op threads, and on a shared 2-core machine OpenMP spin-waiting
# makes them many times slower; one thread keeps the suite fast and its timing stable.
torch.set_num_threads(1)


def _train(overrides):
    from training.config import load_config
    from training.distributed import init_distributed
    from training.trainer import Trainer

    return Trainer(load_config("demo-teacher", overrides), init_distributed("cpu")).fit()


@pytest.fixture(scope="session")
def tiny_reid_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-reid") / "synthetic-reid"
    config = SyntheticConfig(seed=3, train_ids=8, test_ids=6, images_per_id=6, cameras=4, distractors=6,
                             junk=2, height=64, width=32)
    return generate_synthetic_reid(root, seed=3, config=config)


@pytest.fixture(scope="session")
def teacher_run(tiny_reid_root, tmp_path_factory):
    """A 2-epoch tiny teacher run dir (trained once per session)."""
    out = tmp_path_factory.mktemp("runs") / "teacher"
    _train(tiny_overrides(tiny_reid_root, out, epochs=2))
    return out


@pytest.fixture(scope="session")
def student_run(tiny_reid_root, teacher_run, tmp_path_factory):
    """A 2-epoch tiny CDD student run dir distilled from ``teacher_run``."""
    out = tmp_path_factory.mktemp("runs") / "student"
    _train(tiny_overrides(tiny_reid_root, out, "student", teacher_run, epochs=2))
    return out


@pytest.fixture(scope="session")
def student_bundles(student_run, tmp_path_factory):
    """``student_run`` exported twice: SimpleNamespace(fp32=Path, int8=Path) (``--precision int8``; batch.max 16,
    short format timing, the tiny run's mAP tolerance: tiny_training.TINY_INT8_EXPORT)."""
    from types import SimpleNamespace

    from export.__main__ import main as export_main

    out = tmp_path_factory.mktemp("student-bundles")
    fast = TINY_INT8_EXPORT
    assert export_main(["--run", str(student_run), "--out", str(out / "fp32"), "--tensorrt", "off", *fast]) == 0
    assert export_main(["--run", str(student_run), "--out", str(out / "int8"), "--precision", "int8", *fast]) == 0
    return SimpleNamespace(fp32=out / "fp32", int8=out / "int8")
