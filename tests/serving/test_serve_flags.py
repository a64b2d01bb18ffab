"""cdd-serve's process and thread flags: --workers counts processes (0 = one per core), --rpc-threads the
RPC threads of each, and the old --max-workers still sets the RPC threads while naming the new flag."""

from __future__ import annotations

import os

import pytest

from serving.serve_flags import config_from_args, flag_parser

BASE = ["--bundle", "b", "--index", "i"]


def _config(*flags: str):
    return config_from_args(flag_parser().parse_args([*BASE, *flags]))


def test_rpc_threads_and_its_deprecated_spelling_set_the_same_field(capsys: pytest.CaptureFixture) -> None:
    assert _config("--rpc-threads", "48").max_workers == 48
    assert "deprecated" not in capsys.readouterr().err
    assert _config("--max-workers", "50").max_workers == 50
    assert "--max-workers is deprecated; use --rpc-threads" in capsys.readouterr().err


def test_workers_counts_processes_and_zero_means_one_per_core() -> None:
    assert _config().workers == 1
    assert _config("--workers", "3").workers == 3
    assert _config("--workers", "0").workers == (os.cpu_count() or 1)
    with pytest.raises(ValueError, match="--workers must be >= 0"):
        _config("--workers", "-1")
