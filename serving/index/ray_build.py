"""``cdd-index build --engine ray``: ingestion on a Ray cluster (or a local Ray runtime) into a Milvus
collection served by a Milvus server, resumable and exactly once.

Pipeline (Ray Data, streaming): the inputs (`serving.index.ray_inputs`: the local build's listings, or a
Parquet manifest read in parallel) -> `decode_rows` in Ray tasks (rows already in the collection are
skipped, the rest decoded by the local build's rule) -> `EmbedWriter` actors, each loading the bundle
once, embedding ``batch_size`` images per engine call and upserting them into the collection. The driver
only counts what comes back, shows progress (done / total, rate, ETA) and writes the report.

Exactly once: an item's id comes from its input (relative path, or a manifest column) and every write
is an upsert of that id, so retried tasks, restarted actors and re-runs never duplicate a row. The
collection carries the build record (`serving.index.collection_record`) from before its first row, so
a re-run (after a kill, or to add new inputs) checks it was built with the same bundle, decoding rule
and index settings, skips the ids already present and finishes the rest. Failed inputs (missing,
unreadable, undecodable) are listed with their reasons in the report file; a re-run retries them.
Ray is optional (``pip install 'cdd-retrieval[ray]'``) and imported only when a build runs.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from serving.bundle import Manifest, load_bundle
from serving.config import ServeConfig
from serving.index.build import ID_RULE, progress_bar
from serving.index.collection_record import build_record, check_resumable, read_record, write_record
from serving.index.errors import GalleryIndexError
from serving.index.index_lock import IndexLock
from serving.index.ray_inputs import ParquetManifest
from serving.index.ray_session import ray_session
from serving.index.ray_stages import CollectionTarget, EmbedWriter, decode_rows

__all__ = ["RAY_INSTALL", "RayBuildConfig", "RayBuildSummary", "import_ray", "ray_build"]

_LOG = logging.getLogger("cdd-index")
RAY_INSTALL = "pip install 'cdd-retrieval[ray]'"
"""How to install the optional Ray dependency (from a checkout: pip install -e '.[ray]')."""
_SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://")
_TUNE_MAX_ITEMS = 200_000
_DECODE_WORKER_BYTES = 160 << 20
"""Memory of a decode worker process before any image (Python, numpy, Pillow, pymilvus)."""


def import_ray() -> Any:
    """The ``ray`` module with Ray Data, or GalleryIndexError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError as exc:
        raise GalleryIndexError(
            f"--engine ray needs Ray with Ray Data ({exc}); install it: {RAY_INSTALL} "
            "(from a checkout: pip install -e '.[ray]'), or build with --engine local"
        ) from None
    return ray


@dataclass(frozen=True)
class RayBuildConfig:
    """One Ray build: the ``bundle`` folder (at the same path on every node), the Milvus server ``uri`` and
    ``collection``, the index folder ``out`` published for cdd-serve, the index type and options, engine
    ``backend``, images per engine call ``batch_size`` (None: the manifest's ``batch.opt``), ``actors``
    with ``engine_threads`` each and ``gpus_per_actor`` GPUs (0.5: two actors share a GPU), ``ray_address``
    (None: a local Ray runtime of ``ray_cpus`` logical CPUs, None: this machine's cores), ``restart`` (drop
    the collection first), ``report`` file (None: ``OUT.report.json``)."""

    bundle: Path
    uri: str
    out: Path
    collection: str = "cdd_gallery"
    index_type: str = "flat"
    options: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    batch_size: int | None = None
    actors: int = 1
    engine_threads: int = 1
    gpus_per_actor: float = 0.0
    ray_address: str | None = None
    ray_cpus: int | None = None
    restart: bool = False
    report: Path | None = None
    progress: bool = True
    max_pixels: int = ServeConfig.max_pixels
    id_rule: str = ID_RULE

    @property
    def report_path(self) -> Path:
        return self.report or Path(f"{self.out}.report.json")


@dataclass
class RayBuildSummary:
    """What a Ray build did: ``embedded`` now, ``skipped`` (already in the collection), ``failed``
    [(id, location, reason)], the collection's ``count`` at the end, wall ``seconds`` (of which
    ``ray_start_seconds`` connecting to or starting Ray; 0 when it was up already)."""

    embedded: int = 0
    skipped: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    count: int = 0
    seconds: float = 0.0
    ray_start_seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        """Images embedded per second of the pipeline (Ray's start-up and skipped images excluded)."""
        busy = self.seconds - self.ray_start_seconds
        return self.embedded / busy if busy > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "embedded": self.embedded,
            "skipped": self.skipped,
            "failed": len(self.failed),
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "ray_start_seconds": round(self.ray_start_seconds, 3),
            "images_per_s": round(self.images_per_s, 2),
        }


