"""Images -> gallery index: list the items (folder tree, list file, dataset layout), decode them in a thread
pool, embed them in batches while the next batches decode, and add them to a `GalleryIndex`.

Item ids are the image paths relative to their source (folder, list file's folder, dataset root), with
an optional prefix. Metadata: ``path`` (that relative path), ``file`` (file name), and when known
``label`` (Market-style ``<pid>_c<cam>`` names and layouts: the integer pid; class folders: the folder
name; list files: the second column) and ``camera`` (0-based, as ``training.data.layouts``: Market ``c1``
-> 0). Unreadable images are skipped and reported (or, with ``strict``, raise).
"""

from __future__ import annotations

import re
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from serving.backends.base import Engine
from serving.bundle import Manifest
from serving.config import ServeConfig
from serving.index.build_journal import BuildJournal, ChunkBuffer
from serving.index.errors import DuplicateIdError, IndexBundleMismatch
from serving.index.gallery import GalleryIndex
from serving.preprocess import ImageDecodeError, ImageTooLargeError, load_image_file

__all__ = [
    "ID_RULE",
    "IMAGE_SUFFIXES",
    "IngestError",
    "IngestStats",
    "ItemSpec",
    "build_index",
    "embed_paths",
    "ingest",
    "items_from_folder",
    "items_from_layout",
    "items_from_list",
    "progress_bar",
]

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff"})
"""File suffixes (lower case) treated as images when scanning a folder."""
ID_RULE = "relative-path"
"""How item ids are derived (recorded with a Milvus collection): the path relative to the source, prefixed."""
_MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)")


class IngestError(ValueError):
    """The item source is missing, empty or malformed, or the training package is needed but absent."""


@dataclass(frozen=True)
class ItemSpec:
    """One image to index: unique string ``id``, its file ``path``, JSON-serialisable ``metadata``."""

    id: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestStats:
    """What one ingestion did: ``images`` added (``resumed`` of them replayed from a build journal, not
    embedded again), ``skipped`` [(path, reason)], wall and engine seconds of this run."""

    images: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    engine_seconds: float = 0.0
    resumed: int = 0

    @property
    def images_per_s(self) -> float:
        """Images embedded per second by this run (resumed ones excluded)."""
        return (self.images - self.resumed) / self.seconds if self.seconds > 0 else 0.0

    @property
    def engine_busy_fraction(self) -> float:
        """Engine time / wall time: near 1 means decoding keeps the engine fed."""
        return min(1.0, self.engine_seconds / self.seconds) if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "resumed": self.resumed,
            "skipped": len(self.skipped),
            "skipped_files": [{"path": p, "reason": r} for p, r in self.skipped],
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
            "engine_busy_fraction": round(self.engine_busy_fraction, 3),
        }


def _market_metadata(name: str) -> dict[str, int]:
    match = _MARKET_NAME.match(name)
    return {"label": int(match.group(1)), "camera": int(match.group(2)) - 1} if match else {}


def items_from_folder(root: str | Path, id_prefix: str = "") -> list[ItemSpec]:
    """Every image under ``root`` (recursive, hidden entries skipped, sorted). Raises IngestError."""
    root = Path(root)
    if not root.is_dir():
        raise IngestError(f"--images {root}: not a folder")
    items = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        meta: dict[str, Any] = {"path": rel.as_posix(), "file": path.name}
        meta.update(_market_metadata(path.name) or ({"label": rel.parts[-2]} if len(rel.parts) > 1 else {}))
        items.append(ItemSpec(id_prefix + rel.as_posix(), path, meta))
    if not items:
        raise IngestError(f"--images {root}: no images found (suffixes {', '.join(sorted(IMAGE_SUFFIXES))})")
    return items


def _parse_camera(text: str, where: str) -> int:
    if not text.lstrip("-").isdigit():
        raise IngestError(f"{where}: camera column must be an integer, found {text!r}")
    return int(text)


