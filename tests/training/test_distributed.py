"""Data-parallel training with 2 CPU processes (gloo): ranks stay in sync, only rank 0 writes."""

import os
import subprocess
import sys
from pathlib import Path

import torch


def _torchrun(*args: str) -> None:
    harness = Path(__file__).with_name("ddp_harness.py")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(harness.parent.parent), str(Path.cwd())]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(harness),
           *args]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_reset_set_is_the_and_across_ranks_and_memory_holds_every_rank(tmp_path):
    _torchrun("resetter", str(tmp_path))
    a, b = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    # rank 0 alone would reset {2, 3}, rank 1 alone {1, 3}: an OR gives {1, 2, 3}, a broadcast of rank 0 {2, 3}
    assert a["mask"].tolist() == b["mask"].tolist() == [False, False, False, True]
    # the memory holds both ranks' teacher descriptors in rank order (a broadcast would hold rank 0's twice)
    expected = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 2.0]])
    assert torch.equal(a["memory"], expected) and torch.equal(b["memory"], expected)


def test_two_ranks_agree_on_weights_and_masks(tiny_reid_root, teacher_run, tmp_path):
    out = tmp_path / "student"
    digests = tmp_path / "digests"
    digests.mkdir()
    _torchrun("train", str(tiny_reid_root), str(teacher_run), str(out), str(digests))
    a, b = torch.load(digests / "rank0.pt"), torch.load(digests / "rank1.pt")
    for name, value in a["params"].items():
        assert torch.equal(value, b["params"][name]), f"ranks diverged on {name}"
    assert all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"], strict=True))
    assert sum(int(m.sum()) for m in a["masks"]) > 0
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.json").is_file()
    assert not Path(f"{out}-rank1").exists(), "rank 1 wrote run files"
