"""Synthetic re-ID generator: Market layout, determinism, atomic publication, raw-pixel baseline."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.data.layouts import load_dataset
from training.data.synthetic import (
    COMPLETE_MARKER,
    GENERATOR_VERSION,
    SyntheticConfig,
    generate_synthetic_reid,
    main,
    raw_pixel_baseline,
)

TINY = SyntheticConfig(train_ids=4, test_ids=4, images_per_id=5, cameras=4, distractors=3, junk=2, height=32,
                       width=16)


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_reid(tmp_path_factory.mktemp("syn") / "reid", seed=0, config=TINY)


def test_layout_parses_as_market1501(tiny_root: Path) -> None:
    splits = load_dataset("market1501", tiny_root)
    assert {r.pid for r in splits.train} == {1, 2, 3, 4}
    test_ids = {r.pid for r in splits.query}
    assert test_ids == {5, 6, 7, 8}, "every test identity has query images"
    assert {r.pid for r in splits.gallery} == test_ids | {0}, "gallery = test identities + distractors"
    assert sum(r.pid == 0 for r in splits.gallery) == 3
    assert len(list((tiny_root / "bounding_box_test").glob("-1_c*.jpg"))) == 2, "junk is on disk"
    assert all(r.camid in range(4) for r in splits.train + splits.query + splits.gallery)
    for query in splits.query:  # a cross-camera true match exists for every query
        assert any(g.pid == query.pid and g.camid != query.camid for g in splits.gallery)
    for pid in test_ids:  # one query image per query camera
        cams = [r.camid for r in splits.query if r.pid == pid]
        assert 2 <= len(cams) <= 3 and len(set(cams)) == len(cams)
    for pid in {r.pid for r in splits.train}:
        assert len({r.camid for r in splits.train if r.pid == pid}) >= 4, "each identity is seen by 4+ cameras"
    marker = json.loads((tiny_root / COMPLETE_MARKER).read_text())
    assert marker["config"]["train_ids"] == 4 and marker["counts"]["query"] == len(splits.query)
    assert marker["generator"] == GENERATOR_VERSION


def test_same_seed_gives_identical_bytes_and_other_seed_differs(tiny_root: Path, tmp_path: Path) -> None:
    again = generate_synthetic_reid(tmp_path / "again", seed=0, config=TINY)
    assert _digest(again) == _digest(tiny_root)
    other = generate_synthetic_reid(tmp_path / "other", seed=1, config=TINY)
    assert set(_digest(other).values()).isdisjoint(_digest(tiny_root).values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "other"], "no partial folders left"


def test_existing_folders_are_reused_or_refused(tiny_root: Path, tmp_path: Path) -> None:
    marker_mtime = (tiny_root / COMPLETE_MARKER).stat().st_mtime_ns
    assert generate_synthetic_reid(tiny_root, seed=0, config=TINY) == tiny_root
    assert (tiny_root / COMPLETE_MARKER).stat().st_mtime_ns == marker_mtime, "same config: kept as is"
    with pytest.raises(FileExistsError, match="overwrite=True"):
        generate_synthetic_reid(tiny_root, seed=5, config=TINY)
    stale = tmp_path / "stale"
    generate_synthetic_reid(stale, seed=0, config=TINY)
    marker = json.loads((stale / COMPLETE_MARKER).read_text())
    (stale / COMPLETE_MARKER).write_text(json.dumps({**marker, "generator": GENERATOR_VERSION - 1}))
    with pytest.raises(FileExistsError, match="generator version"):
        generate_synthetic_reid(stale, seed=0, config=TINY)
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError):
        generate_synthetic_reid(foreign, seed=0, config=TINY)
    assert (foreign / "keep.txt").read_text() == "user data"
    replaced = generate_synthetic_reid(foreign, seed=0, config=TINY, overwrite=True)
    assert not (replaced / "keep.txt").exists() and _digest(replaced) == _digest(tiny_root)


def _reference_reid_scores(query, gallery, qids, gids, qcams, gcams) -> tuple[float, float]:
    """mAP and rank-1 of cosine retrieval, re-ID protocol (same id and camera removed), written out plainly."""
    query = query / np.linalg.norm(query, axis=1, keepdims=True)
    gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    aps, firsts = [], []
    for q, qid, qcam in zip(query, qids, qcams, strict=True):
        order = np.argsort(-(gallery @ q), kind="stable")
        kept = [g for g in order if not (gids[g] == qid and gcams[g] == qcam)]
        hits = np.array([gids[g] == qid for g in kept])
        ranks = np.flatnonzero(hits) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        firsts.append(ranks[0] == 1)
    return float(np.mean(aps)), float(np.mean(firsts))


def test_raw_pixel_baseline_is_nearest_neighbour_on_resized_pixels(tiny_root: Path) -> None:
    scores = raw_pixel_baseline(tiny_root, size_hw=(16, 8))
    splits = load_dataset("market1501", tiny_root)

    def pixels(records) -> np.ndarray:  # (w, h) = (8, 16) bilinear, flattened
        return np.stack([np.asarray(Image.open(r.path).convert("RGB").resize((8, 16), Image.Resampling.BILINEAR),
                                    np.float64).ravel() for r in records])

    expected = _reference_reid_scores(pixels(splits.query), pixels(splits.gallery),
                                      [r.pid for r in splits.query], [r.pid for r in splits.gallery],
                                      [r.camid for r in splits.query], [r.camid for r in splits.gallery])
    assert set(scores) == {"mAP", "rank1"}
    assert (scores["mAP"], scores["rank1"]) == pytest.approx(expected, abs=1e-6)
    assert 0.0 < expected[0] < 1.0  # not a trivial set: a wrong feature or protocol would show


def test_cli_writes_the_set_and_prints_the_baseline(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["--out", str(tmp_path / "cli"), "--train-ids", "2", "--test-ids", "2", "--images-per-id", "6",
            "--distractors", "1", "--junk", "1", "--height", "32", "--width", "16", "--baseline"]
    assert main(argv) == 0
    assert "raw-pixel baseline: mAP" in capsys.readouterr().out
    assert (tmp_path / "cli" / COMPLETE_MARKER).is_file()
    assert main(argv[:2] + ["--seed", "9"]) == 2, "a different config at an existing path is refused"
    with pytest.raises(ValueError, match="images_per_id >= cameras"):
        SyntheticConfig(images_per_id=3, cameras=4)