def _open_collection(cfg: RayBuildConfig, manifest: Manifest, record: dict[str, Any]) -> Any:
    """The collection to write, created (record first) when absent or with ``restart``, else checked."""
    from serving.index.milvus_gallery import MilvusGallery

    if not cfg.uri.startswith(_SERVER_SCHEMES):
        raise GalleryIndexError(
            f"--engine ray writes from many processes, so it needs a Milvus server: --milvus-uri "
            f"http://HOST:19530, found {cfg.uri!r} (for one machine: milvus-lite server --data-dir DIR --port PORT)"
        )
    sha = manifest.sha256()
    if cfg.restart or not MilvusGallery.exists(cfg.uri, cfg.collection):
        gallery = MilvusGallery.create(cfg.uri, cfg.collection, manifest.output.dim, index_type=cfg.index_type,
                                       options=cfg.options, bundle_sha256=sha)
        write_record(gallery.client, cfg.collection, record)
        return gallery
    gallery = MilvusGallery.connect(cfg.uri, cfg.collection, manifest.output.dim, cfg.index_type, cfg.options, sha)
    try:
        check_resumable(read_record(gallery.client, cfg.collection), record, cfg.collection)
    except BaseException:
        gallery.close()
        raise
    _LOG.info("resuming into collection %r: %d items already there are skipped", cfg.collection, len(gallery))
    return gallery


def _decode_task_memory(manifest: Manifest, batch: int, max_pixels: int) -> int:
    """Bytes a decode task may hold: its worker process, the largest image it accepts, decoded, and its
    batch of model inputs. Declaring it (the actors declare none) also keeps Ray Data from fusing the stages."""
    return _DECODE_WORKER_BYTES + 3 * (max_pixels + batch * manifest.input.height * manifest.input.width)


def _dataset(ray: Any, source: list[dict[str, str]] | ParquetManifest, cfg: RayBuildConfig, manifest: Manifest,
             target: CollectionTarget, batch: int) -> Any:
    """The lazy Ray Data pipeline: rows -> decode tasks -> embedding actors."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # the driver shows one bar, as the local build does
    if isinstance(source, ParquetManifest):
        rows = ray.data.read_parquet(str(source.path), columns=source.columns).map_batches(
            source.rows, batch_format="numpy")
    else:
        rows = ray.data.from_items(source, override_num_blocks=max(1, math.ceil(len(source) / batch)))
    decoded = rows.map_batches(
        decode_rows, fn_kwargs={"manifest": manifest, "target": target, "max_pixels": cfg.max_pixels},
        batch_size=batch, batch_format="numpy", num_cpus=1, memory=_decode_task_memory(manifest, batch, cfg.max_pixels),
    )
    return decoded.map_batches(
        EmbedWriter, batch_size=batch, batch_format="numpy", num_cpus=cfg.engine_threads,
        num_gpus=cfg.gpus_per_actor or None,
        compute=ray.data.ActorPoolStrategy(size=cfg.actors),
        fn_constructor_kwargs={"bundle": str(cfg.bundle), "backend": cfg.backend, "threads": cfg.engine_threads,
                               "batch_size": batch, "target": target},
    )


def _run(dataset: Any, total: int, progress: bool, summary: RayBuildSummary) -> None:
    """Stream the pipeline's results into ``summary`` with a progress bar."""
    with progress_bar(total, progress, "ray build") as bar:
        for out in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for item_id, location, status, reason in zip(out["id"], out["path"], out["status"], out["reason"],
                                                         strict=True):
                if status == "embedded":
                    summary.embedded += 1
                elif status == "skipped":
                    summary.skipped += 1
                else:
                    summary.failed.append((str(item_id), str(location), str(reason)))
            bar.update(len(out["id"]))


def _operating_point(gallery: Any, cfg: RayBuildConfig, count: int) -> dict[str, Any] | None:
    """Tune an approximate index as the local build does (`serving.index.store_build.tune_store`), on the
    vectors read back from the collection; beyond ``_TUNE_MAX_ITEMS`` the --set index.KEY values stay."""
    from serving.index.operating_point import PARAMETER
    from serving.index.store_build import tune_store

    if cfg.index_type not in PARAMETER:
        return None
    if count > _TUNE_MAX_ITEMS:
        _LOG.warning("%d items are too many to read back for tuning; %s keeps its --set index.KEY / default value",
                     count, PARAMETER[cfg.index_type])
        return None
    ids, vectors = [], []
    rows = gallery.client.query_iterator(cfg.collection, batch_size=1000, filter="", output_fields=["id", "vector"])
    try:
        while page := rows.next():
            ids += [str(r["id"]) for r in page]
            vectors += [r["vector"] for r in page]
    finally:
        rows.close()
    matrix = np.asarray(vectors, dtype=np.float32)
    return tune_store(gallery, cfg.index_type, ids, matrix, cfg.options.get("nlist", 128))


