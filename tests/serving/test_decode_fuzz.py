"""Damaged images through a real gRPC server: no status is INTERNAL, no traceback is logged, and a good
request succeeds afterwards.

A few hundred files (seeded): JPEG, PNG, WebP, GIF and TIFF encodings of small images, each cut at
random points, with random bytes flipped, or with another format's magic bytes pasted over its header.
"""

from __future__ import annotations

import io
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import create_engine
from serving.batcher import DynamicBatcher
from serving.bundle import Manifest
from serving.index.build import build_index, items_from_folder
from serving.server import create_server
from serving.service import RetrievalService, ServiceLimits

FORMATS = {"JPEG": {"quality": 85}, "PNG": {}, "WEBP": {"quality": 80}, "GIF": {}, "TIFF": {}}
MAGIC = [b"\xff\xd8\xff\xe0", b"\x89PNG\r\n\x1a\n", b"RIFF\x00\x00\x00\x00WEBP", b"GIF89a", b"II*\x00"]
QUERY = "0003_c1s1_000001_00.jpg"


def _encodings(rng: np.random.Generator) -> list[bytes]:
    out = []
    for fmt, options in FORMATS.items():
        for _ in range(2):
            size = (int(rng.integers(24, 90)), int(rng.integers(24, 90)))
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            buffer = io.BytesIO()
            image = Image.fromarray(pixels)
            (image.quantize(16) if fmt == "GIF" else image).save(buffer, format=fmt, **options)
            out.append(buffer.getvalue())
    return out


def damaged_images(seed: int = 0, per_file: int = 30) -> list[bytes]:
    """``per_file`` damaged variants of each of 10 encodings: cuts, bit flips, foreign magic bytes."""
    rng = np.random.default_rng(seed)
    cases = []
    for data in _encodings(rng):
        for i in range(per_file):
            kind = i % 3
            if kind == 0:  # cut anywhere, including inside the header
                cases.append(data[: int(rng.integers(1, len(data)))])
            elif kind == 1:  # flip 1-8 random bytes
                damaged = bytearray(data)
                for pos in rng.integers(0, len(data), size=int(rng.integers(1, 9))):
                    damaged[pos] ^= int(rng.integers(1, 256))
                cases.append(bytes(damaged))
            else:  # another format's magic over this one's header (mislabelled)
                magic = MAGIC[int(rng.integers(0, len(MAGIC)))]
                cases.append(magic + data[len(magic) + int(rng.integers(0, 16)) :])
    return cases


@pytest.fixture(scope="module")
def stub(tiny_bundle: Path, tiny_manifest: Manifest, gallery_images: Path) -> Iterator[pb_grpc.RetrievalStub]:
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    index = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)[0]
    service = RetrievalService(
        engine, index, tiny_manifest, ServiceLimits(max_pixels=4096 * 4096), DynamicBatcher(engine.embed, 8)
    )
    server, port = create_server(service, port=0)
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield pb_grpc.RetrievalStub(channel)
    server.stop(None)
    service.close()


def test_damaged_images_are_invalid_argument_never_internal(
    stub: pb_grpc.RetrievalStub, gallery_images: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cases = damaged_images()
    assert len(cases) == 300
    codes: Counter[str] = Counter()
    caplog.set_level(logging.INFO)
    for data in cases:
        try:
            stub.Search(pb.SearchRequest(image=data, k=1), timeout=10)
            codes["OK"] += 1
        except grpc.RpcError as exc:
            codes[exc.code().name] += 1
            if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
                assert "\n" not in exc.details() and len(exc.details()) < 400, exc.details()
    assert set(codes) <= {"OK", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED"}, codes
    assert codes["INVALID_ARGUMENT"] >= 150, codes  # most damage is detected, not silently decoded
    tracebacks = [r for r in caplog.records if r.exc_info is not None or "Traceback" in r.getMessage()]
    assert not tracebacks, tracebacks[0].getMessage()
    good = stub.Search(pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=1), timeout=10)
    assert good.items[0].id == QUERY
