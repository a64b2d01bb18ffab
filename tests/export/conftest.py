"""Session fixtures for the export tests: real tiny run dirs (see ``tiny_runs``) and bundles exported once."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from tiny_runs import TinyRuns, build_tiny_runs

from export.config import load_export_config
from export.pipeline import ExportResult, export_bundle


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Tiny networks run faster on one thread than on two contending ones (CI boxes are small and shared);
    the previous setting is restored after the export tests."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_run_dir(tmp_path_factory: pytest.TempPathFactory) -> TinyRuns:
    """ResNet-18 and ResNet-50 CDD students, a ResNet-50 teacher and a Market-layout image folder."""
    return build_tiny_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="session")
def student_bundle(tiny_run_dir: TinyRuns, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    """The ResNet-50 student exported with the default config (batches 1, 7, 64; TensorRT "auto": a plan
    where TensorRT and a GPU exist, else the one-line skip note)."""
    out = tmp_path_factory.mktemp("bundles") / "student"
    return export_bundle(tiny_run_dir.student50, out, load_export_config())


@pytest.fixture(scope="session")
def teacher_bundle(tiny_run_dir: TinyRuns, tmp_path_factory: pytest.TempPathFactory) -> ExportResult:
    out = tmp_path_factory.mktemp("bundles") / "teacher"
    return export_bundle(tiny_run_dir.teacher, out, load_export_config(["tensorrt.mode=off"]))
