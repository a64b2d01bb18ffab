"""Fixtures for training tests: a tiny synthetic Market-layout dataset and tiny configs.

``tiny_reid_root``: session-scoped synthetic re-ID set (8 train ids, 64x32 images), generated once.
``tiny_overrides(root, out_dir, kind)``: config overrides for a seconds-long CPU run.
"""

from __future__ import annotations

import pytest
from training_fixtures import tiny_overrides

from training.data.synthetic import SyntheticConfig, generate_synthetic_reid


@pytest.fixture(scope="session")
def tiny_reid_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-reid") / "synthetic-reid"
    config = SyntheticConfig(seed=3, train_ids=8, test_ids=6, images_per_id=6, cameras=4, distractors=6,
                             junk=2, height=64, width=32)
    return generate_synthetic_reid(root, seed=3, config=config)


@pytest.fixture
def overrides_for():
    return tiny_overrides


@pytest.fixture(scope="session")
def teacher_run(tiny_reid_root, tmp_path_factory):
    """A 2-epoch tiny teacher run dir (trained once per session)."""
    from training.config import load_config
    from training.distributed import init_distributed
    from training.trainer import Trainer

    out = tmp_path_factory.mktemp("runs") / "teacher"
    cfg = load_config("demo-teacher", tiny_overrides(tiny_reid_root, out, epochs=2))
    Trainer(cfg, init_distributed("cpu")).fit()
    return out
