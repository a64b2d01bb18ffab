"""Search replies built from the gallery's columns (`FoundItems.reply`, `search_reply`) are byte for byte
what the earlier per-hit path built: the same hits as the previous ranking code (kept below as the
reference), the same bytes as `search_response` of those hits, through real FAISS structures (ties,
missing slots, re-ranked candidates, tombstones, filters) and through a real gRPC server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from serving._proto import retrieval_pb2 as pb
from serving.backends import create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.grpc_servicer import SERVICE_NAME
from serving.index.exact_search import exact_top_k
from serving.index.found_items import FoundItems
from serving.index.gallery import GalleryIndex, Hit
from serving.index.item_table import ItemTable
from serving.response_wire import item_fields, item_head, search_reply, search_response
from serving.server import create_server
from serving.service import RetrievalService, ServiceLimits

DIM = 16
METADATA = [
    {"camera": 3, "path": "a/b.jpg", "ok": True, "tags": [1, 2], "none": None},
    {"name": "é漢字" * 40, "": "", "score": 0.25},  # multi-byte text, empty key and value, a 2-byte length
    {},
]


def _previous_rank(table: ItemTable, queries, k, rows, scores, allowed) -> list[list[tuple[int, float]]]:
    """The ranking `structure_search` did before it worked on arrays (per query, per hit)."""
    want = k if allowed is None else min(k, int(allowed.size))
    results, short = [], []
    for i in range(queries.shape[0]):
        cand = np.flatnonzero(rows[i] >= 0)
        cand = cand[np.argsort(-scores[i, cand], kind="stable")][:want]
        results.append([(int(rows[i, c]), float(scores[i, c])) for c in cand])
        if allowed is not None and len(cand) < want:
            short.append(i)
    if short:  # the short queries' exact search, all in one call
        subset = np.asarray([table._row_of_label[int(label)] for label in allowed], dtype=np.int64)
        for i, hits in zip(short, exact_top_k(queries[short], table.vectors[subset], k), strict=True):
            results[i] = [(int(subset[pos]), score) for pos, score in hits]
    return results


def _previous_hits(index: GalleryIndex, queries: np.ndarray, k: int, filter: dict | None) -> list[list[Hit]]:
    """`GalleryIndex.search` of the structure path as it was: rank, then one Hit per (row, score)."""
    table, searcher = index._table, index._searcher
    allowed = table.match_labels(filter) if filter else None
    refine = int(index._options.get("refine", 4)) if index._lossy_codes() else 1
    scores, labels = searcher.search(queries, min(len(table), k * refine), allowed)
    rows = np.asarray([[table._row_of_label.get(int(label), -1) for label in row] for row in labels], np.int64)
    if refine > 1:
        scores = np.einsum("qd,qkd->qk", queries, table.vectors[np.where(rows >= 0, rows, 0)])
    ranked = _previous_rank(table, queries, k, rows, scores, allowed)
    return [[Hit(table.ids[r], s, dict(table.metadata[r]), table.wire[r]) for r, s in hits] for hits in ranked]


def _unit(rng: np.random.Generator, n: int) -> np.ndarray:
    vectors = rng.normal(size=(n, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _gallery(index_type: str, options: dict[str, Any]) -> tuple[GalleryIndex, np.ndarray]:
    rng = np.random.default_rng(7)
    vectors = _unit(rng, 400)
    vectors[1::50] = vectors[::50]  # exact duplicates: equal scores, ranked in the structure's order
    index = GalleryIndex(DIM, index_type, options=options)
    index.add([f"item-{i}" * (1 + i % 40) for i in range(400)], vectors,
              [dict(METADATA[i % 3], camera=i % 5) for i in range(400)])
    index.settle()
    index.remove([f"item-{i}" * (1 + i % 40) for i in range(0, 400, 7)])  # rows move; hnsw keeps tombstones
    return index, np.concatenate([vectors[:6], _unit(rng, 6)])


@pytest.mark.parametrize(("index_type", "options"), [
    ("flat", {}), ("ivf", {"nlist": 16, "nprobe": 1}), ("ivfpq", {"nlist": 8, "nprobe": 2, "pq_m": 4}),
    ("hnsw", {"ef_search": 16}),
])
def test_structure_search_gives_the_previous_hits_and_bytes(index_type: str, options: dict) -> None:
    index, queries = _gallery(index_type, options)
    assert index.stats()["trained"]
    for k, filter in ((10, None), (60, None), (10, {"camera": "2"}), (400, {"camera": 4}), (3, {"name": "x"})):
        expected = _previous_hits(index, queries, k, filter)
        assert index.search(queries, k, filter) == expected
        found = index.search(queries, k, filter, columns=True)
        assert [[h.wire for h in f.hits()] for f in found] == [[h.wire for h in hits] for hits in expected]
        assert [f.reply() for f in found] == [search_response(hits) for hits in expected]
    if index_type == "ivf":  # one probed list of ~25 items cannot fill k = 60: short answers, missing slots
        assert min(len(hits) for hits in index.search(queries, 60)) < 60


def test_exact_and_empty_searches_reply_like_their_hits() -> None:
    index, queries = _gallery("flat", {})
    for k, filter in ((5, None), (1000, None), (10, {"camera": 1, "ok": "true"}), (4, {"camera": 9})):
        for exact in (False, True):
            hits = index.search(queries, k, filter, exact=exact)
            found = index.search(queries, k, filter, exact=exact, columns=True)
            assert [f.hits() for f in found] == hits
            assert [f.reply() for f in found] == [search_response(h) for h in hits]
    assert len(index.search(queries[:1], 1000)[0]) == len(index)  # k past the gallery: every item once
    assert index.search(queries, 3, {"camera": 9}) == [[]] * len(queries)
    empty = GalleryIndex(DIM).search(queries[:2], 5, columns=True)
    assert [f.reply() for f in empty] == [b"", b""] and [f.hits() for f in empty] == [[], []]


def test_search_reply_matches_search_response_for_any_fields_and_scores() -> None:
    ids = ["x" * 200, "é", ""]
    scores = np.asarray([0.5, -1.0e-3, -0.0], dtype=np.float32)
    hits = [Hit(i, float(s), m) for i, s, m in zip(ids, scores, METADATA, strict=True)]
    heads = [item_head(item_fields(h.id, h.metadata)) for h in hits]
    assert search_reply(heads, scores) == search_response(hits)
    assert search_reply([], np.zeros(0, np.float32)) == b""
    with pytest.raises(ValueError, match="2 item heads but 3 scores"):
        search_reply(heads[:2], scores)
    # hits without stored fields (a Milvus gallery's), scores as Python floats: the same bytes and hits back
    from_hits = FoundItems.from_hits(hits)
    assert from_hits.reply() == search_response(hits) and from_hits.hits() == hits
    assert from_hits.top(2).hits() == hits[:2] and from_hits.top(2).reply() == search_response(hits[:2])


@pytest.fixture(scope="module")
def served(tiny_bundle: Path, tiny_manifest: Manifest, gallery_images: Path) -> Iterator[tuple]:
    """A real gRPC server over a flat gallery of the tiny bundle's embeddings with metadata, and a second
    one over an empty gallery: (raw Search callable, service, empty raw Search callable)."""
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    files = sorted(gallery_images.glob("*.jpg"))
    vectors = engine.embed(np.stack([_model_input(p, tiny_manifest) for p in files]))
    index = GalleryIndex(tiny_manifest.output.dim, bundle_sha256=tiny_manifest.sha256())
    index.add([p.name for p in files], vectors, [dict(METADATA[i % 3], camera=i % 2) for i in range(len(files))])
    servers, calls, services = [], [], []
    for gallery in (index, GalleryIndex(tiny_manifest.output.dim, bundle_sha256=tiny_manifest.sha256())):
        batcher = DynamicBatcher(engine.embed, max_batch=8, max_wait_ms=2.0)
        service = RetrievalService(engine, gallery, tiny_manifest, ServiceLimits(max_k=100), batcher)
        server, port = create_server(service, port=0)
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        calls.append(channel.unary_unary(f"/{SERVICE_NAME}/Search",
                                         request_serializer=pb.SearchRequest.SerializeToString))
        servers.append((server, channel, service))
        services.append(service)
    yield calls[0], services[0], calls[1]
    for server, channel, service in servers:
        channel.close()
        server.stop(None)
        service.close()


def _model_input(path: Path, manifest: Manifest) -> np.ndarray:
    from serving.preprocess import image_to_model_input

    return image_to_model_input(path.read_bytes(), manifest, 10**8)


def test_grpc_search_replies_are_the_bytes_of_the_services_hits(served, gallery_images: Path) -> None:
    search, service, search_empty = served
    image = sorted(gallery_images.glob("*.jpg"))[3].read_bytes()
    count = len(list(gallery_images.glob("*.jpg")))
    for k, filters in ((5, {}), (100, {}), (10, {"camera": "1"}), (10, {"camera": "0", "ok": "true"}),
                       (3, {"camera": "7"})):
        raw = search(pb.SearchRequest(image=image, k=k, filters=filters), timeout=20)
        hits = service.search(image, k, filters or None)
        assert raw == search_response(hits)
        assert [i.id for i in pb.SearchResponse.FromString(raw).items] == [h.id for h in hits]
    assert len(service.search(image, 100)) == count  # k past the gallery: every item once
    assert service.search(image, 3, {"camera": "7"}) == []
    assert search_empty(pb.SearchRequest(image=image, k=5), timeout=20) == b""


def test_milvus_columns_are_its_hits_and_their_bytes(tmp_path: Path) -> None:
    pytest.importorskip("pymilvus", reason="the Milvus store needs pip install -e '.[milvus]'")
    from serving.index.milvus_gallery import MilvusGallery

    rng = np.random.default_rng(11)
    vectors = _unit(rng, 40)
    gallery = MilvusGallery.create(str(tmp_path / "milvus.db"), "reply", DIM, bundle_sha256="c" * 64)
    try:
        gallery.add([f"m{i}" for i in range(40)], vectors, [dict(METADATA[i % 3], camera=i % 4) for i in range(40)])
        for k, filter in ((5, None), (100, None), (3, {"camera": 2}), (3, {"camera": 9})):
            hits = gallery.search(vectors[:3], k, filter)
            found = gallery.search(vectors[:3], k, filter, columns=True)
            assert [f.hits() for f in found] == hits
            assert [f.reply() for f in found] == [search_response(h) for h in hits]
        assert len(hits[0]) == 0 and len(gallery.search(vectors[:1], 100)[0]) == 40
    finally:
        gallery.close()
