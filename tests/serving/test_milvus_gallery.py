"""The Milvus store against the real thing: one embedded milvus-lite per module for the backend's
contract (search, filter expressions, upsert, all-or-nothing errors), and a `milvus-lite server` shared
by two real `cdd-serve` replicas: an item added through one is found through the other."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.index.errors import DimensionError, DuplicateIdError, IndexBundleMismatch, UnknownIdError
from serving.index.exact_search import exact_top_k
from serving.index.gallery_backend import open_gallery
from tests.serving.server_process import ROOT, ServerProcess, free_port

pytest.importorskip("pymilvus", reason="the Milvus store needs pip install -e '.[milvus]'")

from serving.index.milvus_gallery import MilvusGallery, filter_expression  # noqa: E402

DIM = 8
N = 300


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    return _unit(np.random.default_rng(3).normal(size=(N, DIM)))


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory, vectors: np.ndarray) -> Iterator[MilvusGallery]:
    uri = str(tmp_path_factory.mktemp("milvus") / "milvus.db")
    gallery = MilvusGallery.create(uri, "unit", DIM, bundle_sha256="b" * 64)
    metadata = [{"camera": i % 3, "name": f'quote"back\\slash{i % 2}'} for i in range(N)]
    gallery.add([f"item{i}" for i in range(N)], vectors, metadata)
    yield gallery
    gallery.close()


def test_search_matches_exact_inner_product(gallery: MilvusGallery, vectors: np.ndarray) -> None:
    assert len(gallery) == N
    hits = gallery.search(vectors[:5], k=4)
    expected = exact_top_k(vectors[:5], vectors, 4)
    assert [[h.id for h in row] for row in hits] == [[f"item{r}" for r, _ in row] for row in expected]
    assert hits[0][0].score == pytest.approx(1.0, abs=1e-5) and hits[0][0].metadata["camera"] == 0


def test_filters_are_milvus_expressions_on_text_forms(gallery: MilvusGallery, vectors: np.ndarray) -> None:
    assert filter_expression({"camera": 2, 'we"ird': "x"}) == 'attrs["camera"] == "2" and attrs["we\\"ird"] == "x"'
    for value in (2, "2"):
        hits = gallery.search(vectors[:2], k=10, filter={"camera": value})[0]
        assert len(hits) == 10 and {h.metadata["camera"] for h in hits} == {2}
    quoted = gallery.search(vectors[:1], k=5, filter={"name": 'quote"back\\slash1'})[0]
    assert len(quoted) == 5 and all(int(h.id[4:]) % 2 == 1 for h in quoted)
    assert gallery.search(vectors[:1], k=5, filter={"camera": 9}) == [[]]


def test_add_remove_upsert_are_all_or_nothing(gallery: MilvusGallery, vectors: np.ndarray) -> None:
    with pytest.raises(DuplicateIdError, match="upsert"):
        gallery.add(["item1", "fresh"], vectors[:2])
    with pytest.raises(DimensionError):
        gallery.add(["fresh"], vectors[:1, :4])
    with pytest.raises(UnknownIdError):
        gallery.remove(["item2", "missing"])
    assert len(gallery) == N and "fresh" not in gallery and "item2" in gallery
    assert gallery.add(["item7"], vectors[8:9], [{"camera": "moved"}], upsert=True) == 1
    top = gallery.search(vectors[8:9], k=2)[0]
    assert {h.id for h in top} == {"item7", "item8"} and len(gallery) == N
    assert gallery.search(vectors[7:8], k=1, filter={"camera": "moved"})[0][0].id == "item7"
    assert gallery.remove(["item7"]) == 1 and "item7" not in gallery and len(gallery) == N - 1


TRICKY = [
    "café", "Zürich", "é", "\\u00e9", 'q"uote', "back\\slash", "\\", '"', '\\"', "x\ny", "x\\ny", "cr\r\nlf",
    "tab\there", "\x00nul", "\x01ctl", "שלום\u200f", "مرحبا", "\u202eoverride", "emoji😀", "a'b",
    'id" or id != "', "line\u2028sep",
]
"""Ids, metadata keys and values that a naive or JSON-style quoting gets wrong: non-ASCII (which JSON turns
into backslash-u escapes Milvus refuses), quotes, backslashes (a value with a backslash-u in it must not
match the accented letter), newlines, control characters, RTL text, an injection attempt."""


def test_any_unicode_id_key_and_value_round_trips_and_matches_only_itself(tmp_path: Path) -> None:
    gallery = MilvusGallery.create(str(tmp_path / "milvus.db"), "unicode", DIM)
    vectors = _unit(np.random.default_rng(5).normal(size=(len(TRICKY), DIM)))
    try:
        half = len(TRICKY) // 2
        metadata = [{"city": text, text: "key"} for text in TRICKY]
        assert gallery.add(TRICKY[:half], vectors[:half], metadata[:half]) == half
        assert gallery.add(TRICKY[half:], vectors[half:], metadata[half:], upsert=True) == len(TRICKY) - half
        assert len(gallery) == len(TRICKY)
        for i, text in enumerate(TRICKY):
            assert text in gallery and text + "!" not in gallery
            with pytest.raises(DuplicateIdError):
                gallery.add([text], vectors[i : i + 1])
            for field in ({"city": text}, {text: "key"}):
                hits = gallery.search(vectors[i : i + 1], k=len(TRICKY), filter=field)[0]
                assert [h.id for h in hits] == [text] and hits[0].metadata == metadata[i], (text, field)
        gallery.add(TRICKY, vectors, [{"city": text + "2"} for text in TRICKY], upsert=True)
        assert len(gallery) == len(TRICKY)
        assert [h.id for h in gallery.search(vectors[:1], k=3, filter={"city": TRICKY[3] + "2"})[0]] == [TRICKY[3]]
        for removed, text in enumerate(TRICKY, start=1):
            assert gallery.remove([text]) == 1 and text not in gallery
            assert len(gallery) == len(TRICKY) - removed
        with pytest.raises(UnknownIdError):
            gallery.remove([TRICKY[0]])
    finally:
        gallery.close()


def test_grpc_add_search_and_remove_with_non_ascii_text(
    tiny_bundle: Path, tiny_manifest, synthetic, tmp_path: Path
) -> None:
    """The issue's reproduction over a real gRPC server: AddItems with id café, a Search filtered on
    city = Zürich, and an upserted id that is removed again."""
    import io

    from PIL import Image

    from serving.backends import create_engine
    from serving.server import create_server
    from serving.service import RetrievalService

    dim = tiny_manifest.output.dim
    gallery = MilvusGallery.create(str(tmp_path / "milvus.db"), "grpc", dim, bundle_sha256=tiny_manifest.sha256())
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    service = RetrievalService(engine, gallery, tiny_manifest)
    server, port = create_server(service, port=0)
    server.start()
    buffer = io.BytesIO()
    Image.fromarray(synthetic.image(3, 0)).save(buffer, format="PNG")
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RetrievalStub(channel)
            items = [pb.NewItem(id=name, image=buffer.getvalue(), metadata={"city": city})
                     for name, city in (("café", "Zürich"), ("cafe", "Zurich"), ('שלום"\\', "Zürich\n"))]
            assert stub.AddItems(pb.AddItemsRequest(items=items), timeout=30).count == 3
            found = stub.Search(pb.SearchRequest(image=buffer.getvalue(), k=5, filters={"city": "Zürich"}), timeout=30)
            assert [item.id for item in found.items] == ["café"]
            upsert = pb.AddItemsRequest(items=[pb.NewItem(id="naïve ☃", image=buffer.getvalue())], upsert=True)
            assert stub.AddItems(upsert, timeout=30).count == 4
            assert stub.RemoveItems(pb.RemoveItemsRequest(ids=["naïve ☃", 'שלום"\\']), timeout=30).count == 2
            assert {h.id for h in stub.Search(pb.SearchRequest(image=buffer.getvalue(), k=5), timeout=30).items} == {
                "café", "cafe"}
    finally:
        server.stop(None)
        service.close()


def _milvus_server(data: Path, port: int) -> subprocess.Popen:
    milvus_lite = Path(sys.executable).with_name("milvus-lite")
    command = [str(milvus_lite), "server", "--data-dir", str(data), "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    from pymilvus import MilvusClient

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            MilvusClient(f"http://127.0.0.1:{port}", timeout=2).close()
            return process
        except Exception:  # not listening yet
            if process.poll() is not None:
                raise AssertionError(f"milvus-lite server exited: {process.stderr.read()}") from None
            time.sleep(0.5)
    process.kill()
    raise AssertionError("milvus-lite server did not start within 60 s")


@pytest.mark.slow
def test_two_replicas_share_one_milvus_server(
    tiny_bundle: Path, gallery_images: Path, synthetic, tmp_path: Path, tiny_manifest
) -> None:
    from serving.index.__main__ import main as cdd_index

    port = free_port()
    milvus = _milvus_server(tmp_path / "milvus-data", port)
    replicas: list[ServerProcess] = []
    try:
        uri = f"http://127.0.0.1:{port}"
        index = tmp_path / "index"
        argv = ["build", "--bundle", str(tiny_bundle), "--images", str(gallery_images), "--out", str(index),
                "--store", "milvus", "--milvus-uri", uri, "--collection", "shared", "--quiet"]
        assert cdd_index(argv) == 0
        with pytest.raises(IndexBundleMismatch):
            open_gallery(index, "0" * 64)
        replicas = [ServerProcess(tiny_bundle, index) for _ in range(2)]
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(synthetic.image(66, 0)).save(buffer, format="PNG")
        image = buffer.getvalue()
        with grpc.insecure_channel(replicas[0].address) as first, grpc.insecure_channel(replicas[1].address) as second:
            one, two = pb_grpc.RetrievalStub(first), pb_grpc.RetrievalStub(second)
            before = two.Stats(pb.StatsRequest(), timeout=20).count
            added = one.AddItems(pb.AddItemsRequest(items=[pb.NewItem(id="via-one", image=image)]), timeout=20)
            assert added.count == before + 1
            assert two.Search(pb.SearchRequest(image=image, k=1), timeout=20).items[0].id == "via-one"
            assert two.RemoveItems(pb.RemoveItemsRequest(ids=["via-one"]), timeout=20).removed == 1
            assert one.Search(pb.SearchRequest(image=image, k=1), timeout=20).items[0].id != "via-one"
            assert one.Stats(pb.StatsRequest(), timeout=20).count == before
    finally:
        for replica in replicas:
            replica.terminate()
        milvus.kill()
        milvus.wait(10)


def test_cdd_serve_refuses_a_milvus_index_of_another_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    from serving.index.gallery_backend import save_milvus_manifest

    gallery = MilvusGallery.create(str(tmp_path / "idx" / "milvus.db"), "other", DIM, bundle_sha256="0" * 64)
    try:
        save_milvus_manifest(tmp_path / "idx", gallery, "cosine", "t0", "t1")
    finally:
        gallery.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "serving.server", "--bundle", str(tiny_bundle), "--index",
               str(tmp_path / "idx"), "--port", "0", "--backend", "onnxruntime-cpu"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "was built with bundle sha256 " + "0" * 64 in done.stderr
