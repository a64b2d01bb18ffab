"""A full or failing disk never loses an acknowledged change and never replaces a good snapshot.

ENOSPC / EIO are injected (`FaultyDisk`) at every write-side operation of an add, a remove and a snapshot
of the FAISS store: each failing change is refused (StorageFull / StorageFailed), the log and the live
snapshot stay as they were, reads keep working, and the same change works once the disk recovers. What a
crash would leave on disk (live snapshot + its log) always holds exactly the acknowledged changes. Over
gRPC the refusal is RESOURCE_EXHAUSTED (full) or UNAVAILABLE (I/O) with one line and /metrics counts it.
Where the tests run as root, a real tmpfs is filled to the brim."""

from __future__ import annotations

import errno
import io
import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import create_engine
from serving.bundle import Manifest
from serving.errors import StorageFailed, StorageFull
from serving.index.atomic_dir import resolve
from serving.index.durable_gallery import DurableGallery
from serving.index.gallery import GalleryIndex
from serving.index.log_frames import scan_log
from serving.index.write_log import LogRecord, journal_path
from serving.metrics import ServerMetrics
from serving.server import create_server
from serving.service import RetrievalService
from tests.serving.faulty_disk import FaultyDisk

DIM = 8
FAULTS = [(errno.ENOSPC, StorageFull), (errno.EIO, StorageFailed)]


def _vectors(n: int, seed: int) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(n, DIM))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _new_index(folder: Path, dim: int = DIM, sha: str = "b" * 64, n: int = 4) -> Path:
    index = GalleryIndex(dim, bundle_sha256=sha)
    rows = np.random.default_rng(0).normal(size=(n, dim))
    index.add([f"base{i}" for i in range(n)], (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32))
    index.save(folder)
    return folder


def on_disk(folder: Path) -> set[str]:
    """The ids a restart would serve: the live snapshot plus its log (which must scan clean)."""
    return set(_restart_view(folder).snapshot()[0])


def _metadata_on_disk(folder: Path, item: str) -> dict:
    return _restart_view(folder).get(item)[1]


def _restart_view(folder: Path) -> GalleryIndex:
    index = GalleryIndex.load(folder)
    scan = scan_log(journal_path(folder, resolve(folder).name).read_bytes()
                    if journal_path(folder, resolve(folder).name).exists() else b"")
    assert scan.state == "clean", scan.damage
    for payload in scan.payloads:
        record = LogRecord.decode(payload, index.dim)
        if record.op == "add":
            index.add(record.ids, record.vectors, record.metadata, upsert=record.upsert)
        else:
            index.remove(record.ids)
    return index


CHANGES = [("add", "first", 1), ("add", "second", 2), ("remove", "base0", 0)]  # first: the log is created


@pytest.mark.parametrize("code, error", FAULTS)
@pytest.mark.parametrize("which", range(len(CHANGES)))
def test_every_write_of_an_add_and_a_remove_can_fail_without_a_trace(
    tmp_path: Path, code: int, error: type, which: int
) -> None:
    base = _new_index(tmp_path / "base")
    failed = []
    for fail_at in itertools.count():  # fail operation 0, 1, ... of the change until it makes fewer
        folder = tmp_path / f"try{fail_at}"
        shutil.copytree(base, folder)
        gallery = DurableGallery.open(folder)
        try:
            for earlier in CHANGES[:which]:
                _change(gallery, *earlier)
            expected = set(gallery.index.snapshot()[0])
            log = journal_path(folder, resolve(folder).name)
            before = log.read_bytes() if log.exists() else b""
            with FaultyDisk(fail_at, code) as faulty:
                try:
                    _change(gallery, *CHANGES[which])
                except error as exc:
                    assert "nothing was changed" in str(exc) and "\n" not in str(exc)
                else:
                    assert faulty.failed is None, f"{faulty.failed} failed but the change was acknowledged"
                    break
            failed.append(faulty.failed)
            assert (log.read_bytes() if log.exists() else b"") == before, faulty.failed
            assert set(gallery.index.snapshot()[0]) == expected and on_disk(folder) == expected
            assert gallery.search(_vectors(1, 99), 2)[0]  # reads keep working
            _change(gallery, *CHANGES[which])  # the disk recovered
            op, item, _ = CHANGES[which]
            assert on_disk(folder) == (expected | {item} if op == "add" else expected - {item})
        finally:
            gallery.close()
    kinds = [name.split()[0] for name in failed]
    assert kinds == (["open", "write", "fsync", "fsync"] if which == 0 else ["write", "fsync"])


def _change(gallery: DurableGallery, op: str, item: str, seed: int) -> None:
    if op == "add":
        gallery.add([item], _vectors(1, seed), [{"seed": seed}])
    else:
        gallery.remove([item])


