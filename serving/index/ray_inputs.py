"""What a Ray build ingests, as rows ``{"id", "path", "metadata"}`` (metadata as JSON text), and how one
row's image is read.

Sources: the local build's listings (`serving.index.build`: a folder, a ``path[<TAB>label[<TAB>camera]]``
list file, a dataset layout), turned into rows on the driver; or a Parquet manifest, read by Ray Data in
parallel (no listing on the driver), with a ``path`` column (a path relative to the manifest's folder, an
absolute path, or a URI such as ``s3://bucket/key.jpg`` that pyarrow's filesystems read), optional
``label`` and ``camera`` columns, and optionally a column holding the ids. Ids are the prefix plus that
column, or else plus ``path`` as written in the manifest (the local build's relative-path rule).

Every image is decoded by the local build's rule: `serving.preprocess.load_image_file` for paths,
`serving.preprocess.image_to_model_input` on the bytes read for URIs.
"""

from __future__ import annotations

import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from serving.bundle import Manifest
from serving.index.build import ID_RULE, IngestError, ItemSpec
from serving.preprocess import ImageDecodeError, image_to_model_input, load_image_file

__all__ = ["ParquetManifest", "id_rule", "item_rows", "read_model_input"]

_OPTIONAL_COLUMNS = ("label", "camera")


def item_rows(items: list[ItemSpec]) -> list[dict[str, str]]:
    """Rows of the local build's items: id, path (as text), metadata (JSON text)."""
    return [{"id": i.id, "path": str(i.path), "metadata": json.dumps(i.metadata)} for i in items]


def id_rule(id_column: str | None) -> str:
    """The id rule a build records: the relative path, or a manifest column."""
    return f"column:{id_column}" if id_column else ID_RULE


def _is_uri(location: str) -> bool:
    return "://" in location


def read_model_input(location: str, manifest: Manifest, max_pixels: int) -> np.ndarray:
    """uint8 (H, W, 3) model input of the image at ``location`` (path or URI). Raises ImageDecodeError
    (unreadable, missing, undecodable; the message names ``location``) or ImageTooLargeError."""
    if not _is_uri(location):
        return load_image_file(location, manifest, max_pixels)
    from pyarrow import fs

    try:
        filesystem, path = fs.FileSystem.from_uri(location)
        with filesystem.open_input_stream(path) as stream:
            data = stream.read()
    except (OSError, ValueError) as exc:  # pyarrow: FileNotFoundError, ArrowInvalid (a ValueError), ...
        raise ImageDecodeError(f"{location}: cannot read ({exc})") from exc
    try:
        return image_to_model_input(data, manifest, max_pixels)
    except ImageDecodeError as exc:
        raise type(exc)(f"{location}: {exc}") from exc


class ParquetManifest:
    """A Parquet file listing images (see the module docstring); checked when opened. ``rows`` converts a
    batch of its columns into build rows (run in Ray tasks, so it must stay picklable)."""

    def __init__(self, path: str | Path, id_column: str | None = None, id_prefix: str = "") -> None:
        import pyarrow.parquet as pq

        self.path = Path(path)
        if not self.path.is_file():
            raise IngestError(f"--manifest {self.path}: no such file")
        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises ArrowInvalid / OSError for a non-Parquet file
            raise IngestError(f"--manifest {self.path}: not a readable Parquet file ({exc})") from None
        names = parquet.schema_arrow.names
        required = ["path"] + ([id_column] if id_column else [])
        missing = [c for c in required if c not in names]
        if missing:
            raise IngestError(
                f"--manifest {self.path}: missing column(s) {missing}; found {names}; expected a 'path' column "
                "(and the --id-column given), optional 'label' and 'camera'"
            )
        self.count = parquet.metadata.num_rows
        if self.count == 0:
            raise IngestError(f"--manifest {self.path}: lists no images")
        self.columns = list(dict.fromkeys([*required, *(c for c in _OPTIONAL_COLUMNS if c in names)]))
        self.id_column = id_column
        self.id_prefix = id_prefix
        self.base = self.path.parent.resolve()

    def location(self, path: str) -> str:
        """Where the image of manifest entry ``path`` is: a URI as is, a relative path under the manifest's
        folder."""
        if _is_uri(path) or Path(path).is_absolute():
            return path
        return str(self.base / path)

    def rows(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Build rows of one batch of manifest columns."""
        paths = [str(p) for p in batch["path"]]
        keys = [str(k) for k in batch[self.id_column]] if self.id_column else paths
        metadata = []
        for position, path in enumerate(paths):
            meta: dict[str, Any] = {"path": path, "file": PurePosixPath(path).name}
            for column in _OPTIONAL_COLUMNS:
                if column in batch and batch[column][position] is not None:
                    value = batch[column][position]
                    meta[column] = value.item() if hasattr(value, "item") else value
            metadata.append(json.dumps(meta))
        return {
            "id": np.asarray([self.id_prefix + k for k in keys], dtype=object),
            "path": np.asarray([self.location(p) for p in paths], dtype=object),
            "metadata": np.asarray(metadata, dtype=object),
        }
