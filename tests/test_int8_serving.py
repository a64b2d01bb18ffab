"""An int8 bundle through the deployed path: cdd-export --precision int8 -> cdd-index build -> a real gRPC
server on port 0 answering Search; and an index built with the fp32 bundle refused for the int8 one."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from export.__main__ import main as export_main
from export.gate_images import load_images
from export.onnx_export import onnxruntime_embedder
from export.parity import compare
from serving._proto import retrieval_pb2 as pb2
from serving._proto import retrieval_pb2_grpc as pb2_grpc
from serving.bundle import load_bundle
from serving.config import ServeConfig
from serving.index.__main__ import main as index_main
from serving.index.errors import IndexBundleMismatch
from serving.server import build_service, create_server
from tiny_training import TINY_INT8_EXPORT
from training.data.layouts import load_dataset


def _index(bundle: Path, root: Path, out: Path) -> Path:
    assert index_main(["build", "--bundle", str(bundle), "--layout", "market1501", "--root", str(root),
                       "--split", "gallery", "--out", str(out), "--quiet"]) == 0
    return out


@pytest.fixture(scope="module")
def deployed_int8(student_bundles, tiny_reid_root: Path, tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("int8-deployed")
    fp32, int8 = student_bundles.fp32, student_bundles.int8
    return fp32, int8, _index(fp32, tiny_reid_root, work / "index-fp32"), _index(int8, tiny_reid_root,
                                                                                  work / "index-int8")


def test_int8_bundle_serves_search_over_grpc(deployed_int8, tiny_reid_root: Path) -> None:
    fp32, int8, _, int8_index = deployed_int8
    queries = load_dataset("market1501", tiny_reid_root).query
    service = build_service(ServeConfig(bundle=int8, index=int8_index, port=0))
    server, port = create_server(service, port=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb2_grpc.RetrievalStub(channel)
            images = [Path(r.path).read_bytes() for r in queries]
            replies = [stub.Search(pb2.SearchRequest(image=image, k=5), timeout=30) for image in images]
            served = np.array([stub.Embed(pb2.EmbedRequest(image=image), timeout=30).vector for image in images])
            stats = stub.Stats(pb2.StatsRequest(), timeout=10)
        in_process = [[hit.id for hit in service.search(image, 5)] for image in images]
    finally:
        server.stop(None)
        service.close()
    assert stats.bundle_sha256 == load_bundle(int8).sha256() and stats.backend.startswith("onnxruntime")
    for reply, expected in zip(replies, in_process, strict=True):
        scores = [item.score for item in reply.items]
        assert scores == sorted(scores, reverse=True) and [item.id for item in reply.items] == expected
    # the served int8 vectors are the fp32 bundle's vectors of the same images, up to the gate's tolerance
    reference = onnxruntime_embedder(fp32 / "model.onnx")(load_images(queries, (64, 32)))
    assert compare(reference, served).min_cosine >= load_bundle(int8).parity["int8"]["tolerance"]["min_cosine"]


def test_deployed_int8_map_equals_the_gate_map(deployed_int8, tiny_reid_root: Path, capsys) -> None:
    _, int8, _, int8_index = deployed_int8
    capsys.readouterr()
    assert index_main(["eval", "--index", str(int8_index), "--bundle", str(int8), "--layout", "market1501",
                       "--root", str(tiny_reid_root), "--quiet"]) == 0
    deployed = json.loads(capsys.readouterr().out)["mAP"]
    assert deployed == pytest.approx(load_bundle(int8).parity["int8"]["map_int8"], abs=0.01)


def test_fp32_index_is_refused_for_the_int8_bundle(deployed_int8) -> None:
    fp32, int8, fp32_index, _ = deployed_int8
    expected = (rf"built with bundle sha256 {load_bundle(fp32).sha256()}, but the bundle being served has sha256 "
                rf"{load_bundle(int8).sha256()}")
    with pytest.raises(IndexBundleMismatch, match=expected):
        build_service(ServeConfig(bundle=int8, index=fp32_index, port=0))


def test_compatible_int8_bundle_searches_the_fp32_index(deployed_int8, student_run: Path, tiny_reid_root: Path,
                                                        tmp_path: Path, capsys) -> None:
    fp32, _, fp32_index, _ = deployed_int8
    out = tmp_path / "int8-compatible"
    assert export_main(["--run", str(student_run), "--out", str(out), "--precision", "int8", *TINY_INT8_EXPORT,
                        "--compatible-with", str(fp32)]) == 0
    manifest = load_bundle(out)
    assert manifest.compatible_with == (load_bundle(fp32).sha256(),)
    cross = manifest.parity["int8"]["compatible_with"]
    assert cross["map_drop"] == pytest.approx(manifest.parity["int8"]["map_fp32"] - cross["map_cross"])
    capsys.readouterr()
    assert index_main(["eval", "--index", str(fp32_index), "--bundle", str(out), "--layout", "market1501",
                       "--root", str(tiny_reid_root), "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["mAP"] == pytest.approx(cross["map_cross"], abs=0.01)
    # what the service answers is the int8 query embedding ranked against the fp32 bundle's gallery vectors
    splits = load_dataset("market1501", tiny_reid_root)
    gallery = onnxruntime_embedder(fp32 / "model.onnx")(load_images(splits.gallery, (64, 32)))
    queries = onnxruntime_embedder(out / "model.onnx")(load_images(splits.query[:3], (64, 32)))
    gallery /= np.linalg.norm(gallery, axis=1, keepdims=True)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    ids = [Path(r.path).relative_to(tiny_reid_root).as_posix() for r in splits.gallery]
    service = build_service(ServeConfig(bundle=out, index=fp32_index, port=0))
    try:
        for record, vector in zip(splits.query[:3], queries, strict=True):
            hits = service.search(Path(record.path).read_bytes(), 3)
            scores = gallery @ vector
            assert [hit.id for hit in hits] == [ids[i] for i in np.argsort(-scores)[:3]]
            assert [hit.score for hit in hits] == pytest.approx(sorted(scores, reverse=True)[:3], abs=1e-4)
    finally:
        service.close()


def test_compatible_with_another_checkpoint_is_refused(deployed_int8, teacher_run: Path, tmp_path: Path,
                                                      capsys) -> None:
    fp32 = deployed_int8[0]
    code = export_main(["--run", str(teacher_run), "--out", str(tmp_path / "b"), "--precision", "int8",
                        *TINY_INT8_EXPORT, "--compatible-with", str(fp32)])
    assert code == 1
    assert "only an fp32 bundle exported from this run's checkpoint" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
