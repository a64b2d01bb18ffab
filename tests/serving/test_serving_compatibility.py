"""Asymmetric retrieval in serving: a bundle searches an index built with another bundle only when its
manifest declares compatibility with that bundle; Stats names both bundles.

The "teacher" is the tiny fixture bundle; a "student" is a copy of it under another name, with or without a
declaration in its manifest. Where results must show which bundle embedded the queries, the student's graph
ends in y = -x, so its queries rank the teacher's gallery in reverse. The gallery index is built with the
teacher, as `cdd-index build` does. Real ONNX Runtime, FAISS and gRPC."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from derived_bundles import derived_bundle, embed_onnxruntime

from serving import server as server_module
from serving._proto import retrieval_pb2 as pb
from serving._proto import retrieval_pb2_grpc as pb_grpc
from serving.backends import create_engine
from serving.bundle import BundleError, Manifest, load_bundle, write_manifest
from serving.compatibility import declared_compatibility, gallery_bundle_for
from serving.config import ServeConfig
from serving.index.build import build_index, items_from_folder
from serving.index.errors import IndexBundleMismatch
from serving.server import build_service, create_server
from training.data.layouts import load_dataset
from training.metrics import evaluate_retrieval

QUERY = "0003_c1s1_000001_00.jpg"


def _declaration(sha256: str, name: str) -> dict:
    return {"bundle_sha256": sha256, "bundle_name": name, "tolerance_map_points": 1.0,
            "mAP": {"gallery_bundle": 50.0, "this_bundle": 51.0, "asymmetric": 49.5},
            "rank1": {"gallery_bundle": 70.0, "this_bundle": 71.0, "asymmetric": 69.0},
            "dataset": "market1501", "protocol": "reid", "num_queries": 4, "gallery_size": 13}


def _with_declarations(manifest: Manifest, declarations: list[dict], **fields: object) -> Manifest:
    data = manifest.to_dict()
    data.update(fields, compatible_with=[d["bundle_sha256"] for d in declarations],
                parity={**data["parity"], "compatibility": declarations})
    return Manifest.from_dict(data)


def _student(tiny_bundle: Path, out: Path, declarations: list[dict]) -> Path:
    shutil.copytree(tiny_bundle, out)
    write_manifest(out, _with_declarations(load_bundle(tiny_bundle), declarations, name=out.name))
    return out


def _negated_student(tiny_bundle: Path, out: Path, declarations: list[dict]) -> Path:
    """A student (ONNX only) whose graph is the teacher's followed by y = -x: its vectors are the teacher's,
    negated, so every ranking against the teacher's gallery is reversed."""
    declared = _with_declarations(load_bundle(tiny_bundle), declarations).to_dict()
    return derived_bundle(tiny_bundle, out, negate=True, compatible_with=declared["compatible_with"],
                          parity=declared["parity"])


@pytest.fixture(scope="module")
def teacher_index(tiny_bundle: Path, tiny_manifest: Manifest, gallery_images: Path,
                  tmp_path_factory: pytest.TempPathFactory) -> Path:
    engine = create_engine(tiny_bundle, tiny_manifest, backend="onnxruntime-cpu")
    index = build_index(engine, tiny_manifest, items_from_folder(gallery_images), progress=False)[0]
    out = tmp_path_factory.mktemp("teacher-index") / "index"
    index.save(out)
    return out


@pytest.fixture
def served_student(tiny_bundle: Path, tiny_manifest: Manifest, teacher_index: Path,
                   tmp_path: Path) -> Iterator[tuple[grpc.Channel, Path]]:
    student = _negated_student(tiny_bundle, tmp_path / "tiny-student", [_declaration(tiny_manifest.sha256(), "tiny")])
    service = build_service(ServeConfig(bundle=student, index=teacher_index, backend="onnxruntime-cpu"))
    server, port = create_server(service, port=0)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel, student
    finally:
        server.stop(None)
        service.close()


def test_a_declared_student_serves_a_teacher_index_and_stats_name_both_bundles(
        served_student: tuple[grpc.Channel, Path], tiny_bundle: Path, tiny_manifest: Manifest,
        gallery_images: Path) -> None:
    channel, student = served_student
    stub = pb_grpc.RetrievalStub(channel)
    hits = stub.Search(pb.SearchRequest(image=(gallery_images / QUERY).read_bytes(), k=3), timeout=10).items
    # expected: the student's query vector against the teacher's gallery vectors, here with plain ONNX Runtime
    paths = sorted(gallery_images.glob("*.jpg"))
    scores = embed_onnxruntime(tiny_bundle, paths) @ embed_onnxruntime(student, [gallery_images / QUERY])[0]
    order = np.argsort(-scores, kind="stable")[:3]
    assert [h.id for h in hits] == [paths[i].name for i in order]
    np.testing.assert_allclose([h.score for h in hits], scores[order], atol=1e-4)
    assert hits[0].id != QUERY and hits[-1].score < 0  # teacher-embedded queries would find QUERY itself at 1.0
    stats = stub.Stats(pb.StatsRequest(), timeout=10)
    assert (stats.bundle_name, stats.bundle_sha256) == ("tiny-student", load_bundle(student).sha256())
    assert (stats.gallery_bundle_name, stats.gallery_bundle_sha256) == ("tiny", tiny_manifest.sha256())
    assert stats.asymmetric is True
    assert stats.bundle_sha256 != stats.gallery_bundle_sha256


