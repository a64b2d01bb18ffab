"""``cdd-index build --engine ray`` against the real things: a local Ray runtime (2 logical CPUs, a small
object store), a `milvus-lite server` on loopback, the tiny bundle and real image files. The Ray build
gives the local FAISS build's vectors and top-10 (also through a real cdd-serve); a build killed with
SIGKILL midway (a real subprocess with its own Ray runtime, stalled on a FIFO among its inputs) resumes
to every item exactly once; a bundle change is refused by the re-run and by the server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

from serving.index.gallery import GalleryIndex
from tests.serving.server_process import ROOT, ServerProcess

pytest.importorskip("pymilvus", reason="the Milvus store needs pip install -e '.[milvus]'")
from tests.serving.milvus_server import MilvusServer  # noqa: E402

_NEEDS_RAY = "the Ray engine needs pip install -e '.[ray]' (make install installs it)"


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    ray = pytest.importorskip("ray", reason=_NEEDS_RAY)
    pytest.importorskip("ray.data", reason=_NEEDS_RAY)
    from serving.index.ray_session import ray_session

    before = signal.getsignal(signal.SIGTERM)
    with ray_session(ray, cpus=2, object_store_memory=200 * 1024 * 1024):
        yield
    assert signal.getsignal(signal.SIGTERM) == before  # ray.init's handler does not outlive the session


@pytest.fixture(scope="module")
def milvus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusServer]:
    server = MilvusServer(tmp_path_factory.mktemp("milvus-server"))
    yield server
    server.stop()


def _cdd_index(*argv: str) -> dict:
    from serving.index.__main__ import main

    out = StringIO()
    with redirect_stdout(out):
        code = main([*argv, "--quiet"])
    assert code == 0, f"cdd-index {' '.join(argv)} exited {code}"
    return json.loads(out.getvalue())


def _ray_build(bundle: Path, source: list[str], out: Path, uri: str, collection: str, *extra: str) -> list[str]:
    return ["build", "--bundle", str(bundle), *source, "--out", str(out), "--store", "milvus", "--milvus-uri", uri,
            "--collection", collection, "--engine", "ray", *extra]


def _stored(uri: str, collection: str) -> dict[str, np.ndarray]:
    """id -> vector of every row in the collection (a duplicate id would fail the length check)."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri, dedicated=True)  # closed with the client, not pooled
    try:
        rows = client.query(collection, filter='id != ""', output_fields=["id", "vector"], limit=16_384)
    finally:
        client.close()
    vectors = {str(r["id"]): np.asarray(r["vector"], dtype=np.float32) for r in rows}
    assert len(vectors) == len(rows), "the collection holds an id twice"
    return vectors


def _local_vectors(index_dir: Path) -> dict[str, np.ndarray]:
    ids, vectors, _ = GalleryIndex.load(index_dir).snapshot()
    return dict(zip(ids, vectors, strict=True))


