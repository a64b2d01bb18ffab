"""Acknowledged means durable, against real `cdd-serve` processes killed with SIGKILL: an AddItems or
RemoveItems that got its reply survives kill -9 and a restart, with the FAISS store (fsynced write log)
and with the Milvus store (embedded milvus-lite). A retried AddItems with upsert is harmless."""

from __future__ import annotations

from pathlib import Path

import grpc
import numpy as np
import pytest

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.index.__main__ import main as cdd_index
from tests.serving.server_process import ServerProcess

NEW_ID = "added-after-start"


def _build(bundle: Path, images: Path, out: Path, *extra: str) -> Path:
    argv = ["build", "--bundle", str(bundle), "--images", str(images), "--out", str(out), "--quiet", *extra]
    assert cdd_index(argv) == 0
    return out


def _new_image(synthetic: object) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(synthetic.image(77, 0)).save(buffer, format="PNG")  # an identity not in the gallery
    return buffer.getvalue()


def _top(stub: pb_grpc.RetrievalStub, image: bytes) -> tuple[str, int]:
    top = stub.Search(pb.SearchRequest(image=image, k=1), timeout=20).items[0].id
    return top, stub.Stats(pb.StatsRequest(), timeout=20).count


def _durability_round(bundle: Path, index: Path, synthetic: object, before: int) -> None:
    image = _new_image(synthetic)
    server = ServerProcess(bundle, index)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.RetrievalStub(channel)
            item = pb.NewItem(id=NEW_ID, image=image, metadata={"source": "rpc"})
            reply = stub.AddItems(pb.AddItemsRequest(items=[item]), timeout=20)
            assert reply.added == 1 and reply.count == before + 1
            retry = stub.AddItems(pb.AddItemsRequest(items=[item], upsert=True), timeout=20)
            assert retry.added == 1 and retry.count == before + 1
            with pytest.raises(grpc.RpcError) as caught:
                stub.AddItems(pb.AddItemsRequest(items=[item]), timeout=20)
            assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    finally:
        server.kill()
    server = ServerProcess(bundle, index)
    try:
        with grpc.insecure_channel(server.address) as channel:
            stub = pb_grpc.RetrievalStub(channel)
            assert _top(stub, image) == (NEW_ID, before + 1)
            reply = stub.RemoveItems(pb.RemoveItemsRequest(ids=[NEW_ID]), timeout=20)
            assert reply.removed == 1 and reply.count == before
    finally:
        server.kill()
    server = ServerProcess(bundle, index)
    try:
        with grpc.insecure_channel(server.address) as channel:
            top, count = _top(pb_grpc.RetrievalStub(channel), image)
            assert top != NEW_ID and count == before
    finally:
        assert server.terminate() == 0


def test_faiss_acknowledged_add_and_remove_survive_kill_9(
    tiny_bundle: Path, gallery_images: Path, synthetic: object, tmp_path: Path
) -> None:
    index = _build(tiny_bundle, gallery_images, tmp_path / "index")
    _durability_round(tiny_bundle, index, synthetic, synthetic.gallery_ids * synthetic.gallery_per_id)
    logs = list(index.glob("journal-*.log"))
    assert len(logs) <= 1 and all(log.stat().st_size == 0 for log in logs)  # SIGTERM folded the log


@pytest.mark.slow
def test_milvus_acknowledged_add_and_remove_survive_kill_9(
    tiny_bundle: Path, gallery_images: Path, synthetic: object, tmp_path: Path
) -> None:
    pytest.importorskip("pymilvus", reason="the Milvus store needs pip install -e '.[milvus]'")
    index = _build(tiny_bundle, gallery_images, tmp_path / "index", "--store", "milvus")
    assert (index / "milvus.db").is_dir()
    _durability_round(tiny_bundle, index, synthetic, synthetic.gallery_ids * synthetic.gallery_per_id)
    np.testing.assert_equal(sorted(p.name for p in index.glob("journal-*")), [])
