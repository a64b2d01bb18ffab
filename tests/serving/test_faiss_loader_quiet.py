"""faiss's loader logs every optional SIMD build it could not load at INFO; importing serving.index keeps those
harmless lines out of the terminal of every command that logs at INFO."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_IMPORT = """
import logging
logging.basicConfig(level=logging.INFO)
import serving.index
import faiss
print(logging.getLevelName(logging.getLogger("faiss.loader").getEffectiveLevel()))
"""


def test_importing_the_index_keeps_faiss_loader_info_lines_out_of_the_log() -> None:
    done = subprocess.run([sys.executable, "-c", _IMPORT], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "WARNING"
    assert "faiss.loader" not in done.stderr