def _max_abs_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_ray_build_gives_the_local_build_vectors_and_top10(
    ray_runtime, tiny_bundle: Path, tiny_manifest, gallery_images: Path, market_root: Path, milvus: MilvusServer,
    tmp_path: Path,
) -> None:
    from serving._proto import retrieval_pb2 as pb
    from serving._proto import retrieval_pb2_grpc as pb_grpc
    from serving.backends import create_engine
    from serving.index.build import embed_paths
    from serving.index.gallery_backend import open_gallery

    _cdd_index("build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(tmp_path / "local"))
    summary = _cdd_index(*_ray_build(tiny_bundle, ["--images", str(gallery_images)], tmp_path / "ray", milvus.uri,
                                     "same"))
    assert (summary["embedded"], summary["skipped"], summary["failed"], summary["count"]) == (20, 0, 0, 20)
    local = _local_vectors(tmp_path / "local")
    assert _max_abs_diff(local, _stored(milvus.uri, "same")) <= 1e-5

    queries = sorted((market_root / "query").glob("*.jpg")) + sorted(gallery_images.glob("*.jpg"))[::3]
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    vectors, ok, _ = embed_paths(engine, tiny_manifest, queries, strict=True, progress=False)
    expected = [[h.id for h in row] for row in GalleryIndex.load(tmp_path / "local").search(vectors, 10)]
    milvus_gallery = open_gallery(tmp_path / "ray", tiny_manifest.sha256())
    try:
        assert [[h.id for h in row] for row in milvus_gallery.search(vectors, 10)] == expected
    finally:
        milvus_gallery.close()
    server = ServerProcess(tiny_bundle, tmp_path / "ray")
    try:
        import grpc

        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.RetrievalStub(channel)
            served = [[i.id for i in stub.Search(pb.SearchRequest(image=q.read_bytes(), k=10), timeout=30).items]
                      for q in queries]
    finally:
        server.terminate()
    assert served == expected and len(expected[0]) == 10


def _session_pids(session: int) -> list[int]:
    """Live processes of the session ``session`` (the killed build and the Ray processes it started)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == session and fields[0] != "Z":
                pids.append(int(entry.name))
    return pids


def _count(uri: str, collection: str) -> int:
    from pymilvus import MilvusClient

    client = MilvusClient(uri, dedicated=True)  # closed with the client, not pooled
    try:
        if not client.has_collection(collection):
            return 0
        return int(client.query(collection, filter="", output_fields=["count(*)"])[0]["count(*)"])
    finally:
        client.close()


def _kill_when_midway(command: list[str], uri: str, collection: str, at_least: int) -> int:
    """Run ``command`` in its own session, SIGKILL all of it once the collection holds ``at_least`` rows;
    the count left."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while _count(uri, collection) < at_least:
            assert process.poll() is None, f"the Ray build ended before the kill:\n{process.stderr.read()}"
            assert time.monotonic() < deadline, "the Ray build wrote too little within 180 s"
            time.sleep(0.5)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
        for pid in _session_pids(process.pid):  # Ray workers live in their own process groups
            os.kill(pid, signal.SIGKILL)
    return _count(uri, collection)


def test_killed_ray_build_resumes_with_every_item_exactly_once(
    tiny_bundle: Path, gallery_images: Path, milvus: MilvusServer, ray_runtime, tmp_path: Path
) -> None:
    images = tmp_path / "images"
    shutil.copytree(gallery_images, images)
    names = sorted(p.name for p in images.glob("*.jpg"))
    (images / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    gate = images / "gate.jpg"
    os.mkfifo(gate)  # reading it blocks until a writer comes: the build stalls there, after earlier batches
    entries = [*names[:9], gate.name, *names[9:], "broken.jpg", "missing.jpg"]
    listing = tmp_path / "gallery.txt"
    listing.write_text("".join(f"images/{name}\n" for name in entries))
    argv = _ray_build(tiny_bundle, ["--list", str(listing)], tmp_path / "ray", milvus.uri, "resume",
                      "--batch-size", "4", "--index-type", "hnsw")
    left = _kill_when_midway([sys.executable, "-m", "serving.index", *argv, "--ray-cpus", "4", "--quiet"],
                             milvus.uri, "resume", at_least=8)
    assert 8 <= left < len(names)

    gate.unlink()
    shutil.copy(images / names[0], gate)
    summary = _cdd_index(*argv)
    assert (summary["skipped"], summary["embedded"], summary["failed"]) == (left, len(names) + 1 - left, 2)
    report = json.loads((tmp_path / "ray.report.json").read_text())
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failed_inputs"]}
    assert sorted(reasons) == ["broken.jpg", "missing.jpg"] and "cannot read" in reasons["missing.jpg"]
    _cdd_index("build", "--bundle", str(tiny_bundle), "--list", str(listing), "--out", str(tmp_path / "local"))
    local = _local_vectors(tmp_path / "local")
    assert len(local) == len(names) + 1 == _count(milvus.uri, "resume")
    assert _max_abs_diff(local, _stored(milvus.uri, "resume")) <= 1e-5

    from serving.index.atomic_dir import resolve

    point = json.loads((resolve(tmp_path / "ray") / "index.json").read_text())["operating_point"]
    assert point["parameter"] == "ef_search" and point["reached"] and point["recall_at_k"] >= 0.95  # as local

    again = _cdd_index(*argv)
    assert (again["skipped"], again["embedded"], again["count"]) == (len(names) + 1, 0, len(names) + 1)


def _other_bundle(tiny_bundle: Path, folder: Path) -> Path:
    shutil.copytree(tiny_bundle, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["name"] = "tiny-retrained"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def test_parquet_manifest_build_then_another_bundle_is_refused_by_the_rerun_and_by_the_server(
    tiny_bundle: Path, tiny_manifest, gallery_images: Path, milvus: MilvusServer, ray_runtime, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from serving.backends import create_engine
    from serving.index.__main__ import main
    from serving.index.build import embed_paths
    from serving.index.collection_record import read_record, write_record
    from serving.index.errors import IndexBundleMismatch
    from serving.index.gallery_backend import open_gallery

    few = sorted(gallery_images.glob("*.jpg"))[:3]
    (tmp_path / "images").mkdir()
    for image in few[:2]:
        shutil.copy(image, tmp_path / "images")
    paths = [f"images/{few[0].name}", f"images/{few[1].name}", few[2].resolve().as_uri()]
    table = pa.table({"key": ["k0", "k1", "k2"], "path": paths, "label": [7, 8, 9]})
    pq.write_table(table, tmp_path / "manifest.parquet")
    argv = _ray_build(tiny_bundle, ["--manifest", str(tmp_path / "manifest.parquet"), "--id-column", "key"],
                      tmp_path / "ray", milvus.uri, "guarded")
    assert _cdd_index(*argv)["embedded"] == 3
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    vectors, _, _ = embed_paths(engine, tiny_manifest, few, strict=True, progress=False)
    assert _max_abs_diff({f"k{i}": v for i, v in enumerate(vectors)}, _stored(milvus.uri, "guarded")) <= 1e-5
    other = _other_bundle(tiny_bundle, tmp_path / "other-bundle")
    argv[argv.index(str(tiny_bundle))] = str(other)
    assert main([*argv, "--quiet"]) == 2
    error = capsys.readouterr().err
    assert f"holds embeddings of bundle sha256 {tiny_manifest.sha256()}" in error and "--restart" in error
    assert _count(milvus.uri, "guarded") == 3

    gallery = open_gallery(tmp_path / "ray", tiny_manifest.sha256())
    try:  # the collection is rebuilt by another bundle behind the index folder's back
        record = read_record(gallery.client, "guarded")
        assert record["decoding"]["rule"] == "rgb8-v1" and record["id_rule"] == "column:key"
        assert gallery.search(vectors[2:3], 1)[0][0].metadata["label"] == 9
        write_record(gallery.client, "guarded", {**record, "bundle_sha256": "f" * 64})
    finally:
        gallery.close()
    with pytest.raises(IndexBundleMismatch, match="f" * 64):
        open_gallery(tmp_path / "ray", tiny_manifest.sha256())


def test_ray_engine_without_ray_names_the_extra(
    tiny_bundle: Path, gallery_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from serving.index.__main__ import main

    monkeypatch.setitem(sys.modules, "ray", None)  # what an install without the [ray] extra sees
    argv = _ray_build(tiny_bundle, ["--images", str(gallery_images)], tmp_path / "ray", "http://127.0.0.1:9",
                      "absent")
    assert main([*argv, "--quiet"]) == 2
    assert "pip install 'cdd-retrieval[ray]'" in capsys.readouterr().err
    assert not (tmp_path / "ray").exists()


def test_actors_that_leave_no_cpu_to_decoding_are_refused(
    tiny_bundle: Path, gallery_images: Path, milvus: MilvusServer, ray_runtime, tmp_path: Path,
    capsys: pytest.CaptureFixture,
) -> None:
    from serving.index.__main__ import main

    argv = _ray_build(tiny_bundle, ["--images", str(gallery_images)], tmp_path / "ray", milvus.uri, "starved",
                      "--ray-actors", "2")
    assert main([*argv, "--quiet"]) == 2  # 2 actors x 1 thread on the fixture's 2 CPUs: decoding would never run
    assert "leave none to the decode tasks" in capsys.readouterr().err
    assert _count(milvus.uri, "starved") == 0


def test_bench_reports_ray_beside_the_local_build(
    tiny_bundle: Path, tiny_manifest, gallery_images: Path, ray_runtime
) -> None:
    from serving.benchmarks.index_ray import bench_ingest_ray, ray_markdown

    result = bench_ingest_ray(tiny_bundle, tiny_manifest, gallery_images, backend="onnxruntime-cpu", batch=4,
                              engine_threads=1, cores=2)
    local, ray = result["local"], result["ray"]
    assert local["images"] == ray["embedded"] == ray["count"] == 20 and ray["failed"] == 0
    assert result["ratio"] == pytest.approx(ray["images_per_s"] / local["images_per_s"])
    assert f"**{result['ratio']:.2f}**" in "\n".join(ray_markdown(result))
    with pytest.raises(ValueError, match="must leave a core"):
        bench_ingest_ray(tiny_bundle, tiny_manifest, gallery_images, backend="onnxruntime-cpu", batch=4,
                         engine_threads=2, cores=2)


def test_a_failed_ray_start_finds_the_processes_it_left() -> None:
    from serving.index.ray_session import _descendants

    before = _descendants(os.getpid())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _descendants(os.getpid()) - before == {child.pid}  # what a retry kills, and nothing else
    finally:
        child.kill()
        child.wait(10)
