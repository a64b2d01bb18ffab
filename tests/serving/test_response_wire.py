"""`serving.response_wire`: hand-built response bytes parse to the message protobuf builds from the same hits."""

from __future__ import annotations

import numpy as np

from serving._proto import retrieval_pb2 as pb
from serving.grpc_servicer import wire_metadata
from serving.index.gallery import GalleryIndex, Hit
from serving.index.item_table import ItemTable
from serving.response_wire import item_fields, search_batch_response, search_response

METADATA = [
    {},
    {"camera": 3, "path": "a/b.jpg", "ok": True, "tags": [1, 2], "none": None},
    {"name": "é漢字" * 40, "": "", "score": 0.25},  # multi-byte text, empty key and value, long field
]


def _expected(hits: list[Hit]) -> pb.SearchResponse:
    return pb.SearchResponse(
        items=[pb.Item(id=h.id, score=h.score, metadata=wire_metadata(h.metadata)) for h in hits]
    )


def test_search_response_parses_to_what_protobuf_builds() -> None:
    hits = [Hit(f"id-{i}" * (i * 30 + 1), score, meta, item_fields(f"id-{i}" * (i * 30 + 1), meta))
            for i, (score, meta) in enumerate(zip((0.5, -1.0e-3, 0.0), METADATA, strict=True))]
    assert pb.SearchResponse.FromString(search_response(hits)) == _expected(hits)
    # hits without pre-serialised fields (a Milvus gallery's) are encoded on the spot, to the same bytes
    bare = [Hit(h.id, h.score, h.metadata) for h in hits]
    assert search_response(bare) == search_response(hits)
    assert search_response([]) == b""


def test_search_batch_response_keeps_query_order_and_empty_results() -> None:
    first = [Hit("x", 0.9, {"k": 1}), Hit("y", 0.1)]
    batch = pb.SearchBatchResponse.FromString(search_batch_response([first, [], first[1:]]))
    assert list(batch.results) == [_expected(first), _expected([]), _expected(first[1:])]


def test_item_table_keeps_each_rows_fields_through_removal_moves_and_reload() -> None:
    table = ItemTable(2)
    ids = ["a", "b", "c", "d"]
    table.append(ids, np.eye(4, 2, dtype=np.float32), [{"n": i} for i in range(4)])
    table.remove(["a"])  # the last row ("d") moves into row 0
    assert table.wire == [item_fields(i, table.metadata[r]) for r, i in enumerate(table.ids)]
    assert table.ids[0] == "d" and table.wire[0] == item_fields("d", {"n": 3})
    reloaded = ItemTable.from_rows(2, table.ids, table.labels, table.vectors, table.metadata, table.next_label)
    assert reloaded.wire == table.wire


def test_gallery_hits_carry_the_fields_of_their_own_item() -> None:
    index = GalleryIndex(2, "flat")
    index.add(["near", "far"], np.asarray([[1, 0], [0, 1]], dtype=np.float32), [{"c": 1}, {"c": 2}])
    hits = index.search(np.asarray([[1, 0.1]], dtype=np.float32), 2)[0]
    assert [h.id for h in hits] == ["near", "far"]
    assert [pb.Item.FromString(h.wire) for h in hits] == [pb.Item(id="near", metadata={"c": "1"}),
                                                          pb.Item(id="far", metadata={"c": "2"})]