def _write_report(cfg: RayBuildConfig, manifest: Manifest, summary: RayBuildSummary) -> Path:
    from cdd_common.atomic_file import write_text_atomic

    report = {
        "collection": cfg.collection,
        "milvus_uri": cfg.uri,
        "bundle_sha256": manifest.sha256(),
        **summary.to_dict(),
        "failed_inputs": [{"id": i, "path": p, "reason": r} for i, p, r in summary.failed],
    }
    return write_text_atomic(cfg.report_path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def ray_build(cfg: RayBuildConfig, source: list[dict[str, str]] | ParquetManifest) -> RayBuildSummary:
    """Run the build of ``source`` (rows from `serving.index.ray_inputs.item_rows`, or a Parquet manifest),
    publish the index folder ``cfg.out`` and write the report. Raises GalleryIndexError (Ray or pymilvus
    missing, embedded Milvus, collection of another bundle / settings, a failed Ray job), IndexInUse."""
    ray = import_ray()
    from serving.index.gallery_backend import save_milvus_manifest

    manifest = load_bundle(cfg.bundle)
    batch = min(cfg.batch_size or manifest.batch.opt, manifest.batch.max)
    record = build_record(manifest, index_type=cfg.index_type, options=cfg.options, engine="ray",
                          id_rule=cfg.id_rule, max_pixels=cfg.max_pixels)
    fresh = not cfg.out.exists()
    lock = IndexLock(cfg.out, "writer")
    try:
        gallery = _open_collection(cfg, manifest, record)
        try:
            target = CollectionTarget(cfg.uri, cfg.collection, manifest.output.dim, cfg.index_type,
                                      dict(cfg.options), manifest.sha256())
            summary = _execute(ray, cfg, source, manifest, target, batch)
            gallery.persist()
            summary.count = len(gallery)
            point = _operating_point(gallery, cfg, summary.count)
            created = datetime.now(UTC).isoformat(timespec="seconds")
            save_milvus_manifest(cfg.out, gallery, manifest.metric, created, created, point)
        finally:
            gallery.close()
    except BaseException:
        if fresh:  # nothing was published: leave no folder behind (the collection keeps what was written)
            lock.release()
            shutil.rmtree(cfg.out, ignore_errors=True)
        raise
    finally:
        lock.release()
    _write_report(cfg, manifest, summary)
    return summary


def _check_cpus(ray: Any, cfg: RayBuildConfig, local: bool) -> None:
    """The actors must leave CPUs to the decode tasks, or the build waits forever: an error on a local
    runtime, a warning on a cluster (an autoscaler may still add nodes)."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if cfg.actors * cfg.engine_threads < cpus:
        return
    message = (f"{cfg.actors} actor(s) x {cfg.engine_threads} engine thread(s) take all {cpus:g} Ray CPUs and "
               "leave none to the decode tasks; use fewer --ray-actors / --engine-threads, or more --ray-cpus")
    if local:
        raise GalleryIndexError(message)
    _LOG.warning("%s (unless the autoscaler adds nodes)", message)


def _execute(ray: Any, cfg: RayBuildConfig, source: list[dict[str, str]] | ParquetManifest, manifest: Manifest,
             target: CollectionTarget, batch: int) -> RayBuildSummary:
    total = source.count if isinstance(source, ParquetManifest) else len(source)
    summary = RayBuildSummary()
    tick = time.perf_counter()
    with ray_session(ray, cfg.ray_address, cfg.ray_cpus):
        summary.ray_start_seconds = time.perf_counter() - tick
        try:
            _check_cpus(ray, cfg, local=cfg.ray_address is None)
            _run(_dataset(ray, source, cfg, manifest, target, batch), total, cfg.progress, summary)
        except GalleryIndexError:
            raise
        except Exception as exc:  # Ray wraps task / actor failures in its own exception types
            raise GalleryIndexError(
                f"the Ray build failed: {exc}; items written so far stay, re-run to resume") from exc
    summary.seconds = time.perf_counter() - tick
    return summary
