"""Data-parallel training with 2 CPU processes (gloo): ranks stay in sync, only rank 0 writes."""

import os
import subprocess
import sys
from pathlib import Path

import torch


def test_two_ranks_agree_on_weights_masks_and_memory(tiny_reid_root, teacher_run, tmp_path):
    harness = Path(__file__).with_name("ddp_harness.py")
    out = tmp_path / "student"
    digests = tmp_path / "digests"
    digests.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(harness.parent.parent), str(Path.cwd())]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(harness),
           str(tiny_reid_root), str(teacher_run), str(out), str(digests)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = torch.load(digests / "rank0.pt"), torch.load(digests / "rank1.pt")
    for name, value in a["params"].items():
        assert torch.equal(value, b["params"][name]), f"ranks diverged on {name}"
    assert all(torch.equal(x, y) for x, y in zip(a["masks"], b["masks"], strict=True))
    assert sum(int(m.sum()) for m in a["masks"]) > 0
    # each rank saw different images, so equal memories mean both hold the descriptors of both ranks
    assert all(torch.equal(x, y) for x, y in zip(a["memory"], b["memory"], strict=True))
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.json").is_file()
    assert not Path(f"{out}-rank1").exists(), "rank 1 wrote run files"
