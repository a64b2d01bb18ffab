"""`cdd-index build` resumes a killed build from its journal (a real subprocess killed with SIGKILL), refuses
a journal of another build, and shows a progress bar with rate and ETA."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.index import GalleryIndex
from serving.index.__main__ import main
from serving.index.atomic_dir import POINTER_FILE
from serving.index.build_journal import journal_dir

_IMAGES = 1500
_COMMIT_EVERY = 20


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory, synthetic) -> Path:
    """_IMAGES small Market-named JPEGs plus one unreadable file (skipped, and replayed as skipped)."""
    folder = tmp_path_factory.mktemp("many")
    for n in range(_IMAGES):
        pid = n % 50 + 1
        Image.fromarray(synthetic.image(pid, n)).save(folder / f"{pid:04d}_c1s1_{n:06d}_00.jpg", quality=90)
    (folder / "0001_c1s1_000000_99.jpg").write_bytes(b"not a jpeg")
    return folder


def _command(bundle: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "serving.index", "build", "--bundle", str(bundle), "--images", str(images),
            "--out", str(out), "--backend", "onnxruntime-cpu", "--batch-size", "1", "--decode-threads", "1",
            "--commit-every", str(_COMMIT_EVERY), "--quiet", *extra]


def test_a_killed_build_resumes_from_its_last_committed_chunk(
    tiny_bundle: Path, many_images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "index"
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(_command(tiny_bundle, many_images, out), cwd=root, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    partial = journal_dir(out)
    end = time.monotonic() + 120
    while len(list(partial.glob("chunk-*.npz"))) < 3 and process.poll() is None and time.monotonic() < end:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL, "the build finished before it could be killed"
    committed = len(list(partial.glob("chunk-*.npz")))
    assert committed >= 3 and not (out / POINTER_FILE).exists()  # nothing published yet

    resumed = subprocess.run(_command(tiny_bundle, many_images, out), cwd=root, capture_output=True, text=True,
                             check=False)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    assert "resuming:" in resumed.stderr
    assert committed * _COMMIT_EVERY <= report["ingest"]["resumed"] < _IMAGES  # replayed, not re-embedded
    assert report["count"] == _IMAGES and report["ingest"]["skipped"] == 1
    assert not partial.exists()  # the journal goes once the index is published

    fresh = tmp_path / "fresh"
    assert main(["build", "--bundle", str(tiny_bundle), "--images", str(many_images), "--out", str(fresh),
                 "--backend", "onnxruntime-cpu", "--quiet"]) == 0
    ids, vectors, _ = GalleryIndex.load(out).snapshot()
    fresh_ids, fresh_vectors, _ = GalleryIndex.load(fresh).snapshot()
    assert ids == fresh_ids  # same items, same order, none twice
    np.testing.assert_allclose(vectors, fresh_vectors, atol=1e-5)


def test_a_journal_of_another_build_is_refused_unless_restart(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "index"
    base = ["build", "--bundle", str(tiny_bundle), "--out", str(out), "--backend", "onnxruntime-cpu", "--quiet"]
    partial = journal_dir(out)
    partial.mkdir()
    (partial / "plan.json").write_text(json.dumps({"bundle_sha256": "0" * 64}))
    assert main([*base, "--images", str(gallery_images)]) == 2
    assert "--restart" in capsys.readouterr().err and partial.exists()
    assert main([*base, "--images", str(gallery_images), "--restart"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == 20 and not partial.exists()


def test_progress_bar_shows_rate_and_eta(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out",
                 str(tmp_path / "index"), "--backend", "onnxruntime-cpu"]) == 0
    err = capsys.readouterr().err
    assert "embedding: 0/20 images (0%)" in err and "img/s" in err and "ETA" in err
