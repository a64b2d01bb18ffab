"""Write a model bundle atomically: everything goes into a hidden temp dir next to the target, which is
renamed into place only after the manifest is written and verified.

A failed gate or a crash before ``commit`` leaves no bundle and no half-written dir at ``--out`` (and an
existing bundle there untouched); the temp dir is removed on any exception. ``commit`` publishes with
`export.bundle_publish.publish_dir`: every file fsynced, then one atomic switch, so a kill at any moment
leaves the old or the new bundle complete at ``--out``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from export.bundle_publish import publish_dir
from export.errors import ExportError
from export.onnx_export import INPUT_NAME, OUTPUT_NAME
from serving.bundle import (
    MANIFEST_NAME,
    BatchRange,
    BundleError,
    InputSpec,
    Manifest,
    OutputSpec,
    Preprocess,
    load_bundle,
    sha256_file,
    write_manifest,
)

__all__ = ["BundleStage", "BundleWriteError", "make_manifest"]


class BundleWriteError(ExportError):
    """The output path cannot hold a bundle (a file, or a non-empty dir that is not a bundle), or the
    staged bundle fails verification."""


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise BundleWriteError(f"--out {out}: exists and is not a directory; choose another output path")
    if any(out.iterdir()) and not (out / MANIFEST_NAME).is_file():
        raise BundleWriteError(f"--out {out}: a non-empty directory without {MANIFEST_NAME} (not a bundle); "
                               "refusing to replace it; choose another output path or empty it")


def _publish_modes(directory: Path) -> None:
    """mkdtemp/mkstemp create owner-only entries; a bundle is read by other users (serving hosts)."""
    directory.chmod(0o755)
    for entry in directory.iterdir():
        entry.chmod(0o644)


class BundleStage:
    """Staging area for one bundle. Use as a context manager; write files under ``path``, ``record`` each
    one, then ``commit``. Leaving the block without a commit (or with an exception) deletes the stage.

    Raises BundleWriteError at construction when ``out`` cannot be replaced by a bundle."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        _check_replaceable(self.out)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.path = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
        self.files: dict[str, dict[str, Any]] = {}
        self.committed = False

    def __enter__(self) -> BundleStage:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if not self.committed:
            self.discard()

    def record(self, name: str, role: str) -> dict[str, Any]:
        """Hash ``path / name`` into the file table with its ``role`` (the backend that reads it)."""
        file_path = self.path / name
        self.files[name] = {"sha256": sha256_file(file_path), "bytes": file_path.stat().st_size, "role": role}
        return self.files[name]

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def commit(self, manifest: Manifest) -> Path:
        """Write ``manifest``, verify the staged bundle with ``serving.bundle.load_bundle``, move it to ``out``.
        Raises BundleWriteError when verification fails or the target changed meanwhile."""
        write_manifest(self.path, manifest)
        try:
            load_bundle(self.path, verify=True)
        except BundleError as exc:
            raise BundleWriteError(f"staged bundle fails verification: {exc}") from exc
        _check_replaceable(self.out)
        _publish_modes(self.path)
        publish_dir(self.path, self.out)  # fsynced, one atomic switch: a kill leaves old or new complete
        self.committed = True
        return self.out


def make_manifest(*, name: str, input_size: tuple[int, int], dim: int, mean: tuple[float, float, float],
                  std: tuple[float, float, float], batch: tuple[int, int, int], files: dict[str, dict[str, Any]],
                  backends: dict[str, Any], cost: dict[str, Any], parity: dict[str, Any],
                  provenance: dict[str, Any], precision: str = "fp32",
                  quantization: dict[str, Any] | None = None, compatible_with: tuple[str, ...] = ()) -> Manifest:
    """The bundle manifest for a graph taking uint8 NHWC RGB ``images`` at ``input_size`` (height, width)
    and returning unit-norm float32 ``embeddings`` (N, ``dim``), compared with cosine similarity.
    Normalisation with ``mean``/``std`` (0..1 scale) is inside the graph; ``batch`` is (min, opt, max);
    ``precision`` "int8" comes with the ``quantization`` record; ``compatible_with`` lists the sha256 of
    bundles whose indexes this one may search."""
    height, width = input_size
    return Manifest(
        name=name,
        input=InputSpec(name=INPUT_NAME, dtype="uint8", layout="NHWC", height=height, width=width, channels=3,
                        color="RGB"),
        output=OutputSpec(name=OUTPUT_NAME, dtype="float32", dim=dim, normalized=True),
        preprocess=Preprocess(policy="stretch", interpolation="bilinear", color="RGB", normalization="in_graph",
                              mean=tuple(mean), std=tuple(std)),
        batch=BatchRange(min=batch[0], opt=batch[1], max=batch[2]),
        metric="cosine",
        files=dict(files),
        backends=dict(backends),
        cost=dict(cost),
        parity=dict(parity),
        provenance=dict(provenance),
        precision=precision,
        quantization=dict(quantization or {}),
        compatible_with=tuple(compatible_with),
    )