def items_from_list(list_file: str | Path, id_prefix: str = "") -> list[ItemSpec]:
    """Lines ``path[<TAB>label[<TAB>camera]]`` (blank lines and ``#`` comments skipped); relative paths are
    relative to the list file's folder; an integer label is stored as int. Raises IngestError."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise IngestError(f"--list {list_file}: no such file")
    items: list[ItemSpec] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        where = f"{list_file}:{number}"
        if len(fields) > 3:
            raise IngestError(
                f"{where}: expected 'path[<TAB>label[<TAB>camera]]', found {len(fields)} columns"
            )
        rel = fields[0].strip()
        if rel in seen:
            raise IngestError(f"{where}: {rel!r} is listed again (first on line {seen[rel]})")
        seen[rel] = number
        meta: dict[str, Any] = {"path": rel, "file": Path(rel).name}
        if len(fields) > 1 and fields[1].strip():
            label = fields[1].strip()
            meta["label"] = int(label) if label.lstrip("-").isdigit() else label
        if len(fields) > 2 and fields[2].strip():
            meta["camera"] = _parse_camera(fields[2].strip(), where)
        path = Path(rel) if Path(rel).is_absolute() else list_file.parent / rel
        items.append(ItemSpec(id_prefix + rel, path, meta))
    if not items:
        raise IngestError(f"--list {list_file}: lists no images")
    return items


def items_from_layout(
    name: str, root: str | Path, split: str = "gallery", id_prefix: str = ""
) -> list[ItemSpec]:
    """Records of one split ("train", "query", "gallery") of a dataset layout read by the training package's
    ``training.data.layouts.load_dataset``; label = pid, camera = camid. Raises IngestError."""
    try:
        from training.data.layouts import load_dataset
    except ImportError as exc:
        raise IngestError(
            f"--layout needs the training package's dataset readers ({exc}); install the project "
            "(pip install -e .) or use --images / --list"
        ) from exc
    if split not in ("train", "query", "gallery"):
        raise IngestError(f"--split must be train, query or gallery, found {split!r}")
    root = Path(root)
    try:
        records = getattr(load_dataset(name, root), split)
    except (FileNotFoundError, ValueError) as exc:
        raise IngestError(str(exc)) from exc
    items = []
    for record in records:
        path = Path(record.path)
        rel = path.relative_to(root).as_posix() if path.is_relative_to(root) else str(path)
        meta = {"path": rel, "file": path.name, "label": record.pid, "camera": record.camid, "split": split}
        items.append(ItemSpec(id_prefix + rel, path, meta))
    if not items:
        raise IngestError(f"--layout {name} --root {root}: the {split} split is empty")
    return items


def _decoded(
    paths: Iterable[Path], manifest: Manifest, workers: int, window: int, max_pixels: int
) -> Iterator[tuple[int, np.ndarray | None, str | None]]:
    """(position, pixels or None, error or None) in input order; decoding runs ``window`` items ahead."""
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        pending: deque[tuple[int, Path, Future]] = deque()
        source = enumerate(paths)

        def fill() -> None:
            while len(pending) < window:
                nxt = next(source, None)
                if nxt is None:
                    return
                pending.append((nxt[0], nxt[1], pool.submit(load_image_file, nxt[1], manifest, max_pixels)))

        fill()
        while pending:
            position, path, future = pending.popleft()
            fill()
            try:
                yield position, future.result(), None
            except (ImageDecodeError, ImageTooLargeError) as exc:
                yield position, None, str(exc)


_BAR_FORMAT = "{desc}: {n_fmt}/{total_fmt} images ({percentage:.0f}%) at {rate_fmt}, ETA {remaining} [{elapsed}]"


class _NoProgress:
    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        return None


def progress_bar(total: int | None, enabled: bool, desc: str) -> Any:
    """A stderr progress bar: done / total, rate (images/s) and ETA (none where tqdm is not installed: the
    serving install does without it)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoProgress()

    return tqdm(total=total, unit="img", desc=desc, file=sys.stderr, disable=not enabled, leave=False,
                bar_format=_BAR_FORMAT, mininterval=0.5)


def embed_paths(
    engine: Engine,
    manifest: Manifest,
    paths: list[Path],
    *,
    batch_size: int | None = None,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
    max_pixels: int = ServeConfig.max_pixels,
) -> tuple[np.ndarray, np.ndarray, IngestStats]:
    """Embed image files: (vectors float32 (N, D) with zero rows for skipped files, ok mask (N,), stats)."""
    vectors = np.zeros((len(paths), engine.dim), dtype=np.float32)
    ok = np.zeros(len(paths), dtype=bool)

    def sink(positions: list[int], batch: np.ndarray) -> None:
        vectors[positions] = batch
        ok[positions] = True

    stats = _pipeline(engine, manifest, paths, sink, batch_size, workers, strict, progress, max_pixels)
    return vectors, ok, stats


def _pipeline(
    engine: Engine,
    manifest: Manifest,
    paths: list[Path],
    sink: Callable[[list[int], np.ndarray], None],
    batch_size: int | None,
    workers: int,
    strict: bool,
    progress: bool,
    max_pixels: int,
    on_skip: Callable[[int, str], None] | None = None,
) -> IngestStats:
    """Decode ``paths`` ahead in threads, embed full batches, hand (positions, vectors) to ``sink``;
    ``on_skip(position, reason)`` for each unreadable image."""
    batch_size = batch_size or engine.max_batch
    stats = IngestStats()
    start = time.perf_counter()
    positions: list[int] = []
    pixels: list[np.ndarray] = []

    def flush() -> None:
        if positions:
            tick = time.perf_counter()
            batch = engine.embed(np.stack(pixels))
            stats.engine_seconds += time.perf_counter() - tick
            sink(list(positions), batch)
            stats.images += len(positions)
            bar.update(len(positions))
            positions.clear()
            pixels.clear()

    window = batch_size * (max(1, workers) + 1)
    with progress_bar(len(paths), progress, "embedding") as bar:
        for position, image, error in _decoded(paths, manifest, workers, window, max_pixels):
            if image is None:
                if strict:
                    raise ImageDecodeError(f"{error} (--strict: stopping at the first unreadable image)")
                path = str(paths[position])
                stats.skipped.append((path, str(error).removeprefix(f"{path}: ")))
                if on_skip is not None:
                    on_skip(position, stats.skipped[-1][1])
                bar.update(1)
                continue
            positions.append(position)
            pixels.append(image)
            if len(positions) >= batch_size:
                flush()
        flush()
    stats.seconds = time.perf_counter() - start
    return stats


