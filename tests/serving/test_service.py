"""RetrievalService called directly: real ONNX Runtime engine on the tiny bundle, real FAISS gallery index."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.backends import Engine, create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.errors import DeadlineExceeded, InvalidInput, TooLarge
from serving.index.build import build_index, items_from_folder
from serving.index.errors import DuplicateIdError, UnknownIdError
from serving.index.gallery import GalleryIndex
from serving.index.item_table import metadata_text
from serving.preprocess import ImageDecodeError, ImageTooLargeError, decode_image, to_model_input
from serving.service import NewItem, Query, RetrievalService, ServiceLimits


@pytest.fixture(scope="module")
def engine(tiny_bundle: Path, tiny_manifest: Manifest) -> Engine:
    return create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")


@pytest.fixture(scope="module")
def gallery(engine: Engine, tiny_manifest: Manifest, gallery_images: Path) -> tuple[list, np.ndarray, list]:
    """(ids, vectors, metadata) of the gallery, as `cdd-index build` makes them: id = file name,
    metadata path/file/label (pid)/camera (0-based)."""
    index, _ = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)
    return index.snapshot()


@pytest.fixture
def service(engine: Engine, tiny_manifest: Manifest, gallery: tuple) -> Iterator[RetrievalService]:
    index = GalleryIndex(tiny_manifest.output.dim, bundle_sha256=tiny_manifest.sha256())
    index.add(*gallery)
    limits = ServiceLimits(max_k=10, max_pixels=200 * 200, max_queries=4, max_items=8)
    batcher = DynamicBatcher(engine.embed, max_batch=8, max_wait_ms=5)
    svc = RetrievalService(engine, index, tiny_manifest, limits=limits, batcher=batcher)
    yield svc
    svc.close()


def _encode(pixels: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


def _query(gallery_images: Path, name: str, seed: int = 0) -> bytes:
    """A new view of a gallery image: its pixels plus fresh noise, PNG-encoded (not in the gallery)."""
    pixels = np.asarray(Image.open(gallery_images / name).convert("RGB")).astype(np.int16)
    noise = np.random.default_rng(seed).integers(-4, 5, size=pixels.shape)
    return _encode(np.clip(pixels + noise, 0, 255).astype(np.uint8))


QUERY = "0003_c1s1_000001_00.jpg"


def test_search_returns_the_right_identity_first(service: RetrievalService, gallery_images: Path) -> None:
    hits = service.search(_query(gallery_images, QUERY), k=5)
    assert len(hits) == 5
    assert hits[0].metadata["label"] == 3 and hits[1].metadata["label"] == 3
    assert hits[0].id == QUERY
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True) and 0.95 < scores[0] <= 1.0001


def test_k_larger_than_gallery_returns_everything(service: RetrievalService, gallery: tuple,
                                                  gallery_images: Path) -> None:
    ids, vectors, metadata = gallery
    three = GalleryIndex(16)
    three.add(ids[:3], vectors[:3], metadata[:3])
    small = RetrievalService(service.engine, three, service.manifest, limits=ServiceLimits(max_k=10),
                             batcher=service.batcher)
    hits = small.search((gallery_images / QUERY).read_bytes(), k=10)
    assert len(hits) == 3 and sorted(h.id for h in hits) == sorted(ids[:3])
    empty = RetrievalService(service.engine, GalleryIndex(16), service.manifest, batcher=service.batcher)
    assert empty.search((gallery_images / QUERY).read_bytes(), k=3) == []


def test_filters_compare_with_the_string_form(service: RetrievalService, gallery_images: Path) -> None:
    image = _query(gallery_images, QUERY)
    hits = service.search(image, k=10, filters={"camera": "1"})
    assert len(hits) == 10 and {h.metadata["camera"] for h in hits} == {1}
    only = service.search(image, k=10, filters={"label": "4", "camera": "0"})
    assert [(h.metadata["label"], h.metadata["camera"]) for h in only] == [(4, 0), (4, 0)]
    assert service.search(image, k=3, filters={"camera": "7"}) == []
    assert metadata_text(3) == "3" and metadata_text(True) == "true" and metadata_text([1, "a"]) == '[1,"a"]'


def test_embed_equals_engine_output(service: RetrievalService, engine: Engine, gallery_images: Path) -> None:
    data = (gallery_images / QUERY).read_bytes()
    vector = service.embed(data)
    expected = engine.embed(to_model_input(decode_image(data), service.manifest)[None])[0]
    assert vector.shape == (16,) and vector.dtype == np.float32
    np.testing.assert_allclose(vector, expected, atol=1e-6)
    assert abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5


def test_search_batch_equals_single_searches(service: RetrievalService, gallery_images: Path) -> None:
    names = ["0001_c1s1_000001_00.jpg", "0005_c2s1_000002_00.jpg", QUERY]
    queries = [Query(_query(gallery_images, n), k) for n, k in zip(names, (1, 3, 2), strict=True)]
    batch = service.search_batch(queries)
    assert [len(r) for r in batch] == [1, 3, 2]
    assert [r[0].metadata["label"] for r in batch] == [1, 5, 3]
    for query, result in zip(queries, batch, strict=True):
        single = service.search(query.image, query.k)
        assert [h.id for h in single] == [h.id for h in result]
        np.testing.assert_allclose([h.score for h in single], [h.score for h in result], atol=1e-5)
    assert service.search_batch([]) == []
    with pytest.raises(TooLarge, match="at most 4 per call"):
        service.search_batch(queries * 2)
    with pytest.raises(InvalidInput, match=r"queries\[1\]\.k must be between 1 and 10"):
        service.search_batch([queries[0], Query(queries[1].image, 0)])
    with pytest.raises(ImageDecodeError, match=r"queries\[1\]: "):
        service.search_batch([queries[0], Query(b"not an image", 2)])


@pytest.mark.parametrize("k", [0, -1, 11, True, 2.0])
def test_bad_k_is_invalid_input(service: RetrievalService, gallery_images: Path, k: object) -> None:
    with pytest.raises(InvalidInput, match="k must be"):
        service.search((gallery_images / QUERY).read_bytes(), k=k)  # type: ignore[arg-type]


def test_bad_images_raise_and_odd_formats_are_converted(
    service: RetrievalService, gallery_images: Path
) -> None:
    jpeg = (gallery_images / QUERY).read_bytes()
    for bad in (b"", b"\x00garbage" * 10, jpeg[: len(jpeg) // 2]):
        with pytest.raises(ImageDecodeError):
            service.search(bad, k=1)
    gray = np.asarray(Image.open(gallery_images / QUERY).convert("L"))
    from_gray = service.search(_encode(gray), k=2)
    deep = _encode(gray.astype(np.uint16) * 257)  # 16-bit PNG holding the same values
    assert Image.open(io.BytesIO(deep)).mode.startswith("I")
    from_deep = service.search(deep, k=2)
    assert [h.id for h in from_deep] == [h.id for h in from_gray] and len(from_gray) == 2
    np.testing.assert_allclose([h.score for h in from_deep], [h.score for h in from_gray], atol=1e-5)
    with pytest.raises(ImageTooLargeError, match="the limit is 40000"):
        service.search(_encode(np.zeros((201, 200, 3), np.uint8)), k=1)
    assert service.search(jpeg, k=1)[0].id == QUERY  # still serving


def test_add_items_from_image_and_vector(service: RetrievalService, gallery_images: Path) -> None:
    image = _query(gallery_images, "0002_c1s1_000001_00.jpg", seed=5)
    raw = np.arange(16, dtype=np.float32) + 1.0
    added = service.add_items(
        [NewItem("new-image", image=image, metadata={"label": "new"}), NewItem("new-vector", vector=raw * 3)]
    )
    assert added == 2 and service.count() == 22
    top = service.search(image, k=1)[0]
    assert top.id == "new-image" and top.metadata == {"label": "new"} and top.score > 0.999
    stored, _ = service.index.get("new-vector")
    np.testing.assert_allclose(stored, raw / np.linalg.norm(raw), atol=1e-6)


def test_bad_items_add_nothing(service: RetrievalService, gallery_images: Path) -> None:
    image = (gallery_images / QUERY).read_bytes()
    good = NewItem("fresh", vector=np.ones(16))
    cases = [
        (NewItem(QUERY, vector=np.ones(16)), DuplicateIdError, "already in the index"),
        (NewItem("fresh", vector=np.ones(16)), DuplicateIdError, "repeat within one add"),
        (NewItem("x", vector=np.ones(15)), InvalidInput, r"shape \(15,\), the gallery holds \(16,\)"),
        (NewItem("x", vector=np.zeros(16)), InvalidInput, "non-zero"),
        (NewItem("x", image=image, vector=np.ones(16)), InvalidInput, "found image and vector"),
        (NewItem("x"), InvalidInput, "found neither"),
        (NewItem("", vector=np.ones(16)), InvalidInput, "non-empty string"),
        (NewItem("x", image=b"nope"), ImageDecodeError, r"items\[1\] \(id 'x'\)"),
    ]
    for bad, error, message in cases:
        with pytest.raises(error, match=message):
            service.add_items([good, bad])
        assert service.count() == 20 and "fresh" not in service.index
    with pytest.raises(TooLarge, match="at most 8 per call"):
        service.add_items([NewItem(f"v{i}", vector=np.ones(16)) for i in range(9)])


def test_remove_items(service: RetrievalService) -> None:
    ids = ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg"]
    with pytest.raises(UnknownIdError, match="nothing was removed"):
        service.remove_items([ids[0], "no-such-id"])
    assert service.count() == 20
    assert service.remove_items(ids) == 2 and service.count() == 18
    assert service.remove_items([]) == 0
    with pytest.raises(InvalidInput, match="non-empty string"):
        service.remove_items([""])


def test_deadlines(engine: Engine, tiny_manifest: Manifest, gallery: tuple, gallery_images: Path) -> None:
    index = GalleryIndex(16)
    index.add(*gallery)
    batcher = DynamicBatcher(engine.embed, max_batch=8, max_wait_ms=3_600_000)  # a batch closes only when full
    image = (gallery_images / QUERY).read_bytes()
    with RetrievalService(engine, index, tiny_manifest, batcher=batcher) as svc:
        with pytest.raises(DeadlineExceeded, match="deadline passed before decoding the image"):
            svc.search(image, k=1, deadline=time.monotonic() - 1)
        with pytest.raises(DeadlineExceeded, match="waiting for the batcher|deadline passed before embedding"):
            svc.search(image, k=1, deadline=time.monotonic() + 1.0)  # returned: did not sit out the window
        assert svc.stats()["batching"]["expired"] == 0  # its image still waits in the open window
        spec = tiny_manifest.input
        filler = batcher.submit(np.zeros((7, spec.height, spec.width, 3), dtype=np.uint8))  # closes the batch
        assert filler.result(30).shape[0] == 7
        assert svc.stats()["batching"]["expired"] == 1 and svc.stats()["batching"]["images"] == 7


def test_concurrent_searches_are_batched(
    engine: Engine, tiny_manifest: Manifest, gallery: tuple, gallery_images: Path
) -> None:
    names = sorted(p.name for p in gallery_images.glob("*.jpg"))
    payloads = {n: (gallery_images / n).read_bytes() for n in names}
    index = GalleryIndex(tiny_manifest.output.dim)
    index.add(*gallery)
    batcher = DynamicBatcher(engine.embed, max_batch=8, max_wait_ms=3_600_000)  # a batch runs when full
    with RetrievalService(engine, index, tiny_manifest, batcher=batcher) as svc:
        with ThreadPoolExecutor(max_workers=10) as pool:  # >= 8 searches in flight until the last batch
            tops = list(pool.map(lambda n: svc.search(payloads[n], k=1)[0].id, names * 2))
        batching = svc.stats()["batching"]
    assert tops == names * 2  # every caller got its own row back out of a shared batch
    assert batching["requests"] == 40 and batching["batches"] == 5 and batching["largest_batch"] == 8


def test_stats_and_warmup(service: RetrievalService, tiny_manifest: Manifest) -> None:
    sizes: list[int] = []
    run = service.engine._run
    service.engine._run = lambda batch: (sizes.append(batch.shape[0]), run(batch))[1]  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        seconds = service.warmup()
        wall = time.perf_counter() - start
    finally:
        del service.engine._run  # back to the class's method
    assert sizes == [1, 8]  # the engine ran at batch 1 and at the batcher's max batch
    assert 0.0 < seconds <= wall  # it reports the time it took, not a constant
    stats = service.stats()
    assert stats["count"] == 20 and stats["dim"] == 16 and stats["index_type"] == "flat"
    assert stats["bundle_name"] == "tiny" and stats["bundle_sha256"] == tiny_manifest.sha256()
    assert stats["backend"] == "onnxruntime-cpu" and stats["metric"] == "cosine"
    assert stats["max_k"] == 10 and stats["max_pixels"] == 40000
    assert stats["batching"]["max_batch"] == 8 and stats["batching"]["enabled"] is True


def test_index_of_another_dimension_is_refused(engine: Engine, tiny_manifest: Manifest) -> None:
    with pytest.raises(ValueError, match="holds 8-d vectors but bundle 'tiny' embeds 16-d"):
        RetrievalService(engine, GalleryIndex(8), tiny_manifest)