@pytest.mark.parametrize("code, error", FAULTS)
def test_every_write_of_a_snapshot_can_fail_and_the_live_snapshot_stays_good(
    tmp_path: Path, code: int, error: type
) -> None:
    folder = _new_index(tmp_path / "idx")
    gallery = DurableGallery.open(folder)
    try:
        gallery.add(["pending"], _vectors(1, 5))
        with FaultyDisk() as counting:
            gallery.persist()
        steps = len(counting.ops)
        assert steps > 10  # files, checksums, fsyncs, renames, the pointer
        expected = {f"base{i}" for i in range(4)} | {"pending"}
        for fail_at in range(steps):
            gallery.add(["pending"], _vectors(1, 100 + fail_at), [{"round": fail_at}], upsert=True)
            live = resolve(folder).name
            with FaultyDisk(fail_at, code) as faulty:
                try:
                    gallery.persist()
                    became_live = True
                except error:
                    became_live = False
            assert faulty.failed is not None
            assert (resolve(folder).name != live) == became_live, faulty.failed
            assert on_disk(folder) == expected, faulty.failed  # what a crash now would leave
            assert _metadata_on_disk(folder, "pending") == {"round": fail_at}, faulty.failed
            assert len(gallery) == len(expected) and gallery.search(_vectors(1, 99), 1)[0]
        assert faulty.failed.startswith("fsync") and became_live  # the last step: after the switch
        gallery.add(["after"], _vectors(1, 7))
        expected.add("after")
        assert gallery.persist() is not None  # the disk recovered
    finally:
        gallery.close()
    assert set(GalleryIndex.load(folder).snapshot()[0]) == expected


@pytest.fixture
def served_durable(tmp_path: Path, tiny_bundle: Path, tiny_manifest: Manifest) -> Iterator[tuple]:
    """A real gRPC server on loopback over a DurableGallery; yields (stub, metrics, channel)."""
    folder = _new_index(tmp_path / "idx", dim=tiny_manifest.output.dim, sha=tiny_manifest.sha256())
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    service = RetrievalService(engine, DurableGallery.open(folder, tiny_manifest.sha256()), tiny_manifest)
    metrics = ServerMetrics()
    server, port = create_server(service, port=0, metrics=metrics)
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield pb_grpc.RetrievalStub(channel), metrics, channel
    finally:
        channel.close()
        server.stop(None)
        service.close()


def _vector_item(item_id: str, dim: int, seed: int) -> pb.NewItem:
    values = np.random.default_rng(seed).normal(size=dim).astype(np.float32)
    return pb.NewItem(id=item_id, vector=pb.Vector(values=values.tolist()))


def test_grpc_answers_a_full_disk_in_one_line_and_keeps_reading(served_durable: tuple, synthetic: object) -> None:
    stub, metrics, channel = served_durable
    dim = synthetic.dim
    image = io.BytesIO()
    Image.fromarray(synthetic.image(1, 0)).save(image, format="PNG")
    failures = [(errno.ENOSPC, grpc.StatusCode.RESOURCE_EXHAUSTED, "disk is full"),
                (errno.EDQUOT, grpc.StatusCode.RESOURCE_EXHAUSTED, "disk is full"),
                (errno.EIO, grpc.StatusCode.UNAVAILABLE, "I/O error")]
    for code, status, words in failures:
        with FaultyDisk(0, code, sticky=True):
            for call in (lambda: stub.AddItems(pb.AddItemsRequest(items=[_vector_item("new", dim, 1)]), timeout=20),
                         lambda: stub.RemoveItems(pb.RemoveItemsRequest(ids=["base0"]), timeout=20)):
                with pytest.raises(grpc.RpcError) as refused:
                    call()
                details = refused.value.details()
                assert refused.value.code() == status and words in details, details
                assert "\n" not in details and "Traceback" not in details and "nothing was changed" in details
            assert len(stub.Search(pb.SearchRequest(image=image.getvalue(), k=3), timeout=20).items) == 3
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=20)
            assert health.status == health_pb2.HealthCheckResponse.SERVING
    sample = metrics.registry.get_sample_value
    assert sample("cdd_write_failures_total", {"reason": "disk_full"}) == 4
    assert sample("cdd_write_failures_total", {"reason": "io_error"}) == 2
    assert stub.AddItems(pb.AddItemsRequest(items=[_vector_item("new", dim, 1)]), timeout=20).count == 5
    assert stub.RemoveItems(pb.RemoveItemsRequest(ids=["base0"]), timeout=20).count == 4


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs mounted for the test (needs root)."""
    if os.geteuid() != 0:
        pytest.skip(f"mounting a real tmpfs needs root; these tests run as uid {os.geteuid()}")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(path: Path) -> None:
    """Write ``path`` until the file system refuses another byte."""
    with open(path, "wb", buffering=0) as handle:
        for chunk in (65536, 4096, 1):
            try:
                while True:
                    handle.write(b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC


def test_a_real_full_tmpfs_loses_nothing_acknowledged(tiny_disk: Path) -> None:
    folder = _new_index(tiny_disk / "idx", n=50)
    gallery = DurableGallery.open(folder)
    acknowledged = {f"base{i}" for i in range(50)}
    try:
        for i in range(5):  # logged, not yet in a snapshot
            gallery.add([f"early{i}"], _vectors(1, 500 + i))
            acknowledged.add(f"early{i}")
        _fill(tiny_disk / "filler")
        refused = 0
        for i in range(2000):
            try:
                gallery.add([f"full{i}"], _vectors(1, i), [{"note": "x" * 200}])
                acknowledged.add(f"full{i}")
            except StorageFull:
                refused += 1
                if refused == 3:
                    break
        assert refused == 3
        live = resolve(folder).name
        with pytest.raises(StorageFull):
            gallery.persist()
        assert resolve(folder).name == live and on_disk(folder) == acknowledged
        assert gallery.search(_vectors(1, 5), 3)[0]  # reads keep working
        (tiny_disk / "filler").unlink()  # space is back
        gallery.add(["after"], _vectors(1, 3))
        acknowledged.add("after")
        assert on_disk(folder) == acknowledged
        assert gallery.persist() is not None and resolve(folder).name != live
    finally:
        gallery.close()
    assert set(GalleryIndex.load(folder).snapshot()[0]) == acknowledged