def test_the_same_bundle_on_its_own_index_is_not_asymmetric(tiny_bundle: Path, tiny_manifest: Manifest,
                                                            teacher_index: Path) -> None:
    with build_service(ServeConfig(bundle=tiny_bundle, index=teacher_index, backend="onnxruntime-cpu")) as service:
        stats = service.stats()
    assert stats["asymmetric"] is False
    assert stats["gallery_bundle_sha256"] == stats["bundle_sha256"] == tiny_manifest.sha256()


def test_an_undeclared_student_is_refused_with_the_fix(tiny_bundle: Path, teacher_index: Path, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    student = _student(tiny_bundle, tmp_path / "plain-student", [])
    with pytest.raises(IndexBundleMismatch, match="neither that bundle nor declared compatible with it; it "
                                                  "declares compatibility with no other bundle"):
        build_service(ServeConfig(bundle=student, index=teacher_index, backend="onnxruntime-cpu"))
    code = server_module.main(["--bundle", str(student), "--index", str(teacher_index), "--port", "0",
                               "--backend", "onnxruntime-cpu"])
    assert code == 2 and "cdd-export --compatible-with" in caplog.text


def test_a_student_declared_for_another_teacher_is_refused(tiny_bundle: Path, teacher_index: Path,
                                                           tmp_path: Path) -> None:
    student = _student(tiny_bundle, tmp_path / "other-student", [_declaration("ab" * 32, "other-teacher")])
    with pytest.raises(IndexBundleMismatch, match=r"declares compatibility only with other-teacher \(sha256 "
                                                  r"abababababab\.\.\.\): asymmetric mAP 49\.50%"):
        build_service(ServeConfig(bundle=student, index=teacher_index, backend="onnxruntime-cpu"))


def test_malformed_declarations_are_named(tiny_manifest: Manifest) -> None:
    broken = _with_declarations(tiny_manifest, [{"bundle_sha256": "x" * 64}])
    with pytest.raises(BundleError, match=r"parity.compatibility\[0\]: missing field\(s\) \['bundle_name'"):
        declared_compatibility(broken)
    short = _with_declarations(tiny_manifest, [_declaration("abc", "t")])
    with pytest.raises(BundleError, match="64-character hex digest, found 'abc'"):
        gallery_bundle_for(short, "0" * 64, "idx")


def test_index_eval_scores_student_queries_on_a_teacher_index(tiny_bundle: Path, tiny_manifest: Manifest,
                                                              market_root: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    from serving.index.__main__ import main as index_main

    index = tmp_path / "market"
    assert index_main(["build", "--bundle", str(tiny_bundle), "--layout", "market1501", "--root", str(market_root),
                       "--split", "gallery", "--out", str(index), "--quiet"]) == 0
    capsys.readouterr()
    student = _negated_student(tiny_bundle, tmp_path / "tiny-student", [_declaration(tiny_manifest.sha256(), "tiny")])
    evaluate = ["eval", "--index", str(index), "--layout", "market1501", "--root", str(market_root), "--quiet"]
    assert index_main([*evaluate, "--bundle", str(student)]) == 0
    out = json.loads(capsys.readouterr().out)
    # expected: student queries on the teacher's gallery, with plain ONNX Runtime (no junk in this layout)
    splits = load_dataset("market1501", market_root)
    queries = embed_onnxruntime(student, [Path(r.path) for r in splits.query])
    gallery = embed_onnxruntime(tiny_bundle, [Path(r.path) for r in splits.gallery])
    expected = evaluate_retrieval(queries, gallery, [r.pid for r in splits.query], [r.pid for r in splits.gallery],
                                  [r.camid for r in splits.query], [r.camid for r in splits.gallery])
    symmetric = evaluate_retrieval(-queries, gallery, [r.pid for r in splits.query], [r.pid for r in splits.gallery],
                                   [r.camid for r in splits.query], [r.camid for r in splits.gallery])
    assert out["mAP"] == pytest.approx(100 * expected.mAP, abs=1e-4)  # percent, as cdd-train reports it
    assert out["rank1"] == pytest.approx(100 * expected.rank1)
    assert symmetric.mAP == pytest.approx(1.0) and expected.mAP < 0.5  # which bundle embeds the queries shows
    plain = _student(tiny_bundle, tmp_path / "plain-student", [])
    assert index_main([*evaluate, "--bundle", str(plain)]) == 2