def ingest(
    index: GalleryIndex,
    engine: Engine,
    manifest: Manifest,
    items: Iterable[ItemSpec],
    *,
    batch_size: int | None = None,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
    max_pixels: int = ServeConfig.max_pixels,
    journal: BuildJournal | None = None,
    commit_every: int = 1024,
) -> IngestStats:
    """Embed ``items`` with ``engine`` and add them to ``index`` batch by batch.

    ``batch_size`` defaults to the engine's max batch; ``workers`` decoding threads. With ``journal``
    the items it already committed are replayed instead of embedded, and every ``commit_every`` embedded
    images are committed to it. Raises IndexBundleMismatch (index built with another bundle),
    DuplicateIdError (before any embedding), ImageDecodeError with ``strict``."""
    if index.bundle_sha256 is not None and not manifest.index_compatible(index.bundle_sha256):
        raise IndexBundleMismatch(
            f"the index was built with bundle sha256 {index.bundle_sha256}, this bundle is "
            f"{manifest.sha256()} and does not list it in its manifest's compatible_with; "
            "add with the same bundle, or rebuild the index with `cdd-index build`"
        )
    items = list(items)
    present = [item.id for item in items if item.id in index]
    if present:
        raise DuplicateIdError(
            f"{len(present)} item id(s) are already in the index, e.g. {present[:5]}; remove them first or "
            "use --id-prefix"
        )

    resumed, skipped = _replay(journal, index, items) if journal is not None else (0, [])
    remaining = items[journal.committed :] if journal is not None else items
    buffer = ChunkBuffer(journal, journal.committed, commit_every) if journal is not None else None

    def sink(positions: list[int], batch: np.ndarray) -> None:
        chosen = [remaining[p] for p in positions]
        index.add([i.id for i in chosen], batch, [i.metadata for i in chosen])
        if buffer is not None:
            buffer.add(positions, batch)

    paths = [item.path for item in remaining]
    on_skip = buffer.skip if buffer is not None else None
    stats = _pipeline(engine, manifest, paths, sink, batch_size, workers, strict, progress, max_pixels, on_skip)
    if buffer is not None:
        buffer.close(len(remaining))
    stats.images += resumed
    stats.resumed = resumed
    stats.skipped[:0] = skipped
    return stats


def _replay(journal: BuildJournal, index: GalleryIndex, items: list[ItemSpec]) -> tuple[int, list[tuple[str, str]]]:
    """Add the journal's committed vectors to ``index``: (items replayed, [(path, reason)] skipped)."""
    replayed, skipped = 0, []
    for chunk in journal.chunks():
        if len(chunk.positions):
            chosen = [items[int(p)] for p in chunk.positions]
            index.add([i.id for i in chosen], chunk.vectors, [i.metadata for i in chosen])
            replayed += len(chosen)
        skipped += [(str(items[p].path), reason) for p, reason in zip(chunk.skipped, chunk.reasons, strict=True)]
    return replayed, skipped


def build_index(
    engine: Engine,
    manifest: Manifest,
    items: Iterable[ItemSpec],
    *,
    index_type: str = "flat",
    device: str = "cpu",
    options: dict[str, Any] | None = None,
    batch_size: int | None = None,
    workers: int = 2,
    strict: bool = False,
    progress: bool = True,
    journal: BuildJournal | None = None,
    commit_every: int = 1024,
) -> tuple[GalleryIndex, IngestStats]:
    """A new index stamped with ``manifest.sha256()`` holding the embeddings of ``items``; see `ingest`
    (``journal``: resume from / commit to a build journal)."""
    index = GalleryIndex(
        manifest.output.dim,
        index_type,
        metric=manifest.metric,
        bundle_sha256=manifest.sha256(),
        device=device,
        options=options,
    )
    stats = ingest(
        index,
        engine,
        manifest,
        items,
        batch_size=batch_size,
        workers=workers,
        strict=strict,
        progress=progress,
        journal=journal,
        commit_every=commit_every,
    )
    return index, stats
