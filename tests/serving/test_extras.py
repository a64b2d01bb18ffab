"""Commands whose extra is missing name it (the modules are hidden by patching importlib's finder, the way
a serving-only install looks to them; tests/serving/test_serving_install.py checks a real one)."""

from __future__ import annotations

import importlib.util

import pytest

from export.__main__ import main as cdd_export
from serving.benchmarks.__main__ import main as cdd_bench
from serving.extras import missing_extra
from training.__main__ import main as cdd_train


@pytest.fixture
def without_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "matplotlib")
                        else real(name, *a))


def test_each_command_names_its_extra(without_torch: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert cdd_train(["--preset", "demo-teacher"]) == 2
    assert "cdd-train: needs the [train] extra (torch, matplotlib not installed)" in capsys.readouterr().err
    assert cdd_export(["--run", "runs/x", "--out", "bundles/x"]) == 1
    err = capsys.readouterr().err
    assert "needs the [export] extra (torch not installed)" in err and "pip install 'cdd-retrieval[export]'" in err
    assert cdd_bench(["engine", "--bundle", "b", "--out", "o"]) == 2
    assert "cdd-bench: needs the [train] extra" in capsys.readouterr().err


def test_nothing_is_said_when_the_extra_is_there() -> None:
    assert missing_extra("cdd-export", "export") is None and missing_extra("cdd-train", "train") is None
